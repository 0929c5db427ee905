//! The token service misbehaving, seen through the pool: each fault has a defined outcome, a
//! clear error naming the cause, and recovery without rebuilding the pool.

use std::time::{Duration, Instant};

use lakebase_pool::databricks::Workspace;
use lakebase_pool::{CachePolicy, Error, Pool};
use lakebase_pool_testing::{Fault, LocalLakebase};

use crate::support::chain;

const CREDENTIALS: &str = "/api/2.0/postgres/credentials";

/// A pool on the local Lakebase whose workspace client gives up quickly.
fn pool(lakebase: &LocalLakebase, retry_budget: Duration, cache: CachePolicy) -> Pool {
    let workspace = Workspace::builder()
        .host(lakebase.workspace().url())
        .token(LocalLakebase::PAT)
        .request_timeout(Duration::from_millis(300))
        .retry_budget(retry_budget)
        .build()
        .unwrap();
    lakebase
        .pool_builder()
        .unwrap()
        .workspace(workspace)
        .cache_policy(cache)
        .build()
        .unwrap()
}

/// A checkout that must fail, and within 3 s: a failing token service is not waited on
/// for longer than its budget.
async fn failing_checkout(pool: &Pool) -> Error {
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    err
}

#[tokio::test]
async fn a_workspace_down_past_the_tokens_life_fails_clearly_then_recovers_by_itself() {
    let lakebase = LocalLakebase::start().await.unwrap();
    lakebase
        .workspace()
        .set_token_lifetime(Duration::from_secs(3));
    let pool = pool(
        &lakebase,
        Duration::from_millis(800),
        CachePolicy::default()
            .min_remaining(Duration::from_millis(500))
            .refresh_ahead(Duration::from_secs(1))
            .failure_backoff(Duration::from_millis(100), Duration::from_millis(200)),
    );
    let open = pool.get().await.unwrap();

    lakebase.workspace().inject(
        Fault::status(503, "<html><body>maintenance</body></html>")
            .times(100_000)
            .on(CREDENTIALS),
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;

    // A new connection needs a token; the only one has expired and none can be minted.
    let err = failing_checkout(&pool).await;
    assert!(matches!(err, Error::Credentials { .. }), "{err:?}");
    assert!(err.is_transient());
    let text = chain(&err);
    assert!(
        text.starts_with("no valid database token is available"),
        "{text}"
    );
    assert!(text.contains("HTTP 503"), "the cause is named: {text}");
    // A session opened earlier is not affected: Postgres checks tokens only at login.
    open.simple_query("SELECT 1").await.unwrap();

    lakebase.workspace().clear_faults();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = pool.get().await.expect("recovers without a new pool");
    second.simple_query("SELECT 1").await.unwrap();
    let tokens = pool.stats().tokens;
    assert!(
        tokens.mint_failures >= 1 && tokens.minted >= 2,
        "{tokens:?}"
    );
}

#[tokio::test]
async fn a_429_storm_is_waited_out_within_the_budget_and_a_longer_one_fails_transient() {
    let lakebase = LocalLakebase::start().await.unwrap();
    lakebase
        .workspace()
        .inject(Fault::rate_limited(1).times(2).on(CREDENTIALS));
    let patient = pool(&lakebase, Duration::from_secs(10), CachePolicy::default());
    let started = Instant::now();
    patient
        .get()
        .await
        .expect("the storm passes within the budget");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After was honoured"
    );
    assert_eq!(lakebase.workspace().count("POST", CREDENTIALS), 3);

    lakebase
        .workspace()
        .inject(Fault::rate_limited(1).times(100).on(CREDENTIALS));
    let hurried = pool(
        &lakebase,
        Duration::from_millis(1500),
        CachePolicy::default(),
    );
    let err = hurried.get().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(chain(&err).contains("HTTP 429"), "{}", chain(&err));
}

#[tokio::test]
async fn a_token_service_slower_than_the_timeout_fails_within_the_budget() {
    let lakebase = LocalLakebase::start().await.unwrap();
    lakebase
        .workspace()
        .inject(Fault::hang().times(100).on(CREDENTIALS));
    let pool = pool(&lakebase, Duration::from_secs(1), CachePolicy::default());
    let err = failing_checkout(&pool).await;
    assert!(err.is_transient());
    assert!(
        chain(&err).contains("no answer within 300"),
        "{}",
        chain(&err)
    );
}

#[tokio::test]
async fn garbage_from_the_token_service_fails_the_checkout_naming_the_cause() {
    let cases: Vec<(Fault, &str)> = vec![
        (
            Fault::status(200, "<!DOCTYPE html><html>login</html>"),
            "unexpected answer",
        ),
        (Fault::status(200, ""), "unexpected answer"),
        (Fault::truncated(), "the answer was cut off"),
        (
            Fault::status(200, "x".repeat(2 * 1024 * 1024)),
            "larger than the",
        ),
        (
            Fault::status(200, r#"{"token":"t","expire_time":"2001-01-01T00:00:00Z"}"#),
            "already past",
        ),
        (
            Fault::status(200, r#"{"token":"t","expire_time":"soon"}"#),
            "not an RFC 3339 timestamp",
        ),
    ];
    let lakebase = LocalLakebase::start().await.unwrap();
    for (fault, expected) in cases {
        // Persistent: a cut-off answer is a transport failure, which is retried.
        lakebase
            .workspace()
            .inject(fault.times(100).on(CREDENTIALS));
        let pool = pool(&lakebase, Duration::from_secs(1), CachePolicy::default());
        let err = pool
            .get()
            .await
            .expect_err(&format!("a checkout fails on `{expected}`"));
        let text = chain(&err);
        assert!(matches!(err, Error::Credentials { .. }), "{text}");
        assert!(text.contains(expected), "expected `{expected}` in: {text}");
        lakebase.workspace().clear_faults();
    }
}

/// An `expire_time` far in the future is taken at its word (the server is the authority on
/// its tokens); if Postgres rejects the token, the pool mints a new one once and goes on.
#[tokio::test]
async fn a_token_the_server_rejects_is_replaced_once_even_if_it_claimed_a_long_life() {
    let lakebase = LocalLakebase::start().await.unwrap();
    lakebase.workspace().inject(
        Fault::status(
            200,
            r#"{"token":"not-a-token-the-server-knows","expire_time":"2999-01-01T00:00:00Z"}"#,
        )
        .on(CREDENTIALS),
    );
    let pool = pool(&lakebase, Duration::from_secs(1), CachePolicy::default());
    let conn = pool.get().await.expect("the second token works");
    conn.simple_query("SELECT 1").await.unwrap();
    let stats = pool.stats();
    assert_eq!(
        (stats.tokens.minted, stats.auth_refreshes),
        (2, 1),
        "{stats:?}"
    );
}
