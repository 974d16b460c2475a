//! `POST /v1/events`: the event bus's front door. CloudEvents 1.0 (structured, batch and
//! binary modes) and EventBridge PutEvents requests (`{"Entries": [...]}`), answered 202
//! once every delivery to a matching rule is committed to the queue.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use model::{ErrorCode, limits};
use platform::bus::{BusEvent, CloudEvent, PutEventsEntry};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{ApiError, AppState};

/// The largest publish request: a batch of `EVENT_BATCH_MAX` small events, or one event at
/// its limit with room for its envelope.
const REQUEST_BYTES_MAX: usize = limits::EVENT_BYTES_MAX + 64 * 1024;

/// Events a second one key may publish (the admin's token counts as one key, functions'
/// bus key as another), per node, with a second's worth of burst: one chatty publisher
/// cannot fill every function's queue.
pub const EVENTS_PER_SECOND_PER_KEY_DEFAULT: u32 = 10_000;

/// The bus's per-key token buckets.
pub struct Limits {
    per_second: f64,
    buckets:
        std::sync::Mutex<std::collections::HashMap<String, crate::gateway::guard::TokenBucket>>,
}

impl Limits {
    pub fn new(events_per_second_per_key: u32) -> Limits {
        Limits {
            per_second: events_per_second_per_key.max(1) as f64,
            buckets: Default::default(),
        }
    }

    /// Takes `n` events' worth from `key`'s bucket; `Err` is the seconds to wait.
    fn take(&self, key: &str, n: usize) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap();
        // Keys are few (invoke keys are bounded); a key deleted leaves a small entry.
        let bucket = buckets.entry(key.to_string()).or_insert_with(|| {
            crate::gateway::guard::TokenBucket::new(self.per_second, self.per_second)
        });
        bucket.take_n(std::time::Instant::now(), n as f64)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(EVENTS_PER_SECOND_PER_KEY_DEFAULT)
    }
}

/// What became of a publish request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    /// Events taken.
    pub accepted: usize,
    /// Deliveries committed (one per event and matching rule).
    pub deliveries: usize,
    pub events: Vec<PublishedEvent>,
    /// PutEvents entries refused, by position, with why (the others were taken).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedEvent {
    pub id: String,
    pub deliveries: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailedEntry {
    pub index: usize,
    pub error: String,
}

fn now_rfc3339() -> String {
    let t = std::time::SystemTime::now();
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Publishes events to the bus: every function whose event pattern matches gets each
/// asynchronously, at least once (an event published again with the same source and id
/// is not delivered twice). Takes the admin token or an invoke key (`x-nimbus-key`).
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(content = Object, description = "a CloudEvent (application/cloudevents+json), a batch (application/cloudevents-batch+json), a binary-mode CloudEvent (ce-* headers), or a PutEvents request {Entries: [...]} (application/json)",
        content_type = "application/cloudevents+json"),
    responses((status = 202, body = Published), (status = 400, body = crate::ErrorBody),
        (status = 413, body = crate::ErrorBody)))]
pub async fn publish(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let body = crate::routes::read_body(body, REQUEST_BYTES_MAX, "events").await?;
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let mut failed = Vec::new();
    let events: Vec<BusEvent> =
        if media == "application/json" && !headers.contains_key("ce-specversion") {
            let aws = s.platform.aws_identity();
            let now = now_rfc3339();
            let entries = PutEventsEntry::parse_request(&body)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
            let mut events = Vec::new();
            for (index, entry) in entries.into_iter().enumerate() {
                match entry {
                    Ok(e) => events.push(BusEvent::Bridge(e.to_event(
                        &uuid::Uuid::new_v4().to_string(),
                        &aws.account_id,
                        &aws.region,
                        &now,
                    ))),
                    Err(error) => failed.push(FailedEntry {
                        index,
                        error: error.to_string(),
                    }),
                }
            }
            if events.is_empty() {
                let first = failed.first().map(|f| f.error.clone()).unwrap_or_default();
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("no entry was taken; the first: {first}"),
                ));
            }
            events
        } else {
            let pairs: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()))
                .collect();
            CloudEvent::from_http(&pairs, &body)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?
                .into_iter()
                .map(BusEvent::Cloud)
                .collect()
        };
    // Who publishes: an invoke key (by its hash: the secret is not kept), else the token.
    let who = match headers.get("x-nimbus-key").and_then(|v| v.to_str().ok()) {
        Some(key) => {
            use sha2::{Digest, Sha256};
            hex::encode(&Sha256::digest(key.as_bytes())[..8])
        }
        None => "admin".to_string(),
    };
    if let Err(wait_s) = s.bus_limits.take(&who, events.len()) {
        let mut e = ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "this key publishes more than {} events a second; retry in {wait_s} s",
                s.bus_limits.per_second
            ),
        );
        e.retry_after_s = Some(wait_s);
        return Err(e);
    }
    let trace = crate::trace::for_call(&headers);
    let counts = s
        .bus
        .publish(&s.platform, &events, &trace.traceparent)
        .await?;
    let published: Vec<PublishedEvent> = events
        .iter()
        .zip(&counts)
        .map(|(e, n)| PublishedEvent {
            id: match e {
                BusEvent::Cloud(c) => c.id.clone(),
                BusEvent::Bridge(v) => v["id"].as_str().unwrap_or_default().to_string(),
            },
            deliveries: *n,
        })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(Published {
            accepted: events.len(),
            deliveries: counts.iter().sum(),
            events: published,
            failed,
        }),
    ))
}
