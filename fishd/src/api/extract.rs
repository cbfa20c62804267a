//! Request plumbing shared by handlers: bounded bodies, typed queries and bodies
//! whose every failure is an [`ApiError`] in the contract's shape.

use std::time::Duration;

use api_types::manifest;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Query};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Bytes read and thrown away after the limit, so the client finishes sending and
/// reads our 413 instead of a reset connection. Beyond this the connection is cut.
const DRAIN_MAX: usize = 64 * 1024 * 1024;
/// How long draining may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Draining stops when the client sends nothing for this long: it is not sending.
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"));
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > limit as u64) {
        // A length we would not even drain: answer now (the connection is then closed),
        // rather than wait for a body a lying client never sends.
        if declared.is_some_and(|n| n > DRAIN_MAX as u64) {
            return Err(too_large());
        }
        drain(stream).await;
        return Err(too_large());
    }
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the request body failed: {e}")))?;
        if buf.len() + chunk.len() > limit {
            drain(stream).await;
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

async fn drain(mut stream: axum::body::BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut seen = 0usize;
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(DRAIN_IDLE, stream.next()).await {
            seen += chunk.len();
            if seen > DRAIN_MAX {
                break;
            }
        }
    })
    .await;
}

/// The request's `Content-Type`, if readable.
pub fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// Reads a JSON (or YAML) body into `T`: 400 for bad syntax (with line and column),
/// 422 with the field path for a wrong shape.
pub fn parse_body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let format = api_types::Format::detect(content_type(headers), bytes);
    let mut docs = manifest::parse_values(bytes, format).map_err(|e| ApiError::from_manifest(e, 1))?;
    if docs.len() != 1 {
        return Err(ApiError::BadRequest(format!("expected one document, got {}", docs.len())));
    }
    let value = docs.remove(0);
    manifest::typed::<T>(value)
        .map_err(|errors| ApiError::Invalid { message: format!("{what} is invalid"), details: errors })
}

/// `Query<T>` whose failures are 400 [`ApiError`]s.
#[derive(Debug, Clone, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}
