//! The node-local cache of unpacked code: `<root>/<sha256>/` holds one archive's tree.
//!
//! Blobs are the source of truth (they may live in S3); a node unpacks an archive once, the
//! first time an instance of it starts or when it is uploaded to this node, and every
//! instance of every function using the same code shares the read-only tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{ArchiveInfo, BlobStore, StoreError, archive};

/// Unpacked code trees keyed by archive sha256.
#[derive(Clone)]
pub struct CodeCache {
    root: PathBuf,
    blobs: Arc<dyn BlobStore>,
    unpacked_max: u64,
}

impl CodeCache {
    pub fn new(root: impl Into<PathBuf>, blobs: Arc<dyn BlobStore>, unpacked_max: u64) -> Self {
        CodeCache {
            root: root.into(),
            blobs,
            unpacked_max,
        }
    }

    /// Checks an uploaded archive by unpacking it into the cache, then stores the blob.
    /// Nothing is stored when the archive is refused.
    pub async fn accept(&self, zip: Vec<u8>) -> Result<(String, ArchiveInfo), StoreError> {
        let sha = crate::sha256_hex(&zip);
        let zip = Arc::new(zip);
        let info = self.unpack(&sha, zip.clone()).await?;
        self.blobs.put(&zip).await?;
        Ok((sha, info))
    }

    /// The directory holding the unpacked code, unpacking it from the blob store if needed.
    pub async fn ensure(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        let dir = self.dir(sha256);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(dir);
        }
        let zip = self.blobs.get(sha256).await?;
        self.unpack(sha256, Arc::new(zip)).await?;
        Ok(dir)
    }

    fn dir(&self, sha256: &str) -> PathBuf {
        self.root.join(sha256)
    }

    async fn unpack(&self, sha256: &str, zip: Arc<Vec<u8>>) -> Result<ArchiveInfo, StoreError> {
        let dir = self.dir(sha256);
        let root = self.root.clone();
        let max = self.unpacked_max;
        tokio::task::spawn_blocking(move || unpack_atomically(&root, &dir, &zip, max))
            .await
            .expect("unpack task panicked")
    }
}

/// Unpacks into a private temporary directory and renames it into place, so a reader sees
/// either no tree or a complete one, and two concurrent unpacks of the same code are safe.
fn unpack_atomically(
    root: &Path,
    dir: &Path,
    zip: &[u8],
    max: u64,
) -> Result<ArchiveInfo, StoreError> {
    std::fs::create_dir_all(root)
        .map_err(StoreError::io(format!("creating {}", root.display())))?;
    let staging = root.join(format!(
        ".staging-{}-{}",
        std::process::id(),
        STAGING_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = archive::extract(zip, &staging, max);
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
    };
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(info),
        // Another unpack of the same content won the race; its tree is identical.
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(info)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(StoreError::io(format!("installing {}", dir.display()))(e))
        }
    }
}

static STAGING_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
