//! The firmware on Espressif's QEMU (ESP32-C3 build, see tests/firmware_support): per round, a
//! fresh board from `dpskit flash-image` boots against `dpskit emulate` and the bench records
//! boot → first telemetry (QEMU start to the first telemetry line on the UART: ROM,
//! bootloader, DHCP, SNTP, DPS over TLS, hub over TLS) and the heap the device reports once
//! its TLS sessions ran (peak internal RAM, peak of the RAM standing in for PSRAM).
//!
//! `scripts/bench-firmware.sh [ROUNDS]` runs it inside a private network namespace and adds
//! the static RAM and flash of the C3 and C6 builds.

#[path = "../tests/firmware_support/mod.rs"]
mod firmware_support;

use firmware_support::{flash_image, Board, Emulator, Tools, HOST};
use std::time::Duration;

fn main() {
    let rounds: usize = std::env::var("FIRMWARE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let tools = Tools::get();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("emulator");
    std::fs::create_dir_all(&state).unwrap();
    let emu = Emulator::start(&tools, &state, true);
    let mut boot_ms = Vec::new();
    let mut peaks = Vec::new();
    for round in 0..rounds {
        let id = format!("bench-board-{round}");
        let flash = flash_image(
            &tools,
            &state,
            dir.path(),
            &id,
            &["--root-ca", "emulator", "--ntp-server", HOST],
        );
        let board = Board::boot(&tools, &flash, &dir.path().join(format!("{id}.uart.log")));
        let (at, _) = board.wait_nth("telemetry #1:", 1, Duration::from_secs(120));
        boot_ms.push(at.duration_since(board.started).as_millis() as u64);
        // The numbers a later message carries (the status is refreshed every 5 s).
        let body = firmware_support::wait_for(
            Duration::from_secs(60),
            "telemetry with post-handshake heap numbers",
            || {
                emu.events_of("telemetry").into_iter().rev().find_map(|t| {
                    let b: serde_json::Value =
                        serde_json::from_str(t["body"].as_str().unwrap_or("{}")).ok()?;
                    (t["device"] == id.as_str() && b["peakPsram"].as_u64().unwrap_or(0) > 16 * 1024)
                        .then_some(b)
                })
            },
            || board.log(),
        );
        peaks.push((
            body["peakHeap"].as_u64().unwrap_or(0),
            body["peakPsram"].as_u64().unwrap_or(0),
        ));
        println!(
            "round {round}: boot → first telemetry {} ms; peak internal heap {} B, peak PSRAM stand-in {} B",
            boot_ms[round], peaks[round].0, peaks[round].1
        );
    }
    boot_ms.sort_unstable();
    let median = boot_ms[boot_ms.len() / 2];
    let max_internal = peaks.iter().map(|p| p.0).max().unwrap_or(0);
    let max_external = peaks.iter().map(|p| p.1).max().unwrap_or(0);
    println!(
        "firmware (ESP32-C3 in QEMU), {rounds} rounds: boot → first telemetry median {median} ms (min {} ms, max {} ms); peak heap during the TLS sessions: internal {max_internal} B, PSRAM stand-in {max_external} B",
        boot_ms[0],
        boot_ms[boot_ms.len() - 1]
    );
}
