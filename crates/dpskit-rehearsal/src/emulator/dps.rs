//! The DPS side: register → `202 assigning` (operationId, retry-after) → poll → `200 assigned`
//! with `assignedHub` and `deviceId = registrationId`, as group enrollments do.
//!
//! A session whose credentials failed still gets an answer, a `401` with the reason in
//! `message`, so the device can print why (see the module docs of the emulator for the
//! choice); such a session ends after the CONNECT deadline. Operations are looked up per connection identity:
//! a device polling someone else's operation ID gets 404, never their assignment. Operations
//! in progress are bounded (one per device, a fixed number in all, their payloads too): past
//! that DPS answers 429 with retry-after, as it does when throttling.

use super::clock::{self, SharedClock};
use super::enrollment::{Group, Rejection};
use super::hub::registry;
use super::journal::Journal;
use super::{Reply, Shared};
use dpskit_core::dps::json::{
    DeviceRegistration, RegistrationOperationStatus, RegistrationState, ServiceError,
};
use dpskit_core::topic::{DeviceTopic, ServiceTopic};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Operations are forgotten this long after they were created.
const OPERATION_TTL: Duration = Duration::from_secs(600);
/// Custom payloads of operations in progress, all together.
const MAX_PENDING_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

struct Operation {
    id_scope: String,
    registration_id: String,
    ready_at_us: u64,
    expires_at_us: u64,
    payload: Option<Value>,
    payload_bytes: usize,
}

/// Operations in progress and the throttling counters.
pub(crate) struct DpsState {
    ops: HashMap<String, Operation>,
    payload_bytes: usize,
    /// Register requests seen per group (lower-case scope), for `throttle_first_n`.
    registers: HashMap<String, u32>,
    clock: SharedClock,
}

impl DpsState {
    pub fn new(clock: SharedClock) -> Self {
        DpsState {
            ops: HashMap::new(),
            payload_bytes: 0,
            registers: HashMap::new(),
            clock,
        }
    }

    /// Operations in progress.
    pub fn pending(&self) -> usize {
        self.ops.len()
    }

    fn remove(&mut self, op_id: &str) -> Option<Operation> {
        let op = self.ops.remove(op_id)?;
        self.payload_bytes -= op.payload_bytes;
        Some(op)
    }

