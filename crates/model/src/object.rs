//! The object trigger's spec (`triggers: [{object: {bucket, events, prefix, suffix}}]`):
//! which changes of a bucket call a function, with S3's event names and its rule that two
//! configurations of one bucket may not both match a change.

use serde::{Deserialize, Serialize};

use crate::function::FieldError;
use crate::limits;
use crate::timer::EventFormat;

/// The event names a rule may name, as S3's notification configurations do.
pub const EVENT_NAMES: [&str; 8] = [
    "s3:ObjectCreated:*",
    "s3:ObjectCreated:Put",
    "s3:ObjectCreated:Post",
    "s3:ObjectCreated:Copy",
    "s3:ObjectCreated:CompleteMultipartUpload",
    "s3:ObjectRemoved:*",
    "s3:ObjectRemoved:Delete",
    "s3:ObjectRemoved:DeleteMarkerCreated",
];

/// `triggers: [{object: {name, bucket, events, prefix, suffix, format}}]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectTrigger {
    /// Names the rule within its function (`object:NAME` in records); the bucket's name
    /// when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub bucket: String,
    /// S3 event names (`s3:ObjectCreated:*`, `s3:ObjectRemoved:Delete`, ...); every
    /// created object when none are named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Only keys that start so.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Only keys that end so.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub suffix: String,
    #[serde(default, skip_serializing_if = "EventFormat::is_native")]
    pub format: EventFormat,
}

impl ObjectTrigger {
    /// The rule's name: its own, else its bucket's.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.bucket)
    }

    /// The event names it takes (`s3:ObjectCreated:*` when it names none).
    pub fn event_names(&self) -> Vec<&str> {
        if self.events.is_empty() {
            vec!["s3:ObjectCreated:*"]
        } else {
            self.events.iter().map(String::as_str).collect()
        }
    }

    /// Whether a change named `event` (`ObjectCreated:Put`, without `s3:`) of `key` is the
    /// rule's.
    pub fn matches(&self, event: &str, key: &str) -> bool {
        key.starts_with(&self.prefix)
            && key.ends_with(&self.suffix)
            && self
                .event_names()
                .iter()
                .any(|name| event_matches(name, event))
    }

    /// Whether a change could match both rules (S3 refuses such configurations: one change,
    /// one rule). Prefixes overlap when one starts the other, suffixes when one ends the
    /// other, events when a name of one covers a name of the other.
    pub fn overlaps(&self, other: &ObjectTrigger) -> bool {
        self.bucket == other.bucket
            && (self.prefix.starts_with(&other.prefix) || other.prefix.starts_with(&self.prefix))
            && (self.suffix.ends_with(&other.suffix) || other.suffix.ends_with(&self.suffix))
            && self
                .event_names()
                .iter()
                .any(|a| other.event_names().iter().any(|b| names_overlap(a, b)))
    }
}

/// Whether the rule's `name` (`s3:ObjectCreated:*`) covers the change `event`
/// (`ObjectCreated:Put`).
pub fn event_matches(name: &str, event: &str) -> bool {
    let name = name.strip_prefix("s3:").unwrap_or(name);
    match name.strip_suffix('*') {
        Some(family) => event.starts_with(family),
        None => name == event,
    }
}

fn names_overlap(a: &str, b: &str) -> bool {
    let family = |n: &str| n.rsplit_once(':').map(|(f, _)| f.to_string());
    a == b || (family(a) == family(b) && (a.ends_with(":*") || b.ends_with(":*")))
}

