//! CloudEvents 1.0 in and out, and EventBridge PutEvents entries in: what the bus accepts,
//! checked attribute by attribute, and what it hands to patterns and to handlers.
//!
//! Read: structured mode (`application/cloudevents+json`), batch mode
//! (`application/cloudevents-batch+json`) and the HTTP binary mode (`ce-*` headers, the
//! body as data), per the CloudEvents 1.0.2 spec, its JSON format and its HTTP binding.
//! Written: structured JSON, which is what `format: cloudevent` delivers. An event's
//! *matching view* is the JSON object patterns match: its attributes, extensions at the
//! top level as the JSON format puts them, and `data` when it is JSON.
//!
//! Every parse checks the event's size against `model::limits::EVENT_BYTES_MAX` before
//! anything else, and errors name the attribute (or header, or PutEvents field) at fault.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use model::limits;
use serde_json::{Map, Value, json};

#[cfg(test)]
mod tests;

/// The only specversion accepted and written.
pub const SPECVERSION: &str = "1.0";

/// Longest extension attribute name (the spec's SHOULD, enforced).
pub const EXTENSION_NAME_LEN_MAX: usize = 20;

/// A CloudEvent (specversion 1.0, which is implied: it is the only one accepted).
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// Non-empty; unique per `source`.
    pub id: String,
    /// A non-empty URI-reference.
    pub source: String,
    /// The `type` attribute, non-empty.
    pub ty: String,
    /// The media type of `data` (`application/json` is implied when absent).
    pub datacontenttype: Option<String>,
    /// A non-empty absolute URI.
    pub dataschema: Option<String>,
    /// Non-empty: what the event is about within its source.
    pub subject: Option<String>,
    /// RFC 3339, as given.
    pub time: Option<String>,
    /// Extension attributes: names of 1 to 20 `[a-z0-9]`, values strings, integers or
    /// booleans (binary mode gives strings: headers carry no types).
    pub extensions: BTreeMap<String, Value>,
    /// The payload, if any.
    pub data: Option<Data>,
}

/// An event's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// JSON data (`datacontenttype` absent, `*/json` or `*/*+json`); may be `null`.
    Json(Value),
    /// Text under a non-JSON content type (`data` as a JSON string).
    Text(String),
    /// Bytes (`data_base64`; a binary-mode body that is neither JSON nor text).
    Binary(Vec<u8>),
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// An attribute, header or field (`field`: `id`, `ce-time`, `Detail`) is missing or
    /// invalid.
    Invalid {
        /// The attribute (`id`), header (`ce-id`) or PutEvents field (`Detail`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The body as a whole is not what its content type says.
    Malformed(String),
    /// Over `limits::EVENT_BYTES_MAX`.
    TooLarge {
        /// The event's size as counted (its JSON, or headers and body, or as PutEvents
        /// counts an entry).
        bytes: usize,
    },
    /// A batch over `limits::EVENT_BATCH_MAX` events.
    TooMany {
        /// How many the batch had.
        events: usize,
    },
    /// One event of a batch (by its position) was refused.
    InBatch {
        index: usize,
        error: Box<EventError>,
    },
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::Invalid { field, message } => write!(f, "{field}: {message}"),
            EventError::Malformed(message) => f.write_str(message),
            EventError::TooLarge { bytes } => write!(
                f,
                "the event is {bytes} bytes, over the limit of {} bytes",
                limits::EVENT_BYTES_MAX
            ),
            EventError::TooMany { events } => write!(
                f,
                "{events} events in one batch, over the limit of {}",
                limits::EVENT_BATCH_MAX
            ),
            EventError::InBatch { index, error } => write!(f, "event [{index}]: {error}"),
        }
    }
}

impl std::error::Error for EventError {}

