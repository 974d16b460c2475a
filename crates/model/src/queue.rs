//! The queue trigger's spec (`triggers: [{queue: {nats | mqtt | amqp | redis: {...},
//! batch_size, batch_window_ms, ...}}]`): a broker's messages delivered to a function in
//! batches, with one delivery contract whatever the broker (at least once, partial batch
//! failures, retries then the failure destination, per-key order on request).
//!
//! The broker-specific parts are checked here as far as they can be without a connection:
//! URL schemes, topic filters, names. Secrets in URLs are kept (the trigger needs them to
//! connect) but never shown: `redacted` is what the API and the CLI print.

use serde::{Deserialize, Serialize};

use crate::function::FieldError;
use crate::limits;
use crate::timer::EventFormat;

/// `triggers: [{queue: {...}}]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueTrigger {
    /// Names the trigger within its function (`queue:NAME` in records, `nimbus triggers`);
    /// the broker's kind (`nats`, `mqtt`, ...) when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSource>,
    /// The version (`3`) or alias (`prod`) the trigger calls; none calls `$LATEST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<String>,
    /// Messages per call at most (1 to `limits::QUEUE_BATCH_SIZE_MAX`).
    #[serde(default = "batch_size_default")]
    pub batch_size: u32,
    /// How long a batch that is not full waits for more messages (0: not at all).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch_window_ms: u32,
    /// Retries of a message after its function failed with it; then it goes to the
    /// function's failure destination (the dead-letter queue without one).
    #[serde(default = "max_retries_default")]
    pub max_retries: u32,
    /// The delay before the first retry; each next one doubles it (up to
    /// `limits::QUEUE_RETRY_DELAY_MS_MAX`).
    #[serde(default = "retry_delay_default")]
    pub retry_delay_ms: u32,
    /// A message older than this (since the trigger took it) is not retried again: it
    /// goes to the failure destination.
    #[serde(default = "max_record_age_default")]
    pub max_record_age_ms: u32,
    /// Keep each key's order (NATS subject, MQTT topic, AMQP routing key, Redis stream):
    /// one batch of a key in flight at a time, a failed message retried before the ones
    /// after it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ordered: bool,
    /// Batches in flight at once at most; the function's capacity
    /// (`max_instances × concurrency`) when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// The event's shape: `{"Records": [...]}`, or a JSON array of CloudEvents.
    #[serde(default, skip_serializing_if = "EventFormat::is_native")]
    pub format: EventFormat,
}

fn batch_size_default() -> u32 {
    10
}
fn max_retries_default() -> u32 {
    limits::QUEUE_MAX_RETRIES_DEFAULT
}
fn retry_delay_default() -> u32 {
    limits::QUEUE_RETRY_DELAY_MS_DEFAULT
}
fn max_record_age_default() -> u32 {
    limits::QUEUE_MAX_RECORD_AGE_MS_DEFAULT
}
fn is_zero(v: &u32) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// `nats: {url, subject, stream, consumer, queue_group, ack_wait_ms}`: with `stream`, a
/// JetStream durable pull consumer (created when missing, as is the stream); without it,
/// core NATS subscriptions in a queue group (at most once: core NATS keeps nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSource {
    pub url: String,
    /// A subject filter (`orders.>`, `devices.*.status`).
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The durable consumer's name; derived from the function and trigger when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Core NATS's queue group; derived from the function and trigger when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    /// How long JetStream waits for an acknowledgement before it delivers a message again
    /// (the trigger tells it a message it still holds is in progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait_ms: Option<u32>,
}

