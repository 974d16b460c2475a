//! Invoke: synchronous (`RequestResponse`), asynchronous (`Event`, into the durable
//! queue) and `DryRun`, with Lambda's headers: `X-Amz-Function-Error`, `X-Amz-Log-Result`
//! for `LogType: Tail`, `X-Amz-Executed-Version`, and `X-Amz-Client-Context` passed on to
//! the handler's context.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use sandbox::{Logs, Outcome};

use crate::functions::QualifierQuery;
use crate::{Ctx, LambdaError, shape};

/// The most of a call's log `LogType: Tail` returns, as on Lambda.
const LOG_TAIL_BYTES_MAX: usize = 4096;

/// The longest `X-Amz-Client-Context` (base64), as on Lambda.
const CLIENT_CONTEXT_BYTES_MAX: usize = 3583;

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) async fn invoke(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    event: Bytes,
) -> Result<Response, LambdaError> {
    let t = shape::target(&name, q.qualifier())?;
    let target = t.full();
    let trace = platform::trace::child_of(header(&headers, "traceparent"));
    let client_context = match header(&headers, "x-amz-client-context") {
        None => None,
        Some(c) if c.len() > CLIENT_CONTEXT_BYTES_MAX => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Client-Context is longer than {CLIENT_CONTEXT_BYTES_MAX} bytes"
            )));
        }
        Some(c) => {
            let json = base64::engine::general_purpose::STANDARD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| serde_json::from_str::<serde_json::Value>(s).is_ok())
                .ok_or_else(|| {
                    LambdaError::invalid(
                        "Client context must be a valid Base64-encoded JSON object.",
                    )
                })?;
            Some(json)
        }
    };
    let tail = match header(&headers, "x-amz-log-type") {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Log-Type `{other}` is not None or Tail"
            )));
        }
    };
    match header(&headers, "x-amz-invocation-type").unwrap_or("RequestResponse") {
        "RequestResponse" => {}
        "Event" => {
            let (id, _) = ctx
                .platform
                .submit_async(&target, event, None, trace.traceparent.clone())
                .await?;
            ctx.platform
                .record_accept(&target, &id, platform::now_ms(), trace);
            return Ok(Response::builder()
                .status(StatusCode::ACCEPTED)
                .header("x-amzn-requestid", id)
                .body(Body::empty())
                .expect("a valid response"));
        }
        "DryRun" => {
            // Whether the call would be allowed: the function and its qualifier exist.
            ctx.platform.get_function(&t.name).await?;
            match t.qualifier.as_deref() {
                None | Some("$LATEST") => {}
                Some(q) => match q.parse::<u32>() {
                    Ok(v) => drop(ctx.platform.get_version(&t.name, v).await?),
                    Err(_) => drop(ctx.platform.get_alias(&t.name, q).await?),
                },
            }
            return Ok(Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(Body::empty())
                .expect("a valid response"));
        }
        other => {
            return Err(LambdaError::invalid(format!(
                "X-Amz-Invocation-Type `{other}` is not RequestResponse, Event or DryRun"
            )));
        }
    }
    let mut call = platform::Call::new(target, model::TriggerKind::Api, trace);
    call.client_context = client_context;
    let platform::Invoked {
        record, outcome, ..
    } = ctx.platform.invoke(call, event).await?;
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header("x-amzn-requestid", record.request_id.as_str())
        .header("x-amz-executed-version", record.version.as_str());
    let body = match outcome {
        Outcome::Success { body, .. } => {
            r = r.header("content-type", "application/json");
            body
        }
        Outcome::Error(e) => {
            r = r
                .header("content-type", "application/json")
                .header("x-amz-function-error", "Unhandled");
            Bytes::from(
                serde_json::to_vec(&serde_json::json!({
                    "errorMessage": e.error_message,
                    "errorType": e.error_type,
                    "stackTrace": e.stack_trace,
                }))
                .expect("an error serializes"),
            )
        }
    };
    if tail {
        let text = log_text(
            &record.request_id,
            &record.version,
            &record.logs,
            record.duration_ms,
            record.memory_mb,
        );
        let start = tail_start(&text);
        if let Ok(v) = HeaderValue::from_str(
            &base64::engine::general_purpose::STANDARD.encode(&text.as_bytes()[start..]),
        ) {
            r = r.header("x-amz-log-result", v);
        }
    }
    Ok(r.body(Body::from(body)).expect("a valid response"))
}

/// The call's log as Lambda writes it: START, the lines, END and REPORT.
fn log_text(
    request_id: &str,
    version: &str,
    logs: &Logs,
    duration_ms: f64,
    memory_mb: u32,
) -> String {
    let mut text = format!("START RequestId: {request_id} Version: {version}\n");
    for line in &logs.lines {
        text.push_str(&line.message);
        if !line.message.ends_with('\n') {
            text.push('\n');
        }
    }
    text.push_str(&format!(
        "END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {duration_ms:.2} ms\tBilled Duration: {} ms\tMemory Size: {memory_mb} MB\t\n",
        duration_ms.ceil() as u64
    ));
    text
}

/// Where the last `LOG_TAIL_BYTES_MAX` bytes of `text` start, on a character boundary.
fn tail_start(text: &str) -> usize {
    let mut start = text.len().saturating_sub(LOG_TAIL_BYTES_MAX);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_4_kib_on_a_character_boundary() {
        let mut logs = Logs::default();
        logs.push("stdout", b"hello");
        let text = log_text("r1", "$LATEST", &logs, 1.5, 128);
        assert!(text.starts_with("START RequestId: r1 Version: $LATEST\nhello\nEND RequestId: r1\nREPORT RequestId: r1\tDuration: 1.50 ms\tBilled Duration: 2 ms"));
        assert_eq!(tail_start(&text), 0);
        let long = "é".repeat(3000);
        let start = tail_start(&long);
        assert!(long.len() - start <= LOG_TAIL_BYTES_MAX);
        assert!(long.is_char_boundary(start));
    }
}
