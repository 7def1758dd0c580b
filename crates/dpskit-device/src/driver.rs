//! The driver loop, written once over small traits: the board implements them with
//! mbedTLS + its MQTT client + SNTP + NVS, the PC with rustls + tokio + a file.
//!
//! The loop carries out [`DeviceApp`]'s actions in order, turns what the session reports
//! into events, and sleeps until the next deadline, an incoming message or a [`Command`]:
//!
//! * `Connect`/`Reconnect` → [`MqttSession::connect`] (TCP + TLS + CONNECT + CONNACK). A
//!   refused CONNACK leaves the session closed; the loop reports `Disconnected` unless the app
//!   answered the CONNACK with a new `Connect` or a `Disconnect` of its own.
//! * `Subscribe` → [`MqttSession::subscribe`] (waits for the SUBACK) → `Event::SubAck`.
//! * `Publish` → [`MqttSession::publish`] (QoS 1 waits for the PUBACK) → `Event::PubAck`, so
//!   the app knows what was delivered and `Finished` really means delivered.
//! * a failed session call → [`DeviceApp::link_failed`] + `Event::Disconnected`, once per
//!   connection; actions for a connection that is gone are dropped (the app sends telemetry
//!   that was never acknowledged again on the next connection).
//! * `Output(StoreAssignment)` → [`Storage::save`]; every output also goes to `on_output`.
//!
//! Futures are polled by whatever executor the platform has (embassy, tokio); nothing here
//! spawns or sleeps by itself: the session's [`next`](MqttSession::next) owns waiting.

use crate::app::{AppOutput, DeviceApp, PlatformStatus};
use crate::error::{AppError, LinkError};
use crate::store::StoredAssignment;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::Poll;
use dpskit_core::hub::Message;
use dpskit_core::mqtt::{Action, ConnectParams, Event, Publish, QoS};

/// Wall-clock time, Unix ms, after SNTP (see [`crate::MIN_PLAUSIBLE_UNIX_MS`]).
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// A source of random numbers for the reconnect jitter (the ESP32's TRNG).
pub trait Entropy {
    fn random_u32(&mut self) -> u32;
}

/// Where the DPS assignment is kept across reboots (NVS on the board, a file on the PC).
pub trait Storage {
    /// The stored assignment, if any; pass it to [`DeviceApp::new`].
    fn load(&mut self) -> Option<StoredAssignment>;
    /// Keeps `assignment` ([`StoredAssignment::to_bytes`] is the encoding to store).
    fn save(&mut self, assignment: &StoredAssignment) -> Result<(), String>;
}

/// The CONNACK of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub return_code: u8,
    pub session_present: bool,
}

/// What [`MqttSession::next`] woke up for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A PUBLISH from the server (already acknowledged if QoS 1).
    Publish { topic: String, payload: Vec<u8> },
    /// The open connection failed or the server closed it.
    Closed(LinkError),
    /// `deadline_ms` was reached.
    Deadline,
}

/// One MQTT 3.1.1 connection over TLS at a time.
///
/// **TLS contract:** `connect` opens TLS to `params.host:params.port` (a PC driver may map that
/// to another address, e.g. the local emulator, but still verifies the certificate for
/// `params.host`), trusting only the root CAs of the device's config, and describes every
/// failure as a [`LinkError`] (certificate problems as
/// [`LinkErrorKind::Certificate`](crate::LinkErrorKind::Certificate), naming the CA).
#[allow(async_fn_in_trait)] // executors on the board are single-threaded; the PC's types are Send
pub trait MqttSession {
    /// Closes any open connection, then TCP + TLS + CONNECT, and waits for the CONNACK. A
    /// CONNACK other than 0 leaves the session closed.
    async fn connect(&mut self, params: &ConnectParams) -> Result<ConnAck, LinkError>;
    /// SUBSCRIBE and wait for the SUBACK; `Ok(false)` when refused (0x80).
    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<bool, LinkError>;
    /// PUBLISH; for QoS 1 waits for the PUBACK. PUBLISHes arriving meanwhile are kept for
    /// [`next`](Self::next).
    async fn publish(&mut self, publish: &Publish) -> Result<(), LinkError>;
    /// DISCONNECT and close; a no-op when closed.
    async fn disconnect(&mut self);
    /// Waits for an incoming PUBLISH, a failure of the open connection, or `deadline_ms`
    /// (Unix ms; `None`: no deadline). Keeps the connection alive (PINGREQ) meanwhile. Must
    /// be cancel-safe: the loop drops it when a [`Command`] arrives.
    async fn next(&mut self, deadline_ms: Option<u64>) -> Incoming;
}

