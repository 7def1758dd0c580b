//! The TLS listener and one MQTT 3.1.1 session task per connection.
//!
//! Packets are framed and parsed by rumqttc's `mqttbytes::v4` codec; this file only decides
//! what a packet means for DPS or the hub. Any failure (TLS, a malformed packet, a forbidden
//! publish) ends that one connection with a logged reason; the listener and every other
//! session carry on.

use super::dps::{self, DpsSession};
use super::enrollment::{validate, Audience, Rejection};
use super::hub::{self, C2dMessage, ToConn};
use super::journal;
use super::Shared;
use bytes::BytesMut;
use dpskit_core::hub::{Message, MAX_TELEMETRY_BYTES};
use dpskit_core::mqtt::{connack_text, Username};
use dpskit_core::topic::{DeviceTopic, PropertyBag, ServiceTopic};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Time a client gets for the TLS handshake and for its CONNECT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest packet read whole: a 256 KB telemetry body plus topic and headers. Bigger packets
/// are refused from their header, before their body is read.
const MAX_PACKET: usize = MAX_TELEMETRY_BYTES + 16 * 1024;
/// Messages a connection may have waiting before the registry stops queueing to it.
const OUTBOX: usize = 256;

/// Accepts connections until `stop` turns true, then ends every session.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    sessions.spawn(session(shared.clone(), acceptor.clone(), tcp, peer));
                }
                Err(e) => {
                    shared.journal.note("warning", "listener", &format!("accept failed: {e}"), journal::none());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    sessions.shutdown().await;
}

/// Why a session ended.
enum End {
    /// The client sent DISCONNECT or closed the socket.
    Client(&'static str),
    /// The emulator closed it; the reason is logged as a rejection.
    Refused(String),
    /// Another connection took over the identity.
    Replaced(String),
    /// Emulator shutdown / internal.
    Quiet,
}

struct Conn {
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_pkid: u16,
    /// Unacknowledged QoS 1 publishes to the device (C2D ones are requeued if lost).
    inflight: HashMap<u16, Option<C2dMessage>>,
    subs: Vec<(String, u8)>,
}

enum ReadError {
    Closed,
    Io(std::io::Error),
    TooLarge(usize),
    Malformed(CodecError),
}

impl Conn {
    /// Reads one packet. Cancel-safe: bytes already read stay in `rbuf`.
    async fn read_packet(&mut self) -> Result<Packet, ReadError> {
        loop {
            match Packet::read(&mut self.rbuf, MAX_PACKET) {
                Ok(p) => return Ok(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(CodecError::PayloadSizeLimitExceeded(n)) => return Err(ReadError::TooLarge(n)),
                Err(e) => return Err(ReadError::Malformed(e)),
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    fn queue(&mut self, packet: Packet) {
        // Only packets we build; sizes are within limits.
        let _ = packet.write(&mut self.wbuf, usize::MAX);
    }

    /// Queues a publish to the device; QoS 1 gets a packet ID and is tracked until PUBACK.
    fn queue_publish(&mut self, topic: String, payload: Vec<u8>, qos: u8, c2d: Option<C2dMessage>) {
        let mut p = Publish::new(
            topic,
            if qos > 0 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            payload,
        );
        if qos > 0 {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            p.pkid = self.next_pkid;
            self.inflight.insert(p.pkid, c2d);
        }
        self.queue(Packet::Publish(p));
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.stream.flush().await
    }
}

/// Who a session is.
enum Identity {
    Dps(DpsSession),
    Hub {
        device_id: String,
        clean: bool,
        conn_id: u64,
    },
}

async fn session(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            shared.journal.note(
                "rejected",
                &peer.to_string(),
                &format!("TLS handshake failed: {e}; the client must speak TLS 1.2 or 1.3 on this port and trust the emulator's CA (dpskit config build --root-ca emulator)"),
                json!({ "peer": peer.to_string() }),
            );
            return;
        }
        Err(_) => {
            shared.journal.note(
                "rejected",
                &peer.to_string(),
                "no TLS handshake within 10 s; connection closed",
                json!({ "peer": peer.to_string() }),
            );
            return;
        }
    };
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: BytesMut::with_capacity(4096),
        next_pkid: 0,
        inflight: HashMap::new(),
        subs: Vec::new(),
    };
    let connect = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.read_packet()).await {
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            return refuse_early(
                &shared,
                &peer,
                &format!(
                    "the first packet was {} instead of CONNECT",
                    packet_name(&other)
                ),
            )
        }
        Ok(Err(ReadError::Malformed(CodecError::InvalidProtocolLevel(level)))) => {
            conn.wbuf.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
            let _ = conn.flush().await;
            return refuse_early(&shared, &peer, &format!("CONNECT with MQTT protocol level {level}; DPS and IoT Hub speak MQTT 3.1.1 (level 4) only (CONNACK 1)"));
        }
        Ok(Err(e)) => {
            return refuse_early(
                &shared,
                &peer,
                &format!("no valid CONNECT: {}", read_error_text(&e)),
            )
        }
        Err(_) => {
            return refuse_early(
                &shared,
                &peer,
                "no CONNECT within 10 s after the TLS handshake",
            )
        }
    };
    if connect.protocol != rumqttc::mqttbytes::Protocol::V4 {
        conn.wbuf.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
        let _ = conn.flush().await;
        return refuse_early(
            &shared,
            &peer,
            "CONNECT with MQTT 5; DPS and IoT Hub speak MQTT 3.1.1 only (CONNACK 1)",
        );
    }
    let conn_id = shared.next_id();
    let (tx, mut rx) = mpsc::channel::<ToConn>(OUTBOX);
    let (kick_tx, mut kick_rx) = oneshot::channel::<String>();
    let keep_alive = connect.keep_alive;

