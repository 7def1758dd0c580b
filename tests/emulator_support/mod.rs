//! Shared by the emulator tests and the emulator benchmark: start an emulator in-process on
//! an ephemeral loopback port, and drive real MQTT clients (rumqttc over rustls) against it,
//! building user names, tokens, topics and bodies with dpskit-core's builders.
#![allow(dead_code)]

use dpskit_core::dps::json::{DeviceRegistration, RegistrationOperationStatus, ServiceError};
use dpskit_core::mqtt::{dps_username, hub_username};
use dpskit_core::sas::{dps_resource, hub_resource};
use dpskit_core::topic::{DeviceTopic, ServiceTopic, DPS_RESPONSES_FILTER};
use dpskit_core::{DeviceKey, GroupKey, SasToken};
use dpskit_rehearsal::emulator::{
    client_config, AdminClient, Emulator, EmulatorConfig, EmulatorHandle, Group,
};
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Microsoft's documented group key (reference §1, V1); test-only.
pub const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
pub const SECONDARY_KEY: &str =
    "rLuyBPpIJ+hOre2SFIP9Ajvdty3j0EwSP/WvTVH9eZAw5HpDuEmf13nziHy5RRXmuTy84FCLpOnhhBPASSbHYg==";
pub const SCOPE: &str = "0ne00000A0A";
pub const HUB: &str = "localhost";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn group_key() -> GroupKey {
    GroupKey::parse(GROUP_KEY, "group key").unwrap()
}

pub fn group() -> Group {
    let mut g = Group::new(SCOPE, group_key());
    g.secondary = Some(GroupKey::parse(SECONDARY_KEY, "secondary").unwrap());
    g
}

