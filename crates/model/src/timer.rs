//! The specs of the triggers that fire on their own: timers (a function called on a
//! schedule — a cron expression, a fixed rate, or once at a time — each scheduled time at
//! most once, whatever runs the schedule) and event rules of the bus.
//!
//! The expression and time-zone grammars are checked where they are evaluated (the
//! `timers` crate, at deploy); this module checks the rest of the spec's shape.

use serde::{Deserialize, Serialize};

use crate::function::FieldError;
use crate::limits;

/// `triggers: [{timer: {name, cron | every | at, timezone, payload, catch_up, overlap}}]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerTrigger {
    /// Names the timer within its function (`timer:nightly` in records, `nimbus triggers`).
    pub name: String,
    /// Six fields with seconds (`0 */5 * * * *`) or the classic five.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed rate, `30s`, `5m`, `2h`, `1d` (at least a second), counted from the epoch,
    /// so every node computes the same times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// One time, RFC 3339 (`2027-01-01T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The IANA time zone a cron expression is read in (`Asia/Shanghai`); UTC otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The event of every fire, as EventBridge Scheduler and FC take one; without it, an
    /// EventBridge "Scheduled Event".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// Fires missed while no node ran the schedule.
    #[serde(default, skip_serializing_if = "CatchUp::is_default")]
    pub catch_up: CatchUp,
    /// Whether a fire starts while the one before still runs.
    #[serde(default, skip_serializing_if = "Overlap::is_default")]
    pub overlap: Overlap,
    /// The event's shape: the trigger's own, or a structured CloudEvent.
    #[serde(default, skip_serializing_if = "EventFormat::is_native")]
    pub format: EventFormat,
}

/// How a trigger hands its event to the function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// The trigger's own shape (a Scheduled Event, the event as published).
    #[default]
    Native,
    /// A structured CloudEvent 1.0 (JSON with `specversion`, `id`, `source`, `type`, `data`).
    Cloudevent,
}

impl EventFormat {
    pub fn is_native(&self) -> bool {
        *self == EventFormat::Native
    }
}

/// `triggers: [{event: {name, pattern, format}}]`: events published to the bus that match
/// an EventBridge event pattern are delivered to the function asynchronously.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// Names the rule within its function (`event:signups` in records).
    pub name: String,
    /// An EventBridge event pattern, matched on EventBridge events and on CloudEvents'
    /// attributes and JSON data. Checked where it is compiled (the bus), at deploy.
    pub pattern: serde_json::Value,
    #[serde(default, skip_serializing_if = "EventFormat::is_native")]
    pub format: EventFormat,
}

/// Checks an event trigger's name; its pattern is the bus's to check.
pub(crate) fn validate_event(field: &str, t: &EventTrigger, errors: &mut Vec<FieldError>) {
    if !valid_name(&t.name) {
        errors.push(FieldError {
            field: format!("{field}.name"),
            message: format!(
                "`{}` must be 1 to {} letters, digits, `-` or `_`",
                t.name,
                limits::NAME_LEN_MAX
            ),
        });
    }
    if !t.pattern.is_object() {
        errors.push(FieldError {
            field: format!("{field}.pattern"),
            message:
                "must be an EventBridge event pattern, a JSON object such as {source: [app.users]}"
                    .into(),
        });
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What happens to the scheduled times that passed while no node was running the timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Dropped.
    None,
    /// The latest one fires; the others are dropped.
    #[default]
    Last,
    /// Each fires, oldest first, up to `limits::TIMER_CATCH_UP_MAX`.
    All,
}

impl CatchUp {
    fn is_default(&self) -> bool {
        *self == CatchUp::default()
    }
}

/// Whether fires of one timer may run at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    #[default]
    Allow,
    /// A fire is skipped (and counted) while the previous one has not finished.
    Skip,
}

impl Overlap {
    fn is_default(&self) -> bool {
        *self == Overlap::default()
    }
}

/// `30s`, `5m`, `2h`, `1d` (also `500ms`, refused below a second by the caller) in
/// milliseconds.
pub fn parse_every(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit; write 30s, 5m, 2h or 1d"))?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number; write 30s, 5m, 2h or 1d"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("`{other}` is not a unit; use ms, s, m, h or d")),
    };
    n.checked_mul(unit_ms)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// Checks a timer's shape; `field` is where it is (`triggers[2].timer`).
