//! `PoolBuilder`: every setting of a pool, checked as a whole in `build()`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed;
use tokio_postgres::config::Host;

use super::lifecycle::{Lifecycle, Manager, spawn_housekeeper};
use super::stats::Counters;
use super::{Pool, PoolInner};
use crate::connect::{Connector, Discovery};
use crate::credentials::{CachePolicy, CredentialProvider, StaticPassword, TokenCache};
use crate::databricks::{LakebaseCredentials, Workspace};
use crate::defaults;
use crate::{EndpointName, Environment, Error, RetryPolicy, Secret};

/// Configures and builds a [`Pool`]. Start with [`Pool::builder`].
///
/// Connection settings (`host`, `port`, `user`, `dbname`, ...) follow libpq's meaning. The
/// password is never part of them: it comes from the credential provider, freshly for every
/// physical connection.
///
/// ```no_run
/// use std::time::Duration;
/// use lakebase_pool::Pool;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lakebase_pool::Error> {
/// let pool = Pool::builder()
///     .host("127.0.0.1")
///     .port(5432)
///     .user("app")
///     .dbname("app")
///     .password("local-dev-password")
///     .max_size(8)
///     .max_lifetime(Duration::from_secs(30 * 60))
///     .build()?;
/// # let _ = pool;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `.build()` is called"]
pub struct PoolBuilder {
    pg_config: tokio_postgres::Config,
    provider: Option<Box<dyn CredentialProvider>>,
    /// The endpoint, or the error from parsing it (returned by `build`).
    endpoint: Option<Result<EndpointName, Error>>,
    workspace: Option<Workspace>,
    cache_policy: CachePolicy,
    retry: RetryPolicy,
    max_size: usize,
    lifecycle: Lifecycle,
    wait_timeout: Duration,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            pg_config: tokio_postgres::Config::new(),
            provider: None,
            endpoint: None,
            workspace: None,
            cache_policy: CachePolicy::default(),
            retry: RetryPolicy::default(),
            max_size: defaults::MAX_SIZE,
            lifecycle: Lifecycle {
                max_lifetime: defaults::MAX_LIFETIME,
                jitter: defaults::LIFETIME_JITTER,
                idle_timeout: defaults::IDLE_TIMEOUT,
                validate_after_idle: defaults::VALIDATE_AFTER_IDLE,
            },
            wait_timeout: defaults::WAIT_TIMEOUT,
        }
    }
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's `Config` redacts its password field; ours is never set there anyway.
        f.debug_struct("PoolBuilder")
            .field("pg_config", &self.pg_config)
            .field("has_credentials", &self.provider.is_some())
            .field("endpoint", &self.endpoint)
            .field("workspace", &self.workspace)
            .field("cache_policy", &self.cache_policy)
            .field("retry", &self.retry)
            .field("max_size", &self.max_size)
            .field("lifecycle", &self.lifecycle)
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