    /// Forgets expired operations and the device's earlier ones (a new register replaces them).
    fn purge(&mut self, scope: &str, registration_id: &str) {
        let now = self.clock.now_unix_us();
        let stale: Vec<String> = self
            .ops
            .iter()
            .filter(|(_, op)| {
                op.expires_at_us <= now
                    || (op.registration_id == registration_id
                        && op.id_scope.eq_ignore_ascii_case(scope))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.remove(&id);
        }
    }
}

/// A DPS connection: who it claims to be and whether that held up.
pub(crate) struct DpsSession {
    pub id_scope: String,
    pub registration_id: String,
    pub auth: Result<Arc<Group>, Rejection>,
}

/// Answers one device publish; `Err` closes the connection with that reason.
pub(crate) fn on_publish(
    shared: &Shared,
    s: &DpsSession,
    topic: &str,
    payload: &[u8],
) -> Result<Vec<Reply>, String> {
    let parsed = DeviceTopic::parse(topic).map_err(|e| format!("{e}; DPS accepts only $dps/registrations/PUT/iotdps-register/?$rid=… and $dps/registrations/GET/iotdps-get-operationstatus/?$rid=…&operationId=…"))?;
    let (rid, poll) = match parsed {
        DeviceTopic::DpsRegister { rid } => (rid, None),
        DeviceTopic::DpsPoll { rid, operation_id } => (rid, Some(operation_id)),
        _ => return Err(format!("{topic:?} is an IoT Hub topic, sent on a DPS connection; connect to the assigned hub for telemetry, methods and twin")),
    };
    let group = match &s.auth {
        Ok(g) => g.clone(),
        Err(r) => return Ok(vec![error(shared, &rid, r, None)]),
    };
    let who = &s.registration_id;
    match poll {
        None => Ok(vec![register(shared, s, &group, &rid, payload)]),
        Some(op_id) => Ok(vec![poll_op(shared, who, &group, &rid, &op_id)]),
    }
}

fn register(
    shared: &Shared,
    s: &DpsSession,
    group: &Arc<Group>,
    rid: &str,
    payload: &[u8],
) -> Reply {
    let who = &s.registration_id;
    let refuse = |r: Rejection, retry: Option<u64>| {
        note_rejection(&shared.journal, who, &r);
        error(shared, rid, &r, retry)
    };
    let body = match DeviceRegistration::from_json(payload) {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                Rejection::bad_request(format!(
                    "the register body is not DeviceRegistration JSON ({e}); send {{\"registrationId\":\"{who}\"}} or nothing"
                )),
                None,
            )
        }
    };
    if body.registration_id.is_empty() {
        let what = if dpskit_core::topic::is_empty_body(payload) {
            "with an empty body"
        } else {
            "without registrationId"
        };
        shared.journal.note(
            "info",
            who,
            &format!("register request {what}: accepted, as DPS does; the registration ID {who:?} comes from the user name and the token"),
            json!({ "registrationId": who }),
        );
    } else if body.registration_id != *who {
        let case = if body.registration_id.eq_ignore_ascii_case(who) {
            " (they differ only in case; the key covers the exact bytes, so use one spelling everywhere)"
        } else {
            ""
        };
        return refuse(
            Rejection::bad_request(format!(
                "registration ID in the payload differs from the one in the username: payload {:?}, username {who:?}{case}",
                body.registration_id
            )),
            None,
        );
    }
    if let Err(r) = registry::check_owner(shared, group, who) {
        return refuse(r, None);
    }
    let settings = &shared.dps_settings;
    let mut dps = shared.dps.lock().unwrap();
    let n = dps
        .registers
        .entry(group.id_scope.to_ascii_lowercase())
        .or_insert(0);
    *n = n.saturating_add(1);
    if *n <= group.throttle_first_n {
        let r = Rejection::throttled(format!(
            "throttled: the emulator answers the first {} registrations of ID scope {} with 429 (throttle_first_n); retry after {} s",
            group.throttle_first_n, group.id_scope, settings.retry_after_secs
        ));
        drop(dps);
        shared.journal.note(
            "throttled",
            who,
            &r.reason,
            json!({ "registrationId": who }),
        );
        return error(shared, rid, &r, Some(settings.retry_after_secs));
    }
    dps.purge(&group.id_scope, who);
    let payload = body.payload.filter(|p| !p.is_null());
    let payload_bytes = payload
        .as_ref()
        .map_or(0, |p| serde_json::to_vec(p).map_or(0, |v| v.len()));
    let limit = shared.limits.pending_registrations;
    if dps.ops.len() >= limit || dps.payload_bytes + payload_bytes > MAX_PENDING_PAYLOAD_BYTES {
        let r = Rejection::throttled(format!(
            "throttled: {} registrations are in progress, the emulator's limit ({limit} devices, {} MB of custom payloads); retry after {} s",
            dps.ops.len(),
            MAX_PENDING_PAYLOAD_BYTES / (1024 * 1024),
            settings.retry_after_secs
        ));
        drop(dps);
        return refuse(r, Some(settings.retry_after_secs));
    }
    let now = shared.clock.now_unix_us();
    let op_id = format!("4.{}.{}", shared.unique_hex(), shared.uuid_like());
    dps.payload_bytes += payload_bytes;
    dps.ops.insert(
        op_id.clone(),
        Operation {
            id_scope: group.id_scope.clone(),
            registration_id: who.clone(),
            ready_at_us: now.saturating_add(settings.assign_delay_ms.saturating_mul(1000)),
            expires_at_us: now.saturating_add(OPERATION_TTL.as_micros() as u64),
            payload,
            payload_bytes,
        },
    );
    let status = RegistrationOperationStatus::assigning(&op_id, who);
    reply(202, rid, Some(settings.retry_after_secs), status.to_json())
}

