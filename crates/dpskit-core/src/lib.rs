//! The part of dpskit that runs everywhere: on the factory PC, in the local emulator and on the
//! board. `no_std + alloc` and sans-IO (no sockets, no clock, no files): callers pass bytes and
//! the current time in and get values back, so the same code is tested on the host and shipped
//! in the firmware.
//!
//! Pipeline order: [`key`] (group key → device key) → [`sas`] (device key → token) →
//! [`ident`] (what DPS accepts as IDs) → [`config`] (what a board carries).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod ident;
pub mod key;
pub mod sas;
mod url;

pub use config::DeviceConfig;
pub use ident::{IdScope, RegistrationId};
pub use key::{DeviceKey, GroupKey, KeyError};
pub use sas::SasToken;
