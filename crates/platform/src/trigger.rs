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

/// Every function as stored, at one revision of the change feed.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Grows with every publication; a trigger that derived its state from an older one
    /// derives it again.
    pub revision: u64,
    pub functions: Vec<Function>,
}

/// A trigger's view of the change feed.
pub type Changes = watch::Receiver<Arc<Catalog>>;

/// An event source.
#[async_trait::async_trait]
pub trait Trigger: Send + Sync + 'static {
    /// The kind of the calls it starts.
    fn kind(&self) -> TriggerKind;

    /// Checks the specs of this kind across `functions`, as they would be after a write;
    /// an error refuses the write and says what to change.
    fn validate(&self, functions: &[Function]) -> Result<(), Error> {
        let _ = functions;
        Ok(())
    }

    /// Starts taking events. Called once, after the platform has loaded its state; the
    /// trigger follows function changes on `changes` from then on.
    async fn start(self: Arc<Self>, platform: Arc<Platform>, changes: Changes)
    -> Result<(), Error>;

    /// Stops taking events; calls under way finish.
    async fn stop(&self);

    /// How `trigger` (one of `function`'s specs, of this trigger's kind) runs on this node,
    /// for triggers with a connection of their own (a broker); `None` otherwise.
    fn status(&self, function: &str, trigger: &model::http::Trigger) -> Option<RuntimeStatus> {
        let _ = (function, trigger);
        None
    }

    /// When `trigger` (one of `function`'s specs, of this trigger's kind) next fires after
    /// `after_ms`, for triggers that fire on their own; `None` otherwise.
    fn next_fire_ms(
        &self,
        function: &Function,
        trigger: &model::http::Trigger,
        after_ms: i64,
    ) -> Option<i64> {
        let _ = (function, trigger, after_ms);
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

/// A trigger of a function as `nimbus triggers ls` shows it.
#[derive(Clone, Debug)]
pub struct TriggerStatus {
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
