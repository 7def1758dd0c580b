//! The cloud side, locally: a DPS + IoT Hub emulator (`dpskit emulate`) and the client that
//! talks to it as the service would (`dpskit cloud …`).
//!
//! One TLS listener (default `127.0.0.1:8883`, the port device SDKs hard-code) serves both
//! services; the CONNECT user name tells them apart (DPS names contain `/registrations/`).
//! Wire formats come from [`dpskit_core`] (topics, user names, DPS JSON, messages), the same
//! code the device runs, so the two sides cannot drift. Laid out along its seams:
//!
//! * `transport`: the TLS listener, CONNECT and token checks, the MQTT packet loop — limits,
//!   deadlines and keep-alive included.
//! * [`enrollment`]: the groups, and whether a password passes (the diagnosis itself is
//!   [`dpskit_factory::keys::token`], shared with `dpskit sas inspect`).
//! * `dps`: what DPS answers. `hub`: what IoT Hub answers, its device registry and twins.
//! * [`admin`]: the service side (JSON lines over loopback TCP, found with its token in
//!   `admin.json` in the state directory) and its client, used by `dpskit cloud`.
//! * [`clock`]: the one clock for every expiry, deadline and timestamp, injected so tests
//!   move time instead of sleeping. `sntp`: that clock, served over SNTP.
//! * [`certs`]: the private CA and server certificate in the state directory.
//!
//! Decisions:
//! * **DPS authentication failures** are answered, by default, with CONNACK 0 and then
//!   `$dps/registrations/res/401` carrying the explanation in `message` (real DPS does this
//!   too), because a CONNACK carries no text and a device can print the 401 body; such a
//!   session lasts only as long as a connection may take to CONNECT. [`DpsSettings::reject_at_connect`] switches to
//!   CONNACK 5, as the Python SDK also sees in the wild. IoT Hub has no error topic, so hub
//!   failures are CONNACK 5 (or 2 for a client ID that is not the device ID); the reason is in
//!   the log and the event stream.
//! * **Registry**: IoT Hub accepts only devices DPS has assigned to it (as a real hub knows
//!   only devices DPS created). Registrations are remembered in `registrations.jsonl` in the
//!   state directory, so a board that registered yesterday can go straight to the hub after
//!   the emulator restarts. Twins, C2D queues and pending calls live in memory.
//! * **One connection per identity** on the hub: a second CONNECT for a device drops the
//!   first (IoT Hub's 400027). DPS connections are independent.
//! * **Sessions end when their token expires**, as IoT Hub ends them (401003): devices must
//!   renew before `se`.

pub mod admin;
pub mod certs;
pub mod clock;
mod dps;
pub mod enrollment;
mod error;
mod hub;
mod journal;
mod sntp;
mod subscriptions;
mod transport;

pub use admin::client::{self, AdminClient};
pub use admin::{AdminError, AdminRequest, AdminResponse};
pub use certs::{ca_path, client_config};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use enrollment::{Enrollments, Group, DEFAULT_HUB_HOST};
pub use error::EmulatorError;
pub use hub::MethodOutcome;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Where the emulator listens unless told otherwise.
pub const DEFAULT_BIND: &str = "127.0.0.1:8883";
/// Environment variable naming the state directory (for `emulate` and `cloud` alike).
pub const STATE_DIR_ENV: &str = "DPSKIT_EMULATOR_DIR";
/// The admin file's name inside the state directory: address and token, owner-only.
pub const ADMIN_FILE: &str = "admin.json";
const REGISTRATIONS_FILE: &str = "registrations.jsonl";

/// The state directory when none is given: `$DPSKIT_EMULATOR_DIR`, else
/// `$XDG_STATE_HOME/dpskit/emulator`, else (Windows) `%LOCALAPPDATA%\dpskit\emulator`, else
/// `~/.local/state/dpskit/emulator`, else
/// `./.dpskit-emulator`. Per user, not per working directory, so `dpskit config build
/// --root-ca emulator` finds the CA from anywhere.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("dpskit").join("emulator");
    }
    #[cfg(windows)]
    if let Some(d) = std::env::var_os("LOCALAPPDATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("dpskit").join("emulator");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".local/state/dpskit/emulator");
    }
    PathBuf::from(".dpskit-emulator")
}

