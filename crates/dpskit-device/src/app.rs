//! [`DeviceApp`]: the device application as one sans-IO state machine.
//!
//! ```text
//! Start ─clock < 2024→ Failed(ClockNotSet)
//!   ├─ stored assignment for this scope/ID/DPS host ──────────────┐
//!   └─ DPS (DpsClient) ─assigned→ StoreAssignment ────────────────┤
//!                                                                 ▼
//!      Hub (HubClient): connected → report twin, telemetry every interval, C2D, methods, twin
//!        ├─ CONNACK 5 → register with DPS again (once; a second refusal is final)
//!        ├─ dropped / token renewal → HubClient reconnects with backoff
//!        └─ `reboot` method → answer 200, Disconnect, RebootRequested
//! ```

use crate::error::{AppError, LinkError, Service};
use crate::store::StoredAssignment;
use crate::time::is_plausible;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use dpskit_core::dps::{Assignment, DpsClient, DpsConfig};
use dpskit_core::hub::{HubClient, HubConfig, HubError, HubOutput, Message};
use dpskit_core::mqtt::{Action, Event, Publish, SetupError};
use dpskit_core::topic::DeviceTopic;
use dpskit_core::DeviceConfig;
use serde_json::{Map, Value};

/// Desired property that sets the telemetry interval, in whole seconds.
pub const TELEMETRY_INTERVAL_PROPERTY: &str = "telemetryInterval";
/// Longest telemetry interval accepted from the twin (a day).
pub const MAX_TELEMETRY_INTERVAL_SECS: u64 = 86_400;
/// Telemetry interval until the twin says otherwise.
pub const DEFAULT_TELEMETRY_INTERVAL_MS: u64 = 60_000;
/// How often reported properties (uptime, heap, RSSI) are refreshed while connected.
pub const DEFAULT_REPORT_INTERVAL_MS: u64 = 300_000;
/// Messages from [`DeviceApp::send`] kept while the hub is unreachable; older ones are dropped.
pub const MAX_QUEUED_MESSAGES: usize = 16;

/// How the application behaves. [`AppSettings::new`] gives the firmware's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSettings {
    /// Reported as `firmwareVersion`.
    pub firmware_version: String,
    /// Telemetry period until the desired property `telemetryInterval` sets another.
    pub telemetry_interval_ms: u64,
    /// Period of the reported-properties refresh while connected.
    pub report_interval_ms: u64,
    /// Stop after this many telemetry messages (`None`: run for ever, as a board does).
    pub max_messages: Option<u64>,
    /// Custom allocation payload sent to DPS.
    pub dps_payload: Option<Value>,
    /// Transient DPS failures in a row (429, 5xx, unreachable) before giving up.
    pub dps_max_retries: u32,
    pub dps_request_timeout_secs: u64,
    /// Lifetime of each SAS token; the hub connection is renewed 120 s before expiry.
    pub token_ttl_secs: u64,
    pub hub_keep_alive_secs: u16,
    pub hub_backoff_initial_ms: u64,
    pub hub_backoff_max_ms: u64,
    /// Give up after this many failed hub connections in a row (`None`: never, as a board).
    pub hub_max_failures: Option<u32>,
    /// With a stored assignment, register with DPS again after this many failed hub
    /// connections in a row (the hub may have moved).
    pub reprovision_after_hub_failures: u32,
}

impl AppSettings {
    pub fn new(firmware_version: &str) -> Self {
        AppSettings {
            firmware_version: firmware_version.to_string(),
            telemetry_interval_ms: DEFAULT_TELEMETRY_INTERVAL_MS,
            report_interval_ms: DEFAULT_REPORT_INTERVAL_MS,
            max_messages: None,
            dps_payload: None,
            dps_max_retries: 5,
            dps_request_timeout_secs: dpskit_core::dps::DEFAULT_REQUEST_TIMEOUT_SECS,
            token_ttl_secs: dpskit_core::hub::DEFAULT_TOKEN_TTL_SECS,
            hub_keep_alive_secs: dpskit_core::hub::DEFAULT_KEEP_ALIVE_SECS,
            hub_backoff_initial_ms: 1_000,
            hub_backoff_max_ms: 120_000,
            hub_max_failures: None,
            reprovision_after_hub_failures: 5,
        }
    }
}

