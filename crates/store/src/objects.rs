//! The object store's metadata behind a trait (`ObjectMeta`): buckets, objects, multipart
//! uploads and their parts, with the SQLite implementation. The bytes are files of
//! `object_files` named by a `blob_id`; a row names its file only once that file is durable.
//!
//! Every change of an object (put, copy, complete, delete) is one call, `commit_object`,
//! one transaction that swaps the object's row and answers the blob the change let go of
//! (for the caller to remove). It takes the change's bucket events too, `NewObjectEvent`:
//! their outbox rows go into that same transaction, so an event is committed exactly when
//! its object is.
//!
//! What every backend must answer alike is decided here once: the stored forms (JSON) of
//! attributes, checksums and websites, the `TooMany` answers, and a listing's rolling up
//! and paging (`Listing`), which a backend feeds with rows read in key order. The contract
//! itself is `testkit::objects`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use model::bucket::Website;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{SqliteStore, StoreError};

/// A bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRecord {
    pub name: String,
    pub created_at_ms: i64,
}

/// What is stored with an object besides its bytes: the standard headers, user metadata
/// and checksums, echoed in GET and HEAD.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAttrs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `x-amz-meta-*`, names without the prefix, lowercase.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_metadata: BTreeMap<String, String>,
    /// Checksums by algorithm (`crc32`, `crc32c`, `sha1`, `sha256`, `crc64nvme`), base64, as
    /// S3 answers them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

/// An object as stored: where its bytes are and what was stored with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRecord {
    pub bucket: String,
    pub key: String,
    /// The file of `object_files` that holds the bytes.
    pub blob_id: String,
    pub size_bytes: u64,
    /// The quoted-less ETag: the MD5 of the bytes in hex, or `md5-of-md5s-N` for N parts.
    pub etag: String,
    pub modified_ms: i64,
    pub attrs: ObjectAttrs,
}

/// One change of one object, committed by `ObjectMeta::commit_object`.
#[derive(Clone, Debug)]
pub enum ObjectChange {
    /// The object becomes `record` (created or replaced). Boxed: a record is large and a
    /// delete is not.
    Put(Box<ObjectRecord>),
    /// The object goes; deleting a missing key is no error (S3's answer is the same).
    Delete { bucket: String, key: String },
}

/// A bucket event to commit with an object's change (the outbox): the object's bucket,
/// key, size and ETag come from the change itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewObjectEvent {
    /// S3's event name without `s3:` (`ObjectCreated:Put`).
    pub event: String,
    pub at_ms: i64,
    /// The node that commits it (and delivers it at once).
    pub node: String,
    /// Hops of the call chain that made the change (loop protection).
    pub lineage: u32,
}

/// A committed bucket event waiting for delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEvent {
    /// Its place in the outbox: the order of changes, and the records' `sequencer`.
    pub seq: i64,
    pub bucket: String,
    pub key: String,
    pub event: String,
    pub size_bytes: Option<u64>,
    pub etag: Option<String>,
    pub at_ms: i64,
    pub node: String,
    pub lineage: u32,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRecord {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub created_at_ms: i64,
    /// What the object will be stored with (checksums are the parts').
    pub attrs: ObjectAttrs,
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRecord {
    pub upload_id: String,
    pub part_number: i32,
    pub blob_id: String,
    pub size_bytes: u64,
    pub etag: String,
    pub modified_ms: i64,
    pub checksums: BTreeMap<String, String>,
}

/// A page of a listing: objects and, with a delimiter, the common prefixes rolled up, in
/// key order, and where the next page starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ObjectRecord>,
    pub common_prefixes: Vec<String>,
    /// The last key or common prefix of this page, when there are more.
    pub next_after: Option<String>,
}

/// What a listing asks for.
#[derive(Clone, Debug, Default)]
pub struct ListQuery<'a> {
    pub prefix: &'a str,
    pub delimiter: Option<&'a str>,
    /// Keys (and common prefixes) after this one only.
    pub after: Option<&'a str>,
    pub max_keys: usize,
}

/// How many rows a listing reads from the database at a time while it rolls keys up into
/// common prefixes.
pub const LIST_BATCH_ROWS: usize = 1000;