    let login = connect.login.clone();
    let (username, password) = match &login {
        Some(l) => (l.username.as_str(), l.password.as_str()),
        None => ("", ""),
    };
    let parsed = Username::parse(username);
    let mut refusal: Option<(u8, String)> = None;
    let mut identity = None;
    let mut session_present = false;
    let mut who = peer.to_string();
    match parsed {
        _ if login.is_none() => refusal = Some((5, "CONNECT without user name and password; DPS and IoT Hub need the user name and a SAS token as password".into())),
        None => refusal = Some((4, format!("user name {username:?} is neither a DPS user name ({{scope}}/registrations/{{id}}/api-version=…) nor an IoT Hub one ({{hub}}/{{device}}/?api-version=…)"))),
        Some(Username::Dps { id_scope, registration_id, .. }) => {
            who = format!("{registration_id} (DPS)");
            if connect.client_id != registration_id {
                refusal = Some((2, format!("client ID {:?} differs from the registration ID {registration_id:?} in the user name; DPS wants them equal", connect.client_id)));
            } else {
                let auth = match shared.enrollments.by_scope(&id_scope) {
                    None => Err(Rejection::unauthorized(format!(
                        "unknown ID scope {id_scope:?}; this emulator serves {}; copy the scope from the DPS you rehearse against (dpskit emulate --scope)",
                        shared.enrollments.scope_list()
                    ))),
                    Some(g) => validate(g, Audience::Dps { id_scope: &id_scope, registration_id: &registration_id }, password, hub::unix_now())
                        .map(|ok| {
                            for w in &ok.warnings {
                                shared.journal.note("warning", &who, w, json!({ "registrationId": registration_id }));
                            }
                            g.clone()
                        }),
                };
                if let Err(r) = &auth {
                    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    if shared.dps_settings.reject_at_connect {
                        refusal = Some((5, r.reason.clone()));
                    } else {
                        shared.journal.note("rejected", &who, &format!("DPS credentials refused (every request is answered with 401): {}", r.reason), json!({ "registrationId": registration_id, "status": r.status }));
                    }
                }
                if refusal.is_none() {
                    identity = Some(Identity::Dps(DpsSession { id_scope, registration_id, auth }));
                }
            }
        }
        Some(Username::Hub { host, device_id, .. }) => {
            who = format!("{device_id} (hub)");
            if connect.client_id != device_id {
                refusal = Some((2, format!("client ID {:?} differs from the device ID {device_id:?} in the user name; IoT Hub wants them equal", connect.client_id)));
            } else {
                match hub::connect(&shared, conn_id, &host, &device_id, password, connect.clean_session, tx.clone(), kick_tx) {
                    Ok(l) => {
                        for w in &l.warnings {
                            shared.journal.note("warning", &who, w, json!({ "device": device_id }));
                        }
                        session_present = l.session_present;
                        conn.subs = l.subs;
                        identity = Some(Identity::Hub { device_id, clean: connect.clean_session, conn_id });
                    }
                    Err((code, r)) => refusal = Some((code, r.reason)),
                }
            }
        }
    }
    if let Some((code, reason)) = refusal {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        let rc = match code {
            1 => ConnectReturnCode::RefusedProtocolVersion,
            2 => ConnectReturnCode::BadClientId,
            3 => ConnectReturnCode::ServiceUnavailable,
            4 => ConnectReturnCode::BadUserNamePassword,
            _ => ConnectReturnCode::NotAuthorized,
        };
        conn.queue(Packet::ConnAck(ConnAck::new(rc, false)));
        let _ = conn.flush().await;
        shared.journal.note(
            "rejected",
            &who,
            &format!("CONNACK {code} ({}): {reason}", connack_text(code)),
            json!({ "returnCode": code }),
        );
        return;
    }
    let identity = identity.expect("set when not refused");
    conn.queue(Packet::ConnAck(ConnAck::new(
        ConnectReturnCode::Success,
        session_present,
    )));
    let kind = match &identity {
        Identity::Dps(s) => format!(
            "DPS session for scope {}{}",
            s.id_scope,
            if s.auth.is_ok() {
                ""
            } else {
                " (credentials refused)"
            }
        ),
        Identity::Hub { .. } => format!(
            "hub session{}",
            if session_present {
                " (session resumed)"
            } else {
                ""
            }
        ),
    };
    shared.journal.note(
        "connected",
        &who,
        &format!("{kind} from {peer}"),
        json!({ "peer": peer.to_string() }),
    );
    if let Identity::Hub { device_id, .. } = &identity {
        // Deliver what waited for a resumed session.
        hub::set_subscriptions(&shared, device_id, conn_id, &conn.subs);
    }

