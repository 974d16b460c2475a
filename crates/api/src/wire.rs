//! The JSON shapes of the control API. Nothing outside this crate sees them.

use std::collections::BTreeMap;

use model::http::{RouteOptions, Trigger};
use model::{Function, FunctionSpec, FunctionType, Network};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiError;
use platform::InvocationRecord;

/// A function's configuration as sent by clients. Omitted optional fields take defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionInput {
    /// Required on `POST /v1/functions`; on `PUT` it may be omitted or must match the path.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
    pub name: Option<String>,
    /// `python3`, `nodejs`, `custom` or `provided` (Lambda's Runtime API), or a versioned
    /// id: `python3.11`, `nodejs20.x`, `provided.al2023` (the version is then also in
    /// `runtime_version`, as the API answers it).
    #[schema(
        example = "python3",
        pattern = "^(python3(\\.[0-9]{1,2})?|nodejs([0-9]{1,2}\\.x)?|custom|provided(\\.al2|\\.al2023)?)$"
    )]
    pub runtime: String,
    /// `module.function`, e.g. `main.handler`; `module:app` for WSGI/ASGI; empty for custom.
    #[schema(example = "main.handler", max_length = 128)]
    #[serde(default)]
    pub handler: String,
    /// sha256 of a code archive uploaded with `POST /v1/code`.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub code_sha256: String,
    /// The interpreter version a versioned runtime id named (`3.11`, `20`), as the API
    /// answers it; it must agree with `runtime` when both name one.
    #[schema(pattern = "^([0-9]{1,2}(\\.[0-9]{1,2})?)?$")]
    pub runtime_version: Option<String>,
    /// `false`: install nothing, even when the code declares dependencies (default true).
    pub build: Option<bool>,
    /// An uploaded archive of installed dependencies laid over the code (one built on the
    /// client). Without it, the server builds what the code declares.
    #[schema(pattern = "^([0-9a-f]{64})?$")]
    pub deps_sha256: Option<String>,
    /// `[{"name": "common", "sha256": "..."}]`: uploaded archives shown read-only at
    /// `/opt`, later ones over earlier ones (Lambda's layers).
    #[schema(value_type = Option<Vec<Object>>, max_items = 5)]
    pub layers: Option<Vec<model::Layer>>,
    /// `lambda` (default) or `fc`: Function Compute's handler conventions (the event as
    /// bytes, FC's context).
    #[schema(value_type = Option<String>, pattern = "^(lambda|fc)$")]
    pub conventions: Option<model::Conventions>,
    #[schema(minimum = 64, maximum = 10240, default = 128)]
    pub memory_mb: Option<u32>,
    #[schema(minimum = 1, maximum = 900000, default = 3000)]
    pub timeout_ms: Option<u32>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    #[schema(max_length = 256)]
    pub description: String,
    /// `handler` (events), `wsgi` / `asgi` (Python web apps) or `http` (Node HTTP handlers,
    /// custom runtimes).
    #[serde(default, rename = "type")]
    #[schema(value_type = Option<String>, example = "handler", pattern = "^(handler|wsgi|asgi|http)$")]
    pub kind: Option<FunctionType>,
    /// A custom runtime's command; `$PORT` is replaced by the port it must serve on. For
    /// `provided`, what runs instead of the code's `bootstrap`.
    #[serde(default)]
    #[schema(max_items = 32)]
    pub command: Vec<String>,
    /// Enables the function URL `/fn/{name}/…` with these protections.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub url: Option<RouteOptions>,
    /// `[{"http": {"path": "/items/{id}", "methods": ["GET"], "auth": "anonymous"}}]`
    #[serde(default)]
    #[schema(value_type = Vec<Object>, max_items = 16)]
    pub triggers: Vec<Trigger>,
    /// Calls one instance takes at once.
    #[schema(minimum = 1, maximum = 200, default = 1)]
    pub concurrency: Option<u32>,
    /// Instances kept ready with no traffic (at most `max_instances`).
    #[schema(maximum = 1000)]
    pub min_instances: Option<u32>,
    /// Most instances at once (default 10).
    #[schema(minimum = 1, maximum = 1000)]
    pub max_instances: Option<u32>,
    /// Idle time after which an instance is stopped (default 600000).
    #[schema(minimum = 1000, maximum = 86400000)]
    pub idle_timeout_ms: Option<u32>,
    /// Adaptive keep-alive: idle instances may be kept up to this long when calls come
    /// back after longer gaps than `idle_timeout_ms` (0, the default, is off).
    #[schema(maximum = 86400000)]
    pub keep_alive_max_ms: Option<u32>,
    /// How long a call waits for a slot before it is throttled (default 1000).
    #[schema(maximum = 60000)]
    pub queue_timeout_ms: Option<u32>,
    /// `module.function` run once per instance before its first call.
    #[serde(default)]
    pub initializer: String,
    #[schema(minimum = 1, maximum = 300000)]
    pub initializer_timeout_ms: Option<u32>,
    /// `module.function` run before an instance is stopped.
    #[serde(default)]
    pub pre_stop: String,
    #[schema(minimum = 1, maximum = 60000)]
    pub pre_stop_timeout_ms: Option<u32>,
    /// `outbound` (default) or `none`: no network at all when sandboxed.
    #[schema(value_type = Option<String>, example = "outbound", pattern = "^(outbound|none)$")]
    pub network: Option<Network>,
    /// Size of the private `/tmp` (default 512).
    #[schema(minimum = 16, maximum = 10240, default = 512)]
    pub ephemeral_storage_mb: Option<u32>,
    /// Hard CPU limit in thousandths of a core; 0 (default) shares CPU in proportion to
    /// memory.
    #[schema(maximum = 8000)]
    pub cpu_millicores: Option<u32>,
    /// Retries of an asynchronous invocation after function errors (default 2, 0 to 8).
    #[schema(maximum = 8)]
    pub max_retries: Option<u32>,
    /// Asynchronous events older than this are given up (default 21600000).
    #[schema(minimum = 1000, maximum = 21600000)]
    pub max_event_age_ms: Option<u32>,
    /// `{"function": "name"}`, `{"webhook": "https://..."}` or `"dlq"`.
    #[schema(value_type = Option<Object>)]
    pub on_success: Option<model::Destination>,
    /// As `on_success`; without one, failures go to the dead-letter queue.
    #[schema(value_type = Option<Object>)]
    pub on_failure: Option<model::Destination>,
}