/// The admin file of the emulator whose state lives in `state_dir`.
pub fn admin_file_path(state_dir: &Path) -> PathBuf {
    state_dir.join(ADMIN_FILE)
}

/// How the DPS side paces and fails registrations.
#[derive(Debug, Clone)]
pub struct DpsSettings {
    /// `retry-after` sent with every 202 (seconds).
    pub retry_after_secs: u64,
    /// How long an assignment takes; polls before that get another 202.
    pub assign_delay_ms: u64,
    /// Refuse bad DPS credentials with CONNACK 5 instead of answering `res/401`.
    pub reject_at_connect: bool,
}

impl Default for DpsSettings {
    fn default() -> Self {
        DpsSettings {
            retry_after_secs: 2,
            assign_delay_ms: 0,
            reject_at_connect: false,
        }
    }
}

/// What the emulator holds at most, so no client can make it grow without bound.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From accept to a CONNECT that passed, TLS handshake included.
    pub connect_timeout: Duration,
    /// Connections that have not passed CONNECT, at once; a new one pushes out the oldest.
    pub pending_connections: usize,
    /// Subscriptions one connection may hold (IoT Hub: five).
    pub subscriptions_per_connection: usize,
    /// DPS registrations in progress at once; past that, 429 with retry-after.
    pub pending_registrations: usize,
    /// Log lines waiting for the writer; past that they are dropped and counted.
    pub journal_backlog: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connect_timeout: Duration::from_secs(10),
            pending_connections: 1024,
            subscriptions_per_connection: 5,
            pending_registrations: 1000,
            journal_backlog: 8192,
        }
    }
}

/// Everything `Emulator::start` needs. Build with [`EmulatorConfig::new`].
#[derive(Clone)]
pub struct EmulatorConfig {
    /// `127.0.0.1:8883` by default; port 0 picks a free one (tests, in-process demos).
    pub bind: SocketAddr,
    pub state_dir: PathBuf,
    pub groups: Vec<Group>,
    /// Extra server-certificate names besides `localhost`, `127.0.0.1` and the groups' hub
    /// hosts (which are added on their own).
    pub extra_sans: Vec<String>,
    pub dps: DpsSettings,
    pub limits: Limits,
    /// Answer SNTP on this UDP address (port 0 picks a free one); off when `None`.
    pub sntp: Option<SocketAddr>,
    /// The clock for every expiry, deadline, timestamp and SNTP answer.
    pub clock: SharedClock,
    /// Append every event as a JSON line to this file.
    pub log_json: Option<PathBuf>,
    /// Print telemetry JSON lines on stdout.
    pub echo_telemetry: bool,
    /// Print diagnostics on stderr.
    pub human_log: bool,
    /// Admin file (address and token); `state_dir/admin.json` when `None`.
    pub admin_file: Option<PathBuf>,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("bind", &self.bind)
            .field("state_dir", &self.state_dir)
            .field("groups", &self.groups)
            .field("extra_sans", &self.extra_sans)
            .field("dps", &self.dps)
            .field("limits", &self.limits)
            .field("sntp", &self.sntp)
            .finish_non_exhaustive()
    }
}

impl EmulatorConfig {
    pub fn new(state_dir: impl Into<PathBuf>, groups: Vec<Group>) -> Self {
        EmulatorConfig {
            bind: DEFAULT_BIND.parse().expect("valid default"),
            state_dir: state_dir.into(),
            groups,
            extra_sans: Vec::new(),
            dps: DpsSettings::default(),
            limits: Limits::default(),
            sntp: None,
            clock: Arc::new(SystemClock),
            log_json: None,
            echo_telemetry: true,
            human_log: true,
            admin_file: None,
        }
    }
}

/// Counters for benchmarks, `dpskit cloud devices` and the limits' tests.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    pub open: AtomicU64,
    pub registrations: AtomicU64,
    pub telemetry: AtomicU64,
    pub rejected: AtomicU64,
}

