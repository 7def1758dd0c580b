//! The ESP32-S3 serial download protocol as the chip speaks it — the ROM loader, and the flasher
//! stub once one is uploaded — with no I/O: bytes in, [`Output`]s out, time passed in by the
//! caller. The pty thread in `board.rs` drives it; unit tests drive it directly.
//!
//! Behaviour follows reference §6 and the stub sources (esptool's legacy stub and
//! esp-flasher-stub): ROM replies end in 4 status bytes `[status, error, 0, 0]`, stub replies in
//! 2 bytes `[error, 0]`; the ROM erases at `FLASH_BEGIN`, the stub just in time; the ROM leaves
//! the loader on `FLASH_END`, the stub reboots into the ROM loader on `FLASH_END(0)` and stays on
//! `FLASH_END(1)`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flate2::{Decompress, FlushDecompress, Status};
use md5::{Digest, Md5};

use super::efuse::{EfuseBlocks, EfuseProfile};
use super::flash::{FlashStore, SECTOR_SIZE};
use super::slip;

/// Command opcodes.
pub mod op {
    pub const FLASH_BEGIN: u8 = 0x02;
    pub const FLASH_DATA: u8 = 0x03;
    pub const FLASH_END: u8 = 0x04;
    pub const MEM_BEGIN: u8 = 0x05;
    pub const MEM_END: u8 = 0x06;
    pub const MEM_DATA: u8 = 0x07;
    pub const SYNC: u8 = 0x08;
    pub const WRITE_REG: u8 = 0x09;
    pub const READ_REG: u8 = 0x0A;
    pub const SPI_SET_PARAMS: u8 = 0x0B;
    pub const SPI_ATTACH: u8 = 0x0D;
    pub const READ_FLASH_SLOW: u8 = 0x0E;
    pub const CHANGE_BAUDRATE: u8 = 0x0F;
    pub const FLASH_DEFL_BEGIN: u8 = 0x10;
    pub const FLASH_DEFL_DATA: u8 = 0x11;
    pub const FLASH_DEFL_END: u8 = 0x12;
    pub const SPI_FLASH_MD5: u8 = 0x13;
    pub const GET_SECURITY_INFO: u8 = 0x14;
    pub const ERASE_FLASH: u8 = 0xD0;
    pub const ERASE_REGION: u8 = 0xD1;
    pub const READ_FLASH: u8 = 0xD2;
    pub const RUN_USER_CODE: u8 = 0xD3;

    /// Parses a command name (`FLASH_DATA`, `flash-data`) or number (`0x03`).
    pub fn parse(s: &str) -> Result<u8, String> {
        let t = s.trim();
        if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            return u8::from_str_radix(hex, 16).map_err(|_| format!("bad command number {s:?}"));
        }
        if let Ok(n) = t.parse::<u8>() {
            return Ok(n);
        }
        let name = t.to_ascii_uppercase().replace('-', "_");
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                format!("unknown command {s:?}: use a name like FLASH_DATA or a number like 0x03")
            })
    }

    /// The name of an opcode, for logs.
    pub fn name(op: u8) -> &'static str {
        NAMES
            .iter()
            .find(|(_, v)| *v == op)
            .map_or("UNKNOWN", |(n, _)| n)
    }

    const NAMES: &[(&str, u8)] = &[
        ("FLASH_BEGIN", FLASH_BEGIN),
        ("FLASH_DATA", FLASH_DATA),
        ("FLASH_END", FLASH_END),
        ("MEM_BEGIN", MEM_BEGIN),
        ("MEM_END", MEM_END),
        ("MEM_DATA", MEM_DATA),
        ("SYNC", SYNC),
        ("WRITE_REG", WRITE_REG),
        ("READ_REG", READ_REG),
        ("SPI_SET_PARAMS", SPI_SET_PARAMS),
        ("SPI_ATTACH", SPI_ATTACH),
        ("READ_FLASH_SLOW", READ_FLASH_SLOW),
        ("CHANGE_BAUDRATE", CHANGE_BAUDRATE),
        ("FLASH_DEFL_BEGIN", FLASH_DEFL_BEGIN),
        ("FLASH_DEFL_DATA", FLASH_DEFL_DATA),
        ("FLASH_DEFL_END", FLASH_DEFL_END),
        ("SPI_FLASH_MD5", SPI_FLASH_MD5),
        ("GET_SECURITY_INFO", GET_SECURITY_INFO),
        ("ERASE_FLASH", ERASE_FLASH),
        ("ERASE_REGION", ERASE_REGION),
        ("READ_FLASH", READ_FLASH),
        ("RUN_USER_CODE", RUN_USER_CODE),
    ];
}

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
const ROM_READ_FN_DEFAULT: u32 = 0x4000_A2B8;
/// SYNC reply value of the ROM (bytes `07 12 20 55`, as in the ESP32 trace of reference §6.2).
const ROM_SYNC_VALUE: u32 = 0x5520_1207;
/// The frame the stub sends when it starts.
pub const OHAI: &[u8; 4] = b"OHAI";
const SYNC_PAYLOAD_HEAD: [u8; 4] = [0x07, 0x07, 0x12, 0x20];
const ROM_READ_SLOW_BUF: usize = 64;
const STUB_MAX_READ_PACKET: u32 = 0x1000;

/// Which program answers on the serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    Rom,
    Stub,
}

/// What the board is doing, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardState {
    /// ROM serial download mode.
    Rom,
    /// The flasher stub is running.
    Stub,
    /// The loader was left (ROM `FLASH_END`, stub `RUN_USER_CODE`): the app runs and the line
    /// is silent for the loader protocol.
    App,
    /// Resetting; download mode follows.
    Rebooting,
    /// Jumped into RAM that holds no stub; silent until reset.
    Crashed,
    /// A stall fault fired: input is consumed, nothing is answered.
    Stalled,
    /// The line-drop fault fired: the pty is gone.
    LineDropped,
}

