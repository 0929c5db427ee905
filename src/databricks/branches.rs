//! The Lakebase branch API: branches, endpoints of a branch, projects, and the long-running
//! operations that creating and deleting them return.

use crate::error::WorkspaceError;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};

use super::Workspace;
use super::time::{format_rfc3339, parse_rfc3339};
use crate::backoff::millis;
use crate::endpoint::check_id;
use crate::{Error, RequestProblem};

/// The longest TTL the service accepts for a branch.
pub const MAX_BRANCH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long a branch lives; exactly one is sent when it is created.
///
/// ```
/// use std::time::Duration;
/// use lakebase_pool::databricks::Expiry;
///
/// let ci = Expiry::Ttl(Duration::from_secs(2 * 3600));
/// # let _ = ci;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// Deleted by the service this long after creation (at most 30 days).
    Ttl(Duration),
    /// Deleted by the service at this time.
    At(SystemTime),
    /// Kept until deleted.
    Never,
}

/// What a new branch is made from and how long it lives, for
/// [`Workspace::create_branch`].
///
/// ```
/// use std::time::Duration;
/// use lakebase_pool::databricks::{BranchSpec, Expiry};
///
/// let spec = BranchSpec::new(Expiry::Ttl(Duration::from_secs(4 * 3600)))
///     .source_branch("projects/shop/branches/production");
/// # let _ = spec;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchSpec {
    expiry: Expiry,
    source_branch: Option<String>,
    protected: bool,
}

impl BranchSpec {
    /// A branch of the project's default branch, living as `expiry` says.
    ///
    /// ```
    /// let spec = lakebase_pool::databricks::BranchSpec::new(lakebase_pool::databricks::Expiry::Never);
    /// # let _ = spec;
    /// ```
    pub fn new(expiry: Expiry) -> Self {
        BranchSpec {
            expiry,
            source_branch: None,
            protected: false,
        }
    }

    /// Branch from this branch (`projects/<p>/branches/<b>`) instead of the default one.
    ///
    /// ```
    /// # use lakebase_pool::databricks::{BranchSpec, Expiry};
    /// let spec = BranchSpec::new(Expiry::Never).source_branch("projects/shop/branches/staging");
    /// # let _ = spec;
    /// ```
    #[must_use]
    pub fn source_branch(mut self, branch: impl Into<String>) -> Self {
        self.source_branch = Some(branch.into());
        self
    }

    /// Protect the branch from deletion and reset.
    ///
    /// ```
    /// # use lakebase_pool::databricks::{BranchSpec, Expiry};
    /// let spec = BranchSpec::new(Expiry::Never).protected(true);
    /// # let _ = spec;
    /// ```
    #[must_use]
    pub fn protected(mut self, protected: bool) -> Self {
        self.protected = protected;
        self
    }

    /// The Branch object the API takes, checked first.
    fn to_json(&self) -> Result<Value, Error> {
        let mut spec = serde_json::Map::new();
        match self.expiry {
            Expiry::Ttl(ttl) => {
                if ttl.is_zero() || ttl > MAX_BRANCH_TTL {
                    return Err(Error::invalid(
                        "ttl",
                        "a branch TTL must be above zero and at most 30 days",
                    ));
                }
                let _ = spec.insert("ttl".into(), json!(format!("{}s", ttl.as_secs().max(1))));
            }
            Expiry::At(at) => {
                let _ = spec.insert("expire_time".into(), json!(format_rfc3339(at, false)));
            }
            Expiry::Never => {
                let _ = spec.insert("no_expiry".into(), json!(true));
            }
        }
        if let Some(source) = &self.source_branch {
            check_branch_name(source)?;
            let _ = spec.insert("source_branch".into(), json!(source));
        }
        if self.protected {
            let _ = spec.insert("is_protected".into(), json!(true));
        }
        Ok(json!({ "spec": spec }))
    }
}

/// `projects/<p>/branches/<b>`, each id valid.
fn check_branch_name(name: &str) -> Result<(), Error> {
    let invalid = |problem: String| Error::invalid("branch", problem);
    match name.split('/').collect::<Vec<_>>().as_slice() {
        ["projects", project, "branches", branch] => {
            check_id("project", project).map_err(invalid)?;
            check_id("branch", branch).map_err(invalid)
        }
        _ => Err(invalid(format!(
            "`{name}` is not a branch name (projects/<project>/branches/<branch>)"
        ))),
    }
}

