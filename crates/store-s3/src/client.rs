//! The S3 clients (object_store's `AmazonS3`) built from an `S3Config`, with every timeout
//! and retry bound set here rather than left to the library's defaults, and the conversion
//! of its errors into the store's.
//!
//! Two clients share the configuration and differ in one bound. Requests whose size is
//! bounded (a PUT of at most one part, a HEAD, a DELETE, a page of a listing, a code
//! archive) have an overall deadline. Streamed reads of objects do not, since a large object
//! sent to a slow client may rightly take hours; a stall of the connection fails them instead
//! (the read timeout), and so does a client that stops taking the bytes for that long.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use store::StoreError;

use crate::config::{ConfigError, S3Config};

/// Time to open a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The overall deadline of a bounded request: a part or a code archive of up to 64 MiB at a
/// megabyte per second still fits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a streamed read may wait for its next bytes.
const READ_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Retries of a failed request (connection errors, 5xx, throttling, timeouts of safe
/// requests), with exponential backoff and jitter, within `RETRY_TIMEOUT`. Few and short: a
/// store that is down should fail a client's request in seconds, not hold it for minutes.
const RETRIES_MAX: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Idle connections kept per host, and for how long: the cluster talks to one endpoint.
const POOL_IDLE_PER_HOST_MAX: usize = 32;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The two clients of one location, and where in the bucket the keys go.
#[derive(Clone, Debug)]
pub(crate) struct Clients {
    /// Bounded requests.
    pub ops: Arc<dyn ObjectStore>,
    /// Streamed reads of object bytes.
    pub reads: Arc<dyn ObjectStore>,
    /// The URL's prefix as a path (empty for the bucket's root).
    pub base: Path,
    /// `s3://bucket/prefix`, for messages.
    pub location: String,
}

impl Clients {
    pub fn new(config: &S3Config) -> Result<Clients, ConfigError> {
        // reqwest is built without a TLS provider (the workspace's choice, to keep aws-lc-sys
        // out): ring's must be the process's before a client is built. The server installs
        // it at start; a second install is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let common = ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX)
            .with_pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .with_allow_http(config.allow_http);
        let ops = build(config, common.clone().with_timeout(REQUEST_TIMEOUT))?;
        let reads = build(
            config,
            common
                .with_timeout_disabled()
                .with_read_timeout(READ_STALL_TIMEOUT),
        )?;
        Ok(Clients {
            ops: Arc::new(ops),
            reads: Arc::new(reads),
            base: Path::from(config.prefix.as_str()),
            location: config.to_string(),
        })
    }

    /// The key of `parts` under the prefix.
    pub fn key<'a>(&self, parts: impl IntoIterator<Item = &'a str>) -> Path {
        let mut key = self.base.clone();
        for part in parts {
            key = key.join(part);
        }
        key
    }

    /// `s3://bucket/key`, for messages.
    pub fn url(&self, key: &Path) -> String {
        let bucket = self
            .location
            .trim_start_matches("s3://")
            .split('/')
            .next()
            .unwrap_or_default();
        format!("s3://{bucket}/{key}")
    }

    /// The parts of `key` below `under` (a key this store listed under it).
    pub fn parts_below(&self, key: &Path, under: &Path) -> Option<Vec<String>> {
        Some(
            key.prefix_match(under)?
                .map(|part| part.as_ref().to_string())
                .collect(),
        )
    }
}

fn build(config: &S3Config, options: ClientOptions) -> Result<impl ObjectStore, ConfigError> {
    // The environment first (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT`, a session
    // token, a container's role…); what the URL says wins.
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_client_options(options)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: BACKOFF_FIRST,
                max_backoff: BACKOFF_MAX,
                base: 2.0,
            },
            max_retries: RETRIES_MAX,
            retry_timeout: RETRY_TIMEOUT,
        })
        // Path-style requests (`endpoint/bucket/key`): what S3-compatible servers accept
        // without a DNS name per bucket.
        .with_virtual_hosted_style_request(false);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    if let Some(c) = &config.credentials {
        builder = builder
            .with_access_key_id(&c.access_key_id)
            .with_secret_access_key(&c.secret_access_key);
    }
    builder
        .build()
        .map_err(|e| ConfigError(format!("building the S3 client: {e}")))
}

/// The store's error for a failed request about `what` (a key's URL): the client's error is
/// kept as the source, so that no object_store type reaches the store's interface.
pub(crate) fn store_error(what: &str, e: object_store::Error) -> StoreError {
    let kind = match &e {
        object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => std::io::ErrorKind::PermissionDenied,
        _ => std::io::ErrorKind::Other,
    };
    StoreError::Io {
        context: format!("S3 {what}"),
        source: std::io::Error::new(kind, e),
    }
}

/// Milliseconds since the Unix epoch of an object's modification time.
pub(crate) fn modified_ms(meta: &object_store::ObjectMeta) -> i64 {
    meta.last_modified.timestamp_millis()
}
