//! TCP + TLS 1.2 to a host (embassy-net + mbedTLS): the board's [`Connector`], under the
//! shared MQTT session of `dpskit-device`. Only the config's root CAs are trusted, the server
//! name is sent (SNI) and checked, and every failure comes back as a `LinkError` in plain
//! words (glue's `link` module).

use alloc::ffi::CString;
use alloc::format;
use core::ffi::CStr;
use core::net::{IpAddr, SocketAddr};
use dpskit_core::mqtt::ConnectParams;
use dpskit_device::session::Connector;
use dpskit_device::{LinkError, LinkErrorKind};
use dpskit_firmware_glue::link;
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::client::{TcpClient, TcpConnection};
use embassy_net::Stack;
use embedded_io_async::ErrorKind;
use embedded_nal_async::TcpConnect;
use mbedtls_rs::{
    Certificate, ClientSessionConfig, Session, SessionConfig, SessionError, TlsReference,
    TlsVersion, X509,
};

/// TCP buffers under TLS: records are reassembled by mbedTLS, so these can stay small.
pub const TCP_RX: usize = 2048;
pub const TCP_TX: usize = 2048;
pub type Tcp = TcpClient<'static, 1, TCP_TX, TCP_RX>;

/// Parses the config's PEM roots (mbedTLS wants a NUL-terminated string).
pub fn parse_roots(pem: &str) -> Result<Certificate<'static>, SessionError> {
    let mut text = alloc::vec::Vec::with_capacity(pem.len() + 1);
    text.extend_from_slice(pem.as_bytes());
    text.push(0);
    let cstr =
        CStr::from_bytes_with_nul(&text).map_err(|_| SessionError::Io(ErrorKind::InvalidData))?;
    Ok(Certificate::new(X509::PEM(cstr))?)
}

/// Opens TLS connections for the MQTT session.
pub struct TlsConnector<'a> {
    pub stack: Stack<'static>,
    pub tcp: &'a Tcp,
    pub tls: TlsReference<'a>,
    pub roots: &'a Certificate<'static>,
}

impl TlsConnector<'_> {
    /// An IP address as given (the emulator, a factory network without DNS), else DNS.
    async fn resolve(&self, host: &str) -> Result<IpAddr, LinkError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip);
        }
        let unresolved = |why: &str| {
            LinkError::new(
                LinkErrorKind::Unreachable,
                format!("cannot resolve {host} (DNS: {why}); check the host name and the network's DNS server"),
            )
        };
        let addrs = self
            .stack
            .dns_query(host, DnsQueryType::A)
            .await
            .map_err(|e| unresolved(&format!("{e:?}")))?;
        addrs
            .first()
            .map(|a| IpAddr::from(*a))
            .ok_or_else(|| unresolved("no address"))
    }
}

impl<'a> Connector for TlsConnector<'a> {
    type Error = SessionError;
    type Stream<'s>
        = Session<'s, TcpConnection<'s, 1, TCP_TX, TCP_RX>>
    where
        Self: 's;

    async fn open<'s>(&'s self, params: &ConnectParams) -> Result<Self::Stream<'s>, LinkError> {
        let (host, port) = (params.host.as_str(), params.port);
        let ip = self.resolve(host).await?;
        let remote = SocketAddr::new(ip, port);
        let tcp = self.tcp.connect(remote).await.map_err(|e| {
            LinkError::new(
                LinkErrorKind::Unreachable,
                format!("TCP to {host} ({remote}) failed ({e:?}); is the service running and port {port} open?"),
            )
        })?;
        let mut config = ClientSessionConfig::new();
        config.ca_chain = Some(self.roots.clone());
        // DPS speaks TLS 1.2 only; classic hub host names at most 1.2.
        config.min_version = TlsVersion::Tls1_2;
        config.max_version = Some(TlsVersion::Tls1_2);
        let mut session = Session::new(self.tls, tcp, &SessionConfig::Client(config))
            .map_err(|e| session_error(host, e, 0))?;
        // mbedTLS copies the name: SNI, and the name the certificate must carry.
        let name = CString::new(host).map_err(|_| {
            LinkError::new(
                LinkErrorKind::Unreachable,
                format!("{host:?}: the host name contains a NUL"),
            )
        })?;
        session
            .set_server_name(&name)
            .map_err(|e| session_error(host, e, 0))?;
        if let Err(e) = session.connect().await {
            let flags = session.tls_verification_details();
            return Err(session_error(host, e, flags));
        }
        Ok(session)
    }

    async fn close<'s>(&'s self, mut stream: Self::Stream<'s>) {
        // close_notify, so the server sees a clean end rather than a dropped connection.
        let _ = stream.close().await;
    }
}

/// A failed session setup or handshake as a `LinkError`.
fn session_error(host: &str, e: SessionError, flags: u32) -> LinkError {
    match e {
        SessionError::MbedTls(m) => link::tls_failure(host, m.code(), flags),
        SessionError::Io(kind) => LinkError::new(
            LinkErrorKind::Closed,
            format!("TLS to {host}: the connection dropped during the handshake ({kind:?})"),
        ),
    }
}
