//! The API Gateway payload formats: the event a handler-style function gets for an HTTP
//! request (the HTTP API's 2.0, by default, or the REST API's 1.0), and how its return
//! value becomes the HTTP response (one parser reads both formats' answers).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use base64::Engine;
use bytes::Bytes;
use sandbox::ContentType;
use serde_json::{Map, Value, json};

/// Everything about a request that goes into the event.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub peer: Option<SocketAddr>,
    pub request_id: &'a str,
    pub route_key: &'a str,
    pub path_params: Vec<(String, String)>,
    pub now_ms: i64,
    /// The account functions are told they run in (FC's `requestContext.accountId`).
    pub account_id: &'a str,
}

/// Which event a handler behind a route gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// API Gateway's HTTP API event (payload 2.0), the default.
    V2,
    /// API Gateway's REST API event (payload 1.0).
    V1,
    /// Function Compute's HTTP-trigger event, for functions with `conventions: fc`.
    Fc,
    /// The request's CloudEvent, parsed, as structured JSON (`format: cloudevent`).
    Cloud,
}

impl Payload {
    pub fn builder(self) -> fn(&RequestFacts) -> Vec<u8> {
        match self {
            Payload::V2 => build,
            Payload::V1 => build_v1,
            Payload::Fc => build_fc,
            // Parsed before, where a bad event can still be answered with a 400.
            Payload::Cloud => build,
        }
    }
}

/// Builds the payload 2.0 event.
pub fn build(r: &RequestFacts) -> Vec<u8> {
    // Repeated headers and query parameters are joined with commas, cookies are separate.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies = Vec::new();
    for (name, value) in r.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if name == header::COOKIE {
            cookies.extend(
                value
                    .split(';')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty()),
            );
            continue;
        }
        join_value(&mut headers, name.as_str().to_string(), value);
    }
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded(r.query) {
        join_value(&mut query, k, v);
    }
    let text = is_text(r.headers) && std::str::from_utf8(r.body).is_ok();
    let body = if r.body.is_empty() {
        Value::Null
    } else if text {
        Value::String(String::from_utf8_lossy(r.body).into_owned())
    } else {
        Value::String(base64::engine::general_purpose::STANDARD.encode(r.body))
    };
    let source_ip = r.peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let host = r
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let mut event = Map::new();
    event.insert("version".into(), json!("2.0"));
    event.insert("routeKey".into(), json!(r.route_key));
    event.insert("rawPath".into(), json!(r.path));
    event.insert("rawQueryString".into(), json!(r.query));
    if !cookies.is_empty() {
        event.insert("cookies".into(), json!(cookies));
    }
    event.insert("headers".into(), json!(headers));
    if !query.is_empty() {
        event.insert("queryStringParameters".into(), json!(query));
    }
    if !r.path_params.is_empty() {
        let params: BTreeMap<&str, &str> = r
            .path_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        event.insert("pathParameters".into(), json!(params));
    }
    event.insert(
        "requestContext".into(),
        json!({
            "accountId": "nimbus",
            "apiId": "nimbus",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(host),
            "http": {
                "method": r.method.as_str(),
                "path": r.path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": r.headers.get(header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or(""),
            },
            "requestId": r.request_id,
            "routeKey": r.route_key,
            "stage": "$default",
            "time": clf_time(r.now_ms),
            "timeEpoch": r.now_ms,
        }),
    );
    if !body.is_null() {
        event.insert("body".into(), body);
    }
    event.insert("isBase64Encoded".into(), json!(!r.body.is_empty() && !text));
    serde_json::to_vec(&Value::Object(event)).expect("an event serializes")
}

/// Builds the payload 1.0 event (API Gateway's REST API with Lambda proxy integration):
/// single and multi-value headers and query parameters, the resource template, and the
/// caller's identity.
pub fn build_v1(r: &RequestFacts) -> Vec<u8> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut multi_headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in r.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // The last value wins in `headers`, as the REST API does; all are in the other.
        headers.insert(name.as_str().to_string(), value.clone());
        multi_headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(value);
    }
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    let mut multi_query: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded(r.query) {
        query.insert(k.clone(), v.clone());
        multi_query.entry(k).or_default().push(v);
    }
    let text = is_text(r.headers) && std::str::from_utf8(r.body).is_ok();
    let body = if r.body.is_empty() {
        Value::Null
    } else if text {
        Value::String(String::from_utf8_lossy(r.body).into_owned())
    } else {
        Value::String(base64::engine::general_purpose::STANDARD.encode(r.body))
    };
    let header = |name: header::HeaderName| {
        r.headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    };
    let host = header(header::HOST).unwrap_or_else(|| "localhost".into());
    // `GET /items/{id}` names the route; its template is the REST API's resource.
    let resource = r
        .route_key
        .split_once(' ')
        .map_or(r.route_key, |(_, path)| path);
    let nullable = |empty: bool, v: Value| if empty { Value::Null } else { v };
    let params: BTreeMap<&str, &str> = r
        .path_params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let event = json!({
        "resource": resource,
        "path": r.path,
        "httpMethod": r.method.as_str(),
        "headers": nullable(headers.is_empty(), json!(headers)),
        "multiValueHeaders": nullable(multi_headers.is_empty(), json!(multi_headers)),
        "queryStringParameters": nullable(query.is_empty(), json!(query)),
        "multiValueQueryStringParameters": nullable(multi_query.is_empty(), json!(multi_query)),
        "pathParameters": nullable(params.is_empty(), json!(params)),
        "stageVariables": null,
        "requestContext": {
            "accountId": "nimbus",
            "apiId": "nimbus",
            "resourceId": "nimbus",
            "resourcePath": resource,
            "httpMethod": r.method.as_str(),
            "path": r.path,
            "protocol": "HTTP/1.1",
            "stage": "$default",
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(&host),
            "requestId": r.request_id,
            "requestTime": clf_time(r.now_ms),
            "requestTimeEpoch": r.now_ms,
            "identity": {
                "sourceIp": r.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
                "userAgent": header(header::USER_AGENT),
                "accessKey": null, "accountId": null, "caller": null, "user": null,
                "userArn": null, "cognitoIdentityId": null, "cognitoIdentityPoolId": null,
                "cognitoAuthenticationType": null, "cognitoAuthenticationProvider": null,
            },
        },
        "body": body,
        "isBase64Encoded": !r.body.is_empty() && !text,
    });
    serde_json::to_vec(&event).expect("an event serializes")
}

