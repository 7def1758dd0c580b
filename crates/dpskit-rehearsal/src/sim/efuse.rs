//! What a virtual board's eFuses say about it: MAC, silicon revision, in-package PSRAM and flash,
//! security state — encoded into the ESP32-S3 eFuse read registers exactly where the ROM, esptool
//! and espflash look for them (reference §5).
//!
//! Register map (`DR_REG_EFUSE_BASE = 0x6000_7000`): BLOCK0 is read at `0x6000_702C` (6 words),
//! BLOCK1 at `0x6000_7044` (6 words), BLOCK2 at `0x6000_705C` (8 words), BLOCK3..BLOCK10 follow
//! at 0x20-byte strides from `0x6000_707C`.

use std::fmt;
use std::str::FromStr;

/// eFuse controller base.
pub const EFUSE_BASE: u32 = 0x6000_7000;
/// Read address of each block's first word, BLOCK0..BLOCK10.
pub const BLOCK_READ_ADDR: [u32; 11] = [
    0x6000_702C,
    0x6000_7044,
    0x6000_705C,
    0x6000_707C,
    0x6000_709C,
    0x6000_70BC,
    0x6000_70DC,
    0x6000_70FC,
    0x6000_711C,
    0x6000_713C,
    0x6000_715C,
];
/// Words per block, BLOCK0..BLOCK10.
pub const BLOCK_WORDS: [usize; 11] = [6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8];

/// The chip a board answers as: its `GET_SECURITY_INFO` chip ID and the magic word at
/// `0x4000_1000`. Anything but `Esp32s3` is an impersonation for fault tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChipKind {
    Esp32s3,
    Esp32c3,
    Esp32,
}

impl ChipKind {
    /// `ESP_CHIP_ID_*` as returned in `GET_SECURITY_INFO` (ESP32 has none: the command is
    /// unknown to its ROM).
    pub fn chip_id(self) -> Option<u32> {
        match self {
            ChipKind::Esp32s3 => Some(9),
            ChipKind::Esp32c3 => Some(5),
            ChipKind::Esp32 => None,
        }
    }

    /// Value of `CHIP_DETECT_MAGIC_REG_ADDR` (`0x4000_1000`).
    pub fn magic(self) -> u32 {
        match self {
            ChipKind::Esp32s3 => 0x0000_0009,
            ChipKind::Esp32c3 => 0x1B31_506F, // ECO3
            ChipKind::Esp32 => 0x00F0_1D83,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ChipKind::Esp32s3 => "esp32s3",
            ChipKind::Esp32c3 => "esp32c3",
            ChipKind::Esp32 => "esp32",
        }
    }
}

impl FromStr for ChipKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "esp32s3" => Ok(ChipKind::Esp32s3),
            "esp32c3" => Ok(ChipKind::Esp32c3),
            "esp32" => Ok(ChipKind::Esp32),
            _ => Err(format!("unknown chip {s:?}: use esp32s3, esp32c3 or esp32")),
        }
    }
}

/// In-package PSRAM size, as the 3-bit `PSRAM_CAP` code splits it (low 2 bits at BLK1 bit 131,
/// high bit at BLK1 bit 179).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PsramSize {
    None,
    Mb2,
    Mb4,
    Mb8,
    Mb16,
}

impl PsramSize {
    /// The `PSRAM_CAP` value: 0 none, 1 8MB, 2 2MB, 3 16MB, 4 4MB.
    pub fn cap_code(self) -> u32 {
        match self {
            PsramSize::None => 0,
            PsramSize::Mb8 => 1,
            PsramSize::Mb2 => 2,
            PsramSize::Mb16 => 3,
            PsramSize::Mb4 => 4,
        }
    }

    pub fn megabytes(self) -> u32 {
        match self {
            PsramSize::None => 0,
            PsramSize::Mb2 => 2,
            PsramSize::Mb4 => 4,
            PsramSize::Mb8 => 8,
            PsramSize::Mb16 => 16,
        }
    }
}

impl FromStr for PsramSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().trim_end_matches("mb") {
            "none" | "0" => Ok(PsramSize::None),
            "2" => Ok(PsramSize::Mb2),
            "4" => Ok(PsramSize::Mb4),
            "8" => Ok(PsramSize::Mb8),
            "16" => Ok(PsramSize::Mb16),
            _ => Err(format!("unknown PSRAM size {s:?}: use none, 2, 4, 8 or 16")),
        }
    }
}

