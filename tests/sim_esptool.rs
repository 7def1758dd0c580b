//! The real esptool (Python package, v5.x) against virtual boards over real pseudo-terminals:
//! chip description and PSRAM/flash features from the eFuses, flash ID, reads of what dpskit's
//! writer (espflash) wrote — with the ROM loader and with esptool's own flasher stub — writes,
//! security info, and failures.
//!
//! esptool must be installed (`pip install esptool`); without it these tests fail.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dpskit_rehearsal::sim::{
    BoardState, ChipKind, EfuseProfile, EmbeddedFlash, Faults, FlashVendor, PsramSize, PsramVendor,
    Revision, Security, SimBoardConfig, VirtualBoard,
};
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::target::{Chip, DefaultProgressCallback};
use serialport::{FlowControl, UsbPortInfo};

/// `dps_cfg` in templates/partitions.csv (asserted against the generated table below).
const DPS_CFG: u32 = 0x12000;

struct Run {
    ok: bool,
    text: String,
}

/// Fails (never skips) when esptool 5.x is not importable.
fn require_esptool() {
    let out = Command::new("python3")
        .args(["-m", "esptool", "version"])
        .output()
        .expect("python3 is required for the esptool tests");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "esptool is not installed for python3: pip install esptool\n{text}"
    );
    let major = text.split_whitespace().find_map(|w| {
        w.strip_prefix('v')
            .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
    });
    assert!(
        major.is_some_and(|m| m >= 5),
        "esptool 5.x is needed (--before no-reset syntax): pip install 'esptool>=5'\n{text}"
    );
}

/// Runs `python3 -m esptool --port PTY --before no-reset --after no-reset ARGS…`, killing it
/// if it takes longer than `limit`.
fn esptool(board: &VirtualBoard, args: &[&str], limit: Duration) -> Run {
    require_esptool();
    let cwd = tempfile::tempdir().unwrap(); // no stray esptool.cfg
    let mut child = Command::new("python3")
        .args(["-m", "esptool", "--port"])
        .arg(board.pty_path())
        .args(["--before", "no-reset", "--after", "no-reset"])
        .args(args)
        .current_dir(cwd.path())
        .env("NO_COLOR", "1")
        .env("COLUMNS", "250")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start esptool");
    let end = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "esptool {args:?} did not finish within {limit:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        ok: out.status.success(),
        text: String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr),
    }
}

fn ok(board: &VirtualBoard, args: &[&str]) -> String {
    let r = esptool(board, args, Duration::from_secs(20));
    assert!(r.ok, "esptool {args:?} failed:\n{}", r.text);
    r.text
}

fn board(profile: EfuseProfile) -> VirtualBoard {
    VirtualBoard::spawn(SimBoardConfig {
        profile,
        ..Default::default()
    })
    .unwrap()
}

fn espflash(board: &VirtualBoard, stub: bool) -> Flasher {
    let port = serialport::new(board.pty_path().to_str().unwrap(), 115_200)
        .flow_control(FlowControl::None)
        .open_native()
        .unwrap();
    let info = UsbPortInfo {
        vid: 0x10c4,
        pid: 0xea60,
        serial_number: None,
        manufacturer: None,
        product: None,
    };
    let after = if stub {
        ResetAfterOperation::NoResetNoStub
    } else {
        ResetAfterOperation::NoReset
    };
    let conn = Connection::new(port, info, after, ResetBeforeOperation::NoReset, 115_200);
    Flasher::connect(conn, stub, true, false, Some(Chip::Esp32s3), None).unwrap()
}

fn config_blob() -> Vec<u8> {
    let mut v = vec![0xFFu8; 0x6000];
    for (i, b) in v.iter_mut().take(0x900).enumerate() {
        *b = (i as u32).wrapping_mul(0x9E37_79B9).to_le_bytes()[3];
    }
    v
}

fn read_back(board: &VirtualBoard, extra: &[&str], offset: u32, len: u32) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.bin");
    let (o, l) = (format!("{offset:#x}"), format!("{len:#x}"));
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["read-flash", &o, &l, out.to_str().unwrap()]);
    let text = ok(board, &args);
    (std::fs::read(Path::new(&out)).unwrap(), text)
}

