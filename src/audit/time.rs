//! Times on the record: microseconds since the Unix epoch, written as UTC
//! (`2026-11-24T13:05:33.123456Z`), and the civil months partitions are cut by.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime, UtcOffset};

const MICROS_PER_DAY: i64 = 86_400_000_000;

pub fn micros(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

pub fn now_micros() -> i64 {
    micros(SystemTime::now())
}

/// The time `age` before `now_us` (the cutoff of a retention period).
pub fn before(now_us: i64, age: std::time::Duration) -> i64 {
    now_us.saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX))
}

/// `2026-11-24T13:05:33.123456Z`.
pub fn format(us: i64) -> String {
    let days = us.div_euclid(MICROS_PER_DAY);
    let in_day = us.rem_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = in_day / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        in_day % 1_000_000
    )
}

/// The year and month `us` falls in.
pub fn month_of(us: i64) -> (i64, u32) {
    let (y, m, _) = civil_from_days(us.div_euclid(MICROS_PER_DAY));
    (y, m)
}

/// The first microsecond of a month.
pub fn month_start(year: i64, month: u32) -> i64 {
    days_from_civil(year, month, 1) * MICROS_PER_DAY
}

/// The month after.
pub fn next_month(year: i64, month: u32) -> (i64, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

/// A time as the CLI and the query endpoint take it:
///
/// - a date, `2026-11-24`: its first moment in UTC;
/// - a date and time, `2026-11-24T13:05`, `2026-11-24 13:05:33.123`: UTC unless
///   it ends in `Z` or an offset (`2026-11-24T21:05:00+08:00`), as in RFC 3339;
/// - an age before `now`: `90s`, `90m`, `24h`, `7d`.
///
/// Dates that do not exist (`2026-02-31`) are refused, never rolled over.
pub fn parse(text: &str, now_us: i64) -> Result<i64, String> {
    let text = text.trim();
    let bad = |why: &dyn std::fmt::Display| {
        format!(
            "`{text}` is not a time ({why}): use 2026-11-24, 2026-11-24T13:05:00Z, \
             2026-11-24T21:05:00+08:00, or an age such as 24h or 7d"
        )
    };
    if let Some(age) = age(text) {
        return age
            .and_then(|age| now_us.checked_sub(age).ok_or("too long ago"))
            .map_err(|why| bad(&why));
    }
    let at = if text.contains(['T', 't', ' ']) {
        date_time(text)
    } else {
        Date::parse(text, DATE).map(|date| date.midnight().assume_utc())
    }
    .map_err(|e| bad(&e))?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1000)).map_err(|_| bad(&"out of range"))
}

const DATE: &[BorrowedFormatItem<'_>] = format_description!(version = 2, "[year]-[month]-[day]");
/// A date and time without an offset: seconds and their fraction optional.
const LOCAL: &[BorrowedFormatItem<'_>] = format_description!(
    version = 2,
    "[year]-[month]-[day][first [T] [t] [ ]][hour]:[minute][optional [:[second][optional [.[subsecond]]]]]"
);
const OFFSET: &[BorrowedFormatItem<'_>] =
    format_description!(version = 2, "[offset_hour sign:mandatory]:[offset_minute]");

/// An RFC 3339 time, or the looser forms [`LOCAL`] allows with an optional `Z` or
/// offset after them.
fn date_time(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let (local, offset) = if let Some(local) = text.strip_suffix(['Z', 'z']) {
        (local, UtcOffset::UTC)
    } else {
        // `+08:00` is six bytes from the end; `&text[..split]` holds, as `get` did.
        let split = text.len().saturating_sub(6);
        match text.get(split..) {
            Some(tail)
                if tail.len() == 6
                    && tail.starts_with(['+', '-'])
                    && tail.as_bytes()[3] == b':' =>
            {
                (&text[..split], UtcOffset::parse(tail, OFFSET)?)
            }
            _ => (text, UtcOffset::UTC),
        }
    };
    Ok(PrimitiveDateTime::parse(local, LOCAL)?.assume_offset(offset))
}

/// `Some` when `text` is an age (`24h`): its length in microseconds, or why not.
fn age(text: &str) -> Option<Result<i64, &'static str>> {
    let unit = text.chars().last().filter(|c| "smhd".contains(*c))?;
    let per_second: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => 86_400,
    };
    // The unit is one ASCII byte, so this cut is on a character boundary.
    Some(match text[..text.len() - 1].parse::<i64>() {
        Ok(n) if n >= 0 => n.checked_mul(per_second * 1_000_000).ok_or("too long ago"),
        _ => Err("not a whole number of seconds, minutes, hours or days"),
    })
}

