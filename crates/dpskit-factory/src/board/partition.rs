//! Reading a board's partition table safely and finding the config partition in it.
//!
//! esp-idf-part panics (instead of returning an error) on subtypes or flag bits it does not
//! know, so every entry is checked here first and an unknown one becomes a plain error.

use anyhow::{bail, Result};
use esp_idf_part::{DataType, Flags, Partition, PartitionTable, SubType, Type};
use serde::Serialize;

/// Size of the flash sector that holds the table.
pub const TABLE_SIZE: u32 = 0x1000;
/// Default table offset (`CONFIG_PARTITION_TABLE_OFFSET`).
pub const DEFAULT_TABLE_OFFSET: u32 = 0x8000;

/// Parses a binary table read from flash (the whole 0x1000 sector is fine).
pub fn parse(bytes: &[u8]) -> Result<PartitionTable> {
    if bytes.iter().take(32).all(|b| *b == 0xFF) {
        bail!("partition table: the sector is erased (no table); flash a bootloader, table and app first, or check --partition-table-offset");
    }
    let usable = &bytes[..bytes.len() - bytes.len() % 32];
    for (i, line) in usable.chunks_exact(32).enumerate() {
        if line.iter().all(|b| *b == 0xFF) || line.starts_with(&[0xEB, 0xEB]) {
            break;
        }
        if line[..2] != [0xAA, 0x50] {
            bail!("partition table: entry {i} has no AA 50 magic; the table is corrupt or --partition-table-offset is wrong");
        }
        let (ty, sub, flags) = (
            line[2],
            line[3],
            u32::from_le_bytes(line[28..32].try_into().unwrap()),
        );
        let label = String::from_utf8_lossy(&line[12..28])
            .trim_end_matches('\0')
            .to_string();
        let known_sub = match ty {
            0x00 => sub == 0x00 || (0x10..=0x20).contains(&sub),
            0x01 => sub <= 0x06 || (0x80..=0x83).contains(&sub),
            _ => true,
        };
        if !known_sub {
            bail!("partition table: entry {i} ({label:?}) has type {ty:#04x} subtype {sub:#04x}, which this dpskit does not know (newer ESP-IDF?); inspect cannot read this table");
        }
        if flags & !0x3 != 0 {
            bail!("partition table: entry {i} ({label:?}) has unknown flag bits {flags:#x}");
        }
    }
    PartitionTable::try_from_bytes(usable.to_vec()).map_err(|e| {
        anyhow::anyhow!(
            "partition table: {e}; the table is corrupt or --partition-table-offset is wrong"
        )
    })
}

/// One partition, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionRow {
    pub name: String,
    pub kind: String,
    pub subtype: String,
    pub offset: u32,
    pub size: u32,
    pub encrypted: bool,
    pub readonly: bool,
}

pub fn rows(table: &PartitionTable) -> Vec<PartitionRow> {
    table
        .partitions()
        .iter()
        .map(|p| PartitionRow {
            name: p.name(),
            kind: p.ty().to_string(),
            subtype: p.subtype().to_string(),
            offset: p.offset(),
            size: p.size(),
            encrypted: p.flags().contains(Flags::ENCRYPTED),
            readonly: p.flags().contains(Flags::READONLY),
        })
        .collect()
}

/// Finds the config partition and checks it can take an image of `image_len` bytes.
pub fn config_partition<'t>(
    table: &'t PartitionTable,
    name: &str,
    image_len: Option<usize>,
) -> Result<&'t Partition> {
    let Some(p) = table.find(name) else {
        let names: Vec<String> = table.partitions().iter().map(|p| p.name()).collect();
        bail!(
            "--partition: no partition named {name:?} on this board (it has: {}); flash a table with a dedicated data/nvs partition (see templates/partitions.csv)",
            names.join(", ")
        );
    };
    if p.ty() != Type::Data || p.subtype() != SubType::Data(DataType::Nvs) {
        bail!(
            "--partition: {name:?} is {}/{}, not data/nvs; the firmware could not open it as NVS",
            p.ty(),
            p.subtype()
        );
    }
    if p.flags().contains(Flags::ENCRYPTED) {
        bail!("--partition: {name:?} is flagged encrypted; dpskit writes plain NVS images, which an encrypted partition would not read");
    }
    if let Some(len) = image_len {
        if (p.size() as usize) < len {
            bail!(
                "--partition: {name:?} is {:#x} bytes but the image is {len:#x}; rebuild the image with --size {:#x}",
                p.size(),
                p.size()
            );
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "nvs,data,nvs,0x9000,0x6000,\ndps_cfg,data,nvs,0xf000,0x6000,\nfactory,app,factory,0x20000,0x100000,\n";

    #[test]
    fn refuses_what_would_panic_the_parser() {
        let mut bin = PartitionTable::try_from_str(CSV).unwrap().to_bin().unwrap();
        bin[32 + 3] = 0x90; // dps_cfg becomes data/0x90 (tee_ota in new ESP-IDF)
        let e = parse(&bin).unwrap_err().to_string();
        assert!(e.contains("subtype 0x90"), "{e}");
        let mut bin = PartitionTable::try_from_str(CSV).unwrap().to_bin().unwrap();
        bin[28] = 0x04;
        assert!(parse(&bin).unwrap_err().to_string().contains("flag"));
        assert!(parse(&[0xFF; 0x1000])
            .unwrap_err()
            .to_string()
            .contains("erased"));
    }

    #[test]
    fn finds_and_checks_the_config_partition() {
        let bin = PartitionTable::try_from_str(CSV).unwrap().to_bin().unwrap();
        let mut sector = bin.clone();
        sector.resize(0x1000, 0xFF);
        let t = parse(&sector).unwrap();
        assert_eq!(
            config_partition(&t, "dps_cfg", Some(0x6000))
                .unwrap()
                .offset(),
            0xf000
        );
        assert!(config_partition(&t, "dps_cfg", Some(0x7000))
            .unwrap_err()
            .to_string()
            .contains("--size 0x6000"));
        assert!(config_partition(&t, "factory", None)
            .unwrap_err()
            .to_string()
            .contains("not data/nvs"));
        assert!(config_partition(&t, "nope", None)
            .unwrap_err()
            .to_string()
            .contains("it has: nvs, dps_cfg, factory"));
    }
}
