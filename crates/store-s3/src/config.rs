//! The blob store's URL, `s3://BUCKET[/PREFIX]?endpoint=…&region=…&access_key_id=…&
//! secret_access_key=…&allow_http=true`, parsed once into an `S3Config`.
//!
//! Everything in the query is optional: what it leaves out comes from the standard `AWS_*`
//! environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT`, …) or the client's defaults (AWS itself, `us-east-1`).
//! Unknown or repeated parameters are refused rather than ignored: a typo in a cluster's
//! storage settings must stop the server, not send its bytes somewhere else. Errors never
//! repeat the URL, which may hold a secret.

use std::fmt;

/// A URL that does not name an S3 location Nimbus can use.
#[derive(Debug, thiserror::Error)]
#[error("the S3 blob store URL (s3://BUCKET[/PREFIX]?endpoint=…): {0}")]
pub struct ConfigError(pub(crate) String);

/// Where the cluster's bytes go, and how to reach them.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket, which must exist: S3's API cannot be relied on to create one, and who
    /// may create buckets is the operator's decision.
    pub bucket: String,
    /// Keys go under this prefix (no slash at either end; empty for the bucket's root), so
    /// that several clusters, or a cluster and its tests, can share a bucket.
    pub prefix: String,
    /// The S3 endpoint (`http://127.0.0.1:8333`); `None` for AWS or `AWS_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `None` for `AWS_REGION` or `us-east-1`.
    pub region: Option<String>,
    /// `None` for the environment's credentials.
    pub credentials: Option<Credentials>,
    /// Whether plain HTTP is allowed: yes for an `http://` endpoint (its operator wrote it
    /// so), otherwise only if `allow_http=true` says so.
    pub allow_http: bool,
}

/// A static access key.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

// Written by hand so that no log line or error shows a secret.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "access_key_id",
                &self.credentials.as_ref().map(|c| &c.access_key_id),
            )
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for S3Config {
    /// `s3://bucket/prefix`: where the bytes are, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

fn err(reason: impl Into<String>) -> ConfigError {
    ConfigError(reason.into())
}

/// S3's bucket naming rules: 3 to 63 of `[a-z0-9.-]`, a letter or digit at both ends.
fn valid_bucket(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| alnum(b) || b == b'.' || b == b'-')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum)
}

