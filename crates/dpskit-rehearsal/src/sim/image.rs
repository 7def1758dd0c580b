//! The flash content a virtual board ships with: a second-stage bootloader image at 0x0, a
//! partition table at 0x8000 (generated with esp-idf-part from a CSV), an app image with a valid
//! `esp_image_header_t` and `esp_app_desc_t` (reference §4), optionally otadata selecting an OTA
//! slot, and an erased (0xFF) `dps_cfg` partition.

use anyhow::{bail, Context, Result};
use dpskit_factory::board::app::desc;
use esp_idf_part::{AppType, DataType, Partition, PartitionTable, SubType, Type};
use sha2::{Digest, Sha256};

/// Default partition-table location (`CONFIG_PARTITION_TABLE_OFFSET`).
pub const PARTITION_TABLE_OFFSET: u32 = 0x8000;

/// The partition layout the virtual boards use unless a CSV is given: the product's own
/// `templates/partitions.csv` (nvs, otadata, phy_init, the dedicated `dps_cfg` NVS partition and
/// two OTA app slots), so a virtual board is laid out like a provisioned one.
pub const DEFAULT_PARTITIONS_CSV: &str = dpskit_factory::station::templates::PARTITIONS_CSV;

/// Version of the older build the [`Layout::Ota`] layout leaves in another app partition.
pub const PREVIOUS_VERSION: &str = "0.0.0-previous";

/// ESP32-S3 image chip ID.
pub const IMAGE_CHIP_ID_ESP32S3: u16 = 9;
/// `esp_app_desc_t.magic_word`.
pub const APP_DESC_MAGIC: u32 = desc::MAGIC;
/// `esp_image_header_t.magic`.
pub const IMAGE_MAGIC: u8 = 0xE9;

pub use dpskit_factory::board::app::AppDescriptor;

/// The firmware a virtual board carries unless told otherwise: dpskit's own, for the S3.
pub fn default_app() -> AppDescriptor {
    AppDescriptor {
        project_name: "dpskit-firmware".into(),
        version: "0.1.0".into(),
        idf_ver: "v5.5.1".into(),
        // Fixed, so images are reproducible.
        date: "Jan  1 2026".into(),
        time: "00:00:00".into(),
        secure_version: 0,
        chip_id: IMAGE_CHIP_ID_ESP32S3,
    }
}

/// Which app the board boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A board fresh from serial flashing: the app is in `factory`, or — in a table without
    /// one, like the product's — in the first app partition (`ota_0`); otadata is erased, so
    /// the bootloader picks exactly that partition.
    Factory,
    /// The app is in `ota_<slot>` and otadata selects it; the first other app partition holds
    /// an older build (version [`PREVIOUS_VERSION`]), so a reader that ignores otadata gets a
    /// visibly wrong answer.
    Ota { slot: u8 },
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.to_ascii_lowercase();
        if t == "factory" {
            return Ok(Layout::Factory);
        }
        if let Some(n) = t
            .strip_prefix("ota")
            .map(|r| r.trim_start_matches(['_', '-']))
        {
            if let Ok(slot) = n.parse::<u8>() {
                if slot < 16 {
                    return Ok(Layout::Ota { slot });
                }
            }
        }
        Err(format!("unknown layout {s:?}: use factory, ota0 or ota1"))
    }
}

/// Everything needed to build a board's initial flash content.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Flash size in bytes.
    pub flash_size: u32,
    /// Partition table CSV; `None` = [`DEFAULT_PARTITIONS_CSV`].
    pub partitions_csv: Option<String>,
    pub layout: Layout,
    pub app: AppDescriptor,
    /// `spi_mode` in the app image headers.
    pub flash_mode: ImageFlashMode,
    /// `spi_size` in the app image headers; `None`: the flash's own size. A different value
    /// is a firmware built for another board.
    pub header_flash_size: Option<u32>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            flash_size: 4 << 20,
            partitions_csv: None,
            layout: Layout::Factory,
            app: default_app(),
            flash_mode: ImageFlashMode::Dio,
            header_flash_size: None,
        }
    }
}

