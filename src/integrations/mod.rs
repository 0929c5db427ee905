//! Web framework integrations: a [`Connection`](crate::Connection) extractor for Axum
//! (feature `axum`) and Actix Web (feature `actix-web`), a [`ReadConnection`] extractor for
//! reads on a replica, a [`UserConnection`] extractor for connections as the signed-in user
//! of a Databricks App ([`UserPools`](crate::users::UserPools)), and [`HttpError`], which
//! turns the pool's errors into fitting HTTP responses.
//!
//! | error | status | `Retry-After` |
//! |---|---|---|
//! | every connection in use ([`Error::PoolTimeout`]) | 503 | 1 s |
//! | pool shut down ([`Error::PoolClosed`]) | 503 | 1 s |
//! | database unreachable or still waking up when the retry deadline passed ([`Error::ConnectRetriesExhausted`], [`Error::ConnectTimeout`]) | 503 | 5 s |
//! | no valid token ([`Error::Credentials`]) because the workspace could not answer (down, throttled, unreachable for a while) | 503 | when the pool asks the provider again, at least 1 s |
//! | no valid token because the workspace refused for good (the identity's credentials revoked or wrong, no such endpoint, a host that refuses connections or does not resolve) | 500 | |
//! | a transaction that kept failing with transient errors, or a lost connection | 503 | 1 s |
//! | no read replica could serve, or none caught up, with `ReadFallback::Fail` ([`Error::ReplicaUnavailable`], [`Error::ReplicaBehind`]) | 503 | 1 s |
//! | no trusted signed-in user, or the user's token or login refused ([`Error::UserUnauthorized`]) | 401 | |
//! | the user's token may not mint database credentials ([`UserProblem::Forbidden`](crate::UserProblem::Forbidden)) | 403 | |
//! | every per-user pool busy ([`Error::UserPoolsFull`]) | 503 | 1 s |
//! | any other error | 500 | |
//!
//! The body is a short fixed reason in plain text. It never carries the error itself: the
//! error chain is logged (at `WARN`, target `lakebase_pool::integrations`) when the response
//! is made. No error of this crate contains a token or a password.

#[cfg(feature = "actix-web")]
mod actix;
#[cfg(feature = "axum")]
mod axum;

use std::fmt;
use std::time::Duration;

use crate::Error;
use crate::error::BoxError;
use crate::error::error_chain;
use crate::error::first_workspace_error;
use crate::retry::{ErrorClass, classify_in_transaction};

/// A connection for reading, from [`Pool::get_read`](crate::Pool::get_read): on a read
/// replica, or on the read-write endpoint when none can serve (per the pool's
/// [`ReadFallback`](crate::ReadFallback)). As an extractor it works like
/// [`Connection`](crate::Connection)'s; it dereferences to it.
///
/// ```no_run
/// use lakebase_pool::integrations::{HttpError, ReadConnection};
///
/// async fn count(conn: ReadConnection) -> Result<String, HttpError> {
///     let row = conn.query_one("SELECT count(*) FROM todos", &[]).await?;
///     Ok(row.get::<_, i64>(0).to_string())
/// }
/// # let _ = count;
/// ```
#[derive(Debug)]
pub struct ReadConnection(pub crate::Connection);

impl ReadConnection {
    /// The connection itself.
    ///
    /// ```no_run
    /// # fn demo(conn: lakebase_pool::integrations::ReadConnection) {
    /// let conn: lakebase_pool::Connection = conn.into_inner();
    /// # let _ = conn;
    /// # }
    /// ```
    pub fn into_inner(self) -> crate::Connection {
        self.0
    }
}

impl std::ops::Deref for ReadConnection {
    type Target = crate::Connection;

    fn deref(&self) -> &crate::Connection {
        &self.0
    }
}

impl std::ops::DerefMut for ReadConnection {
    fn deref_mut(&mut self) -> &mut crate::Connection {
        &mut self.0
    }
}

/// A connection logged in as the request's signed-in user, from the
/// [`UserPools`](crate::users::UserPools) in the app's state (Axum: through `FromRef`;
/// Actix Web: as `web::Data<UserPools>`), with
/// [`UserPools::for_request`](crate::users::UserPools::for_request): the forwarded headers
/// are read only when trusted, and a request without a trusted user is answered 401 unless
/// the pools fall back to the app's identity. It dereferences to the
/// [`Connection`](crate::Connection).
///
/// ```no_run
/// use lakebase_pool::integrations::{HttpError, UserConnection};
///
/// async fn my_orders(conn: UserConnection) -> Result<String, HttpError> {
///     // Row-level security sees the signed-in user as `current_user`.
///     let row = conn.query_one("SELECT count(*) FROM orders", &[]).await?;
///     Ok(row.get::<_, i64>(0).to_string())
/// }
/// # let _ = my_orders;
/// ```
#[derive(Debug)]
pub struct UserConnection {
    connection: crate::Connection,
    as_user: bool,
}

