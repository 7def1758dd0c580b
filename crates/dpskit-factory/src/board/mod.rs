//! Board: one ESP32-S3 over serial — connect, inspect, write the config partition.

pub mod app;
pub mod efuse;
pub mod error;
pub mod inspect;
pub mod link;
pub mod partition;
pub mod ports;
pub mod progress;
pub mod write;

pub use error::{BoardError, PartitionError};
pub use espflash::target::Chip;
pub use link::{After, Before, BoardLink, LinkOptions};
