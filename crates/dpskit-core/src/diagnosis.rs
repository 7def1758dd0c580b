//! Explaining a device key that does not match the derivation.
//!
//! Each known mistake is reproduced (the same HMAC over the bytes the mistaken tool hashed) and
//! compared with what the user has, so the explanation is a fact, not a guess.

use crate::key::{clean_key_text, DeviceKey, GroupKey};
use crate::sas::SasToken;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The outcome of checking one key against one registration ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key is the primary-key derivation of the exact ID.
    Match,
    /// The key is wrong, and this is the mistake that produced it.
    Explained(Mistake),
    /// The key is wrong, and no known mistake reproduces it.
    Unexplained,
}

/// A reproduced mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mistake {
    TrailingNewline,
    TrailingCrLf,
    Utf16Le,
    DifferentCase { hashed: String },
    SurroundingSpace,
    SecondaryKey,
    GroupKeyItself { secondary: bool },
    SasToken,
    ConnectionString { inner_key_matches: bool },
    NotAKey(String),
}

impl fmt::Display for Mistake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mistake::TrailingNewline => f.write_str(
                "derived from the ID plus a trailing newline (`echo` without -n); use `echo -n` or `printf %s`",
            ),
            Mistake::TrailingCrLf => f.write_str(
                "derived from the ID plus a Windows line ending (CR LF); strip the line ending before hashing",
            ),
            Mistake::Utf16Le => f.write_str(
                "derived from the ID encoded as UTF-16 ([Text.Encoding]::Unicode in PowerShell); use [Text.Encoding]::UTF8 or ASCII",
            ),
            Mistake::DifferentCase { hashed } => write!(
                f,
                "derived from the ID spelled {hashed:?}; DPS ignores case but the key covers the exact bytes, so derive from the spelling the device sends"
            ),
            Mistake::SurroundingSpace => f.write_str(
                "derived from the ID with surrounding spaces (padded CSV cell); trim the ID before hashing",
            ),
            Mistake::SecondaryKey => f.write_str(
                "derived from the group's secondary key, not the primary; fine for DPS, but keep one key per batch and record which",
            ),
            Mistake::GroupKeyItself { secondary } => write!(
                f,
                "this is the enrollment group {} key itself, not a derived key; it must never go on a device — run `dpskit derive`",
                if *secondary { "secondary" } else { "primary" }
            ),
            Mistake::SasToken => f.write_str(
                "a SAS token was pasted where the device key belongs; use the base64 key, not a token",
            ),
            Mistake::ConnectionString { inner_key_matches } => write!(
                f,
                "a connection string was pasted where the device key belongs; give only the SharedAccessKey value{}",
                if *inner_key_matches { " (the key inside it is correct)" } else { " (and the key inside it does not match either)" }
            ),
            Mistake::NotAKey(why) => write!(f, "not a key: {why}"),
        }
    }
}

/// Checks `given` (as pasted, possibly quoted or padded) against the derivation for `id`.
pub fn check_device_key(
    primary: &GroupKey,
    secondary: Option<&GroupKey>,
    id: &str,
    given: &str,
) -> KeyCheck {
    let text = clean_key_text(given);
    if SasToken::parse(text).is_ok() || text.starts_with("SharedAccessSignature") {
        return KeyCheck::Explained(Mistake::SasToken);
    }
    if let Some(inner) = connection_string_key(text) {
        let matches = DeviceKey::parse(inner, "key")
            .map(|k| k.ct_eq(&primary.derive(id)))
            .unwrap_or(false);
        return KeyCheck::Explained(Mistake::ConnectionString {
            inner_key_matches: matches,
        });
    }
    for (group, secondary_flag) in [(Some(primary), false), (secondary, true)] {
        if let Some(g) = group {
            if text == g.to_base64() {
                return KeyCheck::Explained(Mistake::GroupKeyItself {
                    secondary: secondary_flag,
                });
            }
        }
    }
    let key = match DeviceKey::parse(text, "device key") {
        Ok(k) => k,
        Err(e) => return KeyCheck::Explained(Mistake::NotAKey(alloc::format!("{e}"))),
    };
    if key.ct_eq(&primary.derive(id)) {
        return KeyCheck::Match;
    }
    let candidates = id_spelling_mistakes(id);
    for (bytes, mistake) in candidates {
        if key.ct_eq(&primary.derive_bytes(&bytes)) {
            return KeyCheck::Explained(mistake);
        }
    }
    if let Some(s) = secondary {
        if key.ct_eq(&s.derive(id)) {
            return KeyCheck::Explained(Mistake::SecondaryKey);
        }
    }
    KeyCheck::Unexplained
}

