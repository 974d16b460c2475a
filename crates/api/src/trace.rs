//! The W3C trace context of an HTTP request: a caller's `traceparent` header is continued
//! (same trace, a new span for the call); without a valid one a new trace starts.

use axum::http::HeaderMap;
pub use platform::trace::{Span, TRACEPARENT};

/// The span of a call made with `headers`.
pub fn for_call(headers: &HeaderMap) -> Span {
    platform::trace::child_of(headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()))
}