/// A branch's state, as the service reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BranchState {
    /// Being created.
    Init,
    /// Usable.
    Ready,
    /// Archived (its compute released).
    Archived,
    /// Deleted.
    Deleted,
    /// Importing data.
    Importing,
    /// Being reset.
    Resetting,
    /// A state this crate does not know yet.
    Other(String),
}

super::answers::api_states!(BranchState {
    Init => "INIT",
    Ready => "READY",
    Archived => "ARCHIVED",
    Deleted => "DELETED",
    Importing => "IMPORTING",
    Resetting => "RESETTING",
});

/// A branch of a Lakebase project.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Branch {
    /// `projects/<p>/branches/<b>`.
    pub name: String,
    /// Its state, when reported.
    pub state: Option<BranchState>,
    /// Whether it is the project's default branch.
    pub default: bool,
    /// The branch it was made from.
    pub source_branch: Option<String>,
    /// When the service deletes it, if ever.
    pub expire_time: Option<SystemTime>,
}

/// A project's facts the branch workflow needs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Project {
    /// `projects/<p>`.
    pub name: String,
    /// The default branch, `projects/<p>/branches/<b>`.
    pub default_branch: Option<String>,
}

/// The kind of an endpoint, for [`Workspace::create_endpoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointType {
    /// `ENDPOINT_TYPE_READ_WRITE`.
    ReadWrite,
    /// `ENDPOINT_TYPE_READ_ONLY`.
    ReadOnly,
}

impl EndpointType {
    fn as_str(self) -> &'static str {
        match self {
            EndpointType::ReadWrite => "ENDPOINT_TYPE_READ_WRITE",
            EndpointType::ReadOnly => "ENDPOINT_TYPE_READ_ONLY",
        }
    }
}

/// A long-running operation: creating or deleting a branch or an endpoint.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Operation {
    /// `projects/<p>/operations/<id>`.
    pub name: String,
    /// Whether it has finished.
    pub done: bool,
    /// Its result, once done (absent for some deletes).
    pub response: Option<Value>,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            self.name,
            if self.done { "done" } else { "running" }
        )
    }
}

#[derive(Deserialize)]
struct OperationAnswer {
    name: Option<String>,
    #[serde(default)]
    done: bool,
    error: Option<OperationError>,
    response: Option<Value>,
}

#[derive(Deserialize)]
struct OperationError {
    error_code: Option<String>,
    code: Option<Value>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct BranchAnswer {
    name: Option<String>,
    status: Option<BranchStatus>,
}

#[derive(Deserialize)]
struct BranchStatus {
    current_state: Option<String>,
    #[serde(default)]
    default: bool,
    source_branch: Option<String>,
    expire_time: Option<String>,
}

#[derive(Deserialize)]
struct BranchPage {
    #[serde(default)]
    branches: Vec<BranchAnswer>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ProjectAnswer {
    name: Option<String>,
    status: Option<ProjectStatus>,
}

#[derive(Deserialize)]
struct ProjectStatus {
    default_branch: Option<String>,
}

impl BranchAnswer {
    fn into_branch(self, fallback_name: &str) -> Branch {
        let status = self.status;
        Branch {
            name: self.name.unwrap_or_else(|| fallback_name.to_owned()),
            state: status
                .as_ref()
                .and_then(|s| s.current_state.as_deref())
                .map(BranchState::from_api),
            default: status.as_ref().is_some_and(|s| s.default),
            source_branch: status.as_ref().and_then(|s| s.source_branch.clone()),
            expire_time: status
                .as_ref()
                .and_then(|s| s.expire_time.as_deref())
                .and_then(|t| parse_rfc3339(t).ok()),
        }
    }
}

/// The error codes the service answers a branch limit with.
const LIMIT_CODES: [&str; 3] = [
    "RESOURCE_EXHAUSTED",
    "QUOTA_EXCEEDED",
    "RESOURCE_LIMIT_EXCEEDED",
];

impl Workspace {
    /// Starts creating branch `branch_id` of `project` (`POST
    /// /api/2.0/postgres/projects/<project>/branches?branch_id=<id>`); wait for it with
    /// [`wait_for`](Self::wait_for). The id is checked before any request: 1 to 63
    /// characters, a lowercase letter then lowercase letters, digits or hyphens.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a bad id or spec (a TTL above 30 days);
    /// [`WorkspaceError::BranchLimit`] when the project has as many branches as it may;
    /// [`WorkspaceError::Api`] and [`WorkspaceError::Request`] otherwise.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use lakebase_pool::databricks::{BranchSpec, Expiry};
    ///
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let spec = BranchSpec::new(Expiry::Ttl(Duration::from_secs(2 * 3600)));
    /// let operation = workspace.create_branch("shop", "ci-1234", &spec).await?;
    /// workspace.wait_for(operation, Duration::from_secs(600)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_branch(
        &self,
        project: &str,
        branch_id: &str,
        spec: &BranchSpec,
    ) -> Result<Operation, Error> {
        check_id("project", project).map_err(|p| Error::invalid("project", p))?;
        check_id("branch", branch_id).map_err(|p| Error::invalid("branch_id", p))?;
        let body = spec.to_json()?;
        let answer = self
            .call::<OperationAnswer>(
                reqwest::Method::POST,
                &format!("/api/2.0/postgres/projects/{project}/branches"),
                &[("branch_id", branch_id)],
                Some(body),
            )
            .await
            .map_err(|error| limit_error(error, project))?;
        operation(answer)
    }

