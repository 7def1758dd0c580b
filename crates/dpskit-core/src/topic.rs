//! The one copy of the DPS and IoT Hub MQTT topic formats, for both directions.
//!
//! The device builds [`DeviceTopic`]s and parses [`ServiceTopic`]s; the emulator does the
//! opposite with the same two types, so a change to the wire format cannot drift between
//! them. Parsers accept what real clients send (the Python SDK's `%24` for `$`, UUID request
//! IDs, a leading `&` or `?` in property bags); builders emit what the service sends.
//!
//! Property bags and query strings are `k=v&k2=v2`, percent-encoded (RFC 2396 style: `+` is a
//! literal plus, not a space). A bare `k` (no `=`) is a property with a *null* value, `k=` one
//! with an *empty* value; [`PropertyBag`] keeps the difference.

use crate::url;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

/// The only DPS subscription filter (narrower filters are not supported by DPS).
pub const DPS_RESPONSES_FILTER: &str = "$dps/registrations/res/#";
/// Direct-method requests.
pub const METHODS_FILTER: &str = "$iothub/methods/POST/#";
/// Answers to twin GET and reported-properties PATCH.
pub const TWIN_RESPONSES_FILTER: &str = "$iothub/twin/res/#";
/// Desired-property updates.
pub const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";

/// The cloud-to-device subscription filter for `device_id`.
pub fn c2d_filter(device_id: &str) -> String {
    format!("devices/{device_id}/messages/devicebound/#")
}

/// True when `topic` matches the MQTT subscription `filter` (`+` one level, `#` the rest,
/// including the parent level itself).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Why a topic could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// Not a DPS or IoT Hub topic this side handles.
    Unknown(String),
    /// A required query parameter (`$rid`, `operationId`) is missing.
    Missing { topic: String, key: &'static str },
    /// A query parameter appears twice.
    Duplicate { topic: String, key: String },
    /// A `%` escape is broken or does not decode to UTF-8.
    BadEscape(String),
    /// A status or version is not a number.
    BadNumber { topic: String, what: &'static str },
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Unknown(t) => write!(f, "topic {t:?} is not a DPS or IoT Hub topic"),
            TopicError::Missing { topic, key } => write!(f, "topic {topic:?} has no '{key}='"),
            TopicError::Duplicate { topic, key } => {
                write!(f, "topic {topic:?} has '{key}' twice")
            }
            TopicError::BadEscape(t) => {
                write!(
                    f,
                    "topic {t:?} has a malformed %-escape or is not UTF-8 once decoded"
                )
            }
            TopicError::BadNumber { topic, what } => {
                write!(f, "topic {topic:?}: the {what} is not a number")
            }
        }
    }
}

/// Percent-decodes one key or value. `+` stays `+` (RFC 2396; the SDKs encode a space as
/// `%20`). `None` on a broken escape.
pub fn decode_component(s: &str) -> Option<String> {
    if s.contains('+') {
        url::decode(&s.replace('+', "%2B"))
    } else {
        url::decode(s)
    }
}

/// Percent-encodes one key or value as the Python SDK does (`$` → `%24`, `/` → `%2F`,
/// space → `%20`; letters, digits and `-._~` kept).
pub fn encode_component(s: &str) -> String {
    url::encode(s)
}

/// An ordered list of properties; `None` is a null value (a bare key on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyBag(pub Vec<(String, Option<String>)>);

impl PropertyBag {
    pub fn new() -> Self {
        PropertyBag(Vec::new())
    }

    /// Appends a property with a value (possibly empty).
    pub fn push(&mut self, key: &str, value: &str) -> &mut Self {
        self.0.push((key.to_string(), Some(value.to_string())));
        self
    }

    /// Appends a property with a null value (encoded as a bare key).
    pub fn push_null(&mut self, key: &str) -> &mut Self {
        self.0.push((key.to_string(), None));
        self
    }

    /// `None`: no such key; `Some(None)`: present with a null value; `Some(Some(v))`: a value.
    pub fn get(&self, key: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }

