//! An exponential schedule shared by connect retries and token-mint back-off.

use std::time::Duration;

use tokio::time::Instant;

use crate::Error;

/// How far ahead a deadline of `Duration::MAX` ("no limit") lies: decades, like tokio's own
/// far future, and never an overflow.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The moment `after` from `from`. Durations come from users and servers, and
/// `Instant + Duration` panics on overflow; an unreachable deadline means no limit.
pub(crate) fn deadline_after(from: Instant, after: Duration) -> Instant {
    from.checked_add(after.min(FAR_FUTURE)).unwrap_or(from)
}

/// Whole milliseconds, for log fields; saturating.
/// `max` shortened by `jitter` times `draw` (a number in `[0, 1)`, drawn once per
/// connection): each connection's lifetime, so that connections opened together do not all
/// reconnect together.
pub(crate) fn jittered_lifetime(max: Duration, jitter: f64, draw: f64) -> Duration {
    let keep = 1.0 - jitter * draw;
    Duration::try_from_secs_f64(max.as_secs_f64() * keep)
        .unwrap_or(max)
        .min(max)
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a wait of `wait` starting now would end before `deadline`.
pub(crate) fn ends_before(wait: Duration, deadline: Instant) -> bool {
    wait < deadline.saturating_duration_since(Instant::now())
}

/// `initial`, doubling at each step, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// Checks the pair; `setting` names the builder method in the error.
    pub(crate) fn validate(&self, setting: &'static str) -> Result<(), Error> {
        if self.initial.is_zero() || self.max < self.initial {
            return Err(Error::invalid(
                setting,
                format!(
                    "initial ({:?}) must be greater than zero and not above max ({:?})",
                    self.initial, self.max
                ),
            ));
        }
        Ok(())
    }

    /// The delay for step `step` (1 for the first): `initial * 2^(step - 1)`, at most `max`.
    /// Saturating, so no step number overflows.
    pub(crate) fn step(&self, step: u32) -> Duration {
        let doublings = step.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_of_any_length_never_overflow() {
        let now = Instant::now();
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        let far = deadline_after(now, Duration::MAX);
        assert!(far >= now + Duration::from_secs(365 * 24 * 3600));
        assert!(ends_before(Duration::from_secs(3600), far));
        assert!(!ends_before(Duration::MAX, far));
        assert!(!ends_before(Duration::ZERO, now));
    }

    #[test]
    fn steps_double_up_to_the_cap_and_never_overflow() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let steps: Vec<u128> = (1..=6).map(|n| backoff.step(n).as_millis()).collect();
        assert_eq!(steps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.step(0), Duration::from_millis(100));
        assert_eq!(backoff.step(u32::MAX), Duration::from_secs(1));
        let huge = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
        };
        assert_eq!(huge.step(40), Duration::MAX);
    }

    #[test]
    fn validate_names_the_setting() {
        let inverted = Backoff {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(1),
        };
        let err = inverted.validate("backoff").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid setting `backoff`: initial (2s)"),
            "{err}"
        );
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::from_secs(1),
        };
        assert!(zero.validate("failure_backoff").is_err());
    }
}
