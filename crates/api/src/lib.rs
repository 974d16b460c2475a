//! The control API of Nimbus: JSON over HTTP under `/v1`, its auth, and its OpenAPI
//! document.
//!
//! Boundary: this crate is the only one that knows HTTP and the JSON wire shapes. The
//! operations themselves live in the `platform` crate, which knows neither, so triggers
//! and other front doors call the same code.

mod auth;
pub mod buckets;
pub mod bus;
mod error;
mod extract;
pub mod fanout;
pub mod flows;
pub mod forward;
pub mod gateway;
pub mod listener;
pub mod nodes;
pub mod observe;
pub mod releases;
pub mod routes;
mod trace;
pub mod triggers;
mod wire;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, head, post};
use utoipa::OpenApi;

pub use auth::bus_key;
pub use error::{ApiError, ErrorBody};
pub use forward::{HttpForwarder, node_key};
pub use gateway::Gateway;
use platform::Platform;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub platform: Arc<Platform>,
    /// The HTTP trigger: routes derived from the platform's catalog.
    pub gateway: Arc<Gateway>,
    /// The event bus: rules derived from the catalog, deliveries into the queue.
    pub bus: Arc<platform::bus::EventBus>,
    /// The bus's per-key ingestion limits.
    pub bus_limits: Arc<bus::Limits>,
    /// The admin bearer token.
    pub token: Arc<str>,
    /// The price table of usage estimates.
    pub prices: observe::Prices,
    /// The object store, for `/v1/buckets` and websites; `None` where none is served
    /// (`nimbus local`).
    pub objects: Option<Arc<buckets::Objects>>,
    /// The client that asks the other nodes of a cluster for their telemetry.
    pub fanout: Arc<fanout::Fanout>,
}

/// The OpenAPI description of the control API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Nimbus control API", description = "Deploy and invoke functions."),
    paths(
        routes::healthz,
        routes::upload_code,
        routes::code_exists,
        routes::list_functions,
        routes::create_function,
        routes::put_function,
        routes::get_function,
        routes::delete_function,
        routes::invoke,
        routes::get_invocation,
        routes::create_key,
        routes::list_keys,
        routes::delete_key,
        observe::events,
        observe::logs,
        observe::records,
        observe::stats,
        observe::usage,
        routes::list_dead_letters,
        routes::redrive,
        routes::build,
        releases::publish,
        releases::list_versions,
        releases::get_version,
        releases::delete_version,
        releases::put_alias,
        releases::list_aliases,
        releases::get_alias,
        releases::delete_alias,
        bus::publish,
        triggers::list,
        triggers::pause,
        triggers::resume,
        buckets::list,
        buckets::create,
        buckets::delete,
        buckets::list_objects,
        buckets::put_website,
        buckets::delete_website,
        flows::list,
        flows::put,
        flows::get,
        flows::delete,
        flows::start,
        flows::executions,
        flows::describe,
        flows::history,
        flows::stop,
        flows::task_success,
        flows::task_failure,
        flows::task_heartbeat,
        nodes::list,
    ),
    modifiers(&BearerAuth, &CommonErrors, &OptionalEvent),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// Marks the invoke API's event optional: no body is the event `{}`, as on Lambda.
/// The derive would only do so for `Option` types, which in a `content` list become `oneOf`
/// with `null`, and `null` is a JSON event like any other.
struct OptionalEvent;

impl utoipa::Modify for OptionalEvent {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let body = openapi
            .paths
            .paths
            .get_mut("/v1/functions/{name}/invocations")
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.request_body.as_mut());
        if let Some(body) = body {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

/// Documents the errors any operation can answer besides its own: a malformed request
/// (400), a missing token (401), a body sent too slowly (408), a fault (500), no capacity
/// (503) and a full disk (507), all with the `{code, message}` body.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let common = [
            ("400", "invalid_request: the request is malformed"),
            ("401", "unauthorized: the bearer token is missing or wrong"),
            ("408", "request_timeout: the body arrived too slowly"),
            ("500", "internal or storage_error"),
            ("503", "capacity_exhausted: no room now; retry later"),
            ("507", "storage_full: the server's disk is full"),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.head,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                // Operations open to all (health, the document itself) need no token.
                let open = op.security.as_ref().is_some_and(|s| {
                    s.iter()
                        .all(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({})))
                });
                for (status, description) in common {
                    if status == "401" && open {
                        continue;
                    }
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(description)
                                    .content(
                                        "application/json",
                                        ContentBuilder::new()
                                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                                            .build(),
                                    )
                                    .build(),
                            )
                        });
                }
            }
        }
    }
}

