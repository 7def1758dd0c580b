//! "What is on this board, and is it ready for Azure?" — one read-only pass over a board.

use super::app::{self, AppDescriptor, ImageHeader};
use super::efuse::{self, EmbeddedMemory};
use super::error::BoardError;
use super::link::BoardLink;
use super::partition;
use crate::blob::{nvs, roots};
use dpskit_core::chip::FlashBus;
use espflash::target::Chip;
use md5::{Digest, Md5};
use serde::Serialize;
use time::OffsetDateTime;

/// Everything `dpskit inspect` found, in the order a person reads it.
#[derive(Debug, Clone, Serialize)]
pub struct BoardReport {
    pub port: String,
    pub chip: String,
    pub revision: Option<String>,
    pub mac: Option<String>,
    pub crystal: String,
    pub flash_size: String,
    /// Flash size in MB from the flash chip's JEDEC ID (what the app image header should say).
    pub flash_mb: Option<u32>,
    pub features: Vec<String>,
    pub embedded: Option<EmbeddedMemory>,
    pub security: Option<Security>,
    pub partition_table_offset: u32,
    pub partitions: Result<Vec<partition::PartitionRow>, String>,
    pub app: Option<AppSlot>,
    pub config: Option<ConfigState>,
    /// MD5 (hex) of the whole config partition as it is on the board, when there is one:
    /// the board's own MD5 for an erased partition, else the MD5 of the bytes read.
    pub config_partition_md5: Option<String>,
    pub verdicts: Vec<Verdict>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Security {
    pub secure_boot: bool,
    pub flash_encryption: bool,
    pub secure_download_mode: bool,
    pub jtag_disabled: bool,
    pub key_purposes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppSlot {
    pub partition: String,
    pub offset: u32,
    /// The SPI flash settings the image header asks for (`None`: no image there).
    pub header: Option<ImageHeader>,
    pub descriptor: Result<AppDescriptor, String>,
}

/// What the config partition holds.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConfigState {
    Missing {
        partition: String,
        reason: String,
    },
    Empty {
        partition: String,
    },
    Invalid {
        partition: String,
        reason: String,
    },
    Present {
        partition: String,
        config: ConfigSummary,
    },
}

/// A config without its secret: the key is shown as a fingerprint only.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSummary {
    pub id_scope: String,
    pub registration_id: String,
    pub key_fingerprint: String,
    pub dps_host: String,
    pub wifi_ssid: Option<String>,
    pub root_cas: Vec<RootSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RootSummary {
    pub subject: String,
    pub not_after: String,
    pub expired: bool,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub level: Level,
    pub message: String,
}

/// What the inspection should compare against.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    pub partition_table_offset: u32,
    pub config_partition: String,
    pub id_scope: Option<String>,
}

/// Reads everything (never writes) and judges it.
pub fn inspect(link: &mut BoardLink, expect: &Expectations) -> Result<BoardReport, BoardError> {
    let port = link.port().to_string();
    if link.flasher().secure_download_mode() {
        // Its ROM refuses eFuse and flash reads: nothing here could be answered.
        return Err(BoardError::SecureDownloadMode { port });
    }
    let info = link
        .flasher()
        .device_info()
        .map_err(|e| link_dropped(&port, e))?;
    let chip = info.chip;
    let flash_mb = link.flash_size().ok().map(|b| b >> 20);
    let mut report = BoardReport {
        port: port.clone(),
        chip: chip.to_string(),
        revision: info.revision.map(|(a, b)| format!("v{a}.{b}")),
        mac: info.mac_address.clone(),
        crystal: info.crystal_frequency.to_string(),
        flash_size: serde_json::to_value(info.flash_size)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", info.flash_size)),
        flash_mb,
        features: info.features.clone(),
        embedded: None,
        security: None,
        partition_table_offset: expect.partition_table_offset,
        partitions: Err(String::new()),
        app: None,
        config: None,
        config_partition_md5: None,
        verdicts: Vec::new(),
    };
    if chip == Chip::Esp32s3 {
        let m = efuse::read_s3_memory(link.flasher().connection())
            .map_err(|e| link_dropped(&port, e))?;
        report.features.retain(|f| !f.starts_with("Embedded"));
        report.features.extend(m.features());
        report.embedded = Some(m);
    }
    report.security = link.flasher().security_info().ok().map(|s| Security {
        secure_boot: s.flags & 1 != 0,
        flash_encryption: s.flash_crypt_cnt.count_ones() % 2 == 1,
        secure_download_mode: s.flags & (1 << 2) != 0,
        jtag_disabled: s.flags & (3 << 6) != 0,
        key_purposes: s
            .key_purposes
            .iter()
            .map(|p| key_purpose_name(*p).to_string())
            .collect(),
    });

    let table_bytes = link.read_partition_table(expect.partition_table_offset)?;
    let flash_size = link.flash_size()?;
    let parsed = partition::parse(&table_bytes)
        .and_then(|t| partition::check_fits(&t, flash_size).map(|()| t));
    match parsed {
        Err(e) => report.partitions = Err(e.to_string()),
        Ok(table) => {
            report.partitions = Ok(partition::rows(&table));
            // Only the 32-byte select entry at the start of each otadata sector matters.
            let otadata = match app::otadata_partition(&table) {
                Some((off, _)) => Some([
                    link.read_flash(off, app::OTA_ENTRY_LEN)?,
                    link.read_flash(off + 0x1000, app::OTA_ENTRY_LEN)?,
                ]),
                None => None,
            };
            if let Some((name, offset)) = app::running_slot(&table, otadata.as_ref()) {
                let head = link.read_flash(offset, app::DESCRIPTOR_READ_LEN)?;
                report.app = Some(AppSlot {
                    partition: name,
                    offset,
                    header: app::parse_header(&head),
                    descriptor: app::parse_descriptor(&head),
                });
            }
            let name = &expect.config_partition;
            report.config = Some(match partition::config_partition(&table, name, None) {
                Err(e) => ConfigState::Missing {
                    partition: name.clone(),
                    reason: e.to_string(),
                },
                Ok(p) => {
                    // Ask the board first: an erased partition need not be read at all.
                    let on_board = link.md5(p.offset(), p.size())?;
                    report.config_partition_md5 = Some(hex::encode(on_board));
                    if on_board == erased_md5(p.size()) {
                        ConfigState::Empty {
                            partition: name.clone(),
                        }
                    } else {
                        config_state(name, &link.read_flash(p.offset(), p.size())?)
                    }
                }
            });
        }
    }
    report.verdicts = judge(&report, expect, OffsetDateTime::now_utc());
    Ok(report)
}

