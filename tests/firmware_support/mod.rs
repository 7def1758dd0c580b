//! The firmware on an emulated chip against the local emulator, for the end-to-end test and
//! the firmware benchmark: Espressif's QEMU runs the ESP32-C3 build of the firmware (the
//! `openeth` network), `dpskit emulate` plays DPS, IoT Hub and the NTP server, and
//! `dpskit cloud` acts as the service — the same commands a user runs.
//!
//! Everything runs inside a private network namespace with only loopback (`unshare --net`,
//! see scripts/test-firmware.sh): QEMU's user-mode network maps the guest's 10.0.2.2 to this
//! namespace's 127.0.0.1, so the emulator can own port 8883 and 123, and nothing the guest
//! sends can leave the machine. The firmware is given IP addresses only.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const SCOPE: &str = "0ne00000F1F";
/// The host as the guest sees it.
pub const HOST: &str = "10.0.2.2";
/// A throw-away 32-byte group key for these tests only.
pub const GROUP_KEY: &str = "ZmlybXdhcmUtZTJlLXRlc3QtZ3JvdXAta2V5LTAwMDE=";

/// One scenario at a time: they all use the namespace's port 8883.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tools, or a panic that says how to get them (never a silent skip).
pub struct Tools {
    pub qemu: PathBuf,
    pub rom_dir: PathBuf,
    pub firmware: PathBuf,
    pub dpskit: PathBuf,
}

