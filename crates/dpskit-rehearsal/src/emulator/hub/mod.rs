//! The IoT Hub side as a device sees it: which subscriptions it may make, and what each of its
//! publishes (telemetry, twin GET and PATCH, method answers, its Will) does. State lives in
//! [`registry`]; twin documents in [`twin`].

pub(crate) mod registry;
pub(crate) mod twin;

pub use registry::MethodOutcome;

use super::{Reply, Shared};
use dpskit_core::hub::{Message, MAX_TELEMETRY_BYTES};
use dpskit_core::topic::{DeviceTopic, PropertyBag, ServiceTopic};
use registry::DeviceAddr;
use serde_json::{json, Map, Value};

/// The topic filters a device may hold, as IoT Hub documents them.
const SERVICE_FILTERS: [&str; 3] = [
    "$iothub/methods/POST/",
    "$iothub/twin/res/",
    "$iothub/twin/PATCH/properties/desired/",
];

/// A filter the hub accepted: what it was resolved to, and a note when that differs from
/// what the device sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub filter: String,
    pub note: Option<String>,
}

/// Which subscriptions a hub device may make; `Err` says why not.
///
/// `devices/+/messages/devicebound/#` is accepted and resolved to the device's own ID, as IoT
/// Hub does: it is `AZ_IOT_HUB_CLIENT_C2D_SUBSCRIBE_TOPIC` in Microsoft's embedded C SDK and
/// what the FreeRTOS middleware and the Arduino samples send. A filter naming another device
/// never is.
pub(crate) fn allowed_filter(device_id: &str, filter: &str) -> Result<Accepted, String> {
    let accepted = |f: &str, note: Option<String>| {
        Ok(Accepted {
            filter: f.to_string(),
            note,
        })
    };
    if SERVICE_FILTERS.iter().any(|p| filter.starts_with(p)) {
        return accepted(filter, None);
    }
    if let Some(rest) = filter.strip_prefix("devices/") {
        let (named, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let c2d = tail == "messages/devicebound" || tail.starts_with("messages/devicebound/");
        if named == device_id && c2d {
            return accepted(filter, None);
        }
        if named == "+" && c2d {
            let own = format!("devices/{device_id}/{tail}");
            let note = format!("subscription {filter:?} resolved to {own:?}: IoT Hub accepts the + in place of the device ID and delivers only this device's messages");
            return accepted(&own, Some(note));
        }
        if named != device_id && named != "+" && named != "#" {
            return Err(format!(
                "device {device_id:?} may not subscribe to {filter:?}: it names device {named:?}; a device can only receive its own messages"
            ));
        }
    }
    if filter.contains(['#', '+']) {
        return Err(format!("device {device_id:?} may not subscribe to wildcard {filter:?}; IoT Hub allows only the device's own topics (devices/{device_id}/messages/devicebound/#, or devices/+/messages/devicebound/#)"));
    }
    Err(format!(
        "{filter:?} is not an IoT Hub device topic; subscribe to devices/{device_id}/messages/devicebound/#, $iothub/methods/POST/#, $iothub/twin/res/# or $iothub/twin/PATCH/properties/desired/#"
    ))
}

/// What a hub publish leads to.
pub(crate) struct Handled {
    /// Answers to publish to the device (if it is subscribed to them).
    pub replies: Vec<Reply>,
}

/// Answers one device publish; `Err` closes the connection with that reason.
pub(crate) fn on_publish(
    shared: &Shared,
    addr: &DeviceAddr,
    who: &str,
    topic: &str,
    payload: &[u8],
    retain: bool,
) -> Result<Handled, String> {
    let device_id = addr.id.as_str();
    let topic = DeviceTopic::parse(topic).map_err(|e| {
        format!("publish to a topic IoT Hub does not accept: {e}; telemetry goes to devices/{device_id}/messages/events/")
    })?;
    let mut replies = Vec::new();
    match topic {
        DeviceTopic::Telemetry {
            device_id: target,
            properties,
        } => {
            if target != device_id {
                return Err(format!(
                    "telemetry published for device {target:?} on {device_id:?}'s connection; a device can only send as itself"
                ));
            }
            if payload.len() > MAX_TELEMETRY_BYTES {
                return Err(format!(
                    "telemetry message of {} bytes exceeds IoT Hub's 256 KB limit ({MAX_TELEMETRY_BYTES} bytes); split it or send less",
                    payload.len()
                ));
            }
            telemetry(shared, addr, properties, payload, retain, false);
        }
        DeviceTopic::MethodResponse { status, rid } => {
            if !registry::method_response(shared, addr, &rid, status, payload) {
                shared.journal.note("warning", who, &format!("method answer for $rid={rid} matches no pending call (it timed out, or the $rid was changed)"), json!({}));
            }
        }
        DeviceTopic::TwinGet { rid } => {
            let (status, body) = match registry::twin_document(shared, addr) {
                Some(doc) => (200, doc),
                None => (404, Vec::new()),
            };
            replies.push(Reply {
                topic: ServiceTopic::TwinResponse {
                    status,
                    rid,
                    version: None,
                }
                .to_topic(),
                payload: body,
            });
        }
        DeviceTopic::TwinPatchReported { rid } => {
            let (status, version, body) = match registry::patch_reported(shared, addr, payload) {
                Ok(v) => (204, Some(v), Vec::new()),
                Err(why) => {
                    shared.journal.note(
                        "rejected",
                        who,
                        &format!("reported-properties patch refused (400): {why}"),
                        json!({}),
                    );
                    (
                        400,
                        None,
                        json!({ "errorCode": 400_004, "message": why })
                            .to_string()
                            .into_bytes(),
                    )
                }
            };
            replies.push(Reply {
                topic: ServiceTopic::TwinResponse {
                    status,
                    rid,
                    version,
                }
                .to_topic(),
                payload: body,
            });
        }
        DeviceTopic::DpsRegister { .. } | DeviceTopic::DpsPoll { .. } => {
            return Err("a DPS request on an IoT Hub connection; connect to DPS with the DPS user name to register".into());
        }
    }
    Ok(Handled { replies })
}

/// A CONNECT's Will: forwarded as telemetry when the connection ends without DISCONNECT.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    properties: PropertyBag,
    payload: Vec<u8>,
    retain: bool,
}

