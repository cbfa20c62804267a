//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]`
//! annotations as they are registered, so the document and the routes cannot drift.

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use utoipa::Modify;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppState, applications, apply, backup, cluster, gates, health, labels, meta, metrics, nodes, users};

/// The document's fixed parts: info, tags and security schemes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Aquarium fishd API", description = "Labels, applications, nodes and users of an Aquarium node."),
    modifiers(&SecuritySchemes),
    components(schemas(api_types::WatchEvent)),
    tags(
        (name = "apply", description = "Apply manifests"),
        (name = "labels"), (name = "applications"), (name = "nodes"), (name = "users"),
        (name = "cluster", description = "Join tokens and cluster state"),
        (name = "meta", description = "Metadata for resources"),
        (name = "operations", description = "Backups"),
        (name = "gates", description = "CI gates (read-only; configured in fish.yml)"),
        (name = "health", description = "Probes, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some("user:token or user:password"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "resource_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Bearer <FISH_META_TOKEN>` of a process resource",
            ))),
        );
    }
}

/// Documents the answers every route shares, after the routes are registered:
/// written once here instead of on every handler, so no handler can forget one.
///
/// - authenticated `/api/` routes: 401, 429 (rate limit or failed logins, with
///   `Retry-After`) and 503 (password checks queue full);
/// - routes with query parameters or a body: 400;
/// - routes with a body: 413 and 422;
/// - list routes with `watch`: their 200 may also be an `application/x-ndjson`
///   stream of `WatchEvent` lines.
pub fn complete(doc: &mut OpenApiDoc) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder};

    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
    };
    let retry_after = HeaderBuilder::new()
        .schema(Some(utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::Integer)))
        .description(Some("seconds until a request will pass"))
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        // `/meta/` has its own resource tokens, answered 404 when wrong.
        let user_auth = path.starts_with("/api/");
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            let add = |op: &mut utoipa::openapi::path::Operation, code: &str, r: utoipa::openapi::Response| {
                op.responses.responses.entry(code.to_owned()).or_insert(RefOr::T(r));
            };
            let params = op.parameters.as_deref().unwrap_or_default();
            let has_query = params.iter().any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
            let watches = params.iter().any(|p| matches!(p, RefOr::T(p) if p.name == "watch"));
            let has_body = op.request_body.is_some();
            if user_auth && op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                add(op, "401", error("no, malformed or invalid credentials").build());
                add(
                    op,
                    "429",
                    error("a user's rate limit, its open watches, or this address's failed logins")
                        .header("Retry-After", retry_after.clone())
                        .build(),
                );
                add(op, "503", error("too many password checks queued; retry, or use a token").build());
            }
            if has_query || has_body {
                add(op, "400", error("a malformed query or body").build());
            }
            if has_body {
                add(op, "413", error("the body is larger than 10 MiB").build());
                add(op, "422", error("invalid; `details` name the fields").build());
            }
            if watches && let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") {
                ok.content.insert(
                    "application/x-ndjson".to_owned(),
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("WatchEvent"))).build().into(),
                );
            }
        }
    }
}

/// Adds OpenAPI links from each create (its 201/200 answer) and each list (its first
/// item) to every operation on the object it names (`/collection/{name}...`), so a
/// stateful client such as schemathesis can follow an object it created through
/// get, deallocate, logs and delete. Derived from the paths, so a new item route gets
/// its links without anyone remembering to add them.
pub fn link_objects(doc: &mut OpenApiDoc) {
    use std::collections::BTreeMap;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::link::LinkBuilder;

    let mut item_ops: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, item) in &doc.paths.paths {
        let Some((collection, _)) = path.split_once("/{name}") else { continue };
        let ops = [&item.get, &item.put, &item.post, &item.delete, &item.patch];
        for op in ops.into_iter().flatten() {
            if let Some(id) = &op.operation_id {
                item_ops.entry(collection.to_owned()).or_default().push(id.clone());
            }
        }
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let Some(targets) = item_ops.get(path) else { continue };
        let sources = [
            (&mut item.post, "$response.body#/metadata/name", &["201", "200"][..]),
            (&mut item.get, "$response.body#/items/0/metadata/name", &["200"][..]),
        ];
        for (op, name, codes) in sources {
            let Some(op) = op else { continue };
            for code in codes {
                let Some(RefOr::T(response)) = op.responses.responses.get_mut(*code) else { continue };
                for id in targets {
                    let link = LinkBuilder::new().operation_id(id).parameter("name", name).build();
                    response.links.insert(id.clone(), RefOr::T(link));
                }
            }
        }
    }
}

/// Every documented route.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(apply::apply))
        .routes(routes!(labels::list_labels, labels::create_label))
        .routes(routes!(labels::get_label, labels::delete_label))
        .routes(routes!(applications::list_applications, applications::create_application))
        .routes(routes!(applications::get_application, applications::delete_application))
        .routes(routes!(applications::deallocate_application))
        .routes(routes!(applications::get_resource))
        .routes(routes!(applications::get_logs))
        .routes(routes!(nodes::list_nodes))
        .routes(routes!(nodes::get_node))
        .routes(routes!(nodes::set_maintenance))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::get_user, users::delete_user))
        .routes(routes!(users::rotate_token))
        .routes(routes!(gates::list_gates))
        .routes(routes!(gates::get_gate))
        .routes(routes!(cluster::create_join_token))
        .routes(routes!(backup::backup))
        .routes(routes!(health::whoami))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(meta::meta_data))
        .routes(routes!(openapi_json))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health",
    responses((status = 200, body = Object, description = "the OpenAPI 3 document")))]
pub async fn openapi_json(Extension(doc): Extension<OpenApiJson>) -> Response {
    let mut resp = Response::new(Body::from(doc.0));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The serialized document, made once when the router is built.
#[derive(Clone, Debug)]
pub struct OpenApiJson(pub Bytes);

impl OpenApiJson {
    /// Serializes `doc`.
    pub fn new(doc: &OpenApiDoc) -> Self {
        OpenApiJson(Bytes::from(doc.to_pretty_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialize the OpenAPI document");
            "{}".into()
        })))
    }
}
