//! What both loaders reach on the chip: memory-mapped registers (the SPI controller's user
//! command for the flash ID, the UART divider), the eFuse read registers, and the SPI flash
//! (programming through a zlib stream, MD5 of a region).

use flate2::{Decompress, FlushDecompress, Status};

use super::le32;

use super::rom::rom_err;
use super::stub::stub_err;
use super::{Reply, VirtualChip};

/// Registers the loaders and tools touch.
pub mod reg {
    pub const CHIP_MAGIC: u32 = 0x4000_1000;
    pub const UARTDEV_BUF_NO: u32 = 0x3FCE_F14C;
    /// `rom_spiflash_legacy_funcs.read`: esptool's secure-boot stub launch patches it.
    pub const ROM_SPIFLASH_READ_PTR: u32 = 0x3FCE_F688;
    pub const GPIO_STRAP: u32 = 0x6000_4038;
    pub const UART_CLKDIV: u32 = 0x6000_0014;
    pub const SPI_CMD: u32 = 0x6000_2000;
    pub const SPI_USR: u32 = 0x6000_2018;
    pub const SPI_USR2: u32 = 0x6000_2020;
    pub const SPI_MISO_DLEN: u32 = 0x6000_2028;
    pub const SPI_W0: u32 = 0x6000_2058;
    /// `SPI_CMD` bit that starts a user command and clears when it is done.
    pub const SPI_CMD_USR: u32 = 1 << 18;
}

/// `rom_spiflash_legacy_funcs.read` before anyone patches it (a ROM text address).
pub(super) const ROM_READ_FN_DEFAULT: u32 = 0x4000_A2B8;

/// A flash write in progress (`FLASH_BEGIN` / `FLASH_DEFL_BEGIN`).
pub(super) struct FlashWrite {
    pub(super) deflate: bool,
    pub(super) offset: u32,
    pub(super) size: u32,
    pub(super) num_blocks: u32,
    pub(super) block_size: u32,
    pub(super) next_seq: u32,
    /// Bytes written so far (stub and deflate: sequential position).
    pub(super) written: u32,
    /// Stub: erase pointer for just-in-time erasing, and its end.
    pub(super) erased_until: u32,
    pub(super) erase_end: u32,
    pub(super) inflater: Option<Decompress>,
}

impl FlashWrite {
    /// A write of `size` bytes at `offset` from a `*_BEGIN` payload (`size, blocks,
    /// block_size, offset`); `erase` is the stub's just-in-time erase range.
    pub(super) fn begin(deflate: bool, data: &[u8], erase: (u32, u32)) -> FlashWrite {
        FlashWrite {
            deflate,
            size: le32(data, 0),
            num_blocks: le32(data, 1),
            block_size: le32(data, 2),
            offset: le32(data, 3),
            next_seq: 0,
            written: 0,
            erased_until: erase.0,
            erase_end: erase.1,
            inflater: deflate.then(|| Decompress::new(true)),
        }
    }
}

pub(super) enum InflateError {
    Inflate,
    TooMuch,
    Flash,
}

impl VirtualChip {
    /// Counts bytes programmed, and those in pages that hold data (the costly ones).
    pub(super) fn count_programmed(&mut self, bytes: &[u8]) {
        self.stats.flash_bytes_programmed += bytes.len() as u64;
        self.stats.flash_bytes_with_data += bytes
            .chunks(256)
            .filter(|page| page.iter().any(|b| *b != 0xFF))
            .map(|page| page.len() as u64)
            .sum::<u64>();
    }

    pub(super) fn reset_registers(&mut self) {
        self.regs.clear();
        self.regs
            .insert(reg::ROM_SPIFLASH_READ_PTR, ROM_READ_FN_DEFAULT);
        self.regs.insert(reg::SPI_USR, 0x8000_0000);
        self.regs.insert(reg::SPI_USR2, 0x7000_0000);
        self.regs.insert(reg::GPIO_STRAP, 0x0000_0000); // GPIO0 low: download boot
    }

    /// The value a `READ_REG` of `addr` returns.
    pub fn read_reg(&self, addr: u32) -> u32 {
        if let Some(v) = self.efuse.read(addr) {
            return v;
        }
        match addr {
            reg::CHIP_MAGIC => self.cfg.profile.chip.magic(),
            reg::UARTDEV_BUF_NO => 0, // UART0 (3 would be USB-OTG, 4 USB-Serial/JTAG)
            reg::UART_CLKDIV => 80_000_000 / self.baud.max(1),
            _ => self.regs.get(&addr).copied().unwrap_or(0),
        }
    }

