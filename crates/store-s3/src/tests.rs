//! The S3 stores against a real S3 server: SeaweedFS, which `.ci/run` starts (see
//! `testkit`). Each test works under a prefix of its own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use store::objects::{ObjectChange, ObjectRecord};
use store::{ObjectBytes, ObjectMeta, StoreError, sha256_hex};

use crate::S3Config;
use crate::S3Stores;
use crate::testkit::config as test_config;

struct Fixture {
    stores: S3Stores,
    config: S3Config,
    staging: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let config = test_config();
    let staging = tempfile::tempdir().unwrap();
    let stores = crate::open_config(&config, staging.path()).unwrap();
    Fixture {
        stores,
        config,
        staging,
    }
}

impl Fixture {
    /// Writes bytes outside the stores, as another tool with the bucket's keys could.
    async fn raw_put(&self, key: &str, bytes: &'static [u8]) {
        let clients = crate::client::Clients::new(&self.config).unwrap();
        let key = clients.key(key.split('/'));
        clients
            .ops
            .put(&key, PutPayload::from(Bytes::from_static(bytes)))
            .await
            .unwrap();
    }

    /// The temporary files in the staging directory.
    fn staged(&self) -> usize {
        std::fs::read_dir(self.staging.path().join("s3-staging"))
            .unwrap()
            .count()
    }
}

/// Writes a blob the way the S3 API does: the sink fed on a blocking thread.
async fn write_blob(objects: &Arc<dyn ObjectBytes>, chunks: Vec<Vec<u8>>) -> String {
    let objects = objects.clone();
    tokio::task::spawn_blocking(move || {
        let mut sink = objects.create()?;
        for chunk in chunks {
            sink.write(&chunk)?;
        }
        sink.finish()
    })
    .await
    .unwrap()
    .unwrap()
}

async fn read_blob(objects: &dyn ObjectBytes, id: &str, offset: u64, len: u64) -> Vec<u8> {
    let stream = objects.read(id, offset, len).await.unwrap().unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    chunks.concat()
}

/// Bytes that differ at every offset (a misplaced range or part shows).
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_archives_are_content_addressed_idempotent_and_listed() {
    let f = fixture();
    let blobs = &f.stores.blobs;
    f.stores.check().await.unwrap();
    let a = blobs.put(b"hello").await.unwrap();
    assert_eq!(a, sha256_hex(b"hello"));
    let listed = blobs.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].sha256.as_str(), listed[0].bytes),
        (a.as_str(), 5)
    );

    // A second upload of the same bytes sends nothing: the key is not written again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(blobs.put(b"hello").await.unwrap(), a);
    assert_eq!(blobs.list().await.unwrap(), listed);

    assert_eq!(blobs.get(&a).await.unwrap(), b"hello");
    assert!(blobs.exists(&a).await.unwrap());
    assert_eq!(blobs.size(&a).await.unwrap(), Some(5));
    let missing = sha256_hex(b"other");
    assert!(!blobs.exists(&missing).await.unwrap());
    assert_eq!(blobs.size(&missing).await.unwrap(), None);
    assert!(matches!(
        blobs.get(&missing).await,
        Err(StoreError::BlobNotFound(_))
    ));
    // Addresses that are not digests never become keys.
    assert!(!blobs.exists("../x").await.unwrap());
    assert_eq!(blobs.size("../x").await.unwrap(), None);
    assert!(matches!(
        blobs.get("../../etc/passwd").await,
        Err(StoreError::BlobNotFound(_))
    ));
    assert_eq!(blobs.sweep_leftovers().await.unwrap(), 0);

    assert!(blobs.delete(&a).await.unwrap());
    assert!(!blobs.delete(&a).await.unwrap());
    assert!(blobs.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_code_archive_is_refused_on_get() {
    let f = fixture();
    let sha = f.stores.blobs.put(b"the real archive").await.unwrap();
    // Another writer of the bucket replaces the bytes under the address.
    f.raw_put(&format!("sha256/{}/{}", &sha[..2], &sha[2..]), b"tampered")
        .await;
    let err = f.stores.blobs.get(&sha).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&sha) && message.contains(&sha256_hex(b"tampered")),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "s3://{}/{}/sha256/",
            f.config.bucket, f.config.prefix
        )),
        "{message}"
    );
    // Stray keys in the prefix are not archives.
    f.raw_put("sha256/zz/not-a-digest", b"x").await;
    let listed = f.stores.blobs.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    f.stores.blobs.delete(&sha).await.unwrap();
}

