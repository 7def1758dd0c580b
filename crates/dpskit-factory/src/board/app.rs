//! Which firmware a board runs: otadata picks the slot, and the app image's `esp_app_desc_t`
//! (at offset 0x20 of the image) says what it is.

use esp_idf_part::{AppType, DataType, PartitionTable, SubType, Type};
use serde::Serialize;

/// Bytes to read at the start of an app partition: image header, segment header and the
/// descriptor up to `idf_ver` (the last field shown), rounded up to the ROM loader's 64-byte
/// reads: three round trips instead of five.
pub const DESCRIPTOR_READ_LEN: u32 = 0xC0;
/// What [`parse_descriptor`] needs of it.
const DESCRIPTOR_NEEDED: usize = 0x20 + desc::IDF_VER.end;
/// `esp_image_header_t.chip_id` of the ESP32-S3.
pub const ESP32S3_CHIP_ID: u16 = 0x0009;

/// The layout of `esp_app_desc_t` (ESP-IDF `esp_app_desc.h`): one copy for the reader here
/// and the virtual boards' image writer, so the two cannot drift apart.
pub mod desc {
    use std::ops::Range;

    /// `magic_word`.
    pub const MAGIC: u32 = 0xABCD_5432;
    pub const LEN: usize = 0x100;
    pub const MAGIC_WORD: Range<usize> = 0x00..0x04;
    pub const SECURE_VERSION: Range<usize> = 0x04..0x08;
    pub const VERSION: Range<usize> = 0x10..0x30;
    pub const PROJECT_NAME: Range<usize> = 0x30..0x50;
    pub const TIME: Range<usize> = 0x50..0x60;
    pub const DATE: Range<usize> = 0x60..0x70;
    pub const IDF_VER: Range<usize> = 0x70..0x90;
    pub const APP_ELF_SHA256: Range<usize> = 0x90..0xB0;
}

/// What a firmware image says it is: the fields of `esp_app_desc_t` a person needs, plus the
/// chip the image header names. One type for the reader here (`inspect`) and the virtual
/// boards' image writer ([`AppDescriptor::to_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppDescriptor {
    pub project_name: String,
    pub version: String,
    pub idf_ver: String,
    /// `__DATE__`-style, e.g. "Jan  1 2026".
    pub date: String,
    /// `__TIME__`-style, e.g. "00:00:00".
    pub time: String,
    pub secure_version: u32,
    /// `esp_image_header_t.chip_id` (9 = ESP32-S3).
    pub chip_id: u16,
}

/// The SPI flash settings in an app image's header (bytes 2 and 3 of `esp_image_header_t`):
/// what the bootloader configures the flash with before the app runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImageHeader {
    /// `spi_mode`: qio, qout, dio, dout (or fast_read / slow_read).
    pub flash_mode: &'static str,
    /// `spi_size`, in MB (`None`: a code no ESP-IDF uses).
    pub flash_size_mb: Option<u32>,
    /// `spi_speed`, in MHz (`None`: a code the ESP32-S3 does not use).
    pub flash_freq_mhz: Option<u32>,
}

impl ImageHeader {
    /// Decodes bytes 2 and 3 of an image (the caller checked the 0xE9 magic).
    pub fn parse(head: &[u8]) -> Option<ImageHeader> {
        let (mode, size_freq) = (*head.get(2)?, *head.get(3)?);
        Some(ImageHeader {
            flash_mode: match mode {
                0 => "qio",
                1 => "qout",
                2 => "dio",
                3 => "dout",
                4 => "fast_read",
                5 => "slow_read",
                _ => "unknown",
            },
            flash_size_mb: match size_freq >> 4 {
                n @ 0..=7 => Some(1 << n),
                _ => None,
            },
            flash_freq_mhz: match size_freq & 0x0F {
                0x0 => Some(40),
                0x1 => Some(26),
                0x2 => Some(20),
                0xF => Some(80),
                _ => None,
            },
        })
    }
}

