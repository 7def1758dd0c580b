//! The IoT Hub device client: a sans-IO state machine for the connection, token renewal,
//! reconnect backoff, C2D, direct methods and the twin.
//!
//! * **Token renewal.** MQTT 3.1.1 cannot re-authenticate in-band and the hub drops a client
//!   whose token expired (401003), so at `expiry − renew_margin_secs` (120 s, as the Python
//!   SDK) the client asks for [`Action::Reconnect`] with a fresh token.
//! * **Backoff.** A lost connection is retried after an exponential, capped, jittered delay
//!   ([`Backoff`]); the jitter comes from `Event::Disconnected { random }`. The attempts reset
//!   once a connection has stayed up for `stable_after_secs`.
//! * **Twin.** Request IDs are `1, 2, 3, …`; answers are matched to requests and requests left
//!   unanswered fail after `request_timeout_secs` or when the connection drops. The highest
//!   desired `$version` seen is kept; a desired patch at or below it is already applied and is
//!   dropped. After each connect the client GETs the twin (like the Python SDK) so changes
//!   made while it was offline are not missed.
//! * QoS 1 for every subscription and publish.

pub mod message;

use crate::backoff::Backoff;
use crate::dps::Assignment;
use crate::key::DeviceKey;
use crate::mqtt::{self, Action, ConnectParams, Event, Publish, QoS, SetupError, MQTT_TLS_PORT};
use crate::sas::{hub_resource, SasToken};
use crate::topic::{self, DeviceTopic, ServiceTopic};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
pub use message::{Message, MAX_C2D_BYTES, MAX_TELEMETRY_BYTES};
use serde_json::Value;

/// Lifetime of each hub SAS token.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;
/// Renew this long before the token expires (the Python SDK's margin).
pub const DEFAULT_RENEW_MARGIN_SECS: u64 = 120;
/// Keep-alive (the C SDK's default; the hub allows up to 1177 s).
pub const DEFAULT_KEEP_ALIVE_SECS: u16 = 240;
/// Largest direct-method response payload.
pub const MAX_METHOD_PAYLOAD_BYTES: usize = 128 * 1024;
/// Largest reported-properties document.
pub const MAX_REPORTED_BYTES: usize = 32 * 1024;

/// What the client needs. Build with [`HubConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub hub_host: String,
    pub device_id: String,
    pub device_key: DeviceKey,
    pub token_ttl_secs: u64,
    pub renew_margin_secs: u64,
    pub keep_alive_secs: u16,
    /// `false` (as the SDKs): the hub keeps the C2D subscription and queues messages while the
    /// device is away.
    pub clean_session: bool,
    pub subscribe_c2d: bool,
    pub subscribe_methods: bool,
    /// Twin answers and desired-property patches.
    pub subscribe_twin: bool,
    /// GET the twin after every connect (needs `subscribe_twin`).
    pub twin_get_on_connect: bool,
    pub request_timeout_secs: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub stable_after_secs: u64,
}

impl HubConfig {
    pub fn new(hub_host: &str, device_id: &str, device_key: DeviceKey) -> Self {
        HubConfig {
            hub_host: hub_host.to_string(),
            device_id: device_id.to_string(),
            device_key,
            token_ttl_secs: DEFAULT_TOKEN_TTL_SECS,
            renew_margin_secs: DEFAULT_RENEW_MARGIN_SECS,
            keep_alive_secs: DEFAULT_KEEP_ALIVE_SECS,
            clean_session: false,
            subscribe_c2d: true,
            subscribe_methods: true,
            subscribe_twin: true,
            twin_get_on_connect: true,
            request_timeout_secs: 30,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 120_000,
            stable_after_secs: 60,
        }
    }

    /// Connects where DPS assigned the device, signing with the same derived key.
    pub fn from_assignment(assignment: &Assignment, device_key: DeviceKey) -> Self {
        HubConfig::new(&assignment.assigned_hub, &assignment.device_id, device_key)
    }
}

