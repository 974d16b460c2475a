//! Bodies: a request's bytes streamed into a new blob, and an object's bytes streamed out
//! of the store (`store::ObjectBytes`: a file on this node, or a ranged GET of S3).
//!
//! Uploads: the async side takes the body's chunks (already de-chunked and signature-checked
//! by s3s) and hands them, as they are, over a short channel to one blocking thread that
//! hashes them (MD5 for the ETag, the checksums the client asked for) and writes them to the
//! blob's sink. No chunk is copied or gathered; the channel's bound is the only
//! buffering, so a fast client waits for the disk.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::StreamingBlob;
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};
use store::{BlobSink, ObjectBytes};

use crate::error::store_error;

/// Chunks in flight between the request and the writer thread.
const WRITE_QUEUE_CHUNKS: usize = 16;

/// A body written to a temporary blob, not yet durable.
pub(crate) struct Written {
    pub sink: Box<dyn BlobSink>,
    pub md5: [u8; 16],
    pub checksum: s3s::dto::Checksum,
}

impl Written {
    /// The object's ETag: the MD5 of its bytes in hex.
    pub fn etag(&self) -> String {
        hex::encode(self.md5)
    }

    /// Makes the blob durable and puts it in place; answers its id.
    pub async fn finish(self) -> S3Result<String> {
        tokio::task::spawn_blocking(move || self.sink.finish())
            .await
            .map_err(S3Error::internal_error)?
            .map_err(store_error)
    }
}

/// Streams `body` into a new blob, at most `limit_bytes` (EntityTooLarge past it), hashing
/// with `hasher` as well as MD5. A failure leaves nothing stored.
pub(crate) async fn write(
    files: &Arc<dyn ObjectBytes>,
    body: Option<StreamingBlob>,
    limit_bytes: u64,
    hasher: ChecksumHasher,
) -> S3Result<Written> {
    let body = body.map(|b| b.map(|chunk| chunk.map_err(body_error)));
    write_stream(files, body, limit_bytes, hasher).await
}

/// Streams `len` bytes of a stored blob from `offset` into a new one (copies of objects
/// and of parts), with their MD5. A source shorter than its row says is `Corrupt`.
pub(crate) async fn copy(
    files: &Arc<dyn ObjectBytes>,
    blob_id: &str,
    offset: u64,
    len: u64,
) -> S3Result<Written> {
    let source = files
        .read(blob_id, offset, len)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            s3_error!(
                SlowDown,
                "the source object changed while it was copied; try again"
            )
        })?;
    let written = write_stream(
        files,
        Some(source.map(|chunk| chunk.map_err(store_error))),
        len,
        ChecksumHasher::default(),
    )
    .await?;
    if written.sink.size_bytes() != len {
        return Err(store_error(store::StoreError::Corrupt(format!(
            "blob {blob_id} is shorter than its row says"
        ))));
    }
    Ok(written)
}

/// Streams chunks into a new blob on a blocking thread, at most `limit_bytes`; the first
/// error of the stream fails the write, and the unfinished blob goes with it.
async fn write_stream(
    files: &Arc<dyn ObjectBytes>,
    body: Option<impl futures_util::Stream<Item = S3Result<Bytes>> + Unpin>,
    limit_bytes: u64,
    mut hasher: ChecksumHasher,
) -> S3Result<Written> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE_CHUNKS);
    let files = files.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut sink = files.create()?;
        let mut md5 = Md5::new();
        while let Some(chunk) = rx.blocking_recv() {
            md5.update(&chunk);
            hasher.update(&chunk);
            sink.write(&chunk)?;
        }
        Ok::<_, store::StoreError>((sink, md5, hasher))
    });
    let mut failed: Option<S3Error> = None;
    let mut total: u64 = 0;
    if let Some(mut body) = body {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    total += chunk.len() as u64;
                    if total > limit_bytes {
                        failed = Some(s3_error!(
                            EntityTooLarge,
                            "the body is over {limit_bytes} bytes, the most one request may store"
                        ));
                        break;
                    }
                    if tx.send(chunk).await.is_err() {
                        // The writer stopped (its error is below).
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(S3Error::internal_error)?;
    if let Some(e) = failed {
        // The unfinished sink goes with `written`, and its file with it.
        return Err(e);
    }
    let (sink, md5, hasher) = written.map_err(store_error)?;
    Ok(Written {
        sink,
        md5: md5.finalize(),
        checksum: hasher.finalize(),
    })
}

/// A body that failed on the way: s3s's own errors (a chunk's signature, a checksum) keep
/// their codes; a connection that broke is an incomplete body.
fn body_error(e: s3s::StdError) -> S3Error {
    match e.downcast::<S3Error>() {
        Ok(e) => *e,
        Err(e) => S3Error::with_message(
            S3ErrorCode::IncompleteBody,
            format!("the request body ended early: {e}"),
        ),
    }
}

/// A blob's bytes as a response body.
pub(crate) fn read(bytes: store::ByteStream) -> StreamingBlob {
    StreamingBlob::wrap(bytes)
}