fn invalid(field: &str, message: impl Into<String>) -> EventError {
    EventError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn check_size(bytes: usize) -> Result<(), EventError> {
    if bytes > limits::EVENT_BYTES_MAX {
        return Err(EventError::TooLarge { bytes });
    }
    Ok(())
}

/// Where attributes came from, for naming them in errors: `id` in JSON, `ce-id` in headers.
#[derive(Clone, Copy)]
enum Mode {
    Json,
    Headers,
}

impl Mode {
    fn name(self, attribute: &str) -> Cow<'_, str> {
        match self {
            Mode::Json => Cow::Borrowed(attribute),
            Mode::Headers => Cow::Owned(format!("ce-{attribute}")),
        }
    }
}

impl CloudEvent {
    /// An event with the required attributes and nothing else.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
    ) -> CloudEvent {
        CloudEvent {
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            extensions: BTreeMap::new(),
            data: None,
        }
    }

    /// Reads a request by its content type: structured, batch, or else binary mode (which
    /// needs a `ce-specversion` header). Header names are matched without regard to case.
    pub fn from_http<N: AsRef<str>, V: AsRef<[u8]>>(
        headers: &[(N, V)],
        body: &[u8],
    ) -> Result<Vec<CloudEvent>, EventError> {
        let content_type = header(headers, "content-type");
        let media = content_type
            .map(|v| media_type(&String::from_utf8_lossy(v)))
            .unwrap_or_default();
        match media.as_str() {
            "application/cloudevents+json" => Ok(vec![CloudEvent::from_structured(body)?]),
            "application/cloudevents-batch+json" => CloudEvent::from_batch(body),
            m if m.starts_with("application/cloudevents") => Err(EventError::Malformed(format!(
                "event format {m} is not supported (use application/cloudevents+json)"
            ))),
            _ if header(headers, "ce-specversion").is_some() => {
                Ok(vec![CloudEvent::from_binary(headers, body)?])
            }
            _ => Err(EventError::Malformed(
                "not a CloudEvent: the content type is not application/cloudevents+json \
                 or application/cloudevents-batch+json, and there is no ce-specversion header"
                    .into(),
            )),
        }
    }

    /// Structured mode: one event as a JSON object.
    pub fn from_structured(body: &[u8]) -> Result<CloudEvent, EventError> {
        check_size(body.len())?;
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| EventError::Malformed(format!("the event is not valid JSON: {e}")))?;
        CloudEvent::from_json(&value)
    }

    /// Batch mode: a JSON array of structured events, each within the size limit.
    pub fn from_batch(body: &[u8]) -> Result<Vec<CloudEvent>, EventError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| EventError::Malformed(format!("the batch is not valid JSON: {e}")))?;
        let Value::Array(events) = value else {
            return Err(EventError::Malformed(
                "a batch must be a JSON array of events".into(),
            ));
        };
        if events.len() > limits::EVENT_BATCH_MAX {
            return Err(EventError::TooMany {
                events: events.len(),
            });
        }
        events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                check_size(super::pattern::json_len(event))
                    .and_then(|()| CloudEvent::from_json(event))
                    .map_err(|error| EventError::InBatch {
                        index,
                        error: Box::new(error),
                    })
            })
            .collect()
    }

    /// One event in the JSON format (an object), as in structured mode or a batch. The
    /// caller has checked its size.
    pub fn from_json(value: &Value) -> Result<CloudEvent, EventError> {
        let Value::Object(map) = value else {
            return Err(EventError::Malformed(
                "an event must be a JSON object".into(),
            ));
        };
        let mut attributes = Map::new();
        let mut data = None;
        let mut data_base64 = None;
        for (name, value) in map {
            match name.as_str() {
                // The JSON format's rule: a null attribute is an absent one.
                _ if value.is_null() && name != "data" => {}
                "data" => data = Some(value),
                "data_base64" => data_base64 = Some(value),
                _ => {
                    attributes.insert(name.clone(), value.clone());
                }
            }
        }
        let mut event = from_attributes(attributes, Mode::Json)?;
        event.data = match (data, data_base64) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "data_base64",
                    "data and data_base64 cannot both be present",
                ));
            }
            (None, Some(encoded)) => {
                let bytes = encoded
                    .as_str()
                    .and_then(|s| BASE64.decode(s).ok())
                    .ok_or_else(|| invalid("data_base64", "must be a string of base64"))?;
                Some(Data::Binary(bytes))
            }
            (Some(data), None) => match event.datacontenttype.as_deref() {
                None => Some(Data::Json(data.clone())),
                Some(ct) if is_json(ct) => Some(Data::Json(data.clone())),
                Some(ct) => match data {
                    Value::String(text) => Some(Data::Text(text.clone())),
                    _ => {
                        return Err(invalid(
                            "data",
                            format!("must be a string: datacontenttype {ct} is not JSON"),
                        ));
                    }
                },
            },
            (None, None) => None,
        };
        Ok(event)
    }

    /// Binary mode: attributes from `ce-*` headers (values unquoted and percent-decoded as
    /// the HTTP binding says), `content-type` as `datacontenttype`, the body as data: JSON
    /// under a JSON content type (then it must parse), text under `text/*` or XML, bytes
    /// otherwise. Other headers are ignored.
    pub fn from_binary<N: AsRef<str>, V: AsRef<[u8]>>(
        headers: &[(N, V)],
        body: &[u8],
    ) -> Result<CloudEvent, EventError> {
        let header_bytes: usize = headers
            .iter()
            .filter(|(n, _)| is_ce_header(n.as_ref()))
            .map(|(n, v)| n.as_ref().len() + v.as_ref().len())
            .sum();
        check_size(body.len() + header_bytes)?;
        let mut attributes = Map::new();
        let mut content_type = None;
        for (name, value) in headers {
            let name = name.as_ref().to_ascii_lowercase();
            if name == "content-type" {
                content_type = Some(decode_header(&name, value.as_ref())?);
                continue;
            }
            if !is_ce_header(&name) {
                continue;
            }
            let attribute = &name[3..];
            match attribute {
                "datacontenttype" => {
                    return Err(invalid(
                        &name,
                        "binary mode carries the data's type in content-type",
                    ));
                }
                "data" | "data_base64" => {
                    return Err(invalid(&name, "is not an attribute (data is the body)"));
                }
                _ => {}
            }
            let decoded = decode_header(&name, value.as_ref())?;
            if attributes
                .insert(attribute.to_owned(), Value::String(decoded))
                .is_some()
            {
                return Err(invalid(&name, "appears more than once"));
            }
        }
        if let Some(ct) = &content_type {
            attributes.insert("datacontenttype".into(), Value::String(ct.clone()));
        }
        let mut event = from_attributes(attributes, Mode::Headers)?;
        event.data = if body.is_empty() {
            None
        } else {
            match content_type.as_deref() {
                Some(ct) if is_json(ct) => {
                    Some(Data::Json(serde_json::from_slice(body).map_err(|e| {
                        invalid("data", format!("the body is not valid JSON ({ct}): {e}"))
                    })?))
                }
                Some(ct) if is_text(ct) => match std::str::from_utf8(body) {
                    Ok(text) => Some(Data::Text(text.to_owned())),
                    Err(_) => Some(Data::Binary(body.to_vec())),
                },
                _ => Some(Data::Binary(body.to_vec())),
            }
        };
        Ok(event)
    }

    /// The event in the JSON format (what structured mode sends and `format: cloudevent`
    /// delivers).
    pub fn to_json(&self) -> Value {
        let mut map = self.attributes();
        match &self.data {
            Some(Data::Json(value)) => {
                map.insert("data".into(), value.clone());
            }
            Some(Data::Text(text)) => {
                map.insert("data".into(), Value::String(text.clone()));
            }
            Some(Data::Binary(bytes)) => {
                map.insert("data_base64".into(), Value::String(BASE64.encode(bytes)));
            }
            None => {}
        }
        Value::Object(map)
    }

    /// `to_json` as bytes, the body of a structured-mode request.
    pub fn to_structured(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_json()).expect("a JSON value serializes")
    }

    /// What event patterns match: the attributes (with `specversion`), the extensions at
    /// the top level, and `data` when it is JSON (text and bytes are not matched).
    pub fn matching_view(&self) -> Value {
        let mut map = self.attributes();
        if let Some(Data::Json(value)) = &self.data {
            map.insert("data".into(), value.clone());
        }
        Value::Object(map)
    }

    fn attributes(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("specversion".into(), SPECVERSION.into());
        map.insert("id".into(), self.id.clone().into());
        map.insert("source".into(), self.source.clone().into());
        map.insert("type".into(), self.ty.clone().into());
        let optional = [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                map.insert(name.into(), value.clone().into());
            }
        }
        for (name, value) in &self.extensions {
            map.insert(name.clone(), value.clone());
        }
        map
    }
}

