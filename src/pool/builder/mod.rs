//! `PoolBuilder`: every setting of a pool, checked as a whole in `build()` (`build.rs`).

mod build;
#[cfg(feature = "serde")]
mod settings;

pub(crate) use self::build::PoolTemplate;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Pool;
use super::lifecycle::Lifecycle;
use super::replicas::{ReadFallback, ReplicaSettings, ReplicaSpec};
use crate::config::{self, PasswordSource};
use crate::credentials::{CachePolicy, CredentialProvider, StaticPassword};
use crate::databricks::{Workspace, WorkspaceBuilder};
use crate::defaults;
use crate::resolve::{Resolve, ResolverName};
use crate::target::TlsSettings;
use crate::telemetry::Telemetry;
use crate::tls::{self, ChannelBinding, SslMode, SslNegotiation};
use crate::{EndpointName, Environment, Error, RetryPolicy, Secret};

#[cfg(feature = "serde")]
pub use self::settings::{PoolSettings, RetrySettings, TokenSettings};

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
    /// Set by [`host`](Self::host), [`port`](Self::port) and [`hostaddr`](Self::hostaddr),
    /// and applied to `pg_config` once, at `build` (tokio-postgres's own setters append: they
    /// build multi-host lists).
    host: Option<String>,
    port: Option<u16>,
    hostaddr: Option<IpAddr>,
    /// Applied to `pg_config` at `build`, replacing its own setting.
    channel_binding: Option<ChannelBinding>,
    ssl_negotiation: Option<SslNegotiation>,
    provider: Option<Box<dyn CredentialProvider>>,
    /// The endpoint, or the error from parsing it (returned by `build`).
    endpoint: Option<Result<EndpointName, Error>>,
    workspace: Option<Workspace>,
    tls: TlsSettings,
    /// Extra CA certificates, read at `build` so that a bad file is a `build` error.
    roots: Vec<RootSource>,
    resolver: Option<Arc<dyn Resolve>>,
    cache_policy: CachePolicy,
    retry: RetryPolicy,
    max_size: usize,
    lifecycle: Lifecycle,
    wait_timeout: Duration,
    replicas: ReplicaSettings,
    /// The meter and tracer, from `meter` and `tracer` (feature `opentelemetry`).
    pub(super) telemetry: Telemetry,
    /// The `db.client.connection.pool.name` attribute, from `pool_name`.
    pub(super) pool_name: Option<String>,
    /// Sent at login as `-c statement_timeout=<ms>`, after the user's own options.
    statement_timeout: Option<Duration>,
    /// Read by `from_environment`: whether the process runs as a Databricks App.
    in_databricks_app: bool,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            pg_config: tokio_postgres::Config::new(),
            host: None,
            port: None,
            hostaddr: None,
            channel_binding: None,
            ssl_negotiation: None,
            provider: None,
            endpoint: None,
            workspace: None,
            tls: TlsSettings::default(),
            roots: Vec::new(),
            resolver: None,
            cache_policy: CachePolicy::default(),
            retry: RetryPolicy::default(),
            max_size: defaults::MAX_SIZE,
            lifecycle: Lifecycle {
                max_lifetime: defaults::MAX_LIFETIME,
                jitter: defaults::LIFETIME_JITTER,
                idle_timeout: defaults::IDLE_TIMEOUT,
                validate_after_idle: defaults::VALIDATE_AFTER_IDLE,
                reads_only: false,
            },
            wait_timeout: defaults::WAIT_TIMEOUT,
            replicas: ReplicaSettings::default(),
            telemetry: Telemetry::default(),
            statement_timeout: None,
            in_databricks_app: false,
            pool_name: None,
        }
    }
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's `Config` redacts its password field; ours is never set there anyway.
        f.debug_struct("PoolBuilder")
            .field("pg_config", &self.pg_config)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("hostaddr", &self.hostaddr)
            .field("channel_binding", &self.channel_binding)
            .field("ssl_negotiation", &self.ssl_negotiation)
            .field("has_credentials", &self.provider.is_some())
            .field("endpoint", &self.endpoint)
            .field("workspace", &self.workspace)
            .field("tls", &self.tls)
            .field("roots", &self.roots)
            .field("resolver", &self.resolver.as_ref().map(|_| ResolverName))
            .field("cache_policy", &self.cache_policy)
            .field("retry", &self.retry)
            .field("max_size", &self.max_size)
            .field("lifecycle", &self.lifecycle)
            .field("wait_timeout", &self.wait_timeout)
            .field("replicas", &self.replicas)
            .field("telemetry", &self.telemetry)
            .field("pool_name", &self.pool_name)
            .finish()
    }
}