    /// Starts creating endpoint `endpoint_id` on `branch` (`projects/<p>/branches/<b>`).
    ///
    /// # Errors
    ///
    /// As for [`create_branch`](Self::create_branch).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use lakebase_pool::databricks::EndpointType;
    ///
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let operation = workspace
    ///     .create_endpoint("projects/shop/branches/ci-1234", "primary", EndpointType::ReadWrite)
    ///     .await?;
    /// workspace.wait_for(operation, Duration::from_secs(600)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_endpoint(
        &self,
        branch: &str,
        endpoint_id: &str,
        endpoint_type: EndpointType,
    ) -> Result<Operation, Error> {
        check_branch_name(branch)?;
        check_id("endpoint", endpoint_id).map_err(|p| Error::invalid("endpoint_id", p))?;
        let body = json!({ "spec": { "endpoint_type": endpoint_type.as_str() } });
        let project = branch.split('/').nth(1).unwrap_or_default().to_owned();
        let answer = self
            .call::<OperationAnswer>(
                reqwest::Method::POST,
                &format!("/api/2.0/postgres/{branch}/endpoints"),
                &[("endpoint_id", endpoint_id)],
                Some(body),
            )
            .await
            .map_err(|error| limit_error(error, &project))?;
        operation(answer)
    }

