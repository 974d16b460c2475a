//! Unknown keys in a manifest, all of them at once, each with the known key it most
//! likely meant.
//!
//! The known keys are not listed by hand: they are read from the `Deserialize` impls of
//! the manifest's own types (`fields_of`), so a field added to a struct is known here at
//! once.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_norway::Value;

use super::flows::FlowEntry;
use super::{AliasEntry, FunctionEntry, Manifest, TriggerEntry};
use model::http::{Cors, HttpTrigger, RateLimit, RouteOptions};

/// The keys a struct deriving `Deserialize` accepts, as serde's derive lists them (renames
/// applied); empty for a type that is not deserialized as a struct.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    /// A deserializer that only records the field list serde's derive hands it.
    struct Probe(&'static [&'static str]);

    impl<'de> Deserializer<'de> for &mut Probe {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut probe = Probe(&[]);
    // The error is the point: the probe stops the derive as soon as it has the fields.
    let _ = T::deserialize(&mut probe);
    probe.0
}

/// One line per mapping with unknown keys: `functions.hello: unknown key `runtme` (did you
/// mean `runtime`?)`.
pub fn unknown(root: &Value) -> Vec<String> {
    let mut found = Vec::new();
    check(root, "", fields_of::<Manifest>(), &mut found);
    if let Some(flows) = root.get("flows").and_then(Value::as_sequence) {
        for (i, flow) in flows.iter().enumerate() {
            // Named by its name when it has one: `flows.order`, else by position.
            let at = match flow.get("name").and_then(Value::as_str) {
                Some(name) => format!("flows.{name}"),
                None => format!("flows[{i}]"),
            };
            check(flow, &at, fields_of::<FlowEntry>(), &mut found);
        }
    }
    let Some(functions) = root.get("functions").and_then(Value::as_mapping) else {
        return found;
    };
    for (name, entry) in functions {
        let at = format!("functions.{}", key_text(name));
        check(entry, &at, fields_of::<FunctionEntry>(), &mut found);
        let route = |value: Option<&Value>, at: &str, fields, found: &mut Vec<String>| {
            let Some(value) = value else { return };
            check(value, at, fields, found);
            if let Some(cors) = value.get("cors") {
                check(cors, &format!("{at}.cors"), fields_of::<Cors>(), found);
            }
            if let Some(limit) = value.get("rate_limit") {
                check(
                    limit,
                    &format!("{at}.rate_limit"),
                    fields_of::<RateLimit>(),
                    found,
                );
            }
        };
        route(
            entry.get("url"),
            &format!("{at}.url"),
            fields_of::<RouteOptions>(),
            &mut found,
        );
        if let Some(triggers) = entry.get("triggers").and_then(Value::as_sequence) {
            for (i, t) in triggers.iter().enumerate() {
                let at = format!("{at}.triggers[{i}]");
                check(t, &at, fields_of::<TriggerEntry>(), &mut found);
                route(
                    t.get("http"),
                    &format!("{at}.http"),
                    fields_of::<HttpTrigger>(),
                    &mut found,
                );
                if let Some(timer) = t.get("timer") {
                    check(
                        timer,
                        &format!("{at}.timer"),
                        fields_of::<model::timer::TimerTrigger>(),
                        &mut found,
                    );
                }
                if let Some(event) = t.get("event") {
                    check(
                        event,
                        &format!("{at}.event"),
                        fields_of::<model::timer::EventTrigger>(),
                        &mut found,
                    );
                }
            }
        }
        if let Some(aliases) = entry.get("aliases").and_then(Value::as_mapping) {
            for (alias, a) in aliases {
                let at = format!("{at}.aliases.{}", key_text(alias));
                check(a, &at, fields_of::<AliasEntry>(), &mut found);
                if let Some(guard) = a.get("guard") {
                    check(
                        guard,
                        &format!("{at}.guard"),
                        fields_of::<model::Guard>(),
                        &mut found,
                    );
                }
            }
        }
    }
    found
}

