//! Whole-application transcripts: (time, event in) → (actions out), exact, for the paths a
//! board takes: DPS → hub → telemetry → methods → twin interval change → token renewal →
//! hub refusal → DPS again; the stored assignment that skips DPS; and each failure.

use dpskit_core::config::DEFAULT_DPS_HOST;
use dpskit_core::hub::Message;
use dpskit_core::mqtt::{Action, Event};
use dpskit_core::{DeviceConfig, DeviceKey, IdScope, RegistrationId};
use dpskit_device::{
    AppError, AppOutput, AppSettings, DeviceApp, LinkError, LinkErrorKind, PlatformStatus,
    StoredAssignment,
};

const KEY: &str = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=";
const ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
const SCOPE: &str = "0ne00000000";
const HUB: &str = "myhub.azure-devices.net";
/// 2025-06-15 (a plausible, SNTP-set time).
const T0: u64 = 1_750_000_000_000;
const OP: &str = "4.d0a671905ea5b2c8.e7173b7b";

fn config() -> DeviceConfig {
    DeviceConfig {
        id_scope: IdScope::parse(SCOPE).unwrap().0,
        registration_id: RegistrationId::parse(ID, false).unwrap(),
        device_key: DeviceKey::parse(KEY, "device key").unwrap(),
        root_ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
        dps_host: DEFAULT_DPS_HOST.into(),
        wifi_ssid: None,
        wifi_password: None,
        ntp_server: None,
        token_ttl_secs: None,
    }
}

fn settings() -> AppSettings {
    let mut s = AppSettings::new("1.2.3");
    s.telemetry_interval_ms = 10_000;
    s.report_interval_ms = 300_000;
    s
}

fn stored(hub: &str) -> StoredAssignment {
    StoredAssignment {
        version: 1,
        id_scope: SCOPE.into(),
        registration_id: ID.into(),
        dps_host: DEFAULT_DPS_HOST.into(),
        assigned_hub: hub.into(),
        device_id: ID.into(),
    }
}

/// One line per action; tokens shown by expiry only (their bytes are the core's business).
fn render(a: &Action<AppOutput>) -> String {
    match a {
        Action::Connect(c) | Action::Reconnect(c) => format!(
            "{} {} user={} se={}",
            if matches!(a, Action::Connect(_)) {
                "CONNECT"
            } else {
                "RECONNECT"
            },
            c.host,
            c.username.split("api-version").next().unwrap(),
            c.token_expiry
        ),
        Action::Subscribe { filter, .. } => format!("SUB {filter}"),
        Action::Publish(p) => {
            format!("PUB {} {}", p.topic, String::from_utf8_lossy(&p.payload))
        }
        Action::Disconnect => "DISCONNECT".into(),
        Action::Output(o) => match o {
            AppOutput::TelemetrySent { seq, .. } => format!("OUT telemetry {seq:?}"),
            AppOutput::ReportedSent { .. } => "OUT reported".into(),
            AppOutput::StoreAssignment(s) => {
                format!("OUT store {} {}", s.assigned_hub, s.device_id)
            }
            AppOutput::Failed(e) => format!("OUT failed: {e}"),
            other => format!("OUT {other:?}"),
        },
    }
}

/// Feeds `event` and, as the driver does, a `PubAck` for each PUBLISH delivered.
fn step(app: &mut DeviceApp, at: u64, event: Event<'_>) -> Vec<String> {
    let actions = app.handle(at, event);
    for a in &actions {
        if let Action::Publish(_) = a {
            assert!(app.handle(at, Event::PubAck).is_empty());
        }
    }
    actions.iter().map(render).collect()
}

fn publish<'a>(topic: &'a str, payload: &'a str) -> Event<'a> {
    Event::Publish {
        topic,
        payload: payload.as_bytes(),
    }
}

const CONNACK_OK: Event<'static> = Event::ConnAck {
    return_code: 0,
    session_present: false,
};
const CONNACK_5: Event<'static> = Event::ConnAck {
    return_code: 5,
    session_present: false,
};
const SUBACK: Event<'static> = Event::SubAck { granted: true };