pub(crate) fn validate(field: &str, t: &TimerTrigger, errors: &mut Vec<FieldError>) {
    let mut err = |sub: &str, message: String| {
        errors.push(FieldError {
            field: format!("{field}.{sub}"),
            message,
        })
    };
    if !valid_name(&t.name) {
        err(
            "name",
            format!(
                "`{}` must be 1 to {} letters, digits, `-` or `_`",
                t.name,
                limits::NAME_LEN_MAX
            ),
        );
    }
    let given = [t.cron.is_some(), t.every.is_some(), t.at.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        err(
            "cron",
            "a timer has exactly one of cron, every and at".into(),
        );
    }
    if let Some(every) = &t.every {
        match parse_every(every) {
            Ok(ms) if ms < limits::TIMER_EVERY_MS_MIN => err(
                "every",
                format!(
                    "`{every}` is under {} ms; timers fire at most once a second",
                    limits::TIMER_EVERY_MS_MIN
                ),
            ),
            Ok(ms) if ms > limits::TIMER_EVERY_MS_MAX => err(
                "every",
                format!("`{every}` is longer than a year; use cron or at"),
            ),
            Ok(_) => {}
            Err(e) => err("every", e),
        }
    }
    if t.timezone.is_some() && t.cron.is_none() {
        err(
            "timezone",
            "a time zone applies to cron expressions only".into(),
        );
    }
    if let Some(p) = &t.payload {
        let size = serde_json::to_vec(p).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > limits::EVENT_BYTES_MAX {
            err(
                "payload",
                format!(
                    "is {size} bytes as JSON; the limit is {}",
                    limits::EVENT_BYTES_MAX
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(yaml: serde_json::Value) -> TimerTrigger {
        serde_json::from_value(yaml).unwrap()
    }

    fn errors(t: &TimerTrigger) -> Vec<String> {
        let mut e = Vec::new();
        validate("triggers[0].timer", t, &mut e);
        e.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_name_is_one_trigger_of_a_function() {
        use crate::http::Trigger;
        let mut spec =
            crate::FunctionSpec::new("f", crate::Runtime::Python3, "m.h", &"0".repeat(64));
        spec.triggers = vec![
            Trigger::Timer(timer(serde_json::json!({"name": "n", "every": "1m"}))),
            Trigger::Event(
                serde_json::from_value(
                    serde_json::json!({"name": "n", "pattern": {"source": ["a"]}}),
                )
                .unwrap(),
            ),
            Trigger::Event(
                serde_json::from_value(serde_json::json!({"name": "e", "pattern": ["a"]})).unwrap(),
            ),
        ];
        let e: Vec<String> = spec.validate().iter().map(ToString::to_string).collect();
        assert!(
            e.iter()
                .any(|m| m.starts_with("triggers[1].event.name") && m.contains("unique")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.starts_with("triggers[2].event.pattern")),
            "{e:?}"
        );
    }

    #[test]
    fn rates_parse_and_shapes_are_checked() {
        assert_eq!(parse_every("30s"), Ok(30_000));
        assert_eq!(parse_every("5m"), Ok(300_000));
        assert_eq!(parse_every("1d"), Ok(86_400_000));
        assert!(parse_every("30").unwrap_err().contains("no unit"));
        assert!(parse_every("3w").unwrap_err().contains("not a unit"));
        assert!(errors(&timer(serde_json::json!({"name": "a", "every": "1s"}))).is_empty());
        let e = errors(&timer(serde_json::json!({"name": "a", "every": "500ms"})));
        assert!(
            e[0].contains("triggers[0].timer.every") && e[0].contains("once a second"),
            "{e:?}"
        );
        let e = errors(&timer(
            serde_json::json!({"name": "a", "every": "1s", "cron": "* * * * *"}),
        ));
        assert!(e[0].contains("exactly one"), "{e:?}");
        let e = errors(&timer(
            serde_json::json!({"name": "a b", "at": "2027-01-01T00:00:00Z"}),
        ));
        assert!(e[0].contains("triggers[0].timer.name"), "{e:?}");
        let e = errors(&timer(
            serde_json::json!({"name": "a", "every": "1m", "timezone": "UTC"}),
        ));
        assert!(e[0].contains("cron expressions only"), "{e:?}");
        let t = timer(
            serde_json::json!({"name": "a", "cron": "0 0 * * *", "catch_up": "all", "overlap": "skip"}),
        );
        assert_eq!((t.catch_up, t.overlap), (CatchUp::All, Overlap::Skip));
        assert!(
            serde_json::from_value::<TimerTrigger>(serde_json::json!({"name": "a", "crn": "x"}))
                .is_err()
        );
    }
}
