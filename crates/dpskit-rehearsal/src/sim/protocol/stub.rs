//! The flasher stub's commands, once one is uploaded and greeted with `OHAI`: 2 status bytes,
//! just-in-time erases, streamed `READ_FLASH` with host acknowledgements, erase commands, and
//! the reboot into the ROM loader on `FLASH_END(0)`.

use std::time::Instant;

use md5::{Digest, Md5};

use super::hw::{FlashWrite, InflateError};
use super::{align_down, align_up, le32, op, DataError, Loader, Output, Phase, Reply, VirtualChip};
use crate::sim::flash::SECTOR_SIZE;

/// Flasher stub error codes (first status byte).
pub mod stub_err {
    pub const BAD_DATA_LEN: u8 = 0xC0;
    pub const BAD_DATA_CHECKSUM: u8 = 0xC1;
    pub const FAILED_SPI_OP: u8 = 0xC4;
    pub const NOT_IN_FLASH_MODE: u8 = 0xC6;
    pub const INFLATE_ERROR: u8 = 0xC7;
    pub const NOT_ENOUGH_DATA: u8 = 0xC8;
    pub const TOO_MUCH_DATA: u8 = 0xC9;
    pub const CMD_NOT_IMPLEMENTED: u8 = 0xFF;
}

/// The frame the stub sends when it starts.
pub const OHAI: &[u8; 4] = b"OHAI";
const STUB_MAX_READ_PACKET: u32 = 0x1000;

/// Stub `READ_FLASH` streaming state.
pub(super) struct ReadJob {
    offset: u32,
    len: u32,
    packet: u32,
    window: u32,
    sent: u32,
    acked: u32,
    md5: Md5,
}

