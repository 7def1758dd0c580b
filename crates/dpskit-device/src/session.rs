//! The MQTT 3.1.1 client session the board and the PC both run: [`Session`] implements
//! [`MqttSession`] over any byte stream a platform opens, so the virtual device's tests
//! exercise the very code the firmware ships.
//!
//! The platform supplies only what differs: TCP + TLS to a host ([`Connector`]: mbedTLS over
//! embassy-net on the board, rustls over tokio on the PC), sleeping ([`Sleep`]) and the clock.
//! Everything MQTT is here, once: CONNECT and the CONNACK code, SUBACK and PUBACK waits with
//! a timeout, PUBLISHes that arrive meanwhile kept for [`MqttSession::next`], QoS 1 PUBACKs
//! for incoming messages, keep-alive (PINGREQ after a keep-alive of silence, the connection
//! declared dead when the PINGRESP is half a keep-alive late), and a packet size limit
//! checked before anything is buffered.

use crate::driver::{Clock, ConnAck, Incoming, MqttSession};
use crate::error::{LinkError, LinkErrorKind};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt::Display;
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;
use dpskit_core::mqtt::{ConnectParams, Publish, QoS};
use dpskit_core::packet::{self, Packet};
use embedded_io_async::{Read, Write};

/// Opens the byte stream one MQTT connection runs over.
#[allow(async_fn_in_trait)] // single-threaded executors on the board; the PC's futures are Send
pub trait Connector {
    /// Why reading or writing the stream failed (`Display` ends up in the device's log).
    type Error: embedded_io_async::Error + Display;
    type Stream<'a>: Read + Write + embedded_io_async::ErrorType<Error = Self::Error>
    where
        Self: 'a;
    /// TCP + TLS to `params.host:params.port`, trusting only the config's root CAs and
    /// checking the certificate against `params.host` (a PC may connect elsewhere, e.g. to a
    /// local emulator it picks by the CONNECT user name, but still checks the name).
    /// Failures are described for the device's user: certificate problems as
    /// [`LinkErrorKind::Certificate`] naming the CA, unreachable hosts as
    /// [`LinkErrorKind::Unreachable`].
    async fn open<'a>(&'a self, params: &ConnectParams) -> Result<Self::Stream<'a>, LinkError>;
    /// Ends the stream politely (TLS close_notify); dropping it must also be safe.
    async fn close<'a>(&'a self, stream: Self::Stream<'a>) {
        drop(stream);
    }
}

/// Waiting, in the platform's timer (embassy-time, tokio).
#[allow(async_fn_in_trait)]
pub trait Sleep {
    async fn sleep_ms(&self, ms: u64);
}

/// Bounds on one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TCP + TLS + CONNACK together, and each SUBACK and PUBACK.
    pub timeout_ms: u64,
    /// The largest packet accepted from the server (a DPS answer is at most 96 KB, a C2D
    /// message 64 KB plus its topic; a small board may choose less).
    pub max_packet: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 30_000,
            max_packet: 300 * 1024,
        }
    }
}

/// Read in chunks of this size; a chunk is the most a cancelled `next` can have read.
const READ_CHUNK: usize = 1024;

struct Conn<T> {
    stream: T,
    rbuf: Vec<u8>,
    /// Bytes not yet written; kept across a cancelled `next`.
    outbox: Vec<u8>,
    inbox: VecDeque<(String, Vec<u8>)>,
    next_packet_id: u16,
    keep_alive_ms: u64,
    last_sent_ms: u64,
    ping_sent_ms: Option<u64>,
    peer: String,
}

/// One MQTT connection at a time over a [`Connector`]'s streams.
pub struct Session<'a, C: Connector, S: Sleep, K: Clock> {
    connector: &'a C,
    sleep: S,
    clock: &'a K,
    limits: Limits,
    conn: Option<Conn<C::Stream<'a>>>,
}