/// What the rest of the firmware (or the PC) can ask of a running app.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Send a telemetry message of your own (queued while the hub is unreachable).
    Send(Box<Message>),
    /// New platform numbers for the twin and telemetry.
    Status(PlatformStatus),
    /// Disconnect and finish.
    Stop,
}

/// A source of [`Command`]s; [`NoCommands`] when there are none.
#[allow(async_fn_in_trait)]
pub trait Control {
    /// The next command; never resolves if none will come.
    async fn next_command(&mut self) -> Command;
}

/// No commands ever.
pub struct NoCommands;

impl Control for NoCommands {
    async fn next_command(&mut self) -> Command {
        core::future::pending().await
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// `max_messages` were sent, or a [`Command::Stop`].
    Finished {
        messages_sent: u64,
    },
    /// The `reboot` method was called; the connection is closed. Restart the device (the PC
    /// starts a new app with the stored assignment).
    Reboot,
    Failed(AppError),
}

/// The platform pieces [`run`] needs besides the session.
pub struct Platform<'a, C, E, S> {
    pub clock: &'a C,
    pub entropy: &'a mut E,
    pub storage: &'a mut S,
}

enum Wake {
    Net(Incoming),
    Cmd(Command),
}

/// Waits for whichever comes first; commands win ties.
async fn wake<M: MqttSession, K: Control>(
    session: &mut M,
    control: &mut K,
    deadline: Option<u64>,
) -> Wake {
    let mut net = pin!(session.next(deadline));
    let mut cmd = pin!(control.next_command());
    poll_fn(|cx| {
        if let Poll::Ready(c) = cmd.as_mut().poll(cx) {
            return Poll::Ready(Wake::Cmd(c));
        }
        if let Poll::Ready(i) = net.as_mut().poll(cx) {
            return Poll::Ready(Wake::Net(i));
        }
        Poll::Pending
    })
    .await
}

