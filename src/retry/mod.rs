//! Which connection errors are worth retrying.
//!
//! # Classification
//!
//! [`classify`] sorts an error from opening a connection into an [`ErrorClass`]:
//!
//! * **Transient**: the server is down, restarting, or waking from scale-to-zero. I/O errors
//!   `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`, `TimedOut`, `UnexpectedEof`,
//!   `BrokenPipe`, `NotConnected`; a connection closed during start-up; SQLSTATE `57P01`,
//!   `57P02`, `57P03`, `08000`, `08001`, `08003`, `08006`.
//! * **Rate limited**: retry, but back off longer. SQLSTATE `53300`.
//! * **Auth**: the login was rejected, SQLSTATE `28P01` or `28000`. The pool mints a fresh
//!   token and tries once more.
//! * **Fatal**: everything else. Fails at once.
//!
//! # The Lakebase proxy's own errors
//!
//! The proxy in front of every Lakebase endpoint (Neon's) reports everything it decides
//! itself as SQLSTATE `XX000`, severity `ERROR`, told apart only by the text. These are the
//! texts recognised (as case-insensitive substrings, first match wins; `Control plane request
//! failed` only as the whole message), each with its class and, for the fatal ones, what the
//! error's message tells the user to fix ([`fix_for`]). The proxy also relabels the compute's
//! own refusals while it connects (57P03 starting up or shutting down, 53300 full) as
//! `XX000` with only their message; those texts are here too, classified as their SQLSTATE
//! would be:
//!
//! | text | class | what to fix |
//! |---|---|---|
//! | `password authentication failed for user` | auth | the proxy's rejection of a token (not `28P01`); also what an unknown endpoint looks like |
//! | `Couldn't connect to compute node` | transient | |
//! | `endpoint is idle, retry request` | transient | |
//! | `timed out while waiting for endpoint to become active` | transient | |
//! | `Too many connections attempts` | rate limited | |
//! | `Failed to acquire permit to connect to the database` | rate limited | |
//! | `Too many connections to this endpoint` | rate limited | |
//! | `the database system is starting up` | transient | |
//! | `the database system is not yet accepting connections` | transient | |
//! | `the database system is shutting down` | transient | |
//! | `the database system is in recovery mode` | transient | |
//! | `sorry, too many clients already` | rate limited | |
//! | `remaining connection slots are reserved` | rate limited | |
//! | `too many connections for role` | rate limited | |
//! | `too many connections for database` | rate limited | |
//! | `role "` | auth | `role "x" does not exist` or `is not permitted to log in` (28000 at the compute), after the rate-limit text above |
//! | `endpoint is disabled` | fatal | enable the endpoint |
//! | `endpoint cannot be found` | fatal | the host or endpoint name |
//! | `Check your quotas` | fatal | the project's quotas |
//! | `Endpoint ID is not specified` | fatal | connect by the endpoint's host name (SNI), or pass `options=endpoint=<id>` |
//! | `Inconsistent project name inferred from SNI` | fatal | `options=endpoint=` names another endpoint than the host |
//! | `must contain only alphanumeric characters and hyphen` | fatal | a malformed endpoint id in the host or options |
//! | `connection is insecure` | fatal | TLS is required: an sslmode other than `disable` |
//! | `Control plane request failed` | transient, as the whole message only | |
//!
//! `Control plane request failed` alone is a failed wake of the compute, which the proxy
//! caches for 30 s per endpoint: the default retry deadline
//! ([`RetryPolicy::deadline`](crate::RetryPolicy::deadline), 40 s) outlasts it. With a
//! suffix, it is the disabled-endpoint or quota text above (fatal), or a message the
//! control plane meant for the user (fatal, shown as it is).
//!
//! Any other `XX000` text is fatal. Outside this table, [`fix_for`] also explains
//! `channel_binding=require` against a server that did not offer `SCRAM-SHA-256-PLUS`.
//!
//! How long to wait between attempts is the [`RetryPolicy`](crate::RetryPolicy)'s business.

pub(crate) mod policy;

use std::error::Error as StdError;
use std::io;

use tokio_postgres::error::SqlState;