/// The header of the image at the start of an app partition, when it is an image at all.
pub fn parse_header(bytes: &[u8]) -> Option<ImageHeader> {
    (bytes.first() == Some(&0xE9))
        .then(|| ImageHeader::parse(bytes))
        .flatten()
}

/// Parses the first [`DESCRIPTOR_READ_LEN`] bytes of an app partition.
pub fn parse_descriptor(bytes: &[u8]) -> Result<AppDescriptor, String> {
    if bytes.len() < DESCRIPTOR_NEEDED {
        return Err("app image: too short".into());
    }
    if bytes[0] == 0xFF && bytes[..32].iter().all(|b| *b == 0xFF) {
        return Err("app image: the partition is erased (no firmware)".into());
    }
    if bytes[0] != 0xE9 {
        return Err(format!(
            "app image: magic {:#04x}, expected 0xE9; not an ESP app image",
            bytes[0]
        ));
    }
    let chip_id = u16::from_le_bytes([bytes[12], bytes[13]]);
    let d = &bytes[0x20..DESCRIPTOR_NEEDED];
    let magic = u32::from_le_bytes(d[desc::MAGIC_WORD].try_into().unwrap());
    if magic != desc::MAGIC {
        return Err("app image: no esp_app_desc_t (magic 0xABCD5432 missing at +0x20); the firmware was built without an app descriptor".into());
    }
    let text = |r: std::ops::Range<usize>| {
        let raw = &d[r];
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    };
    Ok(AppDescriptor {
        secure_version: u32::from_le_bytes(d[desc::SECURE_VERSION].try_into().unwrap()),
        version: text(desc::VERSION),
        project_name: text(desc::PROJECT_NAME),
        time: text(desc::TIME),
        date: text(desc::DATE),
        idf_ver: text(desc::IDF_VER),
        chip_id,
    })
}

impl AppDescriptor {
    pub fn is_for_esp32s3(&self) -> bool {
        self.chip_id == ESP32S3_CHIP_ID
    }

