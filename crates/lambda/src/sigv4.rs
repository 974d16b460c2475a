//! Verification of AWS Signature Version 4 (the `Authorization` header form), as AWS
//! documents it: the canonical request, the string to sign, the derived signing key.
//!
//! Nothing here knows HTTP types: the caller hands over the method, the path and query as
//! they came on the wire, the headers by name and the body, so the same check can serve
//! every AWS-shaped front door.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far a request's `X-Amz-Date` may be from the server's clock, as AWS allows.
pub const CLOCK_SKEW_MAX_MS: i64 = 15 * 60 * 1000;

/// Why a signature was refused, in words that tell the client what to fix.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header at all.
    Missing,
    /// The header or the date is malformed.
    Malformed(String),
    /// The access key id is not one this server issued.
    UnknownKey(String),
    /// The signature does not match, or the request is too old or too new.
    Mismatch(String),
}

/// A request as it arrived, for checking its signature.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The path as sent, still percent-encoded.
    pub path: &'a str,
    /// The query string as sent (without `?`), still percent-encoded.
    pub query: &'a str,
    /// Header (lower-case name, value) pairs in arrival order.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// What a valid `Authorization` header names.
#[derive(Debug, PartialEq, Eq)]
pub struct Credential {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
}

struct Parsed {
    credential: Credential,
    signed_headers: Vec<String>,
    signature: Vec<u8>,
}

fn parse_authorization(value: &str) -> Result<Parsed, AuthError> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256").ok_or_else(|| {
        AuthError::Malformed(
            "the Authorization header is not AWS4-HMAC-SHA256; sign requests with SigV4".into(),
        )
    })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(AuthError::Malformed(
            "the Authorization header lacks Credential, SignedHeaders or Signature".into(),
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(AuthError::Malformed(format!(
            "Credential `{credential}` is not KEY/DATE/REGION/SERVICE/aws4_request"
        )));
    };
    let signature = hex::decode(signature)
        .map_err(|_| AuthError::Malformed("Signature is not hexadecimal".into()))?;
    Ok(Parsed {
        credential: Credential {
            access_key_id: id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        },
        signed_headers: signed.split(';').map(str::to_string).collect(),
        signature,
    })
}

