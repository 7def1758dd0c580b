//! Why an emulator could not start: typed, so callers can tell bad input (groups, names) from
//! an environment that failed (a port in use, a state directory that cannot be written).

use super::admin::AdminError;
use super::certs::CertError;
use super::enrollment::GroupsError;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(transparent)]
    Groups(#[from] GroupsError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error("--bind {addr}: cannot listen there ({source}); another emulator or MQTT broker on the port? ports below 1024 need privileges")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--sntp {addr}: cannot listen there ({source}); another time server on the port? port 123 needs privileges")]
    SntpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("--log-json: cannot open {}: {source}", path.display())]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Registrations {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the log writer: {0}")]
    Journal(std::io::Error),
}

impl EmulatorError {
    /// True when the environment failed (a port, a file, the OS), not the input.
    pub fn is_environment(&self) -> bool {
        !matches!(
            self,
            EmulatorError::Groups(_)
                | EmulatorError::Certs(CertError::San { .. })
                | EmulatorError::Admin(AdminError::AlreadyRunning(_))
        )
    }
}
