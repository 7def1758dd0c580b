//! Every timestamp dpskit writes or prints, each form defined once: RFC 3339 in UTC for files
//! (ledger, exports, certificate dates), with milliseconds where DPS and IoT Hub use them
//! (the emulator's JSON), and one human form for terminals.

use time::OffsetDateTime;

/// `2038-01-15T12:00:00Z`: the ledger, audit exports, certificate validity.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The current time as [`rfc3339`] (UTC), the form every ledger timestamp uses.
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// UTC now with milliseconds (`2024-05-01T12:00:00.123Z`), as DPS and IoT Hub timestamps.
pub fn now_rfc3339_millis() -> String {
    rfc3339_millis(OffsetDateTime::now_utc())
}

/// `t` in UTC with milliseconds, the form of [`now_rfc3339_millis`] (for a clock of one's own).
pub fn rfc3339_millis(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

/// A Unix time for people: `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_words(secs: u64) -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(fmt).ok())
        .unwrap_or_else(|| format!("{secs} (out of range)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn forms() {
        let t = time::macros::datetime!(2038-01-15 12:00:00 UTC);
        assert_eq!(super::rfc3339(t), "2038-01-15T12:00:00Z");
        assert_eq!(super::utc_words(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::now_rfc3339_millis().len(), 24);
    }
}
