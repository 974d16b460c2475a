//! The MQTT source of queue triggers (MQTT 3.1.1 and 5 through rumqttc): a persistent
//! session per node, a shared subscription per trigger, QoS 0 or 1, and PUBACKs sent only
//! when the trigger acknowledges.
//!
//! Each connection is one rumqttc event loop polled by a task of its own, which forwards
//! the messages into a bounded channel that `fetch` reads and ends at the first error: the
//! trigger then drops the consumer and connects again with its own backoff, so rumqttc
//! never reconnects on its own (and every connection subscribes again after its ConnAck:
//! a resumed session may have lost its subscriptions). The session is persistent (clean
//! session off; MQTT 5: clean start off with an expiry), under a client id stable per
//! node, so QoS 1 messages a node held unacknowledged when it died come back to it.
//!
//! MQTT has no redelivery timer (a broker sends unacknowledged messages again only when
//! the session resumes), no way to hand a message back early, no message id and no lag:
//! `touch` and `release` do nothing, ids are per receipt (or the publisher's `message-id`
//! user property), and `lag` is unknown.

mod endpoint;
mod record;

use std::time::Duration;

use bytes::Bytes;
use model::queue::redact_url;
use platform::queue::{Ack, Connector, Consumer, Message, SourceError, Subscription};
use rumqttc::v5::mqttbytes::v5 as mqtt5;
use tokio::sync::{mpsc, oneshot};

/// How often the client pings an idle broker: a dead connection shows within two of
/// these (rumqttc fails a ping that got no answer by the next one).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The longest the connection and subscription may take before `connect` gives up (within
/// the trigger's own connect timeout, so the error says what was missing).
const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(8);

/// The longest an acknowledgement waits for room in the client's request channel.
const ACK_WITHIN: Duration = Duration::from_secs(5);

/// The largest packet taken: a message body up to the platform's payload limit, with room
/// for the topic and properties. A broker told so (MQTT 5) never sends larger ones.
const MAX_PACKET: usize = model::limits::PAYLOAD_BYTES_MAX + 64 * 1024;

/// How long the broker keeps an MQTT 5 session (and the QoS 1 messages queued for it)
/// after its node went away: long enough for any restart or upgrade, short enough that a
/// node gone for good does not hoard its share of a shared subscription forever.
const SESSION_EXPIRY_S: u32 = 7 * 24 * 3600;

/// Messages received and not yet fetched, at least (more when the trigger may hold more).
/// With QoS 1 the broker sends no more than its in-flight window (MQTT 5: our receive
/// maximum) ahead of the acknowledgements, so the channel never fills with those; QoS 0
/// messages beyond it wait in the socket, which is what a flood of them should do.
const CHANNEL_MIN: usize = 1_024;

/// Packet ids are 16 bits: no more QoS 1 messages than this can be unacknowledged on a
/// connection.
const INFLIGHT_MAX: usize = 65_535;

/// Connects queue triggers to MQTT brokers.
pub struct MqttConnector;

#[async_trait::async_trait]
impl Connector for MqttConnector {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    fn validate(&self, spec: &model::queue::QueueTrigger) -> Result<(), String> {
        match &spec.mqtt {
            Some(s) => endpoint::parse(&s.url).map(|_| ()),
            None => Ok(()),
        }
    }

