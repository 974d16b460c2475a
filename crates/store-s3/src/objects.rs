//! Object bytes in S3: each blob one key, `<prefix>/objects/<blob_id>`.
//!
//! A sink writes to a local temporary file (the request's chunks arrive at the client's pace,
//! and S3 wants a whole PUT or parts of at least 5 MiB) and `finish` uploads it: one PUT up
//! to `SINGLE_PUT_BYTES_MAX`, a multipart upload past it. Either becomes visible in S3 only
//! whole, when it completes, and `finish` returns only after S3 has acknowledged it, so a
//! row committed after `finish` names durable bytes, as with local files. A failed multipart
//! upload is aborted; one a crash interrupted is invisible but holds space until the
//! bucket's lifecycle rule (AbortIncompleteMultipartUpload) removes it.
//!
//! Reads stream a ranged GET. A blob that is gone (its object replaced after the row was
//! read) is `None`, and the caller reads the row again, as it does for a removed file.
//!
//! The bucket is shared by the cluster's nodes, so `collect` never removes a blob younger
//! than `OBJECT_GARBAGE_GRACE_MS`, even at a node's start-up: it may be another node's write
//! about to commit.

use std::io::{Read, Write};
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStoreExt, PutPayload, WriteMultipart};
use store::object_bytes::{byte_stream, new_blob_id, valid_blob_id};
use store::{BlobSink, ByteStream, ObjectBytes, StoreError};

use crate::client::{Clients, modified_ms, store_error};

/// Blobs up to this size go up in one PUT (read into memory from the temporary file).
const SINGLE_PUT_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// The size of the parts of a multipart upload, unless the blob needs larger ones to fit
/// S3's 10,000 parts.
const PART_BYTES: u64 = 8 * 1024 * 1024;
const PARTS_MAX: u64 = 10_000;

/// What one upload holds in memory for parts in flight, at most (at least one part).
const UPLOAD_BUFFER_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// Blobs removed at once by `remove` (the collector may remove many).
const REMOVALS_IN_FLIGHT: usize = 8;

/// Object bytes in an S3 bucket, written through temporary files in a local directory.
#[derive(Clone)]
pub struct S3ObjectBytes {
    clients: Clients,
    /// This node's own directory of temporary files.
    staging: PathBuf,
}

impl S3ObjectBytes {
    /// `staging` is created if missing, and must be this node's alone: `sweep_staging`
    /// empties it at start-up.
    pub(crate) fn new(clients: Clients, staging: PathBuf) -> Result<S3ObjectBytes, StoreError> {
        std::fs::create_dir_all(&staging).map_err(|e| StoreError::Io {
            context: format!("creating {}", staging.display()),
            source: e,
        })?;
        Ok(S3ObjectBytes { clients, staging })
    }

    fn root(&self) -> Path {
        self.clients.key(["objects"])
    }

    fn key(&self, blob_id: &str) -> Result<Path, StoreError> {
        if !valid_blob_id(blob_id) {
            return Err(StoreError::Corrupt(format!("blob id {blob_id}")));
        }
        Ok(self.clients.key(["objects", blob_id]))
    }

    /// `len` bytes of a blob from `offset`, or `None` when it is not there.
    async fn get_range(
        &self,
        blob_id: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<(String, object_store::GetResult)>, StoreError> {
        let key = self.key(blob_id)?;
        let url = self.clients.url(&key);
        let options = GetOptions::default().with_range(Some(offset..offset + len));
        match self.clients.reads.get_opts(&key, options).await {
            Ok(got) => Ok(Some((url, got))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(&format!("reading {url}"), e)),
        }
    }
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| {
        let kind = source.kind();
        if matches!(
            kind,
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) {
            StoreError::StorageFull {
                context: format!("{context}: {source}"),
            }
        } else {
            StoreError::Io { context, source }
        }
    }
}

#[async_trait]
impl ObjectBytes for S3ObjectBytes {
    fn create(&self) -> Result<Box<dyn BlobSink>, StoreError> {
        // The upload is driven from the sink's blocking thread through the runtime that made
        // it; a sink made outside one could never finish.
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| StoreError::Io {
            context: "an S3 sink is made within the runtime".into(),
            source: std::io::Error::other(e),
        })?;
        let blob_id = new_blob_id();
        let tmp = self.staging.join(format!("{blob_id}.tmp"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_error(format!("creating {}", tmp.display())))?;
        Ok(Box::new(S3Sink {
            bytes: self.clone(),
            runtime,
            file,
            tmp,
            blob_id,
            size_bytes: 0,
        }))
    }

