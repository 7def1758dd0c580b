//! Provision through DPS from a config image, send telemetry, print cloud-to-device messages
//! and answer direct methods: the Rust counterpart of Microsoft's C# symmetric-key device
//! sample, written against dpskit's sans-IO DPS and IoT Hub clients (the code the board runs)
//! and the PC's MQTT/TLS session, which trusts only the root CAs in the image.
//!
//! Against the local emulator (one shell each; the group key stays in the environment):
//!
//! ```text
//! export DPSKIT_GROUP_KEY=…            # the enrollment group's primary key
//! dpskit emulate --scope 0ne00000E01
//! dpskit config build -o dev-1.bin --id-scope 0ne00000E01 --registration-id dev-1 \
//!     --dps-host localhost --root-ca emulator
//! cargo run --example send_receive -- dev-1.bin --connect 127.0.0.1:8883 --messages 20
//! dpskit cloud send-c2d dev-1 "hello board"
//! dpskit cloud invoke dev-1 setInterval '{"secs":2}'
//! ```
//!
//! Against Azure: build the image with your real ID scope and the default roots, and leave
//! out `--connect` (the device then goes to `global.azure-devices-provisioning.net`).

use anyhow::{anyhow, bail, Context, Result};
use dpskit_core::dps::{Assignment, DpsClient, DpsConfig};
use dpskit_core::hub::{HubClient, HubConfig, HubOutput, Message};
use dpskit_core::mqtt::{Action, Event};
use dpskit_core::DeviceConfig;
use dpskit_device::driver::{Clock, Incoming, MqttSession};
use dpskit_factory::blob::nvs;
use dpskit_rehearsal::device::{tls, Endpoints, HostClock, HostConnector, HostSession};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

struct Options {
    image: PathBuf,
    /// `HOST:PORT` to connect to for both DPS and the hub (the emulator).
    connect: Option<String>,
    messages: u64,
    interval: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: send_receive IMAGE [--connect HOST:PORT] [--messages N] [--interval SECS]";
    let mut opts = Options {
        image: args.next().context(usage)?.into(),
        connect: None,
        messages: 10,
        interval: Duration::from_secs(5),
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag}: missing value; {usage}"))?;
        match flag.as_str() {
            "--connect" => opts.connect = Some(value),
            "--messages" => opts.messages = value.parse().context("--messages: a number")?,
            "--interval" => {
                opts.interval = Duration::from_secs(value.parse().context("--interval: seconds")?)
            }
            _ => bail!("{flag}: unknown; {usage}"),
        }
    }
    let summary = run(&opts, |line| println!("{line}")).await?;
    println!("{summary:?}");
    Ok(())
}

#[derive(Debug, Default)]
struct Summary {
    sent: u64,
    c2d: u64,
    methods: u64,
}

/// Reads the image, provisions, then runs the hub session until `messages` are sent.
async fn run(opts: &Options, mut say: impl FnMut(String)) -> Result<Summary> {
    let image = std::fs::read(&opts.image)
        .with_context(|| format!("cannot read {}", opts.image.display()))?;
    let cfg = nvs::decode_image(&image)?;
    // TLS trusts exactly the image's roots; the clock signs tokens and checks certificates.
    let clock = HostClock::default();
    let trust = tls::Trust::from_pem(&cfg.root_ca_pem)?;
    let endpoints = Endpoints {
        dps: opts.connect.clone(),
        hub: opts.connect.clone(),
        tls_server_name: None,
    };
    let tls_config = tls::client_config(&trust, Arc::new(clock))?;
    let connector = HostConnector::new(tls_config, endpoints, Duration::from_secs(10));
    let mut session = connector.session(&clock);

    say(format!(
        "registering {} with DPS {}",
        cfg.registration_id, cfg.dps_host
    ));
    let assignment = provision(&mut session, &clock, &cfg).await?;
    say(format!(
        "assigned to {} as {}",
        assignment.assigned_hub, assignment.device_id
    ));
    hub_session(&mut session, &clock, &cfg, &assignment, opts, &mut say).await
}

