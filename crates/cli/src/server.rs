//! `nimbus server`: the composition root. It opens the stores in the data dir, installs the
//! runtimes, builds the pool and the API, and serves until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "NIMBUS_LISTEN", default_value = crate::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Address the S3 API (the object store) listens on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "NIMBUS_S3_LISTEN", default_value = crate::DEFAULT_S3_LISTEN)]
    s3_listen: SocketAddr,
    /// Buckets with a website are served by the main listener to requests for
    /// `{bucket}.{domain}` (`site.localhost:7700` by default; browsers resolve
    /// `*.localhost` to loopback).
    #[arg(long, env = "NIMBUS_WEBSITE_DOMAIN", default_value = "localhost", value_parser = website_domain)]
    website_domain: String,
    /// Where the state every node shares lives: `postgres://USER:PASSWORD@HOST/DB` for a
    /// cluster of nodes on one PostgreSQL database. Default: SQLite in the data dir (one
    /// node).
    #[arg(long, env = "NIMBUS_DB")]
    db: Option<String>,
    /// Most connections this node keeps to the `--db` PostgreSQL database (besides one that
    /// listens for changes). Nodes × this must stay under the server's `max_connections`.
    #[arg(long, env = "NIMBUS_DB_CONNECTIONS_MAX", default_value_t = store_postgres::CONNECTIONS_MAX, value_parser = clap::value_parser!(u32).range(2..=256))]
    db_connections_max: u32,
    /// Where code archives and object bytes live: `s3://BUCKET[/PREFIX]?endpoint=URL`
    /// (credentials from the `AWS_*` variables or `access_key_id`/`secret_access_key` in
    /// the query). Default: the data dir.
    #[arg(long, env = "NIMBUS_BLOBS")]
    blobs: Option<String>,
    /// The URL other nodes reach this node's API at. Default: `http://` and the listening
    /// address (set it when listening on 0.0.0.0).
    #[arg(long, env = "NIMBUS_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Python 3 interpreter for `python3` functions (default: the system one).
    #[arg(long, env = "NIMBUS_PYTHON3")]
    python3: Option<PathBuf>,
    /// Node.js for `nodejs` functions (default: the system one).
    #[arg(long, env = "NIMBUS_NODE")]
    node: Option<PathBuf>,
    /// Most function instances alive on this node at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    instances_max: u32,
    /// Most memory for function instances on this node (the sum of their `memory_mb`).
    #[arg(long, default_value_t = 16_384, value_parser = clap::value_parser!(u64).range(64..=4_194_304))]
    memory_max_mb: u64,
    /// Prewarmed runtime processes kept per runtime (Python, Node.js) to make cold starts
    /// short; 0 turns them off.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    prewarm: u32,
    /// Start Python instances by spawning an interpreter each, not by forking them from a
    /// fork server that has loaded the runtime once (for measuring what the fork server saves).
    #[arg(long)]
    no_fork_server: bool,
    /// Run instances as plain processes, without namespaces, uids or cgroups.
    #[arg(long, conflicts_with = "require_sandbox")]
    no_sandbox: bool,
    /// Refuse to start unless every sandbox protection (namespaces, per-function uids,
    /// cgroups) is available.
    #[arg(long)]
    require_sandbox: bool,
    /// First uid (and gid) of the range functions run as, one per function, when the server
    /// runs as root.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1000..=4_000_000_000))]
    uid_base: u32,
    /// Number of uids in that range.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    uid_count: u32,
    /// Largest asynchronous event, in KB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=6144))]
    async_payload_max_kb: u64,
    /// How long finished asynchronous invocations (results, dead letters) and idempotency
    /// keys are kept, in hours.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
    async_retention_hours: u64,
    /// Delay before the first retry of a failed asynchronous invocation; each further
    /// retry doubles it.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=300_000))]
    async_retry_base_ms: u64,
    /// How long this node's hold on an asynchronous invocation it runs lasts unrenewed (it
    /// renews every third of it): how soon another node runs again what a dead node held.
    #[arg(long, default_value_t = model::limits::ASYNC_LEASE_MS, value_parser = clap::value_parser!(u64).range(1_000..=600_000))]
    async_lease_ms: u64,
    /// Most asynchronous events waiting per function; past it submissions get 429.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    async_queue_per_function_max: u64,
    /// Keep no invocation records, logs, lifecycle history or metrics (a baseline for
    /// measuring what they cost).
    #[arg(long)]
    no_telemetry: bool,
    /// Export a span per call to this OpenTelemetry collector (OTLP/HTTP, e.g.
    /// http://localhost:4318; spans go to <URL>/v1/traces).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// The service.name of exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "nimbus")]
    otlp_service_name: String,
    /// How long invocation records (statistics, usage) are kept, in hours.
    #[arg(long, default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=744))]
    records_retention_hours: u64,
    /// How long log lines and lifecycle events are kept, in hours.
    #[arg(long, default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=744))]
    logs_retention_hours: u64,
    /// Log bytes kept per function, in KB; past it the oldest lines are dropped (and
    /// counted).
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(16..=16_777_216))]
    logs_function_max_kb: u64,
    /// Size of the telemetry database at most, in MB; past it the oldest records, log lines
    /// and events are dropped before their age (and counted).
    #[arg(long, default_value_t = model::limits::TELEMETRY_MAX_MB_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    telemetry_max_mb: u64,
    /// Billed duration is rounded up to a multiple of this many milliseconds (1 as Lambda
    /// today, 100 as Lambda until 2020).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    billing_granularity_ms: u32,
    /// Price of a million requests in usage estimates (default: AWS Lambda's).
    #[arg(long, default_value_t = 0.20)]
    price_per_million_requests: f64,
    /// Price of a GB-second of compute in usage estimates.
    #[arg(long, default_value_t = 0.000_016_666_7)]
    price_per_gb_second: f64,
    /// Price of a GB-second of provisioned (`min_instances`) time in usage estimates.
    #[arg(long, default_value_t = 0.000_004_166_7)]
    price_per_provisioned_gb_second: f64,
    /// Largest unpacked size of a code archive, in MB.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=10_240))]
    unpacked_max_mb: u64,
    /// Keeps idle instances running between calls (by default an instance with no call for
    /// 100 ms is frozen, so work a function leaves behind after returning takes no CPU).
    #[arg(long)]
    no_freeze_idle: bool,
    /// The AWS region functions are told they run in (`AWS_REGION`, ARNs), so SDKs inside
    /// them need no region argument.
    #[arg(long, env = "NIMBUS_REGION", default_value = "us-east-1")]
    region: String,
    /// The 12-digit account id in the ARNs functions see.
    #[arg(long, default_value = "000000000000", value_parser = account_id)]
    account_id: String,
    /// Events a second one key may publish to the bus (`POST /v1/events`), on this node.
    #[arg(long, default_value_t = api::bus::EVENTS_PER_SECOND_PER_KEY_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    bus_events_per_second_per_key: u32,
    /// Longest a dependency build (pip or npm at deploy) may run, in milliseconds.
    #[arg(long, default_value_t = model::limits::BUILD_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    build_timeout_ms: u64,
    /// Memory a dependency build may use, in MB.
    #[arg(long, default_value_t = model::limits::BUILD_MEMORY_MB, value_parser = clap::value_parser!(u32).range(256..=16_384))]
    build_memory_mb: u32,
    /// Lets webhook destinations be loopback, private or link-local addresses (refused by
    /// default: a tenant's webhook must not reach into the operator's network).
    #[arg(long)]
    allow_private_webhooks: bool,
    /// Client connections open at once (default: three quarters of the file limit, at most
    /// 16,384). At the cap the longest-idle connection is closed to admit a new one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    connections_max: Option<u64>,
    /// Time for a request header to arrive, and for the next request on an idle
    /// kept-alive connection, in milliseconds.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    header_read_timeout_ms: u64,
    /// The slowest request body accepted once `--body-grace-ms` has passed, in bytes per
    /// second.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_073_741_824))]
    body_min_rate_bytes_per_s: u64,
    /// How long a request body may take before the minimum rate applies, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    body_grace_ms: u64,
    /// Request body bytes buffered at once across the node, in MB; past it requests are
    /// answered 503 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(8..=65_536))]
    body_budget_mb: u64,
}

