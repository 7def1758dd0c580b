//! The virtual device: the board's application ([`dpskit_device::DeviceApp`], the same code
//! the firmware runs) booted on the PC from the same NVS config image a board gets.
//!
//! It trusts only the root CAs inside that image and reaches real Azure or the local emulator
//! over MQTT/TLS ([`session`]), keeps its DPS assignment in a file ([`store`]), and can run
//! with a shifted clock ([`clock`]) to rehearse a board without SNTP. [`check`] validates an
//! image offline before it is flashed.
//!
//! For a demo that boots many devices in one process: [`VirtualDevice::spawn`] per device,
//! each with [`StateStore::Memory`], then [`RunningDevice::wait_for`] / [`RunningDevice::stop`].

pub mod check;
pub mod clock;
pub mod session;
pub mod store;
pub mod tls;

pub use clock::HostClock;
pub use session::{Endpoints, HostConnector, HostSession, TokioSleep};
pub use store::{default_state_path, StateStore};

use anyhow::{anyhow, bail, Context, Result};
use dpskit_core::hub::Message;
use dpskit_core::DeviceConfig;
use dpskit_device::driver::{self, Command, Control, Entropy, Platform, RunEnd};
use dpskit_device::{AppError, AppOutput, AppSettings, DeviceApp, PlatformStatus};
use dpskit_factory::blob::nvs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Telemetry interval of a virtual device unless told otherwise (a board's default is 60 s).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Bound on TCP + TLS + CONNACK and on each SUBACK / PUBACK.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything one virtual device runs with.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub config: DeviceConfig,
    pub endpoints: Endpoints,
    pub settings: AppSettings,
    pub state: StateStore,
    /// Register with DPS even if an assignment is stored (first boot only).
    pub ignore_stored: bool,
    /// Shift the device's clock (tokens and certificate checks) by this many ms.
    pub clock_offset_ms: i64,
    pub timeout: Duration,
    /// `reboot` method calls honoured (each restarts the app from the stored assignment);
    /// one more ends the run.
    pub max_reboots: u32,
}

impl DeviceOptions {
    /// Defaults for a PC run: telemetry every 10 s, give up after 5 failed hub connections,
    /// assignment kept in memory.
    pub fn new(config: DeviceConfig) -> Self {
        let mut settings =
            AppSettings::new(&format!("dpskit-virtual/{}", env!("CARGO_PKG_VERSION")));
        settings.telemetry_interval_ms = DEFAULT_INTERVAL.as_millis() as u64;
        settings.hub_max_failures = Some(5);
        DeviceOptions {
            config,
            endpoints: Endpoints::default(),
            settings,
            state: StateStore::Memory(None),
            ignore_stored: false,
            clock_offset_ms: 0,
            timeout: DEFAULT_TIMEOUT,
            max_reboots: 10,
        }
    }

    /// From an NVS config image, exactly as a board reads it.
    pub fn from_image(image: &[u8]) -> Result<Self> {
        Ok(DeviceOptions::new(nvs::decode_image(image)?))
    }

    /// From an image file; the assignment is kept next to it ([`default_state_path`]).
    pub fn from_image_file(path: &Path) -> Result<Self> {
        let image = std::fs::read(path)
            .with_context(|| format!("--config: cannot read {}", path.display()))?;
        let mut o =
            Self::from_image(&image).map_err(|e| anyhow!("--config {}: {e:#}", path.display()))?;
        o.state = StateStore::File(default_state_path(path));
        Ok(o)
    }
}

/// What a run did, for the CLI's summary and a demo's table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub registration_id: String,
    /// The hub and device ID last connected to (or assigned).
    pub hub: Option<String>,
    pub device_id: Option<String>,
    /// DPS registrations that succeeded.
    pub registrations: u32,
    /// Boots that went straight to the hub with the stored assignment.
    pub stored_assignment_used: u32,
    pub hub_connections: u32,
    pub messages_sent: u64,
    pub c2d_received: u64,
    pub methods_answered: u64,
    pub desired_updates: u64,
    pub reported_acks: u64,
    pub reboots: u32,
    /// Why the device stopped, if it failed.
    pub failure: Option<AppError>,
}

impl Report {
    fn observe(&mut self, o: &AppOutput) {
        match o {
            AppOutput::UsingStoredAssignment { hub, device_id } => {
                self.stored_assignment_used += 1;
                self.hub = Some(hub.clone());
                self.device_id = Some(device_id.clone());
            }
            AppOutput::Provisioned { hub, device_id, .. } => {
                self.registrations += 1;
                self.hub = Some(hub.clone());
                self.device_id = Some(device_id.clone());
            }
            AppOutput::HubConnected { .. } => self.hub_connections += 1,
            AppOutput::TelemetrySent { .. } => self.messages_sent += 1,
            AppOutput::C2d(_) => self.c2d_received += 1,
            AppOutput::MethodCalled { .. } => self.methods_answered += 1,
            AppOutput::DesiredProperties {
                complete: false, ..
            } => self.desired_updates += 1,
            AppOutput::ReportedAck { .. } => self.reported_acks += 1,
            AppOutput::Failed(e) => self.failure = Some(e.clone()),
            _ => {}
        }
    }
}

/// Jitter for reconnect backoff (not a secret; differs per device and run).
struct HostEntropy(u64);

impl HostEntropy {
    fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        HostEntropy(h.finish() | 1)
    }
}

impl Entropy for HostEntropy {
    fn random_u32(&mut self) -> u32 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
}

