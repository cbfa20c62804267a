//! User: who may do what, and how they prove it.

use serde::{Deserialize, Serialize};

use crate::meta::{ApiVersion, ObjectMeta, literal_marker};
use crate::validate::{Validate, Violations};

literal_marker!(
    /// `kind: User`.
    UserKind = "User"
);

/// A user document. Secrets appear only once: `spec.password` on the way in,
/// `status.token` in the answer to a create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct User {
    #[serde(default)]
    pub api_version: ApiVersion,
    #[serde(default)]
    pub kind: UserKind,
    /// `name` is required.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true, schema_with = crate::meta::named_meta_schema))]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: UserSpec,
    #[serde(default, skip_serializing_if = "UserStatus::is_empty")]
    pub status: UserStatus,
}

/// What an admin sets on a user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSpec {
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Stored as an argon2id hash, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Requests per minute; overrides the node's `rateLimit`. 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
}

/// Server-set facts about a user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct UserStatus {
    /// Present only in the answer that creates the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl UserStatus {
    fn is_empty(&self) -> bool {
        self.token.is_none()
    }
}

/// A role: `admin` may do everything; `user` creates applications and sees and
/// deallocates only its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl User {
    /// Whether the user has the admin role.
    pub fn is_admin(&self) -> bool {
        self.spec.roles.contains(&Role::Admin)
    }
}

/// Long enough to resist guessing; argon2 makes each guess cost ~25 ms anyway.
const MIN_PASSWORD_LEN: usize = 8;
/// argon2 hashes any length, but a megabyte password is an attack, not a secret.
const MAX_PASSWORD_LEN: usize = 1024;

impl Validate for User {
    fn validate_into(&self, v: &mut Violations) {
        if self.metadata.name.is_none() {
            v.push("metadata.name", "is required");
        }
        if let Some(p) = &self.spec.password {
            if p.len() < MIN_PASSWORD_LEN {
                v.push("spec.password", format!("must be at least {MIN_PASSWORD_LEN} characters"));
            } else if p.len() > MAX_PASSWORD_LEN {
                v.push("spec.password", format!("must be at most {MAX_PASSWORD_LEN} characters"));
            }
        }
    }
}
