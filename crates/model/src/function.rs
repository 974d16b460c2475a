//! A function: its user-given configuration (`FunctionSpec`), its stored record
//! (`Function`), and the validation every writer goes through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::http::{RouteOptions, Trigger};
use crate::limits;

/// The language runtime an instance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Runtime {
    /// CPython 3 from the node, `handler: module.function`.
    #[serde(rename = "python3")]
    Python3,
    /// Node.js from the node, `handler: file.export`.
    #[serde(rename = "nodejs")]
    Nodejs,
    /// Any executable that serves HTTP on `$PORT`, started with `command`.
    #[serde(rename = "custom")]
    Custom,
    /// Lambda's custom runtimes: the code's `bootstrap` (or `command`) speaks the Lambda
    /// Runtime API at `$AWS_LAMBDA_RUNTIME_API`; `handler` is whatever it makes of it.
    #[serde(rename = "provided")]
    Provided,
}

impl Runtime {
    /// Every runtime, in the order documentation lists them.
    pub const ALL: [Runtime; 4] = [
        Runtime::Python3,
        Runtime::Nodejs,
        Runtime::Custom,
        Runtime::Provided,
    ];

    /// The name used in manifests and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Python3 => "python3",
            Runtime::Nodejs => "nodejs",
            Runtime::Custom => "custom",
            Runtime::Provided => "provided",
        }
    }

    /// Whether the runtime is an interpreter running Nimbus's shim (Python, Node.js), as
    /// opposed to a program the function brings (`custom`, `provided`).
    pub fn has_shim(self) -> bool {
        matches!(self, Runtime::Python3 | Runtime::Nodejs)
    }
}

impl std::str::FromStr for Runtime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Runtime::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown runtime `{s}`; expected one of: python3, nodejs, custom, provided")
            })
    }
}

impl Runtime {
    /// A runtime as written in a manifest or the API: `python3`, `nodejs`, `custom`, or
    /// one of AWS's versioned ids (`python3.11`, `nodejs20.x`), which name the runtime and
    /// the interpreter version the function wants (`3.11`, `20`).
    pub fn parse_id(s: &str) -> Result<(Runtime, String), String> {
        if let Ok(r) = s.parse::<Runtime>() {
            return Ok((r, String::new()));
        }
        let digits =
            |v: &str| !v.is_empty() && v.len() <= 2 && v.bytes().all(|b| b.is_ascii_digit());
        if let Some(minor) = s.strip_prefix("python3.")
            && digits(minor)
        {
            return Ok((Runtime::Python3, format!("3.{minor}")));
        }
        if let Some(major) = s.strip_prefix("nodejs").and_then(|r| r.strip_suffix(".x"))
            && digits(major)
        {
            return Ok((Runtime::Nodejs, major.to_string()));
        }
        // Lambda's OS-only runtimes: the OS is this node's, so the id only names the kind.
        if let Some(os @ ("al2" | "al2023")) = s.strip_prefix("provided.") {
            return Ok((Runtime::Provided, os.to_string()));
        }
        Err(format!(
            "unknown runtime `{s}`; expected python3, nodejs, custom or provided, or a versioned id such as python3.11, nodejs20.x or provided.al2023"
        ))
    }

