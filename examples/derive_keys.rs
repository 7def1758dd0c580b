//! Derive per-device keys from an enrollment group key, explain a key that does not match,
//! and prove a derived key against DPS by registering with it.
//!
//! `device_key = base64(HMAC-SHA256(base64decode(group_key), registration_id))` — the group
//! key is read from `DPSKIT_GROUP_KEY` (never an argument) and never printed.
//!
//! ```text
//! export DPSKIT_GROUP_KEY=…
//! cargo run --example derive_keys -- dev-1 dev-2 dev-3
//! cargo run --example derive_keys -- dev-1 --check 'key someone pasted'
//! # prove dev-1's key against the local emulator (`dpskit emulate --scope 0ne00000E01`):
//! cargo run --example derive_keys -- dev-1 --register 127.0.0.1:8883 0ne00000E01 \
//!     ~/.local/state/dpskit/emulator/ca.pem
//! ```

use anyhow::{bail, Context, Result};
use dpskit_core::diagnosis::{check_device_key, KeyCheck};
use dpskit_core::{DeviceConfig, GroupKey, IdScope, RegistrationId};
use dpskit_factory::blob::roots::{self, RootSource};
use dpskit_factory::keys::{KeySource, GROUP_KEY_ENV};
use dpskit_rehearsal::device::{DeviceOptions, Endpoints, VirtualDevice};
use std::path::Path;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: derive_keys ID… [--check KEY] [--register HOST:PORT SCOPE CA.pem]";
    let split = args
        .iter()
        .position(|a| a.starts_with("--"))
        .unwrap_or(args.len());
    let (ids, rest) = args.split_at(split);
    if ids.is_empty() {
        bail!("{usage}");
    }
    // DPSKIT_GROUP_KEY (a KeySource may also be a file or stdin, as in the CLI).
    let group = KeySource::Env(GROUP_KEY_ENV.into())
        .group_key("group key (DPSKIT_GROUP_KEY)")?
        .0;
    let ids: Vec<RegistrationId> = ids
        .iter()
        .map(|i| RegistrationId::parse(i, false))
        .collect::<Result<_, _>>()?;
    for (id, key) in derive(&group, &ids) {
        // Masked: the first characters and a fingerprint, enough to match a ledger row.
        println!("{id}\t{}", key.masked());
    }
    match rest {
        [] => Ok(()),
        [flag, key] if flag == "--check" => {
            println!("{}", explain(&group, ids[0].as_str(), key));
            Ok(())
        }
        [flag, addr, scope, ca] if flag == "--register" => {
            let hub = register(&group, &ids[0], addr, scope, Path::new(ca)).await?;
            println!(
                "{}: registered with DPS and assigned to {hub}: the derived key works",
                ids[0]
            );
            Ok(())
        }
        _ => bail!("{usage}"),
    }
}

/// The device key of every ID.
fn derive(group: &GroupKey, ids: &[RegistrationId]) -> Vec<(String, dpskit_core::DeviceKey)> {
    ids.iter()
        .map(|id| (id.to_string(), group.derive(id.as_str())))
        .collect()
}

/// Why a pasted key is (not) the derivation for `id`, in plain words.
fn explain(group: &GroupKey, id: &str, pasted: &str) -> String {
    match check_device_key(group, None, id, pasted) {
        KeyCheck::Match => format!("{id}: the key is right"),
        KeyCheck::Explained(mistake) => format!("{id}: wrong key — {mistake}"),
        KeyCheck::Unexplained => format!("{id}: wrong key, and no known mistake reproduces it"),
    }
}

/// Registers `id` through the DPS at `addr` with its derived key; the assigned hub.
async fn register(
    group: &GroupKey,
    id: &RegistrationId,
    addr: &str,
    scope: &str,
    ca: &Path,
) -> Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let config = DeviceConfig {
        id_scope: IdScope::parse(scope).map_err(|e| anyhow::anyhow!("{e}"))?.0,
        registration_id: id.clone(),
        device_key: group.derive(id.as_str()),
        root_ca_pem: roots::assemble(&[RootSource::File(ca.to_path_buf())], now)?.pem,
        dps_host: "localhost".into(),
        wifi_ssid: None,
        wifi_password: None,
        ntp_server: None,
        token_ttl_secs: None,
    };
    let mut opts = DeviceOptions::new(config);
    opts.endpoints = Endpoints {
        dps: Some(addr.into()),
        hub: Some(addr.into()),
        tls_server_name: None,
    };
    opts.settings.max_messages = Some(1);
    let report = VirtualDevice::run(opts, dpskit_device::driver::NoCommands, |_| {}).await?;
    if let Some(e) = report.failure {
        bail!("{id}: {e}");
    }
    report.hub.context("no hub assigned")
}

#[cfg(test)]
mod tests {
    //! Runs the example against the in-process emulator (built and run by `cargo test`).
    use super::*;
    use dpskit_rehearsal::emulator::{Emulator, EmulatorConfig, Group};

    const GROUP_KEY: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
    const ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn derives_explains_and_registers() {
        let group = GroupKey::parse(GROUP_KEY, "g").unwrap();
        let ids = [RegistrationId::parse(ID, false).unwrap()];
        // Microsoft's documented vector (reference §1, V1).
        assert_eq!(
            derive(&group, &ids)[0].1.to_base64(),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
        // `echo $REG_ID` without -n: the known wrong key is recognised.
        assert!(
            explain(&group, ID, "9xk+A3Y29nEzASjuakJUhcmNyb4ZjibgUKRXPMBArUU=")
                .contains("trailing newline")
        );
        assert!(explain(&group, ID, GROUP_KEY).contains("group"));

        let dir = tempfile::tempdir().unwrap();
        let mut c = EmulatorConfig::new(dir.path(), vec![Group::new("0ne00000E02", group.clone())]);
        c.bind = "127.0.0.1:0".parse().unwrap();
        c.echo_telemetry = false;
        c.human_log = false;
        c.dps.retry_after_secs = 0;
        let emu = Emulator::start(c).await.unwrap();
        let hub = register(
            &group,
            &ids[0],
            &emu.addr().to_string(),
            "0ne00000E02",
            emu.ca_pem_path(),
        )
        .await
        .unwrap();
        assert_eq!(hub, "localhost");
        // A key derived for another ID is refused by DPS, and the message says why.
        let other = GroupKey::parse("rLuyBPpIJ+hOre2SFIP9Ajvdty3j0EwSP/WvTVH9eZAw5HpDuEmf13nziHy5RRXmuTy84FCLpOnhhBPASSbHYg==", "g").unwrap();
        let e = register(
            &other,
            &ids[0],
            &emu.addr().to_string(),
            "0ne00000E02",
            emu.ca_pem_path(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("401 Unauthorized"), "{e}");
        emu.shutdown().await;
    }
}