impl PoolBuilder {
    /// Settings from the process environment; see [`from_environment`](Self::from_environment).
    ///
    /// # Errors
    ///
    /// As for [`from_environment`](Self::from_environment).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_environment(&Environment::from_process())
    }

    /// Settings from environment variables, as Databricks Apps and twelve-factor deployments
    /// provide them; further builder calls can adjust them.
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `LAKEBASE_ENDPOINT` | the endpoint to connect to, `projects/../branches/../endpoints/..`; tokens are minted through the workspace (`DATABRICKS_*` variables, see [`WorkspaceBuilder`](crate::databricks::WorkspaceBuilder)) |
    /// | `PGPASSWORD` | without `LAKEBASE_ENDPOINT`: a fixed password |
    /// | `PGHOST` | server host (discovered from the endpoint when unset) |
    /// | `PGPORT` | server port, default 5432 |
    /// | `PGUSER` | role (with an endpoint, resolved from the workspace identity when unset) |
    /// | `PGDATABASE` | database, default `databricks_postgres` with an endpoint |
    /// | `PGAPPNAME`, else `DATABRICKS_APP_NAME` | `application_name` |
    /// | `PGCONNECT_TIMEOUT` | seconds per connection attempt |
    /// | `PGSSLMODE` | `disable`, `allow` or `prefer` (this version has no TLS, so modes that require it are refused) |
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEnv`] naming the variable that is missing or malformed and what it
    /// should look like; [`Error::WorkspaceConfig`] for workspace settings.
    ///
    /// ```
    /// use lakebase_pool::{Environment, Error, PoolBuilder};
    ///
    /// let env = Environment::from_vars([("PGHOST", "127.0.0.1"), ("PGPORT", "five")]);
    /// let err = PoolBuilder::from_environment(&env).unwrap_err();
    /// assert!(matches!(err, Error::InvalidEnv { var: "PGPORT", .. }));
    /// ```
    pub fn from_environment(env: &Environment) -> Result<Self, Error> {
        crate::config::pool_builder_from(env)
    }

    /// Starts from an existing tokio-postgres configuration (host, port, user, database,
    /// options, ...), replacing what was set so far. It must not contain a password; use
    /// [`password`](Self::password) or [`credentials`](Self::credentials).
    ///
    /// ```
    /// let config: tokio_postgres::Config = "host=127.0.0.1 user=app dbname=app".parse().unwrap();
    /// let builder = lakebase_pool::Pool::builder().pg_config(config);
    /// # let _ = builder;
    /// ```
    pub fn pg_config(mut self, config: tokio_postgres::Config) -> Self {
        self.pg_config = config;
        self
    }

    /// Server host name, IP address, or Unix socket directory (a path starting with `/`).
    /// Required, unless discovered from a [`lakebase_endpoint`](Self::lakebase_endpoint).
    ///
    /// ```
    /// let builder = lakebase_pool::Pool::builder().host("127.0.0.1");
    /// # let _ = builder;
    /// ```
    pub fn host(mut self, host: impl AsRef<str>) -> Self {
        let _ = self.pg_config.host(host.as_ref());
        self
    }

    /// Server port.
    ///
    /// Default: 5432.
    ///
    /// ```
    /// let builder = lakebase_pool::Pool::builder().port(5433);
    /// # let _ = builder;
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        let _ = self.pg_config.port(port);
        self
    }

    /// The Postgres role to log in as. Required, unless resolved for a
    /// [`lakebase_endpoint`](Self::lakebase_endpoint).
    ///
    /// ```
    /// let builder = lakebase_pool::Pool::builder().user("app");
    /// # let _ = builder;
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> Self {
        let _ = self.pg_config.user(user);
        self
    }

    /// The database to connect to.
    ///
    /// Default: `databricks_postgres` with a [`lakebase_endpoint`](Self::lakebase_endpoint),
    /// else the user name (as libpq does).
    ///
    /// ```
    /// let builder = lakebase_pool::Pool::builder().dbname("databricks_postgres");
    /// # let _ = builder;
    /// ```
    pub fn dbname(mut self, dbname: impl Into<String>) -> Self {
        let _ = self.pg_config.dbname(dbname);
        self
    }

    /// The `application_name` reported to the server (shown in `pg_stat_activity`).
    ///
    /// Default: none.
    ///
    /// ```
    /// let builder = lakebase_pool::Pool::builder().application_name("orders-api");
    /// # let _ = builder;
    /// ```
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        let _ = self.pg_config.application_name(name);
        self
    }

    /// Uses a fixed password (a [`StaticPassword`] provider). Replaces any provider set
    /// before.
    ///
    /// ```
    /// let builder = lakebase_pool::Pool::builder().password("postgres");
    /// # let _ = builder;
    /// ```
    pub fn password(self, password: impl Into<Secret>) -> Self {
        self.credentials(StaticPassword::new(password))
    }

    /// Where passwords come from: a provider asked (through the token cache) for the token
    /// of every new physical connection. Replaces any provider set before. Required, unless
    /// [`password`](Self::password) is used.
    ///
    /// ```
    /// use lakebase_pool::credentials::{from_fn, Credential};
    ///
    /// let builder = lakebase_pool::Pool::builder().credentials(from_fn(|| async {
    ///     Ok::<_, std::io::Error>(Credential::new("fetched"))
    /// }));
    /// # let _ = builder;
    /// ```
    pub fn credentials(mut self, provider: impl CredentialProvider) -> Self {
        self.provider = Some(Box::new(provider));
        self
    }

    /// Connect to a Lakebase endpoint, `projects/<project>/branches/<branch>/endpoints/<id>`.
    ///
    /// Unless set explicitly: tokens are minted for this endpoint through the
    /// [`workspace`](Self::workspace) (default: [`Workspace::from_env`]); the host is looked up
    /// with get-endpoint; the user is the service principal's client id with OAuth M2M, else
    /// the workspace user name; the database is `databricks_postgres`. Lookups happen at the
    /// first connect. A malformed name makes [`build`](Self::build) fail with
    /// [`Error::InvalidEndpointName`].
    ///
    /// ```no_run
    /// let builder = lakebase_pool::Pool::builder()
    ///     .lakebase_endpoint("projects/shop/branches/production/endpoints/ep-primary");
    /// # let _ = builder;
    /// ```
    pub fn lakebase_endpoint(mut self, endpoint: impl AsRef<str>) -> Self {
        self.endpoint = Some(EndpointName::parse(endpoint.as_ref()));
        self
    }

    /// The workspace that mints tokens and describes the endpoint, with
    /// [`lakebase_endpoint`](Self::lakebase_endpoint).
    ///
    /// Default: [`Workspace::from_env`] (read at `build`).
    ///
    /// ```no_run
    /// use lakebase_pool::databricks::Workspace;
    /// let builder = lakebase_pool::Pool::builder()
    ///     .workspace(Workspace::builder().host("my-workspace.cloud.databricks.com").build()?)
    ///     .lakebase_endpoint("projects/shop/branches/production/endpoints/ep-primary");
    /// # let _ = builder;
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn workspace(mut self, workspace: Workspace) -> Self {
        self.workspace = Some(workspace);
        self
    }

    /// When tokens are reused and refreshed.
    ///
    /// Default: [`CachePolicy::default()`] (reuse while >= 2 min left, refresh in the
    /// background once < 15 min left).
    ///
    /// ```
    /// let builder = lakebase_pool::Pool::builder().token_cache(lakebase_pool::CachePolicy::per_connect());
    /// # let _ = builder;
    /// ```
    pub fn token_cache(mut self, policy: CachePolicy) -> Self {
        self.cache_policy = policy;
        self
    }

    /// How opening a connection is retried after transient failures (cold starts, restarts).
    ///
    /// Default: [`RetryPolicy::default()`] (10 s per attempt, 100 ms to 4 s backoff with full
    /// jitter, 30 s deadline).
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = lakebase_pool::Pool::builder()
    ///     .retry(lakebase_pool::RetryPolicy::default().deadline(Duration::from_secs(60)));
    /// # let _ = builder;
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The most connections open at once, idle or in use.
    ///
    /// Default: 16.
    ///
    /// ```
    /// let builder = lakebase_pool::Pool::builder().max_size(32);
    /// # let _ = builder;
    /// ```
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// How long a connection is used before the pool replaces it. Each connection's lifetime
    /// is shortened by a random fraction (see [`lifetime_jitter`](Self::lifetime_jitter)).
    /// A connection in use is never interrupted: it is retired when it is next idle.
    /// `Duration::MAX` disables the limit.
    ///
    /// Default: 45 minutes.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = lakebase_pool::Pool::builder().max_lifetime(Duration::from_secs(30 * 60));
    /// # let _ = builder;
    /// ```
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.lifecycle.max_lifetime = max_lifetime;
        self
    }

    /// The largest fraction (0.0 to 0.5) by which a connection's max lifetime is shortened,
    /// chosen at random once per connection, so that connections opened together (at start-up
    /// or after an outage) are not all replaced at the same moment.
    ///
    /// Default: 0.05 (0-5 %).
    ///
    /// ```
    /// let builder = lakebase_pool::Pool::builder().lifetime_jitter(0.1);
    /// # let _ = builder;
    /// ```
    pub fn lifetime_jitter(mut self, fraction: f64) -> Self {
        self.lifecycle.jitter = fraction;
        self
    }

    /// How long a connection may sit idle before the pool closes it, so that a scale-to-zero
    /// compute can suspend. `Duration::MAX` disables it.
    ///
    /// Default: 10 minutes.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = lakebase_pool::Pool::builder().idle_timeout(Duration::from_secs(300));
    /// # let _ = builder;
    /// ```
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.lifecycle.idle_timeout = idle_timeout;
        self
    }

    /// A connection idle at least this long gets one empty round trip at checkout to prove it
    /// still works; a fresher one is only checked for having been closed. `Duration::ZERO`
    /// validates every checkout; `Duration::MAX` never sends a validation query.
    ///
    /// Default: 5 seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = lakebase_pool::Pool::builder().validate_after_idle(Duration::from_secs(1));
    /// # let _ = builder;
    /// ```
    pub fn validate_after_idle(mut self, idle: Duration) -> Self {
        self.lifecycle.validate_after_idle = idle;
        self
    }

    /// How long [`Pool::get`] waits for a free connection when all are in use, before
    /// failing with [`Error::PoolTimeout`]. `Duration::ZERO` fails at once.
    ///
    /// Default: 30 seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = lakebase_pool::Pool::builder().wait_timeout(Duration::from_secs(5));
    /// # let _ = builder;
    /// ```
    pub fn wait_timeout(mut self, wait_timeout: Duration) -> Self {
        self.wait_timeout = wait_timeout;
        self
    }

    /// Checks every setting and builds the pool. No connection is opened until the first
    /// [`Pool::get`].
    ///
    /// Must be called within a Tokio runtime: the pool starts a background task that closes
    /// idle connections past their lifetime (it ends when the pool is dropped or closed).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the setting at fault.
    pub fn build(self) -> Result<Pool, Error> {
        let mut pg_config = self.pg_config;
        let mut provider = self.provider;
        let discovery = match self.endpoint.transpose()? {
            None => None,
            Some(endpoint) => {
                let workspace = match self.workspace {
                    Some(workspace) => workspace,
                    None => Workspace::from_env()?,
                };
                if provider.is_none() {
                    let minted = LakebaseCredentials::new(workspace.clone(), endpoint.clone());
                    provider = Some(Box::new(minted));
                }
                if pg_config.get_dbname().is_none() {
                    let _ = pg_config.dbname(defaults::LAKEBASE_DATABASE);
                }
                Some(Discovery {
                    host: pg_config.get_hosts().is_empty(),
                    user: pg_config.get_user().is_none(),
                    workspace,
                    endpoint,
                })
            }
        };
        let provider = provider.ok_or_else(|| {
            Error::invalid(
                "credentials",
                "no password source; call `.password(..)`, `.credentials(..)` or \
                 `.lakebase_endpoint(..)`",
            )
        })?;
        self.cache_policy.validate()?;
        self.retry.validate()?;
        validate_lifecycle(&self.lifecycle)?;
        if self.max_size == 0 {
            return Err(Error::invalid("max_size", "must be at least 1"));
        }
        check_no_password(&pg_config)?;
        match &discovery {
            // What discovery fills in is checked when it has run.
            Some(_) => check_plaintext(&pg_config)?,
            None => check_target(&pg_config)?,
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid(
                "build",
                "must be called within a Tokio runtime (the pool runs a background task)",
            ));
        }
        let _ = pg_config.connect_timeout(self.retry.attempt_timeout());

        let counters = Arc::new(Counters::default());
        let tokens = TokenCache::labelled(provider, self.cache_policy.clone(), "database token");
        let connector = Connector::new(
            pg_config,
            discovery,
            tokens,
            self.retry.clone(),
            Arc::clone(&counters),
        );
        let interval = self.lifecycle.housekeeping_interval();
        let manager = Manager::new(connector, self.lifecycle, Arc::clone(&counters));
        // Opening a connection is already bounded by the retry deadline and the token mint
        // timeout (a forced refresh can add a second mint); this is deadpool's backstop.
        let create_bound = self
            .retry
            .total_deadline()
            .saturating_add(self.retry.attempt_timeout())
            .saturating_add(self.cache_policy.mint_timeout_value().saturating_mul(2));
        let pool = managed::Pool::builder(manager)
            .max_size(self.max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.wait_timeout))
            .create_timeout(Some(create_bound))
            .recycle_timeout(Some(defaults::VALIDATION_TIMEOUT.saturating_mul(2)))
            .build()
            .map_err(|e| Error::invalid("build", e.to_string()))?;
        let housekeeper = spawn_housekeeper(pool.weak(), interval);
        Ok(Pool {
            inner: Arc::new(PoolInner {
                pool,
                counters,
                housekeeper,
                wait_timeout: self.wait_timeout,
                create_bound,
            }),
        })
    }
}

