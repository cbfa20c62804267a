//! Envelopes of the REST API: lists, watch events, apply results and errors.

use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// A list answer: `{"apiVersion","kind":"ApplicationList","metadata":{"resourceVersion"},"items":[...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ListMeta,
    pub items: Vec<T>,
}

impl<T> List<T> {
    /// A list of `kind` (e.g. `Application`) at store revision `revision`.
    pub fn new(kind: &str, revision: u64, items: Vec<T>) -> Self {
        List {
            api_version: crate::API_VERSION.to_owned(),
            kind: format!("{kind}List"),
            metadata: ListMeta { resource_version: revision.to_string() },
            items,
        }
    }
}

/// The store revision a list was read at; resume a watch from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    pub resource_version: String,
}

/// The kinds of watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
    /// The last event of a stream the server closes; `object` is an [`ErrorBody`].
    Error,
}

/// One line of a watch stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub event_type: WatchEventType,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub object: serde_json::Value,
}

/// What `apply` did with one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ApplyAction {
    Created,
    Unchanged,
    Configured,
    /// Deleted because it left its applyset (`apply --prune`).
    Pruned,
}

impl std::fmt::Display for ApplyAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApplyAction::Created => "created",
            ApplyAction::Unchanged => "unchanged",
            ApplyAction::Configured => "configured",
            ApplyAction::Pruned => "pruned",
        })
    }
}

/// One document's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApplyResult {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub action: ApplyAction,
}

/// The answer to `POST /api/v1/apply`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
    /// Dry runs only (`?dryRun=true`): for each result, the object as the apply would
    /// store it (`null` for a pruned one), so a client can diff it against the stored
    /// one. Users never carry secrets here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<Object>>))]
    pub objects: Option<Vec<serde_json::Value>>,
}

/// Machine-readable error reasons, each tied to one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorReason {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Expired,
    Conflict,
    PayloadTooLarge,
    Invalid,
    TooManyRequests,
    Internal,
    Unavailable,
}

impl ErrorReason {
    /// The HTTP status this reason is sent with.
    pub fn status(self) -> u16 {
        match self {
            ErrorReason::BadRequest => 400,
            ErrorReason::Unauthorized => 401,
            ErrorReason::Forbidden => 403,
            ErrorReason::NotFound => 404,
            ErrorReason::Expired => 410,
            ErrorReason::Conflict => 409,
            ErrorReason::PayloadTooLarge => 413,
            ErrorReason::Invalid => 422,
            ErrorReason::TooManyRequests => 429,
            ErrorReason::Internal => 500,
            ErrorReason::Unavailable => 503,
        }
    }
}

/// Every error answer of the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub code: u16,
    pub reason: ErrorReason,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

impl ErrorBody {
    /// An error with no field details.
    pub fn new(reason: ErrorReason, message: impl Into<String>) -> Self {
        ErrorBody { code: reason.status(), reason, message: message.into(), details: Vec::new() }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for d in &self.details {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}