impl VirtualChip {
    pub(super) fn stub_command(
        &mut self,
        op: u8,
        data: &[u8],
        chk: u32,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        use stub_err::*;
        let ok = || Ok((0u32, Vec::new()));
        let r: Reply = match op {
            op::SYNC => {
                if data.len() != 36 {
                    Err(BAD_DATA_LEN)
                } else {
                    for _ in 0..8 {
                        self.send_reply(op::SYNC, 0, &[], &[0, 0], out);
                    }
                    return;
                }
            }
            op::GET_SECURITY_INFO => {
                if !data.is_empty() {
                    Err(BAD_DATA_LEN)
                } else if self.cfg.profile.chip.chip_id().is_none() {
                    Err(CMD_NOT_IMPLEMENTED)
                } else {
                    Ok((0, self.cfg.profile.security_info().to_vec()))
                }
            }
            op::READ_REG => {
                if data.len() == 4 {
                    Ok((self.read_reg(le32(data, 0)), Vec::new()))
                } else {
                    Err(BAD_DATA_LEN)
                }
            }
            op::WRITE_REG => {
                if data.is_empty() || !data.len().is_multiple_of(16) {
                    Err(BAD_DATA_LEN)
                } else {
                    self.write_regs(data);
                    ok()
                }
            }
            op::SPI_ATTACH => {
                if data.len() == 4 {
                    ok()
                } else {
                    Err(BAD_DATA_LEN)
                }
            }
            op::SPI_SET_PARAMS => {
                if data.len() == 24 {
                    self.spi_flash_size = le32(data, 1);
                    ok()
                } else {
                    Err(BAD_DATA_LEN)
                }
            }
            op::CHANGE_BAUDRATE => {
                if data.len() == 8 {
                    self.reply(op, ok(), out);
                    self.change_baud(le32(data, 0), out);
                    return;
                }
                Err(BAD_DATA_LEN)
            }
            op::FLASH_BEGIN | op::FLASH_DEFL_BEGIN => {
                if data.len() == 16 || data.len() == 20 {
                    self.stub_flash_begin(op == op::FLASH_DEFL_BEGIN, data)
                } else {
                    Err(BAD_DATA_LEN)
                }
            }
            op::FLASH_DATA => self.stub_flash_data(data, chk),
            op::FLASH_DEFL_DATA => self.stub_flash_defl_data(data, chk),
            op::FLASH_END | op::FLASH_DEFL_END => {
                if data.len() != 4 {
                    Err(BAD_DATA_LEN)
                } else {
                    match self.write.as_ref() {
                        None => Err(NOT_IN_FLASH_MODE),
                        Some(w) if w.written < w.size => Err(NOT_ENOUGH_DATA),
                        Some(_) => {
                            self.write = None;
                            self.reply(op, ok(), out);
                            if le32(data, 0) == 0 {
                                // Reboot: the chip resets and, with GPIO0 still held low,
                                // comes back in the ROM loader.
                                self.phase = Phase::Rebooting {
                                    until: now + self.cfg.reset.reboot_time,
                                };
                            }
                            return;
                        }
                    }
                }
            }
            op::SPI_FLASH_MD5 => {
                if data.len() == 16 {
                    self.md5_reply(le32(data, 0), le32(data, 1), false)
                } else {
                    Err(BAD_DATA_LEN)
                }
            }
            op::MEM_BEGIN => {
                if data.len() == 16 {
                    self.mem_begin(data);
                    ok()
                } else {
                    Err(BAD_DATA_LEN)
                }
            }
            op::MEM_DATA => self.mem_data(data, chk, Loader::Stub),
            op::MEM_END => {
                if data.len() != 8 {
                    Err(BAD_DATA_LEN)
                } else if self.mem.take().is_none() {
                    Err(NOT_IN_FLASH_MODE)
                } else {
                    self.reply(op, ok(), out);
                    if le32(data, 0) == 0 {
                        // Runs user code from RAM; nothing of it is simulated.
                        self.phase = Phase::Crashed;
                    }
                    return;
                }
            }
            op::ERASE_FLASH => {
                let size = self.flash.size();
                match self.flash.erase(0, size) {
                    Ok(()) => {
                        self.stats.flash_bytes_erased += u64::from(size);
                        ok()
                    }
                    Err(_) => Err(FAILED_SPI_OP),
                }
            }
            op::ERASE_REGION => {
                if data.len() != 8 {
                    Err(BAD_DATA_LEN)
                } else {
                    let (offset, size) = (le32(data, 0), le32(data, 1));
                    if offset % SECTOR_SIZE != 0 || size % SECTOR_SIZE != 0 {
                        Err(BAD_DATA_LEN)
                    } else if u64::from(offset) + u64::from(size) > u64::from(self.flash.size()) {
                        Err(FAILED_SPI_OP)
                    } else {
                        match self.flash.erase(offset, size) {
                            Ok(()) => {
                                self.stats.flash_bytes_erased += u64::from(size);
                                ok()
                            }
                            Err(_) => Err(FAILED_SPI_OP),
                        }
                    }
                }
            }
            op::READ_FLASH => {
                if data.len() != 16 {
                    Err(BAD_DATA_LEN)
                } else {
                    let (offset, len, packet, window) =
                        (le32(data, 0), le32(data, 1), le32(data, 2), le32(data, 3));
                    if packet == 0 || packet > STUB_MAX_READ_PACKET {
                        Err(BAD_DATA_LEN)
                    } else if u64::from(offset) + u64::from(len) > u64::from(self.flash.size()) {
                        Err(FAILED_SPI_OP)
                    } else {
                        self.reply(op, ok(), out);
                        self.read_job = Some(ReadJob {
                            offset,
                            len,
                            packet,
                            window,
                            sent: 0,
                            acked: 0,
                            md5: Md5::new(),
                        });
                        self.pump_read(out);
                        return;
                    }
                }
            }
            op::RUN_USER_CODE => {
                // No reply: the stub returns into the ROM's boot path.
                self.leave_loader(now, out);
                return;
            }
            _ => Err(CMD_NOT_IMPLEMENTED),
        };
        self.reply(op, r, out);
    }

    pub(super) fn stub_flash_begin(&mut self, deflate: bool, data: &[u8]) -> Reply {
        let (size, offset) = (le32(data, 0), le32(data, 3));
        let erase_start = align_down(offset, SECTOR_SIZE);
        let erase_end = align_up(u64::from(offset) + u64::from(size), SECTOR_SIZE.into());
        if size > 0 && erase_end > u64::from(self.flash.size()) {
            self.write = None;
            return Err(stub_err::FAILED_SPI_OP);
        }
        self.write = Some(FlashWrite::begin(
            deflate,
            data,
            (erase_start, erase_end as u32),
        ));
        Ok((0, Vec::new()))
    }

