//! The object store's metadata behind a trait (`ObjectMeta`): buckets, objects, multipart
//! uploads and their parts, with the SQLite implementation. The bytes are files of
//! `object_files` named by a `blob_id`; a row names its file only once that file is durable.
//!
//! Every change of an object (put, copy, complete, delete) is one call, `commit_object`,
//! one transaction that swaps the object's row and answers the blob the change let go of
//! (for the caller to remove). It takes the change's bucket events too, `NewObjectEvent`:
//! the outbox rows of issue 17's bucket events go into that same transaction, so an event
//! is committed exactly when its object is. No event exists yet (the type has no values),
//! so nothing is written for them today.

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

fn attrs_json(attrs: &ObjectAttrs) -> String {
    serde_json::to_string(attrs).expect("attributes serialize")
}

fn parse_attrs(text: &str) -> Result<ObjectAttrs, ObjectError> {
    serde_json::from_str(text)
        .map_err(|e| ObjectError::Store(StoreError::Corrupt(format!("object attributes: {e}"))))
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
    let checksums: String = row.try_get("checksums")?;
    Ok(PartRecord {
        upload_id: row.try_get("upload_id")?,
        part_number: row.try_get("part_number")?,
        blob_id: row.try_get("blob_id")?,
        size_bytes: row.try_get::<i64, _>("size_bytes")? as u64,
        etag: row.try_get("etag")?,
        modified_ms: row.try_get("modified_ms")?,
        checksums: serde_json::from_str(&checksums)
            .map_err(|e| ObjectError::Store(StoreError::Corrupt(format!("part checksums: {e}"))))?,
    })
}

/// The columns `object_from_row` reads (a macro, so queries stay literal strings).
macro_rules! object_columns {
    () => {
        "bucket, key, blob_id, size_bytes, etag, modified_ms, attrs"
    };
}

