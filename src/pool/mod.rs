//! The pool: checkout, connection guard, statistics, shutdown.

mod builder;
mod cancel;
mod lifecycle;
#[cfg(feature = "opentelemetry")]
mod observe;
mod replicas;
mod stats;
mod transaction;
pub use self::transaction::TransactionHandle;

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool::managed::{self, PoolError, TimeoutType};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::PgLsn;

pub(crate) use self::builder::PoolTemplate;
pub use self::builder::{Dangerous, PoolBuilder};
pub use self::cancel::CancelHandle;
use self::lifecycle::Manager;
pub use self::replicas::{ReadFallback, ReplicaStats};
use self::replicas::{ReplicaSet, Served};
pub use self::stats::Stats;
use crate::Error;
use crate::backoff::millis;
use crate::connect::Connector;
use crate::credentials::TokenCache;
use crate::metrics::Counters;

/// A pool of Postgres connections whose passwords come from a credential provider.
///
/// Every physical connection is opened with the token the cache holds at that moment;
/// connections are replaced after their (jittered) max lifetime, closed when idle too long,
/// and opening one retries through cold starts. See [`PoolBuilder`] for every setting.
///
/// `Pool` is a cheap handle (`Clone` shares the pool), `Send` and `Sync`: put it in Axum
/// `State` or Actix `web::Data` as it is.
///
/// ```no_run
/// use lakebase_pool::Pool;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::builder()
///     .host("127.0.0.1")
///     .user("app")
///     .password("local-dev-password")
///     .build()?;
/// let conn = pool.get().await?;
/// let row = conn.query_one("SELECT 1 + 1", &[]).await?;
/// assert_eq!(row.get::<_, i32>(0), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    pool: managed::Pool<Manager, Connection>,
    counters: Arc<Counters>,
    /// Taken (and awaited) by [`Pool::shutdown`].
    housekeeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Checkouts waiting for a free connection.
    waiters: AtomicUsize,
    /// The read replicas, if any: each a pool of its own.
    replicas: Option<Arc<ReplicaSet>>,
}

/// Counts a waiting checkout for as long as it waits (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn start(waiters: &'a AtomicUsize) -> Self {
        let _ = waiters.fetch_add(1, Ordering::Relaxed);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let _ = self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PoolInner {
    fn take_housekeeper(&self) -> Option<tokio::task::JoinHandle<()>> {
        let task = self
            .housekeeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = &task {
            task.abort();
        }
        task
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        let _ = self.take_housekeeper();
    }
}

/// What [`Pool::shutdown`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections checked out when the shutdown began.
    pub in_use: usize,
    /// Of those, the ones still checked out when the grace period ended: their connections
    /// were closed under them, so their next query fails with a closed-connection error.
    pub forced: usize,
    /// How long the shutdown waited for connections to be returned.
    pub waited: Duration,
}

