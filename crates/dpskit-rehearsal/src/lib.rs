//! dpskit-rehearsal: rehearse a factory run on one PC, beside the product (`dpskit-factory`),
//! never inside it.
//!
//! [`sim`] virtual ESP32-S3 boards (the serial line is a pseudo-terminal: Unix only; the loader
//! itself is portable), [`emulator`] a local DPS + IoT Hub, [`device`] the board's application
//! on the PC (the virtual device), [`demo`] all of it with the factory bench in one command.

#[cfg(unix)]
pub mod demo;
pub mod device;
pub mod emulator;
#[cfg(unix)]
pub mod sim;
