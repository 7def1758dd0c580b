//! The ESP32-S3 serial download protocol as the chip speaks it — the ROM loader, and the flasher
//! stub once one is uploaded — with no I/O: bytes in, [`Output`]s out, time passed in by the
//! caller. The pty thread in `board.rs` drives it; unit tests drive it directly.
//!
//! Behaviour follows reference §6 and the stub sources (esptool's legacy stub and
//! esp-flasher-stub): ROM replies end in 4 status bytes `[status, error, 0, 0]`, stub replies in
//! 2 bytes `[error, 0]`; the ROM erases at `FLASH_BEGIN`, the stub just in time; the ROM leaves
//! the loader on `FLASH_END`, the stub reboots into the ROM loader on `FLASH_END(0)` and stays on
//! `FLASH_END(1)`.
//!
//! Laid out along the chip's own seams: this module is the chip (framing, replies, faults,
//! resets, RAM uploads); [`rom`] the mask-ROM loader's commands; [`stub`] the flasher stub's;
//! [`hw`] what both reach — registers, eFuse words, the SPI flash.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::efuse::{EfuseBlocks, EfuseProfile};
use super::flash::FlashStore;
use super::slip;

pub mod hw;
pub mod rom;
pub mod stub;
#[cfg(test)]
mod tests;
pub mod timing;

pub use hw::reg;
use hw::FlashWrite;
pub use rom::rom_err;
use stub::ReadJob;
pub use stub::{stub_err, OHAI};
pub use timing::RomTiming;

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
    /// The chip is busy this long before what follows goes out ([`RomTiming`]).
    Pause(Duration),
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
    /// Close the line when a command with this opcode arrives (the cable pulled mid-write,
    /// wherever the bytes of the write happen to be).
    pub drop_at_command: Option<u8>,
    pub corrupt_reply: Option<CorruptReply>,
    /// Every MD5 reply (`SPI_FLASH_MD5`, stub `READ_FLASH` digest) carries a wrong digest.
    pub corrupt_md5: bool,
}

/// How the simulated chip behaves around resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetBehaviour {
    /// After the ROM leaves the loader (`FLASH_END`) or the stub runs user code, the virtual
    /// jig resets the board back into download mode after this long. `None`: it stays in the
    /// app until [`VirtualChip::reset_to_download`].
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
    /// Of those, the bytes in 256-byte pages that hold anything but 0xFF (what takes time).
    pub flash_bytes_with_data: u64,
    pub flash_bytes_erased: u64,
    pub flash_bytes_hashed: u64,
    pub last_command: Option<u8>,
}

/// Everything that makes one chip.
#[derive(Debug, Clone)]
pub struct ChipProfile {
    pub profile: EfuseProfile,
    /// JEDEC RDID bytes: manufacturer, memory type, capacity (2^capacity bytes).
    pub jedec_id: [u8; 3],
    pub reset: ResetBehaviour,
    pub faults: Faults,
    /// How long each command keeps the chip busy; `None`: it answers at once.
    pub timing: Option<RomTiming>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Download(Loader),
    App { reenter_at: Option<Instant> },
    Rebooting { until: Instant },
    Crashed,
}

struct MemWrite {
    addr: u32,
    size: u32,
    next_seq: u32,
    written: u32,
}

/// One virtual chip: eFuses, registers, SPI flash and the loader state machine.
pub struct VirtualChip {
    cfg: ChipProfile,
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

impl VirtualChip {
    /// A chip in ROM download mode, as after a reset with GPIO0 held low.
    pub fn new(cfg: ChipProfile, flash: Box<dyn FlashStore>) -> Self {
        let efuse = cfg.profile.blocks();
        let spi_flash_size = flash.size();
        let mut d = VirtualChip {
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

    /// When [`VirtualChip::tick`] next has something to do.
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
        if self.cfg.faults.drop_at_command == Some(op) {
            self.dropped = true;
            out.push(Output::DropLine);
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

        let before = (self.stats.clone(), out.len());
        match loader {
            Loader::Rom => self.rom_command(op, data, chk, now, out),
            Loader::Stub => self.stub_command(op, data, chk, now, out),
        }
        if let Some(t) = self.cfg.timing {
            let (s, at) = before;
            let work = timing::Work {
                bytes_in: frame.len() as u64,
                sync: op == op::SYNC,
                read_slow: op == op::READ_FLASH_SLOW,
                sectors_erased: (self.stats.flash_bytes_erased - s.flash_bytes_erased)
                    .div_ceil(u64::from(super::flash::SECTOR_SIZE)),
                bytes_programmed: self.stats.flash_bytes_with_data - s.flash_bytes_with_data,
                bytes_erased_pages: (self.stats.flash_bytes_programmed - s.flash_bytes_programmed)
                    .saturating_sub(self.stats.flash_bytes_with_data - s.flash_bytes_with_data),
                bytes_hashed: self.stats.flash_bytes_hashed - s.flash_bytes_hashed,
            };
            out.insert(at.min(out.len()), Output::Pause(t.cost(&work)));
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
}

enum DataError {
    Length,
    Checksum,
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
