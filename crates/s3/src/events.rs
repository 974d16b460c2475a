//! Bucket events: the object trigger (`triggers: [{object: …}]`). A change of a bucket that
//! some rule takes is committed with its event (the outbox, `store::ObjectMeta`); the
//! deliverer then queues an asynchronous invocation per matching rule, keyed by the
//! event's place in the outbox so a repeat after a crash is the same invocation, and
//! deletes the event. At least once, never lost: an event whose delivery failed (a full
//! queue) stays in the outbox and is tried again.
//!
//! The committing node delivers at once (woken by the commit); the outbox is also read
//! every second, for what failed and for events of a node that stopped before delivering
//! its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use model::object::ObjectTrigger;
use model::timer::EventFormat;
use model::{TriggerKind, limits};
use platform::{Catalog, Changes, Error, Platform, Trigger};
use store::objects::{NewObjectEvent, ObjectEvent, ObjectMeta};
use tokio::sync::{Notify, watch};

/// Why a bucket's notification rules were refused.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// S3's InvalidArgument, with its message.
    Invalid(String),
    Object(store::ObjectError),
    Store(String),
}

/// A rule set the AWS way: `arn` is a Lambda function ARN
/// (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`) or a function's name;
/// `filters` are (`prefix` | `suffix`, value) pairs as S3's FilterRules.
pub(crate) fn rule_of(
    bucket: &str,
    id: Option<String>,
    arn: &str,
    events: Vec<String>,
    filters: Vec<(String, String)>,
) -> Result<Rule, s3s::S3Error> {
    let invalid = |m: String| s3s::S3Error::with_message(s3s::S3ErrorCode::InvalidArgument, m);
    let function = match arn.strip_prefix("arn:aws:lambda:") {
        Some(rest) => match rest.splitn(4, ':').collect::<Vec<_>>()[..] {
            [_, _, "function", target] if !target.is_empty() => target.to_string(),
            _ => return Err(invalid(format!("`{arn}` is not a Lambda function ARN"))),
        },
        None => arn.to_string(),
    };
    let mut spec = ObjectTrigger {
        // S3 names a rule without an id itself.
        name: Some(id.unwrap_or_else(|| format!("{function}-{}", uuid::Uuid::new_v4().simple()))),
        bucket: bucket.to_string(),
        events,
        prefix: String::new(),
        suffix: String::new(),
        format: EventFormat::Native,
    };
    for (name, value) in filters {
        match name.to_ascii_lowercase().as_str() {
            "prefix" => spec.prefix = value,
            "suffix" => spec.suffix = value,
            other => {
                return Err(invalid(format!(
                    "filter rule name `{other}`: use prefix or suffix"
                )));
            }
        }
    }
    if spec.events.is_empty() {
        return Err(invalid("a configuration names at least one event".into()));
    }
    for e in &spec.events {
        if !model::object::EVENT_NAMES.contains(&e.as_str()) {
            return Err(invalid(format!(
                "`{e}` is not an event Nimbus sends; use one of {}",
                model::object::EVENT_NAMES.join(", ")
            )));
        }
    }
    if spec.prefix.len() > limits::OBJECT_KEY_BYTES_MAX
        || spec.suffix.len() > limits::OBJECT_KEY_BYTES_MAX
    {
        return Err(invalid(format!(
            "a filter value is at most {} bytes",
            limits::OBJECT_KEY_BYTES_MAX
        )));
    }
    Ok(Rule { function, spec })
}

/// Events read from the outbox per round.
const BATCH_MAX: usize = 256;
/// How often the outbox is read without a wake-up.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// An event its node has not delivered for this long is any node's to deliver.
const STALE_AFTER_MS: i64 = 30_000;

/// One rule of one function or flow (a target: `name`, `name:qualifier` or `flow/NAME`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Rule {
    pub(crate) function: String,
    pub(crate) spec: ObjectTrigger,
}

