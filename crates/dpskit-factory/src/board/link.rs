//! A connection to one board's ROM bootloader (or the flasher stub), through espflash.
//!
//! espflash does the serial protocol; this adds what dpskit needs on top: errors a factory
//! engineer (and a caller) can act on, reads into memory (espflash only reads into files), a
//! cold board in as few round trips and bytes as the ROM allows, and a write that never resets
//! implicitly, so "written" and "reset failed" stay two different outcomes.
//!
//! What espflash's `Flasher::connect` cannot do is wrapped around its public `Connection` and
//! `Command`s, not forked:
//! - with the ROM loader the baud rate changes right after the first SYNC and chip check, so
//!   everything after it (eFuses, flash ID, reads, the write) runs at the fast rate;
//! - with the ROM loader, writes are compressed (`FLASH_DEFL_*`: a 24 KB config image, mostly
//!   erased flash, is ~2 KB on the wire) and end without `FLASH_END`, so the loader stays in
//!   download mode as it does with the stub;
//! - reads are 64-byte `READ_FLASH_SLOW`s (espflash's ROM reader skips data past 128 bytes),
//!   and a partition table is read only up to its end marker.

use super::error::BoardError;
use super::partition;
use espflash::command::{Command, CommandType};
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::{Flasher, SpiAttachParams, SpiSetParams};
use espflash::target::{Chip, ProgressCallbacks};
use flate2::write::ZlibEncoder;
use md5::{Digest, Md5};
use serialport::{FlowControl, UsbPortInfo};
use std::io::Write;
use std::time::Duration;

type Result<T, E = BoardError> = std::result::Result<T, E>;

/// How to get the chip into (and out of) the bootloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Before {
    /// DTR/RTS (or the USB-Serial/JTAG sequence on 303a:1001) into download mode.
    DefaultReset,
    /// The board is already in download mode.
    NoReset,
    /// Force the USB-Serial/JTAG reset sequence.
    UsbReset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum After {
    /// Reset into the application when done.
    HardReset,
    /// Leave the chip as it is.
    NoReset,
}

impl Before {
    /// The names espflash and esptool use (`default-reset`, `no-reset`, `usb-reset`), any case.
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "default-reset" => Some(Before::DefaultReset),
            "no-reset" => Some(Before::NoReset),
            "usb-reset" => Some(Before::UsbReset),
            _ => None,
        }
    }
}

impl After {
    /// The names espflash and esptool use (`hard-reset`, `no-reset`), any case.
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "hard-reset" => Some(After::HardReset),
            "no-reset" => Some(After::NoReset),
            _ => None,
        }
    }
}

/// Everything needed to open a link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub port: String,
    /// Baud rate to switch to after connecting at 115200 (None: stay).
    pub baud: Option<u32>,
    pub before: Before,
    pub after: After,
    /// Upload espflash's flasher stub (faster, and the chip stays in the loader after writes).
    pub use_stub: bool,
    /// Refuse any other chip (None: accept whatever answers).
    pub chip: Option<Chip>,
}

/// An open link to a board.
pub struct BoardLink {
    flasher: Flasher,
    use_stub: bool,
    after: After,
    port: String,
    /// Flash size from the JEDEC ID, once asked.
    flash_size: Option<u32>,
}

/// ROM loader write block (`FLASH_WRITE_SIZE` in esptool): compressed data goes in blocks of
/// this size.
const ROM_BLOCK: u32 = 0x400;
/// How often a compressed block the ROM refused is sent again.
const ROM_BLOCK_RETRIES: u32 = 2;
/// `READ_FLASH_SLOW` returns at most this much per command.
const ROM_READ_BLOCK: u32 = 64;
/// The stub streams reads in packets of this size.
const STUB_READ_BLOCK: u32 = 0x1000;

