//! The bus as a trigger: every function's event rules compiled into one `Rules`, rebuilt
//! when the catalog moves on, and `publish`, which commits one asynchronous delivery per
//! matching rule before it answers.
//!
//! A delivery's idempotency key is the rule and a hash of the event's source and id, so a
//! publisher that retries after a lost answer (or a crash midway) gets the deliveries it
//! already has, not copies; CloudEvents promise that source and id identify an event.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use model::TriggerKind;
use model::timer::{EventFormat, EventTrigger};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{CloudEvent, Data, Pattern, RuleId, Rules};
use crate::{Catalog, Changes, Error, Owner, Platform, Trigger};

/// An event on the bus, as it came.
#[derive(Clone, Debug)]
pub enum BusEvent {
    Cloud(CloudEvent),
    /// An EventBridge event (from a PutEvents entry), in the shape EventBridge delivers.
    Bridge(Value),
}

impl BusEvent {
    fn id(&self) -> &str {
        match self {
            BusEvent::Cloud(e) => &e.id,
            BusEvent::Bridge(v) => v["id"].as_str().unwrap_or_default(),
        }
    }

    fn source(&self) -> &str {
        match self {
            BusEvent::Cloud(e) => &e.source,
            BusEvent::Bridge(v) => v["source"].as_str().unwrap_or_default(),
        }
    }

    /// What patterns are matched against.
    fn matching_view(&self) -> Value {
        match self {
            BusEvent::Cloud(e) => e.matching_view(),
            BusEvent::Bridge(v) => v.clone(),
        }
    }

    /// As a CloudEvent: itself, or an EventBridge event's fields mapped (`detail-type` is
    /// the type, `detail` the data).
    fn to_cloud(&self) -> CloudEvent {
        match self {
            BusEvent::Cloud(e) => e.clone(),
            BusEvent::Bridge(v) => {
                let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                let mut e = CloudEvent::new(text("id"), text("source"), text("detail-type"));
                e.time = v["time"].as_str().map(str::to_string);
                e.datacontenttype = Some("application/json".into());
                e.data = Some(Data::Json(v["detail"].clone()));
                e
            }
        }
    }

    /// The event a rule's function gets.
    fn payload(&self, format: EventFormat) -> Vec<u8> {
        match (self, format) {
            (BusEvent::Bridge(v), EventFormat::Native) => {
                serde_json::to_vec(v).expect("an event serializes")
            }
            _ => self.to_cloud().to_structured(),
        }
    }
}

/// One rule: whose, which, and how it wants its events.
struct Target {
    /// The owner's target: a function's name, or `flow/NAME`.
    function: String,
    name: String,
    format: EventFormat,
}

struct Compiled {
    revision: u64,
    rules: Rules,
    targets: Vec<Target>,
}

/// The event triggers of every function.
pub struct EventBus {
    compiled: RwLock<Arc<Compiled>>,
}

fn rules_of<'a>(owner: &Owner<'a>) -> impl Iterator<Item = (usize, &'a EventTrigger)> + 'a {
    owner
        .triggers
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.event().map(|e| (i, e)))
}

fn compile(catalog: &Catalog) -> Compiled {
    let mut patterns = Vec::new();
    let mut targets = Vec::new();
    for owner in catalog.owners() {
        for (_, rule) in rules_of(&owner) {
            // Refused at deploy when it does not parse; one stored before is skipped.
            let Ok(pattern) = Pattern::parse(&rule.pattern) else {
                continue;
            };
            patterns.push((RuleId(targets.len() as u32), pattern));
            targets.push(Target {
                function: owner.target.to_string(),
                name: rule.name.clone(),
                format: rule.format,
            });
        }
    }
    Compiled {
        revision: catalog.revision,
        rules: Rules::new(patterns),
        targets,
    }
}

impl EventBus {
    pub fn new() -> Arc<EventBus> {
        Arc::new(EventBus {
            compiled: RwLock::new(Arc::new(compile(&Catalog::default()))),
        })
    }