/// File descriptors kept for everything but client connections (instances' sockets and
/// pipes, the databases, the jail helpers), as a share of the limit.
fn connections_max_default() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // Take the hard limit as the soft one: the default soft limit (1,024) is far below what
    // a server needs, and raising it is what every server does.
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    let files = getrlimit(Resource::Nofile).current.unwrap_or(1_048_576);
    ((files as usize) * 3 / 4).clamp(16, 16_384)
}

/// How often unreferenced code archives and trees are looked for.
const CODE_COLLECTION_EVERY: Duration = Duration::from_secs(600);

/// How often object bytes that nothing refers to are looked for.
const OBJECT_COLLECTION_EVERY: Duration = Duration::from_secs(600);

/// How long in-flight requests get to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(args: &ServerArgs, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes are for a person at a terminal; in a file or a journal they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let data_dir = data_dir.unwrap_or_else(crate::default_data_dir);
    create_private_dir(&data_dir)?;
    // New at every start, unlike the pid (pid 1 in every container): it names this
    // server's cgroups, so a restart never meets its killed predecessor's names.
    let start_token = hex::encode(rand::random::<[u8; 8]>());
    // Held until the process exits (a SIGKILL too): one server per data dir.
    let _lock = lock_data_dir(&data_dir, &start_token)?;
    let node_id = node_id(&data_dir)?;
    let stores = open_stores(args.db.as_deref(), args.db_connections_max, &data_dir).await?;
    let token = admin_token(&data_dir)?;
    // Every node of a cluster accepts the same token: the first node's, kept in the store
    // and written to each node's data dir for its CLI.
    let token = if stores.shared {
        share_admin_token(&data_dir, stores.cluster.as_ref(), token).await?
    } else {
        token
    };
    let meta = stores.meta.clone();
    // The object store's bytes; what a crash left (temporary files, bytes whose row never
    // committed or whose removal was cut short) goes now, before anything is served.
    let bytes = open_bytes(args.blobs.as_deref(), &data_dir, stores.shared).await?;
    let object_files = bytes.objects.clone();
    let object_meta: Arc<dyn store::ObjectMeta> = stores.objects.clone();
    // On a shared store another node may be between writing bytes and committing their
    // row: only bytes older than the grace period are anybody's leftovers.
    let grace_ms = if stores.shared || bytes.shared {
        model::limits::OBJECT_GARBAGE_GRACE_MS
    } else {
        0
    };
    let swept_objects = object_files
        .sweep_staging()
        .await
        .context("sweeping unfinished object uploads")?
        + s3::collect_garbage(object_meta.as_ref(), object_files.as_ref(), grace_ms)
            .await
            .map_err(|e| anyhow::anyhow!("collecting unreferenced object bytes: {e}"))?;
    if swept_objects > 0 {
        tracing::info!(
            swept_objects,
            "removed object bytes an interrupted upload or removal left"
        );
    }
    let blobs = bytes.blobs.clone();
    let code = store::CodeCache::new(
        data_dir.join("code"),
        blobs.clone(),
        args.unpacked_max_mb * 1024 * 1024,
    );
    // What a crash left half-written: the data dir's lock says no other server uses it.
    let swept = code
        .sweep_staging()
        .await
        .context("sweeping staging leftovers")?
        + blobs
            .sweep_leftovers()
            .await
            .context("sweeping blob leftovers")?;
    // Build scratch directories are this server's alone; a crash mid-build leaves one.
    let builds = data_dir.join("builds");
    let swept = swept
        + match std::fs::read_dir(&builds) {
            Ok(list) => list
                .flatten()
                .filter(|e| std::fs::remove_dir_all(e.path()).is_ok())
                .count() as u64,
            Err(_) => 0,
        };
    if swept > 0 {
        tracing::info!(
            swept,
            "removed what an interrupted upload or build left behind"
        );
    }
    let runtimes = sandbox::Runtimes::install(
        &data_dir.join("runtime"),
        args.python3.clone(),
        args.node.clone(),
    )
    .context("installing the runtime shims")?;
    for runtime in model::Runtime::ALL {
        match runtimes.interpreter(runtime) {
            Some(path) => {
                tracing::info!(%runtime, interpreter = %path.display(), "runtime available")
            }
            None => tracing::warn!(%runtime, "runtime unavailable: interpreter not found"),
        }
    }
    let isolation = if args.no_sandbox {
        tracing::warn!("sandbox off (--no-sandbox): instances run as plain processes of this user");
        None
    } else {
        let helper = std::env::current_exe().context("finding the nimbus binary")?;
        // Interpreters outside the system directories (a virtualenv) must be visible in
        // the jail.
        let extra_dirs = model::Runtime::ALL
            .into_iter()
            .filter(|r| r.has_shim())
            .filter_map(|r| runtimes.interpreter(r).map(Path::to_path_buf))
            .collect::<Vec<_>>();
        let isolation = sandbox::Isolation::probe(sandbox::IsolationConfig {
            helper,
            data_dir: data_dir.clone(),
            node_id: node_id.clone(),
            start_token,
            server_lock: data_dir.join(LOCK_FILE),
            cgroup_records: PathBuf::from(sandbox::CGROUP_RECORDS),
            code_root: data_dir.join("code"),
            uid_base: args.uid_base,
            uid_count: args.uid_count,
            interpreters: extra_dirs,
        });
        for p in isolation.report() {
            if p.active {
                tracing::info!(protection = p.name, "sandbox: {} on: {}", p.name, p.detail);
            } else {
                tracing::warn!(protection = p.name, "sandbox: {} OFF: {}", p.name, p.detail);
            }
        }
        if args.require_sandbox && !isolation.complete() {
            let missing: Vec<String> = isolation
                .report()
                .into_iter()
                .filter(|p| !p.active)
                .map(|p| format!("{} ({})", p.name, p.detail))
                .collect();
            bail!(
                "--require-sandbox: not every protection is available: {}",
                missing.join("; ")
            );
        }
        isolation.jails().then(|| Arc::new(isolation))
    };
    let pool = sandbox::Pool::new(
        runtimes,
        sandbox::PoolConfig {
            instances_max: args.instances_max as usize,
            memory_max_mb: args.memory_max_mb,
            prewarm: args.prewarm as usize,
            fork_server: !args.no_fork_server,
            isolation: isolation.clone(),
            // Idle instances are frozen; the flag that turns it off comes with the CLI work.
            freeze_idle: !args.no_freeze_idle,
        },
    );
    let queue = stores.queue.clone();
    let timer_store = stores.meta.clone();
    let flow_store = stores.flows.clone();
    let cluster_store = stores.cluster.clone();
    let platform = Arc::new(platform::Platform::new(meta, blobs, code, pool.clone()));
    let otlp = match &args.otlp_endpoint {
        None => None,
        Some(_) if args.no_telemetry => {
            bail!(
                "--otlp-endpoint needs telemetry: spans are exported by the recorder that --no-telemetry turns off"
            )
        }
        Some(endpoint) => Some(
            platform::otlp::OtlpConfig::new(endpoint, &args.otlp_service_name)
                .map_err(anyhow::Error::msg)?,
        ),
    };
    if let Some(otlp) = &otlp {
        tracing::info!(endpoint = %otlp.endpoint, "exporting spans over OTLP/HTTP");
    }
    if !args.no_telemetry {
        let telemetry = store::SqliteTelemetry::open(&data_dir.join("telemetry.db"))
            .await
            .context("opening the telemetry database")?;
        platform.enable_telemetry(
            Arc::new(telemetry),
            platform::recorder::RecorderConfig {
                billing_granularity_ms: args.billing_granularity_ms,
                retention: store::telemetry::Retention {
                    records_max_age_ms: args.records_retention_hours as i64 * 3_600_000,
                    logs_max_age_ms: args.logs_retention_hours as i64 * 3_600_000,
                    log_bytes_per_function_max: args.logs_function_max_kb as i64 * 1024,
                    telemetry_max_bytes: args.telemetry_max_mb as i64 * 1024 * 1024,
                },
            },
            otlp,
        );
    }
    platform.set_aws_identity(platform::AwsIdentity {
        region: args.region.clone(),
        account_id: args.account_id.clone(),
    });
    platform.enable_builds(platform::BuildConfig {
        scratch_dir: data_dir.join("builds"),
        node_id: node_id.clone(),
        timeout_ms: args.build_timeout_ms,
        memory_mb: args.build_memory_mb,
    });
    // The triggers: the gateway (routes), the timers and the durable queue. They check
    // deploys from now on and start after the platform has loaded.
    let gateway = api::Gateway::new();
    platform.add_trigger(gateway.clone());
    platform.add_trigger(timers::Timers::new(timer_store));
    let bus = platform::bus::EventBus::new();
    platform.add_trigger(bus.clone());
    let bucket_events = s3::events::BucketEvents::new(object_meta.clone(), &node_id);
    platform.add_trigger(bucket_events.clone());
    // Queue triggers: one source per broker, each a crate fencing its client library.
    platform.add_trigger(platform::queue::QueueTriggers::new(
        &node_id,
        vec![
            Arc::new(queue_nats::NatsConnector),
            Arc::new(queue_mqtt::MqttConnector),
            Arc::new(queue_amqp::AmqpConnector),
            Arc::new(queue_redis::RedisConnector),
        ],
    ));
    platform
        .enable_async(
            queue,
            platform::async_invoke::AsyncConfig {
                payload_max_bytes: args.async_payload_max_kb as usize * 1024,
                retention_ms: args.async_retention_hours * 3_600_000,
                retry_base_ms: args.async_retry_base_ms,
                queue_per_function_max: args.async_queue_per_function_max as usize,
                allow_private_webhooks: args.allow_private_webhooks,
                node_id: node_id.clone(),
                shared: stores.shared,
                lease_ms: args.async_lease_ms,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("starting asynchronous invocation: {e}"))?;
    // Workflows: executions in the store, their function calls through the platform.
    platform.enable_flows(flow_store, &node_id);
    // Bound before the functions load, so every instance (those `min_instances` starts
    // now included) is told where the bus is.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let s3_listener = tokio::net::TcpListener::bind(args.s3_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--s3-listen)", args.s3_listen))?;
    let s3_addr = s3_listener.local_addr()?;
    platform.set_bus_endpoint(format!("http://{addr}"), api::bus_key(&token));
    platform.enable_function_key(
        &token,
        format!("http://{s3_addr}"),
        format!("http://{addr}"),
    );
    // Listed among the nodes before anything is served.
    let advertise_url = args
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    platform
        .enable_membership(cluster_store, &node_id, &advertise_url)
        .await
        .map_err(|e| anyhow::anyhow!("registering this node: {e}"))?;
    // Other nodes' writes, from before `load` reads everything on.
    if let Some(feed) = stores.feed.clone() {
        platform
            .follow_changes(feed)
            .await
            .map_err(|e| anyhow::anyhow!("following other nodes' changes: {e}"))?;
    }
    // A function's calls go to its home node while other nodes share the store.
    platform.set_forwarder(Arc::new(api::HttpForwarder::new(&token)));
    platform
        .load()
        .await
        .map_err(|e| anyhow::anyhow!("loading functions and keys: {e}"))?;
    let admin_key = platform
        .admin_aws_key()
        .await
        .map_err(|e| anyhow::anyhow!("making the admin's access key: {e}"))?;
    write_aws_credentials(&data_dir, &admin_key, &args.region)?;
    platform
        .start_triggers()
        .await
        .map_err(|e| anyhow::anyhow!("starting the triggers: {e}"))?;
    platform.start_code_collection(CODE_COLLECTION_EVERY);
    for (flag, price) in [
        (
            "--price-per-million-requests",
            args.price_per_million_requests,
        ),
        ("--price-per-gb-second", args.price_per_gb_second),
        (
            "--price-per-provisioned-gb-second",
            args.price_per_provisioned_gb_second,
        ),
    ] {
        if !(price.is_finite() && price >= 0.0) {
            anyhow::bail!("{flag} must be a price of zero or more, not {price}");
        }
    }
    // The Lambda API's paths are its own; Step Functions' API takes `POST /` requests
    // that carry its `X-Amz-Target` ahead of all (a layer, so a user's route on `/` keeps
    // every other request); everything else is the control API's or the gateway's.
    let app = lambda::router(platform.clone()).merge(api::router(api::AppState {
        platform: platform.clone(),
        gateway,
        bus,
        bus_limits: std::sync::Arc::new(api::bus::Limits::new(args.bus_events_per_second_per_key)),
        // Telemetry queries ask the other nodes too, with the node key.
        fanout: Arc::new(api::fanout::Fanout::new(&token)),
        token: token.into(),
        prices: api::observe::Prices {
            per_million_requests: args.price_per_million_requests,
            per_gb_second: args.price_per_gb_second,
            per_provisioned_gb_second: args.price_per_provisioned_gb_second,
        },
        objects: Some(Arc::new(api::buckets::Objects {
            meta: object_meta.clone(),
            files: object_files.clone(),
            website_domain: args.website_domain.clone(),
        })),
    }));
    let app = lambda::with_step_functions(app, platform.clone());

    let s3_service = s3::service(
        s3::ObjectStore::new(object_meta.clone(), object_files.clone(), &args.region)
            .with_events(bucket_events),
        platform.clone(),
    );
    let (s3_stop_tx, s3_stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(s3::serve(
        s3_listener,
        s3_service,
        s3::ServeConfig {
            connections_max: args
                .connections_max
                .map_or_else(connections_max_default, |n| n as usize),
            header_read_timeout_ms: args.header_read_timeout_ms,
        },
        async move {
            let _ = s3_stop_rx.await;
        },
    ));
    {
        let (meta, files) = (object_meta.clone(), object_files.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(OBJECT_COLLECTION_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                match s3::collect_garbage(
                    meta.as_ref(),
                    files.as_ref(),
                    model::limits::OBJECT_GARBAGE_GRACE_MS,
                )
                .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "collected unreferenced object bytes"),
                    Err(e) => tracing::warn!("collecting object bytes: {e}"),
                }
            }
        });
    }

    // Scripts and tests read these lines to find the ports (the S3 line comes first: the
    // main one tells a reader that start-up is over).
    println!("nimbus S3 API listening on http://{s3_addr}");
    println!("nimbus listening on http://{addr}");
    println!(
        "data dir {}; admin token in {}; AWS credentials (Lambda and S3 APIs) in {}",
        data_dir.display(),
        data_dir.join("admin.token").display(),
        data_dir.join(AWS_CREDENTIALS).display()
    );

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let listener_config = api::listener::ListenerConfig {
        connections_max: args
            .connections_max
            .map_or_else(connections_max_default, |n| n as usize),
        header_read_timeout_ms: args.header_read_timeout_ms,
        body_min_rate_bytes_per_s: args.body_min_rate_bytes_per_s,
        body_grace_ms: args.body_grace_ms,
        body_budget_bytes: args.body_budget_mb * 1024 * 1024,
    };
    tracing::info!(
        connections_max = listener_config.connections_max,
        "accepting client connections"
    );
    let serve = api::listener::serve(listener, app, listener_config, async move {
        stop_signal().await;
        let _ = stopping_tx.send(());
    });
    // After the stop signal, in-flight requests get a bounded grace period to finish.
    let grace = async move {
        let _ = stopping_rx.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = serve => served.context("serving")?,
        _ = grace => tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}"),
    }
    let _ = s3_stop_tx.send(());
    platform.stop_triggers().await;
    platform.stop_membership().await;
    pool.shutdown().await;
    platform.flush_telemetry().await;
    if let Some(isolation) = &isolation {
        isolation.shutdown();
    }
    tracing::info!("stopped; all instances killed");
    Ok(ExitCode::SUCCESS)
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stop signal received; finishing in-flight requests");
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the data dir {}", dir.display()))
}

