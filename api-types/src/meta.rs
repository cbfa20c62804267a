//! Object metadata common to every kind, and the kind markers.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::name::Name;

/// The `apiVersion` of every object this crate defines.
pub const API_VERSION: &str = "aquarium.fish/v1";

/// Kubernetes-style metadata. Everything but `name` (and `version` on a label) is
/// assigned by the server; values sent by users for server fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub created_at: Option<OffsetDateTime>,
    /// The store revision of the object's last change, as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Labels only: the immutable version number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

impl ObjectMeta {
    /// Metadata with only a name, as a user writes it.
    pub fn named(name: Name) -> Self {
        ObjectMeta { name: Some(name), ..Default::default() }
    }

    /// The name, or the empty string for an object that has none yet.
    pub fn name_str(&self) -> &str {
        self.name.as_ref().map(Name::as_str).unwrap_or("")
    }
}

/// Defines a zero-sized marker that (de)serializes as exactly one string, so that
/// `kind: Label` and `apiVersion: aquarium.fish/v1` are checked by the type system.
macro_rules! literal_marker {
    ($(#[$doc:meta])* $ty:ident = $lit:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $ty;

        impl $ty {
            /// The one string this marker stands for.
            pub const VALUE: &'static str = $lit;
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($lit)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                if s == $lit {
                    Ok($ty)
                } else {
                    Err(serde::de::Error::custom(format!("expected {:?}, got {:?}", $lit, s)))
                }
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$lit]))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $ty {}
    };
}
pub(crate) use literal_marker;

/// Documents a type that (de)serializes as a plain string in the OpenAPI schema;
/// with a pattern, the schema refuses what parsing refuses (so a generator such as
/// schemathesis builds valid values, and invalid ones are documented as such).
macro_rules! string_schema {
    ($ty:ident) => {
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String).into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $ty {}
    };
    ($ty:ident, pattern = $pattern:expr, max_length = $max:expr) => {
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .min_length(Some(1))
                    .max_length(Some($max))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $ty {}
    };
}
pub(crate) use string_schema;

/// The schema of `metadata` where a name is required (labels and users; an
/// application's name may be left to the server): [`ObjectMeta`] with `name` required.
#[cfg(feature = "openapi")]
pub(crate) fn named_meta_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder};
    utoipa::openapi::schema::Schema::AllOf(
        AllOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("ObjectMeta"))
            .item(ObjectBuilder::new().required("name"))
            .build(),
    )
}

literal_marker!(
    /// `apiVersion: aquarium.fish/v1`.
    ApiVersion = "aquarium.fish/v1"
);
