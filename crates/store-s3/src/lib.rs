//! The cluster's bytes in S3: code archives (`S3BlobStore`, a `store::BlobStore`) and the
//! object store's bytes (`S3ObjectBytes`, a `store::ObjectBytes`) in one bucket that every
//! node shares, so that any node can run any function and serve any object.
//!
//! `open` takes the URL an operator gives (`nimbus server --blobs s3://BUCKET[/PREFIX]?
//! endpoint=…`, parsed by `config`) and answers both stores; `S3Stores::check` then proves
//! the bucket is there and the credentials work, before the server serves anything.
//!
//! - `config`: the URL, parsed once, with errors that say what is wrong.
//! - `client`: the S3 clients (object_store), every timeout and retry bound set.
//! - `blobs`: code archives by sha256, checked against their address when fetched.
//! - `objects`: object bytes by random blob id, uploaded whole from temporary files.
//! - `testkit` (feature `testkit`): the test S3 server's location, for tests.
//!
//! The bucket must exist: object_store cannot create one, and creating buckets is for the
//! operator, who also sets its lifecycle rule for incomplete multipart uploads.
//!
//! Fences object_store (and so the S3 protocol's client and its HTTP stack): no other crate
//! names it.

mod blobs;
mod client;
mod config;
mod objects;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use object_store::ObjectStore;

pub use blobs::S3BlobStore;
pub use config::{ConfigError, Credentials, S3Config};
pub use objects::S3ObjectBytes;

/// The two stores of one S3 location.
pub struct S3Stores {
    /// Code archives, under `<prefix>/sha256/`.
    pub blobs: Arc<dyn store::BlobStore>,
    /// Object bytes, under `<prefix>/objects/`.
    pub objects: Arc<dyn store::ObjectBytes>,
    clients: client::Clients,
}

/// Why the S3 stores could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Opens the stores the URL names (`s3://BUCKET[/PREFIX]?endpoint=…&region=…&
/// access_key_id=…&secret_access_key=…&allow_http=…`; see `S3Config::parse`). `staging` is a
/// directory of this node's own for the temporary files of uploads (a `s3-staging`
/// directory is made in it). Nothing is sent to S3 yet: `S3Stores::check` does that.
pub fn open(url: &str, staging: &Path) -> Result<S3Stores, OpenError> {
    open_config(&S3Config::parse(url)?, staging)
}

/// `open` with a configuration already parsed.
pub fn open_config(config: &S3Config, staging: &Path) -> Result<S3Stores, OpenError> {
    let clients = client::Clients::new(config)?;
    let objects = S3ObjectBytes::new(clients.clone(), staging.join("s3-staging"))?;
    Ok(S3Stores {
        blobs: Arc::new(S3BlobStore::new(clients.clone())),
        objects: Arc::new(objects),
        clients,
    })
}

impl S3Stores {
    /// Lists one page of the prefix: fails, saying why, when the bucket is missing, the
    /// credentials are refused or the endpoint does not answer. A server checks this at
    /// start rather than at its first deploy.
    pub async fn check(&self) -> Result<(), store::StoreError> {
        let base = &self.clients.base;
        let prefix = (!base.is_root()).then_some(base);
        self.clients
            .ops
            .list_with_delimiter(prefix)
            .await
            .map(|_| ())
            .map_err(|e| client::store_error(&format!("listing {}", self.clients.location), e))
    }

    /// Where the bytes are, `s3://bucket/prefix`.
    pub fn location(&self) -> &str {
        &self.clients.location
    }
}
