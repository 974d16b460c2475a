//! HTTP triggers: the routes a function serves on the gateway, and what protects them.
//!
//! A route is a path pattern (`/catalog/{id}`, `/files/{proxy+}`) and a set of methods. Two
//! routes conflict when their patterns are the same up to parameter names and their
//! methods overlap; conflicts are refused at deploy time, so the gateway never has to
//! choose between functions.

use serde::{Deserialize, Serialize};

use crate::FieldError;
use crate::limits;

/// What an HTTP trigger (or a function URL) requires of a caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// Anyone may call.
    Anonymous,
    /// An invoke key (`nimbus keys create`) must be sent in `x-nimbus-key` or `x-api-key`.
    #[default]
    Key,
}

/// Cross-origin resource sharing for a route. Preflight requests are answered by the
/// gateway without invoking the function.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins allowed, or `*`.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods allowed; empty means the route's methods.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default)]
    pub max_age_s: u32,
}

/// A token bucket: `requests_per_second` refill, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: u32,
    #[serde(default)]
    pub burst: u32,
}

/// The protections of a route, shared by triggers and function URLs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOptions {
    #[serde(default)]
    pub auth: Auth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Client networks allowed (CIDR); empty allows all not denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Client networks refused (CIDR); deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Largest request body; at most the platform's payload limit, which is the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// `- http: {path, methods, ...}` in a manifest.
///
/// It repeats the fields of `RouteOptions` instead of flattening them in, because serde's
/// `flatten` cannot be combined with `deny_unknown_fields`, and a misspelt protection
/// (`alow:`) must be an error, not a route left open. `options()` gives the shared view.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    pub path: String,
    /// Upper-case methods; empty means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_limit_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The version (`3`) or alias (`prod`) the route calls; none calls `$LATEST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<String>,
    /// The event a handler-style function gets: `"2.0"` (the default, API Gateway's HTTP
    /// API) or `"1.0"` (the REST API's: `httpMethod`, `multiValueHeaders`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_version: Option<String>,
    /// `cloudevent`: the route takes CloudEvents (structured, batch of one, or binary mode)
    /// and the handler gets the parsed event as structured JSON; anything else is a 400.
    #[serde(default, skip_serializing_if = "crate::timer::EventFormat::is_native")]
    pub format: crate::timer::EventFormat,
}

impl HttpTrigger {
    /// The protections of this trigger.
    pub fn options(&self) -> RouteOptions {
        RouteOptions {
            auth: self.auth,
            cors: self.cors.clone(),
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            body_limit_bytes: self.body_limit_bytes,
            rate_limit: self.rate_limit,
        }
    }
}

/// What turns events into invocations of a function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Trigger {
    Http(HttpTrigger),
    Timer(crate::timer::TimerTrigger),
    Event(crate::timer::EventTrigger),
    Object(crate::object::ObjectTrigger),
    Queue(crate::queue::QueueTrigger),
}

impl Trigger {
    /// The route, when this is an HTTP trigger.
    pub fn http(&self) -> Option<&HttpTrigger> {
        match self {
            Trigger::Http(t) => Some(t),
            _ => None,
        }
    }

    /// The rule, when this is an event trigger.
    pub fn event(&self) -> Option<&crate::timer::EventTrigger> {
        match self {
            Trigger::Event(t) => Some(t),
            _ => None,
        }
    }

    /// The bucket rule, when this is an object trigger.
    pub fn object(&self) -> Option<&crate::object::ObjectTrigger> {
        match self {
            Trigger::Object(t) => Some(t),
            _ => None,
        }
    }

    /// The broker's spec, when this is a queue trigger.
    pub fn queue(&self) -> Option<&crate::queue::QueueTrigger> {
        match self {
            Trigger::Queue(t) => Some(t),
            _ => None,
        }
    }

