//! The DPS registration client: a sans-IO state machine.
//!
//! ```text
//! Start → Connect ─ConnAck 0→ Subscribe ─SubAck→ PUT register ─202→ wait retry-after
//!   → GET operation status ─202→ wait … ─200 assigned→ Disconnect + Output(Ok(Assignment))
//! ```
//!
//! * Request IDs are `1, 2, 3, …` per client, so transcripts are deterministic; an answer whose
//!   `$rid` is not the request in flight is stale and ignored.
//! * `retry-after` is honoured on every 202 (2 s when absent, at most 10 minutes). The Python
//!   SDK waits a fixed 2 s after the first 202; we follow the server instead.
//! * 429, ≥ 500, no answer within `request_timeout_secs`, a dropped connection and CONNACK 3
//!   are retried, at most `max_retries` times in a row; every other error is final.
//! * After a reconnect the client polls the operation it already has instead of registering
//!   again.

pub mod json;

use crate::backoff::Backoff;
use crate::config::DeviceConfig;
use crate::ident::{IdScope, RegistrationId};
use crate::key::DeviceKey;
use crate::mqtt::{
    self, Action, ConnectParams, Event, Publish, QoS, SetupError, MQTT_TLS_PORT, UNAUTHORIZED_HINT,
};
use crate::sas::{dps_resource, SasToken};
use crate::topic::{DeviceTopic, ServiceTopic, DPS_RESPONSES_FILTER};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use json::{DeviceRegistration, RegistrationOperationStatus, RegistrationStatus, ServiceError};
use serde_json::Value;

/// Lifetime of the DPS SAS token (the Python SDK's default).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
/// How long to wait for an answer to a publish (the Python SDK's per-request timeout).
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// Wait before polling when DPS gives no `retry-after`.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 2;
/// Longest `retry-after` obeyed, so a bad value cannot park a device for hours.
pub const MAX_RETRY_AFTER_SECS: u64 = 600;
/// Keep-alive for the short DPS session (the Python SDK's).
pub const DEFAULT_KEEP_ALIVE_SECS: u16 = 60;
/// Largest DPS message (register body).
pub const MAX_MESSAGE_BYTES: usize = 96 * 1024;

/// What the client needs. Build with [`DpsConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct DpsConfig {
    pub id_scope: IdScope,
    pub registration_id: RegistrationId,
    pub device_key: DeviceKey,
    /// DPS host, normally `global.azure-devices-provisioning.net`.
    pub host: String,
    /// 8883 unless the configured host said `host:port` (an emulator on another port).
    pub port: u16,
    /// Custom allocation data sent as `payload`.
    pub payload: Option<Value>,
    pub token_ttl_secs: u64,
    pub keep_alive_secs: u16,
    pub request_timeout_secs: u64,
    /// Transient failures in a row before giving up.
    pub max_retries: u32,
    /// `assigning` answers before giving up.
    pub max_polls: u32,
}

impl DpsConfig {
    pub fn new(
        id_scope: IdScope,
        registration_id: RegistrationId,
        device_key: DeviceKey,
        host: &str,
    ) -> Self {
        let (host, port) = match host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => match p.parse::<u16>() {
                Ok(port) if port > 0 => (h, port),
                _ => (host, MQTT_TLS_PORT),
            },
            _ => (host, MQTT_TLS_PORT),
        };
        DpsConfig {
            id_scope,
            registration_id,
            device_key,
            host: host.to_string(),
            port,
            payload: None,
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            keep_alive_secs: DEFAULT_KEEP_ALIVE_SECS,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            max_retries: 5,
            max_polls: 30,
        }
    }

    /// The settings a provisioned board carries.
    pub fn from_device_config(cfg: &DeviceConfig) -> Self {
        DpsConfig::new(
            cfg.id_scope.clone(),
            cfg.registration_id.clone(),
            cfg.device_key.clone(),
            &cfg.dps_host,
        )
    }

    /// Sets the custom payload from JSON text.
    pub fn with_payload_json(mut self, json: &str) -> Result<Self, SetupError> {
        let value: Value = serde_json::from_str(json).map_err(|e| SetupError {
            field: "DPS payload",
            reason: format!(
                "not valid JSON ({e}); give a JSON value such as {{\"model\":\"esp32s3\"}}"
            ),
        })?;
        self.payload = Some(value);
        Ok(self)
    }
}

