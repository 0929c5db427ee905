//! Branches: the workspace's branch API against the mock (operations that need polling, the
//! wire shapes, the service's checks and limits), `EphemeralBranch` through it against real
//! local branches, and `LocalLakebase::branch` for a branch per test.

use lakebase_pool::databricks::WorkspaceError;
use std::time::Duration;

use lakebase_pool::branch::EphemeralBranch;
use lakebase_pool::databricks::{
    BranchSpec, BranchState, CredentialRequest, Expiry, MAX_BRANCH_TTL, Workspace,
};
use lakebase_pool::{EndpointName, Environment, Error};
use lakebase_pool_testing::{LocalLakebase, MockWorkspace};

use crate::support::LogCapture;

const PAT: &str = "dapi-branches";
const USER: &str = "ci@example.com";
const MAIN: &str = "projects/shop/branches/main";

fn mock() -> MockWorkspace {
    let mock = MockWorkspace::start().unwrap();
    mock.add_pat(PAT, USER);
    mock.add_endpoint(&format!("{MAIN}/endpoints/ep-main"), "ep-main.db.test");
    mock
}

fn workspace(url: &str) -> Workspace {
    Workspace::builder().host(url).token(PAT).build().unwrap()
}

/// Polls every 10 ms (the mock finishes in milliseconds), for at most 10 s.
async fn wait(
    workspace: &Workspace,
    operation: lakebase_pool::databricks::Operation,
) -> Result<lakebase_pool::databricks::Operation, Error> {
    workspace
        .wait_for_every(
            operation,
            Duration::from_secs(10),
            Duration::from_millis(10),
        )
        .await
}

#[tokio::test]
async fn a_branch_is_created_polled_until_done_minted_for_and_deleted_with_the_real_wire_shapes() {
    let mock = mock();
    mock.set_operation_polls(3);
    let ws = workspace(&mock.url());
    let spec = BranchSpec::new(Expiry::Ttl(Duration::from_secs(2 * 3600)));
    let operation = ws.create_branch("shop", "ci-1", &spec).await.unwrap();
    assert!(
        !operation.done,
        "the service answers with a running operation"
    );
    assert!(operation.name.starts_with("projects/shop/operations/"));
    let done = wait(&ws, operation).await.unwrap();
    assert!(done.done);
    assert_eq!(
        done.response.as_ref().and_then(|r| r["name"].as_str()),
        Some("projects/shop/branches/ci-1")
    );
    let branch = ws.get_branch("projects/shop/branches/ci-1").await.unwrap();
    assert_eq!(branch.state, Some(BranchState::Ready));
    assert_eq!(
        branch.source_branch.as_deref(),
        Some(MAIN),
        "the default branch"
    );
    assert!(branch.expire_time.is_some());
    let endpoints = ws.list_endpoints("shop", "ci-1").await.unwrap();
    assert_eq!(endpoints.len(), 1);
    assert!(endpoints[0].host.is_some());
    let endpoint: EndpointName = "projects/shop/branches/ci-1/endpoints/primary"
        .parse()
        .unwrap();
    let _ = ws
        .generate_database_credential(&endpoint, &CredentialRequest::default())
        .await
        .unwrap();
    assert_eq!(mock.minted()[0].endpoint, endpoint.to_string());
    let names: Vec<String> = ws
        .list_branches("shop")
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["projects/shop/branches/ci-1", MAIN]);

    let deleting = ws
        .delete_branch("projects/shop/branches/ci-1")
        .await
        .unwrap();
    let _ = wait(&ws, deleting).await.unwrap();
    assert!(matches!(
        ws.get_branch("projects/shop/branches/ci-1").await,
        Err(Error::Workspace(WorkspaceError::Api { status: 404, .. }))
    ));

    // The wire: the create call's query and body, the polls, the delete.
    let requests = mock.requests();
    let create = requests
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/2.0/postgres/projects/shop/branches")
        .unwrap();
    assert_eq!(create.query, "branch_id=ci-1");
    let body: serde_json::Value = serde_json::from_str(create.body.as_deref().unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"spec": {"ttl": "7200s"}}));
    let polls = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/operations/"))
        .count();
    assert_eq!(
        polls,
        3 + 3,
        "three polls for the create, three for the delete"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.method == "DELETE"
                && r.path == "/api/2.0/postgres/projects/shop/branches/ci-1")
    );
}