/// Numbers only the platform knows, reported in the twin and telemetry. Set what you have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlatformStatus {
    /// Time since boot; without it the app counts from its `Start`.
    pub uptime_ms: Option<u64>,
    pub free_heap: Option<u32>,
    pub free_psram: Option<u32>,
    /// Most internal heap in use at once since boot (TLS handshakes set it, if anything).
    pub peak_heap: Option<u32>,
    /// Most PSRAM in use at once since boot.
    pub peak_psram: Option<u32>,
    pub largest_free_block: Option<u32>,
    pub rssi_dbm: Option<i16>,
}

/// Why the app is registering with DPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterReason {
    /// No stored assignment (first boot), or the stored one is for another config.
    NoStoredAssignment,
    /// The hub refused the device (CONNACK 5).
    HubRefused,
    /// The hub of the stored assignment could not be reached several times in a row.
    HubUnreachable,
}

/// What the application tells its driver and user, in order with the actions.
#[derive(Debug, Clone, PartialEq)]
pub enum AppOutput {
    /// The stored assignment passed to `new` was not used, and why.
    StoredAssignmentIgnored {
        reason: String,
    },
    /// Going to the hub of the stored assignment; DPS is skipped.
    UsingStoredAssignment {
        hub: String,
        device_id: String,
    },
    Registering {
        dps_host: String,
        reason: RegisterReason,
    },
    Provisioned {
        hub: String,
        device_id: String,
        substatus: Option<String>,
    },
    /// Persist this (firmware: NVS; PC: a file) and pass it to `new` on the next boot.
    StoreAssignment(StoredAssignment),
    HubConnected {
        hub: String,
        device_id: String,
        session_present: bool,
    },
    /// The hub answered CONNACK `code`; `then` says what the app does about it.
    HubRefused {
        error: HubError,
        then: &'static str,
    },
    /// The hub connection is down; the next attempt is at `reconnect_at_ms`.
    HubDisconnected {
        reconnect_at_ms: u64,
        cause: Option<LinkError>,
    },
    /// A telemetry message was handed to the driver (`seq` for the app's own telemetry).
    TelemetrySent {
        seq: Option<u64>,
        message: Message,
    },
    C2d(Message),
    /// A direct method was answered.
    MethodCalled {
        name: String,
        request: Vec<u8>,
        status: u16,
        response: Vec<u8>,
    },
    /// Desired properties: the whole set (`complete`, from a twin GET) or a patch.
    DesiredProperties {
        version: Option<u64>,
        properties: Value,
        complete: bool,
    },
    TelemetryIntervalChanged {
        secs: u64,
    },
    /// A reported-properties patch was sent.
    ReportedSent {
        patch: Value,
    },
    ReportedAck {
        version: Option<u64>,
    },
    /// The `reboot` method was answered and the connection closed; restart the device.
    RebootRequested,
    /// Worth a log line; nothing stops.
    Warning(String),
    /// `max_messages` were sent (or [`DeviceApp::stop`]); the connection is closed.
    Finished {
        messages_sent: u64,
    },
    /// The app stopped for good; the message names the cause and the fix.
    Failed(AppError),
}

enum Phase {
    Idle,
    Dps(DpsClient),
    Hub {
        client: HubClient,
        hub: String,
        device_id: String,
        from_store: bool,
        connected: bool,
    },
    Done,
}

