//! Why talking to a board failed, as types a caller can match on: the bench retries a busy
//! port but not a wrong chip, and the CLI maps a line that dropped mid-write to exit code 3
//! ("the environment failed") instead of 2 ("bad input").

use thiserror::Error;

/// A partition table, or the config partition in it, that dpskit will not use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PartitionError {
    #[error("partition table: the sector is erased (no table); flash a bootloader, table and app first, or check --partition-table-offset")]
    Erased,
    #[error("partition table: entry {entry} has no AA 50 magic; the table is corrupt or --partition-table-offset is wrong")]
    NoMagic { entry: usize },
    #[error("partition table: entry {entry} ({label:?}) has type {ty:#04x} subtype {subtype:#04x}, which this dpskit does not know (newer ESP-IDF?); inspect cannot read this table")]
    UnknownSubtype {
        entry: usize,
        label: String,
        ty: u8,
        subtype: u8,
    },
    #[error("partition table: entry {entry} ({label:?}) has unknown flag bits {flags:#x}")]
    UnknownFlags {
        entry: usize,
        label: String,
        flags: u32,
    },
    #[error("partition table: entry {entry} ({label:?}) at {offset:#x} with size {size:#x} ends past {limit}; the table is corrupt or was made for another board")]
    OutOfRange {
        entry: usize,
        label: String,
        offset: u32,
        size: u32,
        limit: String,
    },
    #[error("partition table: {0}; the table is corrupt or --partition-table-offset is wrong")]
    Corrupt(String),
    #[error("--partition: no partition named {name:?} on this board (it has: {have}); flash a table with a dedicated data/nvs partition (see templates/partitions.csv)")]
    NotFound { name: String, have: String },
    #[error("--partition: {name:?} is {kind}/{subtype}, not data/nvs; the firmware could not open it as NVS")]
    NotNvs {
        name: String,
        kind: String,
        subtype: String,
    },
    #[error("--partition: {name:?} is flagged encrypted; dpskit writes plain NVS images, which an encrypted partition would not read")]
    Encrypted { name: String },
    #[error("--partition: {name:?} is {size:#x} bytes but the image is {image:#x}; rebuild the image with --size {size:#x}")]
    TooSmall {
        name: String,
        size: u32,
        image: usize,
    },
}

/// What went wrong on the way to, or on, one board.
#[derive(Debug, Error)]
pub enum BoardError {
    #[error("--port: {port} does not exist; list serial ports with `dpskit ports`")]
    PortMissing { port: String },
    #[error("--port: {port} is busy or gone ({detail}); close serial monitors using it")]
    PortBusy { port: String, detail: String },
    #[error("--port: no permission to open {port}; add yourself to the 'dialout' group")]
    PortPermission { port: String },
    #[error(
        "--port: cannot open {port}: {detail}; is another program (a serial monitor) using it?"
    )]
    PortOpen { port: String, detail: String },
    #[error("{port}: no ESP bootloader answered ({detail}); {hint}")]
    NoAnswer {
        port: String,
        detail: String,
        hint: &'static str,
    },
    #[error("--chip: the board on {port} is an {found}, not an {wanted}; use --chip {found} if that is intended")]
    WrongChip {
        port: String,
        found: String,
        wanted: String,
    },
    #[error("{port}: connecting failed: {detail}")]
    Connect { port: String, detail: String },
    #[error("{port}: the board is in secure download mode (eFuse ENABLE_SECURITY_DOWNLOAD): its ROM refuses flash reads and register access, so dpskit cannot read the flash ID or the partition table; provision such boards before that eFuse is burned")]
    SecureDownloadMode { port: String },
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error("{what} at {offset:#x}: {len:#x} bytes would end past the {flash_size:#x}-byte flash; the partition table does not fit this board")]
    OutOfFlash {
        what: &'static str,
        offset: u32,
        len: u32,
        flash_size: u32,
    },
    #[error("reading flash at {offset:#x}: {detail}")]
    Read { offset: u32, detail: String },
    #[error("reading flash at {offset:#x}: data does not match the board's MD5 (line noise?)")]
    ReadMd5Mismatch { offset: u32 },
    #[error("write at {offset:#x}: the board's MD5 does not match what was sent; the board is NOT provisioned")]
    Md5Mismatch { offset: u32 },
    #[error("write at {offset:#x} failed: {detail}; the board is NOT provisioned")]
    Write { offset: u32, detail: String },
    /// The line went away (cable pulled, port vanished, board stopped answering) after the
    /// link was up. `state` says what the board was left holding.
    #[error("{port}: the line to the board dropped while {during} ({detail}); {state}")]
    LineDropped {
        port: String,
        during: &'static str,
        detail: String,
        state: &'static str,
    },
    #[error("read-back of {partition} does not decode as a dpskit config ({detail}); the board is NOT provisioned")]
    NotAConfig { partition: String, detail: String },
    #[error("reset after writing failed ({detail}); the data is written and verified — reset the board by hand")]
    Reset { detail: String },
    #[error("returning the board to its ROM loader failed: {detail}")]
    ReturnToLoader { detail: String },
}

impl BoardError {
    /// True when the machine or the line failed rather than the input: exit code 3.
    pub fn environment_failed(&self) -> bool {
        matches!(self, BoardError::LineDropped { .. })
    }
}