    /// The id a function was written with: `python3.11` for version `3.11`.
    pub fn id(self, version: &str) -> String {
        match (self, version) {
            (r, "") => r.as_str().to_string(),
            (Runtime::Python3, v) => format!("python{v}"),
            (Runtime::Nodejs, v) => format!("nodejs{v}.x"),
            (Runtime::Custom, _) => "custom".into(),
            (Runtime::Provided, os) => format!("provided.{os}"),
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a function is called.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionType {
    /// `handler(event, context)`: events in, a value out (Lambda / FC style).
    #[default]
    Handler,
    /// A Python WSGI application (Flask, Django, …), `handler: module:app`.
    Wsgi,
    /// A Python ASGI application (FastAPI, Starlette, …), `handler: module:app`.
    Asgi,
    /// An HTTP server: a Node `(req, res)` handler or Express app, or a custom runtime.
    Http,
}

impl FunctionType {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionType::Handler => "handler",
            FunctionType::Wsgi => "wsgi",
            FunctionType::Asgi => "asgi",
            FunctionType::Http => "http",
        }
    }

    /// The type a function of `runtime` has when none is given: a custom runtime is
    /// always an HTTP server; the others run handlers.
    pub fn default_for(runtime: Runtime) -> FunctionType {
        match runtime {
            Runtime::Custom => FunctionType::Http,
            Runtime::Python3 | Runtime::Nodejs | Runtime::Provided => FunctionType::Handler,
        }
    }

    /// Whether the function answers HTTP requests itself (rather than events).
    pub fn is_web(self) -> bool {
        self != FunctionType::Handler
    }
}

/// What a user configures for a function. Defaults are filled in before it is stored, so a
/// stored spec is complete and the sandbox never guesses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime: Runtime,
    pub handler: String,
    /// The interpreter version the function asked for with a versioned runtime id
    /// (`python3.11` → `3.11`, `nodejs20.x` → `20`); empty: any the node has.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime_version: String,
    /// sha256 (hex) of the code archive in the blob store.
    pub code_sha256: String,
    /// Whether the server installs the dependencies the code declares (`requirements.txt`,
    /// `pyproject.toml`, `package.json`) when it is deployed. On unless turned off.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub build: bool,
    /// sha256 of the archive of installed dependencies laid over the code: what a build
    /// made (the server fills it in), or what the client built (`deploy --build local`).
    /// Empty: none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deps_sha256: String,
    /// Shared trees shown read-only at `/opt`, as Lambda's layers: their `python/` is on
    /// the import path, `nodejs/node_modules` on Node's, `bin/` on `PATH`, `lib/` on the
    /// library path. Later layers win where they overlap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
    /// Whose conventions a handler follows: Lambda's (the default: a JSON event decoded,
    /// Lambda's context) or Function Compute's (`fc`: the event as bytes, FC's context
    /// with `function`, `service`, `region`, `account_id`, `credentials`).
    #[serde(default, skip_serializing_if = "Conventions::is_lambda")]
    pub conventions: Conventions,
    pub memory_mb: u32,
    pub timeout_ms: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "type")]
    pub kind: FunctionType,
    /// The command of a custom runtime; `$PORT` in an argument is replaced by the port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The function URL `/fn/{name}/…`, off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<RouteOptions>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// Calls one instance takes at once; 1 (the default) isolates calls as Lambda does.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Instances kept ready with no traffic (provisioned).
    #[serde(default)]
    pub min_instances: u32,
    /// Most instances at once; past it, calls wait `queue_timeout_ms`, then are throttled.
    #[serde(default = "max_instances_default")]
    pub max_instances: u32,
    /// An instance idle this long is stopped, down to `min_instances`.
    #[serde(default = "idle_timeout_default")]
    pub idle_timeout_ms: u32,
    /// Adaptive keep-alive, off when 0: when the function's calls keep coming back after
    /// idle gaps longer than `idle_timeout_ms`, its idle instances are kept long enough for
    /// the next one (the gaps' 90th percentile and a fifth more), up to this long.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_alive_max_ms: u32,
    /// How long a call may wait for a free slot before it is throttled (429).
    #[serde(default = "queue_timeout_default")]
    pub queue_timeout_ms: u32,
    /// `module.function` run once per instance before its first call (FC's initializer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub initializer: String,
    #[serde(default = "initializer_timeout_default")]
    pub initializer_timeout_ms: u32,
    /// `module.function` run when an instance is stopped, before it is killed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pre_stop: String,
    #[serde(default = "pre_stop_timeout_default")]
    pub pre_stop_timeout_ms: u32,
    /// `outbound` (the host's network) or `none` (no network at all) when sandboxed.
    #[serde(default)]
    pub network: Network,
    /// Size of the instance's private `/tmp`.
    #[serde(default = "ephemeral_storage_default")]
    pub ephemeral_storage_mb: u32,
    /// A hard CPU limit in thousandths of a core; 0 (the default) gives a CPU share
    /// proportional to `memory_mb`, as on Lambda and Function Compute.
    #[serde(default)]
    pub cpu_millicores: u32,
    /// Retries of an asynchronous invocation after function errors.
    #[serde(default = "max_retries_default")]
    pub max_retries: u32,
    /// An asynchronous event older than this is given up (expired).
    #[serde(default = "max_event_age_default")]
    pub max_event_age_ms: u32,
    /// Where an asynchronous invocation's record goes when it succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Destination>,
    /// Where it goes when it failed for good (retries used up or too old); without one,
    /// the built-in dead-letter queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Destination>,
}

/// Whose handler conventions a function follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conventions {
    #[default]
    Lambda,
    Fc,
}

impl Conventions {
    pub fn is_lambda(&self) -> bool {
        *self == Conventions::Lambda
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Conventions::Lambda => "lambda",
            Conventions::Fc => "fc",
        }
    }
}

/// A layer a function uses: its name (from the manifest) and the archive of its tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    pub sha256: String,
}

