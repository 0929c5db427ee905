//! Test support (feature `testing`): a throwaway local PostgreSQL, a provider that rotates a
//! role's real password, and a mock Databricks workspace, for this crate's tests and for its
//! users' tests and demos.
//!
//! Nothing here needs Docker or set-up by hand: [`LocalPostgres::start`] creates a cluster in a
//! temporary directory, on a free loopback port, and removes it when dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use lakebase_pool::testing::LocalPostgres;
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

mod apps;
mod branching;
mod emulator;
mod fault_proxy;
mod lakebase;
mod postgres;
mod rotating;
mod server_thread;
mod tls;
mod workspace;

pub use self::apps::apps_proxy_headers;
pub use self::branching::LocalBranch;
pub use self::emulator::{ComputeState, LakebaseEmulator};
pub use self::fault_proxy::{FaultProxy, NetworkFault};
pub use self::lakebase::LocalLakebase;
pub use self::postgres::{HarnessError, LocalPostgres, StopMode};
pub use self::rotating::RotatingPassword;
pub use self::tls::{IssuedCertificate, TestCa, crypto_provider};
pub use self::workspace::{
    Fault, MintedToken, MockDiscovery, MockWorkspace, RecordedRequest, sequential_round_trips,
};
