//! The store's answers as S3's errors (s3s writes them in S3's XML shape).

use s3s::{S3Error, S3ErrorCode, s3_error};
use store::{ObjectError, StoreError};

/// A fault of the store: a full disk is 507 with a code of our own (S3 has none: its disks
/// never fill), a busy database 503 SlowDown (clients retry it), the rest 500.
pub(crate) fn store_error(e: StoreError) -> S3Error {
    if e.is_storage_full() {
        let mut err = S3Error::with_message(
            S3ErrorCode::Custom("StorageFull".into()),
            format!("the server's storage is full; nothing was stored ({e})"),
        );
        err.set_status_code(hyper::StatusCode::INSUFFICIENT_STORAGE);
        return err;
    }
    if e.database_fault() == Some(store::DatabaseFault::Busy) {
        return S3Error::with_message(S3ErrorCode::SlowDown, e.to_string());
    }
    tracing::error!("object store: {e}");
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

pub(crate) fn object_error(e: ObjectError) -> S3Error {
    match e {
        ObjectError::NoSuchBucket(b) => {
            s3_error!(NoSuchBucket, "The specified bucket does not exist: {b}")
        }
        ObjectError::BucketExists(b) => s3_error!(
            BucketAlreadyOwnedByYou,
            "Your previous request to create the named bucket succeeded and you already own it: {b}"
        ),
        ObjectError::BucketNotEmpty(b) => s3_error!(
            BucketNotEmpty,
            "The bucket you tried to delete is not empty: {b}"
        ),
        ObjectError::NoSuchKey(k) => s3_error!(NoSuchKey, "The specified key does not exist: {k}"),
        ObjectError::NoSuchUpload(u) => s3_error!(
            NoSuchUpload,
            "The specified multipart upload does not exist: {u}"
        ),
        ObjectError::TooMany(why) => S3Error::with_message(S3ErrorCode::TooManyBuckets, why),
        ObjectError::Store(e) => store_error(e),
    }
}
