//! Running a call on its home node: the seam between placement and the wire.
//!
//! In a cluster a function's calls go to its home node (`placement`), where its warm
//! instances are. `Platform::invoke` decides whether a call goes there; a `Forwarder`
//! (the front door's: `api::forward`, over HTTP) carries it and brings back the answer, as
//! the home's `Platform::invoke_forwarded` gave it. The core knows no HTTP, only this trait.
//!
//! Invariant: a call is forwarded at most once. Only `invoke` forwards, and a forwarded
//! call enters the home through `invoke_forwarded`, which never does; so two nodes whose
//! views of the cluster differ for a moment cannot pass a call back and forth.
//!
//! A call runs once. The home refuses a call it has no room for at once (no queueing
//! there, `Pool::acquire_now`), and the forwarder answers `NotThere` only when the call
//! certainly did not start (refused, or the home could not be reached): then it runs here.
//! A call that may have started on the home and whose answer was lost is an error, never
//! run again.
//!
//! Telemetry follows the instance: the home records the call (record, logs, canary count,
//! metrics); the forwarding node records nothing of it, so each call is counted once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use model::limits;
use sandbox::{Logs, Outcome, Timings};
use store::NodeRecord;

use crate::invoke::{Call, InvocationRecord, Invoked};
use crate::{Error, Platform, now_ms};

/// Carries a call to another node and brings its answer back.
#[async_trait::async_trait]
pub trait Forwarder: Send + Sync {
    /// Runs `call` with `event` on `node` (through its `invoke_forwarded`), waiting at most
    /// `timeout` for the answer. `Forwarded::NotThere` means the call did not start there
    /// (the node had no room, refused the request, or could not be reached); `Err`, that
    /// the home refused it as this node would have (`function_not_found`…), or that it may
    /// have run there with its answer lost: it must not be run again.
    async fn forward(
        &self,
        node: &NodeRecord,
        call: &Call,
        event: Bytes,
        timeout: Duration,
    ) -> Result<Forwarded, Error>;
}

/// What became of a forwarded call.
pub enum Forwarded {
    /// It ran on the home (boxed: the refusal is the small, common case of a busy home).
    Ran(Box<Remote>),
    /// It did not start there; why, for the log.
    NotThere(String),
}

/// A call that ran on another node, as that node's answer describes it.
#[derive(Debug)]
pub struct Remote {
    pub request_id: String,
    /// `$LATEST` or the number of the version that ran.
    pub version: String,
    pub started_at_ms: i64,
    pub cold_start: bool,
    pub init_ms: Option<f64>,
    pub duration_ms: f64,
    /// The instance on the home that ran it.
    pub instance_id: u64,
    pub timings: Timings,
    /// The last lines of the call's log, enough for a 4 KB tail; the home has them all.
    pub logs: Logs,
    pub outcome: Outcome,
}

/// The home's answer to a forwarded call.
// Unboxed as `Begun` is: it lives only until the front door matches on it.
#[allow(clippy::large_enum_variant)]
pub enum Served {
    Ran(Invoked),
    /// It did not start: no room here now (every instance busy and none can start, the
    /// node full or shutting down, the runtime missing). The sender runs it itself.
    Full(String),
}

/// The placement keys whose home answered "full" lately, with when that stops counting
/// (Unix ms). While a key is marked its calls run where they arrive, without the round trip.
#[derive(Default)]
pub(crate) struct FullHomes {
    until_ms: Mutex<HashMap<String, i64>>,
}

impl FullHomes {
    /// Whether `key`'s home said it was full less than `FORWARD_FULL_BACKOFF_MS` ago.
    fn is_full(&self, key: &str, now_ms: i64) -> bool {
        let marks = self.until_ms.lock().unwrap();
        marks.get(key).is_some_and(|&until| now_ms < until)
    }

    fn mark(&self, key: &str, now_ms: i64) {
        let mut marks = self.until_ms.lock().unwrap();
        if marks.len() >= limits::FORWARD_FULL_MARKS_MAX && !marks.contains_key(key) {
            marks.retain(|_, &mut until| now_ms < until);
            if marks.len() >= limits::FORWARD_FULL_MARKS_MAX {
                marks.clear();
            }
        }
        marks.insert(key.to_string(), now_ms + limits::FORWARD_FULL_BACKOFF_MS);
    }
}

