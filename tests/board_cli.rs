//! `dpskit inspect` and `dpskit write-config` through the real binary and the real espflash
//! client, against virtual ESP32-S3 boards on pseudo-terminals (no hardware).
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

use assert_cmd::Command;
use dpskit_rehearsal::sim::protocol::op;
use dpskit_rehearsal::sim::{
    ChipKind, EfuseProfile, Faults, Layout, PsramSize, PsramVendor, SimBoardConfig, VirtualBoard,
};
use predicates::prelude::*;
use serde_json::Value;
use std::path::Path;
use tempfile::TempDir;

const GROUP: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

fn dpskit() -> Command {
    let mut c = Command::cargo_bin("dpskit").unwrap();
    c.env_remove("DPSKIT_GROUP_KEY");
    c.timeout(std::time::Duration::from_secs(60));
    c
}

/// The board options every test uses: a pty cannot toggle DTR/RTS.
fn on(board: &VirtualBoard) -> Vec<String> {
    vec![
        "--port".into(),
        board.pty_path().display().to_string(),
        "--before".into(),
        "no-reset".into(),
        "--after".into(),
        "no-reset".into(),
    ]
}

fn board(profile: EfuseProfile, layout: Layout) -> VirtualBoard {
    VirtualBoard::spawn(SimBoardConfig {
        profile,
        layout,
        ..SimBoardConfig::default()
    })
    .unwrap()
}

fn inspect_json(b: &VirtualBoard, extra: &[&str]) -> (Value, i32) {
    let out = dpskit()
        .arg("inspect")
        .args(on(b))
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code().unwrap())
}

/// `dpskit write-config --image IMAGE` against `board`.
fn write_image(board: &VirtualBoard, image: &Path) -> assert_cmd::assert::Assert {
    dpskit()
        .arg("write-config")
        .args(on(board))
        .arg("--image")
        .arg(image)
        .assert()
}

fn build_image(dir: &Path, id: &str) -> std::path::PathBuf {
    let out = dir.join(format!("{id}.bin"));
    dpskit()
        .env("DPSKIT_GROUP_KEY", GROUP)
        .args([
            "config",
            "build",
            "--id-scope",
            "0ne00ABCDEF",
            "--registration-id",
            id,
            "-o",
        ])
        .arg(&out)
        .assert()
        .success();
    out
}

#[test]
fn inspect_decodes_psram_profiles() {
    for (psram, vendor, mb, name) in [
        (PsramSize::None, PsramVendor::Ap3v3, 0, None),
        (PsramSize::Mb2, PsramVendor::Ap3v3, 2, Some("AP_3v3")),
        (PsramSize::Mb8, PsramVendor::Ap3v3, 8, Some("AP_3v3")),
        (PsramSize::Mb16, PsramVendor::Ap1v8, 16, Some("AP_1v8")),
    ] {
        let b = board(
            EfuseProfile {
                psram,
                psram_vendor: vendor,
                ..EfuseProfile::default()
            },
            Layout::Factory,
        );
        let (v, code) = inspect_json(&b, &[]);
        assert_eq!(v["chip"], "esp32s3");
        assert_eq!(v["embedded"]["psram_mb"], mb, "{v}");
        assert_eq!(
            v["embedded"]["psram_vendor"].as_str(),
            if mb == 0 { None } else { name }
        );
        assert_eq!(v["mac"], "34:85:18:00:00:01");
        let verdicts = v["verdicts"].to_string();
        if mb == 0 {
            assert!(
                verdicts.contains("no embedded PSRAM: TLS needs ~40 KB"),
                "{verdicts}"
            );
            assert_eq!(code, 1);
        } else {
            assert!(verdicts.contains(&format!("PSRAM {mb} MB")), "{verdicts}");
            assert!(v["features"]
                .to_string()
                .contains(&format!("Embedded PSRAM {mb}MB ({})", name.unwrap())));
            assert_eq!(code, 0, "{verdicts}");
        }
    }
}

#[test]
fn inspect_follows_otadata_to_the_running_app() {
    let b = board(EfuseProfile::default(), Layout::Ota { slot: 1 });
    let (v, _) = inspect_json(&b, &[]);
    assert_eq!(v["app"]["partition"], "ota_1", "{v}");
    assert_eq!(
        v["app"]["descriptor"]["Ok"]["project_name"],
        "dpskit-firmware"
    );
    let factory = board(EfuseProfile::default(), Layout::Factory);
    let (v, _) = inspect_json(&factory, &[]);
    assert!(v["app"]["descriptor"]["Ok"]["version"].is_string(), "{v}");
    let names: Vec<&str> = v["partitions"]["Ok"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"dps_cfg"), "{names:?}");
    assert!(v["verdicts"]
        .to_string()
        .contains("empty: not provisioned yet"));
}

