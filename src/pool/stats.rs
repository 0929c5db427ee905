//! What the pool has done so far, as a snapshot type.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::credentials::TokenStats;
use crate::metrics::{Counters, WAIT_BUCKETS};

/// A snapshot of a pool's state and counters, from [`Pool::stats`](crate::Pool::stats).
///
/// The numbers are read one after another without a common lock, so under load they can be
/// slightly inconsistent with each other (deadpool's `Status` has the same caveat); each one is
/// exact on its own. Counters only grow.
///
/// ```no_run
/// # async fn demo(pool: lakebase_pool::Pool) {
/// let stats = pool.stats();
/// println!(
///     "{} of {} connections in use; {} tokens minted; {} connect retries",
///     stats.size - stats.available,
///     stats.max_size,
///     stats.tokens.minted,
///     stats.connect_retries_transient + stats.connect_retries_rate_limited,
/// );
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The pool's size limit.
    pub max_size: usize,
    /// Open connections, idle or checked out.
    pub size: usize,
    /// Idle connections ready for checkout.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// The token cache's counters.
    pub tokens: TokenStats,
    /// Physical connections opened successfully.
    pub connections_opened: u64,
    /// Connection attempts that failed (including those retried afterwards).
    pub connect_attempts_failed: u64,
    /// Retries after a transient error (server down, starting, waking up).
    pub connect_retries_transient: u64,
    /// Retries after a rate-limit error.
    pub connect_retries_rate_limited: u64,
    /// Connect tries abandoned for a fresh one because they had not answered within their
    /// window ([`RetryPolicy::stalled_try_after`](crate::RetryPolicy::stalled_try_after)):
    /// after a failover, the proxy holds a try on the old primary's address.
    pub connect_stalled_tries: u64,
    /// Logins rejected with a cached token, answered by minting a fresh one.
    pub auth_refreshes: u64,
    /// Connections closed because they reached their max lifetime.
    pub retired_lifetime: u64,
    /// Connections closed because they sat idle past the idle timeout.
    pub retired_idle: u64,
    /// Connections discarded because the server closed them or they failed validation.
    pub retired_broken: u64,
    /// Connections closed because their server changed role: the server refused a write on
    /// them as read-only (`25006`; after a failover, the old primary back as a standby), or,
    /// in a replica's pool (counted in its [`ReplicaStats::retired`]), the standby was
    /// promoted.
    pub retired_read_only: u64,
    /// Connections closed because [`Pool::retire_all`](crate::Pool::retire_all) was called
    /// after they were opened (the primary's; a replica's count in its
    /// [`ReplicaStats::retired`]).
    pub retired_all: u64,
    /// Successful [`Pool::get`](crate::Pool::get) calls.
    pub checkouts: u64,
    /// Failed [`Pool::get`](crate::Pool::get) calls.
    pub checkout_failures: u64,
    /// Of those, the ones that waited the whole wait timeout for a connection
    /// ([`Error::PoolTimeout`](crate::Error::PoolTimeout)).
    pub checkout_timeouts: u64,
    /// Statements cancelled: whose caller dropped their future, that ran past
    /// [`Connection::timeout`](crate::Connection::timeout)'s limit, or through a
    /// [`CancelHandle`](crate::CancelHandle). (The pool sends a cancel again while the
    /// statement has not ended, since the server drops one that arrives before it started
    /// the statement; those are not counted again.)
    pub cancels_sent: u64,
    /// Cancel requests that could not be delivered within their bound.
    pub cancels_failed: u64,
    /// Connections closed, not reused, because a statement was left in flight on them.
    pub closed_abandoned: u64,
    /// How long `get()` took, successful or not, as a histogram: `(upper bound, count)`
    /// buckets from 100 µs to 5 s, the last (bound `None`) counting longer waits.
    pub checkout_wait: Vec<(Option<Duration>, u64)>,
    /// Each read replica's pool (empty without replicas; those of the branch appear once
    /// they are looked up).
    pub replicas: Vec<ReplicaStats>,
    /// Reads served by the read-write endpoint because no replica could serve (or none had
    /// caught up), with [`ReadFallback::Primary`](crate::ReadFallback::Primary).
    pub read_fallbacks: u64,
    /// [`Pool::get_read_at`](crate::Pool::get_read_at) calls that had to wait for a replica
    /// to replay the position.
    pub lag_waits: u64,
    /// Of those, the ones whose replica did not catch up within the catch-up timeout.
    pub lag_fallbacks: u64,
}

