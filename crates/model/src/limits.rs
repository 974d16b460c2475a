//! Hard limits: every size, count and duration the platform accepts has a bound here.
//!
//! The numbers follow AWS Lambda where a user would compare (payload 6 MB, unpacked code
//! 250 MB, env 4 KB, timeout 15 min) so that functions moved from there fit here.

/// Largest synchronous invocation payload, request or response (Lambda's 6 MB).
pub const PAYLOAD_BYTES_MAX: usize = 6 * 1024 * 1024;

/// Largest code archive accepted for upload, compressed.
pub const ARCHIVE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Default bound on the unpacked size of a code archive; the server can lower or raise it.
pub const UNPACKED_BYTES_MAX_DEFAULT: u64 = 250 * 1024 * 1024;

/// Most entries in one code archive; bounds extraction work and inode use.
pub const ARCHIVE_ENTRIES_MAX: usize = 20_000;

/// The telemetry database's size in use by default (`--telemetry-max-mb`): past it, the
/// oldest records, logs and events go before their age.
pub const TELEMETRY_MAX_MB_DEFAULT: u64 = 1024;

/// How long an uploaded archive or unpacked tree that nothing refers to is kept before it is
/// collected: long enough for the deploy that follows its upload to refer to it.
pub const CODE_GARBAGE_GRACE_MS: i64 = 3_600_000;

/// Function names: 1..=64 chars of `[A-Za-z0-9_-]`, starting with a letter.
pub const NAME_LEN_MAX: usize = 64;

/// Handler strings such as `main.handler`.
pub const HANDLER_LEN_MAX: usize = 128;

/// Free-text description of a function.
pub const DESCRIPTION_LEN_MAX: usize = 256;

/// Memory a function may ask for; the sandbox enforces it with cgroups (issue 5).
pub const MEMORY_MB_MIN: u32 = 64;
pub const MEMORY_MB_MAX: u32 = 10_240;
pub const MEMORY_MB_DEFAULT: u32 = 128;

/// Size of an instance's private `/tmp` (as Lambda's `ephemeral_storage`).
pub const EPHEMERAL_STORAGE_MB_MIN: u32 = 16;
pub const EPHEMERAL_STORAGE_MB_MAX: u32 = 10_240;
pub const EPHEMERAL_STORAGE_MB_DEFAULT: u32 = 512;

/// Retries of an asynchronous invocation after function errors (as Lambda's
/// MaximumRetryAttempts).
pub const MAX_RETRIES_MAX: u32 = 8;
pub const MAX_RETRIES_DEFAULT: u32 = 2;
/// How old an asynchronous event may get before it is given up (Lambda allows 60 s to
/// 6 h; shorter ages are allowed here for short-lived events).
pub const MAX_EVENT_AGE_MS_MIN: u32 = 1_000;
pub const MAX_EVENT_AGE_MS_MAX: u32 = 21_600_000;
pub const MAX_EVENT_AGE_MS_DEFAULT: u32 = 21_600_000;
/// Largest asynchronous event by default (Lambda's limit); the server can set another.
pub const ASYNC_PAYLOAD_BYTES_DEFAULT: usize = 256 * 1024;
/// Asynchronous events waiting per function and per node; past them submissions get 429.
pub const ASYNC_QUEUE_PER_FUNCTION_MAX: usize = 100_000;
pub const ASYNC_QUEUE_PER_NODE_MAX: usize = 1_000_000;
/// Longest webhook URL of a destination.
pub const WEBHOOK_URL_LEN_MAX: usize = 2048;

/// Processes and threads one sandboxed instance may have at once (`pids.max`): room for a
/// JVM or 200 handler threads, not for a fork bomb.
pub const PROCESSES_PER_INSTANCE_MAX: u32 = 512;

/// An explicit CPU limit in thousandths of a core; 0 means a share proportional to memory.
pub const CPU_MILLICORES_MIN: u32 = 50;
pub const CPU_MILLICORES_MAX: u32 = 8_000;

/// Wall-clock limit of one invocation.
pub const TIMEOUT_MS_MIN: u32 = 1;
pub const TIMEOUT_MS_MAX: u32 = 900_000;
pub const TIMEOUT_MS_DEFAULT: u32 = 3_000;

/// Total size of a function's environment (keys + values), as on Lambda.
pub const ENV_BYTES_MAX: usize = 4 * 1024;