/// Where DPS put the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The IoT Hub host name to connect to next.
    pub assigned_hub: String,
    /// The hub device ID (the registration ID for group enrollments).
    pub device_id: String,
    /// `initialAssignment`, `deviceDataMigrated`, …
    pub substatus: Option<String>,
    /// The custom-allocation return payload.
    pub payload: Option<Value>,
    pub operation_id: String,
}

/// A failure DPS's client retries, kept to explain why it finally gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transient {
    /// `429`: DPS throttled the request.
    Throttled {
        error_code: Option<u32>,
        message: Option<String>,
    },
    /// `5xx`.
    ServerError {
        status: u16,
        error_code: Option<u32>,
        message: Option<String>,
    },
    /// Nothing came back in time.
    NoResponse { waited_secs: u64 },
    /// The connection dropped or could not be opened.
    ConnectionLost,
    /// CONNACK 3.
    ServerUnavailable,
}

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transient::Throttled { error_code, message } => {
                f.write_str("DPS answered 429 Too Many Requests")?;
                details(f, *error_code, message.as_deref(), None)?;
                f.write_str("; DPS allows 1,000 registrations per minute per service and 5 polls per 10 s per device")
            }
            Transient::ServerError { status, error_code, message } => {
                write!(f, "DPS answered {status} (a service-side error)")?;
                details(f, *error_code, message.as_deref(), None)
            }
            Transient::NoResponse { waited_secs } => {
                write!(f, "DPS did not answer within {waited_secs} s")
            }
            Transient::ConnectionLost => f.write_str(
                "the connection to DPS dropped or could not be opened (check Wi-Fi, DNS, the DPS host name and the root CA)",
            ),
            Transient::ServerUnavailable => f.write_str("DPS answered CONNACK 3 (server unavailable)"),
        }
    }
}

/// ` (errorCode 401002, "Unauthorized", trackingId …)`, or nothing when DPS sent no details.
fn details(
    f: &mut fmt::Formatter<'_>,
    code: Option<u32>,
    message: Option<&str>,
    tracking: Option<&str>,
) -> fmt::Result {
    let mut parts: Vec<String> = Vec::new();
    if let Some(c) = code {
        parts.push(format!("errorCode {c}"));
    }
    if let Some(m) = message {
        parts.push(format!("{m:?}"));
    }
    if let Some(t) = tracking {
        parts.push(format!("trackingId {t}"));
    }
    if !parts.is_empty() {
        write!(f, " ({})", parts.join(", "))?;
    }
    Ok(())
}

/// Why registration ended without an assignment. `Display` is one line of plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpsError {
    /// CONNACK with a non-zero return code other than 3.
    ConnectRefused { code: u8 },
    /// The SUBACK refused `$dps/registrations/res/#`.
    SubscribeRefused,
    /// `401` on the register or poll publish.
    Unauthorized {
        error_code: Option<u32>,
        message: Option<String>,
        tracking_id: Option<String>,
    },
    /// Another `3xx`/`4xx` answer (400 bad request, 404 not found, 409/412 conflicts, …).
    Rejected {
        status: u16,
        error_code: Option<u32>,
        message: Option<String>,
        tracking_id: Option<String>,
    },
    /// The registration ended with status `failed`.
    Failed {
        error_code: Option<u32>,
        message: Option<String>,
    },
    /// The enrollment or registration is disabled.
    Disabled,
    /// A 2xx answer with a status the client cannot act on (`unassigned`, unknown).
    UnexpectedStatus { status: String },
    /// A 2xx answer that is not the JSON DPS sends.
    BadResponse { reason: String },
    /// Still `assigning` after `max_polls` polls.
    StillAssigning { polls: u32 },
    /// Too many transient failures in a row; `last` says what the last one was.
    GaveUp { attempts: u32, last: Transient },
}