/// Something the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the line.
    Send(Vec<u8>),
    /// Switch the line to this baud rate (after the bytes before it are written).
    SetBaud(u32),
    /// Close the line (fault injection).
    DropLine,
}

/// Corrupt one reply: XOR `0xFF` into byte `offset` of reply number `nth` (1-based, counting
/// command replies — each of the 8 SYNC replies counts — but not stub data packets). Offset 1 is
/// the op byte (the client discards the reply), 4 the first value byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorruptReply {
    pub nth: u64,
    pub offset: usize,
}

/// Faults to inject. Counters start when the faults are set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Close the line once this many bytes were received from the host.
    pub drop_after_bytes: Option<u64>,
    /// Answer this many commands, then stop answering.
    pub stall_after_commands: Option<u64>,
    /// Stop answering when a command with this opcode arrives (it gets no reply).
    pub stall_at_command: Option<u8>,
    pub corrupt_reply: Option<CorruptReply>,
    /// Every MD5 reply (`SPI_FLASH_MD5`, stub `READ_FLASH` digest) carries a wrong digest.
    pub corrupt_md5: bool,
}

/// How the simulated chip behaves around resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetBehaviour {
    /// After the ROM leaves the loader (`FLASH_END`) or the stub runs user code, the virtual
    /// jig resets the board back into download mode after this long. `None`: it stays in the
    /// app until [`Device::reset_to_download`].
    pub reenter_download_after: Option<Duration>,
    /// How long a reboot (stub `FLASH_END(0)`) keeps the board silent.
    pub reboot_time: Duration,
    /// Print the ROM boot banner on resets, as a real chip does on UART0.
    pub banner: bool,
}

impl Default for ResetBehaviour {
    fn default() -> Self {
        ResetBehaviour {
            reenter_download_after: Some(Duration::from_millis(250)),
            reboot_time: Duration::from_millis(20),
            banner: true,
        }
    }
}

/// Counters for tests and the CLI.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub commands: u64,
    pub replies: u64,
    pub stub_starts: u64,
    pub loader_exits: u64,
    pub flash_bytes_programmed: u64,
    pub last_command: Option<u8>,
}

/// Everything that makes one chip.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub profile: EfuseProfile,
    /// JEDEC RDID bytes: manufacturer, memory type, capacity (2^capacity bytes).
    pub jedec_id: [u8; 3],
    pub reset: ResetBehaviour,
    pub faults: Faults,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Download(Loader),
    App { reenter_at: Option<Instant> },
    Rebooting { until: Instant },
    Crashed,
}

/// A flash write in progress (`FLASH_BEGIN` / `FLASH_DEFL_BEGIN`).
struct FlashWrite {
    deflate: bool,
    offset: u32,
    size: u32,
    num_blocks: u32,
    block_size: u32,
    next_seq: u32,
    /// Bytes written so far (stub and deflate: sequential position).
    written: u32,
    /// Stub: erase pointer for just-in-time erasing, and its end.
    erased_until: u32,
    erase_end: u32,
    inflater: Option<Decompress>,
}

struct MemWrite {
    addr: u32,
    size: u32,
    next_seq: u32,
    written: u32,
}

/// Stub `READ_FLASH` streaming state.
struct ReadJob {
    offset: u32,
    len: u32,
    packet: u32,
    window: u32,
    sent: u32,
    acked: u32,
    md5: Md5,
}

/// One virtual chip: eFuses, registers, SPI flash and the loader state machine.
pub struct Device {
    cfg: DeviceConfig,
    efuse: EfuseBlocks,
    flash: Box<dyn FlashStore>,
    regs: HashMap<u32, u32>,
    phase: Phase,
    decoder: slip::Decoder,
    write: Option<FlashWrite>,
    mem: Option<MemWrite>,
    /// RAM ranges (start, end) written with MEM_DATA since the last reset.
    ram: Vec<(u32, u32)>,
    read_job: Option<ReadJob>,
    stalled: bool,
    dropped: bool,
    fault_bytes: u64,
    fault_commands: u64,
    fault_replies: u64,
    baud: u32,
    spi_flash_size: u32,
    stats: Stats,
}

fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0xEF, |c, b| c ^ b)
}

