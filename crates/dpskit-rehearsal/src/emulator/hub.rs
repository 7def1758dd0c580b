//! The IoT Hub side: the device registry (filled by DPS assignments), one live connection per
//! device, per-device C2D queues, twins with `$version`, and pending direct-method calls.
//!
//! Everything a device receives goes through its own entry here, addressed by the connection
//! that authenticated as that device, so a device only ever sees its own C2D messages, method
//! calls and twin. The lock is a plain mutex held for map updates only, never across I/O.

use super::enrollment::{validate, Audience, Group, Rejection};
use super::journal::{self, now_rfc3339};
use super::Shared;
use dpskit_core::hub::{Message, MAX_C2D_BYTES, MAX_METHOD_PAYLOAD_BYTES, MAX_REPORTED_BYTES};
use dpskit_core::topic::{self, filter_matches, ServiceTopic};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// C2D messages IoT Hub keeps per device.
pub(crate) const MAX_PENDING_C2D: usize = 50;
/// Largest desired-properties patch (IoT Hub's twin section limit).
const MAX_DESIRED_BYTES: usize = 32 * 1024;

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

/// A device twin: desired and reported sections, each with its own `$version`.
#[derive(Debug, Clone)]
pub(crate) struct Twin {
    desired: Map<String, Value>,
    desired_version: u64,
    reported: Map<String, Value>,
    reported_version: u64,
}

impl Default for Twin {
    fn default() -> Self {
        Twin {
            desired: Map::new(),
            desired_version: 1,
            reported: Map::new(),
            reported_version: 1,
        }
    }
}

impl Twin {
    /// `{"desired":{…,"$version":N},"reported":{…,"$version":M}}`, the twin GET body.
    pub fn document(&self) -> Value {
        let mut d = self.desired.clone();
        d.insert("$version".into(), self.desired_version.into());
        let mut r = self.reported.clone();
        r.insert("$version".into(), self.reported_version.into());
        json!({ "desired": d, "reported": r })
    }

    /// Merges a reported patch (`null` deletes); the new reported `$version`.
    pub fn patch_reported(&mut self, patch: &[u8]) -> Result<u64, String> {
        let patch = parse_patch(patch, MAX_REPORTED_BYTES, "reported properties")?;
        merge(&mut self.reported, &patch);
        self.reported_version += 1;
        Ok(self.reported_version)
    }

    /// Merges a desired patch; the new desired `$version`.
    pub fn patch_desired(&mut self, patch: &Value) -> Result<u64, String> {
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        let patch = parse_patch(&bytes, MAX_DESIRED_BYTES, "desired properties")?;
        merge(&mut self.desired, &patch);
        self.desired_version += 1;
        Ok(self.desired_version)
    }
}