#[test]
fn write_config_then_inspect_reads_it_back_with_and_without_stub() {
    let dir = TempDir::new().unwrap();
    for (stub, id) in [(true, "sn-0001"), (false, "sn-0002")] {
        let b = board(EfuseProfile::default(), Layout::Factory);
        let image = build_image(dir.path(), id);
        let mut cmd = dpskit();
        cmd.arg("write-config")
            .args(on(&b))
            .arg("--image")
            .arg(&image);
        if stub {
            cmd.arg("--stub");
        }
        cmd.assert()
            .success()
            .stdout(predicate::str::contains(format!(
                "board holds {id} (scope 0ne00ABCDEF"
            )));
        // The bytes on the virtual flash are the image, padded to the partition.
        let written = std::fs::read(&image).unwrap();
        let (off, size) = dps_cfg(&b);
        let flash = b.read_flash(off, size).unwrap();
        assert_eq!(&flash[..written.len()], &written[..]);
        assert!(flash[written.len()..].iter().all(|x| *x == 0xFF));
        // In ROM mode the loader left download mode; the virtual jig brings it back.
        std::thread::sleep(std::time::Duration::from_millis(400));
        let (v, code) = inspect_json(&b, &["--expect-scope", "0ne00ABCDEF"]);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["config"]["state"], "present");
        assert_eq!(v["config"]["config"]["registration_id"], id);
        assert_eq!(
            v["config"]["config"]["root_cas"].as_array().unwrap().len(),
            2
        );
        let (v, code) = inspect_json(&b, &["--expect-scope", "0ne00FFFFFF"]);
        assert_eq!(code, 1);
        assert!(v["verdicts"]
            .to_string()
            .contains("provisioned for another DPS"));
    }
}

fn dps_cfg(b: &VirtualBoard) -> (u32, u32) {
    let table =
        dpskit_factory::board::partition::parse(&b.read_flash(0x8000, 0x1000).unwrap()).unwrap();
    let p = table.find("dps_cfg").unwrap();
    (p.offset(), p.size())
}

#[test]
fn write_config_builds_from_flags_and_leaves_the_rest_of_flash_alone() {
    let b = board(EfuseProfile::default(), Layout::Factory);
    let before = b.read_flash(0, b.flash_size()).unwrap();
    dpskit()
        .env("DPSKIT_GROUP_KEY", GROUP)
        .arg("write-config")
        .args(on(&b))
        .args(["--id-scope", "0ne00ABCDEF", "--registration-id", "sn-0100"])
        .assert()
        .success();
    let after = b.read_flash(0, b.flash_size()).unwrap();
    let (off, size) = dps_cfg(&b);
    let changed: Vec<usize> = (0..before.len())
        .filter(|i| before[*i] != after[*i])
        .collect();
    assert!(!changed.is_empty());
    assert!(changed
        .iter()
        .all(|i| (off as usize..(off + size) as usize).contains(i)));
    assert!(
        !String::from_utf8_lossy(&after).contains(GROUP),
        "the group key must never reach a board"
    );
}

#[test]
fn esptool_reads_back_what_dpskit_wrote() {
    let dir = TempDir::new().unwrap();
    let b = board(EfuseProfile::default(), Layout::Factory);
    let image = build_image(dir.path(), "sn-0003");
    dpskit()
        .arg("write-config")
        .args(on(&b))
        .arg("--image")
        .arg(&image)
        .assert()
        .success();
    let (off, _) = dps_cfg(&b);
    let len = std::fs::metadata(&image).unwrap().len();
    let out = dir.path().join("readback.bin");
    let status = std::process::Command::new("python3")
        .args(["-m", "esptool", "--port"])
        .arg(b.pty_path())
        .args(["--before", "no-reset", "--after", "no-reset", "read-flash"])
        .arg(format!("{off:#x}"))
        .arg(format!("{len:#x}"))
        .arg(&out)
        .output()
        .expect("python3 missing");
    assert!(
        status.status.success(),
        "esptool failed (pip install esptool): {}\n{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&image).unwrap());
}

#[test]
fn bad_boards_and_ports_are_refused_with_reasons() {
    let dir = TempDir::new().unwrap();
    let image = build_image(dir.path(), "sn-0004");
    // Port does not exist.
    dpskit()
        .args([
            "write-config",
            "--port",
            "/dev/does-not-exist",
            "--before",
            "no-reset",
            "--image",
        ])
        .arg(&image)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("does not exist"));
    // Wrong chip.
    let c3 = board(
        EfuseProfile {
            chip: ChipKind::Esp32c3,
            ..EfuseProfile::default()
        },
        Layout::Factory,
    );
    dpskit()
        .arg("write-config")
        .args(on(&c3))
        .arg("--image")
        .arg(&image)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--chip"));
    // Not in download mode / not answering.
    let silent = VirtualBoard::spawn(SimBoardConfig {
        faults: Faults {
            stall_after_commands: Some(0),
            ..Faults::default()
        },
        ..SimBoardConfig::default()
    })
    .unwrap();
    dpskit()
        .arg("write-config")
        .args(on(&silent))
        .arg("--image")
        .arg(&image)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no ESP bootloader answered"));
    // Not an NVS image: refused before the port is touched.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, vec![0x5Au8; 0x6000]).unwrap();
    let b = board(EfuseProfile::default(), Layout::Factory);
    dpskit()
        .arg("write-config")
        .args(on(&b))
        .arg("--image")
        .arg(&junk)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--image"));
    assert_eq!(
        b.stats().commands,
        0,
        "nothing may reach the board for a bad image"
    );
}

