//! A connection to one board's ROM bootloader (or the flasher stub), through espflash.
//!
//! espflash does the serial protocol; this adds what dpskit needs on top: errors a factory
//! engineer can act on, reads into memory (espflash only reads into files), and a write that
//! never resets implicitly, so "written" and "reset failed" stay two different outcomes.

use anyhow::{anyhow, bail, Context, Result};
use espflash::command::{Command, CommandType};
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::target::{Chip, ProgressCallbacks};
use md5::{Digest, Md5};
use serialport::{FlowControl, UsbPortInfo};
use std::time::Duration;

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
}

impl BoardLink {
    /// Opens the port, resets into the bootloader as asked, syncs and detects the chip.
    pub fn open(opts: &LinkOptions) -> Result<Self> {
        let port = &opts.port;
        if !super::ports::exists(port) {
            bail!("--port: {port} does not exist; list serial ports with `dpskit ports`");
        }
        let serial = serialport::new(port, 115_200)
            .flow_control(FlowControl::None)
            .timeout(Duration::from_secs(3))
            .open_native()
            .map_err(|e| match e.kind() {
                serialport::ErrorKind::NoDevice => anyhow!("--port: {port} is busy or gone ({e}); close serial monitors using it"),
                serialport::ErrorKind::Io(std::io::ErrorKind::PermissionDenied) => {
                    anyhow!("--port: no permission to open {port}; add yourself to the 'dialout' group")
                }
                _ => anyhow!("--port: cannot open {port}: {e}; is another program (a serial monitor) using it?"),
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
        let connection = Connection::new(serial, info, after, before, 115_200);
        let flasher =
            Flasher::connect(connection, opts.use_stub, true, false, opts.chip, opts.baud)
                .map_err(|e| explain_connect_error(port, opts, e))?;
        Ok(BoardLink {
            flasher,
            use_stub: opts.use_stub,
            after: opts.after,
            port: port.clone(),
        })
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

    /// Reads `len` bytes of flash at `offset` into memory.
    pub fn read_flash(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        if self.use_stub {
            self.read_flash_stub(offset, len)
        } else {
            self.read_flash_rom(offset, len)
        }
    }

    /// ROM path: READ_FLASH_SLOW returns 64 bytes per command. (espflash's own
    /// `read_flash_rom` advances the offset wrongly past 128 bytes, so this does it directly.)
    fn read_flash_rom(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        const BLOCK: u32 = 64;
        let mut out = Vec::with_capacity(len as usize);
        while (out.len() as u32) < len {
            let at = offset + out.len() as u32;
            let n = BLOCK.min(len - out.len() as u32);
            let conn = self.flasher.connection();
            let resp = conn
                .with_timeout(CommandType::ReadFlashSlow.timeout(), |c| {
                    c.command(Command::ReadFlashSlow {
                        offset: at,
                        size: n,
                        block_size: BLOCK,
                        max_in_flight: 1,
                    })
                })
                .with_context(|| {
                    format!("reading flash at {at:#x}: the board stopped answering")
                })?;
            let data: Vec<u8> = resp
                .try_into()
                .map_err(|e| anyhow!("reading flash at {at:#x}: {e}"))?;
            if data.len() < n as usize {
                bail!(
                    "reading flash at {at:#x}: short reply ({} of {n} bytes)",
                    data.len()
                );
            }
            out.extend_from_slice(&data[..n as usize]);
        }
        Ok(out)
    }

    /// Stub path: READ_FLASH streams blocks that the host acknowledges, then an MD5.
    fn read_flash_stub(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        const BLOCK: u32 = 0x1000;
        let conn = self.flasher.connection();
        conn.with_timeout(CommandType::ReadFlash.timeout(), |c| {
            c.command(Command::ReadFlash {
                offset,
                size: len,
                block_size: BLOCK,
                max_in_flight: 64,
            })
        })
        .with_context(|| format!("reading flash at {offset:#x}"))?;
        let mut data = Vec::with_capacity(len as usize);
        while (data.len() as u32) < len {
            let chunk: Vec<u8> = conn
                .read_flash_response()?
                .ok_or_else(|| anyhow!("reading flash at {offset:#x}: the board stopped sending"))?
                .value
                .try_into()
                .map_err(|e| anyhow!("reading flash: {e}"))?;
            data.extend_from_slice(&chunk);
            if (data.len() as u32) < len && (chunk.len() as u32) < BLOCK {
                bail!(
                    "reading flash at {offset:#x}: short block ({} bytes)",
                    chunk.len()
                );
            }
            conn.write_raw(data.len() as u32)?;
        }
        let digest: Vec<u8> = conn
            .read_flash_response()?
            .ok_or_else(|| anyhow!("reading flash: no final MD5"))?
            .value
            .try_into()
            .map_err(|e| anyhow!("reading flash: {e}"))?;
        if data.len() as u32 != len || digest.as_slice() != Md5::digest(&data).as_slice() {
            bail!(
                "reading flash at {offset:#x}: data does not match the board's MD5 (line noise?)"
            );
        }
        Ok(data)
    }

    /// The board's MD5 of a flash region.
    pub fn md5(&mut self, offset: u32, len: u32) -> Result<[u8; 16]> {
        let v = self
            .flasher
            .checksum_md5(offset, len)
            .with_context(|| format!("MD5 of flash at {offset:#x}"))?;
        Ok(v.to_be_bytes())
    }

    /// Writes `data` at `offset` and checks the board's MD5 of it. In ROM mode the loader
    /// exits after this (FLASH_END), so do every read first.
    pub fn write_verified(
        &mut self,
        offset: u32,
        data: &[u8],
        progress: &mut dyn ProgressCallbacks,
    ) -> Result<()> {
        self.flasher.write_bin_to_flash(offset, data, progress).map_err(|e| match e {
            espflash::Error::VerifyFailed => {
                anyhow!("write at {offset:#x}: the board's MD5 does not match what was sent; the board is NOT provisioned")
            }
            other => anyhow!("write at {offset:#x} failed: {other}; the board is NOT provisioned"),
        })
    }

    /// Applies `--after`: a hard reset into the application, or staying in the ROM loader
    /// (when the stub ran, it is asked to reboot into the ROM loader, as espflash and esptool
    /// do for "no reset"), so the next tool finds the board in download mode.
    pub fn finish(mut self) -> Result<()> {
        match self.after {
            After::HardReset => self.flasher.connection().reset().map_err(|e| {
                anyhow!("reset after writing failed ({e}); the data is written and verified — reset the board by hand")
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
                .map_err(|e| anyhow!("returning the board to its ROM loader failed: {e}"))
            }
            After::NoReset => Ok(()),
        }
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

fn explain_connect_error(port: &str, opts: &LinkOptions, e: espflash::Error) -> anyhow::Error {
    match e {
        espflash::Error::ChipMismatch(found, wanted) => anyhow!(
            "--chip: the board on {port} is an {found}, not an {wanted}; use --chip {found} if that is intended"
        ),
        espflash::Error::Connection(_) | espflash::Error::ChipDetectError(_) => {
            let hint = if opts.before == Before::NoReset {
                "the board is not in download mode (hold BOOT, tap RESET, release BOOT) or this is not an ESP board"
            } else {
                "the reset into download mode did not work and no bootloader answered; hold BOOT and tap RESET, then retry with --before no-reset"
            };
            anyhow!("{port}: no ESP bootloader answered ({e}); {hint}")
        }
        other => anyhow!("{port}: connecting failed: {other}"),
    }
}