    async fn connect(&self, sub: &Subscription<'_>) -> Result<Box<dyn Consumer>, SourceError> {
        let Some(source) = &sub.spec.mqtt else {
            return Err(SourceError::new("the trigger names no MQTT broker"));
        };
        let ep = endpoint::parse(&source.url).map_err(SourceError::new)?;
        let transport = if ep.tls { Some(tls_transport()?) } else { None };
        let setup = Setup {
            url: redact_url(&source.url),
            filter: endpoint::filter(&source.topic, source.shared, &sub.group),
            qos: source.qos,
        };
        let client_id = endpoint::client_id(&sub.member);
        let prefetch = sub.prefetch.clamp(1, INFLIGHT_MAX);
        // The client's requests are acknowledgements (and the subscription): one for each
        // message the trigger may hold, so that an acknowledgement never waits.
        let requests = prefetch + 16;
        let (tx, rx) = mpsc::channel(prefetch.clamp(CHANNEL_MIN, INFLIGHT_MAX));
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = match source.version {
            3 => {
                let options = options_v4(&ep, transport, client_id, requests);
                let (client, eventloop) = rumqttc::AsyncClient::new(options, requests);
                tokio::spawn(drive_v4(eventloop, client, setup, tx, ready_tx))
            }
            _ => {
                let options = options_v5(&ep, transport, client_id, requests, prefetch);
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, requests);
                tokio::spawn(drive_v5(eventloop, client, setup, tx, ready_tx))
            }
        };
        // Dropped on every early return below: that ends the connection.
        let consumer = MqttConsumer {
            rx,
            task,
            failed: None,
            url: redact_url(&source.url),
        };
        match tokio::time::timeout(SUBSCRIBE_WITHIN, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Box::new(consumer)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(SourceError::new(format!(
                "the MQTT connection to {} ended before it subscribed",
                consumer.url
            ))),
            Err(_) => Err(SourceError::new(format!(
                "MQTT broker {}: not connected and subscribed to `{}` within {} s",
                consumer.url,
                source.topic,
                SUBSCRIBE_WITHIN.as_secs()
            ))),
        }
    }
}

/// TLS with the system's roots (rustls; the server installs its crypto provider at start).
fn tls_transport() -> Result<rumqttc::Transport, SourceError> {
    if rumqttc::tokio_rustls::rustls::crypto::CryptoProvider::get_default().is_none() {
        return Err(SourceError::new(
            "TLS is not available (no crypto provider installed)",
        ));
    }
    let ca = system_roots()?;
    Ok(rumqttc::Transport::tls(ca, None, None))
}

/// The system's CA bundle (PEM): `SSL_CERT_FILE`, else the usual places.
fn system_roots() -> Result<Vec<u8>, SourceError> {
    /// A bundle larger than this is not one.
    const BUNDLE_MAX: u64 = 16 * 1024 * 1024;
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let candidates = from_env.into_iter().chain(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/ssl/cert.pem",
        ]
        .into_iter()
        .map(std::path::PathBuf::from),
    );
    for path in candidates {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file()
            && meta.len() <= BUNDLE_MAX
            && let Ok(bytes) = std::fs::read(&path)
        {
            return Ok(bytes);
        }
    }
    Err(SourceError::new(
        "no CA bundle found for mqtts:// (set SSL_CERT_FILE)",
    ))
}

/// What the event loop's task needs of the trigger.
struct Setup {
    /// The broker's URL, its password redacted: for errors.
    url: String,
    filter: String,
    qos: u8,
}

impl Setup {
    fn lost(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::new(format!("MQTT broker {}: {e}", self.url))
    }

    fn refused_subscription(&self, code: impl std::fmt::Debug) -> SourceError {
        SourceError::new(format!(
            "MQTT broker {} refused the subscription to `{}`: {code:?}",
            self.url, self.filter
        ))
    }
}

fn options_v4(
    ep: &endpoint::Endpoint,
    transport: Option<rumqttc::Transport>,
    client_id: String,
    requests: usize,
) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, ep.host.clone(), ep.port);
    o.set_keep_alive(KEEP_ALIVE)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_request_channel_capacity(requests)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(t) = transport {
        o.set_transport(t);
    }
    if let Some(user) = &ep.username {
        o.set_credentials(user.clone(), ep.password.clone().unwrap_or_default());
    }
    o
}

fn options_v5(
    ep: &endpoint::Endpoint,
    transport: Option<rumqttc::Transport>,
    client_id: String,
    requests: usize,
    prefetch: usize,
) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, ep.host.clone(), ep.port);
    o.set_keep_alive(KEEP_ALIVE)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(SESSION_EXPIRY_S))
        // The broker sends no more unacknowledged QoS 1 messages than the trigger holds.
        .set_receive_maximum(Some(prefetch.clamp(1, INFLIGHT_MAX) as u16))
        .set_max_packet_size(Some(MAX_PACKET as u32))
        .set_manual_acks(true)
        .set_request_channel_capacity(requests);
    if let Some(t) = transport {
        o.set_transport(t);
    }
    if let Some(user) = &ep.username {
        o.set_credentials(user.clone(), ep.password.clone().unwrap_or_default());
    }
    o
}

