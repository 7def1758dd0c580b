//! The PC's [`Connector`]: TCP + TLS (tokio + rustls) under the MQTT session the board runs
//! too (`dpskit_device::session::Session`), so the virtual device exercises the firmware's
//! MQTT code. Only connecting differs from the board: name resolution, where to connect, and
//! rustls's errors in the device's words.
//!
//! Where to connect and what name to verify are separate: `--provisioning-host` and
//! `--hub-host` change the TCP address only; TLS still checks the host the config or DPS
//! names, unless `--tls-server-name` says otherwise.

use super::clock::HostClock;
use super::tls;
use dpskit_core::mqtt::{ConnectParams, Username};
use dpskit_device::session::{Connector, Limits, Session, Sleep};
use dpskit_device::{LinkError, LinkErrorKind};
use embedded_io_adapters::tokio_1::FromTokio;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Largest packet accepted (a DPS answer is ≤ 96 KB, a C2D message ≤ 64 KB plus topic).
const MAX_PACKET: usize = 300 * 1024;

/// Where to connect instead of the names in the config / the DPS answer.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// `HOST[:PORT]` for DPS connections (`--provisioning-host`).
    pub dps: Option<String>,
    /// `HOST[:PORT]` for IoT Hub connections (`--hub-host`).
    pub hub: Option<String>,
    /// The name TLS verifies, instead of the configured/assigned host (`--tls-server-name`).
    pub tls_server_name: Option<String>,
}

/// `host` or `host:port` → `host:port` (8883 by default; `[v6]:port` accepted).
pub fn with_port(addr: &str, default_port: u16) -> String {
    let has_port = match addr.rsplit_once(':') {
        Some((h, p)) => p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')),
        None => false,
    };
    if has_port {
        addr.to_string()
    } else if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{default_port}")
    } else {
        format!("{addr}:{default_port}")
    }
}

/// TLS connections for the PC's MQTT session. One per device.
pub struct HostConnector {
    tls: Arc<rustls::ClientConfig>,
    endpoints: Endpoints,
    timeout: Duration,
}

/// The virtual device's session: the board's MQTT code over [`HostConnector`].
pub type HostSession<'a> = Session<'a, HostConnector, TokioSleep, HostClock>;

/// tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleep;

impl Sleep for TokioSleep {
    async fn sleep_ms(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await
    }
}

impl HostConnector {
    /// `timeout` bounds TCP + TLS + CONNACK, each SUBACK and each PUBACK.
    pub fn new(tls: Arc<rustls::ClientConfig>, endpoints: Endpoints, timeout: Duration) -> Self {
        HostConnector {
            tls,
            endpoints,
            timeout,
        }
    }

    /// A session over this connector.
    pub fn session<'a>(&'a self, clock: &'a HostClock) -> HostSession<'a> {
        let limits = Limits {
            timeout_ms: self.timeout.as_millis() as u64,
            max_packet: MAX_PACKET,
        };
        Session::new(self, TokioSleep, clock, limits)
    }

    /// Which service a CONNECT is for, the TCP address and the TLS name to use.
    fn route(&self, params: &ConnectParams) -> (&'static str, String, String) {
        let (service, over) = match Username::parse(&params.username) {
            Some(Username::Dps { .. }) => ("DPS", &self.endpoints.dps),
            _ => ("IoT Hub", &self.endpoints.hub),
        };
        let addr = match over {
            Some(a) => with_port(a, params.port),
            None => with_port(&params.host, params.port),
        };
        let name = self
            .endpoints
            .tls_server_name
            .clone()
            .unwrap_or_else(|| params.host.clone());
        (service, addr, name)
    }
}

impl Connector for HostConnector {
    type Error = std::io::Error;
    type Stream<'a> = FromTokio<Box<TlsStream<TcpStream>>>;

    async fn open<'a>(&'a self, params: &ConnectParams) -> Result<Self::Stream<'a>, LinkError> {
        let (service, addr, name) = self.route(params);
        let peer = if addr.starts_with(&format!("{name}:")) {
            format!("{service} at {addr}")
        } else {
            format!("{service} at {addr} (TLS name {name})")
        };
        let unreachable = |detail: String| LinkError::new(LinkErrorKind::Unreachable, detail);
        let deadline = Instant::now() + self.timeout;
        let secs = self.timeout.as_secs();
        let timed_out = |step: &str| {
            LinkError::new(
                LinkErrorKind::Timeout,
                format!("{peer}: no {step} within {secs} s"),
            )
        };

        let addrs: Vec<SocketAddr> =
            match tokio::time::timeout_at(deadline, tokio::net::lookup_host(&addr)).await {
                Err(_) => return Err(timed_out("DNS answer")),
                Ok(Err(e)) => {
                    return Err(unreachable(format!(
                        "cannot resolve the {service} host in {addr} ({e}); check the host name"
                    )))
                }
                Ok(Ok(a)) => a.collect(),
            };
        let mut tcp = None;
        let mut last_err = None;
        for a in &addrs {
            match tokio::time::timeout_at(deadline, TcpStream::connect(a)).await {
                Err(_) => return Err(timed_out("TCP connection")),
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last_err = Some(e),
            }
        }
        let tcp = match (tcp, last_err) {
            (Some(s), _) => s,
            (None, Some(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(unreachable(format!(
                    "{service} host unreachable: connection refused by {addr} (nothing listens there; is the service or emulator running, and is the port right?)"
                )))
            }
            (None, e) => {
                return Err(unreachable(format!(
                    "{service} host unreachable: cannot connect to {addr} ({})",
                    e.map_or_else(|| "no address".to_string(), |e| e.to_string())
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        let server_name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| {
            LinkError::new(
                LinkErrorKind::Tls,
                format!("{name:?} is not a valid TLS server name"),
            )
        })?;
        let stream = match tokio::time::timeout_at(
            deadline,
            TlsConnector::from(self.tls.clone()).connect(server_name, tcp),
        )
        .await
        {
            Err(_) => return Err(timed_out("TLS handshake")),
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                if let Some(p) = tls::certificate_problem(&e) {
                    return Err(LinkError::new(LinkErrorKind::Certificate, p));
                }
                let detail = tls::tls_problem(&e).unwrap_or_else(|| {
                    format!("the connection closed during the TLS handshake ({e})")
                });
                return Err(LinkError::new(
                    LinkErrorKind::Tls,
                    format!("{peer}: {detail}"),
                ));
            }
        };
        Ok(FromTokio::new(Box::new(stream)))
    }

    async fn close<'a>(&'a self, stream: Self::Stream<'a>) {
        let mut stream = stream.into_inner();
        let _ = stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_added_only_when_missing() {
        assert_eq!(with_port("localhost", 8883), "localhost:8883");
        assert_eq!(with_port("127.0.0.1:4000", 8883), "127.0.0.1:4000");
        assert_eq!(with_port("::1", 8883), "[::1]:8883");
        assert_eq!(with_port("[::1]:9", 8883), "[::1]:9");
        assert_eq!(
            with_port("global.azure-devices-provisioning.net", 8883),
            "global.azure-devices-provisioning.net:8883"
        );
    }
}
