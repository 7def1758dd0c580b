//! The emulator's good paths, with real MQTT clients over real TLS on loopback: DPS
//! registration (202 → poll → 200), telemetry seen through the admin interface and through
//! the `dpskit cloud events` binary, C2D with properties, a direct method, twin GET /
//! reported PATCH / desired push; tokens as different SDKs sign them.

mod emulator_support;

use base64::Engine;
use dpskit_core::dps::json::RegistrationStatus;
use dpskit_core::hub::Message;
use dpskit_core::mqtt::dps_username;
use dpskit_core::sas::dps_resource;
use dpskit_core::topic::{self, DeviceTopic, ServiceTopic};
use dpskit_core::SasToken;
use dpskit_rehearsal::emulator::ManualClock;
use emulator_support::*;
use rumqttc::SubscribeReasonCode;
use serde_json::{json, Value};
use std::io::BufRead;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_telemetry_c2d_method_and_twin() {
    // DPS takes 1 s to assign, on the emulator's clock, which the test moves.
    let clock = ManualClock::starting_now();
    let emu = Emu::start_with(|c| {
        c.dps.retry_after_secs = 1;
        c.dps.assign_delay_ms = 1000;
        c.clock = clock.clone();
    })
    .await;
    let events = emu.record_events();
    let id = "dev-happy-1";
    let key = device_key(id);

    // DPS: register → 202 (assigning, operationId, retry-after) → poll → 200 assigned.
    let mut dps = emu.dps_session(SCOPE, id, &key).await;
    send_register(&dps, "r-1", id).await;
    let first = dps_answer(&mut dps).await;
    assert_eq!(
        (first.status, first.rid.as_str(), first.retry_after),
        (202, "r-1", Some(1))
    );
    let s = first.status_body();
    assert_eq!(s.status, Some(RegistrationStatus::Assigning));
    let op = s.operation_id.unwrap();
    // Polled too early: still assigning, with retry-after again.
    send_poll(&dps, "r-early", &op).await;
    let early = dps_answer(&mut dps).await;
    assert_eq!((early.status, early.retry_after), (202, Some(1)));
    assert_eq!(
        early.status_body().status,
        Some(RegistrationStatus::Assigning)
    );
    clock.advance(Duration::from_secs(1));
    send_poll(&dps, "r-2", &op).await;
    let done = dps_answer(&mut dps).await;
    assert_eq!(done.status, 200);
    let state = done.status_body().registration_state.unwrap();
    assert_eq!(state.status, Some(RegistrationStatus::Assigned));
    assert_eq!(state.assigned_hub.as_deref(), Some(HUB));
    assert_eq!(state.device_id.as_deref(), Some(id));
    assert_eq!(state.substatus.as_deref(), Some("initialAssignment"));
    drop(dps);
    events.wait_for(&["\"kind\":\"registered\"", id]).await;

    // Hub.
    let mut hub = hub_connect(&emu.tls, emu.port(), id, &key).await.unwrap();
    for f in [
        topic::c2d_filter(id).as_str(),
        topic::METHODS_FILTER,
        topic::TWIN_RESPONSES_FILTER,
        topic::DESIRED_FILTER,
    ] {
        assert!(
            matches!(hub.subscribe(f).await, SubscribeReasonCode::Success(_)),
            "{f}"
        );
    }

    // Telemetry with system and application properties (as the Python SDK encodes them).
    let t = Message::json(r#"{"temp":21.5}"#)
        .with_message_id("m-1")
        .with_property("level", "warn ing")
        .to_telemetry(id)
        .unwrap();
    assert!(t.topic.contains("%24.mid=m-1") && t.topic.contains("level=warn%20ing"));
    hub.publish(&t.topic, t.payload.clone()).await;
    let e = events.wait_for(&["\"kind\":\"telemetry\"", "m-1"]).await;
    assert_eq!(e["device"], id);
    assert_eq!(e["contentType"], "application/json");
    assert_eq!(e["properties"]["level"], "warn ing");
    assert_eq!(e["body"], r#"{"temp":21.5}"#);
    // A binary body is logged as base64.
    hub.publish(
        &format!("devices/{id}/messages/events/"),
        vec![0xff, 0x00, 0x80],
    )
    .await;
    let e = events.wait_for(&["bodyBase64"]).await;
    assert_eq!(
        e["bodyBase64"],
        base64::engine::general_purpose::STANDARD.encode([0xff, 0x00, 0x80])
    );

    // C2D with properties, sent through the admin client.
    let admin = emu.admin();
    let sent = tokio::task::spawn_blocking(move || {
        admin.send_c2d(
            "dev-happy-1",
            "hello board",
            &[("color".into(), Some("red".into())), ("flag".into(), None)],
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(sent["delivered"], true);
    let (topic_str, body) = hub.next_publish().await;
    assert_eq!(body, b"hello board");
    let ServiceTopic::C2d {
        device_id,
        properties,
    } = ServiceTopic::parse(&topic_str).unwrap()
    else {
        panic!("{topic_str}")
    };
    assert_eq!(device_id, id);
    let m = Message::from_properties(body, properties);
    assert_eq!(m.properties.value("color"), Some("red"));
    assert_eq!(m.properties.get("flag"), Some(None));
    assert_eq!(
        m.to.as_deref(),
        Some("/devices/dev-happy-1/messages/devicebound")
    );
    assert_eq!(m.message_id.as_deref(), sent["messageId"].as_str());

    // Direct method: the admin call waits while the device answers.
    let admin = emu.admin();
    let call = tokio::task::spawn_blocking(move || {
        admin.invoke(
            "dev-happy-1",
            "reboot",
            json!({"delay": 3}),
            Some(Duration::from_secs(10)),
        )
    });
    let (topic_str, body) = hub.next_publish().await;
    let ServiceTopic::MethodRequest { name, rid } = ServiceTopic::parse(&topic_str).unwrap() else {
        panic!("{topic_str}")
    };
    assert_eq!(name, "reboot");
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"delay": 3})
    );
    hub.publish(
        &DeviceTopic::MethodResponse { status: 200, rid }.to_topic(),
        r#"{"rebooting":true}"#,
    )
    .await;
    let outcome = call.await.unwrap().unwrap();
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.payload, json!({"rebooting": true}));

    // Twin: GET (the Python SDK sends " "), reported PATCH → 204 with $version, desired push.
    hub.publish(&DeviceTopic::TwinGet { rid: "t-1".into() }.to_topic(), " ")
        .await;
    let (topic_str, body) = hub.next_publish().await;
    assert_eq!(
        ServiceTopic::parse(&topic_str).unwrap(),
        ServiceTopic::TwinResponse {
            status: 200,
            rid: "t-1".into(),
            version: None
        }
    );
    let twin: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(twin["desired"]["$version"], 1);
    assert_eq!(twin["reported"]["$version"], 1);
    hub.publish(
        &DeviceTopic::TwinPatchReported { rid: "t-2".into() }.to_topic(),
        r#"{"fw":"1.0.3","net":{"rssi":-61}}"#,
    )
    .await;
    let (topic_str, body) = hub.next_publish().await;
    assert_eq!(
        ServiceTopic::parse(&topic_str).unwrap(),
        ServiceTopic::TwinResponse {
            status: 204,
            rid: "t-2".into(),
            version: Some(2)
        }
    );
    assert!(body.is_empty());
    let admin = emu.admin();
    let after = tokio::task::spawn_blocking(move || {
        admin.twin("dev-happy-1", Some(json!({"interval": 10})))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(after["pushed"], true);
    assert_eq!(
        after["properties"]["reported"],
        json!({"fw":"1.0.3","net":{"rssi":-61},"$version":2})
    );
    let (topic_str, body) = hub.next_publish().await;
    assert_eq!(
        ServiceTopic::parse(&topic_str).unwrap(),
        ServiceTopic::DesiredPatch { version: Some(2) }
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"interval": 10, "$version": 2})
    );

    // The registry view.
    let admin = emu.admin();
    let devices = tokio::task::spawn_blocking(move || admin.devices())
        .await
        .unwrap()
        .unwrap();
    let d = &devices.as_array().unwrap()[0];
    assert_eq!(
        (
            d["deviceId"].as_str(),
            d["connected"].as_bool(),
            d["telemetry"].as_u64()
        ),
        (Some(id), Some(true), Some(2))
    );
    emu.shutdown().await;
}

/// `dpskit cloud events` (the real binary) prints telemetry as JSON lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_events_binary_follows_telemetry() {
    let emu = Emu::start().await;
    let id = "dev-events-1";
    let hub = provisioned(&emu, id).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(["cloud", "events", "--count", "1", "--state-dir"])
        .arg(emu.dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The follower may subscribe after the first message; send until it prints one.
    let mut line = None;
    for i in 0..50 {
        hub.publish(
            &format!("devices/{id}/messages/events/seq={i}"),
            format!("{{\"i\":{i}}}"),
        )
        .await;
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            line = Some(l);
            break;
        }
    }
    let status = child.wait().unwrap();
    let line = line.expect("dpskit cloud events printed a telemetry line");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["device"].as_str()),
        (Some("telemetry"), Some(id))
    );
    assert!(v["properties"]["seq"].is_string());
    assert!(status.success(), "--count 1 ends the follower");

    // The other service-side commands through the binary.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(["cloud", "devices", "--state-dir"])
        .arg(emu.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let devices: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(devices[0]["deviceId"], id);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(["cloud", "twin", "no-such-device", "--state-dir"])
        .arg(emu.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"no-such-device\" is not registered"));
    emu.shutdown().await;
}

