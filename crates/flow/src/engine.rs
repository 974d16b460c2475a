//! The engine: an execution's state (the snapshot) and `step`, which takes one event (the
//! start, a task's answer, a timer, a task token's answer, a stop) and the current time, and
//! moves the execution as far as it can go without waiting: the new state, the history
//! events in Step Functions' shape, and the effects (functions to call, timers to set) for
//! the driver to commit in the same transaction. No IO, no clock, no randomness of its own:
//! `step` is a pure function of the snapshot, the definition, the event and `now_ms`, so a
//! crash between any two effects is replayed by feeding the same event again.
//!
//! An execution is a set of *frames*: one per running state machine (the top level, each
//! running Parallel branch, each running Map iteration). A frame is at one state at a time;
//! a Parallel or Map state's frame waits for its children, which report to it when they end.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use model::limits;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::definition::{
    Catcher, Definition, Kind, Resource, ResultPath, Retrier, Seconds, Select, State, Task, Text,
    Transition, WaitFor, error_matches, function_ref,
};
use crate::failure::{Failure, names};
use crate::rng::Rng;
use crate::time;

/// Where an execution is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::TimedOut => "TIMED_OUT",
            Status::Aborted => "ABORTED",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Some(match text {
            "RUNNING" => Status::Running,
            "SUCCEEDED" => Status::Succeeded,
            "FAILED" => Status::Failed,
            "TIMED_OUT" => Status::TimedOut,
            "ABORTED" => Status::Aborted,
            _ => return None,
        })
    }
}

/// An execution's snapshot: everything `step` needs besides the definition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Execution {
    pub id: String,
    pub name: String,
    pub flow: String,
    pub started_ms: i64,
    pub input: Value,
    pub status: Status,
    pub output: Option<Value>,
    pub failure: Option<Failure>,
    pub stopped_ms: Option<i64>,
    /// History events so far; the last one's id.
    pub events: u64,
    /// States entered so far.
    pub transitions: u64,
    /// The key of task tokens (hex), chosen by the driver when the execution is made.
    secret: String,
    frames: BTreeMap<u32, Frame>,
    next_frame: u32,
    /// Task id -> the frame waiting for it.
    tasks: BTreeMap<String, u32>,
    /// Timer id -> the frame it belongs to (0 and the root frame for the execution's own).
    timers: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Frame {
    machine: usize,
    /// The frame waiting for this one, and this one's slot there (branch or item index).
    parent: Option<(u32, usize)>,
    state: String,
    /// The state's raw input.
    input: Value,
    entered_ms: i64,
    /// The id of the state's StateEntered event: with the attempt, the task's id.
    entered_event: u64,
    last_event: u64,
    attempt: u32,
    /// Retries used per retrier of the current state (a retrier's budget is shared by all
    /// the errors it matches).
    retries: Vec<u32>,
    /// `$$.Map.Item` of an iteration: its index and value.
    item: Option<(usize, Value)>,
    work: Work,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Work {
    None,
    Task {
        id: String,
        token: bool,
        heartbeats: u32,
    },
    Wait {
        timer: String,
    },
    Retry {
        timer: String,
    },
    Parallel {
        children: Vec<Option<u32>>,
        results: Vec<Value>,
        left: usize,
    },
    Map(Box<MapWork>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MapWork {
    effective: Value,
    items: Vec<Value>,
    next: usize,
    running: BTreeSet<u32>,
    results: Vec<Value>,
    left: usize,
}

/// What happens to an execution.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Begin at the definition's StartAt with the execution's input.
    Start,
    /// A task's function answered.
    TaskSucceeded {
        task: String,
        output: Value,
        executed_version: Option<String>,
    },
    /// A task's function failed (its error, a platform error, or its timeout).
    TaskFailed { task: String, failure: Failure },
    /// A timer set by an effect is due.
    TimerFired { timer: String },
    /// `SendTaskSuccess`.
    TokenSucceeded { token: String, output: Value },
    /// `SendTaskFailure`.
    TokenFailed { token: String, failure: Failure },
    /// `SendTaskHeartbeat`.
    TokenHeartbeat { token: String },
    /// `StopExecution`.
    Stop {
        error: Option<String>,
        cause: Option<String>,
    },
}

/// A function call for the driver to make. Idempotent by `task`: the driver runs it once
/// (keyed by execution and task) and answers with `TaskSucceeded`/`TaskFailed` carrying it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invoke {
    pub task: String,
    pub function: String,
    pub qualifier: Option<String>,
    pub payload: Value,
    pub timeout_ms: Option<u64>,
    /// The state it runs for, for the invocation record.
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    Invoke(Invoke),
    /// Answer `TimerFired { timer: id }` at `due_ms`.
    Timer {
        id: String,
        due_ms: i64,
    },
    /// A timer set earlier is no longer wanted.
    CancelTimer {
        id: String,
    },
}

/// One event of the history, in Step Functions' shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub id: u64,
    pub previous_event_id: u64,
    pub timestamp_ms: i64,
    /// `ExecutionStarted`, `TaskStateEntered`, `TaskScheduled`, …
    pub kind: String,
    pub details: Value,
}

impl HistoryEvent {
    /// As `GetExecutionHistory` shows it: the details under `<type>EventDetails`.
    pub fn to_json(&self) -> Value {
        let key = if self.kind.ends_with("StateEntered") {
            "stateEnteredEventDetails".to_string()
        } else if self.kind.ends_with("StateExited") {
            "stateExitedEventDetails".to_string()
        } else {
            let mut k = self.kind.clone();
            if let Some(first) = k.get_mut(0..1) {
                first.make_ascii_lowercase();
            }
            format!("{k}EventDetails")
        };
        let mut out = json!({
            "id": self.id,
            "previousEventId": self.previous_event_id,
            "timestamp": time::format_ms(self.timestamp_ms),
            "type": self.kind,
        });
        if !self.details.is_null() {
            out[key] = self.details.clone();
        }
        out
    }
}

