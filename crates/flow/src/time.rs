//! Timestamps as the language writes them: RFC 3339 with an upper-case `T` (`Wait`'s
//! `Timestamp`, Choice's `Timestamp*` comparisons), read to milliseconds since the epoch.

/// Milliseconds since the epoch of an RFC 3339 timestamp, `None` when `text` is not one.
pub fn parse_ms(text: &str) -> Option<i64> {
    // chrono accepts a lower-case `t` and a space; the language does not.
    if text.len() < 20 || text.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The RFC 3339 UTC text (milliseconds) of `ms`, as the history and the context object show
/// times.
pub fn format_ms(ms: i64) -> String {
    model::civil::rfc3339_ms(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_with_offsets_and_fractions() {
        assert_eq!(parse_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_ms("1970-01-01T01:00:01+01:00"), Some(1000));
        assert_eq!(parse_ms("1970-01-01T00:00:01.250Z"), Some(1250));
        assert_eq!(parse_ms("1970-01-01t00:00:01Z"), None);
        assert_eq!(parse_ms("1970-01-01 00:00:01Z"), None);
        assert_eq!(parse_ms("yesterday"), None);
        assert_eq!(format_ms(1250), "1970-01-01T00:00:01.250Z");
    }
}
