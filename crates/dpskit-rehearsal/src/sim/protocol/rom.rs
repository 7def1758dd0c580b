//! The ESP32-S3 mask-ROM loader's commands: what answers on UART0 in download mode before
//! any stub runs (4 status bytes, the erase at `FLASH_BEGIN`, 64-byte `READ_FLASH_SLOW`, the
//! exit on `FLASH_END`, secure download mode's refusals).

use std::time::Instant;

use super::hw::{reg, FlashWrite, InflateError, ROM_READ_FN_DEFAULT};
use super::{align_up, le32, op, DataError, Loader, Output, Reply, VirtualChip};
use crate::sim::flash::SECTOR_SIZE;

/// ROM loader error codes (second status byte).
pub mod rom_err {
    pub const INVALID_MESSAGE: u8 = 0x05;
    pub const FAILED_TO_ACT: u8 = 0x06;
    pub const INVALID_CRC: u8 = 0x07;
    pub const FLASH_WRITE: u8 = 0x08;
    pub const FLASH_READ: u8 = 0x09;
    pub const READ_LENGTH: u8 = 0x0A;
    pub const DEFLATE: u8 = 0x0B;
}

/// SYNC reply value of the ROM (bytes `07 12 20 55`, as in the ESP32 trace of reference §6.2).
const ROM_SYNC_VALUE: u32 = 0x5520_1207;
pub(super) const SYNC_PAYLOAD_HEAD: [u8; 4] = [0x07, 0x07, 0x12, 0x20];
const ROM_READ_SLOW_BUF: usize = 64;

impl VirtualChip {
    /// The ROM's answer to a command it does not know: a reply whose op does not echo the
    /// request, status 1, error 0x05 — what esptool's `UnsupportedCommandError` check looks for
    /// (the exact op value of the real ROM is unconfirmed; 0 is used).
    pub(super) fn rom_unsupported(&mut self, out: &mut Vec<Output>) {
        self.send_reply(0x00, 0, &[], &[1, rom_err::INVALID_MESSAGE, 0, 0], out);
    }

    pub(super) fn rom_command(
        &mut self,
        op: u8,
        data: &[u8],
        chk: u32,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if self.cfg.profile.security.secure_download && !sdm_allows(op) {
            self.rom_unsupported(out);
            return;
        }
        let r: Reply = match op {
            op::SYNC => {
                if data.len() == 36
                    && data[..4] == SYNC_PAYLOAD_HEAD
                    && data[4..].iter().all(|&b| b == 0x55)
                {
                    for _ in 0..8 {
                        self.send_reply(op::SYNC, ROM_SYNC_VALUE, &[], &[0, 0, 0, 0], out);
                    }
                    return;
                }
                Err(rom_err::INVALID_MESSAGE)
            }
            op::GET_SECURITY_INFO => {
                if self.cfg.profile.chip.chip_id().is_none() {
                    self.rom_unsupported(out); // ESP32 ROM has no such command
                    return;
                }
                Ok((0, self.cfg.profile.security_info().to_vec()))
            }
            op::READ_REG if data.len() == 4 => Ok((self.read_reg(le32(data, 0)), Vec::new())),
            op::WRITE_REG if !data.is_empty() && data.len().is_multiple_of(16) => {
                self.write_regs(data);
                Ok((0, Vec::new()))
            }
            op::SPI_ATTACH if data.len() == 8 || data.len() == 4 => Ok((0, Vec::new())),
            op::SPI_SET_PARAMS if data.len() == 24 => {
                self.spi_flash_size = le32(data, 1);
                Ok((0, Vec::new()))
            }
            op::CHANGE_BAUDRATE if data.len() == 8 => {
                self.reply(op, Ok((0, Vec::new())), out);
                self.change_baud(le32(data, 0), out);
                return;
            }
            op::FLASH_BEGIN | op::FLASH_DEFL_BEGIN if data.len() == 16 || data.len() == 20 => {
                self.rom_flash_begin(op == op::FLASH_DEFL_BEGIN, data)
            }
            op::FLASH_DATA => self.rom_flash_data(data, chk),
            op::FLASH_DEFL_DATA => self.rom_flash_defl_data(data, chk),
            op::FLASH_END | op::FLASH_DEFL_END if data.len() == 4 => {
                // 0 = reboot, 1 = run user code: either way the ROM leaves the loader.
                self.reply(op, Ok((0, Vec::new())), out);
                self.leave_loader(now, out);
                return;
            }
            op::SPI_FLASH_MD5 if data.len() == 16 => {
                self.md5_reply(le32(data, 0), le32(data, 1), true)
            }
            op::READ_FLASH_SLOW if data.len() == 8 || data.len() == 16 => {
                let target = self
                    .regs
                    .get(&reg::ROM_SPIFLASH_READ_PTR)
                    .copied()
                    .unwrap_or(0);
                if target != ROM_READ_FN_DEFAULT && self.in_uploaded_ram(target) {
                    // esptool's secure-boot stub launch: the patched ROM read jumps to the
                    // stub, which greets instead of replying.
                    self.start_stub(out);
                    return;
                }
                self.rom_read_slow(le32(data, 0), le32(data, 1))
            }
            op::MEM_BEGIN if data.len() == 16 => {
                self.mem_begin(data);
                Ok((0, Vec::new()))
            }
            op::MEM_DATA => self.mem_data(data, chk, Loader::Rom),
            op::MEM_END if data.len() == 8 => {
                self.mem = None;
                self.reply(op, Ok((0, Vec::new())), out);
                if le32(data, 0) == 0 {
                    self.jump(le32(data, 1), out);
                }
                return;
            }
            op::READ_REG
            | op::WRITE_REG
            | op::SPI_ATTACH
            | op::SPI_SET_PARAMS
            | op::CHANGE_BAUDRATE
            | op::FLASH_BEGIN
            | op::FLASH_DEFL_BEGIN
            | op::FLASH_END
            | op::FLASH_DEFL_END
            | op::SPI_FLASH_MD5
            | op::READ_FLASH_SLOW
            | op::MEM_BEGIN
            | op::MEM_END => Err(rom_err::INVALID_MESSAGE), // known command, wrong length
            _ => {
                self.rom_unsupported(out);
                return;
            }
        };
        self.reply(op, r, out);
    }

