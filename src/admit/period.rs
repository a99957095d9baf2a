//! Budget periods: the calendar day, week (from Monday) or month a moment falls
//! in, at the deployment's UTC offset (`governance.budget_utc_offset`, so that a
//! day in Beijing starts at its midnight), named so that a new period is a new
//! counter.

use time::{Date, Duration, Month, OffsetDateTime, Time, UtcOffset};

use super::grant::Period;

/// The period `now` falls in: its name and how long until it ends.
pub fn current(
    period: Period,
    now: OffsetDateTime,
    offset: UtcOffset,
) -> (String, std::time::Duration) {
    let (start, end) = dates(period, now, offset);
    let name = match period {
        Period::Day => format!("{start}"),
        Period::Week => format!("{start}-week"),
        Period::Month => format!("{:04}-{:02}", start.year(), u8::from(start.month())),
    };
    let left = (midnight(end, offset) - now).max(Duration::ZERO);
    (name, left.try_into().unwrap_or(std::time::Duration::ZERO))
}

/// When the period `now` falls in began.
pub fn start(period: Period, now: OffsetDateTime, offset: UtcOffset) -> OffsetDateTime {
    midnight(dates(period, now, offset).0, offset)
}

fn midnight(date: Date, offset: UtcOffset) -> OffsetDateTime {
    date.with_time(Time::MIDNIGHT).assume_offset(offset)
}

/// The period's first day and the day after its last, at `offset`.
fn dates(period: Period, now: OffsetDateTime, offset: UtcOffset) -> (Date, Date) {
    let local = now.to_offset(offset);
    let date = local.date();
    match period {
        Period::Day => (date, date.next_day().unwrap_or(date)),
        Period::Week => {
            let back = i64::from(date.weekday().number_days_from_monday());
            let monday = date - Duration::days(back);
            (monday, monday + Duration::days(7))
        }
        Period::Month => {
            let first = date.replace_day(1).unwrap_or(date);
            let next = match first.month() {
                Month::December => Date::from_calendar_date(first.year() + 1, Month::January, 1),
                month => Date::from_calendar_date(first.year(), month.next(), 1),
            }
            .unwrap_or(first);
            (first, next)
        }
    }
}

/// `+08:00`, `-05:30` or `Z`.
pub fn parse_offset(text: &str) -> Option<UtcOffset> {
    let text = text.trim();
    if text == "Z" {
        return Some(UtcOffset::UTC);
    }
    let (sign, rest) = match text.split_at_checked(1)? {
        ("+", rest) => (1, rest),
        ("-", rest) => (-1, rest),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn periods_follow_the_local_calendar() {
        let beijing = parse_offset("+08:00").unwrap();
        // 2026-12-31 17:00 UTC is 2027-01-01 01:00 in Beijing (a Friday).
        let now = datetime!(2026-12-31 17:00 UTC);
        let (day, left) = current(Period::Day, now, beijing);
        assert_eq!((day.as_str(), left.as_secs()), ("2027-01-01", 23 * 3600));
        let (month, _) = current(Period::Month, now, beijing);
        assert_eq!(month, "2027-01");
        let (week, left) = current(Period::Week, now, beijing);
        assert_eq!(week, "2026-12-28-week");
        assert_eq!(left.as_secs(), 2 * 86_400 + 23 * 3600);
        let (month, left) = current(Period::Month, now, UtcOffset::UTC);
        assert_eq!((month.as_str(), left.as_secs()), ("2026-12", 7 * 3600));
        assert_eq!(
            start(Period::Day, now, beijing),
            datetime!(2026-12-31 16:00 UTC)
        );
        assert_eq!(
            start(Period::Week, now, beijing),
            datetime!(2026-12-27 16:00 UTC)
        );
        assert_eq!(
            start(Period::Month, now, UtcOffset::UTC),
            datetime!(2026-12-01 00:00 UTC)
        );
        assert_eq!(parse_offset("-05:30"), UtcOffset::from_hms(-5, -30, 0).ok());
        for bad in ["08:00", "+8", "+15:00", "+08:60", ""] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
    }
}
