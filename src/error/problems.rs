//! Why a user's connection was refused, and how a workspace request failed: the details
//! that `Error::UserUnauthorized` and `WorkspaceError::Request` carry.

use std::time::Duration;

/// Why a connection on behalf of a signed-in user was refused; see
/// [`Error::UserUnauthorized`](crate::Error::UserUnauthorized). `Display` says what to do about it, and never names the user.
///
/// ```
/// use lakebase_pool::UserProblem;
///
/// assert!(UserProblem::TokenRejected.to_string().contains("sign in again"));
/// assert_eq!(UserProblem::Forbidden.http_status(), 403);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserProblem {
    /// The request carries no signed-in user: no `X-Forwarded-Email` and
    /// `X-Forwarded-Access-Token`, or the app does not trust forwarded headers.
    NotForwarded,
    /// A forwarded header is not valid text, empty, or too long.
    InvalidHeaders,
    /// The workspace refused the user's token (HTTP 401): expired, revoked, or not a token.
    TokenRejected,
    /// The workspace refused to mint a database credential with the user's token (HTTP 403):
    /// the token lacks the scope for it, or the user may not use the endpoint.
    Forbidden,
    /// The forwarded email is not the identity of the forwarded token.
    IdentityMismatch,
    /// The database refused the login with a credential freshly minted for the user.
    LoginRefused,
}

impl UserProblem {
    /// The HTTP status a web service answers with: 403 for [`Forbidden`](Self::Forbidden)
    /// (the user is known but may not do this), 401 for the rest.
    ///
    /// ```
    /// assert_eq!(lakebase_pool::UserProblem::TokenRejected.http_status(), 401);
    /// ```
    pub fn http_status(self) -> u16 {
        match self {
            UserProblem::Forbidden => 403,
            _ => 401,
        }
    }
}

impl std::fmt::Display for UserProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UserProblem::NotForwarded => {
                "the request carries no signed-in user (the Databricks Apps proxy sets \
                 X-Forwarded-Email and X-Forwarded-Access-Token when the app has user \
                 authorization; forwarded headers are read only when trusted, see \
                 `UserPoolsBuilder::forwarded_headers`)"
            }
            UserProblem::InvalidHeaders => {
                "a forwarded user header is empty, not valid text, or too long"
            }
            UserProblem::TokenRejected => {
                "the workspace refused the signed-in user's token (HTTP 401: expired, revoked or \
                 not a token); the user must sign in again"
            }
            UserProblem::Forbidden => {
                "the workspace refused to mint a database credential with the signed-in user's \
                 token (HTTP 403): add the Lakebase database scope to the app's user \
                 authorization, and give the user access to the endpoint"
            }
            UserProblem::IdentityMismatch => {
                "the forwarded email is not the identity of the forwarded token; refused"
            }
            UserProblem::LoginRefused => {
                "the database refused the signed-in user's login with a freshly minted \
                 credential (check that the user's Postgres role exists and may log in)"
            }
        })
    }
}

/// How a workspace request failed without an API error answer; see
/// [`WorkspaceError::Request`](crate::databricks::WorkspaceError::Request).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestProblem {
    /// The workspace could not be reached (a reset, TLS, a DNS server that did not answer).
    Unreachable,
    /// Nothing accepts connections at the workspace's address: a wrong `DATABRICKS_HOST`
    /// (or port), known at once; not retried.
    ConnectionRefused {
        /// The workspace's host, as configured.
        host: String,
    },
    /// The workspace's host name does not resolve: a wrong `DATABRICKS_HOST`, known at
    /// once; not retried.
    HostNotFound {
        /// The workspace's host, as configured.
        host: String,
    },
    /// No answer within the request timeout.
    TimedOut(Duration),
    /// The answer began but the connection dropped before its end.
    CutOff,
    /// The answer was larger than the size cap.
    BodyTooLarge(usize),
    /// The answer was not the JSON the API documents.
    InvalidResponse(String),
    /// The workspace answered 429 or 503 and asked to wait longer than what is left of the
    /// retry budget, so the call gave up instead of waiting.
    Throttled {
        /// The HTTP status (429 or 503).
        status: u16,
        /// How long the workspace asked to wait (`Retry-After` or the body's `RetryInfo`).
        retry_after: Duration,
        /// What was left of the retry budget.
        budget_left: Duration,
    },
}

impl std::fmt::Display for RequestProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestProblem::Unreachable => f.write_str(
                "the workspace could not be reached (check DATABRICKS_HOST and the network)",
            ),
            RequestProblem::ConnectionRefused { host } => write!(
                f,
                "the workspace at {host} refused the connection: nothing listens there; check \
                 DATABRICKS_HOST (`WorkspaceBuilder::host`)"
            ),
            RequestProblem::HostNotFound { host } => write!(
                f,
                "the workspace host {host} does not resolve: check DATABRICKS_HOST \
                 (`WorkspaceBuilder::host`) and the network's DNS"
            ),
            RequestProblem::TimedOut(after) => write!(f, "no answer within {after:.1?}"),
            RequestProblem::CutOff => {
                f.write_str("the answer was cut off: the connection dropped before its end")
            }
            RequestProblem::BodyTooLarge(limit) => {
                write!(f, "the answer is larger than the {limit}-byte limit")
            }
            RequestProblem::InvalidResponse(problem) => write!(f, "unexpected answer: {problem}"),
            RequestProblem::Throttled {
                status,
                retry_after,
                budget_left,
            } => write!(
                f,
                "HTTP {status}: the workspace asks to wait {retry_after:.1?}, more than the \
                 {budget_left:.1?} left of the retry budget (try again later, or raise \
                 `WorkspaceBuilder::retry_budget`)"
            ),
        }
    }
}
