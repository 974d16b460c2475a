//! The amqp source of queue triggers: a RabbitMQ queue (declared durable when missing)
//! consumed with manual acknowledgements and a prefetch window, through lapin.
//!
//! Each connection consumes on one channel with this node's member name as its consumer
//! tag (and connection name, so that an operator finds it in `rabbitmqctl
//! list_connections`). The broker pushes deliveries; `fetch` takes what arrived. A message
//! is settled only by the trigger: `basic.ack` once done, `basic.nack` with requeue when
//! given back; whatever the connection held unsettled when it closed, the broker delivers
//! again.

mod message;
mod runtime;

/// lapin's runtime on the calling task's tokio, for other users of lapin in this process
/// (the benchmark's publisher).
pub fn tokio_runtime()
-> async_rs::Runtime<impl async_rs::traits::RuntimeKit + Clone + Send + Sync + 'static> {
    runtime::TokioKit::current()
}

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use model::queue::{AmqpSource, QueueTrigger, redact_url};
use platform::queue::{Ack, Connector, Consumer, Message, SourceError, Subscription};

/// The heartbeat asked for when the URL names none: a broker that went silent (a dead
/// peer, a cut network) is noticed within about two of these, not RabbitMQ's default 60 s.
const HEARTBEAT_S: u16 = 10;

/// How long connecting may take when the URL says nothing (`connection_timeout`).
const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Connects queue triggers to AMQP 0-9-1 brokers (RabbitMQ).
pub struct AmqpConnector;

#[async_trait::async_trait]
impl Connector for AmqpConnector {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    fn validate(&self, spec: &QueueTrigger) -> Result<(), String> {
        match &spec.amqp {
            Some(s) => uri(s).map(|_| ()).map_err(|e| e.0),
            None => Ok(()),
        }
    }

    async fn connect(&self, sub: &Subscription<'_>) -> Result<Box<dyn Consumer>, SourceError> {
        let source = sub
            .spec
            .amqp
            .as_ref()
            .ok_or_else(|| SourceError::new("the trigger names no amqp source"))?;
        let scrub = Scrub::new(&source.url);
        let props = ConnectionProperties::default().with_connection_name(sub.member.clone().into());
        let conn =
            Connection::connect_uri_with_runtime(uri(source)?, props, runtime::TokioKit::current())
                .await
                .map_err(|e| scrub.error("connecting", e))?;
        let queue = source.queue.as_str();
        let channel = declare(&conn, queue, &scrub).await?;
        let prefetch = source
            .prefetch
            .unwrap_or_else(|| u16::try_from(sub.prefetch).unwrap_or(u16::MAX))
            .max(1);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| scrub.error("setting the prefetch", e))?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                sub.member.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| scrub.error(&format!("consuming from queue `{queue}`"), e))?;
        Ok(Box::new(AmqpConsumer {
            nonce: message::nonce(),
            queue: source.queue.clone(),
            conn,
            channel,
            consumer,
            lag_channel: None,
            scrub,
        }))
    }
}

/// The source's URL as lapin reads it, with a heartbeat and a connection timeout unless
/// the URL sets them.
fn uri(source: &AmqpSource) -> Result<AMQPUri, SourceError> {
    let mut uri: AMQPUri = source.url.parse().map_err(|e: String| {
        SourceError::new(format!(
            "{} is not an AMQP URL: {}",
            redact_url(&source.url),
            Scrub::new(&source.url).text(&e)
        ))
    })?;
    uri.query.heartbeat.get_or_insert(HEARTBEAT_S);
    uri.query
        .connection_timeout
        .get_or_insert(CONNECT_TIMEOUT_MS);
    Ok(uri)
}

/// Makes sure the queue exists and returns a channel to consume it on. A passive declare
/// first (the queue may have been made with arguments this trigger does not know, which
/// a plain declare would contradict); when that fails, the broker closed its channel, so
/// the durable declare goes on a fresh one.
async fn declare(conn: &Connection, queue: &str, scrub: &Scrub) -> Result<Channel, SourceError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| scrub.error("opening a channel", e))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let missing = match channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => return Ok(channel),
        Err(e) => e,
    };
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| scrub.error(&format!("declaring queue `{queue}` ({missing})"), e))?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .map_err(|e| scrub.error(&format!("declaring queue `{queue}`"), e))?;
    Ok(channel)
}

/// Error text without the URL's password: lapin's errors may quote what they were given.
struct Scrub {
    /// The URL as shown.
    shown: String,
    secret: Option<String>,
}

impl Scrub {
    fn new(url: &str) -> Scrub {
        let secret = url
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
            .and_then(|authority| authority.rsplit_once('@'))
            .and_then(|(user, _)| user.split_once(':'))
            .map(|(_, password)| password.to_string())
            .filter(|p| !p.is_empty());
        Scrub {
            shown: redact_url(url),
            secret,
        }
    }

