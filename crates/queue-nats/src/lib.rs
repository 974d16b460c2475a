//! The NATS source of queue triggers: a JetStream durable pull consumer on a stream and
//! subject filter (at least once: the stream keeps a message until the trigger acknowledges
//! it), or, without a stream, core NATS subscriptions in a queue group (at most once: core
//! NATS keeps nothing, so a message a node held when it died is gone).
//!
//! Every node's trigger pulls from the same durable consumer (JetStream splits the messages
//! among them) or joins the same queue group (NATS gives each message to one member).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use model::queue::{NatsSource, redact_url};
use platform::queue::{Ack, Connector, Consumer, Message, SourceError, Subscription};
use serde_json::{Map, Value};

/// JetStream's acknowledgement wait when the spec sets none (JetStream's own default).
const ACK_WAIT_DEFAULT: Duration = Duration::from_secs(30);

/// Messages a JetStream consumer lets all its nodes hold unacknowledged at once: each
/// node's trigger bounds its own share (`Subscription::prefetch`); this bounds the sum so
/// that a stuck cluster does not take the whole stream into memory.
const MAX_ACK_PENDING: i64 = 10_000;

/// Core NATS messages buffered by the client ahead of the trigger; past it the server
/// drops them for this subscriber (a slow consumer), as core NATS does.
const CORE_BUFFER: usize = 4_096;

/// Connects queue triggers to NATS.
pub struct NatsConnector;

#[async_trait::async_trait]
impl Connector for NatsConnector {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn connect(&self, sub: &Subscription<'_>) -> Result<Box<dyn Consumer>, SourceError> {
        let spec = sub
            .spec
            .nats
            .as_ref()
            .ok_or_else(|| SourceError::new("the trigger names no NATS source"))?;
        let shown = redact_url(&spec.url);
        let client = async_nats::ConnectOptions::new()
            .name(&sub.member)
            .subscription_capacity(CORE_BUFFER)
            .connection_timeout(Duration::from_secs(5))
            .connect(spec.url.as_str())
            .await
            .map_err(|e| SourceError::new(format!("connecting to {shown}: {e}")))?;
        match &spec.stream {
            Some(stream) => jetstream_consumer(client, spec, stream, sub, shown).await,
            None => {
                let group = spec
                    .queue_group
                    .clone()
                    .unwrap_or_else(|| sub.group.clone());
                let subscriber = client
                    .queue_subscribe(spec.subject.clone(), group)
                    .await
                    .map_err(|e| SourceError::new(format!("subscribing on {shown}: {e}")))?;
                Ok(Box::new(CoreConsumer {
                    client,
                    subscriber,
                    shown,
                    nonce: nonce(),
                    counter: AtomicU64::new(0),
                }))
            }
        }
    }
}

async fn jetstream_consumer(
    client: async_nats::Client,
    spec: &NatsSource,
    stream: &str,
    sub: &Subscription<'_>,
    shown: String,
) -> Result<Box<dyn Consumer>, SourceError> {
    let js = jetstream::new(client.clone());
    // A stream that exists is used as it is (its subjects are the operator's); a missing
    // one is made for the trigger's subject.
    let stream_handle = js
        .get_or_create_stream(jetstream::stream::Config {
            name: stream.to_string(),
            subjects: vec![spec.subject.clone()],
            ..Default::default()
        })
        .await
        .map_err(|e| SourceError::new(format!("stream {stream} on {shown}: {e}")))?;
    let durable = spec.consumer.clone().unwrap_or_else(|| sub.group.clone());
    let ack_wait = spec
        .ack_wait_ms
        .map_or(ACK_WAIT_DEFAULT, |ms| Duration::from_millis(ms as u64));
    let consumer: PullConsumer = stream_handle
        .get_or_create_consumer(
            &durable,
            jetstream::consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: spec.subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                // Everything the stream holds: a trigger added to a stream with messages
                // takes them, as nothing accepted may be lost.
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_wait,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            SourceError::new(format!(
                "consumer {durable} of stream {stream} on {shown}: {e}"
            ))
        })?;
    Ok(Box::new(JetStreamConsumer {
        client,
        consumer,
        shown,
        pull: None,
    }))
}

