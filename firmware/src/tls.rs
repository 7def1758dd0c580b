//! TLS 1.2 over embassy-net TCP (mbedTLS), as an `embedded_nal_async::TcpConnect` so mqttrust's
//! `NalTransport` can use it. One connector per MQTT connection: it knows the server name (SNI
//! and certificate name check), trusts only the config's root CAs, connects once (so the MQTT
//! stack cannot silently reconnect behind the state machine's back) and watches the first bytes
//! for the CONNACK.

use alloc::format;
use core::cell::{Cell, RefCell};
use core::ffi::CStr;
use core::net::SocketAddr;
use dpskit_device::{LinkError, LinkErrorKind};
use dpskit_firmware_glue::connack::ConnAckSniffer;
use dpskit_firmware_glue::link;
use embassy_net::tcp::client::{TcpClient, TcpConnection};
use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
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

/// Why a TLS connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsConnectError {
    /// This connector was used already (the MQTT stack tried to reconnect on its own).
    AlreadyUsed,
    Tcp,
    Tls(SessionError),
}

impl core::fmt::Display for TlsConnectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TlsConnectError::Tls(e) => write!(f, "{}: {e}", explain(self)),
            _ => f.write_str(explain(self)),
        }
    }
}

impl core::error::Error for TlsConnectError {}

impl embedded_io_async::Error for TlsConnectError {
    fn kind(&self) -> ErrorKind {
        match self {
            TlsConnectError::AlreadyUsed => ErrorKind::NotConnected,
            TlsConnectError::Tcp => ErrorKind::ConnectionRefused,
            TlsConnectError::Tls(e) => embedded_io_async::Error::kind(e),
        }
    }
}

pub struct TlsConnector<'a> {
    tcp: &'a Tcp,
    tls: TlsReference<'a>,
    roots: &'a Certificate<'static>,
    server_name: &'a CStr,
    used: Cell<bool>,
    /// The first bytes read from the server: the CONNACK.
    pub connack: RefCell<ConnAckSniffer>,
    /// Why the connect failed, in the device app's words.
    pub failure: RefCell<Option<LinkError>>,
}

impl<'a> TlsConnector<'a> {
    pub fn new(
        tcp: &'a Tcp,
        tls: TlsReference<'a>,
        roots: &'a Certificate<'static>,
        server_name: &'a CStr,
    ) -> Self {
        TlsConnector {
            tcp,
            tls,
            roots,
            server_name,
            used: Cell::new(false),
            connack: RefCell::new(ConnAckSniffer::new()),
            failure: RefCell::new(None),
        }
    }

    async fn open(&self, remote: SocketAddr) -> Result<TlsConnection<'_>, TlsConnectError> {
        use embedded_nal_async::TcpConnect as _;
        let tcp = match self.tcp.connect(remote).await {
            Ok(t) => t,
            Err(e) => {
                self.fail(LinkError::new(
                    LinkErrorKind::Unreachable,
                    format!(
                        "TCP to {remote} ({}) failed ({e:?}); is port 8883 open?",
                        self.server_name.to_str().unwrap_or("?")
                    ),
                ));
                return Err(TlsConnectError::Tcp);
            }
        };
        let mut config = ClientSessionConfig::new();
        config.ca_chain = Some(self.roots.clone());
        config.server_name = Some(self.server_name);
        // DPS speaks TLS 1.2 only; classic hub host names at most 1.2.
        config.min_version = TlsVersion::Tls1_2;
        config.max_version = Some(TlsVersion::Tls1_2);
        let host = self.server_name.to_str().unwrap_or("?");
        let mut session = match Session::new(self.tls, tcp, &SessionConfig::Client(config)) {
            Ok(s) => s,
            Err(e) => {
                self.fail(session_error(host, e, 0));
                return Err(TlsConnectError::Tls(e));
            }
        };
        if let Err(e) = session.connect().await {
            let flags = session.tls_verification_details();
            self.fail(session_error(host, e, flags));
            return Err(TlsConnectError::Tls(e));
        }
        Ok(TlsConnection {
            session,
            connack: &self.connack,
        })
    }
}

impl TlsConnector<'_> {
    /// Whether the MQTT stack got as far as connecting (i.e. DNS resolved).
    pub fn was_used(&self) -> bool {
        self.used.get()
    }

    fn fail(&self, e: LinkError) {
        *self.failure.borrow_mut() = Some(e);
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

impl embedded_nal_async::TcpConnect for TlsConnector<'_> {
    type Error = TlsConnectError;
    type Connection<'m>
        = TlsConnection<'m>
    where
        Self: 'm;

    async fn connect<'m>(
        &'m self,
        remote: SocketAddr,
    ) -> Result<Self::Connection<'m>, Self::Error> {
        if self.used.replace(true) {
            return Err(TlsConnectError::AlreadyUsed);
        }
        self.open(remote).await
    }
}

pub struct TlsConnection<'m> {
    session: Session<'m, TcpConnection<'m, 1, TCP_TX, TCP_RX>>,
    connack: &'m RefCell<ConnAckSniffer>,
}

impl ErrorType for TlsConnection<'_> {
    type Error = TlsConnectError;
}

impl Read for TlsConnection<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = self.session.read(buf).await.map_err(TlsConnectError::Tls)?;
        self.connack.borrow_mut().feed(&buf[..n]);
        Ok(n)
    }
}

impl Write for TlsConnection<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.session.write(buf).await.map_err(TlsConnectError::Tls)
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.session.flush().await.map_err(TlsConnectError::Tls)
    }
}

fn explain(e: &TlsConnectError) -> &'static str {
    match e {
        TlsConnectError::AlreadyUsed => "connection already used",
        TlsConnectError::Tcp => "TCP connect failed",
        TlsConnectError::Tls(_) => "TLS failed",
    }
}
