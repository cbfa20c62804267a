//! Validation that reports every problem at once, each with its field path.

use serde::{Deserialize, Serialize};

/// One problem with one field, e.g. `spec.definitions[0].resources.cpu: must be > 0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.field, self.message) }
    }
}

/// A collector of [`FieldError`]s.
#[derive(Debug, Default)]
pub struct Violations(pub Vec<FieldError>);

impl Violations {
    /// Records a problem with `field`.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }
}

/// Checks an object beyond what its types already guarantee.
pub trait Validate {
    /// Adds every problem found to `v`.
    fn validate_into(&self, v: &mut Violations);

    /// Every problem, or `Ok` when there is none.
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut v = Violations::default();
        self.validate_into(&mut v);
        if v.0.is_empty() { Ok(()) } else { Err(v.0) }
    }
}
