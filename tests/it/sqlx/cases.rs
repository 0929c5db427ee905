// One set of cases for every sqlx version: `adapter`, `sqlx`, `PgPool` and `PgPoolOptions`
// are the version's own (see mod.rs).

use std::collections::BTreeSet;
use std::time::Duration;

use lakebase_pool::{CachePolicy, Pool};
use lakebase_pool_testing::LocalLakebase;

/// `SELECT pg_backend_pid()` on `pg`, by sqlx's own executor: the server session that ran it.
async fn backend(pg: &PgPool) -> Result<i32, sqlx::Error> {
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()").fetch_one(pg).await?;
    Ok(pid)
}

/// `tasks` tasks each asking `rounds` times, with `retry` or without; the errors as text,
/// and the server sessions that answered.
async fn load(
    pool: &Pool,
    pg: &PgPool,
    tasks: usize,
    rounds: usize,
    with_retry: bool,
) -> (Vec<String>, BTreeSet<i32>) {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (pool, pg) = (pool.clone(), pg.clone());
        handles.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut backends = BTreeSet::new();
            for _ in 0..rounds {
                let answer = if with_retry {
                    adapter::retry(&pool, &pg, backend).await
                } else {
                    backend(&pg).await
                };
                match answer {
                    Ok(pid) => drop(backends.insert(pid)),
                    Err(error) => errors.push(error.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (errors, backends)
        }));
    }
    let mut errors = Vec::new();
    let mut backends = BTreeSet::new();
    for handle in handles {
        let (e, b) = handle.await.unwrap();
        errors.extend(e);
        backends.extend(b);
    }
    (errors, backends)
}

fn options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(20))
}

/// Tokens that live 1.5 s and sessions that live at most 300 ms, through about 3 s of load
/// on sqlx's own executor (no retry): every new session logs in with the token the adapter
/// pushed (the emulator refuses an expired one, which would be an error here), sessions are
/// replaced past their lifetime, and no query fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotation_under_load_fails_no_query() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = crate::support::fast_rotation(&lakebase).build().unwrap();
    let pg = adapter::pg_pool(&pool, options(4)).await.unwrap();
    let (errors, backends) = load(&pool, &pg, 6, 400, false).await;
    assert!(errors.is_empty(), "{errors:?}");
    let minted = lakebase.workspace().minted().len();
    assert!(minted >= 3, "tokens rotated: {minted} minted");
    assert!(
        backends.len() >= 6,
        "sessions replaced past their lifetime: {} server sessions",
        backends.len()
    );
    assert_eq!(pool.token_cache().stats().forced_refreshes, 0, "no login used a stale token");
    pg.close().await;
}

/// The compute suspended (its sessions killed, as scale-to-zero does) and slow to wake,
/// refusing the first logins with the proxy's wake-up errors: a burst through `retry` from
/// 8 tasks all succeed. Without `retry`, sqlx's own executor surfaces the proxy's text (the
/// documented limit: sqlx retries only 53300 and 57P03).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_against_a_suspended_compute_surfaces_no_error_through_retry() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    // `test_before_acquire` (sqlx's default) pings an idle session first, and replaces it if
    // it is dead: so the errors seen are the logins', as after a suspend.
    let pg = adapter::pg_pool(&pool, options(4)).await.unwrap();
    let (errors, _) = load(&pool, &pg, 4, 3, false).await;
    assert!(errors.is_empty(), "warm-up: {errors:?}");

    lakebase.emulator().set_wake_delay(Duration::from_millis(300));
    lakebase.emulator().set_refusals_while_waking(2);
    lakebase.suspend();
    let error = backend(&pg).await.unwrap_err().to_string();
    assert!(
        error.contains("Couldn't connect to compute node") || error.contains("endpoint is idle"),
        "without retry, the proxy's wake-up text: {error}"
    );
    lakebase.suspend();
    let (errors, backends) = load(&pool, &pg, 8, 4, true).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!backends.is_empty());
    assert!(
        pool.stats().connect_retries_transient >= 1,
        "the wake-up refusals were retried: {:?}",
        pool.stats()
    );
    pg.close().await;
}

/// The pool's token revoked behind its back: sqlx's next login is refused with the proxy's
/// text, `retry` mints exactly one fresh token, and the query succeeds; sessions logging in
/// afterwards use the fresh token too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_by_one_forced_refresh() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    drop(pool.get().await.unwrap());
    assert_eq!(lakebase.workspace().minted().len(), 1);

    lakebase.workspace().revoke_minted();
    let pg = adapter::pg_pool(&pool, options(4)).await.unwrap();
    let (errors, _) = load(&pool, &pg, 4, 3, true).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(lakebase.workspace().minted().len(), 2, "exactly one more");
    // Each unit of work refused at login retried once (counted each); the token was
    // replaced once for all of them.
    let stats = pool.stats();
    assert_eq!(stats.tokens.forced_refreshes, 1, "{stats:?}");
    assert!((1..=4).contains(&stats.auth_refreshes), "{stats:?}");
    pg.close().await;
}

/// TLS is verified through the relay: with the emulator's certificate authority not
/// trusted, the login fails with a certificate error; there is no fall-back to an unverified
/// channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase_pool::PoolBuilder::from_environment(&lakebase.environment())
        .unwrap()
        .resolver(lakebase.emulator().resolver())
        .build()
        .unwrap();
    let pg = adapter::pg_pool(&pool, options(1)).await.unwrap();
    let text = format!("{:?}", backend(&pg).await.unwrap_err());
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert_eq!(lakebase.emulator().sessions(LocalLakebase::ENDPOINT), 0);
    pg.close().await;
}

/// Closing the pool closes the adapter's `PgPool` (noticed within half a second): a closed
/// pool's adapter opens no session, as the others do. The relay's directory is gone once
/// the `PgPool` is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_pool_closes_the_pg_pool() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    let pg = adapter::pg_pool(&pool, options(2)).await.unwrap();
    backend(&pg).await.unwrap();
    let dir = pg.connect_options().get_socket().cloned().expect("through the relay");
    assert!(dir.exists());
    pool.close();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !pg.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the PgPool closes with the pool");
    assert!(matches!(backend(&pg).await, Err(sqlx::Error::PoolClosed)));
    assert!(matches!(
        adapter::pg_pool(&pool, options(1)).await,
        Err(lakebase_pool::Error::PoolClosed)
    ));
    drop(pg);
    tokio::time::timeout(Duration::from_secs(5), async {
        while dir.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the relay's directory is removed");
}

/// Settings sqlx cannot honour are refused at once, naming the fix.
#[tokio::test]
async fn what_sqlx_cannot_do_the_pools_way_is_refused() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    let lakebase = LocalLakebase::start().await.unwrap();
    let per_connect = lakebase
        .pool_builder()
        .unwrap()
        .cache_policy(CachePolicy::per_connect())
        .build()
        .unwrap();
    let error = adapter::pg_pool(&per_connect, options(1)).await.unwrap_err();
    assert!(error.to_string().contains("per_connect"), "{error}");

    let verify_ca = lakebase
        .pool_builder()
        .unwrap()
        .ssl_mode(lakebase_pool::SslMode::VerifyCa)
        .build()
        .unwrap();
    let error = adapter::pg_pool(&verify_ca, options(1)).await.unwrap_err();
    assert!(error.to_string().contains("verify-full"), "{error}");
}