/// Where an asynchronous invocation's record is sent: another function (`name` or
/// `name:qualifier`), a webhook, or the built-in dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "DestinationRepr", into = "DestinationRepr")]
pub enum Destination {
    Function(String),
    Webhook(String),
    Dlq,
}

/// How a destination is written, in JSON and YAML alike: `{function: name}`,
/// `{webhook: url}` or `dlq` (YAML has no tagless form for an enum with data).
#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum DestinationRepr {
    Function { function: String },
    Webhook { webhook: String },
    Word(String),
}

impl TryFrom<DestinationRepr> for Destination {
    type Error = String;
    fn try_from(r: DestinationRepr) -> Result<Self, String> {
        match r {
            DestinationRepr::Function { function } => Ok(Destination::Function(function)),
            DestinationRepr::Webhook { webhook } => Ok(Destination::Webhook(webhook)),
            DestinationRepr::Word(w) if w == "dlq" => Ok(Destination::Dlq),
            DestinationRepr::Word(w) => Err(format!(
                "`{w}` is not a destination; use {{function: NAME}}, {{webhook: URL}} or dlq"
            )),
        }
    }
}

impl From<Destination> for DestinationRepr {
    fn from(d: Destination) -> Self {
        match d {
            Destination::Function(function) => DestinationRepr::Function { function },
            Destination::Webhook(webhook) => DestinationRepr::Webhook { webhook },
            Destination::Dlq => DestinationRepr::Word("dlq".into()),
        }
    }
}

impl Destination {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Destination::Function(target) => {
                let (name, _) = crate::Qualifier::split(target)?;
                validate_name(name).map_err(|e| format!("function `{name}` {e}"))
            }
            Destination::Webhook(url) => {
                if url.len() > limits::WEBHOOK_URL_LEN_MAX {
                    return Err(format!(
                        "the webhook URL is longer than {} bytes",
                        limits::WEBHOOK_URL_LEN_MAX
                    ));
                }
                if url.starts_with("http://") || url.starts_with("https://") {
                    Ok(())
                } else {
                    Err(format!(
                        "webhook `{url}` must be an http:// or https:// URL"
                    ))
                }
            }
            Destination::Dlq => Ok(()),
        }
    }
}

fn max_retries_default() -> u32 {
    limits::MAX_RETRIES_DEFAULT
}
fn max_event_age_default() -> u32 {
    limits::MAX_EVENT_AGE_MS_DEFAULT
}

/// What network an instance has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    Outbound,
    None,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "outbound" => Ok(Network::Outbound),
            "none" => Ok(Network::None),
            other => Err(format!(
                "`{other}` is not a network mode; use outbound or none"
            )),
        }
    }
}

fn ephemeral_storage_default() -> u32 {
    limits::EPHEMERAL_STORAGE_MB_DEFAULT
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn one() -> u32 {
    1
}
fn max_instances_default() -> u32 {
    limits::MAX_INSTANCES_DEFAULT
}
fn idle_timeout_default() -> u32 {
    limits::IDLE_TIMEOUT_MS_DEFAULT
}
fn queue_timeout_default() -> u32 {
    limits::QUEUE_TIMEOUT_MS_DEFAULT
}
fn initializer_timeout_default() -> u32 {
    limits::INITIALIZER_TIMEOUT_MS_DEFAULT
}
fn pre_stop_timeout_default() -> u32 {
    limits::PRE_STOP_TIMEOUT_MS_DEFAULT
}

impl FunctionSpec {
    /// The spec as the API shows it: secrets in queue triggers' broker URLs redacted.
    pub fn redacted(mut self) -> FunctionSpec {
        for t in &mut self.triggers {
            *t = t.redacted();
        }
        self
    }

    /// A spec with every optional setting at its default.
    pub fn new(name: &str, runtime: Runtime, handler: &str, code_sha256: &str) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            runtime,
            handler: handler.into(),
            code_sha256: code_sha256.into(),
            runtime_version: String::new(),
            build: true,
            deps_sha256: String::new(),
            layers: Vec::new(),
            conventions: Conventions::Lambda,
            memory_mb: limits::MEMORY_MB_DEFAULT,
            timeout_ms: limits::TIMEOUT_MS_DEFAULT,
            env: BTreeMap::new(),
            description: String::new(),
            kind: FunctionType::default_for(runtime),
            command: Vec::new(),
            url: None,
            triggers: Vec::new(),
            concurrency: 1,
            min_instances: 0,
            max_instances: limits::MAX_INSTANCES_DEFAULT,
            idle_timeout_ms: limits::IDLE_TIMEOUT_MS_DEFAULT,
            keep_alive_max_ms: 0,
            queue_timeout_ms: limits::QUEUE_TIMEOUT_MS_DEFAULT,
            initializer: String::new(),
            initializer_timeout_ms: limits::INITIALIZER_TIMEOUT_MS_DEFAULT,
            pre_stop: String::new(),
            pre_stop_timeout_ms: limits::PRE_STOP_TIMEOUT_MS_DEFAULT,
            network: Network::Outbound,
            ephemeral_storage_mb: limits::EPHEMERAL_STORAGE_MB_DEFAULT,
            cpu_millicores: 0,
            max_retries: limits::MAX_RETRIES_DEFAULT,
            max_event_age_ms: limits::MAX_EVENT_AGE_MS_DEFAULT,
            on_success: None,
            on_failure: None,
        }
    }
}

