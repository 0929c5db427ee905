//! What the pool has done so far: counters and a snapshot type.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::credentials::TokenStats;
use crate::retry::ErrorClass;

/// Why a connection was closed by the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetireReason {
    /// It reached its (jittered) max lifetime.
    Lifetime,
    /// It sat idle past the idle timeout.
    Idle,
    /// It was closed by the server or failed its validation round trip.
    Broken,
}

impl RetireReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetireReason::Lifetime => "max lifetime reached",
            RetireReason::Idle => "idle timeout reached",
            RetireReason::Broken => "connection closed or failed validation",
        }
    }
}

/// Counters shared by the pool's parts; read through [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connections_opened: AtomicU64,
    connect_attempts_failed: AtomicU64,
    connect_retries_transient: AtomicU64,
    connect_retries_rate_limited: AtomicU64,
    auth_refreshes: AtomicU64,
    retired_lifetime: AtomicU64,
    retired_idle: AtomicU64,
    retired_broken: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    let _ = counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn connection_opened(&self) {
        bump(&self.connections_opened);
    }

    pub(crate) fn attempt_failed(&self) {
        bump(&self.connect_attempts_failed);
    }

    pub(crate) fn retry(&self, class: ErrorClass) {
        match class {
            ErrorClass::RateLimited => bump(&self.connect_retries_rate_limited),
            _ => bump(&self.connect_retries_transient),
        }
    }

    pub(crate) fn auth_refresh(&self) {
        bump(&self.auth_refreshes);
    }

    pub(crate) fn retired(&self, reason: RetireReason) {
        match reason {
            RetireReason::Lifetime => bump(&self.retired_lifetime),
            RetireReason::Idle => bump(&self.retired_idle),
            RetireReason::Broken => bump(&self.retired_broken),
        }
    }

    pub(crate) fn snapshot(&self, status: deadpool::Status, tokens: TokenStats) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
            tokens,
            connections_opened: load(&self.connections_opened),
            connect_attempts_failed: load(&self.connect_attempts_failed),
            connect_retries_transient: load(&self.connect_retries_transient),
            connect_retries_rate_limited: load(&self.connect_retries_rate_limited),
            auth_refreshes: load(&self.auth_refreshes),
            retired_lifetime: load(&self.retired_lifetime),
            retired_idle: load(&self.retired_idle),
            retired_broken: load(&self.retired_broken),
        }
    }
}

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
    /// Logins rejected with a cached token, answered by minting a fresh one.
    pub auth_refreshes: u64,
    /// Connections closed because they reached their max lifetime.
    pub retired_lifetime: u64,
    /// Connections closed because they sat idle past the idle timeout.
    pub retired_idle: u64,
    /// Connections discarded because the server closed them or they failed validation.
    pub retired_broken: u64,
}