#[test]
fn chip_id_shows_description_features_and_mac() {
    let b = board(EfuseProfile {
        mac: [0x34, 0x85, 0x18, 0x01, 0x02, 0x03],
        revision: Revision { major: 0, minor: 2 },
        psram: PsramSize::Mb8,
        psram_vendor: PsramVendor::Ap3v3,
        ..Default::default()
    });
    let t = ok(&b, &["chip-id"]);
    assert!(t.contains("ESP32-S3 (QFN56) (revision v0.2)"), "{t}");
    assert!(t.contains("Embedded PSRAM 8MB (AP_3v3)"), "{t}");
    assert!(!t.contains("Embedded Flash"), "{t}");
    assert!(t.contains("34:85:18:01:02:03"), "{t}");
    assert!(t.contains("Stub flasher running"), "{t}");
}

#[test]
fn features_follow_psram_and_embedded_flash_profiles() {
    let cases: [(EfuseProfile, &[&str], &[&str]); 4] = [
        (
            EfuseProfile {
                psram: PsramSize::None,
                ..Default::default()
            },
            &["240MHz"],
            &["Embedded PSRAM"],
        ),
        (
            EfuseProfile {
                psram: PsramSize::Mb2,
                psram_vendor: PsramVendor::Ap3v3,
                ..Default::default()
            },
            &["Embedded PSRAM 2MB (AP_3v3)"],
            &[],
        ),
        (
            EfuseProfile {
                psram: PsramSize::Mb16,
                psram_vendor: PsramVendor::Ap1v8,
                revision: Revision { major: 0, minor: 1 },
                ..Default::default()
            },
            &["Embedded PSRAM 16MB (AP_1v8)", "(revision v0.1)"],
            &[],
        ),
        (
            EfuseProfile {
                psram: PsramSize::Mb4,
                embedded_flash: EmbeddedFlash::Mb8,
                embedded_flash_vendor: FlashVendor::Gd,
                pkg_version: 1,
                ..Default::default()
            },
            &[
                "Embedded Flash 8MB (GD)",
                "Embedded PSRAM 4MB (AP_3v3)",
                "ESP32-S3-PICO-1 (LGA56)",
            ],
            &[],
        ),
    ];
    // One board and one esptool process per profile, all at once.
    std::thread::scope(|s| {
        for (profile, want, not) in cases {
            s.spawn(move || {
                let b = board(profile);
                let t = ok(&b, &["--no-stub", "chip-id"]);
                for w in want {
                    assert!(t.contains(w), "missing {w:?}:\n{t}");
                }
                for n in not {
                    assert!(!t.contains(n), "unexpected {n:?}:\n{t}");
                }
            });
        }
    });
}

#[test]
fn flash_id_reports_jedec_and_size() {
    let b = VirtualBoard::spawn(
        SimBoardConfig {
            jedec_id: [0xC8, 0x40, 0x18],
            ..Default::default()
        }
        .with_flash_size(16 << 20)
        .unwrap(),
    )
    .unwrap();
    let t = ok(&b, &["--no-stub", "flash-id"]);
    assert!(t.contains("Manufacturer: c8"), "{t}");
    assert!(t.contains("Device: 4018"), "{t}");
    assert!(t.contains("Detected flash size: 16MB"), "{t}");
}

#[test]
fn read_flash_returns_what_espflash_wrote_rom_and_stub() {
    let b = board(EfuseProfile::default());
    let (off, _) = b.layout().unwrap().dps_cfg.unwrap();
    assert_eq!(off, DPS_CFG);
    let blob = config_blob();
    {
        let mut f = espflash(&b, false);
        f.write_bin_to_flash(off, &blob, &mut DefaultProgressCallback)
            .unwrap();
    }
    // The ROM write ended the loader; the jig puts the board back into download mode.
    assert!(b.wait_for(BoardState::Rom, Duration::from_secs(2)));

    let (rom, text) = read_back(&b, &["--no-stub"], off, 0x6000);
    assert!(!text.contains("Stub flasher running"), "{text}");
    assert_eq!(rom, blob, "ROM READ_FLASH_SLOW");
    let (stub, text) = read_back(&b, &[], off, 0x6000);
    assert!(text.contains("Stub flasher running"), "{text}");
    assert_eq!(stub, blob, "esptool stub READ_FLASH");
}

