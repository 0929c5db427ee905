//! Opening one physical connection: token, connect, classify, retry.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;
use tokio_postgres::config::Host;
use tokio_postgres::tls::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::Instrument;

use crate::activity::{Activity, Watched};
#[cfg(unix)]
use crate::session::plain_unix;
use crate::session::{CancelRoute, PlainSocket, WatchedTls, plain_tcp};
pub(crate) use crate::session::{Driver, Opened};

mod stall;

use crate::backoff::{deadline_after, millis};
use crate::credentials::{Credential, TokenCache};
use crate::defaults;
use crate::error::{BoxError, BoxFuture, Error, error_chain};
use crate::metrics::Counters;
use crate::resolve::{Resolve, ResolveError};
use crate::retry::policy::RetryPolicy;
use crate::retry::{ErrorClass, classify, fix_for};
use crate::target::{
    HIDDEN_USER, RedactedServerError, TlsSettings, describe_target, redact, settle,
};
use crate::telemetry::{ConnectSpan, RetryCause, Server};
use crate::tls::SslMode;
#[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
use crate::tls::Trust;

/// Completes a connection target that is only known after a look-up (Lakebase discovery of
/// the endpoint's host and the user, in `databricks`): the connect path knows nothing of
/// where the answer comes from.
pub(crate) trait TargetSource: Send + Sync + 'static {
    /// What errors and traces call the target before it is known.
    fn describe(&self) -> String;

    /// `base` completed with what the look-up finds. Run before the first connect, and
    /// again at the next one after a failure.
    fn complete(&self, base: tokio_postgres::Config) -> BoxFuture<'_, Result<Completed, Error>>;
}

/// A target completed by its [`TargetSource`].
pub(crate) struct Completed {
    pub(crate) config: tokio_postgres::Config,
    /// The workspace reports the endpoint read-write: a login that reaches a read-only
    /// server (mid-failover) is refused and retried, not kept as a session. Not for hosts
    /// given directly, which may be standbys on purpose.
    pub(crate) writable: bool,
}

/// Where a [`Connector`] connects to.
pub(crate) enum Target {
    /// A complete configuration (but the password, set per attempt).
    Fixed(tokio_postgres::Config),
    /// `base`, completed by `source` before the first connect.
    Lazy {
        base: tokio_postgres::Config,
        source: Box<dyn TargetSource>,
    },
}

/// Opens connections with the token the cache holds at that moment, retrying transient
/// failures within the policy's deadline.
pub(crate) struct Connector {
    /// What completes the target before the first connect, with what it starts from.
    lazy: Option<(tokio_postgres::Config, Box<dyn TargetSource>)>,
    /// The complete configuration, once the target source (if any) has run.
    prepared: OnceCell<Prepared>,
    /// What errors call the target before it is prepared.
    placeholder: String,
    tls: TlsSettings,
    resolver: Option<Arc<dyn Resolve>>,
    tokens: TokenCache,
    retry: RetryPolicy,
    counters: Arc<Counters>,
    /// Notified whenever a connection opens: proof that the server is back, so attempts
    /// waiting out a transient error's backoff go again at once.
    opened: Notify,
    /// Keep the user name out of errors and logs (a signed-in user's role is their email).
    hide_user: bool,
}

struct Prepared {
    pg_config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// TLS, or plain text on a socket of the crate's own.
    uses_tls: bool,
    /// Plain text under the loopback rule: every address dialled must be loopback, whatever
    /// the host's name says (`db.localhost` may resolve anywhere).
    loopback_only: bool,
    /// `user@host:port/dbname`, for errors and tracing.
    target: String,
    /// Only a server that takes writes may serve it ([`Completed::writable`]).
    writable: bool,
    /// The effective sslmode (read by the sqlx adapters).
    #[cfg_attr(not(any(feature = "sqlx-0_8", feature = "sqlx-0_9")), allow(dead_code))]
    mode: SslMode,
}

