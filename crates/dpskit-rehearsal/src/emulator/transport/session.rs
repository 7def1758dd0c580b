//! One connection from accept to close: TLS, CONNECT, then the packet loop until the device
//! leaves, breaks a rule, goes idle past its keep-alive, or its token expires — IoT Hub and
//! DPS end a session at the token's expiry, and a device must connect again with a fresh
//! token before then. Every deadline is on the emulator's clock. Any failure ends this one
//! connection with a logged reason; the listener and every other session carry on.

use super::conn::{Conn, ReadError};
use super::connect::{self, Identity, Login};
use super::PendingSlot;
use crate::emulator::clock::{self, Clock, Sleep};
use crate::emulator::hub::registry::{self, C2dMessage, ToConn};
use crate::emulator::subscriptions::{Full, Subscriptions};
use crate::emulator::{dps, hub, Reply, Shared};
use dpskit_core::hub::MAX_TELEMETRY_BYTES;
use dpskit_core::mqtt::connack_text;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

/// Largest CONNECT: user name, token and a Will of modest size. Bigger ones are refused from
/// the header, so a connection that has not authenticated holds little memory.
const MAX_CONNECT_PACKET: usize = 64 * 1024;
/// Largest packet on a DPS session: a 96 KB message plus topic and headers.
const MAX_DPS_PACKET: usize = dpskit_core::dps::MAX_MESSAGE_BYTES + 16 * 1024;
/// Largest packet on a hub session: a 256 KB telemetry body plus topic and headers.
const MAX_HUB_PACKET: usize = MAX_TELEMETRY_BYTES + 16 * 1024;
/// Messages a connection may have waiting before the registry stops queueing to it.
const OUTBOX: usize = 256;
/// IoT Hub's longest server-side idle timeout: 29.45 min, the Azure load balancer's.
const MAX_IDLE: Duration = Duration::from_secs(1767);
/// The CONNACK IoT Hub sends for another protocol than MQTT 3.1.1: "unacceptable protocol
/// version", in the 3.1.1 format every MQTT 3 client reads.
const CONNACK_PROTOCOL: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

