//! The firmware, end to end: the ESP32-C3 build booted in Espressif's QEMU from a flash image
//! `dpskit flash-image` made, against `dpskit emulate`, driven with `dpskit cloud` — and the
//! failures the project exists for, each named in plain words on the UART and none of them a
//! crash loop. Run by scripts/test-firmware.sh inside `unshare --net` (see firmware_support).

mod firmware_support;

use firmware_support::{flash_image, serial, Board, Emulator, Tools, HOST};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(30);

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The whole life of a board: DPS with the derived key, the hub, telemetry, a C2D message
/// with properties, `echo`, a desired-twin interval applied and reported with the heap
/// numbers, the hub token renewed before it expires, `reboot` back onto the cached assignment
/// without registering again, and the emulator stopped and restarted.
#[test]
fn a_board_registers_runs_and_survives_reboots_renewals_and_outages() {
    let _one = serial();
    let tools = Tools::get();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("emulator");
    std::fs::create_dir_all(&state).unwrap();
    let emu = Emulator::start(&tools, &state, true);
    let flash = flash_image(
        &tools,
        &state,
        dir.path(),
        "qemu-board-1",
        &[
            "--root-ca",
            "emulator",
            "--ntp-server",
            HOST,
            // Renewal comes 120 s before expiry: a minute after connecting.
            "--token-ttl",
            "181",
        ],
    );
    let board = Board::boot(&tools, &flash, &dir.path().join("uart.log"));

    board.wait("SNTP: clock set from 10.0.2.2", BOOT);
    board.wait("provisioned: hub 10.0.2.2, device qemu-board-1", BOOT);
    board.wait("assignment cached in NVS", STEP);
    let (connected_at, _) =
        board.wait_nth("connected to IoT Hub 10.0.2.2 as qemu-board-1", 1, STEP);
    board.wait("telemetry #1:", STEP);
    // The emulator's side: registered with the derived key, connected, telemetry arrived.
    assert_eq!(emu.events_of("registered").len(), 1, "{}", emu.all_events());
    assert!(!emu.events_of("telemetry").is_empty());
    let devices = tools.dpskit(&state, &["cloud", "devices"]);
    assert!(devices.contains("qemu-board-1"), "{devices}");

    // A C2D message with properties, printed by the firmware.
    tools.dpskit(
        &state,
        &[
            "cloud",
            "send-c2d",
            "qemu-board-1",
            "hello board",
            "--property",
            "color=red",
        ],
    );
    let line = board.wait("C2D message", STEP);
    assert!(
        line.contains("hello board") && line.contains("color=red"),
        "{line}"
    );

    // Direct method `echo`: the payload comes back.
    let answer = json(&tools.dpskit(
        &state,
        &["cloud", "invoke", "qemu-board-1", "echo", r#"{"x":1}"#],
    ));
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["payload"], json(r#"{"x":1}"#), "{answer}");
    board.wait("method echo", STEP);

    // A desired telemetry interval: applied, then reported with the heap numbers.
    tools.dpskit(
        &state,
        &[
            "cloud",
            "twin",
            "qemu-board-1",
            "--desired",
            r#"{"telemetryInterval":5}"#,
        ],
    );
    board.wait("telemetry interval is now 5 s", STEP);
    let reported = firmware_support::wait_for(
        STEP,
        "reported telemetryInterval 5 with the heap numbers",
        || {
            let twin = json(&tools.dpskit(&state, &["cloud", "twin", "qemu-board-1"]));
            let r = twin["properties"]["reported"].clone();
            (r["telemetryInterval"] == 5).then_some(r)
        },
        || tools.dpskit(&state, &["cloud", "twin", "qemu-board-1"]),
    );
    for k in [
        "freeHeap",
        "freePsram",
        "peakHeap",
        "peakPsram",
        "largestFreeBlock",
    ] {
        assert!(reported[k].is_u64(), "{k} missing: {reported}");
    }
    // The heap policy, from the numbers telemetry carries once TLS has run: TLS (a 16 KB
    // incoming record buffer at least) went to the region registered as external RAM, and
    // internal RAM stayed for the rest.
    let body = firmware_support::wait_for(
        STEP,
        "telemetry whose numbers were taken after the TLS handshakes",
        || {
            emu.events_of("telemetry").into_iter().rev().find_map(|t| {
                let b = json(t["body"].as_str().unwrap_or("{}"));
                (b["peakPsram"].as_u64().unwrap_or(0) > 16 * 1024).then_some(b)
            })
        },
        || emu.all_events(),
    );
    let (peak_psram, peak_heap) = (
        body["peakPsram"].as_u64().unwrap(),
        body["peakHeap"].as_u64().unwrap(),
    );
    assert!(
        peak_heap < peak_psram,
        "TLS should live in (emulated) PSRAM: {body}"
    );

    // The hub token (181 s) is renewed before it expires: a second hub connection, a
    // minute or so after the first, without the hub refusing an expired token.
    let (renewed_at, _) = board.wait_nth(
        "connected to IoT Hub 10.0.2.2 as qemu-board-1",
        2,
        Duration::from_secs(150),
    );
    assert!(renewed_at > connected_at);
    assert!(
        !emu.all_events().contains("expired"),
        "{}",
        emu.all_events()
    );

    // `reboot`: answered, the board resets and comes back on the cached assignment.
    let answer = json(&tools.dpskit(&state, &["cloud", "invoke", "qemu-board-1", "reboot", "{}"]));
    assert_eq!(answer["status"], 200, "{answer}");
    board.wait("reboot requested", STEP);
    board.wait_nth("dpskit-firmware 0.1.0 starting", 2, STEP);
    board.wait("using the stored assignment: hub 10.0.2.2", BOOT);
    board.wait_nth("connected to IoT Hub 10.0.2.2 as qemu-board-1", 3, STEP);
    assert_eq!(
        emu.events_of("registered").len(),
        1,
        "a rebooted board must not register again"
    );

    // The emulator goes away and comes back: the board says so, backs off and reconnects.
    emu.stop();
    board.wait("IoT Hub connection lost", STEP);
    let emu = Emulator::start(&tools, &state, true);
    board.wait_nth(
        "connected to IoT Hub 10.0.2.2 as qemu-board-1",
        4,
        Duration::from_secs(150),
    );
    assert_eq!(
        board.count("dpskit-firmware 0.1.0 starting"),
        2,
        "no crash loop"
    );
    // (The restarted emulator appends to the same event log.)
    assert_eq!(
        emu.events_of("registered").len(),
        1,
        "the board came back on its cached assignment: {}",
        emu.all_events()
    );
}

/// The enrollment group key flashed instead of the derived key: DPS answers 401, the board
/// says so in plain words and waits, without rebooting.
#[test]
fn group_key_flashed_is_named_and_the_board_waits() {
    let _one = serial();
    let tools = Tools::get();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("emulator");
    std::fs::create_dir_all(&state).unwrap();
    let _emu = Emulator::start(&tools, &state, true);
    let key_file = dir.path().join("wrong.key");
    std::fs::write(&key_file, firmware_support::GROUP_KEY).unwrap();
    let flash = flash_image(
        &tools,
        &state,
        dir.path(),
        "qemu-board-2",
        &[
            "--root-ca",
            "emulator",
            "--ntp-server",
            HOST,
            "--device-key-file",
            key_file.to_str().unwrap(),
        ],
    );
    let board = Board::boot(&tools, &flash, &dir.path().join("uart.log"));
    let line = board.wait("failed:", BOOT);
    assert!(line.contains("401"), "{line}");
    assert!(line.contains("group key"), "{line}");
    board.wait("not connecting; fix the above", STEP);
    assert_eq!(
        board.count("dpskit-firmware 0.1.0 starting"),
        1,
        "no reboot"
    );
}

/// A root CA that did not sign the server's certificate: the TLS failure names the CA
/// problem, is final, and the board waits.
#[test]
fn a_root_ca_that_does_not_match_the_server_is_named() {
    let _one = serial();
    let tools = Tools::get();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("emulator");
    std::fs::create_dir_all(&state).unwrap();
    let emu = Emulator::start(&tools, &state, true);
    let flash = flash_image(
        &tools,
        &state,
        dir.path(),
        "qemu-board-3",
        &["--root-ca", "digicert-g2", "--ntp-server", HOST],
    );
    let board = Board::boot(&tools, &flash, &dir.path().join("uart.log"));
    let line = board.wait("failed:", BOOT);
    assert!(
        line.contains("not signed by any root CA in the config"),
        "{line}"
    );
    board.wait("not connecting; fix the above", STEP);
    assert_eq!(
        board.count("dpskit-firmware 0.1.0 starting"),
        1,
        "no reboot"
    );
    assert!(emu.events_of("registered").is_empty());
}

/// No answer from the NTP server: the board says so and never attempts TLS (certificate
/// dates and token expiry need the time).
#[test]
fn no_ntp_answer_means_no_tls_attempt() {
    let _one = serial();
    let tools = Tools::get();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("emulator");
    std::fs::create_dir_all(&state).unwrap();
    let emu = Emulator::start(&tools, &state, false);
    let flash = flash_image(
        &tools,
        &state,
        dir.path(),
        "qemu-board-4",
        &["--root-ca", "emulator", "--ntp-server", HOST],
    );
    let board = Board::boot(&tools, &flash, &dir.path().join("uart.log"));
    board.wait_nth("SNTP failed; no TLS before the clock is set", 2, BOOT);
    assert!(
        emu.events_of("connected").is_empty(),
        "{}",
        emu.all_events()
    );
    assert_eq!(board.count("registering with DPS"), 0);
}