/// Where a listing's next batch of rows starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListFrom {
    /// The keys at or after the query's prefix.
    Prefix,
    /// The keys after this one.
    After(String),
}

/// A listing in progress, apart from any database: the backend reads up to
/// `LIST_BATCH_ROWS` rows of the bucket in bytewise key order from where `next_batch` says,
/// gives them to `take`, and repeats until `next_batch` says nothing more; `finish` is the
/// page. Rolling keys up into common prefixes, skipping past one, and where the page ends
/// are decided here, so every backend pages alike.
pub struct Listing<'q, 'a> {
    query: &'q ListQuery<'a>,
    page: ListPage,
    next: Option<ListFrom>,
    /// The last key or common prefix given, else the marker: a page ends after it, and keys
    /// rolling up into a prefix not after it add nothing.
    last: Option<String>,
    count: usize,
}

impl<'q, 'a> Listing<'q, 'a> {
    /// A listing of `query`, nothing read yet.
    pub fn new(query: &'q ListQuery<'a>) -> Self {
        // The scan starts at the later of the prefix and the marker.
        let next = match query.after {
            _ if query.max_keys == 0 => None,
            Some(a) if a >= query.prefix => Some(ListFrom::After(a.to_string())),
            _ => Some(ListFrom::Prefix),
        };
        Listing {
            query,
            page: ListPage::default(),
            next,
            last: query.after.map(str::to_string),
            count: 0,
        }
    }

    /// Where the next batch starts; `None` once the page is done.
    pub fn next_batch(&mut self) -> Option<ListFrom> {
        self.next.take()
    }

    /// Takes a batch read from `next_batch`'s place, in key order; `key` reads a row's key
    /// and `record` the whole object (only for rows that go into the page).
    pub fn take<R>(
        &mut self,
        rows: &[R],
        key: impl Fn(&R) -> Result<String, ObjectError>,
        record: impl Fn(&R) -> Result<ObjectRecord, ObjectError>,
    ) -> Result<(), ObjectError> {
        let q = self.query;
        for row in rows {
            let key = key(row)?;
            if !key.starts_with(q.prefix) {
                if key.as_str() > q.prefix {
                    return Ok(());
                }
                continue;
            }
            let rolled = q.delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                key[q.prefix.len()..]
                    .find(d)
                    .map(|at| key[..q.prefix.len() + at + d.len()].to_string())
            });
            match rolled {
                Some(cp) => {
                    // Keys under a prefix already given (or the marker itself) add nothing.
                    if self.last.as_deref().is_some_and(|l| l >= cp.as_str()) {
                        continue;
                    }
                    if self.count == q.max_keys {
                        self.page.next_after = self.last.take();
                        return Ok(());
                    }
                    self.count += 1;
                    self.page.common_prefixes.push(cp.clone());
                    // Every further key under it rolls into it: skip past them all.
                    self.next = Some(ListFrom::After(format!("{cp}{}", char::MAX)));
                    self.last = Some(cp);
                    return Ok(());
                }
                None => {
                    if self.count == q.max_keys {
                        self.page.next_after = self.last.take();
                        return Ok(());
                    }
                    self.count += 1;
                    self.page.objects.push(record(row)?);
                    self.last = Some(key);
                }
            }
        }
        // A full batch may have more behind it.
        if rows.len() >= LIST_BATCH_ROWS
            && let Some(row) = rows.last()
        {
            self.next = Some(ListFrom::After(key(row)?));
        }
        Ok(())
    }

    /// The page so far.
    pub fn finish(self) -> ListPage {
        self.page
    }
}