/// The whole HTTP surface: `/v1/*` behind the bearer token, plus `/healthz` and
/// `/v1/openapi.json` open to all.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/code", post(routes::upload_code))
        .route("/code/{sha256}", head(routes::code_exists))
        .route(
            "/functions",
            get(routes::list_functions).post(routes::create_function),
        )
        .route(
            "/functions/{name}",
            get(routes::get_function)
                .put(routes::put_function)
                .delete(routes::delete_function),
        )
        .route(
            "/functions/{name}/invocations",
            post(routes::invoke).get(observe::records),
        )
        .route("/functions/{name}/logs", get(observe::logs))
        .route("/functions/{name}/stats", get(observe::stats))
        .route("/usage", get(observe::usage))
        .route(
            "/functions/{name}/versions",
            get(releases::list_versions).post(releases::publish),
        )
        .route(
            "/functions/{name}/versions/{version}",
            get(releases::get_version).delete(releases::delete_version),
        )
        .route("/functions/{name}/aliases", get(releases::list_aliases))
        .route(
            "/functions/{name}/aliases/{alias}",
            get(releases::get_alias)
                .put(releases::put_alias)
                .delete(releases::delete_alias),
        )
        .route("/invocations/{request_id}", get(routes::get_invocation))
        .route("/keys", get(routes::list_keys).post(routes::create_key))
        .route("/events", get(observe::events).post(bus::publish))
        .route("/dlq", get(routes::list_dead_letters))
        .route("/dlq/redrive", post(routes::redrive))
        .route("/builds", post(routes::build))
        .route("/keys/{id}", axum::routing::delete(routes::delete_key))
        .route("/triggers", get(triggers::list))
        .route("/buckets", get(buckets::list).post(buckets::create))
        .route("/buckets/{name}", axum::routing::delete(buckets::delete))
        .route("/buckets/{name}/objects", get(buckets::list_objects))
        .route(
            "/buckets/{name}/website",
            axum::routing::put(buckets::put_website).delete(buckets::delete_website),
        )
        .route("/nodes", get(nodes::list))
        .route("/flows", get(flows::list))
        .route(
            "/flows/{name}",
            get(flows::get).put(flows::put).delete(flows::delete),
        )
        .route(
            "/flows/{name}/executions",
            get(flows::executions).post(flows::start),
        )
        .route("/executions/{id}", get(flows::describe))
        .route("/executions/{id}/history", get(flows::history))
        .route("/executions/{id}/stop", post(flows::stop))
        .route("/tasks/success", post(flows::task_success))
        .route("/tasks/failure", post(flows::task_failure))
        .route("/tasks/heartbeat", post(flows::task_heartbeat))
        .route(
            "/functions/{name}/triggers/{trigger}/pause",
            post(triggers::pause),
        )
        .route(
            "/functions/{name}/triggers/{trigger}/resume",
            post(triggers::resume),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let openapi = Arc::new(
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes"),
    );
    // Prometheus scrapes with the admin token (`authorization: {credentials: ...}`): the
    // metrics name every function.
    let metrics = Router::new()
        .route("/metrics", get(observe::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    // Calls other nodes forward to this one, their home: the node key, not the admin
    // token, and not in the OpenAPI document (no client calls it).
    let internal = Router::new()
        .route(forward::PATH, post(forward::serve))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::require_node_key,
        ));
    Router::new()
        .route("/healthz", get(routes::healthz))
        .merge(metrics)
        .merge(internal)
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.as_ref().clone(),
                    )
                }
            }),
        )
        .nest("/v1", v1)
        // Everything else is the gateway's: HTTP triggers, function URLs and websites.
        .fallback(gateway::handle)
        .with_state(state)
}

#[cfg(test)]
mod tests;
