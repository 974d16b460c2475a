//! The Redis streams source of queue triggers: a stream read through a consumer group
//! (`XREADGROUP`), each node a consumer of it, entries acknowledged with `XACK` once the
//! trigger settled them, and entries a dead consumer left pending claimed (`XAUTOCLAIM`).
//!
//! Redis keeps every entry a consumer read and did not acknowledge in the group's pending
//! list, under that consumer's name, for ever. Two reads bring them back: a consumer that
//! connects first reads its own pending entries (`XREADGROUP ... 0`: what this node held
//! when it died or lost the broker), and every consumer now and then claims entries
//! another consumer left idle too long (a node that is gone for good). A held entry is
//! touched (`XCLAIM ... JUSTID` resets its idle time) so that no one claims it from a
//! live node.

mod entry;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use model::queue::{QueueTrigger, redact_url};
use platform::queue::{Ack, Connector, Consumer, Message, SourceError, Subscription};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use tokio::time::Instant;

use entry::{Entry, autoclaim_reply, group_lag, map_entry, read_reply};

/// A pending entry idle longer than this is taken over from the consumer that holds it.
/// The trigger touches what it holds every 5 s, so only a consumer that stopped (a node
/// that died, a member name no node uses any more) lets an entry idle this long; a minute
/// leaves room for a node that is merely slow (a long GC-like stall, a busy machine)
/// without delaying a dead node's messages much.
const AUTOCLAIM_MIN_IDLE: Duration = Duration::from_secs(60);

/// How often the group's pending list is scanned for entries to claim (also at connect).
const AUTOCLAIM_EVERY: Duration = Duration::from_secs(15);

/// Entries claimed per `XAUTOCLAIM` at most (Redis scans ten times as many).
const AUTOCLAIM_COUNT: usize = 100;

/// Connecting to Redis that takes longer than this failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A command Redis has not answered within this (beyond a read's own block) failed: the
/// connection is taken for dead and the trigger connects again.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects queue triggers to Redis streams.
pub struct RedisConnector;

#[async_trait::async_trait]
impl Connector for RedisConnector {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn validate(&self, spec: &QueueTrigger) -> Result<(), String> {
        let Some(s) = &spec.redis else {
            return Ok(());
        };
        Client::open(s.url.as_str())
            .map(|_| ())
            .map_err(|e| format!("redis.url `{}`: {}", redact_url(&s.url), scrub(&e, &s.url)))
    }

    async fn connect(&self, sub: &Subscription<'_>) -> Result<Box<dyn Consumer>, SourceError> {
        let Some(s) = &sub.spec.redis else {
            return Err(SourceError::new("the trigger names no redis source"));
        };
        let shared = Arc::new(Shared {
            stream: s.stream.clone(),
            group: s.group.clone().unwrap_or_else(|| sub.group.clone()),
            member: sub.member.clone(),
            shown: redact_url(&s.url),
            url: s.url.clone(),
            conn: None,
        });
        let client = Client::open(s.url.as_str()).map_err(|e| shared.error("the URL", &e))?;
        let config = || {
            AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
        };
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config())
            .await
            .map_err(|e| shared.error("connect", &e))?;
        // The blocking read holds its connection for the block's length: it gets one of its
        // own, and its own deadline (the block plus `RESPONSE_TIMEOUT`) in `fetch`.
        let reader = client
            .get_multiplexed_async_connection_with_config(&config().set_response_timeout(None))
            .await
            .map_err(|e| shared.error("connect", &e))?;
        // A group made here starts at the stream's beginning (`0`), not its end (`$`): what
        // producers added before the trigger's first start (or while its group was gone)
        // is delivered rather than silently skipped. An existing group keeps its place.
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&shared.stream)
            .arg(&shared.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<Value>(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if is_code(&e, "BUSYGROUP") => {}
            Err(e) => return Err(shared.error("XGROUP CREATE", &e)),
        }
        let shared = Arc::new(Shared {
            conn: Some(conn),
            ..Arc::unwrap_or_clone(shared)
        });
        Ok(Box::new(RedisConsumer {
            shared,
            reader,
            pending_from: Some("0".to_string()),
            autoclaim_at: Instant::now(),
            autoclaim_cursor: "0-0".to_string(),
            held: Arc::new(Mutex::new(HashSet::new())),
        }))
    }
}

/// What a consumer and its messages' acknowledgements share.
#[derive(Clone)]
struct Shared {
    stream: String,
    group: String,
    member: String,
    /// The URL with its password redacted, for errors.
    shown: String,
    url: String,
    /// For every command but the blocking read (acknowledgements, claims, lag).
    conn: Option<MultiplexedConnection>,
}

