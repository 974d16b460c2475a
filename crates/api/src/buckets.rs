//! `/v1/buckets`: the object store's basics for the CLI (`nimbus bucket …`): buckets made,
//! listed and removed, a page of a bucket's objects, and a bucket's website. Everything
//! else about objects goes through the S3 API and the S3 tools.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use model::ErrorCode;
use model::bucket::Website;
use model::limits;
use serde::{Deserialize, Serialize};
use store::ObjectError;
use store::objects::{ListQuery, ObjectChange};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{Path, Query};
use crate::routes::{parse_json, read_body};
use crate::{ApiError, AppState, ErrorBody};

/// The object store as the control API and the gateway's websites read it.
pub struct Objects {
    pub meta: Arc<dyn store::ObjectMeta>,
    pub files: Arc<dyn store::ObjectBytes>,
    /// Websites are served for hosts `{bucket}.{website_domain}`.
    pub website_domain: String,
}

/// Largest JSON body of these operations: a name or a website's two keys.
const BODY_BYTES_MAX: usize = 8 * 1024;

/// Objects a listing answers when the request names no limit.
const LIST_LIMIT_DEFAULT: usize = 1000;

/// How many times `force` empties a bucket that writers keep filling before it gives up.
const FORCE_PASSES_MAX: usize = 3;

#[derive(Debug, Serialize, ToSchema)]
pub struct BucketView {
    pub name: String,
    pub created_at_ms: i64,
    /// The bucket's website, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub website: Option<WebsiteView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BucketList {
    pub buckets: Vec<BucketView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketInput {
    /// S3's rules: 3 to 63 of `[a-z0-9.-]`, a letter or digit at both ends.
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebsiteView {
    /// Served for `/` and `dir/`: `index.html`.
    pub index_document: String,
    /// Served with status 404 for a key that does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_document: Option<String>,
}

impl From<Website> for WebsiteView {
    fn from(w: Website) -> Self {
        WebsiteView {
            index_document: w.index_document,
            error_document: w.error_document,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Delete the bucket's objects first.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ObjectsQuery {
    /// Only keys that begin with this.
    #[serde(default)]
    pub prefix: String,
    /// Keys after this one only (the previous page's `next_after`).
    pub after: Option<String>,
    /// At most this many objects, 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectView {
    pub key: String,
    pub size_bytes: u64,
    pub etag: String,
    pub modified_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectPage {
    pub objects: Vec<ObjectView>,
    /// Where the next page starts (`after`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

fn objects_of(s: &AppState) -> Result<&Objects, ApiError> {
    s.objects.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::BucketNotFound,
            "this process serves no object store",
        )
    })
}

/// The store's answers as API errors.
pub(crate) fn object_error(e: ObjectError) -> ApiError {
    match e {
        ObjectError::NoSuchBucket(b) => ApiError::new(
            ErrorCode::BucketNotFound,
            format!("bucket `{b}` does not exist"),
        ),
        ObjectError::BucketExists(b) => ApiError::new(
            ErrorCode::BucketExists,
            format!("bucket `{b}` already exists"),
        ),
        ObjectError::BucketNotEmpty(b) => ApiError::new(
            ErrorCode::BucketNotEmpty,
            format!("bucket `{b}` is not empty; delete its objects first (or force)"),
        ),
        e @ (ObjectError::NoSuchKey(_) | ObjectError::NoSuchUpload(_)) => {
            ApiError::new(ErrorCode::InvalidRequest, e.to_string())
        }
        ObjectError::TooMany(why) => ApiError::invalid(why),
        ObjectError::Store(e) => e.into(),
    }
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    model::bucket::validate_bucket_name(name).map_err(|e| ApiError::invalid(e.0))
}

/// Every bucket, with its website if it has one.
#[utoipa::path(get, path = "/v1/buckets", tag = "buckets",
    responses((status = 200, body = BucketList)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<BucketList>, ApiError> {
    let objects = objects_of(&s)?;
    let mut buckets = Vec::new();
    // Bounded by `limits::BUCKETS_MAX`.
    for b in objects.meta.list_buckets().await.map_err(object_error)? {
        let website = match objects.meta.bucket_website(&b.name).await {
            Ok(w) => w.map(WebsiteView::from),
            // Deleted since the listing: not a bucket any more.
            Err(ObjectError::NoSuchBucket(_)) => continue,
            Err(e) => return Err(object_error(e)),
        };
        buckets.push(BucketView {
            name: b.name,
            created_at_ms: b.created_at_ms,
            website,
        });
    }
    Ok(Json(BucketList { buckets }))
}

/// Makes a bucket.
#[utoipa::path(post, path = "/v1/buckets", tag = "buckets", request_body = BucketInput,
    responses((status = 201, body = BucketView),
        (status = 400, body = ErrorBody, description = "invalid_request: a name S3 would refuse, or the node's bucket limit"),
        (status = 409, body = ErrorBody, description = "bucket_exists")))]
pub async fn create(State(s): State<AppState>, body: Body) -> Result<impl IntoResponse, ApiError> {
    let objects = objects_of(&s)?;
    let input: BucketInput = parse_json(&read_body(body, BODY_BYTES_MAX, "bucket").await?)?;
    valid_name(&input.name)?;
    let now = platform::now_ms();
    objects
        .meta
        .create_bucket(&input.name, now, limits::BUCKETS_MAX)
        .await
        .map_err(object_error)?;
    Ok((
        StatusCode::CREATED,
        Json(BucketView {
            name: input.name,
            created_at_ms: now,
            website: None,
        }),
    ))
}

/// Removes a bucket; with `force=true` its objects first. (Removing objects this way emits
/// no bucket events: it is an operator's clean-up, not a client's deletes.)
#[utoipa::path(delete, path = "/v1/buckets/{name}", tag = "buckets",
    params(("name" = String, Path), DeleteQuery),
    responses((status = 204),
        (status = 404, body = ErrorBody, description = "bucket_not_found"),
        (status = 409, body = ErrorBody, description = "bucket_not_empty")))]