/// A stored function: the spec plus what the store adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    pub spec: FunctionSpec,
    /// Increases by one on every update; instances of an older revision are never reused.
    pub revision: u64,
    /// Unix milliseconds.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One invalid field: which, and what is wrong with it, in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks each trigger spec's fields and their count, and that no two share a name (a
/// name pauses, resumes and lists one trigger); `owner` (`function`, `flow`) says whose
/// they are in the messages.
pub fn validate_triggers(triggers: &[Trigger], owner: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if triggers.len() > limits::TRIGGERS_MAX {
        errors.push(FieldError {
            field: "triggers".into(),
            message: format!(
                "has {}; at most {} are allowed",
                triggers.len(),
                limits::TRIGGERS_MAX
            ),
        });
    }
    // Timers and event rules are paused and shown by name: one name, one trigger.
    let mut names = std::collections::HashSet::new();
    for (i, trigger) in triggers.iter().enumerate() {
        let named = match trigger {
            Trigger::Timer(t) => Some(("timer", t.name.as_str())),
            Trigger::Event(t) => Some(("event", t.name.as_str())),
            Trigger::Object(t) => Some(("object", t.name())),
            Trigger::Queue(t) => Some(("queue", t.name())),
            Trigger::Http(_) => None,
        };
        if let Some((kind, name)) = named
            && !names.insert(name)
        {
            errors.push(FieldError {
                field: format!("triggers[{i}].{kind}.name"),
                message: format!(
                    "`{name}` names another trigger of this {owner}; names are unique per {owner}"
                ),
            });
        }
    }
    for (i, trigger) in triggers.iter().enumerate() {
        match trigger {
            Trigger::Http(t) => {
                crate::http::validate_trigger(&format!("triggers[{i}].http"), t, &mut errors)
            }
            Trigger::Timer(t) => {
                crate::timer::validate(&format!("triggers[{i}].timer"), t, &mut errors)
            }
            Trigger::Event(t) => {
                crate::timer::validate_event(&format!("triggers[{i}].event"), t, &mut errors)
            }
            Trigger::Object(t) => {
                crate::object::validate(&format!("triggers[{i}].object"), t, &mut errors)
            }
            Trigger::Queue(t) => {
                crate::queue::validate(&format!("triggers[{i}].queue"), t, &mut errors)
            }
        }
    }
    errors
}

/// Checks a function name: 1..=64 of `[A-Za-z0-9_-]`, starting with a letter.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > limits::NAME_LEN_MAX {
        return Err(format!(
            "must be 1 to {} characters long",
            limits::NAME_LEN_MAX
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("must start with a letter".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "contains `{c}`; only letters, digits, `-` and `_` are allowed"
        ));
    }
    Ok(())
}

fn validate_handler(runtime: Runtime, kind: FunctionType, handler: &str) -> Result<(), String> {
    // A program of the function's own makes of its handler what it will (`_HANDLER`).
    if !runtime.has_shim() {
        return if handler.chars().count() > limits::HANDLER_LEN_MAX {
            Err(format!(
                "longer than {} characters",
                limits::HANDLER_LEN_MAX
            ))
        } else {
            Ok(())
        };
    }
    // WSGI/ASGI apps are named `module:attribute`, as gunicorn and uvicorn name them.
    let colon = matches!(kind, FunctionType::Wsgi | FunctionType::Asgi);
    let handler_owned;
    let handler = if colon && handler.contains(':') {
        handler_owned = handler.replacen(':', ".", 1);
        handler_owned.as_str()
    } else {
        handler
    };
    if handler.is_empty() || handler.chars().count() > limits::HANDLER_LEN_MAX {
        return Err(format!(
            "must be 1 to {} characters long",
            limits::HANDLER_LEN_MAX
        ));
    }
    // `module.function` for both runtimes; the module part may contain `/` (a subdirectory)
    // but never `..`, and the function part is an identifier.
    let Some((module, func)) = handler.rsplit_once('.') else {
        return Err(format!(
            "`{handler}` must look like `module.function` (e.g. `main.handler` for {})",
            match runtime {
                Runtime::Python3 => "`def handler(event, context)` in main.py",
                Runtime::Nodejs => "`exports.handler` in main.js",
                Runtime::Custom | Runtime::Provided => {
                    unreachable!("custom runtimes have no handler")
                }
            }
        ));
    };
    if module.is_empty() || module.starts_with('/') || module.split('/').any(|p| p == "..") {
        return Err(format!(
            "module `{module}` must be a relative path inside the code"
        ));
    }
    let ident = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if !ident(func) {
        return Err(format!("function `{func}` is not a valid identifier"));
    }
    Ok(())
}

