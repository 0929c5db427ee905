//! The Databricks workspace: authentication and the Lakebase API.
//!
//! A [`Workspace`] authenticates the way the official SDKs do (personal access token, OAuth
//! machine-to-machine with token-endpoint discovery, `~/.databrickscfg` profiles, the
//! Databricks CLI, or a token source of your own) and offers the Lakebase calls: mint a
//! database credential, look up and list endpoints, and who the caller is.
//! [`LakebaseCredentials`] turns it into a [`CredentialProvider`](crate::credentials::CredentialProvider)
//! for the pool.
//!
//! ```no_run
//! use lakebase_pool::Pool;
//! use lakebase_pool::databricks::Workspace;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Workspace from DATABRICKS_* (or ~/.databrickscfg); host and user discovered.
//! let pool = Pool::builder()
//!     .workspace(Workspace::from_env()?)
//!     .lakebase_endpoint("projects/shop/branches/production/endpoints/ep-primary")
//!     .build()?;
//! let conn = pool.get().await?;
//! # let _ = conn;
//! # Ok(())
//! # }
//! ```
//!
//! HTTP details (timeouts, retries, size caps) are documented on [`WorkspaceBuilder`].

pub(crate) mod answers;
mod api;
mod auth;
mod branches;
mod config_file;
mod discovery;
mod host;
pub(crate) mod http;
mod provider;
mod settings;
pub(crate) mod time;
mod workspace;

pub use self::api::{CredentialRequest, CurrentUser, DatabaseCredential, Endpoint, EndpointState};
pub use self::branches::{
    Branch, BranchSpec, BranchState, EndpointType, Expiry, MAX_BRANCH_TTL, Operation, Project,
};
pub(crate) use self::discovery::{EndpointHost, HostKind, LakebaseDiscovery, endpoint_host};
pub use self::provider::LakebaseCredentials;
pub(crate) use self::time::format_rfc3339;
pub(crate) use self::workspace::Caller;
pub use self::workspace::{Workspace, WorkspaceBuilder};
pub use crate::error::{AuthMethod, WorkspaceError};