/// The data dir's lock file (see `lock_data_dir`).
const LOCK_FILE: &str = "server.lock";

/// Takes the data dir's lock, or says which server holds it. Two servers on one data dir
/// would dispatch the same queued events twice and remove each other's cgroups; the lock
/// is also what lets a server treat cgroups named with its node id as a dead
/// predecessor's, and what tells other servers whether this one is alive (they take it for
/// an instant, see `sandbox::owner`). The file says who holds it, a line each: the pid (in
/// the server's pid namespace) and the start token, which names the server's cgroups
/// (`nimbus-<node id>-<start token>`).
fn lock_data_dir(dir: &Path, start_token: &str) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // Another server asking whether the last one here is alive holds the lock for an
    // instant: a start waits that out (200 ms) before it takes the lock for a server's.
    let mut tries = 0;
    while let Err(e) =
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
    {
        if e != rustix::io::Errno::WOULDBLOCK {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("locking {}", path.display()));
        }
        tries += 1;
        if tries < 20 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        bail!(
            "another nimbus server (pid {}) uses the data dir {}; stop it, or give this one its own --data-dir",
            holder.lines().next().unwrap_or("").trim(),
            dir.display()
        );
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}\n{start_token}\n", std::process::id())?;
    Ok(file)
}

/// This data dir's node id: 16 hex digits made at first start. It names the node's cgroups
/// (and, in cluster mode, the node), so a restarted server finds what its killed
/// predecessor left even where pids have been reused.
fn node_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if id.trim().len() == 16 && id.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Ok(id.trim().to_string());
        }
        Ok(id) => bail!(
            "{} holds {:?}, not a node id of 16 hex digits; delete it to have a new one made",
            path.display(),
            id.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = hex::encode(rand::random::<[u8; 8]>());
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(id)
}

