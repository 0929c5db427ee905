//! diesel-async's `AsyncPgConnection`, its sessions opened the pool's way (feature
//! `diesel-async`).
//!
//! [`manager`] makes the `AsyncDieselConnectionManager` that diesel-async's deadpool and bb8
//! pools take; [`deadpool_builder`] a deadpool pool builder with the pool's jittered lifetime
//! and size. Queries are diesel's own: nothing changes in the code that uses the connections.
//!
//! ```no_run
//! use diesel_async::RunQueryDsl;
//! use lakebase_pool::Pool;
//! use lakebase_pool::drivers::diesel_async::deadpool_builder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::from_env()?;
//! let diesel_pool = deadpool_builder(&pool).build()?;
//! let mut conn = diesel_pool.get().await?;
//! let one: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
//!     .get_result(&mut conn)
//!     .await?;
//! assert_eq!(one, 1);
//! # Ok(())
//! # }
//! ```

use std::hash::{Hash, Hasher};

use ::diesel_async::AsyncPgConnection;
use ::diesel_async::pooled_connection::deadpool::{Pool as DieselPool, PoolBuilder};
use ::diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use deadpool::managed::{Hook, HookError, Metrics};

use crate::error::error_chain;
use crate::{Connector, Pool};

/// The manager diesel-async's pools take, opening each `AsyncPgConnection` through `pool`'s
/// [`Connector`]: a fresh token per login, verified TLS with SNI, the resolver hook,
/// cold-start retries and one forced refresh. A failure reaches diesel as
/// `ConnectionError::BadConnection` with the crate's whole error chain as its text (diesel's
/// error has no place for a typed cause).
///
/// With diesel-async's bb8 pool (`diesel-async/bb8`), set bb8's `max_lifetime` and
/// `idle_timeout` yourself; [`deadpool_builder`] does that for its deadpool pool.
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
    let session = connector
        .connect()
        .await
        .map_err(|error| diesel::ConnectionError::BadConnection(error_chain(&error)))?;
    // The driver ends when the client is dropped or the connection is lost; diesel-async
    // sees a lost connection through the client.
    drop(tokio::spawn(session.driver));
    AsyncPgConnection::try_from(session.client).await
}

/// A builder of diesel-async's deadpool pool over [`manager`], on the Tokio runtime (so that
/// `wait_timeout` can be set), with `pool`'s size and a
/// lifetime per connection as `pool` gives its own: its max lifetime shortened by a fraction
/// of its jitter drawn for each connection (a connection past it is replaced when it comes
/// back), so that connections opened together are not all replaced together.
///
/// ```no_run
/// # fn demo(pool: &lakebase_pool::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let diesel_pool = lakebase_pool::drivers::diesel_async::deadpool_builder(pool)
///     .max_size(4)
///     .build()?;
/// # let _ = diesel_pool;
/// # Ok(())
/// # }
/// ```
pub fn deadpool_builder(pool: &Pool) -> PoolBuilder<AsyncPgConnection> {
    let lifetimes = pool.connector().lifetimes();
    DieselPool::builder(manager(pool))
        .max_size(pool.stats().max_size)
        // So that the caller's `wait_timeout` and `create_timeout` can fire.
        .runtime(deadpool::Runtime::Tokio1)
        .pre_recycle(Hook::sync_fn(move |_, metrics: &Metrics| {
            if metrics.age() >= lifetimes.draw(draw_for(metrics)) {
                Err(HookError::Message("past its lifetime".into()))
            } else {
                Ok(())
            }
        }))
}

/// A number in `[0, 1)` that stays the same for one connection: deadpool keeps nothing of
/// ours beside it, but keeps when it was made.
fn draw_for(metrics: &Metrics) -> f64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    metrics.created.hash(&mut hasher);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}
