//! DPS transcripts: (time, event in) → (actions out, next deadline), exact.
//!
//! Tokens use the reference's self-computed SAS vector (V1 device key, scope `0ne00000000`,
//! `se=1700000000`): the client starts at `T0` so its token expires exactly at 1700000000.
//! Server-side halves use the same `topic`/`json` builders the emulator uses, so a transcript
//! also proves the two directions agree.

use dpskit_core::dps::json::{
    DeviceRegistration, RegistrationOperationStatus, RegistrationState, ServiceError,
};
use dpskit_core::dps::{DpsClient, DpsConfig, DpsError, DpsOutcome, Transient};
use dpskit_core::mqtt::{Action, Event, QoS, Username};
use dpskit_core::topic::{is_empty_body, DeviceTopic, ServiceTopic};
use dpskit_core::{DeviceKey, IdScope, RegistrationId, SasToken};

const KEY: &str = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=";
const ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
const SCOPE: &str = "0ne00000000";
const HOST: &str = "global.azure-devices-provisioning.net";
/// Unix ms such that `T0 / 1000 + 3600 == 1_700_000_000`.
const T0: u64 = 1_699_996_400_000;
const OP: &str = "4.d0a671905ea5b2c8.e7173b7b-0d1f-4b31-a4a7-8d3e1ff5f0d9";
/// The reference's SAS vector, plus `skn=registration` (not signed, so the signature is the same).
const PASSWORD: &str = "SharedAccessSignature sr=0ne00000000%2Fregistrations%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6&sig=UcaBdA4L3Se7NlFQZcBFRndkqyymINWtRUmVT5QYWng%3D&se=1700000000&skn=registration";

fn config() -> DpsConfig {
    DpsConfig::new(
        IdScope::parse(SCOPE).unwrap().0,
        RegistrationId::parse(ID, false).unwrap(),
        DeviceKey::parse(KEY, "device key").unwrap(),
        HOST,
    )
}

fn client() -> DpsClient {
    DpsClient::new(config()).unwrap()
}

fn username() -> String {
    format!(
        "0ne00000000/registrations/{ID}/api-version=2019-03-31&ClientVersion=dpskit%2F{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// One line per action; QoS is printed so "QoS 1 everywhere" is checked on every row.
fn render(a: &Action<DpsOutcome>) -> String {
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
        Action::Output(Ok(a)) => format!(
            "ASSIGNED hub={} device={} substatus={:?} payload={:?} op={}",
            a.assigned_hub,
            a.device_id,
            a.substatus,
            a.payload.as_ref().map(|p| p.to_string()),
            a.operation_id
        ),
        Action::Output(Err(e)) => format!("ERR {e:?}"),
    }
}

struct Step<'a> {
    at: u64,
    event: Event<'a>,
    expect: &'a [&'a str],
    deadline: Option<u64>,
}

