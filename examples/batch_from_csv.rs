//! A batch from a CSV file: derive each board's key, write its NVS config image (mode 0600,
//! it holds the key), and rehearse the whole batch as virtual devices in this one process
//! against the local emulator — every board registers and sends a message — before anything
//! is flashed.
//!
//! The CSV needs a `registration_id` column (other columns, like the station manifest's, are
//! ignored). The group key comes from `DPSKIT_GROUP_KEY` and is never written anywhere.
//!
//! ```text
//! printf 'registration_id\nboard-001\nboard-002\nboard-003\n' > batch.csv
//! export DPSKIT_GROUP_KEY=…
//! dpskit emulate --scope 0ne00000E01
//! cargo run --example batch_from_csv -- batch.csv images/ 0ne00000E01 \
//!     --emulator 127.0.0.1:8883 ~/.local/state/dpskit/emulator/ca.pem
//! ```
//!
//! Without `--emulator` the images get Azure's default roots and DPS host, ready to flash.

use anyhow::{anyhow, bail, Context, Result};
use dpskit_core::config::DEFAULT_DPS_HOST;
use dpskit_core::{DeviceConfig, GroupKey, IdScope, RegistrationId};
use dpskit_factory::blob::nvs;
use dpskit_factory::blob::roots::{self, RootSource};
use dpskit_factory::files::write_private_file;
use dpskit_factory::keys::{KeySource, GROUP_KEY_ENV};
use dpskit_rehearsal::device::{DeviceOptions, Endpoints, VirtualDevice};
use std::path::{Path, PathBuf};

/// Where the rehearsal runs: the emulator's address and CA certificate.
struct Emulator {
    addr: String,
    ca: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: batch_from_csv BATCH.csv OUT_DIR ID_SCOPE [--emulator HOST:PORT CA.pem]";
    let emulator = match &args[..] {
        [_, _, _] => None,
        [_, _, _, flag, addr, ca] if flag == "--emulator" => Some(Emulator {
            addr: addr.clone(),
            ca: ca.into(),
        }),
        _ => bail!("{usage}"),
    };
    let group = KeySource::Env(GROUP_KEY_ENV.into())
        .group_key("group key (DPSKIT_GROUP_KEY)")?
        .0;
    let ids = read_ids(Path::new(&args[0]))?;
    let images = write_images(
        &group,
        &ids,
        &args[2],
        Path::new(&args[1]),
        emulator.as_ref(),
    )?;
    for (id, path) in &images {
        println!("{id}\t{}", path.display());
    }
    if let Some(emu) = &emulator {
        let mut failed = 0;
        for (id, result) in rehearse(&images, emu).await? {
            match result {
                Ok(hub) => println!("{id}\tok: registered, assigned to {hub}, 1 message sent"),
                Err(e) => {
                    failed += 1;
                    println!("{id}\tFAILED: {e}");
                }
            }
        }
        if failed > 0 {
            bail!("{failed} of {} boards failed the rehearsal", images.len());
        }
    }
    Ok(())
}

/// The `registration_id` column, validated, duplicates refused.
fn read_ids(csv_path: &Path) -> Result<Vec<RegistrationId>> {
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_path(csv_path)
        .with_context(|| format!("cannot read {}", csv_path.display()))?;
    let column = reader
        .headers()?
        .iter()
        .position(|h| h == "registration_id")
        .with_context(|| {
            format!(
                "{}: no registration_id column in the header",
                csv_path.display()
            )
        })?;
    let mut ids = Vec::new();
    for row in reader.records() {
        ids.push(row?.get(column).unwrap_or_default().to_string());
    }
    dpskit_factory::keys::batch::collect(&ids, None, None, false)
}

