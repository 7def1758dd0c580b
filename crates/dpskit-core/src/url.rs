//! Percent-encoding as Azure's SDKs do it (`%2F` upper case), and a tolerant decoder.

use alloc::string::String;
use alloc::vec::Vec;

/// Encodes everything except RFC 3986 unreserved characters, with upper-case hex.
pub fn encode(input: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len() * 3 / 2);
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xF) as usize] as char);
        }
    }
    out
}

/// Decodes `%XX` (either case) and `+` as space. `None` on a malformed escape or non-UTF-8.
pub fn decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_val(*bytes.get(i + 1)?)?;
                let lo = hex_val(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_python_sdk() {
        assert_eq!(
            encode("0ne00000000/registrations/a-b"),
            "0ne00000000%2Fregistrations%2Fa-b"
        );
        assert_eq!(encode("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn decodes_both_cases() {
        assert_eq!(decode("a%2fb%2Fc").unwrap(), "a/b/c");
        assert_eq!(decode("a%2").as_deref(), None);
        assert_eq!(decode("level=warn%20ing").unwrap(), "level=warn ing");
    }
}