impl FunctionInput {
    /// The complete spec, defaults filled in. `name` comes from the path or the body.
    pub fn into_spec(self, path_name: Option<&str>) -> Result<FunctionSpec, ApiError> {
        let name = match (path_name, self.name) {
            (Some(p), Some(b)) if p != b => {
                return Err(ApiError::invalid(format!(
                    "name: the body says `{b}` but the path says `{p}`"
                )));
            }
            (Some(p), _) => p.to_string(),
            (None, Some(b)) => b,
            (None, None) => return Err(ApiError::invalid("name: missing")),
        };
        let (runtime, mut runtime_version) = model::Runtime::parse_id(&self.runtime)
            .map_err(|e| ApiError::invalid(format!("runtime: {e}")))?;
        match self.runtime_version.filter(|v| !v.is_empty()) {
            Some(v) if runtime_version.is_empty() => {
                // Checked like an id written whole: `python` + `3.11`, `nodejs` + `20.x`.
                let id = runtime.id(&v);
                runtime_version = model::Runtime::parse_id(&id)
                    .map_err(|_| {
                        ApiError::invalid(format!(
                            "runtime_version: `{v}` is not a version of {runtime}"
                        ))
                    })?
                    .1;
            }
            Some(v) if v != runtime_version => {
                return Err(ApiError::invalid(format!(
                    "runtime_version: `{v}` but runtime `{}` says {runtime_version}",
                    self.runtime
                )));
            }
            _ => {}
        }
        let d = FunctionSpec::new(&name, runtime, &self.handler, &self.code_sha256);
        Ok(FunctionSpec {
            build: self.build.unwrap_or(d.build),
            runtime_version,
            deps_sha256: self.deps_sha256.unwrap_or_default(),
            layers: self.layers.unwrap_or_default(),
            conventions: self.conventions.unwrap_or_default(),
            memory_mb: self.memory_mb.unwrap_or(d.memory_mb),
            timeout_ms: self.timeout_ms.unwrap_or(d.timeout_ms),
            env: self.env,
            description: self.description,
            kind: self.kind.unwrap_or(d.kind),
            command: self.command,
            url: self.url,
            triggers: self.triggers,
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            min_instances: self.min_instances.unwrap_or(d.min_instances),
            max_instances: self.max_instances.unwrap_or(d.max_instances),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(d.idle_timeout_ms),
            keep_alive_max_ms: self.keep_alive_max_ms.unwrap_or(d.keep_alive_max_ms),
            queue_timeout_ms: self.queue_timeout_ms.unwrap_or(d.queue_timeout_ms),
            initializer: self.initializer,
            initializer_timeout_ms: self
                .initializer_timeout_ms
                .unwrap_or(d.initializer_timeout_ms),
            pre_stop: self.pre_stop,
            pre_stop_timeout_ms: self.pre_stop_timeout_ms.unwrap_or(d.pre_stop_timeout_ms),
            network: self.network.unwrap_or(d.network),
            ephemeral_storage_mb: self.ephemeral_storage_mb.unwrap_or(d.ephemeral_storage_mb),
            cpu_millicores: self.cpu_millicores.unwrap_or(d.cpu_millicores),
            max_retries: self.max_retries.unwrap_or(d.max_retries),
            max_event_age_ms: self.max_event_age_ms.unwrap_or(d.max_event_age_ms),
            on_success: self.on_success,
            on_failure: self.on_failure,
            ..d
        })
    }
}