    let end = run(
        &shared,
        &mut conn,
        &identity,
        &who,
        keep_alive,
        &mut rx,
        &mut kick_rx,
    )
    .await;
    let _ = conn.flush().await;
    if let Identity::Hub {
        device_id, clean, ..
    } = &identity
    {
        let unacked: Vec<C2dMessage> = {
            let mut pk: Vec<_> = conn.inflight.drain().collect();
            pk.sort_by_key(|(id, _)| *id);
            pk.into_iter().filter_map(|(_, m)| m).collect()
        };
        // Messages handed to this connection but never written go back too.
        let mut unsent = Vec::new();
        while let Ok(ToConn::Publish { c2d: Some(m), .. }) = rx.try_recv() {
            unsent.push(m);
        }
        hub::disconnected(
            &shared,
            device_id,
            conn_id,
            unacked.into_iter().chain(unsent).collect(),
            *clean,
        );
    }
    match end {
        End::Client(how) => shared.journal.note("disconnected", &who, how, json!({})),
        End::Refused(reason) => {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            shared.journal.note(
                "rejected",
                &who,
                &format!("connection closed: {reason}"),
                json!({}),
            );
        }
        End::Replaced(reason) => {
            shared
                .journal
                .note("disconnected", &who, &reason, json!({ "replaced": true }))
        }
        End::Quiet => {}
    }
    let _ = conn.stream.shutdown().await;
}

fn refuse_early(shared: &Shared, peer: &SocketAddr, reason: &str) {
    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
    shared.journal.note(
        "rejected",
        &peer.to_string(),
        &format!("connection closed: {reason}"),
        json!({ "peer": peer.to_string() }),
    );
}