impl Shared {
    fn error(&self, what: &str, e: &RedisError) -> SourceError {
        SourceError::new(format!(
            "redis {} (stream {}, group {}): {what}: {}",
            self.shown,
            self.stream,
            self.group,
            scrub(e, &self.url)
        ))
    }

    fn conn(&self) -> Result<MultiplexedConnection, SourceError> {
        self.conn
            .clone()
            .ok_or_else(|| SourceError::new("the redis consumer is not connected"))
    }

    async fn query(&self, what: &str, cmd: &redis::Cmd) -> Result<Value, SourceError> {
        cmd.query_async::<Value>(&mut self.conn()?)
            .await
            .map_err(|e| self.error(what, &e))
    }
}

/// Whether a Redis error is the server's `code` (`BUSYGROUP`, `NOGROUP`).
fn is_code(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code) || e.to_string().contains(code)
}

/// A Redis error's text without the URL's password, should the client ever echo it.
fn scrub(e: &impl std::fmt::Display, url: &str) -> String {
    let text = e.to_string();
    match password(url) {
        Some(p) if !p.is_empty() => text.replace(p, "****"),
        _ => text,
    }
}

/// The password of `redis://[user]:password@host`.
fn password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let user = authority.rsplit_once('@')?.0;
    Some(user.split_once(':').map_or(user, |(_, p)| p))
}

/// One node's consumer of the group.
struct RedisConsumer {
    shared: Arc<Shared>,
    /// For the blocking `XREADGROUP ... >` only.
    reader: MultiplexedConnection,
    /// Where the read of this consumer's own pending entries goes on from; `None` once it
    /// reached their end (then only new entries are read).
    pending_from: Option<String>,
    /// When the pending list is next scanned for entries to claim.
    autoclaim_at: Instant,
    autoclaim_cursor: String,
    /// The ids this consumer handed over and the trigger still holds: a claim or a pending
    /// read that brings one of them again (a batch running longer than the claim's idle
    /// time, a pending read after a claim) does not hand it over twice.
    held: Arc<Mutex<HashSet<String>>>,
}

#[async_trait::async_trait]
impl Consumer for RedisConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>, SourceError> {
        let max = max.max(1);
        // First what this consumer held before (its pending entries), a page a fetch.
        if let Some(from) = self.pending_from.clone() {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&self.shared.group)
                .arg(&self.shared.member)
                .arg("COUNT")
                .arg(max)
                .arg("STREAMS")
                .arg(&self.shared.stream)
                .arg(&from);
            let reply = self.shared.query("XREADGROUP (pending)", &cmd).await?;
            let entries = read_reply(&reply).map_err(|e| self.malformed(e))?;
            self.pending_from = entries.last().map(|e| e.id.clone());
            let messages = self.messages(entries).await?;
            if !messages.is_empty() || self.pending_from.is_some() {
                return Ok(messages);
            }
        }
        if Instant::now() >= self.autoclaim_at {
            let claimed = self.autoclaim(max).await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.shared.group)
            .arg(&self.shared.member)
            .arg("COUNT")
            .arg(max);
        // BLOCK 0 would block for ever: no wait is no BLOCK at all.
        if !wait.is_zero() {
            cmd.arg("BLOCK")
                .arg(wait.as_millis().clamp(1, u32::MAX as u128) as u64);
        }
        cmd.arg("STREAMS").arg(&self.shared.stream).arg(">");
        let reply = match tokio::time::timeout(
            wait + RESPONSE_TIMEOUT,
            cmd.query_async::<Value>(&mut self.reader),
        )
        .await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(self.shared.error("XREADGROUP", &e)),
            Err(_) => {
                return Err(SourceError::new(format!(
                    "redis {}: no answer to XREADGROUP within {} s of its block",
                    self.shared.shown,
                    RESPONSE_TIMEOUT.as_secs()
                )));
            }
        };
        let entries = read_reply(&reply).map_err(|e| self.malformed(e))?;
        self.messages(entries).await
    }

    async fn lag(&mut self) -> Option<u64> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("GROUPS").arg(&self.shared.stream);
        let reply = self.shared.query("XINFO GROUPS", &cmd).await.ok()?;
        group_lag(&reply, &self.shared.group)
    }
}

impl RedisConsumer {
    fn malformed(&self, e: String) -> SourceError {
        SourceError::new(format!(
            "redis {}: an unexpected reply: {e}",
            self.shared.shown
        ))
    }

