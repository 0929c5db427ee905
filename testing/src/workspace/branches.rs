//! The mock's branch API: projects, branches, endpoints of a branch, and long-running
//! operations that finish after a few polls, with the real service's checks and limits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::codec::{self, Answer, parse_form};
use super::{MockEndpoint, Shared, lock};
use crate::api_formats::{format_rfc3339, parse_rfc3339, proto_duration, valid_id};
use crate::rotating::random_token;
use lakebase_pool::BoxFuture;

/// The most unarchived branches a project may have, as the service allows.
pub(super) const BRANCH_LIMIT: usize = 10;
/// The longest TTL accepted.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A branch the mock knows.
#[derive(Clone, Debug)]
pub(super) struct MockBranch {
    pub(super) source: Option<String>,
    pub(super) expire_time: Option<SystemTime>,
    pub(super) state: &'static str,
    pub(super) default: bool,
    pub(super) protected: bool,
}

/// What happens when an operation finishes.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    BranchCreated(String),
    BranchDeleted(String),
    EndpointCreated { branch: String, endpoint: String },
}

#[derive(Clone, Debug)]
pub(super) struct MockOperation {
    polls_left: u32,
    outcome: Outcome,
    /// Once finished: the response, or the error `(code, message)`.
    finished: Option<Result<Value, (String, String)>>,
}

/// What the harness is told when branches and endpoints come and go, so that they can be
/// made real (a database copy, an emulator endpoint). Answers the endpoint's host.
pub(crate) enum BranchEvent {
    /// A branch was created from `source`, with its read-write endpoint `endpoint`.
    Created {
        branch: String,
        source: String,
        endpoint: String,
    },
    /// An endpoint was added to an existing branch.
    EndpointAdded { branch: String, endpoint: String },
    /// A branch and its endpoints were deleted.
    Deleted {
        branch: String,
        endpoints: Vec<String>,
    },
}

pub(crate) type BranchHook =
    Arc<dyn Fn(BranchEvent) -> BoxFuture<'static, Result<Option<String>, String>> + Send + Sync>;

/// The branch API's state.
#[derive(Default)]
pub(crate) struct Branches {
    pub(super) branches: std::collections::BTreeMap<String, MockBranch>,
    pub(super) operations: HashMap<String, MockOperation>,
    /// Polls before an operation is done (default 2).
    pub(super) polls: u32,
    /// An error the next operation ends with.
    pub(super) fail_next: Option<(String, String)>,
    pub(super) hook: Option<BranchHook>,
}

fn api_error(status: u16, code: &str, message: &str) -> Option<Answer> {
    Some(codec::api_error(status, code, message))
}

fn ok(value: Value) -> Option<Answer> {
    Some(codec::ok(value))
}

/// Registers the branch of an endpoint added directly (the project's first is its default).
pub(super) fn ensure_branch(branches: &mut Branches, endpoint: &str) {
    let Some((branch, _)) = endpoint.rsplit_once("/endpoints/") else {
        return;
    };
    let project = project_of(branch);
    let first = !branches.branches.keys().any(|b| project_of(b) == project);
    let _ = branches
        .branches
        .entry(branch.to_owned())
        .or_insert(MockBranch {
            source: None,
            expire_time: None,
            state: "READY",
            default: first,
            protected: false,
        });
}

fn project_of(branch: &str) -> &str {
    branch.split("/branches/").next().unwrap_or(branch)
}

fn branch_json(name: &str, branch: &MockBranch) -> Value {
    let mut status = json!({
        "current_state": branch.state,
        "default": branch.default,
        "is_protected": branch.protected,
    });
    if let Some(source) = &branch.source {
        status["source_branch"] = json!(source);
    }
    if let Some(at) = branch.expire_time {
        status["expire_time"] = json!(format_rfc3339(at, false));
    }
    json!({
        "name": name,
        "branch_id": name.rsplit('/').next(),
        "parent": project_of(name),
        "status": status,
    })
}

fn operation_json(name: &str, operation: &MockOperation) -> Value {
    let mut body = json!({"name": name, "done": operation.finished.is_some(), "metadata": {}});
    match &operation.finished {
        Some(Ok(response)) => body["response"] = response.clone(),
        Some(Err((code, message))) => {
            body["error"] = json!({"error_code": code, "message": message});
        }
        None => {}
    }
    body
}

