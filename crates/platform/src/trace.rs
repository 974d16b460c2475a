//! W3C trace context: every call belongs to a trace. A caller's `traceparent` is continued
//! (same trace id, a new span for the call); without a valid one a new trace starts. The
//! function sees the call's `traceparent` in its context and the answer carries it back.

pub const TRACEPARENT: &str = "traceparent";

/// One call's span: its `traceparent` (what the function sees and the answer carries) and
/// the span it continues, when the caller sent one.
///
/// `Default` is an empty placeholder, only for moving a span out of a struct being dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub traceparent: String,
    pub parent_span_id: Option<String>,
}

impl Span {
    /// The 32 hex digits of the trace.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The 16 hex digits of this span.
    pub fn span_id(&self) -> &str {
        &self.traceparent[36..52]
    }
}

/// A new span: in the trace of `parent` when that is a valid `traceparent` (an asynchronous
/// event's attempt continues its submission's), else the root of a new trace.
pub fn child_of(parent: Option<&str>) -> Span {
    let parent = parent.and_then(parse);
    let (trace_id, flags) = match parent {
        Some((trace_id, _, flags)) => (trace_id.to_string(), flags.to_string()),
        None => (random_hex(16), "01".to_string()),
    };
    Span {
        traceparent: format!("00-{trace_id}-{}-{flags}", random_hex(8)),
        parent_span_id: parent.map(|(_, span_id, _)| span_id.to_string()),
    }
}

/// A trace id as a user gives it (32 hex digits, either case), lowercased as traceparents
/// carry it.
pub fn trace_id(s: &str) -> Option<String> {
    (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// The trace id, parent span id and flags of a valid version-00 `traceparent`.
fn parse(value: &str) -> Option<(&str, &str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && nonzero(trace_id)
        && hex(parent_id, 16)
        && nonzero(parent_id)
        && hex(flags, 2))
    .then_some((trace_id, parent_id, flags))
}

/// `n` random bytes in lowercase hex (from the OS, through uuid's v4 generator).
fn random_hex(n: usize) -> String {
    let mut out = String::with_capacity(n * 2);
    while out.len() < n * 2 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(n * 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_anything_else_starts_a_trace() {
        let span = child_of(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let t = &span.traceparent;
        assert!(t.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{t}");
        assert!(t.ends_with("-01"));
        assert_eq!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(span.span_id(), "00f067aa0ba902b7");
        assert_eq!(span.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(parse(t).is_some());
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let span = child_of(Some(bad));
            let t = &span.traceparent;
            assert!(parse(t).is_some() && !t.contains("4bf92f"), "{bad} -> {t}");
            assert_eq!(span.parent_span_id, None);
        }
        assert_eq!(
            trace_id("4BF92F3577B34DA6A3CE929D0E0E4736").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("4bf92f35"), None);
        assert_eq!(trace_id("zbf92f3577b34da6a3ce929d0e0e4736"), None);
    }
}