impl fmt::Display for DpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DpsError::ConnectRefused { code: 5 } => write!(
                f,
                "DPS refused the connection: not authorized (CONNACK 5); {UNAUTHORIZED_HINT}"
            ),
            DpsError::ConnectRefused { code } => write!(
                f,
                "DPS refused the connection: {} (CONNACK {code}); check the ID scope, registration ID and MQTT settings",
                mqtt::connack_text(*code)
            ),
            DpsError::SubscribeRefused => f.write_str(
                "DPS refused the subscription to $dps/registrations/res/#; the connection is not a DPS device connection (check the DPS host)",
            ),
            DpsError::Unauthorized { error_code, message, tracking_id } => {
                f.write_str("DPS rejected the device's credentials: 401 Unauthorized")?;
                details(f, *error_code, message.as_deref(), tracking_id.as_deref())?;
                write!(f, "; {UNAUTHORIZED_HINT}")
            }
            DpsError::Rejected { status, error_code, message, tracking_id } => {
                let what = match status {
                    400 => "the request is malformed",
                    404 => "no enrollment or operation matches; check the ID scope and that the enrollment group exists and is enabled",
                    409 | 412 => "it conflicts with the registration's current state; retry later",
                    _ => "the request was refused",
                };
                write!(f, "DPS answered {status}")?;
                details(f, *error_code, message.as_deref(), tracking_id.as_deref())?;
                write!(f, ": {what}")
            }
            DpsError::Failed { error_code, message } => {
                f.write_str("DPS could not assign the device: status failed")?;
                details(f, *error_code, message.as_deref(), None)?;
                f.write_str("; check the enrollment group's allocation policy and linked hubs")
            }
            DpsError::Disabled => f.write_str(
                "DPS says the enrollment or this registration is disabled; enable it in the DPS portal",
            ),
            DpsError::UnexpectedStatus { status } => write!(
                f,
                "DPS answered with registration status {status:?}, which is neither assigned nor failed"
            ),
            DpsError::BadResponse { reason } => write!(f, "DPS sent an answer this client cannot read: {reason}"),
            DpsError::StillAssigning { polls } => write!(
                f,
                "DPS was still assigning the device after {polls} polls; try again later"
            ),
            DpsError::GaveUp { attempts, last } => {
                write!(f, "gave up on DPS after {attempts} failed attempts in a row; last: {last}")
            }
        }
    }
}

/// What the client outputs once: the assignment or why there is none.
pub type DpsOutcome = Result<Assignment, DpsError>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Connecting,
    Subscribing,
    /// A register (no operation yet) or poll is in flight.
    Awaiting {
        rid: String,
        deadline: u64,
    },
    /// Waiting for retry-after before the next request.
    Waiting {
        until: u64,
    },
    Reconnecting {
        until: u64,
    },
    Done,
}

/// The registration state machine. See the module docs.
#[derive(Debug, Clone)]
pub struct DpsClient {
    cfg: DpsConfig,
    state: State,
    operation_id: Option<String>,
    next_rid: u64,
    failures: u32,
    polls: u32,
    /// A transient cause seen before the connection drops (CONNACK 3).
    pending: Option<Transient>,
    backoff: Backoff,
    outcome: Option<DpsOutcome>,
}

type Actions = Vec<Action<DpsOutcome>>;

