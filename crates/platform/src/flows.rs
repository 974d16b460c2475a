//! Workflows' driver: the operations on flows and executions, and the loop that carries out
//! the engine's effects (`flow::engine`) through the store's outbox (`store::FlowStore`).
//!
//! Every change of an execution is one `FlowStore::step` transaction: the snapshot is read,
//! the pure engine takes the event, and the new snapshot, its history events and its effects
//! (function calls and timers, as `flow_work` rows) commit together. A function call's row is
//! written already claimed by the node that made it, which calls the function at once; its
//! answer is applied in the transaction that deletes the row, so an answer counts once and a
//! committed task never runs again. Timers are free rows that any node claims when due. A
//! claim is a lease: a node that dies leaves its rows to the others once the lease runs out,
//! and a node that starts again gives up its own claims at once (it holds nothing).
//!
//! Steps are committed by one writer task in batches (`write_steps`): the steps that wait
//! while a batch is written go together into the next transaction, so the many executions'
//! tasks answering at once share its statements (`FlowStore::step_batch`) instead of making
//! about seven round trips each to the database's thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use flow::engine::{self, Effect, Event, Execution, Invoke, Status};
use flow::{Definition, Failure};
use model::{ErrorCode, TriggerKind, limits};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use store::flows::StepRequest;
use store::{
    Created, ExecutionRecord, FlowRecord, FlowStore, PutOutcome, StepCommit, Stepped, StoreError,
    WorkItem,
};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use crate::invoke::{Call, Invoked};
use crate::trigger::{Changes, FlowTriggers, Trigger};
use crate::{Error, Platform, now_ms};

/// How long a node's claim on a work item lasts without renewal; a call under way renews
/// it every third of that. A dead node's calls are taken over after at most this long.
const LEASE_MS: i64 = 30_000;
/// Work items claimed in one round.
const CLAIM_BATCH: usize = 64;
/// The longest the loop sleeps without looking at the store: other nodes' timers and
/// expired claims are found within it.
const POLL_MS: i64 = 1_000;
/// Function calls of tasks under way on this node; past it, claimed calls wait.
const CALLS_IN_FLIGHT_MAX: usize = 1_000;
/// Definitions kept parsed, by (flow, revision).
const DEFINITIONS_CACHED_MAX: usize = 256;
/// Stopped executions are kept (with their histories) this long.
const RETENTION_MS: i64 = 30 * 24 * 3_600_000;
/// A call the platform could not start (throttled, no capacity) is tried again after a
/// pause growing from the first to the second bound, without failing the task: a Map of a
/// thousand items over a function with few instances waits for them rather than failing.
const THROTTLE_BACKOFF_MS: (u64, u64) = (20, 1_000);
/// Steps committed in one transaction at most: a batch's statements grow with it, and a
/// step waits for the whole batch it is in.
const STEP_BATCH_MAX: usize = 256;
/// Steps waiting for the writer; past this, the tasks that make them wait (backpressure).
const STEP_QUEUE_MAX: usize = 4_096;

/// A function call as its outbox row carries it.
#[derive(Serialize, Deserialize)]
struct CallBody {
    flow: String,
    revision: i64,
    execution_name: String,
    #[serde(flatten)]
    invoke: Invoke,
}

/// Workflows on this node.
pub struct Flows {
    store: Arc<dyn FlowStore>,
    node_id: String,
    platform: OnceLock<Arc<Platform>>,
    definitions: Mutex<HashMap<(String, i64), Arc<Definition>>>,
    wake: Notify,
    /// When the loop will look at the store next (`i64::MAX` while it is deciding).
    planned_wake_ms: AtomicI64,
    calls: Arc<Semaphore>,
    /// Per target function, as many permits as it can run calls at once
    /// (`max_instances × concurrency`), so a Map wider than its function waits its turn in
    /// order instead of being throttled and backing off.
    gates: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    /// Executions someone waits for (a synchronous start): told when one ends here.
    ended: watch::Sender<u64>,
    stopping: watch::Sender<bool>,
    /// The writer's queue of steps (`write_steps`), started by the first step.
    steps: OnceLock<mpsc::Sender<StepJob>>,
}

/// What a start did.
pub struct Started {
    pub execution: ExecutionRecord,
    /// False when an execution of that name and input existed.
    pub created: bool,
}

impl Flows {
    pub fn new(store: Arc<dyn FlowStore>, node_id: &str) -> Arc<Flows> {
        Arc::new(Flows {
            store,
            node_id: node_id.to_string(),
            platform: OnceLock::new(),
            definitions: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            planned_wake_ms: AtomicI64::new(i64::MAX),
            calls: Arc::new(Semaphore::new(CALLS_IN_FLIGHT_MAX)),
            gates: Mutex::new(HashMap::new()),
            ended: watch::channel(0).0,
            stopping: watch::channel(false).0,
            steps: OnceLock::new(),
        })
    }

