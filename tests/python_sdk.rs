//! Microsoft's own Python device SDK (azure-iot-device 2.14) against `dpskit emulate`: DPS
//! registration with a derived key, hub connection, telemetry with properties, a reported
//! property patch, a C2D message and a direct method, over TLS 1.2 on 127.0.0.1:8883 (the SDK
//! cannot use another port, so this test owns 8883 on loopback while it runs).
// Unix only: the Python reference tools run on the Linux host.
#![cfg(unix)]

use assert_cmd::cargo::CommandCargoExt;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GROUP: &str =
    "rLuyBPpIJ+hOre2SFIP9Ajvdty3j0EwSP/WvTVH9eZAw5HpDuEmf13nziHy5RRXmuTy84FCLpOnhhBPASSbHYg==";
const SCOPE: &str = "0ne00C0FFEE";

/// Stops (and reaps) a child process when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dpskit() -> Command {
    let mut c = Command::cargo_bin("dpskit").unwrap();
    c.env("DPSKIT_GROUP_KEY", GROUP);
    c
}

#[test]
fn microsofts_python_sdk_provisions_and_talks_to_the_emulator() {
    let probe = Command::new("python3")
        .args(["-c", "import azure.iot.device"])
        .output()
        .expect("python3 missing");
    assert!(
        probe.status.success(),
        "the azure-iot-device Python package is missing: pip install -r scripts/requirements.txt ({})",
        String::from_utf8_lossy(&probe.stderr)
    );
    let dir = tempfile::TempDir::new().unwrap();
    let state = dir.path().join("emulator");
    let mut emu = Reaped(
        dpskit()
            .args([
                "emulate",
                "--bind",
                "127.0.0.1:8883",
                "--scope",
                SCOPE,
                "--quiet",
                "--dps-retry-after",
                "1",
                "--state-dir",
            ])
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait until it listens (its stderr names the CA once it is up).
    let stderr = emu.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while std::net::TcpStream::connect("127.0.0.1:8883").is_err() {
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        assert!(
            Instant::now() < deadline,
            "emulator did not start on 127.0.0.1:8883 (is the port taken?): {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = "python-sdk-device";
    let key_out = dpskit()
        .args(["derive", "--id", id, "--format", "csv"])
        .output()
        .unwrap();
    let csv = String::from_utf8(key_out.stdout).unwrap();
    let key = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(1)
        .unwrap()
        .to_string();
    let ca = state.join("ca.pem");

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/azure_sdk_device.py"
    );
    let mut sdk = Reaped(
        Command::new("python3")
            .args([script, SCOPE, id, &key])
            .arg(&ca)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = sdk.0.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    let registered = next();
    assert_eq!(
        registered,
        format!("registered status=assigned hub=localhost device={id}")
    );
    assert_eq!(next(), "telemetry sent");

    // The cloud side: telemetry arrived with its properties, then a C2D message and a method.
    let devices = dpskit()
        .args(["cloud", "devices", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let devices = String::from_utf8_lossy(&devices.stdout).to_string();
    assert!(devices.contains(id), "{devices}");
    dpskit()
        .args([
            "cloud",
            "send-c2d",
            id,
            "hello from the cloud",
            "--property",
            "color=red",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(
        next(),
        r#"c2d body=hello from the cloud props={"color": "red"}"#
    );
    let invoked = dpskit()
        .args(["cloud", "invoke", id, "echo", r#"{"n":7}"#, "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(next(), r#"method name=echo payload={"n": 7}"#);
    let answer = String::from_utf8_lossy(&invoked.stdout);
    let echoed = answer.contains("\"n\":7") || answer.contains("\"n\": 7");
    assert!(answer.contains("200") && echoed, "{answer}");
    let status = sdk.0.wait().unwrap();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(sdk.0.stderr.as_mut().unwrap(), &mut err);
    assert!(status.success(), "the SDK script failed: {err}");
    let twin = dpskit()
        .args(["cloud", "twin", id, "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&twin.stdout).contains("python-sdk"));
    drop(emu);
}
