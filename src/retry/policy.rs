//! How connects (and [`Pool::retry_transaction`](crate::Pool::retry_transaction)) are retried:
//! per-attempt timeout, backoff, deadline, and the bound on the pool's own statements.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::defaults;
use crate::error::Error;
use crate::retry::ErrorClass;

/// How a checkout retries opening a connection: per-attempt timeout, backoff and deadline,
/// and the bound on each statement the pool sends itself.
///
/// # Schedule
///
/// Each retry waits a random time between zero and a ceiling that doubles from
/// 100 ms up to 4 s ("full jitter": a crowd of clients that failed together spreads out):
///
/// | retry | wait (transient) | wait (rate limited) |
/// |---|---|---|
/// | 1 | 0-100 ms | 2-4 s |
/// | 2 | 0-200 ms | 2-4 s |
/// | 3 | 0-400 ms | 2-4 s |
/// | 4 | 0-800 ms | 2-4 s |
/// | 5 | 0-1.6 s | 2-4 s |
/// | 6 | 0-3.2 s | 2-4 s |
/// | 7 and later | 0-4 s | 2-4 s |
///
/// A wait after a transient error ends early as soon as another connection of the same pool
/// opens: the server is back, so every checkout that was waiting retries at once instead of
/// sitting out a backoff that can reach 4 s.
///
/// Within a minute of the server ending one of the pool's sessions (a failover), a try that
/// has not answered within 1 s is abandoned for a fresh one, with a 2 s window, then 4 s
/// ([`stalled_try_after`](Self::stalled_try_after)): the Lakebase proxy holds a connect to the
/// dead compute for about 3 s while the new primary already answers through the same host,
/// and the fresh try reaches it.
///
/// Each attempt (TCP, TLS and login together) is bounded by the 10 s connect timeout, and no
/// attempt starts, nor wait begins, that would end after the 40 s deadline. The worst case
/// for one checkout is therefore the deadline plus the token mint timeout.
///
/// ```
/// use std::time::Duration;
/// use lakebase_pool::RetryPolicy;
///
/// # fn demo() -> Result<(), lakebase_pool::Error> {
/// let policy = RetryPolicy::default()
///     .connect_timeout(Duration::from_secs(5))
///     .backoff(Duration::from_millis(50), Duration::from_secs(2))
///     .deadline(Duration::from_secs(20));
/// let pool = lakebase_pool::Pool::builder()
///     .host("127.0.0.1")
///     .user("app")
///     .password("local-dev-password")
///     .retry(policy)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    connect_timeout: Duration,
    command_timeout: Duration,
    backoff: Backoff,
    deadline: Duration,
    stalled_try_after: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            connect_timeout: defaults::CONNECT_TIMEOUT,
            command_timeout: defaults::COMMAND_TIMEOUT,
            backoff: Backoff {
                initial: defaults::INITIAL_BACKOFF,
                max: defaults::MAX_BACKOFF,
            },
            deadline: defaults::CONNECT_DEADLINE,
            stalled_try_after: Some(defaults::STALLED_TRY_WINDOW),
        }
    }
}

