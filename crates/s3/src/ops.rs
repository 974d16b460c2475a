//! The S3 operations over the store. Every write makes its bytes durable first and
//! then commits the object's row in one transaction (`ObjectMeta::commit_object`), which is
//! the visible swap; the bytes the change let go of are removed after the commit.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use model::limits;
use s3s::checksum::ChecksumHasher;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use store::ObjectError;
use store::objects::{
    ListQuery, ObjectAttrs, ObjectChange, ObjectRecord, PartRecord, UploadRecord,
};

use crate::ObjectStore;
use crate::body;
use crate::error::{object_error, store_error};

/// How many times a read looks its object up again when the bytes vanished under it (a
/// replacement committed and removed the old blob between the row's read and the bytes').
const READ_ATTEMPTS_MAX: usize = 3;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// HTTP dates have whole seconds: conditions compare at that precision, as S3 does.
fn seconds(ms: i64) -> Timestamp {
    timestamp(ms - ms.rem_euclid(1000))
}

fn bucket_name(name: &str) -> S3Result<()> {
    model::bucket::validate_bucket_name(name)
        .map_err(|e| S3Error::with_message(S3ErrorCode::InvalidBucketName, e.0))
}

fn object_key(key: &str) -> S3Result<()> {
    model::bucket::validate_object_key(key).map_err(|e| {
        let code = if key.len() > limits::OBJECT_KEY_BYTES_MAX {
            S3ErrorCode::KeyTooLongError
        } else {
            S3ErrorCode::InvalidArgument
        };
        S3Error::with_message(code, e.0)
    })
}

/// The stored attributes from a request's headers, bounded.
#[allow(clippy::too_many_arguments)]
fn attrs(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    metadata: Option<Metadata>,
) -> S3Result<ObjectAttrs> {
    for (name, value) in [
        ("Content-Type", &content_type),
        ("Content-Encoding", &content_encoding),
        ("Content-Disposition", &content_disposition),
        ("Content-Language", &content_language),
        ("Cache-Control", &cache_control),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.len() > limits::OBJECT_HEADER_BYTES_MAX)
        {
            return Err(s3_error!(
                InvalidArgument,
                "{name} is over {} bytes",
                limits::OBJECT_HEADER_BYTES_MAX
            ));
        }
    }
    let user_metadata: BTreeMap<String, String> = metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let size: usize = user_metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > limits::OBJECT_METADATA_BYTES_MAX {
        return Err(s3_error!(
            MetadataTooLarge,
            "user metadata is {size} bytes, over the limit of {}",
            limits::OBJECT_METADATA_BYTES_MAX
        ));
    }
    Ok(ObjectAttrs {
        content_type,
        content_encoding,
        content_disposition,
        content_language,
        cache_control,
        user_metadata,
        checksums: BTreeMap::new(),
    })
}

/// The checksums to compute for a body: those the client sent a value for (in a header or
/// announced for the trailer) and the algorithm it named.
fn hasher_for(
    headers: &hyper::HeaderMap,
    algorithm: Option<&ChecksumAlgorithm>,
) -> S3Result<ChecksumHasher> {
    let mut hasher = ChecksumHasher::default();
    let mut want = |name: &str| -> S3Result<()> {
        match name.to_ascii_lowercase().as_str() {
            "crc32" => hasher.crc32 = Some(Default::default()),
            "crc32c" => hasher.crc32c = Some(Default::default()),
            "sha1" => hasher.sha1 = Some(Default::default()),
            "sha256" => hasher.sha256 = Some(Default::default()),
            "crc64nvme" => hasher.crc64nvme = Some(Default::default()),
            other => {
                return Err(s3_error!(
                    InvalidArgument,
                    "checksum algorithm `{other}` is not one of CRC32, CRC32C, SHA1, SHA256, CRC64NVME"
                ));
            }
        }
        Ok(())
    };
    if let Some(a) = algorithm {
        want(a.as_str())?;
    }
    for (name, _) in headers {
        if let Some(alg) = name.as_str().strip_prefix("x-amz-checksum-")
            && alg != "type"
            && alg != "algorithm"
            && alg != "mode"
        {
            want(alg)?;
        }
    }
    if let Some(trailer) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
        for name in trailer.split(',') {
            if let Some(alg) = name
                .trim()
                .to_ascii_lowercase()
                .strip_prefix("x-amz-checksum-")
            {
                want(alg)?;
            }
        }
    }
    Ok(hasher)
}

/// Checks the computed checksums against what the client sent (headers, or the trailer
/// of an `aws-chunked` body, read once the body has been) and the Content-MD5; answers
/// them by algorithm for storing.
fn verify_checksums(
    req_headers: &hyper::HeaderMap,
    trailers: Option<&s3s::TrailingHeaders>,
    content_md5: Option<&str>,
    written: &body::Written,
) -> S3Result<BTreeMap<String, String>> {
    if let Some(md5) = content_md5 {
        use base64::Engine;
        let sent = base64::engine::general_purpose::STANDARD
            .decode(md5)
            .map_err(|_| s3_error!(InvalidDigest, "Content-MD5 is not base64"))?;
        if sent != written.md5 {
            return Err(s3_error!(
                BadDigest,
                "The Content-MD5 you specified did not match what we received."
            ));
        }
    }
    let c = &written.checksum;
    let computed = [
        ("crc32", &c.checksum_crc32),
        ("crc32c", &c.checksum_crc32c),
        ("sha1", &c.checksum_sha1),
        ("sha256", &c.checksum_sha256),
        ("crc64nvme", &c.checksum_crc64nvme),
    ];
    let trailer_map = trailers.and_then(|t| t.take());
    let mut stored = BTreeMap::new();
    for (alg, value) in computed {
        let Some(value) = value else { continue };
        let header = format!("x-amz-checksum-{alg}");
        let sent = req_headers
            .get(&header)
            .or_else(|| trailer_map.as_ref().and_then(|t| t.get(&header)))
            .and_then(|v| v.to_str().ok());
        if let Some(sent) = sent
            && sent != value
        {
            return Err(s3_error!(
                BadDigest,
                "The {} you specified did not match the calculated checksum ({sent} sent, {value} computed).",
                alg.to_ascii_uppercase()
            ));
        }
        stored.insert(alg.to_string(), value.clone());
    }
    Ok(stored)
}

