//! The virtual device against the in-process emulator, over real TLS and MQTT on loopback:
//! the success path (register, telemetry delivered, C2D, method round trip, twin reported and
//! desired, reboot from the stored assignment) and each failure with its message.

use dpskit_core::{DeviceConfig, DeviceKey, GroupKey, IdScope, RegistrationId};
use dpskit_device::{AppOutput, StoredAssignment};
use dpskit_factory::blob::nvs::{self, DEFAULT_SIZE};
use dpskit_factory::blob::roots::{self, RootSource};
use dpskit_rehearsal::device::{
    DeviceOptions, Endpoints, RunningDevice, StateStore, VirtualDevice,
};
use dpskit_rehearsal::emulator::{AdminClient, Emulator, EmulatorConfig, EmulatorHandle, Group};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Microsoft's documented group key (reference §1, V1); test-only.
const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const SCOPE: &str = "0ne00000D01";
/// A 32-byte group key: the only kind that fits where a device key goes, so the one people
/// can flash by mistake without the image builder noticing the length.
const SHORT_GROUP_KEY: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";
const SHORT_SCOPE: &str = "0ne00000D02";
const WAIT: Duration = Duration::from_secs(15);

fn group_key() -> GroupKey {
    GroupKey::parse(GROUP_KEY, "group key").unwrap()
}

struct Emu {
    handle: EmulatorHandle,
    _dir: tempfile::TempDir,
    ca_pem: String,
    events: Arc<Mutex<Vec<String>>>,
}

impl Emu {
    async fn start(tweak: impl FnOnce(&mut EmulatorConfig)) -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let short = Group::new(SHORT_SCOPE, GroupKey::parse(SHORT_GROUP_KEY, "g").unwrap());
        let mut c = EmulatorConfig::new(dir.path(), vec![Group::new(SCOPE, group_key()), short]);
        c.bind = "127.0.0.1:0".parse().unwrap();
        c.echo_telemetry = false;
        c.human_log = std::env::var_os("DPSKIT_TEST_LOG").is_some();
        c.dps.retry_after_secs = 0;
        tweak(&mut c);
        let handle = Emulator::start(c).await.unwrap();
        let ca = RootSource::File(handle.ca_pem_path().to_path_buf());
        let ca_pem = roots::assemble(&[ca], time::OffsetDateTime::now_utc())
            .unwrap()
            .pem;
        // Follow every event (a thread; it ends when the emulator shuts down).
        let events = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (admin, sink) = (handle.admin(), events.clone());
        std::thread::spawn(move || {
            let _ = admin.follow(
                true,
                || ready_tx.send(()).unwrap(),
                |l| {
                    sink.lock().unwrap().push(l.to_string());
                    true
                },
            );
        });
        ready_rx.recv_timeout(WAIT).expect("event stream");
        Emu {
            handle,
            _dir: dir,
            ca_pem,
            events,
        }
    }

    fn addr(&self) -> String {
        self.handle.addr().to_string()
    }

    /// The image a board for `id` would get: derived key, the emulator's CA, DPS host localhost.
    fn image(&self, id: &str) -> Vec<u8> {
        nvs::build_image(&self.config(id), DEFAULT_SIZE).unwrap()
    }

    fn config(&self, id: &str) -> DeviceConfig {
        DeviceConfig {
            id_scope: IdScope::parse(SCOPE).unwrap().0,
            registration_id: RegistrationId::parse(id, false).unwrap(),
            device_key: group_key().derive(id),
            root_ca_pem: self.ca_pem.clone(),
            dps_host: "localhost".into(),
            wifi_ssid: None,
            wifi_password: None,
            ntp_server: None,
            token_ttl_secs: None,
        }
    }

    /// Options aimed at this emulator (both services on its one port), quick timings.
    fn options(&self, image: &[u8]) -> DeviceOptions {
        let mut o = DeviceOptions::from_image(image).unwrap();
        o.endpoints = Endpoints {
            dps: Some(self.addr()),
            hub: Some(self.addr()),
            tls_server_name: None,
        };
        o.timeout = Duration::from_secs(5);
        o.settings.telemetry_interval_ms = 1_000;
        o.settings.hub_backoff_initial_ms = 200;
        o.settings.dps_max_retries = 2;
        o
    }

    async fn admin<T: Send + 'static>(
        &self,
        f: impl FnOnce(AdminClient) -> T + Send + 'static,
    ) -> T {
        let a = self.handle.admin();
        tokio::task::spawn_blocking(move || f(a)).await.unwrap()
    }

    /// Waits for an emulator event line containing every needle.
    async fn event(&self, needles: &[&str]) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return serde_json::from_str(l).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no event with {needles:?}; seen:\n{}",
                self.events.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.handle.shutdown().await;
    }
}

