//! `dpskit device check`: validates a config image on the PC, offline, before it is flashed:
//! the keys a board needs, a device key that is a derived key (and, given the group key, the
//! derivation for exactly this ID), and root CAs that are valid and fit the DPS endpoint.

use dpskit_core::diagnosis::{check_device_key, KeyCheck};
use dpskit_core::GroupKey;
use dpskit_factory::blob::nvs;
use dpskit_factory::blob::roots::{self, CertInfo};
use serde::Serialize;
use std::path::PathBuf;
use time::OffsetDateTime;

/// The roots Azure's DPS and IoT Hub servers chain to (by bundled name).
const AZURE_ROOTS: [&str; 4] = [
    "digicert-g2",
    "microsoft-rsa-2017",
    "digicert-g3",
    "microsoft-ecc-2017",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Note,
    Warn,
    Fail,
}

/// One result line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    pub topic: &'static str,
    pub text: String,
}

/// What the check may compare against.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The enrollment group's primary key, to prove the device key is its derivation.
    pub group_key: Option<GroupKey>,
    /// The local emulator's CA certificate (for configs that point at it).
    pub emulator_ca: Option<PathBuf>,
    pub now: OffsetDateTime,
}

fn finding(level: Level, topic: &'static str, text: impl Into<String>) -> Finding {
    Finding {
        level,
        topic,
        text: text.into(),
    }
}

