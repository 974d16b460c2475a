//! Bearer-token authentication of the control API.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use model::ErrorCode;

use crate::{ApiError, AppState};

/// Lets the request through only with `Authorization: Bearer <admin token>`; publishing to
/// the bus (`POST /v1/events`) also takes an invoke key (`x-nimbus-key`), so applications
/// publish without the admin's token. Another node's node-scoped telemetry read
/// (`x-nimbus-scope: node`, `crate::fanout`) passes with the node key.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if request.method() == axum::http::Method::POST
        && request.uri().path().ends_with("/events")
        && let Some(key) = request
            .headers()
            .get("x-nimbus-key")
            .and_then(|v| v.to_str().ok())
    {
        if state.platform.key_is_valid(key)
            || constant_time_eq(key.as_bytes(), bus_key(&state.token).as_bytes())
        {
            return Ok(next.run(request).await);
        }
        return Err(ApiError::new(
            ErrorCode::KeyInvalid,
            "the invoke key is not valid; `nimbus keys ls` lists the keys",
        ));
    }
    if crate::fanout::node_scoped(request.headers())
        && crate::fanout::node_readable(request.method(), request.uri().path())
        && let Some(key) = request.headers().get(crate::forward::headers::KEY)
    {
        if constant_time_eq(key.as_bytes(), crate::node_key(&state.token).as_bytes()) {
            return Ok(next.run(request).await);
        }
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the node key is not this cluster's: do all nodes share one admin token?",
        ));
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => {
            Ok(next.run(request).await)
        }
        Some(_) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the bearer token is wrong",
        )),
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing bearer token: send `Authorization: Bearer <token>`; the admin token is in \
             admin.token in the server's data dir",
        )),
    }
}

/// The key functions publish to the bus with (`NIMBUS_EVENTS_KEY`): derived from the admin
/// token, so every node of a cluster knows it without storing it, and good for nothing but
/// `POST /v1/events`.
pub fn bus_key(token: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "nbk_{}",
        hex::encode(Sha256::digest(format!("nimbus-bus\n{token}").as_bytes()))
    )
}

/// Compares without an early exit, so the time taken does not reveal how much matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
