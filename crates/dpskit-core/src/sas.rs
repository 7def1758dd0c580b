//! Shared Access Signature tokens, as DPS and IoT Hub use them.
//!
//! `sig = base64(HMAC-SHA256(device_key, url_encode(resource_uri) + "\n" + expiry))`.
//! The signature covers the *encoded* resource exactly as sent, so `%2F` and `%2f` sign
//! differently; [`SasToken::verify`] therefore signs `sr` as received, never re-encoded.

use crate::key::DeviceKey;
use crate::url;
use alloc::format;
use alloc::string::{String, ToString};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use core::fmt;
use subtle::ConstantTimeEq;

/// The DPS resource a device signs: `{id_scope}/registrations/{registration_id}`.
pub fn dps_resource(id_scope: &str, registration_id: &str) -> String {
    format!("{id_scope}/registrations/{registration_id}")
}

/// The IoT Hub resource a device signs: `{hub_host}/devices/{device_id}`.
pub fn hub_resource(hub_host: &str, device_id: &str) -> String {
    format!("{hub_host}/devices/{device_id}")
}

/// A parsed token. `sr` keeps the encoded form exactly as it appeared on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    pub sr_encoded: String,
    pub sig_base64: String,
    pub expiry: u64,
    pub skn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SasError {
    MissingPrefix,
    MissingField(&'static str),
    BadField(&'static str),
    DuplicateField(&'static str),
}

impl fmt::Display for SasError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SasError::MissingPrefix => {
                write!(
                    f,
                    "token: must start with 'SharedAccessSignature '; paste the whole token"
                )
            }
            SasError::MissingField(n) => {
                write!(f, "token: no '{n}=' field; the token is truncated")
            }
            SasError::BadField(n) => write!(f, "token: field '{n}' is malformed"),
            SasError::DuplicateField(n) => write!(f, "token: field '{n}' appears twice"),
        }
    }
}

impl SasToken {
    /// Signs `resource` (unencoded) valid until `expiry` (Unix seconds).
    pub fn generate(key: &DeviceKey, resource: &str, expiry: u64, skn: Option<&str>) -> Self {
        let sr_encoded = url::encode(resource);
        let sig = signature(key, &sr_encoded, expiry);
        SasToken {
            sr_encoded,
            sig_base64: sig,
            expiry,
            skn: skn.map(ToString::to_string),
        }
    }

    /// The decoded resource URI (`sr`).
    pub fn resource(&self) -> Option<String> {
        url::decode(&self.sr_encoded)
    }

    /// Parses `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]` (fields in any order).
    pub fn parse(token: &str) -> Result<Self, SasError> {
        let body = token
            .trim()
            .strip_prefix("SharedAccessSignature ")
            .ok_or(SasError::MissingPrefix)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for part in body.split('&') {
            let (k, v) = part.split_once('=').ok_or(SasError::BadField("field"))?;
            let slot = match k {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue,
            };
            if slot.is_some() {
                return Err(SasError::DuplicateField(match k {
                    "sr" => "sr",
                    "sig" => "sig",
                    "se" => "se",
                    _ => "skn",
                }));
            }
            *slot = Some(v);
        }
        let sr = sr.ok_or(SasError::MissingField("sr"))?;
        let sig = sig.ok_or(SasError::MissingField("sig"))?;
        let se = se.ok_or(SasError::MissingField("se"))?;
        let sig_base64 = url::decode(sig).ok_or(SasError::BadField("sig"))?;
        let expiry = se.parse::<u64>().map_err(|_| SasError::BadField("se"))?;
        let skn = match skn {
            Some(s) => Some(url::decode(s).ok_or(SasError::BadField("skn"))?),
            None => None,
        };
        if url::decode(sr).is_none() {
            return Err(SasError::BadField("sr"));
        }
        Ok(SasToken {
            sr_encoded: sr.to_string(),
            sig_base64,
            expiry,
            skn,
        })
    }

    /// True when the signature is `key`'s over `sr` exactly as received.
    pub fn verify(&self, key: &DeviceKey) -> bool {
        let expected = signature(key, &self.sr_encoded, self.expiry);
        expected.as_bytes().ct_eq(self.sig_base64.as_bytes()).into()
    }

    /// Seconds until expiry (negative when expired) at `now`.
    pub fn seconds_left(&self, now: u64) -> i64 {
        self.expiry as i64 - now as i64
    }
}

impl fmt::Display for SasToken {
    /// The wire form: `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SharedAccessSignature sr={}&sig={}&se={}",
            self.sr_encoded,
            url::encode(&self.sig_base64),
            self.expiry
        )?;
        if let Some(skn) = &self.skn {
            write!(f, "&skn={}", url::encode(skn))?;
        }
        Ok(())
    }
}

