//! The PC's [`MqttSession`]: MQTT 3.1.1 over TLS (tokio + rustls), with rumqttc's packet
//! codec. A small client of our own instead of rumqttc's event loop, because the device
//! needs what that loop hides: the CONNACK code, the TLS error of each attempt, and
//! reconnects only when the app asks for them.
//!
//! Where to connect and what name to verify are separate: `--provisioning-host` and
//! `--hub-host` change the TCP address only; TLS still checks the host the config or DPS
//! names, unless `--tls-server-name` says otherwise.

use super::clock::HostClock;
use super::tls;
use bytes::BytesMut;
use dpskit_core::mqtt::{ConnectParams, Publish, QoS, Username};
use dpskit_device::driver::{ConnAck, Incoming, MqttSession};
use dpskit_device::{LinkError, LinkErrorKind};
use rumqttc::mqttbytes::v4::{self as mqtt, Packet};
use rumqttc::mqttbytes::{self, QoS as WireQoS};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

struct Conn {
    stream: Box<TlsStream<TcpStream>>,
    rbuf: BytesMut,
    /// Bytes not yet written; survives a cancelled `next`.
    outbox: BytesMut,
    inbox: VecDeque<(String, Vec<u8>)>,
    next_pkid: u16,
    keep_alive: Duration,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    peer: String,
}

impl Conn {
    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        self.next_pkid
    }

    fn queue(&mut self, packet: &Packet) -> Result<(), LinkError> {
        packet.write(&mut self.outbox, MAX_PACKET).map_err(|e| {
            LinkError::new(
                LinkErrorKind::Closed,
                format!("cannot encode an MQTT packet: {e}"),
            )
        })?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), LinkError> {
        while !self.outbox.is_empty() {
            let n = self
                .stream
                .write_buf(&mut self.outbox)
                .await
                .map_err(|e| self.io_lost(&e))?;
            if n == 0 {
                return Err(self.closed());
            }
        }
        self.stream.flush().await.map_err(|e| self.io_lost(&e))?;
        self.last_sent = Instant::now();
        Ok(())
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), LinkError> {
        self.queue(packet)?;
        self.flush().await
    }

    fn closed(&self) -> LinkError {
        LinkError::new(
            LinkErrorKind::Closed,
            format!("{} closed the connection", self.peer),
        )
    }

    fn io_lost(&self, e: &std::io::Error) -> LinkError {
        LinkError::new(
            LinkErrorKind::Closed,
            format!("the connection to {} failed: {e}", self.peer),
        )
    }

    /// A complete packet already in the buffer, if any.
    fn buffered(&mut self) -> Result<Option<Packet>, LinkError> {
        match Packet::read(&mut self.rbuf, MAX_PACKET) {
            Ok(p) => Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(LinkError::new(
                LinkErrorKind::Closed,
                format!("{} sent a malformed MQTT packet ({e})", self.peer),
            )),
        }
    }

    /// Reads more bytes (cancel-safe).
    async fn fill(&mut self) -> Result<(), LinkError> {
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| self.io_lost(&e))?;
        if n == 0 {
            return Err(self.closed());
        }
        Ok(())
    }

    /// Handles what every state handles the same way; returns the rest.
    async fn absorb(&mut self, packet: Packet) -> Result<Option<Packet>, LinkError> {
        match packet {
            Packet::Publish(p) => {
                if p.qos == WireQoS::AtLeastOnce {
                    self.send(&Packet::PubAck(mqtt::PubAck::new(p.pkid)))
                        .await?;
                }
                self.inbox.push_back((p.topic, p.payload.to_vec()));
                Ok(None)
            }
            Packet::PingResp => {
                self.ping_sent = None;
                Ok(None)
            }
            Packet::Disconnect => Err(LinkError::new(
                LinkErrorKind::Closed,
                format!("{} sent DISCONNECT", self.peer),
            )),
            other => Ok(Some(other)),
        }
    }

    /// Waits up to `timeout` for a packet `want` accepts, keeping PUBLISHes for later.
    async fn await_packet(
        &mut self,
        timeout: Duration,
        what: &str,
        mut want: impl FnMut(&Packet) -> bool,
    ) -> Result<Packet, LinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(p) = self.buffered()? {
                if let Some(p) = self.absorb(p).await? {
                    if want(&p) {
                        return Ok(p);
                    }
                }
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(LinkError::new(
                        LinkErrorKind::Timeout,
                        format!(
                            "no {what} from {} within {} s",
                            self.peer,
                            timeout.as_secs()
                        ),
                    ))
                }
            }
        }
    }
}

/// MQTT over TLS on the PC. One connection at a time, as on the board.
pub struct HostSession {
    tls: Arc<rustls::ClientConfig>,
    clock: HostClock,
    endpoints: Endpoints,
    timeout: Duration,
    conn: Option<Conn>,
}

