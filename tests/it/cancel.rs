//! Cancellation: a statement whose caller gave up stops on the server, and never delays the
//! next caller; per-call and per-pool statement limits; an explicit cancel.

use std::time::{Duration, Instant};

use lakebase_pool::{Error, Pool};
use lakebase_pool_testing::{LocalLakebase, LocalPostgres};

use crate::support::{ROLE, app_pool, cluster};

/// Sessions on `pg` running `pg_sleep`.
pub(crate) async fn sleeping(pg: &LocalPostgres) -> i64 {
    pg.admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' \
             AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits up to `within` for no session to run `pg_sleep`, panicking with `what` if one still
/// does; how long it took.
pub(crate) async fn sleep_ends_within(
    pg: &LocalPostgres,
    within: Duration,
    what: &str,
) -> Duration {
    let started = Instant::now();
    while sleeping(pg).await > 0 {
        assert!(
            started.elapsed() < within,
            "{what}: a pg_sleep still runs on the server {within:?} later"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Sessions of the app role that are not idle (running something, or stuck in a
/// transaction or a COPY).
pub(crate) async fn busy(pg: &LocalPostgres) -> i64 {
    pg.admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state <> 'idle'",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls `fut` exactly once, then drops it: a statement's request queued for the driver,
/// not yet written.
pub(crate) async fn poll_once_then_drop<F: std::future::Future>(fut: F) {
    let mut fut = Box::pin(fut);
    std::future::poll_fn(|cx| {
        let _ = fut.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
}

/// The measurement of the issue as a test: `max_size(1)`, a `SELECT pg_sleep(5)` dropped
/// after 300 ms, then a checkout and `SELECT 1`: served at once, and the server no longer
/// runs the sleep within a second.
async fn a_dropped_statement_stops_and_the_next_caller_is_served_at_once(
    pool: Pool,
    pg: &LocalPostgres,
) {
    let conn = pool.get().await.unwrap();
    let dropped = tokio::time::timeout(
        Duration::from_millis(300),
        conn.query("SELECT pg_sleep(5)", &[]),
    )
    .await;
    assert!(dropped.is_err(), "timed out");
    drop(conn);
    let started = Instant::now();
    let conn = pool.get().await.unwrap();
    let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
    let took = started.elapsed();
    assert_eq!(one, 1);
    assert!(
        took < Duration::from_millis(900),
        "the next caller waited {took:?}"
    );
    let ended = sleep_ends_within(pg, Duration::from_secs(1), "the abandoned statement").await;
    // For BENCHMARKS.md (`--nocapture`): from the drop to a served statement, and then to
    // the abandoned statement's end on the server.
    eprintln!("next checkout + SELECT 1 after the drop: {took:?}; the sleep ended {ended:?} later");
    drop(conn);
    let stats = pool.stats();
    assert_eq!(
        (
            stats.cancels_sent,
            stats.cancels_failed,
            stats.closed_abandoned
        ),
        (1, 0, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_dropped_statement_is_cancelled_in_plain_text() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    a_dropped_statement_stops_and_the_next_caller_is_served_at_once(pool, &pg).await;
}

/// The same through the Lakebase emulator: TLS with SNI, a resolver hook giving an address
/// the host name does not have, and the proxy's own backend keys, which it maps to the
/// compute's.
#[tokio::test]
async fn a_dropped_statement_is_cancelled_through_the_proxy_with_tls_and_sni() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .max_size(1)
        .build()
        .unwrap();
    a_dropped_statement_stops_and_the_next_caller_is_served_at_once(pool, lakebase.postgres())
        .await;
}

/// `Connection::timeout` bounds one statement: past the limit it is cancelled on the
/// server, and the error says which limit fired. The connection is then closed when
/// returned, not reused (a cancel forwarded by a proxy may land late, on whatever runs then).
#[tokio::test]
async fn a_per_call_limit_cancels_on_the_server_and_the_connection_is_not_reused() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    let conn = pool.get().await.unwrap();
    let first = crate::support::backend_pid(&conn).await;
    let started = Instant::now();
    let err = conn
        .timeout(
            Duration::from_millis(300),
            conn.query("SELECT pg_sleep(5)", &[]),
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(err, Error::StatementTimeout { limit, settled: true, .. } if limit == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(err.is_timeout());
    assert_eq!(sleeping(&pg).await, 0);
    drop(conn);
    let next = pool.get().await.unwrap();
    assert_ne!(
        crate::support::backend_pid(&next).await,
        first,
        "a new connection"
    );
    assert_eq!(pool.stats().cancels_sent, 1);
}

/// A `CancelHandle` cancels what a checked-out connection runs, from another task.
#[tokio::test]
async fn a_cancel_handle_cancels_from_another_task() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let conn = pool.get().await.unwrap();
    let handle = conn.cancel_handle();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        handle.cancel().await
    });
    let err = conn.query("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    canceller.await.unwrap().unwrap();
    assert_eq!(pool.stats().cancels_sent, 1);
    drop(conn);
    // A cancel was sent on it: closed on its return, not reused.
    assert_eq!((pool.stats().size, pool.stats().retired_broken), (0, 1));
}

/// The per-pool limit, enforced by the server (sent at login, through the proxy too): a
/// long statement fails with 57014 "statement timeout", told apart from a requested cancel,
/// and the session goes on.
#[tokio::test]
async fn the_pools_statement_timeout_ends_a_long_statement_on_the_server() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pg = cluster().await;
    let pools = [
        app_pool(&pg)
            .statement_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
        lakebase
            .pool_builder()
            .unwrap()
            .statement_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    ];
    for pool in pools {
        let conn = pool.get().await.unwrap();
        let started = Instant::now();
        let err = conn.query("SELECT pg_sleep(5)", &[]).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(lakebase_pool::retry::is_statement_timeout(&err), "{err:?}");
        let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
}

/// Whether the row is locked by another session (a `NOWAIT` lock attempt fails).
async fn row_locked(pool: &Pool) -> bool {
    let conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN").await.unwrap();
    let locked = conn
        .query("SELECT * FROM accounts WHERE id = 1 FOR UPDATE NOWAIT", &[])
        .await
        .is_err();
    conn.batch_execute("ROLLBACK").await.unwrap();
    locked
}

/// A dropped statement that holds a row lock, in autocommit, inside `retry_transaction`
/// and inside the caller's own transaction: the lock is free within a second, and the row
/// is not changed.
#[tokio::test]
async fn a_dropped_statement_holding_a_row_lock_frees_it_within_a_second() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
             INSERT INTO accounts VALUES (1, 100);",
        )
        .await
        .unwrap();
    let wait_free = |what: &'static str| {
        let pool = pool.clone();
        async move {
            let started = Instant::now();
            while row_locked(&pool).await {
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "{what}: still locked"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let give_up = Duration::from_millis(300);

    // Autocommit: one statement that locks the row, then sleeps.
    let conn = pool.get().await.unwrap();
    let locking = "WITH locked AS (SELECT id FROM accounts WHERE id = 1 FOR UPDATE) \
                   SELECT pg_sleep(5) FROM locked";
    assert!(
        tokio::time::timeout(give_up, conn.query(locking, &[]))
            .await
            .is_err()
    );
    drop(conn);
    wait_free("autocommit").await;

    // retry_transaction: an update, then a long statement; the caller gives up.
    let work = pool.retry_transaction(|tx| async move {
        let _ = tx
            .execute("UPDATE accounts SET balance = 0 WHERE id = 1", &[])
            .await?;
        let _ = tx.query("SELECT pg_sleep(5)", &[]).await?;
        Ok(())
    });
    assert!(tokio::time::timeout(give_up, work).await.is_err());
    wait_free("retry_transaction").await;

    // The caller's own transaction.
    let mut conn = pool.get().await.unwrap();
    let own = async {
        let tx = conn.transaction().await?;
        let _ = tx
            .execute("UPDATE accounts SET balance = 0 WHERE id = 1", &[])
            .await?;
        let _ = tx.query("SELECT pg_sleep(5)", &[]).await?;
        tx.commit().await
    };
    assert!(tokio::time::timeout(give_up, own).await.is_err());
    drop(conn);
    wait_free("transaction").await;

    let balance: i32 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT balance FROM accounts WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, 100, "no change was committed");
    assert_eq!(sleeping(&pg).await, 0);
}

/// A burst: 20 concurrent requests on a pool of 4, every other one timing out in the middle
/// of its statement. Afterwards the pool serves at once, no abandoned statement runs on the
/// server, and no statement that was not given up was cancelled (a cancel names a session,
/// so one meant for an earlier user of a connection could hit the next: connections with an
/// abandoned statement are never reused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_timeouts_leaves_nothing_running_and_cancels_no_one_else() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .max_size(4)
        .wait_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..20 {
        let pool = pool.clone();
        let _ = requests.spawn(async move {
            let conn = pool.get().await.unwrap();
            if i % 2 == 0 {
                // Times out mid-statement.
                let gave_up = tokio::time::timeout(
                    Duration::from_millis(100),
                    conn.query("SELECT pg_sleep(3)", &[]),
                )
                .await;
                assert!(gave_up.is_err());
                None
            } else {
                Some(conn.query("SELECT pg_sleep(0.2)", &[]).await.map(drop))
            }
        });
    }
    while let Some(result) = requests.join_next().await {
        if let Some(completed) = result.unwrap() {
            completed.expect("a statement nobody gave up on is never cancelled");
        }
    }
    let _ = sleep_ends_within(&pg, Duration::from_secs(2), "the abandoned statement").await;
    let started = Instant::now();
    let one: i32 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);
    assert!(started.elapsed() < Duration::from_millis(500));
    let stats = pool.stats();
    assert_eq!(stats.closed_abandoned, 10, "{stats:?}");
    assert_eq!(stats.cancels_sent, 10, "{stats:?}");
}

/// A cancel that cannot reach the server (the network swallows it): the connection is
/// closed, not reused, within the cancel's bound, and the next caller is not delayed.
#[tokio::test]
async fn a_cancel_the_network_swallows_still_closes_the_connection_and_delays_no_one() {
    use lakebase_pool_testing::{FaultProxy, NetworkFault};

    let pg = cluster().await;
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    let pool = app_pool(&pg)
        .host("127.0.0.1")
        .port(proxy.addr().port())
        .max_size(2)
        .build()
        .unwrap();
    assert_eq!(pool.warm_up(2).await.unwrap(), 2);
    let conn = pool.get().await.unwrap();
    // New connections (the cancel's) are swallowed from now on.
    proxy.set_fault(NetworkFault::Blackhole);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        conn.query("SELECT pg_sleep(2)", &[]),
    )
    .await;
    assert!(gave_up.is_err());
    drop(conn);
    let started = Instant::now();
    let one: i32 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the next caller was delayed"
    );
    // The cancel reaches only the proxy, which swallows it (to the client it looks sent);
    // the connection is closed all the same, not reused, within the cancel's bound.
    // (The cancel counts once delivered or timed out: waited for too.)
    let until = Instant::now() + Duration::from_secs(6);
    let settled = |stats: &lakebase_pool::Stats| {
        stats.size <= 1
            && stats.closed_abandoned > 0
            && stats.cancels_sent + stats.cancels_failed > 0
    };
    while !settled(&pool.stats()) {
        assert!(Instant::now() < until, "{:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = pool.stats();
    assert_eq!(
        stats.cancels_sent + stats.cancels_failed,
        1,
        "one cancel, bounded: {stats:?}"
    );
}

/// A connection dropped outside any runtime (moved to a plain thread) with a statement in
/// flight: no panic; the cancel that cannot be sent is counted as failed, and the session is
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_outside_a_runtime_with_a_statement_in_flight_does_not_panic() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    let conn = pool.get().await.unwrap();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        conn.query("SELECT pg_sleep(3)", &[]),
    )
    .await;
    assert!(gave_up.is_err());
    std::thread::spawn(move || drop(conn))
        .join()
        .expect("dropping outside a runtime does not panic");
    let stats = pool.stats();
    assert_eq!(
        (stats.cancels_failed, stats.closed_abandoned),
        (1, 1),
        "{stats:?}"
    );
    let one: i32 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);
}