/// The admin token: made at first start and written with mode 0600, read afterwards.
fn admin_token(dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => bail!(
            "{} is empty; delete it to have a new token made",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "created the admin token");
    Ok(token)
}

/// The state every node shares, behind the store traits.
struct Stores {
    meta: Arc<dyn store::MetaStore>,
    queue: Arc<dyn store::AsyncQueue>,
    flows: Arc<dyn store::FlowStore>,
    cluster: Arc<dyn store::ClusterStore>,
    objects: Arc<dyn store::ObjectMeta>,
    /// Other nodes' writes; only a shared database has them.
    feed: Option<Arc<dyn store::ChangeFeed>>,
    /// Whether other nodes may share the store.
    shared: bool,
}

/// Opens the store `--db` names: PostgreSQL, shared by a cluster, or SQLite in the data dir.
async fn open_stores(
    db: Option<&str>,
    connections_max: u32,
    data_dir: &Path,
) -> anyhow::Result<Stores> {
    match db {
        None => {
            let sqlite = Arc::new(
                store::SqliteStore::open(&data_dir.join("nimbus.db"))
                    .await
                    .with_context(|| format!("opening the database in {}", data_dir.display()))?,
            );
            Ok(Stores {
                meta: sqlite.clone(),
                queue: sqlite.clone(),
                flows: sqlite.clone(),
                cluster: sqlite.clone(),
                objects: sqlite,
                feed: None,
                shared: false,
            })
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let shown = redact_url(url);
            let pg = Arc::new(
                store_postgres::PgStore::connect(url, connections_max)
                    .await
                    .with_context(|| format!("connecting to PostgreSQL at {shown} (--db)"))?,
            );
            let feed = pg
                .change_feed()
                .await
                .with_context(|| format!("listening for changes on {shown}"))?;
            tracing::info!(db = %shown, "state on PostgreSQL, shared with the other nodes");
            Ok(Stores {
                meta: pg.clone(),
                queue: pg.clone(),
                flows: pg.clone(),
                cluster: pg.clone(),
                objects: pg,
                feed: Some(Arc::new(feed)),
                shared: true,
            })
        }
        Some(other) => bail!(
            "--db: `{}` is not a postgres:// URL; leave --db out for the embedded SQLite database",
            redact_url(other)
        ),
    }
}

