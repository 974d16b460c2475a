//! `ChangeFeed` on PostgreSQL: triggers number every change of cached configuration in
//! commit order (migration `0006_changes.sql`) and `NOTIFY` it; each node LISTENs on a
//! connection of its own and reads what came after the last change it saw.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgListener;
use store::{Change, ChangeFeed, ChangesAfter, StoreError};
use tokio::sync::Notify;

use crate::PgStore;

/// The channel the triggers notify on.
const CHANNEL: &str = "nimbus_changes";

/// How long the listener waits before connecting again after a failure, at most.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);

/// A node's view of the feed: the pool for reads, and a listening connection that wakes
/// `changed`.
pub struct PgChangeFeed {
    store: PgStore,
    wake: Arc<Notify>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgChangeFeed {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Starts listening for changes on a connection of its own (not counted in the pool's).
    pub async fn change_feed(&self) -> Result<PgChangeFeed, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(listen(listener, wake.clone()));
        Ok(PgChangeFeed {
            store: self.clone(),
            wake,
            listener: task,
        })
    }
}

/// Wakes the feed's reader on every notification, and after every reconnection: what was
/// notified while the connection was down is lost, and only a read finds it.
async fn listen(mut listener: PgListener, wake: Arc<Notify>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => {
                delay = Duration::from_millis(100);
                wake.notify_one();
            }
            // The connection was lost; the next `try_recv` connects again and listens.
            Ok(None) => {
                tracing::warn!("the change feed's connection was lost; reconnecting");
                wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "the change feed cannot listen; trying again");
                wake.notify_one();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_DELAY_MAX);
            }
        }
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn latest_change(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT seq FROM change_counter WHERE id = 1")
            .fetch_one(&self.store.pool)
            .await?;
        Ok(row.try_get("seq")?)
    }

    async fn changes_after(&self, after: i64, limit: usize) -> Result<ChangesAfter, StoreError> {
        let mut tx = self.store.pool.begin().await?;
        // One snapshot for both reads, so a purge between them cannot hide a gap.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let counter = sqlx::query("SELECT seq, purged_through FROM change_counter WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let (latest, purged): (i64, i64) =
            (counter.try_get("seq")?, counter.try_get("purged_through")?);
        if after < purged {
            return Ok(ChangesAfter::Gap { latest });
        }
        let rows =
            sqlx::query("SELECT seq, kind, name FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let changes = rows
            .iter()
            .map(|r| {
                Ok(Change {
                    seq: r.try_get("seq")?,
                    kind: r.try_get("kind")?,
                    name: r.try_get("name")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(ChangesAfter::Changes(changes))
    }

    async fn changed(&self) {
        self.wake.notified().await;
    }

    async fn purge_changes(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.store.pool.begin().await?;
        // The counter row first: purges and changes take turns on it.
        sqlx::query("SELECT 1 FROM change_counter WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM changes WHERE at_ms < $1 RETURNING seq")
            .bind(before_ms)
            .fetch_all(&mut *tx)
            .await?;
        let newest = gone
            .iter()
            .map(|r| r.try_get::<i64, _>("seq"))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .max();
        if let Some(newest) = newest {
            sqlx::query(
                "UPDATE change_counter SET purged_through = GREATEST(purged_through, $1)
                 WHERE id = 1",
            )
            .bind(newest)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(gone.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use store::{ChangeFeed, ChangesAfter, MetaStore};

    use crate::testing::fresh;

    fn kinds(after: ChangesAfter) -> Vec<(String, String)> {
        match after {
            ChangesAfter::Changes(c) => c.into_iter().map(|c| (c.kind, c.name)).collect(),
            ChangesAfter::Gap { .. } => panic!("a gap"),
        }
    }

    /// A write through one pool wakes another pool's feed, which reads it in order; a
    /// timer's progress is no change, its pause is.
    #[tokio::test]
    async fn writes_on_one_node_reach_another_in_commit_order() {
        let mut db = fresh().await;
        let other = db.another().await;
        let feed = other.change_feed().await.unwrap();
        assert_eq!(feed.latest_change().await.unwrap(), 0);
        let spec = store::testkit::meta::spec("hello", "main.h");
        db.store
            .put_function(&spec, store::PutMode::Upsert, 1)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), feed.changed())
            .await
            .expect("a notification");
        db.store.publish_version("hello", "", 2).await.unwrap();
        db.store
            .timer_progress(&[store::TimerProgress {
                function: "hello".into(),
                timer: "t".into(),
                scheduled_ms: 1,
                now_ms: 1,
                request_id: None,
                error: None,
                skipped: false,
            }])
            .await
            .unwrap();
        db.store
            .set_timer_paused("hello", "t", true, 3)
            .await
            .unwrap();
        db.store.delete_function("hello").await.unwrap();
        let all = kinds(feed.changes_after(0, 100).await.unwrap());
        let f = |k: &str| (k.to_string(), "hello".to_string());
        // The deploy, then the publish (a version and the function's last number), the
        // pause, and the delete (versions and the function); the progress is not there.
        assert_eq!(all[0], f("function"));
        let mut publish = all[1..3].to_vec();
        publish.sort();
        assert_eq!(publish, [f("function"), f("version")]);
        assert_eq!(all[3], f("pause"));
        let mut delete = all[4..].to_vec();
        delete.sort();
        assert_eq!(delete, [f("function"), f("version")], "{all:?}");
        let latest = feed.latest_change().await.unwrap();
        assert_eq!(
            kinds(feed.changes_after(latest, 100).await.unwrap()),
            Vec::<(String, String)>::new()
        );
        drop(feed);
        db.drop_now().await;
    }

    /// A node that asks for changes older than what was purged is told to reload.
    #[tokio::test]
    async fn a_purge_past_what_a_node_saw_is_a_gap() {
        let db = fresh().await;
        let feed = db.store.change_feed().await.unwrap();
        let spec = store::testkit::meta::spec("a", "main.h");
        db.store
            .put_function(&spec, store::PutMode::Upsert, 1)
            .await
            .unwrap();
        let seen = feed.latest_change().await.unwrap();
        db.store
            .put_function(
                &store::testkit::meta::spec("b", "main.h"),
                store::PutMode::Upsert,
                1,
            )
            .await
            .unwrap();
        assert_eq!(feed.purge_changes(i64::MAX).await.unwrap(), 2);
        let latest = feed.latest_change().await.unwrap();
        assert_eq!(
            feed.changes_after(seen, 10).await.unwrap(),
            ChangesAfter::Gap { latest }
        );
        assert_eq!(
            feed.changes_after(latest, 10).await.unwrap(),
            ChangesAfter::Changes(vec![])
        );
        drop(feed);
        db.drop_now().await;
    }

    /// A listening connection killed by the server comes back, and says so by waking the
    /// reader (what was notified meanwhile is found by reading).
    #[tokio::test]
    async fn a_lost_listening_connection_wakes_the_reader_and_listens_again() {
        let db = fresh().await;
        let feed = db.store.change_feed().await.unwrap();
        // Drain any wake-up from before.
        let _ = tokio::time::timeout(Duration::from_millis(50), feed.changed()).await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()
               AND backend_type = 'client backend'
               AND current_setting('search_path') IS NOT NULL",
        )
        .execute(&db.store.pool)
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), feed.changed())
            .await
            .expect("woken by the reconnection");
        // Listening again: a new change wakes it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = tokio::time::timeout(Duration::from_millis(50), feed.changed()).await;
        db.store
            .put_function(
                &store::testkit::meta::spec("c", "main.h"),
                store::PutMode::Upsert,
                1,
            )
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), feed.changed())
            .await
            .expect("a notification after reconnecting");
        drop(feed);
        db.drop_now().await;
    }
}
