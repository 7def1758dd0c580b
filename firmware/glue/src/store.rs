//! NVS on the board: the config in `dps_cfg` (read-only) and the DPS assignment cache in the
//! firmware's own `nvs` partition.
//!
//! Both go through the esp-nvs driver over any `NorFlash` + CRC ([`Platform`]), so the host
//! tests run the same code over an in-memory flash holding a real image.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use dpskit_core::config::{self, ConfigError, Value};
use dpskit_core::DeviceConfig;
pub use dpskit_device::StoredAssignment;
use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use esp_nvs::error::Error as NvsError;
use esp_nvs::platform::{Crc, Platform};
use esp_nvs::{Key, Nvs};

/// Namespace of the assignment cache in the firmware's `nvs` partition (never in `dps_cfg`,
/// which belongs to `dpskit write-config`).
pub const CACHE_NAMESPACE: &str = "dpskit_fw";
/// The blob key: `dpskit_device::StoredAssignment::to_bytes()`, which records the scope,
/// registration ID and DPS host it was made for, so a re-provisioned board does not reuse it.
pub const ASSIGNMENT_KEY: &str = "assignment";

/// Refuses every write and erase, so reading `dps_cfg` can never change it (the esp-nvs
/// driver repairs pages it finds damaged; on this partition that is `dpskit`'s job).
pub struct ReadOnly<F>(pub F);

/// A write or erase reached [`ReadOnly`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRefused;

impl NorFlashError for WriteRefused {
    fn kind(&self) -> NorFlashErrorKind {
        NorFlashErrorKind::Other
    }
}

impl<F: ErrorType> ErrorType for ReadOnly<F> {
    type Error = WriteRefused;
}

impl<F: ReadNorFlash> ReadNorFlash for ReadOnly<F> {
    const READ_SIZE: usize = F::READ_SIZE;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), WriteRefused> {
        self.0.read(offset, bytes).map_err(|_| WriteRefused)
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<F: NorFlash> NorFlash for ReadOnly<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;

    fn erase(&mut self, _from: u32, _to: u32) -> Result<(), WriteRefused> {
        Err(WriteRefused)
    }

    fn write(&mut self, _offset: u32, _bytes: &[u8]) -> Result<(), WriteRefused> {
        Err(WriteRefused)
    }
}

impl<F: Crc> Crc for ReadOnly<F> {
    fn crc32(init: u32, data: &[u8]) -> u32 {
        F::crc32(init, data)
    }
}

/// Why the board has no usable config. `Display` is one line saying what to do.
#[derive(Debug, PartialEq)]
pub enum ConfigReadError {
    /// The partition could not be opened or read (corrupt pages, flash error).
    Unreadable(NvsError),
    /// The partition holds no `dps` namespace: never provisioned (or erased).
    NotProvisioned,
    /// The stored values fail the shared schema's checks.
    Invalid(ConfigError),
    /// A key holds a type the schema does not use.
    Nvs { key: &'static str, error: NvsError },
}

impl fmt::Display for ConfigReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigReadError::Unreadable(e) => write!(
                f,
                "the dps_cfg partition cannot be read ({e}); write it again with `dpskit write-config` (and flash the partition table from templates/partitions.csv)"
            ),
            ConfigReadError::NotProvisioned => write!(
                f,
                "the dps_cfg partition holds no '{}' namespace: this board is not provisioned; run `dpskit write-config` for it",
                config::NAMESPACE
            ),
            ConfigReadError::Invalid(e) => {
                write!(f, "{e} (write a new one with `dpskit write-config`)")
            }
            ConfigReadError::Nvs { key, error } => write!(
                f,
                "config: key '{key}' cannot be read ({error}); write it again with `dpskit write-config`"
            ),
        }
    }
}

/// Opens `dps_cfg` read-only: `offset`/`size` are the partition's, `flash` the whole chip.
pub fn open_config_partition<F: Platform>(
    flash: F,
    offset: usize,
    size: usize,
) -> Result<Nvs<ReadOnly<F>>, ConfigReadError> {
    Nvs::new(offset, size, ReadOnly(flash)).map_err(ConfigReadError::Unreadable)
}

/// Reads and validates the config the way the CLI wrote it (schema in `dpskit-core`).
pub fn read_config<P: Platform>(nvs: &mut Nvs<P>) -> Result<DeviceConfig, ConfigReadError> {
    let ns = Key::from_str(config::NAMESPACE);
    if !nvs.namespaces().any(|k| *k == ns) {
        return Err(ConfigReadError::NotProvisioned);
    }
    let mut failure: Option<ConfigReadError> = None;
    let result = DeviceConfig::from_lookup(|key| {
        if failure.is_some() {
            return None;
        }
        let k = Key::from_str(key);
        let value = match nvs.get::<String>(&ns, &k) {
            Ok(s) => Ok(Some(Value::Str(s))),
            Err(NvsError::ItemTypeMismatch(_)) => match nvs.get::<u8>(&ns, &k) {
                Ok(v) => Ok(Some(Value::U8(v))),
                Err(e) => Err(e),
            },
            Err(NvsError::KeyNotFound) | Err(NvsError::NamespaceNotFound) => Ok(None),
            Err(e) => Err(e),
        };
        match value {
            Ok(v) => v,
            Err(NvsError::ItemTypeMismatch(_)) => {
                failure = Some(ConfigReadError::Invalid(ConfigError::WrongType(key)));
                None
            }
            Err(error) => {
                failure = Some(ConfigReadError::Nvs { key, error });
                None
            }
        }
    });
    if let Some(f) = failure {
        return Err(f);
    }
    result.map_err(ConfigReadError::Invalid)
}

/// The cached assignment, if the `nvs` partition holds a readable one. Whether it applies to
/// this config is `DeviceApp::new`'s call (it compares scope, registration ID and DPS host).
pub fn load_assignment<P: Platform>(nvs: &mut Nvs<P>) -> Result<Option<StoredAssignment>, String> {
    let ns = Key::from_str(CACHE_NAMESPACE);
    match nvs.get::<Vec<u8>>(&ns, &Key::from_str(ASSIGNMENT_KEY)) {
        Ok(bytes) => StoredAssignment::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(NvsError::KeyNotFound) | Err(NvsError::NamespaceNotFound) => Ok(None),
        Err(e) => Err(format!("cached assignment unreadable ({e})")),
    }
}

/// Caches an assignment (the bytes `StoredAssignment::to_bytes` gives).
pub fn store_assignment<P: Platform>(
    nvs: &mut Nvs<P>,
    assignment: &StoredAssignment,
) -> Result<(), NvsError> {
    let bytes = assignment.to_bytes();
    nvs.set::<&[u8]>(
        &Key::from_str(CACHE_NAMESPACE),
        &Key::from_str(ASSIGNMENT_KEY),
        bytes.as_slice(),
    )
}