/// Builds and checks an event from its attributes (data aside).
fn from_attributes(
    mut attributes: Map<String, Value>,
    mode: Mode,
) -> Result<CloudEvent, EventError> {
    let mut take_string = |name: &str, required: bool| -> Result<Option<String>, EventError> {
        match attributes.remove(name) {
            None if required => Err(invalid(&mode.name(name), "missing (it is required)")),
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => {
                Err(invalid(&mode.name(name), "must not be empty"))
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(&mode.name(name), "must be a string")),
        }
    };
    let specversion = take_string("specversion", true)?.unwrap_or_default();
    if specversion != SPECVERSION {
        return Err(invalid(
            &mode.name("specversion"),
            format!("must be \"{SPECVERSION}\", not \"{specversion}\""),
        ));
    }
    let id = take_string("id", true)?.unwrap_or_default();
    let source = take_string("source", true)?.unwrap_or_default();
    let ty = take_string("type", true)?.unwrap_or_default();
    let datacontenttype = take_string("datacontenttype", false)?;
    let dataschema = take_string("dataschema", false)?;
    let subject = take_string("subject", false)?;
    let time = take_string("time", false)?;
    if !is_uri_reference(&source) {
        return Err(invalid(
            &mode.name("source"),
            "must be a URI-reference (no spaces or control characters)",
        ));
    }
    if let Some(ct) = &datacontenttype
        && !media_type(ct).contains('/')
    {
        return Err(invalid(
            &mode.name("datacontenttype"),
            format!("\"{ct}\" is not a media type (type/subtype)"),
        ));
    }
    if let Some(schema) = &dataschema
        && !is_absolute_uri(schema)
    {
        return Err(invalid(
            &mode.name("dataschema"),
            "must be an absolute URI (scheme:...)",
        ));
    }
    if let Some(time) = &time
        && !is_rfc3339(time)
    {
        return Err(invalid(
            &mode.name("time"),
            format!("\"{time}\" is not an RFC 3339 timestamp (2018-04-05T17:31:00Z)"),
        ));
    }
    let mut extensions = BTreeMap::new();
    for (name, value) in attributes {
        let field = mode.name(&name);
        if name.is_empty()
            || name.len() > EXTENSION_NAME_LEN_MAX
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(invalid(
                &field,
                format!(
                    "an extension name must be 1 to {EXTENSION_NAME_LEN_MAX} lower-case \
                     letters or digits"
                ),
            ));
        }
        let ok = match &value {
            Value::String(_) | Value::Bool(_) => true,
            // The spec's Integer is 32-bit.
            Value::Number(n) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            _ => false,
        };
        if !ok {
            return Err(invalid(
                &field,
                "an extension's value must be a string, a 32-bit integer or a boolean",
            ));
        }
        extensions.insert(name, value);
    }
    Ok(CloudEvent {
        id,
        source,
        ty,
        datacontenttype,
        dataschema,
        subject,
        time,
        extensions,
        data: None,
    })
}