/// `mqtt: {url, topic, qos, version, client_id, shared}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    /// `mqtt://host:1883` or `mqtts://host:8883`.
    pub url: String,
    /// A topic filter (`devices/+/status`, `plant/#`), or a shared subscription
    /// (`$share/GROUP/filter`).
    pub topic: String,
    /// 0 (at most once) or 1 (at least once; the default).
    #[serde(default = "qos_default")]
    pub qos: u8,
    /// The protocol: 3 (3.1.1) or 5 (the default).
    #[serde(default = "mqtt_version_default")]
    pub version: u8,
    /// Subscribe as a shared subscription (`$share/<group>/topic`) so that every node's
    /// trigger splits the topic instead of each taking every message. On by default.
    #[serde(default = "true_default")]
    pub shared: bool,
}

fn qos_default() -> u8 {
    1
}
fn mqtt_version_default() -> u8 {
    5
}
fn true_default() -> bool {
    true
}

/// `amqp: {url, queue, prefetch}`: a RabbitMQ queue (declared durable when missing),
/// consumed with manual acknowledgements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSource {
    /// `amqp://user:password@host:5672/vhost` or `amqps://...`.
    pub url: String,
    pub queue: String,
    /// Unacknowledged messages the broker sends ahead at most; derived from the batch size
    /// and concurrency when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u16>,
}

/// `redis: {url, stream, group}`: a Redis stream read through a consumer group (created,
/// with the stream, when missing); entries a dead consumer left pending are claimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSource {
    /// `redis://[:password@]host:6379[/db]` or `rediss://...`.
    pub url: String,
    pub stream: String,
    /// The consumer group; derived from the function and trigger when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Which broker a queue trigger reads, with its settings.
#[derive(Clone, Copy, Debug)]
pub enum QueueSource<'a> {
    Nats(&'a NatsSource),
    Mqtt(&'a MqttSource),
    Amqp(&'a AmqpSource),
    Redis(&'a RedisSource),
}

impl QueueSource<'_> {
    /// `nats`, `mqtt`, `amqp` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            QueueSource::Nats(_) => "nats",
            QueueSource::Mqtt(_) => "mqtt",
            QueueSource::Amqp(_) => "amqp",
            QueueSource::Redis(_) => "redis",
        }
    }

    pub fn url(&self) -> &str {
        match self {
            QueueSource::Nats(s) => &s.url,
            QueueSource::Mqtt(s) => &s.url,
            QueueSource::Amqp(s) => &s.url,
            QueueSource::Redis(s) => &s.url,
        }
    }
}

impl QueueTrigger {
    /// The broker it reads; `None` only for a spec that failed validation (it names
    /// exactly one).
    pub fn source(&self) -> Option<QueueSource<'_>> {
        let mut named = [
            self.nats.as_ref().map(QueueSource::Nats),
            self.mqtt.as_ref().map(QueueSource::Mqtt),
            self.amqp.as_ref().map(QueueSource::Amqp),
            self.redis.as_ref().map(QueueSource::Redis),
        ]
        .into_iter()
        .flatten();
        match (named.next(), named.next()) {
            (Some(s), None) => Some(s),
            _ => None,
        }
    }

    /// The trigger's name: its own, else its broker's kind.
    pub fn name(&self) -> &str {
        match &self.name {
            Some(n) => n,
            None => self.source().map_or("queue", |s| s.kind()),
        }
    }

    /// The spec with every URL's password (or token) replaced by `****`: what the API
    /// and the CLI show.
    pub fn redacted(&self) -> QueueTrigger {
        let mut t = self.clone();
        if let Some(s) = &mut t.nats {
            s.url = redact_url(&s.url);
        }
        if let Some(s) = &mut t.mqtt {
            s.url = redact_url(&s.url);
        }
        if let Some(s) = &mut t.amqp {
            s.url = redact_url(&s.url);
        }
        if let Some(s) = &mut t.redis {
            s.url = redact_url(&s.url);
        }
        t
    }

    /// Batches in flight at most, given the function's capacity.
    pub fn concurrency(&self, capacity: u32) -> u32 {
        self.max_concurrency
            .unwrap_or(capacity)
            .clamp(1, capacity.max(1))
    }
}