impl Counters {
    /// Counts a connection as open until the guard drops.
    pub fn open(&self) -> OpenConnection<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }
}

/// One open connection, counted.
pub(crate) struct OpenConnection<'a>(&'a Counters);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A snapshot of the emulator's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Connections accepted so far.
    pub connections: u64,
    pub registrations: u64,
    pub telemetry: u64,
    pub rejected: u64,
    /// Connections open now.
    #[serde(default)]
    pub open_connections: u64,
    /// Of those, how many have not passed CONNECT.
    #[serde(default)]
    pub pending_connections: u64,
    /// Connections closed to make room for newer ones that had not passed CONNECT either.
    #[serde(default)]
    pub evicted_connections: u64,
    /// DPS registrations in progress.
    #[serde(default)]
    pub pending_registrations: u64,
    /// Devices in the hub registry.
    #[serde(default)]
    pub devices: u64,
    /// Log lines dropped because the output could not keep up.
    #[serde(default)]
    pub dropped_events: u64,
}

/// An answer a service publishes to the device that asked.
pub(crate) struct Reply {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What every connection task and the admin interface share.
pub(crate) struct Shared {
    pub enrollments: Enrollments,
    pub dps_settings: DpsSettings,
    pub limits: Limits,
    pub clock: SharedClock,
    pub journal: journal::Journal,
    pub dps: Mutex<dps::DpsState>,
    pub hub: Mutex<hub::registry::Registry>,
    pub counters: Counters,
    pub pending: Arc<transport::Pending>,
    pub registrations_file: PathBuf,
    next_id: AtomicU64,
    /// Seeds operation and request IDs so two runs do not repeat them.
    seed: u64,
}

impl Shared {
    /// A process-unique number (connection IDs, request IDs).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// 16 hex digits that differ per call and per run (not a secret, just unique).
    pub fn unique_hex(&self) -> String {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(self.seed);
        h.write_u64(self.next_id());
        format!("{:016x}", h.finish())
    }

    /// `8-4-4-4-12` hex, unique enough for message, operation and tracking IDs.
    pub fn uuid_like(&self) -> String {
        let a = self.unique_hex();
        let b = self.unique_hex();
        format!(
            "{}-{}-{}-{}-{}",
            &a[..8],
            &a[8..12],
            &a[12..16],
            &b[..4],
            &b[4..16]
        )
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            connections: c.connections.load(Ordering::Relaxed),
            registrations: c.registrations.load(Ordering::Relaxed),
            telemetry: c.telemetry.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            open_connections: c.open.load(Ordering::Relaxed),
            pending_connections: self.pending.len() as u64,
            evicted_connections: self.pending.evicted(),
            pending_registrations: self.dps.lock().unwrap().pending() as u64,
            devices: self.hub.lock().unwrap().len() as u64,
            dropped_events: self.journal.dropped(),
        }
    }
}

/// Starts emulators.
pub struct Emulator;