/// What the event loop's task hands `fetch`: a message, or the error that ended it.
type Delivery = Result<Message, SourceError>;

/// Tells `connect` how subscribing went (once), or `fetch` how the connection ended.
async fn end(
    err: SourceError,
    ready: Option<oneshot::Sender<Result<(), SourceError>>>,
    tx: &mpsc::Sender<Delivery>,
) {
    match ready {
        Some(r) => {
            let _ = r.send(Err(err));
        }
        None => {
            let _ = tx.send(Err(err)).await;
        }
    }
}

/// Polls an MQTT 3.1.1 connection until it fails or the consumer is dropped.
async fn drive_v4(
    mut eventloop: rumqttc::EventLoop,
    client: rumqttc::AsyncClient,
    setup: Setup,
    tx: mpsc::Sender<Delivery>,
    ready: oneshot::Sender<Result<(), SourceError>>,
) {
    use rumqttc::{ConnectReturnCode, Event, Packet, QoS, SubscribeReasonCode};
    let mut ready = Some(ready);
    let nonce = record::nonce();
    let mut seq = 0u64;
    let qos = if setup.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let err = loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    break setup.lost(format!("connection refused: {:?}", ack.code));
                }
                // Every ConnAck subscribes (again): a session may come back without its
                // subscriptions, and then nothing would ever arrive.
                if let Err(e) = client.try_subscribe(setup.filter.clone(), qos) {
                    break setup.lost(format!("subscribing failed: {e}"));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(code) = ack
                    .return_codes
                    .iter()
                    .find(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    break setup.refused_subscription(code);
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                seq += 1;
                let fields = record::fields(&p.topic, p.qos as u8, p.retain, p.dup);
                let message = Message {
                    id: record::id(nonce, seq, &[]),
                    key: p.topic.clone(),
                    body: p.payload.clone(),
                    headers: Vec::new(),
                    fields,
                    published_ms: None,
                    ack: Box::new(MqttAck::v4(&client, &p)),
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Disconnect)) => {
                break setup.lost("the broker disconnected");
            }
            Ok(_) => {}
            Err(e) => break setup.lost(e),
        }
    };
    end(err, ready, &tx).await;
}

/// Polls an MQTT 5 connection until it fails or the consumer is dropped.
async fn drive_v5(
    mut eventloop: rumqttc::v5::EventLoop,
    client: rumqttc::v5::AsyncClient,
    setup: Setup,
    tx: mpsc::Sender<Delivery>,
    ready: oneshot::Sender<Result<(), SourceError>>,
) {
    use mqtt5::{ConnectReturnCode, Filter, Packet, RetainForwardRule, SubscribeReasonCode};
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::QoS;
    let mut ready = Some(ready);
    let nonce = record::nonce();
    let mut seq = 0u64;
    let qos = if setup.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let err = loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    break setup.lost(format!("connection refused: {:?}", ack.code));
                }
                // Every ConnAck subscribes (again): a session may come back without its
                // subscriptions. Retained messages come with a new subscription only, not
                // again on every reconnect.
                let mut filter = Filter::new(setup.filter.clone(), qos);
                filter.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
                if let Err(e) = client.try_subscribe_many([filter]) {
                    break setup.lost(format!("subscribing failed: {e}"));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(code) = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                {
                    break setup.refused_subscription(code);
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                seq += 1;
                let (topic, fields, headers) = record::v5(&p);
                let message = Message {
                    id: record::id(nonce, seq, &headers),
                    key: topic,
                    body: p.payload.clone(),
                    headers,
                    fields,
                    published_ms: None,
                    ack: Box::new(MqttAck::v5(&client, &p)),
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                let reason = d
                    .properties
                    .and_then(|p| p.reason_string)
                    .unwrap_or_default();
                break setup.lost(format!(
                    "the broker disconnected ({:?}) {reason}",
                    d.reason_code
                ));
            }
            Ok(_) => {}
            Err(e) => break setup.lost(e),
        }
    };
    end(err, ready, &tx).await;
}

