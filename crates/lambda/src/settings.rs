//! Reserved and provisioned concurrency and the asynchronous invocation settings, as
//! settings of the function's latest configuration: reserved concurrency bounds
//! `max_instances`, provisioned concurrency is `min_instances`, and the event invoke
//! configuration is `max_retries`, `max_event_age_ms` and the destinations. A published
//! version keeps the settings it was published with.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use model::{FunctionSpec, limits};
use serde::Deserialize;
use serde_json::{Value, json};
use store::PutMode;

use crate::functions::QualifierQuery;
use crate::{Ctx, LambdaError, shape};

/// The reserved concurrency a spec's `max_instances` stands for, when it is not the
/// default (Lambda shows none then).
pub(crate) fn reserved(spec: &FunctionSpec) -> Option<u32> {
    (spec.max_instances != limits::MAX_INSTANCES_DEFAULT)
        .then(|| spec.max_instances.saturating_mul(spec.concurrency))
}

/// Stores a changed spec through the platform's deploy (no handler check: the code did
/// not change).
async fn save(ctx: &Ctx, spec: FunctionSpec) -> Result<(), LambdaError> {
    ctx.platform.deploy(spec, PutMode::Upsert, false).await?;
    Ok(())
}

/// Settings here apply to the function, not to one version or alias: a request naming a
/// version is refused with that said; one naming an alias (Lambda requires a qualifier for
/// provisioned concurrency) sets the function's.
async fn spec_of(ctx: &Ctx, name: &str, q: Option<&str>) -> Result<FunctionSpec, LambdaError> {
    let t = shape::target(name, q)?;
    let function = ctx.platform.get_function(&t.name).await?;
    if let Some(q) = t.qualifier.as_deref().filter(|q| *q != "$LATEST")
        && q.parse::<u32>().is_ok()
    {
        return Err(LambdaError::invalid(format!(
            "Qualifier `{q}`: a published version's settings are fixed; set them without a Qualifier (or on an alias) and they apply to the function"
        )));
    }
    Ok(function.spec)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ReservedInput {
    reserved_concurrent_executions: u32,
}

pub(crate) async fn put_concurrency(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, LambdaError> {
    let input: ReservedInput = shape::parse(&body)?;
    let mut spec = spec_of(&ctx, &name, None).await?;
    let n = input.reserved_concurrent_executions;
    if n == 0 {
        return Err(LambdaError::invalid(
            "ReservedConcurrentExecutions 0 (stop every call) is not supported; delete the function or its triggers instead",
        ));
    }
    // Calls at once = instances × calls per instance.
    spec.max_instances = n.div_ceil(spec.concurrency.max(1));
    save(&ctx, spec).await?;
    Ok(Json(json!({ "ReservedConcurrentExecutions": n })))
}

pub(crate) async fn get_concurrency(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> Result<Json<Value>, LambdaError> {
    let spec = spec_of(&ctx, &name, None).await?;
    Ok(Json(match reserved(&spec) {
        Some(n) => json!({ "ReservedConcurrentExecutions": n }),
        None => json!({}),
    }))
}

pub(crate) async fn delete_concurrency(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> Result<StatusCode, LambdaError> {
    let mut spec = spec_of(&ctx, &name, None).await?;
    spec.max_instances = limits::MAX_INSTANCES_DEFAULT;
    save(&ctx, spec).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ProvisionedInput {
    provisioned_concurrent_executions: u32,
}

fn provisioned_view(spec: &FunctionSpec) -> Value {
    let n = spec.min_instances.saturating_mul(spec.concurrency);
    json!({
        "RequestedProvisionedConcurrentExecutions": n,
        "AllocatedProvisionedConcurrentExecutions": n,
        "AvailableProvisionedConcurrentExecutions": n,
        "Status": "READY",
        "LastModified": shape::last_modified(platform::now_ms()),
    })
}

pub(crate) async fn put_provisioned(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), LambdaError> {
    let input: ProvisionedInput = shape::parse(&body)?;
    let mut spec = spec_of(&ctx, &name, q.qualifier()).await?;
    let n = input.provisioned_concurrent_executions;
    if n == 0 {
        return Err(LambdaError::invalid(
            "ProvisionedConcurrentExecutions must be 1 or more; DeleteProvisionedConcurrencyConfig removes it",
        ));
    }
    spec.min_instances = n.div_ceil(spec.concurrency.max(1));
    save(&ctx, spec.clone()).await?;
    Ok((StatusCode::ACCEPTED, Json(provisioned_view(&spec))))
}

pub(crate) async fn get_provisioned(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<Value>, LambdaError> {
    let spec = spec_of(&ctx, &name, q.qualifier()).await?;
    if spec.min_instances == 0 {
        return Err(LambdaError::new(
            404,
            "ProvisionedConcurrencyConfigNotFoundException",
            "No Provisioned Concurrency Config found for this function",
        ));
    }
    Ok(Json(provisioned_view(&spec)))
}

pub(crate) async fn delete_provisioned(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<StatusCode, LambdaError> {
    let mut spec = spec_of(&ctx, &name, q.qualifier()).await?;
    spec.min_instances = 0;
    save(&ctx, spec).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DestinationInput {
    destination: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DestinationsInput {
    on_success: Option<DestinationInput>,
    on_failure: Option<DestinationInput>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EventInvokeInput {
    maximum_retry_attempts: Option<u32>,
    maximum_event_age_in_seconds: Option<u32>,
    destination_config: Option<DestinationsInput>,
}

fn destination_of(d: Option<DestinationInput>) -> Result<Option<model::Destination>, LambdaError> {
    match d.and_then(|d| d.destination).filter(|d| !d.is_empty()) {
        None => Ok(None),
        Some(arn) => shape::destination(&arn).map(Some),
    }
}

fn event_invoke_view(ctx: &Ctx, spec: &FunctionSpec) -> Value {
    let dest = |d: &Option<model::Destination>| match d
        .as_ref()
        .and_then(|d| shape::destination_arn(ctx, d))
    {
        Some(arn) => json!({ "Destination": arn }),
        None => json!({}),
    };
    json!({
        "FunctionArn": ctx.platform.function_arn(&spec.name),
        "LastModified": platform::now_ms() as f64 / 1000.0,
        "MaximumRetryAttempts": spec.max_retries,
        "MaximumEventAgeInSeconds": spec.max_event_age_ms / 1000,
        "DestinationConfig": {
            "OnSuccess": dest(&spec.on_success),
            "OnFailure": dest(&spec.on_failure),
        },
    })
}

pub(crate) async fn put_event_invoke_config(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
    body: Bytes,
) -> Result<Json<Value>, LambdaError> {
    let input: EventInvokeInput = shape::parse(&body)?;
    let mut spec = spec_of(&ctx, &name, q.qualifier()).await?;
    if let Some(r) = input.maximum_retry_attempts {
        // Lambda allows 0-2; Nimbus's bound is its own and the spec's validation says it.
        spec.max_retries = r;
    }
    if let Some(age) = input.maximum_event_age_in_seconds {
        spec.max_event_age_ms = age.saturating_mul(1000);
    }
    if let Some(d) = input.destination_config {
        spec.on_success = destination_of(d.on_success)?;
        spec.on_failure = destination_of(d.on_failure)?;
    }
    save(&ctx, spec.clone()).await?;
    Ok(Json(event_invoke_view(&ctx, &spec)))
}

pub(crate) async fn get_event_invoke_config(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<Json<Value>, LambdaError> {
    let spec = spec_of(&ctx, &name, q.qualifier()).await?;
    Ok(Json(event_invoke_view(&ctx, &spec)))
}

pub(crate) async fn delete_event_invoke_config(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<QualifierQuery>,
) -> Result<StatusCode, LambdaError> {
    let mut spec = spec_of(&ctx, &name, q.qualifier()).await?;
    spec.max_retries = limits::MAX_RETRIES_DEFAULT;
    spec.max_event_age_ms = limits::MAX_EVENT_AGE_MS_DEFAULT;
    spec.on_success = None;
    spec.on_failure = None;
    save(&ctx, spec).await?;
    Ok(StatusCode::NO_CONTENT)
}
