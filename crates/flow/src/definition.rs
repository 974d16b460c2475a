//! A state machine definition: Amazon States Language (JSONPath mode) parsed once, at deploy,
//! into typed states, and checked so that every error names its state and field.
//!
//! Every state machine inside the definition (the top level, each Parallel branch, each Map
//! processor) gets an index in `Definition::machines`, so that a running frame of the engine
//! refers to its machine by number and the snapshot stays small.

use std::collections::{BTreeMap, BTreeSet};

use model::limits;
use serde_json::{Map, Value};

use crate::choice::Rule;
use crate::failure::names;
use crate::intrinsic::{self, Intrinsic};
use crate::path::{Path, ReferencePath};
use crate::template::Template;
use crate::time;

/// A definition that failed its checks: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct DefinitionError {
    /// `States.Charge.Retry[1].ErrorEquals`, or `StartAt` for the top level.
    pub location: String,
    pub message: String,
}

/// A parsed, checked definition.
#[derive(Clone, Debug)]
pub struct Definition {
    /// Index 0 is the top level.
    pub machines: Vec<Machine>,
    pub timeout_seconds: Option<u64>,
    pub comment: Option<String>,
}

/// One state machine: the top level, a Parallel branch or a Map processor.
#[derive(Clone, Debug)]
pub struct Machine {
    pub start_at: String,
    pub states: BTreeMap<String, State>,
}

#[derive(Clone, Debug)]
pub struct State {
    pub name: String,
    pub kind: Kind,
    pub input_path: Select,
    pub output_path: Select,
    pub next: Transition,
    /// Whether any path or template of the state reads the context object (`$$`): only
    /// then does the engine build it.
    pub needs_context: bool,
}

/// `InputPath` and `OutputPath`: the whole data (`$`, the default), a part, or nothing
/// (`null`, which gives `{}`).
#[derive(Clone, Debug)]
pub enum Select {
    All,
    Path(Path),
    Nothing,
}

/// `ResultPath`: replace the input (`$`, the default), discard the result (`null`), or
/// write it into the input at a reference path.
#[derive(Clone, Debug)]
pub enum ResultPath {
    Replace,
    Discard,
    At(ReferencePath),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    Next(String),
    End,
    /// Choice, Succeed and Fail: the state itself says where to go, or ends.
    None,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Pass {
        result: Option<Value>,
        parameters: Option<Template>,
        result_path: ResultPath,
    },
    Task(Box<Task>),
    Choice {
        choices: Vec<(Rule, String)>,
        default: Option<String>,
    },
    Wait(WaitFor),
    Succeed,
    Fail {
        error: Option<Text>,
        cause: Option<Text>,
    },
    Parallel {
        branches: Vec<usize>,
        parameters: Option<Template>,
        result_selector: Option<Template>,
        result_path: ResultPath,
        retry: Vec<Retrier>,
        catch: Vec<Catcher>,
    },
    Map(Box<MapState>),
}

/// A Fail state's `Error`/`Cause`: literal, or read from a path or an intrinsic.
#[derive(Clone, Debug)]
pub enum Text {
    Literal(String),
    Path(Path),
    Intrinsic(Box<Intrinsic>),
}

#[derive(Clone, Debug)]
pub enum WaitFor {
    Seconds(u64),
    Timestamp(i64),
    SecondsPath(Path),
    TimestampPath(Path),
}

/// A number of seconds given literally or by a path (`TimeoutSecondsPath`).
#[derive(Clone, Debug)]
pub enum Seconds {
    Literal(u64),
    Path(Path),
}

#[derive(Clone, Debug)]
pub struct Task {
    pub resource: Resource,
    pub parameters: Option<Template>,
    pub result_selector: Option<Template>,
    pub result_path: ResultPath,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
    pub timeout: Option<Seconds>,
    pub heartbeat: Option<Seconds>,
}

/// What a Task calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]` or `nimbus:function:NAME`:
    /// the effective input is the payload, the function's answer the result.
    Function {
        name: String,
        qualifier: Option<String>,
    },
    /// `arn:aws:states:::lambda:invoke`: `FunctionName` and `Payload` come from the
    /// parameters; the result is `{ExecutedVersion, Payload, StatusCode}`.
    LambdaInvoke { wait_for_token: bool },
}