/// What C SDKs send (`%2f`, upper-case-insensitive resource) and what the Python SDK sends
/// (no `skn`) are both accepted, and so is a key derived from the secondary group key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_case_escapes_no_skn_and_secondary_key_are_accepted() {
    let emu = Emu::start().await;
    let id = "dev-csdk-1";
    let key = device_key(id);
    let se = now() + 3600;
    let sr = topic::encode_component(&dps_resource(SCOPE, id)).replace("%2F", "%2f");
    assert!(sr.contains("%2f"));
    let sig = base64::engine::general_purpose::STANDARD
        .encode(key.sign(format!("{sr}\n{se}").as_bytes()));
    let token = SasToken {
        sr_encoded: sr,
        sig_base64: sig,
        expiry: se,
        skn: None,
    };
    let mut m = dps_connect(&emu.tls, emu.port(), SCOPE, id, &token.to_string())
        .await
        .unwrap();
    send_register(&m, "1", id).await;
    assert_eq!(
        dps_answer(&mut m).await.status,
        202,
        "lower-case %2f and no skn accepted"
    );

    let id2 = "dev-secondary-1";
    let secondary = dpskit_core::GroupKey::parse(SECONDARY_KEY, "s")
        .unwrap()
        .derive(id2);
    let a = register(&emu.tls, emu.port(), id2, &secondary).await;
    assert_eq!(a.status, 200);
    let mut hub = hub_connect(&emu.tls, emu.port(), id2, &secondary)
        .await
        .unwrap();
    assert!(matches!(
        hub.subscribe(&topic::c2d_filter(id2)).await,
        SubscribeReasonCode::Success(_)
    ));

    // A scope typed in another case still finds the group (DPS scopes are case-insensitive).
    let id3 = "dev-case-1";
    let k3 = device_key(id3);
    let lower = SCOPE.to_ascii_lowercase();
    let mut m = connect(
        &emu.tls,
        emu.port(),
        id3,
        &dps_username(&lower, id3),
        &dps_token(&k3, &lower, id3, now() + 60),
    )
    .await
    .unwrap();
    m.subscribe(topic::DPS_RESPONSES_FILTER).await;
    send_register(&m, "1", id3).await;
    assert_eq!(dps_answer(&mut m).await.status, 202);
    emu.shutdown().await;
}

/// Microsoft's Python SDK and mbedTLS on the ESP32 speak TLS 1.2 only; the emulator serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_only_clients_are_served() {
    let emu = Emu::start().await;
    let tls12 = emu.tls12();
    let id = "dev-tls12";
    let key = device_key(id);
    assert_eq!(register(&tls12, emu.port(), id, &key).await.status, 200);
    let mut hub = hub_connect(&tls12, emu.port(), id, &key).await.unwrap();
    assert!(matches!(
        hub.subscribe(topic::METHODS_FILTER).await,
        SubscribeReasonCode::Success(_)
    ));
    emu.shutdown().await;
}
