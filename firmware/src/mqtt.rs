//! The driver loop: runs any [`Machine`] (DPS client, hub client, device app) over MQTT 3.1.1
//! (mqttrust) on TLS 1.2, turning what happens on the wire into `Event`s and carrying out the
//! `Action`s that come back, in order.
//!
//! One mqttrust stack per connection: its CONNECT credentials are borrowed for the stack's
//! life, and a new SAS token means a new connection anyway. Its own reconnect loop is cut off
//! (no retries, one-shot connector) so reconnects, backoff and renewal stay the machine's.

use crate::clock::now_ms;
use crate::tls::{Tcp, TlsConnector};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::ffi::CString;
use alloc::format;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::task::Poll;
use dpskit_core::mqtt::connack_text;
use dpskit_core::{Action, ConnectParams, Event, QoS as CoreQoS};
use dpskit_device::{LinkError, LinkErrorKind};
use dpskit_firmware_glue::machine::Machine;
use embassy_futures::select::{select, select3, Either, Either3};
use embassy_net::dns::DnsSocket;
use embassy_net::Stack;
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_time::{Duration, Timer};
use futures_util::StreamExt;
use mbedtls_rs::{Certificate, TlsReference};
use mqttrust::transport::embedded_nal::NalTransport;
use mqttrust::{
    Config, DomainBroker, Publish, QoS, State, Subscribe, SubscribeTopic, Subscription,
};

/// Largest outgoing packet (telemetry, reported properties, DPS register body).
const TX_BUF: usize = 4096;
/// Largest incoming publish buffered (twin documents, C2D); bigger ones are dropped by mqttrust.
const RX_BUF: usize = 8192;
type MqttState = State<NoopRawMutex, TX_BUF, RX_BUF>;

/// What the platform does with the machine's outputs.
pub trait Host<M: Machine> {
    fn output(&mut self, machine: &mut M, output: M::Output);
    /// Called before every `Tick` (refresh the numbers the app reports).
    fn before_tick(&mut self, machine: &mut M);
    /// Any random `u32` (jitters the machines' backoff).
    fn random(&mut self) -> u32;
    /// Why the connection is about to be reported `Disconnected` (the device app keeps it to
    /// explain failures and to stop on final ones).
    fn link_failed(&mut self, machine: &mut M, error: LinkError);
}

/// Everything a connection needs from the platform.
pub struct Net<'a> {
    pub stack: Stack<'static>,
    pub tcp: &'a Tcp,
    pub tls: TlsReference<'a>,
    pub roots: &'a Certificate<'static>,
}

type Queue<O> = VecDeque<Action<O>>;

/// How a connection ended, as far as the machine is concerned.
enum End<O> {
    /// The link dropped or never came up: report `Disconnected`.
    Lost(LinkError),
    /// The machine asked for `Disconnect`; these actions follow.
    Closed(Queue<O>),
    /// The machine asked for another connection (`Connect` / `Reconnect`); these follow.
    Switch(ConnectParams, Queue<O>),
}

/// Runs `machine` forever.
pub async fn run<M: Machine, H: Host<M>>(net: &Net<'_>, machine: &mut M, host: &mut H) -> ! {
    let mut queue: Queue<M::Output> = machine.handle(now_ms(), Event::Start).into();
    loop {
        match queue.pop_front() {
            Some(Action::Connect(params) | Action::Reconnect(params)) => {
                let mut next = Some(params);
                // Actions queued behind a Connect are for the new connection.
                let mut carried = core::mem::take(&mut queue);
                while let Some(params) = next.take() {
                    let after = core::mem::take(&mut carried);
                    match connection(net, machine, host, &params, after).await {
                        End::Lost(why) => {
                            log::warn!("MQTT: {why}");
                            host.link_failed(machine, why);
                            let random = host.random();
                            queue = machine
                                .handle(now_ms(), Event::Disconnected { random })
                                .into();
                        }
                        End::Closed(rest) => queue = rest,
                        End::Switch(p, rest) => {
                            carried = rest;
                            next = Some(p);
                        }
                    }
                }
            }
            Some(Action::Output(o)) => host.output(machine, o),
            Some(Action::Disconnect) => {}
            Some(Action::Subscribe { filter, .. }) => {
                log::warn!("driver: SUBSCRIBE {filter} without a connection; dropped")
            }
            Some(Action::Publish(p)) => {
                log::warn!("driver: PUBLISH {} without a connection; dropped", p.topic)
            }
            None => {
                wait_until(machine.next_deadline()).await;
                host.before_tick(machine);
                queue = machine.handle(now_ms(), Event::Tick).into();
            }
        }
    }
}

