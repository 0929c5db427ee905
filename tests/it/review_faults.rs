//! An outside attempt to break the second hardening round (per-user pools, `EphemeralBranch`,
//! the listener): each test reproduced a defect in the first fixes. Each comment says what
//! went wrong, and "Should" what the test now holds the code to.

use lakebase_pool::databricks::WorkspaceError;
use std::time::{Duration, Instant};

use lakebase_pool::branch::EphemeralBranch;
use lakebase_pool::users::{ForwardedHeaders, ForwardedUser, UserPools};
use lakebase_pool::{Error, PoolBuilder, RequestProblem};
use lakebase_pool_testing::{Fault, MockWorkspace};

const ME: &str = "/api/2.0/preview/scim/v2/Me";

use crate::branch_faults::{leftover_branches, mock, workspace};
use crate::support::chain;

// ---------------------------------------------------------------------------------------
// EphemeralBranch
// ---------------------------------------------------------------------------------------

/// A `create` that failed (here: a listing naming another branch's endpoint) starts its
/// clean-up delete; the service answers 409 (busy) for a moment; the caller's own timeout
/// (a CI step's) drops the future during that clean-up. `CleanUp::after` disarmed the guard
/// *before* awaiting the delete (src/branch.rs `CleanUp::after`), so nothing deletes the
/// branch any more: it is left behind until its TTL (2 h by default).
///
/// Should: a clean-up cut short by the caller's cancellation goes on on a task of its own,
/// as a cancelled create's does ("a cancelled or failed create deletes its branch").
#[tokio::test]
async fn a_create_cancelled_during_its_cleanup_still_deletes_the_branch() {
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
    mock.inject(
        Fault::status(
            409,
            r#"{"error_code": "RESOURCE_CONFLICT", "message": "an operation is running"}"#,
        )
        .on("/api/2.0/postgres/projects/shop/branches/")
        .for_method("DELETE")
        .times(10),
    );
    let create = EphemeralBranch::builder(workspace(&mock), "shop")
        .ready_timeout(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(50))
        .create();
    // Give up as soon as the clean-up has started deleting (the caller's timeout).
    let first_delete = async {
        while mock.count("DELETE", "/api/2.0/postgres/projects/shop/branches/") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        result = create => panic!("create ended before its clean-up was cut short: {result:?}"),
        () = first_delete => {}
    }
    // The service stops being busy after 10 refusals (0.5 s); a clean-up still running
    // would delete the branch well within this.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftover_branches(&mock).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "the branch of a create cancelled during its clean-up is left behind: {left:?} \
             (DELETE requests: {})",
            mock.count("DELETE", "/api/2.0/postgres/projects/shop/branches/")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ready_timeout` is documented as "how long `create` waits in all for the branch and its
/// endpoint to be ready" (and the fix: "every readiness loop waits and ends at
/// ready_timeout"). But each workspace call inside `make_ready` (`get_branch`,
/// `list_endpoints`, `create_endpoint`) and each poll in `wait_for_every` is bounded only by
/// the HTTP layer's own timeout and retry budget (30 s / 60 s), not by what is left of
/// `ready_timeout` (src/branch.rs `make_ready`, src/databricks/branches.rs `wait_for_every`).
/// A workspace answering 503 to the branch look-up keeps a 0.5 s `create` going for 60 s.
///
/// Should: `create` ends (OperationTimedOut, branch deleted) about `ready_timeout` (+ the
/// clean-up bound) after it started.
#[tokio::test]
async fn create_ends_at_ready_timeout_while_the_workspace_answers_503() {
    let mock = mock();
    mock.inject(
        Fault::status(
            503,
            r#"{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "x"}"#,
        )
        .on("/api/2.0/postgres/projects/shop/branches/")
        .for_method("GET")
        .times(1_000_000),
    );
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(8),
        EphemeralBranch::builder(workspace(&mock), "shop")
            .ready_timeout(Duration::from_millis(500))
            .poll_interval(Duration::from_millis(20))
            .create(),
    )
    .await;
    assert!(
        result.is_ok(),
        "create with ready_timeout = 0.5 s still running after {:?}",
        started.elapsed()
    );
}

/// `EphemeralBranch::delete` is documented to wait "for at most the builder's
/// ready_timeout". The operation poll inside (`wait_for_every`'s GET) is not bounded by
/// what is left: an operation poll that hangs holds `delete()` for the HTTP timeout and
/// its retries (30 s each, within a 60 s budget).
///
/// Should: `delete()` returns `OperationTimedOut` about `ready_timeout` after it started.
#[tokio::test]
async fn delete_ends_at_ready_timeout_when_an_operation_poll_hangs() {
    let mock = mock();
    let branch = EphemeralBranch::builder(workspace(&mock), "shop")
        .ready_timeout(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(10))
        .create()
        .await
        .unwrap();
    mock.set_operation_polls(5);
    mock.inject(
        Fault::hang()
            .on("/api/2.0/postgres/projects/shop/operations/")
            .for_method("GET")
            .times(1_000),
    );
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(8), branch.delete()).await;
    assert!(
        result.is_ok(),
        "delete() with ready_timeout = 0.5 s still running after {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Per-user pools
// ---------------------------------------------------------------------------------------

fn user_pools(mock: &MockWorkspace) -> UserPools {
    UserPools::builder(
        PoolBuilder::default()
            .workspace(workspace(mock))
            .lakebase_endpoint("projects/shop/branches/main/endpoints/ep-main"),
    )
    .forwarded_headers(ForwardedHeaders::Trusted)
    .build()
    .unwrap()
}

/// `redact` (src/target.rs) promises "every occurrence of `name` (in any letter case)", but
/// falls back to an exact, case-sensitive replace as soon as lower-casing changes the byte
/// length of *any* character of the text (`İ`, `Ω`, `K` (Kelvin), `Ⱥ`...). A workspace
/// message naming the user in its own spelling (`Alice@Example.com`, the SCIM userName)
/// next to such a character keeps the email when the forwarded header spells it
/// `alice@example.com`: it leaks in the error's Display.
///
/// Should: the email is hidden whatever else the text contains (e.g. compare per char, or
/// find matches in a case-folded copy with a byte map).
#[tokio::test]
async fn no_email_in_another_case_leaks_beside_a_length_changing_character() {
    let mock = mock();
    mock.add_pat("user-token-alice", "alice@example.com");
    mock.inject(
        Fault::status(
            500,
            r#"{"error_code": "INTERNAL_ERROR", "message": "lookup of Alice@Example.com failed in workspace İstanbul-prod"}"#,
        )
        .on(ME)
        .for_method("GET"),
    );
    let users = user_pools(&mock);
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        users.for_user(&ForwardedUser::new("alice@example.com", "user-token-alice")),
    )
    .await
    .expect("bounded")
    .unwrap_err();
    let text = format!("{}\n{err:?}", chain(&err));
    assert!(text.contains("lookup of"), "the message is shown: {text}");
    assert!(
        !text.to_lowercase().contains("alice@example.com"),
        "the user's email leaked: {text}"
    );
}

/// Workspace error messages are cut to 300 characters (src/databricks/answers.rs `shorten`)
/// *before* the user's email is redacted (src/users/provider.rs `without_email`), so an
/// email that straddles the cut is no longer found whole and its first part stays in the
/// error (`... alice.longname@exam...`).
///
/// Should: redact before shortening (or redact partial matches at the cut).
#[tokio::test]
async fn no_part_of_an_email_cut_by_the_300_character_limit_leaks() {
    const EMAIL: &str = "alice.longname@example.com";
    let mock = mock();
    mock.add_pat("user-token-alice", EMAIL);
    // The email starts at character 290: its first 10 characters stay before the cut.
    let message = format!("{} user {EMAIL} not found", "x".repeat(284));
    assert_eq!(message.find(EMAIL), Some(290));
    mock.inject(
        Fault::status(
            500,
            serde_json::json!({"error_code": "INTERNAL_ERROR", "message": message}).to_string(),
        )
        .on(ME)
        .for_method("GET"),
    );
    let users = user_pools(&mock);
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        users.for_user(&ForwardedUser::new(EMAIL, "user-token-alice")),
    )
    .await
    .expect("bounded")
    .unwrap_err();
    let text = format!("{}\n{err:?}", chain(&err));
    assert!(text.contains("xxxxxxxx"), "the message is shown: {text}");
    assert!(
        !text.contains("alice.long"),
        "part of the user's email leaked: {text}"
    );
}

/// One token check in flight per user and token, on its own task (src/users/check.rs). The
/// in-flight entry is removed only at the end of `TokenChecks::run`: when that task is
/// dropped before it ends (its runtime shut down: an actix worker restarting, a test
/// runtime, a `#[tokio::main]` per thread), the entry stays forever with a closed channel.
/// Every later request of that user with that token, on any runtime, joins the dead entry
/// and is refused at once with `CutOff` on `/Me`, without asking the workspace again. (The
/// token cache's flights clear their mark in `Drop` for exactly this reason.)
///
/// Should: a request that finds a dead check starts a new one (the entry cleared by a drop
/// guard, or replaced when its sender is gone).
#[test]
fn a_token_check_dropped_with_its_runtime_is_started_again() {
    let mock = mock();
    mock.add_pat("user-token-alice", "alice@example.com");
    mock.inject(Fault::hang().on(ME).for_method("GET"));
    let alice = ForwardedUser::new("alice@example.com", "user-token-alice");

    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let users = first.block_on(async { user_pools(&mock) });
    let timed_out = first.block_on(async {
        tokio::time::timeout(Duration::from_millis(300), users.for_user(&alice))
            .await
            .is_err()
    });
    assert!(timed_out, "the check hangs");
    // The runtime goes (and with it the check's task).
    drop(first);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        for attempt in 0..3 {
            let result =
                tokio::time::timeout(Duration::from_secs(20), users.for_user(&alice)).await;
            let result = result.expect("bounded");
            if let Err(Error::Workspace(WorkspaceError::Request {
                problem: RequestProblem::CutOff,
                path,
                ..
            })) = &result
            {
                panic!(
                    "attempt {attempt}: refused with CutOff on {path} from a check that died \
                     with its runtime; /Me asked {} time(s)",
                    mock.count("GET", ME)
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// Listener on a closed pool
// ---------------------------------------------------------------------------------------

/// "A closed pool opens no listener session" (src/listener.rs `Pool::listener`): the check
/// is made once, before the connect. A `close()` while the listener's session is being
/// opened (a cold start, a slow network: here 300 ms per chunk) does not stop it: the
/// session logs in, `LISTEN`s, and `listener()` returns `Ok` on a pool closed a second
/// earlier, with a session that then lives (and reconnects) on its own.
///
/// Should: `Error::PoolClosed`, and no session left open (check again after the open, or
/// make the worker's connects fail once the pool is closed).
#[tokio::test]
async fn a_listener_opened_while_the_pool_closes_gets_no_session() {
    use lakebase_pool::Secret;
    use lakebase_pool_testing::{FaultProxy, LocalPostgres, NetworkFault};

    let pg = LocalPostgres::start().expect("start a local PostgreSQL");
    pg.create_role("app", &Secret::new("pw")).await.unwrap();
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    proxy.set_fault(NetworkFault::Latency(Duration::from_millis(300)));
    let pool = pg
        .pool_builder("app")
        .port(proxy.port())
        .password("pw")
        .build()
        .unwrap();
    let opening = tokio::spawn({
        let pool = pool.clone();
        async move { pool.listener(["jobs"]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    pool.close();
    assert!(pool.is_closed());
    let closed_at = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), opening)
        .await
        .expect("bounded")
        .unwrap();
    let sessions: i64 = pg
        .admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        result.is_err(),
        "listener() returned Ok {:?} after the pool was closed, with {sessions} session(s) \
         of the pool's role open",
        closed_at.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// UserPools::close racing a first checkout
// ---------------------------------------------------------------------------------------

/// `UserPools::close()` "sets a closed state: no pool or session after close()" (src/users/
/// mod.rs `checkout`, `entry_for`). The state is checked before the entry is made, but not
/// after `entry.pool.get()`: a checkout whose connect (here: its credential mint, slowed to
/// 400 ms by the workspace) is under way when `close()` runs still logs in and returns a
/// connection of the closed `UserPools`.
///
/// Should: `Error::PoolClosed` (and the session closed), as for every checkout after close.
#[tokio::test]
async fn a_user_checkout_racing_close_gets_no_session() {
    use lakebase_pool::Environment;
    use lakebase_pool_testing::LocalLakebase;

    const APP: &str = "break-app-principal";
    const APP_SECRET: &str = "break-app-secret";
    const ALICE: &str = "alice@example.com";
    let lakebase = LocalLakebase::start().await.unwrap();
    lakebase
        .add_service_principal(APP, APP_SECRET)
        .await
        .unwrap();
    let env = Environment::from_vars([
        ("DATABRICKS_HOST", lakebase.workspace().url()),
        ("DATABRICKS_CLIENT_ID", APP.to_owned()),
        ("DATABRICKS_CLIENT_SECRET", APP_SECRET.to_owned()),
        ("LAKEBASE_ENDPOINT", LocalLakebase::ENDPOINT.to_owned()),
        ("PGPORT", lakebase.emulator().port().to_string()),
    ]);
    let builder = PoolBuilder::from_environment(&env)
        .unwrap()
        .resolver(lakebase.emulator().resolver())
        .root_certificates_pem(lakebase.emulator().ca_cert_pem());
    let tokens = lakebase.add_users(&[ALICE]).await.unwrap();
    let users = UserPools::builder(builder)
        .forwarded_headers(ForwardedHeaders::Trusted)
        .build()
        .unwrap();
    // Warm the app's own workspace login, so that the latency below slows the user's path.
    drop(users.app_pool().get().await.unwrap());
    let mints_before = lakebase
        .workspace()
        .count("POST", "/api/2.0/postgres/credentials");
    lakebase.workspace().set_latency(Duration::from_millis(400));
    let alice = ForwardedUser::new(ALICE, tokens[0].clone());
    let checkout = tokio::spawn({
        let users = users.clone();
        async move { users.for_user(&alice).await }
    });
    // Close while the user's credential mint (inside the pool's connect) is under way.
    let until = Instant::now() + Duration::from_secs(20);
    while lakebase
        .workspace()
        .count("POST", "/api/2.0/postgres/credentials")
        == mints_before
    {
        assert!(Instant::now() < until, "the user's mint never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    users.close();
    let result = tokio::time::timeout(Duration::from_secs(30), checkout)
        .await
        .expect("bounded")
        .unwrap();
    match result {
        Ok(conn) => {
            let who: String = conn
                .query_one("SELECT current_user", &[])
                .await
                .unwrap()
                .get(0);
            panic!(
                "for_user returned a session (as {who:?}) of a UserPools closed before it logged in"
            );
        }
        Err(error) => assert!(matches!(error, Error::PoolClosed), "{error:?}"),
    }
}
