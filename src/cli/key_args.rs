//! The flags that name where the group key (and other secret files) come from, mapped onto
//! the library's one reader, [`KeySource`], with the flags' own names in every message.

use anyhow::{bail, Result};
use dpskit_core::GroupKey;
use dpskit_factory::keys::{KeySource, SourceError, GROUP_KEY_ENV};
use std::path::{Path, PathBuf};

/// The ways to hand dpskit the enrollment group key.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GroupKeyArgs {
    /// File holding the enrollment group's primary key (base64). Or set DPSKIT_GROUP_KEY.
    #[arg(long, value_name = "FILE")]
    pub group_key_file: Option<PathBuf>,
    /// Read the group key from standard input.
    #[arg(long, conflicts_with = "group_key_file")]
    pub group_key_stdin: bool,
}

impl GroupKeyArgs {
    /// True when some source was named (flag or environment).
    pub fn is_given(&self) -> bool {
        self.group_key_file.is_some()
            || self.group_key_stdin
            || std::env::var_os(GROUP_KEY_ENV).is_some()
    }

    /// The chosen source with the name it goes by in messages.
    fn source(&self) -> Result<(KeySource, &'static str)> {
        Ok(if let Some(path) = &self.group_key_file {
            (
                KeySource::File(path.clone()),
                "group key (--group-key-file)",
            )
        } else if self.group_key_stdin {
            (KeySource::Stdin, "group key (stdin)")
        } else if std::env::var_os(GROUP_KEY_ENV).is_some() {
            (
                KeySource::Env(GROUP_KEY_ENV.into()),
                "group key (DPSKIT_GROUP_KEY)",
            )
        } else {
            bail!("group key: none given; use --group-key-file FILE, --group-key-stdin, or set DPSKIT_GROUP_KEY")
        })
    }

    /// Reads and validates the group key from the chosen source.
    pub fn read(&self) -> Result<GroupKey> {
        let (source, field) = self.source()?;
        match source.group_key(field) {
            Ok((key, warning)) => {
                if let Some(w) = warning {
                    eprintln!("warning: {w}");
                }
                Ok(key)
            }
            Err(e @ SourceError::File { .. }) => bail!("--group-key-file: {e}"),
            Err(e @ SourceError::Stdin(_)) => bail!("group key: {e}"),
            Err(e) => Err(e.into()),
        }
    }
}

/// Reads a small secret file named by `flag` (`--device-key-file`, `--wifi-password-file`,
/// …), warning when other users can read it.
pub fn read_secret_file(path: &Path, flag: &str) -> Result<String> {
    match KeySource::File(path.to_path_buf()).read(flag) {
        Ok(s) => {
            if let Some(w) = s.warning {
                eprintln!("warning: {w}");
            }
            Ok(s.text)
        }
        Err(e) => bail!("{flag}: {e}"),
    }
}