impl<'a, C: Connector, S: Sleep, K: Clock> Session<'a, C, S, K> {
    pub fn new(connector: &'a C, sleep: S, clock: &'a K, limits: Limits) -> Self {
        Session {
            connector,
            sleep,
            clock,
            limits,
            conn: None,
        }
    }

    /// Whether a connection is open (after an accepted CONNACK).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    fn not_connected() -> LinkError {
        LinkError::new(LinkErrorKind::Closed, "not connected")
    }

    /// Drops the connection after a failure and hands the error on.
    fn fail(&mut self, e: LinkError) -> LinkError {
        self.conn = None;
        e
    }

    async fn open(&mut self, params: &ConnectParams) -> Result<ConnAck, LinkError> {
        let started = self.clock.now_ms();
        let deadline = started + self.limits.timeout_ms;
        let peer = format!("{}:{}", params.host, params.port);
        let stream = match first(
            self.connector.open(params),
            self.sleep.sleep_ms(self.limits.timeout_ms),
        )
        .await
        {
            Some(r) => r?,
            None => {
                return Err(LinkError::new(
                    LinkErrorKind::Timeout,
                    format!(
                        "{peer}: no TCP + TLS connection within {} s",
                        self.limits.timeout_ms / 1000
                    ),
                ))
            }
        };
        let mut conn = Conn {
            stream,
            rbuf: Vec::new(),
            outbox: Vec::new(),
            inbox: VecDeque::new(),
            next_packet_id: 0,
            keep_alive_ms: u64::from(params.keep_alive_secs.max(1)) * 1000,
            last_sent_ms: started,
            ping_sent_ms: None,
            peer,
        };
        packet::connect(
            &mut conn.outbox,
            &packet::Connect {
                client_id: &params.client_id,
                username: &params.username,
                password: params.password.as_bytes(),
                keep_alive_secs: params.keep_alive_secs,
                clean_session: params.clean_session,
            },
        )
        .map_err(|e| LinkError::new(LinkErrorKind::Closed, format!("CONNECT: {e}")))?;
        let max = self.limits.max_packet;
        conn.flush(self.clock).await?;
        let left = deadline.saturating_sub(self.clock.now_ms());
        let ack = conn
            .await_packet(&self.sleep, self.clock, max, left, "CONNACK", |a| match a {
                Ack::Connect(ack) => Some(ack),
                _ => None,
            })
            .await?;
        if ack.return_code == 0 {
            self.conn = Some(conn);
        }
        Ok(ack)
    }
}

impl<'a, C: Connector, S: Sleep, K: Clock> MqttSession for Session<'a, C, S, K> {
    async fn connect(&mut self, params: &ConnectParams) -> Result<ConnAck, LinkError> {
        self.disconnect().await;
        self.open(params).await
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<bool, LinkError> {
        let (max, timeout) = (self.limits.max_packet, self.limits.timeout_ms);
        let Some(conn) = self.conn.as_mut() else {
            return Err(Self::not_connected());
        };
        let id = conn.packet_id();
        let result = async {
            packet::subscribe(&mut conn.outbox, id, filter, qos).map_err(|e| conn.encode(e))?;
            conn.flush(self.clock).await?;
            conn.await_packet(
                &self.sleep,
                self.clock,
                max,
                timeout,
                "SUBACK",
                |a| match a {
                    Ack::Subscribe { packet_id, granted } if packet_id == id => Some(granted),
                    _ => None,
                },
            )
            .await
        }
        .await;
        result.map_err(|e| self.fail(e))
    }

    async fn publish(&mut self, publish: &Publish) -> Result<(), LinkError> {
        let (max, timeout) = (self.limits.max_packet, self.limits.timeout_ms);
        let Some(conn) = self.conn.as_mut() else {
            return Err(Self::not_connected());
        };
        let id = conn.packet_id();
        let result = async {
            packet::publish(
                &mut conn.outbox,
                &publish.topic,
                &publish.payload,
                publish.qos,
                id,
            )
            .map_err(|e| conn.encode(e))?;
            conn.flush(self.clock).await?;
            if publish.qos == QoS::AtLeastOnce {
                conn.await_packet(&self.sleep, self.clock, max, timeout, "PUBACK", |a| {
                    matches!(a, Ack::Publish { packet_id } if packet_id == id).then_some(())
                })
                .await?;
            }
            Ok(())
        }
        .await;
        result.map_err(|e| self.fail(e))
    }

    async fn disconnect(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            packet::disconnect(&mut conn.outbox);
            // Best effort: the connection is being dropped either way.
            let closing = async {
                let _ = conn.flush(self.clock).await;
                self.connector.close(conn.stream).await;
            };
            let _ = first(closing, self.sleep.sleep_ms(2000)).await;
        }
    }

