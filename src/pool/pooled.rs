//! A pooled connection: the client and the facts its lifecycle, its cancellation and its
//! checkouts need.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::ClientWrapper;

use crate::activity::Activity;
use crate::metrics::Counters;
use crate::session::CancelRoute;
use crate::telemetry::PoolTelemetry;

/// A pooled connection with the facts its lifecycle needs.
#[derive(Debug)]
pub(crate) struct PooledClient {
    pub(crate) client: ClientWrapper,
    pub(crate) created: Instant,
    pub(crate) retire_at: Option<Instant>,
    /// When it was last returned to the pool (or created). deadpool's own metrics record the
    /// last checkout instead, which would count time in use as idle time.
    pub(crate) idle_since: Instant,
    /// Set while [`Pool::retry_transaction`](crate::Pool::retry_transaction) has a
    /// transaction open on it. Still set when it comes back (the caller's future was dropped
    /// mid-transaction, or `ROLLBACK` failed), it is closed rather than reused.
    pub(crate) in_transaction: AtomicBool,
    /// The task that drives the socket: aborting it closes the session at once (the server
    /// then rolls back whatever was open and releases its locks).
    pub(crate) driver: tokio::task::AbortHandle,
    /// The bound on each statement the pool sends itself on it.
    pub(crate) command_timeout: Duration,
    /// Where its use time is recorded when it is returned.
    pub(crate) telemetry: PoolTelemetry,
    /// Whether a statement is in flight on the session.
    pub(crate) activity: Arc<Activity>,
    /// Where a cancel for the session goes.
    pub(crate) cancel: CancelRoute,
    /// The pool's counters (cancels).
    pub(crate) counters: Arc<Counters>,
    /// Which checkout it is in, and whether a cancel was sent during it.
    pub(crate) lease: Arc<Lease>,
    /// The pool's generation when it was opened: an older one is retired
    /// ([`Pool::retire_all`](crate::Pool::retire_all)).
    pub(crate) generation: u64,
    /// Its pool takes writes (a primary's, not a replica's): a write refused as read-only
    /// means a failover.
    pub(crate) takes_writes: bool,
}

impl PooledClient {
    /// Why it must be closed on its return rather than go back to the pool, if it must:
    /// `retire_all` was called since it opened, or it met a failover's read-only server.
    pub(crate) fn retire_on_return(&self) -> Option<crate::metrics::RetireReason> {
        let role_changed = if self.takes_writes {
            self.activity.refused_write_as_standby()
        } else {
            // A replica's reads belong on a standby: once its server is promoted, the next
            // session goes to whatever now serves the replica's host.
            self.activity.server_promoted()
        };
        if role_changed {
            Some(crate::metrics::RetireReason::ReadOnly)
        } else if self.generation < self.counters.generation.load(Ordering::Acquire) {
            Some(crate::metrics::RetireReason::RetiredAll)
        } else {
            None
        }
    }
}

/// Which lease a connection is in (counted up when it is checked out and when it is
/// returned), and whether a cancel was sent during it. A connection a cancel was sent on is
/// never reused: a cancel names a session, not a statement, and one forwarded by a proxy may
/// land a second later, on whatever runs then. A cancel is sent only after marking the lease
/// it was meant for, so none lands in a later one.
#[derive(Debug, Default)]
pub(crate) struct Lease(AtomicU64);

impl Lease {
    pub(crate) fn epoch(&self) -> u64 {
        self.0.load(Ordering::Acquire) >> 1
    }

    /// Marks a cancel as sent in lease `epoch`; false if that lease is over.
    pub(crate) fn mark_cancelled(&self, epoch: u64) -> bool {
        let current = self.0.load(Ordering::Acquire);
        current >> 1 == epoch
            && (current & 1 == 1
                || self
                    .0
                    .compare_exchange(current, current | 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok())
    }

    /// Whether a cancel was sent in the current lease (kept when the next one starts: such a
    /// connection is closed, not reused).
    pub(crate) fn cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire) & 1 == 1
    }

    /// A lease ends and the next begins (a checkout, a return): handles and watchers of the
    /// one before cancel nothing from now on.
    pub(crate) fn next(&self) {
        let _ = self.0.fetch_add(2, Ordering::AcqRel);
    }
}
