//! The route table: every documented route, the OpenAPI document, metrics, the
//! dashboard's files (`/ui/`) and the fallbacks, with the layers that apply to all of them.

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router};
use tower_http::trace::TraceLayer;

use super::AppState;
use super::error::ApiError;
use super::metrics::track;
use super::openapi::{OpenApiJson, api_router};

/// The whole API as an axum router.
pub fn router(state: AppState) -> Router {
    let (routes, mut doc) = api_router().split_for_parts();
    super::openapi::complete(&mut doc);
    super::openapi::link_objects(&mut doc);
    routes
        .merge(super::cluster::cluster_routes())
        .merge(super::ui::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        // Bodies are read by `extract::read_body`, which answers 413 itself.
        .layer(DefaultBodyLimit::disable())
        .layer(Extension(OpenApiJson::new(&doc)))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Only `/meta/v1/data`: what resources on a driver's private network may reach.
pub fn meta_router(state: AppState) -> Router {
    Router::new()
        .route("/meta/v1/data", axum::routing::get(super::meta::meta_data))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(4096))
        .with_state(state)
}