fn dps_connect(at: u64) -> String {
    format!(
        "CONNECT {DEFAULT_DPS_HOST} user={SCOPE}/registrations/{ID}/ se={}",
        at / 1000 + 3600
    )
}

fn hub_connect(hub: &str, at: u64) -> String {
    format!("CONNECT {hub} user={hub}/{ID}/? se={}", at / 1000 + 3600)
}

fn assigned(hub: &str) -> String {
    format!(
        r#"{{"operationId":"{OP}","status":"assigned","registrationState":{{"registrationId":"{ID}","assignedHub":"{hub}","deviceId":"{ID}","status":"assigned","substatus":"initialAssignment"}}}}"#
    )
}

/// Start → DPS register → 202 → poll → 200 assigned to `hub` → hub CONNECT; the app is then
/// waiting for the hub's CONNACK. Returns the time of the hub CONNECT.
fn provision(app: &mut DeviceApp, t: u64, hub: &str, reason: &str) -> u64 {
    assert_eq!(
        step(app, t, Event::Start),
        [
            format!("OUT Registering {{ dps_host: \"{DEFAULT_DPS_HOST}\", reason: {reason} }}"),
            dps_connect(t)
        ]
    );
    register_after_connect(app, t, hub)
}

fn register_after_connect(app: &mut DeviceApp, t: u64, hub: &str) -> u64 {
    assert_eq!(
        step(app, t + 10, CONNACK_OK),
        ["SUB $dps/registrations/res/#"]
    );
    assert_eq!(
        step(app, t + 20, SUBACK),
        [format!(
            "PUB $dps/registrations/PUT/iotdps-register/?$rid=1 {{\"registrationId\":\"{ID}\"}}"
        )]
    );
    let accepted = format!(r#"{{"operationId":"{OP}","status":"assigning"}}"#);
    assert_eq!(
        step(
            app,
            t + 30,
            publish(
                "$dps/registrations/res/202/?$rid=1&retry-after=1",
                &accepted
            )
        ),
        Vec::<String>::new()
    );
    assert_eq!(app.next_deadline(), Some(t + 1_030));
    assert_eq!(
        step(app, t + 1_030, Event::Tick),
        [format!(
            "PUB $dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={OP} "
        )]
    );
    let done = assigned(hub);
    let at = t + 1_040;
    assert_eq!(
        step(app, at, publish("$dps/registrations/res/200/?$rid=2", &done)),
        [
            "DISCONNECT".to_string(),
            format!("OUT Provisioned {{ hub: \"{hub}\", device_id: \"{ID}\", substatus: Some(\"initialAssignment\") }}"),
            format!("OUT store {hub} {ID}"),
            hub_connect(hub, at),
        ]
    );
    at
}

/// CONNACK 0 from the hub at `t`: subscriptions, twin GET with `rid`, reported, telemetry `seq`.
fn hub_connected(app: &mut DeviceApp, t: u64, hub: &str, twin_rid: u32) -> Vec<String> {
    let expect = [
        format!(
            "OUT HubConnected {{ hub: \"{hub}\", device_id: \"{ID}\", session_present: false }}"
        ),
        format!("SUB devices/{ID}/messages/devicebound/#"),
        "SUB $iothub/methods/POST/#".into(),
        "SUB $iothub/twin/res/#".into(),
        "SUB $iothub/twin/PATCH/properties/desired/#".into(),
        format!("PUB $iothub/twin/GET/?$rid={twin_rid} "),
    ];
    let got = step(app, t, CONNACK_OK);
    assert_eq!(got[..6], expect[..], "{got:#?}");
    got[6..].to_vec()
}

#[test]
fn full_life_dps_hub_methods_twin_renewal_refusal_and_reregistration() {
    let mut app = DeviceApp::new(config(), settings(), None).unwrap();
    app.set_status(PlatformStatus {
        free_heap: Some(180_000),
        free_psram: Some(8_000_000),
        peak_heap: None,
        peak_psram: None,
        largest_free_block: Some(110_000),
        rssi_dbm: Some(-61),
        uptime_ms: None,
    });
    let t_hub = provision(&mut app, T0, HUB, "NoStoredAssignment");
    assert_eq!(app.next_deadline(), None, "waiting for the hub's CONNACK");

    // Connected: reported properties and the first telemetry go out at once.
    let t1 = t_hub + 50;
    let rest = hub_connected(&mut app, t1, HUB, 1);
    assert_eq!(
        rest,
        [
            "PUB $iothub/twin/PATCH/properties/reported/?$rid=2 {\"firmwareVersion\":\"1.2.3\",\"freeHeap\":180000,\"freePsram\":8000000,\"largestFreeBlock\":110000,\"rssi\":-61,\"telemetryInterval\":10,\"uptimeSecs\":1}",
            "OUT reported",
            &format!("PUB devices/{ID}/messages/events/%24.mid={ID}-1&%24.ct=application%2Fjson&%24.ce=utf-8 {{\"freeHeap\":180000,\"freePsram\":8000000,\"largestFreeBlock\":110000,\"rssi\":-61,\"seq\":1,\"uptimeSecs\":1}}"),
            "OUT telemetry Some(1)",
        ]
    );
    assert!(app.is_connected());
    // Renewal (3600 − 120 s after the token's start) is later than the next telemetry.
    assert_eq!(app.next_deadline(), Some(t1 + 10_000));

    // The twin: no telemetryInterval yet → keep the default; then the reported ack.
    let got = step(
        &mut app,
        t1 + 100,
        publish(
            "$iothub/twin/res/200/?$rid=1",
            r#"{"desired":{"$version":1},"reported":{"$version":4}}"#,
        ),
    );
    assert_eq!(got, ["OUT DesiredProperties { version: Some(1), properties: Object {\"$version\": Number(1)}, complete: true }"]);
    assert_eq!(
        step(
            &mut app,
            t1 + 110,
            publish("$iothub/twin/res/204/?$rid=2&$version=5", "")
        ),
        ["OUT ReportedAck { version: Some(5) }"]
    );

    // A C2D message is handed up with its properties.
    let got = step(
        &mut app,
        t1 + 200,
        publish(
            &format!("devices/{ID}/messages/devicebound/%24.mid=m1&color=blue"),
            "hello",
        ),
    );
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with(
            "OUT C2d(Message { body: [104, 101, 108, 108, 111], message_id: Some(\"m1\")"
        ),
        "{got:?}"
    );

    // echo: the payload comes back with 200.
    assert_eq!(
        step(&mut app, t1 + 300, publish("$iothub/methods/POST/echo/?$rid=7", r#"{"x":1}"#)),
        [
            "PUB $iothub/methods/res/200/?$rid=7 {\"x\":1}",
            "OUT MethodCalled { name: \"echo\", request: [123, 34, 120, 34, 58, 49, 125], status: 200, response: [123, 34, 120, 34, 58, 49, 125] }",
        ]
    );
    // An unknown method: 404 naming the ones there are.
    let got = step(
        &mut app,
        t1 + 310,
        publish("$iothub/methods/POST/selfDestruct/?$rid=8", ""),
    );
    assert_eq!(
        got[0],
        "PUB $iothub/methods/res/404/?$rid=8 {\"error\":\"no method \\\"selfDestruct\\\" on this device; it answers \\\"echo\\\" and \\\"reboot\\\"\"}"
    );

    // Telemetry on time, then a desired patch that shortens the interval to 2 s.
    assert_eq!(
        step(&mut app, t1 + 9_999, Event::Tick),
        Vec::<String>::new()
    );
    let got = step(&mut app, t1 + 10_000, Event::Tick);
    assert_eq!(got[1], "OUT telemetry Some(2)");
    assert!(got[0].ends_with(",\"seq\":2,\"uptimeSecs\":11}"), "{got:?}");
    let t2 = t1 + 10_500;
    let got = step(
        &mut app,
        t2,
        publish(
            "$iothub/twin/PATCH/properties/desired/?$version=2",
            r#"{"telemetryInterval":2,"$version":2}"#,
        ),
    );
    assert_eq!(
        got,
        [
            "OUT DesiredProperties { version: Some(2), properties: Object {\"$version\": Number(2), \"telemetryInterval\": Number(2)}, complete: false }",
            "OUT TelemetryIntervalChanged { secs: 2 }",
            "PUB $iothub/twin/PATCH/properties/reported/?$rid=3 {\"firmwareVersion\":\"1.2.3\",\"freeHeap\":180000,\"freePsram\":8000000,\"largestFreeBlock\":110000,\"rssi\":-61,\"telemetryInterval\":2,\"uptimeSecs\":11}",
            "OUT reported",
        ]
    );
    assert_eq!(app.telemetry_interval_ms(), 2_000);
    assert_eq!(app.next_deadline(), Some(t2 + 2_000));
    let got = step(&mut app, t2 + 2_000, Event::Tick);
    assert_eq!(got[1], "OUT telemetry Some(3)");
    // A bad value is refused with a warning, and the interval stays.
    let got = step(
        &mut app,
        t2 + 2_100,
        publish(
            "$iothub/twin/PATCH/properties/desired/?$version=3",
            r#"{"telemetryInterval":"fast","$version":3}"#,
        ),
    );
    assert!(got[0].contains("Warning(\"desired telemetryInterval \\\"fast\\\" is not a whole number of seconds from 1 to 86400; keeping 2 s\")"), "{got:?}");
    assert_eq!(app.telemetry_interval_ms(), 2_000);

    // Token renewal: 120 s before expiry the app reconnects with a fresh token.
    // The hub token was made at the CONNECT (t_hub) and lives 3600 s.
    let renew_at = (t_hub / 1000 + 3600 - 120) * 1000;
    // Telemetry ticks up to the renewal.
    let mut t = t2 + 2_000;
    while app.next_deadline().unwrap() < renew_at {
        t = app.next_deadline().unwrap();
        step(&mut app, t, Event::Tick);
    }
    assert_eq!(app.next_deadline(), Some(renew_at));
    assert_eq!(
        step(&mut app, renew_at, Event::Tick),
        [format!(
            "RECONNECT {HUB} user={HUB}/{ID}/? se={}",
            renew_at / 1000 + 3600
        )]
    );
    assert!(t < renew_at);

    // The renewed token is refused (CONNACK 5): back to DPS, which now assigns another hub.
    let t3 = renew_at + 100;
    let got = step(&mut app, t3, CONNACK_5);
    assert_eq!(got[0], "OUT HubRefused { error: ConnectRefused { code: 5 }, then: \"registering with DPS again (the assignment may be stale)\" }");
    assert_eq!(
        got[1..],
        [
            "DISCONNECT".to_string(),
            format!("OUT Registering {{ dps_host: \"{DEFAULT_DPS_HOST}\", reason: HubRefused }}"),
            dps_connect(t3),
        ]
    );
    let t_hub2 = register_after_connect(&mut app, t3, "hub2.azure-devices.net");
    hub_connected(&mut app, t_hub2 + 10, "hub2.azure-devices.net", 1);
    assert!(app.is_connected());
    // Sequence numbers go on across the re-registration.
    assert!(app.messages_sent() > 3);
}

#[test]
fn stored_assignment_skips_dps_and_mismatched_one_is_ignored() {
    let mut app = DeviceApp::new(config(), settings(), Some(stored(HUB))).unwrap();
    assert_eq!(
        step(&mut app, T0, Event::Start),
        [
            format!("OUT UsingStoredAssignment {{ hub: \"{HUB}\", device_id: \"{ID}\" }}"),
            hub_connect(HUB, T0),
        ]
    );
    hub_connected(&mut app, T0 + 10, HUB, 1);

    let mut other = stored(HUB);
    other.registration_id = "another-device".into();
    let mut app = DeviceApp::new(config(), settings(), Some(other)).unwrap();
    let got = step(&mut app, T0, Event::Start);
    assert_eq!(
        got[0],
        format!("OUT StoredAssignmentIgnored {{ reason: \"made for registration ID \\\"another-device\\\", the config has \\\"{ID}\\\"\" }}")
    );
    assert_eq!(got[2], dps_connect(T0));
}

#[test]
fn hub_refusing_a_fresh_assignment_is_final() {
    let mut app = DeviceApp::new(config(), settings(), Some(stored(HUB))).unwrap();
    step(&mut app, T0, Event::Start);
    // Stored assignment refused → DPS → same hub refuses again → final.
    let got = step(&mut app, T0 + 10, CONNACK_5);
    assert_eq!(got.last().unwrap(), &dps_connect(T0 + 10));
    let at = register_after_connect(&mut app, T0 + 10, HUB);
    let got = step(&mut app, at + 10, CONNACK_5);
    assert_eq!(
        got,
        [
            "DISCONNECT".to_string(),
            format!("OUT failed: IoT Hub {HUB} refused device \"{ID}\" (CONNACK 5, not authorized) right after DPS assigned it there, so the key is right for DPS: the hub token was rejected — the device clock may be off (SNTP), the device is disabled in the hub, or the DPS link to this hub is stale (re-link the hub in DPS)"),
        ]
    );
    assert!(app.is_finished());
    assert_eq!(step(&mut app, at + 20, Event::Tick), Vec::<String>::new());
}

#[test]
fn clock_before_2024_sends_nothing() {
    let mut app = DeviceApp::new(config(), settings(), None).unwrap();
    // 1970 + 5 s: an ESP32 that has not run SNTP.
    assert_eq!(
        step(&mut app, 5_000, Event::Start),
        ["OUT failed: clock not set (SNTP): the device time is 1970-01-01 00:00:05 UTC, before 2024; TLS certificates cannot be checked and SAS tokens would be expired, so nothing was sent — wait for SNTP before connecting"]
    );
    assert!(matches!(
        app.outcome(),
        Some(Err(AppError::ClockNotSet { now_ms: 5_000 }))
    ));
}

#[test]
fn dps_429_backs_off_as_asked_then_gives_up_within_limits() {
    let mut s = settings();
    s.dps_max_retries = 2;
    let mut app = DeviceApp::new(config(), s, None).unwrap();
    step(&mut app, T0, Event::Start);
    step(&mut app, T0 + 10, CONNACK_OK);
    step(&mut app, T0 + 20, SUBACK);
    let throttled = r#"{"errorCode":429001,"trackingId":"t","message":"Operations are being throttled for this tenant."}"#;
    // First 429 asks for 7 s: the register is repeated then, not sooner.
    assert_eq!(
        step(
            &mut app,
            T0 + 30,
            publish(
                "$dps/registrations/res/429/?$rid=1&retry-after=7",
                throttled
            )
        ),
        Vec::<String>::new()
    );
    assert_eq!(app.next_deadline(), Some(T0 + 7_030));
    assert_eq!(
        step(&mut app, T0 + 7_029, Event::Tick),
        Vec::<String>::new()
    );
    let got = step(&mut app, T0 + 7_030, Event::Tick);
    assert_eq!(
        got,
        [format!(
            "PUB $dps/registrations/PUT/iotdps-register/?$rid=2 {{\"registrationId\":\"{ID}\"}}"
        )]
    );
    // Second 429 without retry-after: exponential fallback (2 s × 2).
    step(
        &mut app,
        T0 + 7_040,
        publish("$dps/registrations/res/429/?$rid=2", throttled),
    );
    assert_eq!(app.next_deadline(), Some(T0 + 7_040 + 4_000));
    step(&mut app, T0 + 11_040, Event::Tick);
    // Third in a row exceeds dps_max_retries = 2.
    let got = step(
        &mut app,
        T0 + 11_050,
        publish(
            "$dps/registrations/res/429/?$rid=3&retry-after=1",
            throttled,
        ),
    );
    assert_eq!(
        got,
        [
            "DISCONNECT",
            "OUT failed: gave up on DPS after 3 failed attempts in a row; last: DPS answered 429 Too Many Requests (errorCode 429001, \"Operations are being throttled for this tenant.\"); DPS allows 1,000 registrations per minute per service and 5 polls per 10 s per device",
        ]
    );
}

#[test]
fn dps_401_names_the_group_key_and_the_service_message() {
    let mut app = DeviceApp::new(config(), settings(), None).unwrap();
    step(&mut app, T0, Event::Start);
    step(&mut app, T0 + 10, CONNACK_OK);
    step(&mut app, T0 + 20, SUBACK);
    let got = step(
        &mut app,
        T0 + 30,
        publish(
            "$dps/registrations/res/401/?$rid=1",
            r#"{"errorCode":401002,"trackingId":"abc","message":"signed with the enrollment group primary key itself"}"#,
        ),
    );
    assert_eq!(got[0], "DISCONNECT");
    assert!(got[1].starts_with("OUT failed: DPS rejected the device's credentials: 401 Unauthorized (errorCode 401002, \"signed with the enrollment group primary key itself\", trackingId abc); usually the enrollment group key was put on the device"), "{got:?}");
}

#[test]
fn certificate_failure_is_final_and_named_other_link_errors_retry() {
    let mut s = settings();
    s.dps_max_retries = 1;
    let mut app = DeviceApp::new(config(), s, None).unwrap();
    step(&mut app, T0, Event::Start);
    // Connection refused: retried after backoff, and named when DPS gives up.
    app.link_failed(LinkError::new(
        LinkErrorKind::Unreachable,
        "connection refused by 127.0.0.1:1",
    ));
    assert_eq!(
        step(&mut app, T0 + 5, Event::Disconnected { random: 0 }),
        Vec::<String>::new()
    );
    let retry = app.next_deadline().unwrap();
    assert_eq!(retry, T0 + 5 + 1_000, "2 s backoff, equal jitter, random 0");
    assert_eq!(step(&mut app, retry, Event::Tick), [dps_connect(retry)]);
    app.link_failed(LinkError::new(
        LinkErrorKind::Unreachable,
        "connection refused by 127.0.0.1:1",
    ));
    let got = step(&mut app, retry + 5, Event::Disconnected { random: 0 });
    assert_eq!(got, ["DISCONNECT", "OUT failed: gave up on DPS after 2 failed attempts in a row; last: the connection to DPS dropped or could not be opened (check Wi-Fi, DNS, the DPS host name and the root CA); last connection error: connection refused by 127.0.0.1:1"]);

    let mut app = DeviceApp::new(config(), settings(), None).unwrap();
    step(&mut app, T0, Event::Start);
    app.link_failed(LinkError::new(
        LinkErrorKind::Certificate,
        "the certificate of localhost was issued by \"dpskit emulator CA\", which is not among the config's root CAs (DigiCert Global Root G2)",
    ));
    let got = step(&mut app, T0 + 5, Event::Disconnected { random: 0 });
    assert_eq!(got, ["DISCONNECT", &format!("OUT failed: TLS: the DPS server {DEFAULT_DPS_HOST} was refused: the certificate of localhost was issued by \"dpskit emulator CA\", which is not among the config's root CAs (DigiCert Global Root G2)")]);
    assert_eq!(app.next_deadline(), None);
}

#[test]
fn reboot_answers_first_then_closes() {
    let mut app = DeviceApp::new(config(), settings(), Some(stored(HUB))).unwrap();
    step(&mut app, T0, Event::Start);
    hub_connected(&mut app, T0 + 10, HUB, 1);
    assert_eq!(
        step(&mut app, T0 + 20, publish("$iothub/methods/POST/reboot/?$rid=3", "")),
        [
            "PUB $iothub/methods/res/200/?$rid=3 {\"rebooting\":true}",
            "OUT MethodCalled { name: \"reboot\", request: [], status: 200, response: [123, 34, 114, 101, 98, 111, 111, 116, 105, 110, 103, 34, 58, 116, 114, 117, 101, 125] }",
            "DISCONNECT",
            "OUT RebootRequested",
        ]
    );
    assert!(app.is_finished());
}

#[test]
fn max_messages_finishes_and_own_messages_are_queued_while_offline() {
    let mut s = settings();
    s.max_messages = Some(2);
    let mut app = DeviceApp::new(config(), s, Some(stored(HUB))).unwrap();
    step(&mut app, T0, Event::Start);
    // Queued before the hub is up, sent right after the subscriptions.
    assert_eq!(
        app.send(T0 + 1, Message::new("mine")),
        Vec::<Action<AppOutput>>::new()
    );
    let rest = hub_connected(&mut app, T0 + 10, HUB, 1);
    assert_eq!(rest[0], format!("PUB devices/{ID}/messages/events/ mine"));
    assert_eq!(rest[1], "OUT telemetry None");
    assert_eq!(rest.last().unwrap(), "OUT telemetry Some(1)");
    let got = step(&mut app, T0 + 10_010, Event::Tick);
    assert_eq!(
        got[1..],
        [
            "OUT telemetry Some(2)",
            "DISCONNECT",
            "OUT Finished { messages_sent: 3 }"
        ]
    );
    assert_eq!(app.outcome(), Some(&Ok(3)));
}

#[test]
fn hub_failure_limit_and_reprovisioning_of_a_stale_store() {
    let mut s = settings();
    s.reprovision_after_hub_failures = 2;
    s.hub_backoff_initial_ms = 100;
    let mut app =
        DeviceApp::new(config(), s.clone(), Some(stored("gone.azure-devices.net"))).unwrap();
    step(&mut app, T0, Event::Start);
    app.link_failed(LinkError::new(LinkErrorKind::Unreachable, "no such host"));
    let got = step(&mut app, T0 + 1, Event::Disconnected { random: 0 });
    assert!(got[0].starts_with("OUT HubDisconnected { reconnect_at_ms: 1750000000051, cause: Some(LinkError { kind: Unreachable"), "{got:?}");
    step(&mut app, T0 + 51, Event::Tick);
    app.link_failed(LinkError::new(LinkErrorKind::Unreachable, "no such host"));
    let got = step(&mut app, T0 + 60, Event::Disconnected { random: 0 });
    assert_eq!(
        got[1],
        format!("OUT Registering {{ dps_host: \"{DEFAULT_DPS_HOST}\", reason: HubUnreachable }}")
    );
    assert_eq!(got[2], dps_connect(T0 + 60));

    s.hub_max_failures = Some(1);
    let mut app = DeviceApp::new(config(), s, Some(stored(HUB))).unwrap();
    step(&mut app, T0, Event::Start);
    app.link_failed(LinkError::new(
        LinkErrorKind::Timeout,
        "no CONNACK within 10 s",
    ));
    let got = step(&mut app, T0 + 1, Event::Disconnected { random: 0 });
    assert_eq!(got.last().unwrap(), &format!("OUT failed: IoT Hub {HUB} could not be reached in 1 attempts in a row; last: no CONNACK within 10 s"));
}

#[test]
fn telemetry_not_acknowledged_before_a_drop_is_sent_again_after_reconnecting() {
    let mut app = DeviceApp::new(config(), settings(), Some(stored(HUB))).unwrap();
    step(&mut app, T0, Event::Start);
    hub_connected(&mut app, T0 + 10, HUB, 1);
    // The next telemetry is handed over, and the connection dies before its PUBACK.
    let due = app.next_deadline().unwrap();
    let sent = app.handle(due, Event::Tick);
    let telemetry: Vec<_> = sent
        .iter()
        .filter_map(|a| match a {
            Action::Publish(p) if p.topic.contains("/messages/events/") => Some(p.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(telemetry.len(), 1, "{sent:?}");
    let got = step(&mut app, due + 5, Event::Disconnected { random: 0 });
    assert_eq!(
        got[0],
        "OUT Warning(\"1 telemetry message(s) not acknowledged before the connection dropped; sending them again after reconnecting\")"
    );
    // Reconnected: the very same message (same topic, same body) is the first telemetry.
    let at = app.next_deadline().unwrap();
    assert_eq!(step(&mut app, at, Event::Tick), [hub_connect(HUB, at)]);
    let after = app.handle(at + 10, CONNACK_OK);
    let first_publish = after.iter().find_map(|a| match a {
        Action::Publish(p) if p.topic.contains("/messages/events/") => Some(p.clone()),
        _ => None,
    });
    assert_eq!(first_publish.as_ref(), Some(&telemetry[0]), "{after:?}");
    // Acknowledged this time: nothing is resent on the next drop.
    for a in &after {
        if let Action::Publish(_) = a {
            app.handle(at + 20, Event::PubAck);
        }
    }
    let got = step(&mut app, at + 30, Event::Disconnected { random: 0 });
    assert!(
        !got.iter().any(|l| l.contains("not acknowledged")),
        "{got:?}"
    );
}