/// The device application. See the crate docs for the driver contract.
pub struct DeviceApp {
    cfg: DeviceConfig,
    settings: AppSettings,
    stored: Option<StoredAssignment>,
    store_note: Option<String>,
    phase: Phase,
    status: PlatformStatus,
    started_at: Option<u64>,
    /// Handed in by the driver for the next `Disconnected`.
    pending_link: Option<LinkError>,
    /// The last connection error since the last accepted CONNACK.
    last_link: Option<LinkError>,
    interval_ms: u64,
    next_telemetry: Option<u64>,
    next_report: Option<u64>,
    seq: u64,
    sent: u64,
    queue: VecDeque<Message>,
    /// Every `Publish` handed to the driver and not yet acknowledged, oldest first; the
    /// telemetry among them (`Some`) is sent again when the connection drops before its
    /// PUBACK, so a dying connection does not silently lose it.
    in_flight: VecDeque<Option<Publish>>,
    /// Unacknowledged telemetry waiting for the next hub connection.
    resend: VecDeque<Publish>,
    hub_failures: u32,
    /// DPS ran again because the hub refused; another refusal is final.
    reregistered: bool,
    outcome: Option<Result<u64, AppError>>,
}

type Actions = Vec<Action<AppOutput>>;

/// A machine's action for the driver, or its output for the app.
fn split<O>(action: Action<O>) -> Result<Action<AppOutput>, O> {
    Ok(match action {
        Action::Connect(p) => Action::Connect(p),
        Action::Reconnect(p) => Action::Reconnect(p),
        Action::Subscribe { filter, qos } => Action::Subscribe { filter, qos },
        Action::Publish(p) => Action::Publish(p),
        Action::Disconnect => Action::Disconnect,
        Action::Output(o) => return Err(o),
    })
}

impl DeviceApp {
    /// Checks the settings against the DPS and hub clients and takes `stored` (the cached
    /// assignment) if it was made for this config. A token lifetime in the config wins over
    /// the settings' (the config is what the factory chose for this board).
    pub fn new(
        config: DeviceConfig,
        mut settings: AppSettings,
        stored: Option<StoredAssignment>,
    ) -> Result<Self, AppError> {
        if let Some(ttl) = config.token_ttl_secs {
            settings.token_ttl_secs = u64::from(ttl);
        }
        if settings.telemetry_interval_ms == 0 || settings.report_interval_ms == 0 {
            return Err(AppError::Setup(SetupError {
                field: "telemetry interval",
                reason: "0 ms; use at least 1 s".into(),
            }));
        }
        let mut app = DeviceApp {
            interval_ms: settings.telemetry_interval_ms,
            cfg: config,
            settings,
            stored: None,
            store_note: None,
            phase: Phase::Idle,
            status: PlatformStatus::default(),
            started_at: None,
            pending_link: None,
            last_link: None,
            next_telemetry: None,
            next_report: None,
            seq: 0,
            sent: 0,
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            resend: VecDeque::new(),
            hub_failures: 0,
            reregistered: false,
            outcome: None,
        };
        app.dps_client().map_err(AppError::Setup)?;
        let reg = app.cfg.registration_id.as_str().to_string();
        app.hub_client(&app.cfg.dps_host.clone(), &reg)
            .map_err(AppError::Setup)?;
        match stored.map(|s| (s.mismatch(&app.cfg), s)) {
            Some((None, s)) => match app.hub_client(&s.assigned_hub, &s.device_id) {
                Ok(_) => app.stored = Some(s),
                Err(e) => app.store_note = Some(e.to_string()),
            },
            Some((Some(why), _)) => app.store_note = Some(why),
            None => {}
        }
        Ok(app)
    }

    fn dps_client(&self) -> Result<DpsClient, SetupError> {
        let mut c = DpsConfig::from_device_config(&self.cfg);
        c.payload = self.settings.dps_payload.clone();
        c.max_retries = self.settings.dps_max_retries;
        c.request_timeout_secs = self.settings.dps_request_timeout_secs;
        c.token_ttl_secs = self.settings.token_ttl_secs;
        DpsClient::new(c)
    }

    fn hub_client(&self, hub: &str, device_id: &str) -> Result<HubClient, SetupError> {
        let mut c = HubConfig::new(hub, device_id, self.cfg.device_key.clone());
        c.token_ttl_secs = self.settings.token_ttl_secs;
        c.keep_alive_secs = self.settings.hub_keep_alive_secs;
        c.backoff_initial_ms = self.settings.hub_backoff_initial_ms;
        c.backoff_max_ms = self.settings.hub_backoff_max_ms;
        HubClient::new(c)
    }