/// Most environment variables of one function.
pub const ENV_VARS_MAX: usize = 64;

/// How long a new instance may take to load its code before it counts as failed.
pub const INSTANCE_START_MS_MAX: u64 = 10_000;

/// Log bytes kept per invocation in memory; the rest is dropped and counted.
pub const INVOCATION_LOG_BYTES_MAX: usize = 256 * 1024;

/// Invocations whose record and logs are kept in memory on a node (the oldest are dropped
/// first); with `INVOCATION_LOG_BYTES_MAX` this bounds that memory to 64 MB.
pub const RECENT_INVOCATIONS_MAX: usize = 256;

/// Largest single frame on the instance channel: a payload plus its metadata.
pub const FRAME_BYTES_MAX: usize = PAYLOAD_BYTES_MAX + 64 * 1024;

/// Instances of one function; the node-wide cap (`nimbus server --instances-max`) also holds.
pub const INSTANCES_PER_FUNCTION_MAX: u32 = 1_000;
pub const MAX_INSTANCES_DEFAULT: u32 = 10;

/// How long an idle instance is kept before it is stopped (scale to zero).
pub const IDLE_TIMEOUT_MS_MIN: u32 = 1_000;
pub const IDLE_TIMEOUT_MS_MAX: u32 = 86_400_000;
pub const IDLE_TIMEOUT_MS_DEFAULT: u32 = 600_000;

/// How long an invocation may wait for a slot before it is throttled.
pub const QUEUE_TIMEOUT_MS_MAX: u32 = 60_000;
pub const QUEUE_TIMEOUT_MS_DEFAULT: u32 = 1_000;

/// Invocations of one function waiting for a slot at once; past this they are throttled
/// at once rather than queued.
pub const QUEUE_LENGTH_MAX: usize = 1_000;

/// The initializer's and pre-stop hook's own time limits.
pub const INITIALIZER_TIMEOUT_MS_MAX: u32 = 300_000;
pub const INITIALIZER_TIMEOUT_MS_DEFAULT: u32 = 10_000;
pub const PRE_STOP_TIMEOUT_MS_MAX: u32 = 60_000;
pub const PRE_STOP_TIMEOUT_MS_DEFAULT: u32 = 3_000;

/// Lifecycle events kept in memory per node.
pub const EVENTS_MAX: usize = 1_000;

/// Calls one instance may take at once (Function Compute allows up to 200).
pub const CONCURRENCY_MAX: u32 = 200;

/// Longest route pattern of an HTTP trigger.
pub const ROUTE_LEN_MAX: usize = 256;

/// Most triggers on one function.
pub const TRIGGERS_MAX: usize = 16;

/// Highest per-route rate limit that can be configured.
pub const RATE_LIMIT_RPS_MAX: u32 = 100_000;

/// Most arguments of a custom runtime's command, and the longest one.
pub const COMMAND_ARGS_MAX: usize = 32;
pub const COMMAND_ARG_LEN_MAX: usize = 1024;

/// How long a custom runtime or HTTP function may take to accept connections on `$PORT`.
pub const HTTP_READY_MS_MAX: u64 = 10_000;

/// Connections a `provided` instance may hold open to its Runtime API endpoint at once
/// (a runtime needs one; a few more allow a reconnect while an old one closes).
pub const RUNTIME_API_CONNECTIONS_MAX: usize = 8;

/// How long a runtime may take to send the body of a request to its Runtime API endpoint
/// once its headers came (a result of up to `PAYLOAD_BYTES_MAX` over loopback).
pub const RUNTIME_API_BODY_READ_MS_MAX: u64 = 10_000;

/// Invoke keys that can exist at once.
pub const INVOKE_KEYS_MAX: usize = 1_000;

/// Records and events waiting for the telemetry writer. Past it they are dropped and
/// counted (`nimbus_telemetry_dropped_total`): a stalled disk must not stall invocations
/// or grow the server's memory without bound.
pub const TELEMETRY_QUEUE_MAX: usize = 65_536;

/// Span batches waiting for the OTLP collector (a batch is one recorder write, at most
/// `TELEMETRY_BATCH_MAX` calls). Past it batches are dropped and counted
/// (`nimbus_otlp_spans_dropped_total`): a collector that is down must not grow the
/// server's memory.
pub const OTLP_QUEUE_BATCHES_MAX: usize = 64;

