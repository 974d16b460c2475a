//! The Lambda API: AWS Lambda's REST operations at AWS's paths, so boto3, the AWS CLI and
//! the SDKs manage and invoke Nimbus functions with only `endpoint_url` changed.
//!
//! Requests are signed with SigV4 by access keys the server issues (`nimbus keys create
//! --aws`; the admin's is in `<data-dir>/aws.credentials`). Each operation maps onto the
//! platform's own (the README's compatibility table lists them); answers and errors take
//! Lambda's JSON shapes and exception names. Like `api`, this crate is a front door: it
//! knows HTTP and AWS's wire, and the platform knows neither.
//!
//! Step Functions' API (`states`: AWS JSON 1.0 at `POST /`) is served here too, for the
//! same reasons: the same keys, the same signature check, AWS's shapes kept out of `api`.

mod error;
mod functions;
mod invoke;
mod releases;
mod settings;
mod shape;
pub mod sigv4;
mod states;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use platform::{AwsScope, Platform};

pub use error::LambdaError;

/// The largest request body: a CreateFunction whose `ZipFile` (base64) holds the largest
/// archive the platform takes, and room for the rest of the document.
pub const BODY_BYTES_MAX: usize = (model::limits::ARCHIVE_BYTES_MAX / 3 + 1) * 4 + 64 * 1024;

#[derive(Clone)]
pub(crate) struct Ctx {
    pub platform: Arc<Platform>,
    /// Signing keys derived from secrets, by access key id and scope (day, region,
    /// service): four HMACs a request saved. Checked against the key's secret each time, so
    /// a deleted or replaced key is not served from here.
    keys: Arc<Mutex<SigningKeys>>,
}

/// (access key id, day, region, service) → (the secret it was derived from, the key).
type SigningKeys = HashMap<(String, String, String, String), (String, Vec<u8>)>;

/// Signing keys kept at most; past it the cache starts over (a day's keys, a few regions).
const SIGNING_KEYS_MAX: usize = 1024;

impl Ctx {
    /// The signing key of `c` and the key's scope, if the access key exists.
    fn signing_key(&self, c: &sigv4::Credential) -> Option<(Vec<u8>, AwsScope)> {
        let key = self.platform.aws_key(&c.access_key_id)?;
        let id = (
            c.access_key_id.clone(),
            c.date.clone(),
            c.region.clone(),
            c.service.clone(),
        );
        let mut cache = self.keys.lock().unwrap();
        if let Some((secret, derived)) = cache.get(&id)
            && *secret == key.secret
        {
            return Some((derived.clone(), key.scope));
        }
        let derived = sigv4::signing_key(&key.secret, c);
        if cache.len() >= SIGNING_KEYS_MAX {
            cache.clear();
        }
        cache.insert(id, (key.secret, derived.clone()));
        Some((derived, key.scope))
    }

    /// Checks the SigV4 signature of a request (its head and whole body) for `service`;
    /// answers the scope of the key that signed it.
    fn check_signature(
        &self,
        parts: &axum::http::request::Parts,
        body: &[u8],
        service: &str,
    ) -> Result<AwsScope, sigv4::AuthError> {
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let signed = sigv4::Signed {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            headers: &headers,
            body,
        };
        let mut scope = None;
        sigv4::verify(&signed, service, platform::now_ms(), |c| {
            let (key, key_scope) = self.signing_key(c)?;
            scope = Some(key_scope);
            Some(key)
        })?;
        // A verified signature was made with a key found, whose scope was kept.
        scope.ok_or(sigv4::AuthError::Missing)
    }
}