impl Emulator {
    /// Creates or loads the certificates, binds the listener, the admin interface and SNTP (if
    /// asked), and serves on the current tokio runtime until [`EmulatorHandle::shutdown`].
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        let enrollments = Enrollments::new(config.groups.clone())?;
        let sans = certs::server_names(
            &config.extra_sans,
            enrollments.groups().iter().map(|g| g.hub_host.as_str()),
        );
        let identity = certs::load_or_create(&config.state_dir, &sans)?;
        let tls = certs::server_config(&identity)?;
        let clock = config.clock.clone();
        let journal = journal::Journal::start(
            journal::Sinks {
                log_json: config.log_json.clone(),
                echo_telemetry: config.echo_telemetry,
                human: config.human_log,
                backlog: config.limits.journal_backlog,
            },
            clock.clone(),
        )?;
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: config.bind,
                source,
            })?;
        let sntp = match config.sntp {
            Some(at) => {
                let socket = tokio::net::UdpSocket::bind(at)
                    .await
                    .map_err(|source| EmulatorError::SntpBind { addr: at, source })?;
                Some(Arc::new(socket))
            }
            None => None,
        };
        let sntp_addr = sntp.as_ref().and_then(|s| s.local_addr().ok());
        let admin_path = config
            .admin_file
            .clone()
            .unwrap_or_else(|| admin_file_path(&config.state_dir));
        let (admin_listener, admin_endpoint) = admin::bind(&admin_path).await?;
        let registrations_file = config.state_dir.join(REGISTRATIONS_FILE);
        let seed = clock.now_unix_us() ^ u64::from(std::process::id()).rotate_left(32);
        let shared = Arc::new(Shared {
            enrollments,
            dps_settings: config.dps.clone(),
            limits: config.limits.clone(),
            clock: clock.clone(),
            journal,
            dps: Mutex::new(dps::DpsState::new(clock.clone())),
            hub: Mutex::new(hub::registry::Registry::default()),
            counters: Counters::default(),
            pending: Arc::new(transport::Pending::new(config.limits.pending_connections)),
            registrations_file,
            next_id: AtomicU64::new(1),
            seed,
        });
        let restored = hub::registry::restore(&shared)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(transport::serve(
                shared.clone(),
                listener,
                tls,
                stop_rx.clone(),
            )),
            tokio::spawn(admin::serve(
                shared.clone(),
                admin_listener,
                admin_endpoint.token.clone(),
                stop_rx.clone(),
            )),
        ];
        if let Some(socket) = sntp {
            tasks.push(tokio::spawn(sntp::serve(
                socket,
                clock.clone(),
                shared.journal.clone(),
                stop_rx,
            )));
        }
        let time = sntp_addr
            .map(|a| format!("; SNTP on udp {a}"))
            .unwrap_or_default();
        shared.journal.note(
            "started",
            "emulator",
            &format!(
                "listening on {addr} (DPS and IoT Hub, MQTT 3.1.1 over TLS 1.2/1.3){time}; CA certificate {}; admin file {}; groups: {}; {restored} earlier registration(s) restored",
                identity.ca_cert.display(),
                admin_path.display(),
                shared
                    .enrollments
                    .groups()
                    .iter()
                    .map(|g| format!("{} → {}", g.id_scope, g.hub_host))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            serde_json::json!({ "address": addr.to_string(), "sntp": sntp_addr.map(|a| a.to_string()), "caCertificate": identity.ca_cert, "createdCa": identity.created_ca }),
        );
        Ok(EmulatorHandle {
            addr,
            sntp_addr,
            ca_pem: identity.ca_cert,
            admin_path,
            admin_endpoint,
            stop: stop_tx,
            tasks,
            shared,
        })
    }
}

/// A running emulator. Dropping it without [`shutdown`](Self::shutdown) leaves it serving
/// until the runtime ends.
pub struct EmulatorHandle {
    addr: SocketAddr,
    sntp_addr: Option<SocketAddr>,
    ca_pem: PathBuf,
    admin_path: PathBuf,
    admin_endpoint: admin::AdminEndpoint,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl EmulatorHandle {
    /// The address devices connect to (DPS and hub alike).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The UDP address SNTP is answered on, when asked for.
    pub fn sntp_addr(&self) -> Option<SocketAddr> {
        self.sntp_addr
    }

    /// The CA certificate devices must trust.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem
    }

    /// The admin file (address and token of the admin interface).
    pub fn admin_file(&self) -> &Path {
        &self.admin_path
    }

    /// A client for the admin interface (blocking; call it off the async runtime).
    pub fn admin(&self) -> AdminClient {
        AdminClient::with_endpoint(&self.admin_path, self.admin_endpoint.clone())
    }

    /// Connections, registrations, telemetry messages, rejections and the limits' gauges.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Stops accepting, closes every connection and the admin interface, and flushes the log.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.admin_path);
        let dropped = self.shared.journal.dropped();
        let note = if dropped > 0 {
            format!("shut down; {dropped} event(s) were dropped because the log output could not keep up")
        } else {
            "shut down".to_string()
        };
        self.shared.journal.note(
            "stopped",
            "emulator",
            &note,
            serde_json::json!({ "droppedTotal": dropped }),
        );
        self.shared.journal.flush().await;
    }
}