fn validate_lifecycle(lifecycle: &Lifecycle) -> Result<(), Error> {
    if lifecycle.max_lifetime.is_zero() {
        return Err(Error::invalid(
            "max_lifetime",
            "must be greater than zero (use Duration::MAX for no limit)",
        ));
    }
    if !(0.0..=0.5).contains(&lifecycle.jitter) {
        return Err(Error::invalid(
            "lifetime_jitter",
            format!("{} is outside 0.0..=0.5", lifecycle.jitter),
        ));
    }
    if lifecycle.idle_timeout.is_zero() {
        return Err(Error::invalid(
            "idle_timeout",
            "must be greater than zero (use Duration::MAX to never close idle connections)",
        ));
    }
    Ok(())
}

fn check_no_password(config: &tokio_postgres::Config) -> Result<(), Error> {
    if config.get_password().is_some() {
        return Err(Error::invalid(
            "pg_config",
            "contains a password; the pool sets the password from its credential provider on \
             every connect, so pass it with `.password(..)` or `.credentials(..)` instead",
        ));
    }
    Ok(())
}

/// Checks that a configuration names a server and a user, and may be used in plain text.
pub(crate) fn check_target(config: &tokio_postgres::Config) -> Result<(), Error> {
    if config.get_hosts().is_empty() {
        return Err(Error::invalid(
            "host",
            "no host set; call `.host(..)` (or `.lakebase_endpoint(..)` to discover it)",
        ));
    }
    if config.get_user().is_none() {
        return Err(Error::invalid("user", "no user set; call `.user(..)`"));
    }
    check_plaintext(config)
}