/// The object trigger.
pub struct BucketEvents {
    meta: Arc<dyn ObjectMeta>,
    node: String,
    /// Rules by bucket: the catalog's and the buckets' own, together.
    rules: RwLock<Arc<HashMap<String, Vec<Rule>>>>,
    /// The catalog's rules (`triggers: [{object: …}]`) by bucket.
    declared: RwLock<HashMap<String, Vec<Rule>>>,
    /// Rules set the AWS way (PutBucketNotificationConfiguration), by bucket, as stored.
    configured: RwLock<HashMap<String, Vec<Rule>>>,
    wake: Notify,
    platform: std::sync::OnceLock<Weak<Platform>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl BucketEvents {
    pub fn new(meta: Arc<dyn ObjectMeta>, node: &str) -> Arc<BucketEvents> {
        Arc::new(BucketEvents {
            meta,
            node: node.to_string(),
            rules: RwLock::new(Arc::new(HashMap::new())),
            declared: RwLock::new(HashMap::new()),
            configured: RwLock::new(HashMap::new()),
            wake: Notify::new(),
            platform: std::sync::OnceLock::new(),
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// The events to commit with a change (`ObjectCreated:Put` of `key`): one when some
    /// rule of the bucket takes it, none otherwise (a bucket nobody listens to writes no
    /// outbox rows).
    pub(crate) fn for_change(
        &self,
        bucket: &str,
        key: &str,
        event: &str,
        lineage: u32,
    ) -> Vec<NewObjectEvent> {
        let rules = self.rules.read().unwrap().clone();
        let taken = rules
            .get(bucket)
            .is_some_and(|rs| rs.iter().any(|r| r.spec.matches(event, key)));
        if !taken {
            return Vec::new();
        }
        vec![NewObjectEvent {
            event: event.to_string(),
            at_ms: platform::now_ms(),
            node: self.node.clone(),
            lineage,
        }]
    }

    /// A change with events was committed: deliver now.
    pub(crate) fn committed(&self) {
        self.wake.notify_one();
    }

    /// Takes the rules functions and flows declare.
    fn follow(&self, catalog: &Catalog) {
        let mut rules: HashMap<String, Vec<Rule>> = HashMap::new();
        for owner in catalog.owners() {
            for t in owner.triggers.iter().filter_map(|t| t.object()) {
                rules.entry(t.bucket.clone()).or_default().push(Rule {
                    function: owner.target.to_string(),
                    spec: t.clone(),
                });
            }
        }
        *self.declared.write().unwrap() = rules;
        self.combine();
    }

    /// Recomputes the rules by bucket from both sources.
    fn combine(&self) {
        let mut all = self.declared.read().unwrap().clone();
        for (bucket, rules) in self.configured.read().unwrap().iter() {
            all.entry(bucket.clone())
                .or_default()
                .extend(rules.iter().cloned());
        }
        *self.rules.write().unwrap() = Arc::new(all);
    }

    /// Reads the buckets' own rules from the store (other nodes may have set some).
    async fn load_configured(&self) -> Result<(), String> {
        let stored = self
            .meta
            .bucket_notifications()
            .await
            .map_err(|e| e.to_string())?;
        let mut configured = HashMap::new();
        for (bucket, json) in stored {
            match serde_json::from_str::<Vec<Rule>>(&json) {
                Ok(rules) => {
                    configured.insert(bucket, rules);
                }
                Err(e) => {
                    tracing::warn!(bucket, error = %e, "a bucket's notification rules do not parse; it has none")
                }
            }
        }
        let changed = *self.configured.read().unwrap() != configured;
        if changed {
            *self.configured.write().unwrap() = configured;
            self.combine();
        }
        Ok(())
    }

    /// A target's ARN as a bucket's configuration names it (the server's region and
    /// account).
    pub(crate) fn function_arn(&self, target: &str) -> String {
        match self.platform.get().and_then(Weak::upgrade) {
            Some(p) => p.function_arn(target),
            None => format!("arn:aws:lambda:us-east-1:000000000000:function:{target}"),
        }
    }

    /// A bucket's own rules (PutBucketNotificationConfiguration).
    pub(crate) fn configured(&self, bucket: &str) -> Vec<Rule> {
        self.configured
            .read()
            .unwrap()
            .get(bucket)
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces a bucket's own rules after checking them as S3 does: each names a function
    /// that exists, and no two rules of the bucket (the catalog's included) overlap.
    pub(crate) async fn configure(
        &self,
        bucket: &str,
        rules: Vec<Rule>,
    ) -> Result<(), ConfigError> {
        let platform = self
            .platform
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| ConfigError::Store("the server is starting or stopping".into()))?;
        for r in &rules {
            if let Err(e) = platform.check_target(&r.function).await {
                return Err(ConfigError::Invalid(format!(
                    "Unable to validate the following destination configurations: {} ({})",
                    r.function, e.message
                )));
            }
        }
        let declared = self
            .declared
            .read()
            .unwrap()
            .get(bucket)
            .cloned()
            .unwrap_or_default();
        for (i, r) in rules.iter().enumerate() {
            let others = rules[..i].iter().chain(declared.iter());
            if let Some(o) = others.into_iter().find(|o| o.spec.overlaps(&r.spec)) {
                return Err(ConfigError::Invalid(format!(
                    "Configurations overlap. Configurations on the same bucket cannot share a common event type: `{}` overlaps the rule `{}` of `{}`",
                    r.spec.name(),
                    o.spec.name(),
                    o.function
                )));
            }
        }
        let json =
            (!rules.is_empty()).then(|| serde_json::to_string(&rules).expect("rules serialize"));
        self.meta
            .set_bucket_notifications(bucket, json.as_deref())
            .await
            .map_err(ConfigError::Object)?;
        let mut configured = self.configured.write().unwrap();
        if rules.is_empty() {
            configured.remove(bucket);
        } else {
            configured.insert(bucket.to_string(), rules);
        }
        drop(configured);
        self.combine();
        Ok(())
    }

    async fn run(self: Arc<Self>, mut changes: Changes) {
        let mut stop = self.stop.subscribe();
        let mut revision = None;
        let mut loaded: Option<std::time::Instant> = None;
        loop {
            // A commit wakes this loop for each event: the rules are derived again only when
            // the catalog changed, and the buckets' own read at most once per sweep.
            let catalog = changes.borrow_and_update().clone();
            if revision != Some(catalog.revision) {
                revision = Some(catalog.revision);
                self.follow(&catalog);
            }
            if loaded.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
                loaded = Some(std::time::Instant::now());
                if let Err(e) = self.load_configured().await {
                    tracing::warn!(error = %e, "reading the buckets' notification rules failed");
                }
            }
            // Until a round leaves nothing behind (a full batch means more wait).
            loop {
                match self.deliver_round().await {
                    Ok(n) if n == BATCH_MAX => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "delivering bucket events failed; they stay in the outbox");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                changed = changes.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    /// Delivers what the outbox holds for this node; answers how many events it read.
    async fn deliver_round(&self) -> Result<usize, String> {
        let Some(platform) = self.platform.get().and_then(Weak::upgrade) else {
            return Ok(0);
        };
        let events = self
            .meta
            .pending_object_events(&self.node, platform::now_ms() - STALE_AFTER_MS, BATCH_MAX)
            .await
            .map_err(|e| e.to_string())?;
        let n = events.len();
        if n == 0 {
            return Ok(0);
        }
        let rules = self.rules.read().unwrap().clone();
        let deliveries = events.iter().map(|e| deliver(&platform, &rules, e));
        let mut done = Vec::with_capacity(n);
        for (event, delivered) in events
            .iter()
            .zip(futures_util::future::join_all(deliveries).await)
        {
            if delivered {
                done.push(event.seq);
            }
        }
        self.meta
            .delete_object_events(&done)
            .await
            .map_err(|e| e.to_string())?;
        Ok(n)
    }
}

/// Queues `event` for every rule it matches; true when each is queued (or not to be: its
/// rule is paused, or the chain of calls is a loop), so the event leaves the outbox.
async fn deliver(
    platform: &Arc<Platform>,
    rules: &HashMap<String, Vec<Rule>>,
    event: &ObjectEvent,
) -> bool {
    let Some(rules) = rules.get(&event.bucket) else {
        return true;
    };
    let mut all = true;
    for rule in rules
        .iter()
        .filter(|r| r.spec.matches(&event.event, &event.key))
    {
        let name = rule.spec.name();
        if platform.trigger_paused(&rule.function, name) {
            continue;
        }
        if event.lineage >= limits::OBJECT_EVENT_HOPS_MAX {
            platform.record_loop_stopped(&rule.function, &event.bucket, &event.key, event.lineage);
            continue;
        }
        let payload = match rule.spec.format {
            EventFormat::Native => record(platform, rule, event),
            EventFormat::Cloudevent => cloudevent(platform, rule, event),
        };
        let submitted = platform
            .submit_with_lineage(
                &rule.function,
                Bytes::from(payload),
                Some(format!("object:{name}:{}", event.seq)),
                platform::trace::child_of(None).traceparent,
                Some(format!("object:{name}")),
                event.lineage + 1,
            )
            .await;
        if let Err(e) = submitted {
            tracing::warn!(function = %rule.function, bucket = %event.bucket, error = %e.message, "a bucket event was not queued; it stays in the outbox");
            all = false;
        }
    }
    all
}

/// An S3 time: `2026-12-06T15:00:00.123Z`.
fn event_time(at_ms: i64) -> String {
    chrono_free(at_ms)
}

fn chrono_free(at_ms: i64) -> String {
    let (secs, ms) = (at_ms.div_euclid(1000), at_ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = model::civil::from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The event's S3 record, as S3 sends it to Lambda (`Records[]`, event version 2.1).
fn s3_record(platform: &Platform, rule: &Rule, event: &ObjectEvent) -> serde_json::Value {
    let aws = platform.aws_identity();
    let mut object = serde_json::json!({
        "key": model::object::encode_key(&event.key),
        // S3's sequencers are hex that orders the changes of a key.
        "sequencer": format!("{:016X}", event.seq),
    });
    if let Some(size) = event.size_bytes {
        object["size"] = size.into();
    }
    if let Some(etag) = &event.etag {
        object["eTag"] = etag.trim_matches('"').into();
    }
    serde_json::json!({
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": aws.region,
        "eventTime": event_time(event.at_ms),
        "eventName": event.event,
        "userIdentity": {"principalId": format!("AWS:{}", aws.account_id)},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {
            "x-amz-request-id": format!("{:016X}", event.seq),
            "x-amz-id-2": event.node,
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": rule.spec.name(),
            "bucket": {
                "name": event.bucket,
                "ownerIdentity": {"principalId": aws.account_id},
                "arn": format!("arn:aws:s3:::{}", event.bucket),
            },
            "object": object,
        },
    })
}

fn record(platform: &Platform, rule: &Rule, event: &ObjectEvent) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"Records": [s3_record(platform, rule, event)]}))
        .expect("a record serializes")
}

/// The event as a structured CloudEvent, as the CloudEvents adapter for S3 maps it: type
/// `com.amazonaws.s3.<eventName>`, source the bucket's ARN, subject the key, data the
/// S3 record.
fn cloudevent(platform: &Platform, rule: &Rule, event: &ObjectEvent) -> Vec<u8> {
    let mut e = platform::bus::CloudEvent::new(
        format!("{}-{:016X}", event.node, event.seq),
        format!("arn:aws:s3:::{}", event.bucket),
        format!("com.amazonaws.s3.{}", event.event),
    );
    e.subject = Some(event.key.clone());
    e.time = Some(event_time(event.at_ms));
    e.datacontenttype = Some("application/json".into());
    e.data = Some(platform::bus::Data::Json(s3_record(platform, rule, event)));
    e.to_structured()
}

#[async_trait::async_trait]
impl Trigger for BucketEvents {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Object
    }

    /// S3 refuses two rules of one bucket that one change could both match; so does this,
    /// across every function.
    fn validate(&self, catalog: &Catalog) -> Result<(), Error> {
        let mut seen: Vec<(String, &ObjectTrigger)> = Vec::new();
        for owner in catalog.owners() {
            for t in owner.triggers.iter().filter_map(|t| t.object()) {
                if let Some((other, _)) = seen.iter().find(|(_, o)| o.overlaps(t)) {
                    return Err(Error::invalid(format!(
                        "{}: the object trigger `{}` on bucket `{}` overlaps one of {other} (prefix `{}`, suffix `{}`): one change of a bucket may match one rule; give them distinct prefixes, suffixes or events",
                        owner.describe(),
                        t.name(),
                        t.bucket,
                        t.prefix,
                        t.suffix
                    )));
                }
                seen.push((owner.describe(), t));
            }
        }
        Ok(())
    }

    async fn start(
        self: Arc<Self>,
        platform: Arc<Platform>,
        changes: Changes,
    ) -> Result<(), Error> {
        let _ = self.platform.set(Arc::downgrade(&platform));
        let me = self.clone();
        self.tasks
            .lock()
            .unwrap()
            .push(tokio::spawn(async move { me.run(changes).await }));
        Ok(())
    }

    async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_s3s() {
        assert_eq!(chrono_free(1_765_033_200_123), "2025-12-06T15:00:00.123Z");
        assert_eq!(chrono_free(0), "1970-01-01T00:00:00.000Z");
    }
}