fn board_with_table(csv: &str) -> VirtualBoard {
    VirtualBoard::spawn(SimBoardConfig {
        partitions_csv: Some(csv.into()),
        ..SimBoardConfig::default()
    })
    .unwrap()
}

#[test]
fn unsuitable_config_partitions_are_refused_and_nothing_is_written() {
    let dir = TempDir::new().unwrap();
    let image = build_image(dir.path(), "sn-0005");
    for (csv, expect) in [
        ("nvs,data,nvs,,0x6000,\nfactory,app,factory,0x20000,0x100000,\n", "no partition named \"dps_cfg\""),
        ("nvs,data,nvs,,0x6000,\ndps_cfg,data,nvs,,0x3000,\nfactory,app,factory,0x20000,0x100000,\n", "--size 0x3000"),
        ("nvs,data,nvs,,0x6000,\ndps_cfg,data,nvs,,0x6000,encrypted\nfactory,app,factory,0x20000,0x100000,\n", "encrypted"),
        ("nvs,data,nvs,,0x6000,\ndps_cfg,data,spiffs,,0x6000,\nfactory,app,factory,0x20000,0x100000,\n", "not data/nvs"),
    ] {
        let b = board_with_table(csv);
        let before = b.read_flash(0, b.flash_size()).unwrap();
        write_image(&b, &image)
            .code(2)
            .stderr(predicate::str::contains(expect));
        assert!(b.read_flash(0, b.flash_size()).unwrap() == before, "flash changed for {expect}");
    }
}

#[test]
fn line_dropped_mid_write_is_a_failure_not_a_maybe() {
    let dir = TempDir::new().unwrap();
    let image = build_image(dir.path(), "sn-0006");
    let b = VirtualBoard::spawn(SimBoardConfig::default()).unwrap();
    // Let connect, detection, the table read and the erase through, then cut the line during
    // the write's data. The environment failed, not the input: exit 3, and the state said.
    b.inject(Faults {
        drop_at_command: Some(op::FLASH_DEFL_DATA),
        ..Faults::default()
    });
    write_image(&b, &image)
        .code(3)
        .stderr(predicate::str::contains("NOT provisioned"))
        .stderr(predicate::str::contains("dropped while writing"))
        .stderr(predicate::str::contains("erased and may be partly written"));
    let corrupt = VirtualBoard::spawn(SimBoardConfig {
        faults: Faults {
            corrupt_md5: true,
            ..Faults::default()
        },
        ..SimBoardConfig::default()
    })
    .unwrap();
    write_image(&corrupt, &image)
        .failure()
        .stderr(predicate::str::contains("NOT provisioned"));
}

#[test]
fn a_port_held_by_another_program_is_reported_busy() {
    let dir = TempDir::new().unwrap();
    let image = build_image(dir.path(), "sn-0007");
    let b = board(EfuseProfile::default(), Layout::Factory);
    // A serial monitor holding the port: serialport opens ttys exclusively (TIOCEXCL).
    let _monitor = serialport::new(b.pty_path().to_string_lossy(), 115_200)
        .open_native()
        .unwrap();
    dpskit()
        .arg("write-config")
        .args(on(&b))
        .arg("--image")
        .arg(&image)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--port"))
        .stderr(predicate::str::contains("busy").or(predicate::str::contains("another program")));
    assert_eq!(
        b.stats().commands,
        0,
        "nothing may reach a board whose port is busy"
    );
}