    /// The 256-byte `esp_app_desc_t` for these fields (ELF hash and eFuse revision fields
    /// zero; the image writer fills in what it needs).
    pub fn to_bytes(&self) -> [u8; desc::LEN] {
        fn cstr(out: &mut [u8], s: &str) {
            let n = s.len().min(out.len() - 1);
            out[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        let mut out = [0u8; desc::LEN];
        out[desc::MAGIC_WORD].copy_from_slice(&desc::MAGIC.to_le_bytes());
        out[desc::SECURE_VERSION].copy_from_slice(&self.secure_version.to_le_bytes());
        cstr(&mut out[desc::VERSION], &self.version);
        cstr(&mut out[desc::PROJECT_NAME], &self.project_name);
        cstr(&mut out[desc::TIME], &self.time);
        cstr(&mut out[desc::DATE], &self.date);
        cstr(&mut out[desc::IDF_VER], &self.idf_ver);
        out
    }
}

/// Bytes of `esp_ota_select_entry_t` at the start of each otadata sector.
pub const OTA_ENTRY_LEN: u32 = 32;

/// The sequence number of one otadata select entry, if its CRC is valid.
pub fn otadata_seq(sector: &[u8]) -> Option<u32> {
    let seq = u32::from_le_bytes(sector.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(sector.get(28..32)?.try_into().ok()?);
    if seq == u32::MAX {
        return None;
    }
    let mut h = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
    h.update(&seq.to_le_bytes());
    (h.finalize() == crc).then_some(seq)
}

/// Which app partition boots: the OTA slot otadata selects, else `factory`, else the first app.
/// `otadata` holds the select entries at the start of otadata's two sectors, when there is one.
pub fn running_slot<E: AsRef<[u8]>>(
    table: &PartitionTable,
    otadata: Option<&[E; 2]>,
) -> Option<(String, u32)> {
    let apps: Vec<_> = table
        .partitions()
        .iter()
        .filter(|p| p.ty() == Type::App)
        .collect();
    let ota_slots: Vec<_> = apps
        .iter()
        .filter(|p| matches!(p.subtype(), SubType::App(t) if t != AppType::Factory && t != AppType::Test))
        .collect();
    if let Some(data) = otadata {
        let best = data.iter().filter_map(|e| otadata_seq(e.as_ref())).max();
        if let (Some(seq), false) = (best, ota_slots.is_empty()) {
            let p = ota_slots[((seq - 1) as usize) % ota_slots.len()];
            return Some((p.name(), p.offset()));
        }
    }
    apps.iter()
        .find(|p| p.subtype() == SubType::App(AppType::Factory))
        .or(apps.first())
        .map(|p| (p.name(), p.offset()))
}

/// The otadata partition (data/ota), if the table has one.
pub fn otadata_partition(table: &PartitionTable) -> Option<(u32, u32)> {
    table
        .find_by_subtype(Type::Data, SubType::Data(DataType::Ota))
        .map(|p| (p.offset(), p.size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(project: &str, version: &str) -> Vec<u8> {
        let mut b = vec![0u8; DESCRIPTOR_READ_LEN as usize];
        b[0] = 0xE9;
        b[12] = 9;
        b[0x20..0x24].copy_from_slice(&desc::MAGIC.to_le_bytes());
        b[0x24] = 3;
        b[0x30..0x30 + version.len()].copy_from_slice(version.as_bytes());
        b[0x50..0x50 + project.len()].copy_from_slice(project.as_bytes());
        b[0x90..0x95].copy_from_slice(b"v5.3.");
        b
    }

    #[test]
    fn descriptor() {
        let d = parse_descriptor(&image("dpskit-firmware", "0.1.0")).unwrap();
        assert_eq!(
            (
                d.project_name.as_str(),
                d.version.as_str(),
                d.secure_version
            ),
            ("dpskit-firmware", "0.1.0", 3)
        );
        assert!(d.is_for_esp32s3());
        assert!(parse_descriptor(&[0xFF; 0x120])
            .unwrap_err()
            .contains("erased"));
        let mut no_desc = image("x", "1");
        no_desc[0x20] = 0;
        assert!(parse_descriptor(&no_desc)
            .unwrap_err()
            .contains("esp_app_desc_t"));
    }

    #[test]
    fn descriptor_round_trips_and_header_decodes() {
        let d = AppDescriptor {
            project_name: "p".into(),
            version: "1.2.3".into(),
            idf_ver: "v5.5.1".into(),
            date: "Jan  1 2026".into(),
            time: "00:00:00".into(),
            secure_version: 2,
            chip_id: 9,
        };
        let mut img = vec![0xE9, 1, 3, 0x5F, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0];
        img.resize(0x20, 0);
        img.extend_from_slice(&d.to_bytes());
        assert_eq!(parse_descriptor(&img).unwrap(), d);
        let h = parse_header(&img).unwrap();
        assert_eq!(
            (h.flash_mode, h.flash_size_mb, h.flash_freq_mhz),
            ("dout", Some(32), Some(80))
        );
        assert_eq!(parse_header(&[0xFF; 4]), None);
    }

    #[test]
    fn otadata_picks_the_slot() {
        let csv = "otadata,data,ota,0xd000,0x2000,\nota_0,app,ota_0,0x10000,0x100000,\nota_1,app,ota_1,0x110000,0x100000,\n";
        let t = PartitionTable::try_from_str(csv).unwrap();
        let mut od = [vec![0xFFu8; 32], vec![0xFFu8; 32]];
        assert_eq!(running_slot(&t, Some(&od)).unwrap().0, "ota_0");
        let seq = 2u32;
        let mut h = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
        h.update(&seq.to_le_bytes());
        od[1][..4].copy_from_slice(&seq.to_le_bytes());
        od[1][28..32].copy_from_slice(&h.finalize().to_le_bytes());
        assert_eq!(
            running_slot(&t, Some(&od)).unwrap(),
            ("ota_1".into(), 0x110000)
        );
        od[1][28] ^= 1;
        assert_eq!(running_slot(&t, Some(&od)).unwrap().0, "ota_0");
    }
}