pub fn device_key(id: &str) -> DeviceKey {
    group_key().derive(id)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A quiet emulator on 127.0.0.1:0 with the test group, 0 s retry-after.
pub fn config(state_dir: &Path) -> EmulatorConfig {
    let mut c = EmulatorConfig::new(state_dir, vec![group()]);
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.echo_telemetry = false;
    c.human_log = std::env::var_os("DPSKIT_TEST_LOG").is_some();
    c.dps.retry_after_secs = 0;
    c
}

pub struct Emu {
    pub handle: EmulatorHandle,
    pub dir: tempfile::TempDir,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Emu {
    pub async fn start() -> Emu {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut EmulatorConfig)) -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        tweak(&mut c);
        let handle = Emulator::start(c).await.unwrap();
        let tls = client_config(handle.ca_pem_path()).unwrap();
        Emu { handle, dir, tls }
    }

    pub fn port(&self) -> u16 {
        self.handle.addr().port()
    }

    pub fn admin(&self) -> AdminClient {
        self.handle.admin()
    }

    /// Follows every event into a shared list (a background thread; ends with the emulator).
    pub fn record_events(&self) -> Events {
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let admin = self.admin();
        let sink = seen.clone();
        std::thread::spawn(move || {
            let _ = admin.follow(
                true,
                || ready_tx.send(()).unwrap(),
                |line| {
                    sink.lock().unwrap().push(line.to_string());
                    true
                },
            );
        });
        ready_rx.recv_timeout(WAIT).expect("event stream ready");
        Events(seen)
    }

    pub async fn shutdown(self) {
        self.handle.shutdown().await;
    }

    /// A client configuration that speaks only TLS 1.2, as the Python SDK and mbedTLS on the
    /// ESP32 do. With TLS 1.2 the server finishes the handshake first, so once a client has
    /// connected the emulator's side is done too.
    pub fn tls12(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in dpskit_rehearsal::emulator::certs::read_certs(self.handle.ca_pem_path()).unwrap() {
            roots.add(c).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    /// A DPS session for `id` in group `scope`, with a token signed by `key` for an hour,
    /// subscribed to the DPS answers.
    pub async fn dps_session(&self, scope: &str, id: &str, key: &DeviceKey) -> Mqtt {
        let token = dps_token(key, scope, id, now() + 3600);
        dps_connect(&self.tls, self.port(), scope, id, &token)
            .await
            .unwrap()
    }

    /// Sends a register request for `id` and returns DPS's first answer (and the session).
    pub async fn dps_register(&self, scope: &str, id: &str, key: &DeviceKey) -> (DpsAnswer, Mqtt) {
        let mut m = self.dps_session(scope, id, key).await;
        send_register(&m, "1", id).await;
        (dps_answer(&mut m).await, m)
    }
}

/// Events seen so far (JSON lines).
#[derive(Clone)]
pub struct Events(pub Arc<Mutex<Vec<String>>>);

impl Events {
    /// Waits for an event line containing every needle; panics with what was seen.
    pub async fn wait_for(&self, needles: &[&str]) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return serde_json::from_str(line).unwrap();
            }
            if Instant::now() > deadline {
                panic!(
                    "no event with {needles:?}; seen:\n{}",
                    self.0.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The real `dpskit emulate` for the test group on `127.0.0.1:0`, quiet, with `args` added;
/// its stderr is read on a thread (so a full pipe never stalls it) and handed over line by
/// line.
pub fn spawn_emulate(
    state_dir: &Path,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args([
            "emulate",
            "--quiet",
            "--bind",
            "127.0.0.1:0",
            "--scope",
            SCOPE,
        ])
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .env("DPSKIT_GROUP_KEY", GROUP_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// The address after `marker` in the first of `lines` that has it (`…; ` trimmed).
pub fn address_after(
    lines: &std::sync::mpsc::Receiver<String>,
    marker: &str,
) -> std::net::SocketAddr {
    loop {
        let line = lines.recv().expect("the emulator's log");
        if let Some((_, rest)) = line.split_once(marker) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            return addr.trim_end_matches(';').parse().unwrap();
        }
    }
}

/// Opens a raw TLS connection (no MQTT client library) to send arbitrary bytes.
pub async fn raw_tls(emu: &Emu) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_tls_with(emu, &emu.tls).await
}

/// [`raw_tls`] with another client configuration.
pub async fn raw_tls_with(
    emu: &Emu,
    config: &Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(emu.handle.addr())
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// What the client event loop reports.
#[derive(Debug)]
pub enum Got {
    Publish { topic: String, payload: Vec<u8> },
    SubAck(Vec<SubscribeReasonCode>),
    UnsubAck,
    PubAck,
    Closed(String),
}

/// One real MQTT client connection.
pub struct Mqtt {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Got>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects and waits for CONNACK; `Err` carries rumqttc's error (e.g. a refused CONNACK).
pub async fn connect(
    tls: &Arc<rustls::ClientConfig>,
    port: u16,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<Mqtt, ConnectionError> {
    let mut o = MqttOptions::new(client_id, "localhost", port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls.clone(),
    )));
    o.set_credentials(username, password);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(true);
    o.set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    loop {
        match tokio::time::timeout(WAIT, eventloop.poll())
            .await
            .expect("CONNACK in time")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Got::Publish {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                    });
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    let _ = tx.send(Got::SubAck(s.return_codes));
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    let _ = tx.send(Got::PubAck);
                }
                Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                    let _ = tx.send(Got::UnsubAck);
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Got::Closed(e.to_string()));
                    return; // no reconnect: a test wants to see the drop
                }
            }
        }
    });
    Ok(Mqtt { client, rx, task })
}

impl Mqtt {
    pub async fn next(&mut self) -> Got {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("an event in time")
            .unwrap_or(Got::Closed("event loop ended".into()))
    }

