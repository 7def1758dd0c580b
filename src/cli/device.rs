//! `dpskit device run|check`: the virtual device, and the offline check of a config image.
//!
//! `run` boots the board's own application code on the PC from the same NVS image a board
//! gets, against Azure or the local emulator; `check` validates an image before flashing.

use super::key_args::GroupKeyArgs;
use anyhow::{anyhow, bail, Context, Result};
use dpskit_device::driver::{Command, Control};
use dpskit_device::AppOutput;
use dpskit_factory::error::CheckFailed;
use dpskit_rehearsal::device::check::{self, CheckOptions, Level};
use dpskit_rehearsal::device::{self, DeviceOptions, Endpoints, StateStore, VirtualDevice};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum DeviceCommand {
    /// Run a virtual device from a config image: register, connect, send telemetry, answer.
    Run(Box<RunArgs>),
    /// Check a config image offline before flashing it (keys, derivation, root CAs).
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The board's NVS config image (from `dpskit config build`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Connect to this HOST[:PORT] for DPS instead of the image's DPS host (TLS still checks
    /// the image's host name unless --tls-server-name). E.g. 127.0.0.1:8883 for the emulator.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub provisioning_host: Option<String>,
    /// Connect to this HOST[:PORT] for IoT Hub instead of the hub DPS assigned (TLS still
    /// checks the assigned hub's name unless --tls-server-name).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub hub_host: Option<String>,
    /// The host name TLS verifies on every connection, instead of the configured/assigned one.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Stop after N telemetry messages (default: keep sending every --interval).
    #[arg(long, value_name = "N")]
    pub messages: Option<u64>,
    /// Seconds between telemetry messages until the twin's desired telemetryInterval says otherwise.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub interval: u64,
    /// Where the DPS assignment is kept [default: <config>.assignment.json next to the image].
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Register with DPS even if an assignment is stored.
    #[arg(long)]
    pub fresh: bool,
    /// Transient DPS failures in a row (429, 5xx, unreachable) before giving up.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub dps_retries: u32,
    /// Failed IoT Hub connections in a row before giving up (0: never give up, as a board).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub hub_retries: u32,
    /// Reported as firmwareVersion.
    #[arg(long, value_name = "TEXT")]
    pub firmware_version: Option<String>,
    /// Run with the device clock shifted by this many seconds (rehearse a board without SNTP).
    #[arg(
        long,
        value_name = "SECS",
        allow_hyphen_values = true,
        default_value_t = 0
    )]
    pub clock_offset: i64,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The NVS config image to check.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    #[command(flatten)]
    pub group_key: GroupKeyArgs,
    /// The local emulator's CA certificate [default: ca.pem in the emulator's state directory, if any].
    #[arg(long, value_name = "FILE")]
    pub emulator_ca: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: DeviceCommand) -> Result<()> {
    match c {
        DeviceCommand::Run(a) => run_device(*a),
        DeviceCommand::Check(a) => check_config(a),
    }
}

/// Builds the options from the flags; nothing runs yet.
pub fn options(a: &RunArgs) -> Result<DeviceOptions> {
    if a.interval == 0 || a.interval > dpskit_device::MAX_TELEMETRY_INTERVAL_SECS {
        bail!(
            "--interval {}: give 1 to {} seconds",
            a.interval,
            dpskit_device::MAX_TELEMETRY_INTERVAL_SECS
        );
    }
    if a.messages == Some(0) {
        bail!("--messages 0: give at least 1, or leave it out to keep sending");
    }
    for (flag, v) in [
        ("--provisioning-host", &a.provisioning_host),
        ("--hub-host", &a.hub_host),
    ] {
        if let Some(v) = v {
            if v.is_empty() || v.contains('/') || v.contains(char::is_whitespace) {
                bail!("{flag} {v:?}: give HOST or HOST:PORT, e.g. 127.0.0.1:8883");
            }
        }
    }
    let mut o = DeviceOptions::from_image_file(&a.config)?;
    o.endpoints = Endpoints {
        dps: a.provisioning_host.clone(),
        hub: a.hub_host.clone(),
        tls_server_name: a.tls_server_name.clone(),
    };
    if let Some(p) = &a.state {
        o.state = StateStore::File(p.clone());
    }
    o.ignore_stored = a.fresh;
    o.clock_offset_ms = a.clock_offset.saturating_mul(1000);
    let s = &mut o.settings;
    s.max_messages = a.messages;
    s.telemetry_interval_ms = a.interval * 1000;
    s.dps_max_retries = a.dps_retries;
    s.hub_max_failures = (a.hub_retries > 0).then_some(a.hub_retries);
    if let Some(v) = &a.firmware_version {
        s.firmware_version = v.clone();
    }
    Ok(o)
}

/// Ctrl-C → a clean stop (disconnect, summary).
struct CtrlC(bool);

impl Control for CtrlC {
    async fn next_command(&mut self) -> Command {
        if self.0 || super::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.0 = true;
        Command::Stop
    }
}

fn run_device(a: RunArgs) -> Result<()> {
    let opts = options(&a)?;
    let id = opts.config.registration_id.as_str().to_string();
    if let StateStore::File(p) = &opts.state {
        eprintln!("[{id}] assignment file: {}", p.display());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = rt.block_on(VirtualDevice::run(opts, CtrlC(false), |o| {
        if let Some(line) = device::describe(o) {
            match o {
                AppOutput::Warning(_) | AppOutput::Failed(_) | AppOutput::HubRefused { .. } => {
                    eprintln!("[{id}] {line}")
                }
                _ => println!("[{id}] {line}"),
            }
        }
    }))?;
    match report.failure {
        Some(e) => Err(CheckFailed(format!("device {id}: {e}")).into()),
        None => {
            eprintln!(
                "[{id}] {} message(s) sent, {} C2D message(s), {} method call(s), {} DPS registration(s)",
                report.messages_sent, report.c2d_received, report.methods_answered, report.registrations
            );
            Ok(())
        }
    }
}

fn check_config(a: CheckArgs) -> Result<()> {
    let image = std::fs::read(&a.config)
        .with_context(|| format!("--config: cannot read {}", a.config.display()))?;
    let group_key = if a.group_key.is_given() {
        Some(a.group_key.read()?)
    } else {
        None
    };
    let opts = CheckOptions {
        group_key,
        emulator_ca: a.emulator_ca.clone(),
        now: time::OffsetDateTime::now_utc(),
    };
    let findings = check::check_image(&image, &opts);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&findings).map_err(|e| anyhow!("{e}"))?
        );
    } else {
        println!("{}:", a.config.display());
        for f in &findings {
            let tag = match f.level {
                Level::Ok => "ok  ",
                Level::Note => "note",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            println!("  {tag}  {}: {}", f.topic, f.text);
        }
    }
    let failed: Vec<String> = findings
        .iter()
        .filter(|f| f.level == Level::Fail)
        .map(|f| format!("{}: {}", f.topic, f.text))
        .collect();
    if !failed.is_empty() {
        return Err(CheckFailed(format!(
            "{}: {} problem(s): {}; the board would not connect — fix the image before flashing",
            a.config.display(),
            failed.len(),
            failed.join("; ")
        ))
        .into());
    }
    Ok(())
}