    /// The rules as of the platform's latest catalog, compiled again if it moved on (so a
    /// rule deployed through this node matches as soon as its deploy has answered).
    fn current(&self, platform: &Platform) -> Arc<Compiled> {
        let catalog = platform.catalog();
        let compiled = self.compiled.read().unwrap().clone();
        if compiled.revision == catalog.revision {
            return compiled;
        }
        let fresh = Arc::new(compile(&catalog));
        *self.compiled.write().unwrap() = fresh.clone();
        fresh
    }

    /// Delivers each event to every matching rule's function (paused rules drop what they
    /// would have got, as a disabled EventBridge rule does), asynchronously, and answers
    /// the number of deliveries per event once all are committed. An error leaves the
    /// deliveries made so far; publishing the same events again completes them without
    /// duplicates.
    pub async fn publish(
        &self,
        platform: &Platform,
        events: &[BusEvent],
        traceparent: &str,
    ) -> Result<Vec<usize>, Error> {
        let compiled = self.current(platform);
        let mut counts = Vec::with_capacity(events.len());
        let mut deliveries = Vec::new();
        for event in events {
            let view = event.matching_view();
            let mut hits = Vec::new();
            compiled.rules.for_each_match(&view, |id| hits.push(id));
            let identity = hex::encode(Sha256::digest(
                format!("{}\n{}", event.source(), event.id()).as_bytes(),
            ));
            hits.retain(|id| {
                let t = &compiled.targets[id.0 as usize];
                !platform.trigger_paused(&t.function, &t.name)
            });
            counts.push(hits.len());
            for id in hits {
                let t = &compiled.targets[id.0 as usize];
                deliveries.push(platform.submit_from(
                    &t.function,
                    Bytes::from(event.payload(t.format)),
                    Some(format!("event:{}:{identity}", t.name)),
                    traceparent.to_string(),
                    Some(format!("event:{}", t.name)),
                ));
            }
        }
        // All at once: the queue commits whatever is waiting together, so a batch of events
        // or an event many rules match costs one commit, not one each. Every one is awaited
        // to its end before an error is answered (none is dropped half-way).
        for done in futures_util::future::join_all(deliveries).await {
            done?;
        }
        Ok(counts)
    }
}

#[async_trait::async_trait]
impl Trigger for EventBus {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Event
    }

    fn validate(&self, catalog: &Catalog) -> Result<(), Error> {
        for owner in catalog.owners() {
            for (i, rule) in rules_of(&owner) {
                Pattern::parse(&rule.pattern).map_err(|e| {
                    Error::invalid(format!(
                        "{}: triggers[{i}].event.pattern: {e}",
                        owner.describe()
                    ))
                })?;
            }
        }
        Ok(())
    }

    async fn start(
        self: Arc<Self>,
        _platform: Arc<Platform>,
        _changes: Changes,
    ) -> Result<(), Error> {
        // Nothing runs on its own: publishing compiles what it needs.
        Ok(())
    }

    async fn stop(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventbridge_events_become_cloudevents_and_keep_their_shape_natively() {
        let bridge = BusEvent::Bridge(serde_json::json!({
            "version": "0", "id": "e1", "detail-type": "UserSignedUp", "source": "app.users",
            "time": "2026-12-06T15:00:00Z", "detail": {"plan": "pro"}
        }));
        let native: Value = serde_json::from_slice(&bridge.payload(EventFormat::Native)).unwrap();
        assert_eq!(native["detail-type"], "UserSignedUp");
        let ce: Value = serde_json::from_slice(&bridge.payload(EventFormat::Cloudevent)).unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "UserSignedUp");
        assert_eq!(ce["source"], "app.users");
        assert_eq!(ce["data"], serde_json::json!({"plan": "pro"}));
        assert_eq!((bridge.id(), bridge.source()), ("e1", "app.users"));
    }
}