impl BoardLink {
    /// Opens the port, resets into the bootloader as asked, syncs, checks the chip, switches
    /// to the fast baud rate, and (with `use_stub`) uploads the flasher stub.
    pub fn open(opts: &LinkOptions) -> Result<Self> {
        let port = &opts.port;
        if !super::ports::exists(port) {
            return Err(BoardError::PortMissing { port: port.clone() });
        }
        let serial = serialport::new(port, 115_200)
            .flow_control(FlowControl::None)
            .timeout(Duration::from_secs(3))
            .open_native()
            .map_err(|e| match e.kind() {
                serialport::ErrorKind::NoDevice => BoardError::PortBusy {
                    port: port.clone(),
                    detail: e.to_string(),
                },
                serialport::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => {
                    BoardError::PortPermission { port: port.clone() }
                }
                _ => BoardError::PortOpen {
                    port: port.clone(),
                    detail: e.to_string(),
                },
            })?;
        let info = usb_info(port);
        let before = match opts.before {
            Before::DefaultReset => ResetBeforeOperation::DefaultReset,
            Before::NoReset => ResetBeforeOperation::NoReset,
            Before::UsbReset => ResetBeforeOperation::UsbReset,
        };
        // Writes never reset on their own; `finish` applies --after explicitly.
        let after = if opts.use_stub {
            ResetAfterOperation::NoResetNoStub
        } else {
            ResetAfterOperation::NoReset
        };
        let connect_err = |e| explain_connect_error(port, opts, e);

        // Reset and SYNC (espflash's reset strategies), then the chip: a wrong board is
        // refused after one more command, before anything else is asked of it.
        let mut conn = Connection::new(serial, info.clone(), after, before, 115_200);
        conn.begin().map_err(connect_err)?;
        let chip = conn.detect_chip(false).map_err(connect_err)?;
        if let Some(wanted) = opts.chip {
            if wanted != chip {
                return Err(BoardError::WrongChip {
                    port: port.clone(),
                    found: chip.to_string(),
                    wanted: wanted.to_string(),
                });
            }
        }
        // The ROM loader switches now, so everything after runs fast. The stub is uploaded at
        // 115200 first, as espflash and esptool do: the ROM takes its 6 KB RAM blocks
        // reliably only at the boot rate (it drops bytes at 921600 in Espressif's emulator);
        // the stub then switches.
        let early = if opts.use_stub { None } else { opts.baud };
        let baud = match early.filter(|b| *b > 115_200) {
            Some(b) => {
                // The ROM answers at the old rate, then switches (old rate 0: the ROM's).
                conn.with_timeout(CommandType::ChangeBaudrate.timeout(), |c| {
                    c.command(Command::ChangeBaudrate {
                        new_baud: b,
                        prior_baud: 0,
                    })
                })
                .and_then(|_| conn.set_baud(b))
                .and_then(|_| conn.flush())
                .map_err(connect_err)?;
                b
            }
            None => 115_200,
        };

        // Hand the synced line to espflash's Flasher. For the ROM loader it only needs to
        // learn the chip's state (no second SYNC); the flash is attached here. For the stub it
        // syncs once more (at the fast rate) and uploads the stub.
        let serial = conn.into_serial();
        let link = if opts.use_stub {
            let conn = Connection::new(serial, info, after, ResetBeforeOperation::NoReset, baud);
            let flasher = Flasher::connect(conn, true, true, false, Some(chip), opts.baud)
                .map_err(connect_err)?;
            BoardLink {
                flasher,
                use_stub: true,
                after: opts.after,
                port: port.clone(),
                flash_size: None,
            }
        } else {
            let conn = Connection::new(
                serial,
                info,
                after,
                ResetBeforeOperation::NoResetNoSync,
                baud,
            );
            let flasher = Flasher::connect(conn, false, true, false, Some(chip), None)
                .map_err(connect_err)?;
            let mut link = BoardLink {
                flasher,
                use_stub: false,
                after: opts.after,
                port: port.clone(),
                flash_size: None,
            };
            if !link.flasher.secure_download_mode() {
                link.attach_rom_flash().map_err(connect_err)?;
            }
            link
        };
        Ok(link)
    }

    /// ROM loader: attach the SPI flash, read its JEDEC ID, tell the ROM its size.
    fn attach_rom_flash(&mut self) -> Result<(), espflash::Error> {
        let conn = self.flasher.connection();
        conn.with_timeout(CommandType::SpiAttach.timeout(), |c| {
            c.command(Command::SpiAttach {
                spi_params: SpiAttachParams::default(),
            })
        })?;
        let size = self.flasher.flash_detect()?.unwrap_or_default();
        self.flasher.set_flash_size(size);
        self.flasher
            .connection()
            .with_timeout(CommandType::SpiSetParams.timeout(), |c| {
                c.command(Command::SpiSetParams {
                    spi_params: SpiSetParams::default(size.size()),
                })
            })?;
        self.flash_size = Some(size.size());
        Ok(())
    }

    pub fn flasher(&mut self) -> &mut Flasher {
        &mut self.flasher
    }

