//! The emulator keeps IoT Hub's and DPS's limits (issue #11): sessions end when their token
//! expires, a connection has a deadline to CONNECT, keep-alive is enforced (capped at IoT
//! Hub's 1767 s), five subscriptions per connection, 32 KB per twin section, DPS operations
//! in progress are bounded, registration IDs follow DPS's rules, and one device ID in two
//! groups never lets the second take over the first. Time is the emulator's injected clock,
//! moved by the test: nothing here sleeps.

mod emulator_support;

use dpskit_core::mqtt::hub_username;
use dpskit_core::sas::hub_resource;
use dpskit_core::topic::{self, DeviceTopic, ServiceTopic};
use dpskit_core::{GroupKey, SasToken};
use dpskit_rehearsal::emulator::{Clock, ManualClock, Stats};
use emulator_support::*;
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::{QoS, SubscribeFilter, SubscribeReasonCode};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECOND: u64 = 1_000_000;

fn granted(code: SubscribeReasonCode) -> bool {
    matches!(code, SubscribeReasonCode::Success(_))
}

/// Waits until the emulator's counters satisfy `ok` (they change as its tasks run).
async fn until(emu: &Emu, what: &str, ok: impl Fn(&Stats) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = emu.handle.stats();
        if ok(&s) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// True once the peer has closed `stream` (EOF or an error, as a dropped TLS session gives).
async fn closed<S: AsyncReadExt + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// A hub CONNECT as raw bytes, with the given keep-alive.
fn hub_connect_bytes(id: &str, password: &str, keep_alive: u16) -> Vec<u8> {
    let mut c = Connect::new(id);
    c.keep_alive = keep_alive;
    c.set_login(hub_username(HUB, id), password);
    let mut out = bytes::BytesMut::new();
    Packet::Connect(c).write(&mut out, usize::MAX).unwrap();
    out.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_token_expires_and_a_fresh_token_gets_back_in() {
    let clock = ManualClock::starting_now();
    let emu = Emu::start_with(|c| c.clock = clock.clone()).await;
    let events = emu.record_events();
    let id = "dev-expiring";
    let key = device_key(id);
    assert_eq!(register(&emu.tls, emu.port(), id, &key).await.status, 200);
    let start = clock.now_unix_us() / SECOND;
    let se = start + 60;
    let token = SasToken::generate(&key, &hub_resource(HUB, id), se, None).to_string();
    let mut hub = connect(&emu.tls, emu.port(), id, &hub_username(HUB, id), &token)
        .await
        .unwrap();
    // One second before expiry the session works.
    clock.set((se - 1) * SECOND);
    hub.telemetry_acked(id, 1).await.unwrap();
    // At expiry IoT Hub ends it (401003); the emulator too.
    clock.set(se * SECOND);
    hub.closed().await;
    let e = events.wait_for(&["token-expired", id]).await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("401003") && message.contains("connect again with a fresh token"),
        "{message}"
    );
    // The old token is refused now; a renewed one gets in.
    assert!(
        connect(&emu.tls, emu.port(), id, &hub_username(HUB, id), &token)
            .await
            .is_err()
    );
    events.wait_for(&["CONNACK 5", "token expired"]).await;
    let renewed = SasToken::generate(&key, &hub_resource(HUB, id), se + 3600, None).to_string();
    let mut hub = connect(&emu.tls, emu.port(), id, &hub_username(HUB, id), &renewed)
        .await
        .unwrap();
    hub.telemetry_acked(id, 1).await.unwrap();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_tls_or_connect_are_closed_at_the_deadline() {
    let clock = ManualClock::starting_now();
    let emu = Emu::start_with(|c| c.clock = clock.clone()).await;
    let events = emu.record_events();
    let mut no_tls = tokio::net::TcpStream::connect(emu.handle.addr())
        .await
        .unwrap();
    // TLS 1.2: the emulator has finished its side of the handshake once the client has.
    let mut no_connect = raw_tls_with(&emu, &emu.tls12()).await;
    until(&emu, "two connections pending", |s| {
        s.pending_connections == 2
    })
    .await;
    clock.advance(Duration::from_secs(9));
    // Still open just before the deadline: a CONNECT would still be read.
    assert_eq!(emu.handle.stats().pending_connections, 2);
    clock.advance(Duration::from_secs(1));
    assert!(closed(&mut no_tls).await);
    assert!(closed(&mut no_connect).await);
    events.wait_for(&["no TLS handshake within 10 s"]).await;
    events.wait_for(&["no CONNECT within 10 s"]).await;
    until(&emu, "none pending", |s| s.pending_connections == 0).await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_enforced_and_capped_at_iot_hubs_1767_s() {
    let clock = ManualClock::starting_now();
    let emu = Emu::start_with(|c| c.clock = clock.clone()).await;
    let events = emu.record_events();
    let id = "dev-idle";
    let key = device_key(id);
    assert_eq!(register(&emu.tls, emu.port(), id, &key).await.status, 200);
    let token = SasToken::generate(&key, &hub_resource(HUB, id), now() + 7200, None).to_string();

    // Keep-alive 10 s: silent for 14 s is fine, a PINGREQ resets the clock, 15 s is not.
    let mut raw = raw_tls(&emu).await;
    raw.write_all(&hub_connect_bytes(id, &token, 10))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    for _ in 0..2 {
        clock.advance(Duration::from_secs(14));
        raw.write_all(&[0xc0, 0x00]).await.unwrap(); // PINGREQ
        let mut pingresp = [0u8; 2];
        raw.read_exact(&mut pingresp).await.unwrap();
        assert_eq!(pingresp, [0xd0, 0x00]);
    }
    clock.advance(Duration::from_secs(15));
    assert!(closed(&mut raw).await);
    events
        .wait_for(&[id, "no packet for 1.5 × the keep-alive of 10 s"])
        .await;

    // Keep-alive 0 (none): IoT Hub still closes a connection idle for 1767 s.
    let mut raw = raw_tls(&emu).await;
    raw.write_all(&hub_connect_bytes(id, &token, 0))
        .await
        .unwrap();
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack[3], 0);
    clock.advance(Duration::from_secs(1766));
    raw.write_all(&[0xc0, 0x00]).await.unwrap();
    let mut pingresp = [0u8; 2];
    raw.read_exact(&mut pingresp).await.unwrap();
    clock.advance(Duration::from_secs(1767));
    assert!(closed(&mut raw).await);
    events
        .wait_for(&[id, "no packet for 1767 s, IoT Hub's longest idle time"])
        .await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_subscriptions_per_connection_and_32_kb_per_twin_section() {
    let emu = Emu::start().await;
    let events = emu.record_events();
    let id = "dev-limits";
    let mut hub = provisioned(&emu, id).await;
    for f in [
        topic::c2d_filter(id).as_str(),
        topic::METHODS_FILTER,
        topic::TWIN_RESPONSES_FILTER,
        topic::DESIRED_FILTER,
        "$iothub/methods/POST/reboot/#",
    ] {
        assert!(granted(hub.subscribe(f).await), "{f}");
    }
    // A flood in one SUBSCRIBE: every filter past the fifth is refused, with one event.
    let flood: Vec<SubscribeFilter> = (0..200)
        .map(|i| SubscribeFilter::new(format!("$iothub/methods/POST/m{i}/#"), QoS::AtLeastOnce))
        .collect();
    hub.client.subscribe_many(flood).await.unwrap();
    let codes = loop {
        if let Got::SubAck(codes) = hub.next().await {
            break codes;
        }
    };
    assert_eq!(codes.len(), 200);
    assert!(codes.iter().all(|c| *c == SubscribeReasonCode::Failure));
    let e = events
        .wait_for(&["subscription refused", "already holds 5 subscriptions"])
        .await;
    assert_eq!(e["refused"], 200);
    // Re-subscribing an existing filter is no sixth one.
    assert!(granted(hub.subscribe(topic::METHODS_FILTER).await));

    // Reported properties: 8 × 4000 characters fit in 32 KB, a ninth does not.
    let patch = |i: usize| format!(r#"{{"k{i}":"{}"}}"#, "x".repeat(4000));
    for i in 0..9 {
        hub.publish(
            &DeviceTopic::TwinPatchReported {
                rid: format!("r{i}"),
            }
            .to_topic(),
            patch(i),
        )
        .await;
        let (t, body) = hub.next_publish().await;
        let ServiceTopic::TwinResponse { status, .. } = ServiceTopic::parse(&t).unwrap() else {
            panic!("{t}")
        };
        if i < 8 {
            assert_eq!(status, 204);
        } else {
            assert_eq!(status, 400);
            let text = String::from_utf8(body).unwrap();
            assert!(text.contains("32 KB per section"), "{text}");
        }
    }
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dps_operations_in_progress_are_bounded_and_ids_follow_dps_rules() {
    let emu = Emu::start_with(|c| c.limits.pending_registrations = 2).await;
    let (a, _ma) = emu
        .dps_register(SCOPE, "dev-op-1", &device_key("dev-op-1"))
        .await;
    assert_eq!(a.status, 202);
    // The same device again replaces its operation instead of holding a second one.
    let (a, _ma2) = emu
        .dps_register(SCOPE, "dev-op-1", &device_key("dev-op-1"))
        .await;
    assert_eq!(a.status, 202);
    assert_eq!(emu.handle.stats().pending_registrations, 1);
    let (b, _mb) = emu
        .dps_register(SCOPE, "dev-op-2", &device_key("dev-op-2"))
        .await;
    assert_eq!(b.status, 202);
    let (c, _mc) = emu
        .dps_register(SCOPE, "dev-op-3", &device_key("dev-op-3"))
        .await;
    assert_eq!((c.status, c.retry_after), (429, Some(0)));
    let message = c.error().message.unwrap();
    assert!(
        message.contains("2 registrations are in progress"),
        "{message}"
    );

    // Registration IDs DPS refuses: answered 400 with the rule.
    for (id, rule) in [
        ("dev!1", "DPS allows only letters, digits and - . _ :"),
        ("dev-1.", "must end with a letter, a digit or '-'"),
    ] {
        let key = device_key(id);
        let (a, _m) = emu.dps_register(SCOPE, id, &key).await;
        assert_eq!(a.status, 400, "{id}");
        let message = a.error().message.unwrap();
        assert!(message.contains(rule), "{message}");
    }
    let long = "d".repeat(129);
    let (a, _m) = emu.dps_register(SCOPE, &long, &device_key(&long)).await;
    assert!(a.error().message.unwrap().contains("at most 128"));
    emu.shutdown().await;
}

/// A group key for a second enrollment group (32 bytes 0..31, base64).
const OTHER_GROUP_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_id_in_two_groups_never_takes_over_the_first() {
    use dpskit_rehearsal::emulator::Group;
    let other = GroupKey::parse(OTHER_GROUP_KEY, "other").unwrap();
    let emu = Emu::start_with(|c| {
        c.groups.push(Group::new("0ne00000B0B", other.clone()));
        let mut elsewhere = Group::new("0ne00000C0C", other.clone());
        elsewhere.hub_host = "hub-c.local".into();
        c.groups.push(elsewhere);
    })
    .await;
    let events = emu.record_events();
    let id = "shared-1";
    let mut first = provisioned(&emu, id).await;
    assert!(granted(first.subscribe(&topic::c2d_filter(id)).await));

    // The same ID through group B, which assigns to the same hub: 409, nothing changes.
    let key_b = other.derive(id);
    let (a, _m) = emu.dps_register("0ne00000B0B", id, &key_b).await;
    assert_eq!(a.status, 409);
    let message = a.error().message.unwrap();
    assert!(
        message.contains("cannot take it over") && message.contains("0ne00000A0A"),
        "{message}"
    );
    // Nor can group B's key log in as the hub device.
    let b_token =
        SasToken::generate(&key_b, &hub_resource(HUB, id), now() + 3600, None).to_string();
    assert!(
        connect(&emu.tls, emu.port(), id, &hub_username(HUB, id), &b_token)
            .await
            .is_err()
    );
    first.telemetry_acked(id, 1).await.unwrap();

    // Through group C, which assigns to another hub: a second device of its own.
    let key_c = other.derive(id);
    let (accepted, mut m) = emu.dps_register("0ne00000C0C", id, &key_c).await;
    let op = accepted.status_body().operation_id.unwrap();
    send_poll(&m, "2", &op).await;
    let done = dps_answer(&mut m).await;
    assert_eq!(done.status, 200);
    assert_eq!(
        done.status_body()
            .registration_state
            .unwrap()
            .assigned_hub
            .as_deref(),
        Some("hub-c.local")
    );
    let c_token = SasToken::generate(&key_c, &hub_resource("hub-c.local", id), now() + 3600, None)
        .to_string();
    let mut second = connect(
        &emu.tls,
        emu.port(),
        id,
        &hub_username("hub-c.local", id),
        &c_token,
    )
    .await
    .unwrap();
    // Both online at once: different hubs, different identities.
    first.telemetry_acked(id, 1).await.unwrap();
    second.telemetry_acked(id, 1).await.unwrap();
    // The service side must say which one.
    let admin = emu.admin();
    let (ambiguous, chosen) = tokio::task::spawn_blocking(move || {
        (
            admin.send_c2d(id, "which?", &[]).unwrap_err().to_string(),
            admin.send_c2d_in(Some("hub-c.local"), id, "to c", &[]),
        )
    })
    .await
    .unwrap();
    assert!(
        ambiguous.contains("exists in hubs") && ambiguous.contains("--hub"),
        "{ambiguous}"
    );
    assert_eq!(
        chosen.unwrap()["pending"],
        1,
        "queued: the second is not subscribed"
    );
    events.wait_for(&["c2d", "\"hub\":\"hub-c.local\""]).await;
    emu.shutdown().await;
}

/// `emulate --groups` with a key pasted into the file: the error names the line, never the
/// text (toml's own message quotes the offending line).
#[test]
fn groups_file_errors_do_not_echo_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("groups.toml");
    std::fs::write(
        &file,
        format!("[[group]]\nid_scope = \"0ne00000A0A\"\nprimary_key = \"{GROUP_KEY}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(["emulate", "--bind", "127.0.0.1:0", "--groups"])
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("DPSKIT_GROUP_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    for leak in [&GROUP_KEY[..16], "primary_key = "] {
        assert!(!stderr.contains(leak), "{stderr}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}
