//! The cold-board benchmark's machinery, shared by the benchmark (`main.rs`) and its smoke
//! test: boards on the real ROM (QEMU) or virtual boards with the ROM timing model, the timed
//! jobs (dpskit's binary, Espressif's Python chain), per-command latencies, and batches.
#![allow(dead_code)] // each user (bench, smoke test) takes a part

use dpskit_rehearsal::sim::protocol::RomTiming;
use dpskit_rehearsal::sim::qemu::QemuBoard;
use dpskit_rehearsal::sim::{ResetBehaviour, SimBoardConfig, VirtualBoard};
use espflash::command::{Command, CommandType};
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use serialport::{FlowControl, UsbPortInfo};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub use crate::station::GROUP_KEY;
pub const SCOPE: &str = "0ne00ABCDEF";
pub const BAUD: u32 = 921_600;
/// `dps_cfg` in templates/partitions.csv.
pub const DPS_CFG: u32 = 0x12000;
pub const DPS_CFG_SIZE: u32 = 0x6000;

/// What a cold board runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rig {
    /// Espressif's ESP32-S3 ROM in QEMU (`ESP_QEMU_DIR`), a fresh boot per board.
    RealRom,
    /// A virtual board, line paced at the baud rate, answering with the ROM timing model.
    Model,
}

impl Rig {
    pub fn name(self) -> &'static str {
        match self {
            Rig::RealRom => "real ROM (QEMU)",
            Rig::Model => "virtual board (ROM model)",
        }
    }
}

/// One board in ROM download mode, fresh.
pub enum Board {
    Qemu(QemuBoard),
    Virtual(VirtualBoard),
}

impl Board {
    pub fn cold(rig: Rig, index: usize) -> anyhow::Result<Board> {
        let mut config = SimBoardConfig::default();
        config.profile.mac = config.profile.mac_plus(index as u64);
        Ok(match rig {
            Rig::RealRom => Board::Qemu(QemuBoard::spawn(&config)?),
            Rig::Model => Board::Virtual(VirtualBoard::spawn(SimBoardConfig {
                line_rate: true,
                timing: Some(RomTiming::esp32s3_rom_in_qemu()),
                reset: ResetBehaviour {
                    banner: false,
                    ..ResetBehaviour::default()
                },
                ..config
            })?),
        })
    }

    pub fn port(&self) -> String {
        match self {
            Board::Qemu(b) => b.pty_path().display().to_string(),
            Board::Virtual(b) => b.pty_path().display().to_string(),
        }
    }

    pub fn read_flash(&self, offset: u32, len: u32) -> anyhow::Result<Vec<u8>> {
        match self {
            Board::Qemu(b) => b.read_flash(offset, len),
            Board::Virtual(b) => b.read_flash(offset, len),
        }
    }
}

/// A job timed from process start to exit: connect, the work, verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// `dpskit write-config` building the image from flags (derive, NVS, write, MD5).
    WriteConfig { stub: bool },
    /// `dpskit inspect` of a board.
    Inspect { stub: bool },
    /// Espressif's chain for the same job: their NVS generator, then `esptool write-flash`
    /// (flasher stub, compressed, MD5-verified) at the same baud.
    PythonChain,
}

impl Job {
    pub fn name(self) -> &'static str {
        match self {
            Job::WriteConfig { stub: false } => "dpskit write-config (ROM loader)",
            Job::WriteConfig { stub: true } => "dpskit write-config --stub",
            Job::Inspect { stub: false } => "dpskit inspect (ROM loader)",
            Job::Inspect { stub: true } => "dpskit inspect --stub",
            Job::PythonChain => "NVS generator + esptool write-flash (stub)",
        }
    }
}