/// Whether `b` is left as it is by AWS's URI encoding.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// AWS's URI encoding: every byte but the unreserved ones as `%XX` (upper-case hex);
/// `/` kept when `keep_slash`.
fn uri_encode(s: &[u8], keep_slash: bool, out: &mut String) {
    for &b in s {
        if unreserved(b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Percent-decoding; a `%` not followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The canonical URI of services other than S3: the path as sent, encoded once more
/// (AWS's SDKs sign `%3A` as `%253A`).
fn canonical_uri(path: &str) -> String {
    let path = if path.is_empty() { "/" } else { path };
    let mut out = String::with_capacity(path.len() + 8);
    uri_encode(path.as_bytes(), true, &mut out);
    out
}

/// The canonical query: every parameter decoded and encoded again AWS's way, sorted by
/// name, then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let (mut ke, mut ve) = (String::new(), String::new());
            uri_encode(&percent_decode(k), false, &mut ke);
            uri_encode(&percent_decode(v), false, &mut ve);
            (ke, ve)
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value trimmed, its inner runs of spaces made one.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `X-Amz-Date` (`20261206T145109Z`) in Unix milliseconds.
fn amz_date_ms(date: &str) -> Option<i64> {
    let b = date.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[0..4],
        &date[4..6],
        &date[6..8],
        &date[9..11],
        &date[11..13],
        &date[13..15]
    );
    let t = humantime::parse_rfc3339(&rfc3339).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// Checks `req`'s signature for `service` at `now_ms`, finding the signing key of a
/// credential with `key_of` (`signing_key` of the access key's secret, which a caller may
/// keep for the day, as the SDKs do);
/// answers the credential it was signed with.
pub fn verify(
    req: &Signed<'_>,
    service: &str,
    now_ms: i64,
    key_of: impl FnOnce(&Credential) -> Option<Vec<u8>>,
) -> Result<Credential, AuthError> {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let authorization = header("authorization").ok_or(AuthError::Missing)?;
    let parsed = parse_authorization(authorization)?;
    let amz_date = header("x-amz-date").ok_or_else(|| {
        AuthError::Malformed("the request has no X-Amz-Date header; SigV4 needs one".into())
    })?;
    let signed_at = amz_date_ms(amz_date).ok_or_else(|| {
        AuthError::Malformed(format!("X-Amz-Date `{amz_date}` is not YYYYMMDDTHHMMSSZ"))
    })?;
    if !amz_date.starts_with(&parsed.credential.date) {
        return Err(AuthError::Malformed(format!(
            "the Credential's date {} is not X-Amz-Date's day {}",
            parsed.credential.date,
            &amz_date[..8]
        )));
    }
    if parsed.credential.service != service {
        return Err(AuthError::Mismatch(format!(
            "the request is signed for service `{}`; this endpoint is `{service}`",
            parsed.credential.service
        )));
    }
    if (now_ms - signed_at).abs() > CLOCK_SKEW_MAX_MS {
        return Err(AuthError::Mismatch(format!(
            "Signature expired: {amz_date} is more than 15 minutes from the server's time; check the client's clock"
        )));
    }
    if !parsed.signed_headers.iter().any(|h| h == "host") {
        return Err(AuthError::Malformed(
            "SignedHeaders must include host".into(),
        ));
    }
    let key = key_of(&parsed.credential)
        .ok_or_else(|| AuthError::UnknownKey(parsed.credential.access_key_id.clone()))?;

    let signed_headers: Vec<&str> = parsed.signed_headers.iter().map(String::as_str).collect();
    let to_sign = string_to_sign(req, &signed_headers, amz_date, &parsed.credential);
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(to_sign.as_bytes());
    // In constant time, so the comparison tells an attacker nothing.
    mac.verify_slice(&parsed.signature).map_err(|_| {
        AuthError::Mismatch(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into(),
        )
    })?;
    Ok(parsed.credential)
}

/// The string to sign of `req`: the hash of its canonical request under the scope.
fn string_to_sign(
    req: &Signed<'_>,
    signed_headers: &[&str],
    amz_date: &str,
    c: &Credential,
) -> String {
    let mut canonical = String::with_capacity(512);
    canonical.push_str(req.method);
    canonical.push('\n');
    canonical.push_str(&canonical_uri(req.path));
    canonical.push('\n');
    canonical.push_str(&canonical_query(req.query));
    canonical.push('\n');
    for name in signed_headers {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| canonical_value(v))
            .collect();
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&values.join(","));
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed_headers.join(";"));
    canonical.push('\n');
    canonical.push_str(&hex::encode(Sha256::digest(req.body)));
    let scope = format!("{}/{}/{}/aws4_request", c.date, c.region, c.service);
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

/// The key derived from the secret for the credential's day, region and service.
pub fn signing_key(secret: &str, c: &Credential) -> Vec<u8> {
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), c.date.as_bytes());
    for part in [c.region.as_str(), c.service.as_str(), "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    key
}

/// The `Authorization` header that signs `req` (whose headers must hold `host` and
/// `x-amz-date`, both signed) with `secret` for `credential`: what a client sends. The
/// benchmarks sign with it; the AWS SDKs are what the tests check the verifier against.
pub fn authorization(req: &Signed<'_>, credential: &Credential, secret: &str) -> String {
    let mut names: Vec<&str> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let amz_date = req
        .headers
        .iter()
        .find(|(n, _)| n == "x-amz-date")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let to_sign = string_to_sign(req, &names, amz_date, credential);
    let signature = hex::encode(hmac(&signing_key(secret, credential), to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={signature}",
        credential.access_key_id,
        credential.date,
        credential.region,
        credential.service,
        names.join(";")
    )
}

/// `X-Amz-Date` for Unix milliseconds `ms`: `20261206T145109Z`.
pub fn amz_date(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-12-06T14:51:09Z
    format!(
        "{}{}{}T{}{}{}Z",
        &s[0..4],
        &s[5..7],
        &s[8..10],
        &s[11..13],
        &s[14..16],
        &s[17..19]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn headers(authorization: &str) -> Vec<(String, String)> {
        vec![
            ("host".into(), "example.amazonaws.com".into()),
            ("x-amz-date".into(), "20150830T123600Z".into()),
            ("authorization".into(), authorization.into()),
        ]
    }

    /// 2015-08-30T12:36:00Z, the time of AWS's test suite.
    const SUITE_NOW_MS: i64 = 1_440_938_160_000;

    /// `get-vanilla` of AWS's SigV4 test suite.
    const VANILLA: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

    fn vanilla<'a>(h: &'a [(String, String)], method: &'a str, query: &'a str) -> Signed<'a> {
        Signed {
            method,
            path: "/",
            query,
            headers: h,
            body: b"",
        }
    }

    #[test]
    fn aws_test_suite_vanilla_verifies() {
        let h = headers(VANILLA);
        let c = verify(&vanilla(&h, "GET", ""), "service", SUITE_NOW_MS, |c| {
            (c.access_key_id == "AKIDEXAMPLE").then(|| signing_key(SECRET, c))
        })
        .unwrap();
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.access_key_id, "AKIDEXAMPLE");
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let h = headers(VANILLA);
        let secret = |c: &Credential| Some(signing_key(SECRET, c));
        let mismatch = |r| matches!(r, Err(AuthError::Mismatch(_)));
        assert!(mismatch(verify(
            &vanilla(&h, "POST", ""),
            "service",
            SUITE_NOW_MS,
            secret
        )));
        assert!(mismatch(verify(
            &vanilla(&h, "GET", "a=b"),
            "service",
            SUITE_NOW_MS,
            secret
        )));
        let wrong = |c: &Credential| Some(signing_key("another secret", c));
        assert!(mismatch(verify(
            &vanilla(&h, "GET", ""),
            "service",
            SUITE_NOW_MS,
            wrong
        )));
        let mut body = vanilla(&h, "GET", "");
        body.body = b"x";
        assert!(mismatch(verify(&body, "service", SUITE_NOW_MS, secret)));
        // Signed for another service, or replayed 20 minutes later.
        assert!(mismatch(verify(
            &vanilla(&h, "GET", ""),
            "lambda",
            SUITE_NOW_MS,
            secret
        )));
        assert!(mismatch(verify(
            &vanilla(&h, "GET", ""),
            "service",
            SUITE_NOW_MS + 20 * 60 * 1000,
            secret
        )));
    }

    #[test]
    fn what_authorization_signs_verify_accepts() {
        let date = amz_date(SUITE_NOW_MS);
        assert_eq!(date, "20150830T123600Z");
        let mut h = vec![
            ("host".to_string(), "example.amazonaws.com".to_string()),
            ("x-amz-date".to_string(), date),
        ];
        let credential = Credential {
            access_key_id: "AKIDEXAMPLE".into(),
            date: "20150830".into(),
            region: "us-east-1".into(),
            service: "service".into(),
        };
        let auth = authorization(&vanilla(&h, "GET", ""), &credential, SECRET);
        // The suite's own signature: the signer is AWS's algorithm, not just the verifier's.
        assert_eq!(auth, VANILLA);
        h.push(("authorization".into(), auth));
        assert!(
            verify(&vanilla(&h, "GET", ""), "service", SUITE_NOW_MS, |c| Some(
                signing_key(SECRET, c)
            ))
            .is_ok()
        );
    }

    #[test]
    fn unknown_keys_and_malformed_headers_say_so() {
        let h = headers(VANILLA);
        assert_eq!(
            verify(&vanilla(&h, "GET", ""), "service", SUITE_NOW_MS, |_| None),
            Err(AuthError::UnknownKey("AKIDEXAMPLE".into()))
        );
        let none: Vec<(String, String)> = vec![("host".into(), "h".into())];
        assert_eq!(
            verify(&vanilla(&none, "GET", ""), "service", SUITE_NOW_MS, |_| {
                None
            }),
            Err(AuthError::Missing)
        );
        for bad in [
            "Bearer abc",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, Signature=00",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=x-amz-date, Signature=00",
        ] {
            let h = headers(bad);
            let r = verify(&vanilla(&h, "GET", ""), "service", SUITE_NOW_MS, |c| {
                Some(signing_key(SECRET, c))
            });
            assert!(matches!(r, Err(AuthError::Malformed(_))), "{bad}: {r:?}");
        }
    }

    #[test]
    fn paths_are_encoded_twice_and_queries_sorted() {
        assert_eq!(
            canonical_uri("/2015-03-31/functions/f%3Aprod/invocations"),
            "/2015-03-31/functions/f%253Aprod/invocations"
        );
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(
            canonical_query("b=2&a=%7e x&Qualifier=prod&a=1"),
            "Qualifier=prod&a=1&a=~%20x&b=2"
        );
        assert_eq!(canonical_value("  a   b  "), "a b");
        assert_eq!(amz_date_ms("20150830T123600Z"), Some(SUITE_NOW_MS));
        assert_eq!(amz_date_ms("2015-08-30"), None);
        assert_eq!(percent_decode("%4"), b"%4");
    }
}
