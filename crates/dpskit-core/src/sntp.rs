//! The server side of SNTP (RFC 4330), for the local emulator: a factory rehearsal, and a
//! device in an emulator, needs a time source on the same PC. Sans-IO: a request's bytes and
//! the current time in, the answer's bytes out.

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;
/// An NTP packet without extensions.
pub const PACKET_LEN: usize = 48;

/// The 64-bit NTP timestamp for Unix time `unix_us`.
pub fn ntp_timestamp(unix_us: u64) -> [u8; 8] {
    let secs = (unix_us / 1_000_000 + NTP_UNIX_OFFSET_SECS) as u32;
    let frac = (((unix_us % 1_000_000) << 32) / 1_000_000) as u32;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&secs.to_be_bytes());
    out[4..].copy_from_slice(&frac.to_be_bytes());
    out
}

/// The answer to an SNTP client request, or `None` for anything that is not one (wrong
/// length, not mode 3 "client", version outside 1–4): servers stay silent then.
pub fn answer(request: &[u8], now_unix_us: u64) -> Option<[u8; PACKET_LEN]> {
    if request.len() < PACKET_LEN {
        return None;
    }
    let version = (request[0] >> 3) & 7;
    let mode = request[0] & 7;
    if mode != 3 || !(1..=4).contains(&version) {
        return None;
    }
    let now = ntp_timestamp(now_unix_us);
    let mut r = [0u8; PACKET_LEN];
    // LI 0 (no warning), the client's version, mode 4 (server).
    r[0] = (version << 3) | 4;
    r[1] = 1; // stratum 1: a primary reference (the PC's clock)
    r[2] = request[2]; // poll interval, echoed
    r[3] = (-20i8) as u8; // precision ~1 µs
                          // root delay and dispersion 0; reference ID "LOCL"
    r[12..16].copy_from_slice(b"LOCL");
    r[16..24].copy_from_slice(&now); // reference timestamp
    r[24..32].copy_from_slice(&request[40..48]); // originate = the client's transmit
    r[32..40].copy_from_slice(&now); // receive
    r[40..48].copy_from_slice(&now); // transmit
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_client_requests_only() {
        let mut req = [0u8; 48];
        req[0] = (4 << 3) | 3;
        req[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        // 2025-06-15T00:00:00.5Z
        let r = answer(&req, 1_749_945_600_500_000).unwrap();
        assert_eq!(r[0], (4 << 3) | 4);
        assert_eq!(r[1], 1);
        assert_eq!(&r[24..32], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let secs = u32::from_be_bytes(r[40..44].try_into().unwrap()) as u64;
        assert_eq!(secs - NTP_UNIX_OFFSET_SECS, 1_749_945_600);
        let frac = u32::from_be_bytes(r[44..48].try_into().unwrap());
        assert_eq!(frac, 1 << 31);
        // A server packet, a short one and version 0 are ignored.
        req[0] = (4 << 3) | 4;
        assert_eq!(answer(&req, 0), None);
        assert_eq!(answer(&req[..47], 0), None);
        req[0] = 3;
        assert_eq!(answer(&req, 0), None);
    }
}
