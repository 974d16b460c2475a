//! Pure reading of Redis's stream replies: entry ids, the entries of `XREADGROUP` and
//! `XAUTOCLAIM`, the group's lag in `XINFO GROUPS`, and an entry's mapping to a message's
//! body, headers and fields.
//!
//! Nothing here trusts the broker's shape: a reply that is not what the protocol says is an
//! error (the consumer connects again), never a panic.

use redis::Value;
use serde_json::{Map, Value as Json};

/// One stream entry: its id and its fields in order (`None` when the entry was deleted
/// while it was pending: Redis then answers a pending read with the id and a nil).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub id: String,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// The two parts of an entry id (`1700000000000-0`: milliseconds, then a sequence).
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The field names whose value is the message's body, in order of preference.
const BODY_FIELDS: [&str; 3] = ["body", "data", "message"];

/// What a message shows of an entry.
#[derive(Debug, PartialEq)]
pub(crate) struct Mapped {
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub published_ms: Option<i64>,
}

/// An entry as a message: the field named `body` (else `data`, else `message`) is the body
/// and the other fields are headers; an entry with none of them is its own body, a JSON
/// object of its fields (producers that write structured entries get them whole).
pub(crate) fn map_entry(id: &str, fields: &[(Vec<u8>, Vec<u8>)]) -> Mapped {
    let published_ms = parse_id(id).and_then(|(ms, _)| i64::try_from(ms).ok());
    let body_at = BODY_FIELDS
        .iter()
        .find_map(|name| fields.iter().position(|(k, _)| k == name.as_bytes()));
    match body_at {
        Some(at) => Mapped {
            body: fields[at].1.clone(),
            headers: fields
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != at)
                .map(|(_, (k, v))| (text(k), text(v)))
                .collect(),
            published_ms,
        },
        None => {
            let mut object = Map::new();
            for (k, v) in fields {
                object.insert(text(k), Json::String(text(v)));
            }
            Mapped {
                body: Json::Object(object).to_string().into_bytes(),
                headers: Vec::new(),
                published_ms,
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A reply's bytes, for the kinds Redis uses for strings.
fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        _ => None,
    }
}

fn string(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

/// One entry `[id, [field, value, ...]]` (or `[id, nil]`, deleted).
fn entry(v: &Value) -> Result<Entry, String> {
    let Value::Array(parts) = v else {
        return Err(format!("an entry is not [id, fields]: {v:?}"));
    };
    let [id, fields] = parts.as_slice() else {
        return Err(format!("an entry is not [id, fields]: {v:?}"));
    };
    let id = string(id).ok_or_else(|| format!("an entry's id is not text: {id:?}"))?;
    let fields = match fields {
        Value::Nil => None,
        Value::Array(flat) => {
            if flat.len() % 2 != 0 {
                return Err(format!("entry {id} has an odd number of field parts"));
            }
            let mut out = Vec::with_capacity(flat.len() / 2);
            for pair in flat.chunks(2) {
                match (bytes(&pair[0]), bytes(&pair[1])) {
                    (Some(k), Some(v)) => out.push((k, v)),
                    _ => return Err(format!("entry {id} has a field that is not text")),
                }
            }
            Some(out)
        }
        Value::Map(pairs) => {
            let mut out = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                match (bytes(k), bytes(v)) {
                    (Some(k), Some(v)) => out.push((k, v)),
                    _ => return Err(format!("entry {id} has a field that is not text")),
                }
            }
            Some(out)
        }
        other => return Err(format!("entry {id}'s fields are not a list: {other:?}")),
    };
    Ok(Entry { id, fields })
}

fn entries(v: &Value) -> Result<Vec<Entry>, String> {
    match v {
        Value::Array(list) => list.iter().map(entry).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("the entries are not a list: {other:?}")),
    }
}

/// The entries of `XREADGROUP` on one stream: nil (nothing came within the block),
/// `[[stream, [entry...]]]` (RESP2) or `{stream: [entry...]}` (RESP3).
pub(crate) fn read_reply(v: &Value) -> Result<Vec<Entry>, String> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for s in streams {
                match s {
                    Value::Array(pair) if pair.len() == 2 => out.extend(entries(&pair[1])?),
                    other => {
                        return Err(format!(
                            "a stream's reply is not [name, entries]: {other:?}"
                        ));
                    }
                }
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (_, list) in streams {
                out.extend(entries(list)?);
            }
            Ok(out)
        }
        other => Err(format!("XREADGROUP answered {other:?}")),
    }
}

/// `XAUTOCLAIM`'s reply `[next-cursor, [entry...], [deleted-id...]]`: the cursor to go on
/// from (`0-0` once the pending list was scanned to its end) and the entries claimed.
pub(crate) fn autoclaim_reply(v: &Value) -> Result<(String, Vec<Entry>), String> {
    let Value::Array(parts) = v else {
        return Err(format!("XAUTOCLAIM answered {v:?}"));
    };
    let (Some(cursor), Some(list)) = (parts.first(), parts.get(1)) else {
        return Err(format!("XAUTOCLAIM answered {v:?}"));
    };
    let cursor = string(cursor).ok_or_else(|| format!("XAUTOCLAIM's cursor: {cursor:?}"))?;
    Ok((cursor, entries(list)?))
}