/// Items the telemetry writer puts in one transaction.
pub const TELEMETRY_BATCH_MAX: usize = 4_096;

/// Log lines, events or records one query returns at most.
pub const TELEMETRY_PAGE_MAX: u32 = 1_000;

/// Points of one statistics series at most (a day in minutes).
pub const STATS_POINTS_MAX: i64 = 1_440;

/// The longest statistics or usage window: the default record retention.
pub const STATS_WINDOW_MAX_MS: i64 = 31 * 24 * 3_600_000;

/// Live log lines buffered per follower; a follower that falls further behind is told how
/// many it missed.
pub const FOLLOW_BUFFER_LINES: usize = 4_096;

/// Regular expressions in log queries are at most this long (the engine is linear-time;
/// the bound keeps compilation cheap).
pub const LOG_REGEX_BYTES_MAX: usize = 1_024;

/// A dependency build (pip or npm at deploy): how long it may run, the memory it may use
/// (its temporary files are on disk, not counted), and the output kept of it.
pub const BUILD_TIMEOUT_MS: u64 = 600_000;
pub const BUILD_MEMORY_MB: u32 = 2_048;
pub const BUILD_OUTPUT_BYTES_MAX: usize = 256 * 1024;
/// What a build may write (downloads, unpacked packages, the result) before it is stopped.
pub const BUILD_DISK_MB_MAX: u64 = 4_096;
/// Dependency builds running at once on a node; more wait their turn.
pub const BUILDS_AT_ONCE: usize = 2;
/// Dependency files larger than this are refused (they are read whole to key the cache).
pub const DEPS_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Layers one function may use (Lambda's limit).
pub const LAYERS_MAX: usize = 5;

/// The shortest timer rate: a finer schedule is a busy loop, better served by a queue.
pub const TIMER_EVERY_MS_MIN: u64 = 1_000;

/// The longest `every` rate (a year); longer schedules are cron expressions or `at`.
pub const TIMER_EVERY_MS_MAX: u64 = 366 * 86_400_000;

/// Missed fires `catch_up: all` replays at most, oldest dropped first: a timer that was
/// down for a month must not flood its function.
pub const TIMER_CATCH_UP_MAX: usize = 100;

/// Longest event pattern of an event trigger, as compact JSON. EventBridge allows 2,048
/// characters by default and 4,096 on request, so every pattern written for it fits; the
/// bound keeps a rule's compiled matcher small and its parse cheap at deploy.
pub const EVENT_PATTERN_BYTES_MAX: usize = 4 * 1024;
/// Deepest nesting of objects in an event pattern (a `$or` branch is a level too). Matching
/// recurses once per level, so this bounds the stack an event can make it use.
pub const EVENT_PATTERN_DEPTH_MAX: usize = 10;
/// Most values (or matchers) in one array of an event pattern: they are tried one after
/// the other for every event, so this bounds the time one field can take.
pub const EVENT_PATTERN_VALUES_MAX: usize = 100;
/// Most branches of one `$or` in an event pattern: each is tried in turn against the event.
pub const EVENT_PATTERN_OR_BRANCHES_MAX: usize = 16;
/// Largest event the bus takes (EventBridge's PutEvents entry and Lambda's asynchronous
/// payload limit): every matching function gets a copy committed to the queue.
pub const EVENT_BYTES_MAX: usize = 256 * 1024;
/// Most events in one batch (a CloudEvents batch, a PutEvents request): every event of it
/// is committed, once per matching rule, before the answer, so this bounds that work.
pub const EVENT_BATCH_MAX: usize = 100;

// The object store (S3 API). The sizes are S3's own, so that a client's multipart
// thresholds and a bucket moved from S3 fit unchanged.

/// Largest object in one PUT (S3's 5 GiB): past it clients must use multipart uploads,
/// which they do on their own well below it.
pub const OBJECT_PUT_SIZE_BYTES_MAX: u64 = 5 * 1024 * 1024 * 1024;

/// Largest object made by a multipart upload (S3's 5 TiB).
pub const OBJECT_SIZE_BYTES_MAX: u64 = 5 * 1024 * 1024 * 1024 * 1024;

/// Largest part of a multipart upload (S3's 5 GiB, as a single PUT).
pub const OBJECT_PART_SIZE_BYTES_MAX: u64 = OBJECT_PUT_SIZE_BYTES_MAX;

/// Smallest part of a multipart upload but the last (S3's 5 MiB): it keeps the part count
/// of a large object, and so the work of completing it, bounded.
pub const OBJECT_PART_SIZE_BYTES_MIN: u64 = 5 * 1024 * 1024;

/// Part numbers run 1..=this (S3's 10,000).
pub const OBJECT_PARTS_MAX: i32 = 10_000;

/// Longest object key in UTF-8 bytes (S3's 1,024).
pub const OBJECT_KEY_BYTES_MAX: usize = 1024;

/// User metadata (`x-amz-meta-*` names and values together) per object, in bytes (S3's
/// 2 KB): it is stored in the object's row and sent back in every GET's headers.
pub const OBJECT_METADATA_BYTES_MAX: usize = 2048;

/// Longest standard header stored with an object (content type, encoding, disposition,
/// language, cache control): they are echoed in every GET, so they are bounded as a header.
pub const OBJECT_HEADER_BYTES_MAX: usize = 1024;

/// Buckets on a node (S3's default quota per account is 10,000; a bucket costs a row and
/// the listing of all of them is one page).
pub const BUCKETS_MAX: usize = 10_000;

/// Multipart uploads in progress per bucket: each holds parts on disk until it is completed
/// or aborted, so an abandoned client's uploads cannot grow without bound.
pub const OBJECT_UPLOADS_PER_BUCKET_MAX: usize = 10_000;

/// Keys in one DeleteObjects request (S3's 1,000).
pub const OBJECT_DELETE_KEYS_MAX: usize = 1000;

/// Most entries in one listing page (S3's 1,000; `max-keys` above it is lowered to it).
pub const OBJECT_LIST_KEYS_MAX: usize = 1000;

/// Bucket names: 3..=63 characters (S3's rules, `model::bucket::validate_bucket_name`).
pub const BUCKET_NAME_LEN_MIN: usize = 3;
pub const BUCKET_NAME_LEN_MAX: usize = 63;

/// How long bytes on disk that no object or part refers to are kept before the background
/// collector removes them: longer than any upload takes from its rename into place to its
/// row's commit. At start-up (the data dir's lock held, nothing in flight) they go at once.
pub const OBJECT_GARBAGE_GRACE_MS: i64 = 3_600_000;

/// Hops of a chain of calls through bucket events (a function writing into a bucket that
/// calls a function, ...) before the next event is not delivered: Lambda's recursive loop
/// detection stops at 16, and a pipeline deeper than that is almost surely a loop.
pub const OBJECT_EVENT_HOPS_MAX: u32 = 16;

/// Messages in one call of a queue trigger (Lambda's SQS mapping takes up to 10,000 with a
/// window; a thousand keeps a batch well inside the 6 MB payload for small messages).
pub const QUEUE_BATCH_SIZE_MAX: u32 = 1_000;

/// The longest a queue trigger waits to fill a batch (Lambda's `MaximumBatchingWindowInSeconds`
/// is at most 300).
pub const QUEUE_BATCH_WINDOW_MS_MAX: u32 = 300_000;

/// Retries of a message after its function failed with it.
pub const QUEUE_MAX_RETRIES_MAX: u32 = 100;
pub const QUEUE_MAX_RETRIES_DEFAULT: u32 = 3;

/// The delay before a message's first retry (doubling after): bounds either way, so a
/// failing function is neither hammered nor left alone for hours.
pub const QUEUE_RETRY_DELAY_MS_MIN: u32 = 10;
pub const QUEUE_RETRY_DELAY_MS_MAX: u32 = 300_000;
pub const QUEUE_RETRY_DELAY_MS_DEFAULT: u32 = 1_000;

/// A queue message's age past which it is not retried again (at least a second; by
/// default six hours, as an asynchronous event's).
pub const QUEUE_MAX_RECORD_AGE_MS_MIN: u32 = 1_000;
pub const QUEUE_MAX_RECORD_AGE_MS_DEFAULT: u32 = 21_600_000;

/// Batches of one queue trigger in flight at once at most.
pub const QUEUE_CONCURRENCY_MAX: u32 = 1_000;

/// JetStream's acknowledgement wait a trigger may set.
pub const QUEUE_ACK_WAIT_MS_MIN: u32 = 1_000;
pub const QUEUE_ACK_WAIT_MS_MAX: u32 = 3_600_000;

/// A topic, subject or stream name (MQTT allows 65,535 bytes; none needs more than this).
pub const QUEUE_KEY_BYTES_MAX: usize = 1_024;

/// Messages a queue trigger holds (fetched, waiting or in flight) at most, whatever its
/// batch size and concurrency: a bound on memory.
pub const QUEUE_HELD_MAX: usize = 10_000;

/// Workflows (Amazon States Language). A definition's JSON, as Step Functions allows.
pub const FLOW_DEFINITION_BYTES_MAX: usize = 1024 * 1024;
/// States in one definition, counting those inside Parallel branches and Map processors.
pub const FLOW_STATES_MAX: usize = 10_000;
/// A state's name, as Step Functions allows.
pub const FLOW_STATE_NAME_LEN_MAX: usize = 80;
/// Parallel and Map states inside one another: each level is a frame the engine keeps.
pub const FLOW_NESTING_MAX: usize = 8;
/// Events in one execution's history (Step Functions' hard quota); past it the execution
/// fails rather than grow without bound.
pub const FLOW_HISTORY_EVENTS_MAX: u64 = 25_000;
/// Largest input, output or result of a state, serialized (Step Functions' 256 KB).
pub const FLOW_DATA_BYTES_MAX: usize = 256 * 1024;
/// Items one Map state iterates over.
pub const FLOW_MAP_ITEMS_MAX: usize = 10_000;
/// Iterations of an inline Map that run at once (Step Functions' inline bound).
pub const FLOW_MAP_CONCURRENCY_MAX: u32 = 40;
/// Executions of one flow that may run at once; past it a start is refused (429).
pub const FLOW_RUNNING_EXECUTIONS_MAX: usize = 10_000;
/// Longest a synchronous start waits for its execution to end.
pub const FLOW_SYNC_WAIT_MS_MAX: u64 = 300_000;
/// An execution's default and longest life, and a Wait's longest (Step Functions' year).
pub const FLOW_EXECUTION_SECONDS_MAX: u64 = 365 * 24 * 3600;
/// An execution's name (the idempotency key of a start), as Step Functions allows.
pub const FLOW_EXECUTION_NAME_LEN_MAX: usize = 80;
/// Executions a trigger's events (timer fires, bucket events, queue batches) start at once
/// per flow on a node: a start is one short transaction, so a few in flight keep the
/// store busy without letting a burst of events take every writer turn.
pub const FLOW_TRIGGER_STARTS_AT_ONCE: u32 = 8;

/// How often a node writes its heartbeat row.
pub const NODE_HEARTBEAT_MS: u64 = 1_000;
/// A node not seen for this long is dead to the others (ten missed heartbeats: a long GC
/// pause or a slow store does not make a live node look dead).
pub const NODE_DEAD_AFTER_MS: u64 = 10_000;
/// A dead node's row is forgotten after this long (`nimbus nodes ls` shows it until then).
pub const NODE_FORGET_AFTER_MS: u64 = 24 * 3600 * 1000;
/// How long a node tries to connect to a call's home before it runs the call itself.
pub const FORWARD_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// What a forwarded call may take beyond its cold start and its function's timeout: the
/// event's and the answer's way between the nodes.
pub const FORWARD_MARGIN_MS: u64 = 5_000;
/// How long a node runs a version's calls itself after its home said it had no room, before
/// asking the home again. Under a burst past the home's `max_instances` every call would
/// otherwise pay a round trip to hear "full"; a tenth of a second is shorter than most
/// calls, so a freed slot on the home is soon used again.
pub const FORWARD_FULL_BACKOFF_MS: i64 = 100;
/// How many versions' "home full" marks a node keeps; past it expired marks are dropped,
/// and then all (a forgotten mark costs one round trip).
pub const FORWARD_FULL_MARKS_MAX: usize = 4_096;

/// How long a node holds the asynchronous invocations it runs without renewing: past
/// this, any node queues them again (their node died or stalled).
pub const ASYNC_LEASE_MS: u64 = 30_000;
/// How often a node renews its leases and queues again what others' expired leases left:
/// a third of the lease, so two renewals may fail before a live node loses one.
pub const ASYNC_LEASE_RENEW_MS: u64 = 10_000;
