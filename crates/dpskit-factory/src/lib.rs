//! dpskit-factory: the product — what a factory PC needs to take ESP32-S3 boards to Azure IoT
//! Hub DPS, and nothing of the rehearsal tools. Portable (Linux, macOS, Windows).
//!
//! Laid out as the pipeline: [`keys`] (per-device keys from the group key) → [`blob`] (the
//! config image: NVS partition + root CAs) → [`board`] (one ESP32-S3 over serial, through
//! espflash) → [`station`] (the factory bench: station file, ledger, parallel provisioning).
//! Key, SAS, ID and config-schema rules live in the `no_std` [`dpskit_core`] crate so the
//! firmware runs the very same code.

pub use dpskit_core as core;

pub mod blob;
pub mod board;
pub mod error;
pub mod files;
pub mod flash_image;
pub mod interrupt;
pub mod keys;
pub mod station;
pub mod table;
pub mod timestamp;