impl UserConnection {
    /// Whether the connection is the signed-in user's (`false`: the app's, when the pools
    /// fall back to it for requests without a user).
    ///
    /// ```no_run
    /// # fn demo(conn: lakebase_pool::integrations::UserConnection) {
    /// assert!(conn.is_as_user());
    /// # }
    /// ```
    pub fn is_as_user(&self) -> bool {
        self.as_user
    }

    /// The connection itself.
    ///
    /// ```no_run
    /// # fn demo(conn: lakebase_pool::integrations::UserConnection) {
    /// let conn: lakebase_pool::Connection = conn.into_inner();
    /// # let _ = conn;
    /// # }
    /// ```
    pub fn into_inner(self) -> crate::Connection {
        self.connection
    }

    #[cfg(any(feature = "axum", feature = "actix-web"))]
    fn new((connection, as_user): (crate::Connection, bool)) -> Self {
        UserConnection {
            connection,
            as_user,
        }
    }
}

impl std::ops::Deref for UserConnection {
    type Target = crate::Connection;

    fn deref(&self) -> &crate::Connection {
        &self.connection
    }
}

impl std::ops::DerefMut for UserConnection {
    fn deref_mut(&mut self) -> &mut crate::Connection {
        &mut self.connection
    }
}

/// A database error as an HTTP response: status 503 with `Retry-After` when trying again
/// later may work, 500 otherwise; see the [module docs](self) for the table.
///
/// It is the rejection of the `Connection` extractors, and handlers can return it for their
/// own errors: it converts from [`Error`] and from [`tokio_postgres::Error`], so `?` works on
/// checkouts, queries and [`Pool::retry_transaction`](crate::Pool::retry_transaction).
///
/// ```
/// use std::time::Duration;
/// use lakebase_pool::Error;
/// use lakebase_pool::integrations::HttpError;
///
/// let closing = HttpError::from(Error::PoolClosed);
/// assert_eq!(closing.status(), 503);
/// assert_eq!(closing.retry_after(), Some(Duration::from_secs(1)));
/// assert_eq!(closing.reason(), "the service is shutting down; retry shortly");
/// ```
pub struct HttpError {
    status: u16,
    retry_after: Option<Duration>,
    reason: &'static str,
    source: BoxError,
}

const UNAVAILABLE: &str = "the database is temporarily unavailable; retry shortly";
const BUSY: &str = "the database is busy; retry shortly";
const INTERNAL: &str = "internal database error";
const SHORT_WAIT: Duration = Duration::from_secs(1);
const OUTAGE_WAIT: Duration = Duration::from_secs(5);

impl HttpError {
    /// The HTTP status: 503, 500, or for requests on behalf of a user 401 or 403.
    ///
    /// ```
    /// # use lakebase_pool::integrations::HttpError;
    /// assert_eq!(HttpError::from(lakebase_pool::Error::PoolClosed).status(), 503);
    /// ```
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The `Retry-After` value (whole seconds) for a 503.
    ///
    /// ```
    /// # use lakebase_pool::integrations::HttpError;
    /// let err = HttpError::from(lakebase_pool::Error::PoolClosed);
    /// assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(1)));
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The response body: a short fixed phrase, never the error itself.
    ///
    /// ```
    /// # use lakebase_pool::integrations::HttpError;
    /// let err = HttpError::from(lakebase_pool::Error::PoolClosed);
    /// assert!(!err.reason().is_empty());
    /// ```
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    fn unavailable(reason: &'static str, wait: Duration, source: BoxError) -> Self {
        HttpError {
            status: 503,
            retry_after: Some(wait),
            reason,
            source,
        }
    }

    fn internal(source: BoxError) -> Self {
        HttpError {
            status: 500,
            retry_after: None,
            reason: INTERNAL,
            source,
        }
    }

    /// Logs the full error chain; called when the response is made.
    fn log(&self) {
        tracing::warn!(
            target: "lakebase_pool::integrations",
            status = self.status,
            cause = %error_chain(self.source.as_ref()),
            "request failed with a database error"
        );
    }

