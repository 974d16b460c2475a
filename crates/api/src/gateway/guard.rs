//! Per-route protection: client networks, invoke keys, CORS, rate limits, body limits.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, header};
use ipnet::IpNet;
use model::http::{Auth, Cors, RouteOptions, parse_cidr};
use model::limits;

/// A route's protections, compiled from its options.
pub struct Guard {
    pub auth: Auth,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    pub cors: Option<Cors>,
    /// The methods of the route, for CORS preflight answers.
    route_methods: Vec<String>,
    pub body_limit_bytes: usize,
    rate: Option<Mutex<TokenBucket>>,
}

impl Guard {
    pub fn compile(o: &RouteOptions, route_methods: &[String]) -> Result<Guard, String> {
        let nets = |list: &[String]| -> Result<Vec<IpNet>, String> {
            list.iter()
                .map(|c| parse_cidr(c).ok_or_else(|| format!("`{c}` is not a CIDR network")))
                .collect()
        };
        Ok(Guard {
            auth: o.auth,
            allow: nets(&o.allow)?,
            deny: nets(&o.deny)?,
            cors: o.cors.clone(),
            route_methods: route_methods.to_vec(),
            body_limit_bytes: o
                .body_limit_bytes
                .map(|b| b as usize)
                .unwrap_or(limits::PAYLOAD_BYTES_MAX)
                .min(limits::PAYLOAD_BYTES_MAX),
            rate: o.rate_limit.map(|r| {
                let burst = if r.burst == 0 {
                    r.requests_per_second
                } else {
                    r.burst
                };
                Mutex::new(TokenBucket::new(r.requests_per_second as f64, burst as f64))
            }),
        })
    }

    /// Whether a client at `ip` may call. Deny wins over allow; an empty allow list allows
    /// every network not denied.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Takes a token; `Err(seconds)` says when to retry.
    pub fn take_token(&self) -> Result<(), u64> {
        match &self.rate {
            Some(bucket) => bucket.lock().unwrap().take(Instant::now()),
            None => Ok(()),
        }
    }

    /// The origin to echo in `Access-Control-Allow-Origin`, if `origin` is allowed.
    fn allowed_origin<'a>(&self, cors: &'a Cors, origin: &'a str) -> Option<&'a str> {
        if cors.allow_origins.iter().any(|o| o == origin) {
            Some(origin)
        } else if cors.allow_origins.iter().any(|o| o == "*") {
            Some("*")
        } else {
            None
        }
    }

    /// Headers answering a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`),
    /// or `None` when the route has no CORS or the origin is not allowed.
    pub fn preflight(&self, request: &HeaderMap) -> Option<HeaderMap> {
        let cors = self.cors.as_ref()?;
        let origin = request.get(header::ORIGIN)?.to_str().ok()?;
        let allowed = self.allowed_origin(cors, origin)?;
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_str(allowed).ok()?,
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        let methods = if !cors.allow_methods.is_empty() {
            cors.allow_methods.join(", ")
        } else if !self.route_methods.is_empty() {
            self.route_methods.join(", ")
        } else {
            "*".into()
        };
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_str(&methods).ok()?,
        );
        let headers = if cors.allow_headers.iter().any(|x| x == "*") {
            // Echo what the browser asked for: `*` is not honoured with credentials.
            request
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        } else {
            cors.allow_headers.join(", ")
        };
        if !headers.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_str(&headers).ok()?,
            );
        }
        if cors.max_age_s > 0 {
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(cors.max_age_s),
            );
        }
        if cors.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        Some(h)
    }

    /// Adds the CORS headers of an actual (not preflight) response.
    pub fn decorate(&self, request: &HeaderMap, response: &mut HeaderMap) {
        let Some(cors) = &self.cors else { return };
        let Some(origin) = request.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return;
        };
        let Some(allowed) = self.allowed_origin(cors, origin) else {
            return;
        };
        if let Ok(v) = HeaderValue::from_str(allowed) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        response.append(header::VARY, HeaderValue::from_static("Origin"));
        if cors.allow_credentials {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if !cors.expose_headers.is_empty()
            && let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", "))
        {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

/// A token bucket refilled continuously. Per route (or bus key) and per node: each node of
/// a cluster enforces the limit on its own share of the traffic.
pub(crate) struct TokenBucket {
    rate_per_s: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_s: f64, capacity: f64) -> Self {
        TokenBucket {
            rate_per_s,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> Result<(), u64> {
        self.take_n(now, 1.0)
    }

    /// Takes `n` tokens at once, or none; `Err` is the seconds until there are `n`.
    pub(crate) fn take_n(&mut self, now: Instant, n: f64) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.capacity);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            let wait_s = (n - self.tokens) / self.rate_per_s;
            Err(wait_s.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_bursts_then_refills() {
        let start = Instant::now();
        let mut b = TokenBucket {
            rate_per_s: 2.0,
            capacity: 3.0,
            tokens: 3.0,
            last: start,
        };
        assert!((0..3).all(|_| b.take(start).is_ok()));
        assert_eq!(b.take(start), Err(1));
        assert!(b.take(start + Duration::from_millis(500)).is_ok());
        assert!(b.take(start + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let o = RouteOptions {
            allow: vec!["10.0.0.0/8".into()],
            deny: vec!["10.0.0.7".into()],
            ..Default::default()
        };
        let g = Guard::compile(&o, &[]).unwrap();
        assert!(g.admits("10.1.2.3".parse().unwrap()));
        assert!(!g.admits("10.0.0.7".parse().unwrap()));
        assert!(!g.admits("192.168.0.1".parse().unwrap()));
        assert!(g.admits("::ffff:10.1.2.3".parse().unwrap()));
    }
}