    pub fn port(&self) -> &str {
        &self.port
    }

    pub fn uses_stub(&self) -> bool {
        self.use_stub
    }

    /// The flash size in bytes, from the flash chip's JEDEC ID (asked once per link).
    pub fn flash_size(&mut self) -> Result<u32> {
        if let Some(s) = self.flash_size {
            return Ok(s);
        }
        if self.flasher.secure_download_mode() {
            return Err(BoardError::SecureDownloadMode {
                port: self.port.clone(),
            });
        }
        let size = self
            .flasher
            .flash_detect()
            .map_err(|e| self.dropped("reading the flash ID", e))?
            .unwrap_or_default()
            .size();
        self.flash_size = Some(size);
        Ok(size)
    }

    /// A failure of the line after the link was up: exit code 3.
    fn dropped(&self, during: &'static str, e: impl std::fmt::Display) -> BoardError {
        BoardError::LineDropped {
            port: self.port.clone(),
            during,
            detail: e.to_string(),
            state: "nothing was written to the board",
        }
    }

    /// Refuses a range the flash does not hold, before anything is read or allocated for it.
    fn check_range(&mut self, what: &'static str, offset: u32, len: u32) -> Result<()> {
        let flash_size = self.flash_size()?;
        if u64::from(offset) + u64::from(len) > u64::from(flash_size) {
            return Err(BoardError::OutOfFlash {
                what,
                offset,
                len,
                flash_size,
            });
        }
        Ok(())
    }

    /// Reads `len` bytes of flash at `offset` into memory.
    pub fn read_flash(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        self.check_range("reading flash", offset, len)?;
        if self.use_stub {
            self.read_flash_stub(offset, len)
        } else {
            self.read_flash_rom(offset, len)
        }
    }

    /// Reads the partition table at `offset`, only up to its end marker (a table of six
    /// partitions is 256 bytes of a 4 KB sector: four ROM reads instead of 64).
    pub fn read_partition_table(&mut self, offset: u32) -> Result<Vec<u8>> {
        let step = if self.use_stub {
            4 * ROM_READ_BLOCK
        } else {
            ROM_READ_BLOCK
        };
        let mut table = Vec::new();
        while (table.len() as u32) < partition::TABLE_SIZE && !partition::is_complete(&table) {
            let at = offset + table.len() as u32;
            table.extend(self.read_flash(at, step)?);
        }
        Ok(table)
    }