impl PoolBuilder {
    /// Whether `from_environment` found the process running as a Databricks App.
    pub(crate) fn in_databricks_app(&self) -> bool {
        self.in_databricks_app
    }

    /// Settings from the process environment; see [`from_environment`](Self::from_environment).
    ///
    /// # Errors
    ///
    /// As for [`from_environment`](Self::from_environment).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::PoolBuilder::from_env()?.max_size(8).build()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
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
    /// | `PGAPPNAME`, else `DATABRICKS_APP_NAME` | `application_name`; `DATABRICKS_APP_NAME` also says the process runs as a Databricks App, where [`UserPools`](crate::users::UserPools) trust forwarded user headers by default |
    /// | `PGCONNECT_TIMEOUT` | seconds per connection attempt |
    /// | `PGSSLMODE` | see [`SslMode`]; every mode but `disable` verifies the certificate |
    /// | `PGCHANNELBINDING` | see [`ChannelBinding`]: `disable`, `prefer` (default), `require` |
    /// | `PGSSLNEGOTIATION` | see [`SslNegotiation`]: `postgres` (default), `direct` |
    /// | `PGHOSTADDR` | TCP address for the host; the host name is still used for TLS |
    /// | `PGSSLROOTCERT` | a PEM file of extra CA certificates to trust |
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEnv`] naming the variable that is missing or malformed and what it
    /// should look like; [`WorkspaceError::Config`](crate::databricks::WorkspaceError::Config) for workspace settings.
    ///
    /// ```
    /// use lakebase_pool::{Environment, Error, PoolBuilder};
    ///
    /// let env = Environment::from_vars([("PGHOST", "127.0.0.1"), ("PGPORT", "five")]);
    /// let err = PoolBuilder::from_environment(&env).unwrap_err();
    /// assert!(matches!(err, Error::InvalidEnv { var: "PGPORT", .. }));
    /// ```
    pub fn from_environment(env: &Environment) -> Result<Self, Error> {
        let settings = config::pool_settings(env)?;
        let mut builder = Pool::builder();
        builder.host = settings.host;
        builder.port = settings.port;
        builder.hostaddr = settings.hostaddr;
        builder.in_databricks_app = settings.in_databricks_app;
        builder.replicas.read_only_host = settings.read_only_host_as_replica;
        if let Some(user) = settings.user {
            builder = builder.user(user);
        }
        if let Some(dbname) = settings.dbname {
            builder = builder.dbname(dbname);
        }
        if let Some(name) = settings.application_name {
            builder = builder.application_name(name);
        }
        if let Some(timeout) = settings.connect_timeout {
            builder = builder.retry(RetryPolicy::default().connect_timeout(timeout));
        }
        builder.tls.mode = settings.ssl_mode;
        builder.channel_binding = settings.channel_binding;
        builder.ssl_negotiation = settings.ssl_negotiation;
        if let Some(path) = settings.root_certificates {
            builder = builder.root_certificates_file(path);
        }
        Ok(match settings.password_source {
            PasswordSource::Endpoint(endpoint) => {
                builder.workspace = Some(WorkspaceBuilder::from_environment(env)?.build()?);
                builder.endpoint = Some(Ok(endpoint));
                builder
            }
            PasswordSource::Fixed(password) => {
                builder.credentials(StaticPassword::set_in("PGPASSWORD", password))
            }
        })
    }

