//! Device twins: desired and reported sections, each with its own `$version`, merged as IoT
//! Hub merges patches and held to IoT Hub's rules (keys, depth, string length, 32 KB per
//! section counted IoT Hub's way), so a device that works here fits the real twin.
//!
//! Written as IoT Hub writes them: `$version` is the last member of a section and of a
//! desired-properties patch (`{"device_count":10,"$version":2}`). Embedded C SDK samples walk
//! the JSON and stop at `$version`, so a `$version` first hides every property.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

/// IoT Hub's limit on `properties/desired` and on `properties/reported`, each.
pub(crate) const MAX_SECTION_BYTES: usize = 32 * 1024;
/// Deepest nesting of JSON objects in a section.
const MAX_DEPTH: usize = 10;
/// Longest key, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// Longest string value, in bytes.
const MAX_STRING_BYTES: usize = 4 * 1024;
/// Integers IoT Hub stores exactly (±2^52).
const MAX_INTEGER: i64 = 4_503_599_627_370_495;

/// One section's properties followed by its `$version`, the order IoT Hub uses.
pub(crate) struct Versioned<'a> {
    pub properties: &'a Map<String, Value>,
    pub version: u64,
}

impl Serialize for Versioned<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.properties.len() + 1))?;
        for (k, v) in self.properties {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry("$version", &self.version)?;
        m.end()
    }
}

/// The twin GET body: `{"desired":{…,"$version":N},"reported":{…,"$version":M}}`.
#[derive(serde::Serialize)]
pub(crate) struct Document<'a> {
    pub desired: Versioned<'a>,
    pub reported: Versioned<'a>,
}

/// A device twin.
#[derive(Debug, Clone)]
pub(crate) struct Twin {
    desired: Map<String, Value>,
    desired_version: u64,
    reported: Map<String, Value>,
    reported_version: u64,
}

impl Default for Twin {
    fn default() -> Self {
        Twin {
            desired: Map::new(),
            desired_version: 1,
            reported: Map::new(),
            reported_version: 1,
        }
    }
}

impl Twin {
    pub fn document(&self) -> Document<'_> {
        Document {
            desired: Versioned {
                properties: &self.desired,
                version: self.desired_version,
            },
            reported: Versioned {
                properties: &self.reported,
                version: self.reported_version,
            },
        }
    }

    /// The twin GET body as IoT Hub writes it.
    pub fn document_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.document()).unwrap_or_default()
    }

    pub fn desired_version(&self) -> u64 {
        self.desired_version
    }

    pub fn reported_version(&self) -> u64 {
        self.reported_version
    }

    /// Merges a reported patch (`null` deletes); the new reported `$version`.
    pub fn patch_reported(&mut self, patch: &[u8]) -> Result<u64, String> {
        let patch = parse_patch(patch, "reported properties")?;
        self.reported = merged(&self.reported, &patch, "reported properties")?;
        self.reported_version += 1;
        Ok(self.reported_version)
    }

    /// Merges a desired patch; the new `$version` and the patch as the device receives it
    /// (`{…,"$version":N}`).
    pub fn patch_desired(&mut self, patch: &Value) -> Result<(u64, Vec<u8>), String> {
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        let patch = parse_patch(&bytes, "desired properties")?;
        self.desired = merged(&self.desired, &patch, "desired properties")?;
        self.desired_version += 1;
        let pushed = serde_json::to_vec(&Versioned {
            properties: &patch,
            version: self.desired_version,
        })
        .unwrap_or_default();
        Ok((self.desired_version, pushed))
    }
}

fn parse_patch(body: &[u8], what: &str) -> Result<Map<String, Value>, String> {
    if body.len() > MAX_SECTION_BYTES * 2 {
        return Err(format!(
            "{what} patch of {} bytes; a twin section holds at most {} KB",
            body.len(),
            MAX_SECTION_BYTES / 1024
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        format!("{what} patch is not JSON ({e}); send a JSON object such as {{\"fw\":\"1.2\"}}")
    })?;
    let Value::Object(map) = v else {
        return Err(format!("{what} patch must be a JSON object, got {v}"));
    };
    check(&map, what, 1)?;
    Ok(map)
}

/// IoT Hub's rules for keys, depth, strings and integers.
fn check(map: &Map<String, Value>, what: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{what} patch nests objects deeper than {MAX_DEPTH} levels, IoT Hub's limit"
        ));
    }
    for (k, v) in map {
        if k.starts_with('$') {
            return Err(format!(
                "{what} patch: property name {k:?} starts with '$', which IoT Hub reserves"
            ));
        }
        if let Some(c) = k
            .chars()
            .find(|c| c.is_control() || matches!(c, '.' | '$' | ' '))
        {
            return Err(format!(
                "{what} patch: property name {k:?} contains {c:?}; IoT Hub keys may not contain '.', '$', spaces or control characters"
            ));
        }
        if k.len() > MAX_KEY_BYTES {
            return Err(format!(
                "{what} patch: a property name of {} bytes; IoT Hub allows 1 KB",
                k.len()
            ));
        }
        check_value(k, v, what, depth)?;
    }
    Ok(())
}

