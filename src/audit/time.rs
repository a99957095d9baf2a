//! Times on the record: microseconds since the Unix epoch, written as UTC
//! (`2026-11-24T13:05:33.123456Z`), and the civil months partitions are cut by.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// A time as the CLI and the query endpoint take it: `2026-11-24`,
/// `2026-11-24T13:05`, `2026-11-24T13:05:33[.123]Z` (UTC; a trailing `Z` is
/// optional), or an age before `now`: `90m`, `24h`, `7d`.
pub fn parse(text: &str, now_us: i64) -> Result<i64, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "`{text}` is not a time: use 2026-11-24, 2026-11-24T13:05:00Z, or an age such as 24h or 7d"
        )
    };
    if let Some(unit) = text.chars().last().filter(|c| "smhd".contains(*c)) {
        let n: i64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
        let per = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86_400,
        };
        return n
            .checked_mul(per * 1_000_000)
            .and_then(|age| now_us.checked_sub(age))
            .filter(|_| n >= 0)
            .ok_or_else(bad);
    }
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, clock) = text.split_once(['T', ' ']).unwrap_or((text, "00:00"));
    let mut parts = date.splitn(3, '-').map(str::parse::<i64>);
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d))) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut hms = hms.split(':').map(str::parse::<i64>);
    let h = hms.next().ok_or_else(bad)?.map_err(|_| bad())?;
    let min = hms.next().ok_or_else(bad)?.map_err(|_| bad())?;
    let s = hms.next().unwrap_or(Ok(0)).map_err(|_| bad())?;
    let in_range = (1..=9999).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d);
    if !in_range || !(0..=23).contains(&h) || !(0..=59).contains(&min) || !(0..=60).contains(&s) {
        return Err(bad());
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || fraction.len() > 9 {
        return Err(bad());
    }
    let micros: i64 = format!("{fraction:0<6}")[..6].parse().map_err(|_| bad())?;
    let days = days_from_civil(y, m as u32, d as u32);
    Ok(days * MICROS_PER_DAY + ((h * 60 + min) * 60 + s) * 1_000_000 + micros)
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
            "2026-11-01T10:00:00.x",
        ] {
            assert!(parse(bad, 0).is_err(), "{bad}");
        }
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