/// How many rows a listing reads from the database at a time while it rolls keys up into
/// common prefixes.
const LIST_BATCH_ROWS: i64 = 1000;

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
            return Err(ObjectError::TooMany(format!(
                "this node holds {count} buckets, its limit; delete one first"
            )));
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
        let mut page = ListPage::default();
        if query.max_keys == 0 {
            return Ok(page);
        }
        // The scan starts at the later of the prefix and the marker; keys are read in
        // batches and rolled up here, and a common prefix is skipped past in one step.
        let mut cursor: String = match query.after {
            Some(a) if a >= query.prefix => a.to_string(),
            _ => String::new(),
        };
        let mut inclusive_prefix = query.after.is_none_or(|a| a < query.prefix);
        let mut last_prefix: Option<String> = query.after.map(str::to_string);
        let mut count = 0usize;
        loop {
            let rows = if inclusive_prefix {
                sqlx::query(concat!(
                    "SELECT ",
                    object_columns!(),
                    " FROM objects WHERE bucket = ? AND key >= ? ORDER BY key LIMIT ?"
                ))
                .bind(bucket)
                .bind(query.prefix)
                .bind(LIST_BATCH_ROWS)
                .fetch_all(&mut *conn)
                .await?
            } else {
                sqlx::query(concat!(
                    "SELECT ",
                    object_columns!(),
                    " FROM objects WHERE bucket = ? AND key > ? ORDER BY key LIMIT ?"
                ))
                .bind(bucket)
                .bind(&cursor)
                .bind(LIST_BATCH_ROWS)
                .fetch_all(&mut *conn)
                .await?
            };
            inclusive_prefix = false;
            let batch_len = rows.len();
            let mut skipped_to: Option<String> = None;
            for row in &rows {
                let key: String = row.try_get("key")?;
                cursor = key.clone();
                if !key.starts_with(query.prefix) {
                    if key.as_str() > query.prefix {
                        return Ok(page);
                    }
                    continue;
                }
                let rolled = query.delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                    key[query.prefix.len()..]
                        .find(d)
                        .map(|at| key[..query.prefix.len() + at + d.len()].to_string())
                });
                match rolled {
                    Some(cp) => {
                        // Keys under a prefix already given (or the marker itself) add nothing.
                        if last_prefix.as_deref().is_some_and(|l| l >= cp.as_str()) {
                            continue;
                        }
                        if count == query.max_keys {
                            page.next_after = last_prefix;
                            return Ok(page);
                        }
                        count += 1;
                        last_prefix = Some(cp.clone());
                        page.common_prefixes.push(cp.clone());
                        // Every further key under it rolls into it: skip past them all.
                        skipped_to = Some(format!("{cp}{}", char::MAX));
                        break;
                    }
                    None => {
                        if count == query.max_keys {
                            page.next_after = last_prefix;
                            return Ok(page);
                        }
                        count += 1;
                        last_prefix = Some(key.clone());
                        page.objects.push(object_from_row(row)?);
                    }
                }
            }
            if let Some(to) = skipped_to {
                cursor = to;
                continue;
            }
            if batch_len < LIST_BATCH_ROWS as usize {
                return Ok(page);
            }
        }
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
            return Err(ObjectError::TooMany(format!(
                "bucket `{}` has {count} multipart uploads in progress, its limit; complete or abort some first",
                upload.bucket
            )));
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
        .bind(serde_json::to_string(&part.checksums).expect("checksums serialize"))
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
            Some(Some(text)) => serde_json::from_str(&text).map(Some).map_err(|e| {
                ObjectError::Store(StoreError::Corrupt(format!("bucket website: {e}")))
            }),
        }
    }

    async fn set_bucket_website(
        &self,
        bucket: &str,
        website: Option<&Website>,
    ) -> Result<(), ObjectError> {
        let text = website.map(|w| serde_json::to_string(w).expect("a website serializes"));
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
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        (dir, store)
    }

    fn object(bucket: &str, key: &str, blob: &str) -> ObjectRecord {
        ObjectRecord {
            bucket: bucket.into(),
            key: key.into(),
            blob_id: blob.into(),
            size_bytes: 3,
            etag: "e".into(),
            modified_ms: 1,
            attrs: ObjectAttrs {
                content_type: Some("text/plain".into()),
                user_metadata: [("a".to_string(), "b".to_string())].into(),
                ..Default::default()
            },
        }
    }

    async fn put(s: &SqliteStore, bucket: &str, key: &str, blob: &str) -> Option<String> {
        s.commit_object(ObjectChange::Put(Box::new(object(bucket, key, blob))), &[])
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn buckets_are_made_listed_bounded_and_deleted_only_empty() {
        let (_d, s) = store().await;
        s.create_bucket("b1", 5, 2).await.unwrap();
        assert!(matches!(
            s.create_bucket("b1", 6, 2).await,
            Err(ObjectError::BucketExists(_))
        ));
        s.create_bucket("b2", 6, 2).await.unwrap();
        assert!(matches!(
            s.create_bucket("b3", 7, 2).await,
            Err(ObjectError::TooMany(_))
        ));
        let names: Vec<_> = s
            .list_buckets()
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["b1", "b2"]);
        assert_eq!(s.bucket("b1").await.unwrap().unwrap().created_at_ms, 5);

        put(&s, "b1", "k", "1").await;
        assert!(matches!(
            s.delete_bucket("b1").await,
            Err(ObjectError::BucketNotEmpty(_))
        ));
        // An upload in progress does not keep a bucket: it is aborted with it.
        let up = UploadRecord {
            upload_id: "u1".into(),
            bucket: "b2".into(),
            key: "k".into(),
            created_at_ms: 1,
            attrs: ObjectAttrs::default(),
        };
        s.create_upload(&up, 10).await.unwrap();
        s.put_part(&part("u1", 1, "p1")).await.unwrap();
        assert_eq!(s.delete_bucket("b2").await.unwrap(), ["p1"]);
        assert!(matches!(
            s.delete_bucket("b2").await,
            Err(ObjectError::NoSuchBucket(_))
        ));
        assert!(s.referenced_blobs().await.unwrap().contains("1"));
        assert!(!s.referenced_blobs().await.unwrap().contains("p1"));
    }

    #[tokio::test]
    async fn a_change_swaps_the_row_and_lets_go_of_the_old_blob() {
        let (_d, s) = store().await;
        assert!(matches!(
            s.commit_object(ObjectChange::Put(Box::new(object("nope", "k", "1"))), &[])
                .await,
            Err(ObjectError::NoSuchBucket(_))
        ));
        s.create_bucket("b", 1, 10).await.unwrap();
        assert_eq!(put(&s, "b", "k", "1").await, None);
        assert_eq!(s.object("b", "k").await.unwrap(), object("b", "k", "1"));
        assert_eq!(put(&s, "b", "k", "2").await.as_deref(), Some("1"));
        // A copy onto itself keeps its blob.
        assert_eq!(put(&s, "b", "k", "2").await, None);
        let gone = s
            .commit_object(
                ObjectChange::Delete {
                    bucket: "b".into(),
                    key: "k".into(),
                },
                &[],
            )
            .await
            .unwrap();
        assert_eq!(gone.as_deref(), Some("2"));
        assert!(matches!(
            s.object("b", "k").await,
            Err(ObjectError::NoSuchKey(_))
        ));
        assert!(matches!(
            s.object("x", "k").await,
            Err(ObjectError::NoSuchBucket(_))
        ));
    }

    fn keys(page: &ListPage) -> Vec<&str> {
        page.objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[tokio::test]
    async fn listings_roll_up_prefixes_and_page() {
        let (_d, s) = store().await;
        s.create_bucket("b", 1, 10).await.unwrap();
        for k in ["a", "b/1", "b/2", "b/3/x", "c", "d/1", "e"] {
            put(&s, "b", k, "1").await;
        }
        let q = |prefix, delimiter, after, max_keys| ListQuery {
            prefix,
            delimiter,
            after,
            max_keys,
        };
        let all = s.list_objects("b", &q("", None, None, 1000)).await.unwrap();
        assert_eq!(keys(&all).len(), 7);
        assert_eq!(all.next_after, None);

        let top = s
            .list_objects("b", &q("", Some("/"), None, 1000))
            .await
            .unwrap();
        assert_eq!(keys(&top), ["a", "c", "e"]);
        assert_eq!(top.common_prefixes, ["b/", "d/"]);

        // Pages of two: a common prefix counts as one entry, and the marker skips it.
        let p1 = s
            .list_objects("b", &q("", Some("/"), None, 2))
            .await
            .unwrap();
        assert_eq!(
            (keys(&p1), p1.common_prefixes.clone()),
            (vec!["a"], vec!["b/".to_string()])
        );
        assert_eq!(p1.next_after.as_deref(), Some("b/"));
        let p2 = s
            .list_objects("b", &q("", Some("/"), Some("b/"), 2))
            .await
            .unwrap();
        assert_eq!(keys(&p2), ["c"]);
        assert_eq!(p2.common_prefixes, ["d/"]);
        let p3 = s
            .list_objects("b", &q("", Some("/"), Some("d/"), 2))
            .await
            .unwrap();
        assert_eq!(keys(&p3), ["e"]);
        assert_eq!(p3.next_after, None);

        let under = s
            .list_objects("b", &q("b/", Some("/"), None, 1000))
            .await
            .unwrap();
        assert_eq!(keys(&under), ["b/1", "b/2"]);
        assert_eq!(under.common_prefixes, ["b/3/"]);
        let after = s
            .list_objects("b", &q("b/", None, Some("b/1"), 1000))
            .await
            .unwrap();
        assert_eq!(keys(&after), ["b/2", "b/3/x"]);
        let none = s
            .list_objects("b", &q("zz", None, None, 1000))
            .await
            .unwrap();
        assert!(none.objects.is_empty());
        assert!(matches!(
            s.list_objects("x", &q("", None, None, 1)).await,
            Err(ObjectError::NoSuchBucket(_))
        ));
    }

    #[tokio::test]
    async fn a_listing_pages_through_more_than_a_batch() {
        let (_d, s) = store().await;
        s.create_bucket("b", 1, 10).await.unwrap();
        for i in 0..2500 {
            put(&s, "b", &format!("k/{i:05}"), "1").await;
            if i % 2 == 0 {
                put(&s, "b", &format!("p{i:05}/x"), "1").await;
            }
        }
        let mut seen = 0;
        let mut prefixes = 0;
        let mut after: Option<String> = None;
        loop {
            let page = s
                .list_objects(
                    "b",
                    &ListQuery {
                        prefix: "",
                        delimiter: Some("/"),
                        after: after.as_deref(),
                        max_keys: 300,
                    },
                )
                .await
                .unwrap();
            seen += page.objects.len();
            prefixes += page.common_prefixes.len();
            match page.next_after {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!((seen, prefixes), (0, 1 + 1250));
    }

    fn part(upload: &str, n: i32, blob: &str) -> PartRecord {
        PartRecord {
            upload_id: upload.into(),
            part_number: n,
            blob_id: blob.into(),
            size_bytes: 5,
            etag: format!("e{n}"),
            modified_ms: 1,
            checksums: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn uploads_collect_parts_and_complete_into_an_object_at_once() {
        let (_d, s) = store().await;
        s.create_bucket("b", 1, 10).await.unwrap();
        let up = |id: &str, key: &str| UploadRecord {
            upload_id: id.into(),
            bucket: "b".into(),
            key: key.into(),
            created_at_ms: 1,
            attrs: ObjectAttrs::default(),
        };
        s.create_upload(&up("u1", "k"), 2).await.unwrap();
        s.create_upload(&up("u2", "j"), 2).await.unwrap();
        assert!(matches!(
            s.create_upload(&up("u3", "k"), 2).await,
            Err(ObjectError::TooMany(_))
        ));
        assert!(matches!(
            s.upload("b", "other", "u1").await,
            Err(ObjectError::NoSuchUpload(_))
        ));
        assert_eq!(s.put_part(&part("u1", 2, "p2")).await.unwrap(), None);
        assert_eq!(s.put_part(&part("u1", 1, "p1")).await.unwrap(), None);
        assert_eq!(
            s.put_part(&part("u1", 1, "p1b")).await.unwrap().as_deref(),
            Some("p1")
        );
        let parts = s.list_parts("u1", 0, 10).await.unwrap();
        assert_eq!(
            parts.iter().map(|p| p.blob_id.as_str()).collect::<Vec<_>>(),
            ["p1b", "p2"]
        );
        assert_eq!(s.list_parts("u1", 1, 10).await.unwrap().len(), 1);
        let listed = s.list_uploads("b", "", None, 10).await.unwrap();
        assert_eq!(
            listed.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
            ["j", "k"]
        );
        assert_eq!(s.list_uploads("b", "k", None, 10).await.unwrap().len(), 1);
        assert_eq!(
            s.list_uploads("b", "", Some(("j", "u2")), 10)
                .await
                .unwrap()[0]
                .upload_id,
            "u1"
        );

        put(&s, "b", "k", "old").await;
        let mut released = s
            .complete_upload("u1", object("b", "k", "joined"), &[])
            .await
            .unwrap();
        released.sort();
        assert_eq!(released, ["old", "p1b", "p2"]);
        assert_eq!(s.object("b", "k").await.unwrap().blob_id, "joined");
        assert!(matches!(
            s.complete_upload("u1", object("b", "k", "again"), &[])
                .await,
            Err(ObjectError::NoSuchUpload(_))
        ));
        assert!(matches!(
            s.put_part(&part("u1", 3, "late")).await,
            Err(ObjectError::NoSuchUpload(_))
        ));
        s.put_part(&part("u2", 1, "q1")).await.unwrap();
        assert_eq!(s.abort_upload("u2").await.unwrap(), ["q1"]);
        assert!(matches!(
            s.abort_upload("u2").await,
            Err(ObjectError::NoSuchUpload(_))
        ));
        let refs = s.referenced_blobs().await.unwrap();
        assert_eq!(refs, ["joined".to_string()].into());
    }
}

#[cfg(test)]
mod website_tests {
    use super::*;

    #[tokio::test]
    async fn a_website_is_set_read_replaced_removed_and_goes_with_its_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db")).await.unwrap();
        let site = Website {
            index_document: "index.html".into(),
            error_document: Some("404.html".into()),
        };
        assert!(matches!(
            s.bucket_website("nope").await,
            Err(ObjectError::NoSuchBucket(_))
        ));
        assert!(matches!(
            s.set_bucket_website("nope", Some(&site)).await,
            Err(ObjectError::NoSuchBucket(_))
        ));
        s.create_bucket("site", 1, 10).await.unwrap();
        assert_eq!(s.bucket_website("site").await.unwrap(), None);
        s.set_bucket_website("site", Some(&site)).await.unwrap();
        assert_eq!(s.bucket_website("site").await.unwrap(), Some(site.clone()));
        let bare = Website {
            index_document: "home.htm".into(),
            error_document: None,
        };
        s.set_bucket_website("site", Some(&bare)).await.unwrap();
        assert_eq!(s.bucket_website("site").await.unwrap(), Some(bare));
        s.set_bucket_website("site", None).await.unwrap();
        assert_eq!(s.bucket_website("site").await.unwrap(), None);
        // A bucket made again under the same name starts without one.
        s.set_bucket_website("site", Some(&site)).await.unwrap();
        s.delete_bucket("site").await.unwrap();
        s.create_bucket("site", 2, 10).await.unwrap();
        assert_eq!(s.bucket_website("site").await.unwrap(), None);
    }
}
