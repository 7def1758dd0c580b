//! Microsoft's own Python device SDK (azure-iot-device 2.14) against `dpskit emulate`: DPS
//! registration with a derived key, hub connection, telemetry with properties, a reported
//! property patch, a C2D message and a direct method, over TLS 1.2 on 127.0.0.1:8883.
//!
//! The SDK cannot use another port, so this test needs 8883 to itself. As root (CI) it runs in
//! a private network namespace of its own (`unshare --net`, loopback brought up with `ip`),
//! where nothing else can listen; otherwise it first checks that 8883 is free and fails,
//! naming the fix, when it is not — it never talks to whatever else listens there.
// Unix only: the Python reference tools run on the Linux host.
#![cfg(unix)]

use assert_cmd::cargo::CommandCargoExt;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const GROUP: &str =
    "rLuyBPpIJ+hOre2SFIP9Ajvdty3j0EwSP/WvTVH9eZAw5HpDuEmf13nziHy5RRXmuTy84FCLpOnhhBPASSbHYg==";
const SCOPE: &str = "0ne00C0FFEE";
const TEST: &str = "microsofts_python_sdk_provisions_and_talks_to_the_emulator";
/// Set inside the private network namespace.
const IN_NETNS: &str = "DPSKIT_TEST_IN_NETNS";

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

/// As root, runs this test again in a new network namespace with its loopback up; `None`
/// when namespaces are not available here (then the caller checks the port instead).
fn run_in_private_network() -> Option<std::process::ExitStatus> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let probe = Command::new("unshare")
        .args(["--net", "--", "ip", "link", "set", "lo", "up"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "note: no private network namespace here ({}); checking that port 8883 is free instead",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("note: unshare/ip not runnable ({e}; scripts/setup.sh installs iproute2); checking that port 8883 is free instead");
            return None;
        }
    }
    let exe = std::env::current_exe().unwrap();
    Some(
        Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec \"$0\" \"$@\"",
            ])
            .arg(exe)
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(IN_NETNS, "1")
            .status()
            .expect("unshare runs"),
    )
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
    if std::env::var_os(IN_NETNS).is_none() {
        if let Some(status) = run_in_private_network() {
            assert!(
                status.success(),
                "the test failed in its network namespace (output above)"
            );
            return;
        }
        // Shared network: 8883 must be free, or the SDK would talk to someone else's server.
        if let Err(e) = std::net::TcpListener::bind("127.0.0.1:8883") {
            panic!("127.0.0.1:8883 is not free ({e}): Microsoft's Python SDK only uses port 8883, so this test needs it; stop what listens there (another `dpskit emulate`, an MQTT broker), or run the tests as root, which gives this test a network namespace of its own");
        }
    }
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
    // Wait until it says it listens (or exits: then the port was taken after all).
    let stderr = emu.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("DPS and IoT Hub on 127.0.0.1:8883") => break,
            Ok(l) => seen.push(l),
            Err(_) => panic!(
                "the emulator did not start on 127.0.0.1:8883 (exit: {:?}): {seen:?}",
                emu.0.try_wait()
            ),
        }
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