/// Where code archives and object bytes live.
struct Bytes {
    blobs: Arc<dyn store::BlobStore>,
    objects: Arc<dyn store::ObjectBytes>,
    /// Whether other nodes may share them.
    shared: bool,
}

/// Opens the byte stores `--blobs` names: an S3 bucket every node shares, or the data dir.
async fn open_bytes(
    blobs: Option<&str>,
    data_dir: &Path,
    shared_db: bool,
) -> anyhow::Result<Bytes> {
    match blobs {
        None => {
            if shared_db {
                tracing::warn!(
                    "--db is shared but code and object bytes stay in this node's data dir: other nodes cannot run what is deployed here nor read its objects; give every node the same --blobs s3://…"
                );
            }
            Ok(Bytes {
                blobs: Arc::new(store::FsBlobStore::new(data_dir.join("blobs"))),
                objects: Arc::new(
                    store::ObjectFiles::open(data_dir.join("objects"))
                        .context("opening the object store's directory")?,
                ),
                shared: false,
            })
        }
        Some(url) => {
            let s3 = store_s3::open(url, data_dir).map_err(|e| anyhow::anyhow!("--blobs: {e}"))?;
            s3.check()
                .await
                .map_err(|e| anyhow::anyhow!("--blobs: {e}"))?;
            tracing::info!(location = s3.location(), "code and object bytes in S3");
            Ok(Bytes {
                blobs: s3.blobs.clone(),
                objects: s3.objects.clone(),
                shared: true,
            })
        }
    }
}

