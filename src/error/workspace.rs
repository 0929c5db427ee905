//! The Databricks workspace's errors (`databricks::WorkspaceError`), and the auth methods they
//! name. They live beside `Error` so that the error module stays a leaf (as rustls keeps
//! `CertificateError` beside its `Error`); their public path is `lakebase_pool::databricks`.

use std::fmt;
use std::time::Duration;

use super::problems::RequestProblem;
use super::{BoxError, Error};

/// How a [`Workspace`](crate::databricks::Workspace) authenticates, as chosen by
/// [`WorkspaceBuilder::build`](crate::databricks::WorkspaceBuilder::build).
///
/// ```
/// use lakebase_pool::databricks::AuthMethod;
///
/// let method: AuthMethod = "oauth-m2m".parse()?;
/// assert_eq!(method, AuthMethod::OAuthM2M);
/// assert_eq!(method.to_string(), "oauth-m2m");
/// # Ok::<(), lakebase_pool::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A personal access token (`DATABRICKS_TOKEN`).
    Pat,
    /// OAuth client credentials of a service principal (`DATABRICKS_CLIENT_ID` and
    /// `DATABRICKS_CLIENT_SECRET`), as Databricks Apps use.
    OAuthM2M,
    /// The Databricks CLI's login (`databricks auth token`).
    DatabricksCli,
    /// A token source given with
    /// [`WorkspaceBuilder::token_source`](crate::databricks::WorkspaceBuilder::token_source).
    Custom,
}

impl AuthMethod {
    /// The name people know it by, for messages.
    fn label(self) -> &'static str {
        match self {
            AuthMethod::Pat => "a personal access token",
            AuthMethod::OAuthM2M => "OAuth M2M",
            AuthMethod::DatabricksCli => "Databricks CLI",
            AuthMethod::Custom => "the custom token source",
        }
    }
}

impl std::str::FromStr for AuthMethod {
    type Err = Error;

    /// The names of `DATABRICKS_AUTH_TYPE` and the profiles' `auth_type`.
    fn from_str(text: &str) -> Result<Self, Error> {
        match text.trim() {
            "pat" => Ok(AuthMethod::Pat),
            "oauth-m2m" => Ok(AuthMethod::OAuthM2M),
            "databricks-cli" => Ok(AuthMethod::DatabricksCli),
            other => Err(WorkspaceError::config(format!(
                "auth_type `{other}` is not supported (use pat, oauth-m2m or databricks-cli)"
            ))
            .into()),
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Pat => "pat",
            AuthMethod::OAuthM2M => "oauth-m2m",
            AuthMethod::DatabricksCli => "databricks-cli",
            AuthMethod::Custom => "custom",
        })
    }
}

/// What went wrong with the Databricks workspace: its settings, authenticating to it, an API
/// call, or a long-running operation. Carried by [`Error::Workspace`].
///
/// ```
/// use lakebase_pool::Error;
/// use lakebase_pool::databricks::WorkspaceError;
///
/// fn is_permission_problem(err: &Error) -> bool {
///     matches!(err, Error::Workspace(WorkspaceError::Api { status: 403, .. }))
/// }
/// # let _ = is_permission_problem;
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkspaceError {
    /// The workspace settings are incomplete or contradict each other (no host, two auth
    /// methods at once, a profile that does not exist, an unreadable config file).
    #[error("invalid Databricks workspace configuration: {problem}")]
    #[non_exhaustive]
    Config {
        /// What is wrong and how to fix it.
        problem: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// Getting a workspace token failed (OAuth token endpoint, Databricks CLI, or a custom
    /// token source).
    #[error("could not authenticate to the Databricks workspace with {}: {problem}", method.label())]
    #[non_exhaustive]
    Auth {
        /// The auth method that failed.
        method: AuthMethod,
        /// What failed, without any secret.
        problem: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The workspace answered an API call with an error status.
    #[error("{method} {path} failed with HTTP {status}{}: {message}", code_suffix(error_code.as_deref()))]
    #[non_exhaustive]
    Api {
        /// HTTP method.
        method: reqwest::Method,
        /// Request path, e.g. `/api/2.0/postgres/credentials`.
        path: String,
        /// HTTP status code.
        status: u16,
        /// The API's `error_code` (e.g. `PERMISSION_DENIED`), when the body had one.
        error_code: Option<String>,
        /// The API's message, or a description of a body that was not an API error.
        message: String,
    },

    /// An API call failed without an API answer: unreachable, timed out, or an answer that
    /// could not be used.
    #[error("{method} {path} failed: {problem}")]
    #[non_exhaustive]
    Request {
        /// HTTP method.
        method: reqwest::Method,
        /// Request path.
        path: String,
        /// What went wrong.
        problem: RequestProblem,
        /// The transport error, when there was one.
        #[source]
        source: Option<BoxError>,
    },

    /// A long-running operation (creating or deleting a branch or an endpoint) ended in error.
    #[error("operation {name} failed: [{code}] {message}")]
    #[non_exhaustive]
    Operation {
        /// `projects/<p>/operations/<id>`.
        name: String,
        /// The service's error code, such as `FAILED_PRECONDITION`.
        code: String,
        /// The service's message.
        message: String,
    },

    /// A long-running operation was not done within the deadline given to
    /// [`Workspace::wait_for`](crate::databricks::Workspace::wait_for). It may still finish.
    #[error(
        "operation {name} was not done after {waited:.1?} (it may still finish; wait longer \
         or check it in the workspace)"
    )]
    #[non_exhaustive]
    OperationTimedOut {
        /// `projects/<p>/operations/<id>`.
        name: String,
        /// How long it was waited for.
        waited: Duration,
    },

    /// The project has as many branches as the service allows (10 unarchived ones).
    #[error(
        "project {project} has reached its branch limit: {message} (delete branches that are \
         no longer needed, or let their TTL expire; CI branches should always have one)"
    )]
    #[non_exhaustive]
    BranchLimit {
        /// The project id.
        project: String,
        /// The service's message.
        message: String,
    },
}