#[derive(Clone, Debug)]
pub struct MapState {
    pub processor: usize,
    pub items_path: Option<Path>,
    pub item_selector: Option<Template>,
    pub max_concurrency: u32,
    pub result_selector: Option<Template>,
    pub result_path: ResultPath,
    pub retry: Vec<Retrier>,
    pub catch: Vec<Catcher>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Retrier {
    pub error_equals: Vec<String>,
    pub interval_seconds: f64,
    pub max_attempts: u32,
    pub backoff_rate: f64,
    pub max_delay_seconds: Option<f64>,
    pub jitter_full: bool,
}

#[derive(Clone, Debug)]
pub struct Catcher {
    pub error_equals: Vec<String>,
    pub next: String,
    pub result_path: ResultPath,
}

/// Whether an `ErrorEquals` list matches `error`. `States.ALL` matches every error but
/// `States.Runtime` and `States.DataLimitExceeded` (which only their own names catch);
/// `States.TaskFailed` matches every error but `States.Timeout`, as on Step Functions.
pub fn error_matches(error_equals: &[String], error: &str) -> bool {
    error_equals.iter().any(|e| {
        e == error
            || (e == names::ALL && error != names::RUNTIME && error != names::DATA_LIMIT_EXCEEDED)
            || (e == names::TASK_FAILED
                && error != names::TIMEOUT
                && error != names::RUNTIME
                && error != names::DATA_LIMIT_EXCEEDED)
    })
}

impl Definition {
    /// Parses and checks a definition's JSON text.
    pub fn parse_json(text: &str) -> Result<Definition, DefinitionError> {
        if text.len() > limits::FLOW_DEFINITION_BYTES_MAX {
            return Err(err(
                "definition",
                format!(
                    "is {} bytes; the limit is {}",
                    text.len(),
                    limits::FLOW_DEFINITION_BYTES_MAX
                ),
            ));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| err("definition", format!("is not valid JSON: {e}")))?;
        Definition::parse(&value)
    }