fn set_checksums(checksums: &BTreeMap<String, String>) -> Checksum {
    let get = |k: &str| checksums.get(k).cloned();
    Checksum {
        checksum_crc32: get("crc32"),
        checksum_crc32c: get("crc32c"),
        checksum_sha1: get("sha1"),
        checksum_sha256: get("sha256"),
        checksum_crc64nvme: get("crc64nvme"),
        checksum_type: None,
    }
}

fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_string())
}

fn etag_matches(condition: &ETagCondition, etag: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

/// RFC 9110's order of the conditional headers, as S3 applies them: If-Match (412), else
/// If-Unmodified-Since (412); then If-None-Match (304 for reads), else If-Modified-Since
/// (304).
fn check_conditions(
    o: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_unmodified_since: Option<&Timestamp>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    not_modified: S3ErrorCode,
) -> S3Result<()> {
    let modified = seconds(o.modified_ms);
    if let Some(c) = if_match {
        if !etag_matches(c, &o.etag) {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold (If-Match)"
            ));
        }
    } else if let Some(t) = if_unmodified_since
        && modified > *t
    {
        return Err(s3_error!(
            PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold (If-Unmodified-Since)"
        ));
    }
    let unchanged = if let Some(c) = if_none_match {
        etag_matches(c, &o.etag)
    } else if let Some(t) = if_modified_since {
        modified <= *t
    } else {
        false
    };
    if unchanged {
        return Err(S3Error::with_message(not_modified, "Not Modified"));
    }
    Ok(())
}

/// `encoding-type=url`: S3 percent-encodes keys (and prefixes, markers, delimiters) in
/// listings so that any key survives XML. Everything but unreserved characters and `/` is
/// encoded; `+` too, since clients decode with `unquote_plus`.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The continuation token of ListObjectsV2: the last key or common prefix of the page, in
/// hex, opaque to clients as S3's are.
fn token_decode(token: &str) -> S3Result<String> {
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "The continuation token provided is incorrect"
            )
        })
}

fn max_keys(requested: Option<i32>) -> S3Result<usize> {
    match requested {
        None => Ok(limits::OBJECT_LIST_KEYS_MAX),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys may not be negative")),
        Some(n) => Ok((n as usize).min(limits::OBJECT_LIST_KEYS_MAX)),
    }
}

fn object_entry(o: &ObjectRecord, url: bool) -> Object {
    Object {
        key: Some(if url {
            url_encode(&o.key)
        } else {
            o.key.clone()
        }),
        e_tag: Some(etag(&o.etag)),
        size: Some(o.size_bytes as i64),
        last_modified: Some(timestamp(o.modified_ms)),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        ..Default::default()
    }
}

fn copy_source(source: &CopySource) -> S3Result<(&str, &str)> {
    match source {
        CopySource::Bucket { bucket, key, .. } => Ok((bucket, key)),
        _ => Err(s3_error!(
            NotImplemented,
            "only `bucket/key` copy sources are supported"
        )),
    }
}

/// `bytes=first-last` of a part copy.
fn copy_range(range: Option<&str>, size: u64) -> S3Result<(u64, u64)> {
    let Some(range) = range else {
        return Ok((0, size));
    };
    let bad = || {
        s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=first-last"
        )
    };
    let (first, last) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = first.parse().map_err(|_| bad())?;
    let last: u64 = last.parse().map_err(|_| bad())?;
    if first > last || last >= size {
        return Err(s3_error!(
            InvalidRange,
            "The requested range is not satisfiable (object of {size} bytes)"
        ));
    }
    Ok((first, last - first + 1))
}

impl ObjectStore {
    /// The bucket events to commit with a change (none when no rule takes it).
    fn events_for(
        &self,
        bucket: &str,
        key: &str,
        event: &str,
        headers: &hyper::HeaderMap,
    ) -> Vec<store::objects::NewObjectEvent> {
        match &self.events {
            Some(events) => events.for_change(bucket, key, event, lineage(headers)),
            None => Vec::new(),
        }
    }

    /// Events were committed: their deliverer starts at once.
    fn committed(&self, events: &[store::objects::NewObjectEvent]) {
        if let (Some(e), false) = (&self.events, events.is_empty()) {
            e.committed();
        }
    }

