//! dpskit: from the factory bench to Azure IoT Hub.
//!
//! The library behind the `dpskit` command, laid out as the pipeline it serves:
//! keys → blob → board → bench → cloud. Protocol and key logic live in the `no_std`
//! [`dpskit_core`] crate so the firmware runs the very same code.

pub use dpskit_core as core;

pub mod bench;
pub mod blob;
pub mod board;
pub mod cli;
pub mod cloud;
pub mod demo;
pub mod device;
pub mod error;
pub mod keys;
pub mod secrets;
pub mod sim;
pub mod table;