/// Why a session ended.
enum End {
    /// DISCONNECT.
    Disconnect,
    /// The client closed the socket or the network failed.
    Lost(&'static str),
    /// The emulator closed it; the reason is logged as a rejection.
    Refused(String),
    /// Another connection took over the identity.
    Replaced(String),
    /// The token expired.
    Expired(String),
    /// Emulator shutdown.
    Quiet,
}

/// A connection as accepted: its ID, its deadline to CONNECT (on the emulator's clock), its
/// place among the pending connections and the signal that it was pushed out.
pub(crate) struct Pending {
    pub conn_id: u64,
    pub deadline: u64,
    pub slot: PendingSlot,
    pub evicted: oneshot::Receiver<()>,
}

/// A connection, from accept to close.
pub(crate) async fn run(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    pending: Pending,
) {
    let Pending {
        conn_id,
        deadline,
        slot,
        mut evicted,
    } = pending;
    shared.counters.connections.fetch_add(1, Ordering::Relaxed);
    let _open = shared.counters.open();
    let peer = peer.to_string();
    let clock = shared.clock.clone();
    let limit = shared.limits.connect_timeout;
    let evicted_text = || {
        format!(
            "closed to make room: {} connections had not finished TLS and CONNECT (the emulator's limit; the oldest goes first)",
            shared.limits.pending_connections
        )
    };
    let stream = tokio::select! {
        r = acceptor.accept(tcp) => match r {
            Ok(s) => s,
            Err(e) => return refuse_early(&shared, &peer, &format!("TLS handshake failed: {e}; the client must speak TLS 1.2 or 1.3 on this port and trust the emulator's CA (dpskit config build --root-ca emulator)")),
        },
        _ = clock.sleep_until(deadline) => return refuse_early(&shared, &peer, &format!("no TLS handshake within {} s; connection closed", limit.as_secs())),
        _ = &mut evicted => return refuse_early(&shared, &peer, &evicted_text()),
    };
    let mut conn = Conn::new(stream, MAX_CONNECT_PACKET);
    let first = tokio::select! {
        r = conn.read_packet() => r,
        _ = clock.sleep_until(deadline) => return refuse_early(&shared, &peer, &format!("no CONNECT within {} s of connecting", limit.as_secs())),
        _ = &mut evicted => return refuse_early(&shared, &peer, &evicted_text()),
    };
    let connect = match first {
        Ok(Packet::Connect(c)) if c.protocol == Protocol::V4 => c,
        Ok(Packet::Connect(_)) => {
            return refuse_protocol(&shared, &mut conn, &peer, "MQTT 5 (level 5)").await
        }
        Err(ReadError::Protocol { name, level }) => {
            let what = if name == "MQIsdp" && level == 3 {
                "MQTT 3.1 (protocol name \"MQIsdp\", level 3), Paho's fallback after a refused CONNECT".to_string()
            } else {
                format!("protocol name {name:?}, level {level}")
            };
            return refuse_protocol(&shared, &mut conn, &peer, &what).await;
        }
        Ok(other) => {
            return refuse_early(
                &shared,
                &peer,
                &format!(
                    "the first packet was {} instead of CONNECT",
                    packet_name(&other)
                ),
            )
        }
        Err(e) => {
            return refuse_early(
                &shared,
                &peer,
                &format!("no valid CONNECT: {}", read_error_text(&e)),
            )
        }
    };
    let (tx, mut rx) = mpsc::channel::<ToConn>(OUTBOX);
    let (kick_tx, mut kick_rx) = oneshot::channel::<String>();
    let login = match connect::login(&shared, &connect, conn_id, &peer, tx, kick_tx) {
        Ok(l) => l,
        Err(r) => {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            let rc = match r.code {
                1 => ConnectReturnCode::RefusedProtocolVersion,
                2 => ConnectReturnCode::BadClientId,
                3 => ConnectReturnCode::ServiceUnavailable,
                4 => ConnectReturnCode::BadUserNamePassword,
                _ => ConnectReturnCode::NotAuthorized,
            };
            conn.queue(Packet::ConnAck(ConnAck::new(rc, false)));
            shared.journal.note(
                "rejected",
                &r.who,
                &format!(
                    "CONNACK {} ({}): {}",
                    r.code,
                    connack_text(r.code),
                    r.reason
                ),
                json!({ "returnCode": r.code }),
            );
            conn.close().await;
            return;
        }
    };
    // An authenticated session leaves the pending connections; a refused DPS session keeps its
    // place (and can be pushed out) until it ends.
    let (_slot, evicted) = if login.identity.refused() {
        (Some(slot), Some(evicted))
    } else {
        drop(slot);
        (None, None)
    };
    conn.max_packet = match &login.identity {
        Identity::Dps(_) => MAX_DPS_PACKET,
        Identity::Hub { .. } => MAX_HUB_PACKET,
    };
    conn.queue(Packet::ConnAck(ConnAck::new(
        ConnectReturnCode::Success,
        login.session_present,
    )));
    let kind = match &login.identity {
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
            if login.session_present {
                " (session resumed)"
            } else {
                ""
            }
        ),
    };
    shared.journal.note(
        "connected",
        &login.who,
        &format!("{kind} from {peer}"),
        json!({ "peer": peer }),
    );
    let mut subs = login.subs.clone();
    if let Identity::Hub { addr, conn_id, .. } = &login.identity {
        // Deliver what waited for a resumed session.
        registry::set_subscriptions(&shared, addr, *conn_id, &subs);
    }
    let mut s = Session {
        shared: &shared,
        conn: &mut conn,
        login: &login,
        subs: &mut subs,
    };
    let end = s
        .packets(connect.keep_alive, &mut rx, &mut kick_rx, evicted)
        .await;
    let who = &login.who;
    if let Identity::Hub {
        addr,
        clean,
        conn_id,
        will,
    } = &login.identity
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
        registry::disconnected(
            &shared,
            addr,
            *conn_id,
            unacked.into_iter().chain(unsent).collect(),
            *clean,
        );
        if let (Some(w), false) = (will, matches!(end, End::Disconnect | End::Quiet)) {
            shared.journal.note(
                "info",
                who,
                "the connection ended without DISCONNECT: its Will goes out as telemetry (iothub-MessageType: Will), as IoT Hub forwards it",
                json!({}),
            );
            hub::send_will(&shared, addr, w.clone());
        }
    }
    match end {
        End::Disconnect => {
            shared
                .journal
                .note("disconnected", who, "disconnected (DISCONNECT)", json!({}))
        }
        End::Lost(how) => shared.journal.note("disconnected", who, how, json!({})),
        End::Refused(reason) => {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            shared.journal.note(
                "rejected",
                who,
                &format!("connection closed: {reason}"),
                json!({}),
            );
        }
        End::Replaced(reason) => {
            shared
                .journal
                .note("disconnected", who, &reason, json!({ "replaced": true }))
        }
        End::Expired(reason) => shared.journal.note(
            "disconnected",
            who,
            &reason,
            json!({ "reason": "token-expired" }),
        ),
        End::Quiet => {}
    }
    conn.close().await;
}

