//! PublishVersion, ListVersionsByFunction and the alias operations (with `RoutingConfig`
//! weights, which become an alias's canary).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Ctx, LambdaError, shape};

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PublishInput {
    #[serde(default)]
    description: String,
    code_sha256: Option<String>,
}

pub(crate) async fn publish(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), LambdaError> {
    let t = shape::target(&name, None)?;
    let input: PublishInput = shape::parse(&body)?;
    if let Some(expected) = input.code_sha256.filter(|s| !s.is_empty()) {
        let latest = ctx.platform.get_function(&t.name).await?;
        if shape::code_sha256(&latest.spec.code_sha256) != expected {
            return Err(LambdaError::new(
                412,
                "PreconditionFailedException",
                "CodeSha256 does not match the function's current code; it changed since you read it",
            ));
        }
    }
    let (version, _) = ctx.platform.publish(&t.name, &input.description).await?;
    Ok((
        StatusCode::CREATED,
        Json(shape::of_version(&ctx, &version).await),
    ))
}

pub(crate) async fn list_versions(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> Result<Json<Value>, LambdaError> {
    let t = shape::target(&name, None)?;
    let latest = ctx.platform.get_function(&t.name).await?;
    let mut versions = vec![shape::latest(&ctx, &latest).await];
    for v in ctx.platform.list_versions(&t.name).await? {
        versions.push(shape::of_version(&ctx, &v).await);
    }
    Ok(Json(json!({ "Versions": versions })))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RoutingInput {
    #[serde(default)]
    additional_version_weights: BTreeMap<String, f64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct AliasInput {
    name: Option<String>,
    function_version: Option<String>,
    description: Option<String>,
    routing_config: Option<RoutingInput>,
}

/// A published version's number; `$LATEST` is not one an alias can name here.
fn version_number(v: &str) -> Result<u32, LambdaError> {
    v.parse::<u32>().map_err(|_| {
        LambdaError::invalid(format!(
            "FunctionVersion `{v}`: an alias points at a published version (PublishVersion makes one)"
        ))
    })
}

/// `RoutingConfig` as the alias's canary: one additional version and its weight (0-1).
fn canary(routing: RoutingInput) -> Result<Option<model::Canary>, LambdaError> {
    let mut weights = routing.additional_version_weights.into_iter();
    let Some((version, weight)) = weights.next() else {
        return Ok(None);
    };
    if weights.next().is_some() {
        return Err(LambdaError::invalid(
            "RoutingConfig: AdditionalVersionWeights takes one version",
        ));
    }
    if !(0.0..=1.0).contains(&weight) {
        return Err(LambdaError::invalid(format!(
            "RoutingConfig: the weight of version {version} must be between 0.0 and 1.0"
        )));
    }
    Ok(Some(model::Canary {
        version: version_number(&version)?,
        percent: weight * 100.0,
        guard: None,
        rolled_back: None,
    }))
}

fn alias_view(ctx: &Ctx, function: &str, a: &model::Alias) -> Value {
    let mut v = json!({
        "AliasArn": ctx.platform.function_arn(&format!("{function}:{}", a.name)),
        "Name": a.name,
        "FunctionVersion": a.version.to_string(),
        "Description": a.description,
        "RevisionId": a.updated_at_ms.to_string(),
    });
    if let Some(c) = &a.canary {
        v["RoutingConfig"] = json!({
            "AdditionalVersionWeights": { c.version.to_string(): c.percent / 100.0 }
        });
    }
    v
}

pub(crate) async fn create_alias(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), LambdaError> {
    let t = shape::target(&name, None)?;
    let input: AliasInput = shape::parse(&body)?;
    let Some(alias_name) = input.name else {
        return Err(LambdaError::invalid("Name is required"));
    };
    let Some(version) = input.function_version else {
        return Err(LambdaError::invalid("FunctionVersion is required"));
    };
    if ctx.platform.get_alias(&t.name, &alias_name).await.is_ok() {
        return Err(LambdaError::new(
            409,
            "ResourceConflictException",
            format!(
                "Alias already exists: {}",
                ctx.platform
                    .function_arn(&format!("{}:{alias_name}", t.name))
            ),
        ));
    }
    let alias = model::Alias {
        name: alias_name,
        version: version_number(&version)?,
        canary: canary(input.routing_config.unwrap_or_default())?,
        description: input.description.unwrap_or_default(),
        updated_at_ms: 0,
    };
    ctx.platform.put_alias(&t.name, alias.clone()).await?;
    let stored = ctx.platform.get_alias(&t.name, &alias.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(alias_view(&ctx, &t.name, &stored)),
    ))
}

pub(crate) async fn update_alias(
    State(ctx): State<Ctx>,
    Path((name, alias_name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, LambdaError> {
    let t = shape::target(&name, None)?;
    let input: AliasInput = shape::parse(&body)?;
    let mut alias = ctx.platform.get_alias(&t.name, &alias_name).await?;
    if let Some(v) = input.function_version {
        alias.version = version_number(&v)?;
    }
    if let Some(d) = input.description {
        alias.description = d;
    }
    if let Some(r) = input.routing_config {
        alias.canary = canary(r)?;
    }
    ctx.platform.put_alias(&t.name, alias).await?;
    let stored = ctx.platform.get_alias(&t.name, &alias_name).await?;
    Ok(Json(alias_view(&ctx, &t.name, &stored)))
}

pub(crate) async fn get_alias(
    State(ctx): State<Ctx>,
    Path((name, alias_name)): Path<(String, String)>,
) -> Result<Json<Value>, LambdaError> {
    let t = shape::target(&name, None)?;
    let alias = ctx.platform.get_alias(&t.name, &alias_name).await?;
    Ok(Json(alias_view(&ctx, &t.name, &alias)))
}

pub(crate) async fn list_aliases(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
) -> Result<Json<Value>, LambdaError> {
    let t = shape::target(&name, None)?;
    let aliases: Vec<Value> = ctx
        .platform
        .list_aliases(&t.name)
        .await?
        .iter()
        .map(|a| alias_view(&ctx, &t.name, a))
        .collect();
    Ok(Json(json!({ "Aliases": aliases })))
}

pub(crate) async fn delete_alias(
    State(ctx): State<Ctx>,
    Path((name, alias_name)): Path<(String, String)>,
) -> Result<StatusCode, LambdaError> {
    let t = shape::target(&name, None)?;
    ctx.platform.delete_alias(&t.name, &alias_name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_weights_become_a_canary() {
        let r = |pairs: &[(&str, f64)]| RoutingInput {
            additional_version_weights: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        let c = canary(r(&[("2", 0.25)])).unwrap().unwrap();
        assert_eq!((c.version, c.percent), (2, 25.0));
        assert!(canary(r(&[])).unwrap().is_none());
        assert!(canary(r(&[("2", 1.5)])).is_err());
        assert!(canary(r(&[("2", 0.1), ("3", 0.1)])).is_err());
        assert!(canary(r(&[("$LATEST", 0.1)])).is_err());
    }
}
