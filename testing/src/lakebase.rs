//! A complete local Lakebase in one call: Postgres, mock workspace and emulator.

use std::fmt;

use super::branching::{Branching, LocalBranch};
use super::{HaEndpoint, HarnessError, LakebaseEmulator, LocalPostgres, MockWorkspace};
use lakebase_pool::{BoxError, Environment, Error, PoolBuilder, Secret};

/// A throwaway PostgreSQL, a mock Databricks workspace and the Lakebase emulator, wired
/// together like a Databricks App's environment: one endpoint, one user, one personal access
/// token. Examples and tests get the whole path a real deployment takes (token minted over
/// HTTP, host and user discovered, TLS verified with SNI routing, token checked at login,
/// scale-to-zero) with one call.
///
/// Everything stops and is removed when it is dropped (the emulator first).
///
/// ```no_run
/// use lakebase_pool_testing::LocalLakebase;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let lakebase = LocalLakebase::start().await?;
/// let pool = lakebase.pool_builder()?.build()?;
/// pool.get().await?.simple_query("SELECT 1").await?;
///
/// lakebase.suspend(); // as scale-to-zero would; the next checkout wakes the compute
/// pool.get().await?.simple_query("SELECT 1").await?;
/// # Ok(())
/// # }
/// ```
pub struct LocalLakebase {
    // Field order is drop order: the emulator before its upstream.
    emulator: LakebaseEmulator,
    workspace: MockWorkspace,
    /// Hot standbys behind the read-only endpoints.
    replicas: Vec<LocalPostgres>,
    /// The endpoint's primary and secondary, when started with high availability.
    ha: Option<HaEndpoint>,
    branching: Branching,
    postgres: LocalPostgres,
}

impl LocalLakebase {
    /// The endpoint the emulator serves.
    pub const ENDPOINT: &'static str = "projects/local/branches/main/endpoints/ep-local";
    /// The workspace user, and the Postgres role the tokens are for.
    pub const USER: &'static str = "developer@example.com";
    /// The personal access token the mock workspace accepts (a local, made-up value).
    pub const PAT: &'static str = "dapi-local-development";

