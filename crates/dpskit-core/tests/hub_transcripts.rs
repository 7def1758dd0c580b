//! IoT Hub transcripts: (time, event in) → (actions out), exact; plus the wire formats the
//! emulator shares (telemetry property bags, C2D topics, methods, twin).
//!
//! The token uses the reference's hub SAS vector (V1 device key, `myhub.azure-devices.net`,
//! `se=1700000000`): the client connects at `T0` so its token expires exactly then.

use dpskit_core::hub::{
    HubClient, HubConfig, HubError, HubOutput, Message, Twin, MAX_TELEMETRY_BYTES,
};
use dpskit_core::mqtt::{Action, Event, QoS, Username};
use dpskit_core::topic::{is_empty_body, DeviceTopic, PropertyBag, ServiceTopic};
use dpskit_core::{DeviceKey, SasToken};
use serde_json::json;

const KEY: &str = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=";
const ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
const HUB: &str = "myhub.azure-devices.net";
const T0: u64 = 1_699_996_400_000;
const PASSWORD: &str = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6&sig=tPZ623IifpFm%2BRIARy2du9tPkfGB%2Fbk8pzj0ebs%2FiHo%3D&se=1700000000";

fn key() -> DeviceKey {
    DeviceKey::parse(KEY, "device key").unwrap()
}

fn client_for(device: &str) -> HubClient {
    HubClient::new(HubConfig::new(HUB, device, key())).unwrap()
}

fn client() -> HubClient {
    client_for(ID)
}

fn render(a: &Action<HubOutput>) -> String {
    let qos = |q: &QoS| *q as u8;
    match a {
        Action::Connect(c) | Action::Reconnect(c) => format!(
            "{} {}:{} id={} user={} pass={} clean={} ka={}",
            if matches!(a, Action::Connect(_)) {
                "CONNECT"
            } else {
                "RECONNECT"
            },
            c.host,
            c.port,
            c.client_id,
            c.username,
            c.password,
            c.clean_session as u8,
            c.keep_alive_secs
        ),
        Action::Subscribe { filter, qos: q } => format!("SUB q{} {filter}", qos(q)),
        Action::Publish(p) => format!(
            "PUB q{} {} {}",
            qos(&p.qos),
            p.topic,
            String::from_utf8_lossy(&p.payload)
        ),
        Action::Disconnect => "DISCONNECT".into(),
        Action::Output(o) => format!("OUT {o:?}"),
    }
}

