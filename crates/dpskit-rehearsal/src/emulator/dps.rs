//! The DPS side: register → `202 assigning` (operationId, retry-after) → poll → `200 assigned`
//! with `assignedHub` and `deviceId = registrationId`, as group enrollments do.
//!
//! A session whose credentials failed still gets answers, all `401` with the reason in
//! `message`, so the device can print why (see the module docs of `cloud` for the choice).
//! Operations are looked up per connection identity: a device polling someone else's
//! operation ID gets 404, never their assignment.

use super::enrollment::{Group, Rejection};
use super::hub::{register_device, tracking_id};
use super::journal::{now_rfc3339, Journal};
use super::Shared;
use dpskit_core::dps::json::{
    DeviceRegistration, RegistrationOperationStatus, RegistrationState, ServiceError,
};
use dpskit_core::topic::{DeviceTopic, ServiceTopic};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Operations are forgotten this long after they were created.
const OPERATION_TTL: Duration = Duration::from_secs(600);

struct Operation {
    id_scope: String,
    registration_id: String,
    ready_at: Instant,
    created: Instant,
    payload: Option<Value>,
}

#[derive(Default)]
pub(crate) struct DpsState {
    ops: HashMap<String, Operation>,
    /// Register requests seen per group (lower-case scope), for `throttle_first_n`.
    registers: HashMap<String, u32>,
}

/// A DPS connection: who it claims to be and whether that held up.
pub(crate) struct DpsSession {
    pub id_scope: String,
    pub registration_id: String,
    pub auth: Result<Arc<Group>, Rejection>,
}

/// One answer to publish to the device.
pub(crate) struct Reply {
    pub topic: String,
    pub payload: Vec<u8>,
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
        None => register(shared, s, &group, &rid, payload),
        Some(op_id) => Ok(vec![poll_op(shared, who, &group, &rid, &op_id)]),
    }
}

fn register(
    shared: &Shared,
    s: &DpsSession,
    group: &Arc<Group>,
    rid: &str,
    payload: &[u8],
) -> Result<Vec<Reply>, String> {
    let who = &s.registration_id;
    let body = match DeviceRegistration::from_json(payload) {
        Ok(b) => b,
        Err(e) => {
            let r = Rejection::bad_request(format!(
                "the register body is not DeviceRegistration JSON ({e}); send {{\"registrationId\":\"{who}\"}}"
            ));
            note_rejection(&shared.journal, who, &r);
            return Ok(vec![error(shared, rid, &r, None)]);
        }
    };
    if body.registration_id != *who {
        let case = if body.registration_id.eq_ignore_ascii_case(who) {
            " (they differ only in case; the key covers the exact bytes, so use one spelling everywhere)"
        } else {
            ""
        };
        let r = Rejection::bad_request(format!(
            "registration ID in the payload differs from the one in the username: payload {:?}, username {who:?}{case}",
            body.registration_id
        ));
        note_rejection(&shared.journal, who, &r);
        return Ok(vec![error(shared, rid, &r, None)]);
    }
    let settings = &shared.dps_settings;
    {
        let mut dps = shared.dps.lock().unwrap();
        let n = dps
            .registers
            .entry(group.id_scope.to_ascii_lowercase())
            .or_insert(0);
        *n += 1;
        if *n <= group.throttle_first_n {
            let r = Rejection {
                status: 429,
                error_code: 429001,
                reason: format!(
                    "throttled: the emulator answers the first {} registrations of ID scope {} with 429 (throttle_first_n); retry after {} s",
                    group.throttle_first_n, group.id_scope, settings.retry_after_secs
                ),
            };
            drop(dps);
            shared.journal.note(
                "throttled",
                who,
                &r.reason,
                json!({ "registrationId": who }),
            );
            return Ok(vec![error(
                shared,
                rid,
                &r,
                Some(settings.retry_after_secs),
            )]);
        }
        let now = Instant::now();
        dps.ops
            .retain(|_, op| now.duration_since(op.created) < OPERATION_TTL);
        let op_id = format!("4.{}.{}", shared.unique_hex(), tracking_id(shared));
        dps.ops.insert(
            op_id.clone(),
            Operation {
                id_scope: group.id_scope.clone(),
                registration_id: who.clone(),
                ready_at: now + Duration::from_millis(settings.assign_delay_ms),
                created: now,
                payload: body.payload.filter(|p| !p.is_null()),
            },
        );
        let status = RegistrationOperationStatus::assigning(&op_id, who);
        Ok(vec![reply(
            202,
            rid,
            Some(settings.retry_after_secs),
            status.to_json(),
        )])
    }
}

fn poll_op(shared: &Shared, who: &str, group: &Arc<Group>, rid: &str, op_id: &str) -> Reply {
    let settings = &shared.dps_settings;
    let (ready, payload) = {
        let dps = shared.dps.lock().unwrap();
        match dps.ops.get(op_id) {
            Some(op)
                if op.registration_id == who
                    && op.id_scope.eq_ignore_ascii_case(&group.id_scope) =>
            {
                (Instant::now() >= op.ready_at, op.payload.clone())
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
    shared.dps.lock().unwrap().ops.remove(op_id);
    let created = register_device(shared, group, who);
    shared
        .counters
        .registrations
        .fetch_add(1, Ordering::Relaxed);
    let mut state = RegistrationState::assigned(who, &group.hub_host, who);
    state.created_date_time_utc = Some(created);
    state.last_updated_date_time_utc = Some(now_rfc3339());
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
        &tracking_id(shared),
        &now_rfc3339(),
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
