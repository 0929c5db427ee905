//! The pool: checkout, connection guard, statistics, shutdown.

mod builder;
mod cancel;
mod connection;
mod endpoint;
mod lifecycle;
#[cfg(feature = "opentelemetry")]
mod observe;
mod pooled;
mod replicas;
mod stats;
mod transaction;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::PgLsn;

pub(crate) use self::builder::PoolTemplate;
pub use self::builder::{Dangerous, PoolBuilder};
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use self::builder::{PoolSettings, RetrySettings, TokenSettings};
pub use self::cancel::CancelHandle;
pub use self::connection::Connection;
pub(crate) use self::endpoint::EndpointPool;
pub use self::replicas::ReadFallback;
use self::replicas::{ReplicaSet, Served};
pub use self::stats::{ReplicaStats, Stats};
pub use self::transaction::TransactionHandle;
use crate::Error;
use crate::connect::Connector;
use crate::credentials::TokenCache;

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

/// The read-write endpoint's pool, and the read replicas' if any.
struct PoolInner {
    primary: EndpointPool,
    replicas: Option<Arc<ReplicaSet>>,
}

/// What [`Pool::shutdown`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections checked out when the shutdown began (the read replicas' included).
    pub in_use: usize,
    /// Of those, the ones still checked out when the grace period ended: a statement still
    /// running on one was cancelled, then its connection closed under it, so its next query
    /// fails with a closed-connection error. (What such a caller had already sent beyond the
    /// cancelled statement may still have run, as with any lost connection: its outcome is
    /// unknown.)
    pub forced: usize,
    /// How long the shutdown waited for connections to be returned.
    pub waited: Duration,
}

impl ShutdownReport {
    /// Two pools' reports as one (the primary's and its replicas').
    fn and(self, other: ShutdownReport) -> ShutdownReport {
        ShutdownReport {
            in_use: self.in_use + other.in_use,
            forced: self.forced + other.forced,
            waited: self.waited.max(other.waited),
        }
    }
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
        self.inner.primary.get().await
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
        self.inner.primary.warm_up(connections).await
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
        self.inner.primary.is_ready()
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
        let reads = self
            .inner
            .replicas
            .as_ref()
            .map(|set| (&set.counters, set.stats()));
        self.inner.primary.stats(reads)
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
        self.inner.primary.token_cache()
    }

    /// Replaces every connection: idle ones close now, those in use close when they are
    /// returned (their work is not interrupted), and every checkout from now on gets a
    /// connection opened after the call. The read replicas' connections too. Counted in
    /// [`Stats::retired_all`] (a replica's in its [`ReplicaStats::retired`]). A
    /// [`Listener`](crate::Listener) keeps its own session: drop it and open a new one.
    ///
    /// For what the application learns before the pool can: a failover it was told of, a
    /// credential revoked, a role's rights changed. New connections log in with the cached
    /// token; to replace it too, [`force_refresh`](crate::TokenCache::force_refresh) the
    /// [`token_cache`](Self::token_cache)'s current one first.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// // The role's password was rotated by an administrator: no session logged in with the
    /// // old one may serve another request.
    /// let old = pool.token_cache().token().await?;
    /// pool.token_cache().force_refresh(&old).await?;
    /// pool.retire_all();
    /// # Ok(())
    /// # }
    /// ```
    pub fn retire_all(&self) {
        self.inner.primary.retire_all();
        if let Some(replicas) = &self.inner.replicas {
            replicas.retire_all();
        }
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
        self.inner.primary.close();
        if let Some(replicas) = &self.inner.replicas {
            replicas.close();
        }
    }

    /// Shuts the pool down gracefully: [`close`](Self::close)s it, waits up to `grace` for
    /// the connections in use to be returned (each is closed as it comes back; the read
    /// replicas' too), then cancels the statements still running and closes the connections
    /// still in use, and waits for the pool's background tasks to end.
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
        let primary = self.inner.primary.shutdown(grace);
        let Some(replicas) = &self.inner.replicas else {
            return primary.await;
        };
        match tokio::join!(primary, replicas.shutdown(grace)) {
            (report, Some(replicas)) => report.and(replicas),
            (report, None) => report,
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
        self.inner.primary.is_closed()
    }

    /// Opens sessions outside the pool the way the pool opens its own (same target, token
    /// cache, TLS, resolver and retries): see [`Connector`](crate::Connector).
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let session = pool.connector().connect().await?;
    /// tokio::spawn(session.driver);
    /// # Ok(())
    /// # }
    /// ```
    pub fn connector(&self) -> crate::Connector {
        let pool = Arc::downgrade(&self.inner);
        crate::Connector::new(
            Arc::clone(self.connect_path()),
            // A pool dropped without `close` leaves its connector working: an adapter's pool
            // built from it (and then the `Pool` dropped) goes on.
            Arc::new(move || {
                pool.upgrade()
                    .is_some_and(|inner| inner.primary.is_closed())
            }),
            self.inner.primary.lifetimes(),
        )
    }

    /// The connect path of the primary's pool (listeners open their sessions through it).
    pub(crate) fn connect_path(&self) -> &Arc<Connector> {
        self.inner.primary.connector()
    }

    /// The pool of `primary` and `replicas`.
    fn of(primary: EndpointPool, replicas: Option<Arc<ReplicaSet>>) -> Self {
        Pool {
            inner: Arc::new(PoolInner { primary, replicas }),
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
            .field("target", &self.inner.primary.target())
            .field("stats", &self.stats())
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
