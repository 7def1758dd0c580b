//! Why the device application stopped, and why a connection failed, in plain words.
//!
//! Connection failures happen below the sans-IO app (TCP, TLS, the MQTT session), so the
//! driver describes them as a [`LinkError`] and hands them in with
//! [`DeviceApp::link_failed`](crate::DeviceApp::link_failed) just before it reports
//! `Event::Disconnected`. The app keeps the last one so a final error says what really
//! happened ("connection refused by 127.0.0.1:8883"), not only "the connection dropped".

use crate::time::format_unix_ms;
use alloc::string::String;
use core::fmt;
use dpskit_core::dps::DpsError;
use dpskit_core::mqtt::SetupError;

/// Which service a connection was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Dps,
    Hub,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Dps => "DPS",
            Service::Hub => "IoT Hub",
        })
    }
}

/// What kind of connection failure the driver saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkErrorKind {
    /// DNS, TCP refused/unreachable: the host cannot be reached (retried).
    Unreachable,
    /// The server's certificate did not verify against the root CAs of the config, or is
    /// outside its validity at the device's time. Final: retrying cannot fix it.
    Certificate,
    /// Another TLS failure (protocol version, handshake alert). Retried.
    Tls,
    /// Out of memory while opening the connection (mbedTLS without PSRAM, P8). Retried.
    OutOfMemory,
    /// No answer in time (TCP, TLS or CONNACK). Retried.
    Timeout,
    /// An open connection closed or failed. Retried.
    Closed,
}

/// A connection failure as the driver describes it; `detail` is one line of plain words
/// (for certificates: which host, which CA, which dates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkError {
    pub kind: LinkErrorKind,
    pub detail: String,
}

impl LinkError {
    pub fn new(kind: LinkErrorKind, detail: impl Into<String>) -> Self {
        LinkError {
            kind,
            detail: detail.into(),
        }
    }

    /// True when retrying the same connection cannot help.
    pub fn is_final(&self) -> bool {
        self.kind == LinkErrorKind::Certificate
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)?;
        if self.kind == LinkErrorKind::OutOfMemory {
            f.write_str(
                " (TLS needs ~40 KB per connection: enable PSRAM and put mbedTLS buffers there)",
            )?;
        }
        Ok(())
    }
}

/// Why the application stopped for good. `Display` is one line naming the cause and the fix.
#[derive(Debug, Clone, PartialEq)]
pub enum AppError {
    /// A setting the DPS or hub client cannot work with.
    Setup(SetupError),
    /// The clock is before [`MIN_PLAUSIBLE_UNIX_MS`](crate::MIN_PLAUSIBLE_UNIX_MS): SNTP has
    /// not run, so certificates cannot be checked and tokens would be born expired.
    ClockNotSet { now_ms: u64 },
    /// Registration failed; `link` is the last connection error, if any.
    Dps {
        error: DpsError,
        link: Option<LinkError>,
    },
    /// The server's certificate was refused (wrong root CA on the device, or its clock).
    Certificate {
        service: Service,
        host: String,
        link: LinkError,
    },
    /// The hub refused the device's token (CONNACK 5) right after DPS assigned it there.
    HubUnauthorized { hub: String, device_id: String },
    /// The hub could not be reached `attempts` times in a row (only with a failure limit).
    HubUnreachable {
        hub: String,
        attempts: u32,
        link: Option<LinkError>,
    },
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Setup(e) => write!(f, "setting {e}"),
            AppError::ClockNotSet { now_ms } => write!(
                f,
                "clock not set (SNTP): the device time is {}, before 2024; TLS certificates cannot be checked and SAS tokens would be expired, so nothing was sent — wait for SNTP before connecting",
                format_unix_ms(*now_ms)
            ),
            AppError::Dps { error, link } => {
                write!(f, "{error}")?;
                if let Some(l) = link {
                    write!(f, "; last connection error: {l}")?;
                }
                Ok(())
            }
            AppError::Certificate { service, host, link } => write!(
                f,
                "TLS: the {service} server {host} was refused: {link}"
            ),
            AppError::HubUnauthorized { hub, device_id } => write!(
                f,
                "IoT Hub {hub} refused device {device_id:?} (CONNACK 5, not authorized) right after DPS assigned it there, so the key is right for DPS: the hub token was rejected — the device clock may be off (SNTP), the device is disabled in the hub, or the DPS link to this hub is stale (re-link the hub in DPS)"
            ),
            AppError::HubUnreachable { hub, attempts, link } => {
                write!(f, "IoT Hub {hub} could not be reached in {attempts} attempts in a row")?;
                if let Some(l) = link {
                    write!(f, "; last: {l}")?;
                }
                Ok(())
            }
        }
    }
}

impl core::error::Error for AppError {}
impl core::error::Error for LinkError {}
