//! Lambda's wire shapes: function names as AWS writes them (name, ARN, partial ARN, with
//! a qualifier), `FunctionConfiguration`, times and hashes in AWS's forms.

use base64::Engine;
use bytes::Bytes;
use model::{Function, FunctionSpec, Qualifier};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{Ctx, LambdaError};

/// The function a path names, and its qualifier: from `name:qualifier`, an ARN, or the
/// `Qualifier` query parameter (which must agree when both are given).
pub(crate) struct Target {
    pub name: String,
    pub qualifier: Option<String>,
}

impl Target {
    /// `name`, or `name:qualifier`, as the platform takes it.
    pub fn full(&self) -> String {
        match &self.qualifier {
            Some(q) if q != "$LATEST" => format!("{}:{q}", self.name),
            _ => self.name.clone(),
        }
    }

    /// The qualifier as a published version's number; `None` for `$LATEST` or none.
    pub fn version(&self) -> Result<Option<u32>, LambdaError> {
        match self.qualifier.as_deref() {
            None | Some("$LATEST") => Ok(None),
            Some(q) => q.parse().map(Some).map_err(|_| {
                LambdaError::invalid(format!(
                    "Qualifier `{q}` must be a version number or $LATEST here"
                ))
            }),
        }
    }
}

pub(crate) fn target(
    path_name: &str,
    query_qualifier: Option<&str>,
) -> Result<Target, LambdaError> {
    // arn:aws:lambda:REGION:ACCOUNT:function:NAME[:Q], ACCOUNT:function:NAME[:Q], NAME[:Q]
    let rest = match path_name.find("function:") {
        Some(i) if path_name.starts_with("arn:") || path_name[..i].ends_with(':') => {
            &path_name[i + "function:".len()..]
        }
        _ => path_name,
    };
    let (name, from_name) = match Qualifier::split(rest) {
        Ok((name, q)) => (
            name.to_string(),
            match q {
                Qualifier::Latest if rest.ends_with(":$LATEST") => Some("$LATEST".to_string()),
                Qualifier::Latest => None,
                Qualifier::Version(v) => Some(v.to_string()),
                Qualifier::Alias(a) => Some(a),
            },
        ),
        Err(e) => {
            return Err(LambdaError::invalid(format!(
                "FunctionName `{path_name}`: {e}"
            )));
        }
    };
    if let Err(e) = model::validate_name(&name) {
        return Err(LambdaError::invalid(format!(
            "FunctionName `{path_name}`: {e}"
        )));
    }
    let qualifier = match (from_name, query_qualifier) {
        (Some(a), Some(b)) if a != b => {
            return Err(LambdaError::invalid(
                "The derived qualifier from the function name does not match the specified qualifier.",
            ));
        }
        (a, b) => a.or(b.map(str::to_string)),
    };
    Ok(Target { name, qualifier })
}

/// A request body as `T`; `{}` when empty.
pub(crate) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, LambdaError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| {
        LambdaError::new(
            400,
            "InvalidRequestContentException",
            format!("Could not parse request body into json: {e}"),
        )
    })
}

/// Unix milliseconds as Lambda writes `LastModified`: `2026-12-06T14:51:09.000+0000`.
pub(crate) fn last_modified(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_millis(t).to_string();
    format!("{}+0000", s.trim_end_matches('Z'))
}

/// A hex sha256 as Lambda's `CodeSha256`: base64 of the digest's bytes.
pub(crate) fn code_sha256(hex_sha: &str) -> String {
    hex::decode(hex_sha)
        .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        .unwrap_or_default()
}

/// The node's processor as Lambda names architectures.
pub(crate) fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        other => other,
    }
}

/// Seconds, rounded up, of a millisecond bound.
pub(crate) fn seconds(ms: u32) -> u32 {
    ms.div_ceil(1000)
}