    /// Starts deleting `branch`. A branch with children cannot be deleted; the service's
    /// error says so.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a malformed name; [`WorkspaceError::Api`] and
    /// [`WorkspaceError::Request`].
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let operation = workspace.delete_branch("projects/shop/branches/ci-1234").await?;
    /// workspace.wait_for(operation, Duration::from_secs(300)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete_branch(&self, branch: &str) -> Result<Operation, Error> {
        check_branch_name(branch)?;
        let answer = self
            .call::<OperationAnswer>(
                reqwest::Method::DELETE,
                &format!("/api/2.0/postgres/{branch}"),
                &[],
                None,
            )
            .await?;
        operation(answer)
    }

    /// The branch `branch` (`projects/<p>/branches/<b>`).
    ///
    /// # Errors
    ///
    /// As for [`delete_branch`](Self::delete_branch).
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let branch = workspace.get_branch("projects/shop/branches/production").await?;
    /// println!("{:?}", branch.state);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_branch(&self, branch: &str) -> Result<Branch, Error> {
        check_branch_name(branch)?;
        let answer: BranchAnswer = self
            .call(
                reqwest::Method::GET,
                &format!("/api/2.0/postgres/{branch}"),
                &[],
                None,
            )
            .await?;
        Ok(answer.into_branch(branch))
    }

    /// Every branch of `project`, following pagination.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a malformed id; [`WorkspaceError::Api`],
    /// [`WorkspaceError::Request`] (also when the server keeps paginating past 100 pages).
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// for branch in workspace.list_branches("shop").await? {
    ///     println!("{} {:?}", branch.name, branch.expire_time);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_branches(&self, project: &str) -> Result<Vec<Branch>, Error> {
        check_id("project", project).map_err(|p| Error::invalid("project", p))?;
        let path = format!("/api/2.0/postgres/projects/{project}/branches");
        self.list_pages(&path, |page: BranchPage| {
            let branches = page
                .branches
                .into_iter()
                .map(|b| b.into_branch(""))
                .collect();
            Ok((branches, page.next_page_token))
        })
        .await
    }

    /// The project `project`, with its default branch.
    ///
    /// # Errors
    ///
    /// As for [`list_branches`](Self::list_branches).
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let project = workspace.get_project("shop").await?;
    /// println!("default branch: {:?}", project.default_branch);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_project(&self, project: &str) -> Result<Project, Error> {
        check_id("project", project).map_err(|p| Error::invalid("project", p))?;
        let answer: ProjectAnswer = self
            .call(
                reqwest::Method::GET,
                &format!("/api/2.0/postgres/projects/{project}"),
                &[],
                None,
            )
            .await?;
        Ok(Project {
            name: answer.name.unwrap_or_else(|| format!("projects/{project}")),
            default_branch: answer.status.and_then(|s| s.default_branch),
        })
    }

    /// Polls `operation` until it is done, for at most `deadline`: waits of 1 s growing by a
    /// second per poll up to 10 s (as the SDKs do), plus up to half a second of jitter.
    ///
    /// # Errors
    ///
    /// [`WorkspaceError::Operation`] with the service's code and message when it ended in error;
    /// [`WorkspaceError::OperationTimedOut`] past the deadline; the errors of the polls.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace, operation: lakebase_pool::databricks::Operation) -> Result<(), lakebase_pool::Error> {
    /// let done = workspace.wait_for(operation, Duration::from_secs(600)).await?;
    /// println!("{done}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for(
        &self,
        operation: Operation,
        deadline: Duration,
    ) -> Result<Operation, Error> {
        self.wait_for_every(operation, deadline, Duration::from_secs(1))
            .await
    }

    /// [`wait_for`](Self::wait_for) with the first wait `step` (growing by `step` per poll,
    /// to at most ten of them, plus up to half a step of jitter): for a mock that finishes in
    /// milliseconds.
    ///
    /// # Errors
    ///
    /// As for [`wait_for`](Self::wait_for).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace, operation: lakebase_pool::databricks::Operation) -> Result<(), lakebase_pool::Error> {
    /// let done = workspace
    ///     .wait_for_every(operation, Duration::from_secs(10), Duration::from_millis(10))
    ///     .await?;
    /// # let _ = done;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_every(
        &self,
        mut operation: Operation,
        deadline: Duration,
        step: Duration,
    ) -> Result<Operation, Error> {
        let started = tokio::time::Instant::now();
        let step = step.max(MIN_POLL_STEP);
        let mut polls: u32 = 0;
        loop {
            if operation.done {
                return Ok(operation);
            }
            check_operation_name(&operation.name)?;
            polls = polls.saturating_add(1);
            let jitter = (step / 2).mul_f64(fastrand::f64());
            let wait = step.saturating_mul(polls.min(10)).saturating_add(jitter);
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::Workspace(WorkspaceError::OperationTimedOut {
                    name: operation.name,
                    waited: started.elapsed(),
                }));
            }
            tokio::time::sleep(wait.min(left)).await;
            // The poll itself within the deadline too (a call's own retries can take a minute).
            let path = format!("/api/2.0/postgres/{}", operation.name);
            let poll = self.call(reqwest::Method::GET, &path, &[], None);
            let left = deadline.saturating_sub(started.elapsed());
            let answer: OperationAnswer = match tokio::time::timeout(left, poll).await {
                Ok(answer) => answer?,
                Err(_) => {
                    return Err(Error::Workspace(WorkspaceError::OperationTimedOut {
                        name: operation.name,
                        waited: started.elapsed(),
                    }));
                }
            };
            tracing::debug!(
                operation = %operation.name,
                polls,
                waited_ms = millis(started.elapsed()),
                done = answer.done,
                "polled a long-running operation"
            );
            operation = self::operation(answer).map_err(|error| match error {
                Error::Workspace(WorkspaceError::Operation { code, message, .. }) => {
                    Error::Workspace(WorkspaceError::Operation {
                        name: operation.name.clone(),
                        code,
                        message,
                    })
                }
                other => other,
            })?;
        }
    }
}

/// The shortest first wait between polls: a zero step would spin.
const MIN_POLL_STEP: Duration = Duration::from_millis(10);

