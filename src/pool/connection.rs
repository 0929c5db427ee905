//! A connection checked out of a pool: what it dereferences to, what it offers beside the
//! client, and what happens when it is returned.

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use deadpool::managed;
use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::PgLsn;

use super::cancel::{self, CancelHandle};
use super::lifecycle::Manager;
use super::pooled::PooledClient;
use crate::Error;
use crate::defaults::CANCEL_SETTLE_TIMEOUT;

/// A connection checked out of a [`Pool`](crate::Pool); it goes back to the pool when dropped.
///
/// It dereferences to deadpool-postgres's [`ClientWrapper`], and through it to
/// [`tokio_postgres::Client`], so queries, `prepare_cached` and transactions work as with
/// deadpool-postgres.
///
/// ```no_run
/// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = pool.get().await?;
/// let tx = conn.transaction().await?;
/// tx.execute("INSERT INTO events (kind) VALUES ($1)", &[&"signup"]).await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub struct Connection {
    /// `None` only while it is dropped.
    object: Option<managed::Object<Manager>>,
    /// When [`Pool::get`](crate::Pool::get) handed it out, for the use-time histogram (set after deadpool has
    /// made the `Connection`, from the instant the checkout's wait time ends at).
    checked_out: Option<Instant>,
}

impl Connection {
    /// When the pool will retire this connection (its max lifetime, shortened by its jitter),
    /// or `None` without a lifetime limit. A connection in use is not interrupted; it is
    /// retired once it is idle after this moment.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let conn = pool.get().await?;
    /// println!("retires in {:?}", conn.retire_at().map(|at| at - std::time::Instant::now()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn retire_at(&self) -> Option<Instant> {
        self.pooled().retire_at
    }

    /// The server's current write position (`pg_current_wal_insert_lsn()`), taken after a
    /// write has committed: pass it to [`Pool::get_read_at`](crate::Pool::get_read_at) to read from a replica that has
    /// replayed the write. On the read-write endpoint only (a replica refuses it).
    ///
    /// The insert position, not `pg_current_wal_lsn()`: under `synchronous_commit = off` a
    /// commit returns before its record is written out, so the write position can lie before
    /// it. The insert position covers every commit that has returned, whatever the commit
    /// mode. (When it falls just after a WAL page header, a replica passes it only with the
    /// next WAL record: the read then waits and falls back, never reads without the write.)
    ///
    /// # Errors
    ///
    /// [`Error::Statement`] when the server refuses it (a replica) or does not answer within
    /// the command timeout.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let conn = pool.get().await?;
    /// let position = conn.write_position().await?;
    /// println!("written up to {position}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_position(&self) -> Result<PgLsn, Error> {
        const STATEMENT: &str = "SELECT pg_current_wal_insert_lsn()";
        let row = self.query_one_bounded(STATEMENT, &[]).await?;
        row.try_get(0).map_err(|e| Error::Statement {
            statement: STATEMENT,
            source: Box::new(e),
        })
    }

    /// One row of a statement the pool sends itself, under the command timeout.
    pub(crate) async fn query_one_bounded(
        &self,
        statement: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, Error> {
        let timeout = self.pooled().command_timeout;
        let failed = |source: crate::BoxError| Error::Statement { statement, source };
        match tokio::time::timeout(timeout, self.query_one(statement, params)).await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(error)) => Err(failed(Box::new(error))),
            Err(_) => Err(failed(Box::new(crate::StatementTimedOut::new(
                statement, timeout,
            )))),
        }
    }

    /// How long ago this physical connection was opened.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let conn = pool.get().await?;
    /// assert!(conn.age() < std::time::Duration::from_secs(3600));
    /// # Ok(())
    /// # }
    /// ```
    pub fn age(&self) -> Duration {
        self.pooled().created.elapsed()
    }
}

// What deadpool's pool needs to hand out `Connection`s; `Manager` is the crate's own, so the
// conversion is of no use outside it and is kept out of the documentation.
#[doc(hidden)]
impl From<managed::Object<Manager>> for Connection {
    fn from(object: managed::Object<Manager>) -> Self {
        Connection {
            object: Some(object),
            checked_out: None,
        }
    }
}

impl Connection {
    /// Handed out at `at`, for the use-time histogram.
    pub(super) fn mark_checked_out(&mut self, at: Instant) {
        self.checked_out = Some(at);
    }

    /// The pooled object: present from checkout until the drop.
    pub(super) fn pooled(&self) -> &managed::Object<Manager> {
        self.object
            .as_ref()
            .expect("a connection holds its pooled object until it is dropped")
    }

    pub(super) fn pooled_mut(&mut self) -> &mut managed::Object<Manager> {
        self.object
            .as_mut()
            .expect("a connection holds its pooled object until it is dropped")
    }
}