    pub(super) fn stub_flash_data(&mut self, data: &[u8], chk: u32) -> Reply {
        if self.write.is_none() {
            return Err(stub_err::NOT_IN_FLASH_MODE);
        }
        let payload = match Self::data_block(data, chk) {
            Ok((_, p)) => p.to_vec(),
            Err(DataError::Length) => return Err(stub_err::BAD_DATA_LEN),
            Err(DataError::Checksum) => return Err(stub_err::BAD_DATA_CHECKSUM),
        };
        let w = self.write.as_ref().expect("checked");
        let n = (payload.len() as u32).min(w.size - w.written) as usize;
        match self.stub_program(&payload[..n]) {
            Ok(()) => Ok((0, Vec::new())),
            Err(_) => Err(stub_err::FAILED_SPI_OP),
        }
    }

    pub(super) fn stub_flash_defl_data(&mut self, data: &[u8], chk: u32) -> Reply {
        if !self.write.as_ref().is_some_and(|w| w.deflate) {
            return Err(stub_err::NOT_IN_FLASH_MODE);
        }
        let payload = match Self::data_block(data, chk) {
            Ok((_, p)) => p.to_vec(),
            Err(DataError::Length) => return Err(stub_err::BAD_DATA_LEN),
            Err(DataError::Checksum) => return Err(stub_err::BAD_DATA_CHECKSUM),
        };
        match self.inflate_and_write(&payload, true) {
            Ok(()) => Ok((0, Vec::new())),
            Err(InflateError::Inflate) => Err(stub_err::INFLATE_ERROR),
            Err(InflateError::TooMuch) => Err(stub_err::TOO_MUCH_DATA),
            Err(InflateError::Flash) => Err(stub_err::FAILED_SPI_OP),
        }
    }

    /// Stub write at the sequential position, erasing sectors just before they are written.
    pub(super) fn stub_program(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let w = self.write.as_mut().expect("in flash mode");
        let addr = w.offset + w.written;
        let end = addr + bytes.len() as u32;
        while w.erased_until < end && w.erased_until < w.erase_end {
            self.flash.erase(w.erased_until, SECTOR_SIZE)?;
            self.stats.flash_bytes_erased += u64::from(SECTOR_SIZE);
            w.erased_until += SECTOR_SIZE;
        }
        self.flash.program(addr, bytes)?;
        w.written += bytes.len() as u32;
        self.count_programmed(bytes);
        Ok(())
    }

    pub(super) fn pump_read(&mut self, out: &mut Vec<Output>) {
        let mut frames = Vec::new();
        let mut finished = None;
        if let Some(job) = self.read_job.as_mut() {
            // Legacy-stub rule: keep sending while fewer than `window` bytes are unacknowledged
            // (at least one packet).
            while job.sent < job.len && (job.sent == job.acked || job.sent - job.acked < job.window)
            {
                let n = job.packet.min(job.len - job.sent);
                let mut buf = vec![0u8; n as usize];
                if self.flash.read(job.offset + job.sent, &mut buf).is_err() {
                    break;
                }
                job.md5.update(&buf);
                job.sent += n;
                frames.push(buf);
            }
            if job.acked >= job.len {
                finished = Some(job.md5.clone().finalize());
            }
        }
        for f in frames {
            self.emit_frame(&f, out);
        }
        if let Some(d) = finished {
            self.finish_read(d.into(), out);
        }
    }

    pub(super) fn finish_read(&mut self, digest: [u8; 16], out: &mut Vec<Output>) {
        self.read_job = None;
        let mut d = digest;
        if self.cfg.faults.corrupt_md5 {
            d[0] ^= 0x01;
        }
        self.emit_frame(&d, out);
    }

    pub(super) fn on_read_ack(&mut self, frame: &[u8], out: &mut Vec<Output>) {
        let job = self.read_job.as_mut().expect("read job");
        if frame.len() != 4 {
            // Not an acknowledgement: the stub gives up and sends the digest of what it sent.
            let d = job.md5.clone().finalize();
            self.finish_read(d.into(), out);
            return;
        }
        let acked = u32::from_le_bytes(frame.try_into().expect("4 bytes"));
        if acked > job.sent {
            let d = job.md5.clone().finalize();
            self.finish_read(d.into(), out);
            return;
        }
        job.acked = acked;
        self.pump_read(out);
    }
}