/// What one `step` did.
#[derive(Debug, Default)]
pub struct Step {
    pub effects: Vec<Effect>,
    pub history: Vec<HistoryEvent>,
    /// States entered by this step.
    pub transitions: u32,
    /// The event was for something that is no longer waited for (a task already answered,
    /// a cancelled timer, a token of a finished task): nothing changed.
    pub stale: bool,
}

impl Execution {
    /// A new execution, not yet started: feed it `Event::Start`.
    pub fn new(
        id: &str,
        name: &str,
        flow: &str,
        input: Value,
        started_ms: i64,
        secret: &str,
    ) -> Execution {
        Execution {
            id: id.to_string(),
            name: name.to_string(),
            flow: flow.to_string(),
            started_ms,
            input,
            status: Status::Running,
            output: None,
            failure: None,
            stopped_ms: None,
            events: 0,
            transitions: 0,
            secret: secret.to_string(),
            frames: BTreeMap::new(),
            next_frame: 0,
            tasks: BTreeMap::new(),
            timers: BTreeMap::new(),
        }
    }

    /// The task a token names, when the token is this execution's and its MAC checks out.
    pub fn token_task(&self, token: &str) -> Option<String> {
        let mut parts = token.rsplitn(3, ':');
        let (mac, task, exec) = (parts.next()?, parts.next()?, parts.next()?);
        (exec == self.id && self.mac(task) == mac).then(|| task.to_string())
    }

    /// The execution id a token was made for (unchecked), so the driver can find it.
    pub fn token_execution(token: &str) -> Option<&str> {
        let mut parts = token.rsplitn(3, ':');
        parts.next()?;
        parts.next()?;
        parts.next()
    }

    fn token(&self, task: &str) -> String {
        format!("{}:{task}:{}", self.id, self.mac(task))
    }

    fn mac(&self, task: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.secret.as_bytes());
        h.update([0]);
        h.update(self.id.as_bytes());
        h.update([0]);
        h.update(task.as_bytes());
        hex32(&h.finalize())
    }
}

fn hex32(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Moves `exec` by one event. See the module's documentation.
pub fn step(exec: &mut Execution, def: &Definition, event: Event, now_ms: i64) -> Step {
    let seed = model::hash::stable_hash(&[exec.id.as_bytes(), &exec.events.to_le_bytes()]);
    let mut run = Run {
        exec,
        def,
        now: now_ms,
        out: Step::default(),
        queue: VecDeque::new(),
        rng: Rng::new(seed),
    };
    run.handle(event);
    run.drain();
    run.out
}

/// The work list of one step.
enum Action {
    /// Run the frame's current state from its start.
    Enter(u32),
    /// The frame's current state is done with this result (before ResultSelector).
    Result(u32, Value),
    /// The frame's current state failed.
    Fail(u32, Failure),
    /// The frame ended (its machine reached an end).
    Done(u32, Result<Value, Failure>),
}

struct Run<'a> {
    exec: &'a mut Execution,
    def: &'a Definition,
    now: i64,
    out: Step,
    queue: VecDeque<Action>,
    rng: Rng,
}