    /// Starts from an existing tokio-postgres configuration (host, port, user, database,
    /// options, ...), replacing what was set so far. It must not contain a password; use
    /// [`password`](Self::password) or [`credentials`](Self::credentials). A host, port or
    /// address set both here and with [`host`](Self::host), [`port`](Self::port) or
    /// [`hostaddr`](Self::hostaddr) is a `build` error: set each in one place.
    ///
    /// Default: an empty configuration (libpq defaults).
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let config: tokio_postgres::Config = "host=127.0.0.1 user=app dbname=app options=-cstatement_timeout=5s"
    ///     .parse()
    ///     .expect("a valid connection string");
    /// let pool = lakebase_pool::Pool::builder()
    ///     .pg_config(config)
    ///     .password("local-dev-password")
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pg_config(mut self, config: tokio_postgres::Config) -> Self {
        self.pg_config = config;
        self
    }

    /// Server host name, IP address, or Unix socket directory (a path starting with `/`).
    /// Required, unless discovered from a [`lakebase_endpoint`](Self::lakebase_endpoint).
    ///
    /// Default: none; required unless discovered.
    pub fn host(mut self, host: impl AsRef<str>) -> Self {
        self.host = Some(host.as_ref().to_owned());
        self
    }

    /// Server port.
    ///
    /// Default: 5432.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The Postgres role to log in as. Required, unless resolved for a
    /// [`lakebase_endpoint`](Self::lakebase_endpoint).
    ///
    /// Default: none; required unless resolved.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        let _ = self.pg_config.user(user);
        self
    }

    /// The database to connect to.
    ///
    /// Default: `databricks_postgres` with a [`lakebase_endpoint`](Self::lakebase_endpoint),
    /// else the user name (as libpq does).
    pub fn dbname(mut self, dbname: impl Into<String>) -> Self {
        let _ = self.pg_config.dbname(dbname);
        self
    }

    /// A limit on every statement of the pool's sessions, enforced by the server: sent at
    /// login as `statement_timeout`. A statement past it fails with SQLSTATE `57014`,
    /// "canceling statement due to statement timeout" (see
    /// [`retry::is_statement_timeout`](crate::retry::is_statement_timeout)), and the session
    /// stays usable. On Lakebase it keeps a runaway query from holding a compute busy (and
    /// billed) and its locks. For one statement's limit on the client's side, see
    /// [`Connection::timeout`](crate::Connection::timeout). `Duration::ZERO` means none.
    ///
    /// Default: none (the server's own setting, by default no limit).
    pub fn statement_timeout(mut self, limit: Duration) -> Self {
        self.statement_timeout = Some(limit);
        self
    }

    /// The `application_name` reported to the server (shown in `pg_stat_activity`).
    ///
    /// Default: none.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        let _ = self.pg_config.application_name(name);
        self
    }

    /// Uses a fixed password (a [`StaticPassword`] provider). Replaces any provider set
    /// before.
    ///
    /// Default: none; one of `password`, `credentials` or `lakebase_endpoint` is required.
    pub fn password(self, password: impl Into<Secret>) -> Self {
        self.credentials(StaticPassword::set_in("`PoolBuilder::password`", password))
    }

    /// Where passwords come from: a provider asked (through the token cache) for the token
    /// of every new physical connection. Replaces any provider set before. Required, unless
    /// [`password`](Self::password) is used.
    ///
    /// Default: none; one of `password`, `credentials` or `lakebase_endpoint` is required.
    ///
    /// ```
    /// use lakebase_pool::credentials::{from_fn, Credential};
    ///
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .credentials(from_fn(|| async {
    ///     Ok::<_, std::io::Error>(Credential::new("fetched"))
    ///     }))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn credentials(mut self, provider: impl CredentialProvider) -> Self {
        self.provider = Some(Box::new(provider));
        self
    }

    /// Connect to a Lakebase endpoint, `projects/<project>/branches/<branch>/endpoints/<id>`.
    ///
    /// Unless set explicitly: tokens are minted for this endpoint through the
    /// [`workspace`](Self::workspace), which must be given (no environment is read at
    /// [`build`](Self::build); [`from_env`](Self::from_env) reads `LAKEBASE_ENDPOINT` and the
    /// workspace's variables together); the host is looked up
    /// with get-endpoint; the user is the service principal's client id with OAuth M2M, else
    /// the workspace user name; the database is `databricks_postgres`. Lookups happen at the
    /// first connect. A malformed name makes [`build`](Self::build) fail with
    /// [`Error::InvalidEndpointName`].
    ///
    /// Default: none (`LAKEBASE_ENDPOINT` with [`from_env`](Self::from_env)).
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
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .workspace(Workspace::from_env()?)
    ///     .lakebase_endpoint("projects/shop/branches/production/endpoints/ep-primary")
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn workspace(mut self, workspace: Workspace) -> Self {
        self.workspace = Some(workspace);
        self
    }

    /// How the connection is secured; see [`SslMode`] and the `tls` rules in the crate docs.
    ///
    /// Default: `disable` for loopback hosts and Unix sockets, `verify-full` for any other
    /// host. `disable` to a non-loopback host is refused unless
    /// [`dangerous().allow_plaintext()`](Dangerous::allow_plaintext).
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.tls.mode = Some(mode);
        self
    }

    /// Whether SCRAM logins are bound to the TLS session; see [`ChannelBinding`]. Replaces
    /// what [`pg_config`](Self::pg_config) says.
    ///
    /// Default: `prefer`, which binds whenever the server offers it. `require` without TLS is
    /// a `build` error.
    pub fn channel_binding(mut self, binding: ChannelBinding) -> Self {
        self.channel_binding = Some(binding);
        self
    }

    /// How TLS is started; see [`SslNegotiation`]. `direct` saves a round trip on every new
    /// connection where the server supports it (PostgreSQL 17+, the Neon proxy under
    /// Lakebase). Replaces what [`pg_config`](Self::pg_config) says.
    ///
    /// Default: `postgres`, which every server understands. `direct` without TLS is a
    /// `build` error.
    pub fn ssl_negotiation(mut self, negotiation: SslNegotiation) -> Self {
        self.ssl_negotiation = Some(negotiation);
        self
    }

    /// Trust the CA certificates in this PEM document, in addition to the webpki roots (for a
    /// private CA). Checked at [`build`](Self::build).
    ///
    /// Default: none.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pem = b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n".to_vec();
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .root_certificates_pem(pem)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots.push(RootSource::Pem(pem.into()));
        self
    }

    /// Trust the CA certificates in this PEM file (libpq's `sslrootcert`, `PGSSLROOTCERT`), in
    /// addition to the webpki roots. Read at [`build`](Self::build).
    ///
    /// Default: none.
    pub fn root_certificates_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.roots.push(RootSource::File(path.into()));
        self
    }

    /// Connect TCP to this address, while the [`host`](Self::host) name is still used for TLS
    /// (SNI and the certificate check); libpq's `hostaddr`, `PGHOSTADDR`.
    ///
    /// Default: the host name is resolved.
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .host("ep-example.database.example.com")
    ///     .hostaddr(Ipv4Addr::new(10, 1, 2, 3).into())
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn hostaddr(mut self, address: IpAddr) -> Self {
        self.hostaddr = Some(address);
        self
    }

    /// Resolve the host with this resolver at every connection attempt, connecting TCP to each
    /// address in turn while keeping the host name for TLS; see [`crate::resolve`].
    ///
    /// Default: none (tokio-postgres resolves through the system).
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// use lakebase_pool::resolve::StaticResolver;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .resolver(StaticResolver::new().with("ep-test.db.lakebase.test", Ipv4Addr::LOCALHOST))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    /// Settings that weaken the protection of the token; each one logs a warning when the
    /// pool is built.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .dangerous().accept_invalid_certificates()
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn dangerous(self) -> Dangerous {
        Dangerous(self)
    }

    /// When tokens are reused and refreshed.
    ///
    /// Default: [`CachePolicy::default()`] (reuse while >= 2 min left, refresh in the
    /// background once < 15 min left).
    pub fn cache_policy(mut self, policy: CachePolicy) -> Self {
        self.cache_policy = policy;
        self
    }

    /// How opening a connection is retried after transient failures (cold starts, restarts).
    ///
    /// Default: [`RetryPolicy::default()`] (10 s per attempt, 100 ms to 4 s backoff with full
    /// jitter, 40 s deadline).
    ///
    /// ```
    /// use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .retry(lakebase_pool::RetryPolicy::default().deadline(Duration::from_secs(60)))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The most connections open at once, idle or in use.
    ///
    /// Default: 16.
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
    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.lifecycle.max_lifetime = max_lifetime;
        self
    }

    /// The largest fraction (0.0 to 0.5) by which a connection's max lifetime is shortened,
    /// chosen at random once per connection, so that connections opened together (at start-up
    /// or after an outage) are not all replaced at the same moment.
    ///
    /// Default: 0.05 (0-5 %).
    pub fn lifetime_jitter(mut self, fraction: f64) -> Self {
        self.lifecycle.jitter = fraction;
        self
    }

    /// How long a connection may sit idle before the pool closes it, so that a scale-to-zero
    /// compute can suspend. `Duration::MAX` disables it.
    ///
    /// Default: 10 minutes.
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.lifecycle.idle_timeout = idle_timeout;
        self
    }

    /// A connection idle at least this long gets one empty round trip at checkout to prove it
    /// still works; a fresher one is only checked for having been closed. `Duration::ZERO`
    /// validates every checkout; `Duration::MAX` never sends a validation query.
    ///
    /// Default: 5 seconds.
    pub fn validate_after_idle(mut self, idle: Duration) -> Self {
        self.lifecycle.validate_after_idle = idle;
        self
    }

    /// How long [`Pool::get`] waits for a free connection when all are in use, before
    /// failing with [`Error::PoolTimeout`]. `Duration::ZERO` fails at once.
    ///
    /// Default: 30 seconds.
    pub fn wait_timeout(mut self, wait_timeout: Duration) -> Self {
        self.wait_timeout = wait_timeout;
        self
    }

    /// Read replicas for [`Pool::get_read`]: Lakebase read-only endpoints by name
    /// (`projects/../branches/../endpoints/..`, each with its own host looked up and its own
    /// tokens, minted through the pool's workspace), or plain Postgres hosts (`host` or
    /// `host:port`, logging in as the read-write endpoint does). Each replica has a pool of
    /// its own, with this pool's settings and [`replica_max_size`](Self::replica_max_size)
    /// connections.
    ///
    /// Default: none: [`Pool::get_read`] reads from the read-write endpoint.
    pub fn read_replicas<I, S>(mut self, replicas: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.replicas.specs = replicas
            .into_iter()
            .map(|replica| ReplicaSpec::parse(replica.as_ref()))
            .collect();
        self
    }

    /// Use the read-only endpoints of the read-write endpoint's branch as read replicas:
    /// at the first [`Pool::get_read`], the branch's endpoints are listed, and those of type
    /// `ENDPOINT_TYPE_READ_ONLY` that are not disabled kept. Needs
    /// [`lakebase_endpoint`](Self::lakebase_endpoint). Until the look-up succeeds (it is
    /// retried every 10 s after a failure), reads go to the [`ReadFallback`].
    ///
    /// Default: off.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .workspace(lakebase_pool::databricks::Workspace::builder().host("https://example.cloud.databricks.com").token("dapi-example").build()?)
    ///     .lakebase_endpoint("projects/shop/branches/production/endpoints/ep-primary")
    ///     .read_replicas_of_branch()
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_replicas_of_branch(mut self) -> Self {
        self.replicas.of_branch = true;
        self
    }

    /// Read from the read-only host of the read-write endpoint as a replica: the readable
    /// secondaries of an endpoint with high availability, reported by the workspace as
    /// `status.hosts.read_only_host` (nothing is guessed from the host name). Its sessions
    /// log in with the endpoint's own tokens, and it follows the rules of every replica:
    /// health, catch-up for [`Pool::get_read_at`], the [`ReadFallback`]. Looked up at its
    /// first connect; an endpoint without one (no HA, or no readable secondaries) reads from
    /// the fallback, and the error says why. Needs [`lakebase_endpoint`](Self::lakebase_endpoint).
    /// Combines with [`read_replicas`](Self::read_replicas) and
    /// [`read_replicas_of_branch`](Self::read_replicas_of_branch).
    ///
    /// From the environment: `LAKEBASE_READ_ONLY_HOST=true`.
    ///
    /// Default: off.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .workspace(lakebase_pool::databricks::Workspace::builder().host("https://example.cloud.databricks.com").token("dapi-example").build()?)
    ///     .lakebase_endpoint("projects/shop/branches/production/endpoints/ep-primary")
    ///     .read_only_host_as_replica()
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_only_host_as_replica(mut self) -> Self {
        self.replicas.read_only_host = true;
        self
    }

    /// What [`Pool::get_read`] does when no replica can serve, and
    /// [`Pool::get_read_at`] when none has caught up; see [`ReadFallback`].
    ///
    /// Default: [`ReadFallback::Primary`], read from the read-write endpoint.
    pub fn read_fallback(mut self, fallback: ReadFallback) -> Self {
        self.replicas.fallback = fallback;
        self
    }

    /// The size limit of each replica's pool.
    ///
    /// Default: the pool's [`max_size`](Self::max_size).
    pub fn replica_max_size(mut self, max_size: usize) -> Self {
        self.replicas.max_size = Some(max_size);
        self
    }

    /// How long [`Pool::get_read_at`] waits for a replica to replay the position asked for,
    /// before the [`ReadFallback`] decides.
    ///
    /// Default: 2 seconds.
    pub fn replica_catch_up_timeout(mut self, timeout: Duration) -> Self {
        self.replicas.catch_up_timeout = timeout;
        self
    }
}

