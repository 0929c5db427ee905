//! Postgres restarted under a concurrent write load: nothing hangs, only operations in flight
//! fail, the pool serves again within 2 s of the server accepting connections, and every
//! acknowledged insert survives.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::Pool;
use lakebase_pool::retry::{ErrorClass, classify_in_transaction};
use lakebase_pool_testing::StopMode;

use crate::support::{app_pool, cluster};

const WRITERS: i32 = 8;
/// Every operation returns within the checkout's own bounds (30 s retry deadline) plus slack.
const NO_HANG: Duration = Duration::from_secs(40);

/// What one writer saw.
#[derive(Default)]
struct Log {
    /// Inserts that returned success: (writer, seq).
    acked: Vec<(i32, i32)>,
    /// When each insert succeeded.
    successes: Vec<Instant>,
    /// When each failed, and whether the failure was transient.
    failures: Vec<(Instant, bool, String)>,
    hung: bool,
}

async fn insert(pool: &Pool, writer: i32, seq: i32) -> Result<(), (bool, String)> {
    let conn = pool
        .get()
        .await
        .map_err(|e| (e.is_transient(), format!("checkout: {e}")))?;
    conn.execute("INSERT INTO writes VALUES ($1, $2)", &[&writer, &seq])
        .await
        .map(|_| ())
        .map_err(|e| {
            let transient = classify_in_transaction(&e) == ErrorClass::Transient;
            (transient, format!("insert: {e}"))
        })
}

async fn writer(pool: Pool, id: i32, stop: Arc<AtomicBool>) -> Log {
    let mut log = Log::default();
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        match tokio::time::timeout(NO_HANG, insert(&pool, id, seq)).await {
            Err(_) => {
                log.hung = true;
                return log;
            }
            Ok(Ok(())) => {
                log.acked.push((id, seq));
                log.successes.push(Instant::now());
            }
            Ok(Err((transient, what))) => log.failures.push((Instant::now(), transient, what)),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    log
}

async fn restart_under_load(mode: StopMode) {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(WRITERS as usize).build().unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE writes (writer int, seq int)")
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=WRITERS)
        .map(|id| tokio::spawn(writer(pool.clone(), id, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let server = pg.clone();
    let stopped_at = Instant::now();
    let ready_at = tokio::task::spawn_blocking(move || {
        server.stop(mode)?;
        std::thread::sleep(Duration::from_millis(300));
        server.resume()?;
        // `resume` returns once the server accepts connections.
        Ok::<_, lakebase_pool_testing::HarnessError>(Instant::now())
    })
    .await
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let mut logs = Vec::new();
    for writer in writers {
        logs.push(writer.await.unwrap());
    }
    assert!(logs.iter().all(|log| !log.hung), "an operation hung");

    // Only the operations in flight at the restart fail, each with a transient error.
    let failures: Vec<_> = logs.iter().flat_map(|log| &log.failures).collect();
    assert!(
        failures.iter().all(|(_, transient, _)| *transient),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .all(|(at, _, _)| *at >= stopped_at && *at <= ready_at),
        "failures only while the server was down: {failures:?}"
    );
    assert!(
        failures.len() <= 2 * WRITERS as usize,
        "at most the operations in flight (and a connection found broken) per writer: {failures:?}"
    );

    // Every writer is served again within 2 s of the server accepting connections.
    let recovered: Vec<Duration> = logs
        .iter()
        .map(|log| {
            let back = log.successes.iter().find(|at| **at > ready_at);
            *back.expect("the writer succeeded after the restart") - ready_at
        })
        .collect();
    println!("{mode:?} restart: writers served again after {recovered:?}");
    assert!(
        recovered
            .iter()
            .all(|after| *after <= Duration::from_secs(2)),
        "first successes after the server was ready: {recovered:?}"
    );

    // Every acknowledged insert is there.
    let acked: BTreeSet<(i32, i32)> = logs.iter().flat_map(|log| log.acked.clone()).collect();
    let rows = pool
        .get()
        .await
        .unwrap()
        .query("SELECT writer, seq FROM writes", &[])
        .await
        .unwrap();
    let stored: BTreeSet<(i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged inserts lost: {lost:?}");
    assert!(acked.len() > 100, "the load ran: {} inserts", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_restart_under_write_load_loses_no_acknowledged_insert() {
    restart_under_load(StopMode::Fast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_restart_under_write_load_loses_no_acknowledged_insert() {
    restart_under_load(StopMode::Immediate).await;
}
