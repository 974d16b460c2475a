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

    /// The largest unpacked size of a tree this cache takes.
    pub fn unpacked_max(&self) -> u64 {
        self.unpacked_max
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

    /// The tree instances run: the code alone, or with `deps` (an archive of installed
    /// dependencies) laid under it, as if `pip install --target .` or `npm install` had run
    /// in the code's directory. A file of the code wins over a dependency's of the same
    /// path. The merged tree is made once per pair, of hard links to both unpacked trees, so
    /// a code-only change costs links, not copies.
    pub async fn tree(&self, code: &str, deps: &str) -> Result<PathBuf, StoreError> {
        if deps.is_empty() {
            return self.ensure(code).await;
        }
        // Dependencies first, so the code's files are laid over theirs.
        self.merged(&tree_id(code, deps), &[deps, code]).await
    }

    /// The tree of a function's layers, shown at `/opt`: the one layer's own tree, or the
    /// layers laid over each other in order (a later one's file wins), made once per list
    /// of hard links like `tree`. `None` without layers.
    pub async fn layers(&self, shas: &[&str]) -> Result<Option<PathBuf>, StoreError> {
        match shas {
            [] => Ok(None),
            [one] => self.ensure(one).await.map(Some),
            _ => self.merged(&layers_id(shas), shas).await.map(Some),
        }
    }

    /// The tree named `id`: the unpacked trees of `parts` laid over each other in order,
    /// of hard links, made once (in a staging directory renamed into place, so a reader
    /// sees no tree or a whole one).
    async fn merged(&self, id: &str, parts: &[&str]) -> Result<PathBuf, StoreError> {
        let dir = self.dir(id);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(dir);
        }
        let mut trees = Vec::new();
        for sha in parts {
            trees.push(self.ensure(sha).await?);
        }
        let root = self.root.clone();
        let target = dir.clone();
        tokio::task::spawn_blocking(move || {
            let staging = root.join(format!("{STAGING_PREFIX}{}", crate::random_suffix()));
            let made = trees
                .iter()
                .try_for_each(|t| link_tree(t, &staging))
                .and_then(|()| match std::fs::rename(&staging, &target) {
                    // Another merge of the same parts won the race; its tree is the same.
                    Err(_) if target.exists() => {
                        let _ = std::fs::remove_dir_all(&staging);
                        Ok(())
                    }
                    other => other,
                });
            if made.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            made.map_err(StoreError::io(format!("making {}", target.display())))
        })
        .await
        .expect("merge task panicked")?;
        Ok(dir)
    }

    /// Removes unpacks that a crash interrupted (`.staging-*` directories), returning how
    /// many. Only at start-up, before any upload: an unpack in progress looks the same.
    pub async fn sweep_staging(&self) -> Result<u64, StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            for (name, path, _) in entries(&root)? {
                if name.starts_with(STAGING_PREFIX) {
                    std::fs::remove_dir_all(&path)
                        .map_err(StoreError::io(format!("removing {}", path.display())))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .expect("staging sweep task panicked")
    }

    /// The unpacked trees, as (sha256, when unpacked or last uploaded in Unix ms).
    pub async fn trees(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            Ok(entries(&root)?
                .into_iter()
                .filter(|(name, _, _)| {
                    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .map(|(name, _, modified_ms)| (name, modified_ms))
                .collect())
        })
        .await
        .expect("code listing task panicked")
    }

    /// Removes an unpacked tree; false if there was none. (Instances still running from it
    /// lose their files: the caller removes only code no instance uses.)
    pub async fn remove(&self, sha256: &str) -> Result<bool, StoreError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        // Renamed aside first, so no instance start finds a half-removed tree under the name.
        let dir = self.dir(sha256);
        let doomed = self
            .root
            .join(format!("{STAGING_PREFIX}gc-{}", crate::random_suffix()));
        match tokio::fs::rename(&dir, &doomed).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io(format!("removing {}", dir.display()))(e)),
        }
        tokio::fs::remove_dir_all(&doomed)
            .await
            .map_err(StoreError::io(format!("removing {}", doomed.display())))?;
        Ok(true)
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
    let staging = root.join(format!("{STAGING_PREFIX}{}", crate::random_suffix()));
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
        // Another unpack of the same content won the race, or the code was uploaded before;
        // its tree is identical. Its time is renewed: an upload starts the collector's grace
        // period again.
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            crate::blobs::touch(dir);
            Ok(info)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(StoreError::io(format!("installing {}", dir.display()))(e))
        }
    }
}

/// The name of the tree of `code` with `deps` laid under it (see `CodeCache::tree`): a
/// sha256 like the others, so the collector and the sandbox treat it as any tree.
pub fn tree_id(code: &str, deps: &str) -> String {
    crate::sha256_hex(format!("nimbus-tree-1\0{code}\0{deps}").as_bytes())
}