/// `url` with the secret of its user part replaced: `amqp://guest:****@host/`,
/// `nats://****@host` (a NATS token is the whole user part), `redis://:****@host`. Each
/// URL of a comma-separated list (NATS's cluster seeds) is redacted.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((user, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    let user = match user.split_once(':') {
        Some((name, _)) => format!("{name}:****"),
        None => "****".to_string(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

/// The schemes each broker's URL may use.
fn schemes(kind: &str) -> &'static [&'static str] {
    match kind {
        "nats" => &["nats", "tls", "ws", "wss"],
        "mqtt" => &["mqtt", "mqtts", "tcp", "ssl"],
        "amqp" => &["amqp", "amqps"],
        _ => &["redis", "rediss"],
    }
}

/// Checks a queue trigger's shape: one broker, its URL's scheme and host, names, topic and
/// subject filters, and the delivery settings' bounds.
pub(crate) fn validate(field: &str, t: &QueueTrigger, errors: &mut Vec<FieldError>) {
    let mut err = |at: String, message: String| {
        errors.push(FieldError {
            field: format!("{field}{at}"),
            message,
        })
    };
    if let Some(name) = &t.name
        && !crate::timer::valid_name(name)
    {
        err(
            ".name".into(),
            format!(
                "`{name}` must be 1 to {} letters, digits, `-` or `_`",
                limits::NAME_LEN_MAX
            ),
        );
    }
    let Some(source) = t.source() else {
        err(
            String::new(),
            "names one broker: exactly one of `nats:`, `mqtt:`, `amqp:` or `redis:`".into(),
        );
        return;
    };
    let kind = source.kind();
    let url = source.url();
    for one in url.split(',') {
        if let Err(e) = check_url(one, schemes(kind)) {
            err(format!(".{kind}.url"), e);
        }
    }
    match source {
        QueueSource::Nats(s) => {
            if let Err(e) = check_nats_subject(&s.subject) {
                err(".nats.subject".into(), e);
            }
            for (what, value) in [
                ("stream", &s.stream),
                ("consumer", &s.consumer),
                ("queue_group", &s.queue_group),
            ] {
                if let Some(v) = value
                    && !valid_broker_name(v)
                {
                    err(
                        format!(".nats.{what}"),
                        format!(
                            "`{v}` must be 1 to {} letters, digits, `-` or `_`",
                            limits::NAME_LEN_MAX
                        ),
                    );
                }
            }
            if let Some(ms) = s.ack_wait_ms
                && !(limits::QUEUE_ACK_WAIT_MS_MIN..=limits::QUEUE_ACK_WAIT_MS_MAX).contains(&ms)
            {
                err(
                    ".nats.ack_wait_ms".into(),
                    format!(
                        "is {ms}; use {} to {}",
                        limits::QUEUE_ACK_WAIT_MS_MIN,
                        limits::QUEUE_ACK_WAIT_MS_MAX
                    ),
                );
            }
        }
        QueueSource::Mqtt(s) => {
            if let Err(e) = check_mqtt_filter(&s.topic) {
                err(".mqtt.topic".into(), e);
            }
            if s.qos > 1 {
                err(
                    ".mqtt.qos".into(),
                    format!(
                        "is {}; use 0 (at most once) or 1 (at least once; QoS 2's extra handshake buys nothing when a message may be delivered again anyway)",
                        s.qos
                    ),
                );
            }
            if s.version != 3 && s.version != 5 {
                err(
                    ".mqtt.version".into(),
                    format!("is {}; use 3 (MQTT 3.1.1) or 5", s.version),
                );
            }
        }
        QueueSource::Amqp(s) => {
            if s.queue.is_empty() || s.queue.len() > 255 {
                err(
                    ".amqp.queue".into(),
                    "must be 1 to 255 bytes (a RabbitMQ queue name)".into(),
                );
            }
            if s.prefetch == Some(0) {
                err(
                    ".amqp.prefetch".into(),
                    "must be at least 1 (0 would let the broker send without bound)".into(),
                );
            }
        }
        QueueSource::Redis(s) => {
            if s.stream.is_empty() || s.stream.len() > limits::QUEUE_KEY_BYTES_MAX {
                err(
                    ".redis.stream".into(),
                    format!("must be 1 to {} bytes", limits::QUEUE_KEY_BYTES_MAX),
                );
            }
            if let Some(g) = &s.group
                && !valid_broker_name(g)
            {
                err(
                    ".redis.group".into(),
                    format!(
                        "`{g}` must be 1 to {} letters, digits, `-` or `_`",
                        limits::NAME_LEN_MAX
                    ),
                );
            }
        }
    }
    if !(1..=limits::QUEUE_BATCH_SIZE_MAX).contains(&t.batch_size) {
        err(
            ".batch_size".into(),
            format!(
                "is {}; use 1 to {}",
                t.batch_size,
                limits::QUEUE_BATCH_SIZE_MAX
            ),
        );
    }
    if t.batch_window_ms > limits::QUEUE_BATCH_WINDOW_MS_MAX {
        err(
            ".batch_window_ms".into(),
            format!(
                "is {}; at most {} (five minutes, as Lambda's)",
                t.batch_window_ms,
                limits::QUEUE_BATCH_WINDOW_MS_MAX
            ),
        );
    }
    if t.max_retries > limits::QUEUE_MAX_RETRIES_MAX {
        err(
            ".max_retries".into(),
            format!(
                "is {}; at most {}",
                t.max_retries,
                limits::QUEUE_MAX_RETRIES_MAX
            ),
        );
    }
    if !(limits::QUEUE_RETRY_DELAY_MS_MIN..=limits::QUEUE_RETRY_DELAY_MS_MAX)
        .contains(&t.retry_delay_ms)
    {
        err(
            ".retry_delay_ms".into(),
            format!(
                "is {}; use {} to {}",
                t.retry_delay_ms,
                limits::QUEUE_RETRY_DELAY_MS_MIN,
                limits::QUEUE_RETRY_DELAY_MS_MAX
            ),
        );
    }
    if t.max_record_age_ms < limits::QUEUE_MAX_RECORD_AGE_MS_MIN {
        err(
            ".max_record_age_ms".into(),
            format!(
                "is {}; at least {}",
                t.max_record_age_ms,
                limits::QUEUE_MAX_RECORD_AGE_MS_MIN
            ),
        );
    }
    if let Some(c) = t.max_concurrency
        && !(1..=limits::QUEUE_CONCURRENCY_MAX).contains(&c)
    {
        err(
            ".max_concurrency".into(),
            format!("is {c}; use 1 to {}", limits::QUEUE_CONCURRENCY_MAX),
        );
    }
}