impl Tools {
    pub fn get() -> Tools {
        // This process's network namespace (sysfs would show the one it was mounted in).
        let nets: Vec<String> = std::fs::read_to_string("/proc/self/net/dev")
            .unwrap_or_default()
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
            .collect();
        assert!(
            nets == ["lo"],
            "the firmware tests run inside a private network namespace with only loopback (scripts/test-firmware.sh runs them under `unshare --net`); this one has {nets:?}"
        );
        let dir = std::env::var_os("ESP_QEMU_DIR").map(PathBuf::from).expect(
            "ESP_QEMU_DIR is not set: point it at Espressif's QEMU (bin/qemu-system-riscv32 and rom/), e.g. ../shared/tools/esp-qemu",
        );
        let qemu = dir.join("bin/qemu-system-riscv32");
        assert!(
            qemu.is_file(),
            "{} is missing (ESP_QEMU_DIR)",
            qemu.display()
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let firmware = std::env::var_os("DPSKIT_FIRMWARE_ELF")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                root.join("firmware/target/riscv32imc-unknown-none-elf/release/dpskit-firmware")
            });
        assert!(
            firmware.is_file(),
            "{} is missing: build the ESP32-C3 firmware for QEMU first (scripts/test-firmware.sh does: cd firmware && cargo build --release --target riscv32imc-unknown-none-elf --no-default-features --features esp32c3,openeth,emulated-psram)",
            firmware.display()
        );
        Tools {
            qemu,
            rom_dir: dir.join("rom"),
            firmware,
            dpskit: PathBuf::from(env!("CARGO_BIN_EXE_dpskit")),
        }
    }

    /// `dpskit ARGS` with the emulator's state directory (and the group key, unless a device
    /// key is given); its stdout, or a panic with stderr.
    pub fn dpskit(&self, state: &Path, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.dpskit);
        cmd.args(args).env("DPSKIT_EMULATOR_DIR", state);
        if !args.contains(&"--device-key-file") {
            cmd.env("DPSKIT_GROUP_KEY", GROUP_KEY);
        }
        let out = cmd.output().expect("dpskit runs");
        assert!(
            out.status.success(),
            "dpskit {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Waits until `check` gives a value, or panics with `what` and `context()` after `limit`.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "gave up waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `dpskit emulate` in this namespace: DPS and IoT Hub on 127.0.0.1:8883 (the guest's
/// 10.0.2.2:8883), SNTP on 127.0.0.1:123 unless `sntp` is false.
pub struct Emulator {
    child: Child,
    pub state: PathBuf,
    pub events: PathBuf,
}

impl Emulator {
    pub fn start(tools: &Tools, state: &Path, sntp: bool) -> Emulator {
        let key_file = state.join("group.key");
        std::fs::write(&key_file, GROUP_KEY).unwrap();
        let events = state.join("events.jsonl");
        let mut args = vec![
            "emulate",
            "--bind",
            "127.0.0.1:8883",
            "--scope",
            SCOPE,
            "--hub-host",
            HOST,
            "--san",
            HOST,
            "--dps-retry-after",
            "1",
            "--quiet",
        ];
        if sntp {
            args.extend(["--sntp", "127.0.0.1:123"]);
        }
        let child = Command::new(&tools.dpskit)
            .args(&args)
            .arg("--group-key-file")
            .arg(&key_file)
            .arg("--state-dir")
            .arg(state)
            .arg("--log-json")
            .arg(&events)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dpskit emulate starts");
        let emu = Emulator {
            child,
            state: state.to_path_buf(),
            events,
        };
        wait_for(
            Duration::from_secs(30),
            "the emulator to listen",
            || emu.events_of("started").first().cloned(),
            || String::new(),
        );
        emu
    }

    /// Every event of `kind` so far.
    pub fn events_of(&self, kind: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    pub fn all_events(&self) -> String {
        std::fs::read_to_string(&self.events).unwrap_or_default()
    }

    /// Stops it the way Ctrl-C does and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ESP32-C3 in QEMU booting a flash image, its UART collected line by line.
pub struct Board {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    pub started: Instant,
    pub uart_log: PathBuf,
}

impl Board {
    pub fn boot(tools: &Tools, flash: &Path, uart_log: &Path) -> Board {
        let mut child = Command::new(&tools.qemu)
            .args(["-nographic", "-machine", "esp32c3", "-L"])
            .arg(&tools.rom_dir)
            .arg("-drive")
            .arg(format!("file={},if=mtd,format=raw", flash.display()))
            .args([
                "-nic",
                "user,model=open_eth",
                "-serial",
                "stdio",
                "-monitor",
                "none",
            ])
            // Piped and kept open: QEMU's stdio serial stops at end of input.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("QEMU starts");
        let started = Instant::now();
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        let log_path = uart_log.to_path_buf();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(log_path).ok();
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{text}");
                }
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        Board {
            child,
            lines,
            started,
            uart_log: uart_log.to_path_buf(),
        }
    }

    /// The UART so far.
    pub fn log(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How many lines so far contain `text`.
    pub fn count(&self, text: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|(_, l)| l.contains(text)).count()
    }

    /// Waits until the UART has shown `text` `n` times; the line and when it came.
    pub fn wait_nth(&self, text: &str, n: usize, limit: Duration) -> (Instant, String) {
        wait_for(
            limit,
            &format!("UART line #{n} containing {text:?}"),
            || {
                let lines = self.lines.lock().unwrap();
                lines
                    .iter()
                    .filter(|(_, l)| l.contains(text))
                    .nth(n - 1)
                    .cloned()
            },
            || format!("UART so far:\n{}", self.log()),
        )
    }

    pub fn wait(&self, text: &str, limit: Duration) -> String {
        self.wait_nth(text, 1, limit).1
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config image for the board (`dpskit config build`), then its whole flash
/// (`dpskit flash-image`). `extra` goes to `config build`.
pub fn flash_image(tools: &Tools, state: &Path, dir: &Path, id: &str, extra: &[&str]) -> PathBuf {
    let cfg = dir.join(format!("{id}.cfg.bin"));
    let cfg_s = cfg.to_str().unwrap();
    let mut args = vec![
        "config",
        "build",
        "-o",
        cfg_s,
        "--id-scope",
        SCOPE,
        "--registration-id",
        id,
        "--dps-host",
        HOST,
    ];
    args.extend_from_slice(extra);
    tools.dpskit(state, &args);
    let flash = dir.join(format!("{id}.flash.bin"));
    tools.dpskit(
        state,
        &[
            "flash-image",
            "--chip",
            "esp32c3",
            "--firmware",
            tools.firmware.to_str().unwrap(),
            "--config",
            cfg_s,
            "-o",
            flash.to_str().unwrap(),
        ],
    );
    flash
}