/// Adds `value` under `key`, after a comma when the key repeats: how both API Gateway's
/// payload 2.0 and Function Compute give repeated headers and query parameters.
fn join_value(map: &mut BTreeMap<String, String>, key: String, value: String) {
    map.entry(key)
        .and_modify(|v| {
            v.push(',');
            v.push_str(&value);
        })
        .or_insert(value);
}

/// `content-type` as Function Compute writes header names: each word capitalized.
fn fc_header_name(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Builds Function Compute's HTTP-trigger event (`version: v1`): header names
/// capitalized, repeated headers and query parameters joined with commas, the body as text
/// or base64, and FC's `requestContext`.
pub fn build_fc(r: &RequestFacts) -> Vec<u8> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in r.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        join_value(&mut headers, fc_header_name(name.as_str()), value);
    }
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded(r.query) {
        join_value(&mut query, k, v);
    }
    let text = is_text(r.headers) && std::str::from_utf8(r.body).is_ok();
    let body = if text {
        String::from_utf8_lossy(r.body).into_owned()
    } else {
        base64::engine::general_purpose::STANDARD.encode(r.body)
    };
    let header = |name: header::HeaderName| {
        r.headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    };
    let host = header(header::HOST).unwrap_or_else(|| "localhost".into());
    let event = json!({
        "version": "v1",
        "rawPath": r.path,
        "body": body,
        "isBase64Encoded": !text,
        "headers": headers,
        "queryParameters": query,
        "requestContext": {
            "accountId": r.account_id,
            "domainName": host,
            "domainPrefix": host.split('.').next().unwrap_or(&host),
            "http": {
                "method": r.method.as_str(),
                "path": r.path,
                "protocol": "HTTP/1.1",
                "sourceIp": r.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
                "userAgent": header(header::USER_AGENT).unwrap_or_default(),
            },
            "requestId": r.request_id,
            "time": humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.now_ms.max(0) as u64)
            ).to_string(),
            "timeEpoch": r.now_ms.to_string(),
        },
    });
    serde_json::to_vec(&event).expect("an event serializes")
}

/// Whether a body of these headers is text that travels as a string, not base64.
fn is_text(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let ct = ct.to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.contains("json")
        || ct.contains("xml")
        || ct.contains("javascript")
        || ct.starts_with("application/x-www-form-urlencoded")
        || ct.starts_with("application/graphql")
}

/// Decodes `a=1&b=x%20y` pairs.
fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes a query component (`+` is a space).
pub fn percent_decode(s: &str) -> String {
    decode(s, true)
}

/// Decodes a path segment (`+` is itself).
pub fn percent_decode_path(s: &str) -> String {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `12/Mar/2020:19:03:58 +0000`, the time format of the event's request context.
fn clf_time(ms: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = model::civil::from_days(days);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Turns a handler's return value into the HTTP response, as API Gateway does: an object
/// with `statusCode` describes the response; any other value is a 200 JSON body.
pub fn response(content_type: ContentType, body: Bytes) -> Response<Body> {
    match content_type {
        ContentType::Text => plain(StatusCode::OK, "text/plain; charset=utf-8", body),
        ContentType::Bytes => plain(StatusCode::OK, "application/octet-stream", body),
        ContentType::Json => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(o)) if o.contains_key("statusCode") => {
                structured(o).unwrap_or_else(|why| invalid_response(&why))
            }
            _ => plain(StatusCode::OK, "application/json", body),
        },
    }
}

