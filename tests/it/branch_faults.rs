//! `EphemeralBranch` and operation polling against a workspace that answers late, wrongly or
//! endlessly, and a caller that gives up: every loop waits and ends, nothing foreign is
//! adopted or polled, and nothing is left behind.

use lakebase_pool::databricks::WorkspaceError;
use std::time::{Duration, Instant};

use lakebase_pool::branch::EphemeralBranch;
use lakebase_pool::databricks::{BranchSpec, Expiry, Workspace};
use lakebase_pool::{Error, RequestProblem};
use lakebase_pool_testing::{Fault, MockWorkspace};

const PAT: &str = "dapi-branch-faults";

pub(crate) fn mock() -> MockWorkspace {
    let mock = MockWorkspace::start().unwrap();
    mock.add_pat(PAT, "ci@example.com");
    mock.add_endpoint(
        "projects/shop/branches/main/endpoints/ep-main",
        "ep-main.db.test",
    );
    mock
}

pub(crate) fn workspace(mock: &MockWorkspace) -> Workspace {
    Workspace::builder()
        .host(mock.url())
        .token(PAT)
        .build()
        .unwrap()
}

/// The branches of `shop` the mock still has, but `main`.
pub(crate) async fn leftover_branches(mock: &MockWorkspace) -> Vec<String> {
    workspace(mock)
        .list_branches("shop")
        .await
        .unwrap()
        .into_iter()
        .map(|branch| branch.name)
        .filter(|name| !name.ends_with("/main"))
        .collect()
}

/// A workspace that keeps listing no endpoint for the new branch: `create` makes the
/// endpoint once, then waits between listings and gives up at `ready_timeout` with a
/// bounded number of calls (not thousands a second), deleting the branch it made.
#[tokio::test]
async fn an_ephemeral_branch_gives_up_at_ready_timeout_with_a_bounded_number_of_calls() {
    let mock = mock();
    mock.inject(
        Fault::status(200, r#"{"endpoints": []}"#)
            .on("/api/2.0/postgres/projects/shop/branches/*/endpoints")
            .for_method("GET")
            .times(1_000_000),
    );
    let started = Instant::now();
    let err = EphemeralBranch::builder(workspace(&mock), "shop")
        .ready_timeout(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(20))
        .create()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            Error::Workspace(WorkspaceError::OperationTimedOut { .. })
        ),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let calls = mock.requests().len();
    assert!(calls < 200, "{calls} calls in {took:?}");
    assert_eq!(
        mock.count("POST", "/api/2.0/postgres/projects/shop/branches"),
        2,
        "the branch and one endpoint"
    );
    assert!(leftover_branches(&mock).await.is_empty());
}

/// `delete` waits at most the builder's ready timeout, not a fixed ten minutes.
#[tokio::test]
async fn delete_waits_at_most_the_ready_timeout() {
    let mock = mock();
    let branch = EphemeralBranch::builder(workspace(&mock), "shop")
        .ready_timeout(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(10))
        .create()
        .await
        .unwrap();
    mock.set_operation_polls(u32::MAX);
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), branch.delete())
        .await
        .expect("delete() returned within its bound")
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Workspace(WorkspaceError::OperationTimedOut { .. })
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A listing that names another branch's endpoint (production's, where a CI job would run
/// its migrations) is refused: `create` fails, names the problem, and adopts nothing.
#[tokio::test]
async fn an_ephemeral_branch_never_adopts_another_branchs_endpoint() {
    let mock = mock();
    let foreign = serde_json::json!({"endpoints": [{
        "name": "projects/shop/branches/main/endpoints/ep-main",
        "status": {"endpoint_type": "ENDPOINT_TYPE_READ_WRITE",
                   "hosts": {"host": "ep-main.db.test"}}
    }]});
    mock.inject(
        Fault::status(200, foreign.to_string())
            .on("/api/2.0/postgres/projects/shop/branches/*/endpoints")
            .for_method("GET")
            .times(1_000_000),
    );
    let err = EphemeralBranch::builder(workspace(&mock), "shop")
        .ready_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(10))
        .create()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Workspace(WorkspaceError::Request { problem: RequestProblem::InvalidResponse(text), .. })
                if text.contains("belongs to another branch")
        ),
        "{err:?}"
    );
    assert!(leftover_branches(&mock).await.is_empty());
}

