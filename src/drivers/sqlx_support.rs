//! What the sqlx adapters (`sqlx_0_8`, `sqlx_0_9`) share whatever the sqlx version: the login
//! settings from the pool's target, the local relay that honours the resolver hook, the
//! token refresher, the lifetime rule and the retry rule.

use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::config::Host;

use crate::connect::{self, DriverTarget};
use crate::connector::Lifetimes;
use crate::credentials::Credential;
use crate::error::Error;
use crate::retry::ErrorClass;
use crate::tls::SslMode;

#[cfg(unix)]
pub(crate) use self::relay::Relay;

/// How sqlx is to log in: the pool's target, in the terms sqlx's `PgConnectOptions` has.
pub(crate) struct Login {
    /// The host name: the name TLS sends as SNI and checks the certificate for.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) database: Option<String>,
    pub(crate) application_name: Option<String>,
    /// `-c name=value` start-up options, to add to sqlx's (empty, or the same options that
    /// sqlx read from `PGOPTIONS` itself: then none are added).
    pub(crate) options: Vec<(String, String)>,
    pub(crate) tls: LoginTls,
    /// A Unix socket directory to connect through: the server's own, or the relay's.
    pub(crate) socket_dir: Option<std::path::PathBuf>,
    /// The relay the socket directory belongs to; it stops when the last holder drops it.
    #[cfg(unix)]
    pub(crate) relay: Option<Arc<Relay>>,
}

/// The TLS sqlx is to use.
pub(crate) enum LoginTls {
    /// Plain text (to loopback only, as for the pool's own sessions).
    Disable,
    /// sqlx's `verify-full`, with these CA certificates (PEM) beside the webpki roots.
    VerifyFull { extra_roots_pem: Option<Vec<u8>> },
    /// Any certificate (the pool's dangerous opt-out): sqlx's `require`.
    AcceptAny,
}