/// What to do about an error from opening a connection; see the [module docs](self).
///
/// ```
/// use lakebase_pool::retry::ErrorClass;
///
/// fn should_retry(class: ErrorClass) -> bool {
///     matches!(class, ErrorClass::Transient | ErrorClass::RateLimited)
/// }
/// assert!(should_retry(ErrorClass::Transient));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Retry with backoff: the server is down, starting, or waking up.
    Transient,
    /// Retry with a longer backoff: the server or proxy is limiting connections.
    RateLimited,
    /// The login was rejected: mint a fresh token, then retry once.
    Auth,
    /// Retrying will not help.
    Fatal,
}

/// Classifies an error from opening a connection; see the [module docs](self).
///
/// ```no_run
/// use lakebase_pool::retry::{classify, ErrorClass};
///
/// # async fn demo() {
/// match tokio_postgres::connect("host=127.0.0.1 user=app", tokio_postgres::NoTls).await {
///     Err(e) if classify(&e) == ErrorClass::Transient => println!("try again shortly"),
///     Err(e) => println!("failed: {e}"),
///     Ok(_) => println!("connected"),
/// }
/// # }
/// ```
pub fn classify(error: &tokio_postgres::Error) -> ErrorClass {
    if let Some(db) = error.as_db_error() {
        return classify_server_error(db.code(), db.message());
    }
    if error.is_closed() {
        // The server hung up during start-up: typically a restart or suspend in progress.
        return ErrorClass::Transient;
    }
    match io_error_kind(error) {
        Some(kind) => classify_io(kind),
        None => ErrorClass::Fatal,
    }
}

/// Classifies an error from a statement inside a transaction, for
/// [`Pool::retry_transaction`](crate::Pool::retry_transaction): the connection-level errors
/// of [`classify`] (connection closed or reset, server shutting down or restarting, proxy
/// wake-up texts) and the two errors Postgres asks clients to retry a transaction after,
/// serialization failure (`40001`) and deadlock (`40P01`), are transient; everything else,
/// authentication errors included, is fatal. (`retry_transaction` also retries a write
/// refused as read-only, `25006`, when the server reports itself read-only, as after a
/// failover: it knows the session; this function knows only the error.)
///
/// ```no_run
/// use lakebase_pool::retry::{classify_in_transaction, ErrorClass};
///
/// # async fn demo(conn: &lakebase_pool::Connection) {
/// if let Err(e) = conn.execute("UPDATE accounts SET balance = balance - 1", &[]).await {
///     if classify_in_transaction(&e) == ErrorClass::Transient {
///         println!("safe to run the transaction again");
///     }
/// }
/// # }
/// ```
pub fn classify_in_transaction(error: &tokio_postgres::Error) -> ErrorClass {
    if error.code().is_some_and(|code| {
        *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    }) {
        return ErrorClass::Transient;
    }
    match classify(error) {
        ErrorClass::Auth => ErrorClass::Fatal,
        class => class,
    }
}

/// Whether a statement failed because it ran past the server's `statement_timeout`
/// ([`PoolBuilder::statement_timeout`](crate::PoolBuilder::statement_timeout)): SQLSTATE
/// `57014` with the server's "statement timeout" text, not a cancel asked for by someone.
///
/// ```no_run
/// # async fn demo(conn: &lakebase_pool::Connection) {
/// if let Err(e) = conn.query("SELECT * FROM huge_report", &[]).await {
///     if lakebase_pool::retry::is_statement_timeout(&e) {
///         println!("the report ran past the pool's statement timeout");
///     }
/// }
/// # }
/// ```
pub fn is_statement_timeout(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::QUERY_CANCELED && db.message().contains("statement timeout")
    })
}

/// Classifies an error the server (or the Lakebase proxy in front of it) sent.
pub(crate) fn classify_server_error(code: &SqlState, message: &str) -> ErrorClass {
    if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    {
        ErrorClass::Auth
    } else if *code == SqlState::TOO_MANY_CONNECTIONS {
        ErrorClass::RateLimited
    } else if [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::CONNECTION_EXCEPTION,
        SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        SqlState::CONNECTION_DOES_NOT_EXIST,
        SqlState::CONNECTION_FAILURE,
    ]
    .contains(code)
    {
        ErrorClass::Transient
    } else if *code == SqlState::INTERNAL_ERROR {
        proxy_text(message).map_or(ErrorClass::Fatal, |entry| entry.class)
    } else {
        ErrorClass::Fatal
    }
}