/// A token lifetime or age in plain words: `5 s`, `42 min`, `3 h`, `12 days`, `3 years`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        172_800..=63_071_999 => format!("{} days", secs / 86_400),
        _ => format!("{} years", secs / 31_557_600),
    }
}

fn signature(key: &DeviceKey, sr_encoded: &str, expiry: u64) -> String {
    let to_sign = format!("{sr_encoded}\n{expiry}");
    B64.encode(key.sign(to_sign.as_bytes()))
}

impl core::error::Error for SasError {}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_DEVICE: &str = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=";
    const V1_ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";

    #[test]
    fn docs_hub_vector() {
        // DOC-HTTPS signs with the 64-byte key directly; DeviceKey only takes 32, so sign raw.
        let key = B64
            .decode("18RQk/hOPJR9EbsJlk2j8WA6vWaj/yi+oaYg7zmxfQNdOyMSu+SJ8O7TSlZhDJCYmn4rzEiVKIzNiVAWjLxrGA==")
            .unwrap();
        let sr = url::encode("MyExampleHub.azure-devices.net/devices/my-symkey-device");
        let sig = B64.encode(crate::key::hmac_sha256(
            &key,
            format!("{sr}\n1663119026").as_bytes(),
        ));
        let token = format!(
            "SharedAccessSignature sr={sr}&sig={}&se=1663119026",
            url::encode(&sig)
        );
        assert_eq!(token, "SharedAccessSignature sr=MyExampleHub.azure-devices.net%2Fdevices%2Fmy-symkey-device&sig=f%2BwW8XOKeJOtiPc9Iwjc4OpExvPM7NlhM9qxN2a1aAM%3D&se=1663119026");
    }

    #[test]
    fn dps_and_hub_vectors() {
        let key = DeviceKey::parse(V1_DEVICE, "k").unwrap();
        let t = SasToken::generate(
            &key,
            &dps_resource("0ne00000000", V1_ID),
            1_700_000_000,
            None,
        );
        assert_eq!(
            t.to_string(),
            "SharedAccessSignature sr=0ne00000000%2Fregistrations%2Fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6&sig=UcaBdA4L3Se7NlFQZcBFRndkqyymINWtRUmVT5QYWng%3D&se=1700000000"
        );
        let h = SasToken::generate(
            &key,
            &hub_resource("myhub.azure-devices.net", V1_ID),
            1_700_000_000,
            None,
        );
        assert!(h
            .to_string()
            .contains("&sig=tPZ623IifpFm%2BRIARy2du9tPkfGB%2Fbk8pzj0ebs%2FiHo%3D&"));
    }

    #[test]
    fn lower_case_escapes_sign_differently_and_verify_as_sent() {
        let key = DeviceKey::parse(V1_DEVICE, "k").unwrap();
        let sr = "0ne00000000%2fregistrations%2fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
        assert_eq!(
            signature(&key, sr, 1_700_000_000),
            "zbIlOWEYoHGEP2MF6mr2reJR+toDRTIOMfzOZMhYfeQ="
        );
        let wire = format!(
            "SharedAccessSignature sr={sr}&sig={}&se=1700000000&skn=registration",
            url::encode("zbIlOWEYoHGEP2MF6mr2reJR+toDRTIOMfzOZMhYfeQ=")
        );
        let t = SasToken::parse(&wire).unwrap();
        assert!(t.verify(&key));
        assert_eq!(t.skn.as_deref(), Some("registration"));
        assert_eq!(t.resource().unwrap(), dps_resource("0ne00000000", V1_ID));
        let other = DeviceKey::from_bytes([1; 32]);
        assert!(!t.verify(&other));
    }

    #[test]
    fn durations_in_plain_words() {
        assert_eq!(human_duration(5), "5 s");
        assert_eq!(human_duration(7199), "119 min");
        assert_eq!(human_duration(3 * 3600), "3 h");
        assert_eq!(human_duration(12 * 86_400), "12 days");
        assert_eq!(human_duration(4 * 31_557_600), "4 years");
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            SasToken::parse("sr=a&sig=b&se=1"),
            Err(SasError::MissingPrefix)
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&se=1"),
            Err(SasError::MissingField("sig"))
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sig=b&se=soon"),
            Err(SasError::BadField("se"))
        );
        assert_eq!(
            SasToken::parse("SharedAccessSignature sr=a&sr=b&sig=b&se=1"),
            Err(SasError::DuplicateField("sr"))
        );
    }
}
