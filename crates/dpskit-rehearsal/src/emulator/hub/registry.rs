//! The hub's device registry, filled by DPS assignments: one entry per device of each hub,
//! its one live connection, its C2D queue, its twin and its pending direct-method calls; and
//! what the service side (the admin interface) does with them.
//!
//! A device is addressed by its hub and its ID ([`DeviceAddr`]): two groups assigning the same
//! ID to different hubs make two devices, and a second group cannot take over an ID that a
//! first one registered in the same hub. Everything a device receives goes through its own
//! entry, addressed by the connection that authenticated as that device, so a device only ever
//! sees its own C2D messages, method calls and twin. The lock is a plain mutex held for map
//! updates only, never across I/O.

use super::twin::Twin;
use crate::emulator::clock::{self, now_secs};
use crate::emulator::enrollment::{validate, Group, KeySlot, Rejection};
use crate::emulator::journal;
use crate::emulator::subscriptions::Subscriptions;
use crate::emulator::{EmulatorError, Shared};
use dpskit_core::hub::{Message, MAX_C2D_BYTES, MAX_METHOD_PAYLOAD_BYTES};
use dpskit_core::topic::{self, ServiceTopic};
use dpskit_factory::keys::token::Audience;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// C2D messages IoT Hub keeps per device.
pub(crate) const MAX_PENDING_C2D: usize = 50;

/// A device: the hub it lives in (lower case) and its ID (case-sensitive, as in IoT Hub).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DeviceAddr {
    pub hub: String,
    pub id: String,
}

impl DeviceAddr {
    pub fn new(hub: &str, id: &str) -> Self {
        DeviceAddr {
            hub: hub.to_ascii_lowercase(),
            id: id.to_string(),
        }
    }
}

/// What the registry pushes to a connection task.
pub(crate) enum ToConn {
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        c2d: Option<C2dMessage>,
    },
}

/// A queued cloud-to-device message.
#[derive(Debug, Clone)]
pub(crate) struct C2dMessage {
    pub message: Message,
}

/// The live connection of a device.
pub(crate) struct ConnRef {
    pub id: u64,
    pub tx: mpsc::Sender<ToConn>,
    pub kick: Option<oneshot::Sender<String>>,
    pub since: String,
}

/// The answer to a direct method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodOutcome {
    pub status: u16,
    /// The device's JSON answer (a string when it was not JSON).
    pub payload: Value,
}

/// One registered device.
pub(crate) struct Device {
    pub id_scope: String,
    pub created: String,
    pub twin: Twin,
    pub c2d: VecDeque<C2dMessage>,
    pub conn: Option<ConnRef>,
    /// The live connection's subscriptions, kept across reconnects with CleanSession 0 as IoT
    /// Hub does.
    pub subs: Subscriptions,
    pub methods: HashMap<String, oneshot::Sender<Result<MethodOutcome, String>>>,
    pub telemetry: u64,
}

impl Device {
    fn new(id_scope: &str, created: String) -> Self {
        Device {
            id_scope: id_scope.to_string(),
            created,
            twin: Twin::default(),
            c2d: VecDeque::new(),
            conn: None,
            subs: Subscriptions::default(),
            methods: HashMap::new(),
            telemetry: 0,
        }
    }

    fn fail_methods(&mut self, why: &str) {
        for (_, tx) in self.methods.drain() {
            let _ = tx.send(Err(why.to_string()));
        }
    }
}

/// Every device of every hub.
#[derive(Default)]
pub(crate) struct Registry {
    devices: HashMap<DeviceAddr, Device>,
}

impl Registry {
    /// Every device with this ID, in any hub.
    fn with_id<'a>(&'a self, id: &'a str) -> impl Iterator<Item = (&'a DeviceAddr, &'a Device)> {
        self.devices.iter().filter(move |(a, _)| a.id == id)
    }

    /// A device with the same ID spelled in another case, for "did you mean".
    fn near(&self, id: &str) -> Option<String> {
        self.devices
            .keys()
            .find(|a| a.id.eq_ignore_ascii_case(id))
            .map(|a| a.id.clone())
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }
}

