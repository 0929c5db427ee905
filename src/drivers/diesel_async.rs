//! diesel-async's `AsyncPgConnection`, its sessions opened the pool's way (feature
//! `diesel-async`).
//!
//! [`manager`] makes the `AsyncDieselConnectionManager` that diesel-async's deadpool and bb8
//! pools take; [`deadpool`](fn@deadpool) its deadpool pool with the pool's size, jittered lifetime, idle
//! timeout and bounded checks. Queries are diesel's own: nothing changes in the code that uses the connections.
//!
//! ```no_run
//! use diesel_async::RunQueryDsl;
//! use lakebase_pool::Pool;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::from_env()?;
//! let diesel_pool = lakebase_pool::drivers::diesel_async::deadpool(&pool, |builder| builder)?;
//! let mut conn = diesel_pool.get().await?;
//! let one: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
//!     .get_result(&mut conn)
//!     .await?;
//! assert_eq!(one, 1);
//! # Ok(())
//! # }
//! ```

use ::diesel_async::AsyncPgConnection;
use ::diesel_async::pooled_connection::deadpool::{Pool as DieselPool, PoolBuilder};
use ::diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use deadpool::managed::{Hook, HookError, Metrics};

use crate::connector::Lifetimes;
use crate::error::error_chain;
use crate::{Connector, Error, Pool};

/// The manager diesel-async's pools take, opening each `AsyncPgConnection` through `pool`'s
/// [`Connector`]: a fresh token per login, verified TLS with SNI, the resolver hook,
/// cold-start retries and one forced refresh. A failure reaches diesel as
/// `ConnectionError::BadConnection` with the crate's whole error chain as its text (diesel's
/// error has no place for a typed cause).
///
/// With diesel-async's bb8 pool (`diesel-async/bb8`), set bb8's `max_lifetime`,
/// `idle_timeout` and `reaper_rate` yourself; [`deadpool`](fn@deadpool) keeps its deadpool pool as the
/// crate's pool keeps its own.
///
/// ```no_run
/// # fn demo(pool: &lakebase_pool::Pool) {
/// let manager = lakebase_pool::drivers::diesel_async::manager(pool);
/// let diesel_pool = diesel_async::pooled_connection::deadpool::Pool::builder(manager).build();
/// # let _ = diesel_pool;
/// # }
/// ```
pub fn manager(pool: &Pool) -> AsyncDieselConnectionManager<AsyncPgConnection> {
    let connector = pool.connector();
    let target = connector.target().to_owned();
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(move |_target| {
        let connector = connector.clone();
        Box::pin(async move { open(&connector).await })
    });
    AsyncDieselConnectionManager::new_with_config(target, config)
}

async fn open(connector: &Connector) -> diesel::ConnectionResult<AsyncPgConnection> {
    // diesel-async's pools never cancel a statement: nothing needs to watch the session.
    let session = connector
        .connect_unwatched()
        .await
        .map_err(|error| diesel::ConnectionError::BadConnection(error_chain(&error)))?;
    // The driver ends when the client is dropped or the connection is lost; diesel-async
    // sees a lost connection through the client.
    drop(tokio::spawn(session.driver));
    // diesel-async's set-up runs statements of its own: bounded as the pool's are.
    let timeout = connector.command_timeout();
    tokio::time::timeout(timeout, AsyncPgConnection::try_from(session.client))
        .await
        .unwrap_or_else(|_| {
            Err(diesel::ConnectionError::BadConnection(format!(
                "diesel-async's set-up of the session did not finish within {timeout:?}"
            )))
        })
}

/// diesel-async's deadpool pool over [`manager`], kept as `pool` keeps its own connections:
/// its size; a lifetime per connection (its max lifetime shortened by a share of its jitter
/// drawn for each connection, so that connections opened together are not all replaced
/// together); its idle timeout; each connection's check at checkout bounded by its
/// [`command_timeout`](crate::RetryPolicy::command_timeout). `configure` adjusts the builder
/// before it is built. A task retires connections past their lifetime or idle timeout while
/// the pool sits unused (deadpool itself looks only at checkout), so that a quiet service lets
/// its compute scale to zero; it ends with the diesel pool.
///
/// Must be called within a Tokio runtime.
///
/// # Errors
///
/// [`Error::InvalidConfig`] outside a Tokio runtime, or when deadpool refuses the settings.
///
/// ```no_run
/// # fn demo(pool: &lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
/// let diesel_pool = lakebase_pool::drivers::diesel_async::deadpool(pool, |builder| {
///     builder.max_size(4)
/// })?;
/// # let _ = diesel_pool;
/// # Ok(())
/// # }
/// ```
pub fn deadpool(
    pool: &Pool,
    configure: impl FnOnce(PoolBuilder<AsyncPgConnection>) -> PoolBuilder<AsyncPgConnection>,
) -> Result<DieselPool<AsyncPgConnection>, Error> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::invalid(
            "diesel_async::deadpool",
            "must be called within a Tokio runtime (a task retires idle connections)",
        ));
    }
    let connector = pool.connector();
    let lifetimes = connector.lifetimes();
    let builder = DieselPool::builder(manager(pool))
        .max_size(pool.stats().max_size)
        // So that the caller's `wait_timeout` and `create_timeout` can fire, and the check
        // at checkout (a `SELECT 1`) is bounded: a stalled session is replaced.
        .runtime(deadpool::Runtime::Tokio1)
        .recycle_timeout(Some(connector.command_timeout()))
        .pre_recycle(Hook::sync_fn(move |_, metrics: &Metrics| {
            if keep(&lifetimes, metrics) {
                Ok(())
            } else {
                Err(HookError::Message(
                    "past its lifetime or idle timeout".into(),
                ))
            }
        }));
    let diesel_pool = configure(builder).build().map_err(|error| {
        Error::invalid_because(
            "diesel_async::deadpool",
            "deadpool refused the settings",
            error,
        )
    })?;
    let weak = diesel_pool.weak();
    drop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(lifetimes.housekeeping_interval()).await;
            let Some(diesel_pool) = weak.upgrade() else {
                return;
            };
            let _ = diesel_pool.retain(|_, metrics| keep(&lifetimes, &metrics));
        }
    }));
    Ok(diesel_pool)
}

/// Whether a connection is within its lifetime and idle timeout.
fn keep(lifetimes: &Lifetimes, metrics: &Metrics) -> bool {
    // Deadpool keeps nothing of ours beside a connection, but keeps when it was made.
    !lifetimes.outlived(metrics.age(), || metrics.created)
        && metrics.last_used() < lifetimes.idle_timeout
}