/// The group's lag in `XINFO GROUPS` (entries not delivered to it yet), else its pending
/// count (an older Redis, or a lag Redis cannot tell after deletions); `None` when the
/// group is not listed.
pub(crate) fn group_lag(v: &Value, group: &str) -> Option<u64> {
    let Value::Array(groups) = v else {
        return None;
    };
    for g in groups {
        let pairs: Vec<(&Value, &Value)> = match g {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|p| Some((p.first()?, p.get(1)?)))
                .collect(),
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            _ => continue,
        };
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| string(k).as_deref() == Some(name))
                .map(|(_, v)| *v)
        };
        if get("name").and_then(string).as_deref() != Some(group) {
            continue;
        }
        let number = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        return number(get("lag")).or_else(|| number(get("pending")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        p.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn ids_parse_into_milliseconds_and_sequence() {
        assert_eq!(parse_id("1700000000000-0"), Some((1_700_000_000_000, 0)));
        assert_eq!(parse_id("0-1"), Some((0, 1)));
        for bad in [
            "",
            "-",
            "1700000000000",
            "a-0",
            "1-",
            "-1",
            "1-2-3",
            "+1-0",
            "1 -0",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_body_field_is_the_body_and_the_rest_are_headers() {
        let m = map_entry(
            "1700000000123-4",
            &pairs(&[
                ("kind", "order"),
                ("data", "d"),
                ("body", "hello"),
                ("trace", "t1"),
            ]),
        );
        assert_eq!(m.body, b"hello");
        assert_eq!(
            m.headers,
            vec![
                ("kind".to_string(), "order".to_string()),
                ("data".to_string(), "d".to_string()),
                ("trace".to_string(), "t1".to_string())
            ]
        );
        assert_eq!(m.published_ms, Some(1_700_000_000_123));
        let m = map_entry("1-0", &pairs(&[("message", "m"), ("data", "d")]));
        assert_eq!(m.body, b"d", "data comes before message");
        assert_eq!(m.headers, vec![("message".to_string(), "m".to_string())]);
    }

    #[test]
    fn an_entry_without_a_body_field_is_its_own_json_body() {
        let m = map_entry("5-0", &pairs(&[("temp", "21"), ("room", "k\"1")]));
        let body: Json = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body, serde_json::json!({"temp": "21", "room": "k\"1"}));
        assert!(m.headers.is_empty());
        assert_eq!(map_entry("x", &[]).published_ms, None);
        assert_eq!(map_entry("x", &[]).body, b"{}");
    }

    #[test]
    fn read_replies_in_both_protocols_and_deleted_entries() {
        let e1 = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("body"), bulk("a")]),
        ]);
        let gone = Value::Array(vec![bulk("2-0"), Value::Nil]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![e1.clone(), gone.clone()]),
        ])]);
        let got = read_reply(&resp2).unwrap();
        assert_eq!(
            got,
            vec![
                Entry {
                    id: "1-0".into(),
                    fields: Some(pairs(&[("body", "a")]))
                },
                Entry {
                    id: "2-0".into(),
                    fields: None
                }
            ]
        );
        let resp3 = Value::Map(vec![(bulk("s"), Value::Array(vec![e1, gone]))]);
        assert_eq!(read_reply(&resp3).unwrap(), got);
        assert_eq!(read_reply(&Value::Nil).unwrap(), vec![]);
        assert!(read_reply(&Value::Int(3)).is_err());
        let odd = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("body")]),
            ])]),
        ])]);
        assert!(read_reply(&odd).is_err());
    }

    #[test]
    fn autoclaim_replies_give_the_cursor_and_the_claimed() {
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk("3-1"),
                Value::Array(vec![bulk("k"), bulk("v")]),
            ])]),
            Value::Array(vec![]),
        ]);
        let (cursor, claimed) = autoclaim_reply(&reply).unwrap();
        assert_eq!(cursor, "0-0");
        assert_eq!(claimed[0].id, "3-1");
        assert!(autoclaim_reply(&Value::Array(vec![bulk("0-0")])).is_err());
    }

    #[test]
    fn lag_is_the_groups_lag_else_its_pending_count() {
        let group = |name: &str, lag: Value| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("pending"),
                Value::Int(2),
                bulk("lag"),
                lag,
            ])
        };
        let v = Value::Array(vec![
            group("other", Value::Int(9)),
            group("g", Value::Int(5)),
        ]);
        assert_eq!(group_lag(&v, "g"), Some(5));
        let v = Value::Array(vec![group("g", Value::Nil)]);
        assert_eq!(group_lag(&v, "g"), Some(2));
        assert_eq!(group_lag(&v, "missing"), None);
        let v = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("g")),
            (bulk("lag"), Value::Int(0)),
        ])]);
        assert_eq!(group_lag(&v, "g"), Some(0));
    }
}