/// Carries out one connection action; the event it produced, or the machine's output.
async fn perform<O>(
    session: &mut HostSession<'_>,
    action: Action<O>,
) -> Result<Option<Event<'static>>, O> {
    let lost = Event::Disconnected { random: rand_u32() };
    Ok(match action {
        Action::Connect(p) | Action::Reconnect(p) => match session.connect(&p).await {
            Ok(ack) => Some(Event::ConnAck {
                return_code: ack.return_code,
                session_present: ack.session_present,
            }),
            Err(e) => {
                eprintln!("connection failed: {e}");
                Some(lost)
            }
        },
        Action::Subscribe { filter, qos } => match session.subscribe(&filter, qos).await {
            Ok(granted) => Some(Event::SubAck { granted }),
            Err(_) => Some(lost),
        },
        Action::Publish(p) => session.publish(&p).await.err().map(|_| lost),
        Action::Disconnect => {
            session.disconnect().await;
            None
        }
        Action::Output(o) => return Err(o),
    })
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// DPS: register, poll, and return the assignment (or DPS's error in plain words).
async fn provision(
    session: &mut HostSession<'_>,
    clock: &HostClock,
    cfg: &DeviceConfig,
) -> Result<Assignment> {
    let mut dps = DpsClient::new(DpsConfig::from_device_config(cfg)).map_err(|e| anyhow!("{e}"))?;
    let mut queue: VecDeque<_> = dps.handle(clock.now_ms(), Event::Start).into();
    loop {
        while let Some(action) = queue.pop_front() {
            match perform(session, action).await {
                Ok(Some(event)) => queue.extend(dps.handle(clock.now_ms(), event)),
                Ok(None) => {}
                Err(result) => return result.map_err(|e| anyhow!("{e}")),
            }
        }
        let event_actions = match session.next(dps.next_deadline()).await {
            Incoming::Publish { topic, payload } => dps.handle(
                clock.now_ms(),
                Event::Publish {
                    topic: &topic,
                    payload: &payload,
                },
            ),
            Incoming::Closed(_) => {
                dps.handle(clock.now_ms(), Event::Disconnected { random: rand_u32() })
            }
            Incoming::Deadline => dps.handle(clock.now_ms(), Event::Tick),
        };
        queue.extend(event_actions);
    }
}

/// IoT Hub: telemetry every interval, C2D printed, methods answered, until `messages` sent.
async fn hub_session(
    session: &mut HostSession<'_>,
    clock: &HostClock,
    cfg: &DeviceConfig,
    assignment: &Assignment,
    opts: &Options,
    say: &mut impl FnMut(String),
) -> Result<Summary> {
    let mut hub = HubClient::new(HubConfig::from_assignment(
        assignment,
        cfg.device_key.clone(),
    ))
    .map_err(|e| anyhow!("{e}"))?;
    let mut summary = Summary::default();
    let mut interval = opts.interval;
    let mut next_send: Option<u64> = None;
    let mut queue: VecDeque<_> = hub.handle(clock.now_ms(), Event::Start).into();
    loop {
        while let Some(action) = queue.pop_front() {
            let output = match perform(session, action).await {
                Ok(Some(event)) => {
                    queue.extend(hub.handle(clock.now_ms(), event));
                    continue;
                }
                Ok(None) => continue,
                Err(output) => output,
            };
            match output {
                HubOutput::Connected { .. } => {
                    say(format!("connected to {}", assignment.assigned_hub));
                    next_send.get_or_insert(clock.now_ms());
                }
                HubOutput::C2d(m) => {
                    summary.c2d += 1;
                    say(format!("C2D: {}", String::from_utf8_lossy(&m.body)));
                }
                HubOutput::MethodRequest { name, rid, payload } => {
                    summary.methods += 1;
                    let (status, body) = answer(&name, &payload, &mut interval);
                    say(format!("method {name}: {status} {body}"));
                    let response = hub
                        .method_response(&rid, status, body.as_bytes())
                        .map_err(|e| anyhow!("{e}"))?;
                    queue.push_back(Action::Publish(response));
                }
                HubOutput::Disconnected { reconnect_at_ms } => say(format!(
                    "hub connection lost; retrying in {} ms",
                    reconnect_at_ms.saturating_sub(clock.now_ms())
                )),
                HubOutput::ConnectRefused(e) => bail!("{e}"),
                _ => {}
            }
        }
        if summary.sent >= opts.messages {
            session.disconnect().await;
            return Ok(summary);
        }
        let deadline = [
            hub.next_deadline(),
            next_send.filter(|_| hub.is_connected()),
        ]
        .into_iter()
        .flatten()
        .min();
        let actions = match session.next(deadline).await {
            Incoming::Publish { topic, payload } => hub.handle(
                clock.now_ms(),
                Event::Publish {
                    topic: &topic,
                    payload: &payload,
                },
            ),
            Incoming::Closed(e) => {
                say(format!("connection closed: {e}"));
                hub.handle(clock.now_ms(), Event::Disconnected { random: rand_u32() })
            }
            Incoming::Deadline => {
                let now = clock.now_ms();
                let mut actions = hub.handle(now, Event::Tick);
                if hub.is_connected() && next_send.is_some_and(|at| now >= at) {
                    summary.sent += 1;
                    let body = format!(
                        "{{\"messageNumber\":{},\"temperature\":{:.1}}}",
                        summary.sent,
                        20.0 + summary.sent as f64 / 10.0
                    );
                    say(format!("sending {body}"));
                    let message = Message::json(body).with_property("temperatureAlert", "false");
                    actions.push(Action::Publish(
                        hub.telemetry(&message).map_err(|e| anyhow!("{e}"))?,
                    ));
                    next_send = Some(now + interval.as_millis() as u64);
                }
                actions
            }
        };
        queue.extend(actions);
    }
}