/// The answers of the object store that are not faults: S3 has an error code for each.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("bucket `{0}` does not exist")]
    NoSuchBucket(String),
    #[error("bucket `{0}` already exists")]
    BucketExists(String),
    #[error("bucket `{0}` is not empty")]
    BucketNotEmpty(String),
    #[error("object `{0}` does not exist")]
    NoSuchKey(String),
    #[error("upload `{0}` does not exist (completed, aborted, or never made)")]
    NoSuchUpload(String),
    /// A bound of `model::limits` was reached.
    #[error("{0}")]
    TooMany(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ObjectError {
    /// `TooMany` for a store that holds `count` buckets, its limit.
    pub fn too_many_buckets(count: i64) -> ObjectError {
        ObjectError::TooMany(format!(
            "this node holds {count} buckets, its limit; delete one first"
        ))
    }

    /// `TooMany` for a bucket with `count` uploads in progress, its limit.
    pub fn too_many_uploads(bucket: &str, count: i64) -> ObjectError {
        ObjectError::TooMany(format!(
            "bucket `{bucket}` has {count} multipart uploads in progress, its limit; complete or abort some first"
        ))
    }
}

impl From<sqlx::Error> for ObjectError {
    fn from(e: sqlx::Error) -> ObjectError {
        ObjectError::Store(e.into())
    }
}

/// The object store's metadata. Every method is one transaction; the truth is the store's
/// (no node keeps any in memory), so nodes sharing a database share the buckets.
#[async_trait]
pub trait ObjectMeta: Send + Sync + 'static {
    /// Makes a bucket; `BucketExists`, or `TooMany` past `buckets_max`.
    async fn create_bucket(
        &self,
        name: &str,
        now_ms: i64,
        buckets_max: usize,
    ) -> Result<(), ObjectError>;
    async fn bucket(&self, name: &str) -> Result<Option<BucketRecord>, ObjectError>;
    async fn list_buckets(&self) -> Result<Vec<BucketRecord>, ObjectError>;
    /// Removes an empty bucket (`BucketNotEmpty` otherwise). Its multipart uploads in
    /// progress are aborted with it; the blobs of their parts are answered for removal.
    async fn delete_bucket(&self, name: &str) -> Result<Vec<String>, ObjectError>;

    /// The object, `NoSuchKey` (or `NoSuchBucket`).
    async fn object(&self, bucket: &str, key: &str) -> Result<ObjectRecord, ObjectError>;
    /// Commits one change of an object and its bucket events in one transaction; answers
    /// the blob the object held before, if any, which nothing refers to any more.
    async fn commit_object(
        &self,
        change: ObjectChange,
        events: &[NewObjectEvent],
    ) -> Result<Option<String>, ObjectError>;
    async fn list_objects(
        &self,
        bucket: &str,
        query: &ListQuery<'_>,
    ) -> Result<ListPage, ObjectError>;

    /// Starts a multipart upload (`TooMany` past `uploads_max` in the bucket).
    async fn create_upload(
        &self,
        upload: &UploadRecord,
        uploads_max: usize,
    ) -> Result<(), ObjectError>;
    /// The upload, `NoSuchUpload` (also when it is of another bucket or key).
    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<UploadRecord, ObjectError>;
    /// Records a part (replacing one of the same number); answers the replaced part's blob.
    async fn put_part(&self, part: &PartRecord) -> Result<Option<String>, ObjectError>;
    /// Parts after `after` in number order, at most `max`.
    async fn list_parts(
        &self,
        upload_id: &str,
        after: i32,
        max: usize,
    ) -> Result<Vec<PartRecord>, ObjectError>;
    /// Uploads in progress of a bucket in (key, upload id) order after the markers.
    async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<(&str, &str)>,
        max: usize,
    ) -> Result<Vec<UploadRecord>, ObjectError>;
    /// Ends an upload into the object `object` (its blob made of the parts) with its bucket
    /// events, in one transaction: answers the blobs nothing refers to any more (the parts'
    /// and the object's previous one).
    async fn complete_upload(
        &self,
        upload_id: &str,
        object: ObjectRecord,
        events: &[NewObjectEvent],
    ) -> Result<Vec<String>, ObjectError>;
    /// Drops an upload; answers its parts' blobs.
    async fn abort_upload(&self, upload_id: &str) -> Result<Vec<String>, ObjectError>;

    /// Every blob an object or a part refers to, for the collector: a blob on disk that
    /// nothing names is the leftover of an upload that never committed, or of a removal
    /// interrupted by a crash.
    async fn referenced_blobs(&self) -> Result<std::collections::HashSet<String>, ObjectError>;

    /// Bucket events waiting for delivery, in commit order, at most `limit`: those `node`
    /// committed, and any committed before `stale_before_ms` (a node that did not deliver
    /// its own in time has stopped).
    async fn pending_object_events(
        &self,
        node: &str,
        stale_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<ObjectEvent>, ObjectError>;
    /// Removes delivered events from the outbox.
    async fn delete_object_events(&self, seqs: &[i64]) -> Result<(), ObjectError>;
    /// Every bucket's notification rules (JSON the object trigger reads), by bucket.
    async fn bucket_notifications(&self) -> Result<Vec<(String, String)>, ObjectError>;
    /// Sets a bucket's notification rules, or (`None`) removes them; `NoSuchBucket`.
    async fn set_bucket_notifications(
        &self,
        bucket: &str,
        rules: Option<&str>,
    ) -> Result<(), ObjectError>;
    /// The bucket's website configuration (`None`: it has none); `NoSuchBucket`.
    async fn bucket_website(&self, bucket: &str) -> Result<Option<Website>, ObjectError>;
    /// Sets (`Some`) or removes (`None`) the bucket's website configuration; `NoSuchBucket`.
    async fn set_bucket_website(
        &self,
        bucket: &str,
        website: Option<&Website>,
    ) -> Result<(), ObjectError>;
}