/// A stored function: its complete configuration (every default filled in) and what the
/// store adds.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionView {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub spec: FunctionSpec,
    /// Increases by one on every change.
    pub revision: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl From<Function> for FunctionView {
    fn from(f: Function) -> Self {
        FunctionView {
            spec: f.spec.redacted(),
            revision: f.revision,
            created_at_ms: f.created_at_ms,
            updated_at_ms: f.updated_at_ms,
        }
    }
}

/// `GET /v1/functions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionView>,
}

/// An accepted code archive.
#[derive(Debug, Serialize, ToSchema)]
pub struct CodeView {
    pub code_sha256: String,
    pub size_bytes: u64,
    pub files: u64,
    pub unpacked_bytes: u64,
}

/// One log line of an invocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogLineView {
    pub time_ms: i64,
    /// `stdout`, `stderr`, or a logger level.
    pub stream: String,
    pub message: String,
}

/// A function's own failure, in the Lambda shape.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionErrorView {
    pub error_type: String,
    pub error_message: String,
    pub stack_trace: Vec<String>,
}

/// A recent invocation on this node.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvocationView {
    pub request_id: String,
    pub function: String,
    /// `$LATEST` or the number of the version that ran.
    pub version: String,
    /// `succeeded` or `failed`.
    pub status: &'static str,
    pub error: Option<FunctionErrorView>,
    pub cold_start: bool,
    pub init_ms: Option<f64>,
    pub duration_ms: f64,
    pub instance_id: u64,
    pub started_at_ms: i64,
    pub logs: Vec<LogLineView>,
    /// Lines dropped because the invocation's log limit was reached.
    pub logs_dropped: u64,
    /// Where the time went: queue, and on a cold start sandbox, code and initializer.
    pub timings: TimingsView,
    /// The call's W3C `traceparent` (its span, in the caller's trace when it sent one).
    pub traceparent: String,
}

/// Milliseconds spent in each phase of an invocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimingsView {
    pub queue_ms: f64,
    pub sandbox_ms: f64,
    pub code_ms: f64,
    pub initializer_ms: f64,
    pub handler_ms: f64,
}