impl RetryPolicy {
    /// Bound on one connection attempt: TCP connect, TLS handshake and login together.
    ///
    /// Default: 10 seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::RetryPolicy::default().connect_timeout(Duration::from_secs(15));
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .retry(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on each statement the pool sends by itself: `BEGIN`, `COMMIT` and `ROLLBACK` of
    /// [`Pool::retry_transaction`](crate::Pool::retry_transaction), a
    /// [`Listener`](crate::Listener)'s `LISTEN`, and the validation round trip of a
    /// connection that sat idle. A server or proxy that stalls after login then costs this
    /// long, not for ever: a stalled `BEGIN` or `LISTEN` is retried like a lost connection,
    /// a stalled `COMMIT` is [`Error::CommitOutcomeUnknown`](crate::Error::CommitOutcomeUnknown),
    /// and the connection is closed either way. Your own statements are not bounded by it.
    ///
    /// Default: 10 seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let policy = lakebase_pool::RetryPolicy::default().command_timeout(Duration::from_secs(30));
    /// assert_eq!(policy.command_timeout_value(), Duration::from_secs(30));
    /// ```
    #[must_use]
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The bound set by [`command_timeout`](Self::command_timeout).
    ///
    /// ```
    /// # use std::time::Duration;
    /// assert_eq!(
    ///     lakebase_pool::RetryPolicy::default().command_timeout_value(),
    ///     Duration::from_secs(10)
    /// );
    /// ```
    pub fn command_timeout_value(&self) -> Duration {
        self.command_timeout
    }

    /// The backoff ceiling starts at `initial` and doubles after each retry up to `max`;
    /// each wait is random between zero and the ceiling. Rate-limit errors wait between
    /// `max / 2` and `max`.
    ///
    /// Default: 100 ms doubling up to 4 s.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::RetryPolicy::default()
    ///     .backoff(Duration::from_millis(200), Duration::from_secs(8));
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .retry(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff { initial, max };
        self
    }

    /// How long a checkout keeps retrying transient errors before it gives up with
    /// [`Error::ConnectRetriesExhausted`]. No attempt or wait is started that would end
    /// after it.
    ///
    /// Default: 40 seconds: longer than the Lakebase proxy keeps answering a failed wake of
    /// the compute from its cache (30 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::RetryPolicy::default().deadline(Duration::from_secs(60));
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .retry(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Within a minute of the server ending one of the pool's sessions (what a failover
    /// does), a connection try (TCP, TLS, login) that has not answered within `window` is
    /// abandoned (its socket closed) and a fresh one started, with twice the window, then
    /// twice again; a try after which less than twice its window of the connect timeout would
    /// remain keeps all of it. One try is in flight at a time.
    ///
    /// This is what brings a pool back within about a second of a failover, while the proxy
    /// still holds the first try on the old primary's address. At other times there is one
    /// try per attempt: a cold start gains nothing from a fresh try (the wake is the
    /// endpoint's, not the connection's), and a login that is merely slow would lose the time
    /// it had spent (during that minute, one slower than `window` completes in a later,
    /// longer window, or not within the connect timeout if it needs most of it).
    ///
    /// Default: 1 second. Must be greater than zero; see
    /// [`no_stalled_try_restart`](Self::no_stalled_try_restart).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// // Logins across regions take about 1.5 s here.
    /// let policy = lakebase_pool::RetryPolicy::default().stalled_try_after(Duration::from_secs(3));
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .retry(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn stalled_try_after(mut self, window: Duration) -> Self {
        self.stalled_try_after = Some(window);
        self
    }

    /// One try per attempt, however long it takes within the connect timeout.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::RetryPolicy::default().no_stalled_try_restart();
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .retry(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn no_stalled_try_restart(mut self) -> Self {
        self.stalled_try_after = None;
        self
    }

    /// The first try's window, `None` for one try per attempt.
    pub(crate) fn stalled_try_window(&self) -> Option<Duration> {
        self.stalled_try_after
    }

    /// A policy that never retries: one attempt, then the error.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::RetryPolicy::no_retry();
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .retry(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn no_retry() -> Self {
        RetryPolicy::default().deadline(Duration::ZERO)
    }

    /// The first and the longest wait between retries.
    #[cfg(feature = "serde")]
    pub(crate) fn backoff_bounds(&self) -> (Duration, Duration) {
        (self.backoff.initial, self.backoff.max)
    }

    pub(crate) fn attempt_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn total_deadline(&self) -> Duration {
        self.deadline
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        if self.command_timeout.is_zero() {
            return Err(Error::invalid(
                "command_timeout",
                "must be greater than zero",
            ));
        }
        self.backoff.validate("backoff")?;
        if self
            .stalled_try_after
            .is_some_and(|window| window.is_zero())
        {
            return Err(Error::invalid(
                "stalled_try_after",
                "must be greater than zero (no try could ever answer in time); use \
                 `no_stalled_try_restart()` for one try per attempt",
            ));
        }
        Ok(())
    }

    /// The wait before retry number `retry`, or `None` when it would end at or after
    /// `deadline`: no wait starts that the deadline would cut short. Connects and
    /// [`Pool::retry_transaction`](crate::Pool::retry_transaction) both give up by this rule.
    pub(crate) fn wait_before(
        &self,
        retry: u32,
        class: ErrorClass,
        deadline: tokio::time::Instant,
    ) -> Option<Duration> {
        let delay = self.delay(retry, class, fastrand::f64());
        crate::backoff::ends_before(delay, deadline).then_some(delay)
    }

    /// The wait before retry number `retry` (1 for the first retry). `unit` is a random
    /// number in `[0, 1)`; taking it as an argument keeps this function deterministic.
    pub(crate) fn delay(&self, retry: u32, class: ErrorClass, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let (floor, span) = match class {
            ErrorClass::RateLimited => {
                let half = self.backoff.max / 2;
                (half, self.backoff.max - half)
            }
            _ => (Duration::ZERO, self.backoff.step(retry)),
        };
        let jittered = Duration::try_from_secs_f64(span.as_secs_f64() * unit)
            .unwrap_or(span)
            .min(span);
        floor.saturating_add(jittered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_delay_is_full_jitter_under_a_doubling_capped_ceiling() {
        let policy = RetryPolicy::default();
        let ceilings_ms = [100, 200, 400, 800, 1600, 3200, 4000, 4000];
        for (i, ceiling) in ceilings_ms.iter().enumerate() {
            let retry = i as u32 + 1;
            assert_eq!(
                policy.delay(retry, ErrorClass::Transient, 0.0),
                Duration::ZERO
            );
            assert_eq!(
                policy.delay(retry, ErrorClass::Transient, 0.5),
                Duration::from_millis(ceiling / 2)
            );
            let top = policy.delay(retry, ErrorClass::Transient, 0.999_999);
            assert!(
                top <= Duration::from_millis(*ceiling),
                "retry {retry}: {top:?}"
            );
        }
    }

    #[test]
    fn rate_limited_delay_stays_in_the_upper_half() {
        let policy = RetryPolicy::default();
        for unit in [0.0, 0.3, 0.999_999] {
            let delay = policy.delay(1, ErrorClass::RateLimited, unit);
            assert!(
                delay >= Duration::from_secs(2) && delay <= Duration::from_secs(4),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn delay_never_overflows_or_panics_on_extreme_inputs() {
        let policy = RetryPolicy::default().backoff(Duration::from_nanos(1), Duration::MAX);
        for retry in [0, 1, 31, 32, 64, u32::MAX] {
            for unit in [0.0, 0.5, 0.999_999_999, 1.0, f64::NAN, f64::INFINITY, -1.0] {
                // Full jitter stays under the step's ceiling; rate limits in the upper half.
                let ceiling = policy.backoff.step(retry);
                let delay = policy.delay(retry, ErrorClass::Transient, unit);
                assert!(delay <= ceiling, "{retry} {unit}: {delay:?} > {ceiling:?}");
                let limited = policy.delay(retry, ErrorClass::RateLimited, unit);
                assert!(limited >= Duration::MAX / 2, "{retry} {unit}: {limited:?}");
            }
        }
    }

    #[test]
    fn validate_rejects_inverted_backoff() {
        let err = RetryPolicy::default()
            .backoff(Duration::from_secs(5), Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid setting `backoff`"),
            "{err}"
        );
    }
}