    async fn next(&mut self, deadline_ms: Option<u64>) -> Incoming {
        let max = self.limits.max_packet;
        let Some(conn) = self.conn.as_mut() else {
            match deadline_ms {
                Some(d) => {
                    let ms = d.saturating_sub(self.clock.now_ms());
                    self.sleep.sleep_ms(ms).await
                }
                None => core::future::pending::<()>().await,
            }
            return Incoming::Deadline;
        };
        let (sleep, clock) = (&self.sleep, self.clock);
        let result: Result<Incoming, LinkError> = async {
            loop {
                if !conn.outbox.is_empty() {
                    conn.flush(clock).await?;
                }
                // Acknowledgements nobody waits for (a late PUBACK) are dropped.
                while conn.take_ack(max)?.is_some() {}
                if let Some((topic, payload)) = conn.inbox.pop_front() {
                    return Ok(Incoming::Publish { topic, payload });
                }
                let now = clock.now_ms();
                if deadline_ms.is_some_and(|d| now >= d) {
                    return Ok(Incoming::Deadline);
                }
                let ping_at = match conn.ping_sent_ms {
                    Some(sent) => sent + conn.keep_alive_ms / 2,
                    None => conn.last_sent_ms + conn.keep_alive_ms,
                };
                if now >= ping_at {
                    if conn.ping_sent_ms.is_some() {
                        return Err(LinkError::new(
                            LinkErrorKind::Timeout,
                            format!("{} stopped answering (no PINGRESP)", conn.peer),
                        ));
                    }
                    conn.ping_sent_ms = Some(now);
                    packet::pingreq(&mut conn.outbox);
                    continue;
                }
                let wake = deadline_ms.map_or(ping_at, |d| d.min(ping_at));
                let mut chunk = [0u8; READ_CHUNK];
                match first(conn.stream.read(&mut chunk), sleep.sleep_ms(wake - now)).await {
                    None => {}
                    Some(Ok(0)) => return Err(conn.closed()),
                    Some(Ok(n)) => conn.rbuf.extend_from_slice(&chunk[..n]),
                    Some(Err(e)) => return Err(conn.io_lost(&e)),
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

impl<T: Read + Write> Conn<T>
where
    T::Error: Display,
{
    fn packet_id(&mut self) -> u16 {
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        self.next_packet_id
    }

    fn encode(&self, e: packet::EncodeError) -> LinkError {
        LinkError::new(LinkErrorKind::Closed, format!("{}: {e}", self.peer))
    }

    fn closed(&self) -> LinkError {
        LinkError::new(
            LinkErrorKind::Closed,
            format!("{} closed the connection", self.peer),
        )
    }

    fn io_lost(&self, e: &T::Error) -> LinkError {
        LinkError::new(
            LinkErrorKind::Closed,
            format!("the connection to {} failed: {e}", self.peer),
        )
    }

    /// Writes the outbox; what was written leaves it, so a cancelled flush resumes.
    async fn flush<K: Clock>(&mut self, clock: &K) -> Result<(), LinkError> {
        while !self.outbox.is_empty() {
            match self.stream.write(&self.outbox).await {
                Ok(0) => return Err(self.closed()),
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(e) => return Err(self.io_lost(&e)),
            }
        }
        self.stream.flush().await.map_err(|e| self.io_lost(&e))?;
        self.last_sent_ms = clock.now_ms();
        Ok(())
    }

    /// Takes the complete packets already read out of the buffer, handling what every state
    /// handles the same way (an incoming PUBLISH is kept for `next` and acknowledged, a
    /// PINGRESP ends the ping, a server DISCONNECT ends the connection), up to the first
    /// acknowledgement, which is returned.
    fn take_ack(&mut self, max: usize) -> Result<Option<Ack>, LinkError> {
        loop {
            let decoded = packet::decode(&self.rbuf, max).map_err(|e| {
                LinkError::new(LinkErrorKind::Closed, format!("{} sent {e}", self.peer))
            })?;
            let Some((p, used)) = decoded else {
                return Ok(None);
            };
            let ack = match p {
                Packet::Publish {
                    topic,
                    payload,
                    packet_id,
                    ..
                } => {
                    self.inbox.push_back((topic.to_string(), payload.to_vec()));
                    if let Some(id) = packet_id {
                        packet::puback(&mut self.outbox, id);
                    }
                    None
                }
                Packet::PingResp => {
                    self.ping_sent_ms = None;
                    None
                }
                Packet::Disconnect => {
                    return Err(LinkError::new(
                        LinkErrorKind::Closed,
                        format!("{} sent DISCONNECT", self.peer),
                    ))
                }
                Packet::ConnAck {
                    session_present,
                    return_code,
                } => Some(Ack::Connect(ConnAck {
                    return_code,
                    session_present,
                })),
                Packet::SubAck { packet_id, granted } => {
                    Some(Ack::Subscribe { packet_id, granted })
                }
                Packet::PubAck { packet_id } => Some(Ack::Publish { packet_id }),
            };
            self.rbuf.drain(..used);
            if ack.is_some() {
                return Ok(ack);
            }
        }
    }

    /// Waits up to `timeout_ms` for a packet `want` accepts, keeping PUBLISHes for `next`.
    async fn await_packet<S: Sleep, K: Clock, R>(
        &mut self,
        sleep: &S,
        clock: &K,
        max: usize,
        timeout_ms: u64,
        what: &str,
        mut want: impl FnMut(Ack) -> Option<R>,
    ) -> Result<R, LinkError> {
        let deadline = clock.now_ms() + timeout_ms;
        loop {
            while let Some(ack) = self.take_ack(max)? {
                if let Some(r) = want(ack) {
                    return Ok(r);
                }
            }
            if !self.outbox.is_empty() {
                self.flush(clock).await?;
            }
            let now = clock.now_ms();
            let timed_out = || {
                LinkError::new(
                    LinkErrorKind::Timeout,
                    format!(
                        "no {what} from {} within {} s",
                        self.peer,
                        timeout_ms / 1000
                    ),
                )
            };
            if now >= deadline {
                return Err(timed_out());
            }
            let mut chunk = [0u8; READ_CHUNK];
            match first(self.stream.read(&mut chunk), sleep.sleep_ms(deadline - now)).await {
                None => return Err(timed_out()),
                Some(Ok(0)) => return Err(self.closed()),
                Some(Ok(n)) => self.rbuf.extend_from_slice(&chunk[..n]),
                Some(Err(e)) => return Err(self.io_lost(&e)),
            }
        }
    }
}

/// An acknowledgement from the server, which one of the session's calls waits for.
#[derive(Debug, Clone, Copy)]
enum Ack {
    /// CONNACK
    Connect(ConnAck),
    /// SUBACK
    Subscribe { packet_id: u16, granted: bool },
    /// PUBACK
    Publish { packet_id: u16 },
}

/// Runs `work` until it finishes or `timer` fires first (`None`).
async fn first<T>(work: impl Future<Output = T>, timer: impl Future<Output = ()>) -> Option<T> {
    let mut work = pin!(work);
    let mut timer = pin!(timer);
    poll_fn(|cx| {
        if let Poll::Ready(v) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}
