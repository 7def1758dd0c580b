//! What an ESP32-S3's eFuses say about the memory in its package, decoded once for the PC
//! (`dpskit inspect` reads the fields over serial) and the firmware (which reads them at boot
//! to set PSRAM up instead of probing, and to say what it found).
//!
//! Field values as esptool and ESP-IDF's eFuse table define them (`PSRAM_CAP` BLOCK1 bits
//! 131–132 with `PSRAM_CAP_3` bit 179, `PSRAM_VENDOR` bits 135–136, `FLASH_CAP` bits
//! 123–125, `FLASH_VENDOR`, `PKG_VERSION`, and `FLASH_TYPE` BLOCK0 bit 137).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// How PSRAM is wired to the chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsramBus {
    /// 2 and 4 MB packages (the `R2` modules).
    Quad,
    /// 8 and 16 MB packages (`R8`, `R16V`): Espressif's octal PSRAM.
    Octal,
}

/// How the flash chip is wired (eFuse `FLASH_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashBus {
    Quad,
    /// Octal flash (`N32R16V`-type modules): the second-stage bootloader cannot run from it
    /// in an octal mode, so ESP-IDF marks such images `dout` and the ROM switches to octal
    /// itself from the eFuse.
    Octal,
}

impl FlashBus {
    /// The flash mode an app image header should carry for this flash.
    pub fn image_mode(self) -> &'static str {
        match self {
            FlashBus::Quad => "dio",
            FlashBus::Octal => "dout",
        }
    }
}

/// Memory in an ESP32-S3 package, from its eFuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Memory {
    /// PSRAM in the package, in MB (0: none).
    pub psram_mb: u32,
    pub psram_bus: Option<PsramBus>,
    pub psram_vendor: Option<&'static str>,
    /// Flash in the package, in MB (0: none in the package; external flash is measured by
    /// its JEDEC ID).
    pub flash_mb: u32,
    pub flash_vendor: Option<&'static str>,
    pub flash_bus: FlashBus,
    pub package: &'static str,
    /// Capacity codes no known package uses (shown as unknown rather than guessed).
    pub unknown_codes: Vec<String>,
}

/// The raw eFuse field values [`S3Memory::decode`] needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct S3MemoryFields {
    pub psram_cap: u32,
    pub psram_cap_3: u32,
    pub psram_vendor: u32,
    pub flash_cap: u32,
    pub flash_vendor: u32,
    pub flash_type: u32,
    pub pkg_version: u32,
}

impl S3Memory {
    pub fn decode(f: S3MemoryFields) -> Self {
        let mut unknown = Vec::new();
        let psram_code = (f.psram_cap_3 & 1) << 2 | (f.psram_cap & 3);
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
        let flash_mb = match f.flash_cap {
            0 => 0,
            1 => 8,
            2 => 4,
            other => {
                unknown.push(format!("FLASH_CAP={other}"));
                0
            }
        };
        S3Memory {
            psram_mb,
            psram_bus: match psram_mb {
                0 => None,
                2 | 4 => Some(PsramBus::Quad),
                _ => Some(PsramBus::Octal),
            },
            psram_vendor: match f.psram_vendor {
                1 => Some("AP_3v3"),
                2 => Some("AP_1v8"),
                _ => None,
            },
            flash_mb,
            flash_vendor: match f.flash_vendor {
                1 => Some("XMC"),
                2 => Some("GD"),
                3 => Some("FM"),
                4 => Some("TT"),
                5 => Some("BY"),
                _ => None,
            },
            flash_bus: if f.flash_type & 1 == 1 {
                FlashBus::Octal
            } else {
                FlashBus::Quad
            },
            package: match f.pkg_version {
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

    /// One line for a log: what PSRAM there is and how it is driven.
    pub fn psram_summary(&self) -> String {
        match self.psram_bus {
            None => String::from("no PSRAM in the package"),
            Some(bus) => format!(
                "{} MB {} PSRAM ({})",
                self.psram_mb,
                match bus {
                    PsramBus::Quad => "quad",
                    PsramBus::Octal => "octal",
                },
                self.psram_vendor.unwrap_or("unknown vendor")
            ),
        }
    }
}

/// What to buy when a board has no PSRAM: the product board and its smaller siblings.
pub const PSRAM_ADVICE: &str = "use an ESP32-S3 module with PSRAM, e.g. ESP32-S3-DevKitC-1 N32R16V (the board dpskit is built for; 16 MB octal PSRAM) or N8R8/N16R8 (8 MB octal PSRAM)";

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(psram_cap: u32, psram_cap_3: u32, psram_vendor: u32) -> S3MemoryFields {
        S3MemoryFields {
            psram_cap,
            psram_cap_3,
            psram_vendor,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_like_esptool() {
        let m = S3Memory::decode(fields(1, 0, 1));
        assert_eq!(m.features(), ["Embedded PSRAM 8MB (AP_3v3)"]);
        assert_eq!(m.psram_bus, Some(PsramBus::Octal));
        let m = S3Memory::decode(fields(3, 0, 2));
        assert_eq!((m.psram_mb, m.psram_bus), (16, Some(PsramBus::Octal)));
        assert_eq!(m.psram_summary(), "16 MB octal PSRAM (AP_1v8)");
        let m = S3Memory::decode(fields(2, 0, 1));
        assert_eq!((m.psram_mb, m.psram_bus), (2, Some(PsramBus::Quad)));
        assert_eq!(S3Memory::decode(fields(0, 1, 1)).psram_mb, 4);
        let none = S3Memory::decode(S3MemoryFields {
            flash_cap: 1,
            flash_vendor: 2,
            pkg_version: 1,
            flash_type: 1,
            ..Default::default()
        });
        assert_eq!(none.psram_mb, 0);
        assert_eq!(none.psram_summary(), "no PSRAM in the package");
        assert_eq!(none.features(), ["Embedded Flash 8MB (GD)"]);
        assert_eq!(none.package, "ESP32-S3-PICO-1 (LGA56)");
        assert_eq!(none.flash_bus.image_mode(), "dout");
        let odd = S3Memory::decode(S3MemoryFields {
            psram_cap: 1,
            psram_cap_3: 1,
            flash_cap: 3,
            ..Default::default()
        });
        assert_eq!(odd.unknown_codes.len(), 2);
    }
}