/// `PSRAM_VENDOR`: 1 AP_3v3, 2 AP_1v8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PsramVendor {
    Ap3v3,
    Ap1v8,
}

impl PsramVendor {
    pub fn code(self) -> u32 {
        match self {
            PsramVendor::Ap3v3 => 1,
            PsramVendor::Ap1v8 => 2,
        }
    }
    /// The name esptool prints.
    pub fn label(self) -> &'static str {
        match self {
            PsramVendor::Ap3v3 => "AP_3v3",
            PsramVendor::Ap1v8 => "AP_1v8",
        }
    }
}

impl FromStr for PsramVendor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "").as_str() {
            "ap3v3" => Ok(PsramVendor::Ap3v3),
            "ap1v8" => Ok(PsramVendor::Ap1v8),
            _ => Err(format!("unknown PSRAM vendor {s:?}: use ap3v3 or ap1v8")),
        }
    }
}

/// In-package flash (`FLASH_CAP`): 0 none, 1 8MB, 2 4MB. External flash leaves it 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmbeddedFlash {
    None,
    Mb4,
    Mb8,
}

impl EmbeddedFlash {
    pub fn cap_code(self) -> u32 {
        match self {
            EmbeddedFlash::None => 0,
            EmbeddedFlash::Mb8 => 1,
            EmbeddedFlash::Mb4 => 2,
        }
    }
}

impl FromStr for EmbeddedFlash {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().trim_end_matches("mb") {
            "none" | "0" => Ok(EmbeddedFlash::None),
            "4" => Ok(EmbeddedFlash::Mb4),
            "8" => Ok(EmbeddedFlash::Mb8),
            _ => Err(format!("unknown embedded flash {s:?}: use none, 4 or 8")),
        }
    }
}

/// `FLASH_VENDOR`: 1 XMC, 2 GD, 3 FM, 4 TT, 5 BY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlashVendor {
    Xmc,
    Gd,
    Fm,
    Tt,
    By,
}

impl FlashVendor {
    pub fn code(self) -> u32 {
        match self {
            FlashVendor::Xmc => 1,
            FlashVendor::Gd => 2,
            FlashVendor::Fm => 3,
            FlashVendor::Tt => 4,
            FlashVendor::By => 5,
        }
    }
}

impl FromStr for FlashVendor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "xmc" => Ok(FlashVendor::Xmc),
            "gd" => Ok(FlashVendor::Gd),
            "fm" => Ok(FlashVendor::Fm),
            "tt" => Ok(FlashVendor::Tt),
            "by" => Ok(FlashVendor::By),
            _ => Err(format!(
                "unknown flash vendor {s:?}: use xmc, gd, fm, tt or by"
            )),
        }
    }
}

/// Silicon revision vMAJOR.MINOR (`WAFER_VERSION_MAJOR`, `WAFER_VERSION_MINOR_HI/LO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Revision {
    pub major: u8,
    pub minor: u8,
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}", self.major, self.minor)
    }
}

impl FromStr for Revision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err =
            || format!("bad revision {s:?}: use vMAJOR.MINOR, e.g. v0.2 (major 0..3, minor 0..15)");
        let t = s.trim().trim_start_matches(['v', 'V']);
        let (a, b) = t.split_once('.').ok_or_else(err)?;
        let major: u8 = a.parse().map_err(|_| err())?;
        let minor: u8 = b.parse().map_err(|_| err())?;
        if major > 3 || minor > 15 {
            return Err(err());
        }
        Ok(Revision { major, minor })
    }
}

/// Security state, reflected both in `GET_SECURITY_INFO` and in the BLOCK0 eFuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Security {
    /// `SECURE_BOOT_EN`; adds a `SECURE_BOOT_DIGEST0` key purpose on KEY1.
    pub secure_boot: bool,
    /// `SPI_BOOT_CRYPT_CNT` = 1 (odd = enabled); adds an `XTS_AES_128_KEY` purpose on KEY0.
    pub flash_encryption: bool,
    /// `ENABLE_SECURITY_DOWNLOAD`: the ROM refuses register, RAM and read commands.
    pub secure_download: bool,
    /// `SOFT_DIS_JTAG` flag in `GET_SECURITY_INFO`.
    pub jtag_disabled: bool,
}