fn poll_op(shared: &Shared, who: &str, group: &Arc<Group>, rid: &str, op_id: &str) -> Reply {
    let settings = &shared.dps_settings;
    let now = shared.clock.now_unix_us();
    let ready = {
        let dps = shared.dps.lock().unwrap();
        match dps.ops.get(op_id) {
            Some(op)
                if op.registration_id == who
                    && op.id_scope.eq_ignore_ascii_case(&group.id_scope)
                    && op.expires_at_us > now =>
            {
                now >= op.ready_at_us
            }
            _ => {
                drop(dps);
                let r = Rejection::not_found(format!(
                    "operation {op_id:?} is unknown for registration ID {who:?}; poll with the operationId of your own 202 answer (operations expire after {} min)",
                    OPERATION_TTL.as_secs() / 60
                ));
                note_rejection(&shared.journal, who, &r);
                return error(shared, rid, &r, None);
            }
        }
    };
    if !ready {
        let mut status = RegistrationOperationStatus::assigning(op_id, who);
        status
            .registration_state
            .get_or_insert_with(Default::default);
        return reply(202, rid, Some(settings.retry_after_secs), status.to_json());
    }
    let payload = shared
        .dps
        .lock()
        .unwrap()
        .remove(op_id)
        .and_then(|op| op.payload);
    let created = match registry::register_device(shared, group, who) {
        Ok(c) => c,
        Err(r) => {
            note_rejection(&shared.journal, who, &r);
            return error(shared, rid, &r, None);
        }
    };
    shared
        .counters
        .registrations
        .fetch_add(1, Ordering::Relaxed);
    let mut state = RegistrationState::assigned(who, &group.hub_host, who);
    state.created_date_time_utc = Some(created);
    state.last_updated_date_time_utc = Some(clock::rfc3339(shared.clock.as_ref()));
    state.etag = Some(format!("\"{}\"", shared.unique_hex()));
    state.payload = payload;
    shared.journal.note(
        "registered",
        who,
        &format!("assigned to hub {} as device {who:?}", group.hub_host),
        json!({ "registrationId": who, "idScope": group.id_scope, "assignedHub": group.hub_host }),
    );
    reply(
        200,
        rid,
        None,
        RegistrationOperationStatus::done(op_id, state).to_json(),
    )
}

fn reply(status: u16, rid: &str, retry_after: Option<u64>, payload: Vec<u8>) -> Reply {
    Reply {
        topic: ServiceTopic::DpsResponse {
            status,
            rid: rid.to_string(),
            retry_after,
        }
        .to_topic(),
        payload,
    }
}

fn error(shared: &Shared, rid: &str, r: &Rejection, retry_after: Option<u64>) -> Reply {
    let body = ServiceError::new(
        r.error_code,
        &r.reason,
        &shared.uuid_like(),
        &clock::rfc3339(shared.clock.as_ref()),
    );
    reply(r.status, rid, retry_after, body.to_json())
}

fn note_rejection(journal: &Journal, who: &str, r: &Rejection) {
    journal.note(
        "rejected",
        who,
        &format!("DPS {}: {}", r.status, r.reason),
        json!({ "registrationId": who, "status": r.status }),
    );
}

/// Which subscriptions a DPS device may make; `Err` says why not.
pub(crate) fn allowed_filter(filter: &str) -> Result<(), String> {
    if filter.starts_with("$dps/registrations/res/") {
        Ok(())
    } else {
        Err(format!(
            "{filter:?} is not a DPS topic; DPS supports only the filter $dps/registrations/res/#"
        ))
    }
}