impl Stats {
    /// Reads `counters` beside the pool's `status` and its cache's `tokens`.
    pub(crate) fn new(
        counters: &Counters,
        status: deadpool::Status,
        tokens: TokenStats,
        reads: Option<(&ReadCounters, Vec<ReplicaStats>)>,
    ) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (read, replicas) = match reads {
            Some((read, replicas)) => (Some(read), replicas),
            None => (None, Vec::new()),
        };
        let read_load =
            |counter: fn(&ReadCounters) -> &AtomicU64| read.map_or(0, |r| load(counter(r)));
        Stats {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
            tokens,
            connections_opened: load(&counters.connections_opened),
            connect_attempts_failed: load(&counters.connect_attempts_failed),
            connect_retries_transient: load(&counters.connect_retries_transient),
            connect_retries_rate_limited: load(&counters.connect_retries_rate_limited),
            connect_stalled_tries: load(&counters.connect_stalled_tries),
            auth_refreshes: load(&counters.auth_refreshes),
            retired_lifetime: load(&counters.retired_lifetime),
            retired_idle: load(&counters.retired_idle),
            retired_broken: load(&counters.retired_broken),
            retired_read_only: load(&counters.retired_read_only),
            retired_all: load(&counters.retired_all),
            checkouts: load(&counters.checkouts),
            checkout_failures: load(&counters.checkout_failures),
            checkout_timeouts: load(&counters.checkout_timeouts),
            cancels_sent: load(&counters.cancels_sent),
            cancels_failed: load(&counters.cancels_failed),
            closed_abandoned: load(&counters.closed_abandoned),
            checkout_wait: WAIT_BUCKETS
                .iter()
                .map(|bound| Some(*bound))
                .chain([None])
                .zip(counters.checkout_wait.iter().map(load))
                .collect(),
            replicas,
            read_fallbacks: read_load(|r| &r.fallbacks),
            lag_waits: read_load(|r| &r.lag_waits),
            lag_fallbacks: read_load(|r| &r.lag_fallbacks),
        }
    }

    /// An upper bound for the `quantile` (0.0 to 1.0) of checkout waits, read from the
    /// histogram: the bound of the bucket it falls in. `None` when nothing was recorded or
    /// it falls in the last, unbounded bucket.
    ///
    /// ```no_run
    /// # fn demo(pool: lakebase_pool::Pool) {
    /// if let Some(p99) = pool.stats().checkout_wait_quantile(0.99) {
    ///     println!("99 % of checkouts took at most {p99:?}");
    /// }
    /// # }
    /// ```
    pub fn checkout_wait_quantile(&self, quantile: f64) -> Option<Duration> {
        let total: u64 = self.checkout_wait.iter().map(|(_, count)| count).sum();
        if total == 0 {
            return None;
        }
        let rank = (quantile.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bound, count) in &self.checkout_wait {
            seen += count;
            if seen >= rank {
                return *bound;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_waits_fall_in_buckets_and_quantiles_read_back() {
        let counters = Counters::default();
        for _ in 0..98 {
            counters.checkout(Duration::from_micros(50), true, false);
        }
        counters.checkout(Duration::from_millis(30), true, false);
        counters.checkout(Duration::from_secs(9), false, true);
        let stats = Stats::new(
            &counters,
            deadpool::Status {
                max_size: 1,
                size: 0,
                available: 0,
                waiting: 0,
            },
            TokenStats::default(),
            None,
        );
        assert_eq!(
            (
                stats.checkouts,
                stats.checkout_failures,
                stats.checkout_timeouts
            ),
            (99, 1, 1)
        );
        assert_eq!(
            stats.checkout_wait[0],
            (Some(Duration::from_micros(100)), 98)
        );
        assert_eq!(stats.checkout_wait[4], (Some(Duration::from_millis(50)), 1));
        assert_eq!(stats.checkout_wait.last(), Some(&(None, 1)));
        assert_eq!(
            stats.checkout_wait_quantile(0.5),
            Some(Duration::from_micros(100))
        );
        assert_eq!(
            stats.checkout_wait_quantile(0.99),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            stats.checkout_wait_quantile(1.0),
            None,
            "the slowest is past every bound"
        );
    }
}

/// One replica's share of [`Stats`](crate::Stats).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// The endpoint name, or `host:port` for a plain Postgres replica.
    pub endpoint: String,
    /// Whether reads go to it now (it is skipped while unhealthy, until a probe connects).
    pub healthy: bool,
    /// Open connections.
    pub size: usize,
    /// Connections checked out.
    pub in_use: usize,
    /// Physical connections opened.
    pub connections_opened: u64,
    /// Connections closed by the pool (lifetime, idle, broken).
    pub retired: u64,
    /// How many times it was marked unhealthy.
    pub unhealthy_periods: u64,
    /// [`Pool::get_read_at`](crate::Pool::get_read_at) calls that waited for it to replay.
    pub lag_waits: u64,
    /// Of those, the ones it did not catch up in time (served by the fallback).
    pub lag_fallbacks: u64,
}

/// The pool's counters of reads, beside the replicas' own.
#[derive(Debug, Default)]
pub(crate) struct ReadCounters {
    pub(crate) fallbacks: AtomicU64,
    pub(crate) lag_waits: AtomicU64,
    pub(crate) lag_fallbacks: AtomicU64,
}
