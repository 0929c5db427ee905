//! Which connection errors are worth retrying.
//!
//! # Classification
//!
//! [`classify`] sorts an error from opening a connection into an [`ErrorClass`]:
//!
//! * **Transient**: the server is down, restarting, or waking from scale-to-zero. I/O errors
//!   `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`, `TimedOut`, `UnexpectedEof`,
//!   `BrokenPipe`, `NotConnected`; a connection closed during start-up; SQLSTATE `57P01`,
//!   `57P02`, `57P03`, `08000`, `08001`, `08003`, `08006`; and the Lakebase proxy's own
//!   `XX000` messages "Couldn't connect to compute node", "endpoint is idle, retry request",
//!   "timed out while waiting for endpoint to become active".
//! * **Rate limited**: retry, but back off longer. SQLSTATE `53300` and the proxy messages "Too
//!   many connections attempts", "Failed to acquire permit to connect to the database", "Too
//!   many connections to this endpoint".
//! * **Auth**: SQLSTATE `28P01` or `28000`. The pool mints a fresh token and tries once more.
//! * **Fatal**: everything else, including the proxy's "endpoint is disabled", "endpoint
//!   cannot be found", "Check your quotas" and "Endpoint ID is not specified". Fails at once.
//!
//!
//! How long to wait between attempts is the [`RetryPolicy`](crate::RetryPolicy)'s business.

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
/// authentication errors included, is fatal.
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
        classify_proxy_message(message)
    } else {
        ErrorClass::Fatal
    }
}

/// The Lakebase (Neon) proxy reports its own failures as `XX000` with these texts.
fn classify_proxy_message(message: &str) -> ErrorClass {
    const RATE_LIMITED: [&str; 3] = [
        "too many connections attempts",
        "failed to acquire permit to connect to the database",
        "too many connections to this endpoint",
    ];
    const TRANSIENT: [&str; 3] = [
        "couldn't connect to compute node",
        "endpoint is idle, retry request",
        "timed out while waiting for endpoint to become active",
    ];
    let message = message.to_ascii_lowercase();
    if RATE_LIMITED.iter().any(|text| message.contains(text)) {
        ErrorClass::RateLimited
    } else if TRANSIENT.iter().any(|text| message.contains(text)) {
        ErrorClass::Transient
    } else {
        ErrorClass::Fatal
    }
}

fn classify_io(kind: io::ErrorKind) -> ErrorClass {
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