/// Runs `job` against `board` and returns its wall time; the result is checked (exit status,
/// and for writes the config on the board's flash).
pub fn run_job(dpskit: &Path, job: Job, board: &Board, work: &Path) -> anyhow::Result<Duration> {
    let port = board.port();
    let common = [
        "--port", &port, "--baud", "921600", "--before", "no-reset", "--after", "no-reset",
    ];
    let key = work.join("group.key");
    std::fs::write(&key, GROUP_KEY)?;
    let mut cmds: Vec<std::process::Command> = Vec::new();
    match job {
        Job::WriteConfig { stub } | Job::Inspect { stub } => {
            let mut c = std::process::Command::new(dpskit);
            if matches!(job, Job::WriteConfig { .. }) {
                c.arg("write-config").args(common).args([
                    "--id-scope",
                    SCOPE,
                    "--registration-id",
                    "bench-0001",
                    "--group-key-file",
                ]);
                c.arg(&key);
            } else {
                c.arg("inspect").args(common);
            }
            if stub {
                c.arg("--stub");
            }
            c.env_remove("DPSKIT_GROUP_KEY");
            cmds.push(c);
        }
        Job::PythonChain => {
            let device_key = dpskit_core::GroupKey::parse(GROUP_KEY, "bench")
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .derive("bench-0001");
            let bundle = dpskit_factory::blob::roots::assemble(
                &dpskit_factory::blob::roots::RootSource::defaults(),
                time::OffsetDateTime::now_utc(),
            )?;
            std::fs::write(work.join("root_ca.txt"), &bundle.pem)?;
            let csv = format!(
                "key,type,encoding,value\ndps,namespace,,\nschema,data,u8,1\nscope_id,data,string,{SCOPE}\nregistration_id,data,string,bench-0001\ndevice_key,data,string,{}\ndps_host,data,string,global.azure-devices-provisioning.net\nroot_ca,file,string,root_ca.txt\n",
                device_key.to_base64()
            );
            std::fs::write(work.join("cfg.csv"), csv)?;
            let mut gen = std::process::Command::new("python3");
            gen.args([
                "-m",
                "esp_idf_nvs_partition_gen",
                "generate",
                "cfg.csv",
                "cfg.bin",
                &format!("{DPS_CFG_SIZE:#x}"),
            ])
            .current_dir(work);
            cmds.push(gen);
            let mut flash = std::process::Command::new("python3");
            flash
                .args(["-m", "esptool", "--port", &port, "--baud", "921600"])
                .args(["--before", "no-reset", "--after", "no-reset"])
                .args(["write-flash", &format!("{DPS_CFG:#x}"), "cfg.bin"])
                .current_dir(work);
            cmds.push(flash);
        }
    }
    let start = Instant::now();
    for mut c in cmds {
        let out = c.stdin(Stdio::null()).output()?;
        if !out.status.success() {
            anyhow::bail!(
                "{} failed: {}{}",
                job.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let took = start.elapsed();
    if !matches!(job, Job::Inspect { .. }) {
        let flash = board.read_flash(DPS_CFG, DPS_CFG_SIZE)?;
        let cfg = dpskit_factory::blob::nvs::decode_image(&flash)
            .map_err(|e| anyhow::anyhow!("{}: the board holds no config: {e}", job.name()))?;
        anyhow::ensure!(
            cfg.registration_id.as_str() == "bench-0001",
            "{}: wrong config on the board",
            job.name()
        );
    }
    Ok(took)
}

/// A ROM command measured on its own: request to reply, at 921600 baud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Sync,
    ReadReg,
    ReadFlashSlow,
    SpiFlashMd5,
    FlashDeflBegin,
    FlashDeflData,
    FlashDeflErased,
    FlashData,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Sync,
        Op::ReadReg,
        Op::ReadFlashSlow,
        Op::SpiFlashMd5,
        Op::FlashDeflBegin,
        Op::FlashDeflData,
        Op::FlashDeflErased,
        Op::FlashData,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Sync => "SYNC (8 replies)",
            Op::ReadReg => "READ_REG",
            Op::ReadFlashSlow => "READ_FLASH_SLOW (64 B)",
            Op::SpiFlashMd5 => "SPI_FLASH_MD5 (24 KB)",
            Op::FlashDeflBegin => "FLASH_DEFL_BEGIN (erase 24 KB)",
            Op::FlashDeflData => "FLASH_DEFL_DATA (1 KB block, ~1 KB out)",
            Op::FlashDeflErased => "FLASH_DEFL_DATA (24 KB of 0xFF out)",
            Op::FlashData => "FLASH_DATA (1 KB uncompressed)",
        }
    }
}

/// Opens a synced ROM connection at 921600 baud.
pub fn rom_connection(port: &str) -> anyhow::Result<Connection> {
    let serial = serialport::new(port, 115_200)
        .flow_control(FlowControl::None)
        .timeout(Duration::from_secs(3))
        .open_native()?;
    let info = UsbPortInfo {
        vid: 0,
        pid: 0,
        serial_number: None,
        manufacturer: None,
        product: None,
    };
    let mut c = Connection::new(
        serial,
        info,
        ResetAfterOperation::NoReset,
        ResetBeforeOperation::NoReset,
        115_200,
    );
    c.begin()?;
    c.command(Command::ChangeBaudrate {
        new_baud: BAUD,
        prior_baud: 0,
    })?;
    c.set_baud(BAUD)?;
    c.flush()?;
    c.command(Command::SpiAttach {
        spi_params: espflash::flasher::SpiAttachParams::default(),
    })?;
    Ok(c)
}

