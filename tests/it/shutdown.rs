//! `Pool::shutdown`: in-use connections finish, new checkouts fail, nothing is left running.

use std::time::Duration;

use lakebase_pool::Error;
use lakebase_pool_testing::LocalPostgres;
use tokio::runtime::Handle;

use crate::support::{app_pool, cluster, server_sessions};

/// Waits (bounded) until the runtime runs no more tasks than `expected`; returns the count.
async fn settle_tasks(expected: usize) -> usize {
    let metrics = Handle::current().metrics();
    for _ in 0..200 {
        if metrics.num_alive_tasks() <= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    metrics.num_alive_tasks()
}

/// Waits (bounded) until the server reports `expected` sessions for the app role.
async fn settle_sessions(pg: &LocalPostgres, expected: i64) -> i64 {
    for _ in 0..100 {
        if server_sessions(pg).await == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server_sessions(pg).await
}

#[tokio::test]
async fn shutdown_lets_checked_out_connections_finish_then_leaves_nothing_running() {
    let pg = cluster().await;
    let tasks_before = settle_tasks(0).await;
    let pool = app_pool(&pg).max_size(4).build().unwrap();
    let idle = pool.get().await.unwrap();
    let busy = pool.get().await.unwrap();
    drop(idle);
    assert_eq!(settle_sessions(&pg, 2).await, 2);

    // A request still running when the shutdown starts.
    let request = tokio::spawn(async move {
        let row = busy.query_one("SELECT 7 FROM pg_sleep(0.3)", &[]).await;
        row.map(|row| row.get::<_, i32>(0))
    });
    let shutdown = tokio::spawn({
        let pool = pool.clone();
        async move { pool.shutdown(Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = pool.get().await.unwrap_err();
    assert!(matches!(refused, Error::PoolClosed), "{refused:?}");

    assert_eq!(
        request
            .await
            .unwrap()
            .expect("the query in flight finishes"),
        7
    );
    let report = shutdown.await.unwrap();
    assert_eq!((report.in_use, report.forced), (1, 0), "{report:?}");
    assert!(report.waited >= Duration::from_millis(200), "{report:?}");
    assert!(pool.is_closed());
    assert_eq!(settle_sessions(&pg, 0).await, 0, "every session closed");
    assert_eq!(
        settle_tasks(tasks_before).await,
        tasks_before,
        "the housekeeper and every connection task have ended"
    );
}

#[tokio::test]
async fn shutdown_closes_connections_still_in_use_after_the_grace_period() {
    let pg = cluster().await;
    let tasks_before = settle_tasks(0).await;
    let pool = app_pool(&pg).build().unwrap();
    let held = pool.get().await.unwrap();

    let report = pool.shutdown(Duration::from_millis(200)).await;
    assert_eq!((report.in_use, report.forced), (1, 1), "{report:?}");
    assert!(report.waited >= Duration::from_millis(200), "{report:?}");

    let err = held.simple_query("SELECT 1").await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    drop(held);
    assert_eq!(settle_sessions(&pg, 0).await, 0);
    assert_eq!(settle_tasks(tasks_before).await, tasks_before);
}

#[tokio::test]
async fn dropping_the_last_pool_handle_ends_its_tasks() {
    let pg = cluster().await;
    let tasks_before = settle_tasks(0).await;
    let pool = app_pool(&pg).build().unwrap();
    drop(pool.get().await.unwrap());
    assert!(Handle::current().metrics().num_alive_tasks() > tasks_before);
    drop(pool);
    assert_eq!(settle_tasks(tasks_before).await, tasks_before);
    assert_eq!(settle_sessions(&pg, 0).await, 0);
}