/// `esp_image_header_t.spi_mode`: how the bootloader drives the flash. ESP-IDF builds for
/// octal flash say `dout` (the ROM switches to octal itself, from the eFuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFlashMode {
    Qio,
    Qout,
    Dio,
    Dout,
}

impl ImageFlashMode {
    /// The header byte.
    pub fn code(self) -> u8 {
        match self {
            ImageFlashMode::Qio => 0,
            ImageFlashMode::Qout => 1,
            ImageFlashMode::Dio => 2,
            ImageFlashMode::Dout => 3,
        }
    }
}

impl std::str::FromStr for ImageFlashMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "qio" => Ok(ImageFlashMode::Qio),
            "qout" => Ok(ImageFlashMode::Qout),
            "dio" => Ok(ImageFlashMode::Dio),
            "dout" => Ok(ImageFlashMode::Dout),
            _ => Err(format!(
                "unknown flash mode {s:?}: use qio, qout, dio or dout"
            )),
        }
    }
}

/// The SPI flash fields of an image header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFlash {
    pub mode: ImageFlashMode,
    /// `spi_size` nibble ([`flash_size_code`]).
    pub size_code: u8,
}

/// Where the interesting partitions ended up, for printing and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayout {
    pub partition_table_offset: u32,
    /// (offset, size) of `dps_cfg`, if the table has it.
    pub dps_cfg: Option<(u32, u32)>,
    /// (offset, size) of the otadata partition, if any.
    pub otadata: Option<(u32, u32)>,
    /// Offset of the app the bootloader would run.
    pub running_app: u32,
}

/// Builds the initial flash content (up to the last byte that is not 0xFF).
pub fn build_flash_image(spec: &ImageSpec) -> Result<(Vec<u8>, ImageLayout)> {
    let csv = spec
        .partitions_csv
        .as_deref()
        .unwrap_or(DEFAULT_PARTITIONS_CSV);
    let table = PartitionTable::try_from_str(csv)
        .map_err(|e| anyhow::anyhow!("partition table CSV: {e}"))?;
    let table_bin = table
        .to_bin()
        .map_err(|e| anyhow::anyhow!("partition table: {e}"))?;

    for p in table.partitions() {
        if u64::from(p.offset()) + u64::from(p.size()) > u64::from(spec.flash_size) {
            bail!(
                "partition {:?} ends at {:#x}, beyond the {} MB flash: use a larger --flash-size or a smaller table",
                p.name(),
                p.offset() + p.size(),
                spec.flash_size >> 20
            );
        }
    }

    let size_code = flash_size_code(spec.flash_size)?;
    let app_flash = HeaderFlash {
        mode: spec.flash_mode,
        size_code: flash_size_code(spec.header_flash_size.unwrap_or(spec.flash_size))?,
    };
    let mut img = vec![0xFFu8; spec.flash_size as usize];
    let mut put =
        |offset: u32, bytes: &[u8]| img[offset as usize..][..bytes.len()].copy_from_slice(bytes);

    put(
        0,
        &build_bootloader_image(HeaderFlash {
            mode: spec.flash_mode,
            size_code,
        }),
    );
    put(PARTITION_TABLE_OFFSET, &table_bin);

    let factory = table
        .find_by_subtype(Type::App, SubType::App(AppType::Factory))
        .or_else(|| table.find_by_type(Type::App))
        .context("the partition table has no app partition")?;
    let otadata = table.find_by_subtype(Type::Data, SubType::Data(DataType::Ota));
    // OTA app slots in slot order (subtypes ota_0 = 0x10 .. ota_15 = 0x1F).
    let mut ota_slots: Vec<(u8, &Partition)> = table
        .partitions()
        .iter()
        .filter_map(|p| match p.subtype() {
            SubType::App(t) if (0x10..0x20).contains(&(t as u8)) => Some((t as u8 - 0x10, p)),
            _ => None,
        })
        .collect();
    ota_slots.sort_by_key(|(n, _)| *n);

    let running_app = match spec.layout {
        Layout::Factory => {
            put(factory.offset(), &build_app_image(&spec.app, app_flash));
            factory.offset()
        }
        Layout::Ota { slot } => {
            let target = ota_slots
                .iter()
                .find(|(n, _)| *n == slot)
                .map(|(_, p)| *p)
                .with_context(|| {
                    format!("layout ota{slot}: the partition table has no ota_{slot} app partition")
                })?;
            let otadata =
                otadata.context("layout ota: the partition table has no otadata partition")?;
            if otadata.size() < 2 * 0x1000 {
                bail!("layout ota: otadata must be at least 0x2000 bytes");
            }
            let older = AppDescriptor {
                version: PREVIOUS_VERSION.into(),
                ..spec.app.clone()
            };
            if let Some(other) = table
                .partitions()
                .iter()
                .find(|p| p.ty() == Type::App && p.offset() != target.offset())
            {
                put(other.offset(), &build_app_image(&older, app_flash));
            }
            put(target.offset(), &build_app_image(&spec.app, app_flash));
            // Bootloader rule: slot = (seq - 1) % number_of_ota_slots.
            let seq = u32::from(slot) + 1;
            put(otadata.offset(), &otadata_entry(seq));
            target.offset()
        }
    };

    let layout = ImageLayout {
        partition_table_offset: PARTITION_TABLE_OFFSET,
        dps_cfg: table.find("dps_cfg").map(|p| (p.offset(), p.size())),
        otadata: otadata.map(|p| (p.offset(), p.size())),
        running_app,
    };

    let used = img.iter().rposition(|&b| b != 0xFF).map_or(0, |i| i + 1);
    img.truncate(used);
    Ok((img, layout))
}

