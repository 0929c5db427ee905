//! The crate's one error type.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

mod problems;
mod statement;
mod workspace;

pub use self::problems::{RequestProblem, UserProblem};
pub use self::statement::StatementTimedOut;
pub use self::workspace::{AuthMethod, WorkspaceError};

/// A boxed error from a credential provider or another pluggable part.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A boxed, `Send` future, as returned by
/// [`CredentialProvider::credential`](crate::credentials::CredentialProvider::credential) and
/// [`Resolve::resolve`](crate::resolve::Resolve::resolve).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `error: cause: cause ...`, for log lines (tokio-postgres's own `Display` is just "db error").
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    use std::fmt::Write as _;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Which token an [`Error::Credentials`] is about.
///
/// ```
/// use lakebase_pool::credentials::TokenKind;
///
/// assert_eq!(TokenKind::Workspace.to_string(), "workspace token");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenKind {
    /// The database password of the pool's identity (a Lakebase token, or any provider's).
    Database,
    /// The token the workspace client authenticates its API calls with.
    Workspace,
    /// A signed-in user's database token ([`UserPools`](crate::users::UserPools)).
    UserDatabase,
}

impl TokenKind {
    /// The words messages and logs use for it: `"database token"`, `"workspace token"`,
    /// `"user database token"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Database => "database token",
            TokenKind::Workspace => "workspace token",
            TokenKind::UserDatabase => "user database token",
        }
    }
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error shared by every caller that waited on the same operation (one token mint serves
/// many checkouts, so its failure is reported to all of them).
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong when building a [`Pool`](crate::Pool) or checking a connection
/// out of it.
///
/// `Display` is a short phrase that names what failed and, in parentheses, what to do about it.
/// The underlying cause is never repeated in `Display`; it is available through
/// [`std::error::Error::source`], so printing the whole chain shows each cause once.
/// No variant ever contains a token or password.
///
/// The predicates [`is_transient`](Error::is_transient), [`is_auth`](Error::is_auth) and
/// [`is_timeout`](Error::is_timeout) sort errors by what a caller should do with them.
///
/// ```
/// use lakebase_pool::Error;
///
/// fn http_status(err: &Error) -> u16 {
///     if err.is_transient() { 503 } else { 500 }
/// }
/// # let _ = http_status;
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing, out of range or contradicts another. Raised when something is
    /// built or opened from settings ([`PoolBuilder::build`](crate::PoolBuilder::build),
    /// [`WorkspaceBuilder::build`](crate::databricks::WorkspaceBuilder::build),
    /// [`Pool::listener`](crate::Pool::listener)); never by a checkout.
    #[error("invalid setting `{setting}`: {problem}")]
    #[non_exhaustive]
    InvalidConfig {
        /// The builder method or setting at fault, e.g. `"max_size"`.
        setting: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
        /// The underlying error, when there is one (an unreadable file, a bad certificate).
        #[source]
        source: Option<BoxError>,
    },

    /// No database token that is still valid could be obtained: the credential provider failed
    /// (its error is the [`source`](std::error::Error::source)) and no cached token is left that
    /// has not expired.
    #[error("{}no valid {kind} is available ({})", headline(.source.as_ref()), retry_hint(*.retry_in))]
    #[non_exhaustive]
    Credentials {
        /// Which token.
        kind: TokenKind,
        /// How long until the pool asks the provider again, when it is backing off.
        retry_in: Option<Duration>,
        /// The provider's error.
        #[source]
        source: SharedError,
    },

    /// Connecting kept failing with transient errors (server down, starting up, waking from
    /// scale-to-zero, rate limited) until the retry deadline passed. The last attempt's error
    /// is the [`source`](std::error::Error::source).
    #[error(
        "gave up connecting to {target} after {attempts} attempts in {elapsed:.1?} (the server \
         kept failing with transient errors; it may be down or still waking up; \
         `RetryPolicy::deadline` sets how long to keep trying)"
    )]
    #[non_exhaustive]
    ConnectRetriesExhausted {
        /// `user@host:port/dbname` of the connection that failed.
        target: String,
        /// How many connection attempts were made.
        attempts: u32,
        /// Time from the first attempt to giving up.
        elapsed: Duration,
        /// The last attempt's error.
        #[source]
        source: BoxError,
    },

    /// Connecting failed with an error that retrying cannot fix (wrong database name, endpoint
    /// disabled or unknown, no SNI, protocol error, ...). The server's error is the
    /// [`source`](std::error::Error::source); `fix` says what to change when the crate knows
    /// (the Lakebase proxy's configuration errors, see [`retry`](crate::retry)).
    #[error(
        "could not connect to {target}: {}",
        fix.unwrap_or("the error is not retryable; the cause says what to fix")
    )]
    #[non_exhaustive]
    Connect {
        /// `user@host:port/dbname` of the connection that failed.
        target: String,
        /// What to change, when known ([`retry::fix_for`](crate::retry::fix_for)).
        fix: Option<&'static str>,
        /// The server's error: a [`tokio_postgres::Error`], or its text with the user's name
        /// redacted for a per-user pool ([`users`](crate::users)).
        #[source]
        source: BoxError,
    },

    /// The server refused the login twice, the second time with a freshly minted token (or a
    /// freshly read password): retrying will not help.
    #[error("{target} refused the login as `{user}`: {}", refusal_fix(.fixed_password.as_deref()))]
    #[non_exhaustive]
    AuthRejected {
        /// `user@host:port/dbname` of the connection that failed.
        target: String,
        /// The role the login was for.
        user: String,
        /// Where the password came from when it is a fixed one (`PGPASSWORD`,
        /// `` `PoolBuilder::password` ``); `None` for minted tokens.
        fixed_password: Option<String>,
        /// The server's authentication error: SQLSTATE `28P01` or `28000` from Postgres, or
        /// the Lakebase proxy's `XX000` "password authentication failed" (a
        /// [`tokio_postgres::Error`], or its text with the user's name redacted for a
        /// per-user pool).
        #[source]
        source: BoxError,
    },

    /// Plain text (`sslmode=disable`) is allowed only to loopback, and the host, whose name
    /// looks local, resolved to an address that is not: the token was not sent.
    #[error(
        "refused to send the token in plain text to {target}: `{host}` resolved to {address}, \
         which is not a loopback address (use TLS, or `.dangerous().allow_plaintext()` on a \
         network you trust)"
    )]
    #[non_exhaustive]
    PlaintextRefused {
        /// `user@host:port/dbname` of the connection.
        target: String,
        /// The host name.
        host: String,
        /// The address it resolved to.
        address: std::net::IpAddr,
    },

    /// Every connection was in use and none came back within the wait timeout.
    #[error(
        "timed out after {waited:.1?} waiting for a free connection (all {max_size} are in \
         use; raise `max_size` or `wait_timeout`, or return connections sooner)"
    )]
    #[non_exhaustive]
    PoolTimeout {
        /// The configured wait timeout.
        waited: Duration,
        /// The pool's size limit.
        max_size: usize,
    },

    /// Opening a connection took longer than the pool's overall bound for it. This is a
    /// backstop behind the retry deadline and token timeout and should not normally fire.
    #[error(
        "opening a connection to {target} took longer than {after:.1?} (the server or the token provider hangs)"
    )]
    #[non_exhaustive]
    ConnectTimeout {
        /// `user@host:port/dbname` of the connection that failed.
        target: String,
        /// The bound that was exceeded.
        after: Duration,
    },

    /// A transaction run by [`Pool::retry_transaction`](crate::Pool::retry_transaction)
    /// failed and was rolled back: with an error that retrying cannot fix, or with transient
    /// errors until the retry deadline passed.
    #[error(
        "the transaction failed on attempt {attempts} and was rolled back (the cause says why; \
         transient errors are retried until `RetryPolicy::deadline`)"
    )]
    #[non_exhaustive]
    Transaction {
        /// How many times the transaction was run.
        attempts: u32,
        /// The error of the last attempt: a [`tokio_postgres::Error`], or a
        /// [`StatementTimedOut`] when `BEGIN` or `ROLLBACK` got no answer.
        #[source]
        source: BoxError,
        /// Whether that error was transient (then the retry deadline passed): what
        /// [`Error::is_transient`] says of this error.
        transient: bool,
    },

    /// The connection failed while `COMMIT` was in flight, so whether the transaction was
    /// applied is unknown. [`Pool::retry_transaction`](crate::Pool::retry_transaction) never
    /// retries this.
    #[error(
        "the connection failed during COMMIT, so the transaction may or may not have been \
         applied (it was not retried; check its effect before running it again)"
    )]
    #[non_exhaustive]
    CommitOutcomeUnknown {
        /// The connection error (a [`tokio_postgres::Error`]), or a [`StatementTimedOut`]
        /// when `COMMIT` got no answer within
        /// [`RetryPolicy::command_timeout`](crate::RetryPolicy::command_timeout).
        #[source]
        source: BoxError,
    },

    /// The connection of a [`Listener`](crate::Listener) was lost; reported in
    /// [`ListenerEvent::Disconnected`](crate::ListenerEvent::Disconnected) while the listener
    /// reconnects by itself.
    #[error("the connection to {target} was lost (the listener reconnects by itself)")]
    #[non_exhaustive]
    ConnectionLost {
        /// `user@host:port/dbname` of the connection.
        target: String,
        /// The connection's error; `None` when the server closed it without one.
        #[source]
        source: Option<tokio_postgres::Error>,
    },

    /// `LISTEN` failed on a freshly opened [`Listener`](crate::Listener) connection.
    #[error("LISTEN failed on {target} (the cause says why)")]
    #[non_exhaustive]
    Listen {
        /// `user@host:port/dbname` of the connection.
        target: String,
        /// The server's error (a [`tokio_postgres::Error`]), or a [`StatementTimedOut`].
        #[source]
        source: BoxError,
    },

    /// A statement the pool sends itself for a read replica feature
    /// ([`Connection::write_position`](crate::Connection::write_position), the replay check
    /// of [`Pool::get_read_at`](crate::Pool::get_read_at)) failed or got no answer.
    #[error("`{statement}` failed (the cause says why)")]
    #[non_exhaustive]
    Statement {
        /// The statement.
        statement: &'static str,
        /// The server's error (a [`tokio_postgres::Error`]), or a [`StatementTimedOut`].
        #[source]
        source: BoxError,
    },

    /// No read replica could serve a read, and the pool's
    /// [`ReadFallback`](crate::ReadFallback) is `Fail`.
    #[error(
        "no read replica could serve the read ({replicas} configured, {problem}), and the read \
         fallback is `Fail` (use `ReadFallback::Primary` to read from the read-write endpoint)"
    )]
    #[non_exhaustive]
    ReplicaUnavailable {
        /// How many replicas the pool has.
        replicas: usize,
        /// Why none served: all unhealthy, none discovered, ...
        problem: String,
        /// The last replica's error, if one was tried.
        #[source]
        source: Option<Box<Error>>,
    },

    /// No read replica had replayed the requested write position within the catch-up
    /// timeout ([`Pool::get_read_at`](crate::Pool::get_read_at)), and the pool's
    /// [`ReadFallback`](crate::ReadFallback) is `Fail`.
    #[error(
        "the read replica had not replayed up to {position} after {waited:.1?} (see \
         `PoolBuilder::replica_catch_up_timeout`), and the read fallback is `Fail`"
    )]
    #[non_exhaustive]
    ReplicaBehind {
        /// The write position asked for (`pg_lsn` text, such as `0/16B3748`).
        position: String,
        /// How long the pool waited for the replica to catch up.
        waited: Duration,
    },

    /// A write was sent to a read-only replica (SQLSTATE `25006`) in
    /// [`Pool::retry_read_transaction`](crate::Pool::retry_read_transaction). Not retried: it
    /// would fail the same way.
    #[error(
        "{target} is a read-only replica and refused a write (SQLSTATE 25006); run writes with \
         `Pool::get` or `Pool::retry_transaction`"
    )]
    #[non_exhaustive]
    ReadOnly {
        /// `user@host:port/dbname` of the replica.
        target: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The Databricks workspace: its settings, authenticating to it, an API call, or a
    /// long-running operation (see [`WorkspaceError`](crate::databricks::WorkspaceError)).
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),

    /// A connection on behalf of a signed-in user ([`UserPools::for_user`](crate::users::UserPools::for_user)
    /// and the `UserConnection` extractors) was refused: the request names no user the app
    /// may trust, or the user's own token or login was refused. Never retried, and never
    /// answered with the app's own identity. The web integrations answer 401 (403 for
    /// [`UserProblem::Forbidden`]). Names no user and no token.
    #[error("{problem}")]
    #[non_exhaustive]
    UserUnauthorized {
        /// What was refused, and what to do about it.
        problem: UserProblem,
    },

    /// A request for a user who has no pool yet came while every per-user pool was busy
    /// (each has a checkout in progress), so none could be evicted to make room.
    #[error(
        "all {max_users} per-user pools are busy (raise `UserPoolsBuilder::max_users`, or \
         return connections sooner)"
    )]
    #[non_exhaustive]
    UserPoolsFull {
        /// The configured limit on users with a pool.
        max_users: usize,
    },

    /// The pool has been closed with [`Pool::close`](crate::Pool::close) or
    /// [`Pool::shutdown`](crate::Pool::shutdown).
    #[error("the pool is closed")]
    PoolClosed,

    /// A statement run with [`Connection::timeout`](crate::Connection::timeout) ran past its
    /// limit: it was cancelled on the server. When the server did not answer the cancel in
    /// time (`settled` is false), the connection is closed instead of reused.
    #[error(
        "the statement ran past its limit of {limit:.1?} and was cancelled on the server{}",
        if *settled { "" } else { " (it did not settle in time; its connection is closed)" }
    )]
    #[non_exhaustive]
    StatementTimeout {
        /// The limit that fired.
        limit: Duration,
        /// Whether the server finished with the statement in time, so the connection is
        /// ready for the next statement.
        settled: bool,
    },

    /// A cancel request ([`CancelHandle::cancel`](crate::CancelHandle::cancel)) could not be
    /// delivered within its bound: the server or a proxy did not take it.
    #[error("the cancel request could not be delivered (the cause says why)")]
    #[non_exhaustive]
    CancelFailed {
        /// Why: no answer in time, a refused connection, a TLS failure.
        #[source]
        source: BoxError,
    },

    /// A Lakebase endpoint name does not have the form
    /// `projects/<project>/branches/<branch>/endpoints/<endpoint>`.
    #[error("invalid Lakebase endpoint name `{input}`: {problem}")]
    #[non_exhaustive]
    InvalidEndpointName {
        /// The text that was given (shortened to 200 characters).
        input: String,
        /// Which part is wrong.
        problem: String,
    },

    /// An environment variable is missing or malformed.
    #[error("environment variable {var} {problem}")]
    #[non_exhaustive]
    InvalidEnv {
        /// The variable's name.
        var: &'static str,
        /// What is wrong and what it should look like.
        problem: String,
    },
}