/// Commands from a [`RunningDevice`] handle.
struct ChannelControl(mpsc::UnboundedReceiver<Command>);

impl Control for ChannelControl {
    async fn next_command(&mut self) -> Command {
        match self.0.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }
}

/// Boots virtual devices.
pub struct VirtualDevice;

impl VirtualDevice {
    /// Runs one device until it finishes (`max_messages`), fails, or `control` says stop.
    /// `on_output` sees everything the app reports. `Err` only for a config the device
    /// cannot start with (unusable roots, bad settings); a failed run is `report.failure`.
    pub async fn run(
        opts: DeviceOptions,
        mut control: impl Control,
        mut on_output: impl FnMut(&AppOutput),
    ) -> Result<Report> {
        let trust = tls::Trust::from_pem(&opts.config.root_ca_pem)?;
        let clock = HostClock::new(opts.clock_offset_ms);
        let tls_config = tls::client_config(&trust, Arc::new(clock))?;
        let connector = HostConnector::new(tls_config, opts.endpoints.clone(), opts.timeout);
        let mut session = connector.session(&clock);
        let mut store = opts.state.clone();
        let mut entropy = HostEntropy::new();
        let mut report = Report {
            registration_id: opts.config.registration_id.as_str().to_string(),
            ..Default::default()
        };
        loop {
            let (stored, note) = if opts.ignore_stored && report.reboots == 0 {
                (None, None)
            } else {
                store.read()
            };
            if let Some(note) = note {
                on_output(&AppOutput::Warning(note));
            }
            let mut app = DeviceApp::new(opts.config.clone(), opts.settings.clone(), stored)
                .map_err(|e| anyhow!("{e}"))?;
            let platform = Platform {
                clock: &clock,
                entropy: &mut entropy,
                storage: &mut store,
            };
            let end = driver::run(&mut app, &mut session, &mut control, platform, |o| {
                report.observe(o);
                on_output(o);
            })
            .await;
            match end {
                RunEnd::Reboot if report.reboots < opts.max_reboots => report.reboots += 1,
                RunEnd::Reboot | RunEnd::Finished { .. } => return Ok(report),
                RunEnd::Failed(e) => {
                    report.failure = Some(e);
                    return Ok(report);
                }
            }
        }
    }

    /// Starts one device as a task on the current tokio runtime.
    pub fn spawn(opts: DeviceOptions) -> RunningDevice {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let id = opts.config.registration_id.as_str().to_string();
        let task = tokio::spawn(async move {
            VirtualDevice::run(opts, ChannelControl(cmd_rx), move |o| {
                let _ = out_tx.send(o.clone());
            })
            .await
        });
        RunningDevice {
            id,
            commands: cmd_tx,
            outputs: out_rx,
            seen: Vec::new(),
            task,
        }
    }
}

/// A device started with [`VirtualDevice::spawn`].
pub struct RunningDevice {
    id: String,
    commands: mpsc::UnboundedSender<Command>,
    outputs: mpsc::UnboundedReceiver<AppOutput>,
    seen: Vec<AppOutput>,
    task: tokio::task::JoinHandle<Result<Report>>,
}

impl RunningDevice {
    pub fn registration_id(&self) -> &str {
        &self.id
    }

    /// Sends a telemetry message of your own (queued while offline).
    pub fn send(&self, message: Message) {
        let _ = self.commands.send(Command::Send(Box::new(message)));
    }

    /// Platform numbers for the twin and telemetry (a demo can make them up).
    pub fn set_status(&self, status: PlatformStatus) {
        let _ = self.commands.send(Command::Status(status));
    }

    /// Asks the device to disconnect and finish; [`finish`](Self::finish) waits for it.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    /// The next output, or `None` once the device has ended and everything was read.
    pub async fn next_output(&mut self) -> Option<AppOutput> {
        let o = self.outputs.recv().await?;
        self.seen.push(o.clone());
        Some(o)
    }

    /// Every output read so far.
    pub fn seen(&self) -> &[AppOutput] {
        &self.seen
    }

    /// Reads outputs until `pick` returns `Some`, for at most `timeout`. Fails (listing what
    /// was seen) on timeout or when the device ends first.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&AppOutput) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.next_output()).await {
                Ok(Some(o)) => {
                    if let Some(t) = pick(&o) {
                        return Ok(t);
                    }
                }
                Ok(None) => bail!(
                    "device {} ended before the awaited output; it reported:\n{}",
                    self.id,
                    self.seen_text()
                ),
                Err(_) => bail!(
                    "device {}: not seen within {} s; it reported:\n{}",
                    self.id,
                    timeout.as_secs(),
                    self.seen_text()
                ),
            }
        }
    }

    fn seen_text(&self) -> String {
        self.seen
            .iter()
            .map(|o| describe(o).unwrap_or_else(|| format!("{o:?}")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the device to end (after [`stop`](Self::stop) or on its own).
    pub async fn finish(mut self) -> Result<Report> {
        let report = (&mut self.task)
            .await
            .map_err(|e| anyhow!("device {} task: {e}", self.id))?;
        while let Ok(o) = self.outputs.try_recv() {
            self.seen.push(o);
        }
        report
    }

    /// Stops the device and waits for it.
    pub async fn shutdown(self) -> Result<Report> {
        self.stop();
        self.finish().await
    }
}

/// One human line for an output (`None` for those not worth a line): the board's log line.
pub fn describe(output: &AppOutput) -> Option<String> {
    output.log_line().map(|(_, line)| line)
}