    async fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        match self.meta.bucket(bucket).await.map_err(object_error)? {
            Some(_) => Ok(()),
            None => Err(object_error(ObjectError::NoSuchBucket(bucket.into()))),
        }
    }

    /// Commits a new object whose blob is durable; removes the blob it replaced. If the
    /// commit fails, the new blob is removed.
    /// `event` names the change for bucket events (`ObjectCreated:Put`); `headers` are the
    /// request's (their trace id carries a calling function's lineage).
    async fn commit_put(
        &self,
        record: ObjectRecord,
        event: &str,
        headers: &hyper::HeaderMap,
    ) -> S3Result<()> {
        let blob = record.blob_id.clone();
        let events = self.events_for(&record.bucket, &record.key, event, headers);
        match self
            .meta
            .commit_object(ObjectChange::Put(Box::new(record)), &events)
            .await
        {
            Ok(released) => {
                self.committed(&events);
                if let Some(old) = released {
                    self.release(vec![old]).await;
                }
                Ok(())
            }
            Err(e) => {
                self.release(vec![blob]).await;
                Err(object_error(e))
            }
        }
    }

    /// Removes blobs that nothing refers to any more (what fails here the collector finds).
    async fn release(&self, blobs: Vec<String>) {
        self.files.remove(&blobs).await;
    }

    /// A new blob holding `len` bytes of `source` from `offset`, and their MD5.
    async fn copy_bytes(
        &self,
        source: &ObjectRecord,
        offset: u64,
        len: u64,
    ) -> S3Result<(String, [u8; 16])> {
        let written = body::copy(&self.files, &source.blob_id, offset, len).await?;
        let md5 = written.md5;
        Ok((written.finish().await?, md5))
    }
}