/// A prefix's segments become parts of keys: none may be empty, `.` or `..`, or hold what
/// S3 tools treat specially.
fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl S3Config {
    /// Parses `s3://BUCKET[/PREFIX]?endpoint=…&region=…&access_key_id=…&
    /// secret_access_key=…&allow_http=true`.
    pub fn parse(url: &str) -> Result<S3Config, ConfigError> {
        let parsed = url::Url::parse(url.trim())
            .map_err(|e| err(format!("not a URL ({e}); expected s3://BUCKET[/PREFIX]?…")))?;
        if parsed.scheme() != "s3" {
            return Err(err(format!(
                "the scheme is `{}:`, not `s3:`",
                parsed.scheme()
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(err(
                "credentials go in access_key_id= and secret_access_key=, not before the bucket",
            ));
        }
        if parsed.port().is_some() {
            return Err(err(
                "a port belongs to the endpoint (endpoint=http://HOST:PORT), not the bucket",
            ));
        }
        if parsed.fragment().is_some() {
            return Err(err("a URL fragment (`#…`) means nothing here"));
        }
        let bucket = parsed.host_str().unwrap_or_default().to_string();
        if bucket.is_empty() {
            return Err(err("no bucket: expected s3://BUCKET"));
        }
        if !valid_bucket(&bucket) {
            return Err(err(format!(
                "`{bucket}` is not a bucket name (3 to 63 of a-z, 0-9, `.` and `-`, a letter or digit at both ends)"
            )));
        }
        // The prefix as written: the URL parser would resolve `a/../b` to `b`, and a prefix
        // that does not read as the keys it names is refused instead.
        let written = url.trim().split_once("://").map_or("", |(_, rest)| rest);
        let written = written.split(['?', '#']).next().unwrap_or_default();
        let path = written
            .split_once('/')
            .map_or("", |(_, path)| path)
            .trim_matches('/');
        if !path.is_empty() && !path.split('/').all(valid_segment) {
            return Err(err(format!(
                "the prefix `{path}` must be segments of A-Z, a-z, 0-9, `-`, `_` and `.`, without empty, `.` or `..` ones"
            )));
        }
        let mut config = S3Config {
            bucket,
            prefix: path.to_string(),
            endpoint: None,
            region: None,
            credentials: None,
            allow_http: false,
        };
        let (mut access_key_id, mut secret_access_key, mut allow_http) = (None, None, None);
        let mut seen = std::collections::BTreeSet::new();
        for (key, value) in parsed.query_pairs() {
            if !seen.insert(key.to_string()) {
                return Err(err(format!("`{key}` is given twice")));
            }
            let value = value.to_string();
            if value.is_empty() {
                return Err(err(format!("`{key}` is empty")));
            }
            match key.as_ref() {
                "endpoint" => config.endpoint = Some(endpoint(&value)?),
                "region" => config.region = Some(value),
                "access_key_id" => access_key_id = Some(value),
                "secret_access_key" => secret_access_key = Some(value),
                "allow_http" => {
                    allow_http = Some(match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(err("allow_http must be `true` or `false`")),
                    })
                }
                _ => {
                    return Err(err(format!(
                        "unknown parameter `{key}` (known: endpoint, region, access_key_id, secret_access_key, allow_http)"
                    )));
                }
            }
        }
        config.credentials = match (access_key_id, secret_access_key) {
            (Some(access_key_id), Some(secret_access_key)) => Some(Credentials {
                access_key_id,
                secret_access_key,
            }),
            (None, None) => None,
            (Some(_), None) => return Err(err("access_key_id without secret_access_key")),
            (None, Some(_)) => return Err(err("secret_access_key without access_key_id")),
        };
        let http_endpoint = config
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        config.allow_http = match allow_http {
            Some(false) if http_endpoint => {
                return Err(err(
                    "allow_http=false with an http:// endpoint: use https:// or drop allow_http",
                ));
            }
            Some(allow) => allow,
            None => http_endpoint,
        };
        Ok(config)
    }
}

/// An endpoint: an `http(s)://HOST[:PORT]` URL and nothing more (the bucket goes in the
/// path of each request, so a path here would be ambiguous).
fn endpoint(value: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(value).map_err(|e| {
        err(format!(
            "endpoint `{value}` is not a URL ({e}): it must be http:// or https://HOST[:PORT]"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err(format!(
            "endpoint `{value}` must be http:// or https://"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err(format!("endpoint `{value}` has no host")));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(err(format!(
            "endpoint `{value}` must be only scheme, host and port"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(format!(
            "endpoint `{value}`: credentials go in access_key_id= and secret_access_key="
        )));
    }
    Ok(value.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_is_parsed_and_defaults_follow_the_endpoint() {
        let c = S3Config::parse(
            "s3://nimbus-data/cluster/a?endpoint=http://127.0.0.1:8333&region=eu-west-1\
             &access_key_id=AKID&secret_access_key=se%2Fcr%2Bet",
        )
        .unwrap();
        assert_eq!(
            c,
            S3Config {
                bucket: "nimbus-data".into(),
                prefix: "cluster/a".into(),
                endpoint: Some("http://127.0.0.1:8333".into()),
                region: Some("eu-west-1".into()),
                credentials: Some(Credentials {
                    access_key_id: "AKID".into(),
                    // Percent-encoded secrets (`/` and `+` are common in them) are decoded.
                    secret_access_key: "se/cr+et".into(),
                }),
                allow_http: true,
            }
        );
        assert_eq!(c.to_string(), "s3://nimbus-data/cluster/a");
        let debug = format!("{c:?}");
        assert!(
            debug.contains("AKID") && !debug.contains("se/cr+et"),
            "{debug}"
        );

        let bare = S3Config::parse("s3://bucket").unwrap();
        assert_eq!(
            (bare.prefix.as_str(), bare.endpoint, bare.allow_http),
            ("", None, false)
        );
        assert_eq!(S3Config::parse("s3://bucket/").unwrap().prefix, "");
        assert_eq!(S3Config::parse("S3://bucket/p/").unwrap().prefix, "p");
        let https = S3Config::parse("s3://bucket?endpoint=https://s3.example.com/").unwrap();
        assert_eq!(
            (https.endpoint.as_deref(), https.allow_http),
            (Some("https://s3.example.com"), false)
        );
        assert!(
            S3Config::parse("s3://bucket?endpoint=https://s3.example.com&allow_http=true")
                .unwrap()
                .allow_http
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason_and_without_the_secret() {
        for (url, reason) in [
            ("bucket", "not a URL"),
            ("https://bucket", "the scheme is `https:`"),
            ("s3:///prefix", "no bucket"),
            ("s3://Bucket", "not a bucket name"),
            ("s3://ab", "not a bucket name"),
            ("s3://-bucket", "not a bucket name"),
            ("s3://bucket:9000", "a port belongs to the endpoint"),
            ("s3://key:secret@bucket", "credentials go in"),
            ("s3://bucket#x", "fragment"),
            ("s3://bucket/a//b", "the prefix `a//b`"),
            ("s3://bucket/a/../b", "the prefix `a/../b`"),
            ("s3://bucket/a%20b", "the prefix `a%20b`"),
            (
                "s3://bucket?endpoint=ftp://host",
                "must be http:// or https://",
            ),
            (
                "s3://bucket?endpoint=127.0.0.1:8333",
                "must be http:// or https://",
            ),
            (
                "s3://bucket?endpoint=localhost:8333",
                "must be http:// or https://",
            ),
            (
                "s3://bucket?endpoint=http://host/path",
                "only scheme, host and port",
            ),
            ("s3://bucket?endpoint=http://u:p@host", "credentials go in"),
            (
                "s3://bucket?endpoint=http://h&endpoint=http://i",
                "given twice",
            ),
            ("s3://bucket?region=", "`region` is empty"),
            ("s3://bucket?secret_key=x", "unknown parameter `secret_key`"),
            ("s3://bucket?allow_http=yes", "`true` or `false`"),
            (
                "s3://bucket?endpoint=http://h&allow_http=false",
                "allow_http=false with an http:// endpoint",
            ),
            (
                "s3://bucket?access_key_id=AKID",
                "access_key_id without secret_access_key",
            ),
            (
                "s3://bucket?secret_access_key=hush",
                "secret_access_key without access_key_id",
            ),
        ] {
            let e = S3Config::parse(url).expect_err(url).to_string();
            assert!(e.contains(reason), "{url}: {e}");
            assert!(e.starts_with("the S3 blob store URL"), "{url}: {e}");
            assert!(!e.contains("hush") && !e.contains("secret@"), "{url}: {e}");
        }
    }
}
