//! The app descriptor (`esp_app_desc_t`) fields this firmware sets. `dpskit inspect` reads
//! them from offset 0x20 of the app image to tell which firmware a board runs.

/// `project_name`: the firmware crate's name.
pub const PROJECT_NAME: &str = "dpskit-firmware";
/// `version`: the firmware crate's version (also reported as `firmwareVersion`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Both fields are 32-byte C strings in `esp_app_desc_t`.
pub const FIELD_BYTES: usize = 32;

/// `true` when `text` fits a descriptor string field with its NUL.
pub const fn fits(text: &str) -> bool {
    text.len() < FIELD_BYTES
}

const _: () = assert!(fits(PROJECT_NAME) && fits(VERSION));