/// What a refused login's caller should check: the fixed password and where it was set, or
/// the tokens' identity and endpoint.
fn refusal_fix(fixed_password: Option<&str>) -> String {
    match fixed_password {
        Some(source) => format!(
            "the password (set in {source}) was refused: check that it is the role's password \
             and that the role exists and may log in (a Lakebase token as the password: that it \
             has not expired and that the endpoint exists, which is refused the same way)"
        ),
        None => String::from(
            "the token was rejected, and a freshly minted one too (check that the role exists, \
             may log in, and matches the identity the tokens are minted for, and that the \
             endpoint exists: Lakebase answers a token for an unknown endpoint the same way)",
        ),
    }
}

/// What a caller must fix, when the provider's error chain says it in so many words (a
/// workspace host that refuses connections or does not resolve), followed by `: `; else
/// nothing. It leads the message, so that the first thing read is the fix.
fn headline(source: &(dyn StdError + 'static)) -> String {
    match first_workspace_error(source) {
        Some(WorkspaceError::Request {
            problem:
                problem @ (RequestProblem::ConnectionRefused { .. }
                | RequestProblem::HostNotFound { .. }),
            ..
        }) => format!("{problem}: "),
        _ => String::new(),
    }
}

/// The first workspace error in `source`'s chain (as an [`Error::Workspace`] or on its own):
/// what a credential provider's failure was, when the workspace was involved.
pub(crate) fn first_workspace_error<'a>(
    source: &'a (dyn StdError + 'static),
) -> Option<&'a WorkspaceError> {
    let mut cause = Some(source);
    while let Some(error) = cause {
        let workspace = match error.downcast_ref::<Error>() {
            Some(Error::Workspace(workspace)) => Some(workspace),
            _ => error.downcast_ref::<WorkspaceError>(),
        };
        if workspace.is_some() {
            return workspace;
        }
        cause = error.source();
    }
    None
}

