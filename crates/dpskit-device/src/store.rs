//! The cached DPS assignment: what lets a rebooted device go straight to its hub.
//!
//! DPS asks devices not to register on every boot, so the app outputs the assignment once
//! ([`AppOutput::StoreAssignment`](crate::AppOutput::StoreAssignment)) and the driver keeps it
//! (firmware: NVS; PC: a file). On the next boot the driver passes it back to
//! [`DeviceApp::new`](crate::DeviceApp::new); it is used only if it was made for the same ID
//! scope, registration ID and DPS host. One encoding (small JSON, no secrets) for both.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use dpskit_core::dps::Assignment;
use dpskit_core::DeviceConfig;
use serde::{Deserialize, Serialize};

/// Version of the stored encoding.
const FORMAT_VERSION: u8 = 1;

/// Where DPS put this device, plus what it was asked as (to notice a re-flashed config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredAssignment {
    #[serde(rename = "v")]
    pub version: u8,
    pub id_scope: String,
    pub registration_id: String,
    pub dps_host: String,
    pub assigned_hub: String,
    pub device_id: String,
}

/// Why stored bytes are not a usable assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stored assignment: {}", self.0)
    }
}

impl StoredAssignment {
    /// The record for `assignment`, made by registering with `cfg`.
    pub fn new(cfg: &DeviceConfig, assignment: &Assignment) -> Self {
        StoredAssignment {
            version: FORMAT_VERSION,
            id_scope: cfg.id_scope.as_str().to_string(),
            registration_id: cfg.registration_id.as_str().to_string(),
            dps_host: cfg.dps_host.clone(),
            assigned_hub: assignment.assigned_hub.clone(),
            device_id: assignment.device_id.clone(),
        }
    }

    /// `None` when this record was made for `cfg`'s scope, ID and DPS host (scope and ID
    /// compare case-insensitively, as DPS does); otherwise why it does not apply.
    pub fn mismatch(&self, cfg: &DeviceConfig) -> Option<String> {
        if self.version != FORMAT_VERSION {
            return Some(alloc::format!(
                "format version {} is not {FORMAT_VERSION}",
                self.version
            ));
        }
        if !self.id_scope.eq_ignore_ascii_case(cfg.id_scope.as_str()) {
            return Some(alloc::format!(
                "made for ID scope {}, the config has {}",
                self.id_scope,
                cfg.id_scope
            ));
        }
        if !self
            .registration_id
            .eq_ignore_ascii_case(cfg.registration_id.as_str())
        {
            return Some(alloc::format!(
                "made for registration ID {:?}, the config has {:?}",
                self.registration_id,
                cfg.registration_id.as_str()
            ));
        }
        if !self.dps_host.eq_ignore_ascii_case(&cfg.dps_host) {
            return Some(alloc::format!(
                "made with DPS host {}, the config has {}",
                self.dps_host,
                cfg.dps_host
            ));
        }
        if self.assigned_hub.is_empty() || self.device_id.is_empty() {
            return Some("no hub or device ID in it".into());
        }
        None
    }

    /// The stored form: one line of JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain strings always serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError(alloc::format!("not readable ({e})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpskit_core::{DeviceKey, IdScope, RegistrationId};

    fn cfg() -> DeviceConfig {
        DeviceConfig {
            id_scope: IdScope::parse("0ne00ABCDEF").unwrap().0,
            registration_id: RegistrationId::parse("dev-1", false).unwrap(),
            device_key: DeviceKey::from_bytes([1; 32]),
            root_ca_pem: String::new(),
            dps_host: "localhost".into(),
            wifi_ssid: None,
            wifi_password: None,
            ntp_server: None,
            token_ttl_secs: None,
        }
    }

    #[test]
    fn round_trips_and_matches_only_its_config() {
        let a = Assignment {
            assigned_hub: "hub.local".into(),
            device_id: "dev-1".into(),
            substatus: None,
            payload: None,
            operation_id: "op".into(),
        };
        let s = StoredAssignment::new(&cfg(), &a);
        let bytes = s.to_bytes();
        assert_eq!(
            core::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"idScope":"0ne00ABCDEF","registrationId":"dev-1","dpsHost":"localhost","assignedHub":"hub.local","deviceId":"dev-1"}"#
        );
        assert_eq!(StoredAssignment::from_bytes(&bytes).unwrap(), s);
        assert_eq!(s.mismatch(&cfg()), None);
        let mut other = cfg();
        other.registration_id = RegistrationId::parse("dev-2", false).unwrap();
        assert!(s.mismatch(&other).unwrap().contains("dev-2"));
        let mut other = cfg();
        other.dps_host = "global.azure-devices-provisioning.net".into();
        assert!(s.mismatch(&other).unwrap().contains("DPS host"));
        assert!(StoredAssignment::from_bytes(b"{").is_err());
    }
}