/// What a driver that opens its sessions itself (sqlx) needs of the connect path: the
/// completed target without a password, its effective sslmode and trust, and how its host is
/// to be reached.
#[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
pub(crate) struct DriverTarget {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) mode: SslMode,
    pub(crate) trust: Trust,
    pub(crate) resolver: Option<Arc<dyn Resolve>>,
}

/// Settles a complete configuration: its sslmode, TLS connector and description.
fn complete(
    Completed {
        config: mut pg_config,
        writable,
    }: Completed,
    tls: &TlsSettings,
    hide_user: bool,
) -> Result<Prepared, Error> {
    let loopback_only = !tls.allow_plaintext;
    let (mode, tls) = settle(&mut pg_config, tls)?;
    let target = describe_target(&pg_config, hide_user);
    tracing::debug!(%target, sslmode = %mode, "connection target settled");
    Ok(Prepared {
        pg_config,
        tls,
        uses_tls: mode.uses_tls(),
        loopback_only: loopback_only && !mode.uses_tls(),
        target,
        writable,
        mode,
    })
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// One attempt ran past the connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("connection attempt timed out after {0:.1?} (see `RetryPolicy::connect_timeout`)")]
struct AttemptTimedOut(Duration);

enum AttemptError {
    Postgres(tokio_postgres::Error),
    /// The crate's own plain-text socket could not be opened.
    Socket(std::io::Error),
    TimedOut(AttemptTimedOut),
    Resolve(ResolveError),
    /// Plain text, and the host resolved to an address that is not loopback.
    NotLoopback {
        host: String,
        address: IpAddr,
    },
    /// A read-write endpoint's login reached a hot standby.
    StandbyLogin(StandbyLogin),
}

/// A read-write endpoint's login reached a hot standby: during a failover, the old primary
/// back as a standby, or the route not yet switched.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server is a standby (it reported `in_hot_standby` at login) but the endpoint is \
     read-write: a failover is under way (or the endpoint routes to a secondary); waiting for \
     the primary"
)]
struct StandbyLogin;

impl AttemptError {
    fn class(&self) -> ErrorClass {
        match self {
            AttemptError::Postgres(e) => classify(e),
            AttemptError::Socket(e) => crate::retry::classify_io(e.kind()),
            AttemptError::TimedOut(_)
            | AttemptError::Resolve(_)
            | AttemptError::StandbyLogin(_) => ErrorClass::Transient,
            AttemptError::NotLoopback { .. } => ErrorClass::Fatal,
        }
    }

    fn into_boxed(self) -> BoxError {
        match self {
            AttemptError::Postgres(e) => Box::new(e),
            AttemptError::Socket(e) => Box::new(e),
            AttemptError::TimedOut(e) => Box::new(e),
            AttemptError::Resolve(e) => Box::new(e),
            AttemptError::StandbyLogin(e) => Box::new(e),
            AttemptError::NotLoopback { host, address } => {
                format!("{host} resolved to {address}").into()
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            AttemptError::Postgres(e) => error_chain(e),
            AttemptError::Socket(e) => error_chain(e),
            AttemptError::TimedOut(e) => error_chain(e),
            AttemptError::Resolve(e) => error_chain(e),
            AttemptError::StandbyLogin(e) => error_chain(e),
            AttemptError::NotLoopback { host, address } => format!("{host} resolved to {address}"),
        }
    }
}

impl Connector {
    pub(crate) fn new(
        target: Target,
        tls: TlsSettings,
        resolver: Option<Arc<dyn Resolve>>,
        tokens: TokenCache,
        retry: RetryPolicy,
        counters: Arc<Counters>,
        hide_user: bool,
    ) -> Result<Self, Error> {
        // A complete target is settled now, so that its problems are `build` errors; one that
        // needs a look-up is settled at the first connect.
        let (lazy, prepared, placeholder) = match target {
            Target::Fixed(config) => {
                let placeholder = describe_target(&config, hide_user);
                let fixed = Completed {
                    config,
                    writable: false,
                };
                let prepared = OnceCell::new_with(Some(complete(fixed, &tls, hide_user)?));
                (None, prepared, placeholder)
            }
            Target::Lazy { base, source } => {
                let placeholder = source.describe();
                (Some((base, source)), OnceCell::new(), placeholder)
            }
        };
        Ok(Connector {
            lazy,
            prepared,
            placeholder,
            tls,
            resolver,
            tokens,
            retry,
            counters,
            opened: Notify::new(),
            hide_user,
        })
    }