/// One connection's subscription: the messages its event loop's task forwards.
struct MqttConsumer {
    rx: mpsc::Receiver<Delivery>,
    task: tokio::task::JoinHandle<()>,
    /// The error that ended the connection, kept while messages before it went out.
    failed: Option<SourceError>,
    url: String,
}

impl Drop for MqttConsumer {
    /// Ends the connection: the broker keeps what was not acknowledged in the session.
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait::async_trait]
impl Consumer for MqttConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>, SourceError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let ended = || SourceError::new(format!("the MQTT connection to {} ended", self.url));
        let first = match self.rx.try_recv() {
            Ok(d) => d,
            Err(mpsc::error::TryRecvError::Disconnected) => return Err(ended()),
            Err(mpsc::error::TryRecvError::Empty) => {
                match tokio::time::timeout(wait, self.rx.recv()).await {
                    Ok(Some(d)) => d,
                    Ok(None) => return Err(ended()),
                    Err(_) => return Ok(Vec::new()),
                }
            }
        };
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(d) = next {
            match d {
                Ok(m) => out.push(m),
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
            if out.len() >= max.max(1) {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        Ok(out)
    }
}

/// Acknowledges one message on the connection that brought it (its packet id means
/// nothing on another): a PUBACK for QoS 1, nothing for QoS 0.
enum MqttAck {
    Nothing,
    V4(rumqttc::AsyncClient, rumqttc::Publish),
    V5(rumqttc::v5::AsyncClient, mqtt5::Publish),
}

impl MqttAck {
    fn v4(client: &rumqttc::AsyncClient, p: &rumqttc::Publish) -> MqttAck {
        if p.qos == rumqttc::QoS::AtMostOnce {
            return MqttAck::Nothing;
        }
        // Only the QoS and packet id make the PUBACK: the body is not kept twice.
        let mut bare = rumqttc::Publish::new("", p.qos, Vec::new());
        bare.pkid = p.pkid;
        MqttAck::V4(client.clone(), bare)
    }

    fn v5(client: &rumqttc::v5::AsyncClient, p: &mqtt5::Publish) -> MqttAck {
        if p.qos == rumqttc::v5::mqttbytes::QoS::AtMostOnce {
            return MqttAck::Nothing;
        }
        let mut bare = mqtt5::Publish::new("", p.qos, Bytes::new(), None);
        bare.pkid = p.pkid;
        MqttAck::V5(client.clone(), bare)
    }
}

#[async_trait::async_trait]
impl Ack for MqttAck {
    async fn ack(&self) -> Result<(), SourceError> {
        let sent = match self {
            MqttAck::Nothing => return Ok(()),
            MqttAck::V4(client, p) => tokio::time::timeout(ACK_WITHIN, client.ack(p))
                .await
                .map(|r| r.map_err(|e| e.to_string())),
            MqttAck::V5(client, p) => tokio::time::timeout(ACK_WITHIN, client.ack(p))
                .await
                .map(|r| r.map_err(|e| e.to_string())),
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            // The connection is gone: the broker sends the message again on the next one.
            Ok(Err(e)) => Err(SourceError::new(format!(
                "the MQTT connection that brought the message is gone ({e}); the broker delivers it again"
            ))),
            Err(_) => Err(SourceError::new(
                "the MQTT client took no acknowledgement within 5 s",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_spec_subscribes_shared() {
        let s: model::queue::MqttSource =
            serde_json::from_str(r#"{"url": "mqtt://h", "topic": "a/#"}"#).unwrap();
        assert!(s.shared);
        assert_eq!((s.qos, s.version), (1, 5));
        assert_eq!(endpoint::filter(&s.topic, s.shared, "g"), "$share/g/a/#");
    }

    #[test]
    fn validate_refuses_bad_urls() {
        let spec: model::queue::QueueTrigger =
            serde_json::from_str(r#"{"mqtt": {"url": "mqtt://u:secret@h/x", "topic": "t"}}"#)
                .unwrap();
        let e = MqttConnector.validate(&spec).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
