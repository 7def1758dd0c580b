//! The NVS partitions of `templates/partitions.csv`. The firmware finds them by label in the
//! partition table on the chip; these numbers are the template's (a test checks them against
//! the CSV) and what the host tests lay images out with.

/// The firmware's own NVS partition (`nvs`): Wi-Fi calibration and the cached assignment.
pub const NVS_OFFSET: usize = 0x9000;
pub const NVS_SIZE: usize = 0x6000;
/// The config partition `dpskit write-config` fills; the firmware only ever reads it.
pub const DPS_CFG_OFFSET: usize = 0x12000;
pub const DPS_CFG_SIZE: usize = 0x6000;
/// The partition-table label of [`DPS_CFG_OFFSET`], for log lines.
pub const DPS_CFG_LABEL: &str = "dps_cfg";