// Howard Hinnant's algorithms for the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
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
    fn formats_and_parses_back() {
        for us in [0, 1_795_000_000_123_456, 951_782_400_000_000, -1] {
            assert_eq!(parse(&format(us), 0).unwrap(), us, "{}", format(us));
        }
        assert_eq!(format(1_795_000_000_123_456), "2026-11-18T11:06:40.123456Z");
        assert_eq!(parse("2026-11-18", 0).unwrap(), 1_794_960_000_000_000);
        assert_eq!(parse("2026-11-18 08:26", 0).unwrap(), 1_794_990_360_000_000);
    }

    #[test]
    fn ages_count_back_from_now() {
        assert_eq!(
            parse("2h", 10_000_000_000).unwrap(),
            10_000_000_000 - 7_200_000_000
        );
        assert_eq!(parse("1d", 86_400_000_000).unwrap(), 0);
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11",
            "2026-11-01T25:00",
            "xh",
            "-3h",
            "2026-11-01T10:00:00.x",
            "2026-11-01T10:00+8",
            "2026-11-01T10:00:00+99:00",
            "2026-11-01+08:00",
            "2026-11-01T10:00中文+08:00",
            "中文",
        ] {
            assert!(parse(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn impossible_dates_are_refused_not_rolled_over() {
        for bad in [
            "2026-02-31",
            "2026-02-29",
            "2026-04-31T08:00:00Z",
            "2026-02-30 12:00",
        ] {
            let error = parse(bad, 0).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        assert!(parse("2024-02-29", 0).is_ok(), "a leap year has it");
    }

    #[test]
    fn offsets_and_zulu_name_the_same_instant() {
        let utc = parse("2026-11-18T08:26:00Z", 0).unwrap();
        assert_eq!(utc, 1_794_990_360_000_000);
        for same in [
            "2026-11-18T16:26:00+08:00",
            "2026-11-18T16:26+08:00",
            "2026-11-18 16:26:00.000+08:00",
            "2026-11-18T03:26:00-05:00",
            "2026-11-18t08:26:00z",
            "2026-11-18T08:26Z",
            "2026-11-18T08:26:00+00:00",
        ] {
            assert_eq!(parse(same, 0), Ok(utc), "{same}");
        }
        // Across midnight: the start of the 18th in Beijing is the 17th in UTC.
        assert_eq!(
            parse("2026-11-18T00:00:00+08:00", 0).unwrap(),
            parse("2026-11-17T16:00:00Z", 0).unwrap()
        );
        assert_eq!(
            parse("2026-11-18T08:26:00.123456789Z", 0).unwrap(),
            utc + 123_456,
            "nanoseconds are cut to microseconds"
        );
    }

    #[test]
    fn months_roll_over() {
        let us = parse("2026-12-31T23:59:59.999999", 0).unwrap();
        assert_eq!(month_of(us), (2026, 12));
        assert_eq!(next_month(2026, 12), (2027, 1));
        assert_eq!(month_start(2027, 1), us + 1);
        assert_eq!(month_of(parse("2024-02-29", 0).unwrap()), (2024, 2));
    }
}