#[test]
fn esptool_finds_a_running_stub_left_by_espflash() {
    let b = board(EfuseProfile::default());
    let blob = config_blob();
    {
        let mut f = espflash(&b, true);
        f.write_bin_to_flash(DPS_CFG, &blob, &mut DefaultProgressCallback)
            .unwrap();
    }
    assert_eq!(b.state(), BoardState::Stub);
    let (got, text) = read_back(&b, &[], DPS_CFG, 0x6000);
    assert!(text.contains("Stub flasher is already running"), "{text}");
    assert_eq!(got, blob);
    assert_eq!(
        b.stats().stub_starts,
        1,
        "esptool did not upload another stub"
    );
}

#[test]
fn esptool_writes_land_in_the_image_file() {
    let b = board(EfuseProfile::default());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cfg.bin");
    let blob = config_blob();
    std::fs::write(&file, &blob).unwrap();
    let f = file.to_str().unwrap();

    let at = format!("{DPS_CFG:#x}");
    let t = ok(&b, &["write-flash", &at, f]);
    assert!(t.contains("Hash of data verified"), "{t}");
    assert_eq!(b.read_flash(DPS_CFG, 0x6000).unwrap(), blob);

    ok(&b, &["erase-region", &at, "0x6000"]);
    assert_eq!(b.read_flash(DPS_CFG, 0x6000).unwrap(), vec![0xFF; 0x6000]);

    let t = ok(&b, &["--no-stub", "write-flash", &at, f]);
    assert!(t.contains("Hash of data verified"), "{t}");
    assert_eq!(b.read_flash(DPS_CFG, 0x6000).unwrap(), blob);
    assert_eq!(
        b.state(),
        BoardState::Rom,
        "esptool sends no FLASH_END to the ROM"
    );
}

#[test]
fn security_info_via_esptool() {
    let b = board(EfuseProfile {
        security: Security {
            secure_boot: true,
            flash_encryption: true,
            ..Default::default()
        },
        ..Default::default()
    });
    // With secure boot on, esptool starts its stub through the ROM-read-pointer workaround.
    let t = ok(&b, &["get-security-info"]);
    assert!(t.contains("Stub flasher running"), "{t}");
    assert!(t.contains("Secure Boot: Enabled"), "{t}");
    assert!(t.contains("Flash Encryption: Enabled"), "{t}");
    assert!(t.contains("XTS_AES_128_KEY"), "{t}");
}

#[test]
fn secure_download_mode_limits_esptool() {
    let b = board(EfuseProfile {
        security: Security {
            secure_download: true,
            ..Default::default()
        },
        ..Default::default()
    });
    let t = ok(&b, &["get-security-info"]);
    assert!(t.contains("Secure Download Mode"), "{t}");
    let r = esptool(&b, &["flash-id"], Duration::from_secs(20));
    assert!(!r.ok);
    assert!(
        r.text.contains("not available in Secure Download Mode"),
        "{}",
        r.text
    );
}

#[test]
fn wrong_chip_and_dropped_line_fail_cleanly() {
    let b = board(EfuseProfile {
        chip: ChipKind::Esp32c3,
        ..Default::default()
    });
    let r = esptool(
        &b,
        &["--chip", "esp32s3", "chip-id"],
        Duration::from_secs(20),
    );
    assert!(!r.ok);
    assert!(
        r.text.contains("This chip is ESP32-C3, not ESP32-S3"),
        "{}",
        r.text
    );

    let b = VirtualBoard::spawn(SimBoardConfig {
        faults: Faults {
            drop_after_bytes: Some(3000),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let t = Instant::now();
    let r = esptool(
        &b,
        &["read-flash", "0", "0x1000", "/dev/null"],
        Duration::from_secs(20),
    );
    assert!(!r.ok, "{}", r.text);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(b.state(), BoardState::LineDropped);
}