async fn refuse_protocol(shared: &Shared, conn: &mut Conn, peer: &str, what: &str) {
    conn.queue_raw(&CONNACK_PROTOCOL);
    refuse_early(
        shared,
        peer,
        &format!("protocol refused (CONNACK 1, unacceptable protocol version): CONNECT for {what}; DPS and IoT Hub speak MQTT 3.1.1 (level 4) only"),
    );
    conn.close().await;
}

fn refuse_early(shared: &Shared, peer: &str, reason: &str) {
    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
    shared.journal.note(
        "rejected",
        peer,
        &format!("connection closed: {reason}"),
        json!({ "peer": peer }),
    );
}

fn read_error_text(e: &ReadError) -> String {
    match e {
        ReadError::Closed => "the client closed the connection".into(),
        ReadError::Io(e) => format!("read failed: {e}"),
        ReadError::TooLarge(n) => format!(
            "a packet of {n} bytes; IoT Hub accepts telemetry up to 256 KB ({MAX_TELEMETRY_BYTES} bytes) and closes the connection for bigger messages (and the emulator reads a CONNECT of at most {} KB)",
            MAX_CONNECT_PACKET / 1024
        ),
        ReadError::Malformed(e) => format!("malformed MQTT packet ({e}); not MQTT 3.1.1, or a corrupted stream"),
        ReadError::Protocol { name, level } => {
            format!("a CONNECT for protocol {name:?} level {level} in the middle of a session")
        }
    }
}

/// How long a connection may stay silent: 1.5 × its keep-alive, at most IoT Hub's 1767 s
/// (keep-alive 0 too: IoT Hub still closes a connection idle that long).
fn idle_limit(keep_alive: u16) -> Duration {
    if keep_alive == 0 {
        return MAX_IDLE;
    }
    Duration::from_millis(u64::from(keep_alive) * 1500).min(MAX_IDLE)
}

/// A deadline that may not exist.
fn sleep_until(clock: &dyn Clock, deadline_us: Option<u64>) -> Sleep {
    match deadline_us {
        Some(d) => clock.sleep_until(d),
        None => Box::pin(std::future::pending()),
    }
}

struct Session<'a> {
    shared: &'a Shared,
    conn: &'a mut Conn,
    login: &'a Login,
    subs: &'a mut Subscriptions,
}