/// Settings that weaken the protection of the token, from [`PoolBuilder::dangerous`]. Each
/// returns the builder; each logs a warning when the pool is built.
#[must_use = "call one of the methods to get the builder back"]
#[derive(Debug)]
pub struct Dangerous(PoolBuilder);

impl Dangerous {
    /// Accept any server certificate: for a local server with a self-signed certificate only.
    /// Anyone who can intercept the connection can then read the token.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .dangerous().accept_invalid_certificates()
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn accept_invalid_certificates(mut self) -> PoolBuilder {
        self.0.tls.trust.accept_invalid_certificates = true;
        self.0
    }

    /// Allow `sslmode=disable` to hosts that are not loopback, sending the token in plain
    /// text: only on a network you fully trust.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .dangerous().allow_plaintext()
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn allow_plaintext(mut self) -> PoolBuilder {
        self.0.tls.allow_plaintext = true;
        self.0
    }
}

/// Where extra CA certificates come from.
#[derive(Debug)]
enum RootSource {
    Pem(Vec<u8>),
    File(PathBuf),
}

impl RootSource {
    fn certificates(&self) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, Error> {
        match self {
            RootSource::Pem(pem) => {
                tls::parse_pem_certificates(pem, "the PEM given to root_certificates_pem")
            }
            RootSource::File(path) => tls::read_pem_file(path),
        }
    }
}

#[cfg(test)]
mod tests;
