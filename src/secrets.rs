//! Where secrets come from and how files holding them are written.
//!
//! The group key is read from a file, stdin or `DPSKIT_GROUP_KEY`, never from a plain
//! argument (arguments end up in shell history and `ps`). Files that hold keys are created
//! with mode 0600 and written whole-or-nothing (temp file + rename).

use anyhow::{bail, Context, Result};
use dpskit_core::GroupKey;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Environment variable that may hold the enrollment group key.
pub const GROUP_KEY_ENV: &str = "DPSKIT_GROUP_KEY";

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

    /// Reads and validates the group key from the chosen source.
    pub fn read(&self) -> Result<GroupKey> {
        let (text, field) = if let Some(path) = &self.group_key_file {
            (
                read_secret_file(path, "--group-key-file")?,
                "group key (--group-key-file)",
            )
        } else if self.group_key_stdin {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("group key: cannot read standard input")?;
            (s, "group key (stdin)")
        } else if let Ok(v) = std::env::var(GROUP_KEY_ENV) {
            (v, "group key (DPSKIT_GROUP_KEY)")
        } else {
            bail!("group key: none given; use --group-key-file FILE, --group-key-stdin, or set DPSKIT_GROUP_KEY")
        };
        Ok(GroupKey::parse(&text, field)?)
    }
}

/// Reads a small secret file, naming `flag` in every error.
pub fn read_secret_file(path: &Path, flag: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// Writes `bytes` to `path` with mode 0600, atomically: a crash leaves the old file or none.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, then rename).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