    /// `user@host:port/dbname`, or the target source's description before it has run.
    pub(crate) fn target(&self) -> &str {
        self.prepared
            .get()
            .map_or(&self.placeholder, |prepared| &prepared.target)
    }

    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The pool's counters, which cancels of sessions opened here are counted in too.
    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub(crate) fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// The bound on opening one connection, whoever asks (the pool, a listener, a
    /// `Connector`): the retry deadline and one more attempt, and two token mints (a forced
    /// refresh can add the second). The endpoint look-up runs within it too.
    pub(crate) fn bound(&self) -> Duration {
        self.retry
            .total_deadline()
            .saturating_add(self.retry.attempt_timeout())
            .saturating_add(self.tokens.mint_timeout().saturating_mul(2))
    }

    /// The completed target (the endpoint looked up, within [`bound`](Self::bound), if it
    /// has not been yet), for a driver that opens its sessions itself.
    #[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
    pub(crate) async fn driver_target(&self) -> Result<DriverTarget, Error> {
        let bound = self.bound();
        let prepared =
            tokio::time::timeout(bound, self.prepared.get_or_try_init(|| self.prepare()))
                .await
                .map_err(|_| Error::ConnectTimeout {
                    target: self.target().to_owned(),
                    after: bound,
                })??;
        Ok(DriverTarget {
            config: prepared.pg_config.clone(),
            mode: prepared.mode,
            trust: self.tls.trust.clone(),
            resolver: self.resolver.clone(),
        })
    }

    /// Opens one connection within [`bound`](Self::bound), or explains why it could not.
    pub(crate) async fn connect(&self) -> Result<Opened, Error> {
        self.connect_watching(true).await
    }

    /// As [`connect`](Self::connect); with `watched` false, for a session whose statements
    /// nobody watches (a driver adapter's pool that never cancels one), its stream passes
    /// bytes through unread.
    pub(crate) async fn connect_watching(&self, watched: bool) -> Result<Opened, Error> {
        let bound = self.bound();
        tokio::time::timeout(bound, self.connect_unbounded(watched))
            .await
            .unwrap_or_else(|_| {
                Err(Error::ConnectTimeout {
                    target: self.target().to_owned(),
                    after: bound,
                })
            })
    }

    async fn connect_unbounded(&self, watched: bool) -> Result<Opened, Error> {
        // The target source runs once (if it fails, the next checkout tries again), beside
        // the token: on a cold start the look-ups and the mint are round trips to the same
        // workspace, and neither needs the other.
        let (prepared, credential) = tokio::try_join!(
            self.prepared.get_or_try_init(|| self.prepare()),
            self.tokens.token()
        )?;
        let server = Server::of(&prepared.pg_config);
        let span = tracing::info_span!(
            "lakebase.connect",
            target = %prepared.target,
            db.system.name = "postgresql",
            server.address = server.address,
            server.port = server.port,
            db.namespace = server.namespace,
        );
        let user = prepared.pg_config.get_user().filter(|_| !self.hide_user);
        let mut otel = self.counters.telemetry.connect_span(&server, user);
        let result = self
            .connect_with_retries(prepared, credential, &mut otel, watched)
            .instrument(span)
            .await;
        otel.end(result.as_ref().err().map(Error::type_name));
        result
    }

    /// Runs the target source, if any, and settles the result.
    async fn prepare(&self) -> Result<Prepared, Error> {
        let completed = match &self.lazy {
            Some((base, source)) => source.complete(base.clone()).await?,
            None => {
                return Err(Error::invalid(
                    "build",
                    "a fixed target was not settled at build (a bug in lakebase-pool)",
                ));
            }
        };
        complete(completed, &self.tls, self.hide_user)
    }

