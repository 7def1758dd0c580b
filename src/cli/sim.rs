//! `dpskit sim`: start virtual ESP32-S3 boards in ROM download mode on pseudo-terminals and run
//! until Ctrl-C / SIGTERM. SIGUSR1 resets every board back into download mode.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use dpskit_rehearsal::sim::board::capacity_from_flash_size;
use dpskit_rehearsal::sim::efuse::{format_mac, parse_mac};
use dpskit_rehearsal::sim::protocol::op;
use dpskit_rehearsal::sim::{
    spawn_batch, AppDescriptor, ChipKind, CorruptReply, EfuseProfile, EmbeddedFlash, Faults,
    FlashVendor, ImageFlashMode, Layout, PsramSize, PsramVendor, ResetBehaviour, Revision,
    Security, SimBoardConfig,
};

/// Start virtual ESP32-S3 boards (ROM download mode on pseudo-terminals).
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Number of boards.
    #[arg(long, default_value_t = 1)]
    pub boards: usize,
    /// Directory for the flash images (board-<i>.bin); kept after exit. Default: a temp dir
    /// removed on exit.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Reuse existing images in --dir instead of writing fresh ones.
    #[arg(long, requires = "dir")]
    pub keep_images: bool,

    /// Base MAC; board i gets base + i.
    #[arg(long, default_value = "34:85:18:00:00:01", value_parser = parse_mac)]
    pub mac: [u8; 6],
    /// Silicon revision, e.g. v0.2.
    #[arg(long, default_value = "v0.2")]
    pub revision: Revision,
    /// eFuse BLK_VERSION major.minor (1.1 is the "ECO0" case).
    #[arg(long, default_value = "1.2")]
    pub blk_version: Revision,
    /// Package: 0 QFN56, 1 PICO-1 (LGA56).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..8))]
    pub pkg_version: u8,
    /// In-package PSRAM: none, 2, 4, 8 or 16 (MB).
    #[arg(long, default_value = "8")]
    pub psram: PsramSize,
    /// PSRAM vendor: ap3v3 or ap1v8.
    #[arg(long, default_value = "ap3v3")]
    pub psram_vendor: PsramVendor,
    /// SPI flash size (4MB, 16MB, …) or JEDEC capacity byte (0x16 = 4 MB, 0x18 = 16 MB).
    #[arg(long, default_value = "4MB", value_parser = parse_flash_size)]
    pub flash_size: u8,
    /// JEDEC manufacturer and type bytes, hex (default ef40, Winbond W25Q).
    #[arg(long, default_value = "ef40", value_parser = parse_jedec_mfr_type)]
    pub flash_id: [u8; 2],
    /// In-package flash reported by eFuse FLASH_CAP: none, 4 or 8 (MB).
    #[arg(long, default_value = "none")]
    pub embedded_flash: EmbeddedFlash,
    /// Vendor of the in-package flash: xmc, gd, fm, tt, by.
    #[arg(long, default_value = "xmc")]
    pub embedded_flash_vendor: FlashVendor,
    /// Octal SPI flash (eFuse FLASH_TYPE).
    #[arg(long)]
    pub octal_flash: bool,
    /// An ESP32-S3 N32R16V module (the board dpskit's firmware is built for): 32 MB octal
    /// flash, 16 MB octal PSRAM (AP_1v8). Overrides --psram, --psram-vendor, --flash-size and
    /// --octal-flash.
    #[arg(long)]
    pub n32r16v: bool,
    /// Report secure boot enabled (GET_SECURITY_INFO and eFuses).
    #[arg(long)]
    pub secure_boot: bool,
    /// Report flash encryption enabled (SPI_BOOT_CRYPT_CNT = 1).
    #[arg(long)]
    pub flash_encryption: bool,
    /// Secure Download Mode: the ROM refuses register, RAM and read commands.
    #[arg(long)]
    pub secure_download: bool,
    /// Answer as another chip (fault injection): esp32s3, esp32c3, esp32.
    #[arg(long, default_value = "esp32s3")]
    pub chip: ChipKind,

    /// Partition table CSV (default: the built-in layout matching templates/partitions.csv).
    #[arg(long)]
    pub partitions: Option<PathBuf>,
    /// Which app boots: factory, or ota0/ota1 (otadata selects the slot).
    #[arg(long, default_value = "factory")]
    pub layout: Layout,
    /// esp_app_desc_t.project_name of the preloaded app.
    #[arg(long, default_value = "dpskit-firmware")]
    pub app_project: String,
    /// esp_app_desc_t.version.
    #[arg(long, default_value = "0.1.0")]
    pub app_version: String,
    /// esp_app_desc_t.idf_ver.
    #[arg(long, default_value = "v5.5.1")]
    pub app_idf_ver: String,
    /// esp_app_desc_t.date.
    #[arg(long, default_value = "Jan  1 2026")]
    pub app_date: String,
    /// esp_app_desc_t.time.
    #[arg(long, default_value = "00:00:00")]
    pub app_time: String,
    /// esp_app_desc_t.secure_version.
    #[arg(long, default_value_t = 0)]
    pub app_secure_version: u32,
    /// Flash mode in the app's image header: qio, qout, dio, dout (default: dout on octal
    /// flash, dio otherwise — what ESP-IDF builds).
    #[arg(long)]
    pub app_flash_mode: Option<ImageFlashMode>,

    /// After the ROM leaves the loader (FLASH_END), return to download mode after this many
    /// milliseconds (the jig resets the board with BOOT held).
    #[arg(long, default_value_t = 250, conflicts_with = "stay_in_app")]
    pub reenter_ms: u64,
    /// After FLASH_END, stay in the app until SIGUSR1.
    #[arg(long)]
    pub stay_in_app: bool,
    /// Do not print the ROM boot banner on resets.
    #[arg(long)]
    pub no_banner: bool,
    /// Pace the line at the current baud rate, as a real UART is (default: CPU speed).
    #[arg(long)]
    pub line_rate: bool,
    /// Answer each command as late as the real ESP32-S3 ROM does (measured in Espressif's
    /// emulator); implies --line-rate.
    #[arg(long)]
    pub rom_timing: bool,

    /// Fault: close the line after this many bytes from the host.
    #[arg(long)]
    pub drop_after_bytes: Option<u64>,
    /// Fault: answer this many commands, then stop answering.
    #[arg(long)]
    pub stall_after_commands: Option<u64>,
    /// Fault: stop answering at this command (name like FLASH_DATA or number like 0x03).
    #[arg(long, value_parser = op::parse)]
    pub stall_at_command: Option<u8>,
    /// Fault: drop the line when this command arrives (name like FLASH_DEFL_DATA or number).
    #[arg(long, value_parser = op::parse)]
    pub drop_at_command: Option<u8>,
    /// Fault: corrupt reply N (1-based), optionally at byte OFFSET: N[:OFFSET] (default 4).
    #[arg(long, value_parser = parse_corrupt_reply)]
    pub corrupt_reply: Option<CorruptReply>,
    /// Fault: every MD5 reply is wrong.
    #[arg(long)]
    pub corrupt_md5: bool,
}

