//! Tokens rotate; every new physical connection logs in with the token current at that moment.

use std::sync::Arc;
use std::time::Duration;

use lakebase_pool::CachePolicy;
use tokio::sync::Barrier;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::support::{ROLE, backend_pid, cluster};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn after_rotation_new_connections_use_the_new_token_and_old_ones_keep_working() {
    let pg = cluster().await;
    let tokens = pg.rotating_password(ROLE, HOUR);
    let pool = pg
        .pool_builder(ROLE)
        .credentials(tokens.clone())
        .build()
        .unwrap();

    let before = pool.get().await.unwrap();
    let first_token = pool.token_cache().token().await.unwrap();
    assert_eq!(tokens.mint_count(), 1);

    // Rotate: the role's password is now a second token; the first no longer logs in.
    let second_token = pool
        .token_cache()
        .force_refresh(&first_token)
        .await
        .unwrap();
    assert_eq!(tokens.mint_count(), 2);
    assert_ne!(first_token.secret(), second_token.secret());
    let stale_login = tokio_postgres::Config::new()
        .host(pg.host())
        .port(pg.port())
        .user(ROLE)
        .password(first_token.secret().expose())
        .connect(NoTls)
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(stale_login.code(), Some(&SqlState::INVALID_PASSWORD));

    // The connection opened with the first token still works: Postgres checks only at login.
    let _ = backend_pid(&before).await;
    // A new physical connection (the first is still checked out) logs in with the second
    // token at the first attempt.
    let after = pool.get().await.unwrap();
    assert_ne!(backend_pid(&before).await, backend_pid(&after).await);
    let stats = pool.stats();
    assert_eq!(stats.connections_opened, 2);
    assert_eq!(
        stats.auth_refreshes, 0,
        "the new connection did not need a retry"
    );
    assert_eq!(tokens.mint_count(), 2);
}

#[tokio::test]
async fn thirty_two_concurrent_checkouts_on_an_empty_pool_mint_once() {
    let pg = cluster().await;
    let tokens = pg.rotating_password(ROLE, HOUR);
    let pool = pg
        .pool_builder(ROLE)
        .credentials(tokens.clone())
        .max_size(32)
        .build()
        .unwrap();

    // Every task holds its connection until all have one, so there are 32 physical connects.
    let all_connected = Arc::new(Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let pool = pool.clone();
            let all_connected = Arc::clone(&all_connected);
            tokio::spawn(async move {
                let conn = pool.get().await.unwrap();
                let pid = backend_pid(&conn).await;
                let _ = all_connected.wait().await;
                pid
            })
        })
        .collect();
    let mut pids = Vec::new();
    for task in tasks {
        pids.push(task.await.unwrap());
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 32, "32 distinct physical connections");
    assert_eq!(tokens.mint_count(), 1);
    assert_eq!(pool.stats().tokens.minted, 1);
    assert_eq!(pool.stats().connections_opened, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_through_token_rotations_and_reconnects_loses_no_query() {
    let pg = cluster().await;
    // Tokens live 6 s and are refreshed once less than 4 s is left (every ~2 s); connections
    // live under 400 ms, so the pool reconnects constantly with whatever token is current.
    let tokens = pg.rotating_password(ROLE, Duration::from_secs(6));
    let pool = pg
        .pool_builder(ROLE)
        .credentials(tokens.clone())
        .cache_policy(
            CachePolicy::default()
                .min_remaining(Duration::from_secs(1))
                .refresh_ahead(Duration::from_secs(4)),
        )
        .max_size(4)
        .max_lifetime(Duration::from_millis(400))
        .build()
        .unwrap();

    let run_for = Duration::from_secs(5);
    let started = tokio::time::Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut done = 0u32;
                while started.elapsed() < run_for {
                    let conn = pool.get().await.expect("checkout");
                    let _ = conn.simple_query("SELECT 1").await.expect("query");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut queries = 0;
    for worker in workers {
        queries += worker.await.unwrap();
    }
    let stats = pool.stats();
    assert!(queries > 100, "only {queries} queries ran");
    assert!(
        tokens.mint_count() >= 3,
        "tokens rotated {} times",
        tokens.mint_count()
    );
    assert!(stats.retired_lifetime >= 8, "{stats:?}");
    assert!(stats.connections_opened >= 10, "{stats:?}");
}