/// Classifies an error the server sent, counting only errors that come before a session
/// runs any statement (a refused login, the proxy's wake-up texts, `57P03`, `53300`): for a
/// driver whose connect errors and statement errors arrive alike (sqlx), so that retrying
/// never runs a statement twice. Everything else is fatal, `57P01` included (a session
/// ended mid-statement).
#[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
pub(crate) fn classify_before_statement(code: &SqlState, message: &str) -> ErrorClass {
    if *code == SqlState::CANNOT_CONNECT_NOW {
        return ErrorClass::Transient;
    }
    match classify_server_error(code, message) {
        ErrorClass::Transient if *code != SqlState::INTERNAL_ERROR => ErrorClass::Fatal,
        class => class,
    }
}

/// One of the Lakebase proxy's own `XX000` texts; see the [module docs](self).
struct ProxyText {
    /// Lowercase, matched as a substring of the lowercased message.
    text: &'static str,
    /// Matched only as the whole (trimmed) message.
    whole: bool,
    class: ErrorClass,
    /// For fatal texts: what the user must change.
    fix: Option<&'static str>,
}

const fn text(text: &'static str, class: ErrorClass) -> ProxyText {
    ProxyText {
        text,
        whole: false,
        class,
        fix: None,
    }
}

const fn fatal(text: &'static str, fix: &'static str) -> ProxyText {
    ProxyText {
        text,
        whole: false,
        class: ErrorClass::Fatal,
        fix: Some(fix),
    }
}

/// The one table of the proxy's texts. The module docs list every entry (a test checks).
const PROXY_TEXTS: [ProxyText; 24] = [
    text("password authentication failed for user", ErrorClass::Auth),
    text("couldn't connect to compute node", ErrorClass::Transient),
    text("endpoint is idle, retry request", ErrorClass::Transient),
    text(
        "timed out while waiting for endpoint to become active",
        ErrorClass::Transient,
    ),
    text("too many connections attempts", ErrorClass::RateLimited),
    text(
        "failed to acquire permit to connect to the database",
        ErrorClass::RateLimited,
    ),
    text(
        "too many connections to this endpoint",
        ErrorClass::RateLimited,
    ),
    // The compute's own refusals, relabelled by the proxy (57P03 and 53300 at the compute).
    text("the database system is starting up", ErrorClass::Transient),
    text(
        "the database system is not yet accepting connections",
        ErrorClass::Transient,
    ),
    text(
        "the database system is shutting down",
        ErrorClass::Transient,
    ),
    text(
        "the database system is in recovery mode",
        ErrorClass::Transient,
    ),
    text("sorry, too many clients already", ErrorClass::RateLimited),
    text(
        "remaining connection slots are reserved",
        ErrorClass::RateLimited,
    ),
    text("too many connections for role", ErrorClass::RateLimited),
    text("too many connections for database", ErrorClass::RateLimited),
    // `role "x" does not exist`, `role "x" is not permitted to log in` (28000 at the compute):
    // a rejected login, as it would be without the proxy.
    text("role \"", ErrorClass::Auth),
    fatal(
        "endpoint is disabled",
        "the endpoint is disabled: enable it in the workspace, or connect to another endpoint",
    ),
    fatal(
        "endpoint cannot be found",
        "no such endpoint: check the host name (its first label is the endpoint id) and the \
         endpoint name",
    ),
    fatal(
        "check your quotas",
        "the project is over a quota: check its limits in the workspace",
    ),
    fatal(
        "endpoint id is not specified",
        "the proxy could not tell which endpoint is meant: connect with the endpoint's own host \
         name, which TLS sends as SNI (give an IP address as `hostaddr`, never as the host), or \
         pass `options=endpoint=<endpoint-id>`",
    ),
    fatal(
        "inconsistent project name inferred from sni",
        "`options=endpoint=` names another endpoint than the host name does: drop the option, \
         or make it match the host's first label",
    ),
    fatal(
        "must contain only alphanumeric characters and hyphen",
        "the endpoint id (the host's first label, or `options=endpoint=`) is malformed: use the \
         host name the workspace gives for the endpoint",
    ),
    fatal(
        "connection is insecure",
        "the proxy accepts TLS only: use an sslmode other than `disable`",
    ),
    // Last: the fatal texts above that start with it win.
    ProxyText {
        text: "control plane request failed",
        whole: true,
        class: ErrorClass::Transient,
        fix: None,
    },
];

