//! Each [`AppOutput`] as one line for a person, written once for the board's UART log and
//! the PC's virtual device, so both say the same thing in the same words.

use crate::app::{AppOutput, RegisterReason};
use crate::time::format_unix_ms;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// How much a line matters (the board maps it to its logger's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// A body as text: UTF-8 as is, anything else as `base64:…`.
pub fn body_text(body: &[u8]) -> String {
    match core::str::from_utf8(body) {
        Ok(s) => s.to_string(),
        Err(_) => {
            use base64::Engine;
            format!(
                "base64:{}",
                base64::engine::general_purpose::STANDARD.encode(body)
            )
        }
    }
}

impl AppOutput {
    /// The line for this output and its level; `None` for outputs not worth a line.
    pub fn log_line(&self) -> Option<(Level, String)> {
        use Level::{Error, Info, Warn};
        Some(match self {
            AppOutput::StoredAssignmentIgnored { reason } => {
                (Info, format!("stored assignment not used: {reason}"))
            }
            AppOutput::UsingStoredAssignment { hub, device_id } => (
                Info,
                format!("using the stored assignment: hub {hub}, device {device_id} (DPS skipped)"),
            ),
            AppOutput::Registering { dps_host, reason } => {
                let why = match reason {
                    RegisterReason::NoStoredAssignment => "no stored assignment",
                    RegisterReason::HubRefused => "the hub refused the stored assignment",
                    RegisterReason::HubUnreachable => "the assigned hub is unreachable",
                };
                (Info, format!("registering with DPS {dps_host} ({why})"))
            }
            AppOutput::Provisioned {
                hub,
                device_id,
                substatus,
            } => (
                Info,
                format!(
                    "provisioned: hub {hub}, device {device_id}{}",
                    substatus
                        .as_deref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default()
                ),
            ),
            AppOutput::StoreAssignment(_) => return None,
            AppOutput::HubConnected {
                hub,
                device_id,
                session_present,
            } => (
                Info,
                format!(
                    "connected to IoT Hub {hub} as {device_id}{}",
                    if *session_present {
                        " (session resumed)"
                    } else {
                        ""
                    }
                ),
            ),
            AppOutput::HubRefused { error, then } => (Warn, format!("{error}; {then}")),
            AppOutput::HubDisconnected {
                reconnect_at_ms,
                cause,
            } => (
                Warn,
                format!(
                    "IoT Hub connection lost{}; retrying at {}",
                    cause
                        .as_ref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default(),
                    format_unix_ms(*reconnect_at_ms)
                ),
            ),
            AppOutput::TelemetrySent { seq, message } => (
                Info,
                match seq {
                    Some(n) => format!("telemetry #{n}: {}", body_text(&message.body)),
                    None => format!("message sent: {}", body_text(&message.body)),
                },
            ),
            AppOutput::C2d(m) => {
                let props: Vec<String> = m
                    .properties
                    .iter()
                    .map(|(k, v)| v.map_or_else(|| k.to_string(), |v| format!("{k}={v}")))
                    .collect();
                (
                    Info,
                    format!(
                        "C2D message{}: {}{}",
                        m.message_id
                            .as_deref()
                            .map(|id| format!(" {id}"))
                            .unwrap_or_default(),
                        body_text(&m.body),
                        if props.is_empty() {
                            String::new()
                        } else {
                            format!(" [{}]", props.join(", "))
                        }
                    ),
                )
            }
            AppOutput::MethodCalled {
                name,
                request,
                status,
                response,
            } => (
                Info,
                format!(
                    "method {name}({}) → {status} {}",
                    body_text(request),
                    body_text(response)
                ),
            ),
            AppOutput::DesiredProperties {
                version,
                properties,
                complete,
            } => (
                Info,
                format!(
                    "desired properties{} ({}): {properties}",
                    version.map(|v| format!(" v{v}")).unwrap_or_default(),
                    if *complete { "twin" } else { "update" }
                ),
            ),
            AppOutput::TelemetryIntervalChanged { secs } => {
                (Info, format!("telemetry interval is now {secs} s"))
            }
            AppOutput::ReportedSent { patch } => {
                (Info, format!("reported properties sent: {patch}"))
            }
            AppOutput::ReportedAck { version } => (
                Info,
                format!(
                    "reported properties stored{}",
                    version
                        .map(|v| format!(" (version {v})"))
                        .unwrap_or_default()
                ),
            ),
            AppOutput::RebootRequested => (Warn, "reboot requested: restarting".into()),
            AppOutput::Warning(w) => (Warn, format!("warning: {w}")),
            AppOutput::Finished { messages_sent } => (
                Info,
                format!("done: {messages_sent} message(s) sent since boot"),
            ),
            AppOutput::Failed(e) => (Error, format!("failed: {e}")),
        })
    }
}
