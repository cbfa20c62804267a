//! Object names: short, URL-safe, and checked while deserializing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest name we accept; long enough for `build-<job>-<number>`, short enough to
/// appear in container and directory names.
pub const MAX_NAME_LEN: usize = 63;

/// A validated object name: 1..=63 ASCII letters, digits, `-`, `_` or `.`, starting
/// and ending with a letter or digit. It is safe in a URL path, a file name and a
/// Docker container or volume name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// Why a string is not a [`Name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("may contain only letters, digits, '-', '_' and '.', and must start and end with a letter or digit")]
    BadCharacter,
}

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        let ok_inner = s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        let first = s.as_bytes()[0];
        let last = s.as_bytes()[s.len() - 1];
        if !ok_inner || !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return Err(NameError::BadCharacter);
        }
        Ok(Name(s.to_owned()))
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_names() {
        for ok in ["a", "ubuntu-ci", "build_1234", "jenkins.agent-7", "A1"] {
            assert!(ok.parse::<Name>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_unsafe_names() {
        assert_eq!("".parse::<Name>(), Err(NameError::Empty));
        assert_eq!("-x".parse::<Name>(), Err(NameError::BadCharacter));
        assert_eq!("a/b".parse::<Name>(), Err(NameError::BadCharacter));
        assert_eq!("../etc".parse::<Name>(), Err(NameError::BadCharacter));
        assert_eq!("x".repeat(64).parse::<Name>(), Err(NameError::TooLong));
    }
}

/// [`Name`]'s rules as a regular expression, for the OpenAPI document.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$";

crate::meta::string_schema!(Name, pattern = NAME_PATTERN, max_length = MAX_NAME_LEN);