fn parse_patch(body: &[u8], max: usize, what: &str) -> Result<Map<String, Value>, String> {
    if body.len() > max {
        return Err(format!(
            "{what} patch of {} bytes exceeds IoT Hub's {} KB limit",
            body.len(),
            max / 1024
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!("{what} patch is not JSON ({e}); send a JSON object such as {{\"fw\":\"1.2\"}}")
    })?;
    let Value::Object(map) = v else {
        return Err(format!("{what} patch must be a JSON object, got {v}"));
    };
    fn check(map: &Map<String, Value>, what: &str) -> Result<(), String> {
        for (k, v) in map {
            if k.starts_with('$') {
                return Err(format!(
                    "{what} patch: property name {k:?} starts with '$', which IoT Hub reserves"
                ));
            }
            if let Value::Object(inner) = v {
                check(inner, what)?;
            }
        }
        Ok(())
    }
    check(&map, what)?;
    Ok(map)
}

/// JSON merge patch: objects merge recursively, `null` deletes, anything else replaces.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                if let Some(Value::Object(t)) = target.get_mut(k) {
                    merge(t, p);
                } else {
                    let mut fresh = Map::new();
                    merge(&mut fresh, p);
                    target.insert(k.clone(), Value::Object(fresh));
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// One registered device.
pub(crate) struct Device {
    pub id_scope: String,
    pub hub_host: String,
    pub created: String,
    pub twin: Twin,
    pub c2d: VecDeque<C2dMessage>,
    pub conn: Option<ConnRef>,
    /// Subscriptions (filter, granted QoS): the live connection's, kept across reconnects
    /// with CleanSession 0 as IoT Hub does.
    pub subs: Vec<(String, u8)>,
    pub methods: HashMap<String, oneshot::Sender<Result<MethodOutcome, String>>>,
    pub telemetry: u64,
}

#[derive(Default)]
pub(crate) struct HubState {
    pub devices: HashMap<String, Device>,
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

/// Loads earlier registrations of still-configured groups; the number restored.
pub(crate) fn restore_registrations(shared: &Shared) -> anyhow::Result<usize> {
    let text = match std::fs::read_to_string(&shared.registrations_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => anyhow::bail!("cannot read {}: {e}", shared.registrations_file.display()),
    };
    let mut hub = shared.hub.lock().unwrap();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(r) = serde_json::from_str::<RegistrationRecord>(line) else {
            continue;
        };
        let Some(group) = shared.enrollments.by_scope(&r.id_scope) else {
            continue;
        };
        hub.devices.insert(
            r.registration_id.clone(),
            new_device(group, r.created_date_time_utc),
        );
    }
    Ok(hub.devices.len())
}

fn new_device(group: &Group, created: String) -> Device {
    Device {
        id_scope: group.id_scope.clone(),
        hub_host: group.hub_host.clone(),
        created,
        twin: Twin::default(),
        c2d: VecDeque::new(),
        conn: None,
        subs: Vec::new(),
        methods: HashMap::new(),
        telemetry: 0,
    }
}

/// Adds (or re-assigns) a device after DPS assigned it; returns its creation time.
pub(crate) fn register_device(
    shared: &Shared,
    group: &Arc<Group>,
    registration_id: &str,
) -> String {
    let mut hub = shared.hub.lock().unwrap();
    if let Some(d) = hub.devices.get_mut(registration_id) {
        if d.id_scope.eq_ignore_ascii_case(&group.id_scope) && d.hub_host == group.hub_host {
            return d.created.clone();
        }
        // Moved to another group: a new identity in that hub, as DPS re-provisioning does.
        d.id_scope = group.id_scope.clone();
        d.hub_host = group.hub_host.clone();
    } else {
        hub.devices.insert(
            registration_id.to_string(),
            new_device(group, now_rfc3339()),
        );
    }
    let created = hub.devices[registration_id].created.clone();
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
    created
}

/// A hub CONNECT that passed every check.
pub(crate) struct HubLogin {
    pub session_present: bool,
    pub subs: Vec<(String, u8)>,
    pub warnings: Vec<String>,
}

/// Authenticates a hub CONNECT and makes this connection the device's only one.
/// `Err((return_code, reason))` for a refusal.
#[allow(clippy::too_many_arguments)]
pub(crate) fn connect(
    shared: &Shared,
    conn_id: u64,
    host: &str,
    device_id: &str,
    password: &str,
    clean_session: bool,
    tx: mpsc::Sender<ToConn>,
    kick: oneshot::Sender<String>,
) -> Result<HubLogin, (u8, Rejection)> {
    let now = unix_now();
    let mut hub = shared.hub.lock().unwrap();
    let Some(device) = hub.devices.get(device_id) else {
        let near = hub
            .devices
            .keys()
            .find(|k| k.eq_ignore_ascii_case(device_id))
            .cloned();
        let reason = match near {
            Some(k) => format!("device {device_id:?} is not registered, but {k:?} is: IoT Hub device IDs are case-sensitive (DPS used the registration ID's spelling as the device ID)"),
            None => format!("device {device_id:?} is not registered in this hub; it must register through DPS first (IoT Hub only knows devices DPS assigned to it)"),
        };
        return Err((5, Rejection::unauthorized(reason)));
    };
    if !device.hub_host.eq_ignore_ascii_case(host) {
        return Err((5, Rejection::unauthorized(format!(
            "device {device_id:?} was assigned to hub {:?}, but connected as if to {host:?}; use the assignedHub DPS returned",
            device.hub_host
        ))));
    }
    let Some(group) = shared.enrollments.by_scope(&device.id_scope).cloned() else {
        return Err((
            5,
            Rejection::unauthorized(format!(
                "device {device_id:?} belongs to ID scope {} which is no longer configured",
                device.id_scope
            )),
        ));
    };
    let accepted =
        validate(&group, Audience::Hub { host, device_id }, password, now).map_err(|r| (5, r))?;
    let device = hub.devices.get_mut(device_id).expect("checked above");
    if let Some(old) = device.conn.take() {
        if let Some(k) = old.kick {
            let _ = k.send(format!(
                "a new connection for device {device_id:?} replaced this one (IoT Hub allows one connection per device and drops the older, error 400027); two clients share this identity?"
            ));
        }
        fail_methods(
            device,
            "the device's connection was replaced before it answered",
        );
    }
    let session_present = !clean_session && !device.subs.is_empty();
    if clean_session {
        device.subs.clear();
    }
    device.conn = Some(ConnRef {
        id: conn_id,
        tx,
        kick: Some(kick),
        since: now_rfc3339(),
    });
    let mut warnings = accepted.warnings;
    if accepted.key == super::enrollment::KeySlot::Secondary {
        warnings.push("signed with the key derived from the group's secondary key (valid)".into());
    }
    Ok(HubLogin {
        session_present,
        subs: device.subs.clone(),
        warnings,
    })
}

/// The connection `conn_id` of `device_id` ended: requeue unacknowledged C2D messages,
/// fail calls it will never answer, forget subscriptions if the session was clean.
pub(crate) fn disconnected(
    shared: &Shared,
    device_id: &str,
    conn_id: u64,
    unacked: Vec<C2dMessage>,
    clean_session: bool,
) {
    let mut hub = shared.hub.lock().unwrap();
    let Some(device) = hub.devices.get_mut(device_id) else {
        return;
    };
    for m in unacked.into_iter().rev() {
        device.c2d.push_front(m);
    }
    if device.conn.as_ref().is_some_and(|c| c.id == conn_id) {
        device.conn = None;
        fail_methods(device, "the device disconnected before it answered");
        if clean_session {
            device.subs.clear();
        }
    }
}

fn fail_methods(device: &mut Device, why: &str) {
    for (_, tx) in device.methods.drain() {
        let _ = tx.send(Err(why.to_string()));
    }
}

/// Records the live connection's subscriptions and delivers C2D messages that now match.
pub(crate) fn set_subscriptions(
    shared: &Shared,
    device_id: &str,
    conn_id: u64,
    subs: &[(String, u8)],
) {
    let mut hub = shared.hub.lock().unwrap();
    let Some(device) = hub.devices.get_mut(device_id) else {
        return;
    };
    if device.conn.as_ref().is_some_and(|c| c.id == conn_id) {
        device.subs = subs.to_vec();
        flush_c2d(device_id, device);
    }
}

/// The QoS a publish on `topic` goes out with, or `None` when nothing matches.
pub(crate) fn granted_qos(subs: &[(String, u8)], topic: &str) -> Option<u8> {
    subs.iter()
        .filter(|(f, _)| filter_matches(f, topic))
        .map(|(_, q)| *q)
        .max()
}

/// Which subscriptions a hub device may make; `Err` says why not.
pub(crate) fn allowed_filter(device_id: &str, filter: &str) -> Result<(), String> {
    let own = format!("devices/{device_id}/messages/devicebound/");
    let own_exact = format!("devices/{device_id}/messages/devicebound");
    let allowed = [
        own.as_str(),
        "$iothub/methods/POST/",
        "$iothub/twin/res/",
        "$iothub/twin/PATCH/properties/desired/",
    ];
    if filter == own_exact || allowed.iter().any(|p| filter.starts_with(p)) {
        return Ok(());
    }
    if let Some(rest) = filter.strip_prefix("devices/") {
        let other = rest.split('/').next().unwrap_or("");
        if other != device_id {
            return Err(format!(
                "device {device_id:?} may not subscribe to {filter:?}: it names device {other:?}; a device can only receive its own messages"
            ));
        }
    }
    if filter.contains('#') && !filter.starts_with("$iothub/")
        || filter == "+"
        || filter.starts_with("+/")
    {
        return Err(format!("device {device_id:?} may not subscribe to wildcard {filter:?}; IoT Hub allows only the device's own topics"));
    }
    Err(format!(
        "{filter:?} is not an IoT Hub device topic; subscribe to devices/{device_id}/messages/devicebound/#, $iothub/methods/POST/#, $iothub/twin/res/# or $iothub/twin/PATCH/properties/desired/#"
    ))
}

/// Sends queued C2D messages while the device is connected and subscribed.
fn flush_c2d(device_id: &str, device: &mut Device) {
    let Some(conn) = &device.conn else { return };
    while let Some(m) = device.c2d.front() {
        let Ok(publish) = m.message.to_c2d(device_id) else {
            device.c2d.pop_front();
            continue;
        };
        let Some(qos) = granted_qos(&device.subs, &publish.topic) else {
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
pub(crate) fn count_telemetry(shared: &Shared, device_id: &str) {
    shared.counters.telemetry.fetch_add(1, Ordering::Relaxed);
    if let Some(d) = shared.hub.lock().unwrap().devices.get_mut(device_id) {
        d.telemetry += 1;
    }
}

/// Twin GET: the document.
pub(crate) fn twin_document(shared: &Shared, device_id: &str) -> Option<Value> {
    shared
        .hub
        .lock()
        .unwrap()
        .devices
        .get(device_id)
        .map(|d| d.twin.document())
}

/// Reported PATCH from the device: the new `$version`, or an explanation for a 400.
pub(crate) fn patch_reported(shared: &Shared, device_id: &str, body: &[u8]) -> Result<u64, String> {
    let mut hub = shared.hub.lock().unwrap();
    let d = hub
        .devices
        .get_mut(device_id)
        .ok_or("device is not registered")?;
    d.twin.patch_reported(body)
}

/// A method answer from the device; false when no call with that `$rid` is waiting.
pub(crate) fn method_response(
    shared: &Shared,
    device_id: &str,
    rid: &str,
    status: u16,
    body: &[u8],
) -> bool {
    let mut hub = shared.hub.lock().unwrap();
    let Some(tx) = hub
        .devices
        .get_mut(device_id)
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

fn unknown_device(hub: &HubState, device_id: &str) -> ServiceFailure {
    let near = hub
        .devices
        .keys()
        .find(|k| k.eq_ignore_ascii_case(device_id));
    match near {
        Some(k) => fail(404, format!("device {device_id:?} is not registered; did you mean {k:?}? (device IDs are case-sensitive)")),
        None => fail(404, format!("device {device_id:?} is not registered; it appears once it has registered through DPS (see `dpskit cloud devices`)")),
    }
}

/// Every device, for `dpskit cloud devices`.
pub(crate) fn list_devices(shared: &Shared) -> Value {
    let hub = shared.hub.lock().unwrap();
    let mut ids: Vec<&String> = hub.devices.keys().collect();
    ids.sort();
    Value::Array(
        ids.into_iter()
            .map(|id| {
                let d = &hub.devices[id];
                json!({
                    "deviceId": id,
                    "idScope": d.id_scope,
                    "hub": d.hub_host,
                    "registered": d.created,
                    "connected": d.conn.is_some(),
                    "connectedSince": d.conn.as_ref().map(|c| c.since.clone()),
                    "telemetry": d.telemetry,
                    "pendingC2d": d.c2d.len(),
                    "subscriptions": d.subs.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
                    "desiredVersion": d.twin.desired_version,
                    "reportedVersion": d.twin.reported_version,
                })
            })
            .collect(),
    )
}

/// Queues a C2D message; delivered at once when the device is connected and subscribed.
pub(crate) fn send_c2d(
    shared: &Shared,
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
    if !hub.devices.contains_key(device_id) {
        return Err(unknown_device(&hub, device_id));
    }
    let d = hub.devices.get_mut(device_id).expect("checked");
    if d.c2d.len() >= MAX_PENDING_C2D {
        return Err(fail(403, format!("device {device_id:?} already has {MAX_PENDING_C2D} messages waiting (IoT Hub's limit, 403004); it is not receiving — is it subscribed to devices/{device_id}/messages/devicebound/#?")));
    }
    let mut message = Message::new(body);
    message.message_id = Some(uuid_like(shared));
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
        json!({ "device": device_id, "messageId": id }),
    );
    Ok(json!({ "messageId": id, "delivered": pending == 0, "pending": pending }))
}

/// Calls a direct method and waits for the device's answer.
pub(crate) async fn invoke(
    shared: &Shared,
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
    {
        let mut hub = shared.hub.lock().unwrap();
        if !hub.devices.contains_key(device_id) {
            return Err(unknown_device(&hub, device_id));
        }
        let d = hub.devices.get_mut(device_id).expect("checked");
        let Some(conn) = &d.conn else {
            return Err(fail(404, format!("device {device_id:?} is not online (IoT Hub 404103); direct methods need a connected device")));
        };
        let topic = ServiceTopic::MethodRequest {
            name: method.to_string(),
            rid: rid.clone(),
        }
        .to_topic();
        let Some(qos) = granted_qos(&d.subs, &topic) else {
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
    }
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Ok(outcome))) => Ok(outcome),
        Ok(Ok(Err(why))) => Err(fail(404, why)),
        Ok(Err(_)) => Err(fail(404, "the device disconnected before it answered")),
        Err(_) => {
            if let Some(d) = shared.hub.lock().unwrap().devices.get_mut(device_id) {
                d.methods.remove(&rid);
            }
            Err(fail(504, format!("device {device_id:?} did not answer {method:?} within {} s (IoT Hub 504101); it must publish to $iothub/methods/res/{{status}}/?$rid={rid}", timeout.as_secs())))
        }
    }
}

/// Reads the twin, after applying a desired patch if given (pushed to a subscribed device).
pub(crate) fn twin(
    shared: &Shared,
    device_id: &str,
    desired: Option<&Value>,
) -> Result<Value, ServiceFailure> {
    let mut hub = shared.hub.lock().unwrap();
    if !hub.devices.contains_key(device_id) {
        return Err(unknown_device(&hub, device_id));
    }
    let d = hub.devices.get_mut(device_id).expect("checked");
    let mut pushed = None;
    if let Some(patch) = desired {
        let version = d.twin.patch_desired(patch).map_err(|e| fail(400, e))?;
        let mut body = patch.as_object().cloned().unwrap_or_default();
        body.insert("$version".into(), version.into());
        let topic = ServiceTopic::DesiredPatch {
            version: Some(version),
        }
        .to_topic();
        pushed = Some(false);
        if let (Some(conn), Some(qos)) = (&d.conn, granted_qos(&d.subs, &topic)) {
            let payload = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
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
    let doc = d.twin.document();
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
            &format!(
                "desired properties updated to $version {}; {how}",
                doc["desired"]["$version"]
            ),
            json!({ "device": device_id }),
        );
    }
    Ok(json!({ "deviceId": device_id, "properties": doc, "pushed": pushed }))
}

/// `8-4-4-4-12` hex, unique enough for message IDs.
fn uuid_like(shared: &Shared) -> String {
    let a = shared.unique_hex();
    let b = shared.unique_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &a[..8],
        &a[8..12],
        &a[12..16],
        &b[..4],
        &b[4..16]
    )
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn tracking_id(shared: &Shared) -> String {
    uuid_like(shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_merge_and_versions() {
        let mut t = Twin::default();
        assert_eq!(
            t.patch_reported(br#"{"fw":"1.0","net":{"rssi":-60,"ip":"x"}}"#)
                .unwrap(),
            2
        );
        assert_eq!(
            t.patch_reported(br#"{"net":{"ip":null},"fw":null}"#)
                .unwrap(),
            3
        );
        assert_eq!(
            t.document()["reported"],
            json!({"net":{"rssi":-60},"$version":3})
        );
        assert!(t
            .patch_reported(b"[1]")
            .unwrap_err()
            .contains("JSON object"));
        assert!(t
            .patch_reported(br#"{"$version":4}"#)
            .unwrap_err()
            .contains("reserves"));
        assert_eq!(t.patch_desired(&json!({"interval":5})).unwrap(), 2);
        assert_eq!(t.document()["desired"], json!({"interval":5,"$version":2}));
    }

    #[test]
    fn subscription_rules() {
        assert!(allowed_filter("d1", "devices/d1/messages/devicebound/#").is_ok());
        assert!(allowed_filter("d1", "$iothub/methods/POST/#").is_ok());
        assert!(allowed_filter("d1", "$iothub/twin/res/#").is_ok());
        let e = allowed_filter("d1", "devices/d2/messages/devicebound/#").unwrap_err();
        assert!(e.contains("names device \"d2\""), "{e}");
        assert!(allowed_filter("d1", "#").is_err());
        assert!(allowed_filter("d1", "devices/+/messages/devicebound/#").is_err());
    }
}