fn parse_flash_size(s: &str) -> Result<u8, String> {
    let t = s.trim().to_ascii_lowercase();
    if let Some(hex) = t.strip_prefix("0x") {
        let cap = u8::from_str_radix(hex, 16).map_err(|_| format!("bad capacity byte {s:?}"))?;
        dpskit_rehearsal::sim::board::flash_size_from_capacity(cap).map_err(|e| e.to_string())?;
        return Ok(cap);
    }
    let mb: u32 = t
        .trim_end_matches("mb")
        .trim_end_matches('m')
        .parse()
        .map_err(|_| {
            format!("bad flash size {s:?}: use 1MB..64MB or a JEDEC capacity byte like 0x16")
        })?;
    capacity_from_flash_size(mb.saturating_mul(1 << 20)).map_err(|e| e.to_string())
}

fn parse_jedec_mfr_type(s: &str) -> Result<[u8; 2], String> {
    let t = s.trim().trim_start_matches("0x");
    let v = u16::from_str_radix(t, 16)
        .ok()
        .filter(|_| t.len() == 4)
        .ok_or_else(|| {
            format!("bad flash id {s:?}: use four hex digits, manufacturer then type, e.g. ef40")
        })?;
    Ok(v.to_be_bytes())
}

fn parse_corrupt_reply(s: &str) -> Result<CorruptReply, String> {
    let err = || format!("bad --corrupt-reply {s:?}: use N or N:OFFSET, e.g. 3 or 3:1");
    let (n, off) = match s.split_once(':') {
        Some((n, o)) => (n, o.parse::<usize>().map_err(|_| err())?),
        None => (s, 4),
    };
    let nth = n.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(err)?;
    Ok(CorruptReply { nth, offset: off })
}

