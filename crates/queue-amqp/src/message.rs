//! A delivery as the trigger's record shows it: its id, ordering key, headers and the
//! amqp fields. Pure code over lapin's types, so it is tested without a broker.

use std::hash::{BuildHasher, Hasher};

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde_json::{Map, Value, json};

/// A name for one connection, random enough that two connections (of this node or
/// another, now or after a restart) never share one.
pub(crate) fn nonce() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// What a delivery contributes to its `Message`, besides its body and acknowledgement.
#[derive(Debug)]
pub(crate) struct Parts {
    pub id: String,
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub fields: Map<String, Value>,
    pub published_ms: Option<i64>,
}

impl Parts {
    /// The parts of delivery `tag` on a connection named `nonce`. The id is the
    /// publisher's `message_id` when it set one (the same on every redelivery); else the
    /// delivery tag with the connection's name: unique, though a redelivery, on another
    /// connection, gets another (AMQP offers nothing stable without a message id, and a
    /// hash of the content would make two equal messages one).
    pub(crate) fn of(
        queue: &str,
        nonce: &str,
        tag: u64,
        exchange: &str,
        routing_key: &str,
        redelivered: bool,
        props: &BasicProperties,
    ) -> Parts {
        let id = match props.message_id() {
            Some(id) if !id.as_str().is_empty() => id.as_str().to_string(),
            _ => format!("{tag}@{nonce}"),
        };
        let mut headers: Vec<(String, String)> = props
            .headers()
            .as_ref()
            .map(|t| {
                t.into_iter()
                    .map(|(k, v)| (k.as_str().to_string(), text(v)))
                    .collect()
            })
            .unwrap_or_default();
        for (name, value) in [
            ("content_type", props.content_type()),
            ("content_encoding", props.content_encoding()),
            ("correlation_id", props.correlation_id()),
            ("reply_to", props.reply_to()),
            ("type", props.kind()),
            ("app_id", props.app_id()),
        ] {
            if let Some(v) = value {
                headers.push((name.to_string(), v.as_str().to_string()));
            }
        }
        if let Some(t) = props.timestamp() {
            headers.push(("timestamp".to_string(), t.to_string()));
        }
        let mut fields = Map::new();
        fields.insert("exchange".into(), exchange.into());
        fields.insert("routingKey".into(), routing_key.into());
        fields.insert("deliveryTag".into(), tag.into());
        fields.insert("redelivered".into(), redelivered.into());
        fields.insert("queue".into(), queue.into());
        Parts {
            id,
            key: routing_key.to_string(),
            headers,
            fields,
            // AMQP's timestamp counts seconds; an absurd one is dropped, not wrapped.
            published_ms: props
                .timestamp()
                .and_then(|s| i64::try_from(s).ok())
                .and_then(|s| s.checked_mul(1000)),
        }
    }
}

/// A header's value as text: strings as they are, numbers and booleans as written,
/// tables and arrays as JSON.
fn text(v: &AMQPValue) -> String {
    match json_of(v) {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn json_of(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => {
            // value × 10^-scale, written out exactly.
            let digits = d.value.to_string();
            let scale = usize::from(d.scale);
            if scale == 0 {
                Value::String(digits)
            } else {
                let padded = format!("{digits:0>width$}", width = scale + 1);
                let (int, frac) = padded.split_at(padded.len() - scale);
                Value::String(format!("{int}.{frac}"))
            }
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(json_of).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => Value::Object(
            t.into_iter()
                .map(|(k, v)| (k.as_str().to_string(), json_of(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, FieldTable, LongString, ShortString};

    use super::*;

    #[test]
    fn the_message_id_is_the_publishers_else_the_tag_on_this_connection() {
        let props = BasicProperties::default().with_message_id(ShortString::from("order-7"));
        let p = Parts::of("q", "n1", 3, "ex", "orders.eu", false, &props);
        assert_eq!((p.id.as_str(), p.key.as_str()), ("order-7", "orders.eu"));
        let p = Parts::of("q", "n1", 3, "", "q", true, &BasicProperties::default());
        assert_eq!(p.id, "3@n1");
        let other = Parts::of("q", "n2", 3, "", "q", true, &BasicProperties::default());
        assert_ne!(
            p.id, other.id,
            "equal tags on two connections are two messages"
        );
        assert_ne!(nonce(), nonce());
        assert_eq!(
            Value::Object(p.fields),
            json!({"exchange": "", "routingKey": "q", "deliveryTag": 3, "redelivered": true, "queue": "q"})
        );
        assert!(p.headers.is_empty());
        assert_eq!(p.published_ms, None);
    }

    #[test]
    fn headers_and_properties_become_text() {
        let mut table = FieldTable::default();
        table.insert("s".into(), AMQPValue::LongString(LongString::from("x y")));
        table.insert("n".into(), AMQPValue::LongLongInt(-5));
        table.insert("b".into(), AMQPValue::Boolean(true));
        table.insert(
            "a".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::ShortUInt(1),
                AMQPValue::LongString(LongString::from("two")),
            ])),
        );
        table.insert(
            "d".into(),
            AMQPValue::DecimalValue(lapin::types::DecimalValue {
                scale: 3,
                value: 25,
            }),
        );
        let props = BasicProperties::default()
            .with_headers(table)
            .with_content_type("application/json".into())
            .with_correlation_id("c-1".into())
            .with_type("order.created".into())
            .with_timestamp(1_700_000_000);
        let p = Parts::of("q", "n", 1, "ex", "k", false, &props);
        let h: std::collections::HashMap<&str, &str> = p
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(h["s"], "x y");
        assert_eq!(h["n"], "-5");
        assert_eq!(h["b"], "true");
        assert_eq!(h["a"], "[1,\"two\"]");
        assert_eq!(h["d"], "0.025");
        assert_eq!(h["content_type"], "application/json");
        assert_eq!(h["correlation_id"], "c-1");
        assert_eq!(h["type"], "order.created");
        assert_eq!(h["timestamp"], "1700000000");
        assert!(!h.contains_key("reply_to"));
        assert_eq!(p.published_ms, Some(1_700_000_000_000));
    }
}
