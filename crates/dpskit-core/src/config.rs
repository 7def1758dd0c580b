//! The config schema: what a board carries in its `dps_cfg` NVS partition.
//!
//! One definition of namespace, key names, types and validation, used by the CLI that builds
//! the image, the inspector that decodes it, and the firmware that reads it. Only the derived
//! device key is ever stored; the group key has no place here.

use crate::ident::{IdScope, RegistrationId};
use crate::key::{DeviceKey, KeyError};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// The NVS namespace that holds the config.
pub const NAMESPACE: &str = "dps";
/// Layout version stored under [`keys::SCHEMA`]; bump when keys change meaning.
pub const SCHEMA_VERSION: u8 = 1;
/// The public DPS device endpoint, the same for every DPS instance.
pub const DEFAULT_DPS_HOST: &str = "global.azure-devices-provisioning.net";
/// The NTP server a board asks when its config names none.
pub const DEFAULT_NTP_SERVER: &str = "pool.ntp.org";
/// Longest NVS key name.
pub const MAX_NVS_KEY_LEN: usize = 15;
/// Longest NVS string, including its terminating NUL (125 entries × 32 bytes).
pub const MAX_NVS_STRING_BYTES: usize = 4000;

/// NVS key names in [`NAMESPACE`].
pub mod keys {
    pub const SCHEMA: &str = "schema";
    pub const ID_SCOPE: &str = "scope_id";
    pub const REGISTRATION_ID: &str = "registration_id";
    pub const DEVICE_KEY: &str = "device_key";
    pub const ROOT_CA: &str = "root_ca";
    pub const DPS_HOST: &str = "dps_host";
    pub const WIFI_SSID: &str = "wifi_ssid";
    pub const WIFI_PASSWORD: &str = "wifi_pass";
    pub const NTP_SERVER: &str = "ntp_server";
    pub const TOKEN_TTL: &str = "token_ttl";
}

/// Shortest SAS token lifetime a config may ask for: the hub connection is renewed 120 s
/// before expiry and needs a minute of use in between.
pub const MIN_TOKEN_TTL_SECS: u32 = 181;
/// Longest: a year (a leaked token should not outlive that).
pub const MAX_TOKEN_TTL_SECS: u32 = 31_536_000;

/// A value as stored in NVS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    U8(u8),
    Str(String),
}

/// Why a config cannot be built or was read back incomplete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Missing(&'static str),
    WrongType(&'static str),
    UnsupportedSchema(u8),
    Invalid { key: &'static str, reason: String },
    Key(KeyError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing(k) => write!(
                f,
                "config: key '{k}' missing from namespace '{NAMESPACE}'; rebuild the image with `dpskit config build`"
            ),
            ConfigError::WrongType(k) => write!(
                f,
                "config: key '{k}' has the wrong NVS type; rebuild the image with `dpskit config build`"
            ),
            ConfigError::UnsupportedSchema(v) => write!(
                f,
                "config: schema version {v} is not supported (this build reads {SCHEMA_VERSION}); update dpskit or the firmware"
            ),
            ConfigError::Invalid { key, reason } => write!(f, "config: '{key}': {reason}"),
            ConfigError::Key(e) => write!(f, "config: {e}"),
        }
    }
}

/// What one board needs to reach Azure.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub id_scope: IdScope,
    pub registration_id: RegistrationId,
    pub device_key: DeviceKey,
    /// PEM text of every trusted root, concatenated.
    pub root_ca_pem: String,
    pub dps_host: String,
    pub wifi_ssid: Option<String>,
    pub wifi_password: Option<String>,
    /// `host[:port]` of the NTP server (factories without internet time have their own);
    /// `None`: [`DEFAULT_NTP_SERVER`].
    pub ntp_server: Option<String>,
    /// Lifetime of the SAS tokens the device makes, in seconds (stored as decimal text);
    /// `None`: the device's default (an hour).
    pub token_ttl_secs: Option<u32>,
}

impl fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("id_scope", &self.id_scope)
            .field("registration_id", &self.registration_id)
            .field("device_key", &self.device_key)
            .field(
                "root_ca_pem",
                &format_args!("<{} bytes>", self.root_ca_pem.len()),
            )
            .field("dps_host", &self.dps_host)
            .field("wifi_ssid", &self.wifi_ssid)
            .field(
                "wifi_password",
                &self.wifi_password.as_ref().map(|_| "<redacted>"),
            )
            .field("ntp_server", &self.ntp_server)
            .field("token_ttl_secs", &self.token_ttl_secs)
            .finish()
    }
}

