//! A complete flash image for one board: ESP-IDF's second-stage bootloader, the partition
//! table, the app made from a firmware ELF, and the board's config image in its partition —
//! what contract manufacturers program into chips before assembly, and what Espressif's QEMU
//! boots.
//!
//! The app image and the bootloader come from espflash's library (the bootloaders ship with
//! it, one per chip; their headers get the flash mode and size asked for), so the image is what
//! `espflash flash` would put on the chip; dpskit adds the config partition and checks that
//! everything fits before a byte is written.

use crate::blob::nvs;
use esp_idf_part::{DataType, PartitionTable, SubType, Type};
use espflash::flasher::{FlashData, FlashFrequency, FlashMode, FlashSettings, FlashSize};
use espflash::image_format::idf::IdfBootloaderFormat;
use espflash::target::{Chip, XtalFrequency};
use std::io::Write as _;

/// The partition the config image goes to unless told otherwise.
pub const CONFIG_PARTITION: &str = "dps_cfg";

/// What to put together.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub chip: Chip,
    /// The firmware ELF (must carry an ESP-IDF app descriptor, as dpskit's does).
    pub firmware_elf: &'a [u8],
    /// The partition table, as ESP-IDF's CSV.
    pub partition_table_csv: &'a str,
    /// The board's config image (`dpskit config build`); `None` leaves the partition erased.
    pub config_image: Option<&'a [u8]>,
    pub config_partition: &'a str,
    pub flash_size: FlashSize,
    /// `dio` for quad flash; `dout` for octal flash (ESP-IDF marks OPI images so, and the
    /// ROM switches to octal from the eFuse).
    pub flash_mode: FlashMode,
}

/// Why no image was made; `Display` names the input and the fix.
#[derive(Debug, thiserror::Error)]
pub enum FlashImageError {
    #[error("partition table: {0}")]
    PartitionTable(String),
    #[error("partition table: no {name} partition (type data, subtype nvs); add one, as in templates/partitions.csv")]
    NoConfigPartition { name: String },
    #[error("partition table: {name} must be type data, subtype nvs, not encrypted")]
    ConfigPartitionKind { name: String },
    #[error("config image: {len} bytes do not fit the {name} partition ({size} bytes); build it with `dpskit config build --size {size:#x}`")]
    ConfigTooLarge { name: String, len: usize, size: u32 },
    #[error("config image: {0}; build it with `dpskit config build`")]
    ConfigInvalid(String),
    #[error("firmware: {0}")]
    Firmware(String),
    #[error("the partition table ends at {end:#x}, beyond the {size:#x}-byte flash; give --flash-size to match the board")]
    DoesNotFit { end: u64, size: u32 },
}

/// The image, and where each part went.
#[derive(Debug, Clone)]
pub struct FlashImage {
    /// Exactly the flash size, erased bytes (0xFF) where nothing goes.
    pub bytes: Vec<u8>,
    /// (what, offset, length), in flash order.
    pub parts: Vec<(String, u32, usize)>,
}

/// The chips dpskit's firmware builds for: `esp32s3` (the product), `esp32c3`, `esp32c6`.
pub fn parse_chip(text: &str) -> Option<Chip> {
    Some(match text.to_ascii_lowercase().as_str() {
        "esp32s3" => Chip::Esp32s3,
        "esp32c3" => Chip::Esp32c3,
        "esp32c6" => Chip::Esp32c6,
        _ => return None,
    })
}

/// `2MB`, `4mb`, … `128MB`.
pub fn parse_flash_size(text: &str) -> Option<FlashSize> {
    Some(match text.to_ascii_uppercase().trim_end_matches('B') {
        "1M" => FlashSize::_1Mb,
        "2M" => FlashSize::_2Mb,
        "4M" => FlashSize::_4Mb,
        "8M" => FlashSize::_8Mb,
        "16M" => FlashSize::_16Mb,
        "32M" => FlashSize::_32Mb,
        "64M" => FlashSize::_64Mb,
        "128M" => FlashSize::_128Mb,
        _ => return None,
    })
}