fn is_ce_header(lower_or_any: &str) -> bool {
    lower_or_any.len() > 3 && lower_or_any[..3].eq_ignore_ascii_case("ce-")
}

fn header<'a, N: AsRef<str>, V: AsRef<[u8]>>(
    headers: &'a [(N, V)],
    name: &str,
) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref())
}

/// A header value as the HTTP binding decodes it: surrounding whitespace trimmed, a quoted
/// string unquoted (older senders), one round of percent-decoding, and UTF-8 checked (which
/// refuses overlong encodings such as `%C0%A0`).
fn decode_header(name: &str, raw: &[u8]) -> Result<String, EventError> {
    let trimmed = raw.trim_ascii();
    let unquoted: Cow<[u8]> = match trimmed {
        [b'"', inner @ .., b'"'] => {
            let mut out = Vec::with_capacity(inner.len());
            let mut bytes = inner.iter();
            while let Some(&b) = bytes.next() {
                match b {
                    b'\\' => match bytes.next() {
                        Some(&escaped) => out.push(escaped),
                        None => return Err(invalid(name, "ends inside a quoted escape")),
                    },
                    b => out.push(b),
                }
            }
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(trimmed),
    };
    let mut out = Vec::with_capacity(unquoted.len());
    let mut i = 0;
    while i < unquoted.len() {
        if unquoted[i] == b'%' {
            let hex = unquoted
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(name, "has a % not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(unquoted[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(name, "is not UTF-8 once percent-decoded"))
}

/// A media type without its parameters, lower-cased: `application/json`.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// `*/json` or `*/*+json`, the JSON format's test for JSON data.
fn is_json(content_type: &str) -> bool {
    let media = media_type(content_type);
    media
        .split_once('/')
        .is_some_and(|(_, sub)| sub == "json" || sub.ends_with("+json"))
}

/// Content a handler should get as a string rather than base64.
fn is_text(content_type: &str) -> bool {
    let media = media_type(content_type);
    media.starts_with("text/")
        || media
            .split_once('/')
            .is_some_and(|(_, sub)| sub == "xml" || sub.ends_with("+xml"))
}

/// RFC 3986 allows no whitespace, controls or non-ASCII in a URI-reference; checking those
/// catches what goes wrong in practice without a full URI grammar.
fn is_uri_reference(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    is_uri_reference(s)
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// RFC 3339's `date-time`: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, with real dates (leap
/// years) and a leap second allowed.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        num(0, 4),
        num(5, 2),
        num(8, 2),
        num(11, 2),
        num(14, 2),
        num(17, 2),
    ) else {
        return false;
    };
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return false;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return false;
    }
    let mut rest = &b[19..];
    if let [b'.', tail @ ..] = rest {
        let digits = tail.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &tail[digits..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let all = [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit());
            all && (h1 - b'0') * 10 + (h2 - b'0') <= 23 && (m1 - b'0') * 10 + (m2 - b'0') <= 59
        }
        _ => false,
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`, EventBridge's `time` format.
pub fn format_epoch_seconds(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = model::civil::from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

/// One entry of an EventBridge `PutEvents` request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PutEventsEntry {
    /// `Source`, delivered as `source`.
    pub source: String,
    /// `DetailType`, delivered as `detail-type`.
    pub detail_type: String,
    /// The parsed `Detail`: a JSON object.
    pub detail: Value,
    /// `Resources` (ARNs on AWS; any strings here).
    pub resources: Vec<String>,
    /// RFC 3339; from `Time` given as epoch seconds (the AWS JSON protocol) or a string.
    pub time: Option<String>,
    /// The bus named; the front door decides what a name other than its own means.
    pub event_bus_name: Option<String>,
}

/// The latest `Time` accepted (9999-12-31T23:59:59Z), so its formatting stays RFC 3339.
const EPOCH_SECONDS_MAX: f64 = 253_402_300_799.0;

impl PutEventsEntry {
    /// A `PutEvents` request body (`{"Entries": [...]}`): the request fails as a whole only
    /// when it is malformed; each entry succeeds or fails alone, as EventBridge answers
    /// them one by one (`FailedEntryCount`).
    pub fn parse_request(
        body: &[u8],
    ) -> Result<Vec<Result<PutEventsEntry, EventError>>, EventError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| EventError::Malformed(format!("the request is not valid JSON: {e}")))?;
        let Some(Value::Array(entries)) = value.get("Entries") else {
            return Err(EventError::Malformed(
                "a PutEvents request needs Entries, an array of entries".into(),
            ));
        };
        if entries.is_empty() {
            return Err(EventError::Malformed("Entries is empty".into()));
        }
        if entries.len() > limits::EVENT_BATCH_MAX {
            return Err(EventError::TooMany {
                events: entries.len(),
            });
        }
        Ok(entries.iter().map(PutEventsEntry::parse).collect())
    }

    /// One entry: `Source`, `DetailType` and `Detail` (a string holding a JSON object) are
    /// required; `Resources`, `Time` and `EventBusName` are optional. Its size is counted
    /// as EventBridge counts it (the bytes of `Source`, `DetailType`, `Detail` and each
    /// resource, 14 for a `Time`).
    pub fn parse(entry: &Value) -> Result<PutEventsEntry, EventError> {
        let Value::Object(map) = entry else {
            return Err(EventError::Malformed(
                "an entry must be a JSON object".into(),
            ));
        };
        let string = |name: &str, required: bool| -> Result<Option<String>, EventError> {
            match map.get(name) {
                None | Some(Value::Null) if required => {
                    Err(invalid(name, "missing (it is required)"))
                }
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Err(invalid(name, "must not be empty")),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(name, "must be a string")),
            }
        };
        let source = string("Source", true)?.unwrap_or_default();
        let detail_type = string("DetailType", true)?.unwrap_or_default();
        let detail_text = string("Detail", true)?.unwrap_or_default();
        let event_bus_name = string("EventBusName", false)?;
        let resources = match map.get("Resources") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid("Resources", "must be an array of strings"))?,
            Some(_) => return Err(invalid("Resources", "must be an array of strings")),
        };
        let time = match map.get("Time") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                let seconds = n
                    .as_f64()
                    .filter(|s| (0.0..=EPOCH_SECONDS_MAX).contains(s))
                    .ok_or_else(|| invalid("Time", "seconds since the epoch out of range"))?;
                // EventBridge's `time` has whole seconds.
                Some(format_epoch_seconds(seconds.floor() as i64))
            }
            Some(Value::String(s)) if is_rfc3339(s) => Some(s.clone()),
            Some(_) => {
                return Err(invalid(
                    "Time",
                    "must be seconds since the epoch or an RFC 3339 timestamp",
                ));
            }
        };
        let size = source.len()
            + detail_type.len()
            + detail_text.len()
            + resources.iter().map(String::len).sum::<usize>()
            + if time.is_some() { 14 } else { 0 };
        check_size(size)?;
        let detail: Value = serde_json::from_str(&detail_text)
            .map_err(|e| invalid("Detail", format!("is not valid JSON: {e}")))?;
        if !detail.is_object() {
            return Err(invalid("Detail", "must be a JSON object"));
        }
        Ok(PutEventsEntry {
            source,
            detail_type,
            detail,
            resources,
            time,
            event_bus_name,
        })
    }

    /// The event as EventBridge delivers it to targets (and as patterns see it). `id`,
    /// `account`, `region` and `now` (RFC 3339, used when the entry has no `Time`) come
    /// from the bus, which is what makes this pure.
    pub fn to_event(&self, id: &str, account: &str, region: &str, now: &str) -> Value {
        json!({
            "version": "0",
            "id": id,
            "detail-type": self.detail_type,
            "source": self.source,
            "account": account,
            "time": self.time.as_deref().unwrap_or(now),
            "region": region,
            "resources": self.resources,
            "detail": self.detail,
        })
    }
}
