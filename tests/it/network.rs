//! Network faults between the pool and the server, through `FaultProxy`: every one ends in a
//! classified error or a successful retry, never a hang.

use std::time::Duration;

use lakebase_pool::retry::{ErrorClass, classify_in_transaction};
use lakebase_pool::{Error, PoolBuilder, RetryPolicy};
use lakebase_pool_testing::{FaultProxy, LocalPostgres, NetworkFault};

use crate::support::{INITIAL_PASSWORD, ROLE, backend_pid, cluster};

/// Upper bound on any single operation in these tests: a hang fails the test, it does not
/// stall the suite.
const NO_HANG: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, operation: impl Future<Output = T>) -> T {
    tokio::time::timeout(NO_HANG, operation)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {NO_HANG:?}"))
}

fn through(proxy: &FaultProxy, pg: &LocalPostgres) -> PoolBuilder {
    pg.pool_builder(ROLE)
        .port(proxy.port())
        .password(INITIAL_PASSWORD)
}

async fn proxied_cluster() -> (LocalPostgres, FaultProxy) {
    let pg = cluster().await;
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    (pg, proxy)
}

#[tokio::test]
async fn a_server_that_accepts_but_never_answers_hits_the_connect_timeout() {
    let (pg, proxy) = proxied_cluster().await;
    proxy.set_fault(NetworkFault::Blackhole);
    let pool = through(&proxy, &pg)
        .retry(
            RetryPolicy::default()
                .connect_timeout(Duration::from_millis(300))
                .deadline(Duration::from_secs(1)),
        )
        .build()
        .unwrap();

    let started = std::time::Instant::now();
    let err = bounded("a checkout", pool.get()).await.unwrap_err();
    match &err {
        Error::ConnectRetriesExhausted {
            attempts, source, ..
        } => {
            assert!(*attempts >= 2, "{err:?}");
            // The last attempt may get less than the full 300 ms: no attempt outlives the
            // deadline.
            assert!(
                source.to_string().contains("connection attempt timed out"),
                "{source}"
            );
        }
        other => panic!("expected ConnectRetriesExhausted, got {other:?}"),
    }
    assert!(err.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(proxy.accepted() >= 2, "each attempt reached the proxy");
}

#[tokio::test]
async fn resets_during_the_handshake_are_retried_until_the_network_heals() {
    let (pg, proxy) = proxied_cluster().await;
    proxy.set_fault(NetworkFault::ResetHandshake);
    let pool = through(&proxy, &pg).build().unwrap();

    let checkout = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!checkout.is_finished(), "still retrying");
    proxy.set_fault(NetworkFault::Pass);
    bounded("the checkout", checkout)
        .await
        .unwrap()
        .expect("succeeds once the resets stop");
    let stats = pool.stats();
    assert!(stats.connect_retries_transient >= 1, "{stats:?}");
    assert_eq!(stats.connections_opened, 1);
}

#[tokio::test]
async fn a_reset_in_the_middle_of_a_query_is_a_transient_error_and_the_pool_recovers() {
    let (pg, proxy) = proxied_cluster().await;
    let pool = through(&proxy, &pg).max_size(2).build().unwrap();
    let conn = pool.get().await.unwrap();
    let first_pid = backend_pid(&conn).await;

    let query = conn.simple_query("SELECT pg_sleep(5)");
    let resetter = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.reset_connections();
    };
    let (result, ()) = bounded("the query", async { tokio::join!(query, resetter) }).await;
    let err = result.unwrap_err();
    assert_eq!(
        classify_in_transaction(&err),
        ErrorClass::Transient,
        "{err:?}"
    );
    drop(conn);

    let conn = bounded("the next checkout", pool.get()).await.unwrap();
    assert_ne!(
        backend_pid(&conn).await,
        first_pid,
        "the broken connection was replaced"
    );
    assert_eq!(pool.stats().retired_broken, 1);
}

#[tokio::test]
async fn retry_transaction_rides_out_a_reset_mid_transaction() {
    let (pg, proxy) = proxied_cluster().await;
    let pool = through(&proxy, &pg).build().unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();

    let runs = std::sync::atomic::AtomicU32::new(0);
    let (runs_ref, proxy_ref) = (&runs, &proxy);
    bounded(
        "the transaction",
        pool.retry_transaction(|tx| async move {
            tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
            if runs_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                proxy_ref.reset_connections();
            }
            tx.execute("INSERT INTO t VALUES (2)", &[]).await?;
            Ok(())
        }),
    )
    .await
    .unwrap();

    assert_eq!(runs.into_inner(), 2);
    let rows: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2, "only the second run committed");
}

#[tokio::test]
async fn latency_slows_the_pool_down_but_nothing_fails() {
    let (pg, proxy) = proxied_cluster().await;
    proxy.set_fault(NetworkFault::Latency(Duration::from_millis(40)));
    let pool = through(&proxy, &pg).build().unwrap();

    let conn = bounded("a checkout", pool.get()).await.unwrap();
    let started = std::time::Instant::now();
    let row = bounded("a query", conn.query_one("SELECT 41 + 1", &[]))
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert!(
        started.elapsed() >= Duration::from_millis(80),
        "the latency applies both ways: {:?}",
        started.elapsed()
    );

    // Latency longer than the connect timeout: the attempt times out, classified, bounded.
    proxy.set_fault(NetworkFault::Latency(Duration::from_millis(500)));
    let slow = through(&proxy, &pg)
        .retry(
            RetryPolicy::default()
                .connect_timeout(Duration::from_millis(300))
                .deadline(Duration::ZERO),
        )
        .build()
        .unwrap();
    let err = bounded("a slow checkout", slow.get()).await.unwrap_err();
    assert!(
        matches!(err, Error::ConnectRetriesExhausted { attempts: 1, .. }),
        "{err:?}"
    );
}
