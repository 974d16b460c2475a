//! A timer's schedule as times: the next scheduled time after a moment, and the times
//! missed in a span. Pure: the clock is an argument, never read here.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use model::timer::TimerTrigger;

/// When a timer fires.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// A cron expression read in a time zone.
    Cron { cron: Box<Cron>, tz: Tz },
    /// Every `every_ms`, counted from the Unix epoch, so every node computes the same times.
    Every { every_ms: i64 },
    /// Once.
    At { at_ms: i64 },
}

impl Schedule {
    /// The schedule of `t`, or what is wrong with it, naming the field.
    pub fn parse(t: &TimerTrigger) -> Result<Schedule, String> {
        if let Some(expr) = &t.cron {
            let cron = CronParser::builder()
                .seconds(Seconds::Optional)
                .build()
                .parse(expr)
                .map_err(|e| format!("cron: `{expr}` is not a cron expression ({e})"))?;
            let tz = match &t.timezone {
                None => Tz::UTC,
                Some(name) => name.parse::<Tz>().map_err(|_| {
                    format!("timezone: `{name}` is not an IANA time zone such as Asia/Shanghai")
                })?,
            };
            return Ok(Schedule::Cron {
                cron: Box::new(cron),
                tz,
            });
        }
        if let Some(every) = &t.every {
            let ms = model::timer::parse_every(every).map_err(|e| format!("every: {e}"))?;
            return Ok(Schedule::Every {
                every_ms: ms as i64,
            });
        }
        if let Some(at) = &t.at {
            let when = DateTime::parse_from_rfc3339(at).map_err(|_| {
                format!("at: `{at}` is not an RFC 3339 time such as 2027-01-01T00:00:00Z")
            })?;
            return Ok(Schedule::At {
                at_ms: when.timestamp_millis(),
            });
        }
        Err("cron: a timer has exactly one of cron, every and at".into())
    }

    /// The first scheduled time strictly after `after_ms`, if any.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Schedule::Cron { cron, tz } => {
                let from = tz.timestamp_millis_opt(after_ms).single()?;
                cron.find_next_occurrence(&from, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc).timestamp_millis())
            }
            Schedule::Every { every_ms } => Some((after_ms.div_euclid(*every_ms) + 1) * every_ms),
            Schedule::At { at_ms } => (*at_ms > after_ms).then_some(*at_ms),
        }
    }

    /// Scheduled times in `(from_ms, to_ms]`, the latest `max` of them, oldest first.
    pub fn between(&self, from_ms: i64, to_ms: i64, max: usize) -> Vec<i64> {
        let mut out = std::collections::VecDeque::new();
        let mut t = from_ms;
        // Bounded: a schedule of one a second over a long outage must not loop for long;
        // past this many, only the latest are wanted anyway, so jump ahead.
        if let Schedule::Every { every_ms } = self {
            let span = (max as i64).saturating_mul(*every_ms);
            t = t.max(to_ms.saturating_sub(span));
        }
        let mut steps = 0usize;
        while let Some(next) = self.next_after(t) {
            if next > to_ms {
                break;
            }
            out.push_back(next);
            if out.len() > max {
                out.pop_front();
            }
            t = next;
            steps += 1;
            if steps > STEPS_MAX {
                break;
            }
        }
        out.into()
    }
}

/// The most scheduled times `between` walks: a minutely cron over ten weeks. Beyond it
/// (a long outage of a per-second cron), catch-up starts from where the walk stopped.
const STEPS_MAX: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(v: serde_json::Value) -> TimerTrigger {
        let mut v = v;
        v["name"] = "t".into();
        serde_json::from_value(v).unwrap()
    }

    /// 2026-12-06T15:00:00Z.
    const T0: i64 = 1_796_569_200_000;

    #[test]
    fn cron_with_seconds_and_time_zones() {
        let s = Schedule::parse(&timer(serde_json::json!({"cron": "*/10 * * * * *"}))).unwrap();
        assert_eq!(s.next_after(T0), Some(T0 + 10_000));
        assert_eq!(s.between(T0, T0 + 60_000, 100).len(), 6);
        // 02:00 in Shanghai is 18:00 UTC the day before.
        let s = Schedule::parse(&timer(
            serde_json::json!({"cron": "0 2 * * *", "timezone": "Asia/Shanghai"}),
        ))
        .unwrap();
        let next = s.next_after(T0).unwrap();
        assert_eq!(next, T0 + 3 * 3_600_000);
        let utc = Schedule::parse(&timer(serde_json::json!({"cron": "0 2 * * *"}))).unwrap();
        assert_eq!(utc.next_after(T0).unwrap() - next, 8 * 3_600_000);
    }

    #[test]
    fn rates_are_aligned_to_the_epoch_and_one_offs_fire_once() {
        let s = Schedule::parse(&timer(serde_json::json!({"every": "30s"}))).unwrap();
        assert_eq!(s.next_after(T0 + 1), Some(T0 + 30_000));
        assert_eq!(s.next_after(T0), Some(T0 + 30_000));
        // A long outage gives at most `max`, the latest.
        let missed = s.between(T0, T0 + 86_400_000, 3);
        assert_eq!(
            missed,
            vec![
                T0 + 86_400_000 - 60_000,
                T0 + 86_400_000 - 30_000,
                T0 + 86_400_000
            ]
        );
        let s = Schedule::parse(&timer(serde_json::json!({"at": "2026-12-06T15:00:10Z"}))).unwrap();
        assert_eq!(s.next_after(T0), Some(T0 + 10_000));
        assert_eq!(s.next_after(T0 + 10_000), None);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let bad = |v| Schedule::parse(&timer(v)).unwrap_err();
        assert!(bad(serde_json::json!({"cron": "61 * * * *"})).starts_with("cron: `61 * * * *`"));
        assert!(
            bad(serde_json::json!({"cron": "0 * * * *", "timezone": "Mars/Olympus"}))
                .starts_with("timezone: `Mars/Olympus`")
        );
        assert!(bad(serde_json::json!({"at": "tomorrow"})).starts_with("at: `tomorrow`"));
    }
}