impl From<&InvocationRecord> for InvocationView {
    fn from(r: &InvocationRecord) -> Self {
        InvocationView {
            request_id: r.request_id.clone(),
            function: r.function.clone(),
            version: r.version.clone(),
            status: if r.error.is_some() {
                "failed"
            } else {
                "succeeded"
            },
            error: r.error.as_ref().map(|e| FunctionErrorView {
                error_type: e.error_type.clone(),
                error_message: e.error_message.clone(),
                stack_trace: e.stack_trace.clone(),
            }),
            cold_start: r.cold_start,
            init_ms: r.init_ms,
            duration_ms: r.duration_ms,
            instance_id: r.instance_id,
            started_at_ms: r.started_at_ms,
            traceparent: r.trace.traceparent.clone(),
            logs: r
                .logs
                .lines
                .iter()
                .map(|l| LogLineView {
                    time_ms: l.time_ms,
                    stream: l.stream.clone(),
                    message: l.message.clone(),
                })
                .collect(),
            logs_dropped: r.logs.dropped,
            timings: TimingsView {
                queue_ms: r.timings.queue_ms,
                sandbox_ms: r.timings.sandbox_ms,
                code_ms: r.timings.code_ms,
                initializer_ms: r.timings.initializer_ms,
                handler_ms: r.timings.handler_ms,
            },
        }
    }
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    /// What the key is for, e.g. the client that uses it.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// An AWS access key (id and secret) for the Lambda API, signed with SigV4, instead
    /// of an invoke key for routes.
    #[serde(default)]
    pub aws: bool,
    /// An access key's scope: `admin` (every operation, the default) or `invoke`.
    #[serde(default)]
    #[schema(pattern = "^(admin|invoke)$")]
    pub scope: Option<String>,
}

/// A key as listed: never the key or secret itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// The invoke key's id, or the access key id.
    pub id: String,
    pub name: String,
    /// `invoke` (routes with `auth: key`) or `aws` (the Lambda API).
    pub kind: &'static str,
    /// An access key's scope: `admin` or `invoke`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub created_at_ms: i64,
}

/// A new key: the only time the key or secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub created_at_ms: i64,
    /// An invoke key: send it in the `x-nimbus-key` header. It cannot be shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// An access key: its id and secret, for `aws configure` or boto3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// `GET /v1/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// The answer to an asynchronous submission (202).
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    pub request_id: String,
    /// An earlier submission with the same idempotency key is this one.
    pub duplicate: bool,
}

/// An asynchronous invocation and where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct AsyncInvocationView {
    pub request_id: String,
    pub function: String,
    /// Always `async`.
    pub invocation_type: &'static str,
    /// queued, running, retrying, succeeded, failed, expired or dead_lettered.
    pub status: &'static str,
    pub attempts: u32,
    /// Attempts in which the function failed.
    pub function_errors: u32,
    pub enqueued_at_ms: i64,
    pub updated_at_ms: i64,
    /// When the next attempt is due, while retrying.
    pub next_attempt_at_ms: Option<i64>,
    pub version: Option<String>,
    /// The function's result, once it succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The last failure (`errorType`, `errorMessage`).
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    /// The event as submitted.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The last attempt, with its logs, when it ran on this node recently.
    pub last_attempt: Option<InvocationView>,
}

impl AsyncInvocationView {
    pub fn new(a: store::AsyncRecord, last_attempt: Option<InvocationView>) -> Self {
        let parse = |b: &[u8]| {
            serde_json::from_slice(b).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
            })
        };
        let succeeded = a.status == store::AsyncStatus::Succeeded;
        let outcome = a.result.as_deref().map(parse);
        AsyncInvocationView {
            request_id: a.id,
            function: a.function,
            invocation_type: "async",
            status: a.status.as_str(),
            attempts: a.attempts,
            function_errors: a.function_errors,
            enqueued_at_ms: a.enqueued_at_ms,
            updated_at_ms: a.updated_at_ms,
            next_attempt_at_ms: (a.status == store::AsyncStatus::Retrying)
                .then_some(a.next_attempt_at_ms),
            version: a.version,
            result: if succeeded { outcome.clone() } else { None },
            error: if succeeded { None } else { outcome },
            payload: parse(&a.payload),
            last_attempt,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DlqQuery {
    /// Only this function's dead letters.
    pub function: Option<String>,
    /// At most this many, oldest first (default 100, at most 1,000).
    #[param(value_type = Option<u64>, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
}

/// Body of `POST /v1/dlq/redrive`. Parsed as one struct, not as `RedriveBody`, so that a
/// body with neither field or both is answered with a message naming them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveInput {
    pub ids: Option<Vec<String>>,
    pub function: Option<String>,
}