/// An operation name with `..` segments is never polled: no request leaves the Lakebase
/// API's paths with the workspace token.
#[tokio::test]
async fn an_operation_name_that_is_not_a_resource_name_is_never_polled() {
    let mock = mock();
    let spec = BranchSpec::new(Expiry::Ttl(Duration::from_secs(3600)));
    for name in [
        "projects/shop/operations/../../../preview/scim/v2/Me",
        "projects/shop/operations/x?page_token=1",
        "../../preview/scim/v2/Me",
    ] {
        mock.inject(
            Fault::status(
                200,
                serde_json::json!({"name": name, "done": false}).to_string(),
            )
            .on("/api/2.0/postgres/projects/shop/branches")
            .for_method("POST"),
        );
        let err = workspace(&mock)
            .create_branch("shop", "dev", &spec)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Workspace(WorkspaceError::Request {
                    problem: RequestProblem::InvalidResponse(_),
                    ..
                })
            ),
            "{name}: {err:?}"
        );
    }
    let strays: Vec<String> = mock
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|path| !path.starts_with("/api/2.0/postgres/projects/shop/branches"))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}

/// A `create` whose caller gives up midway (a CI step's timeout) deletes the branch it made,
/// on a task of its own, within its clean-up bound; so does one whose create answer was
/// lost after the service made the branch.
#[tokio::test]
async fn a_cancelled_or_failed_create_leaves_no_branch_behind() {
    let mock = mock();
    mock.set_operation_polls(1_000);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        EphemeralBranch::builder(workspace(&mock), "shop")
            .ready_timeout(Duration::from_secs(5))
            .poll_interval(Duration::from_millis(10))
            .create(),
    )
    .await;
    assert!(cancelled.is_err(), "gave up midway");
    mock.set_operation_polls(1);
    let until = Instant::now() + Duration::from_secs(10);
    while !leftover_branches(&mock).await.is_empty() {
        assert!(
            Instant::now() < until,
            "the cancelled create's branch is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        mock.count("DELETE", "/api/2.0/postgres/projects/shop/branches/"),
        1
    );

    mock.inject(
        Fault::lost_answer()
            .on("/api/2.0/postgres/projects/shop/branches")
            .for_method("POST"),
    );
    let err = EphemeralBranch::builder(workspace(&mock), "shop")
        .ready_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(10))
        .create()
        .await
        .unwrap_err();
    assert!(!matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(leftover_branches(&mock).await.is_empty(), "after {err}");
}

/// Absurd poll intervals never panic: `Duration::MAX` waits until the deadline, and zero
/// still waits between polls.
#[tokio::test]
async fn absurd_poll_intervals_neither_panic_nor_spin() {
    let mock = mock();
    mock.set_operation_polls(u32::MAX);
    let spec = BranchSpec::new(Expiry::Ttl(Duration::from_secs(3600)));
    let operation = workspace(&mock)
        .create_branch("shop", "dev", &spec)
        .await
        .unwrap();
    let err = workspace(&mock)
        .wait_for_every(operation.clone(), Duration::from_millis(200), Duration::MAX)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Workspace(WorkspaceError::OperationTimedOut { .. })
        ),
        "{err:?}"
    );
    let before = mock.requests().len();
    let err = workspace(&mock)
        .wait_for_every(operation, Duration::from_millis(300), Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Workspace(WorkspaceError::OperationTimedOut { .. })
        ),
        "{err:?}"
    );
    let polls = mock.requests().len() - before;
    assert!(polls <= 40, "{polls} polls in 300 ms");

    let err = EphemeralBranch::builder(workspace(&mock), "shop")
        .ready_timeout(Duration::from_millis(300))
        .poll_interval(Duration::MAX)
        .create()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Workspace(WorkspaceError::OperationTimedOut { .. })
        ),
        "{err:?}"
    );
}