/// Runs `app` from `Start` until it finishes, fails or asks for a reboot. `on_output` sees
/// every [`AppOutput`] (print it, log it, count it).
pub async fn run<M, K, C, E, S>(
    app: &mut DeviceApp,
    session: &mut M,
    control: &mut K,
    platform: Platform<'_, C, E, S>,
    mut on_output: impl FnMut(&AppOutput),
) -> RunEnd
where
    M: MqttSession,
    K: Control,
    C: Clock,
    E: Entropy,
    S: Storage,
{
    let Platform {
        clock,
        entropy,
        storage,
    } = platform;
    let mut queue: VecDeque<Action<AppOutput>> = VecDeque::new();
    let mut connected = false;
    let mut end: Option<RunEnd> = None;
    queue.extend(app.handle(clock.now_ms(), Event::Start));
    loop {
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Connect(params) | Action::Reconnect(params) => {
                    if connected {
                        session.disconnect().await;
                    }
                    connected = false;
                    match session.connect(&params).await {
                        Ok(ack) => {
                            connected = ack.return_code == 0;
                            let event = Event::ConnAck {
                                return_code: ack.return_code,
                                session_present: ack.session_present,
                            };
                            let actions = app.handle(clock.now_ms(), event);
                            let handled = actions.iter().any(|a| {
                                matches!(
                                    a,
                                    Action::Connect(_) | Action::Reconnect(_) | Action::Disconnect
                                )
                            });
                            queue.extend(actions);
                            if !connected && !handled {
                                let random = entropy.random_u32();
                                queue.extend(
                                    app.handle(clock.now_ms(), Event::Disconnected { random }),
                                );
                            }
                        }
                        Err(e) => {
                            app.link_failed(e);
                            let random = entropy.random_u32();
                            queue
                                .extend(app.handle(clock.now_ms(), Event::Disconnected { random }));
                        }
                    }
                }
                Action::Subscribe { filter, qos } if connected => {
                    match session.subscribe(&filter, qos).await {
                        Ok(granted) => {
                            queue.extend(app.handle(clock.now_ms(), Event::SubAck { granted }))
                        }
                        Err(e) => {
                            connected = false;
                            lost(app, session, entropy, clock, e, &mut queue).await;
                        }
                    }
                }
                Action::Publish(p) if connected => match session.publish(&p).await {
                    Ok(()) => queue.extend(app.handle(clock.now_ms(), Event::PubAck)),
                    Err(e) => {
                        connected = false;
                        lost(app, session, entropy, clock, e, &mut queue).await;
                    }
                },
                // For a connection that is gone: the app sends unacknowledged telemetry again
                // on the next connection; replies and twin patches are moot by then.
                Action::Publish(_) => {}
                Action::Subscribe { .. } => {
                    // For a connection that is gone; the next connect subscribes again.
                }
                Action::Disconnect => {
                    if connected {
                        session.disconnect().await;
                    }
                    connected = false;
                }
                Action::Output(o) => {
                    if let AppOutput::StoreAssignment(a) = &o {
                        if let Err(e) = storage.save(a) {
                            on_output(&AppOutput::Warning(format!(
                                "could not store the DPS assignment ({e}); the next boot registers again"
                            )));
                        }
                    }
                    on_output(&o);
                    match o {
                        AppOutput::Finished { messages_sent } => {
                            end = Some(RunEnd::Finished { messages_sent })
                        }
                        AppOutput::RebootRequested => end = Some(RunEnd::Reboot),
                        AppOutput::Failed(e) => end = Some(RunEnd::Failed(e)),
                        _ => {}
                    }
                }
            }
        }
        if let Some(end) = end.take() {
            if connected {
                session.disconnect().await;
            }
            return end;
        }
        let deadline = app.next_deadline();
        let now = |c: &C| c.now_ms();
        match wake(session, control, deadline).await {
            Wake::Net(Incoming::Publish { topic, payload }) => queue.extend(app.handle(
                now(clock),
                Event::Publish {
                    topic: &topic,
                    payload: &payload,
                },
            )),
            Wake::Net(Incoming::Closed(e)) => {
                if connected {
                    connected = false;
                    app.link_failed(e);
                    let random = entropy.random_u32();
                    queue.extend(app.handle(now(clock), Event::Disconnected { random }));
                }
            }
            Wake::Net(Incoming::Deadline) => queue.extend(app.handle(now(clock), Event::Tick)),
            Wake::Cmd(Command::Send(m)) => queue.extend(app.send(now(clock), *m)),
            Wake::Cmd(Command::Status(s)) => app.set_status(s),
            Wake::Cmd(Command::Stop) => queue.extend(app.stop(now(clock))),
        }
    }
}

/// A session call failed: close it and tell the app.
async fn lost<M: MqttSession, E: Entropy, C: Clock>(
    app: &mut DeviceApp,
    session: &mut M,
    entropy: &mut E,
    clock: &C,
    error: LinkError,
    queue: &mut VecDeque<Action<AppOutput>>,
) {
    session.disconnect().await;
    app.link_failed(error);
    let random = entropy.random_u32();
    queue.extend(app.handle(clock.now_ms(), Event::Disconnected { random }));
}