/// Connections are plaintext in this version. A database token is a bearer secret, so it may
/// only travel over loopback or a Unix socket, never across a network.
fn check_plaintext(config: &tokio_postgres::Config) -> Result<(), Error> {
    for host in config.get_hosts() {
        if let Host::Tcp(name) = host
            && !is_loopback_name(name)
        {
            return Err(Error::invalid(
                "host",
                format!(
                    "`{name}` is not a loopback address; connections are not encrypted, so \
                     the pool only connects to loopback hosts or Unix sockets (a token must \
                     never cross the network in plain text)"
                ),
            ));
        }
    }
    if let Some(addr) = config.get_hostaddrs().iter().find(|a| !a.is_loopback()) {
        return Err(Error::invalid(
            "hostaddr",
            format!("`{addr}` is not a loopback address (connections are not encrypted)"),
        ));
    }
    Ok(())
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

/// `user@host:port/dbname`, as used in errors and tracing.
pub(crate) fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => String::from("?"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("?");
    let dbname = config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{dbname}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PoolBuilder {
        PoolBuilder::default()
            .host("127.0.0.1")
            .user("app")
            .password("pw")
    }

    fn setting_of(result: Result<Pool, Error>) -> &'static str {
        match result {
            Err(Error::InvalidConfig { setting, .. }) => setting,
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("built a pool from an invalid configuration"),
        }
    }

    #[tokio::test]
    async fn missing_or_invalid_settings_name_the_setting() {
        assert_eq!(
            setting_of(PoolBuilder::default().host("127.0.0.1").user("a").build()),
            "credentials"
        );
        assert_eq!(
            setting_of(PoolBuilder::default().user("a").password("p").build()),
            "host"
        );
        assert_eq!(
            setting_of(PoolBuilder::default().host("::1").password("p").build()),
            "user"
        );
        assert_eq!(setting_of(base().max_size(0).build()), "max_size");
        assert_eq!(
            setting_of(base().lifetime_jitter(0.9).build()),
            "lifetime_jitter"
        );
        assert_eq!(
            setting_of(base().lifetime_jitter(f64::NAN).build()),
            "lifetime_jitter"
        );
        assert_eq!(
            setting_of(base().max_lifetime(Duration::ZERO).build()),
            "max_lifetime"
        );
        assert_eq!(
            setting_of(base().idle_timeout(Duration::ZERO).build()),
            "idle_timeout"
        );
        let with_password: tokio_postgres::Config =
            "host=127.0.0.1 user=a password=x".parse().unwrap();
        assert_eq!(
            setting_of(base().pg_config(with_password).build()),
            "pg_config"
        );
    }

    #[tokio::test]
    async fn plaintext_to_a_non_loopback_host_is_refused() {
        assert_eq!(setting_of(base().host("db.example.com").build()), "host");
        assert_eq!(setting_of(base().host("10.0.0.5").build()), "host");
        for host in [
            "localhost",
            "127.0.0.1",
            "::1",
            "[::1]",
            "/var/run/postgresql",
        ] {
            assert!(base().host(host).build().is_ok(), "{host}");
        }
    }

    #[test]
    fn build_outside_a_runtime_is_an_error_not_a_panic() {
        assert_eq!(setting_of(base().build()), "build");
    }

    #[test]
    fn target_names_user_host_port_and_database() {
        let config: tokio_postgres::Config = "host=127.0.0.1 port=5433 user=app".parse().unwrap();
        assert_eq!(describe_target(&config), "app@127.0.0.1:5433/app");
    }
}