fn is_local(host: &str) -> bool {
    let h = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks one image. Nothing here touches the network.
pub fn check_image(image: &[u8], opts: &CheckOptions) -> Vec<Finding> {
    let mut out = Vec::new();
    let cfg = match nvs::decode_image(image) {
        Ok(c) => c,
        Err(e) => {
            out.push(finding(Level::Fail, "config", format!("{e:#}")));
            return out;
        }
    };
    let id = cfg.registration_id.as_str();
    out.push(finding(
        Level::Ok,
        "config",
        format!(
            "ID scope {}, registration ID {id}, DPS host {}",
            cfg.id_scope, cfg.dps_host
        ),
    ));
    if id.chars().any(|c| c.is_ascii_uppercase()) {
        out.push(finding(
            Level::Warn,
            "registration ID",
            format!("{id:?} has upper-case letters: DPS ignores case but the derived key covers the exact bytes, and the hub device ID is case-sensitive"),
        ));
    }

    // The key: always 32 bytes here (decoding refuses longer group keys); compare if we can.
    let key = &cfg.device_key;
    match &opts.group_key {
        Some(group) => match check_device_key(group, None, id, &key.to_base64()) {
            KeyCheck::Match => out.push(finding(
                Level::Ok,
                "device key",
                format!("{} is the key derived from the group key for {id}", key.masked()),
            )),
            KeyCheck::Explained(m) => out.push(finding(Level::Fail, "device key", format!("{}: {m}", key.masked()))),
            KeyCheck::Unexplained => out.push(finding(
                Level::Fail,
                "device key",
                format!(
                    "{} is not the key derived from this group key for {id}: another ID's key, another enrollment group's, or a corrupted copy; rebuild the image with `dpskit config build` (DPS would answer 401)",
                    key.masked()
                ),
            )),
        },
        None => out.push(finding(
            Level::Note,
            "device key",
            format!(
                "{}: 32 bytes, the size of a derived key; not compared with the group key (set DPSKIT_GROUP_KEY or give --group-key-file to prove it is the derivation for {id})",
                key.masked()
            ),
        )),
    }

    // Root CAs: parse, dates, and whether they fit the endpoint.
    let certs = match roots::describe_pem_bundle(&cfg.root_ca_pem) {
        Ok(c) => c,
        Err(e) => {
            out.push(finding(
                Level::Fail,
                "root CAs",
                format!("{e:#}; rebuild the image with --root-ca"),
            ));
            return out;
        }
    };
    check_roots(&certs, opts.now, &mut out);
    check_endpoint(&cfg.dps_host, &certs, opts, &mut out);

    if cfg.wifi_ssid.is_none() {
        out.push(finding(
            Level::Warn,
            "Wi-Fi",
            "no wifi_ssid: a board cannot get online with this image (the virtual device does not need it); add --wifi-ssid to `dpskit config build`",
        ));
    } else {
        out.push(finding(
            Level::Ok,
            "Wi-Fi",
            format!("network {:?}", cfg.wifi_ssid.as_deref().unwrap_or_default()),
        ));
    }
    out
}

fn check_roots(certs: &[CertInfo], now: OffsetDateTime, out: &mut Vec<Finding>) {
    for c in certs {
        let name = &c.common_name;
        if c.bundled_name == Some("baltimore") {
            out.push(finding(
                Level::Fail,
                "root CAs",
                format!("{name} expired on 2025-05-12 and Azure no longer uses it; rebuild with --root-ca digicert-g2"),
            ));
        } else if c.is_expired(now) {
            out.push(finding(
                Level::Fail,
                "root CAs",
                format!(
                    "{name} expired on {}; TLS with it fails; rebuild with a current root",
                    c.not_after.date()
                ),
            ));
        } else if c.not_before > now {
            out.push(finding(
                Level::Warn,
                "root CAs",
                format!(
                    "{name} is not valid before {}; boards reject it until then",
                    c.not_before.date()
                ),
            ));
        } else if !c.self_signed || !c.is_ca {
            out.push(finding(
                Level::Warn,
                "root CAs",
                format!("{name} is not a self-signed root CA (issuer {}); trust roots, not intermediates or server certificates", c.issuer),
            ));
        } else {
            out.push(finding(
                Level::Ok,
                "root CAs",
                format!("{name} (valid until {})", c.not_after.date()),
            ));
        }
    }
}

fn check_endpoint(host: &str, certs: &[CertInfo], opts: &CheckOptions, out: &mut Vec<Finding>) {
    let azure: Vec<&CertInfo> = certs
        .iter()
        .filter(|c| c.bundled_name.is_some_and(|n| AZURE_ROOTS.contains(&n)))
        .collect();
    let host_lc = host.to_ascii_lowercase();
    if host_lc.ends_with(".azure-devices-provisioning.net") {
        if azure.is_empty() {
            out.push(finding(
                Level::Fail,
                "endpoint",
                format!(
                    "DPS host {host} is Azure, but the image trusts none of the roots Azure's servers chain to (DigiCert Global Root G2, Microsoft RSA Root Certificate Authority 2017): the TLS handshake will fail; rebuild with the default --root-ca"
                ),
            ));
        } else if !azure.iter().any(|c| c.bundled_name == Some("digicert-g2")) {
            out.push(finding(
                Level::Warn,
                "endpoint",
                format!("DPS host {host} is Azure; the image lacks DigiCert Global Root G2, the root Azure's RSA certificates chain to today"),
            ));
        } else if azure.len() == 1 {
            out.push(finding(
                Level::Warn,
                "endpoint",
                "only DigiCert Global Root G2: add Microsoft RSA Root Certificate Authority 2017 as backup so a root change does not strand the board",
            ));
        } else {
            out.push(finding(
                Level::Ok,
                "endpoint",
                format!("DPS host {host} is Azure and the image trusts its roots"),
            ));
        }
        return;
    }
    let emulator_ca = opts.emulator_ca.clone().or_else(|| {
        Some(crate::emulator::ca_path(
            &crate::emulator::default_state_dir(),
        ))
        .filter(|p| p.exists())
    });
    let emulator = emulator_ca.as_ref().and_then(|p| {
        let data = std::fs::read(p).ok()?;
        let parsed = roots::parse_certificates(&data, &p.display().to_string()).ok()?;
        Some((
            p,
            parsed
                .into_iter()
                .map(|c| c.info.sha256)
                .collect::<Vec<_>>(),
        ))
    });
    if let (Some(p), None) = (&opts.emulator_ca, &emulator) {
        out.push(finding(
            Level::Fail,
            "endpoint",
            format!(
                "--emulator-ca {}: not a readable PEM certificate",
                p.display()
            ),
        ));
        return;
    }
    match emulator {
        Some((path, fps)) if certs.iter().any(|c| fps.contains(&c.sha256)) => out.push(finding(
            Level::Ok,
            "endpoint",
            format!("DPS host {host}; the image trusts the local emulator's CA ({})", path.display()),
        )),
        Some((path, _)) if is_local(host) || azure.len() == certs.len() => out.push(finding(
            Level::Fail,
            "endpoint",
            format!(
                "DPS host {host} is not Azure, and the image does not trust the emulator's CA ({}); its certificate will not verify: rebuild the image with --root-ca emulator",
                path.display()
            ),
        )),
        _ if azure.len() == certs.len() => out.push(finding(
            Level::Fail,
            "endpoint",
            format!("DPS host {host} is not Azure, but the image trusts only Azure's roots; its certificate will not verify (for the emulator: --root-ca emulator)"),
        )),
        _ => out.push(finding(
            Level::Note,
            "endpoint",
            format!("DPS host {host} is not Azure; whether its certificate chains to the image's other roots cannot be told offline (try `dpskit device run` against it)"),
        )),
    }
}
