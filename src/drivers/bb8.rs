//! A `bb8` connection manager whose `tokio_postgres` sessions are opened the pool's
//! way (feature `bb8`).
//!
//! ```no_run
//! use lakebase_pool::Pool;
//! use lakebase_pool::drivers::bb8::LakebaseConnectionManager;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::from_env()?;
//! let sessions = LakebaseConnectionManager::pool_builder(&pool)
//!     .max_size(8)
//!     .build(LakebaseConnectionManager::new(&pool))
//!     .await?;
//! let conn = sessions.get().await?;
//! let row = conn.query_one("SELECT current_user", &[]).await?;
//! println!("{}", row.get::<_, String>(0));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::connector::SessionWatch;
use crate::error::error_chain;
use crate::{Connector, Error, Pool, StatementTimedOut};

/// Opens each `bb8` connection through the pool's [`Connector`]: a fresh token per login,
/// verified TLS with SNI, the resolver hook, cold-start retries and one forced refresh, and
/// the pool's jittered lifetime (a session past it is dropped when it comes back).
#[derive(Clone, Debug)]
pub struct LakebaseConnectionManager {
    connector: Connector,
}

impl LakebaseConnectionManager {
    /// A manager that opens sessions as `pool` opens its own (and, like it, none once `pool`
    /// is closed).
    ///
    /// ```no_run
    /// # fn demo(pool: &lakebase_pool::Pool) {
    /// let manager = lakebase_pool::drivers::bb8::LakebaseConnectionManager::new(pool);
    /// # let _ = manager;
    /// # }
    /// ```
    pub fn new(pool: &Pool) -> Self {
        LakebaseConnectionManager {
            connector: pool.connector(),
        }
    }

    /// A `bb8` builder with the pool's settings that bb8 can hold: its idle timeout; no max
    /// lifetime of bb8's own (each session's jittered lifetime is checked when it comes back;
    /// bb8's would replace them all at once); and no retries of bb8's own (the connector
    /// already retries cold starts within the pool's retry deadline; bb8's on top would
    /// repeat them); an idle check as often as the pool's own; and an error sink that logs
    /// each failure with its causes (`WARN`).
    ///
    /// bb8 opens connections in the background and reports their failures only to its
    /// error sink: a `get` whose connection could not be opened answers `TimedOut` after
    /// bb8's `connection_timeout` (default 30 s), not the error. The log line says what
    /// failed; [`Pool::get`] answers it directly.
    ///
    /// ```no_run
    /// # fn demo(pool: &lakebase_pool::Pool) {
    /// use lakebase_pool::drivers::bb8::LakebaseConnectionManager;
    /// let builder = LakebaseConnectionManager::pool_builder(pool).max_size(4);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn pool_builder(pool: &Pool) -> ::bb8::Builder<Self> {
        let lifetimes = pool.connector().lifetimes();
        ::bb8::Pool::builder()
            .idle_timeout(Some(lifetimes.idle_timeout))
            // bb8 looks for idle sessions every 30 s by default; as often as the pool does.
            .reaper_rate(lifetimes.housekeeping_interval())
            .max_lifetime(None)
            .retry_connection(false)
            .error_sink(Box::new(LogErrors))
    }
}

/// Logs what bb8 reports (it answers callers only `TimedOut`).
#[derive(Clone, Copy, Debug)]
struct LogErrors;

impl ::bb8::ErrorSink<Error> for LogErrors {
    fn sink(&self, error: Error) {
        let past_lifetime =
            matches!(&error, Error::Statement { source, .. } if source.is::<PastLifetime>());
        if past_lifetime {
            tracing::debug!("a session idle past its lifetime was replaced at checkout");
        } else {
            tracing::warn!(error = %error_chain(&error), "bb8 could not open or check a connection");
        }
    }

    fn boxed_clone(&self) -> Box<dyn ::bb8::ErrorSink<Error>> {
        Box::new(*self)
    }
}

/// A session found past its lifetime at checkout: replaced, not a failure.
#[derive(Debug, thiserror::Error)]
#[error("the session is past its lifetime")]
struct PastLifetime;

/// A `tokio_postgres` client from a [`LakebaseConnectionManager`], with the time it is to be
/// replaced; it derefs to the client.
pub struct PooledSession {
    client: tokio_postgres::Client,
    retire_at: Option<Instant>,
    watch: SessionWatch,
}

impl PooledSession {
    /// When it is replaced (once it comes back to the pool after this).
    pub fn retire_at(&self) -> Option<Instant> {
        self.retire_at
    }
}

impl fmt::Debug for PooledSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledSession")
            .field("closed", &self.client.is_closed())
            .field("retire_at", &self.retire_at)
            .finish()
    }
}

impl Deref for PooledSession {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

impl DerefMut for PooledSession {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }
}

impl ::bb8::ManageConnection for LakebaseConnectionManager {
    type Connection = PooledSession;
    type Error = Error;

    async fn connect(&self) -> Result<PooledSession, Error> {
        let session = self.connector.connect().await?;
        // The session's driver ends when the client is dropped or the connection is lost.
        drop(tokio::spawn(session.driver));
        Ok(PooledSession {
            client: session.client,
            retire_at: session.retire_at,
            watch: session.watch,
        })
    }

    /// At checkout (bb8's `test_on_check_out`): a session idle past its lifetime is replaced
    /// (bb8 calls `has_broken` only when a session comes back).
    async fn is_valid(&self, conn: &mut PooledSession) -> Result<(), Error> {
        if past(conn.retire_at) {
            return Err(Error::Statement {
                statement: "lifetime check",
                source: Box::new(PastLifetime),
            });
        }
        let timeout = self.connector.command_timeout();
        bounded("validation", timeout, conn.client.simple_query(""))
            .await
            .map(drop)
    }

    /// When a session comes back: closed, past its lifetime, or with a statement its caller
    /// gave up on still in flight. That statement is cancelled, as the pool cancels its own,
    /// and the session dropped, so that the next caller never waits behind it.
    fn has_broken(&self, conn: &mut PooledSession) -> bool {
        if conn.watch.in_flight() && !conn.client.is_closed() {
            conn.watch.cancel();
            return true;
        }
        if conn.client.is_closed() {
            self.connector.session_lost();
            return true;
        }
        past(conn.retire_at)
    }
}

/// Whether a session is past the time the connector gave it.
fn past(retire_at: Option<Instant>) -> bool {
    retire_at.is_some_and(|at| Instant::now() >= at)
}

/// A statement bounded by the pool's command timeout, its failure as [`Error::Statement`].
async fn bounded<T, E>(
    statement: &'static str,
    timeout: Duration,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, Error>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Error::Statement {
            statement,
            source: Box::new(error),
        }),
        Err(_) => Err(Error::Statement {
            statement,
            source: Box::new(StatementTimedOut::new(statement, timeout)),
        }),
    }
}
