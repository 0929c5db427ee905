//! `EphemeralBranch`: a Lakebase branch made for one CI run or test session, with a pool
//! builder for it, deleted at the end (or by its TTL if the run dies).

use crate::error::WorkspaceError;
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::databricks::{BranchSpec, BranchState, EndpointType, Expiry, Workspace};
use crate::endpoint::check_id;
use crate::{EndpointName, Error, PoolBuilder};

/// A branch created for one run (a CI job, a test session), made ready to connect to: its
/// read-write endpoint exists and has a host. [`pool_builder`](Self::pool_builder) gives a
/// pool for it (tokens minted for its endpoint); [`delete`](Self::delete) removes it.
///
/// It has a TTL (default 2 hours), so a run that dies before deleting it leaves nothing
/// behind for long; dropping it without `delete` logs that it is left to its TTL.
///
/// ```no_run
/// use lakebase_pool::branch::EphemeralBranch;
/// use lakebase_pool::databricks::Workspace;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lakebase_pool::Error> {
/// let workspace = Workspace::from_env()?;
/// let branch = EphemeralBranch::builder(workspace, "projects/shop")
///     .prefix("ci")
///     .create()
///     .await?;
/// let pool = branch.pool_builder().build()?;
/// pool.get().await?.batch_execute("CREATE TABLE t (id int)").await.ok();
/// branch.delete().await?;
/// # Ok(())
/// # }
/// ```
pub struct EphemeralBranch {
    workspace: Workspace,
    /// `projects/<p>/branches/<b>`.
    name: String,
    endpoint: EndpointName,
    expire_time: Option<SystemTime>,
    /// The builder's ready timeout, which bounds `delete` too.
    ready_timeout: Duration,
    poll: Duration,
    deleted: bool,
}

impl fmt::Debug for EphemeralBranch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralBranch")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("expire_time", &self.expire_time)
            .finish_non_exhaustive()
    }
}

/// Configures an [`EphemeralBranch`]; start with [`EphemeralBranch::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `.create()` is called"]
pub struct EphemeralBranchBuilder {
    workspace: Workspace,
    project: String,
    source_branch: Option<String>,
    ttl: Duration,
    prefix: String,
    ready_timeout: Duration,
    poll: Duration,
}

impl EphemeralBranch {
    /// A branch of `project` (`projects/<p>` or just `<p>`).
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let branch = lakebase_pool::branch::EphemeralBranch::builder(workspace, "projects/shop")
    ///     .create()
    ///     .await?;
    /// # let _ = branch;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(workspace: Workspace, project: &str) -> EphemeralBranchBuilder {
        EphemeralBranchBuilder {
            workspace,
            project: project
                .strip_prefix("projects/")
                .unwrap_or(project)
                .to_owned(),
            source_branch: None,
            ttl: DEFAULT_TTL,
            prefix: String::from("ephemeral"),
            ready_timeout: Duration::from_secs(10 * 60),
            poll: Duration::from_secs(1),
        }
    }

    /// `projects/<p>/branches/<b>`.
    ///
    /// ```no_run
    /// # fn demo(branch: lakebase_pool::branch::EphemeralBranch) {
    /// println!("working on {}", branch.name());
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The branch's read-write endpoint.
    ///
    /// ```no_run
    /// # fn demo(branch: lakebase_pool::branch::EphemeralBranch) {
    /// println!("endpoint {}", branch.endpoint());
    /// # }
    /// ```
    pub fn endpoint(&self) -> &EndpointName {
        &self.endpoint
    }

    /// When the service deletes the branch by itself, as it reported.
    ///
    /// ```no_run
    /// # fn demo(branch: lakebase_pool::branch::EphemeralBranch) {
    /// println!("expires at {:?}", branch.expire_time());
    /// # }
    /// ```
    pub fn expire_time(&self) -> Option<SystemTime> {
        self.expire_time
    }

    /// A pool builder for the branch's read-write endpoint, authenticated by the branch's
    /// workspace; add settings and build.
    ///
    /// ```no_run
    /// # fn demo(branch: lakebase_pool::branch::EphemeralBranch) -> Result<(), lakebase_pool::Error> {
    /// let pool = branch.pool_builder().max_size(4).build()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    pub fn pool_builder(&self) -> PoolBuilder {
        PoolBuilder::default()
            .workspace(self.workspace.clone())
            .lakebase_endpoint(self.endpoint.to_string())
    }

    /// Deletes the branch and waits until the service has, for at most the builder's
    /// [`ready_timeout`](EphemeralBranchBuilder::ready_timeout). A branch that is already
    /// gone counts as deleted.
    ///
    /// # Errors
    ///
    /// Those of [`Workspace::delete_branch`] and [`Workspace::wait_for`];
    /// [`WorkspaceError::OperationTimedOut`] past the ready timeout. The branch is then left to its
    /// TTL.
    ///
    /// ```no_run
    /// # async fn demo(branch: lakebase_pool::branch::EphemeralBranch) -> Result<(), lakebase_pool::Error> {
    /// branch.delete().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn delete(mut self) -> Result<(), Error> {
        // Marked first: a failed delete is reported by the error, not again by the drop.
        self.deleted = true;
        delete_within(&self.workspace, &self.name, self.ready_timeout, self.poll).await?;
        tracing::info!(branch = %self.name, "deleted the ephemeral branch");
        Ok(())
    }
}

