//! Virtual ESP32-S3 boards: the ROM serial download mode (and the flasher stub's behaviour once
//! one is uploaded) on Linux pseudo-terminals, faithful enough that unmodified espflash (as a
//! library) and esptool work against them. `dpskit sim` runs them as a product feature; tests,
//! the bench and the demo start them in-process with [`VirtualBoard::spawn`].
//!
//! Layers, one concept each:
//! - [`slip`] framing; [`protocol`] the sans-IO chip (bytes in, bytes out): the ROM loader,
//!   the flasher stub, registers/eFuse/flash, and the ROM timing model;
//! - [`efuse`] board profiles encoded as eFuse words; [`flash`] NOR flash in memory or in an
//!   image file; [`image`] the factory flash content (bootloader, partition table, app, otadata);
//! - [`pty`] the serial line; [`board`] a virtual chip on a thread behind a pty;
//! - [`qemu`] the same board content on the chip's real ROM (Espressif's QEMU), for tests and
//!   benchmarks that check the model against the genuine loader.
//!
//! Leaving download mode: the ROM answers `FLASH_END` and then leaves the loader (the app
//! "runs" and the line is silent). A virtual board behaves as if on a jig that holds BOOT low
//! and resets it: after [`ResetBehaviour::reenter_download_after`] (default 250 ms) it is back
//! in ROM download mode and prints the ROM banner. With `None` it stays in the app until
//! [`VirtualBoard::reset_to_download`] (`dpskit sim`: SIGUSR1). The stub's `FLASH_END(0)`
//! reboots straight into the ROM loader (as espflash and esptool expect); `FLASH_END(1)` keeps
//! the stub running.

pub mod board;
pub mod efuse;
pub mod flash;
pub mod image;
pub mod protocol;
pub mod pty;
pub mod qemu;
pub mod slip;

pub use board::{spawn_batch, SimBoardConfig, VirtualBoard};
pub use efuse::{
    ChipKind, EfuseProfile, EmbeddedFlash, FlashVendor, PsramSize, PsramVendor, Revision, Security,
};
pub use image::{
    default_app, AppDescriptor, ImageFlashMode, ImageLayout, Layout, DEFAULT_PARTITIONS_CSV,
};
pub use protocol::{
    BoardState, ChipProfile, CorruptReply, Faults, ResetBehaviour, Stats, VirtualChip,
};