    /// The value of `key` when it is present and not null.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).flatten()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// `k=v&k2&k3=` with keys and values percent-encoded.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(&encode_component(k));
            if let Some(v) = v {
                out.push('=');
                out.push_str(&encode_component(v));
            }
        }
        out
    }

    /// Parses a bag, tolerating a leading `?` and empty segments (the Python SDK writes
    /// `events/&k=v` when a message has custom but no system properties). Keys are decoded too,
    /// so `%24.ct` and `$.ct` are the same key.
    pub fn parse(bag: &str) -> Result<Self, TopicError> {
        let bag = bag.strip_prefix('?').unwrap_or(bag);
        let mut out = Vec::new();
        for part in bag.split('&').filter(|p| !p.is_empty()) {
            let bad = || TopicError::BadEscape(bag.to_string());
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (k, Some(decode_component(v).ok_or_else(bad)?)),
                None => (part, None),
            };
            out.push((decode_component(k).ok_or_else(bad)?, v));
        }
        Ok(PropertyBag(out))
    }
}

/// A request/response query (`?$rid=…&retry-after=…`): like a bag, but a key may appear once.
fn parse_query(topic: &str, query: &str) -> Result<PropertyBag, TopicError> {
    let bag = PropertyBag::parse(query).map_err(|_| TopicError::BadEscape(topic.to_string()))?;
    for (i, (k, _)) in bag.0.iter().enumerate() {
        if bag.0[..i].iter().any(|(seen, _)| seen == k) {
            return Err(TopicError::Duplicate {
                topic: topic.to_string(),
                key: k.clone(),
            });
        }
    }
    Ok(bag)
}

fn require(topic: &str, q: &PropertyBag, key: &'static str) -> Result<String, TopicError> {
    match q.value(key) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(TopicError::Missing {
            topic: topic.to_string(),
            key,
        }),
    }
}

fn number<T: core::str::FromStr>(
    topic: &str,
    s: &str,
    what: &'static str,
) -> Result<T, TopicError> {
    s.parse().map_err(|_| TopicError::BadNumber {
        topic: topic.to_string(),
        what,
    })
}

fn optional_number(
    topic: &str,
    q: &PropertyBag,
    key: &str,
    what: &'static str,
) -> Result<Option<u64>, TopicError> {
    match q.value(key) {
        Some(v) if !v.is_empty() => number(topic, v, what).map(Some),
        _ => Ok(None),
    }
}

/// Splits `{path}/?{query}` (also `{path}?{query}` and a path without query).
fn split_query(rest: &str) -> (&str, &str) {
    match rest.split_once('?') {
        Some((path, query)) => (path.strip_suffix('/').unwrap_or(path), query),
        None => (rest.strip_suffix('/').unwrap_or(rest), ""),
    }
}

/// A topic the device publishes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceTopic {
    /// `$dps/registrations/PUT/iotdps-register/?$rid={rid}`
    DpsRegister { rid: String },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}`
    DpsPoll { rid: String, operation_id: String },
    /// `devices/{id}/messages/events/{bag}`
    Telemetry {
        device_id: String,
        properties: PropertyBag,
    },
    /// `$iothub/methods/res/{status}/?$rid={rid}`
    MethodResponse { status: u16, rid: String },
    /// `$iothub/twin/GET/?$rid={rid}`
    TwinGet { rid: String },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`
    TwinPatchReported { rid: String },
}

impl DeviceTopic {
    /// The topic string, as the device publishes it.
    pub fn to_topic(&self) -> String {
        let e = encode_component;
        match self {
            DeviceTopic::DpsRegister { rid } => {
                format!("$dps/registrations/PUT/iotdps-register/?$rid={}", e(rid))
            }
            DeviceTopic::DpsPoll { rid, operation_id } => format!(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={}&operationId={}",
                e(rid),
                e(operation_id)
            ),
            DeviceTopic::Telemetry {
                device_id,
                properties,
            } => {
                format!(
                    "devices/{device_id}/messages/events/{}",
                    properties.encode()
                )
            }
            DeviceTopic::MethodResponse { status, rid } => {
                format!("$iothub/methods/res/{status}/?$rid={}", e(rid))
            }
            DeviceTopic::TwinGet { rid } => format!("$iothub/twin/GET/?$rid={}", e(rid)),
            DeviceTopic::TwinPatchReported { rid } => {
                format!("$iothub/twin/PATCH/properties/reported/?$rid={}", e(rid))
            }
        }
    }