/// Answers a branch API request, or `None` for a path that is not one.
pub(super) async fn handle(
    state: &Shared,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Option<Answer> {
    let rest = path.strip_prefix("/api/2.0/postgres/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["projects", project]) => get_project(state, project),
        ("POST", ["projects", project, "branches"]) => create_branch(state, project, query, body),
        ("GET", ["projects", project, "branches"]) => list_branches(state, project, query),
        ("GET", ["projects", _, "branches", _]) => get_branch(state, rest),
        ("DELETE", ["projects", _, "branches", _]) => delete_branch(state, rest),
        ("POST", ["projects", _, "branches", _, "endpoints"]) => {
            create_endpoint(state, rest.trim_end_matches("/endpoints"), query, body)
        }
        ("GET", ["projects", _, "operations", _]) => poll(state, rest).await,
        _ => None,
    }
}

fn get_project(state: &Shared, project: &str) -> Option<Answer> {
    let name = format!("projects/{project}");
    let state = lock(state);
    let default = state
        .branches
        .branches
        .iter()
        .find(|(branch, b)| project_of(branch) == name && b.default)
        .map(|(branch, _)| branch.clone());
    match default {
        Some(default) => ok(json!({"name": name, "status": {"default_branch": default}})),
        None => api_error(
            404,
            "NOT_FOUND",
            &format!("Project '{name}' does not exist."),
        ),
    }
}

fn create_branch(state: &Shared, project: &str, query: &str, body: &[u8]) -> Option<Answer> {
    let form = parse_form(query.as_bytes());
    let Some(id) = form.get("branch_id").filter(|id| valid_id(id)) else {
        return api_error(
            400,
            "INVALID_PARAMETER_VALUE",
            "branch_id is missing or invalid",
        );
    };
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return api_error(400, "MALFORMED_REQUEST", "the body is not JSON");
    };
    let spec = &request["spec"];
    let choices = ["ttl", "expire_time", "no_expiry"]
        .iter()
        .filter(|key| !spec[**key].is_null())
        .count();
    if choices != 1 || spec["no_expiry"] == json!(false) {
        return api_error(
            400,
            "INVALID_PARAMETER_VALUE",
            "exactly one of ttl, expire_time or no_expiry (true) is required",
        );
    }
    let expire_time = if let Some(ttl) = spec["ttl"].as_str() {
        match proto_duration(ttl).filter(|ttl| !ttl.is_zero() && *ttl <= MAX_TTL) {
            Some(ttl) => Some(SystemTime::now() + ttl),
            None => {
                return api_error(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "ttl must be at most 30 days",
                );
            }
        }
    } else if let Some(at) = spec["expire_time"].as_str() {
        match parse_rfc3339(at) {
            Some(at) => Some(at),
            None => {
                return api_error(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "expire_time is not RFC 3339",
                );
            }
        }
    } else {
        None
    };
    let project_name = format!("projects/{project}");
    let name = format!("{project_name}/branches/{id}");
    let mut state = lock(state);
    let branches = &mut state.branches;
    let source = match spec["source_branch"].as_str() {
        Some(source) => source.to_owned(),
        None => match branches
            .branches
            .iter()
            .find(|(b, info)| project_of(b) == project_name && info.default)
        {
            Some((default, _)) => default.clone(),
            None => {
                return api_error(
                    404,
                    "NOT_FOUND",
                    &format!("Project '{project_name}' does not exist."),
                );
            }
        },
    };
    if !branches.branches.contains_key(&source) {
        return api_error(
            404,
            "NOT_FOUND",
            &format!("Branch '{source}' does not exist."),
        );
    }
    if branches.branches.contains_key(&name) {
        return api_error(
            409,
            "ALREADY_EXISTS",
            &format!("Branch '{name}' already exists."),
        );
    }
    let unarchived = branches
        .branches
        .iter()
        .filter(|(b, info)| project_of(b) == project_name && info.state != "ARCHIVED")
        .count();
    if unarchived >= BRANCH_LIMIT {
        return api_error(
            400,
            "RESOURCE_EXHAUSTED",
            &format!(
                "Project has reached the maximum number of unarchived branches ({BRANCH_LIMIT})."
            ),
        );
    }
    let _ = branches.branches.insert(
        name.clone(),
        MockBranch {
            source: Some(source),
            expire_time,
            state: "INIT",
            default: false,
            protected: spec["is_protected"] == json!(true),
        },
    );
    start(branches, &project_name, Outcome::BranchCreated(name))
}

