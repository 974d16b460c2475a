//! `ObjectMeta` on PostgreSQL: the object store's buckets, objects, multipart uploads and
//! parts, the bucket-event outbox, and the buckets' notification and website configuration,
//! shared by every node.
//!
//! SQLite has one writer, so a write there can trust what it read. Here each write locks
//! the rows its reads stand on, always in one order (a bucket's row, an upload's, a part's
//! or an object's, the outbox's counter), so two nodes never wait on each other in a cycle:
//! - A write into a bucket (an object, a completed upload, notification rules) holds the
//!   bucket's row `FOR KEY SHARE`; the bucket's deletion locks it `FOR UPDATE`, so it waits
//!   for those writes and they for it: it never removes a bucket that was just written into.
//! - A new upload holds its bucket's row `FOR NO KEY UPDATE`, so the uploads of one bucket
//!   are counted against `uploads_max` one at a time while objects are still written.
//! - A new bucket locks the table against other writers of buckets: no row stands for the
//!   count of buckets, and buckets are made rarely (reads and objects' writes go on).
//! - A part holds its upload's row `FOR KEY SHARE`; completing, aborting or deleting the
//!   bucket locks that row `FOR UPDATE` before reading the parts, so no part slips in after
//!   the parts were read and its blob is always answered.

use std::collections::HashSet;

use async_trait::async_trait;
use model::bucket::Website;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use store::objects::{
    BucketRecord, LIST_BATCH_ROWS, ListFrom, ListPage, ListQuery, Listing, NewObjectEvent,
    ObjectChange, ObjectError, ObjectEvent, ObjectMeta, ObjectRecord, PartRecord, UploadRecord,
    attrs_json, checksums_json, parse_attrs, parse_checksums, parse_website, website_json,
};
use store::{DatabaseFault, StoreError};

use crate::PgStore;

/// The columns `object_from_row` reads (a macro, so queries stay literal strings).
macro_rules! object_columns {
    () => {
        "bucket, key, blob_id, size_bytes, etag, modified_ms, attrs"
    };
}

/// How often a write that lost the race to make a row tries again before answering busy:
/// another transaction made the row first and a third deleted it before it could be read.
/// Each try follows another node's commit, so a few always suffice outside of a storm.
const ROW_RACES_MAX: usize = 8;

