//! The identifiers DPS works with: registration IDs and ID scopes.
//!
//! DPS compares registration IDs case-insensitively but the key derivation hashes the exact
//! bytes, so an ID typed in upper case somewhere gives a key that silently fails. dpskit refuses
//! upper case unless asked, and refuses characters DPS or MQTT topics cannot carry.

use alloc::format;
use alloc::string::String;
use core::fmt;

/// Longest registration ID DPS accepts.
pub const MAX_REGISTRATION_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    Empty {
        field: &'static str,
    },
    TooLong {
        field: &'static str,
        len: usize,
    },
    BadChar {
        field: &'static str,
        value: String,
        ch: char,
    },
    BadLastChar {
        field: &'static str,
        value: String,
    },
    UpperCase {
        field: &'static str,
        value: String,
    },
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdError::Empty { field } => write!(f, "{field}: empty; give a value"),
            IdError::TooLong { field, len } => write!(
                f,
                "{field}: {len} characters, DPS allows at most {MAX_REGISTRATION_ID_LEN}; shorten it"
            ),
            IdError::BadChar { field, value, ch } => write!(
                f,
                "{field}: {value:?} contains {ch:?}; DPS allows only letters, digits and - . _ :"
            ),
            IdError::BadLastChar { field, value } => write!(
                f,
                "{field}: {value:?} must end with a letter, a digit or '-'"
            ),
            IdError::UpperCase { field, value } => write!(
                f,
                "{field}: {value:?} has upper-case letters; DPS ignores case but the key is derived from the exact bytes, so use {:?} (or pass --allow-uppercase if the device really uses this spelling)",
                value.to_ascii_lowercase()
            ),
        }
    }
}

/// A registration ID DPS will accept (also the IoT Hub device ID for group enrollments).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegistrationId(String);

impl RegistrationId {
    /// Validates `value` exactly as given: no trimming, since the key covers exact bytes.
    pub fn parse(value: &str, allow_uppercase: bool) -> Result<Self, IdError> {
        let field = "registration ID";
        if value.is_empty() {
            return Err(IdError::Empty { field });
        }
        let len = value.chars().count();
        if len > MAX_REGISTRATION_ID_LEN {
            return Err(IdError::TooLong { field, len });
        }
        if let Some(ch) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
        {
            return Err(IdError::BadChar {
                field,
                value: value.into(),
                ch,
            });
        }
        let last = value.chars().last().unwrap_or('-');
        if !(last.is_ascii_alphanumeric() || last == '-') {
            return Err(IdError::BadLastChar {
                field,
                value: value.into(),
            });
        }
        if !allow_uppercase && value.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(IdError::UpperCase {
                field,
                value: value.into(),
            });
        }
        Ok(RegistrationId(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegistrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an ID scope was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeError(pub String);

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A DPS ID scope. No official grammar exists; every real one is `0ne` + 8 hex digits, so
/// anything else is a warning, and only what would break a topic or token is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdScope(String);

impl IdScope {
    /// Returns the scope and, when it does not look like `0ne` + 8 hex digits, a warning.
    pub fn parse(value: &str) -> Result<(Self, Option<String>), ScopeError> {
        if value.trim().is_empty() {
            return Err(ScopeError(String::from(
                "ID scope: empty; copy it from the DPS overview page (it looks like 0ne00ABCDEF)",
            )));
        }
        if let Some(ch) = value
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || "/#+?&=%\\\"".contains(*c))
        {
            return Err(ScopeError(format!(
                "ID scope: {value:?} contains {ch:?}; an ID scope is letters and digits only (like 0ne00ABCDEF)"
            )));
        }
        let looks_right = value.len() == 11
            && value[..3].eq_ignore_ascii_case("0ne")
            && value[3..].chars().all(|c| c.is_ascii_hexdigit());
        let warning = (!looks_right).then(|| {
            format!("ID scope: {value:?} does not look like a DPS ID scope (0ne + 8 hex digits); check it on the DPS overview page")
        });
        Ok((IdScope(value.into()), warning))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for IdError {}

impl core::error::Error for ScopeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids() {
        assert!(RegistrationId::parse("sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6", false).is_ok());
        assert!(RegistrationId::parse("dev.1_a:b-", false).is_ok());
        assert!(matches!(
            RegistrationId::parse("", false),
            Err(IdError::Empty { .. })
        ));
        let long = "a".repeat(129);
        assert!(matches!(
            RegistrationId::parse(&long, false),
            Err(IdError::TooLong { len: 129, .. })
        ));
        assert!(RegistrationId::parse(&"a".repeat(128), false).is_ok());
        assert!(matches!(
            RegistrationId::parse("a b", false),
            Err(IdError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            RegistrationId::parse("a/b", false),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            RegistrationId::parse("ab.", false),
            Err(IdError::BadLastChar { .. })
        ));
        let e = RegistrationId::parse("SN-1", false).unwrap_err();
        assert!(e.to_string().contains("\"sn-1\""));
        assert!(RegistrationId::parse("SN-1", true).is_ok());
    }

    #[test]
    fn scopes() {
        assert_eq!(IdScope::parse("0ne00ABCDEF").unwrap().1, None);
        assert!(IdScope::parse("scope-x").unwrap().1.is_some());
        assert!(IdScope::parse("").is_err());
        assert!(IdScope::parse(" ").is_err());
        assert!(IdScope::parse("0ne/00").is_err());
        assert!(IdScope::parse("0ne 0001").is_err());
    }
}
