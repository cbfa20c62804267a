//! `POST /api/v1/apply`, and the one path every create goes through.
//!
//! All documents are parsed and validated (shape, then the configured drivers)
//! before one `Command::Apply` is submitted, which the store applies all or nothing.

use api_types::{ApplyResponse, ApplyResult, FieldError, Label, Manifest, manifest};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, content_type, read_body};
use super::{AppState, audit};
use crate::auth::{AuthUser, secrets};
use crate::store::{ApplyItem, Command, Response, UserRecord};

/// Query of `POST /api/v1/apply`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ApplyQuery {
    /// Check and answer as a real apply would, with nothing written; the answer carries
    /// the objects as they would be stored (`objects`).
    pub dry_run: Option<bool>,
    /// Record the labels and users applied as members of this applyset (admin).
    pub applyset: Option<String>,
    /// With `applyset`: delete the set's members that this apply no longer holds.
    pub prune: Option<bool>,
}

/// How an apply runs: for real or as a dry run, under an applyset or not.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    pub dry_run: bool,
    /// (set name, prune).
    pub applyset: Option<(String, bool)>,
}

impl ApplyQuery {
    fn options(self) -> ApiResult<ApplyOptions> {
        let prune = self.prune.unwrap_or(false);
        let applyset = match self.applyset {
            Some(set) => {
                crate::store::check_set_name(&set)
                    .map_err(|m| ApiError::BadRequest(format!("applyset {set:?}: {m}")))?;
                Some((set, prune))
            }
            None if prune => {
                return Err(ApiError::BadRequest("prune needs applyset: only members of a set are pruned".into()));
            }
            None => None,
        };
        Ok(ApplyOptions { dry_run: self.dry_run.unwrap_or(false), applyset })
    }
}

/// Apply manifests: Labels, Applications and Users (YAML documents or JSON).
#[utoipa::path(
    post, path = "/api/v1/apply", tag = "apply", params(ApplyQuery),
    request_body(content = String, description = "YAML (one or more `---` documents) or JSON (an object or an array)",
        content_type = "application/yaml"),
    responses(
        (status = 200, body = ApplyResponse),
        (status = 400, body = api_types::ErrorBody, description = "not YAML/JSON; the message names line and column"),
        (status = 403, body = api_types::ErrorBody, description = "a non-admin applied something other than an Application, or used an applyset"),
        (status = 409, body = api_types::ErrorBody),
        (status = 413, body = api_types::ErrorBody),
        (status = 422, body = api_types::ErrorBody, description = "invalid; `details` name the fields"),
    ),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn apply(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<ApplyQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ApplyResponse>> {
    let options = query.options()?;
    let bytes = read_body(&headers, body, state.limits.max_body_bytes).await?;
    let format = api_types::Format::detect(content_type(&headers), &bytes);
    let values = manifest::parse_values(&bytes, format).map_err(|e| ApiError::from_manifest(e, 1))?;
    let count = values.len();
    let mut manifests = Vec::with_capacity(count);
    for (i, v) in values.into_iter().enumerate() {
        manifests.push(manifest::manifest_from_value(i + 1, v).map_err(|e| ApiError::from_manifest(e, count))?);
    }
    Ok(Json(apply_manifests_with(&state, &user, manifests, options).await?))
}

/// Parses a body that must be one document of `kind` (which it may omit).
pub fn parse_one(headers: &HeaderMap, bytes: &[u8], kind: &str) -> ApiResult<Manifest> {
    let format = api_types::Format::detect(content_type(headers), bytes);
    let mut values = manifest::parse_values(bytes, format).map_err(|e| ApiError::from_manifest(e, 1))?;
    if values.len() != 1 {
        return Err(ApiError::BadRequest(format!("expected one {kind} document, got {}", values.len())));
    }
    let mut value = values.remove(0);
    if let Some(obj) = value.as_object_mut() {
        let k = obj.entry("kind").or_insert_with(|| serde_json::Value::String(kind.to_owned()));
        if k.as_str() != Some(kind) {
            return Err(ApiError::invalid_field(
                format!("expected a {kind}"),
                "kind",
                format!("must be {kind:?} on this route (use /api/v1/apply for mixed kinds)"),
            ));
        }
    }
    manifest::manifest_from_value(1, value).map_err(|e| ApiError::from_manifest(e, 1))
}

/// Checks label definitions against this node's configured drivers.
pub fn check_definitions(state: &AppState, label: &Label) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, def) in label.spec.definitions.iter().enumerate() {
        match state.drivers.get(&def.driver) {
            None => {
                let configured: Vec<&str> = state.drivers.keys().map(String::as_str).collect();
                errors.push(FieldError {
                    field: format!("spec.definitions[{i}].driver"),
                    message: format!(
                        "no driver {:?} is configured on this node (configured: {})",
                        def.driver,
                        if configured.is_empty() { "none".to_owned() } else { configured.join(", ") }
                    ),
                });
            }
            Some(driver) => errors.extend(driver.validate(def).into_iter().map(|e| FieldError {
                field: if e.field.is_empty() {
                    format!("spec.definitions[{i}]")
                } else {
                    format!("spec.definitions[{i}].{}", e.field)
                },
                message: e.message,
            })),
        }
    }
    errors
}

