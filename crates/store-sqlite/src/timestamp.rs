//! `executed_at` as stored: RFC 3339 text in UTC with exactly six fractional
//! digits, so the text sorts in time order and round-trips `now_utc()`.

use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

const STORED: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// `at` (a UTC time from `now_utc`) as stored text.
pub(crate) fn format(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    // Formatting a valid UTC date with this description cannot fail; fall
    // back to the well-known form rather than panic if it ever did.
    utc.format(STORED)
        .or_else(|_| utc.format(&Rfc3339))
        .unwrap_or_default()
}

/// Whether `text` is RFC 3339 (what waymark writes), not a legacy form.
pub(crate) fn is_rfc3339(text: &str) -> bool {
    OffsetDateTime::parse(text, &Rfc3339).is_ok()
}

/// SQLite's own `datetime('now')` and SQLAlchemy's `DateTime` form, in UTC:
/// what an adopted table's `executed_at` holds.
const SQL_TEXT: &[BorrowedFormatItem<'static>] = format_description!(
    "[year]-[month]-[day][first [T][ ]][hour]:[minute]:[second][optional [.[subsecond]]]"
);

/// Parses stored text, in the result in UTC. Any RFC 3339 form is accepted
/// (a row written by hand or by another tool), and so is SQL's
/// `YYYY-MM-DD HH:MM:SS[.ffffff]` without an offset, read as UTC as SQLite's
/// `CURRENT_TIMESTAMP` writes it: a table adopted from the original app holds that.
pub(crate) fn parse(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|at| at.to_offset(time::UtcOffset::UTC))
        .or_else(|rfc| {
            time::PrimitiveDateTime::parse(text, SQL_TEXT)
                .map(|at| at.assume_utc())
                .map_err(|_| rfc)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_microseconds_with_fixed_width() {
        let at = waymark_core::store::now_utc();
        let text = format(at);
        assert_eq!(text.len(), "2024-01-02T03:04:05.123456Z".len(), "{text}");
        assert_eq!(parse(&text).unwrap(), at);
        let whole = at.replace_nanosecond(0).unwrap();
        assert!(format(whole).ends_with(".000000Z"));
        assert_eq!(parse(&format(whole)).unwrap(), whole);
    }

    #[test]
    fn other_offsets_come_back_in_utc() {
        let at = parse("2024-05-06T10:00:00+02:00").unwrap();
        assert_eq!(at.offset(), time::UtcOffset::UTC);
        assert_eq!(at.hour(), 8);
        assert!(parse("yesterday").is_err());
    }

    #[test]
    fn sql_text_without_offset_reads_as_utc() {
        let at = parse("2024-05-01 10:00:00").unwrap();
        assert_eq!((at.hour(), at.offset()), (10, time::UtcOffset::UTC));
        let at = parse("2024-05-01 10:00:00.250000").unwrap();
        assert_eq!(at.millisecond(), 250);
        assert!(parse("2024-05-01T10:00:00").is_ok());
        assert!(parse("2024-05-01").is_err());
    }
}
