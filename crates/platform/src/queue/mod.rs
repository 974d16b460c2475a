//! Queue triggers (`triggers: [{queue: {nats | mqtt | amqp | redis: ..., batch_size, ...}}]`):
//! a broker's messages delivered to a function in batches, with one delivery contract for
//! every broker.
//!
//! The contract: at least once (a message is acknowledged only after its function
//! succeeded with it, or after it reached the failure destination); batches of up to
//! `batch_size`, waiting up to `batch_window_ms` to fill; partial failures as Lambda's SQS
//! mapping reports them (`batchItemFailures`); a failed message retried with backoff up to
//! `max_retries` and `max_record_age_ms`, then buried (`AsyncInvoker::bury`: the failure
//! destination, else the dead-letter queue); with `ordered: true`, one batch per key in
//! flight and a failed message retried before the ones after it. Backpressure never burns
//! retries: the trigger takes from the broker only what the function's free slots can run,
//! and a call the platform could not start (throttled, no capacity) is tried again without
//! counting.
//!
//! Brokers plug in through `source` (one crate each, fencing its client library); this
//! module follows the catalog and runs one `runner` per trigger of every function.

mod batch;
mod runner;
pub mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use model::TriggerKind;
use tokio::sync::watch;

use crate::trigger::{Catalog, Changes, RuntimeStatus, Trigger};
use crate::{Error, Platform};
pub use source::{Ack, Connector, Consumer, Message, SourceError, Subscription};

/// A queue trigger of a function: (function, trigger name).
type Key = (String, String);

/// The queue triggers of this node: every function's, each run by a runner.
pub struct QueueTriggers {
    connectors: HashMap<&'static str, Arc<dyn Connector>>,
    /// This node's id: with the function and trigger, it names the node's member of each
    /// trigger's consumer group.
    node_id: String,
    runners: Mutex<HashMap<Key, runner::Handle>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl QueueTriggers {
    pub fn new(node_id: &str, connectors: Vec<Arc<dyn Connector>>) -> Arc<QueueTriggers> {
        Arc::new(QueueTriggers {
            connectors: connectors.into_iter().map(|c| (c.kind(), c)).collect(),
            node_id: node_id.to_string(),
            runners: Mutex::new(HashMap::new()),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
        })
    }

    /// Starts runners for triggers that are new or changed and stops those of triggers
    /// that are gone or changed.
    fn reconcile(&self, platform: &Arc<Platform>, catalog: &Catalog) {
        let mut wanted: HashMap<Key, (model::queue::QueueTrigger, String)> = HashMap::new();
        for owner in catalog.owners() {
            for t in owner.triggers.iter().filter_map(|t| t.queue()) {
                wanted.insert(
                    (owner.target.to_string(), t.name().to_string()),
                    (t.clone(), owner.target.to_string()),
                );
            }
        }
        let mut runners = self.runners.lock().unwrap();
        runners.retain(|key, handle| {
            let keep = wanted
                .get(key)
                .is_some_and(|(spec, _)| *spec == handle.spec);
            if !keep {
                handle.stop();
            }
            keep
        });
        for (key, (spec, function)) in wanted {
            if runners.contains_key(&key) {
                continue;
            }
            let Some(kind) = spec.source().map(|s| s.kind()) else {
                continue;
            };
            let Some(connector) = self.connectors.get(kind) else {
                continue;
            };
            let handle = runner::start(runner::Setup {
                platform: platform.clone(),
                connector: connector.clone(),
                function,
                spec,
                node_id: self.node_id.clone(),
            });
            runners.insert(key, handle);
        }
    }
}

#[async_trait::async_trait]
impl Trigger for QueueTriggers {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Queue
    }

    fn validate(&self, catalog: &Catalog) -> Result<(), Error> {
        for owner in catalog.owners() {
            for (i, t) in owner.triggers.iter().enumerate() {
                let Some(q) = t.queue() else { continue };
                let Some(source) = q.source() else { continue };
                let Some(connector) = self.connectors.get(source.kind()) else {
                    return Err(Error::invalid(format!(
                        "{}: triggers[{i}].queue.{}: this server has no {} connector",
                        owner.describe(),
                        source.kind(),
                        source.kind()
                    )));
                };
                connector.validate(q).map_err(|e| {
                    Error::invalid(format!(
                        "{}: triggers[{i}].queue.{}: {e}",
                        owner.describe(),
                        source.kind()
                    ))
                })?;
            }
        }
        Ok(())
    }

    async fn start(
        self: Arc<Self>,
        platform: Arc<Platform>,
        mut changes: Changes,
    ) -> Result<(), Error> {
        let me = self.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let catalog = changes.borrow_and_update().clone();
                me.reconcile(&platform, &catalog);
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = stop.changed() => break,
                }
            }
        });
        *self.task.lock().unwrap() = Some(task);
        Ok(())
    }

    async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let runners: Vec<runner::Handle> = self
            .runners
            .lock()
            .unwrap()
            .drain()
            .map(|(_, h)| h)
            .collect();
        for r in &runners {
            r.stop();
        }
        for r in runners {
            r.join().await;
        }
    }

    fn status(&self, function: &str, trigger: &model::http::Trigger) -> Option<RuntimeStatus> {
        let q = trigger.queue()?;
        let runners = self.runners.lock().unwrap();
        let handle = runners.get(&(function.to_string(), q.name().to_string()))?;
        Some(handle.status.lock().unwrap().clone())
    }
}