impl Pool {
    /// Starts configuring a pool.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// A pool configured from the process environment, as Databricks Apps provide it; see
    /// [`PoolBuilder::from_environment`] for the variables.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEnv`] naming a missing or malformed variable, or any error of
    /// [`PoolBuilder::build`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::from_env()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_env() -> Result<Self, Error> {
        PoolBuilder::from_env()?.build()
    }

    /// Checks out a connection: an idle one that passes the lifecycle checks, or a new one.
    ///
    /// The connection returns to the pool when the [`Connection`] is dropped.
    ///
    /// # Errors
    ///
    /// * [`Error::PoolTimeout`]: every connection stayed in use for the wait timeout.
    /// * [`Error::Credentials`]: no valid token could be obtained.
    /// * [`Error::ConnectRetriesExhausted`]: the server stayed unreachable until the retry
    ///   deadline.
    /// * [`Error::AuthRejected`], [`Error::Connect`]: the server refused the connection.
    /// * [`Error::PoolClosed`]: [`close`](Self::close) was called.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = pool.get().await?;
    /// conn.execute("UPDATE jobs SET done = true WHERE id = $1", &[&42_i64]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self) -> Result<Connection, Error> {
        let started = Instant::now();
        let mut result = self.checkout().await.map_err(|e| self.checkout_error(e));
        let now = Instant::now();
        let timed_out = matches!(result, Err(Error::PoolTimeout { .. }));
        self.inner.counters.checkout(
            now.saturating_duration_since(started),
            result.is_ok(),
            timed_out,
        );
        if let Ok(connection) = &mut result {
            connection.checked_out = Some(now);
        }
        result
    }

    /// Takes a free connection without waiting when there is one (deadpool's non-blocking
    /// path, which sets no timer), and only otherwise waits under the wait timeout. Waiting
    /// callers are served in order either way: the semaphore hands released permits to them
    /// before anyone else can take one, which is also why the non-blocking attempt is skipped
    /// while anyone waits (it would fail).
    async fn checkout(&self) -> Result<Connection, PoolError<Error>> {
        let mut timeouts = self.inner.pool.timeouts();
        let wait = timeouts.wait;
        if self.inner.waiters.load(Ordering::Relaxed) == 0 {
            timeouts.wait = Some(Duration::ZERO);
            match self.inner.pool.timeout_get(&timeouts).await {
                Err(PoolError::Timeout(TimeoutType::Wait)) if wait != Some(Duration::ZERO) => {
                    timeouts.wait = wait;
                }
                result => return result,
            }
        }
        let _waiting = Waiting::start(&self.inner.waiters);
        self.inner.pool.timeout_get(&timeouts).await
    }

    /// Opens up to `connections` connections ahead of the first request, all at once: the
    /// token is minted (once) and the endpoint looked up as for any first checkout, and the
    /// connections go back to the pool idle. Call it at start-up, before taking traffic, so
    /// that the first requests do not pay the cold path; see also [`is_ready`](Self::is_ready).
    ///
    /// It is one-shot and sends no query of its own: warm connections are subject to the
    /// idle timeout like any other, so a compute that sees no traffic can still scale to
    /// zero. `connections` is capped at the pool's max size; connections checked out by
    /// others meanwhile are not waited for.
    ///
    /// Returns how many connections were ready (idle in the pool) at the end.
    ///
    /// # Errors
    ///
    /// When not one connection could be opened: the error of the first failure (as
    /// [`get`](Self::get) would return it). Partial failures are logged and counted out.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::from_env()?;
    /// let warm = pool.warm_up(4).await?;
    /// println!("{warm} connections ready; serving");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn warm_up(&self, connections: usize) -> Result<usize, Error> {
        let wanted = connections.min(self.inner.pool.status().max_size);
        let mut timeouts = self.inner.pool.timeouts();
        // Free slots only: a connection someone else holds is not worth waiting for.
        timeouts.wait = Some(Duration::ZERO);
        let started = Instant::now();
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..wanted {
            let pool = self.inner.pool.clone();
            // Each holds its connection until all are opened, so that each opens its own.
            let _ = attempts.spawn(async move { pool.timeout_get(&timeouts).await });
        }
        let mut first_error = None;
        let mut opened = Vec::with_capacity(wanted);
        while let Some(result) = attempts.join_next().await {
            match result.unwrap_or(Err(PoolError::Closed)) {
                Ok(connection) => opened.push(connection),
                // Everything else was in use: nothing to warm up.
                Err(PoolError::Timeout(TimeoutType::Wait)) => {}
                Err(error) => {
                    let error = self.checkout_error(error);
                    tracing::warn!(error = %crate::error::error_chain(&error), "warm-up: a connection could not be opened");
                    let _ = first_error.get_or_insert(error);
                }
            }
        }
        let warm = opened.len();
        drop(opened);
        tracing::info!(
            warm,
            wanted,
            elapsed_ms = millis(started.elapsed()),
            "warm-up done"
        );
        match first_error {
            Some(error) if warm == 0 => Err(error),
            _ => Ok(warm),
        }
    }

    /// Whether a login has worked since the pool was built (and it is not closed): what a
    /// readiness probe should report, so that a load balancer holds traffic until the
    /// endpoint, the token and the credentials are known to work. It stays true while the
    /// compute scales to zero, since the next checkout wakes it; it checks nothing itself
    /// and sends nothing.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) {
    /// let status = if pool.is_ready() { 200 } else { 503 };
    /// # let _ = status;
    /// # }
    /// ```
    pub fn is_ready(&self) -> bool {
        !self.is_closed()
            && self
                .inner
                .counters
                .connections_opened
                .load(Ordering::Relaxed)
                > 0
    }

    /// A snapshot of the pool's state and counters.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) {
    /// let stats = pool.stats();
    /// assert!(stats.size <= stats.max_size);
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        let status = self.inner.pool.status();
        let tokens = self.token_cache().stats();
        let reads = self
            .inner
            .replicas
            .as_ref()
            .map(|set| (&set.counters, set.stats()));
        Stats::new(&self.inner.counters, status, tokens, reads)
    }

    /// Checks out a connection for reading: to a healthy read replica, the least in use
    /// (equally loaded ones in turn, so that the load spreads and a replica's slow queries
    /// push reads to the others), or, when none can serve, per the pool's
    /// [`ReadFallback`]: from the read-write endpoint (the default) or an error. Without
    /// replicas configured it is [`get`](Self::get).
    ///
    /// A replica whose connect fails is marked unhealthy and skipped, for 1 s doubling to
    /// 30 s; then a probe connect runs in the background, and the replica serves again once
    /// one succeeds. A replica that is down never slows [`get`](Self::get), which has its
    /// own pool. Replicas lag behind: to read a write of your own, use
    /// [`get_read_at`](Self::get_read_at).
    ///
    /// # Errors
    ///
    /// Those of [`get`](Self::get); [`Error::PoolTimeout`] when the chosen replica's
    /// connections all stayed in use; [`Error::ReplicaUnavailable`] with
    /// [`ReadFallback::Fail`].
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let conn = pool.get_read().await?;
    /// let rows = conn.query("SELECT id, title FROM todos", &[]).await;
    /// # let _ = rows;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_read(&self) -> Result<Connection, Error> {
        match &self.inner.replicas {
            None => self.get().await,
            Some(replicas) => replicas.get(self).await.map(Served::into_connection),
        }
    }

    /// Checks out a connection for reading that has replayed at least `position`, the
    /// [`write_position`](Connection::write_position) of a write: a read of your own writes.
    /// The replica chosen as by [`get_read`](Self::get_read) is asked
    /// `pg_last_wal_replay_lsn()` until it has caught up, for up to the catch-up timeout
    /// ([`PoolBuilder::replica_catch_up_timeout`], default 2 s); then the
    /// [`ReadFallback`] decides. Only a server that is replaying WAL and has replayed the
    /// position serves: one that is not in recovery (a promoted standby, a host that is no
    /// replica) cannot prove it has the write, so the read falls back at once. The
    /// read-write endpoint has every write, so a fallback to it always satisfies the
    /// position.
    ///
    /// # Errors
    ///
    /// Those of [`get_read`](Self::get_read); with [`ReadFallback::Fail`],
    /// [`Error::ReplicaBehind`], and [`Error::Statement`] when the replay check fails (with
    /// [`ReadFallback::Primary`] such a read falls back).
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let writer = pool.get().await?;
    /// writer.execute("INSERT INTO todos (title) VALUES ('milk')", &[]).await.ok();
    /// let position = writer.write_position().await?;
    /// drop(writer);
    /// let reader = pool.get_read_at(position).await?;
    /// let row = reader.query_one("SELECT count(*) FROM todos WHERE title = 'milk'", &[]).await;
    /// # let _ = row;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_read_at(&self, position: PgLsn) -> Result<Connection, Error> {
        match &self.inner.replicas {
            None => self.get().await,
            Some(replicas) => replicas
                .get_at(self, position)
                .await
                .map(Served::into_connection),
        }
    }

    /// The token cache in front of the pool's credential provider.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) {
    /// println!("token expires in {:?}", pool.token_cache().stats().expires_in);
    /// # }
    /// ```
    pub fn token_cache(&self) -> &TokenCache {
        self.inner.pool.manager().connector().tokens()
    }

    /// Closes the pool: idle connections are closed now, checked-out ones when they are
    /// returned, every later [`get`](Self::get) fails with [`Error::PoolClosed`], and the
    /// background task ends.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) {
    /// pool.close();
    /// assert!(pool.is_closed());
    /// # }
    /// ```
    pub fn close(&self) {
        self.inner.pool.close();
        let _ = self.inner.take_housekeeper();
        if let Some(replicas) = &self.inner.replicas {
            replicas.close();
        }
    }

    /// Shuts the pool down gracefully: [`close`](Self::close)s it, waits up to `grace` for
    /// the connections in use to be returned (each is closed as it comes back), then closes
    /// the connections of any still in use, and waits for the pool's background task to end.
    ///
    /// Call it when the service stops, after the HTTP server has stopped taking requests, so
    /// that the server sees clean disconnects. Clones of the pool share the shutdown. A
    /// [`Listener`](crate::Listener) has its own connection and ends when it is dropped.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) {
    /// let report = pool.shutdown(std::time::Duration::from_secs(10)).await;
    /// if report.forced > 0 {
    ///     eprintln!("{} connections were still in use after 10 s", report.forced);
    /// }
    /// # }
    /// ```
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let started = tokio::time::Instant::now();
        self.close();
        // Closing resized the pool to zero, so idle connections are gone and `size` counts
        // the ones in use; each is dropped, not kept, when it is returned.
        let in_use = self.inner.pool.status().size;
        let deadline = crate::backoff::deadline_after(started, grace);
        while self.inner.pool.status().size > 0 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(SHUTDOWN_POLL.min(left)).await;
        }
        let waited = started.elapsed();
        let forced = self.inner.pool.status().size;
        self.inner.pool.manager().drivers().abort_all();
        if forced > 0 {
            tracing::warn!(
                forced,
                grace_ms = millis(grace),
                "closed connections still in use at the end of the shutdown grace period"
            );
        }
        if let Some(housekeeper) = self.inner.take_housekeeper() {
            // It was aborted; this waits until it has actually stopped.
            let _ = housekeeper.await;
        }
        tracing::info!(in_use, forced, waited_ms = millis(waited), "pool shut down");
        ShutdownReport {
            in_use,
            forced,
            waited,
        }
    }

    /// Whether [`close`](Self::close) has been called.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) {
    /// assert!(!pool.is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.inner.pool.is_closed()
    }

    pub(crate) fn connector(&self) -> &Arc<Connector> {
        self.inner.pool.manager().connector()
    }

    fn target(&self) -> String {
        self.inner.pool.manager().connector().target().to_owned()
    }

    fn checkout_error(&self, error: PoolError<Error>) -> Error {
        match error {
            PoolError::Backend(error) => error,
            PoolError::Closed => Error::PoolClosed,
            PoolError::Timeout(TimeoutType::Create) => Error::ConnectTimeout {
                target: self.target(),
                after: self.inner.pool.timeouts().create.unwrap_or_default(),
            },
            PoolError::Timeout(TimeoutType::Wait | TimeoutType::Recycle) => Error::PoolTimeout {
                waited: self.inner.pool.timeouts().wait.unwrap_or_default(),
                max_size: self.inner.pool.status().max_size,
            },
            // The pool is always built with a runtime and without hooks.
            PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => Error::invalid(
                "build",
                "the pool was built without a runtime or with a hook (a bug in lakebase-pool)",
            ),
        }
    }
}