/// What `registrations.jsonl` holds per line (no keys).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationRecord {
    registration_id: String,
    id_scope: String,
    assigned_hub: String,
    created_date_time_utc: String,
}

/// Loads earlier registrations of still-configured groups; the number restored. The first
/// registration of a hub's device ID keeps it, as it did when it was made.
pub(crate) fn restore(shared: &Shared) -> Result<usize, EmulatorError> {
    let text = match std::fs::read_to_string(&shared.registrations_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(EmulatorError::Registrations {
                path: shared.registrations_file.clone(),
                source,
            })
        }
    };
    let mut hub = shared.hub.lock().unwrap();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(r) = serde_json::from_str::<RegistrationRecord>(line) else {
            continue;
        };
        let Some(group) = shared.enrollments.by_scope(&r.id_scope) else {
            continue;
        };
        let addr = DeviceAddr::new(&group.hub_host, &r.registration_id);
        hub.devices
            .entry(addr)
            .or_insert_with(|| Device::new(&group.id_scope, r.created_date_time_utc));
    }
    Ok(hub.devices.len())
}

/// Refuses a registration that would take over a device another group registered in the
/// same hub.
pub(crate) fn check_owner(
    shared: &Shared,
    group: &Group,
    registration_id: &str,
) -> Result<(), Rejection> {
    let hub = shared.hub.lock().unwrap();
    let addr = DeviceAddr::new(&group.hub_host, registration_id);
    match hub.devices.get(&addr) {
        Some(d) if !d.id_scope.eq_ignore_ascii_case(&group.id_scope) => Err(Rejection::conflict(format!(
            "device {registration_id:?} already exists in hub {} through ID scope {}; a registration through ID scope {} cannot take it over (one hub device ID belongs to one enrollment): use distinct registration IDs per group, or assign the groups to different hubs (hub_host)",
            group.hub_host, d.id_scope, group.id_scope
        ))),
        _ => Ok(()),
    }
}

/// Adds a device after DPS assigned it (or finds it again); its creation time.
pub(crate) fn register_device(
    shared: &Shared,
    group: &Arc<Group>,
    registration_id: &str,
) -> Result<String, Rejection> {
    check_owner(shared, group, registration_id)?;
    let addr = DeviceAddr::new(&group.hub_host, registration_id);
    let mut hub = shared.hub.lock().unwrap();
    if let Some(d) = hub.devices.get(&addr) {
        return Ok(d.created.clone());
    }
    let created = clock::rfc3339(shared.clock.as_ref());
    hub.devices
        .insert(addr, Device::new(&group.id_scope, created.clone()));
    drop(hub);
    let record = RegistrationRecord {
        registration_id: registration_id.to_string(),
        id_scope: group.id_scope.clone(),
        assigned_hub: group.hub_host.clone(),
        created_date_time_utc: created.clone(),
    };
    let line = serde_json::to_string(&record).unwrap_or_default();
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&shared.registrations_file)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = appended {
        shared.journal.note(
            "warning",
            "emulator",
            &format!(
                "cannot record the registration in {}: {e}; it lasts until the emulator stops",
                shared.registrations_file.display()
            ),
            journal::none(),
        );
    }
    Ok(created)
}

/// A hub CONNECT that passed every check.
pub(crate) struct HubLogin {
    pub session_present: bool,
    pub subs: Subscriptions,
    pub warnings: Vec<String>,
    /// The token's `se`: the session ends then.
    pub expiry: u64,
}

/// A hub CONNECT, as the registry needs it.
pub(crate) struct HubConnect<'a> {
    pub conn_id: u64,
    pub host: &'a str,
    pub device_id: &'a str,
    pub password: &'a str,
    pub clean_session: bool,
    pub tx: mpsc::Sender<ToConn>,
    pub kick: oneshot::Sender<String>,
}

