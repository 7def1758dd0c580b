//! Unix seconds → UTC calendar fields, for mbedTLS's wall-clock hook (it checks certificate
//! `notBefore` / `notAfter` against a broken-down `struct tm`).

/// The fields of a C `struct tm` (UTC), with C's conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tm {
    pub sec: i32,
    pub min: i32,
    pub hour: i32,
    /// Day of the month, 1–31.
    pub mday: i32,
    /// Months since January, 0–11.
    pub mon: i32,
    /// Years since 1900.
    pub year: i32,
    /// Days since Sunday, 0–6.
    pub wday: i32,
    /// Days since 1 January, 0–365.
    pub yday: i32,
}

/// Converts Unix seconds (≥ 0) to UTC fields (Howard Hinnant's `civil_from_days`).
pub fn utc(unix_secs: u64) -> Tm {
    let days = (unix_secs / 86_400) as i64;
    let rem = (unix_secs % 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const BEFORE: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = BEFORE[(month - 1) as usize] + day - 1 + i64::from(leap && month > 2);
    Tm {
        sec: (rem % 60) as i32,
        min: (rem / 60 % 60) as i32,
        hour: (rem / 3600) as i32,
        mday: day as i32,
        mon: (month - 1) as i32,
        year: (year - 1900) as i32,
        // 1970-01-01 was a Thursday.
        wday: ((days + 4) % 7) as i32,
        yday: yday as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let t = utc(0);
        assert_eq!((t.year, t.mon, t.mday, t.wday, t.yday), (70, 0, 1, 4, 0));
        // 2038-01-15 12:00:00, DigiCert Global Root G2's notAfter day.
        let t = utc(2_147_169_600);
        assert_eq!(
            (t.year + 1900, t.mon + 1, t.mday, t.hour),
            (2038, 1, 15, 12)
        );
        // 2024-02-29 23:59:59 (leap day), a Thursday, day 59 of the year.
        let t = utc(1_709_251_199);
        assert_eq!(
            t,
            Tm {
                sec: 59,
                min: 59,
                hour: 23,
                mday: 29,
                mon: 1,
                year: 124,
                wday: 4,
                yday: 59
            }
        );
        // 2025-12-31: the last day of a common year.
        let t = utc(1_767_139_200);
        assert_eq!((t.year + 1900, t.mon, t.mday, t.yday), (2025, 11, 31, 364));
    }
}
