//! The store's error type.
//!
//! `StoreError` is the error of every store trait, so it names no backend's types: the
//! SQLite backend today and the PostgreSQL, NATS and S3 backends next all report through
//! the same variants. Driver errors are turned into `Database` (with a `DatabaseFault` kind
//! that callers can act on) or `Migration` here, by conversions the backends use with `?`.

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
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What kind of database fault a `StoreError::Database` is, as far as a caller can act on
/// it: a busy database may work again in a moment, a full disk needs an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatabaseFault {
    /// The database was locked or busy past the busy timeout, or no connection was free in
    /// time; retrying later may succeed.
    Busy,
    /// The disk or the database's size limit is full; writes fail until space is freed.
    Full,
    /// Any other fault: IO, a broken connection, a query the database rejected.
    Other,
}

impl std::fmt::Display for DatabaseFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DatabaseFault::Busy => "busy",
            DatabaseFault::Full => "full",
            DatabaseFault::Other => "fault",
        })
    }
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
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

// The conversions from sqlx's errors. They are trait impls, so Rust makes them as visible
// as the types they join; no variant or signature of the store names a sqlx type, and a
// backend without sqlx adds its own conversions next to these.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        match &e {
            sqlx::Error::Database(db) => StoreError::database(sqlite_fault(db.as_ref()), &e),
            // Every pooled connection stayed busy for the acquire timeout.
            sqlx::Error::PoolTimedOut => StoreError::database(DatabaseFault::Busy, &e),
            sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                StoreError::database(DatabaseFault::Full, &e)
            }
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

/// Classifies an error SQLite returned by its primary result code (the low byte of the
/// extended code sqlx reports): SQLITE_BUSY (5) and SQLITE_LOCKED (6) are contention,
/// SQLITE_FULL (13) is a full disk. Errors of other databases are `Other` until their
/// backends classify them.
fn sqlite_fault(db: &dyn sqlx::error::DatabaseError) -> DatabaseFault {
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_none() {
        return DatabaseFault::Other;
    }
    let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
    match code & 0xff {
        5 | 6 => DatabaseFault::Busy,
        13 => DatabaseFault::Full,
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
    }
}
