//! Group keys, derived device keys, and the derivation between them.
//!
//! `device_key = base64(HMAC-SHA256(base64decode(group_key), registration_id))`.
//! Parsing is strict on purpose: the failures people hit in the field (a SAS token or a
//! connection string pasted where a key belongs, a truncated key) are named here, once, for the
//! CLI, the emulator and the firmware.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use core::fmt;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a text is not a usable key. `Display` gives one line that names `field` and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Empty {
        field: &'static str,
    },
    SasToken {
        field: &'static str,
    },
    ConnectionString {
        field: &'static str,
    },
    NotBase64 {
        field: &'static str,
        detail: String,
    },
    BadLength {
        field: &'static str,
        len: usize,
        min: usize,
        max: usize,
    },
    LooksLikeGroupKey {
        field: &'static str,
        len: usize,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty { field } => write!(f, "{field}: empty; give the base64 key"),
            KeyError::SasToken { field } => write!(
                f,
                "{field}: this is a SAS token (starts with 'SharedAccessSignature'), not a key; give the base64 key the token was signed with"
            ),
            KeyError::ConnectionString { field } => write!(
                f,
                "{field}: this is a connection string, not a key; give only the base64 value after 'SharedAccessKey='"
            ),
            KeyError::NotBase64 { field, detail } => write!(
                f,
                "{field}: not valid base64 ({detail}); copy the key again without extra characters"
            ),
            KeyError::BadLength { field, len, min, max } => write!(
                f,
                "{field}: decodes to {len} bytes, expected {min} to {max}; the key is truncated or is not a DPS key"
            ),
            KeyError::LooksLikeGroupKey { field, len } => write!(
                f,
                "{field}: decodes to {len} bytes, but a derived device key is 32 bytes; this looks like the enrollment group key, which must never go on a device: run `dpskit derive` and use its output"
            ),
        }
    }
}

/// Strips what copy/paste and tools wrap around a key: whitespace, a BOM, and the quotes
/// `az iot dps enrollment-group compute-device-key` prints.
pub fn clean_key_text(text: &str) -> &str {
    let t = text.trim_start_matches('\u{feff}').trim();
    let t = t
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(t);
    t.trim()
}