fn validate_env(env: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if env.len() > limits::ENV_VARS_MAX {
        errors.push(FieldError {
            field: "env".into(),
            message: format!(
                "has {} variables; at most {} are allowed",
                env.len(),
                limits::ENV_VARS_MAX
            ),
        });
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > limits::ENV_BYTES_MAX {
        errors.push(FieldError {
            field: "env".into(),
            message: format!(
                "is {total} bytes in total; at most {} are allowed",
                limits::ENV_BYTES_MAX
            ),
        });
    }
    for (key, value) in env {
        let valid_key = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            errors.push(FieldError {
                field: format!("env.{key}"),
                message: "names must match [A-Za-z_][A-Za-z0-9_]*".into(),
            });
        } else if is_reserved_env(key) {
            errors.push(FieldError {
                field: format!("env.{key}"),
                message: "is set by the platform and cannot be overridden".into(),
            });
        }
        if value.contains('\0') {
            errors.push(FieldError {
                field: format!("env.{key}"),
                message: "value contains a NUL byte".into(),
            });
        }
    }
    errors
}

/// Variables the platform sets for every instance; a function may not override them
/// because the runtime shims and handlers depend on their meaning.
pub fn is_reserved_env(key: &str) -> bool {
    key.starts_with("NIMBUS_")
        || key.starts_with("AWS_LAMBDA_")
        || matches!(key, "_HANDLER" | "LAMBDA_TASK_ROOT" | "PATH" | "HOME")
}