    fn text(&self, text: &str) -> String {
        match &self.secret {
            Some(s) => text.replace(s.as_str(), "****"),
            None => text.to_string(),
        }
    }

    fn error(&self, doing: &str, e: impl std::fmt::Display) -> SourceError {
        // Only lapin's part is scrubbed: the shown URL is redacted already (and a user
        // named as its password stays readable).
        SourceError::new(format!(
            "{doing} ({}): {}",
            self.shown,
            self.text(&e.to_string())
        ))
    }
}

/// One connection's subscription to the queue.
struct AmqpConsumer {
    /// Names this connection in the ids of messages that carry no `message_id`: a delivery
    /// tag counts per channel from 1, so it is unique only with the connection's name.
    nonce: String,
    queue: String,
    conn: Connection,
    channel: Channel,
    consumer: lapin::Consumer,
    /// Where the lag is asked: a passive declare of a deleted queue closes its channel,
    /// which must not be the consuming one (the deletion ends the consumer anyway).
    lag_channel: Option<Channel>,
    scrub: Scrub,
}

impl AmqpConsumer {
    fn take(&self, d: lapin::message::Delivery) -> Message {
        let parts = message::Parts::of(
            &self.queue,
            &self.nonce,
            d.delivery_tag,
            d.exchange.as_str(),
            d.routing_key.as_str(),
            d.redelivered,
            &d.properties,
        );
        Message {
            id: parts.id,
            key: parts.key,
            body: bytes::Bytes::from(d.data),
            headers: parts.headers,
            fields: parts.fields,
            published_ms: parts.published_ms,
            ack: Box::new(AmqpAck(d.acker)),
        }
    }

    /// What ended the stream: the consumer's error, or a cancel by the broker.
    fn ended(&self, error: Option<lapin::Error>) -> SourceError {
        match error {
            Some(e) => self
                .scrub
                .error(&format!("consuming queue `{}`", self.queue), e),
            None => SourceError::new(format!(
                "the broker ({}) cancelled the consumer of queue `{}` (was the queue deleted?)",
                self.scrub.shown, self.queue
            )),
        }
    }

    fn alive(&self) -> Result<(), SourceError> {
        if !self.conn.status().connected() {
            return Err(SourceError::new(format!(
                "the connection to {} closed",
                self.scrub.shown
            )));
        }
        if !self.channel.status().connected() {
            return Err(SourceError::new(format!(
                "the channel consuming queue `{}` closed",
                self.queue
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Consumer for AmqpConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>, SourceError> {
        let max = max.max(1);
        let mut out = Vec::new();
        // What has arrived, without waiting.
        while out.len() < max {
            match self.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => out.push(self.take(d)),
                Some(Some(Err(e))) => return Err(self.ended(Some(e))),
                Some(None) => return Err(self.ended(None)),
                None => break,
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        match tokio::time::timeout(wait, self.consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(self.take(d)),
            Ok(Some(Err(e))) => return Err(self.ended(Some(e))),
            Ok(None) => return Err(self.ended(None)),
            Err(_) => {
                // Nothing came: a quiet queue, or a connection that died without the
                // consumer hearing of it.
                self.alive()?;
                return Ok(out);
            }
        }
        while out.len() < max {
            match self.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => out.push(self.take(d)),
                // The messages taken are unacknowledged: the broker delivers them again,
                // and the error surfaces on the next fetch.
                _ => break,
            }
        }
        Ok(out)
    }

    async fn lag(&mut self) -> Option<u64> {
        if !self
            .lag_channel
            .as_ref()
            .is_some_and(|c| c.status().connected())
        {
            self.lag_channel = self.conn.create_channel().await.ok();
        }
        let channel = self.lag_channel.as_ref()?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = channel
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await
            .ok()?;
        Some(u64::from(q.message_count()))
    }
}

/// Settles one delivery on the channel it came by.
struct AmqpAck(lapin::Acker);

#[async_trait::async_trait]
impl Ack for AmqpAck {
    async fn ack(&self) -> Result<(), SourceError> {
        match self.0.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SourceError::new(
                "the channel closed before the acknowledgement: the broker delivers the message again",
            )),
            Err(e) => Err(SourceError::new(format!("acknowledging: {e}"))),
        }
    }

    // RabbitMQ has no per-message redelivery timer to extend: an unacknowledged delivery
    // stays with the consumer until its channel closes (or the broker's consumer_timeout,
    // 30 min by default, closes it), so `touch` keeps the default no-op.

    async fn release(&self) -> Result<(), SourceError> {
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        match self.0.nack(requeue).await {
            Ok(_) => Ok(()),
            Err(e) => Err(SourceError::new(format!("giving a message back: {e}"))),
        }
    }
}