#[tokio::test]
async fn bad_ids_and_expiries_are_refused_before_any_request() {
    let mock = mock();
    let ws = workspace(&mock.url());
    let spec = BranchSpec::new(Expiry::Ttl(Duration::from_secs(3600)));
    for bad in ["Upper", "1-digit-first", "under_score", "", &"x".repeat(64)] {
        let err = ws.create_branch("shop", bad, &spec).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    setting: "branch_id",
                    ..
                }
            ),
            "{bad}: {err:?}"
        );
    }
    let too_long = BranchSpec::new(Expiry::Ttl(MAX_BRANCH_TTL + Duration::from_secs(1)));
    assert!(matches!(
        ws.create_branch("shop", "ok", &too_long).await,
        Err(Error::InvalidConfig { setting: "ttl", .. })
    ));
    assert!(matches!(
        ws.delete_branch("shop/ci-1").await,
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(mock.requests().len(), 0, "nothing was sent");
}

#[tokio::test]
async fn service_errors_limits_and_deadlines_are_typed() {
    let mock = mock();
    let ws = workspace(&mock.url());
    let spec = || BranchSpec::new(Expiry::Ttl(Duration::from_secs(3600)));

    // An operation that ends in error gives the service's code and message.
    mock.fail_next_operation("INTERNAL_ERROR", "compute provisioning failed");
    let operation = ws.create_branch("shop", "doomed", &spec()).await.unwrap();
    let err = wait(&ws, operation).await.unwrap_err();
    assert!(
        matches!(&err, Error::Workspace(WorkspaceError::Operation { code, message, .. }) if code == "INTERNAL_ERROR" && message == "compute provisioning failed"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("compute provisioning failed"),
        "{err}"
    );

    // A deadline bounds every wait.
    mock.set_operation_polls(1_000);
    let operation = ws.create_branch("shop", "slow", &spec()).await.unwrap();
    let err = ws
        .wait_for(operation, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Workspace(WorkspaceError::OperationTimedOut { .. })
        ),
        "{err:?}"
    );
    mock.set_operation_polls(1);

    // A branch with children cannot be deleted.
    let child = BranchSpec::new(Expiry::Never).source_branch("projects/shop/branches/slow");
    let _ = wait(
        &ws,
        ws.create_branch("shop", "child", &child).await.unwrap(),
    )
    .await
    .unwrap();
    let err = ws
        .delete_branch("projects/shop/branches/slow")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Workspace(WorkspaceError::Api { status: 400, message, .. }) if message.contains("child branches")),
        "{err:?}"
    );

    // The project's branch limit (10 unarchived; main, doomed, slow and child exist).
    for i in 0..6 {
        let _ = ws
            .create_branch("shop", &format!("fill-{i}"), &spec())
            .await
            .unwrap();
    }
    let err = ws
        .create_branch("shop", "one-too-many", &spec())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Workspace(WorkspaceError::BranchLimit { ref project, .. }) if project == "shop"),
        "{err:?}"
    );
    assert!(err.to_string().contains("delete branches"), "{err}");
}

fn local_workspace(lakebase: &LocalLakebase) -> Workspace {
    lakebase_pool::databricks::Workspace::builder()
        .host(lakebase.workspace().url())
        .token(LocalLakebase::PAT)
        .build()
        .unwrap()
}

/// The CI workflow locally, through the real branch API: an `EphemeralBranch` of the
/// project's default branch, ready to connect to, holding its own writes; deleted at the end.
#[tokio::test]
async fn an_ephemeral_branch_is_a_real_copy_with_its_own_endpoint_and_is_deleted() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let main = lakebase.pool_builder().unwrap().build().unwrap();
    main.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE seed (n int); INSERT INTO seed VALUES (1), (2), (3);")
        .await
        .unwrap();
    let branch = EphemeralBranch::builder(local_workspace(&lakebase), "projects/local")
        .prefix("ci")
        .poll_interval(Duration::from_millis(10))
        .create()
        .await
        .unwrap();
    assert!(
        branch.name().starts_with("projects/local/branches/ci-"),
        "{}",
        branch.name()
    );
    assert!(branch.expire_time().is_some(), "a TTL by default");
    let pool = branch
        .pool_builder()
        .port(lakebase.emulator().port())
        .resolver(lakebase.emulator().resolver())
        .root_certificates_pem(lakebase.emulator().ca_cert_pem())
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    conn.batch_execute("INSERT INTO seed VALUES (4); CREATE TABLE migrated (id int);")
        .await
        .unwrap();
    let count: i64 = conn
        .query_one("SELECT count(*) FROM seed", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 4, "the seed plus its own write");
    drop(conn);
    let main_count: i64 = main
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM seed", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(main_count, 3, "the source does not see the branch's writes");
    assert!(
        main.get()
            .await
            .unwrap()
            .batch_execute("SELECT * FROM migrated")
            .await
            .is_err(),
        "nor its migration"
    );
    assert!(
        lakebase
            .workspace()
            .minted()
            .iter()
            .any(|m| m.endpoint == branch.endpoint().to_string())
    );

    pool.close();
    let name = branch.name().to_owned();
    branch.delete().await.unwrap();
    assert!(matches!(
        local_workspace(&lakebase).get_branch(&name).await,
        Err(Error::Workspace(WorkspaceError::Api { status: 404, .. }))
    ));
}