/// Starts an operation; answers it, not yet done.
fn start(branches: &mut Branches, project: &str, outcome: Outcome) -> Option<Answer> {
    let name = format!(
        "{project}/operations/{}",
        random_token().expose().to_ascii_lowercase()
    );
    let operation = MockOperation {
        polls_left: branches.polls.max(1),
        outcome,
        finished: None,
    };
    let body = operation_json(&name, &operation);
    let _ = branches.operations.insert(name, operation);
    ok(body)
}

fn list_branches(state: &Shared, project: &str, query: &str) -> Option<Answer> {
    const PAGE: usize = 3;
    let form = parse_form(query.as_bytes());
    let start: usize = form
        .get("page_token")
        .and_then(|t| t.strip_prefix("b+")?.parse().ok())
        .unwrap_or(0);
    let project = format!("projects/{project}");
    let state = lock(state);
    let all: Vec<Value> = state
        .branches
        .branches
        .iter()
        .filter(|(name, _)| project_of(name) == project)
        .map(|(name, branch)| branch_json(name, branch))
        .collect();
    let mut body =
        json!({"branches": all.iter().skip(start).take(PAGE).cloned().collect::<Vec<_>>()});
    if start + PAGE < all.len() {
        body["next_page_token"] = json!(format!("b+{}", start + PAGE));
    }
    ok(body)
}

fn get_branch(state: &Shared, name: &str) -> Option<Answer> {
    match lock(state).branches.branches.get(name) {
        Some(branch) => ok(branch_json(name, branch)),
        None => api_error(
            404,
            "NOT_FOUND",
            &format!("Branch '{name}' does not exist."),
        ),
    }
}

fn delete_branch(state: &Shared, name: &str) -> Option<Answer> {
    let mut state = lock(state);
    let branches = &mut state.branches;
    let Some(branch) = branches.branches.get(name) else {
        return api_error(
            404,
            "NOT_FOUND",
            &format!("Branch '{name}' does not exist."),
        );
    };
    if branch.protected || branch.default {
        return api_error(
            400,
            "FAILED_PRECONDITION",
            "a protected or default branch cannot be deleted",
        );
    }
    if branches
        .branches
        .values()
        .any(|b| b.source.as_deref() == Some(name))
    {
        return api_error(
            400,
            "FAILED_PRECONDITION",
            &format!("Branch '{name}' has child branches and cannot be deleted."),
        );
    }
    let project = project_of(name).to_owned();
    start(branches, &project, Outcome::BranchDeleted(name.to_owned()))
}

fn create_endpoint(state: &Shared, branch: &str, query: &str, body: &[u8]) -> Option<Answer> {
    let form = parse_form(query.as_bytes());
    let Some(id) = form.get("endpoint_id").filter(|id| valid_id(id)) else {
        return api_error(
            400,
            "INVALID_PARAMETER_VALUE",
            "endpoint_id is missing or invalid",
        );
    };
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    if request["spec"]["endpoint_type"] != json!("ENDPOINT_TYPE_READ_WRITE") {
        return api_error(
            400,
            "INVALID_PARAMETER_VALUE",
            "the mock creates read-write endpoints only",
        );
    }
    let endpoint = format!("{branch}/endpoints/{id}");
    let mut state = lock(state);
    if state.endpoints.contains_key(&endpoint) {
        return api_error(
            409,
            "ALREADY_EXISTS",
            &format!("Endpoint '{endpoint}' already exists."),
        );
    }
    if !state.branches.branches.contains_key(branch) {
        return api_error(
            404,
            "NOT_FOUND",
            &format!("Branch '{branch}' does not exist."),
        );
    }
    let project = project_of(branch).to_owned();
    start(
        &mut state.branches,
        &project,
        Outcome::EndpointCreated {
            branch: branch.to_owned(),
            endpoint,
        },
    )
}