/// The compressed stream of a typical config image (24 KB, ~3 KB of it used).
pub fn config_stream() -> Vec<u8> {
    let mut image = vec![0xFFu8; DPS_CFG_SIZE as usize];
    let mut x = 0x1234_5678u32;
    for b in image.iter_mut().take(3000) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&image).unwrap();
    z.finish().unwrap()
}

/// Median time of `n` runs of `op` on an open connection.
pub fn time_op(c: &mut Connection, op: Op, n: usize) -> anyhow::Result<Duration> {
    let stream = config_stream();
    let raw: Vec<u8> = (0..0x400u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        // Set-up that is not measured.
        match op {
            Op::FlashDeflData | Op::FlashDeflErased => {
                c.command(Command::FlashDeflBegin {
                    size: DPS_CFG_SIZE,
                    blocks: (stream.len() as u32).div_ceil(0x400),
                    block_size: 0x400,
                    offset: DPS_CFG,
                    supports_encryption: true,
                })?;
            }
            Op::FlashData => {
                c.command(Command::FlashBegin {
                    size: 0x400,
                    blocks: 1,
                    block_size: 0x400,
                    offset: DPS_CFG,
                    supports_encryption: true,
                })?;
            }
            _ => {}
        }
        let t = Instant::now();
        match op {
            Op::Sync => {
                c.with_timeout(CommandType::Sync.timeout(), |c| {
                    c.command(Command::Sync)?;
                    for _ in 0..7 {
                        c.read_response_for_command(CommandType::Sync)?;
                    }
                    Ok(())
                })?;
            }
            Op::ReadReg => {
                c.read_reg(0x4000_1000)?;
            }
            Op::ReadFlashSlow => {
                c.command(Command::ReadFlashSlow {
                    offset: 0x8000,
                    size: 64,
                    block_size: 64,
                    max_in_flight: 1,
                })?;
            }
            Op::SpiFlashMd5 => {
                c.with_timeout(CommandType::FlashMd5.timeout_for_size(DPS_CFG_SIZE), |c| {
                    c.command(Command::FlashMd5 {
                        offset: DPS_CFG,
                        size: DPS_CFG_SIZE,
                    })
                })?;
            }
            Op::FlashDeflBegin => {
                c.command(Command::FlashDeflBegin {
                    size: DPS_CFG_SIZE,
                    blocks: 2,
                    block_size: 0x400,
                    offset: DPS_CFG,
                    supports_encryption: true,
                })?;
            }
            Op::FlashDeflData => {
                c.command(Command::FlashDeflData {
                    data: &stream[..stream.len().min(0x400)],
                    pad_to: 0,
                    pad_byte: 0xFF,
                    sequence: 0,
                })?;
            }
            Op::FlashDeflErased => {
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
                z.write_all(&[0xFF; DPS_CFG_SIZE as usize]).unwrap();
                let erased = z.finish().unwrap();
                c.command(Command::FlashDeflData {
                    data: &erased,
                    pad_to: 0,
                    pad_byte: 0xFF,
                    sequence: 0,
                })?;
            }
            Op::FlashData => {
                c.command(Command::FlashData {
                    data: &raw,
                    pad_to: 0x400,
                    pad_byte: 0xFF,
                    sequence: 0,
                })?;
            }
        }
        times.push(t.elapsed());
    }
    Ok(median(&mut times))
}

pub fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// `N` boards provisioned at once by the factory bench (`dpskit provision`'s library: one
/// worker per port, ROM loader or stub, 921600 baud, a fresh station and ledger): wall time.
pub fn batch(boards: &[Board], stub: bool) -> anyhow::Result<Duration> {
    use dpskit_factory::station::provision::{run_batch, Outcome, RunOptions};
    let dir = tempfile::tempdir()?;
    let station = crate::station::bench_station(dir.path(), stub, Some(BAUD), None);
    let ports: Vec<String> = boards.iter().map(Board::port).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    let report = run_batch(&station, &ports, RunOptions::default(), &stop)?;
    let took = start.elapsed();
    let failed: Vec<&str> = report
        .results
        .iter()
        .filter(|r| r.outcome != Outcome::Done)
        .map(|r| r.reason.as_str())
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} board(s) failed: {}",
        failed.len(),
        failed.join(" | ")
    );
    Ok(took)
}

/// The dpskit binary cargo built for this bench or test.
pub fn dpskit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dpskit"))
}