    /// Starts the three servers and creates the user's role and the `databricks_postgres`
    /// database it owns.
    ///
    /// # Errors
    ///
    /// When Postgres cannot start (binaries missing: the error says how to install them), a
    /// port cannot be bound, or the role cannot be created.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// let lakebase = lakebase_pool_testing::LocalLakebase::start().await?;
    /// # let _ = lakebase;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with_replicas(0).await
    }

    /// Like [`start`](Self::start), plus `replicas` read-only endpoints on the same branch
    /// ([`replica_endpoint`](Self::replica_endpoint)), each served by a hot standby of the
    /// server ([`LocalPostgres::start_standby`]) with real replication lag.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start), and when a standby cannot be copied or started.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// let lakebase = lakebase_pool_testing::LocalLakebase::start_with_replicas(2).await?;
    /// assert_eq!(lakebase.replica_endpoint(1), "projects/local/branches/main/endpoints/ep-local-replica-2");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_with_replicas(replicas: usize) -> Result<Self, HarnessError> {
        Self::start_inner(replicas, false).await
    }

    /// Like [`start`](Self::start), with the endpoint run with high availability: a
    /// synchronous secondary behind its read-only host, and a failover on demand; see
    /// [`ha`](Self::ha) and [`HaEndpoint`].
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start), and when the secondary cannot be started.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let lakebase = lakebase_pool_testing::LocalLakebase::start_ha().await?;
    /// let pool = lakebase.pool_builder()?.build()?;
    /// lakebase.ha().unwrap().fail_over().await?;
    /// pool.get().await?.simple_query("SELECT 1").await?; // the new primary
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_ha() -> Result<Self, HarnessError> {
        Self::start_inner(0, true).await
    }

    /// The endpoint's servers and its failover, when started with
    /// [`start_ha`](Self::start_ha).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// let lakebase = lakebase_pool_testing::LocalLakebase::start_ha().await?;
    /// assert!(lakebase.ha().is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn ha(&self) -> Option<&HaEndpoint> {
        self.ha.as_ref()
    }

    async fn start_inner(replicas: usize, ha: bool) -> Result<Self, HarnessError> {
        let postgres = LocalPostgres::start()?;
        // Never used for a login: the emulator checks tokens and logs in upstream itself.
        postgres
            .create_role(Self::USER, &Secret::new("unused-local-password"))
            .await?;
        postgres
            .create_database(crate::LAKEBASE_DATABASE, Self::USER)
            .await?;
        let workspace = MockWorkspace::start().map_err(|source| HarnessError::Io {
            action: "start the mock workspace",
            source,
        })?;
        workspace.add_pat(Self::PAT, Self::USER);
        let emulator = LakebaseEmulator::start(&postgres, &workspace)?;
        let ha = if ha {
            Some(emulator.add_ha_endpoint(Self::ENDPOINT, &postgres).await?)
        } else {
            emulator.add_endpoint(Self::ENDPOINT);
            None
        };
        let replicas = (0..replicas)
            .map(|i| {
                let standby = postgres.start_standby()?;
                emulator.add_read_only_endpoint(&Self::replica_endpoint_name(i), &standby);
                Ok(standby)
            })
            .collect::<Result<Vec<_>, HarnessError>>()?;
        // The workspace's branch API makes real branches: database copies behind endpoints.
        let branching = Branching::new(postgres.clone(), emulator.handle());
        workspace.handle().set_branch_hook(branching.hook());
        Ok(LocalLakebase {
            emulator,
            workspace,
            replicas,
            ha,
            branching,
            postgres,
        })
    }

    /// For demos and examples: a pool builder for the database the environment names
    /// (`LAKEBASE_ENDPOINT` or `PGHOST` set: read as [`PoolBuilder::from_environment`] does),
    /// or else for a local Lakebase started here. The local one is returned too: keep it alive
    /// for as long as the pool is used.
    ///
    /// # Errors
    ///
    /// A malformed environment, or a local Lakebase that cannot start.
    ///
    /// ```no_run
    /// use lakebase_pool::Environment;
    /// use lakebase_pool_testing::LocalLakebase;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let (builder, _local) = LocalLakebase::unless_configured(&Environment::from_process()).await?;
    /// let pool = builder.build()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unless_configured(
        env: &Environment,
    ) -> Result<(PoolBuilder, Option<LocalLakebase>), BoxError> {
        if env.get("LAKEBASE_ENDPOINT").is_some() || env.get("PGHOST").is_some() {
            return Ok((PoolBuilder::from_environment(env)?, None));
        }
        tracing::info!(
            "no LAKEBASE_ENDPOINT or PGHOST set: starting a local PostgreSQL, a mock workspace \
             and the Lakebase emulator"
        );
        let local = LocalLakebase::start().await?;
        Ok((local.pool_builder()?, Some(local)))
    }

    /// The environment a Databricks App would have: `DATABRICKS_HOST`, `DATABRICKS_TOKEN`,
    /// `LAKEBASE_ENDPOINT`, and `PGPORT` (the emulator's port; Lakebase listens on 5432).
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) {
    /// let env = lakebase.environment();
    /// assert!(env.get("DATABRICKS_HOST").is_some());
    /// # }
    /// ```
    pub fn environment(&self) -> Environment {
        Environment::from_vars([
            ("DATABRICKS_HOST", self.workspace.url()),
            ("DATABRICKS_TOKEN", Self::PAT.to_owned()),
            ("LAKEBASE_ENDPOINT", Self::ENDPOINT.to_owned()),
            ("PGPORT", self.emulator.port().to_string()),
        ])
    }

    /// A pool builder configured from [`environment`](Self::environment), exactly as
    /// [`PoolBuilder::from_environment`] reads a real one, plus the two things only a local
    /// setup needs: the resolver hook that maps the endpoint's host name (which resolves
    /// nowhere) to the emulator, and the emulator's CA as a trusted root.
    ///
    /// # Errors
    ///
    /// Those of [`PoolBuilder::from_environment`]; none with this environment.
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase.pool_builder()?.max_size(4).build()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool_builder(&self) -> Result<PoolBuilder, Error> {
        Ok(PoolBuilder::from_environment(&self.environment())?
            .resolver(self.emulator.resolver())
            .root_certificates_pem(self.emulator.ca_cert_pem()))
    }

    /// Suspends the endpoint's compute, as scale-to-zero does: open sessions end with
    /// `57P01`, and the next connection wakes it.
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) {
    /// lakebase.suspend();
    /// # }
    /// ```
    pub fn suspend(&self) {
        self.emulator.suspend(Self::ENDPOINT);
    }

    /// The emulator, for faults: wake delays, refusals, disabling the endpoint.
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) {
    /// lakebase.emulator().set_wake_delay(std::time::Duration::from_millis(300));
    /// # }
    /// ```
    pub fn emulator(&self) -> &LakebaseEmulator {
        &self.emulator
    }

    /// The mock workspace, for faults and request counts.
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) {
    /// println!("workspace at {}", lakebase.workspace().url());
    /// # }
    /// ```
    pub fn workspace(&self) -> &MockWorkspace {
        &self.workspace
    }

    /// The PostgreSQL server behind the emulator: stop and resume it to simulate an outage.
    /// With high availability it is the first primary (branches are copied from it); after a
    /// failover, the endpoint's server is [`ha`](Self::ha)`().primary()`.
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) -> Result<(), lakebase_pool_testing::HarnessError> {
    /// lakebase.postgres().stop(lakebase_pool_testing::StopMode::Fast)?;
    /// lakebase.postgres().resume()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn postgres(&self) -> &LocalPostgres {
        &self.postgres
    }

    /// A branch of the database (`projects/local/branches/<name>`): a copy of it, made in
    /// milliseconds (`CREATE DATABASE ... TEMPLATE`), with an endpoint of its own. Give each
    /// test of a suite its own branch of a seeded database, and the tests cannot see each
    /// other's writes. Idle sessions on the database are ended to copy it (PostgreSQL
    /// copies only a database nobody uses); pools replace them.
    ///
    /// The same branches can be made through the workspace's branch API
    /// ([`Workspace::create_branch`](lakebase_pool::databricks::Workspace::create_branch), or
    /// [`EphemeralBranch`](lakebase_pool::branch::EphemeralBranch)), which this mock serves.
    ///
    /// # Errors
    ///
    /// [`HarnessError::InvalidName`] for a name that is not a valid branch id;
    /// [`HarnessError::Sql`] when the copy fails (a session on the database stayed busy).
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) -> Result<(), Box<dyn std::error::Error>> {
    /// let branch = lakebase.branch("test-signup").await?;
    /// let pool = branch.pool_builder()?.build()?;
    /// pool.get().await?.batch_execute("INSERT INTO users (name) VALUES ('a')").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn branch(&self, name: &str) -> Result<LocalBranch, HarnessError> {
        let branch = format!("projects/local/branches/{name}");
        let endpoint = format!("{branch}/endpoints/primary");
        // The crate's own check of ids, with its message naming the rule.
        let _ = lakebase_pool::EndpointName::parse(&endpoint)
            .map_err(|error| HarnessError::InvalidName(error.to_string()))?;
        let main = Self::ENDPOINT
            .rsplit_once("/endpoints/")
            .map_or(Self::ENDPOINT, |(branch, _)| branch);
        let _ = self.branching.create(&branch, main, &endpoint).await?;
        Ok(LocalBranch::new(
            self.branching.clone(),
            self,
            branch,
            endpoint,
        ))
    }

    /// Adds a service principal, as a Databricks App has: the mock workspace accepts its
    /// OAuth client credentials, and a Postgres role named after its client id exists (the
    /// role tokens minted for it log in as). Grant it what it needs on the database.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`] when the role cannot be created (it exists).
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) -> Result<(), lakebase_pool_testing::HarnessError> {
    /// lakebase.add_service_principal("app-client-id", "app-client-secret").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn add_service_principal(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<(), HarnessError> {
        self.workspace
            .add_service_principal(client_id, client_secret);
        // Never used for a login: tokens are.
        self.postgres
            .create_role(client_id, &Secret::new("unused-local-password"))
            .await
    }

    /// Adds signed-in users of a Databricks App with user authorization: a Postgres role
    /// named after each email (no password: their tokens are checked at login), and for each
    /// the OAuth token the Apps proxy would forward
    /// ([`MockWorkspace::issue_user_token`]), in order. Grant the roles what they need.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`] when a role cannot be created (it exists).
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) -> Result<(), lakebase_pool_testing::HarnessError> {
    /// let tokens = lakebase.add_users(&["alice@example.com", "bob@example.com"]).await?;
    /// assert_eq!(tokens.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn add_users(&self, emails: &[&str]) -> Result<Vec<Secret>, HarnessError> {
        self.postgres.create_login_roles(emails).await?;
        Ok(emails
            .iter()
            .map(|email| self.workspace.issue_user_token(email))
            .collect())
    }

    /// The name of the `index`-th read-only endpoint (from 0):
    /// `projects/local/branches/main/endpoints/ep-local-replica-<index + 1>`.
    ///
    /// ```
    /// use lakebase_pool_testing::LocalLakebase;
    /// # fn demo(lakebase: LocalLakebase) {
    /// assert!(lakebase.replica_endpoint(0).ends_with("/ep-local-replica-1"));
    /// # }
    /// ```
    pub fn replica_endpoint(&self, index: usize) -> String {
        Self::replica_endpoint_name(index)
    }

    fn replica_endpoint_name(index: usize) -> String {
        format!("{}-replica-{}", Self::ENDPOINT, index + 1)
    }

    /// The standby behind the `index`-th read-only endpoint, to pause its replay, stop and
    /// resume it; `None` past the replicas started
    /// ([`start_with_replicas`](Self::start_with_replicas)).
    ///
    /// ```no_run
    /// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase) -> Result<(), lakebase_pool_testing::HarnessError> {
    /// if let Some(standby) = lakebase.replica(0) {
    ///     standby.pause_replay().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn replica(&self, index: usize) -> Option<&LocalPostgres> {
        self.replicas.get(index)
    }
}

impl Drop for LocalLakebase {
    fn drop(&mut self) {
        // The workspace's branch hook holds the emulator and the server, and the emulator
        // holds the workspace: without this, none of the three would ever be freed, and the
        // server would outlive the test.
        self.workspace.handle().clear_branch_hook();
    }
}

impl fmt::Debug for LocalLakebase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLakebase")
            .field("endpoint", &Self::ENDPOINT)
            .field("workspace", &self.workspace.url())
            .field("emulator_port", &self.emulator.port())
            .finish_non_exhaustive()
    }
}
