//! Errors in the Lambda API's shape: a status, the exception's name in
//! `x-amzn-ErrorType`, and `{"Type": "User", "message": …}`, which the AWS SDKs turn into
//! their exception classes (`ResourceNotFoundException`, …).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use model::ErrorCode;

#[derive(Debug)]
pub struct LambdaError {
    pub status: StatusCode,
    /// The exception's name, as Lambda's API reference lists it.
    pub kind: &'static str,
    pub message: String,
}

impl LambdaError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> LambdaError {
        LambdaError {
            status: StatusCode::from_u16(status).expect("a valid status"),
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> LambdaError {
        LambdaError::new(400, "InvalidParameterValueException", message)
    }

    pub fn not_found(message: impl Into<String>) -> LambdaError {
        LambdaError::new(404, "ResourceNotFoundException", message)
    }
}

/// The platform's error codes as Lambda's exceptions.
impl From<platform::Error> for LambdaError {
    fn from(e: platform::Error) -> LambdaError {
        let (status, kind) = match e.code {
            ErrorCode::FunctionNotFound
            | ErrorCode::VersionNotFound
            | ErrorCode::AliasNotFound
            | ErrorCode::KeyNotFound
            | ErrorCode::TriggerNotFound
            | ErrorCode::CodeNotFound => (404, "ResourceNotFoundException"),
            ErrorCode::FunctionExists | ErrorCode::InUse | ErrorCode::RouteConflict => {
                (409, "ResourceConflictException")
            }
            ErrorCode::InvalidArchive => (400, "InvalidParameterValueException"),
            ErrorCode::BuildFailed | ErrorCode::HandlerFailed => {
                (400, "InvalidParameterValueException")
            }
            ErrorCode::PayloadTooLarge => (413, "RequestTooLargeException"),
            ErrorCode::UnsupportedMediaType => (415, "UnsupportedMediaTypeException"),
            ErrorCode::Throttled
            | ErrorCode::RateLimited
            | ErrorCode::QueueFull
            | ErrorCode::CapacityExhausted => (429, "TooManyRequestsException"),
            ErrorCode::StorageFull => (400, "CodeStorageExceededException"),
            ErrorCode::RuntimeUnavailable | ErrorCode::InstanceStartFailed => {
                (502, "ResourceNotReadyException")
            }
            ErrorCode::Unauthorized | ErrorCode::KeyRequired | ErrorCode::KeyInvalid => {
                (403, "AccessDeniedException")
            }
            ErrorCode::RequestTimeout => (408, "RequestTimeoutException"),
            ErrorCode::InvalidRequest => (400, "InvalidParameterValueException"),
            _ => (500, "ServiceException"),
        };
        LambdaError::new(status, kind, e.message)
    }
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "Type": "User", "message": self.message });
        let mut r = (self.status, axum::Json(body)).into_response();
        r.headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(self.kind));
        if self.kind == "TooManyRequestsException" {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        r
    }
}