#[cfg(not(feature = "opentelemetry"))]
impl Pool {
    /// Without the `opentelemetry` feature there is nothing to observe the pool with.
    fn observe(&self) {}
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("target", &self.inner.pool.manager().connector().target())
            .field("stats", &self.stats())
            .finish()
    }
}

/// How often [`Pool::shutdown`] looks whether every connection has been returned.
const SHUTDOWN_POLL: Duration = Duration::from_millis(5);

/// A connection checked out of a [`Pool`]; it goes back to the pool when dropped.
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
    /// When [`Pool::get`] handed it out, for the use-time histogram (set after deadpool has
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
    /// write has committed: pass it to [`Pool::get_read_at`] to read from a replica that has
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

impl From<managed::Object<Manager>> for Connection {
    fn from(object: managed::Object<Manager>) -> Self {
        Connection {
            object: Some(object),
            checked_out: None,
        }
    }
}

impl Connection {
    /// The pooled object: present from checkout until the drop.
    fn pooled(&self) -> &managed::Object<Manager> {
        self.object
            .as_ref()
            .expect("a connection holds its pooled object until it is dropped")
    }

    fn pooled_mut(&mut self) -> &mut managed::Object<Manager> {
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
        // A statement still in flight: its caller gave up (a request timed out). The
        // connection leaves the pool (its place is free for a new one at once).
        // (A session already gone has nothing to cancel through: it is retired as broken.)
        if object.activity.in_flight() && !object.client.is_closed() && !object.lease.cancelled() {
            cancel::abandon(managed::Object::take(object));
            return;
        }
        if object.lease.cancelled() {
            // A cancel was sent on it: closed, not reused (its statement, if any, ends with
            // the cancel, then the session; see `Lease`).
            object
                .counters
                .retired(crate::metrics::RetireReason::Broken);
            drop(managed::Object::take(object));
            return;
        }
        // The object returns to the pool right after this; idle time starts now.
        object.lease.returned();
        object.idle_since = now;
    }
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
#[cfg(test)]
mod tests {
    /// A checkout's future becomes part of every caller's future (an Axum handler's, a
    /// worker's) and is copied whenever that moves. Opening a connection and validating one
    /// are boxed so that it stays about the size of plain deadpool's (it was 19 KB, and cost
    /// 6.4 times plain deadpool's instructions per query).
    #[tokio::test]
    async fn a_checkout_future_is_about_the_size_of_plain_deadpools() {
        let pool = crate::Pool::builder()
            .host("127.0.0.1")
            .user("u")
            .password("p")
            .build()
            .unwrap();
        let mut config = tokio_postgres::Config::new();
        let _ = config.host("127.0.0.1").user("u");
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let plain = deadpool_postgres::Pool::builder(manager).build().unwrap();

        let ours = size_of_val(&pool.get());
        let theirs = size_of_val(&plain.get());
        assert!(
            ours <= theirs + 512,
            "ours {ours} bytes, plain {theirs} bytes"
        );
        let transaction = size_of_val(
            &pool.retry_transaction(|tx| async move { tx.simple_query("").await.map(|_| ()) }),
        );
        assert!(
            transaction <= theirs + 1024,
            "retry_transaction {transaction} bytes"
        );
    }
}