    /// Parses and checks a definition.
    pub fn parse(value: &Value) -> Result<Definition, DefinitionError> {
        let obj = value
            .as_object()
            .ok_or_else(|| err("definition", "must be a JSON object".into()))?;
        if let Some(Value::String(mode)) = obj.get("QueryLanguage")
            && mode != "JSONPath"
        {
            return Err(err(
                "QueryLanguage",
                format!("'{mode}' is not supported: only JSONPath definitions run here"),
            ));
        }
        let mut parser = Parser {
            machines: Vec::new(),
            states: 0,
        };
        let allowed = [
            "Comment",
            "StartAt",
            "States",
            "TimeoutSeconds",
            "Version",
            "QueryLanguage",
        ];
        parser.machine(obj, "", &allowed, 0)?;
        let timeout_seconds = opt_u64(obj, "", "TimeoutSeconds")?;
        if let Some(t) = timeout_seconds {
            check_seconds("TimeoutSeconds", t)?;
        }
        Ok(Definition {
            machines: parser.machines,
            timeout_seconds,
            comment: obj
                .get("Comment")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    pub fn root(&self) -> &Machine {
        &self.machines[0]
    }

    /// The names of the functions the definition's tasks call by name (not those a
    /// `lambda:invoke` task reads from its data), for the deploy to check.
    pub fn functions(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for m in &self.machines {
            for s in m.states.values() {
                if let Kind::Task(t) = &s.kind {
                    match &t.resource {
                        Resource::Function { name, .. } => {
                            out.insert(name.clone());
                        }
                        Resource::LambdaInvoke { .. } => {
                            if let Some(Template::Object(fields)) = &t.parameters
                                && let Some((_, Template::Literal(Value::String(f)))) =
                                    fields.iter().find(|(k, _)| k == "FunctionName")
                            {
                                out.insert(function_ref(f).0);
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// A function named as Step Functions' `FunctionName` takes it: a name, `NAME:QUALIFIER`, a
/// full or partial Lambda ARN. Returns the name and the qualifier.
pub fn function_ref(text: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = text.split(':').collect();
    let after_function = parts
        .iter()
        .position(|p| *p == "function")
        .map(|i| &parts[i + 1..]);
    let rest = after_function.unwrap_or(&parts[..]);
    match rest {
        [name] => (name.to_string(), None),
        [name, qualifier, ..] => (name.to_string(), Some(qualifier.to_string())),
        [] => (String::new(), None),
    }
}

fn err(location: impl Into<String>, message: String) -> DefinitionError {
    DefinitionError {
        location: location.into(),
        message,
    }
}

fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_string()
    } else {
        format!("{at}.{field}")
    }
}

fn check_seconds(at: &str, s: u64) -> Result<(), DefinitionError> {
    if s == 0 || s > limits::FLOW_EXECUTION_SECONDS_MAX {
        return Err(err(
            at,
            format!(
                "must be from 1 to {} seconds",
                limits::FLOW_EXECUTION_SECONDS_MAX
            ),
        ));
    }
    Ok(())
}

fn opt_u64(
    obj: &Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Option<u64>, DefinitionError> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| err(join(at, field), "must be a non-negative integer".into())),
    }
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Option<&'a str>, DefinitionError> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(err(join(at, field), "must be a string".into())),
    }
}

fn opt_f64(
    obj: &Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Option<f64>, DefinitionError> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| err(join(at, field), "must be a number".into())),
    }
}

fn path_field(
    obj: &Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Option<Path>, DefinitionError> {
    match opt_str(obj, at, field)? {
        None => Ok(None),
        Some(s) => Path::parse(s)
            .map(Some)
            .map_err(|e| err(join(at, field), e)),
    }
}

fn select_field(
    obj: &Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Select, DefinitionError> {
    match obj.get(field) {
        None => Ok(Select::All),
        Some(Value::Null) => Ok(Select::Nothing),
        Some(Value::String(s)) if s == "$" => Ok(Select::All),
        Some(Value::String(s)) => Path::parse(s)
            .map(Select::Path)
            .map_err(|e| err(join(at, field), e)),
        Some(_) => Err(err(join(at, field), "must be a path or null".into())),
    }
}

fn result_path_field(
    obj: &Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<ResultPath, DefinitionError> {
    match obj.get(field) {
        None => Ok(ResultPath::Replace),
        Some(Value::Null) => Ok(ResultPath::Discard),
        Some(Value::String(s)) if s == "$" => Ok(ResultPath::Replace),
        Some(Value::String(s)) => ReferencePath::parse(s)
            .map(ResultPath::At)
            .map_err(|e| err(join(at, field), e)),
        Some(_) => Err(err(
            join(at, field),
            "must be a reference path or null".into(),
        )),
    }
}

fn template_field(
    obj: &Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Option<Template>, DefinitionError> {
    match obj.get(field) {
        None => Ok(None),
        Some(v @ Value::Object(_)) => Template::parse(v, field).map(Some).map_err(|e| err(at, e)),
        Some(_) if field == "Parameters" => Template::parse(&obj[field], field)
            .map(Some)
            .map_err(|e| err(at, e)),
        Some(_) => Err(err(join(at, field), "must be an object".into())),
    }
}

fn seconds_field(
    obj: &Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Option<Seconds>, DefinitionError> {
    let path_name = format!("{field}Path");
    match (opt_u64(obj, at, field)?, path_field(obj, at, &path_name)?) {
        (Some(_), Some(_)) => Err(err(
            join(at, field),
            format!("give {field} or {path_name}, not both"),
        )),
        (Some(s), None) => {
            check_seconds(&join(at, field), s)?;
            Ok(Some(Seconds::Literal(s)))
        }
        (None, Some(p)) => Ok(Some(Seconds::Path(p))),
        (None, None) => Ok(None),
    }
}

struct Parser {
    machines: Vec<Machine>,
    states: usize,
}

impl Parser {
    /// Parses a state machine object (`StartAt`, `States`) found at `at`, returning its
    /// index; `depth` counts the Parallel and Map states around it.
    fn machine(
        &mut self,
        obj: &Map<String, Value>,
        at: &str,
        allowed: &[&str],
        depth: usize,
    ) -> Result<usize, DefinitionError> {
        if depth > limits::FLOW_NESTING_MAX {
            return Err(err(
                at,
                format!(
                    "Parallel and Map states nest deeper than {}",
                    limits::FLOW_NESTING_MAX
                ),
            ));
        }
        for key in obj.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(err(join(at, key), "is not a field here".into()));
            }
        }
        let start_at = opt_str(obj, at, "StartAt")?
            .ok_or_else(|| err(join(at, "StartAt"), "is required".into()))?
            .to_string();
        let states_obj = match obj.get("States") {
            Some(Value::Object(m)) if !m.is_empty() => m,
            Some(Value::Object(_)) => return Err(err(join(at, "States"), "has no states".into())),
            Some(_) => return Err(err(join(at, "States"), "must be an object".into())),
            None => return Err(err(join(at, "States"), "is required".into())),
        };
        let index = self.machines.len();
        // Reserve the index so that nested machines come after their parent.
        self.machines.push(Machine {
            start_at: start_at.clone(),
            states: BTreeMap::new(),
        });
        let mut states = BTreeMap::new();
        for (name, body) in states_obj {
            self.states += 1;
            if self.states > limits::FLOW_STATES_MAX {
                return Err(err(
                    join(at, "States"),
                    format!(
                        "a definition may have at most {} states",
                        limits::FLOW_STATES_MAX
                    ),
                ));
            }
            let here = join(at, &format!("States.{name}"));
            if name.is_empty() || name.chars().count() > limits::FLOW_STATE_NAME_LEN_MAX {
                return Err(err(
                    here,
                    format!(
                        "a state's name must have 1 to {} characters",
                        limits::FLOW_STATE_NAME_LEN_MAX
                    ),
                ));
            }
            let Value::Object(body) = body else {
                return Err(err(here, "must be an object".into()));
            };
            states.insert(name.clone(), self.state(name, body, &here, depth)?);
        }
        let machine = Machine { start_at, states };
        check_transitions(&machine, at)?;
        self.machines[index] = machine;
        Ok(index)
    }

    fn state(
        &mut self,
        name: &str,
        obj: &Map<String, Value>,
        at: &str,
        depth: usize,
    ) -> Result<State, DefinitionError> {
        let kind_name =
            opt_str(obj, at, "Type")?.ok_or_else(|| err(join(at, "Type"), "is required".into()))?;
        let common: &[&str] = &["Type", "Comment", "QueryLanguage"];
        let io: &[&str] = &["InputPath", "OutputPath"];
        let flow: &[&str] = &["Next", "End"];
        let result: &[&str] = &["ResultPath", "ResultSelector", "Parameters"];
        let errors: &[&str] = &["Retry", "Catch"];
        let fields: Vec<&str> = match kind_name {
            "Pass" => [common, io, flow, &["Result", "ResultPath", "Parameters"]].concat(),
            "Task" => [
                common,
                io,
                flow,
                result,
                errors,
                &[
                    "Resource",
                    "TimeoutSeconds",
                    "TimeoutSecondsPath",
                    "HeartbeatSeconds",
                    "HeartbeatSecondsPath",
                    "Credentials",
                ],
            ]
            .concat(),
            "Choice" => [common, io, &["Choices", "Default"]].concat(),
            "Wait" => [
                common,
                io,
                flow,
                &["Seconds", "Timestamp", "SecondsPath", "TimestampPath"],
            ]
            .concat(),
            "Succeed" => [common, io].concat(),
            "Fail" => [common, &["Error", "Cause", "ErrorPath", "CausePath"]].concat(),
            "Parallel" => [common, io, flow, result, errors, &["Branches"]].concat(),
            "Map" => [
                common,
                io,
                flow,
                result,
                errors,
                &[
                    "ItemsPath",
                    "ItemSelector",
                    "ItemProcessor",
                    "Iterator",
                    "MaxConcurrency",
                    "MaxConcurrencyPath",
                    "ItemReader",
                    "ItemBatcher",
                    "ResultWriter",
                    "ToleratedFailurePercentage",
                    "ToleratedFailureCount",
                    "Label",
                ],
            ]
            .concat(),
            other => {
                return Err(err(
                    join(at, "Type"),
                    format!(
                        "'{other}' is not a state type (Task, Pass, Choice, Wait, Parallel, Map, Succeed, Fail)"
                    ),
                ));
            }
        };
        for key in obj.keys() {
            if !fields.contains(&key.as_str()) {
                return Err(err(
                    join(at, key),
                    format!("is not a field of a {kind_name} state"),
                ));
            }
        }
        if let Some(Value::String(mode)) = obj.get("QueryLanguage")
            && mode != "JSONPath"
        {
            return Err(err(
                join(at, "QueryLanguage"),
                format!("'{mode}' is not supported: only JSONPath"),
            ));
        }

        let next = match kind_name {
            "Choice" | "Succeed" | "Fail" => Transition::None,
            _ => {
                let next = opt_str(obj, at, "Next")?;
                let end = match obj.get("End") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(err(join(at, "End"), "must be true or false".into())),
                };
                match (next, end) {
                    (Some(_), true) => {
                        return Err(err(at, "has both Next and End; give one".into()));
                    }
                    (Some(n), false) => Transition::Next(n.to_string()),
                    (None, true) => Transition::End,
                    (None, false) => {
                        return Err(err(
                            join(at, "Next"),
                            "is required (or \"End\": true)".into(),
                        ));
                    }
                }
            }
        };

        let kind = match kind_name {
            "Pass" => Kind::Pass {
                result: obj.get("Result").cloned(),
                parameters: template_field(obj, at, "Parameters")?,
                result_path: result_path_field(obj, at, "ResultPath")?,
            },
            "Task" => Kind::Task(Box::new(self.task(obj, at)?)),
            "Choice" => {
                let Some(Value::Array(list)) = obj.get("Choices") else {
                    return Err(err(
                        join(at, "Choices"),
                        "is required: a non-empty array".into(),
                    ));
                };
                if list.is_empty() {
                    return Err(err(
                        join(at, "Choices"),
                        "is required: a non-empty array".into(),
                    ));
                }
                let mut choices = Vec::with_capacity(list.len());
                for (n, rule) in list.iter().enumerate() {
                    let here = format!("Choices[{n}]");
                    let next = rule.get("Next").and_then(Value::as_str).ok_or_else(|| {
                        err(join(at, &format!("{here}.Next")), "is required".into())
                    })?;
                    let parsed = Rule::parse(rule, &here).map_err(|e| err(at, e))?;
                    choices.push((parsed, next.to_string()));
                }
                Kind::Choice {
                    choices,
                    default: opt_str(obj, at, "Default")?.map(str::to_string),
                }
            }
            "Wait" => {
                let given: Vec<&str> = ["Seconds", "Timestamp", "SecondsPath", "TimestampPath"]
                    .into_iter()
                    .filter(|f| obj.contains_key(*f))
                    .collect();
                if given.len() != 1 {
                    return Err(err(
                        at,
                        "a Wait state needs exactly one of Seconds, Timestamp, SecondsPath, TimestampPath".into(),
                    ));
                }
                Kind::Wait(match given[0] {
                    "Seconds" => {
                        let s = opt_u64(obj, at, "Seconds")?.unwrap_or(0);
                        if s > limits::FLOW_EXECUTION_SECONDS_MAX {
                            return Err(err(join(at, "Seconds"), "is longer than a year".into()));
                        }
                        WaitFor::Seconds(s)
                    }
                    "Timestamp" => {
                        let text = opt_str(obj, at, "Timestamp")?.unwrap_or_default();
                        WaitFor::Timestamp(time::parse_ms(text).ok_or_else(|| {
                            err(
                                join(at, "Timestamp"),
                                format!("'{text}' is not an RFC 3339 timestamp"),
                            )
                        })?)
                    }
                    "SecondsPath" => WaitFor::SecondsPath(required_path(obj, at, "SecondsPath")?),
                    _ => WaitFor::TimestampPath(required_path(obj, at, "TimestampPath")?),
                })
            }
            "Succeed" => Kind::Succeed,
            "Fail" => Kind::Fail {
                error: text_field(obj, at, "Error")?,
                cause: text_field(obj, at, "Cause")?,
            },
            "Parallel" => {
                let Some(Value::Array(list)) = obj.get("Branches") else {
                    return Err(err(
                        join(at, "Branches"),
                        "is required: a non-empty array".into(),
                    ));
                };
                if list.is_empty() {
                    return Err(err(
                        join(at, "Branches"),
                        "is required: a non-empty array".into(),
                    ));
                }
                let mut branches = Vec::with_capacity(list.len());
                for (n, b) in list.iter().enumerate() {
                    let here = join(at, &format!("Branches[{n}]"));
                    let Value::Object(b) = b else {
                        return Err(err(here, "must be an object".into()));
                    };
                    branches.push(self.machine(
                        b,
                        &here,
                        &["Comment", "StartAt", "States"],
                        depth + 1,
                    )?);
                }
                Kind::Parallel {
                    branches,
                    parameters: template_field(obj, at, "Parameters")?,
                    result_selector: template_field(obj, at, "ResultSelector")?,
                    result_path: result_path_field(obj, at, "ResultPath")?,
                    retry: retriers(obj, at)?,
                    catch: catchers(obj, at)?,
                }
            }
            _ => Kind::Map(Box::new(self.map(obj, at, depth)?)),
        };
        Ok(State {
            name: name.to_string(),
            kind,
            input_path: select_field(obj, at, "InputPath")?,
            output_path: select_field(obj, at, "OutputPath")?,
            next,
            needs_context: mentions_context(&Value::Object(obj.clone()), kind_name),
        })
    }

    fn task(&mut self, obj: &Map<String, Value>, at: &str) -> Result<Task, DefinitionError> {
        let resource_text = opt_str(obj, at, "Resource")?
            .ok_or_else(|| err(join(at, "Resource"), "is required".into()))?;
        let resource = parse_resource(resource_text).map_err(|e| err(join(at, "Resource"), e))?;
        let parameters = template_field(obj, at, "Parameters")?;
        if let Resource::LambdaInvoke { wait_for_token } = resource {
            let fields = match &parameters {
                Some(Template::Object(f)) => f.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                Some(Template::Literal(Value::Object(m))) => m.keys().map(String::as_str).collect(),
                _ => Vec::new(),
            };
            if !fields.contains(&"FunctionName") {
                return Err(err(
                    join(at, "Parameters"),
                    "arn:aws:states:::lambda:invoke needs Parameters.FunctionName".into(),
                ));
            }
            for f in &fields {
                if ![
                    "FunctionName",
                    "Payload",
                    "Qualifier",
                    "InvocationType",
                    "ClientContext",
                    "LogType",
                ]
                .contains(f)
                {
                    return Err(err(
                        join(at, &format!("Parameters.{f}")),
                        "is not a parameter of lambda:invoke".into(),
                    ));
                }
            }
            if wait_for_token && !mentions_token(obj.get("Parameters")) {
                return Err(err(
                    join(at, "Parameters"),
                    "a .waitForTaskToken task must pass $$.Task.Token in its Parameters".into(),
                ));
            }
        }
        let timeout = seconds_field(obj, at, "TimeoutSeconds")?;
        let heartbeat = seconds_field(obj, at, "HeartbeatSeconds")?;
        if let (Some(Seconds::Literal(t)), Some(Seconds::Literal(h))) = (&timeout, &heartbeat)
            && h >= t
        {
            return Err(err(
                join(at, "HeartbeatSeconds"),
                "must be less than TimeoutSeconds".into(),
            ));
        }
        Ok(Task {
            resource,
            parameters,
            result_selector: template_field(obj, at, "ResultSelector")?,
            result_path: result_path_field(obj, at, "ResultPath")?,
            retry: retriers(obj, at)?,
            catch: catchers(obj, at)?,
            timeout,
            heartbeat,
        })
    }

    fn map(
        &mut self,
        obj: &Map<String, Value>,
        at: &str,
        depth: usize,
    ) -> Result<MapState, DefinitionError> {
        for unsupported in [
            "ItemReader",
            "ItemBatcher",
            "ResultWriter",
            "ToleratedFailurePercentage",
            "ToleratedFailureCount",
            "MaxConcurrencyPath",
        ] {
            if obj.contains_key(unsupported) {
                return Err(err(
                    join(at, unsupported),
                    "belongs to a distributed Map, which is not supported: only inline Maps run here".into(),
                ));
            }
        }
        let processor_obj = match (obj.get("ItemProcessor"), obj.get("Iterator")) {
            (Some(_), Some(_)) => {
                return Err(err(at, "give ItemProcessor or Iterator, not both".into()));
            }
            (Some(Value::Object(p)), None) => {
                if let Some(config) = p.get("ProcessorConfig") {
                    let mode = config
                        .get("Mode")
                        .and_then(Value::as_str)
                        .unwrap_or("INLINE");
                    if mode != "INLINE" {
                        return Err(err(
                            join(at, "ItemProcessor.ProcessorConfig.Mode"),
                            format!("'{mode}' is not supported: only INLINE Maps run here"),
                        ));
                    }
                }
                ("ItemProcessor", p)
            }
            (None, Some(Value::Object(p))) => ("Iterator", p),
            (None, None) => return Err(err(join(at, "ItemProcessor"), "is required".into())),
            _ => return Err(err(join(at, "ItemProcessor"), "must be an object".into())),
        };
        let here = join(at, processor_obj.0);
        let processor = self.machine(
            processor_obj.1,
            &here,
            &["Comment", "StartAt", "States", "ProcessorConfig"],
            depth + 1,
        )?;
        let item_selector = match (obj.get("ItemSelector"), obj.get("Parameters")) {
            (Some(_), Some(_)) => {
                return Err(err(at, "give ItemSelector or Parameters, not both".into()));
            }
            (Some(_), None) => template_field(obj, at, "ItemSelector")?,
            (None, Some(_)) => template_field(obj, at, "Parameters")?,
            (None, None) => None,
        };
        let max_concurrency = match opt_u64(obj, at, "MaxConcurrency")? {
            None | Some(0) => limits::FLOW_MAP_CONCURRENCY_MAX,
            Some(n) => n.min(u64::from(limits::FLOW_MAP_CONCURRENCY_MAX)) as u32,
        };
        Ok(MapState {
            processor,
            items_path: match select_field(obj, at, "ItemsPath")? {
                Select::All => None,
                Select::Path(p) => Some(p),
                Select::Nothing => return Err(err(join(at, "ItemsPath"), "must be a path".into())),
            },
            item_selector,
            max_concurrency,
            result_selector: template_field(obj, at, "ResultSelector")?,
            result_path: result_path_field(obj, at, "ResultPath")?,
            retry: retriers(obj, at)?,
            catch: catchers(obj, at)?,
        })
    }
}

fn required_path(obj: &Map<String, Value>, at: &str, field: &str) -> Result<Path, DefinitionError> {
    path_field(obj, at, field)?.ok_or_else(|| err(join(at, field), "is required".into()))
}

fn text_field(
    obj: &Map<String, Value>,
    at: &str,
    field: &str,
) -> Result<Option<Text>, DefinitionError> {
    let path_name = format!("{field}Path");
    match (opt_str(obj, at, field)?, opt_str(obj, at, &path_name)?) {
        (Some(_), Some(_)) => Err(err(
            join(at, field),
            format!("give {field} or {path_name}, not both"),
        )),
        (Some(s), None) => Ok(Some(Text::Literal(s.to_string()))),
        (None, Some(p)) if intrinsic::is_intrinsic(p) => Intrinsic::parse(p)
            .map(|i| Some(Text::Intrinsic(Box::new(i))))
            .map_err(|e| err(join(at, &path_name), e)),
        (None, Some(p)) => Path::parse(p)
            .map(|p| Some(Text::Path(p)))
            .map_err(|e| err(join(at, &path_name), e)),
        (None, None) => Ok(None),
    }
}

/// Reads a Task's `Resource`.
fn parse_resource(text: &str) -> Result<Resource, String> {
    if let Some(rest) = text.strip_prefix("arn:aws:states:::lambda:invoke") {
        return match rest {
            "" => Ok(Resource::LambdaInvoke {
                wait_for_token: false,
            }),
            ".waitForTaskToken" => Ok(Resource::LambdaInvoke {
                wait_for_token: true,
            }),
            ".sync" => Err(
                "lambda:invoke.sync is not a Step Functions integration; use lambda:invoke".into(),
            ),
            other => Err(format!(
                "'{other}' is not an integration pattern (use .waitForTaskToken or nothing)"
            )),
        };
    }
    let function = if let Some(rest) = text.strip_prefix("nimbus:function:") {
        rest
    } else if text.starts_with("arn:aws:lambda:") {
        let parts: Vec<&str> = text.splitn(7, ':').collect();
        if parts.len() < 7 || parts[5] != "function" {
            return Err(format!(
                "'{text}' is not a Lambda function ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER])"
            ));
        }
        parts[6]
    } else {
        return Err(format!(
            "'{text}' is not a resource Nimbus runs: use arn:aws:lambda:REGION:ACCOUNT:function:NAME, \
             arn:aws:states:::lambda:invoke[.waitForTaskToken] or nimbus:function:NAME"
        ));
    };
    let (name, qualifier) = match function.split_once(':') {
        Some((n, q)) => (n, Some(q)),
        None => (function, None),
    };
    model::validate_name(name).map_err(|e| format!("'{text}': {e}"))?;
    if let Some(q) = qualifier
        && (q.is_empty() || q.contains(':'))
    {
        return Err(format!(
            "'{text}': the qualifier must be a version or an alias"
        ));
    }
    Ok(Resource::Function {
        name: name.to_string(),
        qualifier: qualifier.map(str::to_string),
    })
}

fn error_list(v: &Value, at: &str, last: bool) -> Result<Vec<String>, DefinitionError> {
    let field = join(at, "ErrorEquals");
    let Some(list) = v.get("ErrorEquals").and_then(Value::as_array) else {
        return Err(err(
            field,
            "is required: a non-empty array of error names".into(),
        ));
    };
    if list.is_empty() {
        return Err(err(
            field,
            "is required: a non-empty array of error names".into(),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let Value::String(e) = e else {
            return Err(err(&field, "must hold strings".into()));
        };
        out.push(e.clone());
    }
    if out.iter().any(|e| e == names::ALL) {
        if out.len() > 1 {
            return Err(err(
                field,
                "States.ALL must appear alone in its ErrorEquals".into(),
            ));
        }
        if !last {
            return Err(err(
                field,
                "States.ALL must be in the last retrier or catcher".into(),
            ));
        }
    }
    Ok(out)
}

fn retriers(obj: &Map<String, Value>, at: &str) -> Result<Vec<Retrier>, DefinitionError> {
    let Some(v) = obj.get("Retry") else {
        return Ok(Vec::new());
    };
    let Value::Array(list) = v else {
        return Err(err(join(at, "Retry"), "must be an array".into()));
    };
    let mut out = Vec::with_capacity(list.len());
    for (n, r) in list.iter().enumerate() {
        let here = join(at, &format!("Retry[{n}]"));
        let Value::Object(r_obj) = r else {
            return Err(err(here, "must be an object".into()));
        };
        for key in r_obj.keys() {
            if ![
                "ErrorEquals",
                "IntervalSeconds",
                "MaxAttempts",
                "BackoffRate",
                "MaxDelaySeconds",
                "JitterStrategy",
                "Comment",
            ]
            .contains(&key.as_str())
            {
                return Err(err(join(&here, key), "is not a field of a retrier".into()));
            }
        }
        let interval_seconds = opt_u64(r_obj, &here, "IntervalSeconds")?.unwrap_or(1);
        if interval_seconds == 0 || interval_seconds > 99_999_999 {
            return Err(err(
                join(&here, "IntervalSeconds"),
                "must be from 1 to 99999999".into(),
            ));
        }
        let max_attempts = opt_u64(r_obj, &here, "MaxAttempts")?.unwrap_or(3);
        if max_attempts > 99_999_999 {
            return Err(err(
                join(&here, "MaxAttempts"),
                "must be from 0 to 99999999".into(),
            ));
        }
        let backoff_rate = opt_f64(r_obj, &here, "BackoffRate")?.unwrap_or(2.0);
        if backoff_rate < 1.0 {
            return Err(err(
                join(&here, "BackoffRate"),
                "must be at least 1.0".into(),
            ));
        }
        let max_delay_seconds = opt_u64(r_obj, &here, "MaxDelaySeconds")?;
        if let Some(d) = max_delay_seconds
            && (d == 0 || d > 31_622_400)
        {
            return Err(err(
                join(&here, "MaxDelaySeconds"),
                "must be from 1 to 31622400".into(),
            ));
        }
        let jitter_full = match opt_str(r_obj, &here, "JitterStrategy")? {
            None | Some("NONE") => false,
            Some("FULL") => true,
            Some(other) => {
                return Err(err(
                    join(&here, "JitterStrategy"),
                    format!("'{other}' is not FULL or NONE"),
                ));
            }
        };
        out.push(Retrier {
            error_equals: error_list(r, &here, n + 1 == list.len())?,
            interval_seconds: interval_seconds as f64,
            max_attempts: max_attempts as u32,
            backoff_rate,
            max_delay_seconds: max_delay_seconds.map(|d| d as f64),
            jitter_full,
        });
    }
    Ok(out)
}

fn catchers(obj: &Map<String, Value>, at: &str) -> Result<Vec<Catcher>, DefinitionError> {
    let Some(v) = obj.get("Catch") else {
        return Ok(Vec::new());
    };
    let Value::Array(list) = v else {
        return Err(err(join(at, "Catch"), "must be an array".into()));
    };
    let mut out = Vec::with_capacity(list.len());
    for (n, c) in list.iter().enumerate() {
        let here = join(at, &format!("Catch[{n}]"));
        let Value::Object(c_obj) = c else {
            return Err(err(here, "must be an object".into()));
        };
        for key in c_obj.keys() {
            if !["ErrorEquals", "Next", "ResultPath", "Comment"].contains(&key.as_str()) {
                return Err(err(join(&here, key), "is not a field of a catcher".into()));
            }
        }
        out.push(Catcher {
            error_equals: error_list(c, &here, n + 1 == list.len())?,
            next: opt_str(c_obj, &here, "Next")?
                .ok_or_else(|| err(join(&here, "Next"), "is required".into()))?
                .to_string(),
            result_path: result_path_field(c_obj, &here, "ResultPath")?,
        });
    }
    Ok(out)
}

/// Every state a state can go to next.
fn targets(state: &State) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    if let Transition::Next(n) = &state.next {
        out.push(("Next".to_string(), n.as_str()));
    }
    match &state.kind {
        Kind::Choice { choices, default } => {
            for (n, (_, next)) in choices.iter().enumerate() {
                out.push((format!("Choices[{n}].Next"), next.as_str()));
            }
            if let Some(d) = default {
                out.push(("Default".to_string(), d.as_str()));
            }
        }
        Kind::Task(t) => push_catch(&mut out, &t.catch),
        Kind::Parallel { catch, .. } => push_catch(&mut out, catch),
        Kind::Map(m) => push_catch(&mut out, &m.catch),
        _ => {}
    }
    out
}

fn push_catch<'a>(out: &mut Vec<(String, &'a str)>, catch: &'a [Catcher]) {
    for (n, c) in catch.iter().enumerate() {
        out.push((format!("Catch[{n}].Next"), c.next.as_str()));
    }
}

/// Checks that StartAt and every transition name a state of this machine, and that every
/// state can be reached from StartAt.
fn check_transitions(machine: &Machine, at: &str) -> Result<(), DefinitionError> {
    if !machine.states.contains_key(&machine.start_at) {
        return Err(err(
            join(at, "StartAt"),
            format!(
                "'{}' is not a state of {}",
                machine.start_at,
                if at.is_empty() { "the definition" } else { at }
            ),
        ));
    }
    for (name, state) in &machine.states {
        for (field, target) in targets(state) {
            if !machine.states.contains_key(target) {
                return Err(err(
                    join(at, &format!("States.{name}.{field}")),
                    format!(
                        "'{target}' is not a state here (a transition cannot leave its branch or Map)"
                    ),
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![machine.start_at.as_str()];
    while let Some(name) = todo.pop() {
        if seen.insert(name) {
            for (_, t) in targets(&machine.states[name]) {
                todo.push(t);
            }
        }
    }
    if let Some(lost) = machine.states.keys().find(|n| !seen.contains(n.as_str())) {
        return Err(err(
            join(at, &format!("States.{lost}")),
            "cannot be reached from StartAt".into(),
        ));
    }
    Ok(())
}

/// Whether a state's fields (not those of nested machines) mention `$$`.
fn mentions_context(state: &Value, kind: &str) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains("$$"),
            Value::Array(a) => a.iter().any(walk),
            Value::Object(m) => m.values().any(walk),
            _ => false,
        }
    }
    let Value::Object(m) = state else {
        return false;
    };
    m.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "Branches" | "ItemProcessor" | "Iterator"))
        .any(|(_, v)| walk(v))
        || kind == "Map"
}

fn mentions_token(params: Option<&Value>) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains("$$.Task.Token"),
            Value::Array(a) => a.iter().any(walk),
            Value::Object(m) => m.values().any(walk),
            _ => false,
        }
    }
    params.is_some_and(walk)
}

#[cfg(test)]
mod tests;