/// `esp_image_header_t.spi_size` nibble for a flash size.
pub fn flash_size_code(size: u32) -> Result<u8> {
    Ok(match size >> 20 {
        1 => 0,
        2 => 1,
        4 => 2,
        8 => 3,
        16 => 4,
        32 => 5,
        64 => 6,
        128 => 7,
        _ => bail!("flash size {size:#x} is not 1, 2, 4, 8, 16, 32, 64 or 128 MB"),
    })
}

/// The 32-byte `esp_ota_select_entry_t` with the CRC the bootloader checks.
pub fn otadata_entry(seq: u32) -> [u8; 32] {
    let mut e = [0xFFu8; 32];
    e[0..4].copy_from_slice(&seq.to_le_bytes());
    // seq_label[20] stays 0xFF; ota_state = ESP_OTA_IMG_UNDEFINED (no rollback).
    let mut h = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
    h.update(&seq.to_le_bytes());
    e[28..32].copy_from_slice(&h.finalize().to_le_bytes());
    e
}

/// The 256-byte `esp_app_desc_t`: the descriptor's own fields, plus a stand-in ELF hash
/// derived from the identity (so builds differ) and the eFuse revision range.
pub fn app_desc_bytes(d: &AppDescriptor) -> [u8; desc::LEN] {
    let mut out = d.to_bytes();
    let elf = Sha256::digest(format!("{}\0{}\0{}", d.project_name, d.version, d.idf_ver));
    out[desc::APP_ELF_SHA256].copy_from_slice(&elf);
    out[0xB0..0xB2].copy_from_slice(&0u16.to_le_bytes()); // min_efuse_blk_rev_full
    out[0xB2..0xB4].copy_from_slice(&199u16.to_le_bytes()); // max_efuse_blk_rev_full
    out[0xB4] = 16; // mmu_page_size: log2(64 KiB)
    out
}