    fn platform(&self) -> Result<&Arc<Platform>, Error> {
        self.platform
            .get()
            .ok_or_else(|| Error::new(ErrorCode::Internal, "workflows have not started yet"))
    }

    // ---- flows ----

    /// Checks and stores a definition with the triggers that start its executions.
    pub async fn put_flow(
        &self,
        name: &str,
        definition: &Value,
        description: &str,
        triggers: &[model::http::Trigger],
    ) -> Result<(FlowRecord, PutOutcome), Error> {
        model::validate_name(name)
            .map_err(|e| Error::new(ErrorCode::InvalidRequest, format!("flow name: {e}")))?;
        if description.len() > limits::DESCRIPTION_LEN_MAX {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                format!(
                    "description is longer than {} bytes",
                    limits::DESCRIPTION_LEN_MAX
                ),
            ));
        }
        let text = serde_json::to_string(definition)
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
        if text.len() > limits::FLOW_DEFINITION_BYTES_MAX {
            return Err(Error::new(
                ErrorCode::InvalidDefinition,
                format!(
                    "the definition is {} bytes; the limit is {}",
                    text.len(),
                    limits::FLOW_DEFINITION_BYTES_MAX
                ),
            ));
        }
        let parsed = Definition::parse(definition)
            .map_err(|e| Error::new(ErrorCode::InvalidDefinition, format!("flow `{name}`: {e}")))?;
        let platform = self.platform()?;
        for function in parsed.functions() {
            if platform.get_function(&function).await.is_err() {
                return Err(Error::new(
                    ErrorCode::InvalidDefinition,
                    format!(
                        "flow `{name}` calls function `{function}`, which does not exist; deploy it first"
                    ),
                ));
            }
        }
        check_triggers(name, triggers)?;
        let _write = platform.writes.lock().await;
        // Every trigger kind checks its specs across functions and flows as they would be
        // (two rules of one bucket may not overlap, whoever owns them).
        let target = model::trigger::flow_target(name);
        let mut flows = self.flow_triggers().await?;
        flows.retain(|f| f.flow != name);
        if !triggers.is_empty() {
            flows.push(FlowTriggers {
                flow: name.to_string(),
                target,
                triggers: triggers.to_vec(),
                updated_at_ms: now_ms(),
            });
        }
        platform.validate_triggers(platform.list_functions().await?, flows)?;
        let triggers_text = serde_json::to_string(triggers)
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
        let put = self
            .store
            .put_flow(name, &text, description, &triggers_text, now_ms())
            .await?;
        if put.1 != PutOutcome::Unchanged {
            platform.publish_catalog().await?;
        }
        Ok(put)
    }

    /// The triggers of every flow that declares some, as the catalog carries them.
    pub(crate) async fn flow_triggers(&self) -> Result<Vec<FlowTriggers>, Error> {
        let mut out = Vec::new();
        for f in self.store.list_flows().await? {
            let triggers = parse_triggers(&f.name, &f.triggers)?;
            if !triggers.is_empty() {
                out.push(FlowTriggers {
                    target: model::trigger::flow_target(&f.name),
                    flow: f.name,
                    triggers,
                    updated_at_ms: f.updated_at_ms,
                });
            }
        }
        Ok(out)
    }

    pub async fn get_flow(&self, name: &str) -> Result<FlowRecord, Error> {
        self.store
            .get_flow(name)
            .await?
            .ok_or_else(|| flow_not_found(name))
    }

    pub async fn list_flows(&self) -> Result<Vec<FlowRecord>, Error> {
        Ok(self.store.list_flows().await?)
    }

    /// Deletes a flow and its triggers; running executions go on with their revisions.
    pub async fn delete_flow(&self, name: &str) -> Result<(), Error> {
        let platform = self.platform()?;
        let _write = platform.writes.lock().await;
        if self.store.delete_flow(name).await? {
            platform.publish_catalog().await
        } else {
            Err(flow_not_found(name))
        }
    }

    async fn definition(&self, flow: &str, revision: i64) -> Result<Arc<Definition>, Error> {
        let key = (flow.to_string(), revision);
        if let Some(d) = self.definitions.lock().unwrap().get(&key) {
            return Ok(d.clone());
        }
        let text = self
            .store
            .flow_revision(flow, revision)
            .await?
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::Internal,
                    format!("revision {revision} of flow `{flow}` is missing from the store"),
                )
            })?;
        let def = Arc::new(Definition::parse_json(&text).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("stored revision {revision} of flow `{flow}` no longer parses: {e}"),
            )
        })?);
        let mut cache = self.definitions.lock().unwrap();
        if cache.len() >= DEFINITIONS_CACHED_MAX {
            cache.clear();
        }
        cache.insert(key, def.clone());
        Ok(def)
    }

    // ---- executions ----

    /// Starts an execution; `name` makes the start idempotent (the same name and input
    /// again is the same execution; another input is `execution_exists`).
    pub async fn start(
        self: &Arc<Self>,
        flow: &str,
        name: Option<&str>,
        input: Value,
    ) -> Result<Started, Error> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = match name {
            Some(n) => {
                check_execution_name(n)?;
                n.to_string()
            }
            None => id.clone(),
        };
        let input_text = input.to_string();
        if input_text.len() > limits::FLOW_DATA_BYTES_MAX {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the input is {} bytes; the limit is {}",
                    input_text.len(),
                    limits::FLOW_DATA_BYTES_MAX
                ),
            ));
        }
        // A flow changed between reading its revision and the insert is read again.
        for _ in 0..3 {
            let record = self.get_flow(flow).await?;
            let def = self.definition(flow, record.revision).await?;
            let now = now_ms();
            let secret = format!("{:032x}", rand_u128());
            let mut exec = Execution::new(&id, &name, flow, input.clone(), now, &secret);
            let step = engine::step(&mut exec, &def, Event::Start, now);
            let (commit, after) = self.commit_of(&exec, step, flow, record.revision, now)?;
            let row = ExecutionRecord {
                id: id.clone(),
                flow: flow.to_string(),
                revision: record.revision,
                name: name.clone(),
                status: "RUNNING".into(),
                input: input_text.clone(),
                output: None,
                error: None,
                cause: None,
                started_at_ms: now,
                stopped_at_ms: None,
                transitions: 0,
                snapshot: String::new(),
            };
            match self
                .store
                .create_execution(&row, &commit, limits::FLOW_RUNNING_EXECUTIONS_MAX)
                .await?
            {
                Created::New => {
                    self.after_commit(&exec, record.revision, after);
                    let execution = self.describe(&id).await?;
                    return Ok(Started {
                        execution,
                        created: true,
                    });
                }
                Created::Existing(found) => {
                    if found.input == input_text {
                        return Ok(Started {
                            execution: *found,
                            created: false,
                        });
                    }
                    return Err(Error::new(
                        ErrorCode::ExecutionExists,
                        format!(
                            "flow `{flow}` already has an execution named `{name}` with another input; choose another name"
                        ),
                    ));
                }
                Created::TooMany => {
                    return Err(Error::new(
                        ErrorCode::ExecutionLimitExceeded,
                        format!(
                            "flow `{flow}` has {} running executions, the most allowed; wait for some to end",
                            limits::FLOW_RUNNING_EXECUTIONS_MAX
                        ),
                    ));
                }
                Created::NoFlow => continue,
            }
        }
        Err(flow_not_found(flow))
    }

    pub async fn describe(&self, id: &str) -> Result<ExecutionRecord, Error> {
        self.store
            .get_execution(id)
            .await?
            .ok_or_else(|| execution_not_found(id))
    }

    pub async fn list(
        &self,
        flow: &str,
        status: Option<&str>,
        before_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ExecutionRecord>, Error> {
        if let Some(s) = status
            && Status::parse(s).is_none()
        {
            return Err(Error::new(
                ErrorCode::InvalidRequest,
                format!(
                    "status `{s}` is not one of RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED"
                ),
            ));
        }
        self.get_flow(flow).await?;
        Ok(self
            .store
            .list_executions(flow, status, before_ms, limit)
            .await?)
    }

    /// History events as Step Functions shows them, after `after_id`.
    pub async fn history(
        &self,
        id: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Value>, Error> {
        let events = self.store.history(id, after_id, limit).await?;
        if events.is_empty() && after_id == 0 {
            self.describe(id).await?;
        }
        events
            .iter()
            .map(|e| {
                serde_json::from_str(e).map_err(|e| {
                    Error::new(
                        ErrorCode::Internal,
                        format!("a stored history event is corrupt: {e}"),
                    )
                })
            })
            .collect()
    }

    /// Stops a running execution (a stopped one is left as it is).
    pub async fn stop(
        self: &Arc<Self>,
        id: &str,
        error: Option<String>,
        cause: Option<String>,
    ) -> Result<ExecutionRecord, Error> {
        let record = self.describe(id).await?;
        self.apply(
            &record.id,
            &record.flow,
            record.revision,
            None,
            Event::Stop { error, cause },
        )
        .await?;
        self.describe(id).await
    }

    /// Waits until the execution stops or `wait_ms` passes; the record as it then is.
    pub async fn wait(&self, id: &str, wait_ms: u64) -> Result<ExecutionRecord, Error> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(wait_ms.min(limits::FLOW_SYNC_WAIT_MS_MAX));
        let mut ended = self.ended.subscribe();
        loop {
            let record = self.describe(id).await?;
            if record.status != "RUNNING" || tokio::time::Instant::now() >= deadline {
                return Ok(record);
            }
            // Told when an execution ends on this node; polled for other nodes'.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(POLL_MS as u64)),
                ended.changed(),
            )
            .await;
        }
    }

    /// `SendTaskSuccess`, `SendTaskFailure`, `SendTaskHeartbeat`.
    pub async fn answer_token(
        self: &Arc<Self>,
        token: &str,
        answer: TokenAnswer,
    ) -> Result<(), Error> {
        let Some(exec_id) = Execution::token_execution(token) else {
            return Err(Error::new(
                ErrorCode::InvalidToken,
                "the task token is malformed",
            ));
        };
        let record = self.store.get_execution(exec_id).await?.ok_or_else(|| {
            Error::new(ErrorCode::InvalidToken, "the task token names no execution")
        })?;
        let snapshot: Execution = parse_snapshot(&record)?;
        if snapshot.token_task(token).is_none() {
            return Err(Error::new(
                ErrorCode::InvalidToken,
                "the task token is not valid",
            ));
        }
        let event = match answer {
            TokenAnswer::Success(output) => {
                if output.to_string().len() > limits::FLOW_DATA_BYTES_MAX {
                    return Err(Error::new(
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "the output is larger than {} bytes",
                            limits::FLOW_DATA_BYTES_MAX
                        ),
                    ));
                }
                Event::TokenSucceeded {
                    token: token.to_string(),
                    output,
                }
            }
            TokenAnswer::Failure { error, cause } => Event::TokenFailed {
                token: token.to_string(),
                failure: Failure::new(error.unwrap_or_default(), cause.unwrap_or_default()),
            },
            TokenAnswer::Heartbeat => Event::TokenHeartbeat {
                token: token.to_string(),
            },
        };
        match self
            .apply(&record.id, &record.flow, record.revision, None, event)
            .await?
        {
            Applied::Stale => Err(Error::new(
                ErrorCode::TaskNotFound,
                "the task of this token no longer waits (it was answered, timed out, or its execution ended)",
            )),
            Applied::Done => Ok(()),
        }
    }

    // ---- the driver ----

    /// Feeds one event to an execution in one transaction and carries out what it made.
    ///
    /// Every step goes through the writer's batches, including the API's (stops, task
    /// tokens): one path keeps the steps of an execution in the order they were made, and
    /// a lone step is committed by itself anyway (`FlowStore::step`, which a batch also
    /// falls back to when one of its steps fails).
    async fn apply(
        self: &Arc<Self>,
        exec_id: &str,
        flow: &str,
        revision: i64,
        consumes: Option<&str>,
        event: Event,
    ) -> Result<Applied, Error> {
        let def = self.definition(flow, revision).await?;
        let (reply, answer) = oneshot::channel();
        let job = StepJob {
            exec_id: exec_id.to_string(),
            consumes: consumes.map(str::to_string),
            def,
            event,
            reply,
        };
        let writer_gone = || Error::new(ErrorCode::Internal, "workflows' step writer has stopped");
        self.step_queue()
            .send(job)
            .await
            .map_err(|_| writer_gone())?;
        let (stepped, outcome) = answer.await.map_err(|_| writer_gone())?;
        match (stepped?, outcome) {
            (Stepped::Committed, Some(Ok((exec, revision, after)))) => {
                self.after_commit(&exec, revision, after);
                Ok(Applied::Done)
            }
            (Stepped::Committed | Stepped::Unchanged, Some(Err(e))) => Err(e),
            (Stepped::Committed, None) => Err(Error::new(
                ErrorCode::Internal,
                "a step was committed without its outcome",
            )),
            (Stepped::Missing, _) => Err(execution_not_found(exec_id)),
            (Stepped::Unchanged | Stepped::AlreadyApplied, _) => Ok(Applied::Stale),
        }
    }

    /// The writer's queue, and the writer, started on first use (a step is always made
    /// inside the runtime; `Flows::new` may not be).
    fn step_queue(self: &Arc<Self>) -> &mpsc::Sender<StepJob> {
        self.steps.get_or_init(|| {
            let (queue, steps) = mpsc::channel(STEP_QUEUE_MAX);
            tokio::spawn(write_steps(Arc::downgrade(self), steps));
            queue
        })
    }

    /// Commits a batch of steps (`FlowStore::step_batch`): one result per step, with what
    /// its change made (the execution after it and what to do once committed).
    async fn commit_steps(&self, jobs: &[StepJob]) -> Vec<StepReply> {
        let mut outcomes: Vec<Option<Result<Committed, Error>>> =
            jobs.iter().map(|_| None).collect();
        let results = {
            let mut requests: Vec<StepRequest<'_>> = jobs
                .iter()
                .zip(outcomes.iter_mut())
                .map(|(job, outcome)| StepRequest {
                    execution: &job.exec_id,
                    consumes: job.consumes.as_deref(),
                    change: Box::new(move |record: &ExecutionRecord| {
                        self.change_of(record, &job.def, &job.event, outcome)
                    }),
                })
                .collect();
            self.store.step_batch(&mut requests).await
        };
        results.into_iter().zip(outcomes).collect()
    }

    /// A step's change of `record`: the engine takes `event`, and `outcome` keeps the
    /// execution after it (or why nothing is written). Called again when the batch falls
    /// back to single steps, so the event is cloned, not taken, and `outcome` is reset.
    fn change_of(
        &self,
        record: &ExecutionRecord,
        def: &Definition,
        event: &Event,
        outcome: &mut Option<Result<Committed, Error>>,
    ) -> Option<StepCommit> {
        *outcome = None;
        let now = now_ms();
        let mut exec = match parse_snapshot(record) {
            Ok(e) => e,
            Err(e) => {
                *outcome = Some(Err(e));
                return None;
            }
        };
        let step = engine::step(&mut exec, def, event.clone(), now);
        if step.stale {
            return None;
        }
        match self.commit_of(&exec, step, &record.flow, record.revision, now) {
            Ok((commit, after)) => {
                *outcome = Some(Ok((exec, record.revision, after)));
                Some(commit)
            }
            Err(e) => {
                *outcome = Some(Err(e));
                None
            }
        }
    }

    /// The store's change for a step, and the calls to make once it is committed.
    fn commit_of(
        &self,
        exec: &Execution,
        step: engine::Step,
        flow: &str,
        revision: i64,
        now: i64,
    ) -> Result<(StepCommit, After), Error> {
        let snapshot = serde_json::to_string(exec)
            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
        let mut commit = StepCommit {
            status: exec.status.as_str().to_string(),
            output: exec.output.as_ref().map(Value::to_string),
            error: exec.failure.as_ref().map(|f| f.error.clone()),
            cause: exec.failure.as_ref().map(|f| f.cause.clone()),
            stopped_at_ms: exec.stopped_ms,
            transitions: exec.transitions as i64,
            snapshot,
            history: step
                .history
                .iter()
                .map(|h| (h.id as i64, h.to_json().to_string()))
                .collect(),
            clear: exec.status != Status::Running,
            ..Default::default()
        };
        let mut invokes = Vec::new();
        for effect in step.effects {
            match effect {
                Effect::Invoke(invoke) => {
                    let body = CallBody {
                        flow: flow.to_string(),
                        revision,
                        execution_name: exec.name.clone(),
                        invoke,
                    };
                    commit.add.push(WorkItem {
                        execution: exec.id.clone(),
                        key: format!("i:{}", body.invoke.task),
                        kind: "invoke".into(),
                        due_ms: now,
                        body: serde_json::to_string(&body)
                            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?,
                        owner: Some(self.node_id.clone()),
                        lease_until_ms: now + LEASE_MS,
                    });
                    invokes.push(body.invoke);
                }
                Effect::Timer { id, due_ms } => commit.add.push(WorkItem {
                    execution: exec.id.clone(),
                    key: id,
                    kind: "timer".into(),
                    due_ms,
                    body: json!({"flow": flow, "revision": revision}).to_string(),
                    owner: None,
                    lease_until_ms: 0,
                }),
                Effect::CancelTimer { id } => commit.remove.push(id),
            }
        }
        let timer_due_ms = commit
            .add
            .iter()
            .filter(|w| w.kind == "timer")
            .map(|w| w.due_ms)
            .min();
        Ok((
            commit,
            After {
                invokes,
                timer_due_ms,
            },
        ))
    }

    /// After a commit: the calls start, the loop is woken when a timer became due before
    /// it planned to look, and waiters learn of an end.
    fn after_commit(self: &Arc<Self>, exec: &Execution, revision: i64, after: After) {
        for invoke in after.invokes {
            let body = CallBody {
                flow: exec.flow.clone(),
                revision,
                execution_name: exec.name.clone(),
                invoke,
            };
            tokio::spawn(self.clone().run_call(exec.id.clone(), body));
        }
        // Only then: a wake costs the loop a claim (a write) and two reads, and a step
        // that only made calls gives it nothing to claim.
        if after
            .timer_due_ms
            .is_some_and(|due| due < self.planned_wake_ms.load(Ordering::Acquire))
        {
            self.wake.notify_one();
        }
        if exec.status != Status::Running {
            self.ended.send_modify(|n| *n += 1);
        }
    }

    /// Makes one task's function call and applies its answer.
    async fn run_call(self: Arc<Self>, exec_id: String, body: CallBody) {
        let Ok(_slot) = self.calls.clone().acquire_owned().await else {
            return;
        };
        let Ok(platform) = self.platform() else {
            return;
        };
        let platform = platform.clone();
        let key = format!("i:{}", body.invoke.task);
        let target = match &body.invoke.qualifier {
            Some(q) => format!("{}:{q}", body.invoke.function),
            None => body.invoke.function.clone(),
        };
        let payload = Bytes::from(body.invoke.payload.to_string());
        let mut backoff_ms = THROTTLE_BACKOFF_MS.0;
        let renew_every = Duration::from_millis((LEASE_MS / 3) as u64);
        let renew = || async {
            let _ = self
                .store
                .renew_work(
                    &self.node_id,
                    &[(exec_id.clone(), key.clone())],
                    now_ms() + LEASE_MS,
                )
                .await;
        };
        // A turn at the function; the claim is renewed while it waits for one, so the call
        // is not taken over (and made twice) by a loop that finds its lease run out.
        let _turn = match self.gate(&platform, &target).await {
            Some(gate) => {
                let acquire = gate.acquire_owned();
                tokio::pin!(acquire);
                loop {
                    tokio::select! {
                        p = &mut acquire => break p.ok(),
                        _ = tokio::time::sleep(renew_every) => renew().await,
                    }
                }
            }
            None => None,
        };
        let event = loop {
            let call = Call {
                target: target.clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
                affinity: Some(exec_id.clone()),
                trigger: TriggerKind::Flow,
                source: Some(format!("flow:{}/{}", body.flow, body.execution_name)),
                attempt: 1,
                trace: crate::trace::child_of(Some(&execution_traceparent(&exec_id))),
                client_context: None,
                lineage: 0,
            };
            let invoke = platform.invoke(call, payload.clone());
            tokio::pin!(invoke);
            // The claim is renewed while the function runs, so no other node takes it over.
            let invoked = loop {
                tokio::select! {
                                    r = &mut invoke => break r,
                _ = tokio::time::sleep(renew_every) => renew().await,
                                }
            };
            match invoked {
                Ok(Invoked {
                    outcome: sandbox::Outcome::Success { body, .. },
                    record,
                    ..
                }) => {
                    let output = serde_json::from_slice(&body).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&body).into_owned())
                    });
                    break Event::TaskSucceeded {
                        task: body_task(&key),
                        output,
                        executed_version: Some(record.version.clone()),
                    };
                }
                Ok(Invoked {
                    outcome: sandbox::Outcome::Error(e),
                    ..
                }) => {
                    let cause = json!({"errorMessage": e.error_message, "errorType": e.error_type, "stackTrace": e.stack_trace});
                    break Event::TaskFailed {
                        task: body_task(&key),
                        failure: Failure::new(e.error_type.clone(), cause.to_string()),
                    };
                }
                Err(e)
                    if matches!(
                        e.code,
                        ErrorCode::Throttled | ErrorCode::CapacityExhausted | ErrorCode::QueueFull
                    ) =>
                {
                    tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                    backoff_ms = (backoff_ms * 2).min(THROTTLE_BACKOFF_MS.1);
                    renew().await;
                }
                Err(e) => {
                    let error = match e.code {
                        ErrorCode::FunctionNotFound
                        | ErrorCode::VersionNotFound
                        | ErrorCode::AliasNotFound => "Lambda.ResourceNotFoundException",
                        ErrorCode::PayloadTooLarge => "Lambda.RequestTooLargeException",
                        ErrorCode::TriggerPaused => "Lambda.TooManyRequestsException",
                        _ => "Lambda.ServiceException",
                    };
                    break Event::TaskFailed {
                        task: body_task(&key),
                        failure: Failure::new(error, e.message),
                    };
                }
            }
        };
        if let Err(e) = self
            .apply(&exec_id, &body.flow, body.revision, Some(&key), event)
            .await
        {
            // The row stays claimed: when the lease runs out, the call is made again.
            tracing::warn!(execution = %exec_id, "flows: applying a task's answer failed: {}", e.message);
        }
    }

    /// The turns of `target`'s calls, sized to what it can run at once now (a redeploy
    /// that changes it gives the next calls a new gate).
    async fn gate(&self, platform: &Arc<Platform>, target: &str) -> Option<Arc<Semaphore>> {
        let capacity = platform.capacity(target).await.ok()?.max(1);
        let mut gates = self.gates.lock().unwrap();
        if gates.len() >= DEFINITIONS_CACHED_MAX && !gates.contains_key(target) {
            gates.clear();
        }
        let entry = gates
            .entry(target.to_string())
            .or_insert_with(|| (capacity, Arc::new(Semaphore::new(capacity as usize))));
        if entry.0 != capacity {
            *entry = (capacity, Arc::new(Semaphore::new(capacity as usize)));
        }
        Some(entry.1.clone())
    }

    /// The loop: claims due work (timers, and calls whose node is gone) and carries it out.
    async fn run(self: Arc<Self>) {
        if let Err(e) = self.store.release_work(&self.node_id).await {
            tracing::warn!("flows: giving up this node's earlier claims failed: {e}");
        }
        let mut stopping = self.stopping.subscribe();
        let mut last_purge = 0;
        loop {
            if *stopping.borrow() {
                return;
            }
            let now = now_ms();
            let claimed = match self
                .store
                .claim_work(&self.node_id, now, now + LEASE_MS, CLAIM_BATCH)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("flows: claiming due work failed: {e}");
                    Vec::new()
                }
            };
            let full = claimed.len() == CLAIM_BATCH;
            for item in claimed {
                let me = self.clone();
                tokio::spawn(async move { me.carry_out(item).await });
            }
            if now - last_purge > 3_600_000 {
                last_purge = now;
                if let Err(e) = self.store.purge_executions(now - RETENTION_MS).await {
                    tracing::warn!("flows: purging old executions failed: {e}");
                }
            }
            if full {
                continue;
            }
            // Any timer committed while the next due time is read wakes the loop (the
            // notification is kept until it waits), so none is missed in between.
            self.planned_wake_ms.store(i64::MAX, Ordering::Release);
            let next = self.store.next_due(now).await.ok().flatten();
            let sleep_ms = next.map_or(POLL_MS, |due| (due - now_ms()).clamp(0, POLL_MS));
            self.planned_wake_ms
                .store(now_ms() + sleep_ms, Ordering::Release);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
                _ = self.wake.notified() => {}
                _ = stopping.changed() => return,
            }
        }
    }

    async fn carry_out(self: Arc<Self>, item: WorkItem) {
        match item.kind.as_str() {
            "invoke" => match serde_json::from_str::<CallBody>(&item.body) {
                Ok(body) => self.run_call(item.execution, body).await,
                Err(e) => {
                    tracing::warn!(execution = %item.execution, "flows: a stored call is corrupt: {e}")
                }
            },
            _ => {
                #[derive(Deserialize)]
                struct TimerBody {
                    flow: String,
                    revision: i64,
                }
                let body: TimerBody = match serde_json::from_str(&item.body) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(execution = %item.execution, "flows: a stored timer is corrupt: {e}");
                        return;
                    }
                };
                let event = Event::TimerFired {
                    timer: item.key.clone(),
                };
                if let Err(e) = self
                    .apply(
                        &item.execution,
                        &body.flow,
                        body.revision,
                        Some(&item.key),
                        event,
                    )
                    .await
                {
                    tracing::warn!(execution = %item.execution, "flows: a timer could not be applied: {}", e.message);
                }
            }
        }
    }
}