fn proxy_text(message: &str) -> Option<&'static ProxyText> {
    let message = message.trim().to_ascii_lowercase();
    PROXY_TEXTS.iter().find(|entry| {
        if entry.whole {
            message == entry.text
        } else {
            message.contains(entry.text)
        }
    })
}

/// What the user must change to get past a fatal connect error, when the crate knows: the
/// Lakebase proxy's configuration errors (see the [module docs](self)), and
/// `channel_binding=require` against a server that did not bind.
///
/// ```
/// // A connection without SNI or `options=endpoint=` never reaches a Lakebase endpoint.
/// # fn demo(error: &tokio_postgres::Error) {
/// if let Some(fix) = lakebase_pool::retry::fix_for(error) {
///     eprintln!("to fix: {fix}");
/// }
/// # }
/// ```
pub fn fix_for(error: &tokio_postgres::Error) -> Option<&'static str> {
    if let Some(db) = error.as_db_error() {
        return (*db.code() == SqlState::INTERNAL_ERROR)
            .then(|| proxy_text(db.message()).and_then(|entry| entry.fix))
            .flatten();
    }
    // The server's certificate, as rustls judged it (inside an I/O error, whose `source`
    // skips it: its text is what is left to read).
    if error_chain_contains(error, "UnknownIssuer") {
        return Some(
            "the server's certificate is not trusted: it is not signed by a known certificate \
             authority. For a private CA, trust its certificate: PGSSLROOTCERT=<its PEM file>, or \
             `PoolBuilder::root_certificates_file` / `root_certificates_pem`",
        );
    }
    if error_chain_contains(error, "NotValidForName") {
        return Some(
            "the server's certificate does not name the host connected to: connect by the name \
             it is issued for (keep that name as the host, and give an address with PGHOSTADDR \
             or the resolver hook)",
        );
    }
    // tokio-postgres's own refusal under `channel_binding=require`; it has no error kind of
    // its own, so the text is the only way to tell.
    error_chain_contains(error, "did not use channel binding").then_some(
        "channel_binding is `require`, but the server did not offer SCRAM-SHA-256-PLUS (a \
         cleartext password, as token logins use, or MD5 or plain SCRAM cannot be \
         bound to the TLS session): use `prefer`, the default",
    )
}

fn error_chain_contains(error: &(dyn StdError + 'static), needle: &str) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if e.to_string().contains(needle) {
            return true;
        }
        current = e.source();
    }
    false
}