impl FunctionSpec {
    /// Every problem with this spec, each naming its field. Empty means valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut push = |field: &str, r: Result<(), String>| {
            if let Err(message) = r {
                errors.push(FieldError {
                    field: field.into(),
                    message,
                });
            }
        };
        push("name", validate_name(&self.name));
        push(
            "handler",
            validate_handler(self.runtime, self.kind, &self.handler),
        );
        push("type", self.validate_kind());
        push(
            "concurrency",
            range(self.concurrency, 1, limits::CONCURRENCY_MAX),
        );
        push("command", self.validate_command());
        push(
            "max_instances",
            range(self.max_instances, 1, limits::INSTANCES_PER_FUNCTION_MAX),
        );
        push(
            "min_instances",
            if self.min_instances > self.max_instances {
                Err(format!(
                    "{} is more than max_instances ({})",
                    self.min_instances, self.max_instances
                ))
            } else {
                Ok(())
            },
        );
        push(
            "idle_timeout_ms",
            range(
                self.idle_timeout_ms,
                limits::IDLE_TIMEOUT_MS_MIN,
                limits::IDLE_TIMEOUT_MS_MAX,
            ),
        );
        push(
            "keep_alive_max_ms",
            if self.keep_alive_max_ms == 0 {
                Ok(())
            } else if self.keep_alive_max_ms <= self.idle_timeout_ms {
                Err(format!(
                    "{} is not more than idle_timeout_ms ({}); use 0 to turn adaptive keep-alive off",
                    self.keep_alive_max_ms, self.idle_timeout_ms
                ))
            } else {
                range(self.keep_alive_max_ms, 0, limits::IDLE_TIMEOUT_MS_MAX)
            },
        );
        push(
            "queue_timeout_ms",
            range(self.queue_timeout_ms, 0, limits::QUEUE_TIMEOUT_MS_MAX),
        );
        push(
            "initializer_timeout_ms",
            range(
                self.initializer_timeout_ms,
                1,
                limits::INITIALIZER_TIMEOUT_MS_MAX,
            ),
        );
        push(
            "pre_stop_timeout_ms",
            range(self.pre_stop_timeout_ms, 1, limits::PRE_STOP_TIMEOUT_MS_MAX),
        );
        for (field, hook) in [
            ("initializer", &self.initializer),
            ("pre_stop", &self.pre_stop),
        ] {
            if hook.is_empty() {
                continue;
            }
            push(
                field,
                match (self.runtime, self.conventions) {
                    // Function Compute calls a custom runtime's hooks over HTTP
                    // (`POST /initialize`, `GET /pre-stop`); the name is the server's.
                    (Runtime::Custom, Conventions::Fc) => validate_handler(self.runtime, self.kind, hook),
                    (Runtime::Custom, Conventions::Lambda) => Err(
                        "custom runtimes have no hooks (but with `conventions: fc`, Function Compute's POST /initialize and GET /pre-stop); do the work before listening on $PORT"
                            .into(),
                    ),
                    (Runtime::Provided, _) => Err(
                        "the Runtime API has no hooks; a `provided` function initializes before its first /next"
                            .into(),
                    ),
                    _ => validate_handler(self.runtime, FunctionType::Handler, hook),
                },
            );
        }
        push(
            "code_sha256",
            if self.code_sha256.len() == 64
                && self
                    .code_sha256
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            {
                Ok(())
            } else {
                Err(
                    "must be 64 lowercase hex characters (the sha256 of an uploaded archive)"
                        .into(),
                )
            },
        );
        push(
            "layers",
            if self.layers.len() > limits::LAYERS_MAX {
                Err(format!(
                    "{} layers; a function may use at most {}",
                    self.layers.len(),
                    limits::LAYERS_MAX
                ))
            } else if let Some(l) = self.layers.iter().find(|l| {
                validate_name(&l.name).is_err()
                    || l.sha256.len() != 64
                    || !l
                        .sha256
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            }) {
                Err(format!(
                    "layer `{}`: a name like a function's and the sha256 of an uploaded archive",
                    l.name
                ))
            } else {
                Ok(())
            },
        );
        push(
            "deps_sha256",
            if self.deps_sha256.is_empty()
                || (self.deps_sha256.len() == 64
                    && self
                        .deps_sha256
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
            {
                Ok(())
            } else {
                Err("must be empty or 64 lowercase hex characters (the sha256 of an uploaded archive)".into())
            },
        );
        push(
            "memory_mb",
            range(self.memory_mb, limits::MEMORY_MB_MIN, limits::MEMORY_MB_MAX),
        );
        push(
            "ephemeral_storage_mb",
            range(
                self.ephemeral_storage_mb,
                limits::EPHEMERAL_STORAGE_MB_MIN,
                limits::EPHEMERAL_STORAGE_MB_MAX,
            ),
        );
        push(
            "max_retries",
            range(self.max_retries, 0, limits::MAX_RETRIES_MAX),
        );
        push(
            "max_event_age_ms",
            range(
                self.max_event_age_ms,
                limits::MAX_EVENT_AGE_MS_MIN,
                limits::MAX_EVENT_AGE_MS_MAX,
            ),
        );
        for (field, d) in [
            ("on_success", &self.on_success),
            ("on_failure", &self.on_failure),
        ] {
            if let Some(d) = d {
                push(field, d.validate());
            }
        }
        if self.runtime == Runtime::Provided {
            if self.concurrency != 1 {
                push(
                    "concurrency",
                    Err(format!(
                        "is {}; a `provided` runtime takes one call at a time (the Runtime API hands out one event per /next), so it must be 1",
                        self.concurrency
                    )),
                );
            }
            if self.network == Network::None {
                push(
                    "network",
                    Err("`none` cannot run runtime `provided`: its bootstrap reaches the Runtime API over the loopback network; use `outbound`".into()),
                );
            }
        }
        if self.network == Network::None && self.kind == FunctionType::Http {
            push(
                "network",
                Err("`none` cannot serve type `http`: the gateway reaches an HTTP function over the loopback network; use `outbound`".into()),
            );
        }
        if self.cpu_millicores != 0 {
            push(
                "cpu_millicores",
                range(
                    self.cpu_millicores,
                    limits::CPU_MILLICORES_MIN,
                    limits::CPU_MILLICORES_MAX,
                ),
            );
        }
        push(
            "timeout_ms",
            range(
                self.timeout_ms,
                limits::TIMEOUT_MS_MIN,
                limits::TIMEOUT_MS_MAX,
            ),
        );
        push(
            "description",
            if self.description.chars().count() <= limits::DESCRIPTION_LEN_MAX {
                Ok(())
            } else {
                Err(format!(
                    "longer than {} characters",
                    limits::DESCRIPTION_LEN_MAX
                ))
            },
        );
        errors.extend(validate_env(&self.env));
        if let Some(url) = &self.url {
            crate::http::validate_options("url", url, &mut errors);
        }
        errors.extend(validate_triggers(&self.triggers, "function"));
        errors
    }

    fn validate_kind(&self) -> Result<(), String> {
        let allowed: &[FunctionType] = match self.runtime {
            Runtime::Python3 => &[
                FunctionType::Handler,
                FunctionType::Wsgi,
                FunctionType::Asgi,
            ],
            Runtime::Nodejs => &[FunctionType::Handler, FunctionType::Http],
            Runtime::Custom => &[FunctionType::Http],
            Runtime::Provided => &[FunctionType::Handler],
        };
        if allowed.contains(&self.kind) {
            Ok(())
        } else {
            let names: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
            Err(format!(
                "`{}` is not available for runtime {}; use one of: {}",
                self.kind.as_str(),
                self.runtime,
                names.join(", ")
            ))
        }
    }

    fn validate_command(&self) -> Result<(), String> {
        match (self.runtime, self.command.is_empty()) {
            (Runtime::Custom, true) => Err(
                "a custom runtime needs a command, e.g. [\"./server\", \"--port\", \"$PORT\"]"
                    .into(),
            ),
            // `provided` runs the code's `bootstrap` unless a command says otherwise
            // (`[python3, -m, awslambdaric, app.handler]`).
            (Runtime::Provided, true) => Ok(()),
            (Runtime::Custom | Runtime::Provided, false) => {
                if self.command.len() > limits::COMMAND_ARGS_MAX {
                    Err(format!(
                        "has {} arguments; at most {}",
                        self.command.len(),
                        limits::COMMAND_ARGS_MAX
                    ))
                } else if let Some(a) = self
                    .command
                    .iter()
                    .find(|a| a.len() > limits::COMMAND_ARG_LEN_MAX || a.contains('\0'))
                {
                    Err(format!(
                        "argument `{}` is too long or contains a NUL byte",
                        &a[..a.len().min(32)]
                    ))
                } else if self.command[0].is_empty() {
                    Err("the program (first element) is empty".into())
                } else {
                    Ok(())
                }
            }
            (_, false) => Err(format!(
                "only custom and provided runtimes take a command; {} runs `handler`",
                self.runtime
            )),
            (_, true) => Ok(()),
        }
    }
}