/// What a forward waits for at most: a cold start (the instance's start-up bound and its
/// initializer), the function's own timeout, and a margin for the way there and back.
pub fn forward_timeout(instance: &sandbox::InstanceConfig) -> Duration {
    let initializer_ms = if instance.initializer.is_empty() {
        0
    } else {
        instance.initializer_timeout_ms as u64
    };
    Duration::from_millis(
        limits::INSTANCE_START_MS_MAX
            + initializer_ms
            + instance.timeout_ms as u64
            + limits::FORWARD_MARGIN_MS,
    )
}

impl Platform {
    /// Sends synchronous calls to their home nodes from now on, through `forwarder`. Without
    /// one (a single node, `nimbus local`), or while this node sees no other live node,
    /// every call runs here.
    pub fn set_forwarder(&self, forwarder: Arc<dyn Forwarder>) {
        let _ = self.forwarder.set(forwarder);
    }

    /// Runs `call` on its home node when that is another live node: its answer, or `None`
    /// when the call is this node's to run (no forwarder, no other node, this node is the
    /// home, or the home did not take it).
    pub(crate) async fn forward(
        self: &Arc<Self>,
        call: &Call,
        event: &Bytes,
    ) -> Result<Option<Invoked>, Error> {
        let (Some(forwarder), Some(membership)) = (self.forwarder.get(), self.membership.get())
        else {
            return Ok(None);
        };
        let peers = membership.peers();
        if peers.len() < 2 {
            return Ok(None);
        }
        // Resolved as the home will: an alias picks by the affinity or the request id, both
        // of which travel with the call, so both nodes pick the same version. A target that
        // does not resolve is refused by the local path, as it always was.
        let Ok((resolved, _)) = self
            .resolve_call(&call.target, call.affinity.as_deref(), &call.request_id)
            .await
        else {
            return Ok(None);
        };
        let key = crate::placement::key(
            &resolved.function.spec.name,
            &resolved.instance.version,
            resolved.function.revision,
        );
        let now = now_ms();
        let live = peers.iter().filter(|n| crate::membership::alive(n, now));
        let Some(home) = crate::placement::home(&key, live, |n| n.id.as_str()) else {
            return Ok(None);
        };
        if home.id == membership.id() || self.full_homes.is_full(&key, now) {
            return Ok(None);
        }
        let timeout = forward_timeout(&resolved.instance);
        match forwarder
            .forward(home, call, event.clone(), timeout)
            .await?
        {
            Forwarded::Ran(remote) => {
                let remote = *remote;
                let error = match &remote.outcome {
                    Outcome::Error(e) => Some(e.clone()),
                    Outcome::Success { .. } => None,
                };
                // The caller's view of the call, for its answer; not remembered and not
                // recorded here: the home did both.
                let record = InvocationRecord {
                    request_id: remote.request_id,
                    function: resolved.function.spec.name.clone(),
                    trigger: call.trigger,
                    source: call.source.clone(),
                    attempt: call.attempt,
                    memory_mb: resolved.instance.memory_mb,
                    version: remote.version,
                    started_at_ms: remote.started_at_ms,
                    cold_start: remote.cold_start,
                    init_ms: remote.init_ms,
                    duration_ms: remote.duration_ms,
                    instance_id: remote.instance_id,
                    error,
                    logs: remote.logs,
                    timings: remote.timings,
                    trace: call.trace.clone(),
                };
                Ok(Some(Invoked {
                    record: Arc::new(record),
                    outcome: remote.outcome,
                    resolved,
                }))
            }
            Forwarded::NotThere(why) => {
                self.full_homes.mark(&key, now_ms());
                tracing::debug!(
                    target = %call.target,
                    request_id = %call.request_id,
                    home = %home.id,
                    why = %why,
                    "the home node did not take the call; it runs here"
                );
                Ok(None)
            }
        }
    }