fn object_from_row(row: &PgRow) -> Result<ObjectRecord, ObjectError> {
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

fn upload_from_row(row: &PgRow) -> Result<UploadRecord, ObjectError> {
    Ok(UploadRecord {
        upload_id: row.try_get("upload_id")?,
        bucket: row.try_get("bucket")?,
        key: row.try_get("key")?,
        created_at_ms: row.try_get("created_at_ms")?,
        attrs: parse_attrs(row.try_get("attrs")?)?,
    })
}

fn part_from_row(row: &PgRow) -> Result<PartRecord, ObjectError> {
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

fn bucket_from_row(row: &PgRow) -> Result<BucketRecord, ObjectError> {
    Ok(BucketRecord {
        name: row.try_get("name")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// Splits a bound at its first NUL: the bytes before it, and whether there was one.
/// PostgreSQL's text cannot hold NUL, so a listing's prefix or marker or an upload id that
/// came from a request with one cannot be bound as it is. No stored name, key or id holds
/// NUL (`model` refuses them), so against every stored value such a bound is equal to none,
/// and greater than a value exactly when its bytes before the NUL are greater or equal.
fn before_nul(bound: &str) -> (&str, bool) {
    match bound.find('\0') {
        Some(at) => (&bound[..at], true),
        None => (bound, false),
    }
}

/// How a write holds a bucket's row (see the module's comment).
#[derive(Clone, Copy)]
enum BucketLock {
    /// Writing into the bucket: only its deletion waits.
    KeyShare,
    /// Counting its uploads: other counts of the bucket wait.
    NoKeyUpdate,
    /// Deleting it: everything written into it waits.
    Update,
}

/// Locks the bucket's row for the rest of the transaction; false when there is no bucket.
async fn lock_bucket(
    conn: &mut PgConnection,
    bucket: &str,
    lock: BucketLock,
) -> Result<bool, ObjectError> {
    let sql = match lock {
        BucketLock::KeyShare => "SELECT 1 FROM buckets WHERE name = $1 FOR KEY SHARE",
        BucketLock::NoKeyUpdate => "SELECT 1 FROM buckets WHERE name = $1 FOR NO KEY UPDATE",
        BucketLock::Update => "SELECT 1 FROM buckets WHERE name = $1 FOR UPDATE",
    };
    Ok(sqlx::query(sql)
        .bind(bucket)
        .fetch_optional(conn)
        .await?
        .is_some())
}

async fn bucket_exists(conn: &mut PgConnection, bucket: &str) -> Result<bool, ObjectError> {
    Ok(sqlx::query("SELECT 1 FROM buckets WHERE name = $1")
        .bind(bucket)
        .fetch_optional(conn)
        .await?
        .is_some())
}

/// Locks an upload's row for the rest of the transaction, so its parts stay as read; false
/// when there is no such upload.
async fn lock_upload(conn: &mut PgConnection, upload_id: &str) -> Result<bool, ObjectError> {
    Ok(
        sqlx::query("SELECT 1 FROM uploads WHERE upload_id = $1 FOR UPDATE")
            .bind(upload_id)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// Removes a locked upload and its parts; answers the parts' blobs.
async fn drop_upload(conn: &mut PgConnection, upload_id: &str) -> Result<Vec<String>, ObjectError> {
    let blobs =
        sqlx::query_scalar("DELETE FROM upload_parts WHERE upload_id = $1 RETURNING blob_id")
            .bind(upload_id)
            .fetch_all(&mut *conn)
            .await?;
    sqlx::query("DELETE FROM uploads WHERE upload_id = $1")
        .bind(upload_id)
        .execute(&mut *conn)
        .await?;
    Ok(blobs)
}

fn busy(what: &str) -> ObjectError {
    ObjectError::Store(StoreError::Database {
        fault: DatabaseFault::Busy,
        message: format!("{what}: other writers kept making and removing the row"),
    })
}

/// Sets the object's row to `o`; answers the blob the row held before, if there was one.
async fn upsert_object(
    conn: &mut PgConnection,
    o: &ObjectRecord,
) -> Result<Option<String>, ObjectError> {
    for _ in 0..ROW_RACES_MAX {
        // The row's newest version, locked: nothing replaces it between this read and the
        // write, so the blob read is the one let go of, answered to this change alone.
        let previous: Option<String> = sqlx::query_scalar(
            "SELECT blob_id FROM objects WHERE bucket = $1 AND key = $2 FOR UPDATE",
        )
        .bind(&o.bucket)
        .bind(&o.key)
        .fetch_optional(&mut *conn)
        .await?;
        if previous.is_some() {
            sqlx::query(
                "UPDATE objects SET blob_id = $3, size_bytes = $4, etag = $5, modified_ms = $6,
                 attrs = $7 WHERE bucket = $1 AND key = $2",
            )
            .bind(&o.bucket)
            .bind(&o.key)
            .bind(&o.blob_id)
            .bind(o.size_bytes as i64)
            .bind(&o.etag)
            .bind(o.modified_ms)
            .bind(attrs_json(&o.attrs))
            .execute(&mut *conn)
            .await?;
            return Ok(previous);
        }
        // No row: make it, unless another transaction made it first (its commit is waited
        // for); then that row is read and replaced on the next turn.
        let made = sqlx::query(
            "INSERT INTO objects (bucket, key, blob_id, size_bytes, etag, modified_ms, attrs)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (bucket, key) DO NOTHING",
        )
        .bind(&o.bucket)
        .bind(&o.key)
        .bind(&o.blob_id)
        .bind(o.size_bytes as i64)
        .bind(&o.etag)
        .bind(o.modified_ms)
        .bind(attrs_json(&o.attrs))
        .execute(&mut *conn)
        .await?;
        if made.rows_affected() == 1 {
            return Ok(None);
        }
    }
    Err(busy(&format!("object `{}`", o.key)))
}

/// Sets the part's row; answers the blob of the part it replaced. The caller holds the
/// upload's row, so the part's row, once there, stays until this transaction ends.
async fn upsert_part(
    conn: &mut PgConnection,
    part: &PartRecord,
) -> Result<Option<String>, ObjectError> {
    for _ in 0..ROW_RACES_MAX {
        let previous: Option<String> = sqlx::query_scalar(
            "SELECT blob_id FROM upload_parts WHERE upload_id = $1 AND part_number = $2
             FOR UPDATE",
        )
        .bind(&part.upload_id)
        .bind(part.part_number)
        .fetch_optional(&mut *conn)
        .await?;
        if previous.is_some() {
            sqlx::query(
                "UPDATE upload_parts SET blob_id = $3, size_bytes = $4, etag = $5,
                 modified_ms = $6, checksums = $7 WHERE upload_id = $1 AND part_number = $2",
            )
            .bind(&part.upload_id)
            .bind(part.part_number)
            .bind(&part.blob_id)
            .bind(part.size_bytes as i64)
            .bind(&part.etag)
            .bind(part.modified_ms)
            .bind(checksums_json(&part.checksums))
            .execute(&mut *conn)
            .await?;
            return Ok(previous);
        }
        let made = sqlx::query(
            "INSERT INTO upload_parts (upload_id, part_number, blob_id, size_bytes, etag,
                modified_ms, checksums)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (upload_id, part_number) DO NOTHING",
        )
        .bind(&part.upload_id)
        .bind(part.part_number)
        .bind(&part.blob_id)
        .bind(part.size_bytes as i64)
        .bind(&part.etag)
        .bind(part.modified_ms)
        .bind(checksums_json(&part.checksums))
        .execute(&mut *conn)
        .await?;
        if made.rows_affected() == 1 {
            return Ok(None);
        }
    }
    Err(busy(&format!("part {}", part.part_number)))
}

/// Swaps the object's row inside the caller's transaction; answers the blob it held before
/// that nothing refers to any more, and whether there was an object before.
async fn apply_change(
    conn: &mut PgConnection,
    change: &ObjectChange,
) -> Result<(Option<String>, bool), ObjectError> {
    let bucket = match change {
        ObjectChange::Put(o) => &o.bucket,
        ObjectChange::Delete { bucket, .. } => bucket,
    };
    if !lock_bucket(&mut *conn, bucket, BucketLock::KeyShare).await? {
        return Err(ObjectError::NoSuchBucket(bucket.clone()));
    }
    match change {
        ObjectChange::Put(o) => {
            let previous = upsert_object(conn, o).await?;
            let existed = previous.is_some();
            // A copy onto itself keeps its blob: nothing is let go.
            Ok((previous.filter(|p| *p != o.blob_id), existed))
        }
        ObjectChange::Delete { bucket, key } => {
            // The row's newest version: of two deletes at once, the second deletes nothing.
            let previous: Option<String> = sqlx::query_scalar(
                "DELETE FROM objects WHERE bucket = $1 AND key = $2 RETURNING blob_id",
            )
            .bind(bucket)
            .bind(key)
            .fetch_optional(conn)
            .await?;
            let existed = previous.is_some();
            Ok((previous, existed))
        }
    }
}

/// Writes the change's bucket events into the outbox inside the change's transaction, last:
/// their numbers come from the counter's row, which stays locked until the commit, so
/// numbers follow commits. A delete of a key that was not there changed nothing and tells
/// nothing.
async fn write_events(
    conn: &mut PgConnection,
    change: &ObjectChange,
    existed: bool,
    events: &[NewObjectEvent],
) -> Result<(), ObjectError> {
    let (bucket, key, size, etag) = match change {
        ObjectChange::Put(o) => (&o.bucket, &o.key, Some(o.size_bytes as i64), Some(&o.etag)),
        ObjectChange::Delete { .. } if !existed => return Ok(()),
        ObjectChange::Delete { bucket, key } => (bucket, key, None, None),
    };
    if events.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let at_ms: Vec<i64> = events.iter().map(|e| e.at_ms).collect();
    let nodes: Vec<&str> = events.iter().map(|e| e.node.as_str()).collect();
    let lineage: Vec<i64> = events.iter().map(|e| i64::from(e.lineage)).collect();
    sqlx::query(
        "WITH counter AS (UPDATE object_event_seq SET last = last + $1 RETURNING last)
         INSERT INTO object_events (seq, bucket, key, event, size_bytes, etag, at_ms, node,
            lineage)
         SELECT counter.last - $1 + e.n, $2, $3, e.event, $4, $5, e.at_ms, e.node, e.lineage
         FROM counter, UNNEST($6::text[], $7::bigint[], $8::text[], $9::bigint[])
            WITH ORDINALITY AS e (event, at_ms, node, lineage, n)",
    )
    .bind(events.len() as i64)
    .bind(bucket)
    .bind(key)
    .bind(size)
    .bind(etag)
    .bind(&names)
    .bind(&at_ms)
    .bind(&nodes)
    .bind(&lineage)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl ObjectMeta for PgStore {
    async fn create_bucket(
        &self,
        name: &str,
        now_ms: i64,
        buckets_max: usize,
    ) -> Result<(), ObjectError> {
        let mut tx = self.pool.begin().await?;
        // No row stands for the count: other makers and removers of buckets wait instead,
        // while reads and the locks of objects' writes (row locks) go on.
        sqlx::query("LOCK TABLE buckets IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        if bucket_exists(&mut tx, name).await? {
            return Err(ObjectError::BucketExists(name.into()));
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM buckets")
            .fetch_one(&mut *tx)
            .await?;
        if count as usize >= buckets_max {
            return Err(ObjectError::too_many_buckets(count));
        }
        sqlx::query("INSERT INTO buckets (name, created_at_ms) VALUES ($1, $2)")
            .bind(name)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn bucket(&self, name: &str) -> Result<Option<BucketRecord>, ObjectError> {
        sqlx::query("SELECT name, created_at_ms FROM buckets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(bucket_from_row)
            .transpose()
    }

    async fn list_buckets(&self) -> Result<Vec<BucketRecord>, ObjectError> {
        let rows = sqlx::query("SELECT name, created_at_ms FROM buckets ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(bucket_from_row).collect()
    }

    async fn delete_bucket(&self, name: &str) -> Result<Vec<String>, ObjectError> {
        let mut tx = self.pool.begin().await?;
        if !lock_bucket(&mut tx, name, BucketLock::Update).await? {
            return Err(ObjectError::NoSuchBucket(name.into()));
        }
        let any = sqlx::query("SELECT 1 FROM objects WHERE bucket = $1 LIMIT 1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if any.is_some() {
            return Err(ObjectError::BucketNotEmpty(name.into()));
        }
        // Its uploads in progress are aborted with it, locked in id order first so a part
        // being put is waited for and its blob answered here.
        let uploads: Vec<String> = sqlx::query_scalar(
            "SELECT upload_id FROM uploads WHERE bucket = $1 ORDER BY upload_id FOR UPDATE",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        let mut blobs = Vec::new();
        for upload_id in &uploads {
            blobs.extend(drop_upload(&mut tx, upload_id).await?);
        }
        // Its notification rules go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM buckets WHERE name = $1")
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
            " FROM objects WHERE bucket = $1 AND key = $2"
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
        let mut tx = self.pool.begin().await?;
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
        if before_nul(query.prefix).1 {
            return Ok(ListPage::default());
        }
        let mut listing = Listing::new(query);
        while let Some(from) = listing.next_batch() {
            let rows = match &from {
                ListFrom::Prefix => sqlx::query(concat!(
                    "SELECT ",
                    object_columns!(),
                    " FROM objects WHERE bucket = $1 AND key >= $2 ORDER BY key LIMIT $3"
                ))
                .bind(bucket)
                .bind(query.prefix),
                ListFrom::After(key) => sqlx::query(concat!(
                    "SELECT ",
                    object_columns!(),
                    " FROM objects WHERE bucket = $1 AND key > $2 ORDER BY key LIMIT $3"
                ))
                .bind(bucket)
                .bind(before_nul(key).0),
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
        let mut tx = self.pool.begin().await?;
        if !lock_bucket(&mut tx, &upload.bucket, BucketLock::NoKeyUpdate).await? {
            return Err(ObjectError::NoSuchBucket(upload.bucket.clone()));
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE bucket = $1")
            .bind(&upload.bucket)
            .fetch_one(&mut *tx)
            .await?;
        if count as usize >= uploads_max {
            return Err(ObjectError::too_many_uploads(&upload.bucket, count));
        }
        sqlx::query(
            "INSERT INTO uploads (upload_id, bucket, key, created_at_ms, attrs)
             VALUES ($1, $2, $3, $4, $5)",
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
        if [bucket, key, upload_id].iter().any(|s| before_nul(s).1) {
            return Err(ObjectError::NoSuchUpload(upload_id.into()));
        }
        let row = sqlx::query(
            "SELECT upload_id, bucket, key, created_at_ms, attrs FROM uploads
             WHERE upload_id = $1 AND bucket = $2 AND key = $3",
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
        let mut tx = self.pool.begin().await?;
        // Held to the commit: the upload is not completed or aborted around this part.
        let live = sqlx::query("SELECT 1 FROM uploads WHERE upload_id = $1 FOR KEY SHARE")
            .bind(&part.upload_id)
            .fetch_optional(&mut *tx)
            .await?;
        if live.is_none() {
            // Aborted or completed while the part was uploading.
            return Err(ObjectError::NoSuchUpload(part.upload_id.clone()));
        }
        let previous = upsert_part(&mut tx, part).await?;
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
            "SELECT upload_id, part_number, blob_id, size_bytes, etag, modified_ms, checksums
             FROM upload_parts WHERE upload_id = $1 AND part_number > $2
             ORDER BY part_number LIMIT $3",
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
        if before_nul(prefix).1 {
            return Ok(Vec::new());
        }
        let (key_after, id_after) = after.unwrap_or(("", ""));
        let (key_after, key_had_nul) = before_nul(key_after);
        // A key marker with NUL is equal to no key: NULL leaves out the uploads of its
        // bytes before the NUL (`upload_id > NULL` is never true).
        let id_after = (!key_had_nul).then_some(before_nul(id_after).0);
        let rows = sqlx::query(
            "SELECT upload_id, bucket, key, created_at_ms, attrs FROM uploads
             WHERE bucket = $1 AND starts_with(key, $2)
             AND (key > $3 OR (key = $3 AND upload_id > $4))
             ORDER BY key, upload_id LIMIT $5",
        )
        .bind(bucket)
        .bind(prefix)
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
        let mut tx = self.pool.begin().await?;
        // The bucket's row before the upload's, the order a bucket's deletion takes them
        // in; a missing bucket is answered by `apply_change`, after a missing upload.
        lock_bucket(&mut tx, &object.bucket, BucketLock::KeyShare).await?;
        if !lock_upload(&mut tx, upload_id).await? {
            return Err(ObjectError::NoSuchUpload(upload_id.into()));
        }
        let mut released = drop_upload(&mut tx, upload_id).await?;
        let change = ObjectChange::Put(Box::new(object));
        released.extend(apply_change(&mut tx, &change).await?.0);
        write_events(&mut tx, &change, true, events).await?;
        tx.commit().await?;
        Ok(released)
    }

    async fn abort_upload(&self, upload_id: &str) -> Result<Vec<String>, ObjectError> {
        let mut tx = self.pool.begin().await?;
        if !lock_upload(&mut tx, upload_id).await? {
            return Err(ObjectError::NoSuchUpload(upload_id.into()));
        }
        let blobs = drop_upload(&mut tx, upload_id).await?;
        tx.commit().await?;
        Ok(blobs)
    }

    async fn referenced_blobs(&self) -> Result<HashSet<String>, ObjectError> {
        // One statement, one snapshot: a blob moving from a part to an object is seen once.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT blob_id FROM objects UNION SELECT blob_id FROM upload_parts",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().collect())
    }

    async fn pending_object_events(
        &self,
        node: &str,
        stale_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<ObjectEvent>, ObjectError> {
        let rows = sqlx::query(
            "SELECT seq, bucket, key, event, size_bytes, etag, at_ms, node, lineage
             FROM object_events WHERE node = $1 OR at_ms < $2 ORDER BY seq LIMIT $3",
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

    async fn delete_object_events(&self, seqs: &[i64]) -> Result<(), ObjectError> {
        if seqs.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM object_events WHERE seq = ANY($1)")
            .bind(seqs)
            .execute(&self.pool)
            .await?;
        Ok(())
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
        let mut tx = self.pool.begin().await?;
        if !lock_bucket(&mut tx, bucket, BucketLock::KeyShare).await? {
            return Err(ObjectError::NoSuchBucket(bucket.into()));
        }
        match rules {
            Some(rules) => {
                sqlx::query(
                    "INSERT INTO bucket_notifications (bucket, rules) VALUES ($1, $2)
                     ON CONFLICT (bucket) DO UPDATE SET rules = excluded.rules",
                )
                .bind(bucket)
                .bind(rules)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM bucket_notifications WHERE bucket = $1")
                    .bind(bucket)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn bucket_website(&self, bucket: &str) -> Result<Option<Website>, ObjectError> {
        let row: Option<Option<String>> =
            sqlx::query_scalar("SELECT website FROM buckets WHERE name = $1")
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
        let done = sqlx::query("UPDATE buckets SET website = $1 WHERE name = $2")
            .bind(text)
            .bind(bucket)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ObjectError::NoSuchBucket(bucket.into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The contract every `ObjectMeta` keeps (`store::testkit::objects`), on PostgreSQL.

    crate::testing::contract!(
        objects;
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