impl Deref for Connection {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.pooled().client
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut ClientWrapper {
        &mut self.pooled_mut().client
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let Some(mut object) = self.object.take() else {
            return;
        };
        let now = Instant::now();
        if let Some(checked_out) = self.checked_out {
            object
                .telemetry
                .use_time(now.saturating_duration_since(checked_out));
        }
        let in_flight = object.activity.in_flight() && !object.client.is_closed();
        if object.lease.cancelled() {
            // A cancel was sent on it: closed, not reused (see `Lease`); a statement still in
            // flight is cancelled again if it does not end within the grace period.
            object
                .counters
                .retired(crate::metrics::RetireReason::Broken);
            let object = managed::Object::take(object);
            if in_flight {
                cancel::abandon(object, cancel::GRACE);
            }
            return;
        }
        // A statement still in flight: its caller gave up (a request timed out). (A session
        // already gone has nothing to cancel through: it is retired as broken.)
        if in_flight {
            if object.activity.only_ready_to_come() {
                // Finished but for its `ReadyForQuery`: returned once that is in.
                settle_then_return(object);
            } else {
                // The connection leaves the pool (its place is free for a new one at once).
                cancel::abandon(managed::Object::take(object), cancel::GRACE);
            }
            return;
        }
        if let Some(reason) = object.retire_on_return() {
            // Closed now, not at the next checkout that reaches it: its place is free at once.
            object.counters.retired(reason);
            let object = managed::Object::take(object);
            object.driver.abort();
            return;
        }
        back_to_pool(&mut object, now);
    }
}

/// What the pool notes of a connection as it goes back: the next lease begins, idle time
/// starts now, and a statement its driver may still have queued is watched for.
fn back_to_pool(object: &mut PooledClient, now: Instant) {
    object.lease.next();
    object.idle_since = now;
    if object.activity.driver_behind() {
        // A statement may have been queued just before its future was dropped, and not
        // written yet: found and cancelled once the driver has written it, unless the next
        // checkout comes first (and finds it itself).
        cancel::watch_returned(object);
    }
}

/// A connection whose statement had all its results, returned before its `ReadyForQuery`
/// was read: held (its place in the pool taken) until that comes, within the grace period,
/// then returned as usual; else its statement counts as abandoned after all.
fn settle_then_return(mut object: managed::Object<Manager>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        cancel::abandon(managed::Object::take(object), Duration::ZERO);
        return;
    };
    drop(runtime.spawn(async move {
        let settled = tokio::time::timeout(cancel::GRACE, object.activity.settled()).await;
        if settled.is_ok() && !object.activity.in_flight() && !object.client.is_closed() {
            back_to_pool(&mut object, Instant::now());
        } else {
            cancel::abandon(managed::Object::take(object), Duration::ZERO);
        }
    }));
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("age", &self.age())
            .field("retire_at", &self.retire_at())
            .field("closed", &self.pooled().client.is_closed())
            .finish()
    }
}

impl Connection {
    /// A handle that cancels what this connection is running, from another task.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let conn = pool.get().await?;
    /// let handle = conn.cancel_handle();
    /// # let _ = handle;
    /// # Ok(())
    /// # }
    /// ```
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle::of(self.pooled())
    }

    /// Runs `statement` (a query on this connection) for at most `limit`. When the limit
    /// fires, the statement is cancelled on the server and this waits, up to 2 s, for the
    /// server to finish with it (`settled` in the error). The connection is then closed when
    /// it is returned, not reused: a cancel forwarded by a proxy may land a second later, on
    /// whatever runs then, so run nothing more on it.
    ///
    /// For a limit on every statement of the pool, enforced by the server, see
    /// [`PoolBuilder::statement_timeout`](crate::PoolBuilder::statement_timeout).
    ///
    /// # Errors
    ///
    /// [`Error::StatementTimeout`] when the limit fired; otherwise the statement's own
    /// result is returned as it is.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let conn = pool.get().await?;
    /// let rows = conn
    ///     .timeout(Duration::from_millis(500), conn.query("SELECT * FROM big_report", &[]))
    ///     .await??;
    /// # let _ = rows;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn timeout<F: Future>(
        &self,
        limit: Duration,
        statement: F,
    ) -> Result<F::Output, Error> {
        if let Ok(output) = tokio::time::timeout(limit, statement).await {
            return Ok(output);
        }
        // The statement's future is dropped; its answer is still on its way.
        let settled = self
            .cancel_handle()
            .cancel_until_ended(&self.pooled().activity, CANCEL_SETTLE_TIMEOUT)
            .await;
        // Unsettled, it is still in flight: its return to the pool closes it.
        Err(Error::StatementTimeout { limit, settled })
    }
}