fn run(client: &mut DpsClient, steps: &[Step<'_>]) {
    for (i, s) in steps.iter().enumerate() {
        let got: Vec<String> = client.handle(s.at, s.event).iter().map(render).collect();
        assert_eq!(got, s.expect, "step {i} ({:?})", s.event);
        assert_eq!(
            client.next_deadline(),
            s.deadline,
            "deadline after step {i}"
        );
    }
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
const SUBACK_OK: Event<'static> = Event::SubAck { granted: true };
const SUB: &str = "SUB q1 $dps/registrations/res/#";

fn connect_line() -> String {
    format!(
        "CONNECT {HOST}:8883 id={ID} user={} pass={PASSWORD} clean=1 ka=60",
        username()
    )
}

fn register_line(rid: u32) -> String {
    format!(
        "PUB q1 $dps/registrations/PUT/iotdps-register/?$rid={rid} {{\"registrationId\":\"{ID}\"}}"
    )
}

fn poll_line(rid: u32) -> String {
    format!(
        "PUB q1 $dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={OP} "
    )
}

/// A real-shaped final answer (DOC-HTTPS sample fields) with fields this client does not know.
fn assigned_body() -> String {
    format!(
        r#"{{"operationId":"{OP}","status":"assigned","registrationState":{{"x509":{{"enrollmentGroupId":"g","certs":[1,2,{{"a":null}}]}},"registrationId":"{ID}","createdDateTimeUtc":"2022-08-31T22:02:50.5163352Z","assignedHub":"MyExampleHub.azure-devices.net","deviceId":"{ID}","status":"assigned","substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2022-08-31T22:02:50.7370676Z","etag":"IjY5MDAzNTUyLTAwMDAtMDMwMC0wMDAwLTYzMGZkYThhMDAwMCI=","trustBundle":null}},"futureField":[true]}}"#
    )
}

fn assigned_line() -> String {
    format!("ASSIGNED hub=MyExampleHub.azure-devices.net device={ID} substatus=Some(\"initialAssignment\") payload=None op={OP}")
}

#[test]
fn happy_path_two_202s_then_200() {
    let mut c = client();
    let (connect, reg, poll2, poll3) =
        (connect_line(), register_line(1), poll_line(2), poll_line(3));
    let first_202 = format!(r#"{{"operationId":"{OP}","status":"assigning"}}"#);
    let second_202 = format!(
        r#"{{"operationId":"{OP}","status":"assigning","registrationState":{{"registrationId":"{ID}","status":"assigning"}}}}"#
    );
    let done = assigned_body();
    let assigned = assigned_line();
    run(
        &mut c,
        &[
            Step {
                at: T0,
                event: Event::Start,
                expect: &[&connect],
                deadline: None,
            },
            Step {
                at: T0 + 100,
                event: CONNACK_OK,
                expect: &[SUB],
                deadline: None,
            },
            Step {
                at: T0 + 200,
                event: SUBACK_OK,
                expect: &[&reg],
                deadline: Some(T0 + 30_200),
            },
            // 202 with retry-after=3: poll 3 s later.
            Step {
                at: T0 + 300,
                event: publish(
                    "$dps/registrations/res/202/?$rid=1&retry-after=3",
                    &first_202,
                ),
                expect: &[],
                deadline: Some(T0 + 3_300),
            },
            Step {
                at: T0 + 3_299,
                event: Event::Tick,
                expect: &[],
                deadline: Some(T0 + 3_300),
            },
            Step {
                at: T0 + 3_300,
                event: Event::Tick,
                expect: &[&poll2],
                deadline: Some(T0 + 33_300),
            },
            // A late duplicate of the first answer (rid 1) is stale and ignored.
            Step {
                at: T0 + 3_400,
                event: publish(
                    "$dps/registrations/res/202/?$rid=1&retry-after=3",
                    &first_202,
                ),
                expect: &[],
                deadline: Some(T0 + 33_300),
            },
            // 202 without retry-after: the 2 s default.
            Step {
                at: T0 + 3_500,
                event: publish("$dps/registrations/res/202/?$rid=2", &second_202),
                expect: &[],
                deadline: Some(T0 + 5_500),
            },
            Step {
                at: T0 + 5_500,
                event: Event::Tick,
                expect: &[&poll3],
                deadline: Some(T0 + 35_500),
            },
            Step {
                at: T0 + 5_600,
                event: publish("$dps/registrations/res/200/?$rid=3", &done),
                expect: &["DISCONNECT", &assigned],
                deadline: None,
            },
            // Finished: nothing else happens.
            Step {
                at: T0 + 5_700,
                event: Event::Disconnected { random: 0 },
                expect: &[],
                deadline: None,
            },
        ],
    );
    assert!(c.is_done());
    assert_eq!(
        c.outcome().unwrap().as_ref().unwrap().assigned_hub,
        "MyExampleHub.azure-devices.net"
    );
}

#[test]
fn unauthorized_401_is_final_and_explained() {
    let mut c = client();
    let body = r#"{"errorCode":401002,"trackingId":"8ad0463c-9c7a-4a34-a3b2-0c2e9a9d7f11","message":"Invalid certificate.","timestampUtc":"2020-04-10T05:24:22.4718526Z"}"#;
    let (connect, reg) = (connect_line(), register_line(1));
    let err = r#"ERR Unauthorized { error_code: Some(401002), message: Some("Invalid certificate."), tracking_id: Some("8ad0463c-9c7a-4a34-a3b2-0c2e9a9d7f11") }"#;
    run(
        &mut c,
        &[
            Step {
                at: T0,
                event: Event::Start,
                expect: &[&connect],
                deadline: None,
            },
            Step {
                at: T0,
                event: CONNACK_OK,
                expect: &[SUB],
                deadline: None,
            },
            Step {
                at: T0,
                event: SUBACK_OK,
                expect: &[&reg],
                deadline: Some(T0 + 30_000),
            },
            Step {
                at: T0 + 10,
                event: publish("$dps/registrations/res/401/?$rid=1", body),
                expect: &["DISCONNECT", err],
                deadline: None,
            },
        ],
    );
    let text = c.outcome().unwrap().as_ref().unwrap_err().to_string();
    assert!(
        text.contains("401 Unauthorized (errorCode 401002"),
        "{text}"
    );
    assert!(text.contains("group key"), "{text}");
    assert!(text.contains("derived"), "{text}");
    assert!(text.contains("expired"), "{text}");
    assert!(text.contains("clock"), "{text}");
}

#[test]
fn throttled_429_waits_retry_after_then_succeeds() {
    let mut c = client();
    let (connect, reg1, reg2, poll3) = (
        connect_line(),
        register_line(1),
        register_line(2),
        poll_line(3),
    );
    let throttled = r#"{"errorCode":429001,"trackingId":"t","message":"Operations are being throttled for this tenant.","timestampUtc":"2024-01-01T00:00:00Z"}"#;
    let assigning = format!(r#"{{"operationId":"{OP}","status":"assigning"}}"#);
    let (done, assigned) = (assigned_body(), assigned_line());
    run(
        &mut c,
        &[
            Step {
                at: T0,
                event: Event::Start,
                expect: &[&connect],
                deadline: None,
            },
            Step {
                at: T0,
                event: CONNACK_OK,
                expect: &[SUB],
                deadline: None,
            },
            Step {
                at: T0,
                event: SUBACK_OK,
                expect: &[&reg1],
                deadline: Some(T0 + 30_000),
            },
            Step {
                at: T0 + 50,
                event: publish(
                    "$dps/registrations/res/429/?$rid=1&retry-after=5",
                    throttled,
                ),
                expect: &[],
                deadline: Some(T0 + 5_050),
            },
            // The register is sent again (new rid) after retry-after.
            Step {
                at: T0 + 5_050,
                event: Event::Tick,
                expect: &[&reg2],
                deadline: Some(T0 + 35_050),
            },
            Step {
                at: T0 + 5_100,
                event: publish(
                    "$dps/registrations/res/202/?$rid=2&retry-after=1",
                    &assigning,
                ),
                expect: &[],
                deadline: Some(T0 + 6_100),
            },
            Step {
                at: T0 + 6_100,
                event: Event::Tick,
                expect: &[&poll3],
                deadline: Some(T0 + 36_100),
            },
            Step {
                at: T0 + 6_200,
                event: publish("$dps/registrations/res/200/?$rid=3", &done),
                expect: &["DISCONNECT", &assigned],
                deadline: None,
            },
        ],
    );
}

#[test]
fn server_errors_back_off_and_give_up_after_max_retries() {
    let mut cfg = config();
    cfg.max_retries = 2;
    let mut c = DpsClient::new(cfg).unwrap();
    let (connect, reg1, reg2, reg3) = (
        connect_line(),
        register_line(1),
        register_line(2),
        register_line(3),
    );
    let err = r#"ERR GaveUp { attempts: 3, last: ServerError { status: 503, error_code: None, message: None } }"#;
    run(
        &mut c,
        &[
            Step {
                at: T0,
                event: Event::Start,
                expect: &[&connect],
                deadline: None,
            },
            Step {
                at: T0,
                event: CONNACK_OK,
                expect: &[SUB],
                deadline: None,
            },
            Step {
                at: T0,
                event: SUBACK_OK,
                expect: &[&reg1],
                deadline: Some(T0 + 30_000),
            },
            // No retry-after and not JSON: 2 s, then 4 s.
            Step {
                at: T0,
                event: publish("$dps/registrations/res/500/?$rid=1", "oops"),
                expect: &[],
                deadline: Some(T0 + 2_000),
            },
            Step {
                at: T0 + 2_000,
                event: Event::Tick,
                expect: &[&reg2],
                deadline: Some(T0 + 32_000),
            },
            Step {
                at: T0 + 2_000,
                event: publish("$dps/registrations/res/500/?$rid=2", ""),
                expect: &[],
                deadline: Some(T0 + 6_000),
            },
            Step {
                at: T0 + 6_000,
                event: Event::Tick,
                expect: &[&reg3],
                deadline: Some(T0 + 36_000),
            },
            Step {
                at: T0 + 6_000,
                event: publish("$dps/registrations/res/503/?$rid=3", "{}"),
                expect: &["DISCONNECT", err],
                deadline: None,
            },
        ],
    );
    let text = c.outcome().unwrap().as_ref().unwrap_err().to_string();
    assert_eq!(text, "gave up on DPS after 3 failed attempts in a row; last: DPS answered 503 (a service-side error)");
}

#[test]
fn no_answer_times_out_and_is_retried() {
    let mut cfg = config();
    cfg.max_retries = 1;
    let mut c = DpsClient::new(cfg).unwrap();
    let (connect, reg1, reg2) = (connect_line(), register_line(1), register_line(2));
    let err = "ERR GaveUp { attempts: 2, last: NoResponse { waited_secs: 30 } }";
    run(
        &mut c,
        &[
            Step {
                at: T0,
                event: Event::Start,
                expect: &[&connect],
                deadline: None,
            },
            Step {
                at: T0,
                event: CONNACK_OK,
                expect: &[SUB],
                deadline: None,
            },
            Step {
                at: T0,
                event: SUBACK_OK,
                expect: &[&reg1],
                deadline: Some(T0 + 30_000),
            },
            Step {
                at: T0 + 29_999,
                event: Event::Tick,
                expect: &[],
                deadline: Some(T0 + 30_000),
            },
            Step {
                at: T0 + 30_000,
                event: Event::Tick,
                expect: &[&reg2],
                deadline: Some(T0 + 60_000),
            },
            Step {
                at: T0 + 60_000,
                event: Event::Tick,
                expect: &["DISCONNECT", err],
                deadline: None,
            },
        ],
    );
}

#[test]
fn failed_and_disabled_statuses_carry_dps_error_details() {
    // Shape per REST-REG (errorCode/errorMessage in registrationState); values constructed.
    let failed = format!(
        r#"{{"operationId":"{OP}","status":"failed","registrationState":{{"registrationId":"{ID}","status":"failed","errorCode":400209,"errorMessage":"Custom allocation failed with status code: 400","lastUpdatedDateTimeUtc":"2024-01-01T00:00:00Z"}}}}"#
    );
    let disabled = format!(
        r#"{{"operationId":"{OP}","status":"disabled","registrationState":{{"registrationId":"{ID}","status":"disabled"}}}}"#
    );
    let cases: [(&str, &str); 4] = [
        (
            &failed,
            r#"ERR Failed { error_code: Some(400209), message: Some("Custom allocation failed with status code: 400") }"#,
        ),
        (&disabled, "ERR Disabled"),
        (
            r#"{"operationId":"x","status":"unassigned"}"#,
            r#"ERR UnexpectedStatus { status: "unassigned" }"#,
        ),
        (
            r#"{"operationId":"x","status":"queued"}"#,
            r#"ERR UnexpectedStatus { status: "queued" }"#,
        ),
    ];
    for (body, expect) in cases {
        let mut c = client();
        c.handle(T0, Event::Start);
        c.handle(T0, CONNACK_OK);
        c.handle(T0, SUBACK_OK);
        let got: Vec<String> = c
            .handle(T0, publish("$dps/registrations/res/200/?$rid=1", body))
            .iter()
            .map(render)
            .collect();
        assert_eq!(got, ["DISCONNECT", expect]);
    }
    let e = DpsError::Failed {
        error_code: Some(400209),
        message: Some("Custom allocation failed".into()),
    };
    assert_eq!(
        e.to_string(),
        "DPS could not assign the device: status failed (errorCode 400209, \"Custom allocation failed\"); check the enrollment group's allocation policy and linked hubs"
    );
}

#[test]
fn malformed_answers_are_reported_not_trusted() {
    let cases = [
        ("not json", "invalid JSON"),
        (r#"{"status":"assigning"}"#, "without an operationId"),
        (
            r#"{"operationId":"x","status":"assigned","registrationState":{"registrationId":"r","status":"assigned"}}"#,
            "assignedHub",
        ),
        (r#"{"operationId":"x"}"#, "no status"),
    ];
    for (body, why) in cases {
        let mut c = client();
        c.handle(T0, Event::Start);
        c.handle(T0, CONNACK_OK);
        c.handle(T0, SUBACK_OK);
        let out = c.handle(T0, publish("$dps/registrations/res/202/?$rid=1", body));
        assert_eq!(out.len(), 2, "{body}");
        match &out[1] {
            Action::Output(Err(DpsError::BadResponse { reason })) => {
                assert!(reason.contains(why), "{reason}")
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn other_4xx_are_final() {
    let mut c = client();
    c.handle(T0, Event::Start);
    c.handle(T0, CONNACK_OK);
    c.handle(T0, SUBACK_OK);
    let out = c.handle(
        T0,
        publish(
            "$dps/registrations/res/404/?$rid=1",
            r#"{"errorCode":404201,"message":"Not found"}"#,
        ),
    );
    assert_eq!(out[0], Action::Disconnect);
    let text = c.outcome().unwrap().as_ref().unwrap_err().to_string();
    assert_eq!(
        text,
        "DPS answered 404 (errorCode 404201, \"Not found\"): no enrollment or operation matches; check the ID scope and that the enrollment group exists and is enabled"
    );
}

#[test]
fn connack_codes() {
    // 5: not authorized, explained with the group-key hint.
    let mut c = client();
    c.handle(T0, Event::Start);
    let out: Vec<String> = c
        .handle(
            T0,
            Event::ConnAck {
                return_code: 5,
                session_present: false,
            },
        )
        .iter()
        .map(render)
        .collect();
    assert_eq!(out, ["DISCONNECT", "ERR ConnectRefused { code: 5 }"]);
    let text = c.outcome().unwrap().as_ref().unwrap_err().to_string();
    assert!(text.starts_with("DPS refused the connection: not authorized (CONNACK 5); usually the enrollment group key"), "{text}");

    // 2: identifier rejected, final.
    let mut c = client();
    c.handle(T0, Event::Start);
    c.handle(
        T0,
        Event::ConnAck {
            return_code: 2,
            session_present: false,
        },
    );
    assert!(c
        .outcome()
        .unwrap()
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("client identifier rejected (CONNACK 2)"));

    // 3: server unavailable is retried after the server closes the socket, then gives up.
    let mut cfg = config();
    cfg.max_retries = 1;
    let mut c = DpsClient::new(cfg).unwrap();
    c.handle(T0, Event::Start);
    assert!(c
        .handle(
            T0,
            Event::ConnAck {
                return_code: 3,
                session_present: false
            }
        )
        .is_empty());
    assert!(c
        .handle(T0 + 10, Event::Disconnected { random: 0 })
        .is_empty());
    // Backoff starts at 2 s with equal jitter: random 0 → 1 s.
    assert_eq!(c.next_deadline(), Some(T0 + 1_010));
    let out = c.handle(T0 + 1_010, Event::Tick);
    assert!(matches!(&out[..], [Action::Connect(_)]));
    c.handle(
        T0 + 1_100,
        Event::ConnAck {
            return_code: 3,
            session_present: false,
        },
    );
    let out: Vec<String> = c
        .handle(T0 + 1_200, Event::Disconnected { random: 0 })
        .iter()
        .map(render)
        .collect();
    assert_eq!(
        out,
        [
            "DISCONNECT",
            "ERR GaveUp { attempts: 2, last: ServerUnavailable }"
        ]
    );
    assert_eq!(
        Transient::ServerUnavailable.to_string(),
        "DPS answered CONNACK 3 (server unavailable)"
    );

    // A refused subscription is final.
    let mut c = client();
    c.handle(T0, Event::Start);
    c.handle(T0, CONNACK_OK);
    let out: Vec<String> = c
        .handle(T0, Event::SubAck { granted: false })
        .iter()
        .map(render)
        .collect();
    assert_eq!(out, ["DISCONNECT", "ERR SubscribeRefused"]);
}

#[test]
fn reconnect_after_a_drop_polls_the_known_operation_with_a_fresh_token() {
    let mut c = client();
    let (connect, reg1, poll2) = (connect_line(), register_line(1), poll_line(2));
    let assigning = format!(r#"{{"operationId":"{OP}","status":"assigning"}}"#);
    run(
        &mut c,
        &[
            Step {
                at: T0,
                event: Event::Start,
                expect: &[&connect],
                deadline: None,
            },
            Step {
                at: T0,
                event: CONNACK_OK,
                expect: &[SUB],
                deadline: None,
            },
            Step {
                at: T0,
                event: SUBACK_OK,
                expect: &[&reg1],
                deadline: Some(T0 + 30_000),
            },
            Step {
                at: T0 + 100,
                event: publish(
                    "$dps/registrations/res/202/?$rid=1&retry-after=2",
                    &assigning,
                ),
                expect: &[],
                deadline: Some(T0 + 2_100),
            },
            Step {
                at: T0 + 2_100,
                event: Event::Tick,
                expect: &[&poll2],
                deadline: Some(T0 + 32_100),
            },
            // Connection lost; random u32::MAX → the top of [1 s, 2 s].
            Step {
                at: T0 + 3_000,
                event: Event::Disconnected { random: u32::MAX },
                expect: &[],
                deadline: Some(T0 + 3_000 + 1_000 + (u32::MAX as u64 % 1_001)),
            },
        ],
    );
    let at = c.next_deadline().unwrap();
    let out = c.handle(at, Event::Tick);
    let Action::Connect(p) = &out[0] else {
        panic!("{out:?}")
    };
    // A new token, issued now.
    assert_eq!(p.token_expiry, at / 1000 + 3600);
    let t = SasToken::parse(&p.password).unwrap();
    assert!(t.verify(&DeviceKey::parse(KEY, "k").unwrap()));
    assert_eq!(
        c.handle(at, CONNACK_OK)
            .iter()
            .map(render)
            .collect::<Vec<_>>(),
        [SUB]
    );
    // It polls the operation it has rather than registering again.
    assert_eq!(
        c.handle(at, SUBACK_OK)
            .iter()
            .map(render)
            .collect::<Vec<_>>(),
        [poll_line(3)]
    );
}

#[test]
fn still_assigning_is_bounded() {
    let mut cfg = config();
    cfg.max_polls = 2;
    let mut c = DpsClient::new(cfg).unwrap();
    c.handle(T0, Event::Start);
    c.handle(T0, CONNACK_OK);
    c.handle(T0, SUBACK_OK);
    let body = format!(r#"{{"operationId":"{OP}","status":"assigning"}}"#);
    let mut now = T0;
    for rid in 1..=2 {
        let topic = format!("$dps/registrations/res/202/?$rid={rid}&retry-after=1");
        assert!(c.handle(now, publish(&topic, &body)).is_empty());
        now += 1_000;
        assert_eq!(c.handle(now, Event::Tick).len(), 1);
    }
    let out = c.handle(now, publish("$dps/registrations/res/202/?$rid=3", &body));
    assert_eq!(
        out[1],
        Action::Output(Err(DpsError::StillAssigning { polls: 2 }))
    );
}

#[test]
fn retry_after_is_capped() {
    let mut c = client();
    c.handle(T0, Event::Start);
    c.handle(T0, CONNACK_OK);
    c.handle(T0, SUBACK_OK);
    c.handle(
        T0,
        publish("$dps/registrations/res/429/?$rid=1&retry-after=999999", ""),
    );
    assert_eq!(c.next_deadline(), Some(T0 + 600_000));
}

#[test]
fn custom_payload_goes_out_and_comes_back() {
    let cfg = config()
        .with_payload_json(r#"{"model":"esp32s3"}"#)
        .unwrap();
    let mut c = DpsClient::new(cfg).unwrap();
    c.handle(T0, Event::Start);
    c.handle(T0, CONNACK_OK);
    let out: Vec<String> = c.handle(T0, SUBACK_OK).iter().map(render).collect();
    assert_eq!(
        out,
        [format!(
            r#"PUB q1 $dps/registrations/PUT/iotdps-register/?$rid=1 {{"registrationId":"{ID}","payload":{{"model":"esp32s3"}}}}"#
        )]
    );
    let body = format!(
        r#"{{"operationId":"{OP}","status":"assigned","registrationState":{{"registrationId":"{ID}","assignedHub":"h.example","deviceId":"{ID}","status":"assigned","substatus":"initialAssignment","payload":{{"fw":"2.1"}}}}}}"#
    );
    let out: Vec<String> = c
        .handle(T0, publish("$dps/registrations/res/200/?$rid=1", &body))
        .iter()
        .map(render)
        .collect();
    assert_eq!(
        out[1],
        format!(
            r#"ASSIGNED hub=h.example device={ID} substatus=Some("initialAssignment") payload=Some("{{\"fw\":\"2.1\"}}") op={OP}"#
        )
    );

    let e = config().with_payload_json("{model:").unwrap_err();
    assert!(
        e.to_string().starts_with("DPS payload: not valid JSON"),
        "{e}"
    );
}

#[test]
fn setup_errors_name_the_field() {
    let mut cfg = config();
    cfg.keep_alive_secs = 2000;
    assert!(DpsClient::new(cfg)
        .unwrap_err()
        .to_string()
        .starts_with("keep-alive: 2000 s"));
    let mut cfg = config();
    cfg.token_ttl_secs = 10;
    assert!(DpsClient::new(cfg)
        .unwrap_err()
        .to_string()
        .starts_with("DPS token lifetime: 10 s"));
}

/// The emulator's side: builders for answers, fed straight into the device client.
#[test]
fn emulator_builders_drive_the_client() {
    let rid_topic = |status, rid: &str, retry_after| {
        ServiceTopic::DpsResponse {
            status,
            rid: rid.into(),
            retry_after,
        }
        .to_topic()
    };
    assert_eq!(
        rid_topic(202, "1", Some(3)),
        "$dps/registrations/res/202/?$rid=1&retry-after=3"
    );
    assert_eq!(
        rid_topic(401, "1", None),
        "$dps/registrations/res/401/?$rid=1"
    );
    let assigning = RegistrationOperationStatus::assigning(OP, ID).to_json();
    assert_eq!(
        String::from_utf8(assigning.clone()).unwrap(),
        format!(
            r#"{{"operationId":"{OP}","status":"assigning","registrationState":{{"registrationId":"{ID}","status":"assigning"}}}}"#
        )
    );
    let done =
        RegistrationOperationStatus::done(OP, RegistrationState::assigned(ID, "localhost", ID))
            .to_json();
    assert_eq!(
        String::from_utf8(done.clone()).unwrap(),
        format!(
            r#"{{"operationId":"{OP}","status":"assigned","registrationState":{{"registrationId":"{ID}","assignedHub":"localhost","deviceId":"{ID}","status":"assigned","substatus":"initialAssignment"}}}}"#
        )
    );
    let error = ServiceError::new(
        401002,
        "Unauthorized",
        "8ad0463c",
        "2020-04-10T05:24:22.4718526Z",
    )
    .to_json();
    assert_eq!(
        String::from_utf8(error).unwrap(),
        r#"{"errorCode":401002,"trackingId":"8ad0463c","message":"Unauthorized","timestampUtc":"2020-04-10T05:24:22.4718526Z"}"#
    );

    let mut c = client();
    let Action::Connect(params) = &c.handle(T0, Event::Start)[0] else {
        panic!()
    };
    // The emulator checks the CONNECT with the same code.
    let Some(Username::Dps {
        id_scope,
        registration_id,
        ..
    }) = Username::parse(&params.username)
    else {
        panic!()
    };
    assert_eq!((id_scope.as_str(), registration_id.as_str()), (SCOPE, ID));
    c.handle(T0, CONNACK_OK);
    let Action::Publish(reg) = &c.handle(T0, SUBACK_OK)[0] else {
        panic!()
    };
    let DeviceTopic::DpsRegister { rid } = DeviceTopic::parse(&reg.topic).unwrap() else {
        panic!()
    };
    assert_eq!(
        DeviceRegistration::from_json(&reg.payload)
            .unwrap()
            .registration_id,
        ID
    );
    let t = rid_topic(202, &rid, Some(1));
    assert!(c
        .handle(
            T0,
            Event::Publish {
                topic: &t,
                payload: &assigning
            }
        )
        .is_empty());
    let Action::Publish(poll) = &c.handle(T0 + 1_000, Event::Tick)[0] else {
        panic!()
    };
    let DeviceTopic::DpsPoll { rid, operation_id } = DeviceTopic::parse(&poll.topic).unwrap()
    else {
        panic!()
    };
    assert_eq!(operation_id, OP);
    assert!(is_empty_body(&poll.payload));
    let t = rid_topic(200, &rid, None);
    let out = c.handle(
        T0 + 1_100,
        Event::Publish {
            topic: &t,
            payload: &done,
        },
    );
    let Action::Output(Ok(a)) = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (a.assigned_hub.as_str(), a.device_id.as_str()),
        ("localhost", ID)
    );
}

/// What the Python SDK 2.14.0 sends (reference §5) must parse on the emulator's side.
#[test]
fn python_sdk_wire_forms_are_accepted() {
    let uuid = "7b3ae1d2-5e4f-4c3b-9a6d-2f1e0c9b8a7d";
    let t = format!("$dps/registrations/PUT/iotdps-register/?$rid={uuid}");
    assert_eq!(
        DeviceTopic::parse(&t).unwrap(),
        DeviceTopic::DpsRegister { rid: uuid.into() }
    );
    // Keys sorted, `"payload": null` when unset.
    let body = format!(r#"{{"payload": null, "registrationId": "{ID}"}}"#);
    let r = DeviceRegistration::from_json(body.as_bytes()).unwrap();
    assert_eq!((r.registration_id.as_str(), r.payload), (ID, None));
    let body = format!(r#"{{"payload": {{"model": "esp32s3"}}, "registrationId": "{ID}"}}"#);
    let r = DeviceRegistration::from_json(body.as_bytes()).unwrap();
    assert_eq!(r.payload.unwrap()["model"], "esp32s3");
    // The poll with a single-space body.
    let t =
        format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid={uuid}&operationId={OP}");
    assert_eq!(
        DeviceTopic::parse(&t).unwrap(),
        DeviceTopic::DpsPoll {
            rid: uuid.into(),
            operation_id: OP.into()
        }
    );
    assert!(is_empty_body(b" "));
    assert!(is_empty_body(b""));
    assert!(!is_empty_body(b"{}"));
    // `%24rid` is `$rid` once decoded.
    assert_eq!(
        DeviceTopic::parse("$dps/registrations/PUT/iotdps-register/?%24rid=9").unwrap(),
        DeviceTopic::DpsRegister { rid: "9".into() }
    );
    // Username with `%2F` and parentheses encoded (the platform text is illustrative).
    let u = format!("{SCOPE}/registrations/{ID}/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%28Python%203.11%3BLinux%29");
    let Some(Username::Dps {
        registration_id,
        params,
        ..
    }) = Username::parse(&u)
    else {
        panic!()
    };
    assert_eq!(registration_id, ID);
    assert_eq!(
        params[1],
        (
            "ClientVersion".into(),
            "azure-iot-device-provisioning-py/2.14.0(Python 3.11;Linux)".into()
        )
    );
    // Python's DPS password: `%2F`, no `skn`; verifies with the derived key as received.
    let python = "SharedAccessSignature sr=0ne00000000%2Fregistrations%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6&sig=UcaBdA4L3Se7NlFQZcBFRndkqyymINWtRUmVT5QYWng%3D&se=1700000000";
    let tok = SasToken::parse(python).unwrap();
    assert!(tok.verify(&DeviceKey::parse(KEY, "k").unwrap()));
    assert_eq!(tok.skn, None);
    // Duplicate query keys are refused, as the Python SDK refuses them.
    assert!(DeviceTopic::parse("$dps/registrations/PUT/iotdps-register/?$rid=1&$rid=2").is_err());
    // A poll without operationId is refused with the missing key named.
    let e = DeviceTopic::parse("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "topic \"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1\" has no 'operationId='"
    );
}
