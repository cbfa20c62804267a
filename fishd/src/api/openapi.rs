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

use super::{AppState, applications, apply, health, labels, meta, metrics, nodes, users};

/// The document's fixed parts: info, tags and security schemes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Aquarium fishd API", description = "Labels, applications, nodes and users of an Aquarium node."),
    modifiers(&SecuritySchemes),
    tags(
        (name = "apply", description = "Apply manifests"),
        (name = "labels"), (name = "applications"), (name = "nodes"), (name = "users"),
        (name = "meta", description = "Metadata for resources"),
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