/// Refuses to go on with a client that lost its server: the trigger connects again (and
/// says so) rather than waiting on a client that reconnects on its own, unseen.
fn check_connected(client: &async_nats::Client, shown: &str) -> Result<(), SourceError> {
    match client.connection_state() {
        async_nats::connection::State::Disconnected => {
            Err(SourceError::new(format!("lost the connection to {shown}")))
        }
        _ => Ok(()),
    }
}

struct JetStreamConsumer {
    client: async_nats::Client,
    consumer: PullConsumer,
    shown: String,
    /// The pull request being read.
    pull: Option<jetstream::consumer::pull::Batch>,
}

#[async_trait::async_trait]
impl Consumer for JetStreamConsumer {
    /// Reads from the pull request under way (a new one when none is), returning as soon as
    /// it has a message and whatever else is at hand: a pull waits for its whole count or
    /// its expiry, which would hold the first message back that long.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>, SourceError> {
        check_connected(&self.client, &self.shown)?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.is_empty() {
            let pull = match &mut self.pull {
                Some(pull) => pull,
                // The pull expires with the wait, so that a pull the trigger stops reading
                // (its function's slots are full) soon takes no more.
                None => self.pull.insert(
                    self.consumer
                        .batch()
                        .max_messages(max)
                        .expires(wait)
                        .messages()
                        .await
                        .map_err(|e| {
                            SourceError::new(format!("pulling from {}: {e}", self.shown))
                        })?,
                ),
            };
            match tokio::time::timeout_at(deadline, pull.next()).await {
                // Nothing within the wait; the pull stays open for the next call.
                Err(_) => return Ok(out),
                Ok(None) => {
                    self.pull = None;
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(out);
                    }
                }
                Ok(Some(Ok(m))) => out.push(jetstream_message(m)),
                Ok(Some(Err(e))) => {
                    self.pull = None;
                    return Err(SourceError::new(format!(
                        "pulling from {}: {e}",
                        self.shown
                    )));
                }
            }
        }
        while out.len() < max {
            let Some(pull) = &mut self.pull else { break };
            match futures_util::FutureExt::now_or_never(pull.next()) {
                Some(Some(Ok(m))) => out.push(jetstream_message(m)),
                Some(None) => self.pull = None,
                // An error shows at the next call; nothing more is at hand now.
                _ => break,
            }
        }
        Ok(out)
    }

    async fn lag(&mut self) -> Option<u64> {
        self.consumer.info().await.ok().map(|i| i.num_pending)
    }
}

/// A pull still open when the subscription ends (the trigger paused, stopped or lost the
/// connection) may hold messages the server already sent: they are given back (naks), or
/// JetStream would hold them until their ack wait runs out.
impl Drop for JetStreamConsumer {
    fn drop(&mut self) {
        let Some(mut pull) = self.pull.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Read to the pull's end (it expires within a fetch's wait): a status the
            // server sends on the way is no reason to stop listening for messages.
            rt.spawn(async move {
                loop {
                    match tokio::time::timeout(Duration::from_secs(2), pull.next()).await {
                        Ok(Some(Ok(m))) => {
                            let _ = m.ack_with(AckKind::Nak(None)).await;
                        }
                        Ok(Some(Err(_))) => continue,
                        Ok(None) | Err(_) => break,
                    }
                }
            });
        }
    }
}

