//! ESP32-S3 eFuse fields that say what memory is *in the package*: embedded PSRAM and flash.
//!
//! espflash's S3 feature string says "Embedded Flash" on every chip and never gives sizes, so
//! dpskit decodes the fields itself, the way esptool does (`esptool/targets/esp32s3.py`).

use serde::Serialize;

/// Embedded memory decoded from eFuse BLOCK1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmbeddedMemory {
    /// PSRAM size in MB (0 = none), from PSRAM_CAP (bits 131..132) and PSRAM_CAP_3 (bit 179).
    pub psram_mb: u32,
    pub psram_vendor: Option<&'static str>,
    /// Flash size in MB (0 = none in package; external flash is measured by JEDEC ID).
    pub flash_mb: u32,
    pub flash_vendor: Option<&'static str>,
    pub package: &'static str,
    /// Raw capacity codes that no known package uses (shown as "unknown" rather than guessed).
    pub unknown_codes: Vec<String>,
}

impl EmbeddedMemory {
    /// Decodes the raw field values as read with espflash's `esp32s3` eFuse constants.
    pub fn decode(
        psram_cap_lo: u32,
        psram_cap_hi: u32,
        psram_vendor: u32,
        flash_cap: u32,
        flash_vendor: u32,
        pkg: u32,
    ) -> Self {
        let mut unknown = Vec::new();
        let psram_code = (psram_cap_hi & 1) << 2 | (psram_cap_lo & 3);
        let psram_mb = match psram_code {
            0 => 0,
            1 => 8,
            2 => 2,
            3 => 16,
            4 => 4,
            other => {
                unknown.push(format!("PSRAM_CAP={other}"));
                0
            }
        };
        let flash_mb = match flash_cap {
            0 => 0,
            1 => 8,
            2 => 4,
            other => {
                unknown.push(format!("FLASH_CAP={other}"));
                0
            }
        };
        EmbeddedMemory {
            psram_mb,
            psram_vendor: match psram_vendor {
                1 => Some("AP_3v3"),
                2 => Some("AP_1v8"),
                _ => None,
            },
            flash_mb,
            flash_vendor: match flash_vendor {
                1 => Some("XMC"),
                2 => Some("GD"),
                3 => Some("FM"),
                4 => Some("TT"),
                5 => Some("BY"),
                _ => None,
            },
            package: match pkg {
                0 => "ESP32-S3 (QFN56)",
                1 => "ESP32-S3-PICO-1 (LGA56)",
                _ => "ESP32-S3 (unknown package)",
            },
            unknown_codes: unknown,
        }
    }

    /// The words esptool prints, e.g. `Embedded PSRAM 8MB (AP_3v3)`.
    pub fn features(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.flash_mb > 0 {
            out.push(format!(
                "Embedded Flash {}MB ({})",
                self.flash_mb,
                self.flash_vendor.unwrap_or("unknown vendor")
            ));
        }
        if self.psram_mb > 0 {
            out.push(format!(
                "Embedded PSRAM {}MB ({})",
                self.psram_mb,
                self.psram_vendor.unwrap_or("unknown vendor")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_esptool() {
        let m = EmbeddedMemory::decode(1, 0, 1, 0, 0, 0);
        assert_eq!(m.features(), ["Embedded PSRAM 8MB (AP_3v3)"]);
        assert_eq!(EmbeddedMemory::decode(3, 0, 2, 0, 0, 0).psram_mb, 16);
        assert_eq!(EmbeddedMemory::decode(2, 0, 1, 0, 0, 0).psram_mb, 2);
        assert_eq!(EmbeddedMemory::decode(0, 1, 1, 0, 0, 0).psram_mb, 4);
        let none = EmbeddedMemory::decode(0, 0, 0, 1, 2, 1);
        assert_eq!(none.psram_mb, 0);
        assert_eq!(none.features(), ["Embedded Flash 8MB (GD)"]);
        assert_eq!(none.package, "ESP32-S3-PICO-1 (LGA56)");
        assert_eq!(
            EmbeddedMemory::decode(1, 1, 1, 3, 0, 0).unknown_codes.len(),
            2
        );
    }
}