    async fn read(
        &self,
        blob_id: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<ByteStream>, StoreError> {
        if len == 0 {
            // S3 has no empty range; an empty read needs no request.
            self.key(blob_id)?;
            return Ok(Some(byte_stream(futures_util::stream::empty())));
        }
        let Some((url, got)) = self.get_range(blob_id, offset, len).await? else {
            return Ok(None);
        };
        let stream = got
            .into_stream()
            .map_err(move |e| store_error(&format!("reading {url}"), e));
        Ok(Some(byte_stream(stream)))
    }

    async fn remove(&self, blob_ids: &[String]) {
        futures_util::stream::iter(blob_ids)
            .for_each_concurrent(REMOVALS_IN_FLIGHT, |id| async move {
                let Ok(key) = self.key(id) else {
                    return;
                };
                if let Err(e) = self.clients.ops.delete(&key).await {
                    tracing::warn!(key = %self.clients.url(&key), "removing an object's bytes: {e}");
                }
            })
            .await;
    }

    async fn sweep_staging(&self) -> Result<u64, StoreError> {
        let staging = self.staging.clone();
        tokio::task::spawn_blocking(move || {
            let list = std::fs::read_dir(&staging)
                .map_err(io_error(format!("reading {}", staging.display())))?;
            let mut swept = 0;
            for entry in list.flatten() {
                let temporary = entry.file_name().to_string_lossy().ends_with(".tmp");
                if temporary && std::fs::remove_file(entry.path()).is_ok() {
                    swept += 1;
                }
            }
            Ok(swept)
        })
        .await
        .expect("sweeping S3 staging files")
    }

    async fn list(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let root = self.root();
        // object_store pages through the listing (continuation tokens) as it is consumed.
        let listed: Vec<object_store::ObjectMeta> = self
            .clients
            .ops
            .list(Some(&root))
            .try_collect()
            .await
            .map_err(|e| store_error(&format!("listing {}", self.clients.url(&root)), e))?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let parts = self.clients.parts_below(&meta.location, &root)?;
                let [id] = parts.as_slice() else {
                    return None;
                };
                valid_blob_id(id).then(|| (id.clone(), modified_ms(&meta)))
            })
            .collect())
    }

    fn grace_floor_ms(&self) -> i64 {
        model::limits::OBJECT_GARBAGE_GRACE_MS
    }
}

/// A blob being written to a temporary file, uploaded by `finish`. Dropped unfinished, the
/// file goes and nothing was sent.
struct S3Sink {
    bytes: S3ObjectBytes,
    runtime: tokio::runtime::Handle,
    file: std::fs::File,
    tmp: PathBuf,
    blob_id: String,
    size_bytes: u64,
}

impl S3Sink {
    /// Uploads the temporary file in parts, at most `UPLOAD_BUFFER_BYTES_MAX` in flight;
    /// a failed upload is aborted, so its parts do not linger.
    async fn upload_parts(&mut self, key: &Path) -> Result<(), object_store::Error> {
        let part_bytes = PART_BYTES.max(self.size_bytes.div_ceil(PARTS_MAX));
        let in_flight = (UPLOAD_BUFFER_BYTES_MAX / part_bytes).max(1) as usize;
        let upload = self.bytes.clients.ops.put_multipart(key).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_bytes as usize);
        let mut buf = vec![0u8; part_bytes as usize];
        let mut file = &self.file;
        let sent = async {
            loop {
                // Reads of a local file on this (blocking) thread, between the awaits.
                let n =
                    read_full(&mut file, &mut buf).map_err(|e| object_store::Error::Generic {
                        store: "S3",
                        source: Box::new(e),
                    })?;
                if n == 0 {
                    return Ok(());
                }
                writer.wait_for_capacity(in_flight).await?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match sent {
            Ok(()) => writer.finish().await.map(|_| ()),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; answers how many bytes.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl BlobSink for S3Sink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(bytes)
            .map_err(io_error(format!("writing {}", self.tmp.display())))?;
        self.size_bytes += bytes.len() as u64;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn append_blob(&mut self, blob_id: &str, offset: u64, len: u64) -> Result<(), StoreError> {
        if len == 0 {
            return Ok(());
        }
        let (bytes, runtime) = (self.bytes.clone(), self.runtime.clone());
        let (file, tmp) = (&mut self.file, &self.tmp);
        let copied = runtime.block_on(async {
            let Some((url, got)) = bytes.get_range(blob_id, offset, len).await? else {
                return Err(StoreError::Corrupt(format!(
                    "blob {blob_id} is not in {}",
                    bytes.clients.location
                )));
            };
            let mut stream = got.into_stream();
            let mut copied = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk: Bytes = chunk.map_err(|e| store_error(&format!("reading {url}"), e))?;
                file.write_all(&chunk)
                    .map_err(io_error(format!("writing {}", tmp.display())))?;
                copied += chunk.len() as u64;
            }
            Ok(copied)
        })?;
        if copied != len {
            return Err(StoreError::Corrupt(format!(
                "blob {blob_id} holds {copied} bytes from {offset}, not {len}"
            )));
        }
        self.size_bytes += len;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<String, StoreError> {
        let key = self.bytes.key(&self.blob_id)?;
        let url = self.bytes.clients.url(&key);
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .map_err(io_error(format!("reading {}", self.tmp.display())))?;
        let runtime = self.runtime.clone();
        if self.size_bytes <= SINGLE_PUT_BYTES_MAX {
            let mut data = Vec::with_capacity(self.size_bytes as usize);
            self.file
                .read_to_end(&mut data)
                .map_err(io_error(format!("reading {}", self.tmp.display())))?;
            let ops = self.bytes.clients.ops.clone();
            runtime
                .block_on(ops.put(&key, PutPayload::from(Bytes::from(data))))
                .map_err(|e| store_error(&format!("writing {url}"), e))?;
        } else {
            runtime
                .block_on(self.upload_parts(&key))
                .map_err(|e| store_error(&format!("writing {url}"), e))?;
        }
        // The temporary file goes with the sink (below).
        Ok(std::mem::take(&mut self.blob_id))
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        // Finished or not, the temporary file has served: the bytes are in S3 or nowhere.
        let _ = std::fs::remove_file(&self.tmp);
    }
}