/// Runs a device to its end (it must stop by itself) and returns the failure text.
async fn failure_of(opts: DeviceOptions) -> String {
    let report = tokio::time::timeout(
        WAIT,
        VirtualDevice::run(opts, dpskit_device::driver::NoCommands, |_| {}),
    )
    .await
    .expect("the device ends by itself")
    .unwrap();
    let e = report.failure.expect("the run failed").to_string();
    eprintln!("device failed as expected: {e}");
    e
}

async fn expect(dev: &mut RunningDevice, what: impl Fn(&AppOutput) -> bool) -> AppOutput {
    dev.wait_for(WAIT, |o| what(o).then(|| o.clone()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_sends_receives_answers_reports_and_reboots_from_the_stored_assignment() {
    let emu = Emu::start(|_| {}).await;
    let id = "vdev-happy-1";
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("vdev.assignment.json");
    let mut opts = emu.options(&emu.image(id));
    opts.state = StateStore::File(state.clone());
    let mut dev = VirtualDevice::spawn(opts);

    // DPS → stored → hub → twin reported (firmware version, uptime) → telemetry.
    expect(&mut dev, |o| matches!(o, AppOutput::Provisioned { hub, device_id, .. } if hub == "localhost" && device_id == id)).await;
    expect(&mut dev, |o| matches!(o, AppOutput::HubConnected { .. })).await;
    let stored = StoredAssignment::from_bytes(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        (stored.assigned_hub.as_str(), stored.device_id.as_str()),
        ("localhost", id)
    );
    expect(&mut dev, |o| {
        matches!(o, AppOutput::ReportedAck { version: Some(_) })
    })
    .await;
    let twin = emu
        .admin({
            let id = id.to_string();
            move |a| a.twin(&id, None).unwrap()
        })
        .await;
    let reported = &twin["properties"]["reported"];
    assert!(
        reported["firmwareVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("dpskit-virtual/")),
        "{twin}"
    );
    assert!(reported["uptimeSecs"].is_u64(), "{twin}");

    // Telemetry reached the hub, as the service sees it.
    expect(&mut dev, |o| {
        matches!(o, AppOutput::TelemetrySent { seq: Some(2), .. })
    })
    .await;
    let e = emu
        .event(&[
            "\"kind\":\"telemetry\"",
            &format!("\"messageId\":\"{id}-2\""),
        ])
        .await;
    assert_eq!(e["contentType"], "application/json");

    // C2D with a property.
    emu.admin({
        let id = id.to_string();
        move |a| {
            a.send_c2d(&id, "open valve 3", &[("prio".into(), Some("high".into()))])
                .unwrap()
        }
    })
    .await;
    let c2d = expect(&mut dev, |o| matches!(o, AppOutput::C2d(_))).await;
    let AppOutput::C2d(m) = c2d else {
        unreachable!()
    };
    assert_eq!(m.body, b"open valve 3");
    assert_eq!(m.properties.value("prio"), Some("high"));

    // Direct method round trip: echo returns the payload.
    let outcome = emu
        .admin({
            let id = id.to_string();
            move |a| {
                a.invoke(
                    &id,
                    "echo",
                    json!({"ping": 7}),
                    Some(Duration::from_secs(10)),
                )
                .unwrap()
            }
        })
        .await;
    assert_eq!(
        (outcome.status, &outcome.payload),
        (200, &json!({"ping": 7})),
        "{outcome:?}"
    );

    // Desired property: the interval changes and is reported back.
    emu.admin({
        let id = id.to_string();
        move |a| a.twin(&id, Some(json!({"telemetryInterval": 2}))).unwrap()
    })
    .await;
    expect(&mut dev, |o| {
        matches!(o, AppOutput::TelemetryIntervalChanged { secs: 2 })
    })
    .await;
    expect(
        &mut dev,
        |o| matches!(o, AppOutput::ReportedSent { patch } if patch["telemetryInterval"] == 2),
    )
    .await;

    // Reboot: answered first, then the app restarts from the stored assignment (no DPS).
    let outcome = emu
        .admin({
            let id = id.to_string();
            move |a| {
                a.invoke(&id, "reboot", Value::Null, Some(Duration::from_secs(10)))
                    .unwrap()
            }
        })
        .await;
    assert_eq!(outcome.status, 200, "{outcome:?}");
    expect(&mut dev, |o| matches!(o, AppOutput::RebootRequested)).await;
    expect(&mut dev, |o| {
        matches!(o, AppOutput::UsingStoredAssignment { .. })
    })
    .await;
    expect(&mut dev, |o| matches!(o, AppOutput::HubConnected { .. })).await;
    // The twin survives the reboot, so the new app starts with the 2 s interval.
    expect(&mut dev, |o| {
        matches!(o, AppOutput::TelemetryIntervalChanged { secs: 2 })
    })
    .await;

    let report = dev.shutdown().await.unwrap();
    assert_eq!(report.failure, None);
    assert_eq!(
        (
            report.registrations,
            report.stored_assignment_used,
            report.reboots
        ),
        (1, 1, 1)
    );
    assert!(
        report.messages_sent >= 2 && report.c2d_received == 1 && report.methods_answered == 2,
        "{report:?}"
    );
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_limit_and_stale_stored_assignment_reregisters() {
    let emu = Emu::start(|_| {}).await;
    let id = "vdev-stale-1";
    let mut opts = emu.options(&emu.image(id));
    // An assignment from an emulator that no longer knows the device: the hub refuses it
    // (CONNACK 5) and the device registers again.
    opts.state = StateStore::Memory(Some(StoredAssignment {
        version: 1,
        id_scope: SCOPE.into(),
        registration_id: id.into(),
        dps_host: "localhost".into(),
        assigned_hub: "localhost".into(),
        device_id: id.into(),
    }));
    opts.settings.max_messages = Some(2);
    let mut seen = Vec::new();
    let report = tokio::time::timeout(
        WAIT,
        VirtualDevice::run(opts, dpskit_device::driver::NoCommands, |o| {
            seen.push(o.clone())
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.failure, None, "{seen:#?}");
    assert!(seen.iter().any(|o| matches!(o, AppOutput::HubRefused { error, .. } if error.to_string().contains("CONNACK 5"))), "{seen:#?}");
    assert!(seen.iter().any(|o| matches!(
        o,
        AppOutput::Registering {
            reason: dpskit_device::RegisterReason::HubRefused,
            ..
        }
    )));
    assert_eq!(
        (
            report.stored_assignment_used,
            report.registrations,
            report.messages_sent
        ),
        (1, 1, 2)
    );
    assert!(matches!(
        seen.last(),
        Some(AppOutput::Finished { messages_sent: 2 })
    ));
    emu.event(&[
        "\"kind\":\"telemetry\"",
        &format!("\"messageId\":\"{id}-2\""),
    ])
    .await;
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_image_without_a_required_key_is_refused() {
    let emu = Emu::start(|_| {}).await;
    let entries: Vec<_> = emu
        .config("vdev-nokey")
        .to_entries()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| *k != dpskit_core::config::keys::DEVICE_KEY)
        .collect();
    let image = nvs::build_entries(&entries, DEFAULT_SIZE).unwrap();
    let e = DeviceOptions::from_image(&image).unwrap_err().to_string();
    assert!(e.contains("key 'device_key' missing"), "{e}");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_key_flashed_instead_of_the_derived_key() {
    let emu = Emu::start(|_| {}).await;
    let mut cfg = emu.config("vdev-groupkey");
    cfg.id_scope = IdScope::parse(SHORT_SCOPE).unwrap().0;
    let raw: [u8; 32] = GroupKey::parse(SHORT_GROUP_KEY, "g")
        .unwrap()
        .as_bytes()
        .try_into()
        .unwrap();
    cfg.device_key = DeviceKey::from_bytes(raw);
    let image = nvs::build_image(&cfg, DEFAULT_SIZE).unwrap();
    let e = failure_of(emu.options(&image)).await;
    assert!(e.contains("401 Unauthorized"), "{e}");
    assert!(
        e.contains("signed with the enrollment group primary key itself"),
        "{e}"
    );
    assert!(
        e.contains("usually the enrollment group key was put on the device"),
        "{e}"
    );
    emu.stop().await;

    // A DPS that refuses at CONNECT (CONNACK 5) instead: no text reaches the device, so the
    // message is the likely cause.
    let emu = Emu::start(|c| c.dps.reject_at_connect = true).await;
    let mut cfg = emu.config("vdev-groupkey");
    cfg.id_scope = IdScope::parse(SHORT_SCOPE).unwrap().0;
    cfg.device_key = DeviceKey::from_bytes(raw);
    let e = failure_of(emu.options(&nvs::build_image(&cfg, DEFAULT_SIZE).unwrap())).await;
    assert!(e.starts_with("DPS refused the connection: not authorized (CONNACK 5); usually the enrollment group key was put on the device"), "{e}");
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_checks_the_configured_name_wherever_it_connects() {
    let emu = Emu::start(|_| {}).await;
    // The image names a DPS host the emulator's certificate does not carry; --provisioning-host
    // moves only the TCP connection, so TLS still checks that name and refuses.
    let mut cfg = emu.config("vdev-name");
    cfg.dps_host = "dps.factory.example".into();
    let image = nvs::build_image(&cfg, DEFAULT_SIZE).unwrap();
    let e = failure_of(emu.options(&image)).await;
    assert!(e.starts_with("TLS: the DPS server dps.factory.example was refused: the certificate presented for dps.factory.example is for localhost, 127.0.0.1"), "{e}");
    // Told which name to check, it registers.
    let mut opts = emu.options(&image);
    opts.endpoints.tls_server_name = Some("localhost".into());
    opts.settings.max_messages = Some(1);
    let report = tokio::time::timeout(
        WAIT,
        VirtualDevice::run(opts, dpskit_device::driver::NoCommands, |_| {}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (report.failure, report.registrations, report.messages_sent),
        (None, 1, 1)
    );
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_ca_that_does_not_match_the_endpoint_names_both_cas() {
    let emu = Emu::start(|_| {}).await;
    let mut cfg = emu.config("vdev-wrongca");
    cfg.root_ca_pem = roots::assemble(&RootSource::defaults(), time::OffsetDateTime::now_utc())
        .unwrap()
        .pem;
    let image = nvs::build_image(&cfg, DEFAULT_SIZE).unwrap();
    let e = failure_of(emu.options(&image)).await;
    assert!(
        e.starts_with("TLS: the DPS server localhost was refused"),
        "{e}"
    );
    assert!(e.contains("\"dpskit emulator CA\""), "{e}");
    assert!(
        e.contains("DigiCert Global Root G2, Microsoft RSA Root Certificate Authority 2017"),
        "{e}"
    );
    assert_eq!(emu.handle.stats().registrations, 0);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_host_unreachable() {
    let emu = Emu::start(|_| {}).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut opts = emu.options(&emu.image("vdev-unreachable"));
    opts.endpoints.dps = Some(closed.to_string());
    opts.settings.dps_max_retries = 1;
    let e = failure_of(opts).await;
    assert!(
        e.starts_with("gave up on DPS after 2 failed attempts in a row"),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "DPS host unreachable: connection refused by {closed}"
        )),
        "{e}"
    );
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_far_off() {
    let emu = Emu::start(|_| {}).await;
    let image = emu.image("vdev-clock");
    // Never set (an ESP32 boots at 1970): refused before anything is sent.
    let mut opts = emu.options(&image);
    opts.clock_offset_ms = -(56 * 365 * 86_400_000);
    let e = failure_of(opts).await;
    assert!(
        e.starts_with("clock not set (SNTP): the device time is 19"),
        "{e}"
    );
    // Days behind: the server certificate is not valid yet at the device's time.
    let mut opts = emu.options(&image);
    opts.clock_offset_ms = -3 * 86_400_000;
    let e = failure_of(opts).await;
    assert!(
        e.contains("certificate not yet valid") && e.contains("the clock is behind"),
        "{e}"
    );
    // Hours behind: TLS passes, the token is born expired and DPS says so.
    let mut opts = emu.options(&image);
    opts.clock_offset_ms = -2 * 3_600_000;
    let e = failure_of(opts).await;
    assert!(
        e.contains("401 Unauthorized") && e.contains("token expired") && e.contains("SNTP"),
        "{e}"
    );
    assert_eq!(emu.handle.stats().registrations, 0);
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dps_429_is_retried_as_asked_and_within_limits() {
    // The first two registrations are throttled with retry-after 1 s: the device waits and
    // registers on the third try.
    let emu = Emu::start(|c| {
        c.dps.retry_after_secs = 1;
        c.groups[0].throttle_first_n = 2;
    })
    .await;
    let mut opts = emu.options(&emu.image("vdev-429-ok"));
    opts.settings.max_messages = Some(1);
    let started = Instant::now();
    let report = tokio::time::timeout(
        WAIT,
        VirtualDevice::run(opts, dpskit_device::driver::NoCommands, |_| {}),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.failure, None);
    assert_eq!(report.registrations, 1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "retry-after honoured twice"
    );
    emu.stop().await;

    // More throttling than the device's retry budget: it gives up and says why.
    let emu = Emu::start(|c| {
        c.dps.retry_after_secs = 1;
        c.groups[0].throttle_first_n = 10;
    })
    .await;
    let mut opts = emu.options(&emu.image("vdev-429-limit"));
    opts.settings.dps_max_retries = 1;
    let e = failure_of(opts).await;
    assert!(e.starts_with("gave up on DPS after 2 failed attempts in a row; last: DPS answered 429 Too Many Requests (errorCode 429001"), "{e}");
    emu.stop().await;
}
