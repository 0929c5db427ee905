//! RFC 3339 timestamps as the Databricks APIs and CLI write them.
//!
//! The credential API answers in UTC (`2026-02-06T17:07:00Z`, sometimes with fractional
//! seconds); the CLI prints Go's `time.Time`, which carries a local offset
//! (`2026-02-06T18:07:00.123456+01:00`). Both parse here, without a date-time dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses an RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`). Times before
/// 1970 are rejected: no credential expires then.
pub(crate) fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let invalid = |why: &str| format!("`{}` is not an RFC 3339 timestamp ({why})", shorten(text));
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !text.is_ascii() {
        return Err(invalid("too short"));
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &text[range];
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse::<i64>().map_err(|_| invalid("bad number"))
        } else {
            Err(invalid("expected digits"))
        }
    };
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return Err(invalid("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(invalid("no such date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(invalid("no such time"));
    }
    let mut rest = &text[19..];
    let mut nanos: u32 = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid("empty fraction"));
        }
        for (i, b) in fraction.bytes().take(digits).enumerate() {
            if i < 9 {
                nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
            }
        }
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let hours = number(text.len() - 5..text.len() - 3)?;
            let minutes = number(text.len() - 2..text.len())?;
            if hours > 23 || minutes > 59 {
                return Err(invalid("bad offset"));
            }
            let magnitude = hours * 3600 + minutes * 60;
            if rest.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
        _ => return Err(invalid("expected `Z` or an offset like +01:00")),
    };
    // A leap second (:60) is read as the first instant of the next minute.
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let utc = local - offset_seconds;
    let seconds = u64::try_from(utc).map_err(|_| invalid("before 1970"))?;
    UNIX_EPOCH
        .checked_add(Duration::new(seconds, nanos))
        .ok_or_else(|| invalid("out of range"))
}

/// Formats a time as RFC 3339 UTC, with microseconds when `fractional` (the mock workspace
/// writes `expire_time` with it).
pub(crate) fn format_rfc3339(time: SystemTime, fractional: bool) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since.as_secs()).unwrap_or(i64::MAX / 2);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
    );
    let mut text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if fractional {
        text.push_str(&format!(".{:06}", since.subsec_micros()));
    }
    text.push('Z');
    text
}

fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, nanos)
    }

    #[test]
    fn parses_utc_with_and_without_fractions() {
        assert_eq!(
            parse_rfc3339("2026-02-06T17:07:00Z"),
            Ok(at(1_770_397_620, 0))
        );
        assert_eq!(
            parse_rfc3339("2026-02-06T17:07:00.123456Z"),
            Ok(at(1_770_397_620, 123_456_000))
        );
        assert_eq!(
            parse_rfc3339("2026-02-06T17:07:00.1234567891Z"),
            Ok(at(1_770_397_620, 123_456_789))
        );
    }

    #[test]
    fn parses_offsets_as_the_cli_prints_them() {
        assert_eq!(
            parse_rfc3339("2026-02-06T18:07:00+01:00"),
            Ok(at(1_770_397_620, 0))
        );
        assert_eq!(
            parse_rfc3339("2026-02-06T12:37:00.5-04:30"),
            Ok(at(1_770_397_620, 500_000_000))
        );
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in [
            "",
            "tomorrow",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-06T25:00:00Z",
            "2026-02-06T17:07:00",
            "2026-02-06T17:07:00.Z",
            "2026-02-06T17:07:00+1:00",
            "1969-12-31T23:59:59Z",
            "2026-02-06T17:07:00Zjunk",
            "２０２６-02-06T17:07:00Z",
        ] {
            let err = parse_rfc3339(bad).unwrap_err();
            assert!(err.contains("not an RFC 3339 timestamp"), "{bad}: {err}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for seconds in [0, 951_782_400, 1_770_397_620, 4_102_444_799] {
            let time = at(seconds, 654_321_000);
            assert_eq!(parse_rfc3339(&format_rfc3339(time, true)), Ok(time));
            assert_eq!(
                parse_rfc3339(&format_rfc3339(time, false)),
                Ok(at(seconds, 0))
            );
        }
        assert_eq!(
            format_rfc3339(at(1_770_397_620, 0), false),
            "2026-02-06T17:07:00Z"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text parses or is refused with a message; none panics.
        #[test]
        fn any_text_parses_or_fails_with_a_reason(text in any::<String>()) {
            if let Err(message) = parse_rfc3339(&text) {
                prop_assert!(message.contains("is not an RFC 3339 timestamp"));
            }
        }

        /// Timestamp-shaped text with any digits (month 99, hour 25, offsets, long fractions)
        /// never panics, and every time it accepts formats back to the same instant (to the
        /// microsecond).
        #[test]
        fn timestamp_shaped_text_never_panics(
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?(Z|z|[+-][0-9]{2}:[0-9]{2})",
        ) {
            if let Ok(time) = parse_rfc3339(&text) {
                // Formatting keeps microseconds; finer digits are dropped.
                let again = parse_rfc3339(&format_rfc3339(time, true)).unwrap();
                let lost = time.duration_since(again).unwrap();
                prop_assert!(lost < Duration::from_micros(1), "{} lost {:?}", text, lost);
            }
        }

        /// Formatting then parsing is the identity (to the microsecond written).
        #[test]
        fn format_then_parse_round_trips(seconds in 0_u64..253_402_300_799, micros in 0_u32..1_000_000) {
            let time = UNIX_EPOCH + Duration::new(seconds, micros * 1000);
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(time, true)).unwrap(), time);
        }
    }
}