    /// The spec as the API and the CLI show it: secrets in broker URLs redacted.
    pub fn redacted(&self) -> Trigger {
        match self {
            Trigger::Queue(q) => Trigger::Queue(q.redacted()),
            t => t.clone(),
        }
    }

    /// The timer, when this is a timer trigger.
    pub fn timer(&self) -> Option<&crate::timer::TimerTrigger> {
        match self {
            Trigger::Timer(t) => Some(t),
            _ => None,
        }
    }
}

/// Methods a route may name.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The API versions Lambda's operations live under (the Lambda API serves them).
pub const LAMBDA_API_PREFIXES: [&str; 4] = [
    "/2015-03-31/",
    "/2017-10-31/",
    "/2019-09-25/",
    "/2019-09-30/",
];

/// Path prefixes the platform keeps for itself: its API, health, function URLs, and the
/// Lambda API's.
pub const RESERVED_PREFIXES: [&str; 7] = [
    "/v1",
    "/healthz",
    "/fn/",
    LAMBDA_API_PREFIXES[0],
    LAMBDA_API_PREFIXES[1],
    LAMBDA_API_PREFIXES[2],
    LAMBDA_API_PREFIXES[3],
];

/// One segment of a parsed route pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
    /// `{name+}`: the rest of the path, at least one segment; only last.
    Greedy(String),
}

/// Parses `/a/{b}/{c+}` into segments, or says what is wrong with it.
pub fn parse_route(path: &str) -> Result<Vec<Segment>, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    if path.len() > limits::ROUTE_LEN_MAX {
        return Err(format!("longer than {} characters", limits::ROUTE_LEN_MAX));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    let mut segments = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            if i == parts.len() - 1 && parts.len() == 1 {
                break; // the root path `/`
            }
            return Err(format!("`{path}` has an empty segment"));
        }
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (name, greedy) = match inner.strip_suffix('+') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "parameter `{{{inner}}}` must be a name of letters, digits and `_`"
                ));
            }
            if !names.insert(name.to_string()) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            if greedy {
                if i != parts.len() - 1 {
                    return Err(format!(
                        "greedy parameter `{{{inner}}}` must be the last segment"
                    ));
                }
                segments.push(Segment::Greedy(name.into()));
            } else {
                segments.push(Segment::Param(name.into()));
            }
        } else if part.contains(['{', '}', '*', '?', '#', '%']) {
            return Err(format!(
                "segment `{part}` has a reserved character; parameters are whole segments like `{{id}}`"
            ));
        } else {
            segments.push(Segment::Literal((*part).into()));
        }
    }
    Ok(segments)
}

/// The pattern with parameter names erased: routes with equal shapes match the same paths.
pub fn route_shape(segments: &[Segment]) -> String {
    let mut shape = String::new();
    for s in segments {
        shape.push('/');
        match s {
            Segment::Literal(l) => shape.push_str(l),
            Segment::Param(_) => shape.push_str("{}"),
            Segment::Greedy(_) => shape.push_str("{+}"),
        }
    }
    if shape.is_empty() {
        shape.push('/');
    }
    shape
}

/// Whether two method lists share a method (an empty list is every method).
pub fn methods_overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|m| b.contains(m))
}

