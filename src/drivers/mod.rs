//! Other Postgres drivers and pools, their sessions opened the pool's way through its
//! [`Connector`](crate::Connector): a Lakebase token fresh at each login, TLS verified with the
//! host name for SNI, the resolver hook or `hostaddr`, cold-start retries within the retry
//! deadline, one forced token refresh after a rejected login, and the pool's jittered lifetime
//! and idle timeout.
//!
//! * [`bb8`] (feature `bb8`): a `bb8::ManageConnection` of `tokio_postgres` clients.
//! * [`diesel_async`] (feature `diesel-async`): diesel-async's `AsyncPgConnection`, in its
//!   deadpool pool (or its bb8 pool, with `diesel-async/bb8`).
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