fn align_down(v: u32, a: u32) -> u32 {
    v / a * a
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

type Reply = Result<(u32, Vec<u8>), u8>;

impl Device {
    /// A chip in ROM download mode, as after a reset with GPIO0 held low.
    pub fn new(cfg: DeviceConfig, flash: Box<dyn FlashStore>) -> Self {
        let efuse = cfg.profile.blocks();
        let spi_flash_size = flash.size();
        let mut d = Device {
            cfg,
            efuse,
            flash,
            regs: HashMap::new(),
            phase: Phase::Download(Loader::Rom),
            decoder: slip::Decoder::new(),
            write: None,
            mem: None,
            ram: Vec::new(),
            read_job: None,
            stalled: false,
            dropped: false,
            fault_bytes: 0,
            fault_commands: 0,
            fault_replies: 0,
            baud: 115_200,
            spi_flash_size,
            stats: Stats::default(),
        };
        d.reset_registers();
        d
    }

    pub fn state(&self) -> BoardState {
        if self.dropped {
            return BoardState::LineDropped;
        }
        if self.stalled {
            return BoardState::Stalled;
        }
        match self.phase {
            Phase::Download(Loader::Rom) => BoardState::Rom,
            Phase::Download(Loader::Stub) => BoardState::Stub,
            Phase::App { .. } => BoardState::App,
            Phase::Rebooting { .. } => BoardState::Rebooting,
            Phase::Crashed => BoardState::Crashed,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn profile(&self) -> &EfuseProfile {
        &self.cfg.profile
    }

    /// The baud rate the chip currently uses.
    pub fn baud(&self) -> u32 {
        self.baud
    }

    /// Direct access to the flash chip (for tests and tools running next to the board).
    pub fn flash_mut(&mut self) -> &mut dyn FlashStore {
        self.flash.as_mut()
    }

    /// Replaces the fault plan and restarts its counters.
    pub fn set_faults(&mut self, faults: Faults) {
        self.cfg.faults = faults;
        self.fault_bytes = 0;
        self.fault_commands = 0;
        self.fault_replies = 0;
    }

    /// Replaces the reset behaviour (e.g. to stop automatic re-entry into download mode).
    pub fn set_reset_behaviour(&mut self, r: ResetBehaviour) {
        self.cfg.reset = r;
    }

    /// When [`Device::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::App { reenter_at } => reenter_at,
            Phase::Rebooting { until } => Some(until),
            _ => None,
        }
    }

    /// Advances timers: finishes reboots and re-enters download mode when due.
    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.tick_into(now, &mut out);
        out
    }

    /// Resets the chip with GPIO0 held low (EN pulse on the jig): back to ROM download mode,
    /// clearing a stall or a crash. Does nothing once the line was dropped.
    pub fn reset_to_download(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        if !self.dropped {
            self.stalled = false;
            self.enter_rom_download("rst:0x1 (POWERON)", &mut out);
        }
        out
    }

    /// Processes bytes from the host.
    pub fn feed(&mut self, input: &[u8], now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.tick_into(now, &mut out);
        for &b in input {
            if self.dropped {
                break;
            }
            self.stats.bytes_in += 1;
            self.fault_bytes += 1;
            if let Some(frame) = self.decoder.push(b) {
                self.on_frame(&frame, now, &mut out);
            }
            if let Some(n) = self.cfg.faults.drop_after_bytes {
                if self.fault_bytes >= n {
                    self.dropped = true;
                    out.push(Output::DropLine);
                }
            }
        }
        merge_sends(out)
    }

    fn tick_into(&mut self, now: Instant, out: &mut Vec<Output>) {
        match self.phase {
            Phase::App {
                reenter_at: Some(t),
            } if now >= t => self.enter_rom_download("rst:0x1 (POWERON)", out),
            Phase::Rebooting { until } if now >= until => {
                self.enter_rom_download("rst:0x3 (RTC_SW_SYS_RST)", out)
            }
            _ => {}
        }
    }

    fn reset_registers(&mut self) {
        self.regs.clear();
        self.regs
            .insert(reg::ROM_SPIFLASH_READ_PTR, ROM_READ_FN_DEFAULT);
        self.regs.insert(reg::SPI_USR, 0x8000_0000);
        self.regs.insert(reg::SPI_USR2, 0x7000_0000);
        self.regs.insert(reg::GPIO_STRAP, 0x0000_0000); // GPIO0 low: download boot
    }

    fn enter_rom_download(&mut self, reset_reason: &str, out: &mut Vec<Output>) {
        self.phase = Phase::Download(Loader::Rom);
        self.write = None;
        self.mem = None;
        self.ram.clear();
        self.read_job = None;
        self.decoder.reset();
        self.reset_registers();
        self.spi_flash_size = self.flash.size();
        if self.baud != 115_200 {
            self.baud = 115_200;
            out.push(Output::SetBaud(115_200));
        }
        if self.cfg.reset.banner {
            let text = format!(
                "ESP-ROM:esp32s3-20210327\r\nBuild:Mar 27 2021\r\n{reset_reason},boot:0x0 (DOWNLOAD(USB/UART0))\r\nwaiting for download\r\n"
            );
            self.emit_raw(text.into_bytes(), out);
        }
    }

    /// The loader exits into the app (ROM `FLASH_END`, stub `RUN_USER_CODE`).
    fn leave_loader(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.stats.loader_exits += 1;
        self.write = None;
        self.read_job = None;
        self.phase = Phase::App {
            reenter_at: self.cfg.reset.reenter_download_after.map(|d| now + d),
        };
        if self.cfg.reset.banner {
            let text = "ESP-ROM:esp32s3-20210327\r\nBuild:Mar 27 2021\r\nrst:0xc (RTC_SW_CPU_RST),boot:0x8 (SPI_FAST_FLASH_BOOT)\r\n";
            self.emit_raw(text.as_bytes().to_vec(), out);
        }
    }

    fn emit_raw(&mut self, bytes: Vec<u8>, out: &mut Vec<Output>) {
        self.stats.bytes_out += bytes.len() as u64;
        out.push(Output::Send(bytes));
    }

    fn emit_frame(&mut self, payload: &[u8], out: &mut Vec<Output>) {
        self.emit_raw(slip::encode(payload), out);
    }

    fn loader(&self) -> Option<Loader> {
        match self.phase {
            Phase::Download(l) => Some(l),
            _ => None,
        }
    }

    fn on_frame(&mut self, frame: &[u8], now: Instant, out: &mut Vec<Output>) {
        let Some(loader) = self.loader() else {
            return; // not listening
        };
        if self.stalled {
            return;
        }
        if self.read_job.is_some() {
            self.on_read_ack(frame, out);
            return;
        }
        if frame.len() < 8 || frame[0] != 0x00 {
            return; // not a request
        }
        let op = frame[1];
        let size = u16::from_le_bytes([frame[2], frame[3]]) as usize;
        let chk = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
        let data = &frame[8..];

        self.stats.commands += 1;
        self.stats.last_command = Some(op);
        self.fault_commands += 1;
        if let Some(n) = self.cfg.faults.stall_after_commands {
            if self.fault_commands > n {
                self.stalled = true;
                return;
            }
        }
        if self.cfg.faults.stall_at_command == Some(op) {
            self.stalled = true;
            return;
        }

        if size != data.len() {
            let err = match loader {
                Loader::Rom => rom_err::INVALID_MESSAGE,
                Loader::Stub => stub_err::BAD_DATA_LEN,
            };
            self.reply(op, Err(err), out);
            return;
        }

        match loader {
            Loader::Rom => self.rom_command(op, data, chk, now, out),
            Loader::Stub => self.stub_command(op, data, chk, now, out),
        }
    }

    /// Sends a command reply with the loader's status bytes.
    fn reply(&mut self, op: u8, result: Reply, out: &mut Vec<Output>) {
        let rom = self.loader() == Some(Loader::Rom);
        let (value, data, status): (u32, Vec<u8>, Vec<u8>) = match result {
            Ok((v, d)) => (v, d, if rom { vec![0, 0, 0, 0] } else { vec![0, 0] }),
            Err(e) => (
                0,
                Vec::new(),
                if rom { vec![1, e, 0, 0] } else { vec![e, 0] },
            ),
        };
        self.send_reply(op, value, &data, &status, out);
    }

    fn send_reply(
        &mut self,
        op: u8,
        value: u32,
        data: &[u8],
        status: &[u8],
        out: &mut Vec<Output>,
    ) {
        let mut pkt = Vec::with_capacity(8 + data.len() + status.len());
        pkt.push(0x01);
        pkt.push(op);
        pkt.extend_from_slice(&((data.len() + status.len()) as u16).to_le_bytes());
        pkt.extend_from_slice(&value.to_le_bytes());
        pkt.extend_from_slice(data);
        pkt.extend_from_slice(status);
        self.stats.replies += 1;
        self.fault_replies += 1;
        if let Some(c) = self.cfg.faults.corrupt_reply {
            if c.nth == self.fault_replies && c.offset < pkt.len() {
                pkt[c.offset] ^= 0xFF;
            }
        }
        self.emit_frame(&pkt, out);
    }

    /// The ROM's answer to a command it does not know: a reply whose op does not echo the
    /// request, status 1, error 0x05 — what esptool's `UnsupportedCommandError` check looks for
    /// (the exact op value of the real ROM is unconfirmed; 0 is used).
    fn rom_unsupported(&mut self, out: &mut Vec<Output>) {
        self.send_reply(0x00, 0, &[], &[1, rom_err::INVALID_MESSAGE, 0, 0], out);
    }

    // ---------------------------------------------------------------- ROM

    fn rom_command(&mut self, op: u8, data: &[u8], chk: u32, now: Instant, out: &mut Vec<Output>) {
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

    fn rom_flash_begin(&mut self, deflate: bool, data: &[u8]) -> Reply {
        let (size, num_blocks, block_size, offset) =
            (le32(data, 0), le32(data, 1), le32(data, 2), le32(data, 3));
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
        }
        self.write = Some(FlashWrite {
            deflate,
            offset,
            size,
            num_blocks,
            block_size,
            next_seq: 0,
            written: 0,
            erased_until: 0,
            erase_end: 0,
            inflater: deflate.then(|| Decompress::new(true)),
        });
        Ok((0, Vec::new()))
    }

    /// Validates a `*_DATA` payload: `[len, seq, 0, 0] ++ data` with the XOR checksum.
    fn data_block(data: &[u8], chk: u32) -> Result<(u32, &[u8]), DataError> {
        if data.len() < 16 {
            return Err(DataError::Length);
        }
        let len = le32(data, 0) as usize;
        let seq = le32(data, 1);
        let payload = &data[16..];
        if len != payload.len() {
            return Err(DataError::Length);
        }
        if u32::from(checksum(payload)) != chk {
            return Err(DataError::Checksum);
        }
        Ok((seq, payload))
    }

    fn rom_flash_data(&mut self, data: &[u8], chk: u32) -> Reply {
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
        self.stats.flash_bytes_programmed += n as u64;
        Ok((0, Vec::new()))
    }

    fn rom_flash_defl_data(&mut self, data: &[u8], chk: u32) -> Reply {
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

    fn rom_read_slow(&mut self, offset: u32, len: u32) -> Reply {
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

    // ---------------------------------------------------------------- stub

    fn stub_command(&mut self, op: u8, data: &[u8], chk: u32, now: Instant, out: &mut Vec<Output>) {
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
                    Ok(()) => ok(),
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
                            Ok(()) => ok(),
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

    fn stub_flash_begin(&mut self, deflate: bool, data: &[u8]) -> Reply {
        let (size, num_blocks, block_size, offset) =
            (le32(data, 0), le32(data, 1), le32(data, 2), le32(data, 3));
        let erase_start = align_down(offset, SECTOR_SIZE);
        let erase_end = align_up(u64::from(offset) + u64::from(size), SECTOR_SIZE.into());
        if size > 0 && erase_end > u64::from(self.flash.size()) {
            self.write = None;
            return Err(stub_err::FAILED_SPI_OP);
        }
        self.write = Some(FlashWrite {
            deflate,
            offset,
            size,
            num_blocks,
            block_size,
            next_seq: 0,
            written: 0,
            erased_until: erase_start,
            erase_end: erase_end as u32,
            inflater: deflate.then(|| Decompress::new(true)),
        });
        Ok((0, Vec::new()))
    }

    fn stub_flash_data(&mut self, data: &[u8], chk: u32) -> Reply {
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

    fn stub_flash_defl_data(&mut self, data: &[u8], chk: u32) -> Reply {
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
    fn stub_program(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let w = self.write.as_mut().expect("in flash mode");
        let addr = w.offset + w.written;
        let end = addr + bytes.len() as u32;
        while w.erased_until < end && w.erased_until < w.erase_end {
            self.flash.erase(w.erased_until, SECTOR_SIZE)?;
            w.erased_until += SECTOR_SIZE;
        }
        self.flash.program(addr, bytes)?;
        w.written += bytes.len() as u32;
        self.stats.flash_bytes_programmed += bytes.len() as u64;
        Ok(())
    }

    /// Feeds compressed bytes to the write's zlib stream and writes what comes out.
    fn inflate_and_write(&mut self, mut input: &[u8], stub: bool) -> Result<(), InflateError> {
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
                    self.stats.flash_bytes_programmed += buf.len() as u64;
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

    fn pump_read(&mut self, out: &mut Vec<Output>) {
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

    fn finish_read(&mut self, digest: [u8; 16], out: &mut Vec<Output>) {
        self.read_job = None;
        let mut d = digest;
        if self.cfg.faults.corrupt_md5 {
            d[0] ^= 0x01;
        }
        self.emit_frame(&d, out);
    }

    fn on_read_ack(&mut self, frame: &[u8], out: &mut Vec<Output>) {
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

    // ---------------------------------------------------------------- shared

    fn md5_reply(&mut self, addr: u32, size: u32, rom: bool) -> Reply {
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
        if self.cfg.faults.corrupt_md5 {
            digest[0] ^= 0x01;
        }
        if rom {
            Ok((0, hex::encode(digest).into_bytes()))
        } else {
            Ok((0, digest.to_vec()))
        }
    }

    fn mem_begin(&mut self, data: &[u8]) {
        self.mem = Some(MemWrite {
            size: le32(data, 0),
            addr: le32(data, 3),
            next_seq: 0,
            written: 0,
        });
    }

    fn mem_data(&mut self, data: &[u8], chk: u32, loader: Loader) -> Reply {
        let (e_len, e_crc, e_act) = match loader {
            Loader::Rom => (
                rom_err::INVALID_MESSAGE,
                rom_err::INVALID_CRC,
                rom_err::FAILED_TO_ACT,
            ),
            Loader::Stub => (
                stub_err::BAD_DATA_LEN,
                stub_err::BAD_DATA_CHECKSUM,
                stub_err::NOT_IN_FLASH_MODE,
            ),
        };
        let (seq, payload) = match Self::data_block(data, chk) {
            Ok(v) => v,
            Err(DataError::Length) => return Err(e_len),
            Err(DataError::Checksum) => return Err(e_crc),
        };
        let Some(m) = self.mem.as_mut() else {
            return Err(e_act);
        };
        if seq != m.next_seq {
            return Err(e_act);
        }
        // espflash pads the last block to 4 bytes.
        if u64::from(m.written) + payload.len() as u64 > align_up(u64::from(m.size), 4) {
            return Err(e_len);
        }
        let start = m.addr.wrapping_add(m.written);
        m.written += payload.len() as u32;
        m.next_seq += 1;
        let end = start.saturating_add(payload.len() as u32);
        self.ram.push((start, end));
        Ok((0, Vec::new()))
    }

    fn in_uploaded_ram(&self, addr: u32) -> bool {
        self.ram.iter().any(|&(s, e)| addr >= s && addr < e)
    }

    /// ROM `MEM_END` with an entry point: if it points into uploaded code, that code is taken
    /// to be a flasher stub (nothing else is simulated), which greets with `OHAI`.
    fn jump(&mut self, entry: u32, out: &mut Vec<Output>) {
        if self.in_uploaded_ram(entry) {
            self.start_stub(out);
        } else {
            self.phase = Phase::Crashed;
        }
    }

    fn start_stub(&mut self, out: &mut Vec<Output>) {
        self.phase = Phase::Download(Loader::Stub);
        self.write = None;
        self.mem = None;
        self.stats.stub_starts += 1;
        self.emit_frame(OHAI, out);
    }

    fn change_baud(&mut self, baud: u32, out: &mut Vec<Output>) {
        if baud > 0 {
            self.baud = baud;
            out.push(Output::SetBaud(baud));
        }
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

    fn write_regs(&mut self, data: &[u8]) {
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
    fn spi_user_command(&mut self) {
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
}

enum DataError {
    Length,
    Checksum,
}

enum InflateError {
    Inflate,
    TooMuch,
    Flash,
}

/// Commands the ROM accepts in Secure Download Mode.
fn sdm_allows(op: u8) -> bool {
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

/// Joins adjacent `Send`s so the I/O layer writes them in one go.
fn merge_sends(out: Vec<Output>) -> Vec<Output> {
    let mut merged: Vec<Output> = Vec::with_capacity(out.len());
    for o in out {
        match (merged.last_mut(), o) {
            (Some(Output::Send(a)), Output::Send(b)) => a.extend_from_slice(&b),
            (_, o) => merged.push(o),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::efuse::{ChipKind, Security};
    use crate::sim::flash::MemFlash;
    use std::io::Write;

    fn device() -> Device {
        device_with(EfuseProfile::default(), Faults::default())
    }

    fn device_with(profile: EfuseProfile, faults: Faults) -> Device {
        let cfg = DeviceConfig {
            profile,
            jedec_id: [0xEF, 0x40, 0x16],
            reset: ResetBehaviour {
                banner: false,
                ..Default::default()
            },
            faults,
        };
        Device::new(cfg, Box::new(MemFlash::erased(4 << 20)))
    }

    fn cmd(op: u8, data: &[u8], chk: u32) -> Vec<u8> {
        let mut p = vec![0, op];
        p.extend_from_slice(&(data.len() as u16).to_le_bytes());
        p.extend_from_slice(&chk.to_le_bytes());
        p.extend_from_slice(data);
        slip::encode(&p)
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn data_cmd(op: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut d = words(&[payload.len() as u32, seq, 0, 0]);
        d.extend_from_slice(payload);
        cmd(op, &d, u32::from(checksum(payload)))
    }

    /// Sends bytes, returns the decoded frames that came back.
    fn exchange(d: &mut Device, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut dec = slip::Decoder::new();
        let mut frames = Vec::new();
        for o in d.feed(bytes, Instant::now()) {
            if let Output::Send(b) = o {
                frames.extend(dec.feed(&b));
            }
        }
        frames
    }

    fn one(d: &mut Device, bytes: &[u8]) -> Vec<u8> {
        let mut f = exchange(d, bytes);
        assert_eq!(f.len(), 1, "expected one reply, got {f:02x?}");
        f.remove(0)
    }

    fn value(r: &[u8]) -> u32 {
        u32::from_le_bytes(r[4..8].try_into().unwrap())
    }

    fn sync_payload() -> Vec<u8> {
        let mut s = SYNC_PAYLOAD_HEAD.to_vec();
        s.extend([0x55; 32]);
        s
    }

    #[test]
    fn checksum_is_xor_seeded_with_ef() {
        assert_eq!(checksum(&[]), 0xEF);
        assert_eq!(checksum(&[0xEF]), 0x00);
        assert_eq!(checksum(&[0x01, 0x02, 0x04]), 0xEF ^ 0x07);
    }

    #[test]
    fn rom_sync_answers_eight_times_with_nonzero_value() {
        let mut d = device();
        let replies = exchange(&mut d, &cmd(op::SYNC, &sync_payload(), 0));
        assert_eq!(replies.len(), 8);
        for r in replies {
            assert_eq!(&r[..4], &[0x01, op::SYNC, 4, 0]);
            assert_ne!(value(&r), 0);
            assert_eq!(&r[8..], &[0, 0, 0, 0]);
        }
    }

    #[test]
    fn read_reg_efuse_magic_and_security_info() {
        let mut d = device();
        let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0));
        assert_eq!(r.len(), 12);
        assert_eq!(value(&r), 9);
        let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x6000_7044]), 0));
        assert_eq!(value(&r), 0x1800_0001);
        let r = one(&mut d, &cmd(op::GET_SECURITY_INFO, &[], 0));
        assert_eq!(r.len(), 8 + 20 + 4);
        assert_eq!(u16::from_le_bytes([r[2], r[3]]), 24);
        assert_eq!(u32::from_le_bytes(r[20..24].try_into().unwrap()), 9);
    }

    #[test]
    fn jedec_probe_through_spi_registers() {
        let mut d = device();
        let wr = |a: u32, v: u32| cmd(op::WRITE_REG, &words(&[a, v, 0xFFFF_FFFF, 0]), 0);
        one(&mut d, &wr(reg::SPI_USR, 0x9000_0000));
        one(&mut d, &wr(reg::SPI_USR2, 0x7000_009F));
        one(&mut d, &wr(reg::SPI_MISO_DLEN, 23));
        one(&mut d, &wr(reg::SPI_W0, 0));
        one(&mut d, &wr(reg::SPI_CMD, reg::SPI_CMD_USR));
        let r = one(&mut d, &cmd(op::READ_REG, &words(&[reg::SPI_CMD]), 0));
        assert_eq!(value(&r) & reg::SPI_CMD_USR, 0, "busy bit clears");
        let r = one(&mut d, &cmd(op::READ_REG, &words(&[reg::SPI_W0]), 0));
        assert_eq!(value(&r), 0x16_40EF);
    }

    #[test]
    fn write_reg_honours_mask() {
        let mut d = device();
        one(
            &mut d,
            &cmd(
                op::WRITE_REG,
                &words(&[0x6000_8000, 0xFFFF_FFFF, 0x0000_00F0, 0]),
                0,
            ),
        );
        let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x6000_8000]), 0));
        assert_eq!(value(&r), 0xF0);
    }

    #[test]
    fn rom_flash_write_erases_checks_and_persists() {
        let mut d = device();
        d.flash_mut().program(0x11000, &[0x00; 16]).unwrap();
        let r = one(
            &mut d,
            &cmd(op::FLASH_BEGIN, &words(&[0x2000, 2, 0x400, 0x11000, 0]), 0),
        );
        assert_eq!(&r[8..], &[0, 0, 0, 0]);
        assert_eq!(
            d.flash_mut().read_vec(0x11000, 16).unwrap(),
            vec![0xFF; 16],
            "erased at begin"
        );

        let block: Vec<u8> = (0..0x400u32).map(|i| (i * 7) as u8).collect();
        let r = one(&mut d, &data_cmd(op::FLASH_DATA, 0, &block));
        assert_eq!(&r[8..], &[0, 0, 0, 0]);
        // Wrong checksum: error 0x07, nothing written.
        let mut bad = data_cmd(op::FLASH_DATA, 1, &block);
        let n = bad.len();
        bad[n - 2] ^= 0x01; // flip a payload byte (not a SLIP special)
        let r = one(&mut d, &bad);
        assert_eq!(&r[8..], &[1, rom_err::INVALID_CRC, 0, 0]);
        let r = one(&mut d, &data_cmd(op::FLASH_DATA, 1, &block));
        assert_eq!(&r[8..], &[0, 0, 0, 0]);
        assert_eq!(d.flash_mut().read_vec(0x11400, 0x400).unwrap(), block);

        let r = one(
            &mut d,
            &cmd(op::SPI_FLASH_MD5, &words(&[0x11000, 0x800, 0, 0]), 0),
        );
        assert_eq!(r.len(), 44);
        let mut both = block.clone();
        both.extend(&block);
        assert_eq!(&r[8..40], hex::encode(Md5::digest(&both)).as_bytes());

        // FLASH_END: reply, then silence until the jig resets the board.
        let r = one(&mut d, &cmd(op::FLASH_END, &words(&[0]), 0));
        assert_eq!(r[1], op::FLASH_END);
        assert_eq!(d.state(), BoardState::App);
        assert!(exchange(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0)).is_empty());
        let later = Instant::now() + Duration::from_secs(1);
        d.tick(later);
        assert_eq!(d.state(), BoardState::Rom);
    }

    #[test]
    fn rom_read_slow_returns_64_byte_buffer() {
        let mut d = device();
        d.flash_mut().program(0x1000, b"abcdef").unwrap();
        let r = one(&mut d, &cmd(op::READ_FLASH_SLOW, &words(&[0x1000, 4]), 0));
        assert_eq!(r.len(), 8 + 64 + 4);
        assert_eq!(&r[8..12], b"abcd");
        assert_eq!(&r[12..72], &[0u8; 60][..]);
        let r = one(&mut d, &cmd(op::READ_FLASH_SLOW, &words(&[0x1000, 65]), 0));
        assert_eq!(&r[8..], &[1, rom_err::READ_LENGTH, 0, 0]);
    }

    #[test]
    fn unknown_and_stub_only_commands_in_rom() {
        let mut d = device();
        for op in [0x42u8, op::ERASE_REGION, op::READ_FLASH] {
            let r = one(&mut d, &cmd(op, &[], 0));
            assert_ne!(r[1], op, "op must not be echoed");
            assert_eq!(&r[8..10], &[1, rom_err::INVALID_MESSAGE]);
        }
    }

    fn upload_stub(d: &mut Device) {
        let text = vec![0x11u8; 0x30];
        one(
            d,
            &cmd(op::MEM_BEGIN, &words(&[0x30, 1, 0x1800, 0x4037_8000]), 0),
        );
        one(d, &data_cmd(op::MEM_DATA, 0, &text));
        let f = exchange(d, &cmd(op::MEM_END, &words(&[0, 0x4037_8010]), 0));
        assert_eq!(f.len(), 2);
        assert_eq!(f[1], OHAI.to_vec());
        assert_eq!(d.state(), BoardState::Stub);
    }

    #[test]
    fn stub_upload_then_two_status_bytes_and_zero_sync() {
        let mut d = device();
        upload_stub(&mut d);
        let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0));
        assert_eq!(r.len(), 10);
        let replies = exchange(&mut d, &cmd(op::SYNC, &sync_payload(), 0));
        assert_eq!(replies.len(), 8);
        assert!(replies.iter().all(|r| value(r) == 0 && r.len() == 10));
        let r = one(&mut d, &cmd(op::SPI_ATTACH, &[0; 8], 0));
        assert_eq!(&r[8..], &[stub_err::BAD_DATA_LEN, 0]);
        let r = one(&mut d, &cmd(0x42, &[], 0));
        assert_eq!((r[1], r[8]), (0x42, stub_err::CMD_NOT_IMPLEMENTED));
    }

    #[test]
    fn mem_end_into_nowhere_crashes() {
        let mut d = device();
        one(
            &mut d,
            &cmd(op::MEM_BEGIN, &words(&[4, 1, 0x1800, 0x4037_8000]), 0),
        );
        one(&mut d, &data_cmd(op::MEM_DATA, 0, &[1, 2, 3, 4]));
        one(&mut d, &cmd(op::MEM_END, &words(&[0, 0x4000_0000]), 0));
        assert_eq!(d.state(), BoardState::Crashed);
        d.reset_to_download();
        assert_eq!(d.state(), BoardState::Rom);
    }

    #[test]
    fn stub_deflate_write_read_flash_and_reboot() {
        let mut d = device();
        upload_stub(&mut d);
        let data: Vec<u8> = (0..0x6000u32).map(|i| (i % 251) as u8).collect();
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&data).unwrap();
        let z = enc.finish().unwrap();
        d.flash_mut().program(0x11000, &[0u8; 0x7000]).unwrap();
        let r = one(
            &mut d,
            &cmd(
                op::FLASH_DEFL_BEGIN,
                &words(&[0x6000, 1, 0x4000, 0x11000]),
                0,
            ),
        );
        assert_eq!(&r[8..], &[0, 0]);
        let r = one(&mut d, &data_cmd(op::FLASH_DEFL_DATA, 0, &z));
        assert_eq!(&r[8..], &[0, 0]);
        assert_eq!(d.flash_mut().read_vec(0x11000, 0x6000).unwrap(), data);
        assert_eq!(
            d.flash_mut().read_vec(0x17000, 4).unwrap(),
            vec![0; 4],
            "no erase past the region"
        );

        let r = one(
            &mut d,
            &cmd(op::SPI_FLASH_MD5, &words(&[0x11000, 0x6000, 0, 0]), 0),
        );
        assert_eq!(r.len(), 26);
        assert_eq!(&r[8..24], Md5::digest(&data).as_slice());

        // READ_FLASH: window of 64 bytes means one 4 KiB packet per ack.
        let f = exchange(
            &mut d,
            &cmd(op::READ_FLASH, &words(&[0x11000, 0x2000, 0x1000, 64]), 0),
        );
        assert_eq!(f.len(), 2, "reply + first packet");
        assert_eq!(f[1], data[..0x1000]);
        let f = exchange(&mut d, &slip::encode(&0x1000u32.to_le_bytes()));
        assert_eq!(f, vec![data[0x1000..0x2000].to_vec()]);
        let f = exchange(&mut d, &slip::encode(&0x2000u32.to_le_bytes()));
        assert_eq!(f, vec![Md5::digest(&data[..0x2000]).to_vec()]);

        let r = one(&mut d, &cmd(op::FLASH_DEFL_END, &words(&[1]), 0));
        assert_eq!(&r[8..], &[0, 0]);
        assert_eq!(
            d.state(),
            BoardState::Stub,
            "FLASH_DEFL_END(1) keeps the stub"
        );
        one(&mut d, &cmd(op::FLASH_BEGIN, &words(&[0, 0, 0x400, 0]), 0));
        one(&mut d, &cmd(op::FLASH_END, &words(&[0]), 0));
        assert_eq!(d.state(), BoardState::Rebooting);
        d.tick(Instant::now() + Duration::from_secs(1));
        assert_eq!(d.state(), BoardState::Rom);
    }

    #[test]
    fn stub_flash_end_before_all_data_is_an_error() {
        let mut d = device();
        upload_stub(&mut d);
        one(
            &mut d,
            &cmd(op::FLASH_BEGIN, &words(&[0x1000, 1, 0x4000, 0x20000]), 0),
        );
        let r = one(&mut d, &cmd(op::FLASH_END, &words(&[1]), 0));
        assert_eq!(&r[8..], &[stub_err::NOT_ENOUGH_DATA, 0]);
    }

    #[test]
    fn faults_stall_corrupt_and_drop() {
        let rr = cmd(op::READ_REG, &words(&[0x4000_1000]), 0);
        let mut d = device_with(
            EfuseProfile::default(),
            Faults {
                stall_after_commands: Some(2),
                ..Default::default()
            },
        );
        one(&mut d, &rr);
        one(&mut d, &rr);
        assert!(exchange(&mut d, &rr).is_empty());
        assert_eq!(d.state(), BoardState::Stalled);

        let mut d = device_with(
            EfuseProfile::default(),
            Faults {
                stall_at_command: Some(op::SPI_FLASH_MD5),
                ..Default::default()
            },
        );
        one(&mut d, &rr);
        assert!(exchange(&mut d, &cmd(op::SPI_FLASH_MD5, &words(&[0, 16, 0, 0]), 0)).is_empty());
        assert!(exchange(&mut d, &rr).is_empty());

        let mut d = device_with(
            EfuseProfile::default(),
            Faults {
                corrupt_reply: Some(CorruptReply { nth: 2, offset: 4 }),
                corrupt_md5: true,
                ..Default::default()
            },
        );
        assert_eq!(value(&one(&mut d, &rr)), 9);
        assert_eq!(value(&one(&mut d, &rr)), 9 ^ 0xFF);
        assert_eq!(value(&one(&mut d, &rr)), 9);
        let r = one(&mut d, &cmd(op::SPI_FLASH_MD5, &words(&[0, 16, 0, 0]), 0));
        let good = hex::encode(Md5::digest([0xFFu8; 16]));
        let got = std::str::from_utf8(&r[8..40]).unwrap();
        assert_ne!(got, good);
        assert!(got.chars().all(|c| c.is_ascii_hexdigit()));

        let mut d = device_with(
            EfuseProfile::default(),
            Faults {
                drop_after_bytes: Some(5),
                ..Default::default()
            },
        );
        let out = d.feed(&rr, Instant::now());
        assert_eq!(out, vec![Output::DropLine]);
        assert_eq!(d.state(), BoardState::LineDropped);
    }

    #[test]
    fn impersonation_and_secure_download_mode() {
        let mut d = device_with(
            EfuseProfile {
                chip: ChipKind::Esp32c3,
                ..Default::default()
            },
            Faults::default(),
        );
        let r = one(&mut d, &cmd(op::GET_SECURITY_INFO, &[], 0));
        assert_eq!(u32::from_le_bytes(r[20..24].try_into().unwrap()), 5);
        let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0));
        assert_eq!(value(&r), 0x1B31_506F);

        let mut d = device_with(
            EfuseProfile {
                security: Security {
                    secure_download: true,
                    ..Default::default()
                },
                ..Default::default()
            },
            Faults::default(),
        );
        let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0));
        assert_ne!(r[1], op::READ_REG);
        let r = one(&mut d, &cmd(op::GET_SECURITY_INFO, &[], 0));
        assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()) & 4, 4);
    }

    #[test]
    fn change_baud_replies_first_then_switches() {
        let mut d = device();
        let out = d.feed(
            &cmd(op::CHANGE_BAUDRATE, &words(&[921_600, 0]), 0),
            Instant::now(),
        );
        assert!(matches!(out[0], Output::Send(_)));
        assert_eq!(out[1], Output::SetBaud(921_600));
        assert_eq!(d.baud(), 921_600);
    }

    #[test]
    fn opcode_names_parse() {
        assert_eq!(op::parse("FLASH_DATA").unwrap(), 0x03);
        assert_eq!(op::parse("spi-flash-md5").unwrap(), 0x13);
        assert_eq!(op::parse("0xd2").unwrap(), 0xD2);
        assert!(op::parse("nope").is_err());
        assert_eq!(op::name(0x0A), "READ_REG");
    }
}