/// Commits the steps that wait, many in one transaction, as the asynchronous queue commits
/// submissions (`async_invoke::in_batches`): whatever arrived while a batch was written
/// goes into the next, so steps made at once share one transaction's statements.
async fn write_steps(flows: Weak<Flows>, mut queue: mpsc::Receiver<StepJob>) {
    let mut jobs = Vec::with_capacity(STEP_BATCH_MAX);
    while let Some(job) = queue.recv().await {
        jobs.push(job);
        while jobs.len() < STEP_BATCH_MAX {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let Some(me) = flows.upgrade() else {
            return;
        };
        let began = std::time::Instant::now();
        let replies = me.commit_steps(&jobs).await;
        drop(me);
        tracing::debug!(
            steps = jobs.len(),
            commit_ms = began.elapsed().as_secs_f64() * 1e3,
            "flows: steps committed"
        );
        for (job, reply) in jobs.drain(..).zip(replies) {
            let _ = job.reply.send(reply);
        }
    }
}

fn body_task(key: &str) -> String {
    key.strip_prefix("i:").unwrap_or(key).to_string()
}

/// What a task token's holder says.
pub enum TokenAnswer {
    Success(Value),
    Failure {
        error: Option<String>,
        cause: Option<String>,
    },
    Heartbeat,
}

enum Applied {
    Done,
    Stale,
}

/// A step the store committed: the execution after it, its revision, the calls it made.
type Committed = (Execution, i64, After);

/// A step waiting for the writer (`write_steps`).
struct StepJob {
    exec_id: String,
    consumes: Option<String>,
    def: Arc<Definition>,
    event: Event,
    reply: oneshot::Sender<StepReply>,
}

/// What the store did with a step, and what its change made (`Flows::change_of`).
type StepReply = (
    Result<Stepped, StoreError>,
    Option<Result<Committed, Error>>,
);

/// What a committed step leaves to do: the calls to make, and the earliest timer it set.
struct After {
    invokes: Vec<Invoke>,
    timer_due_ms: Option<i64>,
}

fn parse_snapshot(record: &ExecutionRecord) -> Result<Execution, Error> {
    serde_json::from_str(&record.snapshot).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("the snapshot of execution {} is corrupt: {e}", record.id),
        )
    })
}

