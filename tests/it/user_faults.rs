//! Per-user pools under the conditions production brings: a closed `UserPools`, a server
//! that refuses a user's connection naming their role, concurrent first requests and token
//! checks that finish out of order, and the proxy forwarding an email in another case.

use std::time::Duration;

use lakebase_pool::databricks::Workspace;
use lakebase_pool::integrations::HttpError;
use lakebase_pool::users::{ForwardedHeaders, ForwardedUser, UserPools, UserPoolsBuilder};
use lakebase_pool::{Error, PoolBuilder, RetryPolicy, UserProblem};
use lakebase_pool_testing::Fault;

use crate::support::{LogCapture, chain};
use crate::users::{ALICE, APP, APP_SECRET, BOB, apps_stack};

const ME: &str = "/api/2.0/preview/scim/v2/Me";

fn trusted(builder: PoolBuilder) -> UserPoolsBuilder {
    UserPools::builder(builder).forwarded_headers(ForwardedHeaders::Trusted)
}

/// Sessions open on the server for `role`.
async fn sessions_of(lakebase: &lakebase_pool_testing::LocalLakebase, role: &str) -> i64 {
    lakebase
        .postgres()
        .admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// After `close()`, no user gets a pool or a session: `for_user` fails with `PoolClosed`,
/// for a user seen before and for a new one, and nothing logs in.
#[tokio::test]
async fn no_session_after_user_pools_close() {
    let (lakebase, builder) = apps_stack().await;
    let tokens = lakebase.add_users(&[ALICE, BOB]).await.unwrap();
    let users = trusted(builder).build().unwrap();
    let alice = ForwardedUser::new(ALICE, tokens[0].clone());
    drop(users.for_user(&alice).await.unwrap());
    users.close();
    for user in [alice, ForwardedUser::new(BOB, tokens[1].clone())] {
        let err = users.for_user(&user).await.unwrap_err();
        assert!(matches!(err, Error::PoolClosed), "{err:?}");
    }
    let headers = [
        ("x-forwarded-email", BOB.as_bytes()),
        ("x-forwarded-access-token", tokens[1].expose().as_bytes()),
    ];
    let err = users
        .for_request(|name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PoolClosed), "{err:?}");
    let stats = users.stats();
    assert_eq!(
        (stats.users, stats.live_pools, stats.created),
        (0, 0, 1),
        "{stats:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sessions_of(&lakebase, ALICE).await, 0);
    assert_eq!(sessions_of(&lakebase, BOB).await, 0);
}

/// The server refuses a user's connection with a text that names their role (`too many
/// connections for role "alice@example.com"`, 53300, relabelled by the proxy): the error, its
/// `Debug`, the HTTP error made of it and every log line show `<user>`, never the email.
#[tokio::test]
async fn no_email_in_the_error_of_a_refused_connect() {
    let (logs, _guard) = LogCapture::install();
    let (lakebase, builder) = apps_stack().await;
    let tokens = lakebase.add_users(&[ALICE]).await.unwrap();
    lakebase
        .postgres()
        .admin()
        .await
        .unwrap()
        .batch_execute(&format!("ALTER ROLE \"{ALICE}\" CONNECTION LIMIT 0"))
        .await
        .unwrap();
    let users = trusted(builder.retry(RetryPolicy::default().deadline(Duration::from_millis(500))))
        .build()
        .unwrap();
    let err = users
        .for_user(&ForwardedUser::new(ALICE, tokens[0].clone()))
        .await
        .unwrap_err();
    let text = chain(&err);
    assert!(text.contains("too many connections for role"), "{text}");
    assert!(text.contains("<user>"), "{text}");
    let http = HttpError::from(err);
    let everything = format!(
        "{text}\n{http}\n{http:?}\n{}\n{}",
        chain(&http),
        logs.text()
    );
    for spelling in [ALICE, &ALICE.to_uppercase()] {
        assert!(
            !everything.contains(spelling),
            "`{spelling}` leaked into:\n{everything}"
        );
    }
}

/// Concurrent first requests of one user with one token make one check with the workspace,
/// and it survives the cancellation of the request that started it.
#[tokio::test]
async fn one_token_check_in_flight_per_user_survives_its_starters_cancellation() {
    let (lakebase, builder) = apps_stack().await;
    let tokens = lakebase.add_users(&[ALICE]).await.unwrap();
    let users = trusted(builder).build().unwrap();
    // Warm the app's own workspace login, so that the latency below slows the check only.
    drop(users.app_pool().get().await.unwrap());
    lakebase.workspace().set_latency(Duration::from_millis(300));
    let alice = ForwardedUser::new(ALICE, tokens[0].clone());
    let starter = {
        let (users, alice) = (users.clone(), alice.clone());
        tokio::spawn(async move { users.for_user(&alice).await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let joiners: Vec<_> = (0..8)
        .map(|_| {
            let (users, alice) = (users.clone(), alice.clone());
            tokio::spawn(async move { users.for_user(&alice).await.map(drop) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    starter.abort();
    for joiner in joiners {
        joiner.await.unwrap().unwrap();
    }
    let checks = lakebase.workspace().count("GET", ME);
    assert_eq!(checks, 1, "one check with the workspace");
    assert_eq!(users.stats().token_checks, 1);
}

/// A check of an older token that finishes after the check of a newer one never puts the
/// older token back: the user's next mint uses the newest token. (The older token here has
/// no database scope, so a mint with it would be refused.)
#[tokio::test]
async fn the_newest_token_wins_when_checks_finish_out_of_order() {
    let (lakebase, _) = apps_stack().await;
    let tokens = lakebase.add_users(&[ALICE]).await.unwrap();
    let mock = lakebase.workspace();
    let older = mock.issue_user_token_without_database_scope(ALICE);
    // The app's workspace client times a hung request out after 300 ms and tries again.
    let workspace = Workspace::builder()
        .host(mock.url())
        .client_credentials(APP, APP_SECRET)
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let users = trusted(crate::users::app_builder(&lakebase).workspace(workspace))
        .build()
        .unwrap();
    mock.inject(Fault::hang().on(ME));
    let first = {
        let users = users.clone();
        let user = ForwardedUser::new(ALICE, older.clone());
        tokio::spawn(async move { users.for_user(&user).await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let newest = ForwardedUser::new(ALICE, tokens[0].clone());
    // Held: the older request will need a connection of its own, and so a login.
    let held = users.for_user(&newest).await.unwrap();
    // Its login then finds the database token revoked and mints a fresh one, with the
    // user's newest token: the older check, which ends last (its first try hung), must not
    // have put the older token back.
    mock.revoke_minted();
    first
        .await
        .unwrap()
        .expect("the mint used the newest token, not the older one of the later check");
    drop(held);
}

/// The Apps proxy may forward the email in another case than the workspace's user name: the
/// same user (compared without regard to case, as SCIM user names are), logged in as the
/// workspace's spelling, sharing one pool. Another identity is still refused.
#[tokio::test]
async fn an_email_in_another_case_is_the_same_user_and_another_identity_is_refused() {
    let (lakebase, builder) = apps_stack().await;
    let tokens = lakebase.add_users(&[ALICE]).await.unwrap();
    let users = trusted(builder).build().unwrap();
    for email in ["Alice@Example.COM", ALICE, "ALICE@EXAMPLE.COM"] {
        let conn = users
            .for_user(&ForwardedUser::new(email, tokens[0].clone()))
            .await
            .unwrap();
        let role: String = conn
            .query_one("SELECT current_user", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(role, ALICE, "logged in as the workspace's spelling");
    }
    assert_eq!(users.stats().users, 1, "one user, one pool");
    for other in [BOB, "alice@example.com.evil.test", "alice@example.co"] {
        let err = users
            .for_user(&ForwardedUser::new(other, tokens[0].clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::UserUnauthorized {
                    problem: UserProblem::IdentityMismatch,
                    ..
                }
            ),
            "{other}: {err:?}"
        );
    }
}