/// Accepts a Will on the device's own telemetry topic (the only kind IoT Hub forwards);
/// `Err` says why another is ignored.
pub(crate) fn will(
    device_id: &str,
    topic: &str,
    payload: &[u8],
    retain: bool,
) -> Result<Will, String> {
    match DeviceTopic::parse(topic) {
        Ok(DeviceTopic::Telemetry {
            device_id: target,
            properties,
        }) if target == device_id && payload.len() <= MAX_TELEMETRY_BYTES => Ok(Will {
            properties,
            payload: payload.to_vec(),
            retain,
        }),
        _ => Err(format!("Will topic {topic:?} ignored: IoT Hub forwards a Will only on devices/{device_id}/messages/events/ (up to 256 KB)")),
    }
}

/// The device went away without DISCONNECT: its Will goes out as telemetry, marked
/// `iothub-MessageType: Will` as IoT Hub marks it.
pub(crate) fn send_will(shared: &Shared, addr: &DeviceAddr, will: Will) {
    telemetry(
        shared,
        addr,
        will.properties,
        &will.payload,
        will.retain,
        true,
    );
}

fn telemetry(
    shared: &Shared,
    addr: &DeviceAddr,
    properties: PropertyBag,
    body: &[u8],
    retain: bool,
    will: bool,
) {
    let mut record = telemetry_record(&addr.id, properties, body, retain);
    if will {
        if let Some(Value::Object(p)) = record.get_mut("properties") {
            p.insert("iothub-MessageType".into(), "Will".into());
        }
    }
    shared.journal.telemetry(record);
    registry::count_telemetry(shared, addr);
}

/// A telemetry JSON line: device, system and application properties, body as UTF-8 text
/// (`body`) or, when it is not UTF-8, base64 (`bodyBase64`).
fn telemetry_record(
    device_id: &str,
    properties: PropertyBag,
    body: &[u8],
    retain: bool,
) -> Map<String, Value> {
    use base64::Engine;
    let m = Message::from_properties(body.to_vec(), properties);
    let mut r = Map::new();
    r.insert("device".into(), device_id.into());
    let system = [
        ("messageId", &m.message_id),
        ("correlationId", &m.correlation_id),
        ("userId", &m.user_id),
        ("contentType", &m.content_type),
        ("contentEncoding", &m.content_encoding),
        ("interfaceId", &m.interface_id),
        ("expiryTimeUtc", &m.expiry_time_utc),
    ];
    for (k, v) in system {
        if let Some(v) = v {
            r.insert(k.into(), v.clone().into());
        }
    }
    let mut props: Map<String, Value> = m
        .properties
        .iter()
        .map(|(k, v)| (k.to_string(), v.map_or(Value::Null, |v| v.into())))
        .collect();
    if retain {
        // IoT Hub keeps no retained messages; it forwards them marked like this.
        props.insert("mqtt-retain".into(), "true".into());
    }
    r.insert("properties".into(), Value::Object(props));
    match std::str::from_utf8(body) {
        Ok(text) => r.insert("body".into(), text.into()),
        Err(_) => r.insert(
            "bodyBase64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(body)
                .into(),
        ),
    };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_rules() {
        let ok = |f: &str| allowed_filter("d1", f).map(|a| a.filter);
        assert_eq!(
            ok("devices/d1/messages/devicebound/#").unwrap(),
            "devices/d1/messages/devicebound/#"
        );
        assert!(ok("$iothub/methods/POST/#").is_ok());
        assert!(ok("$iothub/twin/res/#").is_ok());
        // The embedded C SDK's C2D filter: the + becomes the device's own ID.
        let a = allowed_filter("d1", "devices/+/messages/devicebound/#").unwrap();
        assert_eq!(a.filter, "devices/d1/messages/devicebound/#");
        assert!(a.note.unwrap().contains("resolved"));
        let e = ok("devices/d2/messages/devicebound/#").unwrap_err();
        assert!(e.contains("names device \"d2\""), "{e}");
        assert!(ok("#").is_err());
        assert!(ok("devices/#").is_err());
        assert!(ok("devices/+/messages/events/#").is_err());
        assert!(ok("devices/+/+/devicebound/#").is_err());
    }
}