fn rand_u128() -> u128 {
    u128::from_be_bytes(*uuid::Uuid::new_v4().as_bytes())
}

/// Every call of an execution is a span in one trace, whose id is the execution's.
fn execution_traceparent(exec_id: &str) -> String {
    let trace = if exec_id.len() == 32 && exec_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        exec_id.to_ascii_lowercase()
    } else {
        format!(
            "{:032x}",
            model::hash::stable_hash(&[exec_id.as_bytes()]) as u128 | 1
        )
    };
    format!("00-{trace}-{}-01", &trace[..16])
}

fn check_execution_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.chars().count() <= limits::FLOW_EXECUTION_NAME_LEN_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidRequest,
            format!(
                "execution name `{name}`: use 1 to {} letters, digits, '-' and '_'",
                limits::FLOW_EXECUTION_NAME_LEN_MAX
            ),
        ))
    }
}

/// The triggers a flow may declare: every kind that delivers events, not routes (a request
/// waits for its answer; an execution's is `StartSyncExecution`'s business).
fn check_triggers(flow: &str, triggers: &[model::http::Trigger]) -> Result<(), Error> {
    for (i, t) in triggers.iter().enumerate() {
        if let model::http::Trigger::Http(h) = t {
            return Err(Error::invalid(format!(
                "flow `{flow}`: triggers[{i}]: a route (`http: {}`) cannot start a flow; use a timer, event, object or queue trigger, or a function that starts the execution",
                h.path
            )));
        }
        if let Some(q) = t.queue()
            && let Some(qualifier) = &q.qualifier
        {
            return Err(Error::invalid(format!(
                "flow `{flow}`: triggers[{i}].queue.qualifier: `{qualifier}` names a function's version or alias; a flow has none (its executions run the revision current when they start)"
            )));
        }
    }
    let errors = model::validate_triggers(triggers, "flow");
    if errors.is_empty() {
        Ok(())
    } else {
        let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        Err(Error::invalid(format!("flow `{flow}`: {}", all.join("; "))))
    }
}