    /// The `Retry-After` header value in whole seconds.
    fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|wait| wait.as_secs().max(1))
    }
}

impl From<Error> for HttpError {
    fn from(error: Error) -> Self {
        if let Error::UserUnauthorized { problem } = &error {
            let (status, reason) = match problem.http_status() {
                403 => (403, "not allowed for the signed-in user"),
                _ => (401, "sign-in required"),
            };
            return HttpError {
                status,
                retry_after: None,
                reason,
                source: Box::new(error),
            };
        }
        let wait = match &error {
            Error::PoolTimeout { .. } => Some((BUSY, SHORT_WAIT)),
            Error::PoolClosed => Some(("the service is shutting down; retry shortly", SHORT_WAIT)),
            Error::ConnectRetriesExhausted { .. } | Error::ConnectTimeout { .. } => {
                Some((UNAVAILABLE, OUTAGE_WAIT))
            }
            // Waiting cures only what the workspace could not answer; a refusal (a revoked
            // secret, a wrong host) is the service's own fault, not an outage.
            Error::Credentials { source, .. } if refused_for_good(source.as_ref()) => None,
            Error::Credentials { retry_in, .. } => Some((
                UNAVAILABLE,
                retry_in.map_or(OUTAGE_WAIT, |wait| {
                    Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
                        .max(SHORT_WAIT)
                }),
            )),
            error if error.is_transient() => Some((UNAVAILABLE, SHORT_WAIT)),
            _ => None,
        };
        match wait {
            Some((reason, wait)) => HttpError::unavailable(reason, wait, Box::new(error)),
            None => HttpError::internal(Box::new(error)),
        }
    }
}

/// Whether a credential provider's error is the workspace refusing for good: the first
/// workspace error in its chain is not transient (authentication refused, 4xx but 429, a
/// configuration error, a host that refuses connections or does not resolve).
fn refused_for_good(source: &(dyn std::error::Error + 'static)) -> bool {
    first_workspace_error(source).is_some_and(|workspace| !workspace.is_transient())
}

impl From<tokio_postgres::Error> for HttpError {
    fn from(error: tokio_postgres::Error) -> Self {
        match classify_in_transaction(&error) {
            ErrorClass::Transient | ErrorClass::RateLimited => {
                HttpError::unavailable(UNAVAILABLE, SHORT_WAIT, Box::new(error))
            }
            _ => HttpError::internal(Box::new(error)),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl fmt::Debug for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpError")
            .field("status", &self.status)
            .field("retry_after", &self.retry_after)
            .field("reason", &self.reason)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn credentials_wait_rounds_up_to_whole_seconds() {
        let err = HttpError::from(Error::Credentials {
            kind: crate::error::TokenKind::Database,
            retry_in: Some(Duration::from_millis(2_300)),
            source: Arc::new(std::io::Error::other("down")),
        });
        assert_eq!((err.status(), err.retry_after_secs()), (503, Some(3)));
        let err = HttpError::from(Error::Credentials {
            kind: crate::error::TokenKind::Database,
            retry_in: Some(Duration::ZERO),
            source: Arc::new(std::io::Error::other("down")),
        });
        assert_eq!(err.retry_after_secs(), Some(1));
    }

    #[test]
    fn user_refusals_are_401_or_403_without_retry_after() {
        use crate::UserProblem;
        for (problem, status) in [
            (UserProblem::NotForwarded, 401),
            (UserProblem::TokenRejected, 401),
            (UserProblem::IdentityMismatch, 401),
            (UserProblem::LoginRefused, 401),
            (UserProblem::Forbidden, 403),
        ] {
            let err = HttpError::from(Error::UserUnauthorized { problem });
            assert_eq!(
                (err.status(), err.retry_after()),
                (status, None),
                "{problem:?}"
            );
        }
        let full = HttpError::from(Error::UserPoolsFull { max_users: 3 });
        assert_eq!((full.status(), full.retry_after_secs()), (503, Some(1)));
    }

    #[test]
    fn configuration_errors_are_internal_and_say_nothing_about_themselves() {
        let err = HttpError::from(Error::invalid("max_size", "secret-looking detail"));
        assert_eq!((err.status(), err.retry_after()), (500, None));
        assert_eq!(err.to_string(), INTERNAL);
        assert!(!err.reason().contains("detail"));
    }
}