/// Deletes `branch` and waits for the service, all within `limit`: a delete refused because
/// the branch is still busy (its creation under way) is asked again after `poll`. A branch
/// that does not exist (never made, or already gone) counts as deleted.
async fn delete_within(
    workspace: &Workspace,
    branch: &str,
    limit: Duration,
    poll: Duration,
) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    let left = || limit.saturating_sub(started.elapsed());
    let timed_out = || {
        Error::Workspace(WorkspaceError::OperationTimedOut {
            name: format!("deletion of {branch}"),
            waited: started.elapsed(),
        })
    };
    loop {
        let attempt = tokio::time::timeout(left(), workspace.delete_branch(branch));
        match attempt.await.map_err(|_| timed_out())? {
            Ok(operation) => {
                let _ = within(
                    left(),
                    &timed_out,
                    workspace.wait_for_every(operation, left(), poll),
                )
                .await?;
                return Ok(());
            }
            Err(Error::Workspace(WorkspaceError::Api { status: 404, .. })) => return Ok(()),
            Err(Error::Workspace(WorkspaceError::Api { status: 409, .. })) if !left().is_zero() => {
                tokio::time::sleep(poll.min(left())).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// `work`, or `timed_out()` once `left` has passed: every workspace call of a bounded wait is
/// bounded by what is left of it (a call's own retries can take a minute).
async fn within<T>(
    left: Duration,
    timed_out: &impl Fn() -> Error,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(left, work)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// Deletes a branch that `create` made, unless disarmed: after a failed step, and when the
/// caller's future is dropped midway (then on a task of its own, bounded the same way; with
/// no runtime left to run it, the branch is left to its TTL, and a warning names it).
struct CleanUp {
    workspace: Workspace,
    branch: String,
    limit: Duration,
    poll: Duration,
    armed: bool,
}

impl CleanUp {
    /// Runs the clean-up now, after `error`, and returns the error. Armed until it is done:
    /// if the caller gives up meanwhile, the drop runs it on a task of its own.
    async fn after(mut self, error: Error) -> Error {
        tracing::warn!(branch = %self.branch, error = %error, "the branch did not become ready; deleting it");
        let deleted = delete_within(&self.workspace, &self.branch, self.limit, self.poll).await;
        self.armed = false;
        if let Err(cleanup) = deleted {
            tracing::warn!(branch = %self.branch, error = %cleanup, "could not delete it; its TTL will");
        }
        error
    }
}

impl Drop for CleanUp {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(branch = %self.branch, "branch creation was cancelled with no runtime to delete it; its TTL will");
            return;
        };
        tracing::warn!(branch = %self.branch, "branch creation was cancelled; deleting the branch");
        let (workspace, branch, limit, poll) = (
            self.workspace.clone(),
            std::mem::take(&mut self.branch),
            self.limit,
            self.poll,
        );
        drop(runtime.spawn(async move {
            if let Err(error) = delete_within(&workspace, &branch, limit, poll).await {
                tracing::warn!(branch = %branch, error = %error, "could not delete the branch of a cancelled creation; its TTL will");
            }
        }));
    }
}

/// The most a clean-up after a failed or cancelled `create` waits for the delete (less when
/// the ready timeout is shorter).
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// The shortest wait between polls: a zero interval would spin.
const MIN_POLL: Duration = Duration::from_millis(10);

impl Drop for EphemeralBranch {
    fn drop(&mut self) {
        if !self.deleted {
            tracing::warn!(
                branch = %self.name,
                expire_time = ?self.expire_time,
                "ephemeral branch dropped without delete(); the service removes it when its TTL ends"
            );
        }
    }
}

/// Default TTL: long enough for a CI run, short enough that abandoned branches do not pile
/// up against the project's branch limit.
const DEFAULT_TTL: Duration = Duration::from_secs(2 * 3600);

impl EphemeralBranchBuilder {
    /// Branch from this branch (`projects/<p>/branches/<b>`, or just `<b>`).
    ///
    /// Default: the project's default branch.
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let branch = lakebase_pool::branch::EphemeralBranch::builder(workspace, "shop")
    ///     .source_branch("staging")
    ///     .create()
    ///     .await?;
    /// # let _ = branch;
    /// # Ok(())
    /// # }
    /// ```
    pub fn source_branch(mut self, branch: &str) -> Self {
        self.source_branch = Some(if branch.starts_with("projects/") {
            branch.to_owned()
        } else {
            format!("projects/{}/branches/{branch}", self.project)
        });
        self
    }

    /// How long the branch lives if it is not deleted (at most 30 days).
    ///
    /// Default: 2 hours.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let branch = lakebase_pool::branch::EphemeralBranch::builder(workspace, "shop")
    ///     .ttl(Duration::from_secs(4 * 3600))
    ///     .create()
    ///     .await?;
    /// # let _ = branch;
    /// # Ok(())
    /// # }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The start of the generated branch id, which reads `<prefix>-<UTC time>-<random>`
    /// (lowercase letters, digits and hyphens; the whole at most 63 characters).
    ///
    /// Default: `ephemeral`.
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let branch = lakebase_pool::branch::EphemeralBranch::builder(workspace, "shop")
    ///     .prefix("ci-pr-42")
    ///     .create()
    ///     .await?;
    /// # let _ = branch;
    /// # Ok(())
    /// # }
    /// ```
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// How long [`create`](Self::create) waits in all for the branch and its endpoint to be
    /// ready, and [`EphemeralBranch::delete`] for the deletion. A `create` that fails or is
    /// cancelled deletes what it made within this again, at most 30 s more.
    ///
    /// Default: 10 minutes.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let branch = lakebase_pool::branch::EphemeralBranch::builder(workspace, "shop")
    ///     .ready_timeout(Duration::from_secs(120))
    ///     .create()
    ///     .await?;
    /// # let _ = branch;
    /// # Ok(())
    /// # }
    /// ```
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The first wait between polls of the service (growing by as much per poll, to ten
    /// times it), plus up to half of it as jitter; at least 10 ms.
    ///
    /// Default: 1 second, as the SDKs do; shorter against a local mock, which finishes in
    /// milliseconds.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let branch = lakebase_pool::branch::EphemeralBranch::builder(workspace, "local")
    ///     .poll_interval(Duration::from_millis(20))
    ///     .create()
    ///     .await?;
    /// # let _ = branch;
    /// # Ok(())
    /// # }
    /// ```
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Creates the branch, waits until it is `READY` and its read-write endpoint has a host
    /// (creating the endpoint if the branch has none).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a prefix that makes no valid id or a bad TTL, before any
    /// request; [`WorkspaceError::BranchLimit`]; [`WorkspaceError::Operation`] with the service's message;
    /// [`WorkspaceError::OperationTimedOut`] past the ready timeout; the workspace's errors. A branch
    /// created before a later step failed is deleted again (or, if that fails too, left to
    /// its TTL).
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let branch = lakebase_pool::branch::EphemeralBranch::builder(workspace, "shop").create().await?;
    /// println!("created {}", branch.name());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create(self) -> Result<EphemeralBranch, Error> {
        let id = branch_id(&self.prefix, SystemTime::now(), fastrand::u32(..))?;
        let mut spec = BranchSpec::new(Expiry::Ttl(self.ttl));
        if let Some(source) = &self.source_branch {
            spec = spec.source_branch(source.clone());
        }
        let poll = self.poll.max(MIN_POLL);
        let started = tokio::time::Instant::now();
        let left = || self.ready_timeout.saturating_sub(started.elapsed());
        let name = format!("projects/{}/branches/{id}", self.project);
        // Armed before the request: the service may make the branch even when the answer
        // is lost (a timeout, a 5xx after the fact), or the caller may give up meanwhile.
        let cleanup = CleanUp {
            workspace: self.workspace.clone(),
            branch: name.clone(),
            limit: self.ready_timeout.min(CLEANUP_LIMIT),
            poll,
            armed: true,
        };
        let timed_out = || {
            Error::Workspace(WorkspaceError::OperationTimedOut {
                name: format!("creation of {name}"),
                waited: self.ready_timeout,
            })
        };
        let request = self.workspace.create_branch(&self.project, &id, &spec);
        let operation = match within(left(), &timed_out, request).await {
            Ok(operation) => operation,
            Err(error) if nothing_made(&error) => {
                let mut cleanup = cleanup;
                cleanup.armed = false;
                return Err(error);
            }
            Err(error) => return Err(cleanup.after(error).await),
        };
        let mut branch = EphemeralBranch {
            workspace: self.workspace.clone(),
            endpoint: EndpointName::parse(&format!("{name}/endpoints/primary"))?,
            name,
            expire_time: None,
            ready_timeout: self.ready_timeout,
            poll,
            // Until it is handed to the caller, the clean-up answers for it, not its drop.
            deleted: true,
        };
        tracing::info!(branch = %branch.name, "creating an ephemeral branch");
        match self.make_ready(&mut branch, operation, poll, &left).await {
            Ok(()) => {
                let mut cleanup = cleanup;
                cleanup.armed = false;
                branch.deleted = false;
                Ok(branch)
            }
            Err(error) => Err(cleanup.after(error).await),
        }
    }

    async fn make_ready(
        &self,
        branch: &mut EphemeralBranch,
        operation: crate::databricks::Operation,
        poll: Duration,
        left: &impl Fn() -> Duration,
    ) -> Result<(), Error> {
        let workspace = &self.workspace;
        let timed_out = || {
            Error::Workspace(WorkspaceError::OperationTimedOut {
                name: format!("readiness of {}", branch.name),
                waited: self.ready_timeout,
            })
        };
        let _ = within(
            left(),
            &timed_out,
            workspace.wait_for_every(operation, left(), poll),
        )
        .await?;
        // The operation is done; the branch itself may still be initialising.
        loop {
            let state = within(left(), &timed_out, workspace.get_branch(&branch.name)).await?;
            branch.expire_time = state.expire_time;
            if state.state == Some(BranchState::Ready) {
                break;
            }
            self.pause(left(), poll, &branch.name).await?;
        }
        let branch_id = branch
            .name
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut created_endpoint = false;
        loop {
            // `list_endpoints` refuses a listing that names another branch's endpoint.
            let endpoints = within(
                left(),
                &timed_out,
                workspace.list_endpoints(&self.project, &branch_id),
            )
            .await?;
            let read_write = endpoints
                .into_iter()
                .find(|e| e.endpoint_type.as_deref() != Some("ENDPOINT_TYPE_READ_ONLY"));
            match read_write {
                Some(endpoint) if endpoint.host.is_some() => {
                    branch.endpoint = endpoint.name;
                    return Ok(());
                }
                // Branches usually get one; tools create it when they do not, once.
                None if !created_endpoint => {
                    created_endpoint = true;
                    let create =
                        workspace.create_endpoint(&branch.name, "primary", EndpointType::ReadWrite);
                    match within(left(), &timed_out, create).await {
                        Ok(operation) => {
                            let wait = workspace.wait_for_every(operation, left(), poll);
                            let _ = within(left(), &timed_out, wait).await?;
                        }
                        // It exists, and the listing has not caught up: wait for it.
                        Err(Error::Workspace(WorkspaceError::Api { status: 409, .. })) => {}
                        Err(error) => return Err(error),
                    }
                }
                // Not listed yet, or no host yet: every round waits, and ends at the timeout.
                _ => {}
            }
            self.pause(left(), poll, &branch.name).await?;
        }
    }

    async fn pause(&self, left: Duration, poll: Duration, branch: &str) -> Result<(), Error> {
        if left.is_zero() {
            return Err(Error::Workspace(WorkspaceError::OperationTimedOut {
                name: format!("readiness of {branch}"),
                waited: self.ready_timeout,
            }));
        }
        tokio::time::sleep(poll.min(left)).await;
        Ok(())
    }
}

/// Whether a failed create request proves that nothing was made: the service's definite
/// refusal (a 4xx other than a conflict, which may be our own earlier try), or a setting
/// refused before any request.
fn nothing_made(error: &Error) -> bool {
    match error {
        Error::Workspace(WorkspaceError::Api { status, .. }) => {
            (400..500).contains(status) && *status != 409
        }
        Error::Workspace(WorkspaceError::BranchLimit { .. }) | Error::InvalidConfig { .. } => true,
        _ => false,
    }
}

/// `<prefix>-<yyyymmddhhmmss>-<random>`, valid as a branch id.
fn branch_id(prefix: &str, now: SystemTime, random: u32) -> Result<String, Error> {
    let stamp: String = crate::databricks::format_rfc3339(now, false)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let id = format!("{prefix}-{stamp}-{:06x}", random & 0xff_ffff);
    check_id("branch", &id).map_err(|problem| {
        Error::invalid(
            "prefix",
            format!(
                "`{prefix}` makes the branch id `{id}`, which is not valid ({problem}); use a \
                 short prefix of lowercase letters, digits and hyphens"
            ),
        )
    })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_say_what_they_are_and_are_valid() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let id = branch_id("ci", at, 0xabcdef).unwrap();
        assert_eq!(id, "ci-20270115080000-abcdef");
        for bad in ["CI", "1ci", "ci_x", &"x".repeat(50), ""] {
            assert!(
                matches!(
                    branch_id(bad, at, 1),
                    Err(Error::InvalidConfig {
                        setting: "prefix",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
