//! A batch's event and the reading of its function's answer: pure code over messages.
//!
//! The event is `{"Records": [...]}` (or, with `format: cloudevent`, a JSON array of
//! structured CloudEvents, the CloudEvents batch format). The answer may report partial
//! failures as Lambda's SQS mapping reads them: `{"batchItemFailures": [{"itemIdentifier":
//! ID}]}`; anything that names no message of the batch, or is not that shape, fails the
//! whole batch.

use std::collections::HashSet;

use base64::Engine;
use bytes::Bytes;
use model::timer::EventFormat;
use serde_json::{Map, Value, json};

use super::source::Message;

/// Where a record came from, for its `eventSource` and CloudEvents' `source`.
pub(crate) struct Origin<'a> {
    /// `nats`, `mqtt`, `amqp`, `redis`.
    pub kind: &'a str,
    /// The trigger's name.
    pub trigger: &'a str,
    /// The broker's URL, its secrets redacted.
    pub url: &'a str,
}

/// One message of a batch with how often the function has had it.
pub(crate) struct Item<'a> {
    pub message: &'a Message,
    /// This is the message's `attempt`-th call (1 the first).
    pub attempt: u32,
    /// When the trigger first took it (ms since the epoch).
    pub received_ms: i64,
}

/// The event of one batch.
pub(crate) fn event(origin: &Origin<'_>, format: EventFormat, items: &[Item<'_>]) -> Bytes {
    let value = match format {
        EventFormat::Native => {
            json!({"Records": items.iter().map(|i| record(origin, i)).collect::<Vec<_>>()})
        }
        EventFormat::Cloudevent => {
            Value::Array(items.iter().map(|i| cloudevent(origin, i)).collect())
        }
    };
    Bytes::from(serde_json::to_vec(&value).expect("a record serializes"))
}

/// The body as text when it is UTF-8, else base64 (and the flag says so).
fn body(m: &Message) -> (Value, bool) {
    match std::str::from_utf8(&m.body) {
        Ok(text) => (Value::String(text.to_string()), false),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(&m.body)),
            true,
        ),
    }
}

fn headers(m: &Message) -> Value {
    let mut map = Map::new();
    for (k, v) in &m.headers {
        map.insert(k.clone(), Value::String(v.clone()));
    }
    Value::Object(map)
}

fn record(origin: &Origin<'_>, item: &Item<'_>) -> Value {
    let m = item.message;
    let (body, base64) = body(m);
    let mut r = json!({
        "messageId": m.id,
        "eventSource": format!("nimbus:{}", origin.kind),
        "trigger": origin.trigger,
        "body": body,
        "isBase64Encoded": base64,
        "headers": headers(m),
        "attempt": item.attempt,
        "receivedAt": model::civil::rfc3339_ms(item.received_ms),
    });
    if let Some(ms) = m.published_ms {
        r["publishedAt"] = Value::String(model::civil::rfc3339_ms(ms));
    }
    r[origin.kind] = Value::Object(m.fields.clone());
    r
}

/// A structured CloudEvent 1.0: the body as JSON `data` when it is JSON, as text when it
/// is text, else `data_base64`; the key as `subject`; the source's fields as extension
/// attributes (`natssequence`, `mqttqos`, ...: CloudEvents' names are lower-case letters
/// and digits).
fn cloudevent(origin: &Origin<'_>, item: &Item<'_>) -> Value {
    let m = item.message;
    let mut ce = json!({
        "specversion": "1.0",
        "id": m.id,
        "source": origin.url,
        "type": format!("nimbus.queue.{}.message", origin.kind),
        "subject": m.key,
        "nimbustrigger": origin.trigger,
        "nimbusattempt": item.attempt,
    });
    if let Some(ms) = m.published_ms {
        ce["time"] = Value::String(model::civil::rfc3339_ms(ms));
    }
    match serde_json::from_slice::<Value>(&m.body) {
        Ok(data) if !m.body.is_empty() => {
            ce["datacontenttype"] = "application/json".into();
            ce["data"] = data;
        }
        _ => match std::str::from_utf8(&m.body) {
            Ok(text) => {
                ce["datacontenttype"] = "text/plain".into();
                ce["data"] = Value::String(text.to_string());
            }
            Err(_) => {
                ce["datacontenttype"] = "application/octet-stream".into();
                ce["data_base64"] =
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&m.body));
            }
        },
    }
    for (k, v) in &m.fields {
        let name: String = format!("{}{k}", origin.kind)
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let value = match v {
            Value::String(s) => Value::String(s.clone()),
            Value::Null => continue,
            other => Value::String(other.to_string()),
        };
        ce[name] = value;
    }
    ce
}

/// What a successful call's answer says of its batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Every message succeeded.
    AllDone,
    /// These messages (by id) failed; the others succeeded.
    Failed(HashSet<String>),
    /// The answer is not one Lambda's contract allows: the whole batch failed.
    Malformed(String),
}

