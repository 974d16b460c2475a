//! The API's error: a stable code from `model::ErrorCode` plus a message that helps.
//!
//! Internal faults are logged once here, with their cause, and the client gets the code and
//! a plain message, never a server stack trace.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::ErrorCode;
use sandbox::SandboxError;
use serde::Serialize;
use store::StoreError;

/// A request that failed on the platform's side or because of the request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Sent as `Retry-After` when set.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// The JSON body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `function_not_found`.
    pub code: &'static str,
    /// What went wrong and, where possible, what to do.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            code: self.code.as_str(),
            message: self.message,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        if self.code == ErrorCode::Throttled {
            // Clients written for Lambda look for the error type, not our code.
            response.headers_mut().insert(
                crate::routes::headers::ERROR_TYPE,
                axum::http::HeaderValue::from_static("Throttled"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(name) => ApiError::new(
                ErrorCode::FunctionNotFound,
                format!("function `{name}` does not exist; `nimbus ls` lists the deployed ones"),
            ),
            StoreError::Conflict(name) => ApiError::new(
                ErrorCode::FunctionExists,
                format!(
                    "function `{name}` already exists; update it with PUT /v1/functions/{name}"
                ),
            ),
            StoreError::BlobNotFound(sha) => ApiError::new(
                ErrorCode::CodeNotFound,
                format!(
                    "no code archive with sha256 {sha} was uploaded; POST it to /v1/code first"
                ),
            ),
            StoreError::Archive(e) => ApiError::new(ErrorCode::InvalidArchive, e.to_string()),
            StoreError::VersionNotFound(f, v) => ApiError::new(
                ErrorCode::VersionNotFound,
                format!("function `{f}` has no version {v}; `nimbus versions {f}` lists them"),
            ),
            StoreError::AliasNotFound(f, a) => ApiError::new(
                ErrorCode::AliasNotFound,
                format!("function `{f}` has no alias `{a}`; `nimbus alias ls {f}` lists them"),
            ),
            e @ StoreError::VersionInUse(..) => ApiError::new(ErrorCode::InUse, e.to_string()),
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::new(
                    ErrorCode::StorageError,
                    "the metadata or code store failed; the server log has details",
                )
            }
        }
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        if let SandboxError::Throttled { retry_after_s, .. } = &e {
            let retry = *retry_after_s;
            return ApiError {
                retry_after_s: Some(retry),
                ..ApiError::new(ErrorCode::Throttled, e.to_string())
            };
        }
        let code = match &e {
            SandboxError::RuntimeUnavailable(_) => ErrorCode::RuntimeUnavailable,
            SandboxError::NodeFull { .. } | SandboxError::ShuttingDown => {
                ErrorCode::CapacityExhausted
            }
            SandboxError::Throttled { .. } => unreachable!("handled above"),
            SandboxError::Spawn(_) => {
                tracing::error!(error = %e, "instance start failed");
                ErrorCode::InstanceStartFailed
            }
        };
        ApiError::new(code, e.to_string())
    }
}