/// An image (header, segments, checksum, appended SHA-256) in the format of esptool's
/// firmware-image-format document.
fn build_image(
    segments: &[(u32, Vec<u8>)],
    entry: u32,
    flash: HeaderFlash,
    chip_id: u16,
) -> Vec<u8> {
    let mut img = vec![
        IMAGE_MAGIC,
        segments.len() as u8,
        flash.mode.code(),    // spi_mode
        flash.size_code << 4, // spi_size | spi_speed 0 (40 MHz)
    ];
    img.extend_from_slice(&entry.to_le_bytes());
    img.push(0xEE); // wp_pin: disabled
    img.extend_from_slice(&[0, 0, 0]); // spi_pin_drv
    img.extend_from_slice(&chip_id.to_le_bytes());
    img.push(0); // min_chip_rev (legacy)
    img.extend_from_slice(&0u16.to_le_bytes()); // min_chip_rev_full v0.0
    img.extend_from_slice(&99u16.to_le_bytes()); // max_chip_rev_full v0.99
    img.extend_from_slice(&[0; 4]); // reserved
    img.push(1); // hash_appended
    debug_assert_eq!(img.len(), 24);

    let mut checksum = 0xEFu8;
    for (addr, data) in segments {
        img.extend_from_slice(&addr.to_le_bytes());
        img.extend_from_slice(&(data.len() as u32).to_le_bytes());
        img.extend_from_slice(data);
        checksum = data.iter().fold(checksum, |c, b| c ^ b);
    }
    // Zero padding so that the checksum byte is the last of a 16-byte line.
    while img.len() % 16 != 15 {
        img.push(0);
    }
    img.push(checksum);
    let digest = Sha256::digest(&img);
    img.extend_from_slice(&digest);
    img
}

