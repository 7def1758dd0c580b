//! dpskit's NVS images must be byte-identical to those of Espressif's own generator
//! (`esp_idf_nvs_partition_gen`, the Python package ESP-IDF uses), so a board reads exactly
//! what the reference tool would have written. The generator is required: without it this
//! test fails rather than skips, since a skipped compatibility check proves nothing.
// Unix only: the Python reference tools run on the Linux host.
#![cfg(unix)]

use dpskit_core::config::{Value, DEFAULT_DPS_HOST};
use dpskit_core::{DeviceConfig, DeviceKey, IdScope, RegistrationId};
use dpskit_factory::blob::nvs::{self, PAGE_SIZE};
use dpskit_factory::blob::roots::{self, RootSource};
use std::path::Path;
use std::process::Command;

const PYTHON: &str = "python3";
const MODULE: &str = "esp_idf_nvs_partition_gen";

fn require_generator() {
    let ok = Command::new(PYTHON)
        .args(["-c", &format!("import {MODULE}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "Espressif's NVS generator is missing: run `pip install esp-idf-nvs-partition-gen` (the Python module {MODULE} is needed for this test)"
    );
}

/// A CSV field, quoted when Python's csv module needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Runs the Python generator on `entries` in `dir`; long strings go through `file` rows, the
/// way the reference sample stores its PEM. `Err(stderr)` when the generator refused.
fn python_image(dir: &Path, entries: &[(&str, Value)], size: usize) -> Result<Vec<u8>, String> {
    let mut csv = String::from("key,type,encoding,value\ndps,namespace,,\n");
    for (key, value) in entries {
        match value {
            Value::U8(v) => csv.push_str(&format!("{key},data,u8,{v}\n")),
            Value::Str(s) if s.contains('\n') || s.len() > 200 => {
                // Read relative to the generator's working directory.
                let name = format!("{key}.txt");
                std::fs::write(dir.join(&name), s).unwrap();
                csv.push_str(&format!("{key},file,string,{name}\n"));
            }
            Value::Str(s) => csv.push_str(&format!("{key},data,string,{}\n", csv_field(s))),
        }
    }
    std::fs::write(dir.join("dps.csv"), csv).unwrap();
    let out = dir.join("py.bin");
    let _ = std::fs::remove_file(&out);
    let result = Command::new(PYTHON)
        .args([
            "-m",
            MODULE,
            "generate",
            "dps.csv",
            "py.bin",
            &format!("{size:#x}"),
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let image = std::fs::read(&out).ok().filter(|b| b.len() == size);
    match image {
        Some(image) if result.status.success() => Ok(image),
        _ => Err(String::from_utf8_lossy(&result.stderr).into_owned()),
    }
}

fn assert_same(name: &str, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), theirs.len(), "{name}: lengths differ");
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        panic!(
            "{name}: first difference at {i:#x} (page {}, entry {}): dpskit {:02x?} vs Python {:02x?}",
            i / PAGE_SIZE,
            ((i % PAGE_SIZE) as isize - 64) / 32,
            &ours[i..(i + 16).min(ours.len())],
            &theirs[i..(i + 16).min(theirs.len())]
        );
    }
}

fn config(wifi: bool, roots_named: &[&str]) -> DeviceConfig {
    let sources: Vec<_> = roots_named
        .iter()
        .map(|n| RootSource::parse(n).unwrap())
        .collect();
    let now = time::macros::datetime!(2026-06-01 0:00 UTC);
    DeviceConfig {
        id_scope: IdScope::parse("0ne00ABCDEF").unwrap().0,
        registration_id: RegistrationId::parse("sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6", false)
            .unwrap(),
        device_key: DeviceKey::parse("Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=", "k").unwrap(),
        root_ca_pem: roots::assemble(&sources, now).unwrap().pem,
        dps_host: DEFAULT_DPS_HOST.into(),
        wifi_ssid: wifi.then(|| "Factory, floor 2 \"B\"".into()),
        wifi_password: wifi.then(|| "correct horse battery".into()),
        ntp_server: None,
        token_ttl_secs: None,
    }
}

#[test]
fn reference_sample_is_reproduced() {
    require_generator();
    let dir = tempfile::tempdir().unwrap();
    // esp32-formats.md §1.10: the sample CSV (no schema entry, dummy key, DigiCert G2 PEM).
    let g2 = roots::bundled("digicert-g2").unwrap().pem;
    let entries = [
        ("scope_id", Value::Str("0ne00ABCDEF".into())),
        ("registration_id", Value::Str("device-0001".into())),
        (
            "device_key",
            Value::Str("RQjLQL7EsttJ7YZFgmVVz8reLzO95ach9pbzNqN2TmU=".into()),
        ),
        ("root_ca", Value::Str(g2.into())),
    ];
    let ours = nvs::build_entries(&entries, 0x6000).unwrap();
    let theirs = python_image(dir.path(), &entries, 0x6000)
        .unwrap_or_else(|e| panic!("generator failed: {e}"));
    assert_same("reference sample", &ours, &theirs);
    // The annotated bytes of the reference.
    let u32_at = |o: usize| u32::from_le_bytes(ours[o..o + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xFFFF_FFFE, "page 0 ACTIVE");
    assert_eq!(u32_at(0x1C), 0xB9BA_2D84, "header CRC");
    assert_eq!(u32_at(0x44), 0xA183_B7B2, "namespace entry CRC");
    assert_eq!(u32_at(0x64), 0xF1F1_6EE3, "scope_id entry CRC");
    assert_eq!(u32_at(0x7C), 0x0EFD_B7AF, "scope_id data CRC");
    assert_eq!(u32_at(0x144), 0x48F7_0605, "root_ca entry CRC");
    assert_eq!(
        &ours[0x20..0x2D],
        &[0xAA; 12].iter().copied().chain([0xFA]).collect::<Vec<_>>()[..]
    );
    assert!(
        ours[PAGE_SIZE..].iter().all(|&b| b == 0xFF),
        "pages 1..5 erased"
    );
}

#[test]
fn device_configs_match_the_python_generator() {
    require_generator();
    let dir = tempfile::tempdir().unwrap();
    let both = ["digicert-g2", "microsoft-rsa-2017"];
    let cases = [
        ("no Wi-Fi, default roots", config(false, &both), 0x6000),
        (
            "Wi-Fi with comma and quotes, default roots",
            config(true, &both),
            0x6000,
        ),
        (
            "one root, smallest partition",
            config(true, &["digicert-g2"]),
            0x3000,
        ),
        (
            "ECC roots, larger partition",
            config(true, &["digicert-g3", "microsoft-ecc-2017"]),
            0x10000,
        ),
    ];
    for (name, cfg, size) in cases {
        let entries = cfg.to_entries().unwrap();
        let ours = nvs::build_image(&cfg, size).unwrap();
        let theirs = python_image(dir.path(), &entries, size)
            .unwrap_or_else(|e| panic!("{name}: generator failed: {e}"));
        assert_same(name, &ours, &theirs);
        assert_eq!(
            nvs::decode_image(&theirs).unwrap(),
            cfg,
            "{name}: Python's image decodes"
        );
    }
}

#[test]
fn page_boundaries_match_the_python_generator() {
    require_generator();
    let dir = tempfile::tempdir().unwrap();
    // Values that spill over pages: page 0 fills up (state FULL) and later values start fresh
    // pages, the way both generators must lay them out for the firmware to find them.
    let mut cfg = config(
        true,
        &["microsoft-rsa-2017", "digicert-g3", "microsoft-ecc-2017"],
    );
    cfg.id_scope = IdScope::parse(&"a".repeat(3900)).unwrap().0;
    let entries = cfg.to_entries().unwrap();
    assert_eq!(nvs::pages_needed(&entries), 3);
    for size in [0x4000, 0x6000] {
        let ours = nvs::build_image(&cfg, size).unwrap();
        let theirs = python_image(dir.path(), &entries, size)
            .unwrap_or_else(|e| panic!("generator failed: {e}"));
        assert_same(&format!("three pages in {size:#x}"), &ours, &theirs);
        assert_eq!(&ours[0..4], &0xFFFF_FFFCu32.to_le_bytes(), "page 0 FULL");
        assert_eq!(
            &ours[2 * PAGE_SIZE..2 * PAGE_SIZE + 4],
            &0xFFFF_FFFEu32.to_le_bytes(),
            "page 2 ACTIVE"
        );
    }
    // Both refuse the same data in a partition one page too small.
    assert!(nvs::build_image(&cfg, 0x3000).is_err());
    let e = python_image(dir.path(), &entries, 0x3000).expect_err("Python should refuse too");
    assert!(
        e.contains("PageFullError") || e.contains("InsufficientSizeError"),
        "{e}"
    );
    // Filling a page to its last entry, then one entry over: same layout as Python's.
    let s = "x".repeat(123 * 32 - 1);
    for extra in [1usize, 2] {
        let mut entries = vec![("a", Value::Str(s.clone()))];
        for i in 0..extra {
            entries.push((["b", "c"][i], Value::U8(i as u8)));
        }
        let ours = nvs::build_entries(&entries, 0x3000).unwrap();
        let theirs = python_image(dir.path(), &entries, 0x3000)
            .unwrap_or_else(|e| panic!("generator failed: {e}"));
        assert_same(&format!("page edge +{extra}"), &ours, &theirs);
    }
}
