//! `PoolBuilder`: every setting of a pool, checked as a whole in `build()`.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::Pool;
use super::endpoint::{EndpointParts, EndpointPool};
use super::lifecycle::Lifecycle;
use super::replicas::{ReadFallback, ReplicaSettings, ReplicaSpec};
use crate::config::{self, PasswordSource};
use crate::connect::Target;
use crate::credentials::{CachePolicy, CredentialProvider, StaticPassword, TokenCache};
use crate::databricks::{LakebaseCredentials, LakebaseDiscovery, Workspace, WorkspaceBuilder};
use crate::defaults;
use crate::resolve::{Resolve, ResolverName};
use crate::target::{TlsSettings, check_needs_tls};
use crate::telemetry::{self, PoolTelemetry, Telemetry};
use crate::tls::{self, ChannelBinding, SslMode, SslNegotiation};
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
            },
            wait_timeout: defaults::WAIT_TIMEOUT,
            replicas: ReplicaSettings::default(),
            telemetry: Telemetry::default(),
            statement_timeout: None,
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
    /// | `PGAPPNAME`, else `DATABRICKS_APP_NAME` | `application_name` |
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
        let settings = config::pool_settings(env)?;
        let mut builder = Pool::builder();
        builder.host = settings.host;
        builder.port = settings.port;
        builder.hostaddr = settings.hostaddr;
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
                builder.workspace = Some(WorkspaceBuilder::from_environment(env).build()?);
                builder.endpoint = Some(Ok(endpoint));
                builder
            }
            PasswordSource::Fixed(password) => builder.password(password),
        })
    }

    /// Starts from an existing tokio-postgres configuration (host, port, user, database,
    /// options, ...), replacing what was set so far. It must not contain a password; use
    /// [`password`](Self::password) or [`credentials`](Self::credentials). A host, port or
    /// address set both here and with [`host`](Self::host), [`port`](Self::port) or
    /// [`hostaddr`](Self::hostaddr) is a `build` error: set each in one place.
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
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .host("127.0.0.1")
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn host(mut self, host: impl AsRef<str>) -> Self {
        self.host = Some(host.as_ref().to_owned());
        self
    }

    /// Server port.
    ///
    /// Default: 5432.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .port(5433)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The Postgres role to log in as. Required, unless resolved for a
    /// [`lakebase_endpoint`](Self::lakebase_endpoint).
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .user("app")
    ///     .build()?;
    /// # Ok(())
    /// # }
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
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .dbname("databricks_postgres")
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .statement_timeout(std::time::Duration::from_secs(30))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn statement_timeout(mut self, limit: Duration) -> Self {
        self.statement_timeout = Some(limit);
        self
    }

    /// The `application_name` reported to the server (shown in `pg_stat_activity`).
    ///
    /// Default: none.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .application_name("orders-api")
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        let _ = self.pg_config.application_name(name);
        self
    }

    /// Uses a fixed password (a [`StaticPassword`] provider). Replaces any provider set
    /// before.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .password("postgres")
    ///     .build()?;
    /// # Ok(())
    /// # }
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
    /// [`workspace`](Self::workspace) (default: [`Workspace::from_env`]); the host is looked up
    /// with get-endpoint; the user is the service principal's client id with OAuth M2M, else
    /// the workspace user name; the database is `databricks_postgres`. Lookups happen at the
    /// first connect. A malformed name makes [`build`](Self::build) fail with
    /// [`Error::InvalidEndpointName`].
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .lakebase_endpoint("projects/shop/branches/production/endpoints/ep-primary")
    ///     .build()?;
    /// # Ok(())
    /// # }
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
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .workspace(Workspace::builder().host("my-workspace.cloud.databricks.com").build()?)
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
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .ssl_mode(lakebase_pool::SslMode::VerifyFull)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.tls.mode = Some(mode);
        self
    }

    /// Whether SCRAM logins are bound to the TLS session; see [`ChannelBinding`]. Replaces
    /// what [`pg_config`](Self::pg_config) says.
    ///
    /// Default: `prefer`, which binds whenever the server offers it. `require` without TLS is
    /// a `build` error.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("db.example.com")
    ///     .user("app")
    ///     .password("a-scram-password")
    ///     .channel_binding(lakebase_pool::ChannelBinding::Require)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("ep-example.database.us-east-1.cloud.databricks.com")
    ///     .user("app")
    ///     .password("a-token")
    ///     .ssl_negotiation(lakebase_pool::SslNegotiation::Direct)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .root_certificates_file("/etc/ssl/private-ca.pem")
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .cache_policy(lakebase_pool::CachePolicy::per_connect())
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .max_size(32)
    ///     .build()?;
    /// # Ok(())
    /// # }
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
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .max_lifetime(Duration::from_secs(30 * 60))
    ///     .build()?;
    /// # Ok(())
    /// # }
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
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .lifetime_jitter(0.1)
    ///     .build()?;
    /// # Ok(())
    /// # }
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
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .idle_timeout(Duration::from_secs(300))
    ///     .build()?;
    /// # Ok(())
    /// # }
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
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .validate_after_idle(Duration::from_secs(1))
    ///     .build()?;
    /// # Ok(())
    /// # }
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
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .wait_timeout(Duration::from_secs(5))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
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
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("primary.internal")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .read_replicas(["replica-1.internal", "replica-2.internal:5433"])
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
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

    /// What [`Pool::get_read`] does when no replica can serve, and
    /// [`Pool::get_read_at`] when none has caught up; see [`ReadFallback`].
    ///
    /// Default: [`ReadFallback::Primary`], read from the read-write endpoint.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("primary.internal")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .read_replicas(["replica.internal"])
    ///     .read_fallback(lakebase_pool::ReadFallback::Fail)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_fallback(mut self, fallback: ReadFallback) -> Self {
        self.replicas.fallback = fallback;
        self
    }

    /// The size limit of each replica's pool.
    ///
    /// Default: the pool's [`max_size`](Self::max_size).
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("primary.internal")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .read_replicas(["replica.internal"])
    ///     .replica_max_size(32)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn replica_max_size(mut self, max_size: usize) -> Self {
        self.replicas.max_size = Some(max_size);
        self
    }

    /// How long [`Pool::get_read_at`] waits for a replica to replay the position asked for,
    /// before the [`ReadFallback`] decides.
    ///
    /// Default: 2 seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("primary.internal")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .read_replicas(["replica.internal"])
    ///     .replica_catch_up_timeout(Duration::from_millis(500))
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn replica_catch_up_timeout(mut self, timeout: Duration) -> Self {
        self.replicas.catch_up_timeout = timeout;
        self
    }

    /// `pg_config` with the builder's host, port, address, channel binding and TLS
    /// negotiation applied.
    fn target_config(&self) -> Result<tokio_postgres::Config, Error> {
        let mut config = self.pg_config.clone();
        let twice = |setting: &'static str| {
            Error::invalid(
                setting,
                format!("set both in `pg_config` and with `.{setting}(..)`; set it in one place"),
            )
        };
        if let Some(host) = &self.host {
            if !config.get_hosts().is_empty() {
                return Err(twice("host"));
            }
            let _ = config.host(host);
        }
        if let Some(port) = self.port {
            if !config.get_ports().is_empty() {
                return Err(twice("port"));
            }
            let _ = config.port(port);
        }
        if let Some(address) = self.hostaddr {
            if !config.get_hostaddrs().is_empty() {
                return Err(twice("hostaddr"));
            }
            let _ = config.hostaddr(address);
        }
        if let Some(binding) = self.channel_binding {
            let _ = config.channel_binding(binding.to_tokio_postgres());
        }
        if let Some(negotiation) = self.ssl_negotiation {
            let _ = config.ssl_negotiation(negotiation.to_tokio_postgres());
        }
        Ok(config)
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
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool::Error> {
    /// let pool = lakebase_pool::Pool::builder().host("127.0.0.1").user("app").password("pw").build()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build(self) -> Result<Pool, Error> {
        self.build_with_template().map(|(pool, _)| pool)
    }

    /// [`build`](Self::build), also returning what pools of other identities on the same
    /// endpoint share with this one (per-user pools).
    pub(crate) fn build_with_template(self) -> Result<(Pool, PoolTemplate), Error> {
        let mut pg_config = self.target_config()?;
        let mut provider = self.provider;
        let primary_endpoint = self.endpoint.transpose()?;
        // Replicas by endpoint name mint through the same workspace: one authentication.
        let mut primary_workspace = self.workspace;
        let discovery = match primary_endpoint.clone() {
            None => None,
            Some(endpoint) => {
                let workspace = match primary_workspace.clone() {
                    Some(workspace) => workspace,
                    None => {
                        let workspace = Workspace::from_env()?;
                        primary_workspace = Some(workspace.clone());
                        workspace
                    }
                };
                if provider.is_none() {
                    let minted = LakebaseCredentials::new(workspace.clone(), endpoint.clone());
                    provider = Some(Box::new(minted));
                }
                if pg_config.get_dbname().is_none() {
                    let _ = pg_config.dbname(defaults::LAKEBASE_DATABASE);
                }
                Some(LakebaseDiscovery {
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
        let mut tls = self.tls;
        for source in &self.roots {
            tls.trust.extra_roots.extend(source.certificates()?);
        }
        if tls.mode == Some(SslMode::VerifyCa) {
            // Also settled at the first connect; checked now for a discovered host.
            tls::check_verify_ca(&tls.trust)?;
        }
        if tls.trust.accept_invalid_certificates {
            tracing::warn!(
                "DANGEROUS: TLS certificates are not verified; anyone on the path can read the tokens"
            );
        }
        if tls.allow_plaintext {
            tracing::warn!("DANGEROUS: plain-text connections to non-loopback hosts are allowed");
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid(
                "build",
                "must be called within a Tokio runtime (the pool runs a background task)",
            ));
        }
        if let Some(limit) = self.statement_timeout {
            // Milliseconds, at most what the server takes (an `int`).
            let millis = limit.as_millis().min(i32::MAX as u128);
            let options = match pg_config.get_options() {
                Some(own) if !own.is_empty() => format!("{own} -c statement_timeout={millis}"),
                _ => format!("-c statement_timeout={millis}"),
            };
            let _ = pg_config.options(options);
        }
        let _ = pg_config
            .connect_timeout(self.retry.attempt_timeout())
            .keepalives(true)
            .keepalives_idle(defaults::TCP_KEEPALIVE_IDLE)
            .keepalives_interval(defaults::TCP_KEEPALIVE_INTERVAL)
            .keepalives_retries(defaults::TCP_KEEPALIVE_RETRIES)
            // Keep-alive probes only start on an idle socket; with data unacknowledged (a
            // query sent to a vanished server) only this ends the wait in the same minute.
            .tcp_user_timeout(defaults::TCP_USER_TIMEOUT);

        let tokens = TokenCache::labelled(provider, self.cache_policy.clone(), "database token");
        let name = metrics_name(self.pool_name, primary_endpoint.as_ref(), &pg_config);
        let telemetry = self.telemetry.pool(&name);
        // Before the replicas: plain Postgres replicas share this cache, and it reports under
        // the primary's name.
        tokens.attach_telemetry(&telemetry);
        let target = match discovery {
            Some(discovery) => {
                // Settled at the first connect, once the host is known; an explicit sslmode
                // can be checked now.
                if let Some(mode) = tls.mode {
                    check_needs_tls(&pg_config, mode)?;
                }
                Target::Lazy {
                    base: pg_config.clone(),
                    source: Box::new(discovery),
                }
            }
            None => Target::Fixed(pg_config.clone()),
        };
        let parts = EndpointParts {
            tls,
            resolver: self.resolver,
            retry: self.retry,
            lifecycle: self.lifecycle,
            wait_timeout: self.wait_timeout,
            cache_policy: self.cache_policy,
            hide_user: false,
            telemetry: self.telemetry,
            pool_name: name,
        };
        let replicas = self.replicas.build(
            &parts,
            &pg_config,
            self.max_size,
            primary_workspace.clone(),
            primary_endpoint.as_ref(),
            &tokens,
        )?;
        let primary = EndpointPool::open(&parts, target, tokens, self.max_size, telemetry)?;
        let pool = Pool::of(primary, replicas);
        pool.observe();
        let template = PoolTemplate {
            users_telemetry: OnceLock::new(),
            parts,
            base: pg_config,
            workspace: primary_workspace,
            endpoint: primary_endpoint,
        };
        Ok((pool, template))
    }
}

/// What a pool built by [`PoolBuilder::build_with_template`] shares with pools of other
/// identities on the same endpoint: every setting, the workspace, the endpoint.
pub(crate) struct PoolTemplate {
    parts: EndpointParts,
    /// The instruments every per-user pool records into, as one pool: made on first use, so
    /// that a plain `build()` makes none.
    users_telemetry: OnceLock<PoolTelemetry>,
    /// The connection settings, timeouts included; the host unless it is discovered.
    pub(crate) base: tokio_postgres::Config,
    pub(crate) workspace: Option<Workspace>,
    pub(crate) endpoint: Option<EndpointName>,
}

impl PoolTemplate {
    /// A pool of up to `max_size` connections to `target` with `tokens`, closing idle
    /// connections after `idle_timeout`, and naming no user in its errors and logs.
    pub(crate) fn pool(
        &self,
        target: Target,
        tokens: TokenCache,
        max_size: usize,
        idle_timeout: Duration,
    ) -> Result<EndpointPool, Error> {
        let mut parts = self.parts.clone();
        parts.lifecycle.idle_timeout = idle_timeout;
        parts.hide_user = true;
        validate_lifecycle(&parts.lifecycle)?;
        EndpointPool::open(
            &parts,
            target,
            tokens,
            max_size,
            self.users_telemetry().clone(),
        )
    }

    /// The instruments of the per-user pools, together named `{app}/users`.
    pub(crate) fn users_telemetry(&self) -> &PoolTelemetry {
        self.users_telemetry.get_or_init(|| {
            self.parts
                .telemetry
                .pool(&telemetry::users_pool_name(&self.parts.pool_name))
        })
    }

    /// The token cache policy every pool of the endpoint uses.
    pub(crate) fn cache_policy(&self) -> &CachePolicy {
        &self.parts.cache_policy
    }
}

/// The pool's name in its metrics: the one given, else the Lakebase endpoint's name, else
/// `host:port` (the semantic conventions' fallback), else `lakebase`.
fn metrics_name(
    given: Option<String>,
    endpoint: Option<&EndpointName>,
    config: &tokio_postgres::Config,
) -> String {
    given
        .or_else(|| endpoint.map(ToString::to_string))
        .or_else(|| {
            let server = telemetry::Server::of(config);
            server.address.map(|host| format!("{host}:{}", server.port))
        })
        .unwrap_or_else(|| "lakebase".to_owned())
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

#[cfg(test)]
mod tests {
    use tokio_postgres::config::Host;

    #[test]
    fn host_port_and_hostaddr_replace_rather_than_append() {
        let config: tokio_postgres::Config =
            "user=u dbname=d options=-cx=1 application_name=app connect_timeout=7"
                .parse()
                .unwrap();
        let builder = PoolBuilder::default()
            .pg_config(config)
            .port(2)
            .port(3)
            .host("a")
            .host("b")
            .hostaddr("10.0.0.1".parse().unwrap())
            .hostaddr("10.0.0.2".parse().unwrap());
        let config = builder.target_config().unwrap();
        assert_eq!(config.get_hosts(), [Host::Tcp("b".into())]);
        assert_eq!(config.get_ports(), [3]);
        assert_eq!(
            config.get_hostaddrs(),
            ["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_dbname(), Some("d"));
        assert_eq!(config.get_options(), Some("-cx=1"));
        assert_eq!(config.get_application_name(), Some("app"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(7)));
    }

    #[test]
    fn a_host_or_port_set_in_two_places_is_a_build_error() {
        let config: tokio_postgres::Config = "host=a port=1 user=u".parse().unwrap();
        for (builder, setting) in [
            (
                PoolBuilder::default().pg_config(config.clone()).host("b"),
                "host",
            ),
            (PoolBuilder::default().pg_config(config).port(2), "port"),
        ] {
            match builder.target_config() {
                Err(Error::InvalidConfig {
                    setting: got,
                    problem,
                    ..
                }) => {
                    assert_eq!(got, setting);
                    assert!(problem.contains("set it in one place"), "{problem}");
                }
                other => panic!("{setting}: {other:?}"),
            }
        }
    }

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
        let with_password: tokio_postgres::Config = "user=a password=x".parse().unwrap();
        assert_eq!(
            setting_of(base().pg_config(with_password).build()),
            "pg_config"
        );
    }

    #[tokio::test]
    async fn plaintext_to_a_non_loopback_host_is_refused() {
        let plain = |host: &str| base().host(host).ssl_mode(SslMode::Disable).build();
        assert_eq!(setting_of(plain("db.example.com")), "ssl_mode");
        assert_eq!(setting_of(plain("10.0.0.5")), "ssl_mode");
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
}
