//! The config blob: what `dpskit config build` writes and `config show` reads.
//!
//! [`roots`] picks and checks the root CAs a board trusts; [`nvs`] turns a
//! [`dpskit_core::DeviceConfig`] into an ESP-IDF NVS partition image and back.

pub mod nvs;
pub mod roots;