    /// ROM path: READ_FLASH_SLOW returns 64 bytes per command. (espflash's own
    /// `read_flash_rom` advances the offset wrongly past 128 bytes, so this does it directly.)
    fn read_flash_rom(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len as usize);
        while (out.len() as u32) < len {
            let at = offset + out.len() as u32;
            let n = ROM_READ_BLOCK.min(len - out.len() as u32);
            let conn = self.flasher.connection();
            let resp = conn
                .with_timeout(CommandType::ReadFlashSlow.timeout(), |c| {
                    c.command(Command::ReadFlashSlow {
                        offset: at,
                        size: n,
                        block_size: ROM_READ_BLOCK,
                        max_in_flight: 1,
                    })
                })
                .map_err(|e| read_error(&self.port, at, e))?;
            let data: Vec<u8> = resp.try_into().map_err(|e| BoardError::Read {
                offset: at,
                detail: format!("{e}"),
            })?;
            if data.len() < n as usize {
                return Err(BoardError::Read {
                    offset: at,
                    detail: format!("short reply ({} of {n} bytes)", data.len()),
                });
            }
            out.extend_from_slice(&data[..n as usize]);
        }
        Ok(out)
    }

    /// Stub path: READ_FLASH streams blocks that the host acknowledges, then an MD5.
    fn read_flash_stub(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        let port = self.port.clone();
        let conn = self.flasher.connection();
        conn.with_timeout(CommandType::ReadFlash.timeout(), |c| {
            c.command(Command::ReadFlash {
                offset,
                size: len,
                block_size: STUB_READ_BLOCK,
                max_in_flight: 64,
            })
        })
        .map_err(|e| read_error(&port, offset, e))?;
        let stopped = || BoardError::LineDropped {
            port: port.clone(),
            during: "reading flash",
            detail: "the board stopped sending".into(),
            state: "nothing was written to the board",
        };
        let mut data = Vec::with_capacity(len as usize);
        while (data.len() as u32) < len {
            let chunk: Vec<u8> = conn
                .read_flash_response()
                .map_err(|e| read_error(&port, offset, e))?
                .ok_or_else(stopped)?
                .value
                .try_into()
                .map_err(|e| BoardError::Read {
                    offset,
                    detail: format!("{e}"),
                })?;
            data.extend_from_slice(&chunk);
            if (data.len() as u32) < len && (chunk.len() as u32) < STUB_READ_BLOCK {
                return Err(BoardError::Read {
                    offset,
                    detail: format!("short block ({} bytes)", chunk.len()),
                });
            }
            conn.write_raw(data.len() as u32)
                .map_err(|e| read_error(&port, offset, e))?;
        }
        let digest: Vec<u8> = conn
            .read_flash_response()
            .map_err(|e| read_error(&port, offset, e))?
            .ok_or_else(stopped)?
            .value
            .try_into()
            .map_err(|e| BoardError::Read {
                offset,
                detail: format!("no final MD5: {e}"),
            })?;
        if data.len() as u32 != len || digest.as_slice() != Md5::digest(&data).as_slice() {
            return Err(BoardError::ReadMd5Mismatch { offset });
        }
        Ok(data)
    }

    /// The board's MD5 of a flash region.
    pub fn md5(&mut self, offset: u32, len: u32) -> Result<[u8; 16]> {
        self.check_range("MD5 of flash", offset, len)?;
        let conn = self.flasher.connection();
        let v: u128 = conn
            .with_timeout(CommandType::FlashMd5.timeout_for_size(len), |c| {
                c.command(Command::FlashMd5 { offset, size: len })
            })
            .and_then(|r| r.try_into())
            .map_err(|e| self.dropped("asking for an MD5", e))?;
        Ok(v.to_be_bytes())
    }

    /// Writes `data` at `offset` and checks the board's MD5 of it. The loader stays in
    /// download mode afterwards (ROM and stub alike).
    pub fn write_verified(
        &mut self,
        offset: u32,
        data: &[u8],
        progress: &mut dyn ProgressCallbacks,
    ) -> Result<()> {
        self.check_range("writing flash", offset, data.len() as u32)?;
        if self.use_stub {
            return self
                .flasher
                .write_bin_to_flash(offset, data, progress)
                .map_err(|e| match e {
                    espflash::Error::VerifyFailed => BoardError::Md5Mismatch { offset },
                    espflash::Error::RomError(_) => BoardError::Write {
                        offset,
                        detail: e.to_string(),
                    },
                    other => BoardError::LineDropped {
                        port: self.port.clone(),
                        during: "writing",
                        detail: other.to_string(),
                        state: PARTLY_WRITTEN,
                    },
                });
        }
        self.write_deflated_rom(offset, data, progress)
    }

    /// ROM loader: `FLASH_DEFL_BEGIN` (the ROM erases the region), the zlib stream in
    /// 1 KB blocks, then the board's MD5 of the region against the data's.
    fn write_deflated_rom(
        &mut self,
        offset: u32,
        data: &[u8],
        progress: &mut dyn ProgressCallbacks,
    ) -> Result<()> {
        let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(data).expect("writing into a Vec cannot fail");
        let compressed = z.finish().expect("writing into a Vec cannot fail");
        let blocks = (compressed.len() as u32).div_ceil(ROM_BLOCK);
        // The ROM wants the size rounded up to whole write blocks.
        let erase_size = (data.len() as u32).div_ceil(ROM_BLOCK) * ROM_BLOCK;
        let supports_encryption = self.flasher.chip() != Chip::Esp32;
        let port = self.port.clone();
        let fail = |begun: bool, e: espflash::Error| match e {
            espflash::Error::RomError(_) => BoardError::Write {
                offset,
                detail: e.to_string(),
            },
            other => BoardError::LineDropped {
                port: port.clone(),
                during: "writing",
                detail: other.to_string(),
                state: if begun {
                    PARTLY_WRITTEN
                } else {
                    "nothing was written to the board"
                },
            },
        };
        progress.init(offset, blocks as usize);
        let conn = self.flasher.connection();
        conn.with_timeout(
            CommandType::FlashDeflBegin.timeout_for_size(erase_size),
            |c| {
                c.command(Command::FlashDeflBegin {
                    size: erase_size,
                    blocks,
                    block_size: ROM_BLOCK,
                    offset,
                    supports_encryption,
                })
            },
        )
        .map_err(|e| fail(false, e))?;
        for (i, block) in compressed.chunks(ROM_BLOCK as usize).enumerate() {
            // A block the ROM refused (a checksum spoilt on the line) was not taken: send it
            // again, as esptool does. The MD5 below is the proof either way.
            let mut attempt = 0;
            loop {
                let sent = conn.with_timeout(
                    CommandType::FlashDeflData.timeout_for_size(data.len() as u32),
                    |c| {
                        c.command(Command::FlashDeflData {
                            data: block,
                            pad_to: 0,
                            pad_byte: 0xFF,
                            sequence: i as u32,
                        })
                    },
                );
                match sent {
                    Ok(_) => break,
                    Err(espflash::Error::RomError(_)) if attempt < ROM_BLOCK_RETRIES => {
                        attempt += 1
                    }
                    Err(e) => return Err(fail(true, e)),
                }
            }
            progress.update(i + 1);
        }
        progress.verifying();
        let on_board: u128 = conn
            .with_timeout(
                CommandType::FlashMd5.timeout_for_size(data.len() as u32),
                |c| {
                    c.command(Command::FlashMd5 {
                        offset,
                        size: data.len() as u32,
                    })
                },
            )
            .and_then(|r| r.try_into())
            .map_err(|e| fail(true, e))?;
        if on_board != u128::from_be_bytes(Md5::digest(data).into()) {
            return Err(BoardError::Md5Mismatch { offset });
        }
        progress.finish(false);
        Ok(())
    }

    /// Applies `--after`: a hard reset into the application, or staying in the loader (when
    /// the stub ran, it is asked to reboot into the ROM loader, as espflash and esptool do for
    /// "no reset"), so the next tool finds the board in download mode.
    pub fn finish(mut self) -> Result<()> {
        match self.after {
            After::HardReset => self
                .flasher
                .connection()
                .reset()
                .map_err(|e| BoardError::Reset {
                    detail: e.to_string(),
                }),
            After::NoReset if self.use_stub => {
                let conn = self.flasher.connection();
                conn.with_timeout(CommandType::FlashBegin.timeout(), |c| {
                    c.command(Command::FlashBegin {
                        size: 0,
                        blocks: 0,
                        block_size: 0x400,
                        offset: 0,
                        supports_encryption: false,
                    })
                })
                .and_then(|_| {
                    conn.with_timeout(CommandType::FlashEnd.timeout(), |c| {
                        c.write_command(Command::FlashEnd { reboot: true })
                    })
                })
                .map_err(|e| BoardError::ReturnToLoader {
                    detail: e.to_string(),
                })
            }
            After::NoReset => Ok(()),
        }
    }
}