pub(crate) fn validate_options(field: &str, o: &RouteOptions, errors: &mut Vec<FieldError>) {
    let mut push = |f: &str, message: String| {
        errors.push(FieldError {
            field: format!("{field}.{f}"),
            message,
        })
    };
    for (name, list) in [("allow", &o.allow), ("deny", &o.deny)] {
        for cidr in list {
            if parse_cidr(cidr).is_none() {
                push(
                    name,
                    format!("`{cidr}` is not an IP address or CIDR network (e.g. 10.0.0.0/8)"),
                );
            }
        }
    }
    if let Some(limit) = o.body_limit_bytes
        && (limit == 0 || limit > limits::PAYLOAD_BYTES_MAX as u64)
    {
        push(
            "body_limit_bytes",
            format!(
                "{limit} is out of range; must be 1 to {}",
                limits::PAYLOAD_BYTES_MAX
            ),
        );
    }
    if let Some(r) = o.rate_limit
        && (r.requests_per_second == 0 || r.requests_per_second > limits::RATE_LIMIT_RPS_MAX)
    {
        push(
            "rate_limit.requests_per_second",
            format!(
                "{} is out of range; must be 1 to {}",
                r.requests_per_second,
                limits::RATE_LIMIT_RPS_MAX
            ),
        );
    }
    if let Some(cors) = &o.cors {
        if cors.allow_origins.is_empty() {
            push(
                "cors.allow_origins",
                "must name at least one origin, or `*`".into(),
            );
        }
        if cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
            push(
                "cors.allow_credentials",
                "cannot be combined with the origin `*` (browsers refuse it)".into(),
            );
        }
    }
}

pub(crate) fn validate_trigger(field: &str, t: &HttpTrigger, errors: &mut Vec<FieldError>) {
    if let Some(v) = &t.payload_format_version
        && v != "1.0"
        && v != "2.0"
    {
        errors.push(FieldError {
            field: format!("{field}.payload_format_version"),
            message: format!("`{v}` is not a payload format; use \"1.0\" or \"2.0\""),
        });
    }
    if let Some(q) = &t.qualifier
        && let Err(message) = q.parse::<crate::Qualifier>()
    {
        errors.push(FieldError {
            field: format!("{field}.qualifier"),
            message,
        });
    }
    if let Err(message) = parse_route(&t.path) {
        errors.push(FieldError {
            field: format!("{field}.path"),
            message,
        });
    } else if let Some(prefix) = RESERVED_PREFIXES.iter().find(|p| {
        t.path == p.trim_end_matches('/')
            || t.path.starts_with(&format!("{}/", p.trim_end_matches('/')))
    }) {
        errors.push(FieldError {
            field: format!("{field}.path"),
            message: format!(
                "`{}` is under `{prefix}`, which the platform reserves",
                t.path
            ),
        });
    }
    for m in &t.methods {
        if !METHODS.contains(&m.as_str()) {
            errors.push(FieldError {
                field: format!("{field}.methods"),
                message: format!("`{m}` is not one of {}", METHODS.join(", ")),
            });
        }
    }
    validate_options(field, &t.options(), errors);
}

/// Parses `10.0.0.0/8`, `::1/128` or a bare address (a /32 or /128 network).
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes_and_shapes() {
        let cases = [
            ("/", Ok("/")),
            ("/catalog/{id}", Ok("/catalog/{}")),
            ("/files/{proxy+}", Ok("/files/{+}")),
            ("/a/{x}/b/{y}", Ok("/a/{}/b/{}")),
            ("catalog", Err("must start with `/`")),
            ("/a//b", Err("empty segment")),
            ("/a/{p+}/b", Err("must be the last segment")),
            ("/a/{x}/{x}", Err("appears twice")),
            ("/a/x{y}", Err("reserved character")),
            ("/a/{}", Err("must be a name")),
        ];
        for (path, expect) in cases {
            match (parse_route(path), expect) {
                (Ok(s), Ok(shape)) => assert_eq!(route_shape(&s), shape, "{path}"),
                (Err(e), Err(msg)) => assert!(e.contains(msg), "{path}: {e}"),
                (got, want) => panic!("{path}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn methods_overlap_with_any() {
        let get = vec!["GET".to_string()];
        let post = vec!["POST".to_string()];
        assert!(methods_overlap(&get, &get));
        assert!(!methods_overlap(&get, &post));
        assert!(methods_overlap(&[], &post));
    }

    #[test]
    fn cidrs() {
        assert!(
            parse_cidr("10.0.0.0/8")
                .unwrap()
                .contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap())
        );
        assert!(parse_cidr("127.0.0.1").is_some());
        assert!(parse_cidr("::1/128").is_some());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("nope").is_none());
    }
}
