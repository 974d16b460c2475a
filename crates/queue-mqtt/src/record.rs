//! What the function's record shows of an MQTT message: its id, its source fields
//! (`record["mqtt"]`: topic, QoS, retain, dup and MQTT 5's properties) and its headers
//! (MQTT 5's user properties). Pure code over rumqttc's packets, tested here.

use std::hash::{BuildHasher, Hasher};

use rumqttc::v5::mqttbytes::v5::Publish as Publish5;
use serde_json::{Map, Value};

/// The user property a publisher may set to give a message its own id (then stable across
/// redeliveries, and the dead-letter queue's dedupe key).
pub(crate) const MESSAGE_ID_PROPERTY: &str = "message-id";

/// Longest id taken from a publisher's `message-id` property; a longer one is ignored.
const MESSAGE_ID_MAX: usize = 200;

/// A number no other connection (of this process or another) draws: MQTT gives messages
/// no id, so each receipt's id is this connection's nonce and its count.
pub(crate) fn nonce() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A message's id: the publisher's `message-id` user property when it set a usable one,
/// else unique to this receipt.
pub(crate) fn id(nonce: u64, seq: u64, headers: &[(String, String)]) -> String {
    headers
        .iter()
        .find(|(k, v)| k == MESSAGE_ID_PROPERTY && !v.is_empty() && v.len() <= MESSAGE_ID_MAX)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| format!("{nonce:016x}-{seq}"))
}

/// The fields every MQTT version has.
pub(crate) fn fields(topic: &str, qos: u8, retain: bool, dup: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("topic".into(), Value::String(topic.to_string()));
    m.insert("qos".into(), Value::from(qos));
    m.insert("retain".into(), Value::Bool(retain));
    m.insert("dup".into(), Value::Bool(dup));
    m
}

/// An MQTT 5 message's topic (text: the protocol requires UTF-8), fields and headers.
pub(crate) fn v5(p: &Publish5) -> (String, Map<String, Value>, Vec<(String, String)>) {
    let topic = String::from_utf8_lossy(&p.topic).into_owned();
    let mut m = fields(&topic, p.qos as u8, p.retain, p.dup);
    let mut headers = Vec::new();
    if let Some(props) = &p.properties {
        if let Some(ct) = &props.content_type {
            m.insert("content_type".into(), Value::String(ct.clone()));
        }
        if let Some(rt) = &props.response_topic {
            m.insert("response_topic".into(), Value::String(rt.clone()));
        }
        if let Some(cd) = &props.correlation_data {
            m.insert("correlation_data".into(), Value::String(text_or_hex(cd)));
        }
        if let Some(pfi) = props.payload_format_indicator {
            m.insert("payload_format".into(), Value::from(pfi));
        }
        if let Some(exp) = props.message_expiry_interval {
            m.insert("message_expiry_interval".into(), Value::from(exp));
        }
        headers = props.user_properties.clone();
    }
    (topic, m, headers)
}

/// Correlation data is binary: shown as text when it is UTF-8, else as hex.
fn text_or_hex(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;

    use super::*;

    #[test]
    fn ids_are_the_publishers_or_unique_per_receipt() {
        let n = nonce();
        assert_ne!(n, nonce());
        assert_eq!(id(n, 1, &[]), format!("{n:016x}-1"));
        assert_ne!(id(n, 1, &[]), id(n, 2, &[]));
        let given = vec![("message-id".to_string(), "order-7".to_string())];
        assert_eq!(id(n, 1, &given), "order-7");
        let empty = vec![("message-id".to_string(), String::new())];
        assert_eq!(id(n, 3, &empty), format!("{n:016x}-3"));
        let long = vec![("message-id".to_string(), "x".repeat(500))];
        assert_eq!(id(n, 4, &long), format!("{n:016x}-4"));
    }

    #[test]
    fn v5_properties_become_fields_and_headers() {
        let mut p = Publish5::new("a/b", QoS::AtLeastOnce, "hi", None);
        p.retain = true;
        p.properties = Some(PublishProperties {
            content_type: Some("text/plain".into()),
            response_topic: Some("replies".into()),
            correlation_data: Some(Bytes::from_static(&[0xff, 0x01])),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        });
        let (topic, f, h) = v5(&p);
        assert_eq!(topic, "a/b");
        assert_eq!(f["topic"], "a/b");
        assert_eq!(f["qos"], 1);
        assert_eq!(f["retain"], true);
        assert_eq!(f["dup"], false);
        assert_eq!(f["content_type"], "text/plain");
        assert_eq!(f["response_topic"], "replies");
        assert_eq!(f["correlation_data"], "ff01");
        assert_eq!(h, vec![("k".to_string(), "v".to_string())]);
        let bare = Publish5::new("t", QoS::AtMostOnce, "x", None);
        let (_, f, h) = v5(&bare);
        assert_eq!(f.len(), 4);
        assert!(h.is_empty());
    }
}