    /// Parses a topic a device published to (the emulator's side).
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let unknown = || TopicError::Unknown(topic.to_string());
        if let Some(rest) = topic.strip_prefix("$dps/registrations/") {
            let (path, query) = split_query(rest);
            let q = parse_query(topic, query)?;
            return match path {
                "PUT/iotdps-register" => Ok(DeviceTopic::DpsRegister {
                    rid: require(topic, &q, "$rid")?,
                }),
                "GET/iotdps-get-operationstatus" => Ok(DeviceTopic::DpsPoll {
                    rid: require(topic, &q, "$rid")?,
                    operation_id: require(topic, &q, "operationId")?,
                }),
                _ => Err(unknown()),
            };
        }
        if let Some(rest) = topic.strip_prefix("$iothub/") {
            let (path, query) = split_query(rest);
            let q = parse_query(topic, query)?;
            if let Some(status) = path.strip_prefix("methods/res/") {
                return Ok(DeviceTopic::MethodResponse {
                    status: number(topic, status, "method status")?,
                    rid: require(topic, &q, "$rid")?,
                });
            }
            return match path {
                "twin/GET" => Ok(DeviceTopic::TwinGet {
                    rid: require(topic, &q, "$rid")?,
                }),
                "twin/PATCH/properties/reported" => Ok(DeviceTopic::TwinPatchReported {
                    rid: require(topic, &q, "$rid")?,
                }),
                _ => Err(unknown()),
            };
        }
        if let Some((device_id, bag)) = split_device_topic(topic, "events") {
            return Ok(DeviceTopic::Telemetry {
                device_id: device_id.to_string(),
                properties: PropertyBag::parse(bag)?,
            });
        }
        Err(unknown())
    }
}

/// `devices/{id}/messages/{kind}[/{bag}]` → `(id, bag)`.
fn split_device_topic<'t>(topic: &'t str, kind: &str) -> Option<(&'t str, &'t str)> {
    let rest = topic.strip_prefix("devices/")?;
    let (device_id, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("messages/")?.strip_prefix(kind)?;
    let bag = if rest.is_empty() {
        rest
    } else {
        rest.strip_prefix('/')?
    };
    (!device_id.is_empty()).then_some((device_id, bag))
}

/// A topic the service publishes to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceTopic {
    /// `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]`
    DpsResponse {
        status: u16,
        rid: String,
        retry_after: Option<u64>,
    },
    /// `devices/{id}/messages/devicebound/{bag}`
    C2d {
        device_id: String,
        properties: PropertyBag,
    },
    /// `$iothub/methods/POST/{name}/?$rid={rid}`
    MethodRequest { name: String, rid: String },
    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`
    TwinResponse {
        status: u16,
        rid: String,
        version: Option<u64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}`
    DesiredPatch { version: Option<u64> },
}

impl ServiceTopic {
    /// The topic string, as the service publishes it.
    pub fn to_topic(&self) -> String {
        let e = encode_component;
        match self {
            ServiceTopic::DpsResponse {
                status,
                rid,
                retry_after,
            } => {
                let mut t = format!("$dps/registrations/res/{status}/?$rid={}", e(rid));
                if let Some(s) = retry_after {
                    t.push_str(&format!("&retry-after={s}"));
                }
                t
            }
            ServiceTopic::C2d {
                device_id,
                properties,
            } => {
                format!(
                    "devices/{device_id}/messages/devicebound/{}",
                    properties.encode()
                )
            }
            ServiceTopic::MethodRequest { name, rid } => {
                format!("$iothub/methods/POST/{name}/?$rid={}", e(rid))
            }
            ServiceTopic::TwinResponse {
                status,
                rid,
                version,
            } => {
                let mut t = format!("$iothub/twin/res/{status}/?$rid={}", e(rid));
                if let Some(v) = version {
                    t.push_str(&format!("&$version={v}"));
                }
                t
            }
            ServiceTopic::DesiredPatch { version } => match version {
                Some(v) => format!("$iothub/twin/PATCH/properties/desired/?$version={v}"),
                None => "$iothub/twin/PATCH/properties/desired/".to_string(),
            },
        }
    }

