//! The workspace API's text formats, as the mock server writes and reads them.
//!
//! Written apart from the client's parsers on purpose (on the `time` crate): a mock that
//! shared the client's code would agree with any mistake in it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// An RFC 3339 timestamp in UTC, as protobuf JSON writes one: whole seconds, or with
/// `fractional`, six digits of fraction (the API writes microseconds). A time past the last
/// second of year 9999, which RFC 3339 cannot write, is written as that second; one before
/// 1970 as the epoch.
pub(crate) fn format_rfc3339(at: SystemTime, fractional: bool) -> String {
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since.as_secs()).unwrap_or(LAST).min(LAST);
    let nanos = if seconds == LAST && since.as_secs() > LAST as u64 {
        0
    } else {
        since.subsec_micros() * 1000
    };
    let at = OffsetDateTime::from_unix_timestamp(seconds)
        .and_then(|at| at.replace_nanosecond(nanos))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let written = if fractional {
        at.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
    } else {
        at.format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
    };
    written.unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// An RFC 3339 timestamp with any offset, at or after 1970, or `None`. The `time` crate
/// takes any character between date and time; RFC 3339 allows `T`, `t` and a space.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let nanos = u128::try_from(at.unix_timestamp_nanos()).ok()?;
    let seconds = u64::try_from(nanos / 1_000_000_000).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, (nanos % 1_000_000_000) as u32))
}

/// A protobuf JSON duration (`"3600s"`, `"1.5s"`), or `None`.
pub(crate) fn proto_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// The API's rule for a resource id (`branch_id`, `endpoint_id`): 1 to 63 characters, a
/// lowercase letter, then lowercase letters, digits and hyphens.
pub(crate) fn valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_with_and_without_fractions() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 250_000_000);
        assert_eq!(format_rfc3339(at, false), "2023-11-14T22:13:20Z");
        assert_eq!(format_rfc3339(at, true), "2023-11-14T22:13:20.250000Z");
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_rfc3339(whole, true), "2023-11-14T22:13:20.000000Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.25Z"), Some(at));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.25+01:00"),
            Some(at),
            "an offset is honoured"
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        for refused in [
            "2030-01-01X00:00:00Z",
            "2030-01-01_00:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(refused), None, "{refused}");
        }
        assert!(parse_rfc3339("2030-01-01 00:00:00Z").is_some());
    }

    #[test]
    fn times_rfc_3339_cannot_write_are_written_as_the_nearest_it_can() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(format_rfc3339(far, true), "9999-12-31T23:59:59.000000Z");
        let early = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(format_rfc3339(early, false), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn durations_and_ids_follow_the_api() {
        assert_eq!(proto_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(proto_duration("-1s"), None);
        assert_eq!(proto_duration("60"), None);
        assert!(valid_id("ci-run-42"));
        for bad in ["", "Main", "1st", "a_b", &"a".repeat(64)] {
            assert!(!valid_id(bad), "{bad:?} must be refused");
        }
    }
}
