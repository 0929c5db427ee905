//! Local branches: a branch is a copy of its source's database (`CREATE DATABASE ...
//! TEMPLATE`), served by an emulator endpoint of its own that maps the database name; the
//! mock workspace's branch API and `LocalLakebase::branch` both make them this way.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::emulator::EmulatorHandle;
use super::workspace::{BranchEvent, BranchHook};
use super::{HarnessError, LocalPostgres};
use crate::LAKEBASE_DATABASE;
use lakebase_pool::{Environment, Error, PoolBuilder};

/// Makes branches real on one `LocalPostgres` behind one emulator.
#[derive(Clone)]
pub(crate) struct Branching {
    postgres: LocalPostgres,
    emulator: EmulatorHandle,
    /// Branch name to the database that holds its copy; branches not in it (the project's
    /// first) use `databricks_postgres` itself.
    databases: Arc<Mutex<HashMap<String, String>>>,
}

impl Branching {
    pub(crate) fn new(postgres: LocalPostgres, emulator: EmulatorHandle) -> Self {
        Branching {
            postgres,
            emulator,
            databases: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn databases(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.databases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn database_of(&self, branch: &str) -> String {
        self.databases()
            .get(branch)
            .cloned()
            .unwrap_or_else(|| LAKEBASE_DATABASE.to_owned())
    }

    /// Copies `source`'s database for `branch` and serves it at `endpoint`; the host.
    pub(crate) async fn create(
        &self,
        branch: &str,
        source: &str,
        endpoint: &str,
    ) -> Result<String, HarnessError> {
        // Unique per copy: a branch of the same name made again after a delete gets a new
        // database while the old one may still be being dropped.
        let database = format!(
            "{LAKEBASE_DATABASE}_{:08x}_{:08x}",
            fnv(branch) as u32,
            fastrand::u32(..)
        );
        self.postgres
            .copy_database(&self.database_of(source), &database)
            .await?;
        let _ = self.databases().insert(branch.to_owned(), database);
        Ok(self.serve(branch, endpoint))
    }

    /// Serves `branch`'s database at `endpoint` (under a host label unique to it: ids such
    /// as `primary` repeat across branches); the host.
    pub(crate) fn serve(&self, branch: &str, endpoint: &str) -> String {
        let id = endpoint.rsplit('/').next().unwrap_or("endpoint");
        let label = format!("{id}-{:08x}", fnv(endpoint) as u32);
        self.emulator.add_branch_endpoint(
            endpoint,
            &label,
            LAKEBASE_DATABASE,
            &self.database_of(branch),
        );
        self.emulator.host_of(endpoint)
    }

    /// Stops serving `endpoints` and drops `branch`'s database.
    pub(crate) async fn delete(
        &self,
        branch: &str,
        endpoints: &[String],
    ) -> Result<(), HarnessError> {
        for endpoint in endpoints {
            self.emulator.remove_endpoint(endpoint);
        }
        let database = self.databases().remove(branch);
        if let Some(database) = database {
            self.postgres.drop_database(&database).await?;
        }
        Ok(())
    }

    /// The mock workspace's branch API, made real by this.
    pub(crate) fn hook(&self) -> BranchHook {
        let branching = self.clone();
        Arc::new(move |event| {
            let branching = branching.clone();
            Box::pin(async move {
                let result = match event {
                    BranchEvent::Created {
                        branch,
                        source,
                        endpoint,
                    } => branching
                        .create(&branch, &source, &endpoint)
                        .await
                        .map(Some),
                    BranchEvent::EndpointAdded { branch, endpoint } => {
                        Ok(Some(branching.serve(&branch, &endpoint)))
                    }
                    BranchEvent::Deleted { branch, endpoints } => {
                        branching.delete(&branch, &endpoints).await.map(|()| None)
                    }
                };
                result.map_err(|error| error.to_string())
            })
        })
    }
}

/// FNV-1a: a short, stable name for a branch's database and host label.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A branch of a [`LocalLakebase`](super::LocalLakebase)'s database, from
/// [`LocalLakebase::branch`](super::LocalLakebase::branch): a copy of it, with an endpoint of
/// its own (host routed by SNI, tokens minted for it, scale-to-zero like any endpoint).
/// Dropped with the handle: the endpoint at once, the copy in the background.
pub struct LocalBranch {
    branching: Branching,
    workspace_url: String,
    ca_pem: String,
    resolver: lakebase_pool::resolve::StaticResolver,
    port: u16,
    name: String,
    endpoint: String,
}

impl fmt::Debug for LocalBranch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBranch")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl LocalBranch {
    pub(crate) fn new(
        branching: Branching,
        lakebase: &super::LocalLakebase,
        name: String,
        endpoint: String,
    ) -> Self {
        LocalBranch {
            branching,
            workspace_url: lakebase.workspace().url(),
            ca_pem: lakebase.emulator().ca_cert_pem().to_owned(),
            resolver: lakebase.emulator().resolver(),
            port: lakebase.emulator().port(),
            name,
            endpoint,
        }
    }

    /// `projects/local/branches/<name>`.
    ///
    /// ```no_run
    /// # async fn demo(branch: lakebase_pool_testing::LocalBranch) {
    /// assert!(branch.name().starts_with("projects/local/branches/"));
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The branch's endpoint, `projects/local/branches/<name>/endpoints/primary`.
    ///
    /// ```no_run
    /// # async fn demo(branch: lakebase_pool_testing::LocalBranch) {
    /// assert!(branch.endpoint().ends_with("/endpoints/primary"));
    /// # }
    /// ```
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A pool builder for the branch, configured as
    /// [`LocalLakebase::pool_builder`](super::LocalLakebase::pool_builder) is for the main
    /// endpoint.
    ///
    /// # Errors
    ///
    /// Those of [`PoolBuilder::from_environment`]; none with this environment.
    ///
    /// ```no_run
    /// # async fn demo(branch: lakebase_pool_testing::LocalBranch) -> Result<(), lakebase_pool::Error> {
    /// let pool = branch.pool_builder()?.build()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool_builder(&self) -> Result<PoolBuilder, Error> {
        let env = Environment::from_vars([
            ("DATABRICKS_HOST", self.workspace_url.clone()),
            ("DATABRICKS_TOKEN", super::LocalLakebase::PAT.to_owned()),
            ("LAKEBASE_ENDPOINT", self.endpoint.clone()),
            ("PGPORT", self.port.to_string()),
        ]);
        Ok(PoolBuilder::from_environment(&env)?
            .resolver(self.resolver.clone())
            .root_certificates_pem(self.ca_pem.as_str()))
    }
}

impl Drop for LocalBranch {
    fn drop(&mut self) {
        let branching = self.branching.clone();
        let (name, endpoints) = (self.name.clone(), vec![self.endpoint.clone()]);
        for endpoint in &endpoints {
            branching.emulator.remove_endpoint(endpoint);
        }
        // Dropping the copy needs the server; without a runtime it goes with the cluster.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(async move {
                let _ = branching.delete(&name, &endpoints).await;
            }));
        }
    }
}