/// Authenticates a hub CONNECT and makes this connection the device's only one.
/// `Err((return_code, reason))` for a refusal.
pub(crate) fn connect(shared: &Shared, c: HubConnect<'_>) -> Result<HubLogin, (u8, Rejection)> {
    let now = now_secs(shared.clock.as_ref());
    let addr = DeviceAddr::new(c.host, c.device_id);
    let device_id = c.device_id;
    let mut hub = shared.hub.lock().unwrap();
    let Some(device) = hub.devices.get(&addr) else {
        let elsewhere: Vec<&str> = hub
            .with_id(device_id)
            .map(|(a, _)| a.hub.as_str())
            .collect();
        let reason = if !elsewhere.is_empty() {
            format!(
                "device {device_id:?} was assigned to hub {}, but connected as if to {:?}; use the assignedHub DPS returned",
                elsewhere.join(" and "),
                c.host
            )
        } else if let Some(k) = hub.near(device_id) {
            format!("device {device_id:?} is not registered, but {k:?} is: IoT Hub device IDs are case-sensitive (DPS used the registration ID's spelling as the device ID)")
        } else {
            format!("device {device_id:?} is not registered in this hub; it must register through DPS first (IoT Hub only knows devices DPS assigned to it)")
        };
        return Err((5, Rejection::unauthorized(reason)));
    };
    let Some(group) = shared.enrollments.by_scope(&device.id_scope).cloned() else {
        return Err((
            5,
            Rejection::unauthorized(format!(
                "device {device_id:?} belongs to ID scope {} which is no longer configured",
                device.id_scope
            )),
        ));
    };
    let audience = Audience::Hub {
        host: c.host.to_string(),
        device_id: device_id.to_string(),
    };
    let accepted = validate(&group, &audience, c.password, now).map_err(|r| (5, r))?;
    let device = hub.devices.get_mut(&addr).expect("checked above");
    if let Some(old) = device.conn.take() {
        if let Some(k) = old.kick {
            let _ = k.send(format!(
                "a new connection for device {device_id:?} replaced this one (IoT Hub allows one connection per device and drops the older, error 400027); two clients share this identity?"
            ));
        }
        device.fail_methods("the device's connection was replaced before it answered");
    }
    let session_present = !c.clean_session && !device.subs.is_empty();
    if c.clean_session {
        device.subs.clear();
    }
    device.conn = Some(ConnRef {
        id: c.conn_id,
        tx: c.tx,
        kick: Some(c.kick),
        since: clock::rfc3339(shared.clock.as_ref()),
    });
    let mut warnings = accepted.warnings;
    if accepted.key == KeySlot::Secondary {
        warnings.push("signed with the key derived from the group's secondary key (valid)".into());
    }
    Ok(HubLogin {
        session_present,
        subs: device.subs.clone(),
        warnings,
        expiry: accepted.expiry,
    })
}

/// The connection `conn_id` of `addr` ended: requeue unacknowledged C2D messages, fail calls
/// it will never answer, forget subscriptions if the session was clean.
pub(crate) fn disconnected(
    shared: &Shared,
    addr: &DeviceAddr,
    conn_id: u64,
    unacked: Vec<C2dMessage>,
    clean_session: bool,
) {
    let mut hub = shared.hub.lock().unwrap();
    let Some(device) = hub.devices.get_mut(addr) else {
        return;
    };
    for m in unacked.into_iter().rev() {
        device.c2d.push_front(m);
    }
    if device.conn.as_ref().is_some_and(|c| c.id == conn_id) {
        device.conn = None;
        device.fail_methods("the device disconnected before it answered");
        if clean_session {
            device.subs.clear();
        }
    }
}

/// Records the live connection's subscriptions and delivers C2D messages that now match.
pub(crate) fn set_subscriptions(
    shared: &Shared,
    addr: &DeviceAddr,
    conn_id: u64,
    subs: &Subscriptions,
) {
    let mut hub = shared.hub.lock().unwrap();
    let Some(device) = hub.devices.get_mut(addr) else {
        return;
    };
    if device.conn.as_ref().is_some_and(|c| c.id == conn_id) {
        device.subs = subs.clone();
        flush_c2d(&addr.id, device);
    }
}