fn feed(c: &mut HubClient, now: u64, e: Event<'_>) -> Vec<String> {
    c.handle(now, e).iter().map(render).collect()
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

fn connected() -> HubClient {
    let mut c = client();
    c.handle(T0, Event::Start);
    c.handle(T0, CONNACK_OK);
    c
}

#[test]
fn connect_subscribe_and_twin_get() {
    let mut c = client();
    let user = format!(
        "{HUB}/{ID}/?api-version=2021-04-12&DeviceClientType=dpskit%2F{}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        feed(&mut c, T0, Event::Start),
        [format!(
            "CONNECT {HUB}:8883 id={ID} user={user} pass={PASSWORD} clean=0 ka=240"
        )]
    );
    assert_eq!(
        feed(&mut c, T0 + 100, CONNACK_OK),
        [
            "OUT Connected { session_present: false }".to_string(),
            format!("SUB q1 devices/{ID}/messages/devicebound/#"),
            "SUB q1 $iothub/methods/POST/#".into(),
            "SUB q1 $iothub/twin/res/#".into(),
            "SUB q1 $iothub/twin/PATCH/properties/desired/#".into(),
            "PUB q1 $iothub/twin/GET/?$rid=1 ".into(),
        ]
    );
    assert!(c.is_connected());
    // The emulator recognises the username as a hub connection.
    let Some(Username::Hub {
        host, device_id, ..
    }) = Username::parse(&user)
    else {
        panic!()
    };
    assert_eq!((host.as_str(), device_id.as_str()), (HUB, ID));
}

#[test]
fn twin_versions_are_tracked() {
    let mut c = connected();
    assert_eq!(c.desired_version(), None);
    // GET answer (rid 1 was sent on connect).
    let doc = r#"{"desired":{"interval":10,"$version":4},"reported":{"fw":"1.0","$version":2}}"#;
    let out = c.handle(T0 + 200, publish("$iothub/twin/res/200/?$rid=1", doc));
    let [Action::Output(HubOutput::Twin { rid, twin })] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (
            rid.as_str(),
            twin.desired_version(),
            twin.reported_version()
        ),
        ("1", Some(4), Some(2))
    );
    assert_eq!(twin.desired["interval"], 10);
    assert_eq!(c.desired_version(), Some(4));

    // A newer desired patch is delivered; its $version comes from the body.
    let out = feed(
        &mut c,
        T0 + 300,
        publish(
            "$iothub/twin/PATCH/properties/desired/?$version=5",
            r#"{"interval":30,"$version":5}"#,
        ),
    );
    assert_eq!(
        out,
        [
            r#"OUT DesiredPatch { version: Some(5), patch: Object {"$version": Number(5), "interval": Number(30)} }"#
        ]
    );
    assert_eq!(c.desired_version(), Some(5));
    // The same version again (or an older one) is already applied.
    let out = feed(
        &mut c,
        T0 + 400,
        publish(
            "$iothub/twin/PATCH/properties/desired/?$version=5",
            r#"{"interval":30,"$version":5}"#,
        ),
    );
    assert_eq!(
        out,
        [
            r#"OUT Ignored { topic: "$iothub/twin/PATCH/properties/desired/?$version=5", reason: "desired $version 5 is already applied (have 5)" }"#
        ]
    );

    // Reported PATCH → 204 with the new $version (the DOC-TUTMQTT trace form).
    let p = c
        .patch_reported(T0 + 500, &json!({"fw": "1.1", "old": null}))
        .unwrap();
    assert_eq!(p.topic, "$iothub/twin/PATCH/properties/reported/?$rid=2");
    assert_eq!(p.payload, br#"{"fw":"1.1","old":null}"#);
    assert_eq!(c.next_deadline(), Some(T0 + 30_500));
    let out = feed(
        &mut c,
        T0 + 600,
        publish("$iothub/twin/res/204/?$rid=2&$version=3", ""),
    );
    assert_eq!(out, [r#"OUT ReportedAck { rid: "2", version: Some(3) }"#]);
    // An answer nobody waits for.
    let out = feed(
        &mut c,
        T0 + 700,
        publish("$iothub/twin/res/204/?$rid=2&$version=3", ""),
    );
    assert_eq!(
        out,
        [
            r#"OUT Ignored { topic: "$iothub/twin/res/204/?$rid=2&$version=3", reason: "no twin request with $rid \"2\" is waiting" }"#
        ]
    );
    // Errors and timeouts.
    let g = c.get_twin(T0 + 800);
    assert_eq!(g.topic, "$iothub/twin/GET/?$rid=3");
    assert_eq!(
        feed(
            &mut c,
            T0 + 900,
            publish("$iothub/twin/res/429/?$rid=3", "")
        ),
        [r#"OUT TwinFailed { rid: "3", error: Status { status: 429 } }"#]
    );
    c.get_twin(T0 + 1_000);
    assert_eq!(feed(&mut c, T0 + 30_999, Event::Tick), Vec::<String>::new());
    assert_eq!(
        feed(&mut c, T0 + 31_000, Event::Tick),
        [r#"OUT TwinFailed { rid: "4", error: Timeout { secs: 30 } }"#]
    );
    assert_eq!(
        HubError::Status { status: 429 }.to_string(),
        "IoT Hub answered the twin request with 429: IoT Hub throttled the device; retry later"
    );
}

#[test]
fn twin_get_after_reconnect_supersedes_patches_seen_offline() {
    let mut c = connected();
    c.handle(
        T0,
        publish(
            "$iothub/twin/res/200/?$rid=1",
            r#"{"desired":{"$version":4},"reported":{"$version":1}}"#,
        ),
    );
    c.handle(T0 + 1_000, Event::Disconnected { random: 0 });
    let at = c.next_deadline().unwrap();
    c.handle(at, Event::Tick);
    let out = feed(&mut c, at, CONNACK_OK);
    assert_eq!(out.last().unwrap(), "PUB q1 $iothub/twin/GET/?$rid=2 ");
    // While away, desired moved to 7; the GET says so, and a late patch 6 is stale.
    c.handle(
        at,
        publish(
            "$iothub/twin/res/200/?$rid=2",
            r#"{"desired":{"a":1,"$version":7},"reported":{"$version":1}}"#,
        ),
    );
    assert_eq!(c.desired_version(), Some(7));
    let out = c.handle(
        at,
        publish(
            "$iothub/twin/PATCH/properties/desired/?$version=6",
            r#"{"a":0,"$version":6}"#,
        ),
    );
    assert!(matches!(
        &out[..],
        [Action::Output(HubOutput::Ignored { .. })]
    ));
}

#[test]
fn method_round_trip() {
    let mut c = connected();
    // The hub → device request, built as the emulator builds it.
    let t = ServiceTopic::MethodRequest {
        name: "reboot".into(),
        rid: "1f".into(),
    }
    .to_topic();
    assert_eq!(t, "$iothub/methods/POST/reboot/?$rid=1f");
    let out = feed(&mut c, T0, publish(&t, r#"{"delay":5}"#));
    assert_eq!(
        out,
        [
            r#"OUT MethodRequest { name: "reboot", rid: "1f", payload: [123, 34, 100, 101, 108, 97, 121, 34, 58, 53, 125] }"#
        ]
    );
    let resp = c.method_response("1f", 200, br#"{"ok":true}"#).unwrap();
    assert_eq!(
        (resp.topic.as_str(), resp.qos),
        ("$iothub/methods/res/200/?$rid=1f", QoS::AtLeastOnce)
    );
    // The emulator reads it back.
    assert_eq!(
        DeviceTopic::parse(&resp.topic).unwrap(),
        DeviceTopic::MethodResponse {
            status: 200,
            rid: "1f".into()
        }
    );
    // Python's form with a UUID rid.
    assert_eq!(
        DeviceTopic::parse("$iothub/methods/res/404/?$rid=5b2a1c9e-0d4f-4e8a-b7c6-3f2e1d0c9b8a")
            .unwrap(),
        DeviceTopic::MethodResponse {
            status: 404,
            rid: "5b2a1c9e-0d4f-4e8a-b7c6-3f2e1d0c9b8a".into()
        }
    );
    let big = vec![b'x'; 128 * 1024 + 1];
    assert!(matches!(
        c.method_response("1", 200, &big),
        Err(HubError::TooLarge { .. })
    ));
}

#[test]
fn telemetry_matches_the_python_sdk_byte_for_byte() {
    let c = client_for("<id>");
    let m = Message::json(br#"{"t":21.5}"#.to_vec())
        .with_message_id("m-1")
        .with_property("level", "warn ing");
    let p = c.telemetry(&m).unwrap();
    assert_eq!(p.topic, "devices/<id>/messages/events/%24.mid=m-1&%24.ct=application%2Fjson&%24.ce=utf-8&level=warn%20ing");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    // The emulator parses it back into the same message.
    let DeviceTopic::Telemetry {
        device_id,
        properties,
    } = DeviceTopic::parse(&p.topic).unwrap()
    else {
        panic!()
    };
    assert_eq!(device_id, "<id>");
    assert_eq!(Message::from_properties(p.payload.clone(), properties), m);
    // No properties at all: the bare events topic.
    assert_eq!(
        c.telemetry(&Message::new(b"x".to_vec())).unwrap().topic,
        "devices/<id>/messages/events/"
    );
}

#[test]
fn telemetry_checks() {
    let c = client();
    assert!(c
        .telemetry(&Message::new(vec![0u8; MAX_TELEMETRY_BYTES]))
        .is_ok());
    let e = c
        .telemetry(&Message::new(vec![0u8; MAX_TELEMETRY_BYTES + 1]))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "telemetry message: 262145 bytes; IoT Hub accepts at most 262144 bytes"
    );
    let e = c
        .telemetry(&Message::new(b"x".to_vec()).with_property("$.ct", "text/plain"))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("message property \"$.ct\": names starting with '$.'"),
        "{e}"
    );
}

#[test]
fn server_side_parses_python_telemetry_forms() {
    // Custom properties only: Python writes `events/&k=v`.
    let DeviceTopic::Telemetry { properties, .. } =
        DeviceTopic::parse("devices/d1/messages/events/&level=warn%20ing").unwrap()
    else {
        panic!()
    };
    assert_eq!(properties.value("level"), Some("warn ing"));
    // `$` literal or `%24`, both the same system property.
    for t in [
        "devices/d1/messages/events/$.ct=application%2Fjson",
        "devices/d1/messages/events/%24.ct=application%2Fjson",
    ] {
        let DeviceTopic::Telemetry { properties, .. } = DeviceTopic::parse(t).unwrap() else {
            panic!()
        };
        assert_eq!(
            Message::from_properties(vec![], properties)
                .content_type
                .as_deref(),
            Some("application/json")
        );
    }
    // Twin GET with Python's single-space body.
    assert_eq!(
        DeviceTopic::parse("$iothub/twin/GET/?$rid=0b6c").unwrap(),
        DeviceTopic::TwinGet { rid: "0b6c".into() }
    );
    assert!(is_empty_body(b" "));
    assert_eq!(
        DeviceTopic::parse("$iothub/twin/PATCH/properties/reported/?$rid=0b6c").unwrap(),
        DeviceTopic::TwinPatchReported { rid: "0b6c".into() }
    );
    // Python's hub username (query values encoded, host and ID not).
    let u = "localhost/d1/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0%28Python%203.11%29";
    let Some(Username::Hub {
        host,
        device_id,
        params,
    }) = Username::parse(u)
    else {
        panic!()
    };
    assert_eq!((host.as_str(), device_id.as_str()), ("localhost", "d1"));
    assert_eq!(
        params[1].1,
        "azure-iot-device-iothub-py/2.14.0(Python 3.11)"
    );
}

#[test]
fn c2d_from_the_tutorial_topic() {
    // DOC-TUTMQTT's delivery topic; the reference elides the end of the message ID, so the
    // tail used here is made up.
    let topic = "devices/mqtt-dev-01/messages/devicebound/%24.mid=d411e727-3d4b-4d2a-9b0e-7f6c5e4d3c2b&%24.to=%2Fdevices%2Fmqtt-dev-01%2Fmessages%2Fdevicebound&%24.ce=utf-8&iothub-ack=none";
    let mut c = client_for("mqtt-dev-01");
    c.handle(T0, Event::Start);
    c.handle(T0, CONNACK_OK);
    let out = c.handle(T0, publish(topic, "hello"));
    let [Action::Output(HubOutput::C2d(m))] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        m.message_id.as_deref(),
        Some("d411e727-3d4b-4d2a-9b0e-7f6c5e4d3c2b")
    );
    assert_eq!(
        m.to.as_deref(),
        Some("/devices/mqtt-dev-01/messages/devicebound")
    );
    assert_eq!(m.content_encoding.as_deref(), Some("utf-8"));
    assert_eq!(m.ack.as_deref(), Some("none"));
    assert!(m.properties.is_empty());
    assert_eq!(m.body, b"hello");
    // The emulator's builder reproduces the same topic from the message.
    assert_eq!(m.to_c2d("mqtt-dev-01").unwrap().topic, topic);
    // Addressed to someone else: dropped, with a reason.
    let out = c.handle(T0, publish("devices/other/messages/devicebound/a=1", "x"));
    assert!(matches!(
        &out[..],
        [Action::Output(HubOutput::Ignored { .. })]
    ));
}

#[test]
fn c2d_null_versus_empty_values() {
    let mut c = connected();
    let out = c.handle(
        T0,
        publish(
            &format!("devices/{ID}/messages/devicebound/?prop1&prop2=&prop3=a%20string"),
            "",
        ),
    );
    let [Action::Output(HubOutput::C2d(m))] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(m.properties.get("prop1"), Some(None));
    assert_eq!(m.properties.get("prop2"), Some(Some("")));
    assert_eq!(m.properties.get("prop3"), Some(Some("a string")));
    assert_eq!(m.properties.get("prop4"), None);
    // Building keeps the distinction.
    let mut bag = PropertyBag::new();
    bag.push_null("prop1")
        .push("prop2", "")
        .push("prop3", "a string");
    let t = ServiceTopic::C2d {
        device_id: ID.into(),
        properties: bag,
    }
    .to_topic();
    assert_eq!(
        t,
        format!("devices/{ID}/messages/devicebound/prop1&prop2=&prop3=a%20string")
    );
    // No property bag at all.
    let out = c.handle(
        T0,
        publish(&format!("devices/{ID}/messages/devicebound"), "b"),
    );
    assert!(
        matches!(&out[..], [Action::Output(HubOutput::C2d(m))] if m.properties.is_empty() && m.body == b"b")
    );
}

#[test]
fn token_renewal_reconnects_120_s_before_expiry() {
    let mut c = connected();
    // Token from T0 expires at 1_700_000_000; renewal is due 120 s earlier.
    let renew = (1_700_000_000 - 120) * 1000;
    assert_eq!(c.next_deadline(), Some(T0 + 30_000)); // the twin GET sent on connect
    c.handle(
        T0 + 10,
        publish(
            "$iothub/twin/res/200/?$rid=1",
            r#"{"desired":{"$version":1},"reported":{"$version":1}}"#,
        ),
    );
    assert_eq!(c.next_deadline(), Some(renew));
    assert!(c.handle(renew - 1, Event::Tick).is_empty());
    // A request in flight is failed rather than left hanging across the reconnect.
    c.get_twin(renew - 1);
    let out = c.handle(renew, Event::Tick);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0],
        Action::Output(HubOutput::TwinFailed {
            rid: "2".into(),
            error: HubError::ConnectionLost
        })
    );
    let Action::Reconnect(p) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(p.token_expiry, 1_700_000_000 - 120 + 3600);
    let t = SasToken::parse(&p.password).unwrap();
    assert_eq!(t.expiry, 1_700_003_480);
    assert!(t.verify(&key()));
    assert_eq!(t.skn, None);
    assert!(!c.is_connected());
    c.handle(renew + 50, CONNACK_OK);
    assert!(c.is_connected());
    assert_eq!(c.next_deadline(), Some(renew + 50 + 30_000));
    c.handle(
        renew + 60,
        publish(
            "$iothub/twin/res/200/?$rid=3",
            r#"{"desired":{"$version":1},"reported":{}}"#,
        ),
    );
    assert_eq!(c.next_deadline(), Some((1_700_003_480 - 120) * 1000));
}

#[test]
fn reconnect_backoff_grows_is_capped_and_resets_after_a_stable_connection() {
    let mut cfg = HubConfig::new(HUB, ID, key());
    cfg.twin_get_on_connect = false;
    let mut c = HubClient::new(cfg).unwrap();
    c.handle(T0, Event::Start);
    let mut now = T0;
    // Connect attempts keep failing: ceilings 1, 2, 4, … s, capped at 120 s; equal jitter
    // keeps each delay within [ceiling/2, ceiling].
    for (n, random) in [0u32, u32::MAX, 7, 123_456, u32::MAX, 0, 99, u32::MAX, 5, 1]
        .into_iter()
        .enumerate()
    {
        let out = c.handle(now, Event::Disconnected { random });
        let [Action::Output(HubOutput::Disconnected { reconnect_at_ms })] = &out[..] else {
            panic!("{out:?}")
        };
        let ceiling = (1_000u64 << n).min(120_000);
        let delay = reconnect_at_ms - now;
        assert!(
            delay >= ceiling - ceiling / 2 && delay <= ceiling,
            "attempt {n}: {delay} ms, ceiling {ceiling}"
        );
        if random == 0 {
            assert_eq!(delay, ceiling - ceiling / 2);
        }
        now = *reconnect_at_ms;
        assert!(c.handle(now - 1, Event::Tick).is_empty());
        assert!(matches!(
            &c.handle(now, Event::Tick)[..],
            [Action::Connect(_)]
        ));
    }
    // A short-lived connection does not reset the attempts …
    c.handle(now, CONNACK_OK);
    now += 59_999;
    let out = c.handle(now, Event::Disconnected { random: 0 });
    let [Action::Output(HubOutput::Disconnected { reconnect_at_ms })] = &out[..] else {
        panic!()
    };
    assert_eq!(reconnect_at_ms - now, 60_000);
    now = *reconnect_at_ms;
    c.handle(now, Event::Tick);
    // … a stable one (60 s) does.
    c.handle(now, CONNACK_OK);
    now += 60_000;
    let out = c.handle(now, Event::Disconnected { random: 0 });
    let [Action::Output(HubOutput::Disconnected { reconnect_at_ms })] = &out[..] else {
        panic!()
    };
    assert_eq!(reconnect_at_ms - now, 500);
}

#[test]
fn refused_connack_is_explained_then_retried() {
    let mut c = client();
    c.handle(T0, Event::Start);
    let out = feed(
        &mut c,
        T0,
        Event::ConnAck {
            return_code: 5,
            session_present: false,
        },
    );
    assert_eq!(out, ["OUT ConnectRefused(ConnectRefused { code: 5 })"]);
    let text = HubError::ConnectRefused { code: 5 }.to_string();
    assert!(
        text.contains("not authorized (CONNACK 5)")
            && text.contains("group key")
            && text.contains("SNTP"),
        "{text}"
    );
    // The server closes the socket next; the client backs off and tries again.
    let out = feed(&mut c, T0 + 5, Event::Disconnected { random: 0 });
    assert_eq!(
        out,
        [format!(
            "OUT Disconnected {{ reconnect_at_ms: {} }}",
            T0 + 505
        )]
    );
    assert!(matches!(
        &c.handle(T0 + 505, Event::Tick)[..],
        [Action::Connect(_)]
    ));
}

#[test]
fn drops_fail_pending_twin_requests() {
    let mut c = connected();
    let out = feed(&mut c, T0 + 10, Event::Disconnected { random: 0 });
    assert_eq!(
        out,
        [
            r#"OUT TwinFailed { rid: "1", error: ConnectionLost }"#.to_string(),
            format!("OUT Disconnected {{ reconnect_at_ms: {} }}", T0 + 510),
        ]
    );
}

#[test]
fn setup_errors_name_the_field() {
    let mut cfg = HubConfig::new(HUB, ID, key());
    cfg.token_ttl_secs = 100;
    assert!(HubClient::new(cfg)
        .unwrap_err()
        .to_string()
        .starts_with("hub token lifetime: 100 s"));
    let e = HubClient::new(HubConfig::new(HUB, "a/b", key())).unwrap_err();
    assert!(e.to_string().starts_with("device ID: \"a/b\""), "{e}");
    let mut cfg = HubConfig::new(HUB, ID, key());
    cfg.keep_alive_secs = 0;
    assert!(HubClient::new(cfg).is_err());
}

#[test]
fn twin_documents_parse_with_or_without_parts() {
    let t = Twin::from_json(br#"{"desired":{"$version":3}}"#).unwrap();
    assert_eq!((t.desired_version(), t.reported_version()), (Some(3), None));
    assert!(Twin::from_json(b" ").is_err());
    // Emulator builders for twin answers.
    assert_eq!(
        ServiceTopic::TwinResponse {
            status: 204,
            rid: "0".into(),
            version: Some(2)
        }
        .to_topic(),
        "$iothub/twin/res/204/?$rid=0&$version=2"
    );
    assert_eq!(
        ServiceTopic::DesiredPatch { version: Some(8) }.to_topic(),
        "$iothub/twin/PATCH/properties/desired/?$version=8"
    );
}