/// `FunctionConfiguration` of a spec: of `$LATEST` (`version` none) or of a version.
pub(crate) async fn configuration(
    ctx: &Ctx,
    spec: &FunctionSpec,
    version: Option<u32>,
    revision: String,
    modified_ms: i64,
) -> Value {
    let (arn, version) = match version {
        Some(v) => (
            ctx.platform.function_arn(&format!("{}:{v}", spec.name)),
            v.to_string(),
        ),
        None => (ctx.platform.function_arn(&spec.name), "$LATEST".to_string()),
    };
    let size = ctx
        .platform
        .code_size(&spec.code_sha256)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let account = ctx.platform.aws_identity().account_id;
    let mut c = json!({
        "FunctionName": spec.name,
        "FunctionArn": arn,
        "Runtime": spec.runtime.id(&spec.runtime_version),
        "Role": format!("arn:aws:iam::{account}:role/nimbus-function"),
        "Handler": spec.handler,
        "CodeSize": size,
        "Description": spec.description,
        "Timeout": seconds(spec.timeout_ms),
        "MemorySize": spec.memory_mb,
        "LastModified": last_modified(modified_ms),
        "CodeSha256": code_sha256(&spec.code_sha256),
        "Version": version,
        "Environment": {"Variables": spec.env},
        "TracingConfig": {"Mode": "PassThrough"},
        "RevisionId": revision,
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Architectures": [architecture()],
        "EphemeralStorage": {"Size": spec.ephemeral_storage_mb},
    });
    if let Some(model::Destination::Function(f)) = &spec.on_failure {
        c["DeadLetterConfig"] = json!({"TargetArn": ctx.platform.function_arn(f)});
    }
    c
}

/// `FunctionConfiguration` of `$LATEST`.
pub(crate) async fn latest(ctx: &Ctx, f: &Function) -> Value {
    configuration(ctx, &f.spec, None, f.revision.to_string(), f.updated_at_ms).await
}

/// `FunctionConfiguration` of a published version.
pub(crate) async fn of_version(ctx: &Ctx, v: &model::Version) -> Value {
    configuration(
        ctx,
        &v.spec,
        Some(v.version),
        format!("v{}", v.version),
        v.created_at_ms,
    )
    .await
}

/// The function a Lambda destination ARN names (`arn:aws:lambda:…:function:NAME[:Q]`).
pub(crate) fn destination(arn: &str) -> Result<model::Destination, LambdaError> {
    if arn.starts_with("arn:aws:lambda:") {
        let t = target(arn, None)?;
        return Ok(model::Destination::Function(t.full()));
    }
    Err(LambdaError::invalid(format!(
        "Destination `{arn}`: Nimbus delivers to Lambda function ARNs (arn:aws:lambda:REGION:ACCOUNT:function:NAME); queues, topics and buses are not destinations here"
    )))
}

/// A destination as an ARN, or the webhook's URL.
pub(crate) fn destination_arn(ctx: &Ctx, d: &model::Destination) -> Option<String> {
    match d {
        model::Destination::Function(f) => Some(ctx.platform.function_arn(f)),
        model::Destination::Webhook(url) => Some(url.clone()),
        model::Destination::Dlq => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_arns_and_qualifiers() {
        let t = target(
            "arn:aws:lambda:us-east-1:000000000000:function:f:prod",
            None,
        )
        .unwrap();
        assert_eq!(
            (t.name.as_str(), t.qualifier.as_deref()),
            ("f", Some("prod"))
        );
        let t = target("000000000000:function:f", Some("3")).unwrap();
        assert_eq!((t.full().as_str(), t.version().unwrap()), ("f:3", Some(3)));
        let t = target("f:$LATEST", None).unwrap();
        assert_eq!((t.full().as_str(), t.version().unwrap()), ("f", None));
        assert!(target("f:prod", Some("3")).is_err());
        assert!(target("f:prod", Some("prod")).is_ok());
        assert!(target("9bad", None).is_err());
        assert!(target("f", Some("prod")).unwrap().version().is_err());
    }

    #[test]
    fn aws_forms_of_times_and_hashes() {
        assert_eq!(
            last_modified(1_440_938_160_000),
            "2015-08-30T12:36:00.000+0000"
        );
        assert_eq!(
            code_sha256("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert_eq!(seconds(3000), 3);
        assert_eq!(seconds(3001), 4);
        assert!(destination("arn:aws:sqs:us-east-1:0:q").is_err());
        assert_eq!(
            destination("arn:aws:lambda:us-east-1:0:function:g").unwrap(),
            model::Destination::Function("g".into())
        );
    }
}