impl Run<'_> {
    fn handle(&mut self, event: Event) {
        if self.exec.status != Status::Running {
            self.out.stale = true;
            return;
        }
        match event {
            Event::Start => {
                if !self.exec.frames.is_empty() || self.exec.events > 0 {
                    self.out.stale = true;
                    return;
                }
                let input = self.exec.input.clone();
                self.record(
                    None,
                    "ExecutionStarted",
                    json!({"input": to_text(&input), "roleArn": ROLE_ARN}),
                );
                let timeout_s = self
                    .def
                    .timeout_seconds
                    .unwrap_or(limits::FLOW_EXECUTION_SECONDS_MAX);
                let id = "execution-timeout".to_string();
                self.exec.timers.insert(id.clone(), 0);
                self.out.effects.push(Effect::Timer {
                    id,
                    due_ms: self.exec.started_ms + timeout_s as i64 * 1000,
                });
                let root = self.new_frame(0, None, self.def.root().start_at.clone(), input, None);
                self.queue.push_back(Action::Enter(root));
            }
            Event::TaskSucceeded {
                task,
                output,
                executed_version,
            } => {
                let Some(frame) = self.waiting(&task) else {
                    return;
                };
                let (state, token) = match self.frame_task(frame) {
                    Some(t) => t,
                    None => return,
                };
                if token {
                    // The function behind a .waitForTaskToken task returned: the task goes
                    // on until its token is answered.
                    self.record(Some(frame), "TaskSubmitted", json!({"resourceType": "lambda", "resource": "invoke.waitForTaskToken", "output": to_text(&output)}));
                    return;
                }
                self.finish_task(frame, &task);
                let result = match &task_of(&state).resource {
                    Resource::LambdaInvoke { .. } => json!({
                        "ExecutedVersion": executed_version.unwrap_or_else(|| "$LATEST".into()),
                        "Payload": output,
                        "StatusCode": 200,
                    }),
                    Resource::Function { .. } => output,
                };
                self.record(Some(frame), "TaskSucceeded", json!({"resourceType": "lambda", "resource": "invoke", "output": to_text(&result)}));
                self.queue.push_back(Action::Result(frame, result));
            }
            Event::TaskFailed { task, failure } => {
                let Some(frame) = self.waiting(&task) else {
                    return;
                };
                self.finish_task(frame, &task);
                self.record(Some(frame), if failure.error == names::TIMEOUT { "TaskTimedOut" } else { "TaskFailed" }, json!({"resourceType": "lambda", "resource": "invoke", "error": failure.error, "cause": failure.cause}));
                self.queue.push_back(Action::Fail(frame, failure));
            }
            Event::TokenSucceeded { token, output } => {
                let Some((frame, task)) = self.token_frame(&token) else {
                    return;
                };
                self.finish_task(frame, &task);
                self.record(Some(frame), "TaskSucceeded", json!({"resourceType": "lambda", "resource": "invoke.waitForTaskToken", "output": to_text(&output)}));
                self.queue.push_back(Action::Result(frame, output));
            }
            Event::TokenFailed { token, failure } => {
                let Some((frame, task)) = self.token_frame(&token) else {
                    return;
                };
                self.finish_task(frame, &task);
                self.record(Some(frame), "TaskFailed", json!({"resourceType": "lambda", "resource": "invoke.waitForTaskToken", "error": failure.error, "cause": failure.cause}));
                self.queue.push_back(Action::Fail(frame, failure));
            }
            Event::TokenHeartbeat { token } => {
                let Some((frame, task)) = self.token_frame(&token) else {
                    return;
                };
                let state = self.state_of(frame).clone();
                if task_of(&state).heartbeat.is_none() {
                    return;
                }
                let f = self
                    .exec
                    .frames
                    .get_mut(&frame)
                    .expect("a waiting frame exists");
                let Work::Task { heartbeats, .. } = &mut f.work else {
                    return;
                };
                let old = format!("h:{task}:{heartbeats}");
                *heartbeats += 1;
                let new = format!("h:{task}:{heartbeats}");
                self.exec.timers.remove(&old);
                self.out.effects.push(Effect::CancelTimer { id: old });
                let seconds = self.heartbeat_seconds(frame, &state);
                self.exec.timers.insert(new.clone(), frame);
                self.out.effects.push(Effect::Timer {
                    id: new,
                    due_ms: self.now + seconds as i64 * 1000,
                });
            }
            Event::TimerFired { timer } => {
                let Some(frame) = self.exec.timers.remove(&timer) else {
                    self.out.stale = true;
                    return;
                };
                self.timer(frame, &timer);
            }
            Event::Stop { error, cause } => {
                let failure = Failure::new(error.unwrap_or_default(), cause.unwrap_or_default());
                self.record(
                    None,
                    "ExecutionAborted",
                    json!({"error": failure.error, "cause": failure.cause}),
                );
                self.end_execution(Status::Aborted, None, Some(failure));
            }
        }
    }

    /// The frame waiting for `task`, or a stale event.
    fn waiting(&mut self, task: &str) -> Option<u32> {
        let frame = self.exec.tasks.get(task).copied();
        if frame.is_none() {
            self.out.stale = true;
        }
        frame
    }

    fn token_frame(&mut self, token: &str) -> Option<(u32, String)> {
        let Some(task) = self.exec.token_task(token) else {
            self.out.stale = true;
            return None;
        };
        let frame = self.waiting(&task)?;
        match self.exec.frames.get(&frame).map(|f| &f.work) {
            Some(Work::Task { token: true, .. }) => Some((frame, task)),
            _ => {
                self.out.stale = true;
                None
            }
        }
    }

    /// The frame's current state if it is a task, and whether it waits for a token.
    fn frame_task(&mut self, frame: u32) -> Option<(State, bool)> {
        let f = self.exec.frames.get(&frame)?;
        let Work::Task { token, .. } = f.work else {
            return None;
        };
        Some((self.state_of(frame).clone(), token))
    }

    /// Forgets the task and its timers.
    fn finish_task(&mut self, frame: u32, task: &str) {
        self.exec.tasks.remove(task);
        if let Some(f) = self.exec.frames.get_mut(&frame)
            && let Work::Task { heartbeats, .. } = f.work
        {
            f.work = Work::None;
            for id in [format!("t:{task}"), format!("h:{task}:{heartbeats}")] {
                if self.exec.timers.remove(&id).is_some() {
                    self.out.effects.push(Effect::CancelTimer { id });
                }
            }
        }
    }

    fn timer(&mut self, frame: u32, timer: &str) {
        if timer == "execution-timeout" {
            let failure = Failure::new(
                names::TIMEOUT,
                "The execution ran longer than its TimeoutSeconds",
            );
            self.record(
                None,
                "ExecutionTimedOut",
                json!({"error": failure.error, "cause": failure.cause}),
            );
            self.end_execution(Status::TimedOut, None, Some(failure));
            return;
        }
        let Some(f) = self.exec.frames.get(&frame) else {
            self.out.stale = true;
            return;
        };
        match (&f.work, timer.split(':').next()) {
            (Work::Wait { .. }, Some("w")) => {
                let f = self.exec.frames.get_mut(&frame).expect("checked above");
                f.work = Work::None;
                let state = self.state_of(frame).clone();
                let raw = self.exec.frames[&frame].input.clone();
                let output = match self.select(&state.input_path, &raw, frame, &state) {
                    Ok(v) => self.select(&state.output_path, &v, frame, &state),
                    Err(e) => Err(e),
                };
                match output {
                    Ok(v) => self.leave(frame, v),
                    Err(e) => self.queue.push_back(Action::Fail(frame, e)),
                }
            }
            (Work::Retry { .. }, Some("r")) => {
                let f = self.exec.frames.get_mut(&frame).expect("checked above");
                f.work = Work::None;
                self.run_state(frame);
            }
            (Work::Task { id, .. }, Some("t")) => {
                let id = id.clone();
                self.finish_task(frame, &id);
                let failure = Failure::new(
                    names::TIMEOUT,
                    "The task ran longer than its TimeoutSeconds",
                );
                self.record(
                    Some(frame),
                    "TaskTimedOut",
                    json!({"error": failure.error, "cause": failure.cause}),
                );
                self.queue.push_back(Action::Fail(frame, failure));
            }
            (Work::Task { id, .. }, Some("h")) => {
                let id = id.clone();
                self.finish_task(frame, &id);
                let failure = Failure::new(
                    names::HEARTBEAT_TIMEOUT,
                    "No heartbeat came within HeartbeatSeconds",
                );
                self.record(
                    Some(frame),
                    "TaskTimedOut",
                    json!({"error": failure.error, "cause": failure.cause}),
                );
                self.queue.push_back(Action::Fail(frame, failure));
            }
            _ => self.out.stale = true,
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.queue.pop_front() {
            if self.exec.status != Status::Running {
                break;
            }
            if self.exec.events >= limits::FLOW_HISTORY_EVENTS_MAX {
                let failure = Failure::new(
                    names::RUNTIME,
                    format!(
                        "The execution reached the limit of {} history events",
                        limits::FLOW_HISTORY_EVENTS_MAX
                    ),
                );
                self.exec.events = limits::FLOW_HISTORY_EVENTS_MAX - 1;
                self.record(
                    None,
                    "ExecutionFailed",
                    json!({"error": failure.error, "cause": failure.cause}),
                );
                self.end_execution(Status::Failed, None, Some(failure));
                break;
            }
            match action {
                Action::Enter(frame) => {
                    if self.exec.frames.contains_key(&frame) {
                        self.enter(frame);
                    }
                }
                Action::Result(frame, result) => {
                    if self.exec.frames.contains_key(&frame) {
                        self.state_result(frame, result);
                    }
                }
                Action::Fail(frame, failure) => {
                    if self.exec.frames.contains_key(&frame) {
                        self.state_failed(frame, failure);
                    }
                }
                Action::Done(frame, result) => self.frame_done(frame, result),
            }
        }
    }

    fn new_frame(
        &mut self,
        machine: usize,
        parent: Option<(u32, usize)>,
        state: String,
        input: Value,
        item: Option<(usize, Value)>,
    ) -> u32 {
        let id = self.exec.next_frame;
        self.exec.next_frame += 1;
        let last_event = parent
            .and_then(|(p, _)| self.exec.frames.get(&p))
            .map_or(self.exec.events, |p| p.last_event);
        self.exec.frames.insert(
            id,
            Frame {
                machine,
                parent,
                state,
                input,
                entered_ms: self.now,
                entered_event: 0,
                last_event,
                attempt: 0,
                retries: Vec::new(),
                item,
                work: Work::None,
            },
        );
        id
    }

    fn state_of(&self, frame: u32) -> &State {
        let f = &self.exec.frames[&frame];
        &self.def.machines[f.machine].states[&f.state]
    }

    /// Adds a history event for `frame` (or the execution).
    fn record(&mut self, frame: Option<u32>, kind: &str, details: Value) -> u64 {
        self.exec.events += 1;
        let id = self.exec.events;
        let previous = match frame.and_then(|f| self.exec.frames.get_mut(&f)) {
            Some(f) => std::mem::replace(&mut f.last_event, id),
            None => id - 1,
        };
        self.out.history.push(HistoryEvent {
            id,
            previous_event_id: previous,
            timestamp_ms: self.now,
            kind: kind.to_string(),
            details,
        });
        id
    }

    /// The context object of `frame`'s current state.
    fn context(&self, frame: u32, state: &State, token: Option<&str>) -> Value {
        if !state.needs_context {
            return Value::Null;
        }
        let f = &self.exec.frames[&frame];
        let mut ctx = json!({
            "Execution": {
                "Id": self.exec.id,
                "Input": self.exec.input,
                "Name": self.exec.name,
                "RoleArn": ROLE_ARN,
                "StartTime": time::format_ms(self.exec.started_ms),
                "RedriveCount": 0,
            },
            "StateMachine": {"Id": self.exec.flow, "Name": self.exec.flow},
            "State": {
                "Name": state.name,
                "EnteredTime": time::format_ms(f.entered_ms),
                "RetryCount": f.attempt,
            },
        });
        if let Some(token) = token {
            ctx["Task"] = json!({"Token": token});
        }
        if let Some((index, value)) = &f.item {
            ctx["Map"] = json!({"Item": {"Index": index, "Value": value}});
        }
        ctx
    }

    fn select(
        &self,
        select: &Select,
        data: &Value,
        frame: u32,
        state: &State,
    ) -> Result<Value, Failure> {
        match select {
            Select::All => Ok(data.clone()),
            Select::Nothing => Ok(Value::Object(Map::new())),
            Select::Path(p) => {
                let ctx = if p.is_context() {
                    self.context(frame, state, None)
                } else {
                    Value::Null
                };
                p.select(data, &ctx)
            }
        }
    }

    /// Enters the frame's current state: the StateEntered event, then the state's work.
    fn enter(&mut self, frame: u32) {
        let state = self.state_of(frame).clone();
        let input = self.exec.frames[&frame].input.clone();
        if let Err(f) = check_size(&input, "input", &state.name) {
            self.queue.push_back(Action::Fail(frame, f));
            return;
        }
        self.exec.transitions += 1;
        self.out.transitions += 1;
        let kind = kind_name(&state.kind);
        let id = self.record(
            Some(frame),
            &format!("{kind}StateEntered"),
            json!({"name": state.name, "input": to_text(&input)}),
        );
        let f = self
            .exec
            .frames
            .get_mut(&frame)
            .expect("entered frame exists");
        f.entered_event = id;
        f.entered_ms = self.now;
        f.attempt = 0;
        f.retries.clear();
        f.work = Work::None;
        self.run_state(frame);
    }

    /// Does the frame's current state's work (again, after a retry's delay).
    fn run_state(&mut self, frame: u32) {
        let state = self.state_of(frame).clone();
        let raw = self.exec.frames[&frame].input.clone();
        if let Err(failure) = self.try_run_state(frame, &state, raw) {
            self.queue.push_back(Action::Fail(frame, failure));
        }
    }

    fn try_run_state(&mut self, frame: u32, state: &State, raw: Value) -> Result<(), Failure> {
        let effective = self.select(&state.input_path, &raw, frame, state)?;
        match &state.kind {
            Kind::Pass {
                result, parameters, ..
            } => {
                let value = match (result, parameters) {
                    (Some(r), _) => r.clone(),
                    (None, Some(t)) => {
                        let ctx = self.context(frame, state, None);
                        t.eval(&effective, &ctx, &mut self.rng)?
                    }
                    (None, None) => effective,
                };
                self.queue.push_back(Action::Result(frame, value));
            }
            Kind::Choice { choices, default } => {
                let ctx = self.context(frame, state, None);
                let mut next = None;
                for (rule, target) in choices {
                    if rule.matches(&effective, &ctx)? {
                        next = Some(target.clone());
                        break;
                    }
                }
                let Some(next) = next.or_else(|| default.clone()) else {
                    return Err(Failure::new(
                        names::NO_CHOICE_MATCHED,
                        format!(
                            "No Choices rule of '{}' matched and it has no Default",
                            state.name
                        ),
                    ));
                };
                let output = self.select(&state.output_path, &effective, frame, state)?;
                self.record(
                    Some(frame),
                    "ChoiceStateExited",
                    json!({"name": state.name, "output": to_text(&output)}),
                );
                self.goto(frame, next, output);
            }
            Kind::Wait(how) => {
                let ctx = self.context(frame, state, None);
                let due = match how {
                    WaitFor::Seconds(s) => self.now + *s as i64 * 1000,
                    WaitFor::Timestamp(t) => *t,
                    WaitFor::SecondsPath(p) => {
                        let v = p.select(&effective, &ctx)?;
                        let s = v.as_f64().filter(|s| *s >= 0.0 && *s <= limits::FLOW_EXECUTION_SECONDS_MAX as f64).ok_or_else(|| {
                            Failure::runtime(format!("SecondsPath '{}' gave {v}, not a number of seconds from 0 to a year", p.as_str()))
                        })?;
                        self.now + (s * 1000.0) as i64
                    }
                    WaitFor::TimestampPath(p) => {
                        let v = p.select(&effective, &ctx)?;
                        v.as_str().and_then(time::parse_ms).ok_or_else(|| {
                            Failure::runtime(format!(
                                "TimestampPath '{}' gave {v}, not an RFC 3339 timestamp",
                                p.as_str()
                            ))
                        })?
                    }
                };
                let entered = self.exec.frames[&frame].entered_event;
                let id = format!("w:{frame}:{entered}");
                self.exec.timers.insert(id.clone(), frame);
                self.exec.frames.get_mut(&frame).expect("frame exists").work =
                    Work::Wait { timer: id.clone() };
                self.out.effects.push(Effect::Timer { id, due_ms: due });
            }
            Kind::Succeed => {
                let output = self.select(&state.output_path, &effective, frame, state)?;
                self.record(
                    Some(frame),
                    "SucceedStateExited",
                    json!({"name": state.name, "output": to_text(&output)}),
                );
                self.queue.push_back(Action::Done(frame, Ok(output)));
            }
            Kind::Fail { error, cause } => {
                let ctx = if state.needs_context {
                    self.context(frame, state, None)
                } else {
                    Value::Null
                };
                let text = |t: &Option<Text>, rng: &mut Rng| -> Result<String, Failure> {
                    Ok(match t {
                        None => String::new(),
                        Some(Text::Literal(s)) => s.clone(),
                        Some(Text::Path(p)) => value_text(p.select(&raw, &ctx)?),
                        Some(Text::Intrinsic(i)) => value_text(i.eval(&raw, &ctx, rng)?),
                    })
                };
                let failure =
                    Failure::new(text(error, &mut self.rng)?, text(cause, &mut self.rng)?);
                self.queue.push_back(Action::Done(frame, Err(failure)));
            }
            Kind::Task(task) => self.start_task(frame, state, task, &effective)?,
            Kind::Parallel {
                branches,
                parameters,
                ..
            } => {
                let input = match parameters {
                    Some(t) => {
                        let ctx = self.context(frame, state, None);
                        t.eval(&effective, &ctx, &mut self.rng)?
                    }
                    None => effective,
                };
                self.record(Some(frame), "ParallelStateStarted", Value::Null);
                let mut children = Vec::with_capacity(branches.len());
                for (slot, machine) in branches.iter().enumerate() {
                    let start = self.def.machines[*machine].start_at.clone();
                    let child =
                        self.new_frame(*machine, Some((frame, slot)), start, input.clone(), None);
                    children.push(Some(child));
                    self.queue.push_back(Action::Enter(child));
                }
                let left = children.len();
                self.exec.frames.get_mut(&frame).expect("frame exists").work = Work::Parallel {
                    children,
                    results: vec![Value::Null; left],
                    left,
                };
            }
            Kind::Map(map) => {
                let items = match &map.items_path {
                    None => effective.clone(),
                    Some(p) => {
                        let ctx = self.context(frame, state, None);
                        p.select(&effective, &ctx)?
                    }
                };
                let Value::Array(items) = items else {
                    return Err(Failure::runtime(format!(
                        "The Map state '{}' needs an array at its ItemsPath, not {}",
                        state.name,
                        crate::failure::kind_of(&items)
                    )));
                };
                if items.len() > limits::FLOW_MAP_ITEMS_MAX {
                    return Err(Failure::new(
                        names::DATA_LIMIT_EXCEEDED,
                        format!(
                            "The Map state '{}' got {} items; the limit is {}",
                            state.name,
                            items.len(),
                            limits::FLOW_MAP_ITEMS_MAX
                        ),
                    ));
                }
                self.record(
                    Some(frame),
                    "MapStateStarted",
                    json!({"length": items.len()}),
                );
                let left = items.len();
                self.exec.frames.get_mut(&frame).expect("frame exists").work =
                    Work::Map(Box::new(MapWork {
                        effective,
                        results: vec![Value::Null; left],
                        items,
                        next: 0,
                        running: BTreeSet::new(),
                        left,
                    }));
                if left == 0 {
                    self.queue
                        .push_back(Action::Result(frame, Value::Array(Vec::new())));
                } else {
                    for _ in 0..map.max_concurrency {
                        if !self.start_item(frame)? {
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts the Map state's next item, if any is left; false when none is.
    fn start_item(&mut self, frame: u32) -> Result<bool, Failure> {
        let state = self.state_of(frame).clone();
        let Kind::Map(map) = &state.kind else {
            return Ok(false);
        };
        let (index, item, effective) = {
            let Work::Map(w) = &mut self.exec.frames.get_mut(&frame).expect("frame exists").work
            else {
                return Ok(false);
            };
            if w.next >= w.items.len() {
                return Ok(false);
            }
            let index = w.next;
            w.next += 1;
            // The item is moved out: its result takes its place in memory, not beside it.
            (
                index,
                std::mem::take(&mut w.items[index]),
                w.effective.clone(),
            )
        };
        let input = match &map.item_selector {
            Some(t) => {
                let mut ctx = self.context(frame, &state, None);
                ctx["Map"] = json!({"Item": {"Index": index, "Value": item}});
                t.eval(&effective, &ctx, &mut self.rng)?
            }
            None => item.clone(),
        };
        let processor = &self.def.machines[map.processor];
        let child = self.new_frame(
            map.processor,
            Some((frame, index)),
            processor.start_at.clone(),
            input,
            Some((index, item)),
        );
        self.record(
            Some(frame),
            "MapIterationStarted",
            json!({"name": state.name, "index": index}),
        );
        if let Work::Map(w) = &mut self.exec.frames.get_mut(&frame).expect("frame exists").work {
            w.running.insert(child);
        }
        self.queue.push_back(Action::Enter(child));
        Ok(true)
    }

    fn start_task(
        &mut self,
        frame: u32,
        state: &State,
        task: &Task,
        effective: &Value,
    ) -> Result<(), Failure> {
        let f = &self.exec.frames[&frame];
        let id = format!("{}-{}", f.entered_event, f.attempt);
        let wait_for_token = matches!(
            task.resource,
            Resource::LambdaInvoke {
                wait_for_token: true
            }
        );
        let token = wait_for_token.then(|| self.exec.token(&id));
        let ctx = self.context(frame, state, token.as_deref());
        let params = match &task.parameters {
            Some(t) => t.eval(effective, &ctx, &mut self.rng)?,
            None => effective.clone(),
        };
        check_size(&params, "parameters", &state.name)?;
        let (function, qualifier, payload) = match &task.resource {
            Resource::Function { name, qualifier } => (name.clone(), qualifier.clone(), params),
            Resource::LambdaInvoke { .. } => {
                let Some(Value::String(name)) = params.get("FunctionName") else {
                    return Err(Failure::runtime(format!(
                        "The task '{}' has no FunctionName string in its Parameters",
                        state.name
                    )));
                };
                let (name, mut qualifier) = function_ref(name);
                if let Some(Value::String(q)) = params.get("Qualifier") {
                    qualifier = Some(q.clone());
                }
                let payload = params.get("Payload").cloned().unwrap_or_else(|| json!({}));
                (name, qualifier, payload)
            }
        };
        let timeout_s = match &task.timeout {
            None => None,
            Some(Seconds::Literal(s)) => Some(*s),
            Some(Seconds::Path(p)) => Some(seconds_at(p, effective, &ctx)?),
        };
        self.record(
            Some(frame),
            "TaskScheduled",
            json!({
                "resourceType": "lambda",
                "resource": if wait_for_token { "invoke.waitForTaskToken" } else { "invoke" },
                "region": "local",
                "parameters": to_text(&json!({"FunctionName": function, "Qualifier": qualifier, "Payload": payload})),
                "timeoutInSeconds": timeout_s,
            }),
        );
        self.exec.tasks.insert(id.clone(), frame);
        self.exec.frames.get_mut(&frame).expect("frame exists").work = Work::Task {
            id: id.clone(),
            token: wait_for_token,
            heartbeats: 0,
        };
        if let Some(s) = timeout_s {
            let t = format!("t:{id}");
            self.exec.timers.insert(t.clone(), frame);
            self.out.effects.push(Effect::Timer {
                id: t,
                due_ms: self.now + s as i64 * 1000,
            });
        }
        if wait_for_token && task.heartbeat.is_some() {
            let s = match &task.heartbeat {
                Some(Seconds::Literal(s)) => *s,
                Some(Seconds::Path(p)) => seconds_at(p, effective, &ctx)?,
                None => 0,
            };
            let h = format!("h:{id}:0");
            self.exec.timers.insert(h.clone(), frame);
            self.out.effects.push(Effect::Timer {
                id: h,
                due_ms: self.now + s as i64 * 1000,
            });
        }
        self.out.effects.push(Effect::Invoke(Invoke {
            task: id,
            function,
            qualifier,
            payload,
            // A token task's function is only its dispatch; its own timeout bounds it.
            timeout_ms: if wait_for_token {
                None
            } else {
                timeout_s.map(|s| s * 1000)
            },
            state: state.name.clone(),
        }));
        Ok(())
    }

    fn heartbeat_seconds(&mut self, frame: u32, state: &State) -> u64 {
        match &task_of(state).heartbeat {
            Some(Seconds::Literal(s)) => *s,
            Some(Seconds::Path(p)) => {
                let raw = self.exec.frames[&frame].input.clone();
                let data = self
                    .select(&state.input_path, &raw, frame, state)
                    .unwrap_or(Value::Null);
                seconds_at(p, &data, &Value::Null).unwrap_or(limits::FLOW_EXECUTION_SECONDS_MAX)
            }
            None => limits::FLOW_EXECUTION_SECONDS_MAX,
        }
    }

    /// The state produced `result`: ResultSelector, ResultPath, OutputPath, then on.
    fn state_result(&mut self, frame: u32, result: Value) {
        let state = self.state_of(frame).clone();
        let raw = self.exec.frames[&frame].input.clone();
        let output = (|| {
            let (selector, result_path) = match &state.kind {
                Kind::Pass { result_path, .. } => (None, result_path),
                Kind::Task(t) => (t.result_selector.as_ref(), &t.result_path),
                Kind::Parallel {
                    result_selector,
                    result_path,
                    ..
                } => (result_selector.as_ref(), result_path),
                Kind::Map(m) => (m.result_selector.as_ref(), &m.result_path),
                _ => (None, &ResultPath::Replace),
            };
            check_size(&result, "result", &state.name)?;
            let selected = match selector {
                Some(t) => {
                    let ctx = self.context(frame, &state, None);
                    t.eval(&result, &ctx, &mut self.rng)?
                }
                None => result,
            };
            let combined = apply_result_path(result_path, raw, selected)?;
            self.select(&state.output_path, &combined, frame, &state)
        })();
        match output {
            Ok(v) => self.leave(frame, v),
            Err(f) => self.state_failed(frame, f),
        }
    }

    /// The state ends with `output`: its Exited event, then its Next or the frame's end.
    fn leave(&mut self, frame: u32, output: Value) {
        let state = self.state_of(frame).clone();
        if let Err(f) = check_size(&output, "output", &state.name) {
            self.state_failed(frame, f);
            return;
        }
        let kind = kind_name(&state.kind);
        match &state.kind {
            Kind::Parallel { .. } => {
                self.record(Some(frame), "ParallelStateSucceeded", Value::Null);
            }
            Kind::Map(_) => {
                self.record(Some(frame), "MapStateSucceeded", Value::Null);
            }
            _ => {}
        }
        self.record(
            Some(frame),
            &format!("{kind}StateExited"),
            json!({"name": state.name, "output": to_text(&output)}),
        );
        match &state.next {
            Transition::Next(next) => self.goto(frame, next.clone(), output),
            _ => self.queue.push_back(Action::Done(frame, Ok(output))),
        }
    }

    fn goto(&mut self, frame: u32, next: String, input: Value) {
        let f = self.exec.frames.get_mut(&frame).expect("frame exists");
        f.state = next;
        f.input = input;
        self.queue.push_back(Action::Enter(frame));
    }

    /// The frame's current state failed: its first matching retrier (with budget left)
    /// retries it after a delay, else its first matching catcher goes on, else the frame
    /// fails.
    fn state_failed(&mut self, frame: u32, failure: Failure) {
        let state = self.state_of(frame).clone();
        self.cancel_children(frame);
        let (retry, catch): (&[Retrier], &[Catcher]) = match &state.kind {
            Kind::Task(t) => (&t.retry, &t.catch),
            Kind::Parallel { retry, catch, .. } => (retry, catch),
            Kind::Map(m) => (&m.retry, &m.catch),
            _ => (&[], &[]),
        };
        match &state.kind {
            Kind::Parallel { .. } => {
                self.record(
                    Some(frame),
                    "ParallelStateFailed",
                    json!({"error": failure.error, "cause": failure.cause}),
                );
            }
            Kind::Map(_) => {
                self.record(
                    Some(frame),
                    "MapStateFailed",
                    json!({"error": failure.error, "cause": failure.cause}),
                );
            }
            _ => {}
        }
        if failure.error != names::RUNTIME
            && let Some((n, retrier)) = retry
                .iter()
                .enumerate()
                .find(|(_, r)| error_matches(&r.error_equals, &failure.error))
        {
            let f = self.exec.frames.get_mut(&frame).expect("frame exists");
            if f.retries.len() < retry.len() {
                f.retries.resize(retry.len(), 0);
            }
            if f.retries[n] < retrier.max_attempts {
                f.retries[n] += 1;
                f.attempt += 1;
                let delay_ms = retry_delay_ms(retrier, f.retries[n], &mut self.rng);
                let id = format!("r:{frame}:{}:{}", f.entered_event, f.attempt);
                f.work = Work::Retry { timer: id.clone() };
                self.exec.timers.insert(id.clone(), frame);
                self.out.effects.push(Effect::Timer {
                    id,
                    due_ms: self.now + delay_ms,
                });
                return;
            }
        }
        if let Some(catcher) = catch
            .iter()
            .find(|c| error_matches(&c.error_equals, &failure.error))
        {
            let raw = self.exec.frames[&frame].input.clone();
            match apply_result_path(&catcher.result_path, raw, failure.to_json()) {
                Ok(output) => {
                    let kind = kind_name(&state.kind);
                    self.record(
                        Some(frame),
                        &format!("{kind}StateExited"),
                        json!({"name": state.name, "output": to_text(&output)}),
                    );
                    self.goto(frame, catcher.next.clone(), output);
                }
                Err(f) => self.queue.push_back(Action::Done(frame, Err(f))),
            }
            return;
        }
        self.queue.push_back(Action::Done(frame, Err(failure)));
    }

    /// The frame's machine ended: the execution's end, or its parent's news.
    fn frame_done(&mut self, frame: u32, result: Result<Value, Failure>) {
        let Some(f) = self.exec.frames.remove(&frame) else {
            return;
        };
        self.forget_frame(&f);
        let Some((parent, slot)) = f.parent else {
            match result {
                Ok(output) => {
                    self.record(
                        None,
                        "ExecutionSucceeded",
                        json!({"output": to_text(&output)}),
                    );
                    self.end_execution(Status::Succeeded, Some(output), None);
                }
                Err(failure) => {
                    self.record(
                        None,
                        "ExecutionFailed",
                        json!({"error": failure.error, "cause": failure.cause}),
                    );
                    self.end_execution(Status::Failed, None, Some(failure));
                }
            }
            return;
        };
        if !self.exec.frames.contains_key(&parent) {
            return;
        }
        let parent_state = self.state_of(parent).name.clone();
        match result {
            Err(failure) => {
                if f.item.is_some() {
                    self.record(
                        Some(parent),
                        "MapIterationFailed",
                        json!({"name": parent_state, "index": slot}),
                    );
                }
                self.queue.push_back(Action::Fail(parent, failure));
            }
            Ok(output) => {
                let p = self.exec.frames.get_mut(&parent).expect("checked above");
                match &mut p.work {
                    Work::Parallel {
                        children,
                        results,
                        left,
                    } => {
                        children[slot] = None;
                        results[slot] = output;
                        *left -= 1;
                        if *left == 0 {
                            let results = std::mem::take(results);
                            p.work = Work::None;
                            self.queue
                                .push_back(Action::Result(parent, Value::Array(results)));
                        }
                    }
                    Work::Map(w) => {
                        w.running.remove(&frame);
                        w.results[slot] = output;
                        w.left -= 1;
                        let finished = w.left == 0;
                        self.record(
                            Some(parent),
                            "MapIterationSucceeded",
                            json!({"name": parent_state, "index": slot}),
                        );
                        if finished {
                            let Some(p) = self.exec.frames.get_mut(&parent) else {
                                return;
                            };
                            let Work::Map(w) = std::mem::replace(&mut p.work, Work::None) else {
                                return;
                            };
                            self.queue
                                .push_back(Action::Result(parent, Value::Array(w.results)));
                        } else if let Err(failure) = self.start_item(parent) {
                            self.queue.push_back(Action::Fail(parent, failure));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Drops a frame's task and timers (it ended or was cancelled).
    fn forget_frame(&mut self, f: &Frame) {
        match &f.work {
            Work::Task { id, heartbeats, .. } => {
                self.exec.tasks.remove(id);
                for t in [format!("t:{id}"), format!("h:{id}:{heartbeats}")] {
                    if self.exec.timers.remove(&t).is_some() {
                        self.out.effects.push(Effect::CancelTimer { id: t });
                    }
                }
            }
            Work::Wait { timer } | Work::Retry { timer }
                if self.exec.timers.remove(timer).is_some() =>
            {
                self.out
                    .effects
                    .push(Effect::CancelTimer { id: timer.clone() });
            }
            _ => {}
        }
    }

    /// Removes every frame below `frame` (a failed Parallel's other branches, a Map's other
    /// iterations): their tasks' answers and timers become stale.
    fn cancel_children(&mut self, frame: u32) {
        let Some(f) = self.exec.frames.get_mut(&frame) else {
            return;
        };
        let children: Vec<u32> = match std::mem::replace(&mut f.work, Work::None) {
            Work::Parallel { children, .. } => children.into_iter().flatten().collect(),
            Work::Map(w) => w.running.into_iter().collect(),
            other => {
                f.work = other;
                return;
            }
        };
        for child in children {
            self.cancel_children(child);
            if let Some(c) = self.exec.frames.remove(&child) {
                self.forget_frame(&c);
            }
        }
    }

    fn end_execution(&mut self, status: Status, output: Option<Value>, failure: Option<Failure>) {
        self.exec.status = status;
        self.exec.output = output;
        self.exec.failure = failure;
        self.exec.stopped_ms = Some(self.now);
        self.exec.frames.clear();
        self.exec.tasks.clear();
        for id in std::mem::take(&mut self.exec.timers).into_keys() {
            self.out.effects.push(Effect::CancelTimer { id });
        }
        self.queue.clear();
    }
}

const ROLE_ARN: &str = "arn:aws:iam::000000000000:role/nimbus";

fn task_of(state: &State) -> &Task {
    match &state.kind {
        Kind::Task(t) => t,
        _ => unreachable!("only a Task state waits for a task"),
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Pass { .. } => "Pass",
        Kind::Task(_) => "Task",
        Kind::Choice { .. } => "Choice",
        Kind::Wait(_) => "Wait",
        Kind::Succeed => "Succeed",
        Kind::Fail { .. } => "Fail",
        Kind::Parallel { .. } => "Parallel",
        Kind::Map(_) => "Map",
    }
}

/// A value as the history shows data: JSON text.
fn to_text(v: &Value) -> String {
    v.to_string()
}

/// A Fail state's ErrorPath/CausePath value as text: strings as they are.
fn value_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn seconds_at(p: &crate::path::Path, data: &Value, ctx: &Value) -> Result<u64, Failure> {
    let v = p.select(data, ctx)?;
    v.as_u64()
        .filter(|s| *s > 0 && *s <= limits::FLOW_EXECUTION_SECONDS_MAX)
        .ok_or_else(|| {
            Failure::runtime(format!(
                "'{}' gave {v}, not a positive number of seconds",
                p.as_str()
            ))
        })
}

fn apply_result_path(path: &ResultPath, raw: Value, result: Value) -> Result<Value, Failure> {
    match path {
        ResultPath::Replace => Ok(result),
        ResultPath::Discard => Ok(raw),
        ResultPath::At(p) => p.set(raw, result),
    }
}

/// The delay before retry number `n` (1-based) of `retrier`: IntervalSeconds ×
/// BackoffRate^(n-1), at most MaxDelaySeconds; with FULL jitter a uniform draw below it.
pub fn retry_delay_ms(retrier: &Retrier, n: u32, rng: &mut Rng) -> i64 {
    let mut seconds =
        retrier.interval_seconds * retrier.backoff_rate.powi(n.saturating_sub(1) as i32);
    if let Some(max) = retrier.max_delay_seconds {
        seconds = seconds.min(max);
    }
    seconds = seconds.min(limits::FLOW_EXECUTION_SECONDS_MAX as f64);
    if retrier.jitter_full {
        seconds *= rng.next_f64();
    }
    (seconds * 1000.0) as i64
}

/// `States.DataLimitExceeded` when `v` serializes to more than the limit.
fn check_size(v: &Value, what: &str, state: &str) -> Result<(), Failure> {
    let size = json_size(v, limits::FLOW_DATA_BYTES_MAX + 1);
    if size > limits::FLOW_DATA_BYTES_MAX {
        return Err(Failure::new(
            names::DATA_LIMIT_EXCEEDED,
            format!(
                "The {what} of '{state}' is larger than {} bytes",
                limits::FLOW_DATA_BYTES_MAX
            ),
        ));
    }
    Ok(())
}

/// The size of `v` serialized, counted without writing it and given up past `stop`.
fn json_size(v: &Value, stop: usize) -> usize {
    fn walk(v: &Value, acc: &mut usize, stop: usize) {
        if *acc > stop {
            return;
        }
        match v {
            Value::Null => *acc += 4,
            Value::Bool(b) => *acc += if *b { 4 } else { 5 },
            Value::Number(n) => *acc += n.to_string().len(),
            Value::String(s) => *acc += s.len() + 2,
            Value::Array(a) => {
                *acc += 2 + a.len();
                for x in a {
                    walk(x, acc, stop);
                }
            }
            Value::Object(m) => {
                *acc += 2 + m.len() * 2;
                for (k, x) in m {
                    *acc += k.len() + 2;
                    walk(x, acc, stop);
                }
            }
        }
    }
    let mut acc = 0;
    walk(v, &mut acc, stop);
    acc
}

#[cfg(test)]
mod tests;
