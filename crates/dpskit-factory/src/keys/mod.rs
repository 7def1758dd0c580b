//! Keys: which devices a batch covers, their derived keys, and checks of keys made elsewhere.

pub mod batch;
pub mod source;
pub mod token;
pub mod verify;

pub use source::{KeySource, SourceError, GROUP_KEY_ENV};

use dpskit_core::{DeviceKey, GroupKey, RegistrationId};

/// One derived key, ready for output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DerivedKey {
    pub registration_id: String,
    #[serde(serialize_with = "ser_key")]
    pub device_key: DeviceKey,
}

fn ser_key<S: serde::Serializer>(k: &DeviceKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&k.to_base64())
}

/// Derives the key of every ID in the batch.
pub fn derive_all(group: &GroupKey, ids: &[RegistrationId]) -> Vec<DerivedKey> {
    ids.iter()
        .map(|id| DerivedKey {
            registration_id: id.to_string(),
            device_key: group.derive(id.as_str()),
        })
        .collect()
}