/// An object's or upload's attributes as stored (a text column, JSON), in every backend.
pub fn attrs_json(attrs: &ObjectAttrs) -> String {
    serde_json::to_string(attrs).expect("attributes serialize")
}

/// Attributes read back from `attrs_json`'s text; anything else is a corrupt record.
pub fn parse_attrs(text: &str) -> Result<ObjectAttrs, ObjectError> {
    serde_json::from_str(text)
        .map_err(|e| ObjectError::Store(StoreError::Corrupt(format!("object attributes: {e}"))))
}

/// A part's checksums as stored (a text column, JSON), in every backend.
pub fn checksums_json(checksums: &BTreeMap<String, String>) -> String {
    serde_json::to_string(checksums).expect("checksums serialize")
}

/// Checksums read back from `checksums_json`'s text; anything else is a corrupt record.
pub fn parse_checksums(text: &str) -> Result<BTreeMap<String, String>, ObjectError> {
    serde_json::from_str(text)
        .map_err(|e| ObjectError::Store(StoreError::Corrupt(format!("part checksums: {e}"))))
}

/// A bucket's website configuration as stored (a text column, JSON), in every backend.
pub fn website_json(website: &Website) -> String {
    serde_json::to_string(website).expect("a website serializes")
}

/// A website configuration read back from `website_json`'s text; anything else is a
/// corrupt record.
pub fn parse_website(text: &str) -> Result<Website, ObjectError> {
    serde_json::from_str(text)
        .map_err(|e| ObjectError::Store(StoreError::Corrupt(format!("bucket website: {e}"))))
}

fn object_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ObjectRecord, ObjectError> {
    Ok(ObjectRecord {
        bucket: row.try_get("bucket")?,
        key: row.try_get("key")?,
        blob_id: row.try_get("blob_id")?,
        size_bytes: row.try_get::<i64, _>("size_bytes")? as u64,
        etag: row.try_get("etag")?,
        modified_ms: row.try_get("modified_ms")?,
        attrs: parse_attrs(row.try_get("attrs")?)?,
    })
}

fn upload_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<UploadRecord, ObjectError> {
    Ok(UploadRecord {
        upload_id: row.try_get("upload_id")?,
        bucket: row.try_get("bucket")?,
        key: row.try_get("key")?,
        created_at_ms: row.try_get("created_at_ms")?,
        attrs: parse_attrs(row.try_get("attrs")?)?,
    })
}

fn part_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<PartRecord, ObjectError> {
    Ok(PartRecord {
        upload_id: row.try_get("upload_id")?,
        part_number: row.try_get("part_number")?,
        blob_id: row.try_get("blob_id")?,
        size_bytes: row.try_get::<i64, _>("size_bytes")? as u64,
        etag: row.try_get("etag")?,
        modified_ms: row.try_get("modified_ms")?,
        checksums: parse_checksums(row.try_get("checksums")?)?,
    })
}

/// The columns `object_from_row` reads (a macro, so queries stay literal strings).
macro_rules! object_columns {
    () => {
        "bucket, key, blob_id, size_bytes, etag, modified_ms, attrs"
    };
}

async fn bucket_exists(
    conn: &mut sqlx::SqliteConnection,
    bucket: &str,
) -> Result<bool, ObjectError> {
    Ok(sqlx::query("SELECT 1 FROM buckets WHERE name = ?")
        .bind(bucket)
        .fetch_optional(conn)
        .await?
        .is_some())
}