/// The sqlx login for `connector`'s target, looking the endpoint up first if it has not been.
///
/// # Errors
///
/// A failed look-up; [`Error::InvalidConfig`] for what sqlx cannot do the pool's way: several
/// hosts, `verify-ca`, a start-up option not of the form `-c name=value`, a token minted for
/// every login, or a resolver hook or `hostaddr` where there are no Unix sockets.
pub(crate) async fn plan(connector: &connect::Connector) -> Result<Login, Error> {
    let _ = clock_origin();
    if connector.tokens().per_connect() {
        return Err(Error::invalid(
            "cache_policy",
            "sqlx keeps one password for every new connection, so a token per login \
             (`CachePolicy::per_connect`) cannot be given; use the default policy",
        ));
    }
    let DriverTarget {
        config,
        mode,
        trust,
        resolver,
        ..
    } = connector.driver_target().await?;
    let tls = match mode {
        SslMode::Disable => LoginTls::Disable,
        SslMode::VerifyCa => {
            return Err(Error::invalid(
                "ssl_mode",
                "sqlx's verify-ca also trusts the public roots, so it would accept any publicly \
                 trusted certificate for any host; use verify-full (the default)",
            ));
        }
        _ if trust.accept_invalid_certificates => LoginTls::AcceptAny,
        _ => LoginTls::VerifyFull {
            extra_roots_pem: (!trust.extra_roots.is_empty())
                .then(|| pem_of(trust.extra_roots.iter().map(|der| der.as_ref()))),
        },
    };
    let host = match config.get_hosts() {
        [host] => host.clone(),
        _ => {
            return Err(Error::invalid(
                "host",
                "sqlx connects to one host; give one (the pool's own sessions can try several)",
            ));
        }
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or_default().to_owned();
    let mut login = Login {
        host: String::new(),
        port,
        user,
        database: config.get_dbname().map(str::to_owned),
        application_name: config.get_application_name().map(str::to_owned),
        options: without_environments(startup_options(config.get_options().unwrap_or_default())?)?,
        tls,
        socket_dir: None,
        #[cfg(unix)]
        relay: None,
    };
    let name = match host {
        #[cfg(unix)]
        Host::Unix(dir) => {
            login.host = String::from("localhost");
            login.socket_dir = Some(dir);
            return Ok(login);
        }
        Host::Tcp(name) => name,
    };
    // sqlx resolves the host itself and has no `hostaddr`. A resolver hook, an address, or
    // plain text to a name (whose addresses must be checked to be loopback) go through the
    // relay, which reaches the server the pool's way while sqlx keeps the name for TLS.
    let plain_to_name = matches!(login.tls, LoginTls::Disable) && name.parse::<IpAddr>().is_err();
    // sqlx 0.9 also reads `PGHOSTADDR` from the process environment and dials it instead of
    // the host; only a socket directory overrides it.
    let env_hostaddr = std::env::var_os("PGHOSTADDR").is_some_and(|v| !v.is_empty());
    let needs_relay =
        resolver.is_some() || !config.get_hostaddrs().is_empty() || plain_to_name || env_hostaddr;
    login.host = name.clone();
    if needs_relay {
        #[cfg(unix)]
        {
            let route = relay::Route {
                host: name,
                port,
                addresses: config.get_hostaddrs().to_vec(),
                resolver,
                loopback_only: matches!(login.tls, LoginTls::Disable),
                connect_timeout: connector.retry_policy().attempt_timeout(),
                reach_deadline: connector.retry_policy().total_deadline(),
            };
            let relay = Arc::new(Relay::start(route)?);
            login.socket_dir = Some(relay.dir().to_owned());
            login.relay = Some(relay);
        }
        #[cfg(not(unix))]
        return Err(Error::invalid(
            "resolver",
            "sqlx has no `hostaddr`, and reaching the server at another address than its name \
             resolves to needs Unix sockets: remove the resolver hook and `hostaddr`",
        ));
    }
    Ok(login)
}

/// `-c name=value` (or `--name=value`) options as pairs; anything else is refused, since
/// sqlx writes its options only in that form.
fn startup_options(options: &str) -> Result<Vec<(String, String)>, Error> {
    let refused = |token: &str| {
        Error::invalid(
            "options",
            format!(
                "sqlx passes start-up options only as `-c name=value`, and `{token}` is not one"
            ),
        )
    };
    let mut pairs = Vec::new();
    let mut tokens = options.split_whitespace();
    while let Some(token) = tokens.next() {
        let setting = match token {
            "-c" => tokens.next().ok_or_else(|| refused(token))?,
            _ => token
                .strip_prefix("-c")
                .or_else(|| token.strip_prefix("--"))
                .ok_or_else(|| refused(token))?,
        };
        let (name, value) = setting.split_once('=').ok_or_else(|| refused(setting))?;
        pairs.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(pairs)
}

/// `options`, less what sqlx takes from `PGOPTIONS` itself: sqlx reads the variable into
/// every connection's options and adds to it, so options from the environment that the pool
/// took too would be sent twice, and options the pool does not have cannot be taken away.
fn without_environments(options: Vec<(String, String)>) -> Result<Vec<(String, String)>, Error> {
    let from_environment = std::env::var("PGOPTIONS").unwrap_or_default();
    if from_environment.trim().is_empty() {
        return Ok(options);
    }
    if startup_options(&from_environment).is_ok_and(|theirs| theirs == options) {
        return Ok(Vec::new());
    }
    Err(Error::invalid(
        "options",
        "sqlx adds PGOPTIONS from the process environment to every connection's options, and \
         they differ from the pool's; unset PGOPTIONS, or build the pool with `from_env` so \
         that both take it",
    ))
}

/// DER certificates as one PEM text, as sqlx's `ssl_root_cert_from_pem` takes them.
fn pem_of<'a>(certificates: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut pem = String::new();
    for der in certificates {
        let mut encoded = Vec::with_capacity(der.len().div_ceil(3) * 4);
        for chunk in der.chunks(3) {
            let bytes = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
            for i in 0..4 {
                encoded.push(if i <= chunk.len() {
                    ALPHABET[(n >> (18 - 6 * i) & 63) as usize]
                } else {
                    b'='
                });
            }
        }
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in encoded.chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem.into_bytes()
}

/// Whether a connection of this age, idle this long, is to be closed rather than handed
/// out: past its jittered lifetime or the idle timeout.
///
/// sqlx keeps nothing of ours beside a connection but its age, so the lifetime is drawn from
/// when it was made, `now - age`, to the millisecond: the same at every look (but in the
/// rare look that falls across a millisecond boundary), and different for connections made
/// apart.
pub(crate) fn retire(lifetimes: &Lifetimes, age: Duration, idle_for: Duration) -> bool {
    idle_for >= lifetimes.idle_timeout || lifetimes.outlived(age, || made_at(age))
}

/// When a session of this age was made, in milliseconds after the clock's origin.
fn made_at(age: Duration) -> u128 {
    Instant::now().checked_sub(age).map_or(0, |made| {
        made.saturating_duration_since(clock_origin()).as_millis()
    })
}

/// The moment sessions' creation times are counted from: set by [`plan`], before any sqlx
/// session is made, so that every one of them has a time of its own.
fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// sqlx's error, in the parts the retry rule looks at.
pub(crate) enum Failure<'a> {
    /// The server's (or the proxy's) error.
    Server {
        code: &'a str,
        message: &'a str,
    },
    /// An I/O error of this kind.
    Io(std::io::ErrorKind),
    /// No connection could be had within sqlx's `acquire_timeout`.
    PoolTimedOut,
    Other,
}

/// How to retry a unit of work that failed with `failure`: only failures that come before
/// a statement reaches the server are retried (a refused login, the proxy's wake-up texts,
/// `57P03`, `53300`, a refused socket, no connection within the acquire timeout), so that
/// nothing runs twice; a refused login is retried once, after one forced token refresh.
pub(crate) fn class_of(failure: &Failure<'_>) -> ErrorClass {
    match failure {
        Failure::Server { code, message } => crate::retry::classify_before_statement(
            &tokio_postgres::error::SqlState::from_code(code),
            message,
        ),
        Failure::Io(std::io::ErrorKind::ConnectionRefused) | Failure::PoolTimedOut => {
            ErrorClass::Transient
        }
        Failure::Io(_) | Failure::Other => ErrorClass::Fatal,
    }
}

/// Hands `push` each token the pool's cache gets, from a fresh one now on, asking the cache
/// again ahead of each token's expiry so that it refreshes it; until `stop` completes or the
/// pool is closed (noticed within half a second).
///
/// A failed mint is logged by the cache and asked again after a pause; the password pushed
/// last stays meanwhile (the cache refreshes well ahead of expiry), until it is too close to
/// expiry to log in with: then `push(None)` withdraws it, so that an expired token is never
/// sent (logins fail as refused until a mint succeeds).
pub(crate) async fn keep_token_fresh(
    connector: crate::Connector,
    push: impl Fn(Option<&Credential>),
    stop: impl Future<Output = ()>,
) {
    /// How long to wait before asking again: once the refresh is due, a short pause while
    /// the refresh runs; after a failure, a longer one; and at most a few minutes, so that a
    /// clock that jumped is caught up with.
    const AFTER_DUE: Duration = Duration::from_millis(100);
    const AFTER_FAILURE: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(300);
    /// How soon a closed pool is noticed.
    const CLOSED_CHECK: Duration = Duration::from_millis(500);

    let cache = connector.token_cache().clone();
    let mut updates = cache.subscribe();
    let mut pushed = Pushed {
        push,
        current: None,
        margin: cache.login_margin(),
    };
    let refresh = async {
        loop {
            // A mint may take its whole timeout (a workspace answering errors, retried): the
            // pushed token is withdrawn meanwhile if it gets too old to log in with.
            let asked = tokio::select! {
                answer = cache.token() => Some(answer),
                () = pushed.withdrawal() => {
                    pushed.set(None);
                    None
                }
            };
            let wait = match asked {
                Some(Ok(token)) => {
                    let wait = cache.refresh_due(&token).map_or(LONGEST, |due| {
                        due.duration_since(SystemTime::now())
                            .unwrap_or_default()
                            .max(AFTER_DUE)
                    });
                    pushed.set(Some(token));
                    wait.min(LONGEST)
                }
                Some(Err(_)) | None => AFTER_FAILURE,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = pushed.withdrawal() => pushed.set(None),
                token = updates.changed() => match token {
                    Some(token) => pushed.set(Some(token)),
                    None => return,
                },
            }
        }
    };
    let closed = async {
        while !connector.is_closed() {
            tokio::time::sleep(CLOSED_CHECK).await;
        }
    };
    tokio::select! {
        () = refresh => {}
        () = closed => {}
        () = stop => {}
    }
}

/// The token last handed to the driver, and how to hand it another.
struct Pushed<F> {
    push: F,
    current: Option<Arc<Credential>>,
    /// A token with less life left is not to be logged in with (the cache's rule).
    margin: Duration,
}

impl<F: Fn(Option<&Credential>)> Pushed<F> {
    /// Hands over `token` (`None`: withdraws the one handed over), unless it is the same.
    fn set(&mut self, token: Option<Arc<Credential>>) {
        let same = match (&self.current, &token) {
            (Some(old), Some(new)) => Arc::ptr_eq(old, new),
            (None, None) => true,
            _ => false,
        };
        if !same {
            (self.push)(token.as_deref());
            self.current = token;
        }
    }

    /// Completes when the token handed over gets too close to expiry to log in with (never,
    /// with none, or one that does not expire).
    async fn withdrawal(&self) {
        let at = self
            .current
            .as_ref()
            .and_then(|token| token.expiry())
            .map(|expiry| {
                let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
                left.saturating_sub(self.margin)
            });
        match at {
            Some(left) => tokio::time::sleep(left).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(unix)]
mod relay;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_are_read_in_every_form_sqlx_can_write() {
        assert_eq!(
            startup_options("-c search_path=app  -cstatement_timeout=5s --lock-timeout=1s")
                .unwrap(),
            [
                ("search_path".into(), "app".into()),
                ("statement_timeout".into(), "5s".into()),
                ("lock_timeout".into(), "1s".into())
            ]
        );
        assert!(startup_options("").unwrap().is_empty());
        for refused in ["endpoint=ep-a", "-c", "-c search_path", "-x a=b"] {
            let error = startup_options(refused).unwrap_err().to_string();
            assert!(error.contains("-c name=value"), "{refused}: {error}");
        }
    }

    #[test]
    fn pem_matches_a_known_encoding() {
        // "Man" -> "TWFu", padding for one and two bytes.
        let pem = String::from_utf8(pem_of([b"Man".as_slice(), b"Ma", b"M"].into_iter())).unwrap();
        let bodies: Vec<&str> = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        assert_eq!(bodies, ["TWFu", "TWE=", "TQ=="]);
    }

    #[test]
    fn a_long_certificate_is_wrapped_at_64_columns() {
        let der = vec![0xAB; 100];
        let pem = String::from_utf8(pem_of(std::iter::once(der.as_slice()))).unwrap();
        let widths: Vec<usize> = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .map(str::len)
            .collect();
        assert_eq!(widths, [64, 64, 136 - 128]);
    }

    #[test]
    fn only_failures_before_a_statement_are_retried() {
        let server = |code, message| class_of(&Failure::Server { code, message });
        assert_eq!(
            server("XX000", "Couldn't connect to compute node"),
            ErrorClass::Transient
        );
        assert_eq!(
            server("XX000", "password authentication failed for user 'a'"),
            ErrorClass::Auth
        );
        assert_eq!(
            server("28P01", "password authentication failed"),
            ErrorClass::Auth
        );
        assert_eq!(
            server("57P03", "the database system is starting up"),
            ErrorClass::Transient
        );
        assert_eq!(
            server("53300", "sorry, too many clients already"),
            ErrorClass::RateLimited
        );
        // A session ended mid-statement: the statement may have run.
        assert_eq!(server("57P01", "terminating connection"), ErrorClass::Fatal);
        assert_eq!(server("08006", "connection failure"), ErrorClass::Fatal);
        assert_eq!(server("40001", "could not serialize"), ErrorClass::Fatal);
        assert_eq!(
            class_of(&Failure::Io(std::io::ErrorKind::ConnectionRefused)),
            ErrorClass::Transient
        );
        assert_eq!(
            class_of(&Failure::Io(std::io::ErrorKind::ConnectionReset)),
            ErrorClass::Fatal
        );
        assert_eq!(class_of(&Failure::PoolTimedOut), ErrorClass::Transient);
    }

    #[test]
    fn sessions_made_apart_are_told_apart() {
        let _ = clock_origin();
        std::thread::sleep(Duration::from_millis(30));
        let (older, newer) = (
            made_at(Duration::from_millis(20)),
            made_at(Duration::from_millis(5)),
        );
        assert!(older > 0, "made after the origin");
        assert!(newer >= older + 10, "{older} {newer}");
    }

    #[test]
    fn a_connection_is_retired_past_its_drawn_lifetime_or_the_idle_timeout() {
        let lifetimes = Lifetimes {
            max_lifetime: Duration::from_secs(100),
            jitter: 0.2,
            idle_timeout: Duration::from_secs(10),
        };
        let zero = Duration::ZERO;
        assert!(!retire(&lifetimes, Duration::from_secs(79), zero));
        assert!(retire(&lifetimes, Duration::from_secs(100), zero));
        assert!(retire(
            &lifetimes,
            Duration::from_secs(1),
            Duration::from_secs(10)
        ));
        assert!(!retire(
            &lifetimes,
            Duration::from_secs(1),
            Duration::from_secs(9)
        ));
    }
}