    pub(super) fn write_regs(&mut self, data: &[u8]) {
        for t in data.chunks_exact(16) {
            let (addr, value, mask) = (le32(t, 0), le32(t, 1), le32(t, 2));
            if self.efuse.read(addr).is_some() || addr == reg::CHIP_MAGIC {
                continue; // read-only
            }
            let old = self.read_reg(addr);
            let new = (old & !mask) | (value & mask);
            self.regs.insert(addr, new);
            if addr == reg::SPI_CMD && new & reg::SPI_CMD_USR != 0 {
                self.spi_user_command();
            }
        }
    }

    /// Runs the SPI "user command" set up in `SPI_USR2`/`SPI_MISO_DLEN` and clears the busy
    /// bit, the way esptool's and espflash's flash-ID probe expect.
    pub(super) fn spi_user_command(&mut self) {
        let usr2 = self.regs.get(&reg::SPI_USR2).copied().unwrap_or(0);
        let miso_bits = self.regs.get(&reg::SPI_MISO_DLEN).copied().unwrap_or(0) + 1;
        let mask = if miso_bits >= 32 {
            u32::MAX
        } else {
            (1u32 << miso_bits) - 1
        };
        let [mfr, ty, cap] = self.cfg.jedec_id;
        let result = match (usr2 & 0xFF) as u8 {
            0x9F => Some(u32::from(mfr) | u32::from(ty) << 8 | u32::from(cap) << 16),
            0x05 | 0x35 | 0x15 => Some(0), // status registers: idle, no protection
            0x5A => Some(0),               // SFDP: not provided
            _ => None,                     // WREN, WRSR, ...: no data phase
        };
        if let Some(v) = result {
            self.regs.insert(reg::SPI_W0, v & mask);
        }
        let cmd = self.regs.entry(reg::SPI_CMD).or_insert(0);
        *cmd &= !reg::SPI_CMD_USR;
    }

    pub(super) fn md5_reply(&mut self, addr: u32, size: u32, rom: bool) -> Reply {
        let fail = if rom {
            rom_err::FLASH_READ
        } else {
            stub_err::FAILED_SPI_OP
        };
        if u64::from(addr) + u64::from(size) > u64::from(self.flash.size()) {
            return Err(fail);
        }
        let Ok(mut digest) = self.flash.md5(addr, size) else {
            return Err(fail);
        };
        self.stats.flash_bytes_hashed += u64::from(size);
        if self.cfg.faults.corrupt_md5 {
            digest[0] ^= 0x01;
        }
        if rom {
            Ok((0, hex::encode(digest).into_bytes()))
        } else {
            Ok((0, digest.to_vec()))
        }
    }

    /// Feeds compressed bytes to the write's zlib stream and writes what comes out.
    pub(super) fn inflate_and_write(
        &mut self,
        mut input: &[u8],
        stub: bool,
    ) -> Result<(), InflateError> {
        loop {
            let (status, consumed, buf) = {
                let w = self.write.as_mut().expect("in flash mode");
                let inflater = w.inflater.as_mut().expect("deflate write");
                let mut buf = Vec::with_capacity(0x8000);
                let before = inflater.total_in();
                let status = inflater
                    .decompress_vec(input, &mut buf, FlushDecompress::None)
                    .map_err(|_| InflateError::Inflate)?;
                (status, (inflater.total_in() - before) as usize, buf)
            };
            input = &input[consumed..];
            let full = buf.len() == buf.capacity();
            if !buf.is_empty() {
                let w = self.write.as_ref().expect("in flash mode");
                if u64::from(w.written) + buf.len() as u64 > u64::from(w.size) {
                    return Err(InflateError::TooMuch);
                }
                if stub {
                    self.stub_program(&buf).map_err(|_| InflateError::Flash)?;
                } else {
                    let addr = w.offset + w.written;
                    self.flash
                        .program(addr, &buf)
                        .map_err(|_| InflateError::Flash)?;
                    if let Some(w) = self.write.as_mut() {
                        w.written += buf.len() as u32;
                    }
                    self.count_programmed(&buf);
                }
            }
            if status == Status::StreamEnd || (input.is_empty() && !full) {
                return Ok(());
            }
            if consumed == 0 && !full && !input.is_empty() {
                return Err(InflateError::Inflate); // no progress: corrupt stream
            }
        }
    }
}