/// Everything the eFuses of one virtual board say.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EfuseProfile {
    pub chip: ChipKind,
    /// Base MAC (eFuse BLOCK1 words 0–1).
    pub mac: [u8; 6],
    pub revision: Revision,
    /// `PKG_VERSION`: 0 "ESP32-S3 (QFN56)", 1 "ESP32-S3-PICO-1 (LGA56)".
    pub pkg_version: u8,
    /// `BLK_VERSION_MAJOR` (BLK2) and `BLK_VERSION_MINOR` (BLK1). 1.1 triggers the "ECO0"
    /// quirk in espflash (major forced to 0, features say "Embedded PSRAM").
    pub blk_version: (u8, u8),
    pub psram: PsramSize,
    pub psram_vendor: PsramVendor,
    pub embedded_flash: EmbeddedFlash,
    pub embedded_flash_vendor: FlashVendor,
    /// `FLASH_TYPE` (BLOCK0): octal instead of quad SPI flash.
    pub octal_flash: bool,
    pub security: Security,
}

impl Default for EfuseProfile {
    fn default() -> Self {
        EfuseProfile {
            chip: ChipKind::Esp32s3,
            mac: [0x34, 0x85, 0x18, 0x00, 0x00, 0x01],
            revision: Revision { major: 0, minor: 2 },
            pkg_version: 0,
            blk_version: (1, 2),
            psram: PsramSize::Mb8,
            psram_vendor: PsramVendor::Ap3v3,
            embedded_flash: EmbeddedFlash::None,
            embedded_flash_vendor: FlashVendor::Xmc,
            octal_flash: false,
            security: Security::default(),
        }
    }
}

impl EfuseProfile {
    /// The eFuses of an ESP32-S3 N32R16V module: 16 MB octal PSRAM (AP_1v8) in the package,
    /// octal flash (`FLASH_TYPE` = 1) outside it.
    pub fn n32r16v() -> EfuseProfile {
        EfuseProfile {
            psram: PsramSize::Mb16,
            psram_vendor: PsramVendor::Ap1v8,
            octal_flash: true,
            ..EfuseProfile::default()
        }
    }
}

/// `GET_SECURITY_INFO` flag bits (same map in ROM, esptool and espflash).
pub mod security_flags {
    pub const SECURE_BOOT_EN: u32 = 1 << 0;
    pub const SECURE_DOWNLOAD_ENABLE: u32 = 1 << 2;
    pub const SOFT_DIS_JTAG: u32 = 1 << 6;
}

/// `KEY_PURPOSE` values used by the security profile.
const PURPOSE_XTS_AES_128_KEY: u8 = 4;
const PURPOSE_SECURE_BOOT_DIGEST0: u8 = 9;

/// Puts `value` into bits `[bit, bit+width)` of `word`.
fn set_bits(word: &mut u32, bit: u32, width: u32, value: u32) {
    let mask = if width == 32 {
        u32::MAX
    } else {
        (1u32 << width) - 1
    };
    *word = (*word & !(mask << bit)) | ((value & mask) << bit);
}

