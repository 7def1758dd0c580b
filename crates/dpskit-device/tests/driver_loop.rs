//! The generic driver loop (`driver::run`) over a scripted session with virtual time: the
//! paths the loop itself decides (a refused CONNACK it must report as `Disconnected`, a store
//! write, actions dropped for a lost connection, commands). The PC's real session runs the same
//! loop against the emulator in the root crate's `device_e2e` tests.

use dpskit_core::config::DEFAULT_DPS_HOST;
use dpskit_core::mqtt::{ConnectParams, Publish, QoS, Username};
use dpskit_core::topic::{DeviceTopic, ServiceTopic};
use dpskit_core::{DeviceConfig, DeviceKey, IdScope, RegistrationId};
use dpskit_device::driver::{
    self, Clock, Command, ConnAck, Control, Entropy, Incoming, MqttSession, Platform, RunEnd,
    Storage,
};
use dpskit_device::{
    AppOutput, AppSettings, DeviceApp, LinkError, LinkErrorKind, StoredAssignment,
};
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

const ID: &str = "loop-dev-1";
const T0: u64 = 1_750_000_000_000;

/// Polls to completion; every future here is ready at once or never (no commands).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("the loop did not finish");
}

struct VirtualClock(Cell<u64>);

impl Clock for VirtualClock {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
}

struct Zero;

impl Entropy for Zero {
    fn random_u32(&mut self) -> u32 {
        0
    }
}

#[derive(Default)]
struct Memory(Option<StoredAssignment>, u32);

impl Storage for Memory {
    fn load(&mut self) -> Option<StoredAssignment> {
        self.0.clone()
    }

    fn save(&mut self, a: &StoredAssignment) -> Result<(), String> {
        self.1 += 1;
        self.0 = Some(a.clone());
        Ok(())
    }
}

/// DPS and a hub in a few lines: scripted CONNACK codes and connect failures, answers to the
/// register and twin requests; deadlines jump the virtual clock.
struct Scripted<'a> {
    clock: &'a VirtualClock,
    /// Per connect: `Ok(code)` or a link failure.
    connects: VecDeque<Result<u8, LinkError>>,
    inbox: VecDeque<(String, Vec<u8>)>,
    connected: bool,
    log: Vec<String>,
    /// Fail the n-th publish (1-based) with a closed connection.
    fail_publish: Option<usize>,
    publishes: usize,
}

impl MqttSession for Scripted<'_> {
    async fn connect(&mut self, p: &ConnectParams) -> Result<ConnAck, LinkError> {
        let service = match Username::parse(&p.username) {
            Some(Username::Dps { .. }) => "dps",
            _ => "hub",
        };
        let r = self.connects.pop_front().unwrap_or(Ok(0));
        self.log.push(format!("connect {service} → {r:?}"));
        let code = r?;
        self.connected = code == 0;
        Ok(ConnAck {
            return_code: code,
            session_present: false,
        })
    }

    async fn subscribe(&mut self, _: &str, _: QoS) -> Result<bool, LinkError> {
        assert!(self.connected, "subscribe while closed");
        Ok(true)
    }

    async fn publish(&mut self, p: &Publish) -> Result<(), LinkError> {
        assert!(self.connected, "publish while closed: {}", p.topic);
        self.publishes += 1;
        if self.fail_publish == Some(self.publishes) {
            self.connected = false;
            self.log.push(format!("publish {} failed", self.publishes));
            return Err(LinkError::new(LinkErrorKind::Closed, "reset by peer"));
        }
        let reply = match DeviceTopic::parse(&p.topic).unwrap() {
            DeviceTopic::DpsRegister { rid } => Some((
                ServiceTopic::DpsResponse {
                    status: 200,
                    rid,
                    retry_after: None,
                },
                format!(
                    r#"{{"operationId":"op","status":"assigned","registrationState":{{"assignedHub":"hub.local","deviceId":"{ID}","status":"assigned"}}}}"#
                ),
            )),
            DeviceTopic::TwinGet { rid } => Some((
                ServiceTopic::TwinResponse {
                    status: 200,
                    rid,
                    version: None,
                },
                r#"{"desired":{"$version":1},"reported":{"$version":1}}"#.to_string(),
            )),
            DeviceTopic::Telemetry { .. } => {
                self.log
                    .push(format!("telemetry {}", String::from_utf8_lossy(&p.payload)));
                None
            }
            _ => None,
        };
        if let Some((t, body)) = reply {
            self.inbox.push_back((t.to_topic(), body.into_bytes()));
        }
        Ok(())
    }

    async fn disconnect(&mut self) {
        if self.connected {
            self.log.push("disconnect".into());
        }
        self.connected = false;
    }

    async fn next(&mut self, deadline_ms: Option<u64>) -> Incoming {
        if let Some((topic, payload)) = self.inbox.pop_front() {
            return Incoming::Publish { topic, payload };
        }
        let d = deadline_ms.expect("the loop waits with nothing scheduled and nothing coming");
        self.clock.0.set(self.clock.0.get().max(d));
        Incoming::Deadline
    }
}

/// One command, then none.
struct Once(Option<Command>);