/// A broker-side name (a stream, consumer, group): what every one of the four accepts.
fn valid_broker_name(name: &str) -> bool {
    crate::timer::valid_name(name)
}

/// `scheme://[user[:password]@]host[:port][/...]` with a scheme of `allowed`.
fn check_url(url: &str, allowed: &[&str]) -> Result<(), String> {
    let shown = redact_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "`{shown}` is not a URL; write {}://HOST:PORT",
            allowed[0]
        ));
    };
    if !allowed.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "the scheme `{scheme}` is not one this broker speaks; use {}",
            allowed
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("`{shown}` names no host"));
    }
    if let Some((_, port)) = host.rsplit_once(':')
        && !host.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("`{shown}`: `{port}` is not a port"));
    }
    if url.len() > limits::WEBHOOK_URL_LEN_MAX {
        return Err(format!(
            "is {} bytes; at most {}",
            url.len(),
            limits::WEBHOOK_URL_LEN_MAX
        ));
    }
    Ok(())
}

/// A NATS subject filter: dot-separated tokens, `*` a whole token, `>` only last.
pub fn check_nats_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() || subject.len() > limits::QUEUE_KEY_BYTES_MAX {
        return Err(format!(
            "must be 1 to {} bytes",
            limits::QUEUE_KEY_BYTES_MAX
        ));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, tok) in tokens.iter().enumerate() {
        if tok.is_empty() {
            return Err(format!(
                "`{subject}` has an empty token (two dots, or a dot at an end)"
            ));
        }
        if tok.chars().any(|c| c.is_whitespace()) {
            return Err(format!("`{subject}` has white space"));
        }
        if tok.len() > 1 && (tok.contains('*') || tok.contains('>')) {
            return Err(format!(
                "`{subject}`: `*` and `>` stand for whole tokens (`orders.*`, not `orders*`)"
            ));
        }
        if *tok == ">" && i + 1 != tokens.len() {
            return Err(format!("`{subject}`: `>` may only be the last token"));
        }
    }
    Ok(())
}

