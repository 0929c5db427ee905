//! Local stand-ins for Databricks Lakebase, for the tests and demos of services built on
//! [`lakebase_pool`]: a throwaway PostgreSQL, a provider that rotates a role's real password, a
//! mock Databricks workspace, and a Lakebase emulator in front of PostgreSQL (TLS, SNI routing,
//! tokens checked at login, scale-to-zero, the real proxy's wake-up errors).
//!
//! Use it as a dev-dependency, beside `lakebase-pool` as a dependency, so none of it reaches an
//! application's production build:
//!
//! ```toml
//! [dependencies]
//! lakebase-pool = "0.2"
//!
//! [dev-dependencies]
//! lakebase-pool-testing = "0.2"
//! ```
//!
//! The `lakebase-emulator` program of this crate runs the same stand-ins for any client, in any
//! language (`cargo run -p lakebase-pool-testing --bin lakebase-emulator`).
//!
//! Nothing here needs Docker or set-up by hand: [`LocalPostgres::start`] creates a cluster in a
//! temporary directory, on a free loopback port, and removes it when dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use lakebase_pool_testing::LocalPostgres;
//! use lakebase_pool::Secret;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pg = LocalPostgres::start()?;
//! pg.create_role("app", &Secret::new("initial")).await?;
//! // Every mint sets a new random password on the role, so Postgres checks the token.
//! let tokens = pg.rotating_password("app", Duration::from_secs(3600));
//! let pool = pg.pool_builder("app").credentials(tokens.clone()).build()?;
//! pool.get().await?.simple_query("SELECT 1").await?;
//! assert_eq!(tokens.mint_count(), 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, rustdoc::broken_intra_doc_links)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unused_results,
    unused_qualifications
)]

mod api_formats;
mod apps;
mod branching;
mod emulator;
mod fault_proxy;
mod ha;
mod lakebase;
mod postgres;
mod rotating;
mod server_thread;
mod tls;
mod workspace;

/// The database a new Lakebase project starts with.
const LAKEBASE_DATABASE: &str = "databricks_postgres";

pub use self::apps::apps_proxy_headers;
pub use self::branching::LocalBranch;
pub use self::emulator::{ComputeState, LakebaseEmulator};
pub use self::fault_proxy::{FaultProxy, NetworkFault};
pub use self::ha::{Failover, HaEndpoint};
pub use self::lakebase::LocalLakebase;
pub use self::postgres::{HarnessError, LocalPostgres, StopMode};
pub use self::rotating::RotatingPassword;
pub use self::tls::{IssuedCertificate, TestCa, crypto_provider};
pub use self::workspace::{
    Fault, MintedToken, MockDiscovery, MockWorkspace, RecordedRequest, sequential_round_trips,
};