fn check_value(k: &str, v: &Value, what: &str, depth: usize) -> Result<(), String> {
    match v {
        Value::Object(inner) => check(inner, what, depth + 1),
        Value::Array(items) => items
            .iter()
            .try_for_each(|i| check_value(k, i, what, depth)),
        Value::String(s) if s.len() > MAX_STRING_BYTES => Err(format!(
            "{what} patch: {k:?} is a string of {} bytes; IoT Hub allows 4 KB per string",
            s.len()
        )),
        Value::Number(n) if integer_too_big(n) => Err(format!(
            "{what} patch: {k:?} = {n} is outside the integers IoT Hub stores (±4503599627370495)"
        )),
        _ => Ok(()),
    }
}

fn integer_too_big(n: &serde_json::Number) -> bool {
    match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => i.unsigned_abs() > MAX_INTEGER.unsigned_abs(),
        (None, Some(_)) => true,
        _ => false,
    }
}

/// The section after the patch (JSON merge patch: objects merge recursively, `null` deletes,
/// anything else replaces), refused when it would exceed IoT Hub's size or depth.
fn merged(
    section: &Map<String, Value>,
    patch: &Map<String, Value>,
    what: &str,
) -> Result<Map<String, Value>, String> {
    let mut out = section.clone();
    merge(&mut out, patch);
    check(&out, what, 1)?;
    let size = section_size(&out);
    if size > MAX_SECTION_BYTES {
        return Err(format!(
            "{what} would hold {size} bytes after this patch (counted as IoT Hub counts: keys and values); IoT Hub allows {} KB per section — delete properties with null or send less",
            MAX_SECTION_BYTES / 1024
        ));
    }
    Ok(out)
}

fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                if let Some(Value::Object(t)) = target.get_mut(k) {
                    merge(t, p);
                } else {
                    let mut fresh = Map::new();
                    merge(&mut fresh, p);
                    target.insert(k.clone(), Value::Object(fresh));
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// IoT Hub's twin size: keys and string values by their characters (control characters not
/// counted), numbers 8 bytes, booleans 4, objects and arrays the sum of what they hold.
fn section_size(map: &Map<String, Value>) -> usize {
    fn text(s: &str) -> usize {
        s.chars()
            .filter(|c| !c.is_control())
            .map(char::len_utf8)
            .sum()
    }
    fn value(v: &Value) -> usize {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 4,
            Value::Number(_) => 8,
            Value::String(s) => text(s),
            Value::Array(a) => a.iter().map(value).sum(),
            Value::Object(o) => section_size(o),
        }
    }
    map.iter().map(|(k, v)| text(k) + value(v)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_versions_and_version_last() {
        let mut t = Twin::default();
        assert_eq!(
            t.patch_reported(br#"{"fw":"1.0","net":{"rssi":-60,"ip":"x"}}"#)
                .unwrap(),
            2
        );
        assert_eq!(
            t.patch_reported(br#"{"net":{"ip":null},"fw":null}"#)
                .unwrap(),
            3
        );
        let (v, pushed) = t.patch_desired(&json!({"device_count":10})).unwrap();
        assert_eq!(v, 2);
        assert_eq!(pushed, br#"{"device_count":10,"$version":2}"#);
        assert_eq!(
            String::from_utf8(t.document_json()).unwrap(),
            r#"{"desired":{"device_count":10,"$version":2},"reported":{"net":{"rssi":-60},"$version":3}}"#
        );
    }

    #[test]
    fn iot_hub_rules() {
        let mut t = Twin::default();
        let err = |t: &mut Twin, body: &str| t.patch_reported(body.as_bytes()).unwrap_err();
        assert!(err(&mut t, "[1]").contains("JSON object"));
        assert!(err(&mut t, r#"{"$version":4}"#).contains("reserves"));
        assert!(err(&mut t, r#"{"a.b":1}"#).contains("'.'"));
        assert!(err(&mut t, r#"{"a b":1}"#).contains("spaces"));
        let deep = (0..11).fold("1".to_string(), |inner, _| format!(r#"{{"k":{inner}}}"#));
        assert!(err(&mut t, &deep).contains("deeper than 10"));
        let long = format!(r#"{{"s":"{}"}}"#, "x".repeat(4097));
        assert!(err(&mut t, &long).contains("4 KB per string"));
        assert!(err(&mut t, r#"{"n":9007199254740993}"#).contains("outside the integers"));
        // 32 KB per section, across patches: ten keys of 4000 characters do not fit.
        for i in 0..8 {
            t.patch_reported(format!(r#"{{"k{i}":"{}"}}"#, "x".repeat(4000)).as_bytes())
                .unwrap();
        }
        let e = err(&mut t, &format!(r#"{{"k9":"{}"}}"#, "x".repeat(4000)));
        assert!(e.contains("32 KB per section"), "{e}");
        // Deleting makes room again, and the refused patch changed nothing.
        assert_eq!(t.reported_version(), 9);
        t.patch_reported(br#"{"k0":null}"#).unwrap();
        t.patch_reported(format!(r#"{{"k9":"{}"}}"#, "x".repeat(4000)).as_bytes())
            .unwrap();
    }
}