fn read_error_text(e: &ReadError) -> String {
    match e {
        ReadError::Closed => "the client closed the connection".into(),
        ReadError::Io(e) => format!("read failed: {e}"),
        ReadError::TooLarge(n) => format!(
            "a packet of {n} bytes; IoT Hub accepts telemetry up to 256 KB ({MAX_TELEMETRY_BYTES} bytes) and closes the connection for bigger messages"
        ),
        ReadError::Malformed(e) => format!("malformed MQTT packet ({e}); not MQTT 3.1.1, or a corrupted stream"),
    }
}

/// The packet loop of an accepted session.
async fn run(
    shared: &Shared,
    conn: &mut Conn,
    identity: &Identity,
    who: &str,
    keep_alive: u16,
    rx: &mut mpsc::Receiver<ToConn>,
    kick: &mut oneshot::Receiver<String>,
) -> End {
    // Server timeout: 1.5 × keep-alive (IoT Hub's rule); none for keep-alive 0.
    let idle = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    loop {
        if let Err(e) = conn.flush().await {
            return End::Client(if e.kind() == std::io::ErrorKind::BrokenPipe {
                "connection lost"
            } else {
                "write failed; connection lost"
            });
        }
        let deadline = tokio::time::sleep(idle.unwrap_or(Duration::from_secs(86_400 * 365)));
        tokio::select! {
            packet = conn.read_packet() => {
                let packet = match packet {
                    Ok(p) => p,
                    Err(ReadError::Closed) => return End::Client("the device closed the connection without DISCONNECT"),
                    Err(ReadError::Io(_)) => return End::Client("connection lost"),
                    Err(e) => return End::Refused(read_error_text(&e)),
                };
                if let Some(end) = on_packet(shared, conn, identity, who, packet) {
                    return end;
                }
            }
            Some(out) = rx.recv() => {
                let ToConn::Publish { topic, payload, qos, c2d } = out;
                conn.queue_publish(topic, payload, qos, c2d);
            }
            reason = &mut *kick => {
                return match reason {
                    Ok(r) => End::Replaced(r),
                    Err(_) => End::Quiet,
                };
            }
            _ = deadline, if idle.is_some() => {
                return End::Refused(format!("no packet for 1.5 × the keep-alive of {keep_alive} s; the device must send PINGREQ (IoT Hub closes idle connections the same way)"));
            }
        }
    }
}

/// Handles one packet; `Some` ends the session.
fn on_packet(
    shared: &Shared,
    conn: &mut Conn,
    identity: &Identity,
    who: &str,
    packet: Packet,
) -> Option<End> {
    match packet {
        Packet::Publish(p) => on_publish(shared, conn, identity, who, p),
        Packet::Subscribe(s) => {
            let mut codes = Vec::new();
            for f in &s.filters {
                let allowed = match identity {
                    Identity::Dps(_) => {
                        if f.path.starts_with("$dps/registrations/res/") {
                            Ok(())
                        } else {
                            Err(format!("{:?} is not a DPS topic; DPS supports only the filter $dps/registrations/res/#", f.path))
                        }
                    }
                    Identity::Hub { device_id, .. } => hub::allowed_filter(device_id, &f.path),
                };
                match allowed {
                    Ok(()) => {
                        // No QoS 2: a QoS 2 request is granted QoS 1, as DPS and IoT Hub do.
                        let q = (f.qos as u8).min(1);
                        conn.subs.retain(|(have, _)| *have != f.path);
                        conn.subs.push((f.path.clone(), q));
                        codes.push(SubscribeReasonCode::Success(if q == 0 {
                            QoS::AtMostOnce
                        } else {
                            QoS::AtLeastOnce
                        }));
                    }
                    Err(why) => {
                        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                        shared.journal.note(
                            "rejected",
                            who,
                            &format!("subscription refused (SUBACK 0x80): {why}"),
                            json!({ "filter": f.path }),
                        );
                        codes.push(SubscribeReasonCode::Failure);
                    }
                }
            }
            conn.queue(Packet::SubAck(SubAck::new(s.pkid, codes)));
            sync_subs(shared, identity, conn);
            None
        }
        Packet::Unsubscribe(u) => {
            conn.subs.retain(|(f, _)| !u.topics.contains(f));
            conn.queue(Packet::UnsubAck(UnsubAck::new(u.pkid)));
            sync_subs(shared, identity, conn);
            None
        }
        Packet::PubAck(a) => {
            conn.inflight.remove(&a.pkid);
            None
        }
        Packet::PingReq => {
            conn.queue(Packet::PingResp);
            None
        }
        Packet::Disconnect => Some(End::Client("disconnected (DISCONNECT)")),
        Packet::Connect(_) => Some(End::Refused(
            "a second CONNECT on the same connection (protocol violation)".into(),
        )),
        Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => Some(End::Refused(
            "QoS 2 handshake packet; DPS and IoT Hub support QoS 0 and 1 only".into(),
        )),
        other => Some(End::Refused(format!(
            "{} is a server-to-client packet; a client must not send it",
            packet_name(&other)
        ))),
    }
}