/// An MQTT topic filter (MQTT 5 §4.7): `+` a whole level, `#` only the last level, a
/// shared subscription `$share/GROUP/FILTER` with a group of neither.
pub fn check_mqtt_filter(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > limits::QUEUE_KEY_BYTES_MAX {
        return Err(format!(
            "must be 1 to {} bytes",
            limits::QUEUE_KEY_BYTES_MAX
        ));
    }
    if topic.contains('\0') {
        return Err("has a NUL character".into());
    }
    let filter = match topic.strip_prefix("$share/") {
        Some(rest) => {
            let Some((group, filter)) = rest.split_once('/') else {
                return Err(format!(
                    "`{topic}`: a shared subscription is `$share/GROUP/FILTER`"
                ));
            };
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(format!(
                    "`{topic}`: the share group must be a non-empty name without `+` or `#`"
                ));
            }
            filter
        }
        None => topic,
    };
    if filter.is_empty() {
        return Err(format!("`{topic}` has no topic filter"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.len() > 1 && (level.contains('+') || level.contains('#')) {
            return Err(format!(
                "`{topic}`: `+` and `#` stand for whole levels (`devices/+/status`, not `devices/d+`)"
            ));
        }
        if *level == "#" && i + 1 != levels.len() {
            return Err(format!("`{topic}`: `#` may only be the last level"));
        }
    }
    Ok(())
}

/// Whether `topic` (a message's topic, no wildcards) matches the MQTT filter `filter`.
pub fn mqtt_topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return !topic.starts_with('$') || !filter.starts_with(['#', '+']),
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> QueueTrigger {
        serde_json::from_value(v).unwrap()
    }

    fn errors(v: serde_json::Value) -> Vec<String> {
        let mut errors = Vec::new();
        validate("q", &spec(v), &mut errors);
        errors
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn defaults_and_names() {
        let t = spec(
            serde_json::json!({"mqtt": {"url": "mqtt://127.0.0.1:1883", "topic": "devices/+/status"}}),
        );
        assert_eq!(t.name(), "mqtt");
        assert_eq!((t.batch_size, t.batch_window_ms, t.ordered), (10, 0, false));
        let m = t.mqtt.as_ref().unwrap();
        assert_eq!((m.qos, m.version, m.shared), (1, 5, true));
        assert_eq!(t.concurrency(20), 20);
        let t = spec(serde_json::json!({"name": "orders", "max_concurrency": 4,
            "redis": {"url": "redis://127.0.0.1", "stream": "s"}}));
        assert_eq!(t.name(), "orders");
        assert_eq!(t.concurrency(20), 4);
        assert_eq!(t.concurrency(2), 2, "never more than the function can run");
        assert!(errors(serde_json::to_value(&t).unwrap()).is_empty());
    }

    #[test]
    fn secrets_in_urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:****@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("nats://tok3n@host:4222"),
            "nats://****@host:4222"
        );
        assert_eq!(redact_url("redis://:pw@host/0"), "redis://:****@host/0");
        assert_eq!(redact_url("mqtt://host:1883"), "mqtt://host:1883");
        assert_eq!(
            redact_url("nats://a:b@h1:4222,nats://a:b@h2:4222"),
            "nats://a:****@h1:4222,nats://a:****@h2:4222"
        );
        assert_eq!(
            redact_url("amqp://u:p%40ss@h/v?x=@"),
            "amqp://u:****@h/v?x=@",
            "an @ after the authority is not the user's"
        );
        let t =
            spec(serde_json::json!({"amqp": {"url": "amqp://guest:s3cret@h:5672", "queue": "q"}}));
        let shown = serde_json::to_string(&t.redacted()).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        // A bad URL's error does not echo its secret either.
        let e = errors(
            serde_json::json!({"amqp": {"url": "amqp://guest:s3cret@h:notaport", "queue": "q"}}),
        );
        assert_eq!(e.len(), 1);
        assert!(!e[0].contains("s3cret"), "{e:?}");
    }

    #[test]
    fn bad_specs_are_refused_with_the_field_named() {
        let e = errors(serde_json::json!({"mqtt": {"url": "http://h:1883", "topic": "a/#/b"}}));
        assert!(e[0].starts_with("q.mqtt.url: the scheme `http`"), "{e:?}");
        assert!(
            e[1].starts_with("q.mqtt.topic:") && e[1].contains("last level"),
            "{e:?}"
        );
        let e = errors(
            serde_json::json!({"mqtt": {"url": "mqtt://h", "topic": "a/b+", "qos": 2, "version": 4}}),
        );
        assert_eq!(e.len(), 3, "{e:?}");
        let e =
            errors(serde_json::json!({"nats": {"url": "nats://h:4222", "subject": "orders.>.x"}}));
        assert!(e[0].contains("`>` may only be the last token"), "{e:?}");
        let e = errors(serde_json::json!({"nats": {"url": "nats://h", "subject": "a..b"}}));
        assert!(e[0].contains("empty token"), "{e:?}");
        let e = errors(
            serde_json::json!({"batch_size": 0, "batch_window_ms": 400000,
            "redis": {"url": "redis://h", "stream": "s"}}),
        );
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errors(
            serde_json::json!({"batch_size": 1001, "redis": {"url": "redis://h", "stream": "s"}}),
        );
        assert!(e[0].starts_with("q.batch_size: is 1001"), "{e:?}");
        let e = errors(serde_json::json!({}));
        assert!(e[0].contains("exactly one of"), "{e:?}");
        let e = errors(
            serde_json::json!({"redis": {"url": "redis://h", "stream": "s"},
            "amqp": {"url": "amqp://h", "queue": "q"}}),
        );
        assert!(e[0].contains("exactly one of"), "{e:?}");
        let e = errors(serde_json::json!({"amqp": {"url": "amqp://", "queue": "q"}}));
        assert!(e[0].contains("names no host"), "{e:?}");
        assert!(
            errors(serde_json::json!({"mqtt": {"url": "mqtt://h", "topic": "$share/g/devices/+/status"}}))
                .is_empty()
        );
        let e = errors(serde_json::json!({"mqtt": {"url": "mqtt://h", "topic": "$share/g"}}));
        assert!(e[0].contains("$share/GROUP/FILTER"), "{e:?}");
    }

    #[test]
    fn mqtt_filters_match_as_the_spec_says() {
        assert!(mqtt_topic_matches("devices/+/status", "devices/d1/status"));
        assert!(!mqtt_topic_matches(
            "devices/+/status",
            "devices/d1/x/status"
        ));
        assert!(mqtt_topic_matches("plant/#", "plant/a/b"));
        assert!(mqtt_topic_matches("plant/#", "plant"));
        assert!(mqtt_topic_matches("$share/g/a/+", "a/b"));
        assert!(!mqtt_topic_matches("#", "$SYS/uptime"));
    }
}