    /// Claims entries other consumers left idle longer than `AUTOCLAIM_MIN_IDLE`, going on
    /// through the pending list from where the last scan stopped.
    async fn autoclaim(&mut self, max: usize) -> Result<Vec<Message>, SourceError> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.shared.stream)
            .arg(&self.shared.group)
            .arg(&self.shared.member)
            .arg(AUTOCLAIM_MIN_IDLE.as_millis() as u64)
            .arg(&self.autoclaim_cursor)
            .arg("COUNT")
            .arg(max.min(AUTOCLAIM_COUNT));
        let reply = self.shared.query("XAUTOCLAIM", &cmd).await?;
        let (cursor, entries) = autoclaim_reply(&reply).map_err(|e| self.malformed(e))?;
        // A scan that reached the list's end rests; one that did not goes on next fetch.
        self.autoclaim_at = if cursor == "0-0" {
            Instant::now() + AUTOCLAIM_EVERY
        } else {
            Instant::now()
        };
        self.autoclaim_cursor = cursor;
        self.messages(entries).await
    }

    /// The entries as messages, leaving out those this consumer already handed over and
    /// acknowledging those deleted from the stream while pending (nothing is left of them
    /// to deliver; acknowledged, they leave the pending list).
    async fn messages(&mut self, entries: Vec<Entry>) -> Result<Vec<Message>, SourceError> {
        let mut out = Vec::with_capacity(entries.len());
        let mut deleted = Vec::new();
        for e in entries {
            let Some(fields) = e.fields else {
                deleted.push(e.id);
                continue;
            };
            if !lock(&self.held).insert(e.id.clone()) {
                continue;
            }
            let mapped = map_entry(&e.id, &fields);
            let mut source = serde_json::Map::new();
            source.insert("stream".into(), self.shared.stream.clone().into());
            source.insert("id".into(), e.id.clone().into());
            source.insert("group".into(), self.shared.group.clone().into());
            out.push(Message {
                id: e.id.clone(),
                key: self.shared.stream.clone(),
                body: Bytes::from(mapped.body),
                headers: mapped.headers,
                fields: source,
                published_ms: mapped.published_ms,
                ack: Box::new(EntryAck {
                    shared: self.shared.clone(),
                    id: e.id,
                    held: self.held.clone(),
                }),
            });
        }
        if !deleted.is_empty() {
            let mut cmd = redis::cmd("XACK");
            cmd.arg(&self.shared.stream)
                .arg(&self.shared.group)
                .arg(&deleted);
            self.shared.query("XACK (deleted entries)", &cmd).await?;
        }
        Ok(out)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One delivered entry's settlement.
struct EntryAck {
    shared: Arc<Shared>,
    id: String,
    held: Arc<Mutex<HashSet<String>>>,
}

#[async_trait::async_trait]
impl Ack for EntryAck {
    async fn ack(&self) -> Result<(), SourceError> {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.shared.stream)
            .arg(&self.shared.group)
            .arg(&self.id);
        self.shared.query("XACK", &cmd).await.map(|_| ())
    }

    /// Resets the entry's idle time (claiming it for this consumer again, which it already
    /// is), so that no other consumer's `XAUTOCLAIM` takes it while the trigger works on it.
    async fn touch(&self) -> Result<(), SourceError> {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.shared.stream)
            .arg(&self.shared.group)
            .arg(&self.shared.member)
            .arg(0)
            .arg(&self.id)
            .arg("JUSTID");
        self.shared.query("XCLAIM", &cmd).await.map(|_| ())
    }

    // `release` does nothing: Redis cannot give a pending entry back to the group. It
    // comes back to this consumer by its pending read when it connects again, or to
    // another by a claim once idle.
}

/// The trigger dropped the message (settled, or its subscription ended): a claim or a
/// pending read may hand the entry over again.
impl Drop for EntryAck {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_and_scrubbed() {
        assert_eq!(password("redis://:s3cret@h:6379/0"), Some("s3cret"));
        assert_eq!(password("redis://user:pw@h"), Some("pw"));
        assert_eq!(password("redis://h:6379"), None);
        assert_eq!(password("redis://h/0?x=a@b"), None);
        assert_eq!(
            scrub(&"WRONGPASS s3cret is wrong", "redis://:s3cret@h"),
            "WRONGPASS **** is wrong"
        );
    }

    #[test]
    fn urls_are_checked_without_their_secret_in_errors() {
        let spec = |url: &str| -> QueueTrigger {
            serde_json::from_value(serde_json::json!({"redis": {"url": url, "stream": "s"}}))
                .unwrap()
        };
        assert!(
            RedisConnector
                .validate(&spec("redis://127.0.0.1:6379/0"))
                .is_ok()
        );
        let e = RedisConnector
            .validate(&spec("redis://:s3cret@127.0.0.1:6379/notadb"))
            .unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
