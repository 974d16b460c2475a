//! The seam between the queue trigger and a broker: what a broker's crate implements
//! (`Connector`, `Consumer`, `Ack`) so that the one delivery contract in `queue` applies
//! to its messages.
//!
//! A broker crate knows its client library and its protocol's names for things (a durable
//! consumer, a queue group, a shared subscription, a consumer group); it knows nothing of
//! batches, retries, functions or capacity. It hands over messages with an acknowledgement
//! handle each and never acknowledges on its own: the trigger acknowledges a message only
//! once its function succeeded with it or it reached the failure destination.

use std::time::Duration;

use bytes::Bytes;
use model::queue::QueueTrigger;

/// What went wrong with a broker: the connection, the protocol, a missing permission. The
/// trigger shows the message (`nimbus triggers ls`) and connects again with backoff.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

impl SourceError {
    pub fn new(message: impl std::fmt::Display) -> SourceError {
        SourceError(message.to_string())
    }
}

/// One trigger's subscription, as the broker's crate is asked to set it up.
pub struct Subscription<'a> {
    /// The trigger's spec; its broker's part is the one this connector serves.
    pub spec: &'a QueueTrigger,
    /// A name every node's consumer of this trigger shares, so that the broker splits the
    /// messages among them: the durable consumer, the queue group, the share group, the
    /// consumer group, where the spec names none.
    pub group: String,
    /// This node's member of the group: the same across restarts of the node (a broker
    /// hands a restarted member what it held unacknowledged), different on every node.
    pub member: String,
    /// Messages the trigger holds unacknowledged at most; a broker that pushes is told to
    /// send no more ahead than this (AMQP's prefetch, MQTT 5's receive maximum).
    pub prefetch: usize,
}

/// A broker of one kind.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + 'static {
    /// `nats`, `mqtt`, `amqp` or `redis`: the spec's key it serves.
    fn kind(&self) -> &'static str;

    /// Checks what the model cannot (a client library's own rules); an error refuses the
    /// deploy.
    fn validate(&self, spec: &QueueTrigger) -> Result<(), String> {
        let _ = spec;
        Ok(())
    }

    /// Connects and subscribes, making what is missing (a stream, a queue, a group).
    async fn connect(&self, sub: &Subscription<'_>) -> Result<Box<dyn Consumer>, SourceError>;
}

/// A live subscription. Dropped to disconnect; what it delivered and nobody acknowledged,
/// the broker delivers again.
#[async_trait::async_trait]
pub trait Consumer: Send + 'static {
    /// Up to `max` messages: those at hand, or else the first to come within `wait`
    /// (then whatever else is at hand); none when nothing came. An error ends the
    /// subscription: the trigger connects again.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>, SourceError>;

    /// Messages the broker holds for this subscription that it has not delivered yet,
    /// where the broker tells.
    async fn lag(&mut self) -> Option<u64> {
        None
    }
}

/// One message, as the function's record shows it.
pub struct Message {
    /// Unique within the trigger's source (a stream sequence, a message id, a stream entry
    /// id): the record's `messageId`, what `batchItemFailures` names.
    pub id: String,
    /// What `ordered: true` keeps the order of: the subject, topic, routing key or stream.
    pub key: String,
    pub body: Bytes,
    /// Headers, user properties or message properties, as text.
    pub headers: Vec<(String, String)>,
    /// The source's own fields (subject and sequence; topic, QoS and retain; exchange,
    /// routing key and delivery tag; stream and entry id), under the record's kind key.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// When the broker took the message, where it says (ms since the epoch).
    pub published_ms: Option<i64>,
    pub ack: Box<dyn Ack>,
}

/// Settles one message with its broker.
#[async_trait::async_trait]
pub trait Ack: Send + Sync + 'static {
    /// The broker may forget the message.
    async fn ack(&self) -> Result<(), SourceError>;

    /// The message is still being worked on (a retry is waiting): a broker that delivers
    /// unacknowledged messages again after a while (JetStream's ack wait, a Redis
    /// pending entry's idle time) is told to wait. Called every few seconds while held.
    async fn touch(&self) -> Result<(), SourceError> {
        Ok(())
    }

    /// Gives the message back unsettled, for the broker to deliver again at once (a
    /// paused trigger's held messages), where the broker can; others deliver it again
    /// when the connection closes or its wait runs out.
    async fn release(&self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A message's handle in unit tests, where nothing is acknowledged anywhere.
#[cfg(test)]
pub(crate) struct NoAck;

#[cfg(test)]
#[async_trait::async_trait]
impl Ack for NoAck {
    async fn ack(&self) -> Result<(), SourceError> {
        Ok(())
    }
}