/// The line failed while asking the board about itself.
fn link_dropped(port: &str, e: espflash::Error) -> BoardError {
    BoardError::LineDropped {
        port: port.into(),
        during: "reading the board's identity",
        detail: e.to_string(),
        state: "nothing was written to the board",
    }
}

/// MD5 of `len` erased bytes, hashed in pieces (the length comes from the board).
pub fn erased_md5(len: u32) -> [u8; 16] {
    let ff = [0xFFu8; 0x1000];
    let mut h = Md5::new();
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(ff.len());
        h.update(&ff[..n]);
        left -= n;
    }
    h.finalize().into()
}

/// Decodes a config partition's bytes into what `inspect` shows.
pub fn config_state(partition: &str, bytes: &[u8]) -> ConfigState {
    if bytes.iter().all(|b| *b == 0xFF) {
        return ConfigState::Empty {
            partition: partition.into(),
        };
    }
    match nvs::decode_image(bytes) {
        Err(e) => ConfigState::Invalid {
            partition: partition.into(),
            reason: e.to_string(),
        },
        Ok(cfg) => {
            let now = OffsetDateTime::now_utc();
            let root_cas = roots::describe_pem_bundle(&cfg.root_ca_pem)
                .map(|certs| {
                    certs
                        .iter()
                        .map(|c| RootSummary {
                            subject: c.common_name.clone(),
                            not_after: roots::rfc3339(c.not_after),
                            expired: c.is_expired(now),
                            sha256: c.sha256.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            ConfigState::Present {
                partition: partition.into(),
                config: ConfigSummary {
                    id_scope: cfg.id_scope.to_string(),
                    registration_id: cfg.registration_id.to_string(),
                    key_fingerprint: cfg.device_key.fingerprint(),
                    dps_host: cfg.dps_host.clone(),
                    wifi_ssid: cfg.wifi_ssid.clone(),
                    root_cas,
                },
            }
        }
    }
}

fn judge(r: &BoardReport, expect: &Expectations, _now: OffsetDateTime) -> Vec<Verdict> {
    let mut v = Vec::new();
    let mut say = |level, message: String| v.push(Verdict { level, message });
    if r.chip != Chip::Esp32s3.to_string() {
        say(
            Level::Warn,
            format!(
                "this is an {}, not the ESP32-S3 dpskit's firmware targets",
                r.chip
            ),
        );
    }
    if let Some(m) = &r.embedded {
        if m.psram_mb == 0 {
            say(Level::Fail, "no embedded PSRAM: TLS needs ~40 KB of heap per connection; this board has none to spare (off-package PSRAM is not visible from the bootloader; check the module's datasheet)".into());
        } else {
            say(
                Level::Ok,
                format!(
                    "PSRAM {} MB ({}) for TLS buffers",
                    m.psram_mb,
                    m.psram_vendor.unwrap_or("unknown vendor")
                ),
            );
        }
    }
    if let Some(s) = &r.security {
        if s.secure_download_mode {
            say(
                Level::Warn,
                "secure download mode is on: flash reads and register access may be refused".into(),
            );
        }
        if s.flash_encryption {
            say(Level::Warn, "flash encryption is on: the config partition must stay unencrypted (not flagged 'encrypted') for dpskit's plain NVS image".into());
        }
    }
    if let Err(e) = &r.partitions {
        say(Level::Fail, e.clone());
    }
    match &r.app {
        Some(AppSlot {
            partition,
            descriptor: Ok(d),
            ..
        }) => {
            say(
                Level::Ok,
                format!(
                    "firmware {} {} in {partition} (built with {})",
                    d.project_name, d.version, d.idf_ver
                ),
            );
            if let Some(h) = r.app.as_ref().and_then(|a| a.header) {
                for w in header_warnings(partition, &h, r) {
                    say(Level::Warn, w);
                }
            }
            if !d.is_for_esp32s3() && r.chip == Chip::Esp32s3.to_string() {
                say(
                    Level::Fail,
                    format!(
                        "the firmware image is for chip id {}, not the ESP32-S3 (9)",
                        d.chip_id
                    ),
                );
            }
        }
        Some(AppSlot {
            partition,
            descriptor: Err(e),
            ..
        }) => say(Level::Warn, format!("{partition}: {e}")),
        None if r.partitions.is_ok() => say(Level::Warn, "no app partition in the table".into()),
        None => {}
    }
    match &r.config {
        Some(ConfigState::Missing { reason, .. }) => say(Level::Fail, reason.clone()),
        Some(ConfigState::Empty { partition }) => say(
            Level::Warn,
            format!("{partition} is empty: not provisioned yet (dpskit write-config)"),
        ),
        Some(ConfigState::Invalid { partition, reason }) => {
            say(Level::Fail, format!("{partition}: {reason}"))
        }
        Some(ConfigState::Present { config, .. }) => {
            say(
                Level::Ok,
                format!(
                    "provisioned as {} in scope {}",
                    config.registration_id, config.id_scope
                ),
            );
            if let Some(want) = &expect.id_scope {
                if !want.eq_ignore_ascii_case(&config.id_scope) {
                    say(Level::Fail, format!("config is for ID scope {}, not {want}: this board was provisioned for another DPS", config.id_scope));
                }
            }
            if config.root_cas.is_empty() {
                say(
                    Level::Fail,
                    "config holds no readable root CA: TLS to Azure will fail".into(),
                );
            }
            for c in config.root_cas.iter().filter(|c| c.expired) {
                let hint = if c.subject.contains("Baltimore") {
                    "; Azure moved to DigiCert Global Root G2"
                } else {
                    ""
                };
                say(
                    Level::Fail,
                    format!("root CA {} expired {}{hint}", c.subject, c.not_after),
                );
            }
            if config.root_cas.len() == 1 {
                say(Level::Warn, "only one root CA: if Azure rotates to its backup root, this board cannot connect (add microsoft-rsa-2017)".into());
            }
        }
        None => {}
    }
    v
}

/// Does the running image's header fit the board? Octal flash needs `dout` in the header
/// (the ROM switches to octal itself, from the eFuse); the header's flash size should be the
/// size the flash chip reports, or the app sees less (or more) flash than there is.
fn header_warnings(partition: &str, h: &ImageHeader, r: &BoardReport) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = &r.embedded {
        let wanted = m.flash_bus.image_mode();
        if m.flash_bus == FlashBus::Octal && h.flash_mode != wanted {
            out.push(format!(
                "the firmware in {partition} has flash mode {} in its image header, but this board's flash is octal (eFuse FLASH_TYPE): images for octal flash must say {wanted}; rebuild with CONFIG_ESPTOOLPY_OCT_FLASH=y (or espflash --flash-mode {wanted})",
                h.flash_mode
            ));
        }
    }
    if let (Some(header_mb), Some(chip_mb)) = (h.flash_size_mb, r.flash_mb) {
        if header_mb != chip_mb {
            out.push(format!(
                "the firmware in {partition} was built for {header_mb} MB of flash, but the flash chip reports {chip_mb} MB (JEDEC ID); rebuild with CONFIG_ESPTOOLPY_FLASHSIZE_{chip_mb}MB (or espflash --flash-size {chip_mb}mb)"
            ));
        }
    }
    out
}

fn key_purpose_name(p: u8) -> &'static str {
    match p {
        0 => "USER",
        1 => "RESERVED",
        2 => "XTS_AES_256_KEY_1",
        3 => "XTS_AES_256_KEY_2",
        4 => "XTS_AES_128_KEY",
        5 => "HMAC_DOWN_ALL",
        6 => "HMAC_DOWN_JTAG",
        7 => "HMAC_DOWN_DIGITAL_SIGNATURE",
        8 => "HMAC_UP",
        9 => "SECURE_BOOT_DIGEST0",
        10 => "SECURE_BOOT_DIGEST1",
        11 => "SECURE_BOOT_DIGEST2",
        _ => "UNKNOWN",
    }
}