impl Control for Once {
    async fn next_command(&mut self) -> Command {
        match self.0.take() {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }
}

fn config() -> DeviceConfig {
    DeviceConfig {
        id_scope: IdScope::parse("0ne00000000").unwrap().0,
        registration_id: RegistrationId::parse(ID, false).unwrap(),
        device_key: DeviceKey::from_bytes([9; 32]),
        root_ca_pem: String::new(),
        dps_host: DEFAULT_DPS_HOST.into(),
        wifi_ssid: None,
        wifi_password: None,
        ntp_server: None,
        token_ttl_secs: None,
    }
}

fn session(clock: &VirtualClock, connects: Vec<Result<u8, LinkError>>) -> Scripted<'_> {
    Scripted {
        clock,
        connects: connects.into(),
        inbox: VecDeque::new(),
        connected: false,
        log: Vec::new(),
        fail_publish: None,
        publishes: 0,
    }
}

#[test]
fn refused_and_failed_connects_are_retried_then_registers_stores_and_finishes() {
    let clock = VirtualClock(Cell::new(T0));
    let unreachable = LinkError::new(LinkErrorKind::Unreachable, "connection refused");
    // DPS: CONNACK 3 (server unavailable), then unreachable, then accepted; hub: CONNACK 3, ok.
    let mut s = session(&clock, vec![Ok(3), Err(unreachable), Ok(0), Ok(3), Ok(0)]);
    let mut settings = AppSettings::new("t");
    settings.max_messages = Some(2);
    settings.telemetry_interval_ms = 5_000;
    let mut app = DeviceApp::new(config(), settings, None).unwrap();
    let mut store = Memory::default();
    let mut outputs = Vec::new();
    let platform = Platform {
        clock: &clock,
        entropy: &mut Zero,
        storage: &mut store,
    };
    let end = block_on(driver::run(
        &mut app,
        &mut s,
        &mut driver::NoCommands,
        platform,
        |o| outputs.push(o.clone()),
    ));
    assert_eq!(end, RunEnd::Finished { messages_sent: 2 });
    assert_eq!(
        s.log,
        [
            "connect dps → Ok(3)",
            "connect dps → Err(LinkError { kind: Unreachable, detail: \"connection refused\" })",
            "connect dps → Ok(0)",
            "disconnect",
            "connect hub → Ok(3)",
            "connect hub → Ok(0)",
            "telemetry {\"seq\":1,\"uptimeSecs\":3}",
            "telemetry {\"seq\":2,\"uptimeSecs\":8}",
            "disconnect",
        ]
    );
    assert_eq!(store.1, 1);
    assert_eq!(store.0.unwrap().assigned_hub, "hub.local");
    assert!(outputs
        .iter()
        .any(|o| matches!(o, AppOutput::HubRefused { .. })));
    // Backoff: DPS retried after 1 s and 2 s (random 0), the hub after 0.5 s.
    assert_eq!(clock.now_ms(), T0 + 1_000 + 2_000 + 500 + 5_000);
}

#[test]
fn a_lost_connection_drops_the_rest_and_reconnects_and_stop_is_clean() {
    let clock = VirtualClock(Cell::new(T0));
    let stored = StoredAssignment {
        version: 1,
        id_scope: "0ne00000000".into(),
        registration_id: ID.into(),
        dps_host: DEFAULT_DPS_HOST.into(),
        assigned_hub: "hub.local".into(),
        device_id: ID.into(),
    };
    let mut s = session(&clock, vec![]);
    // The twin GET (publish 1) fails: the reported patch and telemetry #1 queued behind it are
    // not sent on the dead connection; the hub reconnects after backoff, telemetry #1 (never
    // acknowledged) goes out again first, and #2 follows on schedule.
    s.fail_publish = Some(1);
    let mut settings = AppSettings::new("t");
    settings.max_messages = Some(2);
    settings.telemetry_interval_ms = 5_000;
    let mut app = DeviceApp::new(config(), settings, Some(stored)).unwrap();
    let platform = Platform {
        clock: &clock,
        entropy: &mut Zero,
        storage: &mut Memory::default(),
    };
    let mut warnings = Vec::new();
    let end = block_on(driver::run(
        &mut app,
        &mut s,
        &mut driver::NoCommands,
        platform,
        |o| {
            if let AppOutput::Warning(w) = o {
                warnings.push(w.clone());
            }
        },
    ));
    assert_eq!(end, RunEnd::Finished { messages_sent: 2 });
    assert_eq!(
        s.log,
        [
            "connect hub → Ok(0)",
            "publish 1 failed",
            "connect hub → Ok(0)",
            "telemetry {\"seq\":1,\"uptimeSecs\":0}",
            "telemetry {\"seq\":2,\"uptimeSecs\":5}",
            "disconnect",
        ]
    );
    assert_eq!(
        warnings,
        [
            "1 telemetry message(s) not acknowledged before the connection dropped; sending them again after reconnecting",
            // The hub client fails the twin requests that were waiting; both are made again
            // after the reconnect (twin GET on connect, reported properties on connect).
            "twin request 1 failed: the connection to IoT Hub closed before the answer arrived; send the request again",
            "twin request 2 failed: the connection to IoT Hub closed before the answer arrived; send the request again",
        ]
    );
    assert_eq!(clock.now_ms(), T0 + 5_000);

    // A Stop command: disconnect and finish.
    let clock = VirtualClock(Cell::new(T0));
    let mut s = session(&clock, vec![]);
    let mut app = DeviceApp::new(config(), AppSettings::new("t"), None).unwrap();
    let platform = Platform {
        clock: &clock,
        entropy: &mut Zero,
        storage: &mut Memory::default(),
    };
    let end = block_on(driver::run(
        &mut app,
        &mut s,
        &mut Once(Some(Command::Stop)),
        platform,
        |_| {},
    ));
    assert_eq!(end, RunEnd::Finished { messages_sent: 0 });
}
