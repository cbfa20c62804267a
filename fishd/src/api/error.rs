//! The one error type of the API, and how each variant becomes an HTTP answer.
//!
//! Every error leaves as an [`ErrorBody`] with the status its reason implies, so a
//! client only ever parses one shape. Storage failures are logged here with their
//! cause and answered with a bare 500: their details are ours, not the caller's.

use api_types::{ErrorBody, ErrorReason, FieldError, ManifestError};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::store::{Rejection, StoreError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Expired(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{message}")]
    Invalid { message: String, details: Vec<FieldError> },
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("storage failed")]
    Store(StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 422 with one field error.
    pub fn invalid_field(message: impl Into<String>, field: impl Into<String>, why: impl Into<String>) -> Self {
        ApiError::Invalid {
            message: message.into(),
            details: vec![FieldError { field: field.into(), message: why.into() }],
        }
    }

    /// The reason this error is sent with.
    pub fn reason(&self) -> ErrorReason {
        match self {
            ApiError::BadRequest(_) => ErrorReason::BadRequest,
            ApiError::Unauthorized(_) => ErrorReason::Unauthorized,
            ApiError::Forbidden(_) => ErrorReason::Forbidden,
            ApiError::NotFound(_) => ErrorReason::NotFound,
            ApiError::Conflict(_) => ErrorReason::Conflict,
            ApiError::Expired(_) => ErrorReason::Expired,
            ApiError::PayloadTooLarge(_) => ErrorReason::PayloadTooLarge,
            ApiError::Invalid { .. } => ErrorReason::Invalid,
            ApiError::TooManyRequests { .. } => ErrorReason::TooManyRequests,
            ApiError::Unavailable(_) => ErrorReason::Unavailable,
            ApiError::Store(_) | ApiError::Internal(_) => ErrorReason::Internal,
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.reason(), self.to_string());
        if let ApiError::Invalid { details, .. } = self {
            body.details = details.clone();
        }
        if let ApiError::Store(_) = self {
            body.message = "internal storage error; see the fishd log".into();
        }
        body
    }

    /// Maps a manifest parsing error; `documents` is how many the body held, so that
    /// the document number is named only when it helps.
    pub fn from_manifest(e: ManifestError, documents: usize) -> Self {
        match e {
            ManifestError::Syntax { message, line, column } => {
                let at = match (line, column) {
                    (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
                    (Some(l), None) => format!(" at line {l}"),
                    _ => String::new(),
                };
                // serde_json already says "at line L column C"; don't say it twice.
                let message = if message.contains(" at line ") { message } else { format!("{message}{at}") };
                ApiError::BadRequest(message)
            }
            ManifestError::Invalid { document, kind, name, errors } => {
                let what =
                    if name.is_empty() { kind.to_lowercase() } else { format!("{} {name:?}", kind.to_lowercase()) };
                let message = if documents > 1 {
                    format!("document {document}: {what} is invalid")
                } else {
                    format!("{what} is invalid")
                };
                ApiError::Invalid { message, details: errors }
            }
        }
    }
}

impl From<StoreError> for ApiError {
    /// A write that found no quorum is a 503 the caller may retry; any other store
    /// failure is ours (500).
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            e => ApiError::Store(e),
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::NotFound(m) => ApiError::NotFound(m),
            Rejection::Conflict(m) => ApiError::Conflict(m),
            Rejection::Invalid { message, errors } => ApiError::Invalid { message, details: errors },
            r @ (Rejection::PhaseChanged { .. } | Rejection::NodeChanged { .. }) => ApiError::Conflict(r.to_string()),
            Rejection::Expired(m) => ApiError::Expired(m),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized(m) => ApiError::Unauthorized(m),
            AuthError::Forbidden(m) => ApiError::Forbidden(m),
            AuthError::TooManyRequests { message, retry_after_secs } => {
                ApiError::TooManyRequests { message, retry_after_secs }
            }
            AuthError::Busy(m) => ApiError::Unavailable(m),
            AuthError::Store(e) => ApiError::Store(e),
            e @ (AuthError::Secret(_) | AuthError::Task { .. }) => {
                let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                ApiError::Internal(format!("{e}{cause}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Store(e) = &self {
            tracing::error!(error = %e, source = ?std::error::Error::source(e), "request failed in the store");
        }
        if let ApiError::Internal(m) = &self {
            tracing::error!(error = %m, "request failed");
        }
        let body = self.body();
        let status = StatusCode::from_u16(body.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(body)).into_response();
        match &self {
            ApiError::Unauthorized(_) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer, Basic realm=\"aquarium\""));
            }
            ApiError::TooManyRequests { retry_after_secs, .. } => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        resp
    }
}

/// The result type of every handler.
pub type ApiResult<T> = Result<T, ApiError>;
