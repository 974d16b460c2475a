//! The seam between the object store's metadata and its bytes: `ObjectBytes` is where the
//! bytes of objects and multipart parts live, each under a random blob id. The local
//! implementation is `ObjectFiles` (files on this node's disk); `store-s3` keeps them in an
//! S3 bucket that every node of a cluster shares.
//!
//! Every implementation keeps the same guarantees, on which the metadata's correctness rests:
//! a blob becomes readable only whole and durable (`BlobSink::finish` returns after that),
//! so a row committed after `finish` never names half-written bytes; an unfinished sink
//! leaves nothing readable; and a blob that no row names is found by `collect` once it is
//! older than the grace period, whatever interrupted its write or its removal.

use std::collections::HashSet;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::StoreError;
use crate::objects::{ObjectError, ObjectMeta};

/// A blob's bytes as they are read, chunk by chunk. `Sync` because the S3 API's bodies
/// (s3s) must be.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send + Sync>>;

/// Boxes a stream that is `Send` but not `Sync` (an HTTP client's body) as a `ByteStream`.
pub fn byte_stream(
    stream: impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static,
) -> ByteStream {
    Box::pin(SyncStream(std::sync::Mutex::new(Box::pin(stream))))
}

/// A stream made `Sync` by a mutex that is never locked: polling takes `&mut self`, so
/// `Mutex::get_mut` reaches the stream without any locking, and nothing can be shared.
struct SyncStream<S>(std::sync::Mutex<Pin<Box<S>>>);

impl<S: Stream + Send> Stream for SyncStream<S> {
    type Item = S::Item;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.as_mut().poll_next(cx)
    }
}

/// Blob ids are 32 hex digits (128 random bits).
pub fn valid_blob_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new random blob id.
pub fn new_blob_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Where object bytes live. Shared by the S3 API, the control API and the gateway's
/// websites as `Arc<dyn ObjectBytes>`.
#[async_trait]
pub trait ObjectBytes: Send + Sync + 'static {
    /// A new blob being written. Blocking (it may create a file): call it, and every method
    /// of the sink, on a blocking thread.
    fn create(&self) -> Result<Box<dyn BlobSink>, StoreError>;

    /// `len` bytes of a blob from `offset`; `None` when there is no such blob (a reader that
    /// lost the race with a replacement reads the row again). The range must lie within the
    /// blob, as its row's size says.
    async fn read(
        &self,
        blob_id: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<ByteStream>, StoreError>;

    /// Removes blobs nothing refers to any more, best effort: what is missed (a crash
    /// between the commit and this, a store that is down) the collector finds.
    async fn remove(&self, blob_ids: &[String]);

    /// Removes what writes a crash interrupted left on this node (temporary files); answers
    /// how many. Only at start-up, under the data dir's lock: a write in progress looks the
    /// same.
    async fn sweep_staging(&self) -> Result<u64, StoreError>;

    /// Every stored blob with its modification time (Unix ms).
    async fn list(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// The least grace period `collect` uses, whatever its caller asks. A store that other
    /// nodes write to answers more than 0: there a young unreferenced blob may be another
    /// node's write about to commit even when this node has just started.
    fn grace_floor_ms(&self) -> i64 {
        0
    }

    /// Removes blobs that no object or part refers to and that are older than `grace_ms`
    /// (0 at start-up, when nothing is being written); answers how many. A blob is written
    /// before its row is committed, so a young unreferenced blob may be a write about to
    /// commit: the grace period outlasts that window.
    async fn collect(
        &self,
        meta: &dyn ObjectMeta,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<u64, ObjectError> {
        let grace_ms = grace_ms.max(self.grace_floor_ms());
        // Listed before the references are read: a blob written after the listing is not
        // looked at, one committed after it is referenced by then.
        let stored = self.list().await?;
        let referenced: HashSet<String> = meta.referenced_blobs().await?;
        let unreferenced: Vec<String> = stored
            .into_iter()
            .filter(|(id, modified)| !referenced.contains(id) && now_ms - modified >= grace_ms)
            .map(|(id, _)| id)
            .collect();
        self.remove(&unreferenced).await;
        Ok(unreferenced.len() as u64)
    }
}

/// A blob being written. Its bytes are not readable until `finish`; dropped unfinished (a
/// failed or abandoned upload), it leaves nothing behind. Every method blocks: they run on
/// a blocking thread, fed the request's chunks as they arrive.
pub trait BlobSink: Send {
    /// Appends bytes.
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError>;

    /// How many bytes were written so far.
    fn size_bytes(&self) -> u64;

    /// Appends `len` bytes of another blob of the same store from `offset` (the parts of a
    /// multipart upload joined at its completion). A blob shorter than that is `Corrupt`.
    fn append_blob(&mut self, blob_id: &str, offset: u64, len: u64) -> Result<(), StoreError>;

    /// Makes the bytes durable and readable; answers the blob's id. Only then may a row
    /// name it.
    fn finish(self: Box<Self>) -> Result<String, StoreError>;
}
