//! Reading a board's partition table safely and finding the config partition in it.
//!
//! esp-idf-part panics (instead of returning an error) on subtypes or flag bits it does not
//! know, and its overlap check adds offset and size in 32 bits, so every entry is checked here
//! first and anything it could trip on becomes a plain [`PartitionError`].

use super::error::PartitionError;
use esp_idf_part::{DataType, Flags, Partition, PartitionTable, SubType, Type};
use serde::Serialize;

/// Size of the flash sector that holds the table.
pub const TABLE_SIZE: u32 = 0x1000;
/// Default table offset (`CONFIG_PARTITION_TABLE_OFFSET`).
pub const DEFAULT_TABLE_OFFSET: u32 = 0x8000;
/// One table entry (and the MD5 line, and the end marker) is 32 bytes.
pub const ENTRY_LEN: usize = 32;

/// True once `bytes` (read from the table's start) hold the whole table: an end marker, or
/// a line that is neither an entry nor the MD5 line (which [`parse`] then reports). Lets a
/// reader stop after the few hundred bytes a table takes instead of reading the 4 KB sector.
pub fn is_complete(bytes: &[u8]) -> bool {
    bytes.chunks_exact(ENTRY_LEN).any(|line| {
        line.iter().all(|b| *b == 0xFF) || (line[..2] != [0xAA, 0x50] && line[..2] != [0xEB, 0xEB])
    })
}

/// Parses a binary table read from flash: the whole 0x1000 sector, or its start up to and
/// including the end marker (see [`is_complete`]).
pub fn parse(bytes: &[u8]) -> Result<PartitionTable, PartitionError> {
    if bytes.iter().take(ENTRY_LEN).all(|b| *b == 0xFF) {
        return Err(PartitionError::Erased);
    }
    let usable = &bytes[..bytes.len() - bytes.len() % ENTRY_LEN];
    for (i, line) in usable.chunks_exact(ENTRY_LEN).enumerate() {
        if line.iter().all(|b| *b == 0xFF) || line.starts_with(&[0xEB, 0xEB]) {
            break;
        }
        if line[..2] != [0xAA, 0x50] {
            return Err(PartitionError::NoMagic { entry: i });
        }
        let word = |at: usize| u32::from_le_bytes(line[at..at + 4].try_into().expect("4 bytes"));
        let (ty, sub, offset, size, flags) = (line[2], line[3], word(4), word(8), word(28));
        let label = String::from_utf8_lossy(&line[12..28])
            .trim_end_matches('\0')
            .to_string();
        let known_sub = match ty {
            0x00 => sub == 0x00 || (0x10..=0x20).contains(&sub),
            0x01 => sub <= 0x06 || (0x80..=0x83).contains(&sub),
            _ => true,
        };
        if !known_sub {
            return Err(PartitionError::UnknownSubtype {
                entry: i,
                label,
                ty,
                subtype: sub,
            });
        }
        if flags & !0x3 != 0 {
            return Err(PartitionError::UnknownFlags {
                entry: i,
                label,
                flags,
            });
        }
        // esp-idf-part adds these in u32: past 4 GiB it would wrap (release) or panic (debug).
        if u64::from(offset) + u64::from(size) > 1 << 32 {
            return Err(PartitionError::OutOfRange {
                entry: i,
                label,
                offset,
                size,
                limit: "4 GiB".into(),
            });
        }
    }
    PartitionTable::try_from_bytes(usable.to_vec())
        .map_err(|e| PartitionError::Corrupt(e.to_string()))
}

/// Checks that every partition lies inside a flash of `flash_size` bytes, so no size a board
/// reports is ever used (read, hashed, allocated) beyond the chip that holds it.
pub fn check_fits(table: &PartitionTable, flash_size: u32) -> Result<(), PartitionError> {
    for (i, p) in table.partitions().iter().enumerate() {
        if u64::from(p.offset()) + u64::from(p.size()) > u64::from(flash_size) {
            return Err(PartitionError::OutOfRange {
                entry: i,
                label: p.name(),
                offset: p.offset(),
                size: p.size(),
                limit: format!("the {} MB flash", flash_size >> 20),
            });
        }
    }
    Ok(())
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
) -> Result<&'t Partition, PartitionError> {
    let Some(p) = table.find(name) else {
        let names: Vec<String> = table.partitions().iter().map(|p| p.name()).collect();
        return Err(PartitionError::NotFound {
            name: name.into(),
            have: names.join(", "),
        });
    };
    if p.ty() != Type::Data || p.subtype() != SubType::Data(DataType::Nvs) {
        return Err(PartitionError::NotNvs {
            name: name.into(),
            kind: p.ty().to_string(),
            subtype: p.subtype().to_string(),
        });
    }
    if p.flags().contains(Flags::ENCRYPTED) {
        return Err(PartitionError::Encrypted { name: name.into() });
    }
    if let Some(len) = image_len {
        if (p.size() as usize) < len {
            return Err(config_partition_too_small(name, p.size(), len));
        }
    }
    Ok(p)
}

/// The config partition cannot take an image of `image` bytes.
pub fn config_partition_too_small(name: &str, size: u32, image: usize) -> PartitionError {
    PartitionError::TooSmall {
        name: name.into(),
        size,
        image,
    }
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
    fn a_table_past_4_gib_is_refused_before_esp_idf_part_sees_it() {
        let mut bin = PartitionTable::try_from_str(CSV).unwrap().to_bin().unwrap();
        // dps_cfg at 0xfffff000 with size 0x6000: offset + size wraps a u32.
        bin[32 + 4..32 + 8].copy_from_slice(&0xFFFF_F000u32.to_le_bytes());
        let e = parse(&bin).unwrap_err();
        assert!(
            matches!(e, PartitionError::OutOfRange { entry: 1, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("4 GiB"), "{e}");
        // Inside 4 GiB but beyond the board's flash: refused against the JEDEC size.
        let csv = "nvs,data,nvs,0x9000,0x6000,\ndps_cfg,data,nvs,0x3ff000,0x6000,\nfactory,app,factory,0x20000,0x100000,\n";
        let t = PartitionTable::try_from_str(csv).unwrap();
        let e = check_fits(&t, 4 << 20).unwrap_err().to_string();
        assert!(e.contains("dps_cfg") && e.contains("4 MB flash"), "{e}");
        assert!(check_fits(&t, 8 << 20).is_ok());
    }

    #[test]
    fn a_table_is_complete_once_its_end_marker_is_read() {
        let bin = PartitionTable::try_from_str(CSV).unwrap().to_bin().unwrap();
        // 3 entries, the MD5 line, then the end marker at 128.
        assert!(!is_complete(&bin[..128]));
        assert!(is_complete(&bin[..192]));
        let t = parse(&bin[..192]).unwrap();
        assert_eq!(t.partitions().len(), 3);
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