pub(crate) fn classify_io(kind: io::ErrorKind) -> ErrorClass {
    use io::ErrorKind::*;
    match kind {
        ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | UnexpectedEof
        | BrokenPipe | NotConnected => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

/// The kind of the first `io::Error` in the source chain, if any.
fn io_error_kind(error: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_wake_up_texts_are_transient() {
        for text in [
            "Couldn't connect to compute node",
            "endpoint is idle, retry request",
            "timed out while waiting for endpoint to become active",
        ] {
            assert_eq!(
                classify_server_error(&SqlState::INTERNAL_ERROR, text),
                ErrorClass::Transient,
                "{text}"
            );
        }
    }

    #[test]
    fn proxy_rate_limit_texts_are_rate_limited() {
        for text in [
            "Too many connections attempts",
            "Failed to acquire permit to connect to the database. Too many database connection attempts are currently ongoing.",
            "Too many connections to this endpoint",
        ] {
            assert_eq!(
                classify_server_error(&SqlState::INTERNAL_ERROR, text),
                ErrorClass::RateLimited,
                "{text}"
            );
        }
        assert_eq!(
            classify_server_error(
                &SqlState::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already"
            ),
            ErrorClass::RateLimited
        );
    }

    #[test]
    fn the_computes_refusals_relabelled_by_the_proxy_keep_their_class() {
        for (text, class) in [
            ("the database system is starting up", ErrorClass::Transient),
            (
                "the database system is not yet accepting connections",
                ErrorClass::Transient,
            ),
            (
                "the database system is shutting down",
                ErrorClass::Transient,
            ),
            ("sorry, too many clients already", ErrorClass::RateLimited),
            (
                "remaining connection slots are reserved for roles with the SUPERUSER attribute",
                ErrorClass::RateLimited,
            ),
            (
                "too many connections for role \"alice@example.com\"",
                ErrorClass::RateLimited,
            ),
            (
                "role \"alice@example.com\" does not exist",
                ErrorClass::Auth,
            ),
            ("role \"app\" is not permitted to log in", ErrorClass::Auth),
            ("Control plane request failed", ErrorClass::Transient),
            (" control plane request failed ", ErrorClass::Transient),
            (
                "Control plane request failed: endpoint is disabled",
                ErrorClass::Fatal,
            ),
            (
                "Control plane request failed: endpoint is temporarily unavailable. Check your quotas and/or contact our support.",
                ErrorClass::Fatal,
            ),
            (
                "Control plane request failed: your project is archived",
                ErrorClass::Fatal,
            ),
        ] {
            assert_eq!(
                classify_server_error(&SqlState::INTERNAL_ERROR, text),
                class,
                "{text}"
            );
        }
    }

    #[test]
    fn proxy_fatal_texts_and_unknown_internal_errors_are_fatal() {
        for text in [
            "endpoint is disabled",
            "endpoint cannot be found",
            "endpoint is temporarily unavailable. Check your quotas and/or contact our support.",
            "Endpoint ID is not specified. Either please upgrade the postgres client library",
            "something unexpected",
        ] {
            assert_eq!(
                classify_server_error(&SqlState::INTERNAL_ERROR, text),
                ErrorClass::Fatal,
                "{text}"
            );
        }
    }

    #[test]
    fn the_proxys_password_failure_is_a_rejected_login_not_a_fatal_error() {
        assert_eq!(
            classify_server_error(
                &SqlState::INTERNAL_ERROR,
                "password authentication failed for user 'alice'"
            ),
            ErrorClass::Auth
        );
    }

    #[test]
    fn every_fatal_proxy_text_says_what_to_fix_and_the_docs_list_every_text() {
        let docs: String = include_str!("mod.rs")
            .lines()
            .filter(|line| line.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n")
            .to_ascii_lowercase();
        for entry in &PROXY_TEXTS {
            assert_eq!(entry.text, entry.text.to_ascii_lowercase());
            assert_eq!(
                entry.fix.is_some(),
                entry.class == ErrorClass::Fatal,
                "{}",
                entry.text
            );
            assert!(
                docs.contains(&format!("| `{}` |", entry.text)),
                "the module docs do not list `{}`",
                entry.text
            );
        }
    }

    #[test]
    fn server_states_are_classified_by_sqlstate() {
        for code in [
            "57P01", "57P02", "57P03", "08000", "08001", "08003", "08006",
        ] {
            assert_eq!(
                classify_server_error(&SqlState::from_code(code), "x"),
                ErrorClass::Transient,
                "{code}"
            );
        }
        for code in ["28P01", "28000"] {
            assert_eq!(
                classify_server_error(&SqlState::from_code(code), "x"),
                ErrorClass::Auth
            );
        }
        for code in ["3D000", "42501", "42P01"] {
            assert_eq!(
                classify_server_error(&SqlState::from_code(code), "x"),
                ErrorClass::Fatal
            );
        }
    }

    #[test]
    fn io_kinds_before_startup_are_transient_others_fatal() {
        assert_eq!(
            classify_io(io::ErrorKind::ConnectionRefused),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_io(io::ErrorKind::UnexpectedEof),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_io(io::ErrorKind::PermissionDenied),
            ErrorClass::Fatal
        );
        let wrapped = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(
            io_error_kind(&wrapped),
            Some(io::ErrorKind::ConnectionReset)
        );
    }
}
