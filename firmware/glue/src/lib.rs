//! The part of the dpskit firmware that needs no hardware, so the host can test it.
//!
//! * [`partitions`]: where `templates/partitions.csv` puts the two NVS partitions.
//! * [`store`]: the config read from `dps_cfg` (the exact image `dpskit config build` writes)
//!   and the DPS assignment cached in the firmware's own `nvs` partition, both through the
//!   esp-nvs driver the board runs.
//! * [`link`]: mbedTLS failures in the words of `dpskit-device`'s `LinkError`.
//! * [`civil`]: Unix time → calendar fields for mbedTLS's certificate date checks.
//! * [`descriptor`]: what the app descriptor says (`dpskit inspect` shows it).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod civil;
pub mod descriptor;
pub mod link;
pub mod partitions;
pub mod store;
