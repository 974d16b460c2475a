//! CreateFunction, GetFunction(Configuration), ListFunctions, UpdateFunctionCode,
//! UpdateFunctionConfiguration and DeleteFunction over the platform's deploy and CRUD.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use model::{FunctionSpec, Runtime};
use serde::Deserialize;
use serde_json::{Value, json};
use store::PutMode;

use crate::shape::{self, Target};
use crate::{Ctx, LambdaError};

/// The most functions ListFunctions gives at once, as on Lambda.
const LIST_ITEMS_MAX: usize = 50;

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CodeInput {
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    image_uri: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EnvironmentInput {
    #[serde(default)]
    variables: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeadLetterInput {
    target_arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StorageInput {
    size: u32,
}

/// The settings CreateFunction and UpdateFunctionConfiguration share. Settings with no
/// meaning here (Role, VpcConfig, TracingConfig, KMSKeyArn, Tags) are accepted and unused.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ConfigInput {
    runtime: Option<String>,
    handler: Option<String>,
    description: Option<String>,
    timeout: Option<u32>,
    memory_size: Option<u32>,
    environment: Option<EnvironmentInput>,
    dead_letter_config: Option<DeadLetterInput>,
    ephemeral_storage: Option<StorageInput>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateInput {
    function_name: String,
    #[serde(default)]
    code: CodeInput,
    #[serde(default)]
    publish: bool,
    package_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(flatten)]
    config: ConfigInput,
}

impl ConfigInput {
    /// Lays these settings over `spec`.
    fn apply(self, spec: &mut FunctionSpec) -> Result<(), LambdaError> {
        if let Some(r) = self.runtime {
            let (runtime, version) =
                Runtime::parse_id(&r).map_err(|e| LambdaError::invalid(format!("Runtime: {e}")))?;
            spec.runtime = runtime;
            spec.runtime_version = version;
        }
        if let Some(h) = self.handler {
            spec.handler = h;
        }
        if let Some(d) = self.description {
            spec.description = d;
        }
        if let Some(t) = self.timeout {
            spec.timeout_ms = t.saturating_mul(1000);
        }
        if let Some(m) = self.memory_size {
            spec.memory_mb = m;
        }
        if let Some(e) = self.environment {
            spec.env = e.variables;
        }
        if let Some(d) = self.dead_letter_config {
            spec.on_failure = match d.target_arn.as_deref() {
                None | Some("") => None,
                Some(arn) => Some(shape::destination(arn)?),
            };
        }
        if let Some(s) = self.ephemeral_storage {
            spec.ephemeral_storage_mb = s.size;
        }
        if !self.layers.is_empty() {
            return Err(LambdaError::invalid(
                "Layers: Nimbus takes layers from nimbus.yaml (`layers:`), not as layer ARNs",
            ));
        }
        Ok(())
    }
}

/// Refuses an architecture other than the node's.
fn check_architectures(asked: &[String]) -> Result<(), LambdaError> {
    match asked.iter().find(|a| a.as_str() != shape::architecture()) {
        Some(a) => Err(LambdaError::invalid(format!(
            "Architectures: this node runs {}, not {a}",
            shape::architecture()
        ))),
        None => Ok(()),
    }
}

/// Stores the archive in `ZipFile`; the other ways of naming code are refused by name.
async fn upload(ctx: &Ctx, code: CodeInput) -> Result<String, LambdaError> {
    if code.image_uri.is_some() {
        return Err(LambdaError::invalid(
            "Code.ImageUri: Nimbus runs zip packages; container images are not supported",
        ));
    }
    if code.s3_bucket.is_some() {
        return Err(LambdaError::invalid(
            "Code.S3Bucket: send the archive itself in Code.ZipFile",
        ));
    }
    let Some(zip) = code.zip_file else {
        return Err(LambdaError::invalid("Code.ZipFile is required"));
    };
    let zip = base64::engine::general_purpose::STANDARD
        .decode(zip.as_bytes())
        .map_err(|e| LambdaError::invalid(format!("Code.ZipFile is not base64: {e}")))?;
    let (sha, _) = ctx.platform.upload_code(zip).await?;
    Ok(sha)
}

/// Deploys `spec` (the platform checks it, builds its dependencies, loads its handler once)
/// and answers its configuration, after publishing it as a version when asked.
async fn deploy(
    ctx: &Ctx,
    spec: FunctionSpec,
    mode: PutMode,
    publish: bool,
    status: StatusCode,
) -> Result<Response, LambdaError> {
    let (function, _) = ctx.platform.deploy(spec, mode, true).await?;
    if publish {
        let (version, _) = ctx.platform.publish(&function.spec.name, "").await?;
        return Ok((status, Json(shape::of_version(ctx, &version).await)).into_response());
    }
    Ok((status, Json(shape::latest(ctx, &function).await)).into_response())
}

pub(crate) async fn create(State(ctx): State<Ctx>, body: Bytes) -> Result<Response, LambdaError> {
    let input: CreateInput = shape::parse(&body)?;
    if input.package_type.as_deref().is_some_and(|p| p != "Zip") {
        return Err(LambdaError::invalid(
            "PackageType: Nimbus runs Zip packages; container images are not supported",
        ));
    }
    check_architectures(&input.architectures)?;
    let name = shape::target(&input.function_name, None)?.name;
    if input.config.runtime.is_none() || input.config.handler.is_none() {
        return Err(LambdaError::invalid(
            "Runtime and Handler are required for a Zip package",
        ));
    }
    let sha = upload(&ctx, input.code).await?;
    // Lambda's defaults where the request is silent: 3 s and 128 MB.
    let mut spec = FunctionSpec::new(&name, Runtime::Python3, "", &sha);
    spec.timeout_ms = 3000;
    spec.memory_mb = 128;
    input.config.apply(&mut spec)?;
    deploy(
        &ctx,
        spec,
        PutMode::Create,
        input.publish,
        StatusCode::CREATED,
    )
    .await
}

#[derive(Deserialize)]
pub(crate) struct QualifierQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

impl QualifierQuery {
    pub(crate) fn qualifier(&self) -> Option<&str> {
        self.qualifier.as_deref()
    }
}

fn target_of(name: &str, q: &QualifierQuery) -> Result<Target, LambdaError> {
    shape::target(name, q.qualifier.as_deref())
}

/// The configuration a target names: `$LATEST`, a version, or an alias's version.
async fn configuration_of(ctx: &Ctx, t: &Target) -> Result<Value, LambdaError> {
    let function = ctx.platform.get_function(&t.name).await?;
    let version = match t.qualifier.as_deref() {
        None | Some("$LATEST") => None,
        Some(q) => match q.parse::<u32>() {
            Ok(v) => Some(v),
            Err(_) => Some(ctx.platform.get_alias(&t.name, q).await?.version),
        },
    };
    Ok(match version {
        None => shape::latest(ctx, &function).await,
        Some(v) => shape::of_version(ctx, &ctx.platform.get_version(&t.name, v).await?).await,
    })
}

pub(crate) async fn get(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<Value>, LambdaError> {
    let t = target_of(&name, &q)?;
    let configuration = configuration_of(&ctx, &t).await?;
    let function = ctx.platform.get_function(&t.name).await?;
    let mut answer = json!({ "Configuration": configuration, "Tags": {} });
    if let Some(reserved) = crate::settings::reserved(&function.spec) {
        answer["Concurrency"] = json!({ "ReservedConcurrentExecutions": reserved });
    }
    Ok(Json(answer))
}

pub(crate) async fn get_configuration(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<Value>, LambdaError> {
    Ok(Json(configuration_of(&ctx, &target_of(&name, &q)?).await?))
}

pub(crate) async fn list(
    State(ctx): State<Ctx>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, LambdaError> {
    let max = match q.get("MaxItems") {
        None => LIST_ITEMS_MAX,
        Some(m) => match m.parse::<usize>() {
            Ok(n @ 1..=LIST_ITEMS_MAX) => n,
            _ => {
                return Err(LambdaError::invalid(format!(
                    "MaxItems must be 1 to {LIST_ITEMS_MAX}"
                )));
            }
        },
    };
    let mut functions = ctx.platform.list_functions().await?;
    functions.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    // The marker is the last name of the page before.
    let start = q.get("Marker").map(String::as_str).unwrap_or("");
    let page: Vec<_> = functions
        .iter()
        .filter(|f| f.spec.name.as_str() > start)
        .take(max + 1)
        .collect();
    let mut out = Vec::with_capacity(page.len().min(max));
    for f in page.iter().take(max) {
        out.push(shape::latest(&ctx, f).await);
    }
    let mut answer = json!({ "Functions": out });
    if page.len() > max {
        answer["NextMarker"] = json!(page[max - 1].spec.name);
    }
    Ok(Json(answer))
}

pub(crate) async fn delete(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<StatusCode, LambdaError> {
    let t = target_of(&name, &q)?;
    match t.version()? {
        None => ctx.platform.delete_function(&t.name).await?,
        Some(v) => ctx.platform.delete_version(&t.name, v).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct UpdateCodeInput {
    zip_file: Option<String>,
    s3_bucket: Option<String>,
    image_uri: Option<String>,
    #[serde(default)]
    publish: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    architectures: Vec<String>,
}

pub(crate) async fn update_code(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, LambdaError> {
    let t = shape::target(&name, None)?;
    let input: UpdateCodeInput = shape::parse(&body)?;
    check_architectures(&input.architectures)?;
    let mut function = ctx.platform.get_function(&t.name).await?;
    let sha = upload(
        &ctx,
        CodeInput {
            zip_file: input.zip_file,
            s3_bucket: input.s3_bucket,
            image_uri: input.image_uri,
        },
    )
    .await?;
    if input.dry_run {
        function.spec.code_sha256 = sha;
        return Ok(Json(shape::latest(&ctx, &function).await).into_response());
    }
    let mut spec = function.spec;
    spec.code_sha256 = sha;
    // The code's dependencies are worked out again for the new code.
    spec.deps_sha256.clear();
    deploy(&ctx, spec, PutMode::Upsert, input.publish, StatusCode::OK).await
}

pub(crate) async fn update_configuration(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, LambdaError> {
    let t = shape::target(&name, None)?;
    let input: ConfigInput = shape::parse(&body)?;
    let mut spec = ctx.platform.get_function(&t.name).await?.spec;
    input.apply(&mut spec)?;
    deploy(&ctx, spec, PutMode::Upsert, false, StatusCode::OK).await
}
