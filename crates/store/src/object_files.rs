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
//! without being gathered in memory.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::objects::{ObjectError, ObjectMeta};
use crate::{StoreError, blobs::modified_ms};

/// The local directory of object bytes.
#[derive(Clone, Debug)]
pub struct ObjectFiles {
    root: PathBuf,
}

/// Blob ids are 32 hex digits (128 random bits).
fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
        valid_id(blob_id).then(|| {
            self.root
                .join("blobs")
                .join(&blob_id[..2])
                .join(&blob_id[2..])
        })
    }

    /// A new blob being written.
    pub fn create(&self) -> Result<BlobSink, StoreError> {
        let blob_id = format!("{:032x}", rand::random::<u128>());
        let tmp = self.root.join("tmp").join(format!("{blob_id}.tmp"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(StoreError::io(format!("creating {}", tmp.display())))?;
        let path = self.path(&blob_id).expect("a valid id");
        Ok(BlobSink {
            file: Some(file),
            tmp,
            path,
            blob_id,
            size_bytes: 0,
        })
    }

    /// Removes a blob nothing refers to any more, best effort: what is missed (a crash
    /// between the commit and this) the collector finds.
    pub fn remove(&self, blob_id: &str) {
        if let Some(path) = self.path(blob_id)
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "removing an object's bytes: {e}");
        }
    }

    /// Removes the temporary files of writes a crash interrupted; answers how many. Only
    /// at start-up, under the data dir's lock: a write in progress looks the same.
    pub fn sweep_staging(&self) -> Result<u64, StoreError> {
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
    fn list(&self) -> Vec<(String, i64)> {
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
                if let (true, Ok(meta)) = (valid_id(&id), file.metadata()) {
                    out.push((id, modified_ms(&meta)));
                }
            }
        }
        out
    }

    /// Removes blobs that no object or part refers to and that are older than `grace_ms`
    /// (0 at start-up, when nothing is being written); answers how many. A blob is written
    /// before its row is committed, so a young unreferenced blob may be a write about to
    /// commit: the grace period outlasts that window.
    pub async fn collect(
        &self,
        meta: &dyn ObjectMeta,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<u64, ObjectError> {
        let this = self.clone();
        // Listed before the references are read: a blob written after the listing is not
        // looked at, one committed after it is referenced by then.
        let on_disk = tokio::task::spawn_blocking(move || this.list())
            .await
            .expect("listing object files");
        let referenced: HashSet<String> = meta.referenced_blobs().await?;
        let mut removed = 0;
        for (id, modified) in on_disk {
            if !referenced.contains(&id) && now_ms - modified >= grace_ms {
                self.remove(&id);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A blob being written: bytes go to a temporary file; `finish` makes it durable and puts
/// it in place. Dropped unfinished (a failed or abandoned upload), the file is removed.
pub struct BlobSink {
    file: Option<std::fs::File>,
    tmp: PathBuf,
    path: PathBuf,
    blob_id: String,
    size_bytes: u64,
}

impl BlobSink {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let file = self
            .file
            .as_mut()
            .expect("a sink is written before it is finished");
        file.write_all(bytes)
            .map_err(StoreError::io(format!("writing {}", self.tmp.display())))?;
        self.size_bytes += bytes.len() as u64;
        Ok(())
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Copies `len` bytes of `from` at `offset` into the blob (the kernel copies them:
    /// `copy_file_range` where the filesystem has it), for multipart completion and part
    /// copies.
    pub fn append_file(&mut self, from: &Path, offset: u64, len: u64) -> Result<(), StoreError> {
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

    /// Makes the bytes durable and puts the blob in place: fsync the file, rename it, fsync
    /// the directory. Only then may a row name it.
    pub fn finish(mut self) -> Result<String, StoreError> {
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

impl Drop for BlobSink {
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
        assert!(files.list().is_empty(), "nothing in place before finish");
        let id = sink.finish().unwrap();
        assert_eq!(
            std::fs::read(files.path(&id).unwrap()).unwrap(),
            b"hello world"
        );
        assert_eq!(files.list().len(), 1);

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
        assert_eq!(files.sweep_staging().unwrap(), 1);

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
        let a = files.path(&a.finish().unwrap()).unwrap();
        let mut joined = files.create().unwrap();
        joined.append_file(&a, 0, 10).unwrap();
        joined.append_file(&a, 2, 3).unwrap();
        let id = joined.finish().unwrap();
        // A source shorter than its row says fails the join (the sink is then dropped).
        let mut short = files.create().unwrap();
        let err = short.append_file(&a, 8, 5).unwrap_err();
        assert!(err.to_string().contains("not 5"), "{err}");
        assert_eq!(
            std::fs::read(files.path(&id).unwrap()).unwrap(),
            b"0123456789234"
        );
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