/// Tells the registry this connection's subscriptions (it ignores a replaced connection) and
/// so delivers C2D messages that waited for them.
fn sync_subs(shared: &Shared, identity: &Identity, conn: &Conn) {
    if let Identity::Hub {
        device_id, conn_id, ..
    } = identity
    {
        hub::set_subscriptions(shared, device_id, *conn_id, &conn.subs);
    }
}

fn on_publish(
    shared: &Shared,
    conn: &mut Conn,
    identity: &Identity,
    who: &str,
    p: Publish,
) -> Option<End> {
    if p.qos == QoS::ExactlyOnce {
        return Some(End::Refused(format!(
            "QoS 2 PUBLISH to {:?}; DPS and IoT Hub support QoS 0 and 1 only and close the connection (publish with QoS 1)",
            p.topic
        )));
    }
    let ack = |conn: &mut Conn| {
        if p.qos == QoS::AtLeastOnce {
            conn.queue(Packet::PubAck(PubAck::new(p.pkid)));
        }
    };
    match identity {
        Identity::Dps(s) => {
            if p.payload.len() > dpskit_core::dps::MAX_MESSAGE_BYTES {
                return Some(End::Refused(format!(
                    "a DPS message of {} bytes; DPS accepts at most 96 KB",
                    p.payload.len()
                )));
            }
            let replies = match dps::on_publish(shared, s, &p.topic, &p.payload) {
                Ok(r) => r,
                Err(why) => return Some(End::Refused(why)),
            };
            ack(conn);
            for r in replies {
                match hub::granted_qos(&conn.subs, &r.topic) {
                    Some(q) => conn.queue_publish(r.topic, r.payload, q, None),
                    None => shared.journal.note(
                        "warning",
                        who,
                        &format!("answer {} dropped: the device is not subscribed to $dps/registrations/res/# (subscribe before publishing the request)", r.topic),
                        json!({}),
                    ),
                }
            }
            None
        }
        Identity::Hub { device_id, .. } => {
            let topic = match DeviceTopic::parse(&p.topic) {
                Ok(t) => t,
                Err(e) => {
                    return Some(End::Refused(format!(
                        "publish to a topic IoT Hub does not accept: {e}; telemetry goes to devices/{device_id}/messages/events/"
                    )))
                }
            };
            match topic {
                DeviceTopic::Telemetry {
                    device_id: target,
                    properties,
                } => {
                    if target != *device_id {
                        return Some(End::Refused(format!(
                            "telemetry published for device {target:?} on {device_id:?}'s connection; a device can only send as itself"
                        )));
                    }
                    if p.payload.len() > MAX_TELEMETRY_BYTES {
                        return Some(End::Refused(format!(
                            "telemetry message of {} bytes exceeds IoT Hub's 256 KB limit ({MAX_TELEMETRY_BYTES} bytes); split it or send less",
                            p.payload.len()
                        )));
                    }
                    let record = telemetry_record(device_id, properties, &p.payload, p.retain);
                    shared.journal.telemetry(record);
                    hub::count_telemetry(shared, device_id);
                    ack(conn);
                }
                DeviceTopic::MethodResponse { status, rid } => {
                    ack(conn);
                    if !hub::method_response(shared, device_id, &rid, status, &p.payload) {
                        shared.journal.note("warning", who, &format!("method answer for $rid={rid} matches no pending call (it timed out, or the $rid was changed)"), json!({}));
                    }
                }
                DeviceTopic::TwinGet { rid } => {
                    ack(conn);
                    let (status, body) = match hub::twin_document(shared, device_id) {
                        Some(doc) => (200, serde_json::to_vec(&doc).unwrap_or_default()),
                        None => (404, Vec::new()),
                    };
                    respond_twin(
                        shared,
                        conn,
                        who,
                        ServiceTopic::TwinResponse {
                            status,
                            rid,
                            version: None,
                        },
                        body,
                    );
                }
                DeviceTopic::TwinPatchReported { rid } => {
                    ack(conn);
                    let (status, version, body) =
                        match hub::patch_reported(shared, device_id, &p.payload) {
                            Ok(v) => (204, Some(v), Vec::new()),
                            Err(why) => {
                                shared.journal.note(
                                    "rejected",
                                    who,
                                    &format!("reported-properties patch refused (400): {why}"),
                                    json!({}),
                                );
                                (
                                    400,
                                    None,
                                    json!({ "errorCode": 400_004, "message": why })
                                        .to_string()
                                        .into_bytes(),
                                )
                            }
                        };
                    respond_twin(
                        shared,
                        conn,
                        who,
                        ServiceTopic::TwinResponse {
                            status,
                            rid,
                            version,
                        },
                        body,
                    );
                }
                DeviceTopic::DpsRegister { .. } | DeviceTopic::DpsPoll { .. } => {
                    return Some(End::Refused("a DPS request on an IoT Hub connection; connect to DPS with the DPS user name to register".into()));
                }
            }
            None
        }
    }
}