/// Recognises texts that are clearly not a key, before trying base64.
fn classify_non_key(text: &str, field: &'static str) -> Option<KeyError> {
    if text.is_empty() {
        return Some(KeyError::Empty { field });
    }
    if text.starts_with("SharedAccessSignature")
        || text.contains("&sig=")
        || text.starts_with("sr=")
    {
        return Some(KeyError::SasToken { field });
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("hostname=")
        || lower.contains("sharedaccesskey=")
        || lower.contains("deviceid=")
    {
        return Some(KeyError::ConnectionString { field });
    }
    None
}

fn decode_key(
    text: &str,
    field: &'static str,
    min: usize,
    max: usize,
) -> Result<Vec<u8>, KeyError> {
    let text = clean_key_text(text);
    if let Some(e) = classify_non_key(text, field) {
        return Err(e);
    }
    if let Some(c) = text.chars().find(|c| c.is_whitespace()) {
        let _ = c;
        return Err(KeyError::NotBase64 {
            field,
            detail: String::from("contains whitespace"),
        });
    }
    let bytes = B64.decode(text).map_err(|e| KeyError::NotBase64 {
        field,
        detail: format!("{e}"),
    })?;
    if bytes.len() < min || bytes.len() > max {
        return Err(KeyError::BadLength {
            field,
            len: bytes.len(),
            min,
            max,
        });
    }
    Ok(bytes)
}

/// An enrollment group's symmetric key (16..64 bytes). Never printed: `Debug` is redacted.
#[derive(Clone)]
pub struct GroupKey(Vec<u8>);

impl GroupKey {
    /// Parses a base64 group key; `field` names where it came from in error messages.
    pub fn parse(text: &str, field: &'static str) -> Result<Self, KeyError> {
        decode_key(text, field, 16, 64).map(GroupKey)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The device key for `registration_id`, over its exact bytes (no trimming, no case change).
    pub fn derive(&self, registration_id: &str) -> DeviceKey {
        self.derive_bytes(registration_id.as_bytes())
    }

    /// Derivation over arbitrary bytes; used to reproduce other tools' mistakes.
    pub fn derive_bytes(&self, message: &[u8]) -> DeviceKey {
        DeviceKey(hmac_sha256(&self.0, message))
    }

    /// The key as base64, for comparing with text someone pasted. Callers must not print it.
    pub fn to_base64(&self) -> String {
        B64.encode(&self.0)
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupKey(<{} bytes, redacted>)", self.0.len())
    }
}

/// A per-device symmetric key: 32 bytes for a key derived from a group key.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceKey([u8; 32]);

impl DeviceKey {
    /// Parses a derived device key; refuses SAS tokens, connection strings and group keys.
    pub fn parse(text: &str, field: &'static str) -> Result<Self, KeyError> {
        let bytes = decode_key(text, field, 16, 64)?;
        let arr: [u8; 32] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::LooksLikeGroupKey {
                    field,
                    len: bytes.len(),
                })?;
        Ok(DeviceKey(arr))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DeviceKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Constant-time comparison with another key.
    pub fn ct_eq(&self, other: &DeviceKey) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// A short non-secret identifier: the first 8 bytes of SHA-256 of the key, in hex.
    /// Lets people match a board to a ledger row without revealing the key.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0);
        let mut s = String::with_capacity(16);
        for b in &digest[..8] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// What human output shows instead of the key: its first four characters and fingerprint.
    pub fn masked(&self) -> String {
        let b64 = self.to_base64();
        format!("{}…(sha256:{})", &b64[..4], self.fingerprint())
    }

    /// HMAC-SHA256 with this key, as SAS signatures need.
    pub fn sign(&self, message: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.0, message)
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({})", self.masked())
    }
}

pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

impl core::error::Error for KeyError {}

#[cfg(test)]
mod tests {
    use super::*;

    pub const V1_GROUP: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
    pub const V1_ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
    const V2_GROUP: &str =
        "rLuyBPpIJ+hOre2SFIP9Ajvdty3j0EwSP/WvTVH9eZAw5HpDuEmf13nziHy5RRXmuTy84FCLpOnhhBPASSbHYg==";

    #[test]
    fn microsoft_vectors() {
        let g = GroupKey::parse(V1_GROUP, "group key").unwrap();
        assert_eq!(
            g.derive(V1_ID).to_base64(),
            "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
        );
        let g2 = GroupKey::parse(V2_GROUP, "group key").unwrap();
        assert_eq!(
            g2.derive("contoso-simdevice-east").to_base64(),
            "p3w2DQr9WqEGBLUSlFi1jPQ7UWQL4siAGy75HFTFbf8="
        );
        assert_eq!(
            g2.derive("contoso-simdevice-west").to_base64(),
            "J5n4NY2GiBYy7Mp4lDDa5CbEe6zDU/c62rhjCuFWxnc="
        );
    }

    #[test]
    fn negative_vectors_differ() {
        let g = GroupKey::parse(V1_GROUP, "group key").unwrap();
        let newline = alloc::format!("{V1_ID}\n");
        assert_eq!(
            g.derive(&newline).to_base64(),
            "9xk+A3Y29nEzASjuakJUhcmNyb4ZjibgUKRXPMBArUU="
        );
        let utf16: Vec<u8> = V1_ID.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        assert_eq!(
            g.derive_bytes(&utf16).to_base64(),
            "DBzRsEgMO0MerNnWeyhKIe40H5Mn2TSmjmq6YQEZxUw="
        );
        assert_eq!(
            g.derive(&V1_ID.to_ascii_uppercase()).to_base64(),
            "9GWVnYuoOLXlHc346XjhLRb9pKgIOrKSwxDRSOgnvXo="
        );
    }

    #[test]
    fn rejects_non_keys_with_reasons() {
        let e = GroupKey::parse("SharedAccessSignature sr=a&sig=b&se=1", "group key").unwrap_err();
        assert!(matches!(e, KeyError::SasToken { .. }));
        let e = GroupKey::parse(
            "HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=abc=",
            "group key",
        )
        .unwrap_err();
        assert!(matches!(e, KeyError::ConnectionString { .. }));
        assert!(matches!(
            GroupKey::parse("", "g").unwrap_err(),
            KeyError::Empty { .. }
        ));
        assert!(matches!(
            GroupKey::parse("!!!!", "g").unwrap_err(),
            KeyError::NotBase64 { .. }
        ));
        assert!(matches!(
            GroupKey::parse("AAAA", "g").unwrap_err(),
            KeyError::BadLength { len: 3, .. }
        ));
        let long = B64.encode([7u8; 65]);
        assert!(matches!(
            GroupKey::parse(&long, "g").unwrap_err(),
            KeyError::BadLength { len: 65, .. }
        ));
        let e = DeviceKey::parse(V1_GROUP, "device key").unwrap_err();
        assert!(matches!(e, KeyError::LooksLikeGroupKey { len: 64, .. }));
        assert!(e.to_string().starts_with("device key: "));
    }

    #[test]
    fn tolerates_wrapping() {
        let quoted = alloc::format!("\u{feff}\"{V1_GROUP}\"\r\n");
        assert!(GroupKey::parse(&quoted, "g").is_ok());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let g = GroupKey::parse(V1_GROUP, "g").unwrap();
        let shown = alloc::format!("{g:?}");
        assert!(!shown.contains("8isr"));
        let d = g.derive(V1_ID);
        assert!(!alloc::format!("{d:?}").contains("Jsm0lyGpjaVYVP2g"));
    }
}