/// `setInterval {"secs":N}` changes the telemetry interval; anything else is echoed back.
fn answer(name: &str, payload: &[u8], interval: &mut Duration) -> (u16, String) {
    let value: serde_json::Value =
        serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
    match name {
        "setInterval" => match value["secs"].as_u64().filter(|s| (1..=3600).contains(s)) {
            Some(secs) => {
                *interval = Duration::from_secs(secs);
                (200, format!("{{\"interval\":{secs}}}"))
            }
            None => (
                400,
                "{\"error\":\"give {\\\"secs\\\": 1..3600}\"}".to_string(),
            ),
        },
        _ => (
            200,
            serde_json::json!({ "method": name, "received": value }).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    //! Runs the example against the in-process emulator (built and run by `cargo test`).
    use super::*;
    use dpskit_core::{GroupKey, IdScope, RegistrationId};
    use dpskit_factory::blob::roots::{self, RootSource};
    use dpskit_rehearsal::emulator::{Emulator, EmulatorConfig, Group};

    const GROUP_KEY: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn provisions_sends_receives_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let group = GroupKey::parse(GROUP_KEY, "g").unwrap();
        let mut c = EmulatorConfig::new(
            dir.path().join("emu"),
            vec![Group::new("0ne00000E01", group.clone())],
        );
        c.bind = "127.0.0.1:0".parse().unwrap();
        c.echo_telemetry = false;
        c.human_log = false;
        c.dps.retry_after_secs = 0;
        let emu = Emulator::start(c).await.unwrap();
        let cfg = DeviceConfig {
            id_scope: IdScope::parse("0ne00000E01").unwrap().0,
            registration_id: RegistrationId::parse("example-dev", false).unwrap(),
            device_key: group.derive("example-dev"),
            root_ca_pem: roots::assemble(
                &[RootSource::File(emu.ca_pem_path().into())],
                time::OffsetDateTime::now_utc(),
            )
            .unwrap()
            .pem,
            dps_host: "localhost".into(),
            wifi_ssid: None,
            wifi_password: None,
            ntp_server: None,
            token_ttl_secs: None,
        };
        let image = dir.path().join("dev.bin");
        std::fs::write(&image, nvs::build_image(&cfg, nvs::DEFAULT_SIZE).unwrap()).unwrap();
        let opts = Options {
            image,
            connect: Some(emu.addr().to_string()),
            messages: 5,
            interval: Duration::from_secs(1),
        };

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let device = tokio::spawn(async move { run(&opts, move |l| drop(tx.send(l))).await });
        // The first message goes out once the subscriptions are acknowledged.
        while let Some(line) = rx.recv().await {
            if line.starts_with("sending") {
                break;
            }
        }
        let admin = emu.admin();
        let answer = tokio::task::spawn_blocking(move || {
            admin.send_c2d("example-dev", "hello", &[]).unwrap();
            admin
                .invoke(
                    "example-dev",
                    "setInterval",
                    serde_json::json!({"secs": 1}),
                    Some(Duration::from_secs(10)),
                )
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(
            (answer.status, answer.payload.clone()),
            (200, serde_json::json!({"interval": 1}))
        );
        let summary = device.await.unwrap().unwrap();
        assert_eq!((summary.sent, summary.c2d, summary.methods), (5, 1, 1));
        assert_eq!(emu.stats().telemetry, 5);
        emu.shutdown().await;
    }
}
