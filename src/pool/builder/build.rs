//! `PoolBuilder::build`: every setting checked as a whole, and the pools opened.

use std::sync::OnceLock;
use std::time::Duration;

use super::PoolBuilder;
use crate::connect::Target;
use crate::credentials::{CachePolicy, TokenCache};
use crate::databricks::{HostKind, LakebaseCredentials, LakebaseDiscovery, Workspace};
use crate::defaults;
use crate::pool::Pool;
use crate::pool::endpoint::{EndpointParts, EndpointPool};
use crate::pool::lifecycle::Lifecycle;
use crate::pool::replicas::ReplicaBase;
use crate::target::check_needs_tls;
use crate::telemetry::{self, PoolTelemetry};
use crate::tls::{self, SslMode};
use crate::{EndpointName, Error};

impl PoolBuilder {
    /// `pg_config` with the builder's host, port, address, channel binding and TLS
    /// negotiation applied, as the primary's pool gets it.
    #[cfg(test)]
    pub(super) fn target_config(&self) -> Result<tokio_postgres::Config, Error> {
        self.hosts().apply(self.base_config())
    }

    /// `pg_config` with the builder's channel binding and TLS negotiation applied, and none
    /// of its host settings: what the primary and its replicas share.
    fn hosts(&self) -> HostSettings {
        HostSettings {
            host: self.host.clone(),
            port: self.port,
            hostaddr: self.hostaddr,
        }
    }

    fn base_config(&self) -> tokio_postgres::Config {
        let mut config = self.pg_config.clone();
        if let Some(binding) = self.channel_binding {
            let _ = config.channel_binding(binding.to_tokio_postgres());
        }
        if let Some(negotiation) = self.ssl_negotiation {
            let _ = config.ssl_negotiation(negotiation.to_tokio_postgres());
        }
        config
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
        // Checked now, so that a host given twice is an error whatever else is wrong.
        let hosts = self.hosts();
        let _ = hosts.apply(self.base_config())?;
        let mut pg_config = self.base_config();
        let mut provider = self.provider;
        let primary_endpoint = self.endpoint.transpose()?;
        // Replicas by endpoint name mint through the same workspace: one authentication.
        let primary_workspace = self.workspace;
        let discovery = match primary_endpoint.clone() {
            None => None,
            Some(endpoint) => {
                // No environment is read here: the one door to it is `from_env`.
                let workspace = primary_workspace.clone().ok_or_else(|| {
                    Error::invalid(
                        "workspace",
                        "a Lakebase endpoint's tokens are minted through a Databricks \
                         workspace: call `.workspace(Workspace::from_env()?)` (or give another \
                         `Workspace`), or start from `PoolBuilder::from_env()`, which reads \
                         LAKEBASE_ENDPOINT and the DATABRICKS_* variables together",
                    )
                })?;
                if provider.is_none() {
                    let minted = LakebaseCredentials::new(workspace.clone(), endpoint.clone());
                    provider = Some(Box::new(minted));
                }
                if pg_config.get_dbname().is_none() {
                    let _ = pg_config.dbname(defaults::LAKEBASE_DATABASE);
                }
                Some(LakebaseDiscovery {
                    host: (pg_config.get_hosts().is_empty() && hosts.host.is_none())
                        .then_some(HostKind::Main),
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
            // Milliseconds, at most what the server takes (an `int`); a limit under one
            // millisecond is one millisecond, not 0 (which the server reads as no limit).
            let millis = limit.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128);
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
        // The replicas' base; the primary's own settings add its host.
        let base = pg_config;
        let pg_config = hosts.apply(base.clone())?;

        let tokens = TokenCache::labelled(
            provider,
            self.cache_policy.clone(),
            crate::error::TokenKind::Database,
        );
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
            ReplicaBase {
                config: base,
                port: hosts.port,
            },
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

/// The builder's host, port and address, kept apart from the base configuration until a
/// pool's own configuration is made: a replica's is the base with its own host, never a copy
/// of the primary's with its hosts taken out (tokio-postgres has no way to take them out).
struct HostSettings {
    host: Option<String>,
    port: Option<u16>,
    hostaddr: Option<std::net::IpAddr>,
}

impl HostSettings {
    /// `config` with these settings; one also set inside `config` is an error.
    fn apply(&self, mut config: tokio_postgres::Config) -> Result<tokio_postgres::Config, Error> {
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
        Ok(config)
    }
}