fn respond_twin(shared: &Shared, conn: &mut Conn, who: &str, topic: ServiceTopic, body: Vec<u8>) {
    let topic = topic.to_topic();
    match hub::granted_qos(&conn.subs, &topic) {
        Some(q) => conn.queue_publish(topic, body, q, None),
        None => shared.journal.note(
            "warning",
            who,
            &format!(
                "twin answer {topic} dropped: the device is not subscribed to $iothub/twin/res/#"
            ),
            json!({}),
        ),
    }
}

/// A telemetry JSON line: device, system and application properties, body as UTF-8 text
/// (`body`) or, when it is not UTF-8, base64 (`bodyBase64`).
fn telemetry_record(
    device_id: &str,
    properties: PropertyBag,
    body: &[u8],
    retain: bool,
) -> Map<String, Value> {
    use base64::Engine;
    let m = Message::from_properties(body.to_vec(), properties);
    let mut r = Map::new();
    r.insert("device".into(), device_id.into());
    let system = [
        ("messageId", &m.message_id),
        ("correlationId", &m.correlation_id),
        ("userId", &m.user_id),
        ("contentType", &m.content_type),
        ("contentEncoding", &m.content_encoding),
        ("interfaceId", &m.interface_id),
        ("expiryTimeUtc", &m.expiry_time_utc),
    ];
    for (k, v) in system {
        if let Some(v) = v {
            r.insert(k.into(), v.clone().into());
        }
    }
    let mut props: Map<String, Value> = m
        .properties
        .iter()
        .map(|(k, v)| (k.to_string(), v.map_or(Value::Null, |v| v.into())))
        .collect();
    if retain {
        // IoT Hub keeps no retained messages; it forwards them marked like this.
        props.insert("mqtt-retain".into(), "true".into());
    }
    r.insert("properties".into(), Value::Object(props));
    match std::str::from_utf8(body) {
        Ok(text) => r.insert("body".into(), text.into()),
        Err(_) => r.insert(
            "bodyBase64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(body)
                .into(),
        ),
    };
    r
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}