/// `qio`, `qout`, `dio`, `dout`.
pub fn parse_flash_mode(text: &str) -> Option<FlashMode> {
    Some(match text.to_ascii_lowercase().as_str() {
        "qio" => FlashMode::Qio,
        "qout" => FlashMode::Qout,
        "dio" => FlashMode::Dio,
        "dout" => FlashMode::Dout,
        _ => return None,
    })
}

/// Puts the image together, or says what is wrong; nothing is written anywhere.
pub fn build(spec: &Spec<'_>) -> Result<FlashImage, FlashImageError> {
    let table = PartitionTable::try_from_str(spec.partition_table_csv)
        .map_err(|e| FlashImageError::PartitionTable(e.to_string()))?;
    let size = spec.flash_size.size();
    let end = table
        .partitions()
        .iter()
        .map(|p| u64::from(p.offset()) + u64::from(p.size()))
        .max()
        .unwrap_or(0);
    if end > u64::from(size) {
        return Err(FlashImageError::DoesNotFit { end, size });
    }
    let config =
        table
            .find(spec.config_partition)
            .ok_or_else(|| FlashImageError::NoConfigPartition {
                name: spec.config_partition.into(),
            })?;
    if config.ty() != Type::Data
        || config.subtype() != SubType::Data(DataType::Nvs)
        || config.flags().contains(esp_idf_part::Flags::ENCRYPTED)
    {
        return Err(FlashImageError::ConfigPartitionKind {
            name: spec.config_partition.into(),
        });
    }
    if let Some(image) = spec.config_image {
        if image.len() > config.size() as usize {
            return Err(FlashImageError::ConfigTooLarge {
                name: spec.config_partition.into(),
                len: image.len(),
                size: config.size(),
            });
        }
        nvs::decode_image(image).map_err(|e| FlashImageError::ConfigInvalid(e.to_string()))?;
    }

    // espflash reads the table from a file.
    let mut table_file = tempfile::NamedTempFile::new()
        .map_err(|e| FlashImageError::PartitionTable(format!("temporary file: {e}")))?;
    let table_bin = table
        .to_bin()
        .map_err(|e| FlashImageError::PartitionTable(e.to_string()))?;
    table_file
        .write_all(&table_bin)
        .map_err(|e| FlashImageError::PartitionTable(format!("temporary file: {e}")))?;
    let settings = FlashSettings::new(
        Some(spec.flash_mode),
        Some(spec.flash_size),
        Some(FlashFrequency::_80Mhz),
    );
    let data = FlashData::new(settings, 0, None, spec.chip, XtalFrequency::_40Mhz);
    let format = IdfBootloaderFormat::new(
        spec.firmware_elf,
        &data,
        Some(table_file.path()),
        None,
        None,
        None,
    )
    .map_err(|e| FlashImageError::Firmware(e.to_string()))?;

    let mut bytes = vec![0xFF; size as usize];
    let mut parts = Vec::new();
    let names = ["bootloader", "partition table", "app"];
    for (i, segment) in format.flash_segments().enumerate() {
        let at = segment.addr as usize;
        let data = &segment.data;
        if at + data.len() > bytes.len() {
            return Err(FlashImageError::DoesNotFit {
                end: (at + data.len()) as u64,
                size,
            });
        }
        bytes[at..at + data.len()].copy_from_slice(data);
        let what = names.get(i).copied().unwrap_or("segment");
        parts.push((what.to_string(), segment.addr, data.len()));
    }
    if let Some(image) = spec.config_image {
        let at = config.offset() as usize;
        bytes[at..at + image.len()].copy_from_slice(image);
        parts.push((
            format!("config ({})", spec.config_partition),
            config.offset(),
            image.len(),
        ));
    }
    parts.sort_by_key(|p| p.1);
    Ok(FlashImage { bytes, parts })
}