/// Sends queued C2D messages while the device is connected and subscribed.
fn flush_c2d(device_id: &str, device: &mut Device) {
    let Some(conn) = &device.conn else { return };
    while let Some(m) = device.c2d.front() {
        let Ok(publish) = m.message.to_c2d(device_id) else {
            device.c2d.pop_front();
            continue;
        };
        let Some(qos) = device.subs.granted_qos(&publish.topic) else {
            return;
        };
        let m = device.c2d.pop_front().expect("front exists");
        let out = ToConn::Publish {
            topic: publish.topic,
            payload: publish.payload,
            qos,
            c2d: (qos > 0).then(|| m.clone()),
        };
        if conn.tx.try_send(out).is_err() {
            device.c2d.push_front(m);
            return;
        }
    }
}

/// Telemetry bookkeeping for `cloud devices`.
pub(crate) fn count_telemetry(shared: &Shared, addr: &DeviceAddr) {
    shared.counters.telemetry.fetch_add(1, Ordering::Relaxed);
    if let Some(d) = shared.hub.lock().unwrap().devices.get_mut(addr) {
        d.telemetry += 1;
    }
}

/// Twin GET: the document as IoT Hub writes it.
pub(crate) fn twin_document(shared: &Shared, addr: &DeviceAddr) -> Option<Vec<u8>> {
    shared
        .hub
        .lock()
        .unwrap()
        .devices
        .get(addr)
        .map(|d| d.twin.document_json())
}

/// Reported PATCH from the device: the new `$version`, or an explanation for a 400.
pub(crate) fn patch_reported(
    shared: &Shared,
    addr: &DeviceAddr,
    body: &[u8],
) -> Result<u64, String> {
    let mut hub = shared.hub.lock().unwrap();
    let d = hub
        .devices
        .get_mut(addr)
        .ok_or("device is not registered")?;
    d.twin.patch_reported(body)
}

/// A method answer from the device; false when no call with that `$rid` is waiting.
pub(crate) fn method_response(
    shared: &Shared,
    addr: &DeviceAddr,
    rid: &str,
    status: u16,
    body: &[u8],
) -> bool {
    let mut hub = shared.hub.lock().unwrap();
    let Some(tx) = hub
        .devices
        .get_mut(addr)
        .and_then(|d| d.methods.remove(rid))
    else {
        return false;
    };
    let payload = if topic::is_empty_body(body) {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    let _ = tx.send(Ok(MethodOutcome { status, payload }));
    true
}

// ---- The service side (admin interface) ----

/// An admin request that cannot be done, with IoT Hub's HTTP-like status.
#[derive(Debug)]
pub(crate) struct ServiceFailure {
    pub status: u16,
    pub message: String,
}

fn fail(status: u16, message: impl Into<String>) -> ServiceFailure {
    ServiceFailure {
        status,
        message: message.into(),
    }
}

/// The device a service request means: `hub` when given, else the only device with that ID.
fn resolve(
    reg: &Registry,
    hub: Option<&str>,
    device_id: &str,
) -> Result<DeviceAddr, ServiceFailure> {
    if let Some(h) = hub {
        let addr = DeviceAddr::new(h, device_id);
        if reg.devices.contains_key(&addr) {
            return Ok(addr);
        }
    } else {
        let found: Vec<&DeviceAddr> = reg.with_id(device_id).map(|(a, _)| a).collect();
        match found.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            many => {
                let hubs: Vec<&str> = many.iter().map(|a| a.hub.as_str()).collect();
                return Err(fail(
                    409,
                    format!(
                        "device {device_id:?} exists in hubs {}; say which with --hub",
                        hubs.join(", ")
                    ),
                ));
            }
        }
    }
    let in_hub = hub.map(|h| format!(" in hub {h}")).unwrap_or_default();
    Err(match reg.near(device_id) {
        Some(k) => fail(404, format!("device {device_id:?} is not registered{in_hub}; did you mean {k:?}? (device IDs are case-sensitive)")),
        None => fail(404, format!("device {device_id:?} is not registered{in_hub}; it appears once it has registered through DPS (see `dpskit cloud devices`)")),
    })
}

