//! The part of dpskit that runs everywhere: on the factory PC, in the local emulator and on the
//! board. `no_std + alloc` and sans-IO (no sockets, no clock, no files): callers pass bytes and
//! the current time in and get values back, so the same code is tested on the host and shipped
//! in the firmware.
//!
//! Pipeline order: [`key`] (group key → device key) → [`sas`] (device key → token) →
//! [`ident`] (what DPS accepts as IDs) → [`config`] (what a board carries); [`diagnosis`]
//! explains a key that does not match in terms of the mistake that produced it.
//!
//! Protocol: [`dps`] (registration) and [`hub`] (telemetry, C2D, methods, twin) are state
//! machines driven through [`mqtt`] events and actions; [`topic`] is the one copy of the wire
//! format, shared with the emulator; [`packet`] is the device's MQTT 3.1.1 codec; [`backoff`]
//! paces reconnects.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod backoff;
pub mod chip;
pub mod config;
pub mod diagnosis;
pub mod dps;
pub mod hub;
pub mod ident;
pub mod key;
pub mod mqtt;
pub mod packet;
pub mod sas;
pub mod sntp;
pub mod topic;
mod url;

pub use config::DeviceConfig;
pub use dps::{Assignment, DpsClient, DpsConfig, DpsError};
pub use hub::{HubClient, HubConfig, HubError, HubOutput, Message};
pub use ident::{IdScope, RegistrationId};
pub use key::{DeviceKey, GroupKey, KeyError};
pub use mqtt::{Action, ConnectParams, Event, Publish, QoS};
pub use sas::SasToken;