/// Checks an object trigger's shape (bucket name, event names, filter sizes).
pub(crate) fn validate(field: &str, t: &ObjectTrigger, errors: &mut Vec<FieldError>) {
    if let Err(e) = crate::bucket::validate_bucket_name(&t.bucket) {
        errors.push(FieldError {
            field: format!("{field}.bucket"),
            message: e.to_string(),
        });
    }
    if let Some(name) = &t.name
        && !crate::timer::valid_name(name)
    {
        errors.push(FieldError {
            field: format!("{field}.name"),
            message: format!(
                "`{name}` must be 1 to {} letters, digits, `-` or `_`",
                limits::NAME_LEN_MAX
            ),
        });
    }
    for (i, e) in t.events.iter().enumerate() {
        if !EVENT_NAMES.contains(&e.as_str()) {
            errors.push(FieldError {
                field: format!("{field}.events[{i}]"),
                message: format!(
                    "`{e}` is not an S3 event name; use one of {}",
                    EVENT_NAMES.join(", ")
                ),
            });
        }
    }
    for (what, value) in [("prefix", &t.prefix), ("suffix", &t.suffix)] {
        if value.len() > limits::OBJECT_KEY_BYTES_MAX {
            errors.push(FieldError {
                field: format!("{field}.{what}"),
                message: format!(
                    "is {} bytes; at most {} (the longest key)",
                    value.len(),
                    limits::OBJECT_KEY_BYTES_MAX
                ),
            });
        }
    }
}

/// A key as S3 writes it in event records: form-encoded (a space is `+`), with `/` and
/// the unreserved characters as they are, so `unquote_plus` gives the key back.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: serde_json::Value) -> ObjectTrigger {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rules_match_by_event_prefix_and_suffix() {
        let r = rule(serde_json::json!({"bucket": "photos", "prefix": "in/", "suffix": ".jpg"}));
        assert_eq!(r.name(), "photos");
        assert!(r.matches("ObjectCreated:Put", "in/a.jpg"));
        assert!(r.matches("ObjectCreated:CompleteMultipartUpload", "in/a.jpg"));
        assert!(!r.matches("ObjectRemoved:Delete", "in/a.jpg"));
        assert!(!r.matches("ObjectCreated:Put", "out/a.jpg"));
        assert!(!r.matches("ObjectCreated:Put", "in/a.png"));
        let r = rule(serde_json::json!({"bucket": "b", "events": ["s3:ObjectRemoved:Delete"]}));
        assert!(r.matches("ObjectRemoved:Delete", "x"));
        assert!(!r.matches("ObjectCreated:Put", "x"));
    }

    #[test]
    fn overlapping_rules_are_told_apart_as_s3_does() {
        let a = rule(serde_json::json!({"bucket": "b", "prefix": "in/"}));
        let b = rule(serde_json::json!({"bucket": "b", "prefix": "in/raw/"}));
        let c = rule(serde_json::json!({"bucket": "b", "prefix": "out/"}));
        let d = rule(
            serde_json::json!({"bucket": "b", "prefix": "in/", "events": ["s3:ObjectRemoved:*"]}),
        );
        let e = rule(serde_json::json!({"bucket": "b", "suffix": ".jpg", "prefix": "in/"}));
        let f = rule(serde_json::json!({"bucket": "b", "suffix": ".png", "prefix": "in/"}));
        let g = rule(serde_json::json!({"bucket": "other", "prefix": "in/"}));
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(!a.overlaps(&d), "created and removed do not overlap");
        assert!(!e.overlaps(&f), "different suffixes do not overlap");
        assert!(a.overlaps(&e), "no suffix overlaps every suffix");
        assert!(!a.overlaps(&g));
        let put = rule(serde_json::json!({"bucket": "b", "events": ["s3:ObjectCreated:Put"]}));
        let copy = rule(serde_json::json!({"bucket": "b", "events": ["s3:ObjectCreated:Copy"]}));
        assert!(!put.overlaps(&copy));
        assert!(put.overlaps(&a));
    }

    #[test]
    fn bad_rules_name_the_field() {
        let mut errors = Vec::new();
        validate(
            "triggers[0].object",
            &rule(
                serde_json::json!({"bucket": "No_Such", "events": ["s3:ObjectCreated:Get"], "prefix": "x".repeat(2000)}),
            ),
            &mut errors,
        );
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "triggers[0].object.bucket",
                "triggers[0].object.events[0]",
                "triggers[0].object.prefix"
            ]
        );
    }

    #[test]
    fn keys_are_encoded_as_s3_event_records_have_them() {
        assert_eq!(encode_key("photos/my cat+1.jpg"), "photos/my+cat%2B1.jpg");
        assert_eq!(encode_key("a/b-c_d.e~f"), "a/b-c_d.e~f");
        assert_eq!(encode_key("ü"), "%C3%BC");
    }
}
