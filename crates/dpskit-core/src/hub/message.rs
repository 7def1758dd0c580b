//! IoT Hub messages (telemetry and cloud-to-device): body plus properties carried in the topic.
//!
//! One [`Message`] type for both directions, so the device's telemetry and the emulator's C2D
//! deliveries use the same property mapping. System properties are the `$.…` keys (and
//! `iothub-ack` for C2D); everything else is an application property, kept in a
//! [`PropertyBag`] so a null value (`key`) stays distinct from an empty one (`key=`).

use super::HubError;
use crate::mqtt::Publish;
use crate::topic::{DeviceTopic, PropertyBag, ServiceTopic};
use alloc::string::{String, ToString};
use alloc::vec::Vec;

/// Largest device-to-cloud message IoT Hub accepts.
pub const MAX_TELEMETRY_BYTES: usize = 256 * 1024;
/// Largest cloud-to-device message IoT Hub accepts.
pub const MAX_C2D_BYTES: usize = 64 * 1024;

/// A telemetry or C2D message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub body: Vec<u8>,
    /// `$.mid`
    pub message_id: Option<String>,
    /// `$.cid`
    pub correlation_id: Option<String>,
    /// `$.uid`
    pub user_id: Option<String>,
    /// `$.to` (C2D: the destination path, `/devices/{id}/messages/devicebound`)
    pub to: Option<String>,
    /// `$.ct`; `application/json` lets IoT Hub route on the body.
    pub content_type: Option<String>,
    /// `$.ce`; `utf-8` with a JSON content type.
    pub content_encoding: Option<String>,
    /// `$.ifid`
    pub interface_id: Option<String>,
    /// `$.exp` (ISO-8601 UTC)
    pub expiry_time_utc: Option<String>,
    /// `iothub-ack` (C2D feedback request: `none`, `positive`, `negative`, `full`)
    pub ack: Option<String>,
    /// Application properties, in order.
    pub properties: PropertyBag,
}

/// System property keys in the order they are written (the Python SDK's order for telemetry).
const SYSTEM_KEYS: [&str; 9] = [
    "$.mid",
    "$.cid",
    "$.uid",
    "$.to",
    "$.ct",
    "$.ce",
    "$.ifid",
    "$.exp",
    "iothub-ack",
];

impl Message {
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Message {
            body: body.into(),
            ..Default::default()
        }
    }

    /// A JSON body with `$.ct=application/json` and `$.ce=utf-8`, so hub routing can read it.
    pub fn json(body: impl Into<Vec<u8>>) -> Self {
        Message {
            body: body.into(),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            ..Default::default()
        }
    }

    pub fn with_message_id(mut self, id: &str) -> Self {
        self.message_id = Some(id.to_string());
        self
    }

    /// Adds an application property.
    pub fn with_property(mut self, key: &str, value: &str) -> Self {
        self.properties.push(key, value);
        self
    }

    fn system(&self) -> [&Option<String>; 9] {
        [
            &self.message_id,
            &self.correlation_id,
            &self.user_id,
            &self.to,
            &self.content_type,
            &self.content_encoding,
            &self.interface_id,
            &self.expiry_time_utc,
            &self.ack,
        ]
    }

    fn system_mut(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "$.mid" => &mut self.message_id,
            "$.cid" => &mut self.correlation_id,
            "$.uid" => &mut self.user_id,
            "$.to" => &mut self.to,
            "$.ct" => &mut self.content_type,
            "$.ce" => &mut self.content_encoding,
            "$.ifid" => &mut self.interface_id,
            "$.exp" => &mut self.expiry_time_utc,
            "iothub-ack" => &mut self.ack,
            _ => return None,
        })
    }

    /// System properties (set ones, fixed order) followed by the application properties.
    /// Refuses application keys that would read as system properties.
    pub fn to_properties(&self) -> Result<PropertyBag, HubError> {
        let mut bag = PropertyBag::new();
        for (key, value) in SYSTEM_KEYS.iter().zip(self.system()) {
            if let Some(v) = value {
                bag.push(key, v);
            }
        }
        for (key, value) in self.properties.iter() {
            if key.is_empty() {
                return Err(HubError::BadProperty {
                    key: key.to_string(),
                    reason: "a property name cannot be empty",
                });
            }
            if key.starts_with("$.") || SYSTEM_KEYS.contains(&key) {
                return Err(HubError::BadProperty {
                    key: key.to_string(),
                    reason: "names starting with '$.' and 'iothub-ack' are system properties; set the Message field instead",
                });
            }
            bag.0
                .push((key.to_string(), value.map(ToString::to_string)));
        }
        Ok(bag)
    }

    /// Splits a parsed property bag into system fields and application properties.
    /// A system property with a null value counts as unset.
    pub fn from_properties(body: Vec<u8>, bag: PropertyBag) -> Self {
        let mut m = Message::new(body);
        for (key, value) in bag.0 {
            match m.system_mut(&key) {
                Some(slot) => *slot = value,
                None => m.properties.0.push((key, value)),
            }
        }
        m
    }

    /// The telemetry PUBLISH (device → hub), refusing bodies over 256 KB.
    pub fn to_telemetry(&self, device_id: &str) -> Result<Publish, HubError> {
        check_size("telemetry message", self.body.len(), MAX_TELEMETRY_BYTES)?;
        let topic = DeviceTopic::Telemetry {
            device_id: device_id.to_string(),
            properties: self.to_properties()?,
        };
        Ok(Publish::qos1(topic.to_topic(), self.body.clone()))
    }

    /// The C2D delivery PUBLISH (hub → device; the emulator's side), refusing bodies over 64 KB.
    pub fn to_c2d(&self, device_id: &str) -> Result<Publish, HubError> {
        check_size("cloud-to-device message", self.body.len(), MAX_C2D_BYTES)?;
        let topic = ServiceTopic::C2d {
            device_id: device_id.to_string(),
            properties: self.to_properties()?,
        };
        Ok(Publish::qos1(topic.to_topic(), self.body.clone()))
    }
}

pub(crate) fn check_size(what: &'static str, size: usize, max: usize) -> Result<(), HubError> {
    if size > max {
        return Err(HubError::TooLarge { what, size, max });
    }
    Ok(())
}