/// The byte strings other tools hash by mistake instead of `id`, each with its mistake:
/// a trailing newline or CR LF, UTF-16LE, another letter case, surrounding spaces.
pub fn id_spelling_mistakes(id: &str) -> Vec<(Vec<u8>, Mistake)> {
    let mut out: Vec<(Vec<u8>, Mistake)> = Vec::new();
    let mut with = |suffix: &str, m: Mistake| {
        let mut v = Vec::from(id.as_bytes());
        v.extend_from_slice(suffix.as_bytes());
        out.push((v, m));
    };
    with("\n", Mistake::TrailingNewline);
    with("\r\n", Mistake::TrailingCrLf);
    out.push((
        id.encode_utf16().flat_map(u16::to_le_bytes).collect(),
        Mistake::Utf16Le,
    ));
    for spelled in [id.to_ascii_lowercase(), id.to_ascii_uppercase()] {
        if spelled != id {
            out.push((
                spelled.clone().into_bytes(),
                Mistake::DifferentCase { hashed: spelled },
            ));
        }
    }
    for padded in [
        alloc::format!(" {id}"),
        alloc::format!("{id} "),
        alloc::format!(" {id} "),
    ] {
        out.push((padded.into_bytes(), Mistake::SurroundingSpace));
    }
    out
}

/// The `SharedAccessKey=` value of an IoT Hub connection string, if `text` is one.
fn connection_string_key(text: &str) -> Option<&str> {
    if !text.to_ascii_lowercase().contains("hostname=") && !text.contains("SharedAccessKey=") {
        return None;
    }
    Some(
        text.split(';')
            .find_map(|part| part.trim().strip_prefix("SharedAccessKey="))
            .unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    const G: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
    const ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";

    fn check(given: &str) -> KeyCheck {
        let g = GroupKey::parse(G, "g").unwrap();
        let s = GroupKey::parse("rLuyBPpIJ+hOre2SFIP9Ajvdty3j0EwSP/WvTVH9eZAw5HpDuEmf13nziHy5RRXmuTy84FCLpOnhhBPASSbHYg==", "s").unwrap();
        check_device_key(&g, Some(&s), ID, given)
    }

    #[test]
    fn explains_the_published_wrong_values() {
        assert_eq!(
            check("Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="),
            KeyCheck::Match
        );
        assert_eq!(
            check("\"Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=\""),
            KeyCheck::Match
        );
        assert_eq!(
            check("9xk+A3Y29nEzASjuakJUhcmNyb4ZjibgUKRXPMBArUU="),
            KeyCheck::Explained(Mistake::TrailingNewline)
        );
        assert_eq!(
            check("DBzRsEgMO0MerNnWeyhKIe40H5Mn2TSmjmq6YQEZxUw="),
            KeyCheck::Explained(Mistake::Utf16Le)
        );
        assert!(matches!(
            check("9GWVnYuoOLXlHc346XjhLRb9pKgIOrKSwxDRSOgnvXo="),
            KeyCheck::Explained(Mistake::DifferentCase { .. })
        ));
        assert_eq!(
            check(G),
            KeyCheck::Explained(Mistake::GroupKeyItself { secondary: false })
        );
        assert_eq!(
            check("SharedAccessSignature sr=x&sig=y&se=1"),
            KeyCheck::Explained(Mistake::SasToken)
        );
        assert_eq!(
            check("HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="),
            KeyCheck::Explained(Mistake::ConnectionString { inner_key_matches: true })
        );
        assert_eq!(
            check(&DeviceKey::from_bytes([9; 32]).to_base64()),
            KeyCheck::Unexplained
        );
    }
}