/// A flow's stored triggers.
pub fn parse_triggers(flow: &str, text: &str) -> Result<Vec<model::http::Trigger>, Error> {
    serde_json::from_str(text).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("the stored triggers of flow `{flow}` no longer parse: {e}"),
        )
    })
}

fn flow_not_found(name: &str) -> Error {
    Error::new(
        ErrorCode::FlowNotFound,
        format!("flow `{name}` does not exist; `nimbus flow ls` lists them"),
    )
}

fn execution_not_found(id: &str) -> Error {
    Error::new(
        ErrorCode::ExecutionNotFound,
        format!("execution `{id}` does not exist"),
    )
}

#[async_trait]
impl Trigger for Flows {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Flow
    }

    async fn start(
        self: Arc<Self>,
        platform: Arc<Platform>,
        changes: Changes,
    ) -> Result<(), Error> {
        let _ = changes;
        let _ = self.platform.set(platform);
        tokio::spawn(self.clone().run());
        Ok(())
    }

    async fn stop(&self) {
        self.stopping.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triggers(v: Value) -> Vec<model::http::Trigger> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_flow_takes_event_triggers_and_refuses_routes_qualifiers_and_twins() {
        let ok = triggers(json!([
            {"timer": {"name": "nightly", "cron": "0 3 * * *"}},
            {"object": {"bucket": "uploads", "prefix": "in/"}},
            {"event": {"name": "placed", "pattern": {"source": ["shop"]}}},
            {"queue": {"redis": {"url": "redis://127.0.0.1:6379", "stream": "s"}}}
        ]));
        check_triggers("report", &ok).unwrap();
        let refused = |v: Value| check_triggers("report", &triggers(v)).unwrap_err().message;
        assert!(refused(json!([{"http": {"path": "/go"}}])).contains("cannot start a flow"));
        assert!(
            refused(json!([{"queue": {"redis": {"url": "redis://h", "stream": "s"}, "qualifier": "live"}}]))
                .contains("triggers[0].queue.qualifier")
        );
        let twins = refused(json!([
            {"timer": {"name": "t", "every": "1m"}},
            {"event": {"name": "t", "pattern": {"source": ["a"]}}}
        ]));
        assert!(
            twins.starts_with(
                "flow `report`: triggers[1].event.name: `t` names another trigger of this flow"
            ),
            "{twins}"
        );
        let too_many: Vec<Value> = (0..=limits::TRIGGERS_MAX)
            .map(|i| json!({"timer": {"name": format!("t{i}"), "every": "1m"}}))
            .collect();
        assert!(refused(Value::Array(too_many)).contains("triggers: has 17"));
    }
}