/// Every device, for `dpskit cloud devices`.
pub(crate) fn list_devices(shared: &Shared) -> Value {
    let hub = shared.hub.lock().unwrap();
    let mut addrs: Vec<&DeviceAddr> = hub.devices.keys().collect();
    addrs.sort_by(|a, b| (&a.id, &a.hub).cmp(&(&b.id, &b.hub)));
    Value::Array(
        addrs
            .into_iter()
            .map(|a| {
                let d = &hub.devices[a];
                json!({
                    "deviceId": a.id,
                    "idScope": d.id_scope,
                    "hub": a.hub,
                    "registered": d.created,
                    "connected": d.conn.is_some(),
                    "connectedSince": d.conn.as_ref().map(|c| c.since.clone()),
                    "telemetry": d.telemetry,
                    "pendingC2d": d.c2d.len(),
                    "subscriptions": d.subs.filters().collect::<Vec<_>>(),
                    "desiredVersion": d.twin.desired_version(),
                    "reportedVersion": d.twin.reported_version(),
                })
            })
            .collect(),
    )
}

/// Queues a C2D message; delivered at once when the device is connected and subscribed.
pub(crate) fn send_c2d(
    shared: &Shared,
    hub_host: Option<&str>,
    device_id: &str,
    body: Vec<u8>,
    properties: Vec<(String, Option<String>)>,
) -> Result<Value, ServiceFailure> {
    if body.len() > MAX_C2D_BYTES {
        return Err(fail(
            413,
            format!(
                "message of {} bytes exceeds IoT Hub's 64 KB cloud-to-device limit",
                body.len()
            ),
        ));
    }
    let mut hub = shared.hub.lock().unwrap();
    let addr = resolve(&hub, hub_host, device_id)?;
    let d = hub.devices.get_mut(&addr).expect("resolved");
    if d.c2d.len() >= MAX_PENDING_C2D {
        return Err(fail(403, format!("device {device_id:?} already has {MAX_PENDING_C2D} messages waiting (IoT Hub's limit, 403004); it is not receiving — is it subscribed to devices/{device_id}/messages/devicebound/#?")));
    }
    let mut message = Message::new(body);
    message.message_id = Some(shared.uuid_like());
    message.to = Some(format!("/devices/{device_id}/messages/devicebound"));
    message.ack = Some("none".into());
    for (k, v) in properties {
        message.properties.0.push((k, v));
    }
    message
        .to_properties()
        .map_err(|e| fail(400, e.to_string()))?;
    let id = message.message_id.clone().unwrap_or_default();
    d.c2d.push_back(C2dMessage { message });
    flush_c2d(device_id, d);
    let pending = d.c2d.len();
    let connected = d.conn.is_some();
    drop(hub);
    let note = if pending == 0 {
        "delivered".to_string()
    } else if connected {
        format!("queued ({pending} waiting): the device is connected but not subscribed to devices/{device_id}/messages/devicebound/#")
    } else {
        format!("queued ({pending} waiting) until the device connects")
    };
    shared.journal.note(
        "c2d",
        device_id,
        &format!("message {id} {note}"),
        json!({ "device": device_id, "hub": addr.hub, "messageId": id }),
    );
    Ok(json!({ "messageId": id, "delivered": pending == 0, "pending": pending }))
}