pub async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let objects = objects_of(&s)?;
    let mut passes = 0;
    loop {
        match objects.meta.delete_bucket(&name).await {
            Ok(released) => {
                release(objects, released).await;
                return Ok(StatusCode::NO_CONTENT);
            }
            Err(ObjectError::BucketNotEmpty(_)) if q.force && passes < FORCE_PASSES_MAX => {
                passes += 1;
                empty_bucket(objects, &name).await?;
            }
            Err(e) => return Err(object_error(e)),
        }
    }
}

/// Deletes every object of the bucket, a page at a time, each in its own transaction (the
/// writer is not held for the whole bucket).
async fn empty_bucket(objects: &Objects, bucket: &str) -> Result<(), ApiError> {
    loop {
        let page = objects
            .meta
            .list_objects(
                bucket,
                &ListQuery {
                    max_keys: limits::OBJECT_LIST_KEYS_MAX,
                    ..Default::default()
                },
            )
            .await
            .map_err(object_error)?;
        if page.objects.is_empty() {
            return Ok(());
        }
        let mut released = Vec::with_capacity(page.objects.len());
        for o in page.objects {
            let change = ObjectChange::Delete {
                bucket: bucket.to_string(),
                key: o.key,
            };
            if let Some(blob) = objects
                .meta
                .commit_object(change, &[])
                .await
                .map_err(object_error)?
            {
                released.push(blob);
            }
        }
        release(objects, released).await;
    }
}

/// Removes bytes no row names any more (what fails here the collector finds later).
async fn release(objects: &Objects, blobs: Vec<String>) {
    objects.files.remove(&blobs).await;
}

/// A page of a bucket's objects in key order.
#[utoipa::path(get, path = "/v1/buckets/{name}/objects", tag = "buckets",
    params(("name" = String, Path), ObjectsQuery),
    responses((status = 200, body = ObjectPage),
        (status = 404, body = ErrorBody, description = "bucket_not_found")))]
pub async fn list_objects(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ObjectsQuery>,
) -> Result<Json<ObjectPage>, ApiError> {
    let objects = objects_of(&s)?;
    let limit = q.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=limits::OBJECT_LIST_KEYS_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {}, not {limit}",
            limits::OBJECT_LIST_KEYS_MAX
        )));
    }
    let page = objects
        .meta
        .list_objects(
            &name,
            &ListQuery {
                prefix: &q.prefix,
                delimiter: None,
                after: q.after.as_deref(),
                max_keys: limit,
            },
        )
        .await
        .map_err(object_error)?;
    Ok(Json(ObjectPage {
        objects: page
            .objects
            .into_iter()
            .map(|o| ObjectView {
                key: o.key,
                size_bytes: o.size_bytes,
                etag: o.etag,
                modified_ms: o.modified_ms,
                content_type: o.attrs.content_type,
            })
            .collect(),
        next_after: page.next_after,
    }))
}

/// Serves the bucket as a website at `{name}.{--website-domain}` (replacing its website).
#[utoipa::path(put, path = "/v1/buckets/{name}/website", tag = "buckets",
    params(("name" = String, Path)), request_body = WebsiteView,
    responses((status = 200, body = WebsiteView),
        (status = 400, body = ErrorBody, description = "invalid_request: an index document with a slash, an empty one"),
        (status = 404, body = ErrorBody, description = "bucket_not_found")))]
pub async fn put_website(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<WebsiteView>, ApiError> {
    let objects = objects_of(&s)?;
    let input: WebsiteView = parse_json(&read_body(body, BODY_BYTES_MAX, "website").await?)?;
    let website = Website {
        index_document: input.index_document,
        error_document: input.error_document,
    };
    website.validate().map_err(|e| ApiError::invalid(e.0))?;
    objects
        .meta
        .set_bucket_website(&name, Some(&website))
        .await
        .map_err(object_error)?;
    Ok(Json(website.into()))
}

/// Stops serving the bucket as a website (answered 204 when it had none, as S3 does).
#[utoipa::path(delete, path = "/v1/buckets/{name}/website", tag = "buckets",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody, description = "bucket_not_found")))]
pub async fn delete_website(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let objects = objects_of(&s)?;
    objects
        .meta
        .set_bucket_website(&name, None)
        .await
        .map_err(object_error)?;
    Ok(StatusCode::NO_CONTENT)
}