/// The schema of `RedriveInput`: the dead letters by id, or all of one function's. Written
/// out because the derive gives an untagged enum's variants no `additionalProperties: false`.
pub struct RedriveBody;

impl utoipa::PartialSchema for RedriveBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let only = |field: &str, schema: utoipa::openapi::schema::Schema| {
            ObjectBuilder::new()
                .property(field, schema)
                .required(field)
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ))
                .build()
        };
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let one_of: utoipa::openapi::schema::Schema = OneOfBuilder::new()
            .item(only(
                "ids",
                ArrayBuilder::new().items(string()).build().into(),
            ))
            .item(only(
                "function",
                string()
                    .pattern(Some("^[A-Za-z][A-Za-z0-9_-]{0,63}$"))
                    .build()
                    .into(),
            ))
            .build()
            .into();
        one_of.into()
    }
}

impl ToSchema for RedriveBody {}

/// The schema of an event sent to the invoke API: any bytes.
pub struct EventBytes;

impl utoipa::PartialSchema for EventBytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for EventBytes {}

/// The schema of a JSON event: any JSON value.
pub struct AnyJson;

impl utoipa::PartialSchema for AnyJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .into()
    }
}

impl ToSchema for AnyJson {}

/// How a deploy is checked.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeployQuery {
    /// Load the handler once in a fresh instance before the function changes, so that a
    /// missing module or handler or a syntax error fails the deploy (default true).
    #[serde(default = "yes")]
    pub check: bool,
}

fn yes() -> bool {
    true
}

/// Body of `POST /v1/builds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildInput {
    #[schema(
        pattern = "^(python3(\\.[0-9]{1,2})?|nodejs([0-9]{1,2}\\.x)?|custom|provided(\\.al2|\\.al2023)?)$"
    )]
    pub runtime: String,
    /// The uploaded code whose declared dependencies to install.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub code_sha256: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct BuildQuery {
    /// Stream the build's output as it comes (`application/x-ndjson`: `{"line": ...}`
    /// objects, then the result, or `{"code", "message"}` when it failed).
    #[serde(default)]
    pub follow: bool,
}

/// What a build made: `built` now, `cached` from before, or `none` when the code declares
/// no dependencies; `deps_sha256` goes in the function's spec.
#[derive(Debug, Serialize, ToSchema)]
pub struct BuildView {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deps_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl From<platform::DepsOutcome> for BuildView {
    fn from(o: platform::DepsOutcome) -> Self {
        match o {
            platform::DepsOutcome::Nothing => BuildView {
                status: "none".into(),
                deps_sha256: None,
                duration_ms: None,
            },
            platform::DepsOutcome::Built {
                deps_sha256,
                duration_ms,
            } => BuildView {
                status: "built".into(),
                deps_sha256: Some(deps_sha256),
                duration_ms: Some(duration_ms),
            },
            platform::DepsOutcome::Cached { deps_sha256 } => BuildView {
                status: "cached".into(),
                deps_sha256: Some(deps_sha256),
                duration_ms: None,
            },
        }
    }
}

/// What `GET /v1/invocations/{request_id}` answers: an asynchronous invocation, or a recent
/// synchronous one.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum InvocationAnswer {
    Async(Box<AsyncInvocationView>),
    Sync(Box<InvocationView>),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RedriveResult {
    pub redriven: u64,
}
