//! The firmware's fixed facts against their sources: the partition table the boards are
//! flashed with, and the firmware crate's name and version in the app descriptor.

use dpskit_firmware_glue::{descriptor, partitions};
use std::path::Path;

/// `(name, type, subtype, offset, size, flags)` rows of an ESP-IDF partition CSV, with empty
/// offsets filled in as `gen_esp32part.py` does (from 0x9000; data aligned to 0x1000, apps
/// to 0x10000).
fn partition_table(csv: &str) -> Vec<(String, String, String, usize, usize, String)> {
    let num = |s: &str| {
        let s = s.trim();
        let (digits, mul) = match s.chars().last() {
            Some('K') | Some('k') => (&s[..s.len() - 1], 1024),
            Some('M') | Some('m') => (&s[..s.len() - 1], 1024 * 1024),
            _ => (s, 1),
        };
        let v = match digits.strip_prefix("0x") {
            Some(h) => usize::from_str_radix(h, 16).unwrap(),
            None => digits.parse::<usize>().unwrap(),
        };
        v * mul
    };
    let mut next: usize = 0x9000;
    let mut out = Vec::new();
    for line in csv.lines() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let c: Vec<&str> = line.split(',').map(str::trim).collect();
        let align = if c[1] == "app" { 0x10000 } else { 0x1000 };
        let offset = if c[3].is_empty() {
            next.div_ceil(align) * align
        } else {
            num(c[3])
        };
        let size = num(c[4]);
        next = offset + size;
        out.push((
            c[0].to_string(),
            c[1].to_string(),
            c[2].to_string(),
            offset,
            size,
            c.get(5).unwrap_or(&"").to_string(),
        ));
    }
    out
}

#[test]
fn nvs_partitions_match_the_template() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let csv = std::fs::read_to_string(root.join("templates/partitions.csv")).unwrap();
    let table = partition_table(&csv);
    let find = |name: &str| table.iter().find(|p| p.0 == name).unwrap().clone();
    let nvs = find("nvs");
    assert_eq!(
        (nvs.1.as_str(), nvs.2.as_str(), nvs.3, nvs.4),
        ("data", "nvs", partitions::NVS_OFFSET, partitions::NVS_SIZE)
    );
    let cfg = find(partitions::DPS_CFG_LABEL);
    assert_eq!(
        (cfg.1.as_str(), cfg.2.as_str(), cfg.3, cfg.4),
        (
            "data",
            "nvs",
            partitions::DPS_CFG_OFFSET,
            partitions::DPS_CFG_SIZE
        )
    );
    // The firmware reads it as plain NVS: it must not be flagged encrypted.
    assert!(!cfg.5.contains("encrypted"), "{cfg:?}");
    // The CLI's default image size is the partition's size.
    assert_eq!(partitions::DPS_CFG_SIZE, 0x6000);
}

#[test]
fn descriptor_fields_are_the_firmware_crates() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .unwrap();
    let package = manifest
        .split("[package]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    let field = |name: &str| {
        package
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
            })
            .unwrap()
    };
    // `esp_app_desc!()` takes these from the firmware crate; `dpskit inspect` shows them.
    assert_eq!(field("name"), descriptor::PROJECT_NAME);
    assert_eq!(field("version"), descriptor::VERSION);
    assert!(descriptor::fits(descriptor::PROJECT_NAME) && descriptor::fits(descriptor::VERSION));
    assert!(!descriptor::fits(&"x".repeat(descriptor::FIELD_BYTES)));
}
