//! `dpskit demo`: the whole flow on one PC, with nothing but this binary.
//!
//! N virtual ESP32-S3 boards and the local DPS + IoT Hub emulator start in-process; the factory
//! bench provisions the boards over their serial lines (ledger and all); each board's config
//! partition is then read back *over serial* and booted as a virtual device — the same
//! application code the firmware runs — which registers with DPS, connects to the hub, sends
//! telemetry, and answers a cloud-to-device message and a direct method.

use crate::device::{DeviceOptions, Endpoints, VirtualDevice};
use crate::emulator::enrollment::Group;
use crate::emulator::{certs, Emulator, EmulatorConfig};
use crate::sim::{spawn_batch, SimBoardConfig, VirtualBoard};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use dpskit_device::AppOutput;
use dpskit_factory::board::{partition, After, Before, BoardLink, LinkOptions};
use dpskit_factory::files::write_private_file;
use dpskit_factory::station::provision::{run_batch, RunOptions};
use dpskit_factory::station::Station;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// The demo's enrollment group scope (any value works against the emulator).
pub const DEMO_SCOPE: &str = "0ne00DE0001";
/// How long one board may take for each cloud step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub boards: usize,
    /// Where the station, ledger, board images and emulator state go; a temp dir if `None`.
    pub dir: Option<PathBuf>,
    /// Draw progress bars.
    pub progress: bool,
}

/// One board's journey.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BoardJourney {
    pub port: String,
    pub mac: Option<String>,
    pub registration_id: Option<String>,
    pub provisioned: bool,
    pub registered: bool,
    pub telemetry_delivered: u64,
    pub c2d_round_trip_ms: Option<f64>,
    pub method_round_trip_ms: Option<f64>,
    pub problem: Option<String>,
}

impl BoardJourney {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
            && self.provisioned
            && self.registered
            && self.telemetry_delivered > 0
            && self.c2d_round_trip_ms.is_some()
            && self.method_round_trip_ms.is_some()
    }
}

/// Everything the demo did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub boards: Vec<BoardJourney>,
    pub provision_ms: u64,
    pub cloud_ms: u64,
    pub dir: String,
}

