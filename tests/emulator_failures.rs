//! Bad input to the emulator: each case is refused and explained in plain words (in the DPS
//! 401 body and in the event stream), and the emulator keeps serving everyone else.

mod emulator_support;

use base64::Engine;
use dpskit_core::dps::json::DeviceRegistration;
use dpskit_core::mqtt::{dps_username, hub_username};
use dpskit_core::sas::dps_resource;
use dpskit_core::topic::{self, DeviceTopic};
use dpskit_core::DeviceKey;
use emulator_support::*;
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::{ConnectReturnCode, ConnectionError, QoS, SubscribeReasonCode};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Registers with `password` and returns the DPS answer to the register request.
async fn register_with(emu: &Emu, scope: &str, id: &str, password: &str) -> DpsAnswer {
    let mut m = dps_connect(&emu.tls, emu.port(), scope, id, password)
        .await
        .unwrap();
    send_register(&m, "1", id).await;
    dps_answer(&mut m).await
}

fn message(a: &DpsAnswer) -> String {
    a.error().message.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dps_token_failures_are_answered_401_with_the_reason() {
    let emu = Emu::start().await;
    let events = emu.record_events();
    let id = "dev-bad-1";

    // Forged: a key that is no derivation of the group key.
    let forged = DeviceKey::from_bytes([7; 32]);
    let a = register_with(
        &emu,
        SCOPE,
        id,
        &dps_token(&forged, SCOPE, id, now() + 3600),
    )
    .await;
    assert_eq!((a.status, a.error().error_code), (401, Some(401002)));
    assert!(
        message(&a).contains("matches no key derived"),
        "{}",
        message(&a)
    );

    // Expired three hours ago: the device clock.
    let a = register_with(
        &emu,
        SCOPE,
        id,
        &dps_token(&device_key(id), SCOPE, id, now() - 3 * 3600),
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(
        message(&a).contains("token expired 3 h ago; is the device clock set (SNTP)?"),
        "{}",
        message(&a)
    );

    // Signed with the group key itself (pitfall P1).
    let se = now() + 3600;
    let sr = topic::encode_component(&dps_resource(SCOPE, id));
    let sig = base64::engine::general_purpose::STANDARD.encode(
        group_key()
            .derive_bytes(format!("{sr}\n{se}").as_bytes())
            .as_bytes(),
    );
    let token = format!(
        "SharedAccessSignature sr={sr}&sig={}&se={se}&skn=registration",
        topic::encode_component(&sig)
    );
    let a = register_with(&emu, SCOPE, id, &token).await;
    assert_eq!(a.status, 401);
    assert!(
        message(&a)
            .contains("signed with the enrollment group primary key itself; flash the derived key"),
        "{}",
        message(&a)
    );

    // A key derived from the ID plus a newline (`echo` without -n).
    let newline = group_key().derive(&format!("{id}\n"));
    let a = register_with(
        &emu,
        SCOPE,
        id,
        &dps_token(&newline, SCOPE, id, now() + 3600),
    )
    .await;
    assert!(message(&a).contains("trailing newline"), "{}", message(&a));

    // Unknown ID scope.
    let a = register_with(
        &emu,
        "0ne00000FFF",
        id,
        &dps_token(&device_key(id), "0ne00000FFF", id, now() + 3600),
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(
        message(&a).contains("unknown ID scope \"0ne00000FFF\"") && message(&a).contains(SCOPE),
        "{}",
        message(&a)
    );

    // The payload names another registration ID than the user name.
    let key = device_key(id);
    let mut m = emu.dps_session(SCOPE, id, &key).await;
    let body = DeviceRegistration {
        registration_id: "someone-else".into(),
        payload: None,
    }
    .to_json();
    m.publish(
        &DeviceTopic::DpsRegister { rid: "9".into() }.to_topic(),
        body,
    )
    .await;
    let a = dps_answer(&mut m).await;
    assert_eq!((a.status, a.rid.as_str()), (400, "9"));
    assert!(
        message(&a).contains("registration ID in the payload differs from the one in the username"),
        "{}",
        message(&a)
    );

    // Polling another device's (or a made-up) operation: 404, never someone else's result.
    send_poll(&m, "10", "4.0000000000000000.not-yours").await;
    let a = dps_answer(&mut m).await;
    assert_eq!(a.status, 404);

    // Everything is in the event stream too.
    events
        .wait_for(&["rejected", "token expired 3 h ago"])
        .await;
    events.wait_for(&["rejected", "unknown ID scope"]).await;
    // And the emulator still registers good devices.
    assert_eq!(
        register(
            &emu.tls,
            emu.port(),
            "dev-good-1",
            &device_key("dev-good-1")
        )
        .await
        .status,
        200
    );
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_at_connect_mode_gives_connack_5_and_logs_why() {
    let emu = Emu::start_with(|c| c.dps.reject_at_connect = true).await;
    let events = emu.record_events();
    let id = "dev-connack-1";
    let forged = DeviceKey::from_bytes([9; 32]);
    let r = dps_connect(
        &emu.tls,
        emu.port(),
        SCOPE,
        id,
        &dps_token(&forged, SCOPE, id, now() + 60),
    )
    .await;
    assert!(
        matches!(
            r,
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized
            ))
        ),
        "{:?}",
        r.err()
    );
    let e = events.wait_for(&["CONNACK 5", id]).await;
    assert!(e["message"]
        .as_str()
        .unwrap()
        .contains("matches no key derived"));
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refusals_are_explained() {
    let emu = Emu::start().await;
    let events = emu.record_events();

    // A device DPS never registered.
    let id = "dev-unregistered";
    let r = hub_connect(&emu.tls, emu.port(), id, &device_key(id)).await;
    assert!(matches!(
        r,
        Err(ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized
        ))
    ));
    events
        .wait_for(&["CONNACK 5", "must register through DPS first"])
        .await;

    // Registered, but the hub token is signed with the group key's derivation for another ID.
    let id = "dev-hub-1";
    let mut hub = provisioned(&emu, id).await;
    let wrong = device_key("dev-hub-2");
    let r = connect(
        &emu.tls,
        emu.port(),
        id,
        &hub_username(HUB, id),
        &hub_token(&wrong, id),
    )
    .await;
    assert!(matches!(
        r,
        Err(ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized
        ))
    ));
    events
        .wait_for(&["CONNACK 5", "matches no key derived"])
        .await;

    // The DPS token reused for the hub.
    let key = device_key(id);
    let r = connect(
        &emu.tls,
        emu.port(),
        id,
        &hub_username(HUB, id),
        &dps_token(&key, SCOPE, id, now() + 60),
    )
    .await;
    assert!(r.is_err());
    events.wait_for(&["CONNACK 5", "skn=registration"]).await;

    // Subscribing to another device's topics: SUBACK failure, the connection stays.
    let code = hub
        .subscribe("devices/dev-hub-2/messages/devicebound/#")
        .await;
    assert_eq!(code, SubscribeReasonCode::Failure);
    events
        .wait_for(&["subscription refused", "names device \\\"dev-hub-2\\\""])
        .await;
    assert!(matches!(
        hub.subscribe(&topic::c2d_filter(id)).await,
        SubscribeReasonCode::Success(_)
    ));
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_qos2_and_foreign_telemetry_drop_only_that_connection() {
    let emu = Emu::start().await;
    let events = emu.record_events();
    let mut other = provisioned(&emu, "dev-bystander").await;
    assert!(matches!(
        other.subscribe(&topic::c2d_filter("dev-bystander")).await,
        SubscribeReasonCode::Success(_)
    ));

    // > 256 KB telemetry.
    let mut big = provisioned(&emu, "dev-big").await;
    big.publish(
        "devices/dev-big/messages/events/",
        vec![b'x'; 256 * 1024 + 1],
    )
    .await;
    big.closed().await;
    events
        .wait_for(&["dev-big", "262145 bytes exceeds IoT Hub's 256 KB limit"])
        .await;

    // QoS 2.
    let mut q2 = provisioned(&emu, "dev-qos2").await;
    q2.client
        .publish(
            "devices/dev-qos2/messages/events/",
            QoS::ExactlyOnce,
            false,
            b"x".to_vec(),
        )
        .await
        .unwrap();
    q2.closed().await;
    events.wait_for(&["dev-qos2", "QoS 2 PUBLISH"]).await;

    // Telemetry in another device's name.
    let mut spoof = provisioned(&emu, "dev-spoof").await;
    spoof
        .publish("devices/dev-bystander/messages/events/", b"x".to_vec())
        .await;
    spoof.closed().await;
    events
        .wait_for(&["dev-spoof", "can only send as itself"])
        .await;

    // The bystander was not affected.
    other
        .publish(
            "devices/dev-bystander/messages/events/",
            b"still here".to_vec(),
        )
        .await;
    events.wait_for(&["telemetry", "still here"]).await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_drop_that_connection_while_others_keep_working() {
    let emu = Emu::start().await;
    let events = emu.record_events();
    let mut good = provisioned(&emu, "dev-good").await;
    assert!(matches!(
        good.subscribe(&topic::c2d_filter("dev-good")).await,
        SubscribeReasonCode::Success(_)
    ));

    // Garbage instead of CONNECT.
    let mut raw = raw_tls(&emu).await;
    raw.write_all(&[0x10, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        raw.read(&mut buf).await.unwrap_or(0),
        0,
        "the emulator closes the connection"
    );
    events
        .wait_for(&["rejected", "malformed MQTT packet"])
        .await;

    // A valid session that then sends a reserved packet type.
    let id = "dev-garbage";
    let key = device_key(id);
    assert_eq!(register(&emu.tls, emu.port(), id, &key).await.status, 200);
    let mut raw = raw_tls(&emu).await;
    let mut c = Connect::new(id);
    c.set_login(hub_username(HUB, id), hub_token(&key, id));
    let mut out = bytes::BytesMut::new();
    Packet::Connect(c).write(&mut out, usize::MAX).unwrap();
    raw.write_all(&out).await.unwrap();
    let mut connack = [0u8; 4];
    raw.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    raw.write_all(&[0xf0, 0x00]).await.unwrap();
    raw.flush().await.unwrap();
    assert_eq!(raw.read(&mut buf).await.unwrap_or(0), 0);
    events
        .wait_for(&["dev-garbage", "malformed MQTT packet"])
        .await;

    // Not TLS at all.
    let mut plain = tokio::net::TcpStream::connect(emu.handle.addr())
        .await
        .unwrap();
    plain
        .write_all(&[
            0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
        ])
        .await
        .unwrap();
    let _ = plain.read(&mut buf).await;
    events.wait_for(&["TLS handshake failed"]).await;

    // The good device still works both ways.
    good.publish("devices/dev-good/messages/events/", b"ok".to_vec())
        .await;
    events.wait_for(&["telemetry", "dev-good"]).await;
    let admin = emu.admin();
    tokio::task::spawn_blocking(move || admin.send_c2d("dev-good", "ping", &[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(good.next_publish().await.1, b"ping");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_identity_drops_the_first() {
    let emu = Emu::start().await;
    let events = emu.record_events();
    let id = "dev-twice";
    let key = device_key(id);
    let mut first = provisioned(&emu, id).await;
    let mut second = hub_connect(&emu.tls, emu.port(), id, &key).await.unwrap();
    first.closed().await;
    events
        .wait_for(&["disconnected", "replaced this one", "400027"])
        .await;
    // The second connection owns the identity: C2D reaches it.
    assert!(matches!(
        second.subscribe(&topic::c2d_filter(id)).await,
        SubscribeReasonCode::Success(_)
    ));
    let admin = emu.admin();
    tokio::task::spawn_blocking(move || admin.send_c2d("dev-twice", "to the new one", &[]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.next_publish().await.1, b"to the new one");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_queued_c2d_and_method_to_offline_device() {
    let emu = Emu::start_with(|c| c.groups[0].throttle_first_n = 1).await;
    let id = "dev-throttled";
    let key = device_key(id);
    let mut m = emu.dps_session(SCOPE, id, &key).await;
    send_register(&m, "1", id).await;
    let a = dps_answer(&mut m).await;
    assert_eq!((a.status, a.retry_after), (429, Some(0)));
    assert!(message(&a).contains("throttle_first_n"));
    send_register(&m, "2", id).await;
    assert_eq!(dps_answer(&mut m).await.status, 202);
    drop(m);
    assert_eq!(register(&emu.tls, emu.port(), id, &key).await.status, 200);

    // C2D to an offline device waits in its queue and arrives once it subscribes.
    let admin = emu.admin();
    let queued =
        tokio::task::spawn_blocking(move || admin.send_c2d("dev-throttled", "while away", &[]))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        (queued["delivered"].as_bool(), queued["pending"].as_u64()),
        (Some(false), Some(1))
    );
    // A method needs the device online.
    let admin = emu.admin();
    let err = tokio::task::spawn_blocking(move || {
        admin.invoke(
            "dev-throttled",
            "reboot",
            serde_json::Value::Null,
            Some(Duration::from_secs(2)),
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.to_string().contains("not online"), "{err}");
    let mut hub = hub_connect(&emu.tls, emu.port(), id, &key).await.unwrap();
    assert!(matches!(
        hub.subscribe(&topic::c2d_filter(id)).await,
        SubscribeReasonCode::Success(_)
    ));
    assert_eq!(hub.next_publish().await.1, b"while away");
    // A method the device never answers times out with a clear message.
    assert!(matches!(
        hub.subscribe(topic::METHODS_FILTER).await,
        SubscribeReasonCode::Success(_)
    ));
    let admin = emu.admin();
    let err = tokio::task::spawn_blocking(move || {
        admin.invoke(
            "dev-throttled",
            "slow",
            serde_json::Value::Null,
            Some(Duration::from_secs(1)),
        )
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("did not answer \"slow\" within 1 s"),
        "{err}"
    );
    let _ = dps_username(SCOPE, id);
    emu.shutdown().await;
}