impl EfuseProfile {
    /// The eFuse read registers, block by block (unused words are 0, as on a fresh chip).
    pub fn blocks(&self) -> EfuseBlocks {
        let mut b = EfuseBlocks::default();
        let m = self.mac;

        // BLOCK0 word 2 (0x6000_7034): SPI_BOOT_CRYPT_CNT bits 18..20, KEY_PURPOSE_0 24..27,
        // KEY_PURPOSE_1 28..31.
        if self.security.flash_encryption {
            set_bits(&mut b.words[0][2], 18, 3, 1);
            set_bits(&mut b.words[0][2], 24, 4, PURPOSE_XTS_AES_128_KEY.into());
        }
        if self.security.secure_boot {
            set_bits(
                &mut b.words[0][2],
                28,
                4,
                PURPOSE_SECURE_BOOT_DIGEST0.into(),
            );
            // BLOCK0 word 3 (0x6000_7038) bit 20: SECURE_BOOT_EN.
            set_bits(&mut b.words[0][3], 20, 1, 1);
        }
        // BLOCK0 word 4 (0x6000_703C): ENABLE_SECURITY_DOWNLOAD bit 5 (abs. 133), FLASH_TYPE bit 9.
        if self.security.secure_download {
            set_bits(&mut b.words[0][4], 5, 1, 1);
        }
        if self.octal_flash {
            set_bits(&mut b.words[0][4], 9, 1, 1);
        }

        // BLOCK1 word 0 = MAC bytes 2..5 big-endian; word 1 bits 0..15 = MAC bytes 0..1.
        b.words[1][0] = u32::from_be_bytes([m[2], m[3], m[4], m[5]]);
        b.words[1][1] = u32::from(u16::from_be_bytes([m[0], m[1]]));

        let minor = u32::from(self.revision.minor);
        // BLOCK1 word 3 (0x6000_7050).
        let w3 = &mut b.words[1][3];
        set_bits(w3, 18, 3, minor & 0x7); // WAFER_VERSION_MINOR_LO
        set_bits(w3, 21, 3, self.pkg_version.into()); // PKG_VERSION
        set_bits(w3, 24, 3, self.blk_version.1.into()); // BLK_VERSION_MINOR
        set_bits(w3, 27, 3, self.embedded_flash.cap_code()); // FLASH_CAP
                                                             // BLOCK1 word 4 (0x6000_7054).
        let w4 = &mut b.words[1][4];
        if self.embedded_flash != EmbeddedFlash::None {
            set_bits(w4, 0, 3, self.embedded_flash_vendor.code()); // FLASH_VENDOR
        }
        let psram = self.psram.cap_code();
        set_bits(w4, 3, 2, psram & 0x3); // PSRAM_CAP (low bits)
        if self.psram != PsramSize::None {
            set_bits(w4, 7, 2, self.psram_vendor.code()); // PSRAM_VENDOR
        }
        // BLOCK1 word 5 (0x6000_7058).
        let w5 = &mut b.words[1][5];
        set_bits(w5, 19, 1, psram >> 2); // PSRAM_CAP_3 (high bit)
        set_bits(w5, 23, 1, minor >> 3); // WAFER_VERSION_MINOR_HI
        set_bits(w5, 24, 2, self.revision.major.into()); // WAFER_VERSION_MAJOR

        // BLOCK2 word 4 (0x6000_706C) bits 0..1: BLK_VERSION_MAJOR.
        set_bits(&mut b.words[2][4], 0, 2, self.blk_version.0.into());
        b
    }

    /// The 20-byte `GET_SECURITY_INFO` payload (S3 layout): flags, flash_crypt_cnt,
    /// key_purposes[7], chip_id, eco/api version.
    pub fn security_info(&self) -> [u8; 20] {
        let s = self.security;
        let mut flags = 0u32;
        if s.secure_boot {
            flags |= security_flags::SECURE_BOOT_EN;
        }
        if s.secure_download {
            flags |= security_flags::SECURE_DOWNLOAD_ENABLE;
        }
        if s.jtag_disabled {
            flags |= security_flags::SOFT_DIS_JTAG;
        }
        let mut out = [0u8; 20];
        out[0..4].copy_from_slice(&flags.to_le_bytes());
        out[4] = u8::from(s.flash_encryption);
        if s.flash_encryption {
            out[5] = PURPOSE_XTS_AES_128_KEY;
        }
        if s.secure_boot {
            out[6] = PURPOSE_SECURE_BOOT_DIGEST0;
        }
        out[12..16].copy_from_slice(&self.chip.chip_id().unwrap_or(0).to_le_bytes());
        // API/ECO version: 0 (the S3 ROM's value is not documented).
        out
    }

    /// MAC of board `index` in a batch: the base MAC plus `index`, as a 48-bit number.
    pub fn mac_plus(&self, index: u64) -> [u8; 6] {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&self.mac);
        let v = (u64::from_be_bytes(b) + index) & 0xFFFF_FFFF_FFFF;
        let out = v.to_be_bytes();
        [out[2], out[3], out[4], out[5], out[6], out[7]]
    }

    /// One-line summary for `dpskit sim` output.
    pub fn summary(&self) -> String {
        let psram = match self.psram {
            PsramSize::None => "no PSRAM".to_string(),
            p => format!("PSRAM {}MB ({})", p.megabytes(), self.psram_vendor.label()),
        };
        let mut s = format!("{} {} {}", self.chip.name(), self.revision, psram);
        match self.embedded_flash {
            EmbeddedFlash::None => {}
            EmbeddedFlash::Mb4 => s.push_str(", embedded flash 4MB"),
            EmbeddedFlash::Mb8 => s.push_str(", embedded flash 8MB"),
        }
        if self.octal_flash {
            s.push_str(", octal flash");
        }
        if self.security.secure_boot {
            s.push_str(", secure boot");
        }
        if self.security.flash_encryption {
            s.push_str(", flash encryption");
        }
        if self.security.secure_download {
            s.push_str(", secure download mode");
        }
        s
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let err = || format!("bad MAC {s:?}: use six hex bytes like 34:85:18:00:00:01");
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(err());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    Ok(mac)
}