/// A URL as it may be logged: its password replaced by `***`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The cluster's admin token: the one the store holds (the first node's), else `local`,
/// which becomes it. Written to this node's `admin.token` when it differs, so the CLI on
/// every node uses the token every node accepts.
async fn share_admin_token(
    dir: &Path,
    cluster: &dyn store::ClusterStore,
    local: String,
) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let shared = cluster
        .shared_secret("admin_token", &local)
        .await
        .context("reading the cluster's admin token")?;
    if shared != local {
        let path = dir.join("admin.token");
        let tmp = dir.join(format!(
            "admin.token.{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        writeln!(file, "{shared}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        tracing::info!(path = %path.display(), "took the cluster's admin token");
    }
    Ok(shared)
}

/// The admin's access key in the AWS shared credentials format, for
/// `AWS_SHARED_CREDENTIALS_FILE`.
const AWS_CREDENTIALS: &str = "aws.credentials";

/// Writes the admin's access key to `<data-dir>/aws.credentials` (mode 0600) unless it
/// holds it already: a whole new file renamed into place, so a reader never sees half.
fn write_aws_credentials(
    dir: &Path,
    key: &store::AwsKeyRecord,
    region: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(AWS_CREDENTIALS);
    let text = format!(
        "# The Nimbus admin's access key for the Lambda API (SigV4). Use it with\n\
         # AWS_SHARED_CREDENTIALS_FILE={} and --endpoint-url / endpoint_url.\n\
         [default]\naws_access_key_id = {}\naws_secret_access_key = {}\nregion = {region}\n",
        path.display(),
        key.access_key_id,
        key.secret
    );
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let staging = dir.join(format!("{AWS_CREDENTIALS}.tmp"));
    let _ = std::fs::remove_file(&staging);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .with_context(|| format!("creating {}", staging.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&staging, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// An AWS account id: 12 digits.
fn account_id(s: &str) -> Result<String, String> {
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}` is not an account id (12 digits)"))
    }
}

/// A website domain: DNS labels (lowercased), so that `{bucket}.{domain}` is a host name.
fn website_domain(text: &str) -> Result<String, String> {
    let domain = text.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.is_empty() || domain.len() > 253 || !domain.split('.').all(label_ok) {
        return Err(format!(
            "`{text}` is not a domain name (labels of letters, digits and hyphens)"
        ));
    }
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_logged_without_their_password() {
        assert_eq!(
            redact_url("postgres://nimbus:s3cret@db.example:5432/nimbus?sslmode=require"),
            "postgres://nimbus:***@db.example:5432/nimbus?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://nimbus@db/n"),
            "postgres://nimbus@db/n"
        );
        assert_eq!(redact_url("postgres://db/n"), "postgres://db/n");
        assert_eq!(redact_url("not a url"), "not a url");
        // An `@` in the path is not the user's.
        assert_eq!(redact_url("postgres://h/x@y"), "postgres://h/x@y");
    }

    #[test]
    fn the_lock_names_its_holder_and_its_start() {
        let tmp = tempfile::tempdir().unwrap();
        let _held = lock_data_dir(tmp.path(), "00aa").unwrap();
        let text = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n00aa\n", std::process::id()));
        let refused = lock_data_dir(tmp.path(), "00bb").unwrap_err().to_string();
        assert!(
            refused.starts_with(&format!(
                "another nimbus server (pid {}) uses the data dir",
                std::process::id()
            )),
            "{refused}"
        );
        // The refused start wrote nothing.
        let after = std::fs::read_to_string(tmp.path().join(LOCK_FILE)).unwrap();
        assert_eq!(after, text);
    }

    /// Another server asking whether this data dir's server is alive takes the lock for an
    /// instant; a server starting then waits for it.
    #[test]
    fn a_start_outwaits_a_liveness_check() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LOCK_FILE);
        let asker = std::fs::File::create(&path).unwrap();
        rustix::fs::flock(&asker, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(asker);
        });
        let _held = lock_data_dir(tmp.path(), "00cc").unwrap();
        release.join().unwrap();
    }

    #[test]
    fn website_domains_are_dns_names() {
        assert_eq!(super::website_domain("localhost"), Ok("localhost".into()));
        assert_eq!(
            super::website_domain("Sites.Example.com."),
            Ok("sites.example.com".into())
        );
        for bad in ["", ".", "a..b", "-a.com", "a_b.com", "a b", &"a".repeat(64)] {
            assert!(super::website_domain(bad).is_err(), "{bad}");
        }
    }
}
