//! The shared MQTT session against a scripted server on an in-memory pipe, with tokio's
//! paused clock: what the board and the PC both run, on the paths a network produces —
//! messages arriving while the device waits for an acknowledgement, keep-alive, a dead
//! server, an oversized packet, a refused CONNECT.

use bytes::BytesMut;
use dpskit_core::mqtt::{ConnectParams, Publish, QoS};
use dpskit_device::driver::{Clock, ConnAck, Incoming, MqttSession};
use dpskit_device::session::{Connector, Limits, Session, Sleep};
use dpskit_device::{LinkError, LinkErrorKind};
use embedded_io_adapters::tokio_1::FromTokio;
use rumqttc::mqttbytes::v4::{self as mqtt, Packet};
use rumqttc::mqttbytes::QoS as WireQoS;
use std::cell::RefCell;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::{Duration, Instant};

const T0: u64 = 1_750_000_000_000;

struct TokioClock(Instant);
impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        T0 + self.0.elapsed().as_millis() as u64
    }
}

struct TokioSleep;
impl Sleep for TokioSleep {
    async fn sleep_ms(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await
    }
}

/// Hands out the device ends of pipes made beforehand.
struct Pipes(RefCell<Vec<DuplexStream>>);
impl Connector for Pipes {
    type Error = std::io::Error;
    type Stream<'a> = FromTokio<DuplexStream>;
    async fn open<'a>(&'a self, params: &ConnectParams) -> Result<Self::Stream<'a>, LinkError> {
        match self.0.borrow_mut().pop() {
            Some(p) => Ok(FromTokio::new(p)),
            None => Err(LinkError::new(
                LinkErrorKind::Unreachable,
                format!("{}: refused", params.host),
            )),
        }
    }
}

fn params() -> ConnectParams {
    ConnectParams {
        host: "hub.local".into(),
        port: 8883,
        client_id: "dev-1".into(),
        username: "hub.local/dev-1/?api-version=2021-04-12".into(),
        password: "SharedAccessSignature sr=x&sig=y&se=1".into(),
        clean_session: true,
        keep_alive_secs: 60,
        token_expiry: 1,
    }
}

/// The server's end: reads the device's packets with rumqttc's codec.
struct Server {
    pipe: DuplexStream,
    buf: BytesMut,
}

impl Server {
    fn new(pipe: DuplexStream) -> Self {
        Server {
            pipe,
            buf: BytesMut::new(),
        }
    }

    async fn read(&mut self) -> Packet {
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return p,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    let n = self.pipe.read_buf(&mut self.buf).await.unwrap();
                    assert!(n > 0, "the device closed the pipe");
                }
                Err(e) => panic!("the device sent a bad packet: {e}"),
            }
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, 1 << 20).unwrap();
        self.pipe.write_all(&out).await.unwrap();
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.pipe.write_all(bytes).await.unwrap();
    }

    async fn accept(&mut self, code: mqtt::ConnectReturnCode) -> mqtt::Connect {
        let Packet::Connect(c) = self.read().await else {
            panic!("no CONNECT first")
        };
        self.send(Packet::ConnAck(mqtt::ConnAck::new(code, false)))
            .await;
        c
    }
}

fn pair() -> (Pipes, Server) {
    let (device, server) = tokio::io::duplex(1 << 16);
    (Pipes(RefCell::new(vec![device])), Server::new(server))
}