    /// `error`'s chain for a log line, with the user name hidden when it must be (servers
    /// name the user in their refusals).
    fn log_text(&self, prepared: &Prepared, text: String) -> String {
        match prepared.pg_config.get_user() {
            Some(user) if self.hide_user => redact(&text, user),
            _ => text,
        }
    }

    /// An attempt's error for the caller: as it is, or, when the user is hidden and the text
    /// names them (`too many connections for role "alice@example.com"`), as its redacted
    /// text.
    fn caller_error(&self, prepared: &Prepared, error: AttemptError) -> BoxError {
        if self.hide_user {
            let text = error.describe();
            let redacted = self.log_text(prepared, text.clone());
            if redacted != text {
                return Box::new(RedactedServerError(redacted));
            }
        }
        error.into_boxed()
    }

    async fn connect_with_retries(
        &self,
        prepared: &Prepared,
        mut credential: Arc<Credential>,
        span: &mut ConnectSpan,
        watched: bool,
    ) -> Result<Opened, Error> {
        let started = Instant::now();
        let deadline = deadline_after(started, self.retry.total_deadline());
        let mut refreshed_after_rejection = false;
        let mut just_refreshed = false;
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            // The first attempt, and the one right after a forced token refresh, always get
            // the full connect timeout, even with a zero deadline (`RetryPolicy::no_retry`):
            // the deadline bounds retries after transient errors, not the login itself.
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = if attempts == 1 || just_refreshed {
                self.retry.attempt_timeout()
            } else {
                self.retry.attempt_timeout().min(left)
            };
            just_refreshed = false;
            let error = match self.attempt(prepared, &credential, timeout, watched).await {
                Ok(client) => {
                    self.counters.connection_opened();
                    self.opened.notify_waiters();
                    tracing::debug!(
                        attempts,
                        elapsed_ms = millis(started.elapsed()),
                        "connection opened"
                    );
                    return Ok(client);
                }
                Err(error) => error,
            };
            self.counters.attempt_failed();
            let class = error.class();
            match (class, error) {
                (_, AttemptError::NotLoopback { host, address }) => {
                    tracing::warn!(%host, %address, "plain text refused: the host is not on loopback");
                    return Err(Error::PlaintextRefused {
                        target: prepared.target.clone(),
                        host,
                        address,
                    });
                }
                (ErrorClass::Auth, AttemptError::Postgres(source)) => {
                    if refreshed_after_rejection {
                        tracing::warn!(
                            error = %self.log_text(prepared, error_chain(&source)),
                            "login rejected with a fresh token"
                        );
                        let user = prepared.pg_config.get_user().unwrap_or_default();
                        return Err(Error::AuthRejected {
                            target: prepared.target.clone(),
                            user: if self.hide_user { HIDDEN_USER } else { user }.to_owned(),
                            fixed_password: self.tokens.fixed_password_source().map(str::to_owned),
                            source: self.caller_error(prepared, AttemptError::Postgres(source)),
                        });
                    }
                    refreshed_after_rejection = true;
                    self.counters.retry(RetryCause::AuthRefresh);
                    span.retry(RetryCause::AuthRefresh, attempts, Duration::ZERO);
                    tracing::info!(
                        attempt = attempts,
                        cause = %self.log_text(prepared, error_chain(&source)),
                        "login rejected; minting a fresh token and retrying once"
                    );
                    credential = self.tokens.force_refresh(&credential).await?;
                    just_refreshed = true;
                }
                (ErrorClass::Fatal, AttemptError::Postgres(source)) => {
                    let fix = fix_for(&source);
                    tracing::warn!(
                        cause = %self.log_text(prepared, error_chain(&source)),
                        fix,
                        "connect failed with a non-retryable error"
                    );
                    return Err(Error::Connect {
                        target: prepared.target.clone(),
                        fix,
                        source: self.caller_error(prepared, AttemptError::Postgres(source)),
                    });
                }
                // Transient or rate limited (a timed-out attempt is always transient).
                (_, error) => {
                    let Some(delay) = self.retry.wait_before(attempts, class, deadline) else {
                        tracing::warn!(
                            attempts,
                            cause = %self.log_text(prepared, error.describe()),
                            "giving up: the retry deadline has passed"
                        );
                        return Err(Error::ConnectRetriesExhausted {
                            target: prepared.target.clone(),
                            attempts,
                            elapsed: started.elapsed(),
                            source: self.caller_error(prepared, error),
                        });
                    };
                    let cause = RetryCause::of(class);
                    self.counters.retry(cause);
                    span.retry(cause, attempts, delay);
                    tracing::info!(
                        attempt = attempts,
                        delay_ms = millis(delay),
                        rate_limited = class == ErrorClass::RateLimited,
                        cause = %self.log_text(prepared, error.describe()),
                        "connect failed with a transient error; retrying"
                    );
                    // A connection opening elsewhere in the pool means the server is back: no
                    // reason to sit out the rest of a backoff that can reach seconds. (Not for
                    // rate limits, which the server asked us to respect.)
                    let server_back = self.opened.notified();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = server_back, if class == ErrorClass::Transient => {
                            tracing::debug!("another connection opened; retrying now");
                        }
                    }
                    // Retries can take a while; pick up a token refreshed meanwhile.
                    credential = self.tokens.token().await?;
                }
            }
        }
    }

    /// One connection attempt: resolution, TCP, TLS and login under one timeout
    /// (tokio-postgres's own `connect_timeout` covers the TCP connect only).
    async fn attempt(
        &self,
        prepared: &Prepared,
        credential: &Credential,
        timeout: Duration,
        watched: bool,
    ) -> Result<Opened, AttemptError> {
        let mut config = prepared.pg_config.clone();
        let _ = config.password(credential.secret().expose());
        // Only right after the server ended a session (a failover, where the proxy holds a
        // try on the dead compute): a cold start gains nothing from a fresh try, and a slow
        // login loses the time already spent.
        let window = self
            .retry
            .stalled_try_window()
            .filter(|_| self.counters.lost_within(defaults::FAILOVER_SUSPECTED));
        let tries = stall::restarting_stalled(
            window,
            timeout,
            || self.connect_any(prepared, config.clone(), watched),
            || self.counters.stalled_try(),
        );
        match tokio::time::timeout(timeout, tries).await {
            Err(_) => Err(AttemptError::TimedOut(AttemptTimedOut(timeout))),
            Ok(result) => result,
        }
    }

    /// With a resolver, or for plain text under the loopback rule, resolves the host here and
    /// tries each address in turn (keeping the host name for TLS); otherwise lets
    /// tokio-postgres resolve. Plain text goes only to loopback addresses.
    async fn connect_any(
        &self,
        prepared: &Prepared,
        config: tokio_postgres::Config,
        watched: bool,
    ) -> Result<Opened, AttemptError> {
        let [Host::Tcp(name)] = config.get_hosts() else {
            return self.connect_one(&config, prepared, watched).await;
        };
        if !config.get_hostaddrs().is_empty()
            || name.parse::<IpAddr>().is_ok()
            || (self.resolver.is_none() && !prepared.loopback_only)
        {
            // An address given (checked by `settle`), or nothing to check: resolved where
            // the session is opened.
            return self.connect_one(&config, prepared, watched).await;
        }
        let name = name.clone();
        let addresses = match &self.resolver {
            Some(resolver) => resolver.resolve(&name).await,
            None => system_resolve(&name, config.get_ports().first().copied()).await,
        }
        .map_err(AttemptError::Resolve)?;
        if prepared.loopback_only
            && let Some(address) = addresses.iter().find(|a| !a.is_loopback())
        {
            return Err(AttemptError::NotLoopback {
                host: name,
                address: *address,
            });
        }
        let mut last = AttemptError::Resolve(ResolveError::not_found(&name));
        for address in addresses {
            let mut config = config.clone();
            let _ = config.hostaddr(address);
            match self.connect_one(&config, prepared, watched).await {
                Ok(client) => return Ok(client),
                // The next address may answer; errors that are not about reachability end it.
                Err(error)
                    if matches!(
                        error.class(),
                        ErrorClass::Transient | ErrorClass::RateLimited
                    ) =>
                {
                    tracing::debug!(%address, cause = %self.log_text(prepared, error.describe()), "address failed; trying the next");
                    last = error;
                }
                Err(error) => return Err(error),
            }
        }
        Err(last)
    }

    /// Opens one session: with TLS through tokio-postgres, in plain text on a socket of the
    /// crate's own; either way watched for statements in flight.
    async fn connect_one(
        &self,
        config: &tokio_postgres::Config,
        prepared: &Prepared,
        watched: bool,
    ) -> Result<Opened, AttemptError> {
        let activity = Arc::new(if watched {
            Activity::default()
        } else {
            Activity::unwatched()
        });
        let (client, driver, cancel) = if prepared.uses_tls {
            let tls = WatchedTls {
                tls: prepared.tls.clone(),
                activity: Arc::clone(&activity),
            };
            let (client, driver) = config.connect(tls).await.map_err(AttemptError::Postgres)?;
            let cancel = CancelRoute::Tls(prepared.tls.clone());
            (client, Driver::Tls(Box::new(driver)), cancel)
        } else {
            let (socket, cancel) = plain_socket(config).await?;
            let (client, driver) = config
                .connect_raw(Watched::new(socket, Arc::clone(&activity)), NoTls)
                .await
                .map_err(AttemptError::Postgres)?;
            (client, Driver::Plain(Box::new(driver)), cancel)
        };
        if prepared.writable && driver.hot_standby() {
            return Err(AttemptError::StandbyLogin(StandbyLogin));
        }
        Ok(Opened {
            client,
            driver,
            activity,
            cancel,
        })
    }
}