/// The read registers of all eleven eFuse blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EfuseBlocks {
    pub words: [[u32; 8]; 11],
}

impl EfuseBlocks {
    /// The register value at `addr` if it is an eFuse block read register.
    pub fn read(&self, addr: u32) -> Option<u32> {
        for (block, (&base, &len)) in BLOCK_READ_ADDR.iter().zip(BLOCK_WORDS.iter()).enumerate() {
            if addr >= base && addr < base + 4 * len as u32 && (addr - base).is_multiple_of(4) {
                return Some(self.words[block][((addr - base) / 4) as usize]);
            }
        }
        None
    }

    /// Reads a field given as (block, absolute bit offset within the block, width), the way
    /// ESP-IDF's eFuse table and espflash's `EfuseField` describe it.
    pub fn field(&self, block: usize, bit_start: u32, bit_count: u32) -> u64 {
        let mut v = 0u64;
        for i in 0..bit_count {
            let bit = bit_start + i;
            let word = self.words[block][(bit / 32) as usize];
            v |= u64::from((word >> (bit % 32)) & 1) << i;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use espflash::target::efuse::{esp32s3 as f, EfuseField};

    fn get(b: &EfuseBlocks, field: EfuseField) -> u64 {
        // Cross-check against espflash's own field table (generated from ESP-IDF's).
        assert_eq!(field.word, field.bit_start / 32, "field word/bit mismatch");
        b.field(field.block as usize, field.bit_start, field.bit_count)
    }

    #[test]
    fn mac_words_match_reference_layout() {
        let p = EfuseProfile {
            mac: [0x34, 0x85, 0x18, 0xAA, 0xBB, 0xCC],
            ..Default::default()
        };
        let b = p.blocks();
        assert_eq!(b.read(0x6000_7044), Some(0x18AA_BBCC));
        assert_eq!(b.read(0x6000_7048), Some(0x0000_3485));
        assert_eq!(get(&b, f::MAC0), 0x18AA_BBCC);
        assert_eq!(get(&b, f::MAC1), 0x3485);
    }

    #[test]
    fn psram_codes_for_every_size_and_vendor() {
        for (size, lo, hi, code) in [
            (PsramSize::None, 0, 0, 0),
            (PsramSize::Mb8, 1, 0, 1),
            (PsramSize::Mb2, 2, 0, 2),
            (PsramSize::Mb16, 3, 0, 3),
            (PsramSize::Mb4, 0, 1, 4),
        ] {
            for vendor in [PsramVendor::Ap3v3, PsramVendor::Ap1v8] {
                let p = EfuseProfile {
                    psram: size,
                    psram_vendor: vendor,
                    ..Default::default()
                };
                let b = p.blocks();
                assert_eq!(get(&b, f::PSRAM_CAP), lo, "{size:?}");
                assert_eq!(get(&b, f::PSRAM_CAP_3), hi, "{size:?}");
                assert_eq!(get(&b, f::PSRAM_CAP) | get(&b, f::PSRAM_CAP_3) << 2, code);
                let expect_vendor = if size == PsramSize::None {
                    0
                } else {
                    u64::from(vendor.code())
                };
                assert_eq!(get(&b, f::PSRAM_VENDOR), expect_vendor);
                // Register view of §5: 0x6000_7054 bits 3..4 and 7..8, 0x6000_7058 bit 19.
                let w4 = b.read(0x6000_7054).unwrap();
                let w5 = b.read(0x6000_7058).unwrap();
                assert_eq!(((w5 >> 19) & 1) << 2 | ((w4 >> 3) & 3), code as u32);
                assert_eq!((w4 >> 7) & 3, expect_vendor as u32);
            }
        }
    }

    #[test]
    fn revision_package_and_block_version() {
        let p = EfuseProfile {
            revision: Revision {
                major: 1,
                minor: 10,
            },
            pkg_version: 1,
            blk_version: (1, 3),
            ..Default::default()
        };
        let b = p.blocks();
        assert_eq!(get(&b, f::WAFER_VERSION_MAJOR), 1);
        assert_eq!(
            get(&b, f::WAFER_VERSION_MINOR_HI) << 3 | get(&b, f::WAFER_VERSION_MINOR_LO),
            10
        );
        assert_eq!(get(&b, f::PKG_VERSION), 1);
        assert_eq!(get(&b, f::BLK_VERSION_MINOR), 3);
        assert_eq!(get(&b, f::BLK_VERSION_MAJOR), 1);
        assert_eq!(b.read(0x6000_706C).unwrap() & 3, 1);
    }

    #[test]
    fn embedded_flash_and_security_fields() {
        let p = EfuseProfile {
            embedded_flash: EmbeddedFlash::Mb8,
            embedded_flash_vendor: FlashVendor::Gd,
            octal_flash: true,
            security: Security {
                secure_boot: true,
                flash_encryption: true,
                secure_download: true,
                jtag_disabled: false,
            },
            ..Default::default()
        };
        let b = p.blocks();
        assert_eq!(get(&b, f::FLASH_CAP), 1);
        assert_eq!(get(&b, f::FLASH_VENDOR), 2);
        assert_eq!(get(&b, f::FLASH_TYPE), 1);
        assert_eq!(get(&b, f::SECURE_BOOT_EN), 1);
        assert_eq!(get(&b, f::SPI_BOOT_CRYPT_CNT), 1);
        assert_eq!(get(&b, f::KEY_PURPOSE_0), 4);
        assert_eq!(get(&b, f::KEY_PURPOSE_1), 9);
        assert_eq!(get(&b, f::ENABLE_SECURITY_DOWNLOAD), 1);
        // esptool's registers: SECURE_BOOT_EN 0x6000_7038 bit 20, crypt cnt 0x6000_7034 18..20.
        assert_eq!(b.read(0x6000_7038).unwrap() >> 20 & 1, 1);
        assert_eq!(b.read(0x6000_7034).unwrap() >> 18 & 7, 1);

        let si = p.security_info();
        assert_eq!(u32::from_le_bytes(si[0..4].try_into().unwrap()), 0b101);
        assert_eq!(si[4], 1);
        assert_eq!(&si[5..12], &[4, 9, 0, 0, 0, 0, 0]);
        assert_eq!(u32::from_le_bytes(si[12..16].try_into().unwrap()), 9);
    }

    #[test]
    fn mac_arithmetic_carries() {
        let p = EfuseProfile {
            mac: [0x34, 0x85, 0x18, 0x00, 0xFF, 0xFF],
            ..Default::default()
        };
        assert_eq!(p.mac_plus(1), [0x34, 0x85, 0x18, 0x01, 0x00, 0x00]);
        assert_eq!(format_mac(&p.mac_plus(2)), "34:85:18:01:00:01");
        assert_eq!(parse_mac("34:85:18:01:00:01").unwrap(), p.mac_plus(2));
        assert!(parse_mac("34:85:18:01:00").is_err());
    }

    #[test]
    fn parses_cli_spellings() {
        assert_eq!(
            "v0.2".parse::<Revision>().unwrap(),
            Revision { major: 0, minor: 2 }
        );
        assert_eq!(
            "1.1".parse::<Revision>().unwrap(),
            Revision { major: 1, minor: 1 }
        );
        assert!("v4.0".parse::<Revision>().is_err());
        assert_eq!("16".parse::<PsramSize>().unwrap(), PsramSize::Mb16);
        assert_eq!("8MB".parse::<PsramSize>().unwrap(), PsramSize::Mb8);
        assert_eq!("AP_1v8".parse::<PsramVendor>().unwrap(), PsramVendor::Ap1v8);
        assert_eq!("ESP32-C3".parse::<ChipKind>().unwrap(), ChipKind::Esp32c3);
    }

    #[test]
    fn unknown_addresses_are_not_efuse() {
        let b = EfuseProfile::default().blocks();
        assert_eq!(b.read(0x6000_7028), None);
        assert_eq!(b.read(0x6000_717C), None);
        assert_eq!(b.read(0x6000_7046), None);
        assert!(b.read(0x6000_715C + 7 * 4).is_some());
    }
}