    pub async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match self.next().await {
                Got::SubAck(codes) => return codes[0],
                Got::Closed(e) => panic!("closed while subscribing: {e}"),
                _ => {}
            }
        }
    }

    /// Unsubscribes and waits for the UNSUBACK (the emulator has applied it by then).
    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.unwrap();
        loop {
            match self.next().await {
                Got::UnsubAck => return,
                Got::Closed(e) => panic!("closed while unsubscribing: {e}"),
                _ => {}
            }
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// The next PUBLISH (skipping SUBACKs); panics if the connection closes.
    pub async fn next_publish(&mut self) -> (String, Vec<u8>) {
        loop {
            match self.next().await {
                Got::Publish { topic, payload } => return (topic, payload),
                Got::Closed(e) => panic!("connection closed while waiting for a publish: {e}"),
                _ => {}
            }
        }
    }

    /// Publishes `n` QoS 1 telemetry messages and waits for all their PUBACKs.
    pub async fn telemetry_acked(&mut self, device_id: &str, n: usize) -> Result<(), String> {
        for i in 0..n {
            let t = dpskit_core::hub::Message::json(format!("{{\"seq\":{i}}}"))
                .to_telemetry(device_id)
                .unwrap();
            self.client
                .publish(t.topic, QoS::AtLeastOnce, false, t.payload)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut acked = 0;
        while acked < n {
            match self.next().await {
                Got::PubAck => acked += 1,
                Got::Closed(e) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Waits until the server drops the connection; the client's error text.
    pub async fn closed(&mut self) -> String {
        loop {
            if let Got::Closed(e) = self.next().await {
                return e;
            }
        }
    }
}

pub fn dps_token(key: &DeviceKey, scope: &str, id: &str, expiry: u64) -> String {
    SasToken::generate(key, &dps_resource(scope, id), expiry, Some("registration")).to_string()
}

pub fn hub_token(key: &DeviceKey, id: &str) -> String {
    SasToken::generate(key, &hub_resource(HUB, id), now() + 3600, None).to_string()
}

/// A DPS connection subscribed to its responses.
pub async fn dps_connect(
    tls: &Arc<rustls::ClientConfig>,
    port: u16,
    scope: &str,
    id: &str,
    password: &str,
) -> Result<Mqtt, ConnectionError> {
    let mut m = connect(tls, port, id, &dps_username(scope, id), password).await?;
    assert!(matches!(
        m.subscribe(DPS_RESPONSES_FILTER).await,
        SubscribeReasonCode::Success(_)
    ));
    Ok(m)
}

/// A DPS answer, parsed.
#[derive(Debug)]
pub struct DpsAnswer {
    pub status: u16,
    pub rid: String,
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
}

impl DpsAnswer {
    pub fn error(&self) -> ServiceError {
        ServiceError::from_json_lenient(&self.body)
    }

    pub fn status_body(&self) -> RegistrationOperationStatus {
        RegistrationOperationStatus::from_json(&self.body).unwrap()
    }
}

pub async fn dps_answer(m: &mut Mqtt) -> DpsAnswer {
    let (topic, body) = m.next_publish().await;
    match ServiceTopic::parse(&topic).unwrap() {
        ServiceTopic::DpsResponse {
            status,
            rid,
            retry_after,
        } => DpsAnswer {
            status,
            rid,
            retry_after,
            body,
        },
        other => panic!("not a DPS answer: {other:?}"),
    }
}

pub async fn send_register(m: &Mqtt, rid: &str, registration_id: &str) {
    let body = DeviceRegistration {
        registration_id: registration_id.into(),
        payload: None,
    }
    .to_json();
    m.publish(
        &DeviceTopic::DpsRegister { rid: rid.into() }.to_topic(),
        body,
    )
    .await;
}

pub async fn send_poll(m: &Mqtt, rid: &str, operation_id: &str) {
    m.publish(
        &DeviceTopic::DpsPoll {
            rid: rid.into(),
            operation_id: operation_id.into(),
        }
        .to_topic(),
        " ",
    )
    .await;
}

/// Registers `id` (register → 202 → poll until 200); the final answer.
pub async fn register(
    tls: &Arc<rustls::ClientConfig>,
    port: u16,
    id: &str,
    key: &DeviceKey,
) -> DpsAnswer {
    let mut m = dps_connect(
        tls,
        port,
        SCOPE,
        id,
        &dps_token(key, SCOPE, id, now() + 3600),
    )
    .await
    .unwrap();
    send_register(&m, "1", id).await;
    let mut answer = dps_answer(&mut m).await;
    let mut rid = 1;
    while answer.status == 202 {
        let op = answer.status_body().operation_id.unwrap();
        // Wait as a device must (the benchmark's 1 s); tests set retry-after 0.
        if let Some(secs) = answer.retry_after.filter(|s| *s > 0) {
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
        rid += 1;
        send_poll(&m, &rid.to_string(), &op).await;
        answer = dps_answer(&mut m).await;
    }
    let _ = m.client.disconnect().await;
    answer
}

/// A hub connection for a registered device.
pub async fn hub_connect(
    tls: &Arc<rustls::ClientConfig>,
    port: u16,
    id: &str,
    key: &DeviceKey,
) -> Result<Mqtt, ConnectionError> {
    connect(tls, port, id, &hub_username(HUB, id), &hub_token(key, id)).await
}

/// Registers and connects to the hub.
pub async fn provisioned(emu: &Emu, id: &str) -> Mqtt {
    let key = device_key(id);
    let a = register(&emu.tls, emu.port(), id, &key).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    hub_connect(&emu.tls, emu.port(), id, &key).await.unwrap()
}
