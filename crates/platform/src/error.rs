//! The core's error: a stable code from `model::ErrorCode` plus a message that helps.
//!
//! It knows no HTTP: a front door maps the code to its own answer (the `/v1` API and the
//! gateway through `model::ErrorCode::http_status`). Internal faults are logged once here,
//! with their cause; the message a caller gets is plain, never a server stack trace.

use model::ErrorCode;
use sandbox::SandboxError;
use store::StoreError;

/// An operation that failed on the platform's side or because of its input. A function's
/// own failure is never one of these: it is an invocation outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// How long a throttled caller should wait before retrying.
    pub retry_after_s: Option<u64>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// The input was wrong; the message says how.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidRequest, message)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(name) => Error::new(
                ErrorCode::FunctionNotFound,
                format!("function `{name}` does not exist; `nimbus ls` lists the deployed ones"),
            ),
            StoreError::Conflict(name) => Error::new(
                ErrorCode::FunctionExists,
                format!(
                    "function `{name}` already exists; update it with PUT /v1/functions/{name}"
                ),
            ),
            StoreError::BlobNotFound(sha) => Error::new(
                ErrorCode::CodeNotFound,
                format!(
                    "no code archive with sha256 {sha} was uploaded; POST it to /v1/code first"
                ),
            ),
            StoreError::Archive(e) => Error::new(ErrorCode::InvalidArchive, e.to_string()),
            StoreError::VersionNotFound(f, v) => Error::new(
                ErrorCode::VersionNotFound,
                format!("function `{f}` has no version {v}; `nimbus versions {f}` lists them"),
            ),
            StoreError::AliasNotFound(f, a) => Error::new(
                ErrorCode::AliasNotFound,
                format!("function `{f}` has no alias `{a}`; `nimbus alias ls {f}` lists them"),
            ),
            e @ StoreError::VersionInUse(..) => Error::new(ErrorCode::InUse, e.to_string()),
            StoreError::StorageFull { context } => {
                tracing::error!(%context, "the disk is full");
                Error::new(
                    ErrorCode::StorageFull,
                    "the server's disk is full; nothing was stored. Retry once space is freed",
                )
            }
            StoreError::KeyNotFound(id) => Error::new(
                ErrorCode::KeyNotFound,
                format!("invoke key `{id}` does not exist; `nimbus keys ls` lists them"),
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                Error::new(
                    ErrorCode::StorageError,
                    "the metadata or code store failed; the server log has details",
                )
            }
        }
    }
}

impl From<SandboxError> for Error {
    fn from(e: SandboxError) -> Self {
        let code = match &e {
            SandboxError::Throttled { retry_after_s, .. } => {
                return Error {
                    retry_after_s: Some(*retry_after_s),
                    ..Error::new(ErrorCode::Throttled, e.to_string())
                };
            }
            SandboxError::RuntimeUnavailable(_) => ErrorCode::RuntimeUnavailable,
            SandboxError::NodeFull { .. } | SandboxError::ShuttingDown => {
                ErrorCode::CapacityExhausted
            }
            SandboxError::Spawn(_) => {
                tracing::error!(error = %e, "instance start failed");
                ErrorCode::InstanceStartFailed
            }
        };
        Error::new(code, e.to_string())
    }
}