/// An operation name is polled as a URL path with the workspace token: it must be a resource
/// name (`projects/<project>/operations/<id>`, or deeper under the project), with no `.` or
/// `..` segment and no character that a path treats specially.
fn check_operation_name(name: &str) -> Result<(), Error> {
    let segments: Vec<&str> = name.split('/').collect();
    let well_formed = segments.len() >= 4
        && segments.len().is_multiple_of(2)
        && segments[0] == "projects"
        && segments[segments.len() - 2] == "operations"
        && segments.iter().all(|segment| {
            !segment.is_empty()
                && *segment != "."
                && *segment != ".."
                && segment.len() <= 128
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if well_formed {
        return Ok(());
    }
    let shown: String = name.chars().take(100).collect();
    Err(Error::Workspace(WorkspaceError::Request {
        method: reqwest::Method::GET,
        path: String::from("/api/2.0/postgres/<operation>"),
        problem: RequestProblem::InvalidResponse(format!(
            "the service named an operation `{shown}`, which is not a resource name \
             (projects/<project>/operations/<id>); it was not polled"
        )),
        source: None,
    }))
}

/// An operation answer as an [`Operation`], or its error.
fn operation(answer: OperationAnswer) -> Result<Operation, Error> {
    let name = answer.name.unwrap_or_default();
    if let Some(error) = answer.error {
        let code = error
            .error_code
            .or_else(|| {
                error
                    .code
                    .map(|c| c.to_string().trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| String::from("UNKNOWN"));
        return Err(Error::Workspace(WorkspaceError::Operation {
            name,
            code,
            message: error.message.unwrap_or_default(),
        }));
    }
    if name.is_empty() && !answer.done {
        return Err(Error::workspace_config(String::from(
            "the service started an operation without naming it, so it cannot be polled",
        )));
    }
    if !answer.done {
        check_operation_name(&name)?;
    }
    Ok(Operation {
        name,
        done: answer.done,
        response: answer.response,
    })
}

/// A branch-limit refusal as [`WorkspaceError::BranchLimit`]; other errors as they are.
fn limit_error(error: Error, project: &str) -> Error {
    match error {
        Error::Workspace(WorkspaceError::Api {
            status: 400..=499,
            ref error_code,
            ref message,
            ..
        }) if error_code
            .as_deref()
            .is_some_and(|c| LIMIT_CODES.contains(&c)) =>
        {
            Error::Workspace(WorkspaceError::BranchLimit {
                project: project.to_owned(),
                message: message.clone(),
            })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_send_exactly_one_expiry_and_refuse_absurd_ttls() {
        let ttl = BranchSpec::new(Expiry::Ttl(Duration::from_secs(14_400)))
            .to_json()
            .unwrap();
        assert_eq!(ttl, json!({"spec": {"ttl": "14400s"}}));
        let never = BranchSpec::new(Expiry::Never)
            .source_branch("projects/p/branches/main")
            .protected(true)
            .to_json()
            .unwrap();
        assert_eq!(
            never,
            json!({"spec": {"no_expiry": true, "source_branch": "projects/p/branches/main", "is_protected": true}})
        );
        let at = BranchSpec::new(Expiry::At(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ))
        .to_json()
        .unwrap();
        assert_eq!(at, json!({"spec": {"expire_time": "2027-01-15T08:00:00Z"}}));
        for bad in [Duration::ZERO, MAX_BRANCH_TTL + Duration::from_secs(1)] {
            assert!(matches!(
                BranchSpec::new(Expiry::Ttl(bad)).to_json(),
                Err(Error::InvalidConfig { setting: "ttl", .. })
            ));
        }
        assert!(
            BranchSpec::new(Expiry::Never)
                .source_branch("main")
                .to_json()
                .is_err()
        );
    }

    #[test]
    fn operation_names_must_be_resource_names() {
        for good in [
            "projects/p/operations/1",
            "projects/shop/operations/a1b2-c3_d4.e5",
            "projects/p/branches/b/operations/x",
        ] {
            assert!(check_operation_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "projects/p/operations/../../../api/2.0/preview/scim/v2/Me",
            "projects/p/operations/..",
            "projects/p/operations/x?y=1",
            "projects/p/operations/x#y",
            "projects//operations/x",
            "other/p/operations/x",
            "projects/p/things/x",
            "projects/p/operations/x/extra",
            "projects/p/operations/%2e%2e",
        ] {
            assert!(check_operation_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn operations_with_errors_carry_the_services_code_and_message() {
        let answer: OperationAnswer = serde_json::from_str(
            r#"{"name": "projects/p/operations/1", "done": true, "error": {"error_code": "FAILED_PRECONDITION", "message": "branch has children"}}"#,
        )
        .unwrap();
        let err = operation(answer).unwrap_err();
        assert!(
            matches!(&err, Error::Workspace(WorkspaceError::Operation { code, message, .. }) if code == "FAILED_PRECONDITION" && message == "branch has children"),
            "{err:?}"
        );
        let done: OperationAnswer =
            serde_json::from_str(r#"{"name": "projects/p/operations/2", "done": true}"#).unwrap();
        assert!(operation(done).unwrap().response.is_none());
    }
}
