//! The pool's counters: bumped by the parts that open, retry and retire connections, read
//! into [`Stats`](crate::Stats) by the pool (and by the OpenTelemetry instruments that
//! observe it). They carry the pool's histograms too, which are recorded where the counters
//! are bumped.

use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::telemetry::{PoolTelemetry, RetryCause};

/// Why a connection was closed by the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetireReason {
    /// It reached its (jittered) max lifetime.
    Lifetime,
    /// It sat idle past the idle timeout.
    Idle,
    /// It was closed by the server or failed its validation round trip.
    Broken,
    /// A statement was left running on it (cancelled, then the session closed).
    Abandoned,
    /// Its server changed role under it: a primary's session whose write the server refused
    /// as read-only (`25006`, a primary that failed over and came back as a standby, or a
    /// replica behind the primary's host), or a replica's session whose standby was promoted
    /// (a failover made it the primary).
    ReadOnly,
    /// [`Pool::retire_all`](crate::Pool::retire_all) was called after it was opened.
    RetiredAll,
}

impl RetireReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetireReason::Lifetime => "max lifetime reached",
            RetireReason::Idle => "idle timeout reached",
            RetireReason::Broken => "connection closed or failed validation",
            RetireReason::Abandoned => "a statement was left running on it",
            RetireReason::ReadOnly => "the server refused a write as read-only",
            RetireReason::RetiredAll => "every connection was retired (retire_all)",
        }
    }
}

/// Counters shared by the pool's parts; read through [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connect_attempts_failed: AtomicU64,
    pub(crate) connect_retries_transient: AtomicU64,
    pub(crate) connect_stalled_tries: AtomicU64,
    pub(crate) connect_retries_rate_limited: AtomicU64,
    pub(crate) auth_refreshes: AtomicU64,
    pub(crate) retired_lifetime: AtomicU64,
    pub(crate) retired_idle: AtomicU64,
    pub(crate) retired_broken: AtomicU64,
    pub(crate) retired_read_only: AtomicU64,
    pub(crate) retired_all: AtomicU64,
    pub(crate) checkouts: AtomicU64,
    pub(crate) checkout_failures: AtomicU64,
    /// Failed checkouts that ran out of the wait timeout (counted in `checkout_failures` too).
    pub(crate) checkout_timeouts: AtomicU64,
    /// Cancel requests sent for statements whose caller gave up, or asked for.
    pub(crate) cancels_sent: AtomicU64,
    /// Cancel requests that could not be delivered (no answer in time, no route, no runtime).
    pub(crate) cancels_failed: AtomicU64,
    /// Connections closed because a statement was left in flight on them.
    pub(crate) closed_abandoned: AtomicU64,
    /// Counted up by `Pool::retire_all`: connections opened in an earlier generation are
    /// retired (here, beside the counters every connection holds, so that its return can
    /// tell at the cost of one load).
    pub(crate) generation: AtomicU64,
    /// Checkout waits by bucket; the last counts waits above every bound.
    pub(crate) checkout_wait: [AtomicU64; WAIT_BUCKETS.len() + 1],
    /// The pool's OpenTelemetry histograms and spans (nothing without the feature).
    pub(crate) telemetry: PoolTelemetry,
    /// When the server last ended one of the pool's sessions (or a failover's standby
    /// refused a write on one): what tells a failover from a cold start at connect time.
    lost_at: std::sync::Mutex<Option<Instant>>,
}

/// Upper bounds of the checkout-wait histogram buckets.
pub(crate) const WAIT_BUCKETS: [Duration; 9] = [
    Duration::from_micros(100),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(5),
];

fn bump(counter: &AtomicU64) {
    let _ = counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn new(telemetry: PoolTelemetry) -> Self {
        Counters {
            telemetry,
            ..Counters::default()
        }
    }

    pub(crate) fn cancel(&self, delivered: bool) {
        bump(if delivered {
            &self.cancels_sent
        } else {
            &self.cancels_failed
        });
    }

    pub(crate) fn closed_abandoned(&self) {
        bump(&self.closed_abandoned);
    }

    pub(crate) fn connection_opened(&self) {
        bump(&self.connections_opened);
    }

    pub(crate) fn attempt_failed(&self) {
        bump(&self.connect_attempts_failed);
    }

    /// The server ended a session the pool held (or refused a write on it as a standby).
    pub(crate) fn session_lost(&self) {
        *self.lost_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Whether the server ended one of the pool's sessions within `window`.
    pub(crate) fn lost_within(&self, window: Duration) -> bool {
        self.lost_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() <= window)
    }

    /// A connect try abandoned for a fresh one (`RetryPolicy::stalled_try_after`).
    pub(crate) fn stalled_try(&self) {
        bump(&self.connect_stalled_tries);
    }

    pub(crate) fn retry(&self, cause: RetryCause) {
        bump(match cause {
            RetryCause::Transient => &self.connect_retries_transient,
            RetryCause::RateLimited => &self.connect_retries_rate_limited,
            RetryCause::AuthRefresh => &self.auth_refreshes,
        });
    }

    pub(crate) fn retired(&self, reason: RetireReason) {
        match reason {
            RetireReason::Lifetime => bump(&self.retired_lifetime),
            RetireReason::Idle => bump(&self.retired_idle),
            RetireReason::Broken => bump(&self.retired_broken),
            RetireReason::Abandoned => bump(&self.closed_abandoned),
            RetireReason::ReadOnly => bump(&self.retired_read_only),
            RetireReason::RetiredAll => bump(&self.retired_all),
        }
    }

    /// Records one `get()`: how long it took, whether it succeeded, and whether it failed
    /// because the wait timeout ran out.
    pub(crate) fn checkout(&self, waited: Duration, ok: bool, timed_out: bool) {
        bump(if ok {
            &self.checkouts
        } else {
            &self.checkout_failures
        });
        if timed_out {
            bump(&self.checkout_timeouts);
        }
        self.telemetry.wait_time(waited);
        let bucket = WAIT_BUCKETS
            .iter()
            .position(|bound| waited <= *bound)
            .unwrap_or(WAIT_BUCKETS.len());
        bump(&self.checkout_wait[bucket]);
    }
}

/// One of those counted in `count` while it lives (a waiter, a checkout under way), also when
/// its future is dropped.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(count: &'a AtomicUsize) -> Self {
        let _ = count.fetch_add(1, Ordering::SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let _ = self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