/// One image per board: `OUT_DIR/<id>.bin`, written whole-or-nothing, mode 0600.
fn write_images(
    group: &GroupKey,
    ids: &[RegistrationId],
    scope: &str,
    out_dir: &Path,
    emulator: Option<&Emulator>,
) -> Result<Vec<(String, PathBuf)>> {
    let id_scope = IdScope::parse(scope)
        .map_err(|e| anyhow!("ID scope: {e}"))?
        .0;
    let now = time::OffsetDateTime::now_utc();
    let (sources, dps_host) = match emulator {
        Some(e) => (vec![RootSource::File(e.ca.clone())], "localhost"),
        None => (RootSource::defaults(), DEFAULT_DPS_HOST),
    };
    let root_ca_pem = roots::assemble(&sources, now)?.pem;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut out = Vec::new();
    for id in ids {
        let config = DeviceConfig {
            id_scope: id_scope.clone(),
            registration_id: id.clone(),
            device_key: group.derive(id.as_str()),
            root_ca_pem: root_ca_pem.clone(),
            dps_host: dps_host.into(),
            wifi_ssid: None,
            wifi_password: None,
            ntp_server: None,
            token_ttl_secs: None,
        };
        let path = out_dir.join(format!("{id}.bin"));
        write_private_file(&path, &nvs::build_image(&config, nvs::DEFAULT_SIZE)?)?;
        out.push((id.to_string(), path));
    }
    Ok(out)
}

/// Boots every image as a virtual device at once; each registers and sends one message.
async fn rehearse(
    images: &[(String, PathBuf)],
    emu: &Emulator,
) -> Result<Vec<(String, Result<String>)>> {
    let mut running = Vec::new();
    for (id, path) in images {
        // The same bytes a board will get, read back from the file.
        let mut opts = DeviceOptions::from_image(&std::fs::read(path)?)?;
        opts.endpoints = Endpoints {
            dps: Some(emu.addr.clone()),
            hub: Some(emu.addr.clone()),
            tls_server_name: None,
        };
        opts.settings.max_messages = Some(1);
        running.push((
            id.clone(),
            tokio::spawn(VirtualDevice::run(
                opts,
                dpskit_device::driver::NoCommands,
                |_| {},
            )),
        ));
    }
    let mut results = Vec::new();
    for (id, task) in running {
        let report = task.await??;
        let result = match report.failure {
            Some(e) => Err(anyhow!("{e}")),
            None => report.hub.context("no hub"),
        };
        results.push((id, result));
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    //! Runs the example against the in-process emulator (built and run by `cargo test`).
    use super::*;
    use dpskit_rehearsal::emulator::{EmulatorConfig, Group};

    const GROUP_KEY: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_images_and_rehearses_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("batch.csv");
        std::fs::write(
            &csv,
            "# batch 7\nregistration_id,mac\nboard-001,\nboard-002,aa:bb\nboard-003,\n",
        )
        .unwrap();
        let group = GroupKey::parse(GROUP_KEY, "g").unwrap();
        let mut c = EmulatorConfig::new(
            dir.path().join("emu"),
            vec![Group::new("0ne00000E03", group.clone())],
        );
        c.bind = "127.0.0.1:0".parse().unwrap();
        c.echo_telemetry = false;
        c.human_log = false;
        c.dps.retry_after_secs = 0;
        let emu = dpskit_rehearsal::emulator::Emulator::start(c)
            .await
            .unwrap();
        let target = Emulator {
            addr: emu.addr().to_string(),
            ca: emu.ca_pem_path().into(),
        };

        let ids = read_ids(&csv).unwrap();
        let images = write_images(
            &group,
            &ids,
            "0ne00000E03",
            &dir.path().join("images"),
            Some(&target),
        )
        .unwrap();
        assert_eq!(images.len(), 3);
        #[cfg(unix)]
        for (_, p) in &images {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let results = rehearse(&images, &target).await.unwrap();
        for (id, r) in &results {
            assert_eq!(
                r.as_ref().map_err(|e| e.to_string()),
                Ok(&"localhost".to_string()),
                "{id}"
            );
        }
        assert_eq!((emu.stats().registrations, emu.stats().telemetry), (3, 3));

        // A duplicate ID is refused before anything is written.
        std::fs::write(&csv, "registration_id\nboard-001\nboard-001\n").unwrap();
        assert!(read_ids(&csv)
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        emu.shutdown().await;
    }
}
