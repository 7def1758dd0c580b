//! `dpskit emulate` (a local DPS + IoT Hub) and `dpskit cloud …` (its service side).

use super::key_args::{read_secret_file, GroupKeyArgs};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use dpskit_core::GroupKey;
use dpskit_rehearsal::emulator::{self, AdminClient, DpsSettings, Emulator, EmulatorConfig, Group};
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the emulator keeps its CA, certificates, registrations and admin file.
#[derive(Args, Debug, Clone)]
pub struct StateDirArg {
    /// State directory [default: $DPSKIT_EMULATOR_DIR, else $XDG_STATE_HOME/dpskit/emulator,
    /// else ~/.local/state/dpskit/emulator].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateDirArg {
    pub fn resolve(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(emulator::default_state_dir)
    }
}

#[derive(Args, Debug)]
pub struct EmulateArgs {
    /// Address to listen on; device SDKs only use port 8883.
    #[arg(long, default_value = emulator::DEFAULT_BIND)]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub state: StateDirArg,
    /// ID scope of the enrollment group (like 0ne00ABCDEF).
    #[arg(long, value_name = "SCOPE", required_unless_present = "groups")]
    pub scope: Option<String>,
    #[command(flatten)]
    pub key: GroupKeyArgs,
    /// File holding the group's secondary key (devices may derive from either key).
    #[arg(long, value_name = "FILE")]
    pub secondary_key_file: Option<PathBuf>,
    /// Host name DPS assigns devices to; it must be a name in the server certificate.
    #[arg(long, default_value = emulator::DEFAULT_HUB_HOST)]
    pub hub_host: String,
    /// TOML file with several enrollment groups ([[group]] id_scope, primary_key_file, …).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["scope", "secondary_key_file"])]
    pub groups: Option<PathBuf>,
    /// Extra host name or IP for the server certificate (besides localhost and 127.0.0.1).
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
    /// Append every event (telemetry and diagnostics) as JSON lines to this file.
    #[arg(long, value_name = "FILE")]
    pub log_json: Option<PathBuf>,
    /// retry-after DPS sends with 202 answers (seconds).
    #[arg(long, default_value_t = 2, value_name = "SECS")]
    pub dps_retry_after: u64,
    /// How long DPS takes to assign a device (polls before that get 202 again).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub dps_delay_ms: u64,
    /// Answer the first N registrations of each group with 429 (rehearse throttling).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub throttle_first: u32,
    /// Refuse bad DPS credentials with CONNACK 5 (no reason reaches the device) instead of
    /// answering the register request with 401 and the reason.
    #[arg(long)]
    pub dps_reject_at_connect: bool,
    /// Do not print telemetry on stdout (the event stream and --log-json still get it).
    #[arg(long)]
    pub quiet: bool,
    /// Also answer SNTP on this UDP address (e.g. 127.0.0.1:123, or 0.0.0.0:123 for boards on
    /// the bench; port 123 needs privileges), with the emulator's clock: then a device's whole
    /// environment is this one command (config build --ntp-server <this PC>).
    #[arg(long, value_name = "ADDR")]
    pub sntp: Option<SocketAddr>,
}

#[derive(Subcommand, Debug)]
pub enum CloudCommand {
    /// Follow telemetry (JSON lines) as it arrives; --all adds connections and diagnoses.
    Events(EventsArgs),
    /// Send a cloud-to-device message.
    SendC2d(SendC2dArgs),
    /// Call a direct method and print the device's answer.
    Invoke(InvokeArgs),
    /// Show a device twin; --desired patches the desired properties first.
    Twin(TwinArgs),
    /// List the devices DPS registered, with their connection state.
    Devices(DevicesArgs),
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub state: StateDirArg,
    /// Also show connections, registrations, rejections and their reasons.
    #[arg(long)]
    pub all: bool,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// Which hub's device, when two groups put devices with one ID into different hubs.
#[derive(Args, Debug, Clone)]
pub struct HubArg {
    /// The device's hub host (only needed when two hubs have a device with this ID).
    #[arg(long, value_name = "HOST")]
    pub hub: Option<String>,
}

#[derive(Args, Debug)]
pub struct SendC2dArgs {
    #[command(flatten)]
    pub state: StateDirArg,
    #[command(flatten)]
    pub hub: HubArg,
    pub device: String,
    pub message: String,
    /// Application property `key=value` (or a bare `key` for a null value); repeatable.
    #[arg(long = "property", value_name = "K=V")]
    pub properties: Vec<String>,
}

#[derive(Args, Debug)]
pub struct InvokeArgs {
    #[command(flatten)]
    pub state: StateDirArg,
    #[command(flatten)]
    pub hub: HubArg,
    pub device: String,
    pub method: String,
    /// JSON payload (default null); quote a plain string as '"text"'.
    pub payload: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = emulator::admin::DEFAULT_METHOD_TIMEOUT_SECS, value_name = "SECS")]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct TwinArgs {
    #[command(flatten)]
    pub state: StateDirArg,
    #[command(flatten)]
    pub hub: HubArg,
    pub device: String,
    /// JSON object merged into the desired properties (null deletes a key).
    #[arg(long, value_name = "JSON")]
    pub desired: Option<String>,
}

#[derive(Args, Debug)]
pub struct DevicesArgs {
    #[command(flatten)]
    pub state: StateDirArg,
}

