//! DPS JSON bodies, for both sides: the device parses what the emulator builds with the same
//! types. Unknown fields are ignored (DPS adds `x509`, `tpm`, `trustBundle`, … as it pleases).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `status` of an operation or a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationStatus {
    Unassigned,
    Assigning,
    Assigned,
    Failed,
    Disabled,
    /// Anything newer than this code knows.
    #[serde(other)]
    Unknown,
}

/// The register request body (DeviceRegistration). The Python SDK sends `"payload": null`
/// when it has none; this type omits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    /// Empty when the body has none: DPS takes the ID from the user name and the token, and
    /// Microsoft's embedded C SDK sends no body at all.
    #[serde(default)]
    pub registration_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl DeviceRegistration {
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Parses a register body (emulator side); an empty body is one without fields.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        if crate::topic::is_empty_body(body) {
            return Ok(DeviceRegistration {
                registration_id: String::new(),
                payload: None,
            });
        }
        serde_json::from_slice(body)
    }
}

/// `registrationState` (DeviceRegistrationResult).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationState {
    #[serde(default)]
    pub registration_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RegistrationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_code"
    )]
    pub error_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The custom-allocation return payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl RegistrationState {
    /// A successful assignment (`substatus: initialAssignment`).
    pub fn assigned(registration_id: &str, assigned_hub: &str, device_id: &str) -> Self {
        RegistrationState {
            registration_id: registration_id.to_string(),
            assigned_hub: Some(assigned_hub.to_string()),
            device_id: Some(device_id.to_string()),
            status: Some(RegistrationStatus::Assigned),
            substatus: Some("initialAssignment".to_string()),
            ..Default::default()
        }
    }

    /// A failed registration with DPS's error code and message.
    pub fn failed(registration_id: &str, error_code: u32, error_message: &str) -> Self {
        RegistrationState {
            registration_id: registration_id.to_string(),
            status: Some(RegistrationStatus::Failed),
            error_code: Some(error_code),
            error_message: Some(error_message.to_string()),
            ..Default::default()
        }
    }
}

/// The body of every 2xx DPS answer (RegistrationOperationStatus).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RegistrationStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<RegistrationState>,
}

impl RegistrationOperationStatus {
    /// The `202` body while DPS works: `{"operationId":…,"status":"assigning","registrationState":{…}}`.
    pub fn assigning(operation_id: &str, registration_id: &str) -> Self {
        RegistrationOperationStatus {
            operation_id: Some(operation_id.to_string()),
            status: Some(RegistrationStatus::Assigning),
            registration_state: Some(RegistrationState {
                registration_id: registration_id.to_string(),
                status: Some(RegistrationStatus::Assigning),
                ..Default::default()
            }),
        }
    }

    /// The final `200` body; `status` follows `state.status`.
    pub fn done(operation_id: &str, state: RegistrationState) -> Self {
        RegistrationOperationStatus {
            operation_id: Some(operation_id.to_string()),
            status: state.status,
            registration_state: Some(state),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// The body of a DPS error answer (ProvisioningServiceErrorDetails).
/// `error_code / 1000` is the HTTP-like status (401002 → 401).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceError {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_code"
    )]
    pub error_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_utc: Option<String>,
}

impl ServiceError {
    /// `{"errorCode":…,"trackingId":…,"message":…,"timestampUtc":…}`; the emulator supplies
    /// the tracking ID and timestamp (no clock or RNG here).
    pub fn new(error_code: u32, message: &str, tracking_id: &str, timestamp_utc: &str) -> Self {
        ServiceError {
            error_code: Some(error_code),
            tracking_id: Some(tracking_id.to_string()),
            message: Some(message.to_string()),
            timestamp_utc: Some(timestamp_utc.to_string()),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }

    /// Parses an error body; anything unparseable gives an empty value, since the status in
    /// the topic already says what went wrong.
    pub fn from_json_lenient(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Only strings, numbers and `Value`s: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Error codes are integers, but take `"401002"` too rather than lose the whole message.
fn lenient_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_docs_sample_and_ignores_unknown_fields() {
        let body = br#"{"operationId":"5.316aac5bdc130deb.b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550","status":"assigned",
 "registrationState":{"registrationId":"my-symkey-device","createdDateTimeUtc":"2022-08-31T22:02:50.5163352Z",
  "assignedHub":"MyExampleHub.azure-devices.net","deviceId":"my-symkey-device","status":"assigned",
  "substatus":"initialAssignment","lastUpdatedDateTimeUtc":"2022-08-31T22:02:50.7370676Z",
  "etag":"IjY5MDAzNTUyLTAwMDAtMDMwMC0wMDAwLTYzMGZkYThhMDAwMCI=","x509":{"a":[1,2]},"trustBundle":null}}"#;
        let s = RegistrationOperationStatus::from_json(body).unwrap();
        assert_eq!(s.status, Some(RegistrationStatus::Assigned));
        let st = s.registration_state.unwrap();
        assert_eq!(
            st.assigned_hub.as_deref(),
            Some("MyExampleHub.azure-devices.net")
        );
        assert_eq!(st.substatus.as_deref(), Some("initialAssignment"));
    }

    #[test]
    fn error_codes_are_lenient() {
        let e = ServiceError::from_json_lenient(br#"{"errorCode":"401002","message":"x"}"#);
        assert_eq!(e.error_code, Some(401002));
        assert_eq!(
            ServiceError::from_json_lenient(b"not json"),
            ServiceError::default()
        );
        let s: RegistrationOperationStatus =
            serde_json::from_slice(br#"{"status":"brand-new"}"#).unwrap();
        assert_eq!(s.status, Some(RegistrationStatus::Unknown));
    }
}
