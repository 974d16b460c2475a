//! Object bytes as files on the local disk, `<root>/blobs/<aa>/<rest>`, each named by a
//! random blob id (not by content: two objects with the same bytes are two files, so
//! removing one never races a writer of the other). An object's file is written under
//! `<root>/tmp/`, fsynced, renamed into place and its directory fsynced before any row
//! names it: a row always names a whole, durable file. What a crash or a failure leaves
//! (temporary files, files no row names) is removed by `sweep_staging` at start-up and by
//! `collect` (start-up and background).
//!
//! Writing is synchronous (`BlobSink`): the S3 front door runs it on a blocking thread fed
//! the request's chunks as they arrive, so bytes go from the socket's buffers to the file
//! without being gathered in memory. Reads stream from the file opened at `read`: a file
//! removed afterwards (its object replaced) is still read whole, as it was.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::TryStreamExt;

use crate::object_bytes::{BlobSink, ByteStream, ObjectBytes, new_blob_id, valid_blob_id};
use crate::{StoreError, blobs::modified_ms};

/// Read size when streaming a file out: large enough that a read is cheap per byte, small
/// enough that many concurrent downloads hold little memory (a slow client holds one chunk,
/// since the stream is polled only as the client takes the bytes).
const READ_CHUNK_BYTES: u64 = 256 * 1024;

