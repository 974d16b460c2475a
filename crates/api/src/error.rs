//! The API's error: the core's error (a stable code from `model::ErrorCode` plus a message
//! that helps) as an HTTP answer: the code's status and a `{code, message}` body.
//!
//! Internal faults are logged once where they are mapped (in the core), and the client
//! gets the code and a plain message, never a server stack trace.

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

impl From<platform::Error> for ApiError {
    fn from(e: platform::Error) -> Self {
        ApiError {
            code: e.code,
            message: e.message,
            retry_after_s: e.retry_after_s,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        platform::Error::from(e).into()
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        platform::Error::from(e).into()
    }
}
