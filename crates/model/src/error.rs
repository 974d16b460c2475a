//! The one table of platform error codes and their HTTP status.
//!
//! A code is part of the API contract: clients branch on it, so a code is never renamed or
//! reused. The HTTP status is a number here so that this crate stays free of HTTP types.

/// A stable, machine-readable platform error code.
///
/// These are failures of the platform or of the request. A function's own failure (its
/// exception, timeout, crash) is an invocation outcome and never appears here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid.
    InvalidRequest,
    /// A code archive is malformed or unsafe (`..` paths, escaping symlinks, too large unpacked).
    InvalidArchive,
    /// A function refers to a code artifact the server does not have.
    CodeNotFound,
    /// No bearer token was sent, or it is wrong.
    Unauthorized,
    /// The function does not exist.
    FunctionNotFound,
    /// The invocation is not (or no longer) known to this node.
    InvocationNotFound,
    /// No route matches the path.
    RouteNotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// Creating a function that already exists.
    FunctionExists,
    /// A request body exceeds its limit.
    PayloadTooLarge,
    /// The request body has a content type this endpoint does not take.
    UnsupportedMediaType,
    /// The node has no capacity left for another instance.
    CapacityExhausted,
    /// The runtime's interpreter is not installed on this node.
    RuntimeUnavailable,
    /// The instance process could not be started.
    InstanceStartFailed,
    /// The metadata store or blob store failed.
    StorageError,
    /// Anything else; the server log has the details.
    Internal,
    /// Two functions claim the same route (path shape and method).
    RouteConflict,
    /// The route needs an invoke key and none was sent.
    KeyRequired,
    /// The invoke key sent is not valid.
    KeyInvalid,
    /// The invoke key does not exist.
    KeyNotFound,
    /// The client's network is not allowed on this route.
    IpDenied,
    /// The route's rate limit is exhausted; retry after the `Retry-After` seconds.
    RateLimited,
    /// The gateway's answer when a function behind a route failed (it has no other way to
    /// say so over plain HTTP).
    FunctionFailed,
    /// The gateway's answer when a function behind a route ran past its timeout.
    FunctionTimedOut,
    /// The function has no free instance and may not start another; retry after the
    /// `Retry-After` seconds.
    Throttled,
    /// The function has no such published version.
    VersionNotFound,
    /// The function has no such alias.
    AliasNotFound,
    /// The version or alias is still pointed at (by an alias or a trigger).
    InUse,
    /// The asynchronous queue of the function or the node is full; retry later.
    QueueFull,
    /// The server runs without telemetry, so it has no logs, statistics or usage.
    TelemetryOff,
    /// The client sent its request body slower than the listener's minimum rate.
    RequestTimeout,
    /// The server's disk is full: nothing more can be stored until an operator frees space.
    /// The request itself was fine; retry it later.
    StorageFull,
    /// Installing the function's dependencies failed (pip's or npm's own message is in the
    /// error); the function was left as it was.
    BuildFailed,
    /// The deploy's check found that the handler does not load (a missing module or
    /// handler, a syntax error): the error the first call would have given.
    HandlerFailed,
    /// The function has no trigger by that name.
    TriggerNotFound,
    /// The route is paused (`nimbus triggers pause`): it takes no requests until resumed.
    TriggerPaused,
    /// The object store has no bucket by that name.
    BucketNotFound,
    /// Creating a bucket that already exists.
    BucketExists,
    /// Deleting a bucket that still holds objects (without `force`).
    BucketNotEmpty,
    /// A workflow definition failed its checks (the message names the state and field).
    InvalidDefinition,
    FlowNotFound,
    ExecutionNotFound,
    /// An execution of that name exists with another input.
    ExecutionExists,
    /// The flow has as many running executions as allowed.
    ExecutionLimitExceeded,
    /// A task token that is malformed or not one this platform made.
    InvalidToken,
    /// A task token of a task that no longer waits (answered, timed out, its execution ended).
    TaskNotFound,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 46] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidArchive,
        ErrorCode::CodeNotFound,
        ErrorCode::Unauthorized,
        ErrorCode::FunctionNotFound,
        ErrorCode::InvocationNotFound,
        ErrorCode::RouteNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::FunctionExists,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::CapacityExhausted,
        ErrorCode::RuntimeUnavailable,
        ErrorCode::InstanceStartFailed,
        ErrorCode::StorageError,
        ErrorCode::Internal,
        ErrorCode::RouteConflict,
        ErrorCode::KeyRequired,
        ErrorCode::KeyInvalid,
        ErrorCode::KeyNotFound,
        ErrorCode::IpDenied,
        ErrorCode::RateLimited,
        ErrorCode::FunctionFailed,
        ErrorCode::FunctionTimedOut,
        ErrorCode::Throttled,
        ErrorCode::VersionNotFound,
        ErrorCode::AliasNotFound,
        ErrorCode::InUse,
        ErrorCode::QueueFull,
        ErrorCode::TelemetryOff,
        ErrorCode::RequestTimeout,
        ErrorCode::StorageFull,
        ErrorCode::BuildFailed,
        ErrorCode::HandlerFailed,
        ErrorCode::TriggerNotFound,
        ErrorCode::TriggerPaused,
        ErrorCode::BucketNotFound,
        ErrorCode::BucketExists,
        ErrorCode::BucketNotEmpty,
        ErrorCode::InvalidDefinition,
        ErrorCode::FlowNotFound,
        ErrorCode::ExecutionNotFound,
        ErrorCode::ExecutionExists,
        ErrorCode::ExecutionLimitExceeded,
        ErrorCode::InvalidToken,
        ErrorCode::TaskNotFound,
    ];

    /// The stable snake_case code sent to clients.
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        self.row().1
    }

    fn row(self) -> (&'static str, u16) {
        match self {
            ErrorCode::InvalidRequest => ("invalid_request", 400),
            ErrorCode::InvalidArchive => ("invalid_archive", 400),
            ErrorCode::CodeNotFound => ("code_not_found", 400),
            ErrorCode::Unauthorized => ("unauthorized", 401),
            ErrorCode::FunctionNotFound => ("function_not_found", 404),
            ErrorCode::InvocationNotFound => ("invocation_not_found", 404),
            ErrorCode::RouteNotFound => ("route_not_found", 404),
            ErrorCode::MethodNotAllowed => ("method_not_allowed", 405),
            ErrorCode::FunctionExists => ("function_exists", 409),
            ErrorCode::PayloadTooLarge => ("payload_too_large", 413),
            ErrorCode::UnsupportedMediaType => ("unsupported_media_type", 415),
            ErrorCode::CapacityExhausted => ("capacity_exhausted", 503),
            ErrorCode::RuntimeUnavailable => ("runtime_unavailable", 503),
            ErrorCode::InstanceStartFailed => ("instance_start_failed", 502),
            ErrorCode::StorageError => ("storage_error", 500),
            ErrorCode::Internal => ("internal", 500),
            ErrorCode::RouteConflict => ("route_conflict", 409),
            ErrorCode::KeyRequired => ("key_required", 401),
            ErrorCode::KeyInvalid => ("key_invalid", 403),
            ErrorCode::KeyNotFound => ("key_not_found", 404),
            ErrorCode::IpDenied => ("ip_denied", 403),
            ErrorCode::RateLimited => ("rate_limited", 429),
            ErrorCode::FunctionFailed => ("function_failed", 502),
            ErrorCode::FunctionTimedOut => ("function_timeout", 504),
            ErrorCode::Throttled => ("throttled", 429),
            ErrorCode::VersionNotFound => ("version_not_found", 404),
            ErrorCode::AliasNotFound => ("alias_not_found", 404),
            ErrorCode::InUse => ("in_use", 409),
            ErrorCode::QueueFull => ("queue_full", 429),
            ErrorCode::TelemetryOff => ("telemetry_off", 501),
            ErrorCode::RequestTimeout => ("request_timeout", 408),
            // 507 Insufficient Storage (RFC 4918): the server cannot store what the request
            // needs stored.
            ErrorCode::StorageFull => ("storage_full", 507),
            ErrorCode::BuildFailed => ("build_failed", 422),
            ErrorCode::HandlerFailed => ("handler_failed", 422),
            ErrorCode::TriggerNotFound => ("trigger_not_found", 404),
            // 503: the route exists and will serve again once resumed.
            ErrorCode::TriggerPaused => ("trigger_paused", 503),
            ErrorCode::BucketNotFound => ("bucket_not_found", 404),
            ErrorCode::BucketExists => ("bucket_exists", 409),
            ErrorCode::BucketNotEmpty => ("bucket_not_empty", 409),
            ErrorCode::InvalidDefinition => ("invalid_definition", 400),
            ErrorCode::FlowNotFound => ("flow_not_found", 404),
            ErrorCode::ExecutionNotFound => ("execution_not_found", 404),
            ErrorCode::ExecutionExists => ("execution_exists", 409),
            ErrorCode::ExecutionLimitExceeded => ("execution_limit_exceeded", 429),
            ErrorCode::InvalidToken => ("invalid_token", 400),
            ErrorCode::TaskNotFound => ("task_not_found", 404),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_statuses_are_errors() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(s.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{s}");
            assert!((400..600).contains(&code.http_status()), "{s}");
        }
    }
}