    /// Parses a topic the service published (the device's side).
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let unknown = || TopicError::Unknown(topic.to_string());
        if let Some(rest) = topic.strip_prefix("$dps/registrations/res/") {
            let (status, query) = split_query(rest);
            let q = parse_query(topic, query)?;
            return Ok(ServiceTopic::DpsResponse {
                status: number(topic, status, "DPS status")?,
                rid: require(topic, &q, "$rid")?,
                retry_after: optional_number(topic, &q, "retry-after", "retry-after")?,
            });
        }
        if let Some(rest) = topic.strip_prefix("$iothub/") {
            let (path, query) = split_query(rest);
            let q = parse_query(topic, query)?;
            if let Some(name) = path.strip_prefix("methods/POST/") {
                if name.is_empty() || name.contains('/') {
                    return Err(unknown());
                }
                return Ok(ServiceTopic::MethodRequest {
                    name: name.to_string(),
                    rid: require(topic, &q, "$rid")?,
                });
            }
            if let Some(status) = path.strip_prefix("twin/res/") {
                return Ok(ServiceTopic::TwinResponse {
                    status: number(topic, status, "twin status")?,
                    rid: require(topic, &q, "$rid")?,
                    version: optional_number(topic, &q, "$version", "$version")?,
                });
            }
            if path == "twin/PATCH/properties/desired" {
                return Ok(ServiceTopic::DesiredPatch {
                    version: optional_number(topic, &q, "$version", "$version")?,
                });
            }
            return Err(unknown());
        }
        if let Some((device_id, bag)) = split_device_topic(topic, "devicebound") {
            return Ok(ServiceTopic::C2d {
                device_id: device_id.to_string(),
                properties: PropertyBag::parse(bag)?,
            });
        }
        Err(unknown())
    }
}

/// True for a request body that carries nothing: empty, or whitespace only (the Python SDK
/// publishes DPS polls and twin GETs with a single space).
pub fn is_empty_body(payload: &[u8]) -> bool {
    payload.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(filter_matches(
            "$dps/registrations/res/#",
            "$dps/registrations/res/202/?$rid=1"
        ));
        assert!(filter_matches(
            "devices/d/messages/devicebound/#",
            "devices/d/messages/devicebound"
        ));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(!filter_matches(
            "$iothub/twin/res/#",
            "$iothub/twin/PATCH/properties/desired/?$version=1"
        ));
    }

    #[test]
    fn bags_keep_null_and_empty_apart() {
        let b = PropertyBag::parse("?prop1&prop2=&prop3=a%20string").unwrap();
        assert_eq!(b.get("prop1"), Some(None));
        assert_eq!(b.get("prop2"), Some(Some("")));
        assert_eq!(b.get("prop3"), Some(Some("a string")));
        assert_eq!(b.get("prop4"), None);
        assert_eq!(b.encode(), "prop1&prop2=&prop3=a%20string");
        assert_eq!(PropertyBag::parse("a=1+2").unwrap().value("a"), Some("1+2"));
        assert!(PropertyBag::parse("a=%zz").is_err());
    }

    #[test]
    fn round_trips() {
        let device = [
            DeviceTopic::DpsRegister { rid: "1".into() },
            DeviceTopic::DpsPoll {
                rid: "2".into(),
                operation_id: "4.d0a6.e717-x".into(),
            },
            DeviceTopic::MethodResponse {
                status: 200,
                rid: "7".into(),
            },
            DeviceTopic::TwinGet { rid: "a b".into() },
            DeviceTopic::TwinPatchReported { rid: "9".into() },
        ];
        for t in device {
            assert_eq!(DeviceTopic::parse(&t.to_topic()).unwrap(), t);
        }
        let service = [
            ServiceTopic::DpsResponse {
                status: 202,
                rid: "1".into(),
                retry_after: Some(3),
            },
            ServiceTopic::DpsResponse {
                status: 200,
                rid: "1".into(),
                retry_after: None,
            },
            ServiceTopic::MethodRequest {
                name: "reboot".into(),
                rid: "5".into(),
            },
            ServiceTopic::TwinResponse {
                status: 204,
                rid: "0".into(),
                version: Some(2),
            },
            ServiceTopic::DesiredPatch { version: Some(7) },
            ServiceTopic::DesiredPatch { version: None },
        ];
        for t in service {
            assert_eq!(ServiceTopic::parse(&t.to_topic()).unwrap(), t);
        }
    }

    #[test]
    fn query_errors_are_named() {
        let e = ServiceTopic::parse("$dps/registrations/res/202/?retry-after=3").unwrap_err();
        assert!(matches!(e, TopicError::Missing { key: "$rid", .. }));
        let e = ServiceTopic::parse("$dps/registrations/res/202/?$rid=1&$rid=2").unwrap_err();
        assert!(matches!(e, TopicError::Duplicate { .. }));
        let e = ServiceTopic::parse("$dps/registrations/res/abc/?$rid=1").unwrap_err();
        assert!(e.to_string().contains("not a number"));
        assert!(matches!(
            DeviceTopic::parse("foo/bar"),
            Err(TopicError::Unknown(_))
        ));
    }
}
