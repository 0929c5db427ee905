//! The workspace API's text formats, as the mock server writes and reads them.
//!
//! Written apart from the client's parsers on purpose (on the `time` crate): a mock that
//! shared the client's code would agree with any mistake in it.

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// An RFC 3339 timestamp in UTC, with nanoseconds when `fractional` (as the API sometimes
/// writes them) or whole seconds.
pub(crate) fn format_rfc3339(at: SystemTime, fractional: bool) -> String {
    let mut at = OffsetDateTime::from(at);
    if !fractional {
        at = at.replace_nanosecond(0).unwrap_or(at);
    } else if at.nanosecond() == 0 {
        // Keep the fraction visible even on a whole second, which is what it is there to test.
        at = at.replace_nanosecond(1).unwrap_or(at);
    }
    at.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// An RFC 3339 timestamp with any offset, or `None`.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(SystemTime::from)
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
        assert_eq!(format_rfc3339(at, true), "2023-11-14T22:13:20.25Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.25Z"), Some(at));
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.25+01:00"),
            Some(at),
            "an offset is honoured"
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
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
