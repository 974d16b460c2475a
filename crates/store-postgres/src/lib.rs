//! The cluster's backend for `store`'s traits: PostgreSQL, shared by every node.
//!
//! A crate of its own so the PostgreSQL driver is built only where it is used, and so the
//! embedded backend (`store::SqliteStore`) and this one are held to the same contract: the
//! tests here run `store::testkit`, the very functions the SQLite backend passes.
//!
//! Transactions run at PostgreSQL's default READ COMMITTED. Where a write depends on what
//! it read (a version number, an alias's versions), the transaction first locks the
//! function's row (`FOR UPDATE`), so two nodes writing the same function take turns, as
//! SQLite's single writer makes them (the object store locks a bucket's or an upload's row
//! alike, see `objects`); writes of many rows go in a fixed order, so two nodes never wait
//! on each other in a cycle.

mod changes;
mod cluster;
mod flows;
mod meta;
mod objects;
mod queue;

use std::time::Duration;

pub use changes::PgChangeFeed;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use store::StoreError;

/// Connections one node keeps to the database at most, by default (`--db-connections-max`).
/// A node's writes are short transactions; a few connections keep them flowing without
/// taking a large share of the server's `max_connections` (100 by default) when several
/// nodes share it.
pub const CONNECTIONS_MAX: u32 = 16;

/// How long a query waits for a free connection before failing as busy.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The backend: a pool on one PostgreSQL database, its schema migrated.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: PgPool,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, with libpq's
    /// query parameters such as `sslmode`) and applies the migrations this version has and
    /// the database has not, keeping at most `connections_max` connections open. Nodes
    /// starting together are safe: the migrator holds a lock.
    pub async fn connect(url: &str, connections_max: u32) -> Result<PgStore, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        Self::connect_with(options, connections_max).await
    }

    /// As `connect`, with options built by the caller (a schema on the search path, say).
    pub async fn connect_with(
        options: PgConnectOptions,
        connections_max: u32,
    ) -> Result<PgStore, StoreError> {
        // A pool retries a connection that fails until its acquire timeout and then says
        // only that it timed out; one plain connection first names the problem (refused,
        // bad password, no such database) at once.
        use sqlx::Connection;
        sqlx::PgConnection::connect_with(&options)
            .await?
            .close()
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(connections_max)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(PgStore { pool })
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fresh store per test: a schema of its own in the machine's PostgreSQL.

    use super::*;

    /// Tests running `store::testkit::$module`'s contract functions on PostgreSQL, each
    /// against a fresh schema of its own.
    macro_rules! contract {
        ($module:ident; $($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let db = $crate::testing::fresh().await;
                store::testkit::$module::$name(&db.store).await;
                db.drop_now().await;
            }
        )*};
    }
    pub(crate) use contract;

    /// The database the tests use; `.ci/run` starts the machine's PostgreSQL.
    fn url() -> String {
        std::env::var("NIMBUS_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// A store on a new, empty schema; dropped again by `Fresh::drop_now` (a failed test
    /// leaves its schema for inspection).
    pub(crate) async fn fresh() -> Fresh {
        let options: PgConnectOptions = url().parse().unwrap();
        let schema = format!("nimbus_test_{:016x}", rand_u64());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (.ci/run starts it)");
        // The name is ours (hex digits): nothing to escape.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        let options = options.options([("search_path", &schema)]);
        let store = PgStore::connect_with(options.clone(), 4).await.unwrap();
        Fresh {
            store,
            others: Vec::new(),
            options,
            admin,
            schema,
        }
    }

    pub(crate) struct Fresh {
        pub(crate) store: PgStore,
        /// Stores opened by `another`, closed with the schema.
        others: Vec<PgStore>,
        options: PgConnectOptions,
        admin: PgPool,
        schema: String,
    }

    impl Fresh {
        /// Another store on the same schema, with its own pool: a second node sharing the
        /// database, for tests of nodes racing.
        pub(crate) async fn another(&mut self) -> PgStore {
            let store = PgStore::connect_with(self.options.clone(), 4)
                .await
                .unwrap();
            self.others.push(store.clone());
            store
        }

        pub(crate) async fn drop_now(self) {
            self.store.pool.close().await;
            for other in &self.others {
                other.pool.close().await;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA {} CASCADE",
                self.schema
            )))
            .execute(&self.admin)
            .await
            .unwrap();
        }
    }

    fn rand_u64() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        h.finish()
    }
}
