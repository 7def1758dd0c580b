//! dpskit against the chip's *real* ROM loader: Espressif's ESP32-S3 mask ROM in their QEMU,
//! a fresh boot per board. What the virtual boards model, this checks on the genuine loader:
//! the early baud change, compressed writes with the ROM (`FLASH_DEFL_*`), 64-byte reads of
//! only the table's bytes, the loader staying in download mode after a write, the flasher stub
//! uploaded at the fast rate.
//!
//! Needs `ESP_QEMU_DIR` (a folder with `bin/qemu-system-xtensa` and `rom/`); without it every
//! test here fails. Built only with `--features real-rom` (`.ci/run` runs it).
#![cfg(unix)]

use assert_cmd::Command;
use dpskit_rehearsal::sim::qemu::QemuBoard;
use dpskit_rehearsal::sim::SimBoardConfig;
use serde_json::Value;

const GROUP: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
/// `dps_cfg` in templates/partitions.csv.
const DPS_CFG: u32 = 0x12000;

fn dpskit(board: &QemuBoard, cmd: &str) -> Command {
    let mut c = Command::cargo_bin("dpskit").unwrap();
    c.env_remove("DPSKIT_GROUP_KEY")
        .timeout(std::time::Duration::from_secs(120))
        .arg(cmd)
        .arg("--port")
        .arg(board.pty_path())
        .args([
            "--baud", "921600", "--before", "no-reset", "--after", "no-reset",
        ]);
    c
}

fn write_config(board: &QemuBoard, id: &str, stub: bool) {
    let mut c = dpskit(board, "write-config");
    c.env("DPSKIT_GROUP_KEY", GROUP)
        .args(["--id-scope", "0ne00ABCDEF", "--registration-id", id]);
    if stub {
        c.arg("--stub");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "write-config failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let flash = board.read_flash(DPS_CFG, 0x6000).unwrap();
    let cfg = dpskit_factory::blob::nvs::decode_image(&flash).unwrap();
    assert_eq!(cfg.registration_id.as_str(), id);
}

fn inspect(board: &QemuBoard) -> Value {
    let out = dpskit(board, "inspect").arg("--json").output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inspect gave no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn rom_loader_writes_compressed_and_stays_in_download_mode() {
    let board = QemuBoard::spawn(&SimBoardConfig::default()).unwrap();
    let before = inspect(&board);
    assert_eq!(before["chip"], "esp32s3");
    assert_eq!(before["mac"], "34:85:18:00:00:01");
    assert_eq!(before["embedded"]["psram_mb"], 8);
    assert_eq!(before["config"]["state"], "empty");
    assert_eq!(
        before["app"]["descriptor"]["Ok"]["project_name"],
        "dpskit-firmware"
    );
    write_config(&board, "rom-0001", false);
    // No FLASH_END was sent: the same ROM session answers the next tool.
    let after = inspect(&board);
    assert_eq!(after["config"]["state"], "present");
    assert_eq!(after["config"]["config"]["registration_id"], "rom-0001");
}

#[test]
fn stub_uploaded_at_the_fast_rate_writes_too() {
    let board = QemuBoard::spawn(&SimBoardConfig::default()).unwrap();
    write_config(&board, "stub-0001", true);
}