/// Authorizes, checks and applies parsed manifests as `user`, all or nothing.
pub async fn apply_manifests(
    state: &AppState,
    user: &AuthUser,
    manifests: Vec<Manifest>,
) -> ApiResult<Vec<ApplyResult>> {
    Ok(apply_manifests_with(state, user, manifests, ApplyOptions::default()).await?.results)
}

/// [`apply_manifests`] with options: a dry run (nothing written, the objects as they
/// would be stored in the answer) and/or an applyset.
pub async fn apply_manifests_with(
    state: &AppState,
    user: &AuthUser,
    manifests: Vec<Manifest>,
    options: ApplyOptions,
) -> ApiResult<ApplyResponse> {
    if let Some((set, _)) = &options.applyset
        && !user.is_admin()
    {
        audit(user, "apply", "ApplySet", set, "forbidden");
        return Err(ApiError::Forbidden(format!("only an admin may apply under an applyset ({set:?})")));
    }
    let count = manifests.len();
    let mut items = Vec::with_capacity(count);
    for (i, m) in manifests.into_iter().enumerate() {
        let doc = if count > 1 { format!("document {}: ", i + 1) } else { String::new() };
        if !user.is_admin() && !matches!(m, Manifest::Application(_)) {
            audit(user, "apply", m.kind(), m.metadata().name_str(), "forbidden");
            return Err(ApiError::Forbidden(format!(
                "{doc}only an admin may apply a {}; users may apply Applications",
                m.kind()
            )));
        }
        items.push(match m {
            Manifest::Label(label) => {
                let errors = check_definitions(state, &label);
                if !errors.is_empty() {
                    let message = format!("{doc}label {:?} is invalid", label.metadata.name_str());
                    audit(user, "apply", "Label", label.metadata.name_str(), "invalid");
                    return Err(ApiError::Invalid { message, details: errors });
                }
                ApplyItem::Label { label, uid: Uuid::now_v7() }
            }
            Manifest::Application(app) => ApplyItem::Application { app, uid: Uuid::now_v7() },
            Manifest::User(u) => ApplyItem::User { record: new_user_record(state, u).await?.0, uid: Uuid::now_v7() },
        });
    }
    let names: Vec<(String, String)> = items
        .iter()
        .map(|i| match i {
            ApplyItem::Label { label, .. } => ("Label".to_owned(), label.metadata.name_str().to_owned()),
            ApplyItem::Application { app, .. } => ("Application".to_owned(), app.metadata.name_str().to_owned()),
            ApplyItem::User { record, .. } => ("User".to_owned(), record.user.metadata.name_str().to_owned()),
        })
        .collect();
    let (owner, now) = (user.name.clone(), OffsetDateTime::now_utc());
    let command = match options.applyset {
        Some((set, prune)) => Command::ApplySet { set, prune, items, owner, now },
        None => Command::Apply { items, owner, now },
    };
    let (outcome, objects) = if options.dry_run {
        let (outcome, objects) = state.store.dry_run(command).await?;
        (outcome, Some(objects))
    } else {
        (state.store.execute(command).await?, None)
    };
    match outcome {
        Ok(Response::Applied(results)) => {
            if objects.is_none() {
                for r in &results {
                    audit(user, "apply", &r.kind, &r.name, &r.action.to_string());
                }
            }
            Ok(ApplyResponse { results, objects })
        }
        Ok(other) => Err(ApiError::Internal(format!("unexpected store answer to apply: {other:?}"))),
        Err(rejection) => {
            for (kind, name) in &names {
                audit(user, "apply", kind, name, "rejected");
            }
            Err(rejection.into())
        }
    }
}

/// A user record for a create: the password hashed, a fresh token whose digest is
/// stored. Returns the token too (shown once by `POST /users`; discarded by apply,
/// where the user logs in with its password or an admin rotates its token).
pub async fn new_user_record(state: &AppState, mut user: api_types::User) -> ApiResult<(UserRecord, String)> {
    let password_hash = match user.spec.password.take() {
        Some(p) => Some(state.auth.hash_password(p).await?),
        None => None,
    };
    user.status = Default::default();
    let token = secrets::new_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let record = UserRecord { user, password_hash, token_digest: secrets::token_digest(&token) };
    Ok((record, token))
}
