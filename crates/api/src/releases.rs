//! HTTP handlers for releases: publishing versions and pointing aliases (with canaries) at
//! them.

use axum::Json;
use axum::body::Body;
use axum::extract::State;

use crate::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use model::{Alias, Canary, Guard, Version};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ApiError, AppState, ErrorBody};

/// Body of `POST /v1/functions/{name}/versions`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct PublishInput {
    #[serde(default)]
    #[schema(max_length = 256)]
    pub description: String,
}

/// A published version.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    pub function: String,
    pub version: u32,
    pub description: String,
    pub code_sha256: String,
    pub created_at_ms: i64,
    /// The complete configuration of the version.
    #[schema(value_type = Object)]
    pub spec: model::FunctionSpec,
}

impl From<Version> for VersionView {
    fn from(v: Version) -> Self {
        VersionView {
            function: v.function,
            version: v.version,
            description: v.description,
            code_sha256: v.spec.code_sha256.clone(),
            created_at_ms: v.created_at_ms,
            spec: v.spec.redacted(),
        }
    }
}

/// Body of `PUT /v1/functions/{name}/aliases/{alias}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasInput {
    #[schema(minimum = 1)]
    pub version: u32,
    /// A second version and the percent of calls it gets.
    pub canary: Option<CanaryInput>,
    #[serde(default)]
    #[schema(max_length = 256)]
    pub description: String,
}

/// `{"version": 2, "percent": 10, "guard": {"max_error_rate": 0.2}}`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryInput {
    /// Not the alias's own version.
    #[schema(minimum = 1)]
    pub version: u32,
    #[schema(minimum = 0, maximum = 100)]
    pub percent: f64,
    #[schema(value_type = Option<GuardBody>)]
    pub guard: Option<Guard>,
}

/// The schema of a canary's guard (`model::Guard`, which the model crate keeps free of
/// OpenAPI): roll back when more than `max_error_rate` of the canary's calls in
/// `window_ms` fail, once it made `min_calls` calls in that window.
#[derive(ToSchema)]
#[allow(dead_code)] // Only its schema is used.
pub struct GuardBody {
    #[schema(minimum = 0, maximum = 1)]
    max_error_rate: f64,
    #[schema(minimum = 1000, maximum = 3600000, default = 60000)]
    window_ms: Option<u32>,
    #[schema(minimum = 1, maximum = 100000, default = 20)]
    min_calls: Option<u32>,
}

/// An alias as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliasView {
    pub name: String,
    pub version: u32,
    #[schema(value_type = Option<Object>)]
    pub canary: Option<Canary>,
    pub description: String,
    pub updated_at_ms: i64,
}

impl From<Alias> for AliasView {
    fn from(a: Alias) -> Self {
        AliasView {
            name: a.name,
            version: a.version,
            canary: a.canary,
            description: a.description,
            updated_at_ms: a.updated_at_ms,
        }
    }
}

/// Publishes the function's current code and configuration as a new immutable version, or
/// answers 200 with the newest version when nothing changed since it.
#[utoipa::path(post, path = "/v1/functions/{name}/versions", tag = "releases",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")), request_body = Option<PublishInput>,
    responses((status = 201, body = VersionView), (status = 200, body = VersionView, description = "unchanged since this version"),
        (status = 404, body = ErrorBody)))]
pub async fn publish(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let bytes = crate::routes::read_body(body, 64 * 1024, "request").await?;
    // No body, or `null`, publishes without a description.
    let input: PublishInput = if bytes.is_empty() {
        PublishInput::default()
    } else {
        crate::routes::parse_json::<Option<PublishInput>>(&bytes)?.unwrap_or_default()
    };
    let (version, created) = s.platform.publish(&name, &input.description).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(VersionView::from(version))))
}

/// A function's versions, oldest first.
#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "releases",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")),
    responses((status = 200, body = Vec<VersionView>), (status = 404, body = ErrorBody)))]
pub async fn list_versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionView>>, ApiError> {
    let versions = s.platform.list_versions(&name).await?;
    Ok(Json(versions.into_iter().map(VersionView::from).collect()))
}

#[utoipa::path(get, path = "/v1/functions/{name}/versions/{version}", tag = "releases",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"), ("version" = u32, Path, minimum = 1)),
    responses((status = 200, body = VersionView), (status = 404, body = ErrorBody)))]
pub async fn get_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    let version = parse_version(&version)?;
    Ok(Json(s.platform.get_version(&name, version).await?.into()))
}

/// Deletes a version; refused (409 in_use) while an alias or a route points at it.
#[utoipa::path(delete, path = "/v1/functions/{name}/versions/{version}", tag = "releases",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"), ("version" = u32, Path, minimum = 1)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "in_use")))]
pub async fn delete_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let version = parse_version(&version)?;
    s.platform.delete_version(&name, version).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates or moves an alias, optionally with a canary version taking a share of calls.
#[utoipa::path(put, path = "/v1/functions/{name}/aliases/{alias}", tag = "releases",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"), ("alias" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")), request_body = AliasInput,
    responses((status = 200, body = AliasView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_alias(
    State(s): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    body: Body,
) -> Result<Json<AliasView>, ApiError> {
    let bytes = crate::routes::read_body(body, 64 * 1024, "request").await?;
    let input: AliasInput = crate::routes::parse_json(&bytes)?;
    let alias = Alias {
        name: alias,
        version: input.version,
        canary: input.canary.map(|c| Canary {
            version: c.version,
            percent: c.percent,
            guard: c.guard,
            rolled_back: None,
        }),
        description: input.description,
        updated_at_ms: 0,
    };
    s.platform.put_alias(&name, alias.clone()).await?;
    Ok(Json(s.platform.get_alias(&name, &alias.name).await?.into()))
}

#[utoipa::path(get, path = "/v1/functions/{name}/aliases", tag = "releases",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")),
    responses((status = 200, body = Vec<AliasView>), (status = 404, body = ErrorBody)))]
pub async fn list_aliases(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<AliasView>>, ApiError> {
    let aliases = s.platform.list_aliases(&name).await?;
    Ok(Json(aliases.into_iter().map(AliasView::from).collect()))
}

#[utoipa::path(get, path = "/v1/functions/{name}/aliases/{alias}", tag = "releases",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"), ("alias" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")),
    responses((status = 200, body = AliasView), (status = 404, body = ErrorBody)))]
pub async fn get_alias(
    State(s): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<AliasView>, ApiError> {
    Ok(Json(s.platform.get_alias(&name, &alias).await?.into()))
}

/// Deletes an alias; refused (409 in_use) while a route points at it.
#[utoipa::path(delete, path = "/v1/functions/{name}/aliases/{alias}", tag = "releases",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"), ("alias" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_alias(
    State(s): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.platform.delete_alias(&name, &alias).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn parse_version(text: &str) -> Result<u32, ApiError> {
    match text.parse::<u32>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(ApiError::invalid(format!(
            "`{text}` is not a version number (1 or more)"
        ))),
    }
}