/// A hub-side failure. `Display` is one line of plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubError {
    /// CONNACK with a non-zero return code.
    ConnectRefused { code: u8 },
    /// A body over the hub's limit.
    TooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },
    /// An application property the hub would misread.
    BadProperty { key: String, reason: &'static str },
    /// A twin request answered with an error status.
    Status { status: u16 },
    /// A twin request got no answer in time.
    Timeout { secs: u64 },
    /// The connection dropped (or was renewed) before the answer came.
    ConnectionLost,
    /// A body that should be JSON is not.
    BadJson { what: &'static str, reason: String },
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::ConnectRefused { code: 5 } => f.write_str(
                "IoT Hub refused the connection: not authorized (CONNACK 5); the device key or token is wrong or expired (set the clock with SNTP before connecting; the key must be the derived device key, never the group key), the device is disabled in the hub, or DPS assigned a hub whose link is stale",
            ),
            HubError::ConnectRefused { code } => write!(
                f,
                "IoT Hub refused the connection: {} (CONNACK {code})",
                mqtt::connack_text(*code)
            ),
            HubError::TooLarge { what, size, max } => {
                write!(f, "{what}: {size} bytes; IoT Hub accepts at most {max} bytes")
            }
            HubError::BadProperty { key, reason } => write!(f, "message property {key:?}: {reason}"),
            HubError::Status { status } => {
                let what = match status {
                    400 => "the request was malformed",
                    429 => "IoT Hub throttled the device; retry later",
                    s if *s >= 500 => "a service-side error; retry later",
                    _ => "the request was refused",
                };
                write!(f, "IoT Hub answered the twin request with {status}: {what}")
            }
            HubError::Timeout { secs } => write!(f, "IoT Hub did not answer the twin request within {secs} s"),
            HubError::ConnectionLost => {
                f.write_str("the connection to IoT Hub closed before the answer arrived; send the request again")
            }
            HubError::BadJson { what, reason } => write!(f, "{what} is not valid JSON: {reason}"),
        }
    }
}

/// The device twin as a GET returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Twin {
    pub desired: Value,
    pub reported: Value,
}

impl Twin {
    /// Parses `{"desired":{…,"$version":N},"reported":{…,"$version":M}}`.
    pub fn from_json(body: &[u8]) -> Result<Self, HubError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| HubError::BadJson {
            what: "twin document",
            reason: e.to_string(),
        })?;
        let part = |k: &str| {
            v.get(k)
                .cloned()
                .unwrap_or(Value::Object(Default::default()))
        };
        Ok(Twin {
            desired: part("desired"),
            reported: part("reported"),
        })
    }

    pub fn desired_version(&self) -> Option<u64> {
        self.desired.get("$version").and_then(Value::as_u64)
    }

    pub fn reported_version(&self) -> Option<u64> {
        self.reported.get("$version").and_then(Value::as_u64)
    }
}

