//! Static websites: a bucket with a website configuration (`PutBucketWebsite`, `nimbus
//! bucket website`) is served anonymously to requests whose `Host` is
//! `{bucket}.{--website-domain}`, the way S3's website endpoints serve it.
//!
//! - GET and HEAD only (405 otherwise); `/` and `dir/` answer `{dir/}{index document}`;
//!   `dir` without its slash answers 302 to `dir/` when `dir/{index}` exists.
//! - A missing key answers the error document with status 404, or S3's plain 404 page.
//! - `ETag`, `If-None-Match`/`If-Modified-Since` (304), `If-Match`/`If-Unmodified-Since`
//!   (412), one byte range (206, 416); bytes stream from the store (`store::ObjectBytes`).
//! - Errors are S3's website error pages (HTML with Code, Message, BucketName, RequestId).
//!
//! Reads go through `store::ObjectMeta` and `store::ObjectBytes` only: the S3 API (s3s) is
//! another front door and is not needed to serve a file.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use store::ObjectError;
use store::objects::ObjectRecord;

use crate::buckets::Objects;

/// How many times an object is looked up again when its bytes vanished under the reader (a
/// replacement committed and removed the old blob between the row's read and the bytes').
const OPEN_ATTEMPTS_MAX: usize = 3;

/// The bucket a request is for, when its host is `{bucket}.{domain}` (a port is ignored,
/// case does not matter). Any other host is the gateway's routes'.
pub fn bucket_of(headers: &HeaderMap, uri: &axum::http::Uri, domain: &str) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())?;
    // `[v6]:port` never names a bucket; anything else is `name[:port]`.
    let name = host.rsplit_once(':').map_or(host, |(name, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            name
        } else {
            host
        }
    });
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let bucket = name.strip_suffix(domain)?.strip_suffix('.')?;
    (!bucket.is_empty()).then(|| bucket.to_string())
}

