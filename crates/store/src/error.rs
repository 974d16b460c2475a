//! The store's error type.
//!
//! `StoreError` is the error of every store trait, so it names no backend's types: the
//! SQLite backend today and the PostgreSQL, NATS and S3 backends next all report through
//! the same variants. Driver errors are turned into `Database` (with a `DatabaseFault` kind
//! that callers can act on) or `Migration` here, by conversions the backends use with `?`.
//!
//! A full disk is one error whatever filled it, `StorageFull`: SQLite's SQLITE_FULL and a
//! filesystem's ENOSPC or EDQUOT (blobs, unpacked code) alike, because the answer is the same
//! (an operator must free space; the client's request was fine).

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
    /// The archive was refused (the client's fault). A disk that filled up while it was
    /// unpacked is `StorageFull` instead.
    #[error(transparent)]
    Archive(ArchiveError),
    /// The database failed a query or a connection. The driver's own error is kept only as
    /// text, so that no driver type becomes part of the store's interface.
    #[error("database ({fault}): {message}")]
    Database {
        fault: DatabaseFault,
        message: String,
    },
    /// The database's schema could not be brought up to date when it was opened (for
    /// example, it was written by a newer version of Nimbus).
    #[error("database migration: {0}")]
    Migration(String),
    /// The disk (or the database's size limit, or a quota) is full; writes fail until space
    /// is freed, and work again without a restart once it is.
    #[error("storage is full: {context}")]
    StorageFull { context: String },
    /// What was stored is not what it should be: a value that does not decode, a blob id
    /// that is not one, a code archive whose bytes do not hash to its address (S3).
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// A filesystem operation failed, or a request to a remote store (S3: its client's
    /// error is kept inside a `std::io::Error`, so no client type is named here).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What kind of database fault a `StoreError::Database` is, as far as a caller can act on
/// it: a busy database may work again in a moment. (A full disk is `StoreError::StorageFull`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatabaseFault {
    /// The database was locked or busy past the busy timeout, or no connection was free in
    /// time; retrying later may succeed.
    Busy,
    /// Any other fault: IO, a broken connection, a query the database rejected.
    Other,
}

impl std::fmt::Display for DatabaseFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatabaseFault::Busy => "busy",
            DatabaseFault::Other => "fault",
        })
    }
}

impl StoreError {
    /// The error of a filesystem operation described by `context`; a full disk becomes
    /// `StorageFull`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| {
            if is_storage_full(&source) {
                StoreError::StorageFull {
                    context: format!("{context}: {source}"),
                }
            } else {
                StoreError::Io { context, source }
            }
        }
    }

    /// Whether this is a full disk: the caller answers 507 `storage_full`.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, StoreError::StorageFull { .. })
    }

    /// The kind of a database fault; none for every other error.
    pub fn database_fault(&self) -> Option<DatabaseFault> {
        match self {
            StoreError::Database { fault, .. } => Some(*fault),
            _ => None,
        }
    }

    fn database(fault: DatabaseFault, e: impl std::fmt::Display) -> StoreError {
        StoreError::Database {
            fault,
            message: e.to_string(),
        }
    }
}

impl From<ArchiveError> for StoreError {
    fn from(e: ArchiveError) -> StoreError {
        match e {
            ArchiveError::Io(io) if is_storage_full(&io) => StoreError::StorageFull {
                context: format!("unpacking an archive: {io}"),
            },
            e => StoreError::Archive(e),
        }
    }
}

// The conversions from sqlx's errors. They are trait impls, so Rust makes them as visible
// as the types they join; no variant or signature of the store names a sqlx type, and a
// backend without sqlx adds its own conversions next to these.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        match &e {
            sqlx::Error::Database(db) if is_sqlite_full(db.as_ref()) => StoreError::StorageFull {
                context: e.to_string(),
            },
            sqlx::Error::Database(db) => StoreError::database(sqlite_fault(db.as_ref()), &e),
            // Every pooled connection stayed busy for the acquire timeout.
            sqlx::Error::PoolTimedOut => StoreError::database(DatabaseFault::Busy, &e),
            sqlx::Error::Io(io) if is_storage_full(io) => StoreError::StorageFull {
                context: e.to_string(),
            },
            // A value that was stored but does not decode is a corrupt record, not a fault of
            // the database.
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Corrupt(e.to_string())
            }
            sqlx::Error::Migrate(m) => StoreError::Migration(m.to_string()),
            _ => StoreError::database(DatabaseFault::Other, &e),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        StoreError::Migration(e.to_string())
    }
}

/// Whether a filesystem error means the disk is full: no space (ENOSPC) or the quota is
/// spent (EDQUOT).
pub(crate) fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// SQLite's primary result code (the low byte of the extended code sqlx reports); none for
/// errors of other databases.
fn sqlite_code(db: &dyn sqlx::error::DatabaseError) -> Option<i32> {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    Some(db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff)
}

/// SQLITE_FULL (13): the disk is full (SQLite reports ENOSPC on its files so).
fn is_sqlite_full(db: &dyn sqlx::error::DatabaseError) -> bool {
    sqlite_code(db) == Some(13)
}

/// Classifies an error SQLite returned: SQLITE_BUSY (5) and SQLITE_LOCKED (6) are
/// contention. Errors of other databases are `Other` until their backends classify them.
fn sqlite_fault(db: &dyn sqlx::error::DatabaseError) -> DatabaseFault {
    match sqlite_code(db) {
        Some(5 | 6) => DatabaseFault::Busy,
        _ => DatabaseFault::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_locked_database_is_busy_and_other_faults_are_not() {
        use sqlx::Connection;
        use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::ZERO);
        let mut a = SqliteConnection::connect_with(&options).await.unwrap();
        let mut b = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("CREATE TABLE t (x)")
            .execute(&mut a)
            .await
            .unwrap();
        // `a` holds the write lock, so `b`'s write fails at once with SQLITE_BUSY.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut a)
            .await
            .unwrap();
        let busy: StoreError = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut b)
            .await
            .unwrap_err()
            .into();
        assert_eq!(busy.database_fault(), Some(DatabaseFault::Busy), "{busy}");
        assert!(busy.to_string().contains("locked"), "{busy}");

        let bad: StoreError = sqlx::query("SELECT * FROM nowhere")
            .execute(&mut a)
            .await
            .unwrap_err()
            .into();
        assert_eq!(bad.database_fault(), Some(DatabaseFault::Other), "{bad}");
        assert!(bad.to_string().contains("nowhere"), "{bad}");

        let missing: StoreError = sqlx::Error::PoolTimedOut.into();
        assert_eq!(missing.database_fault(), Some(DatabaseFault::Busy));
        assert_eq!(StoreError::NotFound("f".into()).database_fault(), None);

        let enospc = std::io::Error::from_raw_os_error(28);
        let full = StoreError::io("writing x")(enospc);
        assert!(full.is_storage_full(), "{full}");
        assert!(
            full.to_string().starts_with("storage is full: writing x"),
            "{full}"
        );
        let edquot = std::io::Error::from_raw_os_error(122);
        assert!(StoreError::io("writing x")(edquot).is_storage_full());
        let denied = std::io::Error::from_raw_os_error(13);
        assert!(!StoreError::io("writing x")(denied).is_storage_full());
    }
}