#[async_trait::async_trait]
impl S3 for ObjectStore {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let name = &req.input.bucket;
        bucket_name(name)?;
        self.meta
            .create_bucket(name, now_ms(), limits::BUCKETS_MAX)
            .await
            .map_err(object_error)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{name}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let released = self
            .meta
            .delete_bucket(&req.input.bucket)
            .await
            .map_err(object_error)?;
        self.release(released).await;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.require_bucket(&req.input.bucket).await?;
        // us-east-1 is answered as an empty constraint, as S3 does.
        let location = (self.region != "us-east-1")
            .then(|| BucketLocationConstraint::from(self.region.clone()));
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: location,
        }))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self.meta.list_buckets().await.map_err(object_error)?;
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(
                buckets
                    .into_iter()
                    .map(|b| Bucket {
                        name: Some(b.name),
                        creation_date: Some(timestamp(b.created_at_ms)),
                        bucket_region: Some(self.region.clone()),
                    })
                    .collect(),
            ),
            owner: Some(Owner {
                display_name: Some("nimbus".into()),
                id: Some("nimbus".into()),
            }),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let S3Request {
            input,
            headers,
            trailing_headers,
            ..
        } = req;
        object_key(&input.key)?;
        if input
            .content_length
            .is_some_and(|n| n as u64 > limits::OBJECT_PUT_SIZE_BYTES_MAX)
        {
            return Err(s3_error!(
                EntityTooLarge,
                "Your proposed upload exceeds the maximum allowed size ({} bytes); use a multipart upload",
                limits::OBJECT_PUT_SIZE_BYTES_MAX
            ));
        }
        let mut attrs = attrs(
            input.content_type,
            input.content_encoding,
            input.content_disposition,
            input.content_language,
            input.cache_control,
            input.metadata,
        )?;
        self.require_bucket(&input.bucket).await?;
        if input.if_none_match.is_some() || input.if_match.is_some() {
            let current = match self.meta.object(&input.bucket, &input.key).await {
                Ok(o) => Some(o),
                Err(ObjectError::NoSuchKey(_)) => None,
                Err(e) => return Err(object_error(e)),
            };
            if let (Some(ETagCondition::Any), Some(_)) = (&input.if_none_match, &current) {
                return Err(s3_error!(PreconditionFailed, "the object already exists"));
            }
            if let Some(c) = &input.if_match
                && !current.as_ref().is_some_and(|o| etag_matches(c, &o.etag))
            {
                return Err(s3_error!(
                    PreconditionFailed,
                    "the object's ETag does not match"
                ));
            }
        }
        let hasher = hasher_for(&headers, input.checksum_algorithm.as_ref())?;
        let written = body::write(
            &self.files,
            input.body,
            limits::OBJECT_PUT_SIZE_BYTES_MAX,
            hasher,
        )
        .await?;
        attrs.checksums = verify_checksums(
            &headers,
            trailing_headers.as_ref(),
            input.content_md5.as_deref(),
            &written,
        )?;
        let etag_value = written.etag();
        let size_bytes = written.sink.size_bytes();
        let blob_id = written.finish().await?;
        let output = PutObjectOutput {
            e_tag: Some(etag(&etag_value)),
            size: Some(size_bytes as i64),
            ..set_checksum_output(&attrs.checksums)
        };
        self.commit_put(
            ObjectRecord {
                bucket: input.bucket,
                key: input.key,
                blob_id,
                size_bytes,
                etag: etag_value,
                modified_ms: now_ms(),
                attrs,
            },
            "ObjectCreated:Put",
            &headers,
        )
        .await?;
        Ok(S3Response::new(output))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        if input.part_number.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "GET by part number is not supported"
            ));
        }
        // The row, its conditions and the range, then its bytes. A reader that lost the
        // race with a replacement (the row it read was swapped and the old blob removed)
        // reads the row again.
        let mut attempt = 0;
        let (o, bytes, len, content_range) = loop {
            attempt += 1;
            let o = self
                .meta
                .object(&input.bucket, &input.key)
                .await
                .map_err(object_error)?;
            check_conditions(
                &o,
                input.if_match.as_ref(),
                input.if_unmodified_since.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                S3ErrorCode::NotModified,
            )?;
            let size = o.size_bytes;
            let (start, len, content_range) = match &input.range {
                None => (0, size, None),
                Some(range) => {
                    let r = range.check(size).map_err(|_| {
                        s3_error!(
                            InvalidRange,
                            "The requested range is not satisfiable (object of {size} bytes)"
                        )
                    })?;
                    (
                        r.start,
                        r.end - r.start,
                        Some(format!("bytes {}-{}/{size}", r.start, r.end - 1)),
                    )
                }
            };
            match self.files.read(&o.blob_id, start, len).await {
                Ok(Some(bytes)) => break (o, bytes, len, content_range),
                Ok(None) if attempt < READ_ATTEMPTS_MAX => continue,
                Ok(None) => {
                    return Err(s3_error!(
                        SlowDown,
                        "the object kept changing while it was read; try again"
                    ));
                }
                Err(e) => return Err(store_error(e)),
            }
        };
        // Checksums are of the whole object: S3 sends them only for a whole-object read
        // that asked for them.
        let checksums = if content_range.is_none()
            && input
                .checksum_mode
                .as_ref()
                .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED)
        {
            set_checksums(&o.attrs.checksums)
        } else {
            Checksum::default()
        };
        let a = o.attrs;
        let output = GetObjectOutput {
            body: Some(body::read(bytes)),
            content_length: Some(len as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            last_modified: Some(timestamp(o.modified_ms)),
            e_tag: Some(etag(&o.etag)),
            metadata: (!a.user_metadata.is_empty()).then(|| a.user_metadata.into_iter().collect()),
            content_type: input
                .response_content_type
                .or(a.content_type)
                .or_else(|| Some("binary/octet-stream".into())),
            content_encoding: input.response_content_encoding.or(a.content_encoding),
            content_disposition: input.response_content_disposition.or(a.content_disposition),
            content_language: input.response_content_language.or(a.content_language),
            cache_control: input.response_cache_control.or(a.cache_control),
            checksum_crc32: checksums.checksum_crc32,
            checksum_crc32c: checksums.checksum_crc32c,
            checksum_sha1: checksums.checksum_sha1,
            checksum_sha256: checksums.checksum_sha256,
            checksum_crc64nvme: checksums.checksum_crc64nvme,
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let o = self
            .meta
            .object(&input.bucket, &input.key)
            .await
            .map_err(object_error)?;
        check_conditions(
            &o,
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            S3ErrorCode::NotModified,
        )?;
        let (len, content_range) = match &input.range {
            None => (o.size_bytes, None),
            Some(range) => {
                let r = range.check(o.size_bytes).map_err(|_| {
                    s3_error!(InvalidRange, "The requested range is not satisfiable")
                })?;
                (
                    r.end - r.start,
                    Some(format!("bytes {}-{}/{}", r.start, r.end - 1, o.size_bytes)),
                )
            }
        };
        let checksums = if input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED)
        {
            set_checksums(&o.attrs.checksums)
        } else {
            Checksum::default()
        };
        let a = o.attrs;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(len as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            last_modified: Some(timestamp(o.modified_ms)),
            e_tag: Some(etag(&o.etag)),
            metadata: (!a.user_metadata.is_empty()).then(|| a.user_metadata.into_iter().collect()),
            content_type: a
                .content_type
                .or_else(|| Some("binary/octet-stream".into())),
            content_encoding: a.content_encoding,
            content_disposition: a.content_disposition,
            content_language: a.content_language,
            cache_control: a.cache_control,
            checksum_crc32: checksums.checksum_crc32,
            checksum_crc32c: checksums.checksum_crc32c,
            checksum_sha1: checksums.checksum_sha1,
            checksum_sha256: checksums.checksum_sha256,
            checksum_crc64nvme: checksums.checksum_crc64nvme,
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let (input, headers) = (req.input, req.headers);
        let events = self.events_for(&input.bucket, &input.key, "ObjectRemoved:Delete", &headers);
        let released = self
            .meta
            .commit_object(
                ObjectChange::Delete {
                    bucket: input.bucket,
                    key: input.key,
                },
                &events,
            )
            .await
            .map_err(object_error)?;
        self.committed(&events);
        self.release(released.into_iter().collect()).await;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let (input, headers) = (req.input, req.headers);
        let wanted = input.delete.objects;
        if wanted.len() > limits::OBJECT_DELETE_KEYS_MAX {
            return Err(s3_error!(
                MalformedXML,
                "a DeleteObjects request may name at most {} keys",
                limits::OBJECT_DELETE_KEYS_MAX
            ));
        }
        self.require_bucket(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        let mut released = Vec::new();
        for o in wanted {
            let change = ObjectChange::Delete {
                bucket: input.bucket.clone(),
                key: o.key.clone(),
            };
            let events = self.events_for(&input.bucket, &o.key, "ObjectRemoved:Delete", &headers);
            match self.meta.commit_object(change, &events).await {
                Ok(blob) => {
                    self.committed(&events);
                    released.extend(blob);
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(o.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => {
                    let e = object_error(e);
                    errors.push(Error {
                        code: Some(e.code().as_str().to_string()),
                        message: e.message().map(str::to_string),
                        key: Some(o.key),
                        version_id: None,
                    });
                }
            }
        }
        self.release(released).await;
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    /// Bucket events the AWS way: `LambdaFunctionConfigurations` naming Nimbus functions
    /// (their ARNs, or names). Queues and topics are not Nimbus's to send to.
    async fn put_bucket_notification_configuration(
        &self,
        req: S3Request<PutBucketNotificationConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketNotificationConfigurationOutput>> {
        let input = req.input;
        self.require_bucket(&input.bucket).await?;
        let Some(events) = &self.events else {
            return Err(s3_error!(
                NotImplemented,
                "bucket events are off on this server"
            ));
        };
        let config = input.notification_configuration;
        if config.queue_configurations.is_some_and(|q| !q.is_empty())
            || config.topic_configurations.is_some_and(|t| !t.is_empty())
            || config.event_bridge_configuration.is_some()
        {
            return Err(s3_error!(
                InvalidArgument,
                "only LambdaFunctionConfigurations are supported: name Nimbus functions; queues, topics and EventBridge are not"
            ));
        }
        let mut rules = Vec::new();
        for c in config.lambda_function_configurations.unwrap_or_default() {
            rules.push(crate::events::rule_of(
                &input.bucket,
                c.id,
                &c.lambda_function_arn,
                c.events.iter().map(|e| e.as_ref().to_string()).collect(),
                c.filter
                    .and_then(|f| f.key)
                    .and_then(|k| k.filter_rules)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| {
                        (
                            r.name.map(|n| n.as_str().to_string()).unwrap_or_default(),
                            r.value.unwrap_or_default(),
                        )
                    })
                    .collect(),
            )?);
        }
        events
            .configure(&input.bucket, rules)
            .await
            .map_err(|e| match e {
                crate::events::ConfigError::Invalid(m) => s3_error!(InvalidArgument, "{m}"),
                crate::events::ConfigError::Object(e) => object_error(e),
                crate::events::ConfigError::Store(m) => s3_error!(ServiceUnavailable, "{m}"),
            })?;
        Ok(S3Response::new(
            PutBucketNotificationConfigurationOutput::default(),
        ))
    }

    async fn get_bucket_notification_configuration(
        &self,
        req: S3Request<GetBucketNotificationConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketNotificationConfigurationOutput>> {
        let bucket = req.input.bucket;
        self.require_bucket(&bucket).await?;
        let Some(events) = &self.events else {
            return Ok(S3Response::new(
                GetBucketNotificationConfigurationOutput::default(),
            ));
        };
        let rules = events.configured(&bucket);
        let configs: Vec<LambdaFunctionConfiguration> = rules
            .iter()
            .map(|r| {
                let mut filter_rules = Vec::new();
                for (name, value) in [("prefix", &r.spec.prefix), ("suffix", &r.spec.suffix)] {
                    if !value.is_empty() {
                        filter_rules.push(FilterRule {
                            name: Some(FilterRuleName::from(name.to_string())),
                            value: Some(value.clone()),
                        });
                    }
                }
                LambdaFunctionConfiguration {
                    events: r
                        .spec
                        .event_names()
                        .iter()
                        .map(|e| Event::from(e.to_string()))
                        .collect(),
                    filter: (!filter_rules.is_empty()).then_some(NotificationConfigurationFilter {
                        key: Some(S3KeyFilter {
                            filter_rules: Some(filter_rules),
                        }),
                    }),
                    id: Some(r.spec.name().to_string()),
                    lambda_function_arn: events.function_arn(&r.function),
                }
            })
            .collect();
        Ok(S3Response::new(GetBucketNotificationConfigurationOutput {
            lambda_function_configurations: (!configs.is_empty()).then_some(configs),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let (input, headers) = (req.input, req.headers);
        object_key(&input.key)?;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let source = self
            .meta
            .object(src_bucket, src_key)
            .await
            .map_err(object_error)?;
        check_conditions(
            &source,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            S3ErrorCode::PreconditionFailed,
        )?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let same = src_bucket == input.bucket && src_key == input.key;
        if same && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        if source.size_bytes > limits::OBJECT_PUT_SIZE_BYTES_MAX {
            return Err(s3_error!(
                InvalidRequest,
                "The specified copy source is larger than the maximum allowable size for a copy source: {}",
                limits::OBJECT_PUT_SIZE_BYTES_MAX
            ));
        }
        let mut attrs = if replace {
            attrs(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.content_language,
                input.cache_control,
                input.metadata,
            )?
        } else {
            source.attrs.clone()
        };
        // The bytes are the same, so are their checksums.
        attrs.checksums = source.attrs.checksums.clone();
        self.require_bucket(&input.bucket).await?;
        // Onto itself only the attributes change: the blob stays.
        let blob_id = if same {
            source.blob_id.clone()
        } else {
            self.copy_bytes(&source, 0, source.size_bytes).await?.0
        };
        let modified_ms = now_ms();
        let result = CopyObjectResult {
            e_tag: Some(etag(&source.etag)),
            last_modified: Some(timestamp(modified_ms)),
            ..Default::default()
        };
        self.commit_put(
            ObjectRecord {
                bucket: input.bucket,
                key: input.key,
                blob_id,
                size_bytes: source.size_bytes,
                etag: source.etag,
                modified_ms,
                attrs,
            },
            "ObjectCreated:Copy",
            &headers,
        )
        .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(result),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let max = max_keys(input.max_keys)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let page = self
            .meta
            .list_objects(
                &input.bucket,
                &ListQuery {
                    prefix: &prefix,
                    delimiter: input.delimiter.as_deref(),
                    after: input.marker.as_deref().filter(|m| !m.is_empty()),
                    max_keys: max,
                },
            )
            .await
            .map_err(object_error)?;
        let enc = |s: String| if url { url_encode(&s) } else { s };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(prefix)),
            marker: Some(enc(input.marker.unwrap_or_default())),
            max_keys: Some(max as i32),
            is_truncated: Some(page.next_after.is_some()),
            next_marker: page.next_after.map(enc),
            contents: Some(page.objects.iter().map(|o| object_entry(o, url)).collect()),
            common_prefixes: Some(
                page.common_prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            delimiter: input.delimiter.map(enc),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let max = max_keys(input.max_keys)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let token = match &input.continuation_token {
            Some(t) => Some(token_decode(t)?),
            None => None,
        };
        // The token, when given, is where the last page ended: past StartAfter.
        let after = token
            .clone()
            .or_else(|| input.start_after.clone().filter(|s| !s.is_empty()));
        let page = self
            .meta
            .list_objects(
                &input.bucket,
                &ListQuery {
                    prefix: &prefix,
                    delimiter: input.delimiter.as_deref(),
                    after: after.as_deref(),
                    max_keys: max,
                },
            )
            .await
            .map_err(object_error)?;
        let enc = |s: String| if url { url_encode(&s) } else { s };
        let key_count = (page.objects.len() + page.common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(prefix)),
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(page.next_after.is_some()),
            next_continuation_token: page.next_after.map(|n| hex::encode(n.as_bytes())),
            contents: Some(page.objects.iter().map(|o| object_entry(o, url)).collect()),
            common_prefixes: Some(
                page.common_prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(enc(p)),
                    })
                    .collect(),
            ),
            delimiter: input.delimiter.map(enc),
            encoding_type: input.encoding_type,
            start_after: input.start_after.map(enc),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        object_key(&input.key)?;
        let attrs = attrs(
            input.content_type,
            input.content_encoding,
            input.content_disposition,
            input.content_language,
            input.cache_control,
            input.metadata,
        )?;
        let upload_id = format!("{:032x}", rand_u128());
        let upload = UploadRecord {
            upload_id: upload_id.clone(),
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            created_at_ms: now_ms(),
            attrs,
        };
        match self
            .meta
            .create_upload(&upload, limits::OBJECT_UPLOADS_PER_BUCKET_MAX)
            .await
        {
            Ok(()) => {}
            Err(ObjectError::TooMany(why)) => {
                return Err(S3Error::with_message(S3ErrorCode::InvalidRequest, why));
            }
            Err(e) => return Err(object_error(e)),
        }
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            checksum_algorithm: input.checksum_algorithm,
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let S3Request {
            input,
            headers,
            trailing_headers,
            ..
        } = req;
        part_number(input.part_number)?;
        if input
            .content_length
            .is_some_and(|n| n as u64 > limits::OBJECT_PART_SIZE_BYTES_MAX)
        {
            return Err(s3_error!(
                EntityTooLarge,
                "a part may hold at most {} bytes",
                limits::OBJECT_PART_SIZE_BYTES_MAX
            ));
        }
        self.meta
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        let hasher = hasher_for(&headers, input.checksum_algorithm.as_ref())?;
        let written = body::write(
            &self.files,
            input.body,
            limits::OBJECT_PART_SIZE_BYTES_MAX,
            hasher,
        )
        .await?;
        let checksums = verify_checksums(
            &headers,
            trailing_headers.as_ref(),
            input.content_md5.as_deref(),
            &written,
        )?;
        let etag_value = written.etag();
        let size_bytes = written.sink.size_bytes();
        let blob_id = written.finish().await?;
        let part = PartRecord {
            upload_id: input.upload_id,
            part_number: input.part_number,
            blob_id: blob_id.clone(),
            size_bytes,
            etag: etag_value.clone(),
            modified_ms: now_ms(),
            checksums: checksums.clone(),
        };
        match self.meta.put_part(&part).await {
            Ok(replaced) => self.release(replaced.into_iter().collect()).await,
            Err(e) => {
                self.release(vec![blob_id]).await;
                return Err(object_error(e));
            }
        }
        let c = set_checksums(&checksums);
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&etag_value)),
            checksum_crc32: c.checksum_crc32,
            checksum_crc32c: c.checksum_crc32c,
            checksum_sha1: c.checksum_sha1,
            checksum_sha256: c.checksum_sha256,
            checksum_crc64nvme: c.checksum_crc64nvme,
            ..Default::default()
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        part_number(input.part_number)?;
        self.meta
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let source = self
            .meta
            .object(src_bucket, src_key)
            .await
            .map_err(object_error)?;
        check_conditions(
            &source,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            S3ErrorCode::PreconditionFailed,
        )?;
        let (offset, len) = copy_range(input.copy_source_range.as_deref(), source.size_bytes)?;
        if len > limits::OBJECT_PART_SIZE_BYTES_MAX {
            return Err(s3_error!(
                EntityTooLarge,
                "a part may hold at most {} bytes",
                limits::OBJECT_PART_SIZE_BYTES_MAX
            ));
        }
        let (blob_id, md5) = self.copy_bytes(&source, offset, len).await?;
        let etag_value = hex::encode(md5);
        let modified_ms = now_ms();
        let part = PartRecord {
            upload_id: input.upload_id,
            part_number: input.part_number,
            blob_id: blob_id.clone(),
            size_bytes: len,
            etag: etag_value.clone(),
            modified_ms,
            checksums: BTreeMap::new(),
        };
        match self.meta.put_part(&part).await {
            Ok(replaced) => self.release(replaced.into_iter().collect()).await,
            Err(e) => {
                self.release(vec![blob_id]).await;
                return Err(object_error(e));
            }
        }
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(etag(&etag_value)),
                last_modified: Some(timestamp(modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        use s3s::crypto::{Checksum as _, Md5};
        let input = req.input;
        let upload = self
            .meta
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        let wanted = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if wanted.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema: no parts"
            ));
        }
        let stored = self
            .meta
            .list_parts(&upload.upload_id, 0, limits::OBJECT_PARTS_MAX as usize)
            .await
            .map_err(object_error)?;
        let by_number: std::collections::HashMap<i32, &PartRecord> =
            stored.iter().map(|p| (p.part_number, p)).collect();
        // S3's order of checks: the list's order, then each part's presence and ETag, then
        // the sizes.
        let mut last = 0;
        for w in &wanted {
            let n = w
                .part_number
                .ok_or_else(|| s3_error!(InvalidPart, "a part without a PartNumber"))?;
            if n <= last {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "The list of parts was not in ascending order. The parts list must be specified in order by part number."
                ));
            }
            last = n;
        }
        let mut chosen: Vec<&PartRecord> = Vec::with_capacity(wanted.len());
        for w in &wanted {
            let n = w.part_number.unwrap_or_default();
            let part = by_number.get(&n).ok_or_else(|| {
                s3_error!(
                    InvalidPart,
                    "One or more of the specified parts could not be found: part {n} was not uploaded"
                )
            })?;
            if let Some(e) = &w.e_tag
                && e.value() != part.etag
            {
                return Err(s3_error!(
                    InvalidPart,
                    "One or more of the specified parts could not be found: part {n}'s ETag does not match"
                ));
            }
            chosen.push(part);
        }
        for part in &chosen[..chosen.len() - 1] {
            if part.size_bytes < limits::OBJECT_PART_SIZE_BYTES_MIN {
                return Err(s3_error!(
                    EntityTooSmall,
                    "Your proposed upload is smaller than the minimum allowed object size: part {} is {} bytes, parts but the last need {}",
                    part.part_number,
                    part.size_bytes,
                    limits::OBJECT_PART_SIZE_BYTES_MIN
                ));
            }
        }
        let size_bytes: u64 = chosen.iter().map(|p| p.size_bytes).sum();
        if size_bytes > limits::OBJECT_SIZE_BYTES_MAX {
            return Err(s3_error!(
                EntityTooLarge,
                "the object would be {size_bytes} bytes, over {}",
                limits::OBJECT_SIZE_BYTES_MAX
            ));
        }
        // The ETag of a multipart object: the MD5 of the parts' MD5s, dash, their count.
        let mut md5 = Md5::new();
        for p in &chosen {
            md5.update(&hex::decode(&p.etag).map_err(|_| {
                store_error(store::StoreError::Corrupt(format!("part ETag {}", p.etag)))
            })?);
        }
        let etag_value = format!("{}-{}", hex::encode(md5.finalize()), chosen.len());
        // The object's bytes: the parts joined into one blob (by the kernel, on a local disk).
        let sources: Vec<(String, u64)> = chosen
            .iter()
            .map(|p| (p.blob_id.clone(), p.size_bytes))
            .collect();
        let files = self.files.clone();
        let blob_id = tokio::task::spawn_blocking(move || {
            let mut sink = files.create()?;
            for (blob_id, len) in sources {
                sink.append_blob(&blob_id, 0, len)?;
            }
            sink.finish()
        })
        .await
        .map_err(S3Error::internal_error)?
        .map_err(store_error)?;
        let record = ObjectRecord {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            blob_id: blob_id.clone(),
            size_bytes,
            etag: etag_value.clone(),
            modified_ms: now_ms(),
            attrs: upload.attrs,
        };
        let events = self.events_for(
            &record.bucket,
            &record.key,
            "ObjectCreated:CompleteMultipartUpload",
            &req.headers,
        );
        match self
            .meta
            .complete_upload(&upload.upload_id, record, &events)
            .await
        {
            Ok(released) => {
                self.committed(&events);
                self.release(released).await
            }
            Err(e) => {
                self.release(vec![blob_id]).await;
                return Err(object_error(e));
            }
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(etag(&etag_value)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.meta
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        let released = self
            .meta
            .abort_upload(&input.upload_id)
            .await
            .map_err(object_error)?;
        self.release(released).await;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.meta
            .upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(object_error)?;
        let max = input.max_parts.map_or(1000, |n| n.clamp(0, 1000) as usize);
        let marker = input.part_number_marker.unwrap_or(0);
        // One more than asked tells whether there are more.
        let mut parts = self
            .meta
            .list_parts(&input.upload_id, marker, max + 1)
            .await
            .map_err(object_error)?;
        let truncated = parts.len() > max;
        parts.truncate(max);
        let next = parts.last().map(|p| p.part_number);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: truncated.then_some(next).flatten(),
            is_truncated: Some(truncated),
            parts: Some(
                parts
                    .into_iter()
                    .map(|p| {
                        let c = set_checksums(&p.checksums);
                        Part {
                            part_number: Some(p.part_number),
                            e_tag: Some(etag(&p.etag)),
                            size: Some(p.size_bytes as i64),
                            last_modified: Some(timestamp(p.modified_ms)),
                            checksum_crc32: c.checksum_crc32,
                            checksum_crc32c: c.checksum_crc32c,
                            checksum_sha1: c.checksum_sha1,
                            checksum_sha256: c.checksum_sha256,
                            checksum_crc64nvme: c.checksum_crc64nvme,
                        }
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let max = input
            .max_uploads
            .map_or(1000, |n| n.clamp(0, 1000) as usize);
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = input
            .key_marker
            .as_deref()
            .map(|k| (k, input.upload_id_marker.as_deref().unwrap_or("")));
        let mut uploads = self
            .meta
            .list_uploads(&input.bucket, &prefix, after, max + 1)
            .await
            .map_err(object_error)?;
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let last = uploads.last().map(|u| (u.key.clone(), u.upload_id.clone()));
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: truncated.then(|| last.clone().map(|l| l.0)).flatten(),
            next_upload_id_marker: truncated.then(|| last.map(|l| l.1)).flatten(),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|u| MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(u.upload_id),
                        initiated: Some(timestamp(u.created_at_ms)),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn put_bucket_website(
        &self,
        req: S3Request<PutBucketWebsiteInput>,
    ) -> S3Result<S3Response<PutBucketWebsiteOutput>> {
        let input = req.input;
        self.put_website(&input.bucket, input.website_configuration)
            .await?;
        Ok(S3Response::new(PutBucketWebsiteOutput {}))
    }

    async fn get_bucket_website(
        &self,
        req: S3Request<GetBucketWebsiteInput>,
    ) -> S3Result<S3Response<GetBucketWebsiteOutput>> {
        Ok(S3Response::new(self.get_website(&req.input.bucket).await?))
    }

    async fn delete_bucket_website(
        &self,
        req: S3Request<DeleteBucketWebsiteInput>,
    ) -> S3Result<S3Response<DeleteBucketWebsiteOutput>> {
        self.delete_website(&req.input.bucket).await?;
        Ok(S3Response::new(DeleteBucketWebsiteOutput {}))
    }
}

fn part_number(n: i32) -> S3Result<()> {
    if !(1..=limits::OBJECT_PARTS_MAX).contains(&n) {
        return Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and {}, inclusive",
            limits::OBJECT_PARTS_MAX
        ));
    }
    Ok(())
}

fn set_checksum_output(checksums: &BTreeMap<String, String>) -> PutObjectOutput {
    let c = set_checksums(checksums);
    PutObjectOutput {
        checksum_crc32: c.checksum_crc32,
        checksum_crc32c: c.checksum_crc32c,
        checksum_sha1: c.checksum_sha1,
        checksum_sha256: c.checksum_sha256,
        checksum_crc64nvme: c.checksum_crc64nvme,
        ..Default::default()
    }
}

fn rand_u128() -> u128 {
    // Upload ids are capabilities of a sort (they name an upload to add parts to), so they
    // are random, not counters.
    u128::from_be_bytes(*uuid::Uuid::new_v4().as_bytes())
}

/// The hop count a request's trace id carries (`X-Amzn-Trace-Id: Root=…;Lineage=nimbus:3`,
/// sent by the AWS SDKs inside a function): 0 for a request from outside any chain.
fn lineage(headers: &hyper::HeaderMap) -> u32 {
    headers
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';')
                .find_map(|field| field.trim().strip_prefix("Lineage="))
        })
        .and_then(|l| l.rsplit(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_keys_encode_as_s3_does() {
        assert_eq!(url_encode("a/b c+d&ü"), "a/b%20c%2Bd%26%C3%BC");
        assert_eq!(url_encode("plain-key_1.txt~"), "plain-key_1.txt~");
    }

    #[test]
    fn continuation_tokens_round_trip_and_refuse_garbage() {
        let t = hex::encode("dir/ü".as_bytes());
        assert_eq!(token_decode(&t).unwrap(), "dir/ü");
        assert!(token_decode("zz").is_err());
        assert!(token_decode("ff").is_err());
    }

    #[test]
    fn copy_ranges_are_checked() {
        assert_eq!(copy_range(None, 10).unwrap(), (0, 10));
        assert_eq!(copy_range(Some("bytes=2-5"), 10).unwrap(), (2, 4));
        assert!(copy_range(Some("bytes=5-10"), 10).is_err());
        assert!(copy_range(Some("bytes=5-2"), 10).is_err());
        assert!(copy_range(Some("2-5"), 10).is_err());
    }

    #[test]
    fn part_numbers_are_bounded() {
        assert!(part_number(1).is_ok());
        assert!(part_number(10_000).is_ok());
        assert!(part_number(0).is_err());
        assert!(part_number(10_001).is_err());
    }

    #[test]
    fn keys_and_metadata_are_bounded() {
        let long = "k".repeat(1025);
        assert_eq!(
            *object_key(&long).unwrap_err().code(),
            S3ErrorCode::KeyTooLongError
        );
        let mut m = Metadata::new();
        m.insert("big".into(), "v".repeat(3000));
        let e = attrs(None, None, None, None, None, Some(m)).unwrap_err();
        assert_eq!(*e.code(), S3ErrorCode::MetadataTooLarge);
        assert_eq!(
            *bucket_name("Bad_Name").unwrap_err().code(),
            S3ErrorCode::InvalidBucketName
        );
    }

    #[test]
    fn lineage_is_read_off_the_trace_id() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(super::lineage(&h), 0);
        h.insert(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1;Lineage=nimbus:7"
                .parse()
                .unwrap(),
        );
        assert_eq!(super::lineage(&h), 7);
        h.insert(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793".parse().unwrap(),
        );
        assert_eq!(super::lineage(&h), 0);
    }
}