/// S3 answers a listing in pages of at most 1,000 keys: every page is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_through_every_key() {
    let f = fixture();
    const COUNT: usize = 1_005;
    let blobs = &f.stores.blobs;
    let put: Vec<String> = futures_util::stream::iter(0..COUNT)
        .map(|i| async move { blobs.put(format!("archive {i}").as_bytes()).await })
        .buffer_unordered(16)
        .try_collect()
        .await
        .unwrap();
    let mut listed: Vec<String> = blobs
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.sha256)
        .collect();
    listed.sort();
    let mut expected = put.clone();
    expected.sort();
    assert_eq!(listed, expected);
    futures_util::stream::iter(put)
        .for_each_concurrent(16, |sha| async move {
            blobs.delete(&sha).await.unwrap();
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_bytes_are_written_read_in_ranges_and_removed() {
    let f = fixture();
    let objects = &f.stores.objects;
    let id = write_blob(objects, vec![b"0123".to_vec(), b"456789".to_vec()]).await;
    assert_eq!(f.staged(), 0, "the temporary file went with the upload");
    assert_eq!(read_blob(objects.as_ref(), &id, 0, 10).await, b"0123456789");
    assert_eq!(read_blob(objects.as_ref(), &id, 3, 4).await, b"3456");
    assert_eq!(read_blob(objects.as_ref(), &id, 9, 1).await, b"9");
    assert_eq!(read_blob(objects.as_ref(), &id, 0, 0).await, b"");
    let listed = objects.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, id);

    let empty = write_blob(objects, vec![]).await;
    assert_eq!(read_blob(objects.as_ref(), &empty, 0, 0).await, b"");

    objects.remove(&[id.clone(), empty]).await;
    assert!(objects.read(&id, 0, 10).await.unwrap().is_none());
    assert!(objects.list().await.unwrap().is_empty());
    // Removing what is gone is no error; ids that are not ids never become keys.
    objects.remove(std::slice::from_ref(&id)).await;
    assert!(matches!(
        objects.read("../../etc/passwd", 0, 1).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Past 8 MiB a blob goes up as a multipart upload; the parts of Nimbus's own multipart
/// uploads are joined by `append_blob`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blobs_go_up_in_parts_and_blobs_are_joined() {
    let f = fixture();
    let objects = &f.stores.objects;
    let big = patterned(20 * 1024 * 1024 + 123);
    let chunks: Vec<Vec<u8>> = big.chunks(1024 * 1024 + 7).map(<[u8]>::to_vec).collect();
    let id = write_blob(objects, chunks).await;
    assert_eq!(
        read_blob(objects.as_ref(), &id, 0, big.len() as u64).await,
        big
    );
    // A range across the first part's end.
    let at = 8 * 1024 * 1024 - 10;
    assert_eq!(
        read_blob(objects.as_ref(), &id, at as u64, 20).await,
        &big[at..at + 20]
    );

    let small = write_blob(objects, vec![b"tail".to_vec()]).await;
    let (o, big_id, small_id) = (objects.clone(), id.clone(), small.clone());
    let joined = tokio::task::spawn_blocking(move || {
        let mut sink = o.create()?;
        sink.append_blob(&big_id, 5, 100)?;
        sink.append_blob(&small_id, 0, 4)?;
        sink.append_blob(&small_id, 1, 0)?;
        assert_eq!(sink.size_bytes(), 104);
        // A source shorter than its row says fails the join, and so does a missing one.
        let mut short = o.create()?;
        let err = short.append_blob(&small_id, 2, 5).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        let err = short
            .append_blob(&store::object_bytes::new_blob_id(), 0, 1)
            .unwrap_err();
        assert!(err.to_string().contains("is not in"), "{err}");
        sink.finish()
    })
    .await
    .unwrap()
    .unwrap();
    let mut expected = big[5..105].to_vec();
    expected.extend_from_slice(b"tail");
    assert_eq!(read_blob(objects.as_ref(), &joined, 0, 104).await, expected);
    assert_eq!(f.staged(), 0);
    objects.remove(&[id, small, joined]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_sink_leaves_nothing_and_a_crashed_one_is_swept() {
    let f = fixture();
    let objects = f.stores.objects.clone();
    tokio::task::spawn_blocking(move || {
        let mut abandoned = objects.create().unwrap();
        abandoned.write(b"half").unwrap();
        drop(abandoned);
        // A crash leaves the temporary file; the start-up sweep removes it.
        std::mem::forget(objects.create().unwrap());
    })
    .await
    .unwrap();
    assert!(f.stores.objects.list().await.unwrap().is_empty());
    assert_eq!(f.staged(), 1);
    assert_eq!(f.stores.objects.sweep_staging().await.unwrap(), 1);
    assert_eq!(f.staged(), 0);
}

/// The collector removes what no row names, but never a young blob, whatever grace its
/// caller asks: another node may be about to commit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_removes_unreferenced_bytes_only_past_the_shared_grace() {
    let f = fixture();
    let objects = &f.stores.objects;
    let dir = tempfile::tempdir().unwrap();
    let meta = store::SqliteStore::open(&dir.path().join("db"))
        .await
        .unwrap();
    let kept = write_blob(objects, vec![b"named".to_vec()]).await;
    let orphan = write_blob(objects, vec![b"orphan".to_vec()]).await;
    meta.create_bucket("b", 0, 10).await.unwrap();
    meta.commit_object(
        ObjectChange::Put(Box::new(ObjectRecord {
            bucket: "b".into(),
            key: "k".into(),
            blob_id: kept.clone(),
            size_bytes: 5,
            etag: "e".into(),
            modified_ms: 0,
            attrs: Default::default(),
        })),
        &[],
    )
    .await
    .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(objects.collect(&meta, now_ms, 0).await.unwrap(), 0);
    let later = now_ms + model::limits::OBJECT_GARBAGE_GRACE_MS + 60_000;
    assert_eq!(objects.collect(&meta, later, 0).await.unwrap(), 1);
    let left: Vec<String> = objects
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![kept.clone()]);
    assert!(objects.read(&orphan, 0, 6).await.unwrap().is_none());
    objects.remove(&[kept]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_when_the_bucket_or_the_credentials_are_wrong() {
    let staging = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.bucket = format!("nimbus-missing-{:08x}", rand::random::<u32>());
    let missing = crate::open_config(&config, staging.path()).unwrap();
    let err = missing.check().await.unwrap_err().to_string();
    assert!(err.contains(&config.bucket), "{err}");

    let mut config = test_config();
    config.credentials.as_mut().unwrap().secret_access_key = "wrong".into();
    let refused = crate::open_config(&config, staging.path()).unwrap();
    let err = refused.check().await.unwrap_err().to_string();
    assert!(err.contains("listing s3://"), "{err}");

    let url = format!(
        "s3://{}/p?endpoint={}&access_key_id=a&secret_access_key=b",
        config.bucket,
        config.endpoint.as_deref().unwrap()
    );
    let opened = crate::open(&url, staging.path()).unwrap();
    assert_eq!(opened.location(), format!("s3://{}/p", config.bucket));
    assert!(crate::open("s3://x", staging.path()).is_err());
}