impl Session<'_> {
    /// The packet loop of an accepted session.
    async fn packets(
        &mut self,
        keep_alive: u16,
        rx: &mut mpsc::Receiver<ToConn>,
        kick: &mut oneshot::Receiver<String>,
        mut evicted: Option<oneshot::Receiver<()>>,
    ) -> End {
        let clock = self.shared.clock.clone();
        let idle = idle_limit(keep_alive);
        let expires = self.login.expiry.map(|se| se.saturating_mul(1_000_000));
        // A refused DPS session gets its answers (each a 401 with the reason) for as long as a
        // connection may take to CONNECT, then it ends.
        let refused_until = self
            .login
            .identity
            .refused()
            .then(|| clock::after(clock.as_ref(), self.shared.limits.connect_timeout));
        let mut last = clock.now_unix_us();
        loop {
            if let Err(e) = self.conn.flush().await {
                return End::Lost(if e.kind() == std::io::ErrorKind::BrokenPipe {
                    "connection lost"
                } else {
                    "write failed; connection lost"
                });
            }
            let idle_at = last.saturating_add(u64::try_from(idle.as_micros()).unwrap_or(u64::MAX));
            // Only the hub hands a connection over to a newer one.
            let hub = matches!(self.login.identity, Identity::Hub { .. });
            let replaced = async {
                match hub {
                    true => (&mut *kick).await,
                    false => std::future::pending().await,
                }
            };
            let pushed_out = async {
                match evicted.as_mut() {
                    Some(rx) => {
                        let _ = rx.await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                packet = self.conn.read_packet() => {
                    last = clock.now_unix_us();
                    let packet = match packet {
                        Ok(p) => p,
                        Err(ReadError::Closed) => return End::Lost("the device closed the connection without DISCONNECT"),
                        Err(ReadError::Io(_)) => return End::Lost("connection lost"),
                        Err(e) => return End::Refused(read_error_text(&e)),
                    };
                    if let Some(end) = self.on_packet(packet) {
                        return end;
                    }
                }
                Some(out) = rx.recv() => {
                    let ToConn::Publish { topic, payload, qos, c2d } = out;
                    self.conn.queue_publish(topic, payload, qos, c2d);
                }
                reason = replaced => {
                    return match reason {
                        Ok(r) => End::Replaced(r),
                        Err(_) => End::Quiet,
                    };
                }
                _ = clock.sleep_until(idle_at) => {
                    return End::Refused(if keep_alive == 0 || idle == MAX_IDLE {
                        format!("no packet for {} s, IoT Hub's longest idle time (keep-alive {keep_alive} s); the device must send PINGREQ", idle.as_secs())
                    } else {
                        format!("no packet for 1.5 × the keep-alive of {keep_alive} s; the device must send PINGREQ (IoT Hub closes idle connections the same way)")
                    });
                }
                _ = sleep_until(clock.as_ref(), expires) => {
                    let se = self.login.expiry.unwrap_or_default();
                    let service = match self.login.identity { Identity::Dps(_) => "DPS", Identity::Hub { .. } => "IoT Hub" };
                    return End::Expired(format!(
                        "the SAS token expired (se={se}, {}): {service} ends a session when its token expires (IoT Hub: 401003 IoTHubUnauthorized); a device must connect again with a fresh token before se",
                        dpskit_factory::timestamp::utc_words(se)
                    ));
                }
                _ = sleep_until(clock.as_ref(), refused_until) => {
                    return End::Refused(format!("credentials refused; the session ends {} s after CONNECT", self.shared.limits.connect_timeout.as_secs()));
                }
                _ = pushed_out => {
                    return End::Refused(format!(
                        "closed to make room: {} connections had not authenticated (the emulator's limit; the oldest goes first)",
                        self.shared.limits.pending_connections
                    ));
                }
            }
        }
    }

    /// Handles one packet; `Some` ends the session.
    fn on_packet(&mut self, packet: Packet) -> Option<End> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::Subscribe(s) => {
                self.on_subscribe(s);
                None
            }
            Packet::Unsubscribe(u) => {
                for f in &u.topics {
                    self.subs.remove(f);
                    if let Identity::Hub { addr, .. } = &self.login.identity {
                        // The filter a wildcard subscription was resolved to goes too.
                        if let Ok(a) = hub::allowed_filter(&addr.id, f) {
                            self.subs.remove(&a.filter);
                        }
                    }
                }
                self.conn.queue(Packet::UnsubAck(UnsubAck::new(u.pkid)));
                self.sync_subs();
                None
            }
            Packet::PubAck(a) => {
                self.conn.inflight.remove(&a.pkid);
                None
            }
            Packet::PingReq => {
                self.conn.queue(Packet::PingResp);
                None
            }
            Packet::Disconnect => Some(End::Disconnect),
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

    fn on_subscribe(&mut self, s: rumqttc::mqttbytes::v4::Subscribe) {
        let shared = self.shared;
        let who = &self.login.who;
        let cap = shared.limits.subscriptions_per_connection;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut refused: Vec<(String, String)> = Vec::new();
        for f in &s.filters {
            // No QoS 2: a QoS 2 request is granted QoS 1, as DPS and IoT Hub do.
            let q = (f.qos as u8).min(1);
            let rule = match &self.login.identity {
                Identity::Dps(_) => dps::allowed_filter(&f.path).map(|()| (f.path.clone(), None)),
                Identity::Hub { addr, .. } => {
                    hub::allowed_filter(&addr.id, &f.path).map(|a| (a.filter, a.note))
                }
            };
            let added = rule.and_then(|(filter, note)| {
                self.subs.add(&filter, q, cap).map(|()| note).map_err(|Full(n)| {
                    format!("{:?}: this connection already holds {n} subscriptions, IoT Hub's limit (a device can subscribe to five topics at a time); unsubscribe first", f.path)
                })
            });
            match added {
                Ok(note) => {
                    codes.push(SubscribeReasonCode::Success(if q == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    }));
                    if let Some(note) = note {
                        shared
                            .journal
                            .note("info", who, &note, json!({ "filter": f.path }));
                    }
                }
                Err(why) => {
                    codes.push(SubscribeReasonCode::Failure);
                    refused.push((f.path.clone(), why));
                }
            }
        }
        self.conn.queue(Packet::SubAck(SubAck::new(s.pkid, codes)));
        if let Some((filter, why)) = refused.first() {
            // One event per SUBSCRIBE, however many filters it carried.
            shared
                .counters
                .rejected
                .fetch_add(refused.len() as u64, Ordering::Relaxed);
            let more = match refused.len() {
                1 => String::new(),
                n => format!(" (and {} more filter(s) in the same SUBSCRIBE)", n - 1),
            };
            shared.journal.note(
                "rejected",
                who,
                &format!("subscription refused (SUBACK 0x80): {why}{more}"),
                json!({ "filter": filter, "refused": refused.len() }),
            );
        }
        self.sync_subs();
    }

    /// Tells the registry this connection's subscriptions (it ignores a replaced connection)
    /// and so delivers C2D messages that waited for them.
    fn sync_subs(&self) {
        if let Identity::Hub { addr, conn_id, .. } = &self.login.identity {
            registry::set_subscriptions(self.shared, addr, *conn_id, self.subs);
        }
    }

    fn on_publish(&mut self, p: rumqttc::mqttbytes::v4::Publish) -> Option<End> {
        if p.qos == QoS::ExactlyOnce {
            return Some(End::Refused(format!(
                "QoS 2 PUBLISH to {:?}; DPS and IoT Hub support QoS 0 and 1 only and close the connection (publish with QoS 1)",
                p.topic
            )));
        }
        let shared = self.shared;
        let who = self.login.who.clone();
        let (replies, filter) = match &self.login.identity {
            Identity::Dps(s) => {
                if p.payload.len() > dpskit_core::dps::MAX_MESSAGE_BYTES {
                    return Some(End::Refused(format!(
                        "a DPS message of {} bytes; DPS accepts at most 96 KB",
                        p.payload.len()
                    )));
                }
                match dps::on_publish(shared, s, &p.topic, &p.payload) {
                    Ok(r) => (r, dpskit_core::topic::DPS_RESPONSES_FILTER),
                    Err(why) => return Some(End::Refused(why)),
                }
            }
            Identity::Hub { addr, .. } => {
                match hub::on_publish(shared, addr, &who, &p.topic, &p.payload, p.retain) {
                    Ok(h) => (h.replies, dpskit_core::topic::TWIN_RESPONSES_FILTER),
                    Err(why) => return Some(End::Refused(why)),
                }
            }
        };
        if p.qos == QoS::AtLeastOnce {
            self.conn.queue(Packet::PubAck(PubAck::new(p.pkid)));
        }
        for Reply { topic, payload } in replies {
            match self.subs.granted_qos(&topic) {
                Some(q) => self.conn.queue_publish(topic, payload, q, None),
                None => shared.journal.note(
                    "warning",
                    &who,
                    &format!("answer {topic} dropped: the device is not subscribed to {filter} (subscribe before publishing the request)"),
                    json!({}),
                ),
            }
        }
        None
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_limits_follow_iot_hub() {
        assert_eq!(idle_limit(60), Duration::from_secs(90));
        assert_eq!(idle_limit(0), MAX_IDLE);
        assert_eq!(idle_limit(1200), MAX_IDLE);
    }
}