fn code_suffix(code: Option<&str>) -> String {
    code.map(|c| format!(" {c}")).unwrap_or_default()
}

impl WorkspaceError {
    /// Whether trying again later may succeed: the workspace was unreachable, slow, cut the
    /// answer off, throttled the call, or answered 429 or 5xx.
    ///
    /// ```no_run
    /// use lakebase_pool::Error;
    ///
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), Error> {
    /// match workspace.current_user().await {
    ///     Ok(me) => println!("signed in as {}", me.user_name),
    ///     Err(Error::Workspace(err)) if err.is_transient() => eprintln!("try again later: {err}"),
    ///     Err(err) => return Err(err),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            WorkspaceError::Api { status, .. } => *status == 429 || *status >= 500,
            WorkspaceError::Request { problem, .. } => matches!(
                problem,
                RequestProblem::Unreachable
                    | RequestProblem::TimedOut(_)
                    | RequestProblem::CutOff
                    | RequestProblem::Throttled { .. }
            ),
            _ => false,
        }
    }

    /// Whether the workspace refused the caller's credentials: authentication failed, or the
    /// API answered 401 or 403.
    pub fn is_auth(&self) -> bool {
        match self {
            WorkspaceError::Auth { .. } => true,
            WorkspaceError::Api { status, .. } => *status == 401 || *status == 403,
            _ => false,
        }
    }

    /// Whether an API call timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            WorkspaceError::Request {
                problem: RequestProblem::TimedOut(_),
                ..
            }
        )
    }

    /// The variant's name, as `Error::type_name` gives it (the names from before the
    /// workspace errors were nested, so telemetry keeps its values).
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            WorkspaceError::Config { .. } => "WorkspaceConfig",
            WorkspaceError::Auth { .. } => "WorkspaceAuth",
            WorkspaceError::Api { .. } => "WorkspaceApi",
            WorkspaceError::Request { .. } => "WorkspaceRequest",
            WorkspaceError::Operation { .. } => "Operation",
            WorkspaceError::OperationTimedOut { .. } => "OperationTimedOut",
            WorkspaceError::BranchLimit { .. } => "BranchLimit",
        }
    }

    pub(crate) fn config(problem: impl Into<String>) -> Self {
        WorkspaceError::Config {
            problem: problem.into(),
            source: None,
        }
    }

    pub(crate) fn config_because(problem: impl Into<String>, source: impl Into<BoxError>) -> Self {
        WorkspaceError::Config {
            problem: problem.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn auth(method: AuthMethod, problem: impl Into<String>) -> Self {
        WorkspaceError::Auth {
            method,
            problem: problem.into(),
            source: None,
        }
    }

    pub(crate) fn auth_because(
        method: AuthMethod,
        problem: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        WorkspaceError::Auth {
            method,
            problem: problem.into(),
            source: Some(source.into()),
        }
    }
}