fn retry_hint(retry_in: Option<Duration>) -> String {
    match retry_in {
        Some(wait) => format!(
            "the credential provider failed; the pool asks it again in {wait:.1?}, on a later checkout"
        ),
        None => {
            "the credential provider failed; the pool asks it again on the next checkout".into()
        }
    }
}

impl Error {
    /// The variant's name: the `error.type` of an OpenTelemetry span (a short, stable value
    /// that names no target, user or secret).
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Error::InvalidConfig { .. } => "InvalidConfig",
            Error::Credentials { .. } => "Credentials",
            Error::ConnectRetriesExhausted { .. } => "ConnectRetriesExhausted",
            Error::Connect { .. } => "Connect",
            Error::AuthRejected { .. } => "AuthRejected",
            Error::PlaintextRefused { .. } => "PlaintextRefused",
            Error::PoolTimeout { .. } => "PoolTimeout",
            Error::ConnectTimeout { .. } => "ConnectTimeout",
            Error::Transaction { .. } => "Transaction",
            Error::CommitOutcomeUnknown { .. } => "CommitOutcomeUnknown",
            Error::ConnectionLost { .. } => "ConnectionLost",
            Error::Listen { .. } => "Listen",
            Error::Statement { .. } => "Statement",
            Error::ReplicaUnavailable { .. } => "ReplicaUnavailable",
            Error::ReplicaBehind { .. } => "ReplicaBehind",
            Error::ReadOnly { .. } => "ReadOnly",
            Error::UserUnauthorized { .. } => "UserUnauthorized",
            Error::UserPoolsFull { .. } => "UserPoolsFull",
            Error::PoolClosed => "PoolClosed",
            Error::StatementTimeout { .. } => "StatementTimeout",
            Error::CancelFailed { .. } => "CancelFailed",
            Error::Workspace(error) => error.type_name(),
            Error::InvalidEndpointName { .. } => "InvalidEndpointName",
            Error::InvalidEnv { .. } => "InvalidEnv",
        }
    }

    /// Whether trying again later may succeed: connection retries ran out, the pool was
    /// exhausted, the credential provider failed (it may recover), or a transaction kept
    /// failing with transient errors. A [`CommitOutcomeUnknown`](Error::CommitOutcomeUnknown)
    /// is not transient: repeating it blindly may apply it twice.
    ///
    /// ```
    /// let err = lakebase_pool::Error::PoolClosed;
    /// assert!(!err.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            Error::ConnectRetriesExhausted { .. }
            | Error::PoolTimeout { .. }
            | Error::ConnectTimeout { .. }
            | Error::Credentials { .. }
            | Error::ConnectionLost { .. }
            | Error::ReplicaUnavailable { .. }
            | Error::ReplicaBehind { .. }
            | Error::UserPoolsFull { .. } => true,
            // Decided where it was made, by the transaction's own classification.
            Error::Transaction { transient, .. } => *transient,
            Error::Workspace(error) => error.is_transient(),
            _ => false,
        }
    }

    /// Whether a login or a workspace call was refused for its credentials: the server rejected
    /// a fresh token, workspace authentication failed, or the API answered 401 or 403.
    ///
    /// ```
    /// assert!(!lakebase_pool::Error::PoolClosed.is_auth());
    /// ```
    pub fn is_auth(&self) -> bool {
        match self {
            Error::AuthRejected { .. } | Error::UserUnauthorized { .. } => true,
            Error::Workspace(error) => error.is_auth(),
            _ => false,
        }
    }

    /// Whether the error is a timeout: waiting for a free connection, or opening one.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) {
    /// match pool.get().await {
    ///     Err(err) if err.is_timeout() => eprintln!("the database or the pool is too slow: {err}"),
    ///     Err(err) => eprintln!("{err}"),
    ///     Ok(_conn) => {}
    /// }
    /// # }
    /// ```
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::PoolTimeout { .. }
            | Error::ConnectTimeout { .. }
            | Error::StatementTimeout { .. } => true,
            Error::Workspace(error) => error.is_timeout(),
            _ => false,
        }
    }

    pub(crate) fn invalid(setting: &'static str, problem: impl Into<String>) -> Self {
        Error::InvalidConfig {
            setting,
            problem: problem.into(),
            source: None,
        }
    }

    pub(crate) fn workspace_config(problem: impl Into<String>) -> Self {
        WorkspaceError::config(problem).into()
    }

    pub(crate) fn workspace_config_because(
        problem: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        WorkspaceError::config_because(problem, source).into()
    }

    /// [`Error::InvalidConfig`] with its cause kept as the source (not printed twice).
    pub(crate) fn invalid_because(
        setting: &'static str,
        problem: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::InvalidConfig {
            setting,
            problem: problem.into(),
            source: Some(source.into()),
        }
    }
}

#[cfg(test)]
mod tests;
