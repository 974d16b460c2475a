//! The store's error type.

use crate::ArchiveError;

/// A failure of the store. `NotFound` and `Conflict` are answers, the rest are faults.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("function `{0}` does not exist")]
    NotFound(String),
    #[error("function `{0}` already exists")]
    Conflict(String),
    #[error("invoke key `{0}` does not exist")]
    KeyNotFound(String),
    #[error("function `{0}` has no version {1}")]
    VersionNotFound(String, u32),
    #[error("function `{0}` has no alias `{1}`")]
    AliasNotFound(String, String),
    #[error("version {1} of `{0}` is in use by {2}; move or delete that first")]
    VersionInUse(String, u32, String),
    #[error("code artifact {0} is not in the blob store")]
    BlobNotFound(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}