/// The name of the tree of several layers (see `CodeCache::layers`).
pub fn layers_id(shas: &[&str]) -> String {
    let mut text = String::from("nimbus-layers-1");
    for sha in shas {
        text.push('\0');
        text.push_str(sha);
    }
    crate::sha256_hex(text.as_bytes())
}

/// Recreates `from` under `to` with hard links to its files (copies where the filesystem
/// cannot link), replacing what is there.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if dst.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(&dst)?;
            }
            link_tree(&src, &dst)?;
            continue;
        }
        match dst.symlink_metadata() {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dst)?,
            Ok(_) => std::fs::remove_file(&dst)?,
            Err(_) => {}
        }
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// The entries of the cache's root as (name, path, modified Unix ms); nothing when the root
/// is not there yet.
fn entries(root: &Path) -> Result<Vec<(String, PathBuf, i64)>, StoreError> {
    let list = match std::fs::read_dir(root) {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("listing {}", root.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in list {
        let entry = entry.map_err(StoreError::io(format!("listing {}", root.display())))?;
        let modified_ms = entry
            .metadata()
            .map_or(0, |m| crate::blobs::modified_ms(&m));
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
            modified_ms,
        ));
    }
    Ok(out)
}

/// The name of an unpack in progress starts so; what is left of one after a crash is swept
/// at start-up.
const STAGING_PREFIX: &str = ".staging-";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A deflated archive of one file of `bytes` zeros (a few KB zipped).
    pub(crate) fn zip_of_zeros(bytes: usize) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file("main.py", opts).unwrap();
        w.write_all(&vec![0; bytes]).unwrap();
        w.finish().unwrap().into_inner()
    }

    fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, text) in files {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(text.as_bytes()).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    /// Code and dependencies make one tree, the code's files winning, made once.
    #[tokio::test]
    async fn a_tree_lays_the_code_over_its_dependencies() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs: Arc<dyn BlobStore> = Arc::new(crate::FsBlobStore::new(tmp.path().join("blobs")));
        let cache = CodeCache::new(tmp.path().join("code"), blobs, 1 << 20);
        let (code, _) = cache
            .accept(zip_of(&[("main.py", "code"), ("six.py", "mine")]))
            .await
            .unwrap();
        let (deps, _) = cache
            .accept(zip_of(&[
                ("six.py", "theirs"),
                ("flask/__init__.py", "flask"),
            ]))
            .await
            .unwrap();
        assert_eq!(
            cache.tree(&code, "").await.unwrap(),
            cache.ensure(&code).await.unwrap()
        );
        let tree = cache.tree(&code, &deps).await.unwrap();
        assert_eq!(
            tree.file_name().unwrap().to_str().unwrap(),
            tree_id(&code, &deps)
        );
        let read = |p: &str| std::fs::read_to_string(tree.join(p)).unwrap();
        assert_eq!(
            (read("main.py"), read("six.py"), read("flask/__init__.py")),
            ("code".into(), "mine".into(), "flask".into())
        );
        assert_eq!(cache.tree(&code, &deps).await.unwrap(), tree);
        // A tree is a tree like the others to the collector.
        let trees: Vec<String> = cache
            .trees()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.0)
            .collect();
        assert!(trees.contains(&tree_id(&code, &deps)));
    }

    #[tokio::test]
    async fn a_full_disk_is_not_the_archives_fault_and_leaves_nothing_behind() {
        let disk = crate::testfs::SmallDisk::mount(1024);
        let blobs: Arc<dyn BlobStore> =
            Arc::new(crate::FsBlobStore::new(disk.path().join("blobs")));
        let code = CodeCache::new(disk.path().join("code"), blobs.clone(), 64 << 20);
        // Unpacks to 4 MB on a 1 MB disk.
        let err = code.accept(zip_of_zeros(4 << 20)).await.unwrap_err();
        assert!(err.is_storage_full(), "{err}");
        let left: Vec<_> = std::fs::read_dir(disk.path().join("code"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // A blob that does not fit.
        let ballast = disk.ballast(1 << 20);
        let err = blobs.put(&vec![1; 256 << 10]).await.unwrap_err();
        assert!(err.is_storage_full(), "{err}");
        std::fs::remove_file(ballast).unwrap();
        let blob_dirs: Vec<_> = std::fs::read_dir(disk.path().join("blobs/sha256"))
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .collect();
        assert!(
            blob_dirs.is_empty(),
            "no temporary file stays: {blob_dirs:?}"
        );
        // With room again, both work.
        let (sha, info) = code.accept(zip_of_zeros(64 << 10)).await.unwrap();
        assert_eq!(info.unpacked_bytes, 64 << 10);
        assert!(code.ensure(&sha).await.unwrap().join("main.py").exists());
    }
}
