//! Content-addressed blob storage for code artifacts.

use std::path::PathBuf;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::StoreError;

/// sha256 of `bytes` as lowercase hex: the address of a blob.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where code archives live, addressed by their sha256. Writing the same bytes twice is a
/// no-op, so uploads are idempotent and deduplicated.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under their sha256 and returns it.
    async fn put(&self, bytes: &[u8]) -> Result<String, StoreError>;
    /// The blob, or `BlobNotFound`.
    async fn get(&self, sha256: &str) -> Result<Vec<u8>, StoreError>;
    async fn exists(&self, sha256: &str) -> Result<bool, StoreError>;
    /// The blob's size in bytes, `None` if there is no such blob.
    async fn size(&self, sha256: &str) -> Result<Option<u64>, StoreError>;
    /// Every stored blob, for the garbage collector.
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError>;
    /// Removes a blob; false if there was none.
    async fn delete(&self, sha256: &str) -> Result<bool, StoreError>;
    /// Removes what writes interrupted by a crash left behind (temporary files), returning
    /// how many. Only at start-up: a write in progress looks the same.
    async fn sweep_leftovers(&self) -> Result<u64, StoreError>;
}

/// One stored blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub sha256: String,
    pub bytes: u64,
    /// When it was stored, or last uploaded again (Unix milliseconds).
    pub modified_ms: i64,
}

/// A file's modification time in Unix milliseconds (0 when the filesystem has none).
pub(crate) fn modified_ms(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sets a file's or directory's modification time to now, best effort: an upload of code
/// that is already stored renews it, so the collector's grace period starts again.
pub(crate) fn touch(path: &std::path::Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Blobs as files `<root>/sha256/<aa>/<rest>` on the local filesystem.
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsBlobStore { root: root.into() }
    }

    fn path(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        // The address is used in a path, so it must be exactly a hex digest.
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::BlobNotFound(sha256.into()));
        }
        Ok(self
            .root
            .join("sha256")
            .join(&sha256[..2])
            .join(&sha256[2..]))
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let sha = sha256_hex(bytes);
        let path = self.path(&sha)?;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            let path = path.clone();
            let _ = tokio::task::spawn_blocking(move || touch(&path)).await;
            return Ok(sha);
        }
        let dir = path.parent().expect("blob path has a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(StoreError::io(format!("creating {}", dir.display())))?;
        // Write to a unique temporary name, fsync, then rename: a crash leaves either no blob
        // or a whole one, never a torn file under the content address.
        let tmp = dir.join(format!(".{}.{}.tmp", &sha[2..], crate::random_suffix()));
        let data = bytes.to_vec();
        let (tmp2, path2) = (tmp.clone(), path.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let written = (|| {
                let mut f = std::fs::File::create(&tmp2)?;
                f.write_all(&data)?;
                f.sync_all()?;
                std::fs::rename(&tmp2, &path2)
            })();
            // A half-written temporary file (a full disk) would hold its space until the
            // next start-up sweep; it goes at once.
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp2);
            }
            written
        })
        .await
        .expect("blob write task panicked")
        .map_err(StoreError::io(format!("writing {}", path.display())))?;
        Ok(sha)
    }

    async fn get(&self, sha256: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(sha256)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound(sha256.into()))
            }
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()))(e)),
        }
    }

    async fn exists(&self, sha256: &str) -> Result<bool, StoreError> {
        match self.path(sha256) {
            Ok(path) => Ok(tokio::fs::try_exists(path).await.unwrap_or(false)),
            Err(_) => Ok(false),
        }
    }

    async fn size(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        let Ok(path) = self.path(sha256) else {
            return Ok(None);
        };
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()))(e)),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let root = self.root.join("sha256");
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (dir, name) in blob_files(&root)? {
                let sha = format!("{dir}{name}");
                // Temporary files and anything else that is not a blob's name are not listed.
                if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    continue;
                }
                let path = root.join(&dir).join(&name);
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                out.push(BlobInfo {
                    sha256: sha,
                    bytes: meta.len(),
                    modified_ms: modified_ms(&meta),
                });
            }
            Ok(out)
        })
        .await
        .expect("blob listing task panicked")
    }

    async fn delete(&self, sha256: &str) -> Result<bool, StoreError> {
        let path = self.path(sha256)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(format!("removing {}", path.display()))(e)),
        }
    }

    async fn sweep_leftovers(&self) -> Result<u64, StoreError> {
        let root = self.root.join("sha256");
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            for (dir, name) in blob_files(&root)? {
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let path = root.join(&dir).join(&name);
                    std::fs::remove_file(&path)
                        .map_err(StoreError::io(format!("removing {}", path.display())))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .expect("blob sweep task panicked")
    }
}

/// The files under `<root>/<aa>/` as (`aa`, name); nothing when the root is not there yet.
fn blob_files(root: &std::path::Path) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    let dirs = match std::fs::read_dir(root) {
        Ok(dirs) => dirs,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io(format!("listing {}", root.display()))(e)),
    };
    for dir in dirs {
        let dir = dir.map_err(StoreError::io(format!("listing {}", root.display())))?;
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        let prefix = dir.file_name().to_string_lossy().into_owned();
        for file in files.flatten() {
            out.push((
                prefix.clone(),
                file.file_name().to_string_lossy().into_owned(),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_is_content_addressed_and_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(tmp.path());
        let a = store.put(b"hello").await.unwrap();
        assert_eq!(a, sha256_hex(b"hello"));
        assert_eq!(store.put(b"hello").await.unwrap(), a);
        assert_eq!(store.get(&a).await.unwrap(), b"hello");
        assert!(store.exists(&a).await.unwrap());
        let missing = sha256_hex(b"other");
        assert!(!store.exists(&missing).await.unwrap());
        assert_eq!(store.size(&a).await.unwrap(), Some(5));
        assert_eq!(store.size(&missing).await.unwrap(), None);
        assert_eq!(store.size("../x").await.unwrap(), None);
        assert!(matches!(
            store.get(&missing).await,
            Err(StoreError::BlobNotFound(_))
        ));
        assert!(matches!(
            store.get("../../etc/passwd").await,
            Err(StoreError::BlobNotFound(_))
        ));
    }
}
