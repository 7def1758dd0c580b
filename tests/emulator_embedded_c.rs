//! What Microsoft's Azure SDK for Embedded C (the base of the FreeRTOS middleware and the
//! ESP32 samples) sends, exactly as it sends it, and what the emulator must answer as DPS and
//! IoT Hub do (issue #15): its C2D filter with `+`, a register request without a body, twin
//! JSON with `$version` last, Paho's MQTT 3.1 retry, an X.509 device without a password.
//! Each case also shows in the event stream and in `dpskit cloud events --all`.

mod emulator_support;

use dpskit_core::mqtt::{dps_username, hub_username};
use dpskit_core::topic::ServiceTopic;
use emulator_support::*;
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::{QoS, SubscribeReasonCode};
use serde_json::Value;
use std::io::BufRead;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `AZ_IOT_HUB_CLIENT_C2D_SUBSCRIBE_TOPIC` in azure-sdk-for-c (`az_iot_hub_client_c2d.c`).
const C2D_SUBSCRIBE_TOPIC: &str = "devices/+/messages/devicebound/#";
/// The SDK's twin topics (`az_iot_hub_client_twin.c`), with the request IDs its sample uses.
const TWIN_GET: &str = "$iothub/twin/GET/?$rid=get_twin";
const TWIN_PATCH_SUBSCRIBE: &str = "$iothub/twin/PATCH/properties/desired/#";
const TWIN_RESPONSE_SUBSCRIBE: &str = "$iothub/twin/res/#";
/// The SDK's register topic (`az_iot_provisioning_client.c`); its sample publishes it with a
/// zero-length payload.
const REGISTER: &str = "$dps/registrations/PUT/iotdps-register/?$rid=1";