impl DpsClient {
    pub fn new(cfg: DpsConfig) -> Result<Self, SetupError> {
        mqtt::check_keep_alive(cfg.keep_alive_secs)?;
        if cfg.token_ttl_secs < 60 {
            return Err(SetupError {
                field: "DPS token lifetime",
                reason: format!(
                    "{} s is too short for a registration; use at least 60 s",
                    cfg.token_ttl_secs
                ),
            });
        }
        if cfg.request_timeout_secs == 0 {
            return Err(SetupError {
                field: "DPS request timeout",
                reason: "0 s; use e.g. 30 s".into(),
            });
        }
        let client = DpsClient {
            cfg,
            state: State::Idle,
            operation_id: None,
            next_rid: 1,
            failures: 0,
            polls: 0,
            pending: None,
            backoff: Backoff::new(2_000, 30_000, 0),
            outcome: None,
        };
        let body = client.register_body();
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(SetupError {
                field: "DPS payload",
                reason: format!(
                    "the register message is {} bytes; DPS accepts at most {MAX_MESSAGE_BYTES}",
                    body.len()
                ),
            });
        }
        Ok(client)
    }

    /// CONNECT parameters with a token valid from `now_ms` for `token_ttl_secs`.
    pub fn connect_params(&self, now_ms: u64) -> ConnectParams {
        let id = self.cfg.registration_id.as_str();
        let scope = self.cfg.id_scope.as_str();
        let expiry = now_ms / 1000 + self.cfg.token_ttl_secs;
        let token = SasToken::generate(
            &self.cfg.device_key,
            &dps_resource(scope, id),
            expiry,
            Some("registration"),
        );
        ConnectParams {
            host: self.cfg.host.clone(),
            port: self.cfg.port,
            client_id: id.to_string(),
            username: mqtt::dps_username(scope, id),
            password: token.to_string(),
            clean_session: true,
            keep_alive_secs: self.cfg.keep_alive_secs,
            token_expiry: expiry,
        }
    }

    /// `{"registrationId":…[,"payload":…]}`.
    pub fn register_body(&self) -> Vec<u8> {
        DeviceRegistration {
            registration_id: self.cfg.registration_id.as_str().to_string(),
            payload: self.cfg.payload.clone(),
        }
        .to_json()
    }

    /// When to send the next [`Event::Tick`] (Unix ms), if anything is scheduled.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            State::Awaiting { deadline, .. } => Some(deadline),
            State::Waiting { until } | State::Reconnecting { until } => Some(until),
            _ => None,
        }
    }

    /// The final result, once there is one.
    pub fn outcome(&self) -> Option<&DpsOutcome> {
        self.outcome.as_ref()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds one event at `now_ms` (Unix ms) and returns what to do, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Actions {
        match (&self.state, event) {
            (State::Done, _) => vec![],
            (State::Idle, Event::Start) => {
                self.state = State::Connecting;
                vec![Action::Connect(self.connect_params(now_ms))]
            }
            (State::Idle, _) => vec![],
            (_, Event::Disconnected { random }) => {
                let reason = self.pending.take().unwrap_or(Transient::ConnectionLost);
                if let Some(done) = self.count_failure(reason) {
                    return done;
                }
                let delay = self.backoff.next_delay(random);
                self.state = State::Reconnecting {
                    until: now_ms + delay,
                };
                vec![]
            }
            (State::Connecting, Event::ConnAck { return_code: 0, .. }) => {
                self.state = State::Subscribing;
                vec![Action::Subscribe {
                    filter: DPS_RESPONSES_FILTER.to_string(),
                    qos: QoS::AtLeastOnce,
                }]
            }
            (State::Connecting, Event::ConnAck { return_code: 3, .. }) => {
                // The server closes the socket next; the retry happens on `Disconnected`.
                self.pending = Some(Transient::ServerUnavailable);
                vec![]
            }
            (State::Connecting, Event::ConnAck { return_code, .. }) => {
                self.finish(Err(DpsError::ConnectRefused { code: return_code }))
            }
            (State::Subscribing, Event::SubAck { granted: true }) => self.send_request(now_ms),
            (State::Subscribing, Event::SubAck { granted: false }) => {
                self.finish(Err(DpsError::SubscribeRefused))
            }
            (State::Awaiting { rid, .. }, Event::Publish { topic, payload }) => {
                match ServiceTopic::parse(topic) {
                    Ok(ServiceTopic::DpsResponse {
                        status,
                        rid: got,
                        retry_after,
                    }) if &got == rid => self.on_response(now_ms, status, retry_after, payload),
                    // Stale answers (an earlier rid) and other topics.
                    _ => vec![],
                }
            }
            (State::Awaiting { deadline, .. }, Event::Tick) if now_ms >= *deadline => {
                let waited_secs = self.cfg.request_timeout_secs;
                match self.count_failure(Transient::NoResponse { waited_secs }) {
                    Some(done) => done,
                    None => self.send_request(now_ms),
                }
            }
            (State::Waiting { until }, Event::Tick) if now_ms >= *until => {
                self.send_request(now_ms)
            }
            (State::Reconnecting { until }, Event::Tick) if now_ms >= *until => {
                self.state = State::Connecting;
                vec![Action::Connect(self.connect_params(now_ms))]
            }
            _ => vec![],
        }
    }

    fn take_rid(&mut self) -> String {
        let rid = self.next_rid.to_string();
        self.next_rid += 1;
        rid
    }

    /// Registers, or polls when an operation is already known.
    fn send_request(&mut self, now_ms: u64) -> Actions {
        let rid = self.take_rid();
        let (topic, payload) = match &self.operation_id {
            None => (
                DeviceTopic::DpsRegister { rid: rid.clone() },
                self.register_body(),
            ),
            Some(op) => (
                DeviceTopic::DpsPoll {
                    rid: rid.clone(),
                    operation_id: op.clone(),
                },
                Vec::new(),
            ),
        };
        let deadline = now_ms + self.cfg.request_timeout_secs * 1000;
        self.state = State::Awaiting { rid, deadline };
        vec![Action::Publish(Publish::qos1(topic.to_topic(), payload))]
    }

    /// Counts a transient failure; `Some` with the final actions when the budget is spent.
    fn count_failure(&mut self, reason: Transient) -> Option<Actions> {
        self.failures += 1;
        if self.failures > self.cfg.max_retries {
            let attempts = self.failures;
            return Some(self.finish(Err(DpsError::GaveUp {
                attempts,
                last: reason,
            })));
        }
        None
    }

    fn finish(&mut self, outcome: DpsOutcome) -> Actions {
        self.state = State::Done;
        self.outcome = Some(outcome.clone());
        vec![Action::Disconnect, Action::Output(outcome)]
    }

    fn wait(&mut self, now_ms: u64, secs: u64) -> Actions {
        self.state = State::Waiting {
            until: now_ms + secs.min(MAX_RETRY_AFTER_SECS) * 1000,
        };
        vec![]
    }

    fn on_response(
        &mut self,
        now_ms: u64,
        status: u16,
        retry_after: Option<u64>,
        payload: &[u8],
    ) -> Actions {
        if (200..300).contains(&status) {
            return self.on_success(now_ms, retry_after, payload);
        }
        let err = ServiceError::from_json_lenient(payload);
        let transient = match status {
            401 => {
                return self.finish(Err(DpsError::Unauthorized {
                    error_code: err.error_code,
                    message: err.message,
                    tracking_id: err.tracking_id,
                }))
            }
            429 => Transient::Throttled {
                error_code: err.error_code,
                message: err.message,
            },
            s if s >= 500 => Transient::ServerError {
                status: s,
                error_code: err.error_code,
                message: err.message,
            },
            s => {
                return self.finish(Err(DpsError::Rejected {
                    status: s,
                    error_code: err.error_code,
                    message: err.message,
                    tracking_id: err.tracking_id,
                }))
            }
        };
        if let Some(done) = self.count_failure(transient) {
            return done;
        }
        // Without retry-after: 2 s, 4 s, 8 s, … (DPS asks for exponential backoff).
        let fallback = DEFAULT_RETRY_AFTER_SECS << (self.failures - 1).min(5);
        self.wait(now_ms, retry_after.unwrap_or(fallback))
    }

    fn on_success(&mut self, now_ms: u64, retry_after: Option<u64>, payload: &[u8]) -> Actions {
        let body = match RegistrationOperationStatus::from_json(payload) {
            Ok(b) => b,
            Err(e) => {
                return self.finish(Err(DpsError::BadResponse {
                    reason: format!("invalid JSON ({e})"),
                }))
            }
        };
        let state = body.registration_state.clone().unwrap_or_default();
        let status = body.status.or(state.status);
        match status {
            Some(RegistrationStatus::Assigning) => {
                match body
                    .operation_id
                    .filter(|o| !o.is_empty())
                    .or_else(|| self.operation_id.clone())
                {
                    Some(op) => self.operation_id = Some(op),
                    None => {
                        return self.finish(Err(DpsError::BadResponse {
                            reason: "status assigning without an operationId".into(),
                        }))
                    }
                }
                self.failures = 0;
                self.polls += 1;
                if self.polls > self.cfg.max_polls {
                    let polls = self.cfg.max_polls;
                    return self.finish(Err(DpsError::StillAssigning { polls }));
                }
                self.wait(now_ms, retry_after.unwrap_or(DEFAULT_RETRY_AFTER_SECS))
            }
            Some(RegistrationStatus::Assigned) => {
                let (Some(hub), Some(device_id)) = (
                    state.assigned_hub.filter(|h| !h.is_empty()),
                    state.device_id.filter(|d| !d.is_empty()),
                ) else {
                    return self.finish(Err(DpsError::BadResponse {
                        reason:
                            "status assigned without registrationState.assignedHub and deviceId"
                                .into(),
                    }));
                };
                let operation_id = body
                    .operation_id
                    .or_else(|| self.operation_id.clone())
                    .unwrap_or_default();
                self.finish(Ok(Assignment {
                    assigned_hub: hub,
                    device_id,
                    substatus: state.substatus,
                    payload: state.payload,
                    operation_id,
                }))
            }
            Some(RegistrationStatus::Failed) => self.finish(Err(DpsError::Failed {
                error_code: state.error_code,
                message: state.error_message,
            })),
            Some(RegistrationStatus::Disabled) => self.finish(Err(DpsError::Disabled)),
            Some(RegistrationStatus::Unassigned) => self.finish(Err(DpsError::UnexpectedStatus {
                status: "unassigned".into(),
            })),
            Some(RegistrationStatus::Unknown) => {
                let raw = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|v| {
                        v.get("status")
                            .and_then(Value::as_str)
                            .map(ToString::to_string)
                    })
                    .unwrap_or_default();
                self.finish(Err(DpsError::UnexpectedStatus { status: raw }))
            }
            None => self.finish(Err(DpsError::BadResponse {
                reason: "no status in the answer".into(),
            })),
        }
    }
}