/// A JetStream message as the trigger's record shows it.
fn jetstream_message(m: jetstream::Message) -> Message {
    let mut fields = Map::new();
    fields.insert("subject".into(), Value::String(m.subject.to_string()));
    let (mut id, mut published_ms) = (String::new(), None);
    if let Ok(info) = m.info() {
        fields.insert("stream".into(), info.stream.into());
        fields.insert("consumer".into(), info.consumer.into());
        fields.insert("sequence".into(), info.stream_sequence.into());
        fields.insert("deliveries".into(), info.delivered.into());
        id = info.stream_sequence.to_string();
        published_ms = Some((info.published.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let headers = headers(m.headers.as_ref());
    let key = m.subject.to_string();
    let body = m.payload.clone();
    let (_, acker) = m.split();
    Message {
        id,
        key,
        body,
        headers,
        fields,
        published_ms,
        ack: Box::new(JetStreamAck(acker)),
    }
}

fn headers(h: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, values) in h.into_iter().flat_map(|h| h.iter()) {
        for v in values {
            out.push((name.to_string(), v.as_str().to_string()));
        }
    }
    out.sort();
    out
}

struct JetStreamAck(jetstream::message::Acker);

#[async_trait::async_trait]
impl Ack for JetStreamAck {
    async fn ack(&self) -> Result<(), SourceError> {
        // A double ack waits for the server's confirmation: a plain ack lost on the way
        // would have the message delivered again after the ack wait.
        self.0
            .double_ack()
            .await
            .map_err(|e| SourceError::new(format!("acknowledging: {e}")))
    }

    async fn touch(&self) -> Result<(), SourceError> {
        self.0.ack_with(AckKind::Progress).await.map_err(|e| {
            SourceError::new(format!("telling the server a message is in progress: {e}"))
        })
    }

    async fn release(&self) -> Result<(), SourceError> {
        self.0
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(|e| SourceError::new(format!("giving a message back: {e}")))
    }
}

struct CoreConsumer {
    client: async_nats::Client,
    subscriber: async_nats::Subscriber,
    shown: String,
    /// With `counter`, names messages that carry no `Nats-Msg-Id`: unique per receipt.
    nonce: String,
    counter: AtomicU64,
}

#[async_trait::async_trait]
impl Consumer for CoreConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>, SourceError> {
        check_connected(&self.client, &self.shown)?;
        let mut out = VecDeque::new();
        match tokio::time::timeout(wait, self.subscriber.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => {
                return Err(SourceError::new(format!(
                    "the subscription on {} ended",
                    self.shown
                )));
            }
            Ok(Some(m)) => out.push_back(self.core_message(m)),
        }
        // Whatever else is at hand, without waiting.
        while out.len() < max {
            match futures_util::FutureExt::now_or_never(self.subscriber.next()) {
                Some(Some(m)) => out.push_back(self.core_message(m)),
                _ => break,
            }
        }
        Ok(out.into())
    }
}

impl CoreConsumer {
    fn core_message(&self, m: async_nats::Message) -> Message {
        let headers = headers(m.headers.as_ref());
        let id = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Nats-Msg-Id"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    self.nonce,
                    self.counter.fetch_add(1, Ordering::Relaxed)
                )
            });
        let mut fields = Map::new();
        fields.insert("subject".into(), Value::String(m.subject.to_string()));
        if let Some(reply) = &m.reply {
            fields.insert("reply".into(), Value::String(reply.to_string()));
        }
        Message {
            id,
            key: m.subject.to_string(),
            body: m.payload,
            headers,
            fields,
            published_ms: None,
            ack: Box::new(CoreAck),
        }
    }
}

/// Core NATS has nothing to acknowledge.
struct CoreAck;

#[async_trait::async_trait]
impl Ack for CoreAck {
    async fn ack(&self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A value unique to this connection, so receipt counters of two connections never meet.
fn nonce() -> String {
    static STARTS: AtomicU64 = AtomicU64::new(0);
    let n = STARTS.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}{n:x}", t % (1 << 48))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_flattened_in_a_stable_order() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("b", "2");
        h.insert("a", "1");
        h.append("a", "3");
        assert_eq!(
            headers(Some(&h)),
            vec![
                ("a".to_string(), "1".to_string()),
                ("a".to_string(), "3".to_string()),
                ("b".to_string(), "2".to_string())
            ]
        );
        assert!(headers(None).is_empty());
    }

    #[test]
    fn receipt_ids_differ_between_connections() {
        assert_ne!(nonce(), nonce());
    }
}
