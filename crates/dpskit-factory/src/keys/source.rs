//! Where secrets come from: the one reader of group keys (and other key or password files) for
//! the CLI, the station file and the emulator's enrollment groups, with the one permission
//! check.
//!
//! A group key is read from a file, stdin or an environment variable, never from a plain
//! argument (arguments end up in shell history and `ps`). Callers map a [`SourceError`] to
//! their own field names (`--group-key-file`, `[group_key] file`, `primary_key_file`).

use dpskit_core::{GroupKey, KeyError};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Environment variable that holds the enrollment group key unless told otherwise.
pub const GROUP_KEY_ENV: &str = "DPSKIT_GROUP_KEY";

/// One place a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding only the secret (a trailing newline is fine).
    File(PathBuf),
    /// Standard input, read to its end.
    Stdin,
    /// An environment variable, by name.
    Env(String),
}

/// Why a secret could not be read. Carries no secret: never the text, only where from.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read standard input: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("the environment variable {0} is not set")]
    EnvUnset(String),
    /// Read, but not a valid key (the message names the field given to `parse`).
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A secret as read, with the warning its file earned (readable by other users).
#[derive(Debug)]
pub struct Secret {
    pub text: String,
    /// `Some(message)` when the file is readable by other users; the message names `field`.
    pub warning: Option<String>,
}

impl KeySource {
    /// Reads the secret's text; `field` names it in the permission warning.
    pub fn read(&self, field: &str) -> Result<Secret, SourceError> {
        match self {
            KeySource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SourceError::File {
                    path: path.clone(),
                    source,
                })?;
                Ok(Secret {
                    text,
                    warning: shared_file_warning(path, field),
                })
            }
            KeySource::Stdin => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(SourceError::Stdin)?;
                Ok(Secret {
                    text,
                    warning: None,
                })
            }
            KeySource::Env(name) => std::env::var(name)
                .map(|text| Secret {
                    text,
                    warning: None,
                })
                .map_err(|_| SourceError::EnvUnset(name.clone())),
        }
    }

    /// Reads and validates a group key; `field` names it in every message.
    pub fn group_key(
        &self,
        field: &'static str,
    ) -> Result<(GroupKey, Option<String>), SourceError> {
        let s = self.read(field)?;
        Ok((GroupKey::parse(&s.text, field)?, s.warning))
    }
}

/// The one permission check for files holding secrets: on Unix, a file that its group or
/// others can read earns a warning naming `field` and the fix. Windows has no mode bits; files
/// there are as private as the folder they are in (a user profile is private by default), and
/// dpskit sets no ACLs, so this returns `None`.
pub fn shared_file_warning(path: &Path, field: &str) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(path).ok()?;
        (m.permissions().mode() & 0o077 != 0).then(|| {
            format!(
                "{field}: {} is readable by other users; chmod 600 it",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (path, field);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_and_warns_when_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.key");
        crate::files::write_private_file(&path, format!("{}==\n", "A".repeat(86)).as_bytes())
            .unwrap();
        let (_, warning) = KeySource::File(path.clone()).group_key("g").unwrap();
        assert_eq!(warning, None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let (_, warning) = KeySource::File(path).group_key("[group_key] file").unwrap();
            assert!(warning.unwrap().starts_with("[group_key] file: "));
        }
    }

    #[test]
    fn an_unset_variable_is_named_and_a_bad_key_names_the_field() {
        let e = KeySource::Env("DPSKIT_TEST_SURELY_UNSET".into())
            .read("x")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the environment variable DPSKIT_TEST_SURELY_UNSET is not set"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "not base64 !").unwrap();
        let e = KeySource::File(path).group_key("my field").unwrap_err();
        assert!(matches!(e, SourceError::Key(_)));
        assert!(e.to_string().contains("my field"), "{e}");
    }
}