/// What the hub client tells the application.
#[derive(Debug, Clone, PartialEq)]
pub enum HubOutput {
    Connected {
        session_present: bool,
    },
    /// The CONNACK was not 0; the server closes the socket and the client retries after backoff.
    ConnectRefused(HubError),
    /// The connection is down; the next attempt is at `reconnect_at_ms`.
    Disconnected {
        reconnect_at_ms: u64,
    },
    /// A subscription was refused (a device may hold at most five).
    SubscribeRefused,
    /// A cloud-to-device message.
    C2d(Message),
    /// A direct-method call; answer with [`HubClient::method_response`] and the same `rid`.
    MethodRequest {
        name: String,
        rid: String,
        payload: Vec<u8>,
    },
    /// The answer to [`HubClient::get_twin`].
    Twin {
        rid: String,
        twin: Twin,
    },
    /// The hub stored a reported-properties patch; `version` is the new reported `$version`.
    ReportedAck {
        rid: String,
        version: Option<u64>,
    },
    /// A twin request failed.
    TwinFailed {
        rid: String,
        error: HubError,
    },
    /// New desired properties (`$version` included in `patch`).
    DesiredPatch {
        version: Option<u64>,
        patch: Value,
    },
    /// An incoming message that was dropped, and why (worth a log line).
    Ignored {
        topic: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TwinRequest {
    Get,
    PatchReported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Connecting { renew_at: u64 },
    Connected { renew_at: u64 },
    Waiting { until: u64 },
}

/// The hub connection state machine. See the module docs.
#[derive(Debug, Clone)]
pub struct HubClient {
    cfg: HubConfig,
    state: State,
    next_rid: u64,
    pending: Vec<(String, TwinRequest, u64)>,
    desired_version: Option<u64>,
    backoff: Backoff,
}

type Actions = Vec<Action<HubOutput>>;

impl HubClient {
    pub fn new(cfg: HubConfig) -> Result<Self, SetupError> {
        mqtt::check_keep_alive(cfg.keep_alive_secs)?;
        if cfg.token_ttl_secs <= cfg.renew_margin_secs + 60 {
            return Err(SetupError {
                field: "hub token lifetime",
                reason: format!(
                    "{} s leaves no time before renewal {} s ahead of expiry; use at least {} s",
                    cfg.token_ttl_secs,
                    cfg.renew_margin_secs,
                    cfg.renew_margin_secs + 61
                ),
            });
        }
        if cfg.request_timeout_secs == 0 {
            return Err(SetupError {
                field: "hub request timeout",
                reason: "0 s; use e.g. 30 s".into(),
            });
        }
        if cfg.hub_host.is_empty() || cfg.hub_host.contains(['/', ' ']) {
            return Err(SetupError {
                field: "hub host",
                reason: format!(
                    "{:?} is not a host name; use the assignedHub DPS returned",
                    cfg.hub_host
                ),
            });
        }
        if cfg.device_id.is_empty() || cfg.device_id.contains(['/', '+', '#']) {
            return Err(SetupError {
                field: "device ID",
                reason: format!(
                    "{:?} cannot be used in MQTT topics; use the deviceId DPS returned",
                    cfg.device_id
                ),
            });
        }
        let backoff = Backoff::new(
            cfg.backoff_initial_ms,
            cfg.backoff_max_ms,
            cfg.stable_after_secs * 1000,
        );
        Ok(HubClient {
            cfg,
            state: State::Idle,
            next_rid: 1,
            pending: Vec::new(),
            desired_version: None,
            backoff,
        })
    }

    /// CONNECT parameters with a token valid from `now_ms` for `token_ttl_secs`.
    pub fn connect_params(&self, now_ms: u64) -> ConnectParams {
        let expiry = now_ms / 1000 + self.cfg.token_ttl_secs;
        let token = SasToken::generate(
            &self.cfg.device_key,
            &hub_resource(&self.cfg.hub_host, &self.cfg.device_id),
            expiry,
            None,
        );
        ConnectParams {
            host: self.cfg.hub_host.clone(),
            port: MQTT_TLS_PORT,
            client_id: self.cfg.device_id.clone(),
            username: mqtt::hub_username(&self.cfg.hub_host, &self.cfg.device_id),
            password: token.to_string(),
            clean_session: self.cfg.clean_session,
            keep_alive_secs: self.cfg.keep_alive_secs,
            token_expiry: expiry,
        }
    }

    /// The filters subscribed after each connect, one SUBSCRIBE each.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.cfg.subscribe_c2d {
            out.push(topic::c2d_filter(&self.cfg.device_id));
        }
        if self.cfg.subscribe_methods {
            out.push(topic::METHODS_FILTER.to_string());
        }
        if self.cfg.subscribe_twin {
            out.push(topic::TWIN_RESPONSES_FILTER.to_string());
            out.push(topic::DESIRED_FILTER.to_string());
        }
        out
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// The highest desired-properties `$version` seen.
    pub fn desired_version(&self) -> Option<u64> {
        self.desired_version
    }

    /// When to send the next [`Event::Tick`] (Unix ms): reconnect, renewal or a twin timeout.
    pub fn next_deadline(&self) -> Option<u64> {
        let state = match self.state {
            State::Waiting { until } => Some(until),
            State::Connected { renew_at } => Some(renew_at),
            _ => None,
        };
        self.pending.iter().map(|p| p.2).chain(state).min()
    }

    fn connect(&mut self, now_ms: u64, renew: bool) -> Action<HubOutput> {
        let params = self.connect_params(now_ms);
        let renew_at = params
            .token_expiry
            .saturating_sub(self.cfg.renew_margin_secs)
            * 1000;
        self.state = State::Connecting { renew_at };
        if renew {
            Action::Reconnect(params)
        } else {
            Action::Connect(params)
        }
    }

    /// Fails every twin request still waiting for an answer.
    fn fail_pending(&mut self, error: HubError, out: &mut Actions) {
        for (rid, _, _) in self.pending.drain(..) {
            out.push(Action::Output(HubOutput::TwinFailed {
                rid,
                error: error.clone(),
            }));
        }
    }

    /// Feeds one event at `now_ms` (Unix ms) and returns what to do, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Actions {
        let mut out = Vec::new();
        match (&self.state, event) {
            (State::Idle, Event::Start) => out.push(self.connect(now_ms, false)),
            (State::Idle, _) => {}
            (
                State::Connecting { renew_at },
                Event::ConnAck {
                    return_code: 0,
                    session_present,
                },
            ) => {
                self.state = State::Connected {
                    renew_at: *renew_at,
                };
                self.backoff.on_connected(now_ms);
                out.push(Action::Output(HubOutput::Connected { session_present }));
                for filter in self.subscriptions() {
                    out.push(Action::Subscribe {
                        filter,
                        qos: QoS::AtLeastOnce,
                    });
                }
                if self.cfg.subscribe_twin && self.cfg.twin_get_on_connect {
                    out.push(Action::Publish(self.get_twin(now_ms)));
                }
            }
            (State::Connecting { .. }, Event::ConnAck { return_code, .. }) => {
                out.push(Action::Output(HubOutput::ConnectRefused(
                    HubError::ConnectRefused { code: return_code },
                )));
            }
            (
                State::Connecting { .. } | State::Connected { .. },
                Event::Disconnected { random },
            ) => {
                self.fail_pending(HubError::ConnectionLost, &mut out);
                let until = now_ms + self.backoff.on_disconnected(now_ms, random);
                self.state = State::Waiting { until };
                out.push(Action::Output(HubOutput::Disconnected {
                    reconnect_at_ms: until,
                }));
            }
            (State::Connected { .. }, Event::SubAck { granted: false }) => {
                out.push(Action::Output(HubOutput::SubscribeRefused));
            }
            (State::Connected { .. }, Event::Publish { topic, payload }) => {
                self.on_publish(topic, payload, &mut out)
            }
            (State::Waiting { until }, Event::Tick) if now_ms >= *until => {
                out.push(self.connect(now_ms, false))
            }
            (State::Connected { renew_at }, Event::Tick) if now_ms >= *renew_at => {
                self.fail_pending(HubError::ConnectionLost, &mut out);
                out.push(self.connect(now_ms, true));
            }
            _ => {}
        }
        if let Event::Tick = event {
            let secs = self.cfg.request_timeout_secs;
            let (expired, kept): (Vec<_>, Vec<_>) =
                self.pending.drain(..).partition(|p| now_ms >= p.2);
            self.pending = kept;
            for (rid, _, _) in expired {
                out.push(Action::Output(HubOutput::TwinFailed {
                    rid,
                    error: HubError::Timeout { secs },
                }));
            }
        }
        out
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8], out: &mut Actions) {
        let ignored = |reason: String| {
            Action::Output(HubOutput::Ignored {
                topic: topic.to_string(),
                reason,
            })
        };
        let parsed = match ServiceTopic::parse(topic) {
            Ok(t) => t,
            Err(e) => return out.push(ignored(e.to_string())),
        };
        match parsed {
            ServiceTopic::C2d {
                device_id,
                properties,
            } => {
                if device_id != self.cfg.device_id {
                    return out.push(ignored(format!("addressed to device {device_id:?}")));
                }
                out.push(Action::Output(HubOutput::C2d(Message::from_properties(
                    payload.to_vec(),
                    properties,
                ))));
            }
            ServiceTopic::MethodRequest { name, rid } => {
                out.push(Action::Output(HubOutput::MethodRequest {
                    name,
                    rid,
                    payload: payload.to_vec(),
                }));
            }
            ServiceTopic::TwinResponse {
                status,
                rid,
                version,
            } => {
                let Some(i) = self.pending.iter().position(|p| p.0 == rid) else {
                    return out.push(ignored(format!(
                        "no twin request with $rid {rid:?} is waiting"
                    )));
                };
                let (rid, kind, _) = self.pending.remove(i);
                let result = match (kind, status) {
                    (TwinRequest::Get, 200) => match Twin::from_json(payload) {
                        Ok(twin) => {
                            if let Some(v) = twin.desired_version() {
                                self.desired_version = Some(v);
                            }
                            HubOutput::Twin { rid, twin }
                        }
                        Err(error) => HubOutput::TwinFailed { rid, error },
                    },
                    (TwinRequest::PatchReported, 200..=299) => {
                        HubOutput::ReportedAck { rid, version }
                    }
                    (_, status) => HubOutput::TwinFailed {
                        rid,
                        error: HubError::Status { status },
                    },
                };
                out.push(Action::Output(result));
            }
            ServiceTopic::DesiredPatch {
                version: topic_version,
            } => {
                let patch: Value = match serde_json::from_slice(payload) {
                    Ok(v) => v,
                    Err(e) => {
                        return out.push(ignored(format!("desired patch is not valid JSON: {e}")))
                    }
                };
                let version = patch
                    .get("$version")
                    .and_then(Value::as_u64)
                    .or(topic_version);
                if let (Some(v), Some(known)) = (version, self.desired_version) {
                    if v <= known {
                        return out.push(ignored(format!(
                            "desired $version {v} is already applied (have {known})"
                        )));
                    }
                }
                if version.is_some() {
                    self.desired_version = version;
                }
                out.push(Action::Output(HubOutput::DesiredPatch { version, patch }));
            }
            ServiceTopic::DpsResponse { .. } => {
                out.push(ignored("a DPS answer on a hub connection".into()))
            }
        }
    }

    fn take_rid(&mut self) -> String {
        let rid = self.next_rid.to_string();
        self.next_rid += 1;
        rid
    }

    /// A telemetry PUBLISH; fails over 256 KB or on a property name the hub would misread.
    pub fn telemetry(&self, message: &Message) -> Result<Publish, HubError> {
        message.to_telemetry(&self.cfg.device_id)
    }

    /// A twin GET (empty body); the answer arrives as [`HubOutput::Twin`].
    pub fn get_twin(&mut self, now_ms: u64) -> Publish {
        let rid = self.take_rid();
        let deadline = now_ms + self.cfg.request_timeout_secs * 1000;
        self.pending.push((rid.clone(), TwinRequest::Get, deadline));
        Publish::qos1(DeviceTopic::TwinGet { rid }.to_topic(), Vec::new())
    }

    /// A reported-properties PATCH (`null` deletes a key); acknowledged by
    /// [`HubOutput::ReportedAck`] with the new `$version`.
    pub fn patch_reported(&mut self, now_ms: u64, patch: &Value) -> Result<Publish, HubError> {
        let body = serde_json::to_vec(patch).map_err(|e| HubError::BadJson {
            what: "reported properties",
            reason: e.to_string(),
        })?;
        message::check_size("reported properties", body.len(), MAX_REPORTED_BYTES)?;
        let rid = self.take_rid();
        let deadline = now_ms + self.cfg.request_timeout_secs * 1000;
        self.pending
            .push((rid.clone(), TwinRequest::PatchReported, deadline));
        Ok(Publish::qos1(
            DeviceTopic::TwinPatchReported { rid }.to_topic(),
            body,
        ))
    }

    /// The answer to a [`HubOutput::MethodRequest`]: `status` is the application's (200 …),
    /// `payload` JSON or empty.
    pub fn method_response(
        &self,
        rid: &str,
        status: u16,
        payload: &[u8],
    ) -> Result<Publish, HubError> {
        message::check_size(
            "direct-method response",
            payload.len(),
            MAX_METHOD_PAYLOAD_BYTES,
        )?;
        let topic = DeviceTopic::MethodResponse {
            status,
            rid: rid.to_string(),
        };
        Ok(Publish::qos1(topic.to_topic(), payload.to_vec()))
    }
}