/// Sleeps until `deadline` (Unix ms); with none, a minute (the app may want a tick anyway).
async fn wait_until(deadline: Option<u64>) {
    let now = now_ms();
    let ms = deadline.map_or(60_000, |d| d.saturating_sub(now));
    Timer::after(Duration::from_millis(ms)).await;
}

fn to_qos(q: CoreQoS) -> QoS {
    match q {
        CoreQoS::AtMostOnce => QoS::AtMostOnce,
        CoreQoS::AtLeastOnce => QoS::AtLeastOnce,
    }
}

/// One MQTT connection, from TLS handshake to close.
async fn connection<M: Machine, H: Host<M>>(
    net: &Net<'_>,
    machine: &mut M,
    host: &mut H,
    p: &ConnectParams,
    after: Queue<M::Output>,
) -> End<M::Output> {
    log::info!(
        "MQTT: connecting to {}:{} as {}",
        p.host,
        p.port,
        p.client_id
    );
    let setup = |what: &str| {
        End::Lost(LinkError::new(
            LinkErrorKind::Unreachable,
            format!("{}: {what}", p.host),
        ))
    };
    let Ok(server_name) = CString::new(p.host.as_str()) else {
        return setup("the host name contains a NUL");
    };
    let Ok(client_id) = heapless::String::try_from(p.client_id.as_str()) else {
        return setup("the client ID is longer than 128 bytes");
    };
    let connector = TlsConnector::new(net.tcp, net.tls, net.roots, &server_name);
    let dns = DnsSocket::new(net.stack);
    let Ok(broker) = DomainBroker::<_, 253>::new_with_port(&p.host, p.port, &dns) else {
        return setup("the host name is longer than 253 bytes");
    };
    let config = Config::builder()
        .client_id(client_id)
        .keepalive_interval(embassy_time::Duration::from_secs(p.keep_alive_secs.into()))
        .connect_timeout(embassy_time::Duration::from_secs(30))
        // No retries inside mqttrust: the machine owns backoff.
        .backoff_algo(|_| None)
        .username(p.username.as_str())
        .password(p.password.as_bytes())
        .build();
    // On the heap (PSRAM on the S3): 12 KB of buffers.
    let mut state: Box<MqttState> = Box::new(MqttState::new());
    let (mut stack, client) = mqttrust::new(&mut state, config);
    let mut transport = NalTransport::new(&connector, broker);

    let outcome = {
        let running = stack.run(&mut transport);
        let session = session(&client, machine, host, after);
        select(running, session).await
    };
    match outcome {
        Either::Second(end) => {
            if !matches!(end, End::Lost(_)) {
                // Close politely (MQTT DISCONNECT) when the link is still there.
                if transport_connected(&transport) {
                    let _ = embassy_time::with_timeout(
                        Duration::from_secs(5),
                        stack.disconnect(&mut transport),
                    )
                    .await;
                }
            }
            end
        }
        Either::First(()) => {
            // The stack gave up: DNS/TCP/TLS failed, the CONNACK refused or never came, or
            // the link dropped.
            let connack = connector.connack.borrow().connack();
            let failure = connector.failure.borrow_mut().take();
            let why = match (failure, connack) {
                (Some(e), _) => e,
                (None, Some(c)) if c.return_code == 0 => LinkError::new(
                    LinkErrorKind::Closed,
                    format!("the connection to {} closed", p.host),
                ),
                (None, Some(c)) => LinkError::new(
                    LinkErrorKind::Closed,
                    format!(
                        "{} refused the connection: {} (CONNACK {})",
                        p.host,
                        connack_text(c.return_code),
                        c.return_code
                    ),
                ),
                (None, None) if !connector.was_used() => LinkError::new(
                    LinkErrorKind::Unreachable,
                    format!("cannot resolve {} (DNS)", p.host),
                ),
                (None, None) => LinkError::new(
                    LinkErrorKind::Timeout,
                    format!("{} sent no CONNACK within 30 s", p.host),
                ),
            };
            match connack {
                Some(c) if c.return_code != 0 => {
                    log::warn!("MQTT: {why}");
                    let actions: Queue<M::Output> = machine
                        .handle(
                            now_ms(),
                            Event::ConnAck {
                                return_code: c.return_code,
                                session_present: c.session_present,
                            },
                        )
                        .into();
                    // The machine may move on at once (another Connect, a Disconnect): then the
                    // refused connection is not reported as lost.
                    if actions.iter().any(|a| {
                        matches!(
                            a,
                            Action::Connect(_) | Action::Reconnect(_) | Action::Disconnect
                        )
                    }) {
                        return End::Closed(actions);
                    }
                    for a in actions {
                        if let Action::Output(o) = a {
                            host.output(machine, o);
                        }
                    }
                    End::Lost(why)
                }
                _ => End::Lost(why),
            }
        }
    }
}