/// Adds a line for `value` when it is a mapping with keys outside `known`.
fn check(value: &Value, at: &str, known: &[&str], found: &mut Vec<String>) {
    let Some(map) = value.as_mapping() else {
        return;
    };
    if known.is_empty() {
        return;
    }
    let unknown: Vec<(String, Option<&str>)> = map
        .keys()
        .map(key_text)
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| {
            let near = closest(&k, known);
            (k, near)
        })
        .collect();
    if unknown.is_empty() {
        return;
    }
    let listed: Vec<String> = unknown
        .iter()
        .map(|(k, near)| match near {
            Some(near) => format!("`{k}` (did you mean `{near}`?)"),
            None => format!("`{k}`"),
        })
        .collect();
    let what = if unknown.len() == 1 { "key" } else { "keys" };
    let at = if at.is_empty() {
        String::new()
    } else {
        format!("{at}: ")
    };
    // The whole list only helps when a key resembles none of them.
    let known_list = if unknown.iter().all(|(_, near)| near.is_some()) {
        String::new()
    } else {
        format!("; known keys: {}", known.join(", "))
    };
    found.push(format!(
        "{at}unknown {what} {}{known_list}",
        listed.join(", ")
    ));
}

/// A mapping key as written (YAML keys may be numbers or booleans).
fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default(),
    }
}

/// The known key nearest to `key` by edit distance, when it is near enough to be a slip
/// (at most a third of its length, and at least two edits allowed).
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (distance(&key, k), *k))
        .filter(|(d, k)| *d <= (k.chars().count() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance: the fewest insertions, deletions and substitutions from `a` to `b`.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(distance("runtme", "runtime"), 1);
        assert_eq!(distance("memroy_mb", "memory_mb"), 2);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("same", "same"), 0);
        let known = ["runtime", "handler", "memory_mb", "timeout_ms"];
        assert_eq!(closest("runtme", &known), Some("runtime"));
        assert_eq!(closest("Handler", &known), Some("handler"));
        assert_eq!(closest("timeout", &known), Some("timeout_ms"));
        assert_eq!(closest("colour", &known), None);
    }

    #[test]
    fn fields_come_from_the_types() {
        let entry = fields_of::<FunctionEntry>();
        for key in ["runtime", "type", "triggers", "exclude", "aliases"] {
            assert!(entry.contains(&key), "{key} in {entry:?}");
        }
        assert_eq!(fields_of::<Manifest>(), ["functions", "layers", "flows"]);
        assert!(fields_of::<HttpTrigger>().contains(&"qualifier"));
        assert!(fields_of::<String>().is_empty());
    }

    #[test]
    fn every_unknown_key_is_listed_at_every_level() {
        let yaml = "\
functions:
  hello:
    runtime: python3
    handler: main.handler
    runtme: x
    memroy_mb: 3
    colour: blue
    url: {auth: anonymous, alow: [10.0.0.0/8]}
    triggers:
      - http: {path: /a, method: [GET], rate_limit: {requests_per_second: 1, burts: 2}}
      - htp: {path: /b}
    aliases:
      prod: {canary_percent: 10, guard: {max_error_rate: 0.1, windw_ms: 100}}
flows:
  - {name: order, defintion: order.json}
  - {definition: x.json, descripton: x}
extra: 1
";
        let value: Value = serde_norway::from_str(yaml).unwrap();
        let lines = unknown(&value);
        let expect = [
            "unknown key `extra`; known keys: functions, layers, flows",
            "flows.order: unknown key `defintion` (did you mean `definition`?)",
            "flows[1]: unknown key `descripton` (did you mean `description`?)",
            "functions.hello: unknown keys `runtme` (did you mean `runtime`?), \
             `memroy_mb` (did you mean `memory_mb`?), `colour`; known keys: runtime,",
            "functions.hello.url: unknown key `alow` (did you mean `allow`?)",
            "functions.hello.triggers[0].http: unknown key `method` (did you mean `methods`?)",
            "functions.hello.triggers[0].http.rate_limit: unknown key `burts` (did you mean `burst`?)",
            "functions.hello.triggers[1]: unknown key `htp` (did you mean `http`?)",
            "functions.hello.aliases.prod.guard: unknown key `windw_ms` (did you mean `window_ms`?)",
        ];
        assert_eq!(lines.len(), expect.len(), "{lines:#?}");
        for e in expect {
            assert!(lines.iter().any(|l| l.starts_with(e)), "{e}\nin {lines:#?}");
        }
    }
}