/// What a write that broke off after the erase leaves behind.
const PARTLY_WRITTEN: &str = "the config partition was erased and may be partly written: the board is NOT provisioned; reconnect it and run the write again";

/// A failed read: the ROM refusing it is a read error, anything else the line.
fn read_error(port: &str, offset: u32, e: espflash::Error) -> BoardError {
    match e {
        espflash::Error::RomError(_) => BoardError::Read {
            offset,
            detail: e.to_string(),
        },
        other => BoardError::LineDropped {
            port: port.into(),
            during: "reading flash",
            detail: format!("at {offset:#x}: {other}"),
            state: "nothing was written to the board",
        },
    }
}

/// USB identity of a port, so espflash picks the right reset sequence.
fn usb_info(port: &str) -> UsbPortInfo {
    let (vid, pid) = super::ports::usb_ids(port).unwrap_or((0, 0));
    UsbPortInfo {
        vid,
        pid,
        serial_number: None,
        manufacturer: None,
        product: None,
    }
}

fn explain_connect_error(port: &str, opts: &LinkOptions, e: espflash::Error) -> BoardError {
    match e {
        espflash::Error::ChipMismatch(found, wanted) => BoardError::WrongChip {
            port: port.into(),
            found,
            wanted,
        },
        espflash::Error::Connection(_) | espflash::Error::ChipDetectError(_) => {
            let hint = if opts.before == Before::NoReset {
                "the board is not in download mode (hold BOOT, tap RESET, release BOOT) or this is not an ESP board"
            } else {
                "the reset into download mode did not work and no bootloader answered; hold BOOT and tap RESET, then retry with --before no-reset"
            };
            BoardError::NoAnswer {
                port: port.into(),
                detail: e.to_string(),
                hint,
            }
        }
        other => BoardError::Connect {
            port: port.into(),
            detail: other.to_string(),
        },
    }
}