/// Calls a direct method and waits (on the emulator's clock) for the device's answer.
pub(crate) async fn invoke(
    shared: &Shared,
    hub_host: Option<&str>,
    device_id: &str,
    method: &str,
    payload: &Value,
    timeout: Duration,
) -> Result<MethodOutcome, ServiceFailure> {
    let body = serde_json::to_vec(payload).unwrap_or_default();
    if body.len() > MAX_METHOD_PAYLOAD_BYTES {
        return Err(fail(
            413,
            format!(
                "payload of {} bytes exceeds IoT Hub's 128 KB direct-method limit",
                body.len()
            ),
        ));
    }
    if method.is_empty() || method.contains(['/', '#', '+', '?']) {
        return Err(fail(
            400,
            format!(
                "method name {method:?}: use letters, digits, '-' and '_' (no '/', '#', '+', '?')"
            ),
        ));
    }
    let rid = shared.next_id().to_string();
    let (tx, rx) = oneshot::channel();
    let addr = {
        let mut hub = shared.hub.lock().unwrap();
        let addr = resolve(&hub, hub_host, device_id)?;
        let d = hub.devices.get_mut(&addr).expect("resolved");
        let Some(conn) = &d.conn else {
            return Err(fail(404, format!("device {device_id:?} is not online (IoT Hub 404103); direct methods need a connected device")));
        };
        let topic = ServiceTopic::MethodRequest {
            name: method.to_string(),
            rid: rid.clone(),
        }
        .to_topic();
        let Some(qos) = d.subs.granted_qos(&topic) else {
            return Err(fail(404, format!("device {device_id:?} is online but not subscribed to $iothub/methods/POST/# (IoT Hub 404103); it does not listen for methods")));
        };
        if conn
            .tx
            .try_send(ToConn::Publish {
                topic,
                payload: body,
                qos,
                c2d: None,
            })
            .is_err()
        {
            return Err(fail(
                503,
                format!("device {device_id:?} is not reading from its connection"),
            ));
        }
        d.methods.insert(rid.clone(), tx);
        addr
    };
    let deadline = clock::after(shared.clock.as_ref(), timeout);
    tokio::select! {
        answer = rx => match answer {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(why)) => Err(fail(404, why)),
            Err(_) => Err(fail(404, "the device disconnected before it answered")),
        },
        _ = shared.clock.sleep_until(deadline) => {
            if let Some(d) = shared.hub.lock().unwrap().devices.get_mut(&addr) {
                d.methods.remove(&rid);
            }
            Err(fail(504, format!("device {device_id:?} did not answer {method:?} within {} s (IoT Hub 504101); it must publish to $iothub/methods/res/{{status}}/?$rid={rid}", timeout.as_secs())))
        }
    }
}

/// Reads the twin, after applying a desired patch if given (pushed to a subscribed device).
pub(crate) fn twin(
    shared: &Shared,
    hub_host: Option<&str>,
    device_id: &str,
    desired: Option<&Value>,
) -> Result<Value, ServiceFailure> {
    let mut hub = shared.hub.lock().unwrap();
    let addr = resolve(&hub, hub_host, device_id)?;
    let d = hub.devices.get_mut(&addr).expect("resolved");
    let mut pushed = None;
    if let Some(patch) = desired {
        let (version, payload) = d.twin.patch_desired(patch).map_err(|e| fail(400, e))?;
        let topic = ServiceTopic::DesiredPatch {
            version: Some(version),
        }
        .to_topic();
        pushed = Some(false);
        if let (Some(conn), Some(qos)) = (&d.conn, d.subs.granted_qos(&topic)) {
            pushed = Some(
                conn.tx
                    .try_send(ToConn::Publish {
                        topic,
                        payload,
                        qos,
                        c2d: None,
                    })
                    .is_ok(),
            );
        }
    }
    let doc = serde_json::to_value(d.twin.document()).unwrap_or_default();
    let version = d.twin.desired_version();
    drop(hub);
    if let Some(pushed) = pushed {
        let how = if pushed {
            "pushed to the device"
        } else {
            "stored; the device gets it with its next twin GET (not connected or not subscribed to $iothub/twin/PATCH/properties/desired/#)"
        };
        shared.journal.note(
            "twin",
            device_id,
            &format!("desired properties updated to $version {version}; {how}"),
            json!({ "device": device_id, "hub": addr.hub }),
        );
    }
    Ok(json!({ "deviceId": device_id, "hub": addr.hub, "properties": doc, "pushed": pushed }))
}