/// Reads `{"batchItemFailures": [{"itemIdentifier": ID}, ...]}` from `body` against the
/// batch's ids, as Lambda does: an absent, null or empty list is a complete success; an
/// item with a missing, empty, non-string or unknown identifier fails the whole batch.
pub(crate) fn read_answer(body: &[u8], ids: &HashSet<&str>) -> Answer {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Answer::AllDone;
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Answer::Malformed(format!("the answer is not JSON: {e}")),
    };
    let list = match value.get("batchItemFailures") {
        None | Some(Value::Null) => return Answer::AllDone,
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Answer::Malformed(
                "`batchItemFailures` must be a list of {\"itemIdentifier\": ID}".into(),
            );
        }
    };
    let mut failed = HashSet::new();
    for (i, item) in list.iter().enumerate() {
        match item.get("itemIdentifier") {
            Some(Value::String(id)) if ids.contains(id.as_str()) => {
                failed.insert(id.clone());
            }
            Some(Value::String(id)) if id.is_empty() => {
                return Answer::Malformed(format!(
                    "batchItemFailures[{i}].itemIdentifier is empty"
                ));
            }
            Some(Value::String(id)) => {
                return Answer::Malformed(format!(
                    "batchItemFailures[{i}].itemIdentifier `{id}` is not a messageId of this batch"
                ));
            }
            _ => {
                return Answer::Malformed(format!(
                    "batchItemFailures[{i}] has no string `itemIdentifier` (the casing is exactly that)"
                ));
            }
        }
    }
    if failed.is_empty() {
        Answer::AllDone
    } else {
        Answer::Failed(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::source::NoAck;

    fn message(id: &str, body: &[u8]) -> Message {
        let mut fields = Map::new();
        fields.insert("topic".into(), "devices/d1/status".into());
        fields.insert("qos".into(), 1.into());
        fields.insert("retain".into(), false.into());
        Message {
            id: id.into(),
            key: "devices/d1/status".into(),
            body: Bytes::copy_from_slice(body),
            headers: vec![("content-type".into(), "text/plain".into())],
            fields,
            published_ms: None,
            ack: Box::new(NoAck),
        }
    }

    const ORIGIN: Origin<'static> = Origin {
        kind: "mqtt",
        trigger: "devices",
        url: "mqtt://127.0.0.1:1883",
    };

    #[test]
    fn records_carry_body_headers_and_source_fields() {
        let (a, b) = (message("1", b"on"), message("2", &[0xff, 0x00]));
        let items = [
            Item {
                message: &a,
                attempt: 1,
                received_ms: 0,
            },
            Item {
                message: &b,
                attempt: 2,
                received_ms: 0,
            },
        ];
        let e: Value =
            serde_json::from_slice(&event(&ORIGIN, EventFormat::Native, &items)).unwrap();
        let r = &e["Records"];
        assert_eq!(r[0]["messageId"], "1");
        assert_eq!(r[0]["body"], "on");
        assert_eq!(r[0]["isBase64Encoded"], false);
        assert_eq!(r[0]["headers"]["content-type"], "text/plain");
        assert_eq!(r[0]["mqtt"]["topic"], "devices/d1/status");
        assert_eq!(r[0]["mqtt"]["qos"], 1);
        assert_eq!(r[0]["eventSource"], "nimbus:mqtt");
        assert_eq!(r[0]["receivedAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(r[1]["body"], "/wA=");
        assert_eq!(r[1]["isBase64Encoded"], true);
        assert_eq!(r[1]["attempt"], 2);
    }

    #[test]
    fn cloudevents_take_json_text_or_base64_data() {
        let (a, b, c) = (
            message("1", br#"{"t": 21}"#),
            message("2", b"on"),
            message("3", &[0xff]),
        );
        let items: Vec<Item> = [&a, &b, &c]
            .into_iter()
            .map(|m| Item {
                message: m,
                attempt: 1,
                received_ms: 0,
            })
            .collect();
        let e: Value =
            serde_json::from_slice(&event(&ORIGIN, EventFormat::Cloudevent, &items)).unwrap();
        assert_eq!(e[0]["specversion"], "1.0");
        assert_eq!(e[0]["type"], "nimbus.queue.mqtt.message");
        assert_eq!(e[0]["subject"], "devices/d1/status");
        assert_eq!(e[0]["data"]["t"], 21);
        assert_eq!(e[0]["mqttqos"], "1");
        assert_eq!(e[0]["mqtttopic"], "devices/d1/status");
        assert_eq!(e[1]["data"], "on");
        assert_eq!(e[1]["datacontenttype"], "text/plain");
        assert_eq!(e[2]["data_base64"], "/w==");
    }

    #[test]
    fn answers_are_read_as_lambda_reads_them() {
        let ids: HashSet<&str> = ["a", "b"].into_iter().collect();
        for done in [
            &b""[..],
            b"null",
            b"{}",
            b"{\"batchItemFailures\": []}",
            b"{\"batchItemFailures\": null}",
            b"\"ok\"",
        ] {
            assert_eq!(
                read_answer(done, &ids),
                Answer::AllDone,
                "{}",
                String::from_utf8_lossy(done)
            );
        }
        assert_eq!(
            read_answer(br#"{"batchItemFailures": [{"itemIdentifier": "b"}]}"#, &ids),
            Answer::Failed(["b".to_string()].into_iter().collect())
        );
        for bad in [
            &br#"{"batchItemFailures": [{"itemidentifier": "b"}]}"#[..],
            br#"{"batchItemFailures": [{"itemIdentifier": "zz"}]}"#,
            br#"{"batchItemFailures": [{"itemIdentifier": ""}]}"#,
            br#"{"batchItemFailures": [{"itemIdentifier": null}]}"#,
            br#"{"batchItemFailures": {"itemIdentifier": "a"}}"#,
            b"not json",
        ] {
            assert!(
                matches!(read_answer(bad, &ids), Answer::Malformed(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
