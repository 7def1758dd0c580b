//! Choosing boards for an audit and writing them out: the filters of `dpskit ledger
//! list|export` (station, status, date) and the CSV and JSON exports.
//!
//! CSV cells that a spreadsheet would run as a formula — text starting with `=`, `+`, `-`,
//! `@`, a tab or a carriage return, as OWASP's "CSV Injection" advice lists them — get a
//! leading `'`, so a board-supplied string (a firmware project name, a failure reason that
//! quotes the board) can never become a formula on the auditor's PC.

use super::db::Val;
use super::{BoardRow, Status};
use serde::Serialize;
use std::borrow::Cow;
use time::macros::format_description;
use time::{Date, Duration};

/// Which boards to show. Empty: all of them.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub station: Option<String>,
    pub status: Option<Status>,
    /// Boards last changed on or after this instant (RFC 3339, UTC).
    pub since: Option<String>,
    /// Boards last changed before this instant (RFC 3339, UTC).
    pub until: Option<String>,
}

impl Filter {
    /// `--status`: one of allocated, writing, done, failed.
    pub fn parse_status(s: &str) -> Result<Status, String> {
        Status::parse(s).ok_or_else(|| {
            format!("--status: {s:?} is not a status; use allocated, writing, done or failed")
        })
    }

    /// `--since DATE`: that day's start (UTC), or an RFC 3339 instant as written.
    pub fn parse_since(s: &str) -> Result<String, String> {
        parse_day(s, "--since", false)
    }

    /// `--until DATE`: through that whole day (UTC), or up to an RFC 3339 instant.
    pub fn parse_until(s: &str) -> Result<String, String> {
        parse_day(s, "--until", true)
    }

    /// The WHERE clause (with a leading space) and its parameters.
    pub(crate) fn sql(&self) -> (String, Vec<Val>) {
        let mut conds = Vec::new();
        let mut params = Vec::new();
        let mut add = |cond: &str, v: Val| {
            params.push(v);
            conds.push(cond.replace('#', &format!("?{}", params.len())));
        };
        if let Some(s) = &self.station {
            add("station = #", s.as_str().into());
        }
        if let Some(s) = self.status {
            add("status = #", s.as_str().into());
        }
        if let Some(s) = &self.since {
            add("updated_at >= #", s.as_str().into());
        }
        if let Some(s) = &self.until {
            add("updated_at < #", s.as_str().into());
        }
        if conds.is_empty() {
            (String::new(), params)
        } else {
            (format!(" WHERE {}", conds.join(" AND ")), params)
        }
    }
}

fn parse_day(s: &str, flag: &str, end_of_day: bool) -> Result<String, String> {
    let t = s.trim();
    if let Ok(at) = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339) {
        return Ok(crate::timestamp::rfc3339(
            at.to_offset(time::UtcOffset::UTC),
        ));
    }
    let day = Date::parse(t, format_description!("[year]-[month]-[day]")).map_err(|_| {
        format!("{flag}: {s:?} is not a date; write it like 2026-03-01 (a day, UTC) or 2026-03-01T08:00:00Z")
    })?;
    let day = if end_of_day {
        day + Duration::days(1)
    } else {
        day
    };
    Ok(crate::timestamp::rfc3339(day.midnight().assume_utc()))
}

/// The cell as a spreadsheet will show it, never run it.
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

/// Every board as CSV: a header of [`super::EXPORT_COLUMNS`], one row per board.
pub fn to_csv(rows: &[BoardRow]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = w.write_record(super::EXPORT_COLUMNS);
    for r in rows {
        let fields = r.fields();
        let _ = w.write_record(fields.iter().map(|f| neutralise(f).into_owned()));
    }
    w.into_inner().unwrap_or_default()
}

/// Every board as JSON, with where it came from and when.
pub fn to_json(ledger: &str, filter: &Filter, rows: &[BoardRow]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Export<'a> {
        station: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        filter: Option<FilterJson<'a>>,
        exported_at: String,
        boards: &'a [BoardRow],
    }
    #[derive(Serialize)]
    struct FilterJson<'a> {
        station: Option<&'a str>,
        status: Option<Status>,
        since: Option<&'a str>,
        until: Option<&'a str>,
    }
    let any = filter.station.is_some()
        || filter.status.is_some()
        || filter.since.is_some()
        || filter.until.is_some();
    let mut v = serde_json::to_vec_pretty(&Export {
        station: ledger,
        filter: any.then_some(FilterJson {
            station: filter.station.as_deref(),
            status: filter.status,
            since: filter.since.as_deref(),
            until: filter.until.as_deref(),
        }),
        exported_at: crate::timestamp::now_rfc3339(),
        boards: rows,
    })
    .unwrap_or_default();
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised() {
        for bad in ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(neutralise(bad), format!("'{bad}"));
        }
        for ok in ["sensor-00001", "34:85:18:00:00:01", "", "a=b"] {
            assert_eq!(neutralise(ok), ok);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(
            Filter::parse_since("2026-03-01").unwrap(),
            "2026-03-01T00:00:00Z"
        );
        assert_eq!(
            Filter::parse_until("2026-03-01").unwrap(),
            "2026-03-02T00:00:00Z"
        );
        assert_eq!(
            Filter::parse_until("2026-03-01T10:00:00+02:00").unwrap(),
            "2026-03-01T08:00:00Z"
        );
        assert!(Filter::parse_since("yesterday")
            .unwrap_err()
            .contains("--since"));
    }
}