/// Swaps the object's row inside `tx`; answers the blob it held before that nothing refers
/// to any more, and whether there was an object before.
async fn apply_change(
    tx: &mut sqlx::SqliteConnection,
    change: &ObjectChange,
) -> Result<(Option<String>, bool), ObjectError> {
    let (bucket, key) = match change {
        ObjectChange::Put(o) => (&o.bucket, &o.key),
        ObjectChange::Delete { bucket, key } => (bucket, key),
    };
    if !bucket_exists(&mut *tx, bucket).await? {
        return Err(ObjectError::NoSuchBucket(bucket.clone()));
    }
    let previous: Option<String> =
        sqlx::query_scalar("SELECT blob_id FROM objects WHERE bucket = ? AND key = ?")
            .bind(bucket)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
    match change {
        ObjectChange::Put(o) => {
            sqlx::query(
                "INSERT INTO objects (bucket, key, blob_id, size_bytes, etag, modified_ms, attrs) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (bucket, key) DO UPDATE SET blob_id = excluded.blob_id, \
                 size_bytes = excluded.size_bytes, etag = excluded.etag, \
                 modified_ms = excluded.modified_ms, attrs = excluded.attrs",
            )
            .bind(&o.bucket)
            .bind(&o.key)
            .bind(&o.blob_id)
            .bind(o.size_bytes as i64)
            .bind(&o.etag)
            .bind(o.modified_ms)
            .bind(attrs_json(&o.attrs))
            .execute(&mut *tx)
            .await?;
            // A copy onto itself keeps its blob: nothing is let go.
            let existed = previous.is_some();
            Ok((previous.filter(|p| *p != o.blob_id), existed))
        }
        ObjectChange::Delete { bucket, key } => {
            sqlx::query("DELETE FROM objects WHERE bucket = ? AND key = ?")
                .bind(bucket)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let existed = previous.is_some();
            Ok((previous, existed))
        }
    }
}

