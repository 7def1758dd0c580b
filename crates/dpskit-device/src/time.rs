//! Wall-clock sanity: the app refuses to sign tokens with a clock SNTP has not set.

use alloc::format;
use alloc::string::String;

/// 2024-01-01T00:00:00Z in Unix ms. Every root CA in use was valid then and every token the
/// device signs must be later; a clock before this is one SNTP has not set (an ESP32 boots at
/// 1970-01-01).
pub const MIN_PLAUSIBLE_UNIX_MS: u64 = 1_704_067_200_000;

/// True when `now_ms` can be a real, SNTP-set time.
pub fn is_plausible(now_ms: u64) -> bool {
    now_ms >= MIN_PLAUSIBLE_UNIX_MS
}

/// `2024-05-01 12:00:00 UTC` for a Unix time in ms (proleptic Gregorian, no leap seconds).
pub fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            format_unix_ms(MIN_PLAUSIBLE_UNIX_MS),
            "2024-01-01 00:00:00 UTC"
        );
        assert_eq!(format_unix_ms(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_unix_ms(951_825_600_000), "2000-02-29 12:00:00 UTC");
        assert!(!is_plausible(MIN_PLAUSIBLE_UNIX_MS - 1));
        assert!(is_plausible(MIN_PLAUSIBLE_UNIX_MS));
    }
}
