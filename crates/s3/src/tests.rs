//! The S3 operations over both kinds of object bytes (`store::ObjectBytes`): files on this
//! node, and a bucket of the test S3 server (SeaweedFS, started by `.ci/run`; see
//! `store_s3::testkit`) as a cluster keeps them. The same writes, ranged reads, copies and
//! multipart uploads must answer the same bytes, and the bytes no row names any more must go.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use s3s::dto::*;
use s3s::{S3, S3Request};
use store::ObjectBytes;

use crate::ObjectStore;

/// A request as s3s hands it over once it is routed and its signature checked.
fn request<T>(input: T) -> S3Request<T> {
    S3Request {
        input,
        method: hyper::Method::GET,
        uri: hyper::Uri::from_static("/"),
        headers: hyper::HeaderMap::new(),
        extensions: hyper::http::Extensions::new(),
        credentials: None,
        region: None,
        service: None,
        trailing_headers: None,
    }
}

/// A body arriving in chunks, as from a socket.
fn body(bytes: &[u8]) -> Option<StreamingBlob> {
    let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
        .chunks(64 * 1024 + 3)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Some(StreamingBlob::wrap(futures_util::stream::iter(chunks)))
}

/// Bytes that differ at every offset (a misplaced range or part shows).
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn put(store: &ObjectStore, key: &str, bytes: &[u8]) {
    let input = PutObjectInput::builder()
        .bucket("bkt".into())
        .key(key.into())
        .body(body(bytes))
        .build()
        .unwrap();
    store.put_object(request(input)).await.unwrap();
}

async fn get(store: &ObjectStore, key: &str, range: Option<Range>) -> Vec<u8> {
    let input = GetObjectInput::builder()
        .bucket("bkt".into())
        .key(key.into())
        .range(range)
        .build()
        .unwrap();
    let out = store.get_object(request(input)).await.unwrap().output;
    let chunks: Vec<Bytes> = out
        .body
        .unwrap()
        .try_collect()
        .await
        .map_err(|e| e.to_string())
        .unwrap();
    chunks.concat()
}

async fn delete(store: &ObjectStore, key: &str) {
    let input = DeleteObjectInput::builder()
        .bucket("bkt".into())
        .key(key.into())
        .build()
        .unwrap();
    store.delete_object(request(input)).await.unwrap();
}

/// Everything the S3 API does with bytes, over `files`.
async fn writes_reads_copies_and_joins(files: Arc<dyn ObjectBytes>) {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(
        store::SqliteStore::open(&dir.path().join("db"))
            .await
            .unwrap(),
    );
    let store = ObjectStore::new(meta, files.clone(), "us-east-1");
    let bucket = CreateBucketInput::builder()
        .bucket("bkt".into())
        .build()
        .unwrap();
    store.create_bucket(request(bucket)).await.unwrap();

    put(&store, "k", b"hello world").await;
    assert_eq!(get(&store, "k", None).await, b"hello world");
    let tail = Range::Int {
        first: 6,
        last: None,
    };
    assert_eq!(get(&store, "k", Some(tail)).await, b"world");
    let suffix = Range::Suffix { length: 3 };
    assert_eq!(get(&store, "k", Some(suffix)).await, b"rld");
    put(&store, "empty", b"").await;
    assert_eq!(get(&store, "empty", None).await, b"");

    let copy = CopyObjectInput::builder()
        .bucket("bkt".into())
        .key("k2".into())
        .copy_source(CopySource::Bucket {
            bucket: "bkt".into(),
            key: "k".into(),
            version_id: None,
        })
        .build()
        .unwrap();
    store.copy_object(request(copy)).await.unwrap();
    assert_eq!(get(&store, "k2", None).await, b"hello world");
    // A replacement lets the old bytes go.
    put(&store, "k", b"replaced").await;
    assert_eq!(get(&store, "k", None).await, b"replaced");

    // A multipart upload: a part of the least size S3 allows, and a copy of a range of
    // another object as the last.
    let created = CreateMultipartUploadInput::builder()
        .bucket("bkt".into())
        .key("big".into())
        .build()
        .unwrap();
    let upload_id = store
        .create_multipart_upload(request(created))
        .await
        .unwrap()
        .output
        .upload_id
        .unwrap();
    let first = patterned(model::limits::OBJECT_PART_SIZE_BYTES_MIN as usize);
    let mut parts = Vec::new();
    let part = UploadPartInput::builder()
        .bucket("bkt".into())
        .key("big".into())
        .upload_id(upload_id.clone())
        .part_number(1)
        .body(body(&first))
        .build()
        .unwrap();
    let e_tag = store.upload_part(request(part)).await.unwrap().output.e_tag;
    parts.push(CompletedPart {
        e_tag,
        part_number: Some(1),
        ..Default::default()
    });
    let part_copy = UploadPartCopyInput::builder()
        .bucket("bkt".into())
        .key("big".into())
        .upload_id(upload_id.clone())
        .part_number(2)
        .copy_source(CopySource::Bucket {
            bucket: "bkt".into(),
            key: "k2".into(),
            version_id: None,
        })
        .copy_source_range(Some("bytes=0-4".into()))
        .build()
        .unwrap();
    let copied = store.upload_part_copy(request(part_copy)).await.unwrap();
    parts.push(CompletedPart {
        e_tag: copied.output.copy_part_result.unwrap().e_tag,
        part_number: Some(2),
        ..Default::default()
    });
    let complete = CompleteMultipartUploadInput::builder()
        .bucket("bkt".into())
        .key("big".into())
        .upload_id(upload_id)
        .multipart_upload(Some(CompletedMultipartUpload { parts: Some(parts) }))
        .build()
        .unwrap();
    store
        .complete_multipart_upload(request(complete))
        .await
        .unwrap();
    let mut expected = first.clone();
    expected.extend_from_slice(b"hello");
    assert_eq!(get(&store, "big", None).await, expected);
    let across = first.len() as u64 - 2;
    let range = Range::Int {
        first: across,
        last: Some(across + 5),
    };
    assert_eq!(
        get(&store, "big", Some(range)).await,
        &expected[across as usize..across as usize + 6]
    );

    // What no row names went: the replaced bytes and the parts. Left: k, k2, empty, big.
    assert_eq!(files.list().await.unwrap().len(), 4);
    for key in ["k", "k2", "empty", "big"] {
        delete(&store, key).await;
    }
    assert!(files.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_api_over_local_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = store::ObjectFiles::open(dir.path().join("objects")).unwrap();
    writes_reads_copies_and_joins(Arc::new(files)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_api_over_s3() {
    let staging = tempfile::tempdir().unwrap();
    let stores = store_s3::open_config(&store_s3::testkit::config(), staging.path()).unwrap();
    writes_reads_copies_and_joins(stores.objects).await;
}