fn range(value: u32, min: u32, max: u32) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{value} is out of range; must be {min} to {max}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        FunctionSpec::new("hello", Runtime::Python3, "main.handler", &"a".repeat(64))
    }

    fn fields(s: &FunctionSpec) -> Vec<String> {
        s.validate().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn valid_spec_has_no_errors() {
        assert_eq!(spec().validate(), vec![]);
        let mut s = spec();
        s.handler = "src/app.main_handler".into();
        assert_eq!(s.validate(), vec![]);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = fn(&mut FunctionSpec);
        let cases: Vec<(Mutation, &str)> = vec![
            (|s| s.name = "9lives".into(), "name"),
            (|s| s.name = "a b".into(), "name"),
            (|s| s.name = "x".repeat(65), "name"),
            (|s| s.handler = "nodot".into(), "handler"),
            (|s| s.handler = "../up.handler".into(), "handler"),
            (|s| s.handler = "/abs.handler".into(), "handler"),
            (|s| s.handler = "main.9".into(), "handler"),
            (|s| s.code_sha256 = "xyz".into(), "code_sha256"),
            (|s| s.memory_mb = 1, "memory_mb"),
            (|s| s.ephemeral_storage_mb = 8, "ephemeral_storage_mb"),
            (|s| s.cpu_millicores = 10, "cpu_millicores"),
            (|s| s.cpu_millicores = 9_000, "cpu_millicores"),
            (|s| s.timeout_ms = 0, "timeout_ms"),
            (|s| s.timeout_ms = 900_001, "timeout_ms"),
            (|s| s.description = "d".repeat(257), "description"),
            (
                |s| {
                    s.env.insert("1BAD".into(), "v".into());
                },
                "env.1BAD",
            ),
            (
                |s| {
                    s.env.insert("NIMBUS_X".into(), "v".into());
                },
                "env.NIMBUS_X",
            ),
            (
                |s| {
                    s.env.insert("BIG".into(), "v".repeat(5000));
                },
                "env",
            ),
            (|s| s.kind = FunctionType::Http, "type"),
            (|s| s.concurrency = 0, "concurrency"),
            (|s| s.concurrency = 201, "concurrency"),
            (|s| s.min_instances = 11, "min_instances"),
            (|s| s.max_instances = 0, "max_instances"),
            (|s| s.idle_timeout_ms = 10, "idle_timeout_ms"),
            (|s| s.keep_alive_max_ms = 5_000, "keep_alive_max_ms"),
            (|s| s.keep_alive_max_ms = 86_400_001, "keep_alive_max_ms"),
            (|s| s.queue_timeout_ms = 60_001, "queue_timeout_ms"),
            (|s| s.initializer = "nodot".into(), "initializer"),
            (|s| s.command = vec!["./server".into()], "command"),
            (
                |s| {
                    s.runtime = Runtime::Provided;
                    s.concurrency = 2;
                },
                "concurrency",
            ),
            (
                |s| {
                    s.runtime = Runtime::Provided;
                    s.network = Network::None;
                },
                "network",
            ),
            (
                |s| {
                    s.runtime = Runtime::Provided;
                    s.initializer = "main.init".into();
                },
                "initializer",
            ),
            (
                |s| {
                    s.runtime = Runtime::Custom;
                    s.kind = FunctionType::Http;
                },
                "command",
            ),
            (
                |s| {
                    s.triggers = vec![Trigger::Http(crate::http::HttpTrigger {
                        path: "/v1/steal".into(),
                        methods: vec![],
                        auth: Default::default(),
                        cors: None,
                        allow: vec![],
                        deny: vec![],
                        body_limit_bytes: None,
                        rate_limit: None,
                        qualifier: None,
                        payload_format_version: None,
                        format: Default::default(),
                    })]
                },
                "triggers[0].http.path",
            ),
            (
                |s| {
                    s.url = Some(RouteOptions {
                        body_limit_bytes: Some(0),
                        ..Default::default()
                    })
                },
                "url.body_limit_bytes",
            ),
        ];
        for (mutate, field) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(fields(&s), vec![field.to_string()], "{s:?}");
        }
    }

    #[test]
    fn web_and_custom_functions_validate() {
        let mut s = spec();
        s.kind = FunctionType::Wsgi;
        s.handler = "app:app".into();
        assert_eq!(s.validate(), vec![]);
        let mut c = spec();
        c.runtime = Runtime::Custom;
        c.kind = FunctionType::Http;
        c.handler = String::new();
        c.command = vec!["java".into(), "Server.java".into()];
        assert_eq!(c.validate(), vec![]);
        // Function Compute's custom runtimes have HTTP hooks.
        c.conventions = Conventions::Fc;
        c.initializer = "initialize".into();
        assert_eq!(c.validate(), vec![]);
        // `provided` runs `bootstrap`, or a command, with any handler.
        let mut p = spec();
        p.runtime = Runtime::Provided;
        p.handler = "app.handler".into();
        assert_eq!(p.validate(), vec![]);
        p.command = vec!["python3".into(), "-m".into(), "awslambdaric".into()];
        assert_eq!(p.validate(), vec![]);
    }

    #[test]
    fn versioned_runtime_ids_name_the_version() {
        assert_eq!(
            Runtime::parse_id("python3"),
            Ok((Runtime::Python3, String::new()))
        );
        assert_eq!(
            Runtime::parse_id("python3.11"),
            Ok((Runtime::Python3, "3.11".into()))
        );
        assert_eq!(
            Runtime::parse_id("nodejs20.x"),
            Ok((Runtime::Nodejs, "20".into()))
        );
        for bad in [
            "python3.",
            "python3.x",
            "nodejs20",
            "nodejs.x",
            "python2.7",
            "ruby3.3",
        ] {
            assert!(Runtime::parse_id(bad).is_err(), "{bad}");
        }
        assert_eq!(Runtime::Python3.id("3.11"), "python3.11");
        assert_eq!(Runtime::Nodejs.id("20"), "nodejs20.x");
        assert_eq!(Runtime::Nodejs.id(""), "nodejs");
        for (id, os) in [
            ("provided", ""),
            ("provided.al2", "al2"),
            ("provided.al2023", "al2023"),
        ] {
            assert_eq!(Runtime::parse_id(id), Ok((Runtime::Provided, os.into())));
            assert_eq!(Runtime::Provided.id(os), id);
        }
        assert!(Runtime::parse_id("provided.al3").is_err());
    }

    #[test]
    fn runtime_parses_and_names_alternatives() {
        assert_eq!("nodejs".parse::<Runtime>(), Ok(Runtime::Nodejs));
        let err = "ruby".parse::<Runtime>().unwrap_err();
        assert!(err.contains("python3, nodejs, custom"), "{err}");
    }
}
