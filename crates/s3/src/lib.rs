//! Nimbus's object store: the S3 API (s3s: routing, XML shapes, SigV4 including presigned
//! URLs and `aws-chunked` bodies) over the store's object metadata (`store::ObjectMeta`)
//! and bytes (`store::ObjectBytes`: files on this node, or an S3 bucket in a cluster), served
//! on a listener of its own (`--s3-listen`).
//!
//! - `auth`: the platform's AWS access keys sign requests; admin-scope keys may do
//!   everything, invoke-scope keys nothing here (AccessDenied), anonymous requests nothing.
//! - `ops`: the S3 operations (`impl S3`).
//! - `events`: bucket events (the object trigger): committed with the change in the
//!   outbox, delivered as asynchronous invocations, loops stopped at 16 hops.
//! - `body`: request bodies streamed into a new blob on a blocking thread while they are
//!   hashed; objects streamed out of the store.
//! - `error`: the store's answers as S3's error codes.
//! - `website`: a bucket's website configuration (served by the gateway, not here).
//! - `serve`: the accept loop, and the background collection of unreferenced bytes.
//!
//! Fences s3s: no other crate knows S3's wire shapes.

mod auth;
mod body;
mod error;
pub mod events;
mod ops;
mod serve;
#[cfg(test)]
mod tests;
mod website;

use std::sync::Arc;

pub use serve::{ServeConfig, collect_garbage, serve};

/// The object store as the S3 API serves it.
pub struct ObjectStore {
    meta: Arc<dyn store::ObjectMeta>,
    files: Arc<dyn store::ObjectBytes>,
    /// The region answered by GetBucketLocation and expected in signatures' scope.
    region: String,
    /// Bucket events: which changes are committed with an event, and who delivers them.
    events: Option<Arc<events::BucketEvents>>,
}

impl ObjectStore {
    pub fn new(
        meta: Arc<dyn store::ObjectMeta>,
        files: Arc<dyn store::ObjectBytes>,
        region: &str,
    ) -> Self {
        ObjectStore {
            meta,
            files,
            region: region.to_string(),
            events: None,
        }
    }

    /// Commits the changes `events` has rules for with their events, and wakes it.
    pub fn with_events(mut self, events: Arc<events::BucketEvents>) -> Self {
        self.events = Some(events);
        self
    }
}

/// The S3 service (a hyper service) over `store`, its requests signed by the platform's
/// access keys.
pub fn service(store: ObjectStore, platform: Arc<platform::Platform>) -> s3s::service::S3Service {
    let mut builder = s3s::service::S3ServiceBuilder::new(store);
    builder.set_auth(auth::Keys::new(platform.clone()));
    builder.set_access(auth::Keys::new(platform));
    builder.build()
}