/// A branch dropped without `delete` is left to its TTL, and says so.
#[tokio::test]
async fn an_ephemeral_branch_dropped_without_delete_is_logged() {
    let (logs, _guard) = LogCapture::install();
    let lakebase = LocalLakebase::start().await.unwrap();
    let branch = EphemeralBranch::builder(local_workspace(&lakebase), "local")
        .poll_interval(Duration::from_millis(10))
        .create()
        .await
        .unwrap();
    drop(branch);
    assert_eq!(logs.count("dropped without delete()"), 1, "{}", logs.text());
}

/// A branch per test: two tests writing to their own branches of the same seeded database
/// do not see each other's rows.
#[tokio::test]
async fn local_branches_of_one_seeded_database_are_isolated() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let seed = lakebase.pool_builder().unwrap().build().unwrap();
    seed.get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE users (name text PRIMARY KEY);
             INSERT INTO users SELECT 'seed-' || g FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    let (a, b) = (
        lakebase.branch("test-a").await.unwrap(),
        lakebase.branch("test-b").await.unwrap(),
    );
    let pool_a = a.pool_builder().unwrap().build().unwrap();
    let pool_b = b.pool_builder().unwrap().build().unwrap();
    let write = |pool: &lakebase_pool::Pool, name: &'static str| {
        let pool = pool.clone();
        async move {
            pool.get()
                .await
                .unwrap()
                .execute("INSERT INTO users VALUES ($1)", &[&name])
                .await
                .unwrap()
        }
    };
    let _ = tokio::join!(write(&pool_a, "only-in-a"), write(&pool_b, "only-in-b"));
    let names = |pool: lakebase_pool::Pool| async move {
        pool.get()
            .await
            .unwrap()
            .query("SELECT name FROM users WHERE name NOT LIKE 'seed-%'", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(pool_a.clone()).await, ["only-in-a"]);
    assert_eq!(names(pool_b.clone()).await, ["only-in-b"]);
    assert!(
        names(seed.clone()).await.is_empty(),
        "the seed is untouched"
    );
    let seeded: i64 = pool_a
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seeded, 1001);
    assert!(matches!(
        lakebase.branch("Not_Valid").await,
        Err(lakebase_pool_testing::HarnessError::InvalidName(_))
    ));
}

#[allow(dead_code)]
#[path = "../../examples/branch_per_run.rs"]
mod branch_per_run;

/// `examples/branch_per_run.rs` with no configuration (its own local stack), and against a
/// mock workspace through the environment as a CI job would run it; a failed step still
/// deletes the branch.
#[tokio::test]
async fn the_branch_per_run_example_works_locally_and_through_the_environment() {
    let report = branch_per_run::run(&Environment::default()).await.unwrap();
    assert_eq!(report.rows, 100);

    let lakebase = LocalLakebase::start().await.unwrap();
    lakebase.workspace().set_operation_polls(1);
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), lakebase.emulator().ca_cert_pem()).unwrap();
    let env = Environment::from_vars([
        ("DATABRICKS_HOST", lakebase.workspace().url()),
        ("DATABRICKS_TOKEN", LocalLakebase::PAT.to_owned()),
        ("LAKEBASE_PROJECT", String::from("projects/local")),
        ("PGPORT", lakebase.emulator().port().to_string()),
        ("PGHOSTADDR", String::from("127.0.0.1")),
        ("PGSSLROOTCERT", ca.path().to_str().unwrap().to_owned()),
    ]);
    let branches = || async {
        local_workspace(&lakebase)
            .list_branches("local")
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect::<Vec<_>>()
    };
    let report = branch_per_run::run(&env).await.unwrap();
    assert!(report.branch.starts_with("projects/local/branches/ci-"));
    assert_eq!(
        branches().await,
        ["projects/local/branches/main"],
        "deleted"
    );

    // The migration fails on a source that already has its table: the branch goes anyway.
    let main = lakebase.pool_builder().unwrap().build().unwrap();
    main.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE demo_items (id int)")
        .await
        .unwrap();
    main.close();
    let err = branch_per_run::run(&env).await.unwrap_err();
    assert!(
        err.to_string().contains("db error") || err.to_string().contains("exists"),
        "{err}"
    );
    assert_eq!(
        branches().await,
        ["projects/local/branches/main"],
        "deleted after the failure"
    );
}

/// A `LocalLakebase` stops its servers when dropped, branches and replicas included (the
/// branch API's hook once kept the server alive through a reference cycle).
#[tokio::test]
async fn a_local_lakebase_stops_its_servers_when_dropped() {
    let lakebase = LocalLakebase::start_with_replicas(1).await.unwrap();
    let branch = lakebase.branch("short-lived").await.unwrap();
    let ports = [
        lakebase.postgres().port(),
        lakebase.replica(0).unwrap().port(),
        lakebase.emulator().port(),
        lakebase.workspace().addr().port(),
    ];
    drop(branch);
    drop(lakebase);
    for port in ports {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                std::time::Instant::now() < until,
                "port {port} still answers"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