/// The Lambda API's routes, each behind the SigV4 check.
pub fn router(platform: Arc<Platform>) -> Router {
    let ctx = Ctx {
        platform,
        keys: Arc::default(),
    };
    const F: &str = "/2015-03-31/functions";
    let routes = Router::new()
        .route(F, post(functions::create).get(functions::list))
        .route(
            &format!("{F}/"),
            post(functions::create).get(functions::list),
        )
        .route(
            &format!("{F}/{{name}}"),
            get(functions::get).delete(functions::delete),
        )
        .route(
            &format!("{F}/{{name}}/configuration"),
            get(functions::get_configuration).put(functions::update_configuration),
        )
        .route(&format!("{F}/{{name}}/code"), put(functions::update_code))
        .route(&format!("{F}/{{name}}/invocations"), post(invoke::invoke))
        .route(
            &format!("{F}/{{name}}/versions"),
            post(releases::publish).get(releases::list_versions),
        )
        .route(
            &format!("{F}/{{name}}/aliases"),
            post(releases::create_alias).get(releases::list_aliases),
        )
        .route(
            &format!("{F}/{{name}}/aliases/{{alias}}"),
            get(releases::get_alias)
                .put(releases::update_alias)
                .delete(releases::delete_alias),
        )
        .route(
            "/2017-10-31/functions/{name}/concurrency",
            put(settings::put_concurrency).delete(settings::delete_concurrency),
        )
        .route(
            "/2019-09-30/functions/{name}/concurrency",
            get(settings::get_concurrency),
        )
        .route(
            "/2019-09-30/functions/{name}/provisioned-concurrency",
            put(settings::put_provisioned)
                .get(settings::get_provisioned)
                .delete(settings::delete_provisioned),
        )
        .route(
            "/2019-09-25/functions/{name}/event-invoke-config",
            put(settings::put_event_invoke_config)
                .post(settings::put_event_invoke_config)
                .get(settings::get_event_invoke_config)
                .delete(settings::delete_event_invoke_config),
        );
    // Any other path under Lambda's API versions is an operation Nimbus lacks; the gateway
    // never routes there (the prefixes are reserved).
    let mut router = routes;
    for prefix in model::http::LAMBDA_API_PREFIXES {
        router = router.route(&format!("{prefix}{{*rest}}"), any(unknown_operation));
    }
    router
        .method_not_allowed_fallback(unknown_operation)
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            authenticate,
        ))
        // The body is read (bounded) by `authenticate`, which must hash it anyway.
        .layer(DefaultBodyLimit::disable())
        .with_state(ctx)
}

/// Serves Step Functions' API (`POST /` with `X-Amz-Target: AWSStepFunctions.*`, see
/// `states`) in front of `app`: a middleware rather than a route on `/`, so every other
/// request to `/` (a user's HTTP route among them) goes on to `app` as before.
pub fn with_step_functions(app: Router, platform: Arc<Platform>) -> Router {
    let ctx = Ctx {
        platform,
        keys: Arc::default(),
    };
    app.layer(axum::middleware::from_fn_with_state(ctx, states::intercept))
}

async fn unknown_operation() -> LambdaError {
    LambdaError::new(
        404,
        "UnknownOperationException",
        "Nimbus's Lambda API has no such operation; the README's compatibility table lists the ones it has",
    )
}

/// Reads the body (bounded), checks the request's SigV4 signature, and for keys of scope
/// `invoke` lets only invocations through.
async fn authenticate(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(_) => {
            return LambdaError::new(
                413,
                "RequestTooLargeException",
                format!("the request is larger than {BODY_BYTES_MAX} bytes"),
            )
            .into_response();
        }
    };
    let scope = match ctx.check_signature(&parts, &body, "lambda") {
        Ok(scope) => scope,
        Err(e) => return auth_error(e).into_response(),
    };
    let invocation =
        parts.method == axum::http::Method::POST && parts.uri.path().ends_with("/invocations");
    if matches!(scope, AwsScope::Invoke | AwsScope::Function) && !invocation {
        return LambdaError::new(
            403,
            "AccessDeniedException",
            "this access key may only invoke functions (scope invoke, or a function's own); use an admin key",
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

fn auth_error(e: sigv4::AuthError) -> LambdaError {
    use sigv4::AuthError::*;
    match e {
        Missing => LambdaError::new(
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token: sign requests with SigV4 using an access key from `nimbus keys create --aws` or <data-dir>/aws.credentials",
        ),
        Malformed(m) => LambdaError::new(403, "IncompleteSignatureException", m),
        UnknownKey(id) => LambdaError::new(
            403,
            "UnrecognizedClientException",
            format!(
                "The security token included in the request is invalid: access key `{id}` is not one this server issued"
            ),
        ),
        Mismatch(m) => LambdaError::new(403, "InvalidSignatureException", m),
    }
}