/// Runs the demo; `say` receives progress lines.
pub fn run(opts: &DemoOptions, mut say: impl FnMut(&str)) -> Result<DemoReport> {
    if opts.boards == 0 || opts.boards > 100 {
        bail!("--boards: {} is out of range; give 1 to 100", opts.boards);
    }
    let temp;
    let dir: PathBuf = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("--dir: cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::TempDir::new().context("cannot create a temp dir")?;
            temp.path().to_path_buf()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // A throw-away enrollment group key, kept in a 0600 file as a real one should be.
    let mut key_bytes = [0u8; 64];
    getrandom_fill(&mut key_bytes)?;
    let key_text = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let key_file = dir.join("group.key");
    write_private_file(&key_file, key_text.as_bytes())?;
    let group = dpskit_core::GroupKey::parse(&key_text, "demo group key")?;

    // The emulator's CA exists before the blobs are built, so the boards trust it.
    let state_dir = dir.join("emulator");
    let identity = certs::load_or_create(&state_dir, &[])?;
    let mut emu_cfg = EmulatorConfig::new(&state_dir, vec![Group::new(DEMO_SCOPE, group)]);
    emu_cfg.bind = "127.0.0.1:0".parse()?;
    emu_cfg.echo_telemetry = false;
    emu_cfg.human_log = false;
    emu_cfg.log_json = Some(dir.join("telemetry.jsonl"));
    emu_cfg.dps.retry_after_secs = 1;
    let emulator = rt.block_on(Emulator::start(emu_cfg))?;
    let emu_addr = emulator.addr();
    say(&format!(
        "emulator: DPS + IoT Hub on {emu_addr} (CA {})",
        identity.ca_cert.display()
    ));

    let boards = spawn_batch(&SimBoardConfig::default(), opts.boards, &dir.join("boards"))?;
    say(&format!(
        "{} virtual ESP32-S3 board(s) in download mode",
        boards.len()
    ));
    let ports: Vec<String> = boards
        .iter()
        .map(|b| b.pty_path().display().to_string())
        .collect();

    let station_path = write_station(&dir, &key_file, &identity.ca_cert, &ports)?;
    let station = Station::load(&station_path)?;
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let batch = run_batch(
        &station,
        &ports,
        RunOptions {
            progress: opts.progress,
            ..RunOptions::default()
        },
        &stop,
    )?;
    let provision_ms = started.elapsed().as_millis() as u64;
    say(&format!(
        "factory bench: {} board(s) in {provision_ms} ms (ledger {})",
        batch.results.len(),
        station.ledger
    ));

    let mut journeys: Vec<BoardJourney> = ports
        .iter()
        .map(|p| {
            let r = batch.results.iter().find(|r| &r.port == p);
            BoardJourney {
                port: p.clone(),
                mac: r.and_then(|r| r.mac.clone()),
                registration_id: r.and_then(|r| r.registration_id.clone()),
                provisioned: r.is_some_and(|r| r.outcome.is_success()),
                problem: r
                    .filter(|r| !r.outcome.is_success())
                    .map(|r| format!("provisioning: {}", r.reason)),
                ..BoardJourney::default()
            }
        })
        .collect();

    let cloud_started = Instant::now();
    let admin = emulator.admin();
    let _guard = rt.enter();
    let mut devices = Vec::new();
    for (board, journey) in boards.iter().zip(journeys.iter_mut()) {
        if !journey.provisioned {
            continue;
        }
        match read_config_over_serial(board, &station) {
            Ok(image) => {
                let mut o = DeviceOptions::from_image(&image)?;
                o.endpoints = Endpoints {
                    dps: Some(emu_addr.to_string()),
                    hub: Some(emu_addr.to_string()),
                    tls_server_name: None,
                };
                o.settings.telemetry_interval_ms = 1000;
                devices.push((journey, VirtualDevice::spawn(o)));
            }
            Err(e) => journey.problem = Some(format!("reading the config back: {e:#}")),
        }
    }
    for (journey, device) in devices.iter_mut() {
        if let Err(e) = rt.block_on(cloud_round(journey, device, &admin)) {
            journey.problem = Some(format!("{e:#}"));
        }
    }
    for (_, device) in devices {
        let _ = rt.block_on(device.shutdown());
    }
    let cloud_ms = cloud_started.elapsed().as_millis() as u64;
    drop(_guard);
    rt.block_on(emulator.shutdown());
    drop(boards);
    Ok(DemoReport {
        boards: journeys,
        provision_ms,
        cloud_ms,
        dir: dir.display().to_string(),
    })
}

/// Registration, telemetry, a C2D message and an `echo` method for one booted device.
async fn cloud_round(
    journey: &mut BoardJourney,
    device: &mut crate::device::RunningDevice,
    admin: &crate::emulator::client::AdminClient,
) -> Result<()> {
    let id = device.registration_id().to_string();
    device
        .wait_for(STEP_TIMEOUT, |o| {
            matches!(o, AppOutput::Provisioned { .. }).then_some(())
        })
        .await
        .context("DPS registration")?;
    journey.registered = true;
    device
        .wait_for(STEP_TIMEOUT, |o| {
            matches!(o, AppOutput::TelemetrySent { .. }).then_some(())
        })
        .await
        .context("telemetry")?;
    // Delivered means the hub counted it, not just that the device sent it.
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let n = telemetry_count(admin, &id)?;
        if n > 0 {
            journey.telemetry_delivered = n;
            break;
        }
        if Instant::now() > deadline {
            bail!("telemetry: the hub received nothing from {id}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = format!("hello {id}");
    let t = Instant::now();
    admin.send_c2d(&id, &body, &[("demo".into(), Some("c2d".into()))])?;
    device
        .wait_for(STEP_TIMEOUT, |o| match o {
            AppOutput::C2d(m) if m.body == body.as_bytes() => Some(()),
            _ => None,
        })
        .await
        .context("cloud-to-device message")?;
    journey.c2d_round_trip_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
    let payload = serde_json::json!({ "board": id });
    let t = Instant::now();
    let answer = admin.invoke(&id, "echo", payload.clone(), Some(STEP_TIMEOUT))?;
    if answer.status != 200 || answer.payload != payload {
        bail!(
            "direct method echo answered {} {}",
            answer.status,
            answer.payload
        );
    }
    journey.method_round_trip_ms = Some(t.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

fn telemetry_count(admin: &crate::emulator::client::AdminClient, id: &str) -> Result<u64> {
    let devices = admin.devices()?;
    Ok(devices
        .as_array()
        .and_then(|a| a.iter().find(|d| d["deviceId"] == id))
        .and_then(|d| d["telemetry"].as_u64())
        .unwrap_or(0))
}

/// Reads the board's config partition over its serial line, as `inspect` does.
fn read_config_over_serial(board: &VirtualBoard, station: &Station) -> Result<Vec<u8>> {
    // After the bench's write the board may be rebooting into its loader; give it a moment.
    board.wait_for(crate::sim::BoardState::Rom, Duration::from_secs(5));
    let mut link = BoardLink::open(&LinkOptions {
        port: board.pty_path().display().to_string(),
        baud: None,
        before: Before::NoReset,
        after: After::NoReset,
        use_stub: true,
        chip: None,
    })?;
    let table = partition::parse(&link.read_flash(station.table_offset, partition::TABLE_SIZE)?)?;
    let p = partition::config_partition(&table, &station.partition, None)?;
    let bytes = link.read_flash(p.offset(), p.size())?;
    link.finish()?;
    Ok(bytes)
}

/// The demo's station file: every board on its pty, IDs from a template, the emulator's CA.
fn write_station(dir: &Path, key_file: &Path, ca: &Path, ports: &[String]) -> Result<PathBuf> {
    let list = |v: &[String]| {
        v.iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        r#"# Written by `dpskit demo`.
[dps]
id_scope = "{DEMO_SCOPE}"
dps_host = "localhost"

[group_key]
file = {key:?}

[tls]
root_cas = [{ca:?}]

[partition]
name = "dps_cfg"
nvs_size = "0x6000"

[station]
name = "demo"
ledger = "ledger.sqlite"

[ids]
source = "template"
template = "{{prefix}}-{{seq:04}}"
prefix = "demo"

[gates]
chip = "esp32s3"
min_psram_mb = 2

[serial]
before = "no-reset"
after = "no-reset"
stub = true

[ports]
paths = [{ports}]
"#,
        key = key_file.display().to_string(),
        ca = ca.display().to_string(),
        ports = list(ports),
    );
    let path = dir.join("station.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn getrandom_fill(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| anyhow!("cannot read /dev/urandom: {e}"))
}

/// The summary table.
pub fn render(r: &DemoReport) -> String {
    let tick = |b: bool| if b { "yes" } else { "NO" }.to_string();
    let ms = |v: Option<f64>| {
        v.map(|m| format!("{m:.1} ms"))
            .unwrap_or_else(|| "NO".into())
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for j in &r.boards {
        rows.push(vec![
            j.port.clone(),
            j.mac.clone().unwrap_or_else(|| "?".into()),
            j.registration_id.clone().unwrap_or_else(|| "-".into()),
            tick(j.provisioned),
            tick(j.registered),
            if j.telemetry_delivered > 0 {
                format!("{} msg", j.telemetry_delivered)
            } else {
                "NO".into()
            },
            ms(j.c2d_round_trip_ms),
            ms(j.method_round_trip_ms),
            j.problem.clone().unwrap_or_default(),
        ]);
    }
    let headers = [
        "PORT",
        "MAC",
        "DEVICE",
        "PROVISIONED",
        "REGISTERED",
        "TELEMETRY",
        "C2D",
        "METHOD",
        "PROBLEM",
    ];
    let mut s = format!("\n{}", dpskit_factory::table::render(&headers, &rows));
    let ok = r.boards.iter().filter(|j| j.ok()).count();
    s.push_str(&format!(
        "\n{ok} of {} boards went from the factory bench to IoT Hub (provisioning {} ms, cloud {} ms)\n",
        r.boards.len(),
        r.provision_ms,
        r.cloud_ms
    ));
    s
}
