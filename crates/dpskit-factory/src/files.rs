//! How files holding keys are written: whole or not at all (temp file in the same folder, then
//! rename), readable by their owner only.
//!
//! On Unix the file is created mode 0600. Windows has no mode bits: the file gets the ACL it
//! inherits from its folder (a user profile is private to its user by default); dpskit does
//! not set ACLs itself.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}: not a file path", .0.display())]
    NotAFile(PathBuf),
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `bytes` to `path`, readable by its owner only (mode 0600 on Unix), atomically: a
/// crash leaves the old file or none.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_file(path, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically with `mode` (Unix permission bits; ignored on Windows).
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| WriteError::NotAFile(path.to_path_buf()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = options.open(&tmp).map_err(|source| WriteError::Create {
            path: tmp.clone(),
            source,
        })?;
        let written = f.write_all(bytes).and_then(|_| f.sync_all());
        drop(f);
        written
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| WriteError::Write {
                path: path.to_path_buf(),
                source,
            })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