fn granted(code: SubscribeReasonCode) -> bool {
    matches!(code, SubscribeReasonCode::Success(QoS::AtLeastOnce))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2d_subscription_with_plus_is_resolved_to_the_devices_own_id() {
    let emu = Emu::start().await;
    let events = emu.record_events();
    let mut a = provisioned(&emu, "csdk-a").await;
    let mut b = provisioned(&emu, "csdk-b").await;
    assert!(granted(a.subscribe(C2D_SUBSCRIBE_TOPIC).await));
    assert!(granted(b.subscribe(C2D_SUBSCRIBE_TOPIC).await));
    let e = events
        .wait_for(&["\"kind\":\"info\"", "csdk-a", "resolved to"])
        .await;
    assert_eq!(e["filter"], C2D_SUBSCRIBE_TOPIC);

    // Each device gets its own messages and never the other's.
    let admin = emu.admin();
    tokio::task::spawn_blocking(move || {
        admin.send_c2d("csdk-b", "for b", &[])?;
        admin.send_c2d("csdk-a", "for a", &[])
    })
    .await
    .unwrap()
    .unwrap();
    let (topic_b, body_b) = b.next_publish().await;
    assert_eq!(body_b, b"for b");
    assert!(
        topic_b.starts_with("devices/csdk-b/messages/devicebound/"),
        "{topic_b}"
    );
    // The first message a receives is its own: b's did not reach it.
    let (topic_a, body_a) = a.next_publish().await;
    assert_eq!(body_a, b"for a");
    assert!(
        topic_a.starts_with("devices/csdk-a/messages/devicebound/"),
        "{topic_a}"
    );

    // The registry shows the filter as resolved; another device's ID is still refused.
    let admin = emu.admin();
    let devices = tokio::task::spawn_blocking(move || admin.devices())
        .await
        .unwrap()
        .unwrap();
    let a_row = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deviceId"] == "csdk-a")
        .unwrap();
    assert_eq!(
        a_row["subscriptions"],
        serde_json::json!(["devices/csdk-a/messages/devicebound/#"])
    );
    assert_eq!(
        a.subscribe("devices/csdk-b/messages/devicebound/#").await,
        SubscribeReasonCode::Failure
    );
    // Unsubscribing the filter as sent removes what it was resolved to.
    a.unsubscribe(C2D_SUBSCRIBE_TOPIC).await;
    let admin = emu.admin();
    let queued = tokio::task::spawn_blocking(move || admin.send_c2d("csdk-a", "queued", &[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(queued["delivered"], false);
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_an_empty_body_or_without_registration_id_is_accepted() {
    let emu = Emu::start().await;
    let events = emu.record_events();
    for (id, body) in [
        ("csdk-empty", Vec::new()),
        (
            "csdk-payload-only",
            br#"{"payload":{"modelId":"dtmi:com:example:Thermostat;1"}}"#.to_vec(),
        ),
    ] {
        let key = device_key(id);
        let mut m = emu.dps_session(SCOPE, id, &key).await;
        m.publish(REGISTER, body).await;
        let first = dps_answer(&mut m).await;
        assert_eq!(
            first.status,
            202,
            "{}",
            String::from_utf8_lossy(&first.body)
        );
        let op = first.status_body().operation_id.unwrap();
        send_poll(&m, "2", &op).await;
        let done = dps_answer(&mut m).await;
        assert_eq!(done.status, 200);
        let state = done.status_body().registration_state.unwrap();
        assert_eq!(state.device_id.as_deref(), Some(id));
        // And the device is in the hub.
        hub_connect(&emu.tls, emu.port(), id, &key).await.unwrap();
    }
    events
        .wait_for(&[
            "\"kind\":\"info\"",
            "csdk-empty",
            "register request with an empty body",
        ])
        .await;
    events
        .wait_for(&[
            "csdk-payload-only",
            "register request without registrationId",
        ])
        .await;

    // A registrationId that disagrees with the user name and token is still refused, with why.
    let id = "csdk-other";
    let mut m = emu.dps_session(SCOPE, id, &device_key(id)).await;
    m.publish(REGISTER, br#"{"registrationId":"CSDK-OTHER"}"#.to_vec())
        .await;
    let a = dps_answer(&mut m).await;
    assert_eq!(a.status, 400);
    assert!(
        a.error()
            .message
            .unwrap()
            .contains("they differ only in case"),
        "{:?}",
        a.error()
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_json_has_version_last_as_iot_hub_writes_it() {
    let emu = Emu::start().await;
    let id = "csdk-twin";
    let mut hub = provisioned(&emu, id).await;
    assert!(granted(hub.subscribe(TWIN_RESPONSE_SUBSCRIBE).await));
    assert!(granted(hub.subscribe(TWIN_PATCH_SUBSCRIBE).await));

    // The desired patch the SDK's twin sample waits for.
    let admin = emu.admin();
    tokio::task::spawn_blocking(move || {
        admin.twin("csdk-twin", Some(serde_json::json!({ "device_count": 10 })))
    })
    .await
    .unwrap()
    .unwrap();
    let (t, body) = hub.next_publish().await;
    assert_eq!(
        ServiceTopic::parse(&t).unwrap(),
        ServiceTopic::DesiredPatch { version: Some(2) }
    );
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"device_count":10,"$version":2}"#
    );

    // Twin GET (empty payload, as the SDK sends it): every section ends with its $version.
    hub.publish(TWIN_GET, Vec::new()).await;
    let (t, body) = hub.next_publish().await;
    assert_eq!(t, "$iothub/twin/res/200/?$rid=get_twin");
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"desired":{"device_count":10,"$version":2},"reported":{"$version":1}}"#
    );
    emu.shutdown().await;
}

/// Paho's CONNECT for MQTT 3.1 (`MQIsdp`, level 3), which its C client sends after a refused
/// 3.1.1 CONNECT, for client ID and user name `id` and password `password`.
fn mqtt31_connect(id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x06];
    body.extend_from_slice(b"MQIsdp");
    body.extend_from_slice(&[0x03, 0xc2, 0x00, 0xf0]); // level 3; user, password, clean; 240 s
    for field in [id, username, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_protocol_levels_get_connack_1_and_x509_is_said_to_be_unemulated() {
    let emu = Emu::start().await;
    let events = emu.record_events();
    let id = "csdk-paho";
    let key = device_key(id);
    let password = dps_token(&key, SCOPE, id, now() + 3600);

    // MQTT 3.1, byte for byte.
    let mut raw = raw_tls(&emu).await;
    raw.write_all(&mqtt31_connect(id, &dps_username(SCOPE, id), &password))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(
        connack,
        [0x20, 0x02, 0x00, 0x01],
        "CONNACK 1, unacceptable protocol version"
    );
    let e = events.wait_for(&["protocol refused", "MQIsdp"]).await;
    assert_eq!(e["kind"], "rejected");

    // MQTT 5: the same answer, in the 3.1.1 format.
    let mut raw = raw_tls(&emu).await;
    let mut c = Connect::new(id);
    c.protocol = rumqttc::mqttbytes::Protocol::V5;
    let mut out = bytes::BytesMut::new();
    Packet::Connect(c).write(&mut out, usize::MAX).unwrap();
    raw.write_all(&out).await.unwrap();
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x01]);
    events.wait_for(&["protocol refused", "MQTT 5"]).await;

    // An X.509 device: user name, no password.
    let x509 = "csdk-x509";
    let mut raw = raw_tls(&emu).await;
    let mut c = Connect::new(x509);
    c.set_login(hub_username(HUB, x509), "");
    let mut out = bytes::BytesMut::new();
    Packet::Connect(c).write(&mut out, usize::MAX).unwrap();
    assert_eq!(out[9] & 0xc0, 0x80, "user name flag only, no password");
    raw.write_all(&out).await.unwrap();
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x05]);
    let e = events.wait_for(&["CONNACK 5", x509]).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("X.509 (client certificate) authentication is not emulated"),
        "{e}"
    );
    emu.shutdown().await;
}