impl DeviceConfig {
    /// The entries to store, in a stable order, each checked against NVS limits.
    pub fn to_entries(&self) -> Result<Vec<(&'static str, Value)>, ConfigError> {
        let mut out = vec![
            (keys::SCHEMA, Value::U8(SCHEMA_VERSION)),
            (keys::ID_SCOPE, Value::Str(self.id_scope.to_string())),
            (
                keys::REGISTRATION_ID,
                Value::Str(self.registration_id.to_string()),
            ),
            (keys::DEVICE_KEY, Value::Str(self.device_key.to_base64())),
            (keys::DPS_HOST, Value::Str(self.dps_host.clone())),
            (keys::ROOT_CA, Value::Str(self.root_ca_pem.clone())),
        ];
        if let Some(ssid) = &self.wifi_ssid {
            out.push((keys::WIFI_SSID, Value::Str(ssid.clone())));
        }
        if let Some(pass) = &self.wifi_password {
            out.push((keys::WIFI_PASSWORD, Value::Str(pass.clone())));
        }
        if let Some(ntp) = &self.ntp_server {
            out.push((keys::NTP_SERVER, Value::Str(ntp.clone())));
        }
        if let Some(ttl) = self.token_ttl_secs {
            out.push((keys::TOKEN_TTL, Value::Str(ttl.to_string())));
        }
        for (key, value) in &out {
            check_nvs_entry(key, value)?;
        }
        self.check_fields()?;
        Ok(out)
    }

    /// The NTP server to ask, and its UDP port (123 unless the config says otherwise).
    pub fn ntp_server(&self) -> (&str, u16) {
        match &self.ntp_server {
            Some(s) => split_host_port(s).unwrap_or((s.as_str(), NTP_PORT)),
            None => (DEFAULT_NTP_SERVER, NTP_PORT),
        }
    }

    /// Rebuilds a config from stored values; `get` looks a key up in [`NAMESPACE`].
    pub fn from_lookup(
        mut get: impl FnMut(&'static str) -> Option<Value>,
    ) -> Result<Self, ConfigError> {
        let mut string = |key: &'static str| -> Result<Option<String>, ConfigError> {
            match get(key) {
                None => Ok(None),
                Some(Value::Str(s)) => Ok(Some(s)),
                Some(Value::U8(_)) => Err(ConfigError::WrongType(key)),
            }
        };
        let required = |v: Option<String>, key| v.ok_or(ConfigError::Missing(key));
        let scope = required(string(keys::ID_SCOPE)?, keys::ID_SCOPE)?;
        let reg = required(string(keys::REGISTRATION_ID)?, keys::REGISTRATION_ID)?;
        let key = required(string(keys::DEVICE_KEY)?, keys::DEVICE_KEY)?;
        let root_ca_pem = required(string(keys::ROOT_CA)?, keys::ROOT_CA)?;
        let dps_host = string(keys::DPS_HOST)?.unwrap_or_else(|| DEFAULT_DPS_HOST.into());
        let wifi_ssid = string(keys::WIFI_SSID)?;
        let wifi_password = string(keys::WIFI_PASSWORD)?;
        let ntp_server = string(keys::NTP_SERVER)?;
        let token_ttl_secs = match string(keys::TOKEN_TTL)? {
            None => None,
            Some(t) => Some(t.parse::<u32>().map_err(|_| ConfigError::Invalid {
                key: keys::TOKEN_TTL,
                reason: format!("{t:?} is not a number of seconds"),
            })?),
        };
        match get(keys::SCHEMA) {
            Some(Value::U8(SCHEMA_VERSION)) => {}
            Some(Value::U8(v)) => return Err(ConfigError::UnsupportedSchema(v)),
            Some(Value::Str(_)) => return Err(ConfigError::WrongType(keys::SCHEMA)),
            None => return Err(ConfigError::Missing(keys::SCHEMA)),
        }
        let id_scope = IdScope::parse(&scope)
            .map_err(|e| ConfigError::Invalid {
                key: keys::ID_SCOPE,
                reason: e.to_string(),
            })?
            .0;
        let registration_id =
            RegistrationId::parse(&reg, true).map_err(|e| ConfigError::Invalid {
                key: keys::REGISTRATION_ID,
                reason: e.to_string(),
            })?;
        let device_key = DeviceKey::parse(&key, "device_key").map_err(ConfigError::Key)?;
        let cfg = DeviceConfig {
            id_scope,
            registration_id,
            device_key,
            root_ca_pem,
            dps_host,
            wifi_ssid,
            wifi_password,
            ntp_server,
            token_ttl_secs,
        };
        cfg.check_fields()?;
        Ok(cfg)
    }