/// Builds the board template from the arguments (validation happens here, before anything
/// is written).
pub fn template(a: &SimArgs) -> Result<SimBoardConfig> {
    if a.boards == 0 || a.boards > 256 {
        bail!("--boards {}: use 1 to 256", a.boards);
    }
    let partitions_csv = match &a.partitions {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--partitions: cannot read {}", p.display()))?,
        ),
        None => None,
    };
    let blk = a.blk_version;
    if blk.major > 3 || blk.minor > 7 {
        bail!("--blk-version {blk}: major is 0..3 and minor 0..7");
    }
    let config = SimBoardConfig {
        profile: EfuseProfile {
            chip: a.chip,
            mac: a.mac,
            revision: a.revision,
            pkg_version: a.pkg_version,
            blk_version: (blk.major, blk.minor),
            psram: a.psram,
            psram_vendor: a.psram_vendor,
            embedded_flash: a.embedded_flash,
            embedded_flash_vendor: a.embedded_flash_vendor,
            octal_flash: a.octal_flash,
            security: Security {
                secure_boot: a.secure_boot,
                flash_encryption: a.flash_encryption,
                secure_download: a.secure_download,
                jtag_disabled: false,
            },
        },
        jedec_id: [a.flash_id[0], a.flash_id[1], a.flash_size],
        partitions_csv,
        layout: a.layout,
        app: AppDescriptor {
            project_name: a.app_project.clone(),
            version: a.app_version.clone(),
            idf_ver: a.app_idf_ver.clone(),
            date: a.app_date.clone(),
            time: a.app_time.clone(),
            secure_version: a.app_secure_version,
            chip_id: dpskit_rehearsal::sim::image::IMAGE_CHIP_ID_ESP32S3,
        },
        app_flash_mode: a.app_flash_mode,
        app_flash_size: None,
        flash_file: None,
        keep_existing_image: a.keep_images,
        reset: ResetBehaviour {
            reenter_download_after: (!a.stay_in_app).then(|| Duration::from_millis(a.reenter_ms)),
            banner: !a.no_banner,
            ..Default::default()
        },
        faults: Faults {
            drop_after_bytes: a.drop_after_bytes,
            stall_after_commands: a.stall_after_commands,
            stall_at_command: a.stall_at_command,
            drop_at_command: a.drop_at_command,
            corrupt_reply: a.corrupt_reply,
            corrupt_md5: a.corrupt_md5,
        },
        line_rate: a.line_rate || a.rom_timing,
        timing: a
            .rom_timing
            .then(dpskit_rehearsal::sim::protocol::RomTiming::esp32s3_rom_in_qemu),
    };
    let config = if a.n32r16v {
        let module = SimBoardConfig::n32r16v();
        SimBoardConfig {
            profile: EfuseProfile {
                psram: module.profile.psram,
                psram_vendor: module.profile.psram_vendor,
                octal_flash: true,
                ..config.profile
            },
            jedec_id: module.jedec_id,
            ..config
        }
    } else {
        config
    };
    // Fail on a bad table or flash size before creating anything.
    dpskit_rehearsal::sim::image::build_flash_image(&dpskit_rehearsal::sim::image::ImageSpec {
        flash_size: config.flash_size()?,
        partitions_csv: config.partitions_csv.clone(),
        layout: config.layout,
        app: config.app.clone(),
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e:#}").context("--partitions/--layout/--flash-size"))?;
    Ok(config)
}

pub fn run(a: SimArgs) -> Result<()> {
    let config = template(&a)?;

    // SIGUSR1 goes to sigwait on its own thread, not to the board threads or the Ctrl-C
    // handler's (which inherit this mask, so it is blocked before any of them starts).
    // Ctrl-C and SIGTERM: the one interrupt mechanism.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGUSR1);
    signals.thread_block().context("blocking signals")?;
    let stop = dpskit_factory::interrupt::install()?;
    let (resets, reset_requests) = std::sync::mpsc::channel();
    std::thread::spawn(
        move || {
            while signals.wait().is_ok() && resets.send(()).is_ok() {}
        },
    );
    let signals = (stop, reset_requests);

    let (dir, temporary) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => {
            let d = std::env::temp_dir().join(format!("dpskit-sim-{}", std::process::id()));
            (d, true)
        }
    };
    let result = serve(&config, &a, &dir, &signals);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn serve(
    config: &SimBoardConfig,
    a: &SimArgs,
    dir: &std::path::Path,
    (stop, reset_requests): &(&AtomicBool, Receiver<()>),
) -> Result<()> {
    let mut boards = spawn_batch(config, a.boards, dir)?;
    let size_mb = config.flash_size()? >> 20;
    let mut out = std::io::stdout().lock();
    for (i, b) in boards.iter().enumerate() {
        writeln!(
            out,
            "board {i}: {}  mac {}  {}  flash {size_mb}MB  image {}",
            b.pty_path().display(),
            format_mac(&b.mac()),
            b.profile().summary(),
            b.flash_path().display()
        )?;
    }
    out.flush()?;
    drop(out);
    eprintln!(
        "{} board(s) in ROM download mode. Ctrl-C stops; SIGUSR1 (kill -USR1 {}) resets all into download mode.",
        boards.len(),
        std::process::id()
    );

    while !stop.load(Ordering::SeqCst) {
        if reset_requests
            .recv_timeout(std::time::Duration::from_millis(50))
            .is_ok()
        {
            for b in &boards {
                b.reset_to_download();
            }
            eprintln!("reset {} board(s) into download mode", boards.len());
        }
    }
    for b in &mut boards {
        b.stop();
    }
    eprintln!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        a: SimArgs,
    }

    fn args(extra: &[&str]) -> Result<SimArgs, clap::Error> {
        let mut v = vec!["sim"];
        v.extend_from_slice(extra);
        Wrap::try_parse_from(v).map(|w| w.a)
    }

    #[test]
    fn defaults_build_a_valid_template() {
        let c = template(&args(&[]).unwrap()).unwrap();
        assert_eq!(c.flash_size().unwrap(), 4 << 20);
        assert_eq!(c.profile.psram, PsramSize::Mb8);
        assert_eq!(c.jedec_id, [0xEF, 0x40, 0x16]);
    }

    #[test]
    fn parses_profile_and_fault_flags() {
        let a = args(&[
            "--boards",
            "3",
            "--mac",
            "02:00:00:00:00:10",
            "--psram",
            "16",
            "--psram-vendor",
            "ap1v8",
            "--flash-size",
            "0x18",
            "--stall-at-command",
            "FLASH_DATA",
            "--corrupt-reply",
            "5:1",
            "--layout",
            "ota1",
            "--stay-in-app",
        ])
        .unwrap();
        let c = template(&a).unwrap();
        assert_eq!(c.flash_size().unwrap(), 16 << 20);
        assert_eq!(c.profile.psram_vendor, PsramVendor::Ap1v8);
        assert_eq!(c.faults.stall_at_command, Some(0x03));
        assert_eq!(
            c.faults.corrupt_reply,
            Some(CorruptReply { nth: 5, offset: 1 })
        );
        assert_eq!(c.layout, Layout::Ota { slot: 1 });
        assert_eq!(c.reset.reenter_download_after, None);
    }

    #[test]
    fn bad_input_names_the_flag() {
        let e = args(&["--psram", "3"]).unwrap_err().to_string();
        assert!(
            e.contains("--psram") && e.contains("none, 2, 4, 8 or 16"),
            "{e}"
        );
        let e = args(&["--flash-size", "3MB"]).unwrap_err().to_string();
        assert!(e.contains("--flash-size"), "{e}");
        let e = template(&args(&["--boards", "0"]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--boards"), "{e}");
        let e = template(&args(&["--flash-size", "2MB"]).unwrap()).unwrap_err();
        assert!(format!("{e:#}").contains("beyond the 2 MB flash"), "{e:#}");
    }
}