#[test]
fn a_table_past_4_gib_or_past_the_flash_is_refused_before_anything_is_allocated() {
    let dir = TempDir::new().unwrap();
    let image = build_image(dir.path(), "sn-0008");
    // (offset, size) written into dps_cfg's table entry: wraps a u32; inside 4 GiB but past
    // the 4 MB flash (a size the host must never allocate because a board said so).
    for ((offset, size), expect) in [
        ((0xFFFF_F000u32, 0x6000u32), "4 GiB"),
        ((0x40_0000, 0xF000_0000), "4 MB flash"),
    ] {
        let b = board(EfuseProfile::default(), Layout::Factory);
        let mut table = b.read_flash(0x8000, 0x1000).unwrap();
        let entry = table
            .chunks_exact(32)
            .position(|e| e[12..19] == *b"dps_cfg")
            .unwrap();
        table[entry * 32 + 4..][..4].copy_from_slice(&offset.to_le_bytes());
        table[entry * 32 + 8..][..4].copy_from_slice(&size.to_le_bytes());
        // Drop the MD5 line: the bad entry must be caught by dpskit's own checks.
        let md5_line = table
            .chunks_exact(32)
            .position(|e| e[..2] == [0xEB, 0xEB])
            .unwrap();
        table[md5_line * 32..][..32].fill(0xFF);
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(b.flash_path())
            .unwrap()
            .write_all_at(&table, 0x8000)
            .unwrap();
        let before = b.read_flash(0, b.flash_size()).unwrap();
        write_image(&b, &image)
            .code(2)
            .stderr(predicate::str::contains("partition table"))
            .stderr(predicate::str::contains(expect));
        assert!(b.read_flash(0, b.flash_size()).unwrap() == before);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (v, code) = inspect_json(&b, &[]);
        assert_eq!(code, 1, "{v}");
        assert!(
            v["partitions"]["Err"].as_str().unwrap().contains(expect),
            "{v}"
        );
    }
}

#[test]
fn octal_flash_boards_want_dout_images_sized_for_their_flash() {
    // An N32R16V as ESP-IDF builds for it: dout, 32 MB in the header. No warning.
    let good = VirtualBoard::spawn(SimBoardConfig::n32r16v()).unwrap();
    let (v, code) = inspect_json(&good, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["embedded"]["flash_type"], "octal");
    assert_eq!(v["embedded"]["psram_mb"], 16);
    assert_eq!(v["embedded"]["psram_vendor"], "AP_1v8");
    assert_eq!(v["flash_mb"], 32);
    assert_eq!(v["app"]["header"]["flash_mode"], "dout");
    assert_eq!(v["app"]["header"]["flash_size_mb"], 32);
    let verdicts = v["verdicts"].to_string();
    assert!(!verdicts.contains("image header"), "{verdicts}");

    // The same module running a firmware built for a 4 MB quad-flash devkit.
    let wrong = VirtualBoard::spawn(SimBoardConfig {
        app_flash_mode: Some(dpskit_rehearsal::sim::ImageFlashMode::Dio),
        app_flash_size: Some(4 << 20),
        ..SimBoardConfig::n32r16v()
    })
    .unwrap();
    let (v, code) = inspect_json(&wrong, &[]);
    assert_eq!(code, 0, "warnings, not failures: {v}");
    let warns: Vec<String> = v["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["level"] == "warn")
        .map(|x| x["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        warns
            .iter()
            .any(|w| w.contains("flash mode dio") && w.contains("octal") && w.contains("dout")),
        "{warns:?}"
    );
    assert!(
        warns
            .iter()
            .any(|w| w.contains("built for 4 MB") && w.contains("reports 32 MB")),
        "{warns:?}"
    );
    let text = dpskit().arg("inspect").args(on(&wrong)).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("image header: flash mode dio, 4 MB"),
        "{text}"
    );
}

#[test]
fn a_board_in_secure_download_mode_is_refused_with_the_reason() {
    let dir = TempDir::new().unwrap();
    let image = build_image(dir.path(), "sn-0009");
    let b = board(
        EfuseProfile {
            security: dpskit_rehearsal::sim::Security {
                secure_download: true,
                ..Default::default()
            },
            ..EfuseProfile::default()
        },
        Layout::Factory,
    );
    for cmd in ["inspect", "write-config"] {
        let mut c = dpskit();
        c.arg(cmd).args(on(&b));
        if cmd == "write-config" {
            c.arg("--image").arg(&image);
        }
        c.assert()
            .code(2)
            .stderr(predicate::str::contains("secure download mode"));
    }
}
