//! Other Postgres drivers and pools, their sessions opened the pool's way through its
//! [`Connector`](crate::Connector): a Lakebase token fresh at each login, TLS verified with the
//! host name for SNI, the resolver hook or `hostaddr`, cold-start retries within the retry
//! deadline, one forced token refresh after a rejected login, and the pool's jittered lifetime
//! and idle timeout.
//!
//! * [`bb8`] (feature `bb8`): a `bb8::ManageConnection` of `tokio_postgres` clients.
//! * [`diesel_async`] (feature `diesel-async`): diesel-async's `AsyncPgConnection`, in its
//!   deadpool pool (or its bb8 pool, with `diesel-async/bb8`).
//! * [`sqlx_0_8`] and [`sqlx_0_9`] (features `sqlx-0_8`, `sqlx-0_9`): a `sqlx::PgPool`, and
//!   through it SeaORM; sqlx keeps a password of its own, so its connect path is sqlx's,
//!   given the pool's target, tokens, TLS and resolver, with [`retry`](sqlx_0_8::retry) for
//!   cold starts.
//!
//! What the crate's own [`Pool`](crate::Pool) adds beyond these (cancel-on-drop of abandoned
//! statements, rolling back a dropped transaction at once, read replicas) stays with it: the
//! other pools hand out their own connection types.

#[cfg(feature = "bb8")]
#[cfg_attr(docsrs, doc(cfg(feature = "bb8")))]
pub mod bb8;
#[cfg(feature = "diesel-async")]
#[cfg_attr(docsrs, doc(cfg(feature = "diesel-async")))]
pub mod diesel_async;

#[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
mod sqlx_support;

#[cfg(feature = "sqlx-0_8")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx-0_8")))]
pub mod sqlx_0_8 {
    //! sqlx 0.8 (and SeaORM 1, through `SqlxPostgresConnector::from_sqlx_postgres_pool`):
    //! [`pg_pool`] makes a `sqlx::PgPool` whose connections log in the pool's way;
    //! [`retry`] runs a unit of work again after a cold start or a refused token. Queries,
    //! `query!` macros and transactions are sqlx's own. See the README's sqlx section for
    //! what is covered and what is not.

    include!("sqlx.rs");
}

#[cfg(feature = "sqlx-0_9")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx-0_9")))]
pub mod sqlx_0_9 {
    //! sqlx 0.9 (and SeaORM 2), as [`sqlx_0_8`](super::sqlx_0_8) does for sqlx 0.8: the same
    //! functions, with sqlx 0.9's types. sqlx 0.9 needs Rust 1.94.

    use ::sqlx_0_9 as sqlx;

    include!("sqlx.rs");
}
