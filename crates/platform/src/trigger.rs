//! The trigger seam: what an event source implements to turn its events into calls.
//!
//! A trigger checks its kind's specs whenever a deploy would change them (two routes on
//! one path conflict; a cron expression must parse), starts taking events once the
//! platform has loaded, follows function changes through the change feed (a `watch` of
//! the catalog: every write publishes the functions as stored, under a new revision), and
//! stops. Its calls go through `Platform::begin`/`invoke` like every other call, with
//! their `TriggerKind` in the record.
//!
//! The specs themselves are the closed enum `model::http::Trigger`, typed in `model`;
//! kinds live one module (or crate, where a client library must be fenced) each. The
//! gateway (`api::gateway`) and the asynchronous queue (`async_invoke`) are the first two.

use std::sync::Arc;

use model::{Function, TriggerKind};
use tokio::sync::watch;

use crate::{Error, Platform};

/// Every function as stored, and the triggers of every flow, at one revision of the
/// change feed.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Grows with every publication; a trigger that derived its state from an older one
    /// derives it again.
    pub revision: u64,
    pub functions: Vec<Function>,
    /// The flows that declare triggers (a flow without any is not here).
    pub flows: Vec<FlowTriggers>,
}

/// The triggers a flow declares: each of their events starts an execution.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowTriggers {
    pub flow: String,
    /// `flow/NAME` (`model::trigger::flow_target`): what its events are submitted to.
    pub target: String,
    pub triggers: Vec<model::http::Trigger>,
    pub updated_at_ms: i64,
}

/// What a trigger spec starts, with the specs it declares: a function, or a flow. Triggers
/// follow owners, not functions, so every kind that can start a flow does so through the
/// same event target and the same code as for a function.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    /// What its events are submitted to: the function's name, or `flow/NAME`.
    pub target: &'a str,
    pub triggers: &'a [model::http::Trigger],
    /// When its specs last changed (a timer catches up on nothing from before).
    pub updated_at_ms: i64,
}

impl Owner<'_> {
    /// `function `x`` or `flow `y``, as error messages name it.
    pub fn describe(&self) -> String {
        match model::trigger::target_flow(self.target) {
            Some(flow) => format!("flow `{flow}`"),
            None => format!("function `{}`", self.target),
        }
    }

    /// The name events name it by: the function's or the flow's.
    pub fn name(&self) -> &str {
        model::trigger::target_flow(self.target).unwrap_or(self.target)
    }
}

impl Catalog {
    /// Every function, then every flow with triggers.
    pub fn owners(&self) -> impl Iterator<Item = Owner<'_>> {
        let functions = self.functions.iter().map(|f| Owner {
            target: &f.spec.name,
            triggers: &f.spec.triggers,
            updated_at_ms: f.updated_at_ms,
        });
        let flows = self.flows.iter().map(|f| Owner {
            target: &f.target,
            triggers: &f.triggers,
            updated_at_ms: f.updated_at_ms,
        });
        functions.chain(flows)
    }
}

/// A trigger's view of the change feed.
pub type Changes = watch::Receiver<Arc<Catalog>>;

/// An event source.
#[async_trait::async_trait]
pub trait Trigger: Send + Sync + 'static {
    /// The kind of the calls it starts.
    fn kind(&self) -> TriggerKind;

    /// Checks the specs of this kind across every owner of `catalog`, as they would be
    /// after a write; an error refuses the write and says what to change.
    fn validate(&self, catalog: &Catalog) -> Result<(), Error> {
        let _ = catalog;
        Ok(())
    }

    /// Starts taking events. Called once, after the platform has loaded its state; the
    /// trigger follows function changes on `changes` from then on.
    async fn start(self: Arc<Self>, platform: Arc<Platform>, changes: Changes)
    -> Result<(), Error>;

    /// Stops taking events; calls under way finish.
    async fn stop(&self);

    /// How `trigger` (one of `function`'s specs, of this trigger's kind; `function` is the
    /// owner's target, `flow/NAME` for a flow) runs on this node,
    /// for triggers with a connection of their own (a broker); `None` otherwise.
    fn status(&self, function: &str, trigger: &model::http::Trigger) -> Option<RuntimeStatus> {
        let _ = (function, trigger);
        None
    }

    /// When `trigger` (a spec of this trigger's kind) next fires after `after_ms`, for
    /// triggers that fire on their own; `None` otherwise.
    fn next_fire_ms(&self, trigger: &model::http::Trigger, after_ms: i64) -> Option<i64> {
        let _ = (trigger, after_ms);
        None
    }
}

/// How a trigger with a connection of its own runs on this node.
#[derive(Clone, Debug, Default)]
pub struct RuntimeStatus {
    /// `connecting`, `running`, `paused`, `reconnecting`.
    pub state: &'static str,
    /// The last failure to connect or to consume, until the next success.
    pub last_error: Option<String>,
    /// Messages waiting in the broker for the trigger, where the broker tells.
    pub lag: Option<u64>,
    /// Messages delivered to the function (succeeded), buried (after retries), and calls
    /// the platform could not start (throttled; not counted as attempts).
    pub delivered: u64,
    pub buried: u64,
    pub throttled: u64,
    /// Messages the trigger holds: fetched, waiting for a batch or a retry, or in flight.
    pub held: u64,
}

/// A trigger of a function or flow as `nimbus triggers ls` shows it.
#[derive(Clone, Debug)]
pub struct TriggerStatus {
    /// The owner's target: a function's name, or `flow/NAME`.
    pub function: String,
    pub kind: TriggerKind,
    /// The timer's name, or the route (`GET /items/{id}`).
    pub name: String,
    /// The spec as stored.
    pub spec: model::http::Trigger,
    pub paused: bool,
    pub next_fire_ms: Option<i64>,
    pub last_scheduled_ms: Option<i64>,
    pub last_fire_ms: Option<i64>,
    pub last_request_id: Option<String>,
    pub last_error: Option<String>,
    pub skipped: u64,
    /// How it runs on this node, for a trigger with a connection (a queue).
    pub runtime: Option<RuntimeStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_the_functions_then_the_flows_with_their_targets() {
        let timer: model::http::Trigger =
            serde_json::from_value(serde_json::json!({"timer": {"name": "t", "every": "1m"}}))
                .unwrap();
        let function = Function {
            spec: model::FunctionSpec::new("f", model::Runtime::Python3, "main.handler", "00"),
            revision: 1,
            created_at_ms: 1,
            updated_at_ms: 2,
        };
        let catalog = Catalog {
            revision: 1,
            functions: vec![function],
            flows: vec![FlowTriggers {
                flow: "report".into(),
                target: model::trigger::flow_target("report"),
                triggers: vec![timer],
                updated_at_ms: 3,
            }],
        };
        let owners: Vec<(String, String, usize, i64)> = catalog
            .owners()
            .map(|o| {
                (
                    o.target.to_string(),
                    o.describe(),
                    o.triggers.len(),
                    o.updated_at_ms,
                )
            })
            .collect();
        assert_eq!(
            owners,
            [
                ("f".into(), "function `f`".into(), 0, 2),
                ("flow/report".into(), "flow `report`".into(), 1, 3)
            ]
        );
        assert_eq!(catalog.owners().nth(1).unwrap().name(), "report");
    }
}