    /// Runs a call another node forwarded here, its home, without forwarding it again and
    /// without waiting for a slot: `Served::Full` when none is free now and none can start,
    /// so the sender runs it itself rather than have it wait here.
    pub async fn invoke_forwarded(
        self: &Arc<Self>,
        call: Call,
        event: Bytes,
    ) -> Result<Served, Error> {
        self.check_event(&event)?;
        match self.run_here(call, event, false).await {
            Ok(Some(invoked)) => Ok(Served::Ran(invoked)),
            Ok(None) => Ok(Served::Full(
                "every instance of the function is busy here and no other can start now".into(),
            )),
            // The call did not start: the node has no room or no such runtime, which the
            // sender may well have.
            Err(e)
                if matches!(
                    e.code,
                    model::ErrorCode::CapacityExhausted | model::ErrorCode::RuntimeUnavailable
                ) =>
            {
                Ok(Served::Full(e.message))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use model::{ErrorCode, FunctionSpec, Runtime, TriggerKind};
    use sandbox::ContentType;

    use super::*;
    use crate::Begun;

    const CODE: &str = "def handler(event, context):\n    return {'ran': 'here'}\n";

    /// How a fake home answers a call.
    type Answer = Box<dyn Fn(&Call) -> Result<Forwarded, Error> + Send + Sync>;

    /// A forwarder that answers as it is told and notes where it was asked to send what.
    struct Fake {
        answer: Answer,
        sent: Mutex<Vec<(String, String, Duration)>>,
    }

    #[async_trait::async_trait]
    impl Forwarder for Fake {
        async fn forward(
            &self,
            node: &NodeRecord,
            call: &Call,
            _event: Bytes,
            timeout: Duration,
        ) -> Result<Forwarded, Error> {
            self.sent
                .lock()
                .unwrap()
                .push((node.id.clone(), call.request_id.clone(), timeout));
            (self.answer)(call)
        }
    }

    fn fake(
        answer: impl Fn(&Call) -> Result<Forwarded, Error> + Send + Sync + 'static,
    ) -> Arc<Fake> {
        Arc::new(Fake {
            answer: Box::new(answer),
            sent: Mutex::new(Vec::new()),
        })
    }

    /// The answer of a home that ran the call.
    fn ran(call: &Call) -> Result<Forwarded, Error> {
        let mut logs = Logs::default();
        logs.push("stdout", b"from the home");
        Ok(Forwarded::Ran(Box::new(Remote {
            request_id: call.request_id.clone(),
            version: "$LATEST".into(),
            started_at_ms: 1,
            cold_start: false,
            init_ms: None,
            duration_ms: 2.5,
            instance_id: 42,
            timings: Timings::default(),
            logs,
            outcome: Outcome::Success {
                content_type: ContentType::Json,
                body: Bytes::from_static(br#"{"ran":"there"}"#),
            },
        })))
    }

    /// A platform with `f` (one instance at most, one call at a time) deployed, a member
    /// of a cluster with one other live node whose id makes it `f`'s home, and `forwarder`.
    async fn cluster(forwarder: Arc<Fake>) -> (tempfile::TempDir, Arc<Platform>) {
        let tmp = tempfile::tempdir().unwrap();
        let meta = Arc::new(
            store::SqliteStore::open(&tmp.path().join("db"))
                .await
                .unwrap(),
        );
        let blobs: Arc<dyn store::BlobStore> =
            Arc::new(store::FsBlobStore::new(tmp.path().join("blobs")));
        let code = store::CodeCache::new(tmp.path().join("code"), blobs.clone(), 1 << 20);
        let runtimes = sandbox::Runtimes::install(&tmp.path().join("rt"), None, None).unwrap();
        let pool = sandbox::Pool::new(runtimes, Default::default());
        let cluster: Arc<dyn store::ClusterStore> = meta.clone();
        let platform = Arc::new(Platform::new(meta, blobs, code, pool));
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("main.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(CODE.as_bytes()).unwrap();
        let archive = zip.finish().unwrap().into_inner();
        let (sha, _) = platform.upload_code(archive).await.unwrap();
        let mut spec = FunctionSpec::new("f", Runtime::Python3, "main.handler", &sha);
        spec.max_instances = 1;
        spec.queue_timeout_ms = 10_000;
        platform
            .put_function(spec, store::PutMode::Create)
            .await
            .unwrap();
        // Another node, alive, and the home of `f`'s key next to this one.
        let resolved = platform.resolve("f").await.unwrap();
        let key = crate::placement::key("f", "$LATEST", resolved.function.revision);
        let other = (0..)
            .map(|i| format!("other-{i}"))
            .find(|id| {
                let ids = [id.as_str(), "me"];
                crate::placement::home(&key, &ids, |n| n) == Some(&id.as_str())
            })
            .unwrap();
        let now = now_ms();
        cluster
            .heartbeat(&NodeRecord {
                id: other,
                address: "http://10.0.0.2:9700".into(),
                started_at_ms: now,
                last_seen_ms: now,
            })
            .await
            .unwrap();
        platform
            .enable_membership(cluster, "me", "http://10.0.0.1:9700")
            .await
            .unwrap();
        platform.set_forwarder(forwarder);
        (tmp, platform)
    }

    fn call() -> Call {
        Call::new("f", TriggerKind::Api, crate::trace::child_of(None))
    }

    #[tokio::test]
    async fn a_call_goes_to_its_home_once_and_is_recorded_there_not_here() {
        let forwarder = fake(ran);
        let (_tmp, platform) = cluster(forwarder.clone()).await;
        let c = call();
        let invoked = platform
            .invoke(c.clone(), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let Outcome::Success { body, .. } = &invoked.outcome else {
            panic!("it ran");
        };
        assert_eq!(&body[..], br#"{"ran":"there"}"#);
        // The caller's view is the home's record, with this node's knowledge of the call.
        let r = &invoked.record;
        assert_eq!(
            (
                r.request_id.as_str(),
                r.instance_id,
                r.duration_ms,
                r.cold_start
            ),
            (c.request_id.as_str(), 42, 2.5, false)
        );
        assert_eq!((r.function.as_str(), r.trigger), ("f", TriggerKind::Api));
        assert_eq!(r.trace, c.trace);
        assert_eq!(r.logs.lines[0].message, "from the home");
        let sent = forwarder.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].0.starts_with("other-"), "{sent:?}");
        // Bounded by a cold start, the function's timeout and the margin.
        assert!(
            sent[0].2 > Duration::from_millis(limits::FORWARD_MARGIN_MS),
            "{sent:?}"
        );
        // The home records it; this node does not, so it is counted once.
        assert!(platform.recent_invocation(&c.request_id).is_none());
    }

    #[tokio::test]
    async fn a_home_without_room_or_out_of_reach_means_the_call_runs_here() {
        let forwarder = fake(|_| Ok(Forwarded::NotThere("full".into())));
        let (_tmp, platform) = cluster(forwarder.clone()).await;
        let c = call();
        let invoked = platform
            .invoke(c.clone(), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let Outcome::Success { body, .. } = &invoked.outcome else {
            panic!("it ran: {:?}", invoked.record.error);
        };
        assert_eq!(&body[..], br#"{"ran":"here"}"#);
        assert!(invoked.record.cold_start);
        assert_eq!(forwarder.sent.lock().unwrap().len(), 1, "asked once");
        assert!(
            platform.recent_invocation(&c.request_id).is_some(),
            "recorded here"
        );
    }

    #[tokio::test]
    async fn after_a_home_said_full_its_calls_run_here_without_asking_for_a_moment() {
        let forwarder = fake(|_| Ok(Forwarded::NotThere("full".into())));
        let (_tmp, platform) = cluster(forwarder.clone()).await;
        let event = Bytes::from_static(b"{}");
        assert!(platform.forward(&call(), &event).await.unwrap().is_none());
        assert!(platform.forward(&call(), &event).await.unwrap().is_none());
        assert_eq!(forwarder.sent.lock().unwrap().len(), 1, "asked once");
        tokio::time::sleep(Duration::from_millis(
            limits::FORWARD_FULL_BACKOFF_MS as u64 + 20,
        ))
        .await;
        assert!(platform.forward(&call(), &event).await.unwrap().is_none());
        assert_eq!(forwarder.sent.lock().unwrap().len(), 2, "asked again");
    }

    #[test]
    fn full_marks_expire_and_stay_bounded() {
        let homes = FullHomes::default();
        homes.mark("f:$LATEST:1", 1_000);
        assert!(homes.is_full("f:$LATEST:1", 1_000));
        assert!(homes.is_full("f:$LATEST:1", 1_000 + limits::FORWARD_FULL_BACKOFF_MS - 1));
        assert!(!homes.is_full("f:$LATEST:1", 1_000 + limits::FORWARD_FULL_BACKOFF_MS));
        assert!(!homes.is_full("g:1", 1_000));
        // Expired marks make room first; live ones are dropped only when all are live.
        for i in 0..limits::FORWARD_FULL_MARKS_MAX {
            homes.mark(&format!("k{i}"), 2_000);
        }
        homes.mark("late", 2_000 + limits::FORWARD_FULL_BACKOFF_MS);
        let len = homes.until_ms.lock().unwrap().len();
        assert_eq!(len, 1, "every other mark had expired");
        for i in 0..limits::FORWARD_FULL_MARKS_MAX {
            homes.mark(&format!("k{i}"), 5_000);
        }
        assert!(homes.until_ms.lock().unwrap().len() <= limits::FORWARD_FULL_MARKS_MAX);
        assert!(homes.is_full("k4095", 5_000));
    }

    #[tokio::test]
    async fn a_call_that_may_have_run_on_its_home_is_not_run_again() {
        let forwarder = fake(|_| {
            Err(Error::new(
                ErrorCode::Internal,
                "the home did not answer; the call may have run there",
            ))
        });
        let (_tmp, platform) = cluster(forwarder.clone()).await;
        let c = call();
        let e = platform
            .invoke(c.clone(), Bytes::from_static(b"{}"))
            .await
            .err()
            .expect("an error");
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(
            platform.recent_invocation(&c.request_id).is_none(),
            "not run here"
        );
        assert_eq!(platform.pool().instances_of("f"), 0);
    }

    #[tokio::test]
    async fn a_forwarded_call_is_not_forwarded_again_and_a_busy_home_says_so_at_once() {
        let forwarder = fake(ran);
        let (_tmp, platform) = cluster(forwarder.clone()).await;
        // This node is not `f`'s home, but a forwarded call runs wherever it arrives.
        let c = call();
        let Served::Ran(invoked) = platform
            .invoke_forwarded(c.clone(), Bytes::from_static(b"{}"))
            .await
            .unwrap()
        else {
            panic!("an idle node runs it");
        };
        assert!(
            matches!(&invoked.outcome, Outcome::Success { body, .. } if &body[..] == br#"{"ran":"here"}"#)
        );
        assert!(
            platform.recent_invocation(&c.request_id).is_some(),
            "recorded here"
        );
        assert!(forwarder.sent.lock().unwrap().is_empty(), "never forwarded");
        // `f`'s one instance busy: a forwarded call does not wait its 10 s queue timeout.
        let held = match platform.begin(call()).await.unwrap() {
            Begun::Ready(s) => s,
            Begun::Failed(r, _) => panic!("{:?}", r.error),
        };
        let asked = std::time::Instant::now();
        let served = platform
            .invoke_forwarded(call(), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert!(matches!(served, Served::Full(_)));
        assert!(asked.elapsed() < Duration::from_secs(1));
        held.finish(None, Logs::default());
        assert!(forwarder.sent.lock().unwrap().is_empty(), "never forwarded");
    }

    #[tokio::test]
    async fn a_forward_waits_for_a_cold_start_the_initializer_and_the_timeout() {
        let (_tmp, platform) = cluster(fake(ran)).await;
        let mut config = platform.resolve("f").await.unwrap().instance.clone();
        config.initializer = String::new();
        config.timeout_ms = 3_000;
        let plain = forward_timeout(&config);
        assert_eq!(
            plain.as_millis() as u64,
            limits::INSTANCE_START_MS_MAX + 3_000 + limits::FORWARD_MARGIN_MS
        );
        config.initializer = "m.init".into();
        config.initializer_timeout_ms = 2_000;
        assert_eq!(
            forward_timeout(&config),
            plain + Duration::from_millis(2_000)
        );
    }
}