/// A plain-text socket to `config`'s first host (its address, its IP, each address its name
/// resolves to in turn, or its Unix socket), and the route a cancel takes to it.
async fn plain_socket(
    config: &tokio_postgres::Config,
) -> Result<(PlainSocket, CancelRoute), AttemptError> {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addresses: Vec<IpAddr> = match (config.get_hostaddrs(), config.get_hosts().first()) {
        ([address, ..], _) => vec![*address],
        (_, Some(Host::Tcp(name))) => match name.parse::<IpAddr>() {
            Ok(address) => vec![address],
            Err(_) => system_resolve(name, Some(port))
                .await
                .map_err(AttemptError::Resolve)?,
        },
        #[cfg(unix)]
        (_, Some(Host::Unix(dir))) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let stream = plain_unix(&path, config)
                .await
                .map_err(AttemptError::Socket)?;
            return Ok((PlainSocket::Unix(stream), CancelRoute::Unix(path)));
        }
        _ => vec![],
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to");
    for address in addresses {
        let address = std::net::SocketAddr::new(address, port);
        match plain_tcp(address, config).await {
            Ok(stream) => return Ok((PlainSocket::Tcp(stream), CancelRoute::Tcp(address))),
            Err(error) => last = error,
        }
    }
    Err(AttemptError::Socket(last))
}

/// The system resolver (getaddrinfo, on a blocking thread), for the plain-text check.
async fn system_resolve(name: &str, port: Option<u16>) -> Result<Vec<IpAddr>, ResolveError> {
    let found = tokio::net::lookup_host((name, port.unwrap_or(5432)))
        .await
        .map_err(|e| ResolveError::failed(name, e))?;
    let mut addresses: Vec<IpAddr> = found.map(|a| a.ip()).collect();
    addresses.dedup();
    if addresses.is_empty() {
        return Err(ResolveError::not_found(name));
    }
    Ok(addresses)
}
