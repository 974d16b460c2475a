//! Code archives in S3, content-addressed: `<prefix>/sha256/<aa>/<rest>`, as the local
//! `FsBlobStore` lays them out on disk.
//!
//! A PUT is atomic in S3 (a key holds the old bytes or the new ones, never a mix), so there is
//! no temporary name and nothing for `sweep_leftovers` to do. What the filesystem's checks
//! gave for free is done here: a `get` hashes what it fetched and refuses bytes that are not
//! the archive its address names, since a bucket is shared and can be written by other tools.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use store::{BlobInfo, BlobStore, StoreError, sha256_hex};

use crate::client::{Clients, modified_ms, store_error};

/// A stored archive is uploaded again, rather than skipped, once it is older than this. The
/// collector removes an unreferenced archive only once its modification time is older than
/// `CODE_GARBAGE_GRACE_MS`; S3 cannot touch a key as the local store does, so an upload of an
/// old archive (the code of a function deleted days ago, deployed again) renews it by
/// writing it again. A younger one stays younger than the grace period for at least this
/// long, which outlasts the deploy that follows the upload (its build included).
const RENEW_AFTER_MS: i64 = model::limits::CODE_GARBAGE_GRACE_MS / 2;
const _: () = assert!(RENEW_AFTER_MS > 0 && RENEW_AFTER_MS < model::limits::CODE_GARBAGE_GRACE_MS);

/// Code archives in an S3 bucket.
pub struct S3BlobStore {
    clients: Clients,
}

/// Whether an address is one: exactly a sha256 in hex, so that no other string becomes a key.
fn valid_sha256(sha256: &str) -> bool {
    sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a stored archive last written at `modified_ms` is written again by a `put` at
/// `now_ms`.
fn renews(modified_ms: i64, now_ms: i64) -> bool {
    now_ms - modified_ms >= RENEW_AFTER_MS
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl S3BlobStore {
    pub(crate) fn new(clients: Clients) -> S3BlobStore {
        S3BlobStore { clients }
    }

    fn root(&self) -> Path {
        self.clients.key(["sha256"])
    }

    /// The key of an archive; `None` for an address that is not a sha256.
    fn key(&self, sha256: &str) -> Option<Path> {
        valid_sha256(sha256).then(|| self.clients.key(["sha256", &sha256[..2], &sha256[2..]]))
    }

    /// The archive's metadata; `None` when there is none.
    async fn head(&self, key: &Path) -> Result<Option<object_store::ObjectMeta>, StoreError> {
        match self.clients.ops.head(key).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(
                &format!("looking up {}", self.clients.url(key)),
                e,
            )),
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let sha = sha256_hex(bytes);
        let key = self.key(&sha).expect("a digest is an address");
        // Idempotent: the same address holds the same bytes, so an archive that is there is
        // not sent again (unless it is old enough to need renewing, above).
        if let Some(meta) = self.head(&key).await?
            && meta.size == bytes.len() as u64
            && !renews(modified_ms(&meta), now_ms())
        {
            return Ok(sha);
        }
        self.clients
            .ops
            .put(&key, PutPayload::from(Bytes::copy_from_slice(bytes)))
            .await
            .map_err(|e| store_error(&format!("writing {}", self.clients.url(&key)), e))?;
        Ok(sha)
    }

    async fn get(&self, sha256: &str) -> Result<Vec<u8>, StoreError> {
        let key = self
            .key(sha256)
            .ok_or_else(|| StoreError::BlobNotFound(sha256.into()))?;
        let url = self.clients.url(&key);
        let fetched = match self.clients.ops.get(&key).await {
            Ok(fetched) => fetched,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::BlobNotFound(sha256.into()));
            }
            Err(e) => return Err(store_error(&format!("reading {url}"), e)),
        };
        let bytes = fetched
            .bytes()
            .await
            .map_err(|e| store_error(&format!("reading {url}"), e))?;
        // The bucket is shared and the network long: what came back must be the archive
        // the address names, or nothing unpacks it.
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(sha256) {
            return Err(StoreError::Corrupt(format!(
                "code archive {sha256} at {url} holds other bytes (their sha256 is {actual}); \
                 the stored copy was altered or damaged, deploy the code again"
            )));
        }
        Ok(bytes.to_vec())
    }

    async fn exists(&self, sha256: &str) -> Result<bool, StoreError> {
        match self.key(sha256) {
            Some(key) => Ok(self.head(&key).await?.is_some()),
            None => Ok(false),
        }
    }

    async fn size(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        match self.key(sha256) {
            Some(key) => Ok(self.head(&key).await?.map(|m| m.size)),
            None => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
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
                // Anything else in the prefix (a stray upload of another tool) is not a blob.
                let [aa, rest] = parts.as_slice() else {
                    return None;
                };
                let sha256 = format!("{aa}{rest}");
                (valid_sha256(&sha256) && aa.len() == 2).then(|| BlobInfo {
                    sha256,
                    bytes: meta.size,
                    modified_ms: modified_ms(&meta),
                })
            })
            .collect())
    }

    async fn delete(&self, sha256: &str) -> Result<bool, StoreError> {
        let key = self
            .key(sha256)
            .ok_or_else(|| StoreError::BlobNotFound(sha256.into()))?;
        // S3's DELETE answers the same whether or not the key was there; the HEAD says which.
        if self.head(&key).await?.is_none() {
            return Ok(false);
        }
        self.clients
            .ops
            .delete(&key)
            .await
            .map_err(|e| store_error(&format!("removing {}", self.clients.url(&key)), e))?;
        Ok(true)
    }

    /// Nothing: a PUT is atomic, so an interrupted one leaves no object behind.
    async fn sweep_leftovers(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_archives_are_renewed_and_young_ones_skipped() {
        let now = 10 * model::limits::CODE_GARBAGE_GRACE_MS;
        assert!(!renews(now, now));
        assert!(!renews(now - RENEW_AFTER_MS + 1, now));
        assert!(renews(now - RENEW_AFTER_MS, now));
        assert!(renews(0, now));
    }
}