    fn check_fields(&self) -> Result<(), ConfigError> {
        if !self.root_ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::Invalid {
                key: keys::ROOT_CA,
                reason: "holds no PEM certificate; give --root-ca".into(),
            });
        }
        check_dps_host(&self.dps_host).map_err(|reason| ConfigError::Invalid {
            key: keys::DPS_HOST,
            reason,
        })?;
        if let Some(ntp) = &self.ntp_server {
            if let Err(reason) = split_host_port(ntp) {
                return Err(ConfigError::Invalid {
                    key: keys::NTP_SERVER,
                    reason,
                });
            }
        }
        if let Some(ttl) = self.token_ttl_secs {
            if !(MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(&ttl) {
                return Err(ConfigError::Invalid {
                    key: keys::TOKEN_TTL,
                    reason: format!(
                        "{ttl} s; use {MIN_TOKEN_TTL_SECS} s (renewal comes 120 s before expiry) to {MAX_TOKEN_TTL_SECS} s (a year)"
                    ),
                });
            }
        }
        if let Some(pass) = &self.wifi_password {
            if self.wifi_ssid.is_none() {
                return Err(ConfigError::Invalid {
                    key: keys::WIFI_PASSWORD,
                    reason: "set without a Wi-Fi SSID; give --wifi-ssid too".into(),
                });
            }
            check_wifi_password(pass).map_err(|reason| ConfigError::Invalid {
                key: keys::WIFI_PASSWORD,
                reason,
            })?;
        }
        if let Some(ssid) = &self.wifi_ssid {
            check_wifi_ssid(ssid).map_err(|reason| ConfigError::Invalid {
                key: keys::WIFI_SSID,
                reason,
            })?;
        }
        Ok(())
    }
}

/// The NTP port.
pub const NTP_PORT: u16 = 123;

/// `host` or `host:port` (an IPv4 address or a DNS name; 123 by default), or why not.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(port) if port > 0 => (h, port),
            _ => return Err(format!("{s:?}: the port after ':' must be 1 to 65535")),
        },
        None => (s, NTP_PORT),
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !name_ok {
        return Err(format!(
            "{s:?} is not an IPv4 address or host name (with an optional :port); use e.g. {DEFAULT_NTP_SERVER} or 192.168.1.10"
        ));
    }
    Ok((host, port))
}

/// The DPS endpoint a board connects to: a host name or address, optionally with `:port`
/// (the virtual device and a rehearsal against an emulator on another port use one; the
/// firmware connects to port 8883 of the host when none is given). No scheme, no path, no
/// spaces. The one rule for the CLI, the station file and the firmware; callers prefix their
/// own field name to the reason.
pub fn check_dps_host(host: &str) -> Result<(), String> {
    let bad = || format!("{host:?} is not a host name; use e.g. {DEFAULT_DPS_HOST}");
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    if let Some((name, port)) = host.rsplit_once(':') {
        if name.is_empty() || name.contains(':') || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad());
        }
    }
    Ok(())
}

/// A Wi-Fi SSID is 1 to 32 bytes (802.11).
pub fn check_wifi_ssid(ssid: &str) -> Result<(), String> {
    if ssid.is_empty() || ssid.len() > 32 {
        return Err(format!("{} bytes; an SSID is 1 to 32 bytes", ssid.len()));
    }
    Ok(())
}

/// A Wi-Fi password is empty (an open network) or a WPA2 passphrase of 8 to 63 characters.
pub fn check_wifi_password(pass: &str) -> Result<(), String> {
    if !pass.is_empty() && !(8..=63).contains(&pass.len()) {
        return Err(format!(
            "{} characters; WPA2 passphrases are 8 to 63",
            pass.len()
        ));
    }
    Ok(())
}

/// Checks one entry against NVS's own limits (key length, string size).
pub fn check_nvs_entry(key: &str, value: &Value) -> Result<(), ConfigError> {
    let static_key = static_key_name(key);
    if key.is_empty() || key.len() > MAX_NVS_KEY_LEN {
        return Err(ConfigError::Invalid {
            key: static_key,
            reason: format!(
                "NVS key {key:?} is {} characters; NVS allows 1 to {MAX_NVS_KEY_LEN}",
                key.len()
            ),
        });
    }
    if let Value::Str(s) = value {
        if s.len() + 1 > MAX_NVS_STRING_BYTES {
            return Err(ConfigError::Invalid {
                key: static_key,
                reason: format!(
                    "{} bytes; an NVS string holds at most {} bytes; use fewer root CAs",
                    s.len(),
                    MAX_NVS_STRING_BYTES - 1
                ),
            });
        }
        if s.contains('\0') {
            return Err(ConfigError::Invalid {
                key: static_key,
                reason: "contains a NUL byte".into(),
            });
        }
    }
    Ok(())
}