/// The local directory of object bytes.
#[derive(Clone, Debug)]
pub struct ObjectFiles {
    root: PathBuf,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl ObjectFiles {
    /// Opens (creating) the directory with its 256 fan-out directories, made once here so
    /// that a write fsyncs only the one directory it renames into.
    pub fn open(root: impl Into<PathBuf>) -> Result<ObjectFiles, StoreError> {
        let root = root.into();
        let blobs = root.join("blobs");
        std::fs::create_dir_all(root.join("tmp"))
            .map_err(StoreError::io(format!("creating {}", root.display())))?;
        for i in 0..=255u8 {
            let dir = blobs.join(format!("{i:02x}"));
            if !dir.is_dir() {
                std::fs::create_dir_all(&dir)
                    .map_err(StoreError::io(format!("creating {}", dir.display())))?;
            }
        }
        for dir in [&blobs, &root] {
            fsync_dir(dir).map_err(StoreError::io(format!("syncing {}", dir.display())))?;
        }
        Ok(ObjectFiles { root })
    }

    /// The file of a blob; `None` for an id that is not one (it never reaches a path).
    pub fn path(&self, blob_id: &str) -> Option<PathBuf> {
        valid_blob_id(blob_id).then(|| {
            self.root
                .join("blobs")
                .join(&blob_id[..2])
                .join(&blob_id[2..])
        })
    }

    /// The file of a blob a row names: an id that is not one is a corrupt row.
    fn existing_path(&self, blob_id: &str) -> Result<PathBuf, StoreError> {
        self.path(blob_id)
            .ok_or_else(|| StoreError::Corrupt(format!("blob id {blob_id}")))
    }

    fn remove_one(&self, blob_id: &str) {
        if let Some(path) = self.path(blob_id)
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "removing an object's bytes: {e}");
        }
    }

    fn sweep_tmp(&self) -> Result<u64, StoreError> {
        let tmp = self.root.join("tmp");
        let mut swept = 0;
        let list = std::fs::read_dir(&tmp)
            .map_err(StoreError::io(format!("reading {}", tmp.display())))?;
        for entry in list.flatten() {
            if std::fs::remove_file(entry.path()).is_ok() {
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// Every blob on disk with its modification time (Unix ms).
    fn list_blobs(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        let Ok(fans) = std::fs::read_dir(self.root.join("blobs")) else {
            return out;
        };
        for fan in fans.flatten() {
            let prefix = fan.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(fan.path()) else {
                continue;
            };
            for file in files.flatten() {
                let id = format!("{prefix}{}", file.file_name().to_string_lossy());
                if let (true, Ok(meta)) = (valid_blob_id(&id), file.metadata()) {
                    out.push((id, modified_ms(&meta)));
                }
            }
        }
        out
    }
}

#[async_trait]
impl ObjectBytes for ObjectFiles {
    fn create(&self) -> Result<Box<dyn BlobSink>, StoreError> {
        let blob_id = new_blob_id();
        let tmp = self.root.join("tmp").join(format!("{blob_id}.tmp"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(StoreError::io(format!("creating {}", tmp.display())))?;
        let path = self.path(&blob_id).expect("a valid id");
        Ok(Box::new(FileSink {
            files: self.clone(),
            file: Some(file),
            tmp,
            path,
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
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.existing_path(blob_id)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("opening {}", path.display()))(e)),
        };
        if offset > 0 {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(StoreError::io(format!("seeking {}", path.display())))?;
        }
        // A small object gets a buffer of its size, not a whole chunk.
        let chunk = READ_CHUNK_BYTES.min(len.max(1)) as usize;
        let context = format!("reading {}", path.display());
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), chunk)
            .map_err(move |e| StoreError::io(context.clone())(e));
        Ok(Some(Box::pin(stream)))
    }

    async fn remove(&self, blob_ids: &[String]) {
        if blob_ids.is_empty() {
            return;
        }
        let (files, ids) = (self.clone(), blob_ids.to_vec());
        let _ = tokio::task::spawn_blocking(move || {
            for id in ids {
                files.remove_one(&id);
            }
        })
        .await;
    }

    async fn sweep_staging(&self) -> Result<u64, StoreError> {
        let files = self.clone();
        tokio::task::spawn_blocking(move || files.sweep_tmp())
            .await
            .expect("sweeping object files")
    }

    async fn list(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let files = self.clone();
        Ok(tokio::task::spawn_blocking(move || files.list_blobs())
            .await
            .expect("listing object files"))
    }
}

/// A blob being written to a temporary file; `finish` makes it durable and puts it in
/// place. Dropped unfinished (a failed or abandoned upload), the file is removed.
struct FileSink {
    files: ObjectFiles,
    file: Option<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    blob_id: String,
    size_bytes: u64,
}

impl FileSink {
    /// Copies `len` bytes of `from` at `offset` into the blob (the kernel copies them:
    /// `copy_file_range` where the filesystem has it).
    fn append_file(&mut self, from: &Path, offset: u64, len: u64) -> Result<(), StoreError> {
        use std::io::{Read, Seek};
        let mut src = std::fs::File::open(from)
            .map_err(StoreError::io(format!("opening {}", from.display())))?;
        src.seek(std::io::SeekFrom::Start(offset))
            .map_err(StoreError::io(format!("reading {}", from.display())))?;
        let file = self
            .file
            .as_mut()
            .expect("a sink is written before it is finished");
        let copied = std::io::copy(&mut src.take(len), file)
            .map_err(StoreError::io(format!("writing {}", self.tmp.display())))?;
        if copied != len {
            return Err(StoreError::Corrupt(format!(
                "{} holds {copied} bytes from {offset}, not {len}",
                from.display()
            )));
        }
        self.size_bytes += len;
        Ok(())
    }
}

impl BlobSink for FileSink {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let file = self
            .file
            .as_mut()
            .expect("a sink is written before it is finished");
        file.write_all(bytes)
            .map_err(StoreError::io(format!("writing {}", self.tmp.display())))?;
        self.size_bytes += bytes.len() as u64;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn append_blob(&mut self, blob_id: &str, offset: u64, len: u64) -> Result<(), StoreError> {
        let from = self.files.existing_path(blob_id)?;
        self.append_file(&from, offset, len)
    }

    /// Makes the bytes durable and puts the blob in place: fsync the file, rename it, fsync
    /// the directory. Only then may a row name it.
    fn finish(mut self: Box<Self>) -> Result<String, StoreError> {
        let file = self.file.take().expect("finished once");
        let done = (|| {
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)?;
            fsync_dir(self.path.parent().expect("a blob's directory"))
        })();
        done.map_err(StoreError::io(format!("storing {}", self.path.display())))?;
        Ok(std::mem::take(&mut self.blob_id))
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_appears_only_when_finished_and_an_abandoned_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = ObjectFiles::open(dir.path()).unwrap();
        let mut sink = files.create().unwrap();
        sink.write(b"hello ").unwrap();
        sink.write(b"world").unwrap();
        assert_eq!(sink.size_bytes(), 11);
        assert!(
            files.list_blobs().is_empty(),
            "nothing in place before finish"
        );
        let id = sink.finish().unwrap();
        assert_eq!(
            std::fs::read(files.path(&id).unwrap()).unwrap(),
            b"hello world"
        );
        assert_eq!(files.list_blobs().len(), 1);

        let mut abandoned = files.create().unwrap();
        abandoned.write(b"half").unwrap();
        drop(abandoned);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        // A crash leaves the temporary file; the start-up sweep removes it.
        let crashed = files.create().unwrap();
        std::mem::forget(crashed);
        assert_eq!(files.sweep_tmp().unwrap(), 1);

        // Ids that are not ids never become paths.
        assert!(files.path("../../etc/passwd").is_none());
        assert!(files.path(&"A".repeat(32)).is_none());
    }

    #[test]
    fn parts_are_joined_by_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let files = ObjectFiles::open(dir.path()).unwrap();
        let mut a = files.create().unwrap();
        a.write(b"0123456789").unwrap();
        let a = a.finish().unwrap();
        let mut joined = files.create().unwrap();
        joined.append_blob(&a, 0, 10).unwrap();
        joined.append_blob(&a, 2, 3).unwrap();
        let id = joined.finish().unwrap();
        // A source shorter than its row says fails the join (the sink is then dropped).
        let mut short = files.create().unwrap();
        let err = short.append_blob(&a, 8, 5).unwrap_err();
        assert!(err.to_string().contains("not 5"), "{err}");
        let err = short.append_blob("../../etc/passwd", 0, 1).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert_eq!(
            std::fs::read(files.path(&id).unwrap()).unwrap(),
            b"0123456789234"
        );
    }

    /// Reads stream the range asked for from the file; a blob that is gone is `None`, and a
    /// file removed after `read` opened it is still read whole.
    #[tokio::test]
    async fn reads_stream_ranges_and_survive_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let files = ObjectFiles::open(dir.path()).unwrap();
        let mut sink = files.create().unwrap();
        sink.write(b"0123456789").unwrap();
        let id = sink.finish().unwrap();
        let read = |offset, len| {
            let files = files.clone();
            let id = id.clone();
            async move {
                let stream = files.read(&id, offset, len).await.unwrap().unwrap();
                let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
                chunks.concat()
            }
        };
        assert_eq!(read(0, 10).await, b"0123456789");
        assert_eq!(read(3, 4).await, b"3456");
        assert_eq!(read(9, 1).await, b"9");
        assert_eq!(read(0, 0).await, b"");

        let open = files.read(&id, 2, 8).await.unwrap().unwrap();
        files.remove(std::slice::from_ref(&id)).await;
        let chunks: Vec<bytes::Bytes> = open.try_collect().await.unwrap();
        assert_eq!(chunks.concat(), b"23456789");
        assert!(files.read(&id, 0, 10).await.unwrap().is_none());
        assert!(files.list().await.unwrap().is_empty());
        assert!(matches!(
            files.read("../../etc/passwd", 0, 1).await,
            Err(StoreError::Corrupt(_))
        ));
    }

    /// A full disk fails the write with `StorageFull` and leaves no temporary file; once
    /// space is freed, writes work again.
    #[test]
    fn a_full_disk_fails_cleanly_and_recovers() {
        let disk = crate::testfs::SmallDisk::mount(1024);
        let files = ObjectFiles::open(disk.path().join("objects")).unwrap();
        let ballast = disk.ballast(1024 * 1024);
        let mut sink = files.create().unwrap();
        let err = (0..64)
            .find_map(|_| sink.write(&[7u8; 64 * 1024]).err())
            .expect("the disk fills up");
        assert!(crate::testfs::is_full(&err), "{err}");
        drop(sink);
        assert_eq!(
            std::fs::read_dir(disk.path().join("objects/tmp"))
                .unwrap()
                .count(),
            0
        );
        std::fs::remove_file(ballast).unwrap();
        let mut sink = files.create().unwrap();
        sink.write(b"fits now").unwrap();
        sink.finish().unwrap();
    }
}