/// Writes the change's bucket events into the outbox inside the change's transaction. A
/// delete of a key that was not there changed nothing and tells nothing.
async fn write_events(
    tx: &mut sqlx::SqliteConnection,
    change: &ObjectChange,
    existed: bool,
    events: &[NewObjectEvent],
) -> Result<(), ObjectError> {
    let (bucket, key, size, etag) = match change {
        ObjectChange::Put(o) => (&o.bucket, &o.key, Some(o.size_bytes as i64), Some(&o.etag)),
        ObjectChange::Delete { .. } if !existed => return Ok(()),
        ObjectChange::Delete { bucket, key } => (bucket, key, None, None),
    };
    for e in events {
        sqlx::query(
            "INSERT INTO object_events (bucket, key, event, size_bytes, etag, at_ms, node, lineage) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(bucket)
        .bind(key)
        .bind(&e.event)
        .bind(size)
        .bind(etag)
        .bind(e.at_ms)
        .bind(&e.node)
        .bind(i64::from(e.lineage))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl ObjectMeta for SqliteStore {
    async fn pending_object_events(
        &self,
        node: &str,
        stale_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<ObjectEvent>, ObjectError> {
        let rows = sqlx::query(
            "SELECT seq, bucket, key, event, size_bytes, etag, at_ms, node, lineage \
             FROM object_events WHERE node = ? OR at_ms < ? ORDER BY seq LIMIT ?",
        )
        .bind(node)
        .bind(stale_before_ms)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ObjectEvent {
                    seq: r.try_get("seq")?,
                    bucket: r.try_get("bucket")?,
                    key: r.try_get("key")?,
                    event: r.try_get("event")?,
                    size_bytes: r.try_get::<Option<i64>, _>("size_bytes")?.map(|n| n as u64),
                    etag: r.try_get("etag")?,
                    at_ms: r.try_get("at_ms")?,
                    node: r.try_get("node")?,
                    lineage: r.try_get::<i64, _>("lineage")? as u32,
                })
            })
            .collect()
    }

    async fn bucket_notifications(&self) -> Result<Vec<(String, String)>, ObjectError> {
        let rows = sqlx::query("SELECT bucket, rules FROM bucket_notifications ORDER BY bucket")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("bucket")?, r.try_get("rules")?)))
            .collect()
    }

    async fn set_bucket_notifications(
        &self,
        bucket: &str,
        rules: Option<&str>,
    ) -> Result<(), ObjectError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        if !bucket_exists(&mut tx, bucket).await? {
            return Err(ObjectError::NoSuchBucket(bucket.into()));
        }
        match rules {
            Some(rules) => {
                sqlx::query(
                    "INSERT INTO bucket_notifications (bucket, rules) VALUES (?, ?) \
                     ON CONFLICT (bucket) DO UPDATE SET rules = excluded.rules",
                )
                .bind(bucket)
                .bind(rules)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM bucket_notifications WHERE bucket = ?")
                    .bind(bucket)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_object_events(&self, seqs: &[i64]) -> Result<(), ObjectError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for seq in seqs {
            sqlx::query("DELETE FROM object_events WHERE seq = ?")
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_bucket(
        &self,
        name: &str,
        now_ms: i64,
        buckets_max: usize,
    ) -> Result<(), ObjectError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        if bucket_exists(&mut tx, name).await? {
            return Err(ObjectError::BucketExists(name.into()));
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM buckets")
            .fetch_one(&mut *tx)
            .await?;
        if count as usize >= buckets_max {
            return Err(ObjectError::too_many_buckets(count));
        }
        sqlx::query("INSERT INTO buckets (name, created_at_ms) VALUES (?, ?)")
            .bind(name)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn bucket(&self, name: &str) -> Result<Option<BucketRecord>, ObjectError> {
        let row = sqlx::query("SELECT name, created_at_ms FROM buckets WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(BucketRecord {
                name: r.try_get("name")?,
                created_at_ms: r.try_get("created_at_ms")?,
            }),
            None => None,
        })
    }

    async fn list_buckets(&self) -> Result<Vec<BucketRecord>, ObjectError> {
        let rows = sqlx::query("SELECT name, created_at_ms FROM buckets ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(BucketRecord {
                    name: r.try_get("name")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    async fn delete_bucket(&self, name: &str) -> Result<Vec<String>, ObjectError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        if !bucket_exists(&mut tx, name).await? {
            return Err(ObjectError::NoSuchBucket(name.into()));
        }
        let any = sqlx::query("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if any.is_some() {
            return Err(ObjectError::BucketNotEmpty(name.into()));
        }
        let blobs: Vec<String> = sqlx::query_scalar(
            "SELECT p.blob_id FROM upload_parts p JOIN uploads u USING (upload_id) \
             WHERE u.bucket = ?",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM upload_parts WHERE upload_id IN \
             (SELECT upload_id FROM uploads WHERE bucket = ?)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM uploads WHERE bucket = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM buckets WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(blobs)
    }

    async fn object(&self, bucket: &str, key: &str) -> Result<ObjectRecord, ObjectError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            object_columns!(),
            " FROM objects WHERE bucket = ? AND key = ?"
        ))
        .bind(bucket)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => object_from_row(&row),
            None if self.bucket(bucket).await?.is_none() => {
                Err(ObjectError::NoSuchBucket(bucket.into()))
            }
            None => Err(ObjectError::NoSuchKey(key.into())),
        }
    }

    async fn commit_object(
        &self,
        change: ObjectChange,
        events: &[NewObjectEvent],
    ) -> Result<Option<String>, ObjectError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let (released, existed) = apply_change(&mut tx, &change).await?;
        write_events(&mut tx, &change, existed, events).await?;
        tx.commit().await?;
        Ok(released)
    }

    async fn list_objects(
        &self,
        bucket: &str,
        query: &ListQuery<'_>,
    ) -> Result<ListPage, ObjectError> {
        let mut conn = self.pool.acquire().await?;
        if !bucket_exists(&mut conn, bucket).await? {
            return Err(ObjectError::NoSuchBucket(bucket.into()));
        }
        let mut listing = Listing::new(query);
        while let Some(from) = listing.next_batch() {
            let rows = match &from {
                ListFrom::Prefix => sqlx::query(concat!(
                    "SELECT ",
                    object_columns!(),
                    " FROM objects WHERE bucket = ? AND key >= ? ORDER BY key LIMIT ?"
                ))
                .bind(bucket)
                .bind(query.prefix),
                ListFrom::After(key) => sqlx::query(concat!(
                    "SELECT ",
                    object_columns!(),
                    " FROM objects WHERE bucket = ? AND key > ? ORDER BY key LIMIT ?"
                ))
                .bind(bucket)
                .bind(key),
            }
            .bind(LIST_BATCH_ROWS as i64)
            .fetch_all(&mut *conn)
            .await?;
            listing.take(&rows, |r| Ok(r.try_get("key")?), object_from_row)?;
        }
        Ok(listing.finish())
    }

    async fn create_upload(
        &self,
        upload: &UploadRecord,
        uploads_max: usize,
    ) -> Result<(), ObjectError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        if !bucket_exists(&mut tx, &upload.bucket).await? {
            return Err(ObjectError::NoSuchBucket(upload.bucket.clone()));
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE bucket = ?")
            .bind(&upload.bucket)
            .fetch_one(&mut *tx)
            .await?;
        if count as usize >= uploads_max {
            return Err(ObjectError::too_many_uploads(&upload.bucket, count));
        }
        sqlx::query(
            "INSERT INTO uploads (upload_id, bucket, key, created_at_ms, attrs) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&upload.upload_id)
        .bind(&upload.bucket)
        .bind(&upload.key)
        .bind(upload.created_at_ms)
        .bind(attrs_json(&upload.attrs))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<UploadRecord, ObjectError> {
        let row = sqlx::query(
            "SELECT upload_id, bucket, key, created_at_ms, attrs FROM uploads \
             WHERE upload_id = ? AND bucket = ? AND key = ?",
        )
        .bind(upload_id)
        .bind(bucket)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => upload_from_row(&row),
            None => Err(ObjectError::NoSuchUpload(upload_id.into())),
        }
    }

    async fn put_part(&self, part: &PartRecord) -> Result<Option<String>, ObjectError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let live = sqlx::query("SELECT 1 FROM uploads WHERE upload_id = ?")
            .bind(&part.upload_id)
            .fetch_optional(&mut *tx)
            .await?;
        if live.is_none() {
            // Aborted or completed while the part was uploading.
            return Err(ObjectError::NoSuchUpload(part.upload_id.clone()));
        }
        let previous: Option<String> = sqlx::query_scalar(
            "SELECT blob_id FROM upload_parts WHERE upload_id = ? AND part_number = ?",
        )
        .bind(&part.upload_id)
        .bind(part.part_number)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO upload_parts (upload_id, part_number, blob_id, size_bytes, etag, \
             modified_ms, checksums) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (upload_id, part_number) DO UPDATE SET blob_id = excluded.blob_id, \
             size_bytes = excluded.size_bytes, etag = excluded.etag, \
             modified_ms = excluded.modified_ms, checksums = excluded.checksums",
        )
        .bind(&part.upload_id)
        .bind(part.part_number)
        .bind(&part.blob_id)
        .bind(part.size_bytes as i64)
        .bind(&part.etag)
        .bind(part.modified_ms)
        .bind(checksums_json(&part.checksums))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(previous)
    }

    async fn list_parts(
        &self,
        upload_id: &str,
        after: i32,
        max: usize,
    ) -> Result<Vec<PartRecord>, ObjectError> {
        let rows = sqlx::query(
            "SELECT upload_id, part_number, blob_id, size_bytes, etag, modified_ms, checksums \
             FROM upload_parts WHERE upload_id = ? AND part_number > ? \
             ORDER BY part_number LIMIT ?",
        )
        .bind(upload_id)
        .bind(after)
        .bind(max as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(part_from_row).collect()
    }

    async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<(&str, &str)>,
        max: usize,
    ) -> Result<Vec<UploadRecord>, ObjectError> {
        let mut conn = self.pool.acquire().await?;
        if !bucket_exists(&mut conn, bucket).await? {
            return Err(ObjectError::NoSuchBucket(bucket.into()));
        }
        let (key_after, id_after) = after.unwrap_or(("", ""));
        let rows = sqlx::query(
            "SELECT upload_id, bucket, key, created_at_ms, attrs FROM uploads \
             WHERE bucket = ? AND substr(key, 1, length(?)) = ? \
             AND (key > ? OR (key = ? AND upload_id > ?)) \
             ORDER BY key, upload_id LIMIT ?",
        )
        .bind(bucket)
        .bind(prefix)
        .bind(prefix)
        .bind(key_after)
        .bind(key_after)
        .bind(id_after)
        .bind(max as i64)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(upload_from_row).collect()
    }

    async fn complete_upload(
        &self,
        upload_id: &str,
        object: ObjectRecord,
        events: &[NewObjectEvent],
    ) -> Result<Vec<String>, ObjectError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let live = sqlx::query("SELECT 1 FROM uploads WHERE upload_id = ?")
            .bind(upload_id)
            .fetch_optional(&mut *tx)
            .await?;
        if live.is_none() {
            return Err(ObjectError::NoSuchUpload(upload_id.into()));
        }
        let mut released: Vec<String> =
            sqlx::query_scalar("SELECT blob_id FROM upload_parts WHERE upload_id = ?")
                .bind(upload_id)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM upload_parts WHERE upload_id = ?")
            .bind(upload_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM uploads WHERE upload_id = ?")
            .bind(upload_id)
            .execute(&mut *tx)
            .await?;
        let change = ObjectChange::Put(Box::new(object));
        released.extend(apply_change(&mut tx, &change).await?.0);
        write_events(&mut tx, &change, true, events).await?;
        tx.commit().await?;
        Ok(released)
    }

    async fn abort_upload(&self, upload_id: &str) -> Result<Vec<String>, ObjectError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let blobs: Vec<String> =
            sqlx::query_scalar("SELECT blob_id FROM upload_parts WHERE upload_id = ?")
                .bind(upload_id)
                .fetch_all(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM upload_parts WHERE upload_id = ?")
            .bind(upload_id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM uploads WHERE upload_id = ?")
            .bind(upload_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ObjectError::NoSuchUpload(upload_id.into()));
        }
        tx.commit().await?;
        Ok(blobs)
    }

    async fn referenced_blobs(&self) -> Result<std::collections::HashSet<String>, ObjectError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT blob_id FROM objects UNION SELECT blob_id FROM upload_parts",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().collect())
    }

    async fn bucket_website(&self, bucket: &str) -> Result<Option<Website>, ObjectError> {
        let row: Option<Option<String>> =
            sqlx::query_scalar("SELECT website FROM buckets WHERE name = ?")
                .bind(bucket)
                .fetch_optional(&self.pool)
                .await?;
        match row {
            None => Err(ObjectError::NoSuchBucket(bucket.into())),
            Some(None) => Ok(None),
            Some(Some(text)) => parse_website(&text).map(Some),
        }
    }

    async fn set_bucket_website(
        &self,
        bucket: &str,
        website: Option<&Website>,
    ) -> Result<(), ObjectError> {
        let text = website.map(website_json);
        let done = sqlx::query("UPDATE buckets SET website = ? WHERE name = ?")
            .bind(text)
            .bind(bucket)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ObjectError::NoSuchBucket(bucket.into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The contract every `ObjectMeta` keeps (`testkit::objects`), on SQLite.

    macro_rules! contract {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let tmp = tempfile::tempdir().unwrap();
                let store = crate::SqliteStore::open(&tmp.path().join("o.db")).await.unwrap();
                crate::testkit::objects::$name(&store).await;
            }
        )*};
    }

    contract!(
        buckets_are_made_listed_bounded_and_deleted_only_empty,
        a_change_swaps_the_row_and_lets_go_of_the_old_blob,
        listings_roll_up_prefixes_and_page,
        a_listing_pages_through_more_than_a_batch,
        uploads_collect_parts_and_complete_into_an_object_at_once,
        a_website_is_set_read_replaced_removed_and_goes_with_its_bucket,
        keys_order_bytewise,
        events_are_committed_with_their_change_in_order,
        notifications_are_kept_with_their_bucket,
        racing_bucket_creations_stop_at_the_limit,
        racing_changes_of_one_key_answer_each_blob_once,
        racing_uploads_stop_at_the_limit,
        racing_writes_and_a_bucket_delete_leave_nothing_behind,
        racing_parts_and_a_completion_answer_each_blob_once,
        racing_commits_number_events_in_commit_order,
    );
}
