//! Cancelling statements: the one left in flight when its caller gave up (the future was
//! dropped: a request timed out), one that runs past [`Connection::timeout`](crate::Connection::timeout)'s limit, and one
//! cancelled from another task with a [`CancelHandle`]. A cancel goes the way its session
//! went ([`CancelRoute`]); it is bounded and counted, and never blocks the caller.
//!
//! A connection whose statement was abandoned is never handed to another caller: a cancel
//! names a session, not a statement, so one still on its way could cancel the next caller's
//! statement. It is cancelled, then closed; the pool opens a new one when it needs it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::pooled::{Lease, PooledClient};
use crate::Error;
use crate::activity::Activity;
use crate::defaults::CANCEL_SETTLE_TIMEOUT;
use crate::metrics::Counters;
use crate::session::CancelRequest;

/// Cancels what a checked-out connection is running, from another task: the pool's way to
/// `tokio_postgres::Client::cancel_token`, through the same address, TLS settings and SNI as
/// the connection itself, bounded and counted in [`Stats`](crate::Stats).
///
/// ```no_run
/// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
/// let conn = pool.get().await?;
/// let cancel = conn.cancel_handle();
/// let report = tokio::spawn(async move {
///     tokio::time::sleep(std::time::Duration::from_secs(2)).await;
///     cancel.cancel().await // the report is taking too long
/// });
/// let result = conn.query("SELECT pg_sleep(60)", &[]).await;
/// assert!(result.is_err(), "57014: canceling statement due to user request");
/// report.await.ok();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CancelHandle {
    request: CancelRequest,
    /// The checkout it was taken in: once the connection is returned, it cancels nothing.
    lease: Arc<Lease>,
    epoch: u64,
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelHandle").finish_non_exhaustive()
    }
}

impl CancelHandle {
    /// A handle for `object`'s current checkout.
    pub(super) fn of(object: &PooledClient) -> Self {
        CancelHandle {
            request: request_of(object),
            lease: Arc::clone(&object.lease),
            epoch: object.lease.epoch(),
        }
    }

    /// Cancels, then waits up to `within` for the statement on `activity`'s session to end;
    /// whether it did (false too when the checkout is over).
    pub(super) async fn cancel_until_ended(&self, activity: &Activity, within: Duration) -> bool {
        self.lease.mark_cancelled(self.epoch) && self.request.until_ended(activity, within).await
    }

    /// Asks the server to cancel the statement the connection is running now (nothing
    /// happens if it runs none, and nothing once the connection was returned to the pool).
    /// Waits at most 5 s for the request to be delivered. The connection is closed when it
    /// is returned, not reused: the cancel may land after the statement ended.
    ///
    /// # Errors
    ///
    /// [`Error::CancelFailed`] when it could not be delivered in time.
    ///
    /// ```no_run
    /// # async fn demo(handle: lakebase_pool::CancelHandle) -> Result<(), lakebase_pool::Error> {
    /// handle.cancel().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cancel(&self) -> Result<(), Error> {
        if !self.lease.mark_cancelled(self.epoch) {
            // The connection was returned since: what it runs now is someone else's.
            return Ok(());
        }
        self.request.send().await
    }
}

/// How long a statement found in flight is given to end on its own before it counts as
/// abandoned: some futures end before their statement's `ReadyForQuery` is read (a
/// `prepare`, a `copy_out`, a `copy_in`'s `finish`), and a network may deliver it a moment
/// later.
pub(super) const GRACE: Duration = Duration::from_millis(100);

/// A connection returned with a statement in flight, taken out of the pool (whose place is
/// free for a new connection at once). If the statement does not end within the grace
/// period, it was abandoned: a task of its own cancels it and then closes the session
/// (cancel first: closing alone does not end a running statement, and a proxy forgets a
/// closed session's cancel key). Either way the connection is not reused: a cancel names a
/// session, not a statement, so a late one could cancel the next caller's statement.
pub(super) fn abandon(object: Box<PooledClient>, grace: Duration) {
    let cancel = Cancel::of(&object);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime to cancel on (dropped outside one): closed at once.
        object.counters.closed_abandoned();
        cancel.close_without();
        return;
    };
    drop(runtime.spawn(async move {
        let ended = tokio::time::timeout(grace, object.activity.settled())
            .await
            .is_ok();
        if ended {
            return;
        }
        object.counters.closed_abandoned();
        // `object` lives until the cancel is sent: its session stays open for it.
        cancel.run().await;
        drop(object);
    }));
}

/// Watches a connection just returned to the pool whose driver had work queued (a
/// statement whose future was dropped right after it was sent): once the driver has written
/// it, a statement in flight is cancelled and the session closed, as for one returned in
/// flight. Only within the lease the connection was returned in: a checkout starts another,
/// and then finds any such statement itself.
pub(super) fn watch_returned(object: &PooledClient) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return; // The next checkout looks.
    };
    let cancel = Cancel::of(object);
    let lease = Arc::clone(&object.lease);
    let epoch = lease.epoch();
    drop(runtime.spawn(async move {
        let activity = &cancel.activity;
        let caught_up = tokio::time::timeout(DRIVER_CATCH_UP, activity.driver_caught_up()).await;
        if caught_up.is_ok() && activity.in_flight() && lease.mark_cancelled(epoch) {
            cancel.counters.closed_abandoned();
            cancel.run().await;
        }
    }));
}

/// How long a connection's driver is given to do what it was woken for (a poll takes
/// microseconds); a checkout takes a driver that does not get to it within this as busy.
pub(super) const DRIVER_CATCH_UP: Duration = Duration::from_millis(100);

/// Cancels the statement in flight on `object`'s session, then closes the session, on a task
/// of its own. The session stays open meanwhile even if `object` is dropped: its driver runs
/// until the statement's answer is in.
pub(super) fn cancel_then_close(object: &PooledClient) {
    let cancel = Cancel::of(object);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(cancel.run())),
        Err(_) => cancel.close_without(),
    }
}

/// What cancelling a session's statement and then closing the session takes.
struct Cancel {
    request: CancelRequest,
    counters: Arc<Counters>,
    activity: Arc<Activity>,
    driver: tokio::task::AbortHandle,
}

impl Cancel {
    fn of(object: &PooledClient) -> Self {
        Cancel {
            request: request_of(object),
            counters: Arc::clone(&object.counters),
            activity: Arc::clone(&object.activity),
            driver: object.driver.clone(),
        }
    }

    /// Cancel first, then close: closing alone does not end a running statement (the server
    /// notices only when it next writes).
    async fn run(self) {
        let _ = self
            .request
            .until_ended(&self.activity, CANCEL_SETTLE_TIMEOUT)
            .await;
        self.driver.abort();
    }

    /// Closes without a cancel (none can be sent outside a runtime), counted as failed.
    fn close_without(self) {
        self.request.count_unsent();
        self.driver.abort();
    }
}

/// The cancel request for a pooled session's statement, counted in its pool's stats.
fn request_of(object: &PooledClient) -> CancelRequest {
    CancelRequest::new(
        object.client.cancel_token(),
        object.cancel.clone(),
        Arc::clone(&object.counters),
    )
}
