//! The part of the dpskit firmware that needs no hardware, so the host can test it.
//!
//! * [`partitions`]: where `templates/partitions.csv` puts the two NVS partitions.
//! * [`store`]: the config read from `dps_cfg` (the exact image `dpskit config build` writes)
//!   and the DPS assignment cached in the firmware's own `nvs` partition, both through the
//!   esp-nvs driver the board runs.
//! * [`connack`]: recovers the CONNACK return code from the bytes the TLS stream delivers,
//!   which the MQTT client does not expose.
//! * [`machine`]: the one trait the driver loop runs (DPS client, hub client, `DeviceApp`).
//! * [`link`]: mbedTLS failures in the words of `dpskit-device`'s `LinkError`.
//! * [`civil`]: Unix time → calendar fields for mbedTLS's certificate date checks.
//! * [`descriptor`]: what the app descriptor says (`dpskit inspect` shows it).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod civil;
pub mod connack;
pub mod descriptor;
pub mod link;
pub mod machine;
pub mod partitions;
pub mod store;