/// `dpskit cloud events --all` (the real binary) shows the three cases a user of another SDK
/// needs to see: a wildcard resolved, an empty register body, a protocol refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_events_all_shows_what_was_adapted_or_refused() {
    let emu = Emu::start().await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(["cloud", "events", "--all", "--state-dir"])
        .arg(emu.dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The follower subscribes on its own time: knock (a refused plain-TCP connection makes an
    // event) until it prints something.
    let mut seen: Vec<String> = Vec::new();
    while seen.is_empty() {
        let tcp = tokio::net::TcpStream::connect(emu.handle.addr())
            .await
            .unwrap();
        drop(tcp);
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    // The three cases.
    let mut hub = provisioned(&emu, "csdk-events").await;
    assert!(granted(hub.subscribe(C2D_SUBSCRIBE_TOPIC).await));
    let id = "csdk-events-2";
    let key = device_key(id);
    let mut m = emu.dps_session(SCOPE, id, &key).await;
    m.publish(REGISTER, Vec::new()).await;
    assert_eq!(dps_answer(&mut m).await.status, 202);
    let mut raw = raw_tls(&emu).await;
    raw.write_all(&mqtt31_connect(id, &dps_username(SCOPE, id), "x"))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    raw.read_exact(&mut connack).await.unwrap();

    let wanted = [
        "resolved to",
        "register request with an empty body",
        "protocol refused",
    ];
    let found = |seen: &[String], w: &str| seen.iter().any(|l| l.contains(w));
    while !wanted.iter().all(|w| found(&seen, w)) {
        match rx.recv_timeout(WAIT) {
            Ok(l) => seen.push(l),
            Err(_) => panic!(
                "dpskit cloud events --all did not show {wanted:?}; it printed:\n{}",
                seen.join("\n")
            ),
        }
    }
    for l in &seen {
        let v: Value = serde_json::from_str(l).expect("JSON lines");
        assert!(v["kind"].is_string() && v["time"].is_string(), "{l}");
    }
    let _ = child.kill();
    let _ = child.wait();
    emu.shutdown().await;
}