impl HostSession {
    /// `timeout` bounds TCP + TLS + CONNACK, each SUBACK and each PUBACK.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        clock: HostClock,
        endpoints: Endpoints,
        timeout: Duration,
    ) -> Self {
        HostSession {
            tls,
            clock,
            endpoints,
            timeout,
            conn: None,
        }
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

    async fn open(&mut self, params: &ConnectParams) -> Result<ConnAck, LinkError> {
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
        let mut conn = Conn {
            stream: Box::new(stream),
            rbuf: BytesMut::with_capacity(4096),
            outbox: BytesMut::with_capacity(1024),
            inbox: VecDeque::new(),
            next_pkid: 0,
            keep_alive: Duration::from_secs(u64::from(params.keep_alive_secs.max(1))),
            last_sent: Instant::now(),
            ping_sent: None,
            peer,
        };
        let mut connect = mqtt::Connect::new(params.client_id.clone());
        connect.keep_alive = params.keep_alive_secs;
        connect.clean_session = params.clean_session;
        connect.set_login(params.username.clone(), params.password.clone());
        conn.send(&Packet::Connect(connect)).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ack = conn
            .await_packet(remaining, "CONNACK", |p| matches!(p, Packet::ConnAck(_)))
            .await?;
        let Packet::ConnAck(ack) = ack else {
            unreachable!("filtered above")
        };
        let code = ack.code as u8;
        if code == 0 {
            self.conn = Some(conn);
        }
        Ok(ConnAck {
            return_code: code,
            session_present: ack.session_present,
        })
    }

    fn not_connected() -> LinkError {
        LinkError::new(LinkErrorKind::Closed, "not connected")
    }

    /// Runs `f` on the connection; a failure closes it.
    fn fail(&mut self, e: LinkError) -> LinkError {
        self.conn = None;
        e
    }
}

fn wire_qos(q: QoS) -> WireQoS {
    match q {
        QoS::AtMostOnce => WireQoS::AtMostOnce,
        QoS::AtLeastOnce => WireQoS::AtLeastOnce,
    }
}

impl MqttSession for HostSession {
    async fn connect(&mut self, params: &ConnectParams) -> Result<ConnAck, LinkError> {
        self.disconnect().await;
        self.open(params).await
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<bool, LinkError> {
        let timeout = self.timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Err(Self::not_connected());
        };
        let pkid = conn.pkid();
        let mut sub = mqtt::Subscribe::new(filter, wire_qos(qos));
        sub.pkid = pkid;
        let result = async {
            conn.send(&Packet::Subscribe(sub)).await?;
            let p = conn
                .await_packet(
                    timeout,
                    "SUBACK",
                    |p| matches!(p, Packet::SubAck(a) if a.pkid == pkid),
                )
                .await?;
            let Packet::SubAck(ack) = p else {
                unreachable!("filtered above")
            };
            Ok(!ack
                .return_codes
                .iter()
                .any(|c| matches!(c, mqtt::SubscribeReasonCode::Failure)))
        }
        .await;
        result.map_err(|e| self.fail(e))
    }

    async fn publish(&mut self, publish: &Publish) -> Result<(), LinkError> {
        let timeout = self.timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Err(Self::not_connected());
        };
        let mut p = mqtt::Publish::new(
            publish.topic.clone(),
            wire_qos(publish.qos),
            publish.payload.clone(),
        );
        let result = async {
            if publish.qos == QoS::AtLeastOnce {
                let pkid = conn.pkid();
                p.pkid = pkid;
                conn.send(&Packet::Publish(p)).await?;
                conn.await_packet(
                    timeout,
                    "PUBACK",
                    |p| matches!(p, Packet::PubAck(a) if a.pkid == pkid),
                )
                .await?;
            } else {
                conn.send(&Packet::Publish(p)).await?;
            }
            Ok(())
        }
        .await;
        result.map_err(|e| self.fail(e))
    }

    async fn disconnect(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = conn.send(&Packet::Disconnect).await;
                let _ = conn.stream.shutdown().await;
            })
            .await;
        }
    }

    async fn next(&mut self, deadline_ms: Option<u64>) -> Incoming {
        let clock = self.clock;
        let deadline = deadline_ms.map(|d| Instant::now() + clock.until(d));
        let Some(conn) = self.conn.as_mut() else {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending::<()>().await,
            }
            return Incoming::Deadline;
        };
        let result: Result<Incoming, LinkError> = async {
            loop {
                if !conn.outbox.is_empty() {
                    conn.flush().await?;
                }
                while let Some(p) = conn.buffered()? {
                    conn.absorb(p).await?;
                }
                if let Some((topic, payload)) = conn.inbox.pop_front() {
                    return Ok(Incoming::Publish { topic, payload });
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Incoming::Deadline);
                }
                // Keep-alive: PINGREQ after keep-alive of silence; a PINGRESP missing for
                // another half keep-alive means the connection is dead.
                let ping_at = match conn.ping_sent {
                    Some(sent) => sent + conn.keep_alive / 2,
                    None => conn.last_sent + conn.keep_alive,
                };
                let wake = deadline.map_or(ping_at, |d| d.min(ping_at));
                tokio::select! {
                    r = conn.fill() => r?,
                    _ = tokio::time::sleep_until(wake) => {
                        if Instant::now() >= ping_at {
                            if conn.ping_sent.is_some() {
                                return Err(LinkError::new(
                                    LinkErrorKind::Timeout,
                                    format!("{} stopped answering (no PINGRESP)", conn.peer),
                                ));
                            }
                            conn.ping_sent = Some(Instant::now());
                            conn.queue(&Packet::PingReq)?;
                        }
                    }
                }
            }
        }
        .await;
        match result {
            Ok(i) => i,
            Err(e) => Incoming::Closed(self.fail(e)),
        }
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
