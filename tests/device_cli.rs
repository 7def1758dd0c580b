//! `dpskit device check` and `dpskit device run` through the real binary: the device-side
//! workflow (check an image offline, then rehearse it against the emulator) and bad input.

use assert_cmd::Command;
use dpskit_core::{DeviceConfig, DeviceKey, GroupKey, IdScope, RegistrationId};
use dpskit_factory::blob::nvs::{self, DEFAULT_SIZE};
use dpskit_factory::blob::roots::{self, RootSource};
use dpskit_rehearsal::emulator::{Emulator, EmulatorConfig, Group};
use predicates::prelude::*;
use std::path::{Path, PathBuf};

const GROUP_KEY: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const SHORT_GROUP_KEY: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";
const SCOPE: &str = "0ne00000C11";

/// The binary, with no group key and the emulator state directory pinned to `state`.
fn dpskit(state: &Path) -> Command {
    let mut c = Command::cargo_bin("dpskit").unwrap();
    c.env_remove("DPSKIT_GROUP_KEY")
        .env("DPSKIT_EMULATOR_DIR", state);
    c
}

fn config(id: &str, ca: &Path) -> DeviceConfig {
    let now = time::OffsetDateTime::now_utc();
    DeviceConfig {
        id_scope: IdScope::parse(SCOPE).unwrap().0,
        registration_id: RegistrationId::parse(id, false).unwrap(),
        device_key: GroupKey::parse(GROUP_KEY, "g").unwrap().derive(id),
        root_ca_pem: roots::assemble(&[RootSource::File(ca.to_path_buf())], now)
            .unwrap()
            .pem,
        dps_host: "localhost".into(),
        wifi_ssid: Some("factory".into()),
        wifi_password: None,
        ntp_server: None,
        token_ttl_secs: None,
    }
}

fn write(dir: &Path, name: &str, cfg: &DeviceConfig) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, nvs::build_image(cfg, DEFAULT_SIZE).unwrap()).unwrap();
    p
}

