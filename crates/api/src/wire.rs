//! The JSON shapes of the control API. Nothing outside this crate sees them.

use std::collections::BTreeMap;

use model::{Function, FunctionSpec, limits};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiError;
use crate::platform::InvocationRecord;

/// A function's configuration as sent by clients. Omitted optional fields take defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionInput {
    /// Required on `POST /v1/functions`; on `PUT` it may be omitted or must match the path.
    #[serde(default)]
    pub name: Option<String>,
    /// `python3` or `nodejs`.
    #[schema(example = "python3")]
    pub runtime: String,
    /// `module.function`, e.g. `main.handler`.
    #[schema(example = "main.handler")]
    pub handler: String,
    /// sha256 of a code archive uploaded with `POST /v1/code`.
    pub code_sha256: String,
    #[schema(minimum = 64, maximum = 10240, default = 128)]
    pub memory_mb: Option<u32>,
    #[schema(minimum = 1, maximum = 900000, default = 3000)]
    pub timeout_ms: Option<u32>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub description: String,
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
        let runtime = self
            .runtime
            .parse()
            .map_err(|e: String| ApiError::invalid(format!("runtime: {e}")))?;
        Ok(FunctionSpec {
            name,
            runtime,
            handler: self.handler,
            code_sha256: self.code_sha256,
            memory_mb: self.memory_mb.unwrap_or(limits::MEMORY_MB_DEFAULT),
            timeout_ms: self.timeout_ms.unwrap_or(limits::TIMEOUT_MS_DEFAULT),
            env: self.env,
            description: self.description,
        })
    }
}

/// A stored function.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionView {
    pub name: String,
    pub runtime: String,
    pub handler: String,
    pub code_sha256: String,
    pub memory_mb: u32,
    pub timeout_ms: u32,
    pub env: BTreeMap<String, String>,
    pub description: String,
    /// Increases by one on every change.
    pub revision: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl From<Function> for FunctionView {
    fn from(f: Function) -> Self {
        let s = f.spec;
        FunctionView {
            name: s.name,
            runtime: s.runtime.to_string(),
            handler: s.handler,
            code_sha256: s.code_sha256,
            memory_mb: s.memory_mb,
            timeout_ms: s.timeout_ms,
            env: s.env,
            description: s.description,
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
}

impl From<&InvocationRecord> for InvocationView {
    fn from(r: &InvocationRecord) -> Self {
        InvocationView {
            request_id: r.request_id.clone(),
            function: r.function.clone(),
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
        }
    }
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}