/// Serves one request for the website of `bucket`.
pub async fn serve(
    objects: &Objects,
    bucket: &str,
    request: Request,
    request_id: &str,
) -> Response {
    let page = |status, code, message: &str| error_page(status, code, message, bucket, request_id);
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        let mut r = page(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("The specified method is not allowed against this resource: {method}"),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let head = method == Method::HEAD;
    let website = match objects.meta.bucket_website(bucket).await {
        Ok(Some(w)) => w,
        Ok(None) => {
            return page(
                StatusCode::NOT_FOUND,
                "NoSuchWebsiteConfiguration",
                "The specified bucket does not have a website configuration",
            );
        }
        Err(ObjectError::NoSuchBucket(_)) => {
            return page(
                StatusCode::NOT_FOUND,
                "NoSuchBucket",
                "The specified bucket does not exist",
            );
        }
        Err(e) => return fault(e, bucket, request_id),
    };
    let raw_path = request.uri().path().to_string();
    let mut key = super::event::percent_decode_path(raw_path.trim_start_matches('/'));
    let directory = key.is_empty() || key.ends_with('/');
    if directory {
        key.push_str(&website.index_document);
    }
    match respond(
        objects,
        bucket,
        &key,
        request.headers(),
        head,
        StatusCode::OK,
    )
    .await
    {
        Ok(Some(response)) => return response,
        Ok(None) => {}
        Err(e) => return fault(e, bucket, request_id),
    }
    // `dir` without its slash is a directory when `dir/{index}` exists: S3 redirects there,
    // so relative links in the index resolve under `dir/`.
    if !directory {
        let index = format!("{key}/{}", website.index_document);
        match objects.meta.object(bucket, &index).await {
            Ok(_) => {
                let mut r = empty(StatusCode::FOUND);
                if let Ok(location) = HeaderValue::from_str(&format!("{raw_path}/")) {
                    r.headers_mut().insert(header::LOCATION, location);
                }
                return r;
            }
            Err(ObjectError::NoSuchKey(_)) => {}
            Err(e) => return fault(e, bucket, request_id),
        }
    }
    if let Some(error_key) = &website.error_document {
        // The error document is the answer to any request: no ranges or conditions.
        let no_conditions = HeaderMap::new();
        match respond(
            objects,
            bucket,
            error_key,
            &no_conditions,
            head,
            StatusCode::NOT_FOUND,
        )
        .await
        {
            Ok(Some(response)) => return response,
            Ok(None) => {}
            Err(e) => return fault(e, bucket, request_id),
        }
    }
    page(
        StatusCode::NOT_FOUND,
        "NoSuchKey",
        &format!("The specified key does not exist: {key}"),
    )
}

/// The object's response to `request` (its conditions and range applied, its bytes
/// streaming), `None` when there is no such object.
async fn respond(
    objects: &Objects,
    bucket: &str,
    key: &str,
    request: &HeaderMap,
    head: bool,
    status: StatusCode,
) -> Result<Option<Response>, ObjectError> {
    for _ in 0..OPEN_ATTEMPTS_MAX {
        let object = match objects.meta.object(bucket, key).await {
            Ok(o) => o,
            Err(ObjectError::NoSuchKey(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let (status, offset, len) = match plan(&object, request, status) {
            Plan::Answer(response) => return Ok(Some(response)),
            Plan::Bytes(status, offset, len) => (status, offset, len),
        };
        let body = if head || len == 0 {
            Body::empty()
        } else {
            // Read as the client takes them: hyper polls the stream only when it can send,
            // so a slow client holds one chunk, not the object.
            match objects.files.read(&object.blob_id, offset, len).await {
                Ok(Some(bytes)) => Body::from_stream(bytes),
                Ok(None) => continue,
                Err(e) => return Err(ObjectError::Store(e)),
            }
        };
        return Ok(Some(object_response(&object, body, status, offset, len)));
    }
    Err(ObjectError::Store(store::StoreError::Corrupt(format!(
        "`{key}` kept changing while it was read"
    ))))
}

/// What a request's byte range asks for.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// No range (or one S3 ignores: several ranges, another unit, bad syntax).
    Whole,
    /// `(offset, length)`.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range of RFC 9110 against an object of `size` bytes.
fn range_of(value: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // `-N`: the last N bytes.
        return match number(last) {
            Some(0) | None if last.is_empty() => RangeAsk::Whole,
            Some(n) if n > 0 && size > 0 => RangeAsk::Part(size - n.min(size), n.min(size)),
            Some(_) => RangeAsk::Unsatisfiable,
            None => RangeAsk::Whole,
        };
    }
    let Some(a) = number(first) else {
        return RangeAsk::Whole;
    };
    let b = if last.is_empty() {
        None
    } else {
        match number(last) {
            Some(b) if b >= a => Some(b),
            // `9-5` or `5-x`: not a range (RFC 9110 §14.1.1), so the whole object.
            _ => return RangeAsk::Whole,
        }
    };
    if a >= size {
        return RangeAsk::Unsatisfiable;
    }
    let end = b.map_or(size - 1, |b| b.min(size - 1));
    RangeAsk::Part(a, end - a + 1)
}

/// Whether an `If-None-Match`/`If-Match` list holds the ETag (`*` matches any).
fn etag_listed(list: &str, etag: &str) -> bool {
    list.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.trim_start_matches("W/").trim_matches('"') == etag
    })
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Whole seconds, the precision of HTTP dates.
fn modified_s(object: &ObjectRecord) -> u64 {
    object.modified_ms.max(0) as u64 / 1000
}

fn header_date(headers: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// What a request for an object is answered: a response without its bytes (a failed
/// condition, a range past its end), or its bytes with a status, an offset and a length.
enum Plan {
    Answer(Response),
    Bytes(StatusCode, u64, u64),
}

/// The object's conditions and range applied to `request`.
fn plan(object: &ObjectRecord, request: &HeaderMap, status: StatusCode) -> Plan {
    let text = |name: header::HeaderName| request.get(name).and_then(|v| v.to_str().ok());
    // RFC 9110 §13.2.2: If-Match, then If-Unmodified-Since, then If-None-Match, then
    // If-Modified-Since (only without If-None-Match).
    let precondition_failed = match text(header::IF_MATCH) {
        Some(list) => !etag_listed(list, &object.etag),
        None => header_date(request, header::IF_UNMODIFIED_SINCE)
            .is_some_and(|since| modified_s(object) > since),
    };
    if precondition_failed {
        let mut r = empty(StatusCode::PRECONDITION_FAILED);
        validators(r.headers_mut(), object);
        return Plan::Answer(r);
    }
    let not_modified = match text(header::IF_NONE_MATCH) {
        Some(list) => etag_listed(list, &object.etag),
        None => header_date(request, header::IF_MODIFIED_SINCE)
            .is_some_and(|since| modified_s(object) <= since),
    };
    if not_modified {
        let mut r = empty(StatusCode::NOT_MODIFIED);
        validators(r.headers_mut(), object);
        return Plan::Answer(r);
    }
    let size = object.size_bytes;
    let (status, offset, len) = match range_of(text(header::RANGE), size) {
        RangeAsk::Whole => (status, 0, size),
        RangeAsk::Part(offset, len) if status == StatusCode::OK => {
            (StatusCode::PARTIAL_CONTENT, offset, len)
        }
        RangeAsk::Part(..) => (status, 0, size),
        RangeAsk::Unsatisfiable => {
            let mut r = empty(StatusCode::RANGE_NOT_SATISFIABLE);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Plan::Answer(r);
        }
    };
    Plan::Bytes(status, offset, len)
}

/// The object as a response with its stored headers, its bytes in `body`.
fn object_response(
    object: &ObjectRecord,
    body: Body,
    status: StatusCode,
    offset: u64,
    len: u64,
) -> Response {
    let size = object.size_bytes;
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    validators(h, object);
    let content_type = object
        .attrs
        .content_type
        .as_deref()
        .unwrap_or("binary/octet-stream");
    for (name, value) in [
        (header::CONTENT_TYPE, Some(content_type)),
        (
            header::CONTENT_ENCODING,
            object.attrs.content_encoding.as_deref(),
        ),
        (
            header::CONTENT_LANGUAGE,
            object.attrs.content_language.as_deref(),
        ),
        (
            header::CONTENT_DISPOSITION,
            object.attrs.content_disposition.as_deref(),
        ),
        (header::CACHE_CONTROL, object.attrs.cache_control.as_deref()),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        let end = offset + len - 1;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {offset}-{end}/{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

fn validators(h: &mut HeaderMap, object: &ObjectRecord) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", object.etag)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(object.modified_ms)) {
        h.insert(header::LAST_MODIFIED, v);
    }
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// S3's website error page: HTML, not the XML of its REST API.
fn error_page(
    status: StatusCode,
    code: &str,
    message: &str,
    bucket: &str,
    request_id: &str,
) -> Response {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let html = format!(
        "<html>\n<head><title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n<ul>\n\
         <li>Code: {code}</li>\n<li>Message: {}</li>\n<li>BucketName: {}</li>\n\
         <li>RequestId: {request_id}</li>\n</ul>\n<hr/>\n</body>\n</html>\n",
        escape(message),
        escape(bucket),
    );
    let mut r = Response::new(Body::from(html));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A fault of the store: logged once here, a 500 page (503 when the disk is not the
/// problem but the database is busy) for the client.
fn fault(e: ObjectError, bucket: &str, request_id: &str) -> Response {
    tracing::error!(bucket, error = %e, "website: reading the object store");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        "We encountered an internal error. Please try again.",
        bucket,
        request_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_buckets_under_the_domain_only() {
        let uri: axum::http::Uri = "/".parse().unwrap();
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            bucket_of(&m, &uri, "localhost")
        };
        assert_eq!(host("site.localhost"), Some("site".into()));
        assert_eq!(host("site.localhost:8080"), Some("site".into()));
        assert_eq!(host("Site.LocalHost."), Some("site".into()));
        assert_eq!(host("my.site.localhost"), Some("my.site".into()));
        assert_eq!(host("localhost"), None);
        assert_eq!(host("localhost:8080"), None);
        assert_eq!(host(".localhost"), None);
        assert_eq!(host("sitelocalhost"), None);
        assert_eq!(host("127.0.0.1:7700"), None);
        assert_eq!(host("[::1]:7700"), None);
        assert_eq!(host("site.example.com"), None);
        assert_eq!(bucket_of(&HeaderMap::new(), &uri, "localhost"), None);
        let absolute: axum::http::Uri = "http://docs.localhost:9/x".parse().unwrap();
        assert_eq!(
            bucket_of(&HeaderMap::new(), &absolute, "localhost"),
            Some("docs".into())
        );
    }

    #[test]
    fn one_range_is_served_and_the_rest_ignored_as_s3_does() {
        use RangeAsk::*;
        for (header, expect) in [
            (None, Whole),
            (Some("bytes=0-9"), Part(0, 10)),
            (Some("bytes=5-"), Part(5, 95)),
            (Some("bytes=-10"), Part(90, 10)),
            (Some("bytes=-1000"), Part(0, 100)),
            (Some("bytes=90-1000"), Part(90, 10)),
            (Some("bytes=100-"), Unsatisfiable),
            (Some("bytes=100-200"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            (Some("bytes=0-1,5-6"), Whole),
            (Some("bytes=9-5"), Whole),
            (Some("items=0-5"), Whole),
            (Some("bytes=x-5"), Whole),
            (Some("bytes=5"), Whole),
        ] {
            assert_eq!(range_of(header, 100), expect, "{header:?}");
        }
        assert_eq!(range_of(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn etag_lists_match_quoted_weak_and_any() {
        assert!(etag_listed("\"abc\"", "abc"));
        assert!(etag_listed("W/\"abc\"", "abc"));
        assert!(etag_listed("\"x\", \"abc\"", "abc"));
        assert!(etag_listed("*", "abc"));
        assert!(!etag_listed("\"abd\"", "abc"));
    }
}
