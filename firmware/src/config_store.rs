//! NVS on the chip: the config in `dps_cfg` and the assignment cache in `nvs`, through the
//! glue crate's host-tested code over the real SPI flash.

use alloc::format;
use alloc::string::String;
use dpskit_core::DeviceConfig;
use dpskit_firmware_glue::partitions::DPS_CFG_LABEL;
use dpskit_firmware_glue::store::{self, ConfigReadError, StoredAssignment};
use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use esp_bootloader_esp_idf::partitions::{
    read_partition_table, DataPartitionSubType, PartitionType, PARTITION_TABLE_MAX_LEN,
};
use esp_nvs::platform::Crc;
use esp_nvs::Nvs;
use esp_storage::FlashStorage;

/// The SPI flash with the ROM's CRC32 (the one ESP-IDF's NVS uses). esp-nvs's own chip
/// feature would pull in a second esp-storage version, so the firmware supplies this.
pub struct Flash(pub FlashStorage<'static>);

impl ErrorType for Flash {
    type Error = <FlashStorage<'static> as ErrorType>::Error;
}

impl ReadNorFlash for Flash {
    const READ_SIZE: usize = <FlashStorage<'static> as ReadNorFlash>::READ_SIZE;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl NorFlash for Flash {
    const WRITE_SIZE: usize = <FlashStorage<'static> as NorFlash>::WRITE_SIZE;
    const ERASE_SIZE: usize = <FlashStorage<'static> as NorFlash>::ERASE_SIZE;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.0.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.write(offset, bytes)
    }
}

impl Crc for Flash {
    fn crc32(init: u32, data: &[u8]) -> u32 {
        esp_hal::rom::crc::crc32_le(init, data)
    }
}

/// Where the two NVS partitions are, from the partition table on the chip (so a board flashed
/// with another layout is told so instead of reading the wrong sectors).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// `dps_cfg`: offset, size.
    pub config: (usize, usize),
    /// The firmware's own `nvs`, if the table has one.
    pub own: Option<(usize, usize)>,
}

/// Reads the partition table and finds `dps_cfg` and `nvs`; the error says what to flash.
pub fn find_partitions(flash: &mut Flash) -> Result<Layout, String> {
    let mut buf = [0u8; PARTITION_TABLE_MAX_LEN];
    let table = read_partition_table(&mut flash.0, &mut buf).map_err(|e| {
        format!("cannot read the partition table ({e}); flash the firmware with `--partition-table templates/partitions.csv`")
    })?;
    let (mut config, mut own) = (None, None);
    for p in table.iter() {
        let nvs = p.partition_type() == PartitionType::Data(DataPartitionSubType::Nvs);
        let at = (p.offset() as usize, p.len() as usize);
        match p.label_as_str() {
            DPS_CFG_LABEL if !nvs || p.is_encrypted() => {
                return Err(format!("partition {DPS_CFG_LABEL} must be type data, subtype nvs, not encrypted; use templates/partitions.csv"));
            }
            DPS_CFG_LABEL => config = Some(at),
            "nvs" if nvs => own = Some(at),
            _ => {}
        }
    }
    let config = config.ok_or_else(|| {
        format!("the partition table has no {DPS_CFG_LABEL} partition; flash the firmware with `--partition-table templates/partitions.csv`, then `dpskit write-config`")
    })?;
    Ok(Layout { config, own })
}

/// Reads the config from `dps_cfg` without ever writing to it.
pub fn read_config(flash: &mut Flash, layout: &Layout) -> Result<DeviceConfig, ConfigReadError> {
    let (offset, size) = layout.config;
    let mut nvs = store::open_config_partition(flash, offset, size)?;
    store::read_config(&mut nvs)
}

fn own_nvs<'f>(flash: &'f mut Flash, layout: &Layout) -> Option<Nvs<&'f mut Flash>> {
    let Some((offset, size)) = layout.own else {
        log::warn!("no nvs partition in the partition table; the DPS assignment is not cached");
        return None;
    };
    match Nvs::new(offset, size, flash) {
        Ok(n) => Some(n),
        Err(e) => {
            log::warn!("nvs partition unusable ({e}); the DPS assignment is not cached");
            None
        }
    }
}

/// The cached assignment (DPS is skipped when `DeviceApp` finds it matches the config).
pub fn load_assignment(flash: &mut Flash, layout: &Layout) -> Option<StoredAssignment> {
    match store::load_assignment(&mut own_nvs(flash, layout)?) {
        Ok(a) => a,
        Err(e) => {
            log::warn!("{e}; registering with DPS instead");
            None
        }
    }
}

/// Caches the assignment; the driver reports a failure (the next boot registers again).
pub fn store_assignment(
    flash: &mut Flash,
    layout: &Layout,
    a: &StoredAssignment,
) -> Result<(), String> {
    let mut nvs = own_nvs(flash, layout).ok_or("no usable nvs partition")?;
    store::store_assignment(&mut nvs, a).map_err(|e| format!("{e}"))?;
    log::info!("assignment cached in NVS");
    Ok(())
}
