//! The proleptic Gregorian date of a day since the Unix epoch: the one calendar rule the
//! crates that write dates by hand (log stream names, API Gateway's request time,
//! EventBridge's `time`) share, so none of them carries a calendar crate for it.

/// `(year, month 1-12, day 1-31)` of `days` since 1970-01-01 (negative before it), by
/// Howard Hinnant's civil-from-days.
pub fn from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// An RFC 3339 UTC timestamp with milliseconds (`2026-12-06T20:35:39.000Z`) of `ms` since
/// the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = from_days(secs.div_euclid(86_400));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_796_589_339_123), "2026-12-06T20:35:39.123Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn epoch_leap_days_and_before_the_epoch() {
        assert_eq!(from_days(0), (1970, 1, 1));
        assert_eq!(from_days(11_016), (2000, 2, 29));
        assert_eq!(from_days(20_793), (2026, 12, 6));
        assert_eq!(from_days(-1), (1969, 12, 31));
        assert_eq!(from_days(2_932_896), (9999, 12, 31));
    }
}