#[test]
fn check_passes_a_good_image_and_names_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("emu");
    let ca = dpskit_rehearsal::emulator::certs::load_or_create(&state, &[])
        .unwrap()
        .ca_cert;
    let good = write(dir.path(), "good.bin", &config("board-1", &ca));

    // Without the group key: passes, and says the derivation was not proven.
    dpskit(&state)
        .args(["device", "check", "--config"])
        .arg(&good)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("note  device key:")
                .and(predicate::str::contains("not compared with the group key")),
        )
        .stdout(predicate::str::contains(
            "ok    endpoint: DPS host localhost; the image trusts the local emulator's CA",
        ));
    // With it: proven.
    dpskit(&state)
        .env("DPSKIT_GROUP_KEY", GROUP_KEY)
        .args(["device", "check", "--config"])
        .arg(&good)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "is the key derived from the group key for board-1",
        ));

    // A key derived for another ID.
    let mut cfg = config("board-2", &ca);
    cfg.device_key = GroupKey::parse(GROUP_KEY, "g").unwrap().derive("board-3");
    let other = write(dir.path(), "other.bin", &cfg);
    dpskit(&state)
        .env("DPSKIT_GROUP_KEY", GROUP_KEY)
        .args(["device", "check", "--config"])
        .arg(&other)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("FAIL  device key:"))
        .stderr(predicate::str::contains(
            "is not the key derived from this group key for board-2",
        ));

    // The (32-byte) group key itself flashed as the device key.
    let mut cfg = config("board-4", &ca);
    let raw: [u8; 32] = GroupKey::parse(SHORT_GROUP_KEY, "g")
        .unwrap()
        .as_bytes()
        .try_into()
        .unwrap();
    cfg.device_key = DeviceKey::from_bytes(raw);
    let flashed = write(dir.path(), "group.bin", &cfg);
    dpskit(&state)
        .env("DPSKIT_GROUP_KEY", SHORT_GROUP_KEY)
        .args(["device", "check", "--config"])
        .arg(&flashed)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "enrollment group primary key itself",
        ));

    // Azure's roots on an image that points at the local emulator.
    let mut cfg = config("board-5", &ca);
    cfg.root_ca_pem = roots::assemble(&RootSource::defaults(), time::OffsetDateTime::now_utc())
        .unwrap()
        .pem;
    let azure_roots = write(dir.path(), "azure-roots.bin", &cfg);
    dpskit(&state)
        .args(["device", "check", "--config"])
        .arg(&azure_roots)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does not trust the emulator's CA"));
    // …and the emulator's CA on an image that points at Azure.
    let mut cfg = config("board-6", &ca);
    cfg.dps_host = "global.azure-devices-provisioning.net".into();
    let emu_root = write(dir.path(), "emu-root.bin", &cfg);
    dpskit(&state)
        .args(["device", "check", "--json", "--config"])
        .arg(&emu_root)
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("\"level\": \"fail\"").and(predicate::str::contains(
                "is Azure, but the image trusts none of the roots",
            )),
        );

    // An image without a required key.
    let entries: Vec<_> = config("board-7", &ca)
        .to_entries()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| *k != dpskit_core::config::keys::ROOT_CA)
        .collect();
    let partial = dir.path().join("partial.bin");
    std::fs::write(
        &partial,
        nvs::build_entries(&entries, DEFAULT_SIZE).unwrap(),
    )
    .unwrap();
    dpskit(&state)
        .args(["device", "check", "--config"])
        .arg(&partial)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("key 'root_ca' missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_registers_then_reuses_the_stored_assignment_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("emu");
    let mut c = EmulatorConfig::new(
        &state,
        vec![Group::new(SCOPE, GroupKey::parse(GROUP_KEY, "g").unwrap())],
    );
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.echo_telemetry = false;
    c.human_log = false;
    c.dps.retry_after_secs = 0;
    let emu = Emulator::start(c).await.unwrap();
    let addr = emu.addr().to_string();
    let image = write(
        dir.path(),
        "board-9.bin",
        &config("board-9", emu.ca_pem_path()),
    );

    let run = |args: Vec<String>| {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            dpskit(&state)
                .args(args)
                .timeout(std::time::Duration::from_secs(30))
                .assert()
        })
    };
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "device",
            "run",
            "--config",
            image.to_str().unwrap(),
            "--provisioning-host",
            &addr,
            "--hub-host",
            &addr,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    let first = run(args(&["--messages", "2", "--interval", "1"]))
        .await
        .unwrap();
    first
        .success()
        .stdout(predicate::str::contains(
            "[board-9] registering with DPS localhost (no stored assignment)",
        ))
        .stdout(predicate::str::contains(
            "[board-9] provisioned: hub localhost, device board-9 (initialAssignment)",
        ))
        .stdout(predicate::str::contains("[board-9] telemetry #2: "))
        .stdout(predicate::str::contains(
            "[board-9] done: 2 message(s) sent since boot",
        ));
    assert!(dir.path().join("board-9.assignment.json").exists());

    // Second boot: the stored assignment, no DPS.
    run(args(&["--messages", "1"]))
        .await
        .unwrap()
        .success()
        .stdout(predicate::str::contains(
            "using the stored assignment: hub localhost, device board-9 (DPS skipped)",
        ))
        .stdout(predicate::str::contains("registering").not());
    assert_eq!(emu.stats().registrations, 1);

    // A wrong clock, as a board without SNTP would have it: exit 1, cause named.
    run(args(&[
        "--messages",
        "1",
        "--fresh",
        "--clock-offset",
        "-259200",
    ]))
    .await
    .unwrap()
    .code(1)
    .stderr(
        predicate::str::contains("certificate not yet valid")
            .and(predicate::str::contains("the clock is behind")),
    );

    // Bad input: exit 2, nothing runs.
    run(args(&["--interval", "0"]))
        .await
        .unwrap()
        .code(2)
        .stderr(predicate::str::contains("--interval 0"));
    let missing = dir.path().join("missing.bin");
    let entries: Vec<_> = config("board-10", emu.ca_pem_path())
        .to_entries()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| *k != dpskit_core::config::keys::DEVICE_KEY)
        .collect();
    std::fs::write(
        &missing,
        nvs::build_entries(&entries, DEFAULT_SIZE).unwrap(),
    )
    .unwrap();
    let mut v = args(&[]);
    v[3] = missing.to_str().unwrap().to_string();
    run(v)
        .await
        .unwrap()
        .code(2)
        .stderr(predicate::str::contains("key 'device_key' missing"));
    assert!(!dir.path().join("missing.assignment.json").exists());
    emu.shutdown().await;
}