/// Builds the emulator configuration from the flags (reads keys; prints nothing secret).
pub fn emulator_config(a: &EmulateArgs) -> Result<EmulatorConfig> {
    let groups = if let Some(file) = &a.groups {
        emulator::enrollment::load_groups_file(file)?
    } else {
        let scope = a
            .scope
            .as_deref()
            .ok_or_else(|| anyhow!("--scope: missing; give the ID scope, or --groups FILE"))?;
        let primary = a.key.read()?;
        let mut g = Group::new(scope, primary);
        if let Some(f) = &a.secondary_key_file {
            let text = read_secret_file(f, "--secondary-key-file")?;
            g.secondary = Some(GroupKey::parse(
                &text,
                "secondary group key (--secondary-key-file)",
            )?);
        }
        g.hub_host = a.hub_host.clone();
        g.throttle_first_n = a.throttle_first;
        vec![g]
    };
    let groups = groups
        .into_iter()
        .map(|mut g| {
            g.throttle_first_n = g.throttle_first_n.max(a.throttle_first);
            g
        })
        .collect::<Vec<_>>();
    let mut c = EmulatorConfig::new(a.state.resolve(), groups);
    c.bind = a.bind;
    c.extra_sans = a.sans.clone();
    c.sntp = a.sntp;
    c.log_json = a.log_json.clone();
    c.echo_telemetry = !a.quiet;
    c.dps = DpsSettings {
        retry_after_secs: a.dps_retry_after,
        assign_delay_ms: a.dps_delay_ms,
        reject_at_connect: a.dps_reject_at_connect,
    };
    Ok(c)
}

/// `dpskit emulate`: serves until Ctrl-C or SIGTERM.
pub fn emulate(a: EmulateArgs) -> Result<()> {
    let config = emulator_config(&a)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let handle = Emulator::start(config).await?;
        eprintln!("dpskit emulate: CA certificate: {}", handle.ca_pem_path().display());
        eprintln!(
            "dpskit emulate: devices trust it with `dpskit config build --root-ca emulator`; DPS and IoT Hub on {} (Ctrl-C stops)",
            handle.addr()
        );
        if let Some(sntp) = handle.sntp_addr() {
            eprintln!("dpskit emulate: SNTP on udp {sntp} (boards: config build --ntp-server <this PC>)");
        }
        super::ctrl_c().await?;
        handle.shutdown().await;
        Ok(())
    })
}

pub fn run(c: CloudCommand) -> Result<()> {
    match c {
        CloudCommand::Events(a) => events(a),
        CloudCommand::SendC2d(a) => send_c2d(a),
        CloudCommand::Invoke(a) => invoke(a),
        CloudCommand::Twin(a) => twin(a),
        CloudCommand::Devices(a) => devices(a),
    }
}

fn client(state: &StateDirArg) -> AdminClient {
    AdminClient::for_state_dir(&state.resolve())
}

fn print_json(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn events(a: EventsArgs) -> Result<()> {
    let mut seen = 0u64;
    let limit = a.count;
    client(&a.state).follow(
        a.all,
        || {},
        |line| {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                return false;
            }
            seen += 1;
            limit.is_none_or(|n| seen < n)
        },
    )?;
    Ok(())
}

/// `k=v` → (k, Some(v)); a bare `k` → (k, None).
fn parse_property(s: &str) -> Result<(String, Option<String>)> {
    let (k, v) = match s.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (s, None),
    };
    if k.is_empty() {
        bail!("--property {s:?}: the name is empty; write key=value");
    }
    Ok((k.to_string(), v))
}

fn send_c2d(a: SendC2dArgs) -> Result<()> {
    let props = a
        .properties
        .iter()
        .map(|p| parse_property(p))
        .collect::<Result<Vec<_>>>()?;
    let r = client(&a.state).send_c2d_in(a.hub.hub.as_deref(), &a.device, &a.message, &props)?;
    print_json(&r)
}

fn invoke(a: InvokeArgs) -> Result<()> {
    let payload = match &a.payload {
        None => Value::Null,
        Some(p) => serde_json::from_str(p)
            .with_context(|| format!("PAYLOAD {p:?}: not JSON; direct-method payloads are JSON (quote a string: '\"{p}\"')"))?,
    };
    let outcome = client(&a.state).invoke_in(
        a.hub.hub.as_deref(),
        &a.device,
        &a.method,
        payload,
        Some(Duration::from_secs(a.timeout)),
    )?;
    print_json(&serde_json::to_value(outcome)?)
}

fn twin(a: TwinArgs) -> Result<()> {
    let desired = match &a.desired {
        None => None,
        Some(d) => {
            let v: Value = serde_json::from_str(d).with_context(|| {
                format!("--desired {d:?}: not JSON; give an object such as '{{\"interval\":10}}'")
            })?;
            if !v.is_object() {
                bail!("--desired: must be a JSON object such as '{{\"interval\":10}}'");
            }
            Some(v)
        }
    };
    print_json(&client(&a.state).twin_in(a.hub.hub.as_deref(), &a.device, desired)?)
}

fn devices(a: DevicesArgs) -> Result<()> {
    print_json(&client(&a.state).devices()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties() {
        assert_eq!(
            parse_property("a=b=c").unwrap(),
            ("a".into(), Some("b=c".into()))
        );
        assert_eq!(parse_property("flag").unwrap(), ("flag".into(), None));
        assert!(parse_property("=x").is_err());
    }
}