    pub(super) fn rom_flash_begin(&mut self, deflate: bool, data: &[u8]) -> Reply {
        let (size, offset) = (le32(data, 0), le32(data, 3));
        self.write = None;
        if size > 0 {
            if offset % SECTOR_SIZE != 0 {
                return Err(rom_err::FAILED_TO_ACT);
            }
            let end = align_up(u64::from(offset) + u64::from(size), SECTOR_SIZE.into());
            if end > u64::from(self.spi_flash_size.min(self.flash.size())) {
                return Err(rom_err::FAILED_TO_ACT);
            }
            // The ROM erases the whole region up front.
            if self
                .flash
                .erase(offset, (end - u64::from(offset)) as u32)
                .is_err()
            {
                return Err(rom_err::FLASH_WRITE);
            }
            self.stats.flash_bytes_erased += end - u64::from(offset);
        }
        self.write = Some(FlashWrite::begin(deflate, data, (0, 0)));
        Ok((0, Vec::new()))
    }

    pub(super) fn rom_flash_data(&mut self, data: &[u8], chk: u32) -> Reply {
        let (seq, payload) = match Self::data_block(data, chk) {
            Ok(v) => v,
            Err(DataError::Length) => return Err(rom_err::INVALID_MESSAGE),
            Err(DataError::Checksum) => return Err(rom_err::INVALID_CRC),
        };
        let Some(w) = self.write.as_mut().filter(|w| !w.deflate) else {
            return Err(rom_err::FAILED_TO_ACT);
        };
        if seq >= w.num_blocks.max(1) || payload.len() as u32 > w.block_size {
            return Err(rom_err::FAILED_TO_ACT);
        }
        let addr = u64::from(w.offset) + u64::from(seq) * u64::from(w.block_size);
        w.next_seq = w.next_seq.max(seq + 1);
        let end = (addr + payload.len() as u64).min(u64::from(self.flash.size()));
        if addr >= end {
            return Err(rom_err::FLASH_WRITE);
        }
        let n = (end - addr) as usize;
        if self.flash.program(addr as u32, &payload[..n]).is_err() {
            return Err(rom_err::FLASH_WRITE);
        }
        self.count_programmed(&payload[..n]);
        Ok((0, Vec::new()))
    }

    pub(super) fn rom_flash_defl_data(&mut self, data: &[u8], chk: u32) -> Reply {
        let (seq, payload) = match Self::data_block(data, chk) {
            Ok(v) => v,
            Err(DataError::Length) => return Err(rom_err::INVALID_MESSAGE),
            Err(DataError::Checksum) => return Err(rom_err::INVALID_CRC),
        };
        let Some(w) = self.write.as_ref().filter(|w| w.deflate) else {
            return Err(rom_err::FAILED_TO_ACT);
        };
        if seq.wrapping_add(1) == w.next_seq {
            return Ok((0, Vec::new())); // a retried block that was already written
        }
        if seq != w.next_seq {
            return Err(rom_err::FAILED_TO_ACT);
        }
        let payload = payload.to_vec();
        match self.inflate_and_write(&payload, false) {
            Ok(()) => {
                if let Some(w) = self.write.as_mut() {
                    w.next_seq += 1;
                }
                Ok((0, Vec::new()))
            }
            Err(InflateError::Inflate) => Err(rom_err::DEFLATE),
            Err(InflateError::TooMuch) => Err(rom_err::FAILED_TO_ACT),
            Err(InflateError::Flash) => Err(rom_err::FLASH_WRITE),
        }
    }

    pub(super) fn rom_read_slow(&mut self, offset: u32, len: u32) -> Reply {
        if len as usize > ROM_READ_SLOW_BUF {
            return Err(rom_err::READ_LENGTH);
        }
        if u64::from(offset) + u64::from(len) > u64::from(self.flash.size()) {
            return Err(rom_err::FLASH_READ);
        }
        let mut buf = vec![0u8; ROM_READ_SLOW_BUF];
        if self.flash.read(offset, &mut buf[..len as usize]).is_err() {
            return Err(rom_err::FLASH_READ);
        }
        Ok((0, buf))
    }
}

/// Commands the ROM accepts in Secure Download Mode.
pub(super) fn sdm_allows(op: u8) -> bool {
    matches!(
        op,
        op::SYNC
            | op::GET_SECURITY_INFO
            | op::SPI_ATTACH
            | op::SPI_SET_PARAMS
            | op::CHANGE_BAUDRATE
            | op::FLASH_BEGIN
            | op::FLASH_DATA
            | op::FLASH_END
            | op::FLASH_DEFL_BEGIN
            | op::FLASH_DEFL_DATA
            | op::FLASH_DEFL_END
    )
}
