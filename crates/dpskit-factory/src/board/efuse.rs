//! ESP32-S3 eFuse fields that say what memory is *in the package*: embedded PSRAM and flash,
//! and whether the flash is octal. espflash's S3 feature string says "Embedded Flash" on every
//! chip and never gives sizes, so dpskit reads the fields itself; the decoding is
//! [`dpskit_core::chip::S3Memory`]'s, the same code the firmware runs at boot.

use dpskit_core::chip::{FlashBus, PsramBus, S3Memory, S3MemoryFields};
use espflash::connection::Connection;
use espflash::target::efuse::{esp32s3, EfuseField};
use espflash::target::Chip;
use serde::Serialize;
use std::collections::HashMap;

/// Embedded memory as `inspect` reports it (the JSON shape is the report's, the meaning is
/// [`S3Memory`]'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedMemory(pub S3Memory);

impl std::ops::Deref for EmbeddedMemory {
    type Target = S3Memory;
    fn deref(&self) -> &S3Memory {
        &self.0
    }
}

impl Serialize for EmbeddedMemory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Report<'a> {
            psram_mb: u32,
            psram_vendor: Option<&'static str>,
            psram_bus: Option<&'static str>,
            flash_mb: u32,
            flash_vendor: Option<&'static str>,
            flash_type: &'static str,
            package: &'static str,
            unknown_codes: &'a [String],
        }
        let m = &self.0;
        Report {
            psram_mb: m.psram_mb,
            psram_vendor: m.psram_vendor,
            psram_bus: m.psram_bus.map(|b| match b {
                PsramBus::Quad => "quad",
                PsramBus::Octal => "octal",
            }),
            flash_mb: m.flash_mb,
            flash_vendor: m.flash_vendor,
            flash_type: match m.flash_bus {
                FlashBus::Quad => "quad",
                FlashBus::Octal => "octal",
            },
            package: m.package,
            unknown_codes: &m.unknown_codes,
        }
        .serialize(s)
    }
}

/// Reads the memory fields, one `READ_REG` per eFuse word they live in (four words hold all
/// seven fields) rather than one per field.
pub fn read_s3_memory(connection: &mut Connection) -> Result<EmbeddedMemory, espflash::Error> {
    let mut words: HashMap<(u32, u32), u32> = HashMap::new();
    let mut field = |f: EfuseField| -> Result<u32, espflash::Error> {
        let word = f.bit_start / 32;
        let value = match words.get(&(f.block, word)) {
            Some(v) => *v,
            None => {
                let v = Chip::Esp32s3.read_efuse_raw(connection, f.block, word)?;
                words.insert((f.block, word), v);
                v
            }
        };
        let shifted = value >> (f.bit_start % 32);
        Ok(if f.bit_count >= 32 {
            shifted
        } else {
            shifted & ((1 << f.bit_count) - 1)
        })
    };
    Ok(EmbeddedMemory(S3Memory::decode(S3MemoryFields {
        psram_cap: field(esp32s3::PSRAM_CAP)?,
        psram_cap_3: field(esp32s3::PSRAM_CAP_3)?,
        psram_vendor: field(esp32s3::PSRAM_VENDOR)?,
        flash_cap: field(esp32s3::FLASH_CAP)?,
        flash_vendor: field(esp32s3::FLASH_VENDOR)?,
        flash_type: field(esp32s3::FLASH_TYPE)?,
        pkg_version: field(esp32s3::PKG_VERSION)?,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_sits_inside_one_word() {
        for f in [
            esp32s3::PSRAM_CAP,
            esp32s3::PSRAM_CAP_3,
            esp32s3::PSRAM_VENDOR,
            esp32s3::FLASH_CAP,
            esp32s3::FLASH_VENDOR,
            esp32s3::FLASH_TYPE,
            esp32s3::PKG_VERSION,
        ] {
            assert_eq!(
                f.bit_start / 32,
                (f.bit_start + f.bit_count - 1) / 32,
                "{f:?}"
            );
        }
    }

    #[test]
    fn reports_the_core_decoding_with_the_flash_type() {
        let m = EmbeddedMemory(S3Memory::decode(S3MemoryFields {
            psram_cap: 3,
            psram_vendor: 2,
            flash_type: 1,
            ..Default::default()
        }));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["psram_mb"], 16);
        assert_eq!(v["psram_vendor"], "AP_1v8");
        assert_eq!(v["psram_bus"], "octal");
        assert_eq!(v["flash_type"], "octal");
        assert_eq!(m.features(), ["Embedded PSRAM 16MB (AP_1v8)"]);
    }
}