fn plain(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn structured(o: Map<String, Value>) -> Result<Response<Body>, String> {
    let status = o
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .ok_or("statusCode must be an HTTP status number")?;
    let base64 = o
        .get("isBase64Encoded")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let body = match o.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if base64 => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("body is not valid base64: {e}"))?,
        ),
        Some(Value::String(s)) => Bytes::from(s.clone()),
        // API Gateway requires a string; a structured body is sent as its JSON.
        Some(other) => Bytes::from(other.to_string()),
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    let mut add = |name: &str, value: &Value| -> Result<(), String> {
        let text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let name =
            HeaderName::try_from(name).map_err(|_| format!("`{name}` is not a header name"))?;
        let value = HeaderValue::try_from(text)
            .map_err(|_| format!("header `{name}` has an invalid value"))?;
        h.append(name, value);
        Ok(())
    };
    if let Some(Value::Object(headers)) = o.get("headers") {
        for (k, v) in headers {
            add(k, v)?;
        }
    }
    if let Some(Value::Object(headers)) = o.get("multiValueHeaders") {
        for (k, vs) in headers {
            for v in vs.as_array().into_iter().flatten() {
                add(k, v)?;
            }
        }
    }
    if let Some(Value::Array(cookies)) = o.get("cookies") {
        for c in cookies {
            add("set-cookie", c)?;
        }
    }
    if !h.contains_key(header::CONTENT_TYPE) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(r)
}

fn invalid_response(why: &str) -> Response<Body> {
    let body = json!({"message": format!("the function returned an invalid response: {why}")});
    plain(
        StatusCode::BAD_GATEWAY,
        "application/json",
        Bytes::from(body.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_has_the_payload_2_shape() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("cookie", HeaderValue::from_static("s=1; t=2"));
        let e: Value = serde_json::from_slice(&build(&RequestFacts {
            method: &Method::POST,
            path: "/items/42",
            query: "q=a%20b&q=c&flag",
            headers: &headers,
            body: &[0, 1, 2],
            peer: Some("10.0.0.1:5555".parse().unwrap()),
            request_id: "rid",
            route_key: "POST /items/{id}",
            path_params: vec![("id".into(), "42".into())],
            now_ms: 1_584_040_238_000,
            account_id: "123456789012",
        }))
        .unwrap();
        assert_eq!(e["version"], "2.0");
        assert_eq!(e["rawQueryString"], "q=a%20b&q=c&flag");
        assert_eq!(
            e["queryStringParameters"],
            json!({"q": "a b,c", "flag": ""})
        );
        assert_eq!(e["headers"]["x-multi"], "a,b");
        assert_eq!(e["cookies"], json!(["s=1", "t=2"]));
        assert_eq!(e["pathParameters"], json!({"id": "42"}));
        assert_eq!(e["requestContext"]["http"]["sourceIp"], "10.0.0.1");
        assert_eq!(e["requestContext"]["time"], "12/Mar/2020:19:10:38 +0000");
        assert_eq!(e["isBase64Encoded"], true);
        assert_eq!(e["body"], "AAEC");
    }

    #[test]
    fn event_has_function_computes_http_trigger_shape() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("host", HeaderValue::from_static("abc.example.com"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let e: Value = serde_json::from_slice(&build_fc(&RequestFacts {
            method: &Method::POST,
            path: "/items/42",
            query: "q=a%20b&q=c",
            headers: &headers,
            body: b"Hello FC!",
            peer: Some("10.0.0.1:5555".parse().unwrap()),
            request_id: "rid",
            route_key: "POST /items/{id}",
            path_params: vec![],
            now_ms: 1_693_896_071_895,
            account_id: "123456789012",
        }))
        .unwrap();
        assert_eq!(e["version"], "v1");
        assert_eq!(e["rawPath"], "/items/42");
        assert_eq!(e["body"], "Hello FC!");
        assert_eq!(e["isBase64Encoded"], false);
        assert_eq!(e["headers"]["Content-Type"], "text/plain");
        assert_eq!(e["headers"]["X-Multi"], "a,b");
        assert_eq!(e["queryParameters"]["q"], "a b,c");
        let c = &e["requestContext"];
        assert_eq!(c["accountId"], "123456789012");
        assert_eq!(c["domainPrefix"], "abc");
        assert_eq!(c["http"]["method"], "POST");
        assert_eq!(c["http"]["sourceIp"], "10.0.0.1");
        assert_eq!(c["time"], "2023-09-05T06:41:11Z");
        assert_eq!(c["timeEpoch"], "1693896071895");
    }

    #[test]
    fn structured_and_plain_responses() {
        let r = response(
            ContentType::Json,
            Bytes::from(
                r#"{"statusCode":201,"headers":{"x-a":"1"},"cookies":["a=1","b=2"],"body":"aGk=","isBase64Encoded":true}"#,
            ),
        );
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        let r = response(ContentType::Json, Bytes::from(r#"{"hello":"world"}"#));
        assert_eq!(
            (r.status(), r.headers()["content-type"].to_str().unwrap()),
            (StatusCode::OK, "application/json")
        );
        let r = response(ContentType::Json, Bytes::from(r#"{"statusCode":"nope"}"#));
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn decodes_percent_and_plus() {
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
    }
}