#[tokio::test(start_paused = true)]
async fn connect_subscribe_publish_and_messages_arriving_in_between() {
    let (pipes, mut server) = pair();
    let clock = TokioClock(Instant::now());
    let mut s = Session::new(&pipes, TokioSleep, &clock, Limits::default());
    let device = async {
        let ack = s.connect(&params()).await.unwrap();
        assert_eq!(
            ack,
            ConnAck {
                return_code: 0,
                session_present: false
            }
        );
        assert!(s
            .subscribe("devices/dev-1/messages/devicebound/#", QoS::AtLeastOnce)
            .await
            .unwrap());
        s.publish(&Publish::qos1(
            "devices/dev-1/messages/events/".into(),
            b"{}".to_vec(),
        ))
        .await
        .unwrap();
        // Both C2D messages that came while waiting are kept, in order.
        for want in ["one", "two"] {
            match s.next(None).await {
                Incoming::Publish { topic, payload } => {
                    assert_eq!(topic, "devices/dev-1/messages/devicebound/x");
                    assert_eq!(payload, want.as_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(!s.subscribe("$iothub/x/#", QoS::AtLeastOnce).await.unwrap());
    };
    let cloud = async {
        let c = server.accept(mqtt::ConnectReturnCode::Success).await;
        assert_eq!(c.client_id, "dev-1");
        assert_eq!(c.keep_alive, 60);
        let login = c.login.unwrap();
        assert_eq!(login.username, "hub.local/dev-1/?api-version=2021-04-12");
        let Packet::Subscribe(sub) = server.read().await else {
            panic!()
        };
        assert_eq!(sub.filters[0].path, "devices/dev-1/messages/devicebound/#");
        // A C2D message before the SUBACK: the device acknowledges it and keeps it.
        let mut c2d = mqtt::Publish::new(
            "devices/dev-1/messages/devicebound/x",
            WireQoS::AtLeastOnce,
            "one",
        );
        c2d.pkid = 77;
        server.send(Packet::Publish(c2d)).await;
        server
            .send(Packet::SubAck(mqtt::SubAck::new(
                sub.pkid,
                vec![mqtt::SubscribeReasonCode::Success(WireQoS::AtLeastOnce)],
            )))
            .await;
        assert!(matches!(server.read().await, Packet::PubAck(a) if a.pkid == 77));
        let Packet::Publish(p) = server.read().await else {
            panic!()
        };
        assert_eq!(p.payload.as_ref(), b"{}");
        // Another message between the PUBLISH and its PUBACK (QoS 0 this time).
        server
            .send(Packet::Publish(mqtt::Publish::new(
                "devices/dev-1/messages/devicebound/x",
                WireQoS::AtMostOnce,
                "two",
            )))
            .await;
        server.send(Packet::PubAck(mqtt::PubAck::new(p.pkid))).await;
        let Packet::Subscribe(sub) = server.read().await else {
            panic!()
        };
        server
            .send(Packet::SubAck(mqtt::SubAck::new(
                sub.pkid,
                vec![mqtt::SubscribeReasonCode::Failure],
            )))
            .await;
    };
    tokio::join!(device, cloud);
}

#[tokio::test(start_paused = true)]
async fn keep_alive_pings_and_a_silent_server_is_declared_dead() {
    let (pipes, mut server) = pair();
    let clock = TokioClock(Instant::now());
    let mut s = Session::new(&pipes, TokioSleep, &clock, Limits::default());
    let device = async {
        s.connect(&params()).await.unwrap();
        // A deadline before the keep-alive: just the deadline.
        assert_eq!(s.next(Some(T0 + 10_000)).await, Incoming::Deadline);
        // No deadline: a PINGREQ after 60 s of silence, answered; the second one is not.
        match s.next(None).await {
            Incoming::Closed(e) => {
                assert_eq!(e.kind, LinkErrorKind::Timeout);
                assert!(e.detail.contains("no PINGRESP"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // First ping at 60 s, answered; second at 120 s, unanswered; dead at 150 s.
        assert_eq!(clock.now_ms(), T0 + 150_000);
        assert_eq!(s.next(Some(T0 + 151_000)).await, Incoming::Deadline);
    };
    let cloud = async {
        server.accept(mqtt::ConnectReturnCode::Success).await;
        assert_eq!(server.read().await, Packet::PingReq);
        server.send(Packet::PingResp).await;
        assert_eq!(server.read().await, Packet::PingReq);
        // …and no answer. Keep the pipe open until the device gives up.
        let mut rest = Vec::new();
        let _ = server.pipe.read_to_end(&mut rest).await;
    };
    tokio::join!(device, cloud);
}

#[tokio::test(start_paused = true)]
async fn refusals_timeouts_and_oversized_packets_are_described() {
    let p = params();
    // CONNACK 5: reported, connection closed.
    let (pipes, mut server) = pair();
    let clock = TokioClock(Instant::now());
    let mut s = Session::new(&pipes, TokioSleep, &clock, Limits::default());
    let (ack, _) = tokio::join!(
        s.connect(&p),
        server.accept(mqtt::ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(ack.unwrap().return_code, 5);
    assert!(!s.is_connected());

    // No CONNACK within the timeout.
    let (pipes, _server) = pair();
    let limits = Limits {
        timeout_ms: 5_000,
        ..Limits::default()
    };
    let mut s = Session::new(&pipes, TokioSleep, &clock, limits);
    let e = s.connect(&p).await.unwrap_err();
    assert_eq!(e.kind, LinkErrorKind::Timeout);
    assert!(
        e.detail
            .contains("no CONNACK from hub.local:8883 within 5 s"),
        "{e}"
    );

    // A packet announcing more than the device accepts ends the connection before its body.
    let (pipes, mut server) = pair();
    let limits = Limits {
        max_packet: 1024,
        ..Limits::default()
    };
    let mut s = Session::new(&pipes, TokioSleep, &clock, limits);
    let (r, _) = tokio::join!(
        s.connect(&p),
        server.accept(mqtt::ConnectReturnCode::Success)
    );
    r.unwrap();
    server.raw(&[0x30, 0x80, 0x80, 0x01]).await; // PUBLISH of 16 KB, header only
    match s.next(None).await {
        Incoming::Closed(e) => assert!(e.detail.contains("more than the 1024 bytes"), "{e}"),
        other => panic!("{other:?}"),
    }

    // A truncated PUBACK (no packet identifier) is malformed, not a crash.
    let (pipes, mut server) = pair();
    let mut s = Session::new(&pipes, TokioSleep, &clock, Limits::default());
    let (r, _) = tokio::join!(
        s.connect(&p),
        server.accept(mqtt::ConnectReturnCode::Success)
    );
    r.unwrap();
    server.raw(&[0x40, 0x00]).await;
    match s.next(None).await {
        Incoming::Closed(e) => assert!(e.detail.contains("malformed MQTT packet"), "{e}"),
        other => panic!("{other:?}"),
    }

    // The server hangs up while the device waits for a PUBACK.
    let (pipes, mut server) = pair();
    let mut s = Session::new(&pipes, TokioSleep, &clock, Limits::default());
    let (r, _) = tokio::join!(
        s.connect(&p),
        server.accept(mqtt::ConnectReturnCode::Success)
    );
    r.unwrap();
    drop(server);
    let e = s
        .publish(&Publish::qos1("t".into(), b"x".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, LinkErrorKind::Closed);
    assert!(!s.is_connected());
}
