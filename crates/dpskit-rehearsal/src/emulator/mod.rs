//! The cloud side, locally: a DPS + IoT Hub emulator (`dpskit emulate`) and the commands that
//! talk to it as the service would (`dpskit cloud …`).
//!
//! One TLS listener (default `127.0.0.1:8883`, the port device SDKs hard-code) serves both
//! services; the CONNECT user name tells them apart (DPS names contain `/registrations/`).
//! Wire formats come from [`dpskit_core`] (topics, user names, DPS JSON, messages), the same
//! code the device runs, so the two sides cannot drift.
//!
//! * [`certs`]: the private CA and server certificate in the state directory.
//! * [`enrollment`]: groups and token validation with plain-words diagnoses.
//! * `server`: TLS + MQTT sessions; `dps` and `hub`: what each service answers.
//! * [`admin`] / [`client`]: the admin interface (JSON lines over loopback TCP, found with its
//!   token in `admin.json` in the state directory) and its client, used by `dpskit cloud`.
//!
//! Decisions:
//! * **DPS authentication failures** are answered, by default, with CONNACK 0 and then
//!   `$dps/registrations/res/401` carrying the explanation in `message` (real DPS does this
//!   too), because a CONNACK carries no text and a device can print the 401 body.
//!   [`DpsSettings::reject_at_connect`] switches to CONNACK 5, as the Python SDK also sees in
//!   the wild. IoT Hub has no error topic, so hub failures are CONNACK 5 (or 2 for a client ID
//!   that is not the device ID); the reason is in the log and the event stream.
//! * **Registry**: IoT Hub accepts only devices DPS has assigned to it (as a real hub knows
//!   only devices DPS created). Registrations are remembered in `registrations.jsonl` in the
//!   state directory, so a board that registered yesterday can go straight to the hub after
//!   the emulator restarts. Twins, C2D queues and pending calls live in memory.
//! * **One connection per identity** on the hub: a second CONNECT for a device drops the
//!   first (IoT Hub's 400027). DPS connections are independent.

pub mod admin;
pub mod certs;
pub mod client;
mod dps;
pub mod enrollment;
mod hub;
mod journal;
mod server;

pub use admin::{AdminRequest, AdminResponse};
pub use certs::{ca_path, client_config};
pub use client::AdminClient;
pub use enrollment::{Enrollments, Group, DEFAULT_HUB_HOST};
pub use hub::MethodOutcome;

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// Everything `Emulator::start` needs. Build with [`EmulatorConfig::new`].
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// `127.0.0.1:8883` by default; port 0 picks a free one (tests, in-process demos).
    pub bind: SocketAddr,
    pub state_dir: PathBuf,
    pub groups: Vec<Group>,
    /// Extra server-certificate names besides `localhost` and `127.0.0.1`.
    pub extra_sans: Vec<String>,
    pub dps: DpsSettings,
    /// Append every event as a JSON line to this file.
    pub log_json: Option<PathBuf>,
    /// Print telemetry JSON lines on stdout.
    pub echo_telemetry: bool,
    /// Print diagnostics on stderr.
    pub human_log: bool,
    /// Admin file (address and token); `state_dir/admin.json` when `None`.
    pub admin_file: Option<PathBuf>,
}

impl EmulatorConfig {
    pub fn new(state_dir: impl Into<PathBuf>, groups: Vec<Group>) -> Self {
        EmulatorConfig {
            bind: DEFAULT_BIND.parse().expect("valid default"),
            state_dir: state_dir.into(),
            groups,
            extra_sans: Vec::new(),
            dps: DpsSettings::default(),
            log_json: None,
            echo_telemetry: true,
            human_log: true,
            admin_file: None,
        }
    }
}

/// Counters for benchmarks and `dpskit cloud devices`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    pub registrations: AtomicU64,
    pub telemetry: AtomicU64,
    pub rejected: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub connections: u64,
    pub registrations: u64,
    pub telemetry: u64,
    pub rejected: u64,
}

/// What every connection task and the admin interface share.
pub(crate) struct Shared {
    pub enrollments: Enrollments,
    pub dps_settings: DpsSettings,
    pub journal: journal::Journal,
    pub dps: Mutex<dps::DpsState>,
    pub hub: Mutex<hub::HubState>,
    pub counters: Counters,
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

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            connections: c.connections.load(Ordering::Relaxed),
            registrations: c.registrations.load(Ordering::Relaxed),
            telemetry: c.telemetry.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Starts emulators.
pub struct Emulator;

impl Emulator {
    /// Creates or loads the certificates, binds the listener and the admin interface, and serves
    /// on the current tokio runtime until [`EmulatorHandle::shutdown`].
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle> {
        let enrollments = Enrollments::new(config.groups.clone())?;
        let identity = certs::load_or_create(&config.state_dir, &config.extra_sans)?;
        let tls = certs::server_config(&identity)?;
        let journal = journal::Journal::start(journal::Sinks {
            log_json: config.log_json.clone(),
            echo_telemetry: config.echo_telemetry,
            human: config.human_log,
        })?;
        let listener = tokio::net::TcpListener::bind(config.bind).await.with_context(|| {
            format!(
                "--bind {}: cannot listen there (another emulator or MQTT broker on the port? ports below 1024 need privileges)",
                config.bind
            )
        })?;
        let addr = listener.local_addr()?;
        let admin_path = config
            .admin_file
            .clone()
            .unwrap_or_else(|| admin_file_path(&config.state_dir));
        let (admin_listener, admin_endpoint) = admin::bind(&admin_path).await?;
        let registrations_file = config.state_dir.join(REGISTRATIONS_FILE);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let shared = Arc::new(Shared {
            enrollments,
            dps_settings: config.dps.clone(),
            journal,
            dps: Mutex::new(dps::DpsState::default()),
            hub: Mutex::new(hub::HubState::default()),
            counters: Counters::default(),
            registrations_file,
            next_id: AtomicU64::new(1),
            seed,
        });
        let restored = hub::restore_registrations(&shared)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(server::serve(
            shared.clone(),
            listener,
            tls,
            stop_rx.clone(),
        ));
        let admin_task = tokio::spawn(admin::serve(
            shared.clone(),
            admin_listener,
            admin_endpoint.token.clone(),
            stop_rx,
        ));
        shared.journal.note(
            "started",
            "emulator",
            &format!(
                "listening on {addr} (DPS and IoT Hub, MQTT 3.1.1 over TLS 1.2/1.3); CA certificate {}; admin file {}; groups: {}; {restored} earlier registration(s) restored",
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
            serde_json::json!({ "address": addr.to_string(), "caCertificate": identity.ca_cert, "createdCa": identity.created_ca }),
        );
        Ok(EmulatorHandle {
            addr,
            ca_pem: identity.ca_cert,
            admin_path,
            admin_endpoint,
            stop: stop_tx,
            tasks: vec![server, admin_task],
            shared,
        })
    }
}

/// A running emulator. Dropping it without [`shutdown`](Self::shutdown) leaves it serving
/// until the runtime ends.
pub struct EmulatorHandle {
    addr: SocketAddr,
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

    /// Connections, registrations, telemetry messages and rejections so far.
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
        self.shared
            .journal
            .note("stopped", "emulator", "shut down", journal::none());
        self.shared.journal.flush().await;
    }
}