/// Deterministic filler bytes standing in for code, so different builds have different MD5s.
fn filler(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(seed.as_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// An app image: DROM segment starting with `esp_app_desc_t` (so it lands at +0x20), then an
/// IRAM segment holding the entry point.
pub fn build_app_image(d: &AppDescriptor, flash: HeaderFlash) -> Vec<u8> {
    let mut drom = app_desc_bytes(d).to_vec();
    drom.extend(filler(
        &format!("rodata {} {}", d.project_name, d.version),
        0x300,
    ));
    let iram = filler(&format!("text {} {}", d.project_name, d.version), 0x800);
    build_image(
        &[(0x3C02_0020, drom), (0x4037_4000, iram)],
        0x4037_4100,
        flash,
        d.chip_id,
    )
}

/// A small second-stage bootloader image (header, one IRAM and one DRAM segment).
pub fn build_bootloader_image(flash: HeaderFlash) -> Vec<u8> {
    build_image(
        &[
            (0x3FCE_3700, filler("bootloader dram", 0x200)),
            (0x403C_9000, filler("bootloader iram", 0x600)),
        ],
        0x403C_9900,
        flash,
        IMAGE_CHIP_ID_ESP32S3,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn crc_matches_reference_check_value() {
        let mut h = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
        h.update(b"123456789");
        assert_eq!(h.finalize(), 0xD202_D277);
    }

    #[test]
    fn default_image_uses_the_product_table() {
        let (img, layout) = build_flash_image(&ImageSpec::default()).unwrap();
        let t = PartitionTable::try_from_bytes(&img[0x8000..0x9000]).unwrap();
        let csv = PartitionTable::try_from_str(DEFAULT_PARTITIONS_CSV).unwrap();
        assert_eq!(t, csv, "binary table == templates/partitions.csv");
        let dps = t.find("dps_cfg").unwrap();
        assert_eq!(dps.subtype(), SubType::Data(DataType::Nvs));
        assert_eq!(dps.size(), 0x6000);
        assert_eq!(layout.dps_cfg, Some((dps.offset(), dps.size())));
        let dps_range = dps.offset() as usize..(dps.offset() + dps.size()) as usize;
        assert!(img.len() <= dps_range.start || img[dps_range].iter().all(|&b| b == 0xFF));
        // MD5 line right after the entries.
        let n = t.partitions().len();
        assert_eq!(&img[0x8000 + n * 32..][..2], &[0xEB, 0xEB]);

        // No factory partition in the product table: the app sits in the first app slot.
        let first_app = t.find_by_type(Type::App).unwrap().offset();
        assert_eq!(layout.running_app, first_app);
        let app = &img[first_app as usize..];
        assert_eq!(app[0], 0xE9);
        assert_eq!(u16::from_le_bytes([app[12], app[13]]), 9);
        assert_eq!(app[3] >> 4, 2, "4 MB size code");
        assert_eq!(u32_at(app, 0x20), APP_DESC_MAGIC);
        assert_eq!(&app[0x50..0x5F], b"dpskit-firmware");
        assert_eq!(&app[0x30..0x35], b"0.1.0");
        assert_eq!(&app[0x90..0x96], b"v5.5.1");
        // otadata erased: the bootloader takes the first app partition.
        let (ota_off, ota_size) = layout.otadata.unwrap();
        assert!(img[ota_off as usize..][..ota_size as usize]
            .iter()
            .all(|&b| b == 0xFF));
    }

    #[test]
    fn factory_partition_is_used_when_the_table_has_one() {
        let csv = "nvs,data,nvs,0x9000,0x6000,\nfactory,app,factory,0x10000,0x100000,\nota_0,app,ota_0,0x110000,0x100000,\n";
        let spec = ImageSpec {
            partitions_csv: Some(csv.into()),
            ..Default::default()
        };
        let (img, layout) = build_flash_image(&spec).unwrap();
        assert_eq!(layout.running_app, 0x10000);
        assert_eq!(img[0x10000], 0xE9);
        assert_eq!(layout.dps_cfg, None);
        assert_eq!(layout.otadata, None);
    }

    #[test]
    fn image_checksum_and_hash_are_valid() {
        let img = build_app_image(
            &default_app(),
            HeaderFlash {
                mode: ImageFlashMode::Dio,
                size_code: 2,
            },
        );
        let nseg = img[1] as usize;
        let mut pos = 24;
        let mut chk = 0xEFu8;
        for _ in 0..nseg {
            let len = u32_at(&img, pos + 4) as usize;
            chk = img[pos + 8..pos + 8 + len].iter().fold(chk, |c, b| c ^ b);
            pos += 8 + len;
        }
        while pos % 16 != 15 {
            assert_eq!(img[pos], 0);
            pos += 1;
        }
        assert_eq!(img[pos], chk);
        let digest = Sha256::digest(&img[..pos + 1]);
        assert_eq!(&img[pos + 1..], digest.as_slice());
    }

    #[test]
    fn ota_layout_selects_slot_with_valid_crc() {
        let spec = ImageSpec {
            layout: Layout::Ota { slot: 1 },
            app: AppDescriptor {
                version: "2.3.4".into(),
                ..default_app()
            },
            ..Default::default()
        };
        let (img, layout) = build_flash_image(&spec).unwrap();
        let t = PartitionTable::try_from_str(DEFAULT_PARTITIONS_CSV).unwrap();
        let ota0 = t.find("ota_0").unwrap().offset() as usize;
        let ota1 = t.find("ota_1").unwrap().offset() as usize;
        assert_eq!(layout.running_app as usize, ota1);
        let (ota_off, _) = layout.otadata.unwrap();
        let e = &img[ota_off as usize..][..32];
        let seq = u32_at(e, 0);
        assert_eq!(seq, 2, "(2 - 1) % 2 slots = ota_1");
        let mut h = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
        h.update(&seq.to_le_bytes());
        assert_eq!(u32_at(e, 28), h.finalize());
        assert!(img[ota_off as usize + 0x1000..][..32]
            .iter()
            .all(|&b| b == 0xFF));
        assert_eq!(&img[ota1 + 0x30..][..5], b"2.3.4");
        assert_eq!(
            &img[ota0 + 0x30..][..PREVIOUS_VERSION.len()],
            PREVIOUS_VERSION.as_bytes()
        );
    }

    #[test]
    fn rejects_tables_that_do_not_fit() {
        let spec = ImageSpec {
            flash_size: 2 << 20,
            ..Default::default()
        };
        let err = build_flash_image(&spec).unwrap_err().to_string();
        assert!(err.contains("beyond the 2 MB flash"), "{err}");
        assert!("ota9x".parse::<Layout>().is_err());
        assert_eq!("ota_0".parse::<Layout>().unwrap(), Layout::Ota { slot: 0 });
    }
}