/// A poll: counts down, and finishes the operation (telling the hook) on the last one.
async fn poll(state: &Shared, name: &str) -> Option<Answer> {
    let (outcome, hook, fail) = {
        let mut state = lock(state);
        let branches = &mut state.branches;
        let fail = branches.fail_next.clone();
        let hook = branches.hook.clone();
        let Some(operation) = branches.operations.get_mut(name) else {
            return api_error(
                404,
                "NOT_FOUND",
                &format!("Operation '{name}' does not exist."),
            );
        };
        if operation.finished.is_some() {
            return ok(operation_json(name, operation));
        }
        operation.polls_left -= 1;
        if operation.polls_left > 0 {
            return ok(operation_json(name, operation));
        }
        if fail.is_some() {
            branches.fail_next = None;
        }
        (operation.outcome.clone(), hook, fail)
    };
    // The hook runs without the lock: it may register endpoints with this mock.
    let finished = match fail {
        Some(error) => Err(error),
        None => finish(state, outcome, hook).await,
    };
    let mut locked = lock(state);
    let operation = locked.branches.operations.get_mut(name)?;
    operation.finished = Some(finished);
    ok(operation_json(name, operation))
}

async fn finish(
    state: &Shared,
    outcome: Outcome,
    hook: Option<BranchHook>,
) -> Result<Value, (String, String)> {
    let failed = |message: String| (String::from("INTERNAL_ERROR"), message);
    match outcome {
        Outcome::BranchCreated(branch) => {
            let endpoint = format!("{branch}/endpoints/primary");
            let source = lock(state)
                .branches
                .branches
                .get(&branch)
                .and_then(|b| b.source.clone());
            let event = BranchEvent::Created {
                branch: branch.clone(),
                source: source.unwrap_or_default(),
                endpoint: endpoint.clone(),
            };
            let host = run_hook(hook, event).await.map_err(failed)?;
            let mut state = lock(state);
            add_endpoint(&mut state, &endpoint, host);
            let info = state
                .branches
                .branches
                .get_mut(&branch)
                .ok_or_else(|| failed("the branch vanished".into()))?;
            info.state = "READY";
            Ok(branch_json(&branch, info))
        }
        Outcome::EndpointCreated { branch, endpoint } => {
            let event = BranchEvent::EndpointAdded {
                branch,
                endpoint: endpoint.clone(),
            };
            let host = run_hook(hook, event).await.map_err(failed)?;
            let mut state = lock(state);
            add_endpoint(&mut state, &endpoint, host);
            Ok(json!({"name": endpoint}))
        }
        Outcome::BranchDeleted(branch) => {
            let prefix = format!("{branch}/endpoints/");
            let endpoints: Vec<String> = lock(state)
                .endpoints
                .keys()
                .filter(|e| e.starts_with(&prefix))
                .cloned()
                .collect();
            let event = BranchEvent::Deleted {
                branch: branch.clone(),
                endpoints: endpoints.clone(),
            };
            let _ = run_hook(hook, event).await.map_err(failed)?;
            let mut state = lock(state);
            for endpoint in endpoints {
                let _ = state.endpoints.remove(&endpoint);
            }
            let _ = state.branches.branches.remove(&branch);
            Ok(json!({}))
        }
    }
}

async fn run_hook(hook: Option<BranchHook>, event: BranchEvent) -> Result<Option<String>, String> {
    match hook {
        Some(hook) => hook(event).await,
        None => Ok(None),
    }
}

/// The endpoint, with the hook's host or one of its own (that resolves nowhere).
fn add_endpoint(state: &mut super::State, endpoint: &str, host: Option<String>) {
    let host = host.unwrap_or_else(|| {
        let branch_id = endpoint
            .split("/branches/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("branch");
        format!("{branch_id}-primary.branches.mock.test")
    });
    let entry = state
        .endpoints
        .entry(endpoint.to_owned())
        .or_insert(MockEndpoint {
            host: host.clone(),
            state: String::from("ACTIVE"),
            disabled: false,
            read_only: false,
            read_only_host: None,
        });
    entry.host = host;
}