fn transport_connected<T: mqttrust::transport::Transport>(t: &T) -> bool {
    t.is_connected()
}

/// The part of a connection after the TCP/TLS/MQTT handshake.
async fn session<'a, 'b, M: Machine, H: Host<M>>(
    client: &'b mqttrust::MqttClient<'a, NoopRawMutex>,
    machine: &mut M,
    host: &mut H,
    after: Queue<M::Output>,
) -> End<M::Output> {
    client.wait_connected().await;
    // Every connection is a fresh mqttrust stack, which always sends CleanSession = 1, so
    // the broker cannot have a session for it.
    let mut queue: Queue<M::Output> = machine
        .handle(
            now_ms(),
            Event::ConnAck {
                return_code: 0,
                session_present: false,
            },
        )
        .into();
    queue.extend(after);
    let mut subs: Vec<Subscription<'a, 'b, NoopRawMutex, 1>> = Vec::new();
    loop {
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Subscribe { filter, qos } => {
                    let topics = [SubscribeTopic::builder()
                        .topic_path(filter.as_str())
                        .maximum_qos(to_qos(qos))
                        .build()];
                    let granted = match client
                        .subscribe::<1>(Subscribe::builder().topics(&topics).build())
                        .await
                    {
                        Ok(s) => {
                            subs.push(s);
                            true
                        }
                        Err(mqttrust::Error::BadTopicFilter) => false,
                        Err(e) => {
                            return End::Lost(LinkError::new(
                                LinkErrorKind::Closed,
                                format!("SUBSCRIBE {filter} failed ({e:?})"),
                            ));
                        }
                    };
                    queue.extend(machine.handle(now_ms(), Event::SubAck { granted }));
                }
                Action::Publish(p) => {
                    let publish = Publish::builder()
                        .topic_name(p.topic.as_str())
                        .payload(p.payload.as_slice())
                        .qos(to_qos(p.qos))
                        .build();
                    if let Err(e) = client.publish(publish).await {
                        return End::Lost(LinkError::new(
                            LinkErrorKind::Closed,
                            format!("PUBLISH {} got no PUBACK ({e:?})", p.topic),
                        ));
                    }
                }
                Action::Disconnect => return End::Closed(queue),
                Action::Connect(p) | Action::Reconnect(p) => return End::Switch(p, queue),
                Action::Output(o) => host.output(machine, o),
            }
        }
        let deadline = machine.next_deadline();
        let incoming = poll_fn(|cx| {
            for s in subs.iter_mut() {
                if let Poll::Ready(m) = s.poll_next_unpin(cx) {
                    return Poll::Ready(m);
                }
            }
            Poll::Pending
        });
        match select3(
            incoming,
            wait_until(deadline),
            client.wait_connection_change(),
        )
        .await
        {
            Either3::First(Some(message)) => {
                let event = Event::Publish {
                    topic: message.topic_name(),
                    payload: message.payload(),
                };
                queue.extend(machine.handle(now_ms(), event));
            }
            // A subscription ended: the broker dropped the session.
            Either3::First(None) => {
                return End::Lost(LinkError::new(
                    LinkErrorKind::Closed,
                    "the broker dropped the MQTT session",
                ))
            }
            Either3::Second(()) => {
                host.before_tick(machine);
                queue.extend(machine.handle(now_ms(), Event::Tick));
            }
            Either3::Third(connected) => {
                if !connected {
                    return End::Lost(LinkError::new(
                        LinkErrorKind::Closed,
                        "the connection closed (no PINGRESP, or the server hung up)",
                    ));
                }
            }
        }
    }
}
