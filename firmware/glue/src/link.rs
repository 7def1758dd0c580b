//! mbedTLS failures in plain words, as `dpskit-device`'s [`LinkError`]: a certificate that
//! does not verify is final (retrying cannot fix a wrong root CA or clock), out-of-memory
//! names PSRAM, anything else is retried.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use dpskit_device::{LinkError, LinkErrorKind};

/// `MBEDTLS_ERR_X509_CERT_VERIFY_FAILED`.
pub const ERR_CERT_VERIFY_FAILED: i32 = -0x2700;
/// Allocation failures: SSL, X.509, bignum, PK.
pub const ERR_ALLOC_FAILED: [i32; 4] = [-0x7F00, -0x2880, -0x0010, -0x3F80];
/// `MBEDTLS_ERR_SSL_TIMEOUT`.
pub const ERR_TIMEOUT: i32 = -0x6800;
/// `MBEDTLS_ERR_SSL_BAD_PROTOCOL_VERSION`.
pub const ERR_BAD_PROTOCOL_VERSION: i32 = -0x6E80;

/// `MBEDTLS_X509_BADCERT_*` flags and what each means.
const FLAGS: [(u32, &str); 9] = [
    (0x01, "expired"),
    (0x200, "not valid yet"),
    (0x04, "issued for another host name"),
    (0x08, "not signed by any root CA in the config"),
    (0x02, "revoked"),
    (0x40, "missing"),
    (0x4000, "signed with an unacceptable hash"),
    (0x8000, "signed with an unacceptable key type"),
    (0x10000, "signed with an unacceptable key"),
];

/// The verification flags as words, e.g. `"expired, not signed by any root CA in the config"`.
pub fn verify_flags_text(flags: u32) -> String {
    let words: Vec<&str> = FLAGS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, w)| *w)
        .collect();
    if words.is_empty() {
        format!("rejected (flags {flags:#x})")
    } else {
        words.join(", ")
    }
}

/// Describes a failed TLS handshake with `host` (mbedTLS error `code`, verification `flags`).
pub fn tls_failure(host: &str, code: i32, flags: u32) -> LinkError {
    if code == ERR_CERT_VERIFY_FAILED || flags != 0 {
        let mut hint = "";
        if flags & (0x01 | 0x200) != 0 {
            hint = "; check the device clock (SNTP) and that the root CA is current (Baltimore expired in 2025: use DigiCert Global Root G2)";
        } else if flags & 0x08 != 0 {
            hint = "; write the config with the right root CA (`dpskit write-config --root-ca digicert-g2`, or the emulator's CA for `dpskit emulate`)";
        }
        return LinkError::new(
            LinkErrorKind::Certificate,
            format!(
                "TLS to {host}: the server certificate is {}{hint}",
                verify_flags_text(flags)
            ),
        );
    }
    if ERR_ALLOC_FAILED.contains(&code) {
        return LinkError::new(
            LinkErrorKind::OutOfMemory,
            format!(
                "TLS to {host}: out of memory (mbedTLS error -{:#06x})",
                -code
            ),
        );
    }
    if code == ERR_TIMEOUT {
        return LinkError::new(
            LinkErrorKind::Timeout,
            format!("TLS to {host}: handshake timed out"),
        );
    }
    let what = if code == ERR_BAD_PROTOCOL_VERSION {
        "the server does not speak TLS 1.2"
    } else {
        "handshake failed"
    };
    LinkError::new(
        LinkErrorKind::Tls,
        format!("TLS to {host}: {what} (mbedTLS error -{:#06x})", -code),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_failures_are_final_and_explained() {
        let e = tls_failure(
            "global.azure-devices-provisioning.net",
            ERR_CERT_VERIFY_FAILED,
            0x08,
        );
        assert_eq!(e.kind, LinkErrorKind::Certificate);
        assert!(e.is_final());
        assert!(e.detail.contains("not signed by any root CA"), "{e}");
        assert!(e.detail.contains("--root-ca"), "{e}");
        let e = tls_failure("h", ERR_CERT_VERIFY_FAILED, 0x01 | 0x08);
        assert!(e.detail.contains("expired, not signed"), "{e}");
        assert!(e.detail.contains("SNTP"), "{e}");
        let e = tls_failure("h", ERR_CERT_VERIFY_FAILED, 0x04);
        assert!(e.detail.contains("another host name"), "{e}");
    }

    #[test]
    fn memory_and_other_failures_are_retried() {
        let e = tls_failure("h", -0x7F00, 0);
        assert_eq!(e.kind, LinkErrorKind::OutOfMemory);
        assert!(e.to_string().contains("PSRAM"), "{e}");
        let e = tls_failure("h", ERR_BAD_PROTOCOL_VERSION, 0);
        assert_eq!(e.kind, LinkErrorKind::Tls);
        assert!(
            e.detail.contains("TLS 1.2") && e.detail.contains("-0x6e80"),
            "{e}"
        );
        assert!(!e.is_final());
        assert_eq!(verify_flags_text(0x100), "rejected (flags 0x100)");
    }
}
