//! The collector of code nothing refers to: archives in the blob store and unpacked trees in
//! the code cache whose sha256 no function or version names.
//!
//! An upload is stored before the deploy that refers to it, so code is collected only once
//! it has been unreferenced for a grace period twice over: its file is older than the grace
//! (a fresh upload is kept for its deploy), and this collector has seen it unreferenced for
//! that long (code that a deploy just stopped using is kept while the instances that still
//! run it drain). What the collector has seen is kept in memory, so after a restart the
//! grace period starts again: collecting late is safe, collecting early is not.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::{BlobStore, CodeCache, StoreError};

/// What one collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectReport {
    pub blobs_removed: u64,
    pub blob_bytes_removed: u64,
    pub trees_removed: u64,
}

/// Collects unreferenced code; one per node, called every few minutes.
pub struct CodeCollector {
    grace_ms: i64,
    /// When each unreferenced sha256 was first seen so, blobs and trees alike.
    unreferenced_since_ms: HashMap<String, i64>,
}

impl CodeCollector {
    /// `grace_ms` is `model::limits::CODE_GARBAGE_GRACE_MS` unless a test wants another.
    pub fn new(grace_ms: i64) -> CodeCollector {
        CodeCollector {
            grace_ms,
            unreferenced_since_ms: HashMap::new(),
        }
    }

    /// Removes the blobs and trees not in `referenced` that are past the grace period at
    /// `now_ms`. `referenced` is `MetaStore::referenced_code` plus the code of any instance
    /// still running on this node; it is read before the listing, so an upload after it is
    /// young and kept.
    pub async fn collect(
        &mut self,
        blobs: &dyn BlobStore,
        code: &CodeCache,
        referenced: &BTreeSet<String>,
        now_ms: i64,
    ) -> Result<CollectReport, StoreError> {
        let mut report = CollectReport::default();
        let blob_list = blobs.list().await?;
        let trees = code.trees().await?;
        let seen: HashSet<&String> = blob_list
            .iter()
            .map(|b| &b.sha256)
            .chain(trees.iter().map(|(sha, _)| sha))
            .filter(|sha| !referenced.contains(*sha))
            .collect();
        // Forget what is referenced again or gone; remember when the rest was first seen.
        self.unreferenced_since_ms
            .retain(|sha, _| seen.contains(sha));
        for sha in seen {
            self.unreferenced_since_ms
                .entry(sha.clone())
                .or_insert(now_ms);
        }
        let due = |sha: &str, modified_ms: i64| {
            !referenced.contains(sha)
                && now_ms - modified_ms >= self.grace_ms
                && self
                    .unreferenced_since_ms
                    .get(sha)
                    .is_some_and(|since| now_ms - since >= self.grace_ms)
        };
        for blob in &blob_list {
            if due(&blob.sha256, blob.modified_ms) && blobs.delete(&blob.sha256).await? {
                report.blobs_removed += 1;
                report.blob_bytes_removed += blob.bytes;
            }
        }
        for (sha, modified_ms) in &trees {
            if due(sha, *modified_ms) && code.remove(sha).await? {
                report.trees_removed += 1;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsBlobStore;
    use crate::code_cache::tests::zip_of_zeros;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const GRACE_MS: i64 = 3_600_000;

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    fn set_modified(path: &std::path::Path, at_ms: i64) {
        let at = UNIX_EPOCH + Duration::from_millis(at_ms as u64);
        std::fs::File::open(path).unwrap().set_modified(at).unwrap();
    }

    #[tokio::test]
    async fn leftovers_of_a_crash_are_swept_at_start_up() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = FsBlobStore::new(tmp.path().join("blobs"));
        let code = CodeCache::new(
            tmp.path().join("code"),
            Arc::new(FsBlobStore::new(tmp.path().join("blobs"))),
            1 << 20,
        );
        // Nothing there yet is not an error.
        assert_eq!(code.sweep_staging().await.unwrap(), 0);
        assert_eq!(blobs.sweep_leftovers().await.unwrap(), 0);
        let (sha, _) = code.accept(zip_of_zeros(10)).await.unwrap();
        let staging = tmp.path().join("code/.staging-4242-0/lib");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("big"), b"half an upload").unwrap();
        let tmp_blob = tmp
            .path()
            .join("blobs/sha256")
            .join(&sha[..2])
            .join(format!(".{}.1.tmp", &sha[2..]));
        std::fs::write(&tmp_blob, b"half a blob").unwrap();
        assert_eq!(code.sweep_staging().await.unwrap(), 1);
        assert_eq!(blobs.sweep_leftovers().await.unwrap(), 1);
        assert!(!tmp.path().join("code/.staging-4242-0").exists());
        assert!(!tmp_blob.exists());
        // What was whole stays.
        assert!(code.ensure(&sha).await.unwrap().join("main.py").exists());
        assert_eq!(blobs.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn unreferenced_code_goes_after_the_grace_period_and_referenced_code_stays() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = Arc::new(FsBlobStore::new(tmp.path().join("blobs")));
        let code = CodeCache::new(tmp.path().join("code"), blobs.clone(), 1 << 20);
        let (a, _) = code.accept(zip_of_zeros(1)).await.unwrap();
        let (b, _) = code.accept(zip_of_zeros(2)).await.unwrap();
        let (c, _) = code.accept(zip_of_zeros(3)).await.unwrap();
        let mut collector = CodeCollector::new(GRACE_MS);
        let t0 = now_ms();
        let only_a = BTreeSet::from([a.clone()]);
        // Just uploaded: nothing goes, referenced or not.
        let report = collector
            .collect(&*blobs, &code, &only_a, t0)
            .await
            .unwrap();
        assert_eq!(report, CollectReport::default());
        // `c` is uploaded again just before the grace period ends: it starts again.
        let c_blob = tmp.path().join("blobs/sha256").join(&c[..2]).join(&c[2..]);
        set_modified(&c_blob, t0 + GRACE_MS);
        set_modified(&tmp.path().join("code").join(&c), t0 + GRACE_MS);
        let report = collector
            .collect(&*blobs, &code, &only_a, t0 + GRACE_MS + 1)
            .await
            .unwrap();
        assert_eq!(
            (report.blobs_removed, report.trees_removed),
            (1, 1),
            "b only"
        );
        assert!(report.blob_bytes_removed > 0);
        assert!(!blobs.exists(&b).await.unwrap());
        assert!(!tmp.path().join("code").join(&b).exists());
        assert!(blobs.exists(&c).await.unwrap());
        // `a` stops being referenced (its function was deleted): it is kept for a grace
        // period from then, though its files are old.
        let none = BTreeSet::new();
        let t1 = t0 + 3 * GRACE_MS;
        let report = collector.collect(&*blobs, &code, &none, t1).await.unwrap();
        assert_eq!(
            (report.blobs_removed, report.trees_removed),
            (1, 1),
            "c only, unreferenced since t0"
        );
        assert!(blobs.exists(&a).await.unwrap());
        let report = collector
            .collect(&*blobs, &code, &none, t1 + GRACE_MS)
            .await
            .unwrap();
        assert_eq!((report.blobs_removed, report.trees_removed), (1, 1));
        assert!(blobs.list().await.unwrap().is_empty());
        assert!(code.trees().await.unwrap().is_empty());
        // A tree whose blob is gone is unpacked again only if its blob comes back.
        assert!(matches!(
            code.ensure(&a).await,
            Err(StoreError::BlobNotFound(_))
        ));
    }
}