fn static_key_name(key: &str) -> &'static str {
    [
        keys::SCHEMA,
        keys::ID_SCOPE,
        keys::REGISTRATION_ID,
        keys::DEVICE_KEY,
        keys::ROOT_CA,
        keys::DPS_HOST,
        keys::WIFI_SSID,
        keys::WIFI_PASSWORD,
        keys::NTP_SERVER,
        keys::TOKEN_TTL,
    ]
    .into_iter()
    .find(|k| *k == key)
    .unwrap_or("key")
}

impl core::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    fn sample() -> DeviceConfig {
        DeviceConfig {
            id_scope: IdScope::parse("0ne00ABCDEF").unwrap().0,
            registration_id: RegistrationId::parse("device-0001", false).unwrap(),
            device_key: DeviceKey::from_bytes([3; 32]),
            root_ca_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            dps_host: DEFAULT_DPS_HOST.into(),
            wifi_ssid: Some("factory".into()),
            wifi_password: Some("password1".into()),
            ntp_server: None,
            token_ttl_secs: None,
        }
    }

    #[test]
    fn round_trips_through_entries() {
        let cfg = sample();
        let map: BTreeMap<_, _> = cfg.to_entries().unwrap().into_iter().collect();
        let back = DeviceConfig::from_lookup(|k| map.get(k).cloned()).unwrap();
        assert_eq!(back, cfg);
        for k in map.keys() {
            assert!(k.len() <= MAX_NVS_KEY_LEN);
        }
    }

    #[test]
    fn reports_missing_and_bad_values() {
        let cfg = sample();
        let mut map: BTreeMap<_, _> = cfg.to_entries().unwrap().into_iter().collect();
        map.remove(keys::DEVICE_KEY);
        let e = DeviceConfig::from_lookup(|k| map.get(k).cloned()).unwrap_err();
        assert_eq!(e, ConfigError::Missing(keys::DEVICE_KEY));
        map.insert(
            keys::DEVICE_KEY,
            Value::Str("SharedAccessSignature sr=x&sig=y&se=1".into()),
        );
        let e = DeviceConfig::from_lookup(|k| map.get(k).cloned()).unwrap_err();
        assert!(e.to_string().contains("SAS token"), "{e}");
        map.insert(
            keys::DEVICE_KEY,
            Value::Str(DeviceKey::from_bytes([3; 32]).to_base64()),
        );
        map.insert(keys::SCHEMA, Value::U8(9));
        assert_eq!(
            DeviceConfig::from_lookup(|k| map.get(k).cloned()).unwrap_err(),
            ConfigError::UnsupportedSchema(9)
        );
    }

    #[test]
    fn ntp_server_is_optional_host_and_port() {
        let mut cfg = sample();
        assert_eq!(cfg.ntp_server(), (DEFAULT_NTP_SERVER, 123));
        assert!(!cfg
            .to_entries()
            .unwrap()
            .iter()
            .any(|(k, _)| *k == keys::NTP_SERVER));
        cfg.ntp_server = Some("10.0.2.2:1123".into());
        assert_eq!(cfg.ntp_server(), ("10.0.2.2", 1123));
        let map: BTreeMap<_, _> = cfg.to_entries().unwrap().into_iter().collect();
        assert_eq!(
            DeviceConfig::from_lookup(|k| map.get(k).cloned()).unwrap(),
            cfg
        );
        cfg.ntp_server = Some("time.factory.lan".into());
        assert_eq!(cfg.ntp_server(), ("time.factory.lan", 123));
        for bad in [
            "",
            "ntp server",
            "host:0",
            "host:x",
            "a..b",
            "http://pool.ntp.org",
        ] {
            cfg.ntp_server = Some(bad.into());
            let e = cfg.to_entries().unwrap_err();
            assert!(e.to_string().contains("ntp_server"), "{bad}: {e}");
        }
    }

    #[test]
    fn nvs_limits() {
        assert!(check_nvs_entry("a_key_of_16_chr", &Value::U8(1)).is_ok());
        assert!(check_nvs_entry("a_key_of_16_chrs", &Value::U8(1)).is_err());
        let mut cfg = sample();
        cfg.root_ca_pem = alloc::format!("-----BEGIN CERTIFICATE-----\n{}", "A".repeat(4000));
        let e = cfg.to_entries().unwrap_err();
        assert!(e.to_string().contains("root_ca"), "{e}");
        let mut cfg = sample();
        cfg.wifi_password = Some("short".into());
        assert!(cfg.to_entries().is_err());
    }
}
