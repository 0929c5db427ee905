//! A Postgres connection pool for Databricks Lakebase, built on deadpool-postgres.
//!
//! Lakebase passwords are short-lived OAuth tokens. This pool opens every physical connection
//! with a token that is fresh at that moment, replaces connections before their age matters
//! (45 minutes, each shortened by a random 0-5 % so they do not all reconnect at once), and
//! retries through cold starts after scale-to-zero. Callers just `get()` a connection.
//!
//! ```no_run
//! use std::time::{Duration, SystemTime};
//! use lakebase_pool::Pool;
//! use lakebase_pool::credentials::{from_fn, Credential};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Any async source of tokens; the pool caches them and refreshes ahead of expiry.
//! let tokens = from_fn(|| async {
//!     let token = String::from("token-from-your-identity-provider");
//!     let expiry = SystemTime::now() + Duration::from_secs(3600);
//!     Ok::<_, std::io::Error>(Credential::new(token).expires_at(expiry))
//! });
//!
//! let pool = Pool::builder()
//!     .host("127.0.0.1")
//!     .user("app")
//!     .dbname("app")
//!     .credentials(tokens)
//!     .build()?;
//!
//! let conn = pool.get().await?;
//! let row = conn.query_one("SELECT version()", &[]).await?;
//! println!("{}", row.get::<_, String>(0));
//! # Ok(())
//! # }
//! ```
//!
//! # Where things are
//!
//! * [`Pool`], [`PoolBuilder`], [`Connection`], [`Stats`]: the pool and its settings;
//!   [`Pool::retry_transaction`] for units of work that survive a suspend or restart;
//!   [`Pool::shutdown`] for a graceful stop; [`Pool::warm_up`] and [`Pool::is_ready`] for
//!   start-up; [`Pool::get_read`] and [`Pool::get_read_at`] for read replicas.
//! * [`Listener`]: `LISTEN`/`NOTIFY` on a dedicated connection that reconnects by itself.
//! * `integrations` (features `axum`, `actix-web`): `Connection` and `ReadConnection` as
//!   extractors, and `HttpError`, which makes errors into 503-with-`Retry-After` or 500
//!   responses.
//! * [`credentials`]: the [`CredentialProvider`](credentials::CredentialProvider) trait and the
//!   [`TokenCache`] that decides when to mint.
//! * [`retry`]: which connection errors are retried, and the backoff schedule.
//! * [`SslMode`]: what each `sslmode` means here; [`ChannelBinding`]: SCRAM bound to the TLS
//!   session; [`SslNegotiation`]: TLS from the first byte; [`resolve`]: choosing the TCP
//!   address yourself.
//! * [`databricks`]: the workspace client, the Lakebase credential provider, and the branch
//!   API; [`branch`]: a branch per CI run ([`EphemeralBranch`](branch::EphemeralBranch)).
//! * [`users`]: connections as the signed-in user of a Databricks App
//!   ([`UserPools`](users::UserPools)), and the `UserConnection` extractor in `integrations`.
//! * `PoolBuilder::meter`, `pool_name` and `tracer` (feature `opentelemetry`): the pool's
//!   metrics with OpenTelemetry's database-client semantic conventions, and spans; the README
//!   lists every metric.
//! * [`drivers`]: bb8 and diesel-async over the pool's [`Connector`] (features `bb8`,
//!   `diesel-async`; sqlx and SeaORM through `sqlx-0_8` or `sqlx-0_9`).
//! * [`defaults`]: every default value with the reason for it.
//! * Tests and demos: the companion crate `lakebase-pool-testing`, a dev-dependency, has a
//!   throwaway local PostgreSQL, a mock workspace and a Lakebase emulator (`LocalLakebase`
//!   starts all three), and the `lakebase-emulator` program.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `hickory` | yes | [`resolve::HickoryResolver`](crate::resolve) |
//! | `native-roots` | no | trust the operating system's certificate store too |
//! | `axum` | no | `Connection` as an Axum extractor; `integrations::HttpError` as a response |
//! | `actix-web` | no | `Connection` as an Actix Web extractor; `integrations::HttpError` as a response error |
//! | `bb8` | no | [`drivers::bb8`]: a bb8 connection manager of `tokio_postgres` clients opened the pool's way |
//! | `diesel-async` | no | [`drivers::diesel_async`]: diesel-async's `AsyncPgConnection`, in its deadpool or bb8 pool |
//! | `sqlx-0_8` | no | `drivers::sqlx_0_8`: a `sqlx::PgPool` (sqlx 0.8, SeaORM 1) whose connections log in the pool's way |
//! | `sqlx-0_9` | no | `drivers::sqlx_0_9`: the same for sqlx 0.9 (SeaORM 2; Rust 1.94) |
//! | `serde` | no | `PoolSettings`: the pool's settings as data for the `config` crate, durations as `"45m"` |
//! | `opentelemetry` | no | `PoolBuilder::meter`, `pool_name` and `tracer`: metrics with the database-client semantic conventions, and spans (see the README for every metric) |
//!
//! # Security
//!
//! Tokens and passwords are held as [`Secret`], which never prints its text. No error, `Debug`
//! output or tracing field contains one. Every connection but one to a loopback host uses TLS
//! with the certificate chain and host name verified, whatever `sslmode` says short of
//! `verify-ca`; see [`SslMode`] for each mode and why `require` is stricter than in libpq.
//! SCRAM logins over TLS are bound to the session whenever the server offers it
//! ([`ChannelBinding`]).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, rustdoc::broken_intra_doc_links)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unused_results,
    unused_qualifications
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod activity;
mod backoff;
pub mod branch;
mod config;
mod connect;
mod connector;
pub mod credentials;
pub mod databricks;
pub mod defaults;
pub mod drivers;
mod endpoint;
mod error;
mod files;
#[cfg(any(feature = "axum", feature = "actix-web"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "axum", feature = "actix-web"))))]
pub mod integrations;
mod listener;
mod metrics;
mod pool;
pub mod resolve;
pub mod retry;
mod secret;
mod session;
mod target;
mod telemetry;
mod tls;
pub mod users;

pub use deadpool_postgres;
pub use tokio_postgres;

pub use crate::config::Environment;
pub use crate::connector::{Connector, Session, SessionDriver};
pub use crate::credentials::cache::{TokenCache, TokenStats};
pub use crate::credentials::policy::CachePolicy;
pub use crate::endpoint::EndpointName;
pub use crate::error::{
    BoxError, BoxFuture, Error, RequestProblem, SharedError, StatementTimedOut, UserProblem,
};
pub use crate::listener::{Listener, ListenerEvent};
pub use crate::pool::{
    CancelHandle, Connection, Dangerous, Pool, PoolBuilder, ReadFallback, ReplicaStats,
    ShutdownReport, Stats, TransactionHandle,
};
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use crate::pool::{PoolSettings, RetrySettings, TokenSettings};
pub use crate::retry::policy::RetryPolicy;
pub use crate::secret::Secret;
pub use crate::tls::{ChannelBinding, SslMode, SslNegotiation};

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