    /// The config the app runs with.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Updates the platform numbers (heap, PSRAM, RSSI, uptime) reported from now on.
    pub fn set_status(&mut self, status: PlatformStatus) {
        self.status = status;
    }

    /// The driver's description of why the connection failed or dropped; call it right before
    /// feeding the matching `Event::Disconnected`. A certificate failure is final.
    pub fn link_failed(&mut self, error: LinkError) {
        self.pending_link = Some(error);
    }

    /// True once the app has stopped (finished, failed or rebooting); it ignores events then.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// How it ended: `Ok(messages sent)` or the error. `None` while running.
    pub fn outcome(&self) -> Option<&Result<u64, AppError>> {
        self.outcome.as_ref()
    }

    /// True while an MQTT connection to the hub is up.
    pub fn is_connected(&self) -> bool {
        matches!(
            self.phase,
            Phase::Hub {
                connected: true,
                ..
            }
        )
    }

    /// Telemetry messages sent so far (the app's own and [`send`](Self::send)'s).
    pub fn messages_sent(&self) -> u64 {
        self.sent
    }

    /// The current telemetry interval (default or from the twin).
    pub fn telemetry_interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// When to send the next `Event::Tick` (Unix ms), if anything is scheduled.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.phase {
            Phase::Dps(c) => c.next_deadline(),
            Phase::Hub {
                client, connected, ..
            } => {
                let own = [self.next_telemetry, self.next_report]
                    .into_iter()
                    .flatten()
                    .filter(|_| *connected);
                client.next_deadline().into_iter().chain(own).min()
            }
            Phase::Idle | Phase::Done => None,
        }
    }

    /// Feeds one event at `now_ms` (Unix ms, after SNTP) and returns what to do, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Actions {
        let mut out = Vec::new();
        match event {
            Event::PubAck => {
                self.in_flight.pop_front();
                return out;
            }
            // Whatever the old connection did not acknowledge will not be acknowledged now.
            Event::Disconnected { .. } | Event::ConnAck { .. } => {
                self.requeue_unacknowledged(&mut out)
            }
            _ => {}
        }
        self.handle_event(now_ms, event, &mut out);
        self.track(&out);
        out
    }

    fn handle_event(&mut self, now_ms: u64, event: Event<'_>, out: &mut Actions) {
        if let Event::Disconnected { .. } = event {
            if let Some(link) = self.pending_link.take() {
                self.last_link = Some(link.clone());
                if link.is_final() {
                    let (service, host) = match &self.phase {
                        Phase::Hub { hub, .. } => (Service::Hub, hub.clone()),
                        _ => (Service::Dps, self.cfg.dps_host.clone()),
                    };
                    self.fail(
                        AppError::Certificate {
                            service,
                            host,
                            link,
                        },
                        out,
                    );
                    return;
                }
            }
        }
        if let Event::ConnAck { return_code: 0, .. } = event {
            self.last_link = None;
        }
        match self.phase {
            Phase::Idle => {
                if let Event::Start = event {
                    self.start(now_ms, out);
                }
            }
            Phase::Dps(_) => self.dps_step(now_ms, event, out),
            Phase::Hub { .. } => self.hub_step(now_ms, event, out),
            Phase::Done => {}
        }
    }

    /// Notes every `Publish` in `actions`, in order, for the `PubAck`s to come.
    fn track(&mut self, actions: &Actions) {
        for a in actions {
            if let Action::Publish(p) = a {
                let telemetry = matches!(
                    DeviceTopic::parse(&p.topic),
                    Ok(DeviceTopic::Telemetry { .. })
                );
                self.in_flight.push_back(telemetry.then(|| p.clone()));
            }
        }
    }

    /// Puts the telemetry the last connection did not acknowledge first in line for the next.
    fn requeue_unacknowledged(&mut self, out: &mut Actions) {
        let lost: Vec<Publish> = self.in_flight.drain(..).flatten().collect();
        if lost.is_empty() {
            return;
        }
        out.push(Action::Output(AppOutput::Warning(format!(
            "{} telemetry message(s) not acknowledged before the connection dropped; sending them again after reconnecting",
            lost.len()
        ))));
        for p in lost.into_iter().rev() {
            self.resend.push_front(p);
        }
    }

    /// Sends a telemetry message of the application's own now, or queues it (at most
    /// [`MAX_QUEUED_MESSAGES`]) until the hub connection is up.
    pub fn send(&mut self, now_ms: u64, message: Message) -> Actions {
        let mut out = Vec::new();
        if self.is_finished() {
            out.push(Action::Output(AppOutput::Warning(
                "the app has stopped; the message was not sent".into(),
            )));
            return out;
        }
        self.queue.push_back(message);
        if self.queue.len() > MAX_QUEUED_MESSAGES {
            self.queue.pop_front();
            out.push(Action::Output(AppOutput::Warning(format!(
                "more than {MAX_QUEUED_MESSAGES} messages waiting for the hub; dropped the oldest"
            ))));
        }
        if self.is_connected() {
            self.run_timers(now_ms, &mut out);
        }
        self.track(&out);
        out
    }

    /// Stops: closes the connection and finishes.
    pub fn stop(&mut self, _now_ms: u64) -> Actions {
        let mut out = Vec::new();
        if self.is_finished() {
            return out;
        }
        if !matches!(self.phase, Phase::Idle) {
            out.push(Action::Disconnect);
        }
        self.finish(&mut out);
        out
    }

    fn start(&mut self, now_ms: u64, out: &mut Actions) {
        self.started_at = Some(now_ms);
        if !is_plausible(now_ms) {
            return self.fail(AppError::ClockNotSet { now_ms }, out);
        }
        if let Some(reason) = self.store_note.take() {
            out.push(Action::Output(AppOutput::StoredAssignmentIgnored {
                reason,
            }));
        }
        match self.stored.clone() {
            Some(s) => {
                out.push(Action::Output(AppOutput::UsingStoredAssignment {
                    hub: s.assigned_hub.clone(),
                    device_id: s.device_id.clone(),
                }));
                self.enter_hub(now_ms, &s.assigned_hub, &s.device_id, true, out);
            }
            None => self.start_dps(now_ms, RegisterReason::NoStoredAssignment, out),
        }
    }

    fn start_dps(&mut self, now_ms: u64, reason: RegisterReason, out: &mut Actions) {
        match self.dps_client() {
            Ok(c) => {
                self.phase = Phase::Dps(c);
                out.push(Action::Output(AppOutput::Registering {
                    dps_host: self.cfg.dps_host.clone(),
                    reason,
                }));
                self.dps_step(now_ms, Event::Start, out);
            }
            Err(e) => self.fail(AppError::Setup(e), out),
        }
    }

    fn enter_hub(
        &mut self,
        now_ms: u64,
        hub: &str,
        device_id: &str,
        from_store: bool,
        out: &mut Actions,
    ) {
        match self.hub_client(hub, device_id) {
            Ok(client) => {
                self.phase = Phase::Hub {
                    client,
                    hub: hub.to_string(),
                    device_id: device_id.to_string(),
                    from_store,
                    connected: false,
                };
                self.hub_failures = 0;
                // Telemetry waiting for a resend belongs to the device it was made for.
                self.resend.retain(|p| {
                    matches!(DeviceTopic::parse(&p.topic),
                        Ok(DeviceTopic::Telemetry { device_id: d, .. }) if d == device_id)
                });
                self.hub_step(now_ms, Event::Start, out);
            }
            Err(e) => self.fail(AppError::Setup(e), out),
        }
    }

    /// Passes a machine's connection action on, refusing to send tokens with an unset clock.
    fn pass(&mut self, now_ms: u64, action: Action<AppOutput>, out: &mut Actions) {
        if let Action::Connect(_) | Action::Reconnect(_) = action {
            if !is_plausible(now_ms) {
                return self.fail(AppError::ClockNotSet { now_ms }, out);
            }
        }
        out.push(action);
    }

    fn fail(&mut self, error: AppError, out: &mut Actions) {
        if !matches!(self.phase, Phase::Idle | Phase::Done)
            && !matches!(out.last(), Some(Action::Disconnect))
        {
            out.push(Action::Disconnect);
        }
        self.phase = Phase::Done;
        self.outcome = Some(Err(error.clone()));
        out.push(Action::Output(AppOutput::Failed(error)));
    }

    fn finish(&mut self, out: &mut Actions) {
        self.phase = Phase::Done;
        self.outcome = Some(Ok(self.sent));
        out.push(Action::Output(AppOutput::Finished {
            messages_sent: self.sent,
        }));
    }

    fn dps_step(&mut self, now_ms: u64, event: Event<'_>, out: &mut Actions) {
        let Phase::Dps(client) = &mut self.phase else {
            return;
        };
        for action in client.handle(now_ms, event) {
            if !matches!(self.phase, Phase::Dps(_)) {
                break;
            }
            match split(action) {
                Ok(a) => self.pass(now_ms, a, out),
                Err(Ok(assignment)) => self.on_assigned(now_ms, &assignment, out),
                Err(Err(error)) => {
                    let link = self.last_link.clone();
                    self.fail(AppError::Dps { error, link }, out)
                }
            }
        }
    }

    fn on_assigned(&mut self, now_ms: u64, a: &Assignment, out: &mut Actions) {
        let stored = StoredAssignment::new(&self.cfg, a);
        out.push(Action::Output(AppOutput::Provisioned {
            hub: a.assigned_hub.clone(),
            device_id: a.device_id.clone(),
            substatus: a.substatus.clone(),
        }));
        out.push(Action::Output(AppOutput::StoreAssignment(stored.clone())));
        self.stored = Some(stored);
        self.enter_hub(now_ms, &a.assigned_hub, &a.device_id, false, out);
    }

    fn hub_step(&mut self, now_ms: u64, event: Event<'_>, out: &mut Actions) {
        let Phase::Hub { client, .. } = &mut self.phase else {
            return;
        };
        for action in client.handle(now_ms, event) {
            if !matches!(self.phase, Phase::Hub { .. }) {
                break;
            }
            match split(action) {
                Ok(a) => self.pass(now_ms, a, out),
                Err(output) => self.on_hub_output(now_ms, output, out),
            }
        }
        if self.is_connected() {
            self.run_timers(now_ms, out);
        }
    }

    fn on_hub_output(&mut self, now_ms: u64, output: HubOutput, out: &mut Actions) {
        let Phase::Hub {
            client,
            hub,
            device_id,
            from_store,
            connected,
        } = &mut self.phase
        else {
            return;
        };
        let emit = |out: &mut Actions, o: AppOutput| out.push(Action::Output(o));
        match output {
            HubOutput::Connected { session_present } => {
                *connected = true;
                self.hub_failures = 0;
                self.reregistered = false;
                emit(
                    out,
                    AppOutput::HubConnected {
                        hub: hub.clone(),
                        device_id: device_id.clone(),
                        session_present,
                    },
                );
                self.next_telemetry.get_or_insert(now_ms);
                self.next_report = Some(now_ms);
            }
            HubOutput::ConnectRefused(error) => {
                let code = match error {
                    HubError::ConnectRefused { code } => code,
                    _ => 0,
                };
                if code != 5 {
                    let then = "retrying after backoff";
                    return emit(out, AppOutput::HubRefused { error, then });
                }
                if self.reregistered {
                    let e = AppError::HubUnauthorized {
                        hub: hub.clone(),
                        device_id: device_id.clone(),
                    };
                    return self.fail(e, out);
                }
                let then = "registering with DPS again (the assignment may be stale)";
                emit(out, AppOutput::HubRefused { error, then });
                out.push(Action::Disconnect);
                self.reregistered = true;
                self.start_dps(now_ms, RegisterReason::HubRefused, out);
            }
            HubOutput::Disconnected { reconnect_at_ms } => {
                *connected = false;
                self.hub_failures += 1;
                let (hub, from_store) = (hub.clone(), *from_store);
                emit(
                    out,
                    AppOutput::HubDisconnected {
                        reconnect_at_ms,
                        cause: self.last_link.clone(),
                    },
                );
                if let Some(max) = self.settings.hub_max_failures {
                    if self.hub_failures >= max {
                        let e = AppError::HubUnreachable {
                            hub,
                            attempts: self.hub_failures,
                            link: self.last_link.clone(),
                        };
                        return self.fail(e, out);
                    }
                }
                if from_store && self.hub_failures >= self.settings.reprovision_after_hub_failures {
                    self.start_dps(now_ms, RegisterReason::HubUnreachable, out);
                }
            }
            HubOutput::SubscribeRefused => emit(
                out,
                AppOutput::Warning(
                    "the hub refused a subscription (a device may hold at most five)".into(),
                ),
            ),
            HubOutput::C2d(m) => emit(out, AppOutput::C2d(m)),
            HubOutput::MethodRequest { name, rid, payload } => {
                let (status, response): (u16, Vec<u8>) = match name.as_str() {
                    "echo" => (200, payload.clone()),
                    "reboot" => (200, br#"{"rebooting":true}"#.to_vec()),
                    other => {
                        let text = format!(
                            "no method {other:?} on this device; it answers \"echo\" and \"reboot\""
                        );
                        let body = serde_json::json!({ "error": text });
                        (404, serde_json::to_vec(&body).unwrap_or_default())
                    }
                };
                match client.method_response(&rid, status, &response) {
                    Ok(p) => out.push(Action::Publish(p)),
                    Err(e) => emit(out, AppOutput::Warning(format!("method {name:?}: {e}"))),
                }
                let reboot = name == "reboot";
                emit(
                    out,
                    AppOutput::MethodCalled {
                        name,
                        request: payload,
                        status,
                        response,
                    },
                );
                if reboot {
                    out.push(Action::Disconnect);
                    self.phase = Phase::Done;
                    self.outcome = Some(Ok(self.sent));
                    emit(out, AppOutput::RebootRequested);
                }
            }
            HubOutput::Twin { twin, .. } => {
                let version = twin.desired_version();
                self.apply_desired(now_ms, twin.desired, version, true, out)
            }
            HubOutput::DesiredPatch { version, patch } => {
                self.apply_desired(now_ms, patch, version, false, out)
            }
            HubOutput::ReportedAck { version, .. } => emit(out, AppOutput::ReportedAck { version }),
            HubOutput::TwinFailed { rid, error } => emit(
                out,
                AppOutput::Warning(format!("twin request {rid} failed: {error}")),
            ),
            HubOutput::Ignored { topic, reason } => emit(
                out,
                AppOutput::Warning(format!("ignored a message on {topic}: {reason}")),
            ),
        }
    }

    fn apply_desired(
        &mut self,
        now_ms: u64,
        properties: Value,
        version: Option<u64>,
        complete: bool,
        out: &mut Actions,
    ) {
        let wanted = match properties.get(TELEMETRY_INTERVAL_PROPERTY) {
            None if !complete => None,
            None | Some(Value::Null) => Some(self.settings.telemetry_interval_ms),
            Some(v) => match v
                .as_u64()
                .filter(|s| (1..=MAX_TELEMETRY_INTERVAL_SECS).contains(s))
            {
                Some(secs) => Some(secs * 1000),
                None => {
                    out.push(Action::Output(AppOutput::Warning(format!(
                        "desired {TELEMETRY_INTERVAL_PROPERTY} {v} is not a whole number of seconds from 1 to {MAX_TELEMETRY_INTERVAL_SECS}; keeping {} s",
                        self.interval_ms / 1000
                    ))));
                    None
                }
            },
        };
        out.push(Action::Output(AppOutput::DesiredProperties {
            version,
            properties,
            complete,
        }));
        if let Some(ms) = wanted.filter(|ms| *ms != self.interval_ms) {
            self.interval_ms = ms;
            self.next_telemetry = Some(now_ms + ms);
            self.next_report = Some(now_ms);
            out.push(Action::Output(AppOutput::TelemetryIntervalChanged {
                secs: ms / 1000,
            }));
        }
    }

    fn uptime_secs(&self, now_ms: u64) -> u64 {
        self.status
            .uptime_ms
            .unwrap_or_else(|| now_ms.saturating_sub(self.started_at.unwrap_or(now_ms)))
            / 1000
    }

    /// The platform numbers that are known, under their JSON names.
    fn status_fields(&self, m: &mut Map<String, Value>) {
        let s = &self.status;
        let fields: [(&str, Option<i64>); 6] = [
            ("freeHeap", s.free_heap.map(i64::from)),
            ("freePsram", s.free_psram.map(i64::from)),
            ("peakHeap", s.peak_heap.map(i64::from)),
            ("peakPsram", s.peak_psram.map(i64::from)),
            ("largestFreeBlock", s.largest_free_block.map(i64::from)),
            ("rssi", s.rssi_dbm.map(i64::from)),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        }
    }

    /// The reported-properties patch: firmware version, uptime, interval, platform numbers.
    pub fn reported_properties(&self, now_ms: u64) -> Value {
        let mut m = Map::new();
        m.insert(
            "firmwareVersion".into(),
            self.settings.firmware_version.clone().into(),
        );
        m.insert("uptimeSecs".into(), self.uptime_secs(now_ms).into());
        m.insert(
            TELEMETRY_INTERVAL_PROPERTY.into(),
            (self.interval_ms / 1000).into(),
        );
        self.status_fields(&mut m);
        Value::Object(m)
    }

    /// The app's own telemetry body: sequence number, uptime, platform numbers.
    fn telemetry_message(&self, now_ms: u64) -> Message {
        let mut m = Map::new();
        m.insert("seq".into(), self.seq.into());
        m.insert("uptimeSecs".into(), self.uptime_secs(now_ms).into());
        self.status_fields(&mut m);
        let body = serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
        Message::json(body).with_message_id(&format!(
            "{}-{}",
            self.cfg.registration_id.as_str(),
            self.seq
        ))
    }

    /// While connected: queued messages, then due reported properties and telemetry.
    fn run_timers(&mut self, now_ms: u64, out: &mut Actions) {
        out.extend(self.resend.drain(..).map(Action::Publish));
        while let Some(m) = self.queue.pop_front() {
            self.publish(m, None, out);
        }
        if self.next_report.is_some_and(|at| now_ms >= at) {
            self.next_report = Some(now_ms + self.settings.report_interval_ms);
            let patch = self.reported_properties(now_ms);
            let Phase::Hub { client, .. } = &mut self.phase else {
                return;
            };
            match client.patch_reported(now_ms, &patch) {
                Ok(p) => {
                    out.push(Action::Publish(p));
                    out.push(Action::Output(AppOutput::ReportedSent { patch }));
                }
                Err(e) => out.push(Action::Output(AppOutput::Warning(format!(
                    "reported properties not sent: {e}"
                )))),
            }
        }
        if self.next_telemetry.is_some_and(|at| now_ms >= at) {
            self.next_telemetry = Some(now_ms + self.interval_ms);
            self.seq += 1;
            let m = self.telemetry_message(now_ms);
            self.publish(m, Some(self.seq), out);
            if self
                .settings
                .max_messages
                .is_some_and(|max| self.seq >= max)
            {
                out.push(Action::Disconnect);
                self.finish(out);
            }
        }
    }

    fn publish(&mut self, message: Message, seq: Option<u64>, out: &mut Actions) {
        let Phase::Hub { client, .. } = &self.phase else {
            return;
        };
        match client.telemetry(&message) {
            Ok(p) => {
                self.sent += 1;
                out.push(Action::Publish(p));
                out.push(Action::Output(AppOutput::TelemetrySent { seq, message }));
            }
            Err(e) => out.push(Action::Output(AppOutput::Warning(format!(
                "telemetry not sent: {e}"
            )))),
        }
    }
}
