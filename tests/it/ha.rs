//! An endpoint with high availability, failed over under load: through the local Lakebase's
//! HA endpoint (a primary, a synchronous secondary behind the read-only host, a failover
//! that stops the primary, promotes the secondary and routes the endpoint's host to it, and
//! a proxy that holds a connect to the dead compute for about 3 s).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::{Error, Pool};
use lakebase_pool_testing::LocalLakebase;

/// What one `retry_transaction` call told its writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    Committed,
    Unknown,
    Failed,
}

struct Write {
    key: String,
    told: Told,
    at: Instant,
    error: Option<String>,
}

async fn writes_table(pool: &Pool) {
    // No key constraint: a unit of work run twice would show as two rows.
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE ha_writes (key text NOT NULL)")
        .await
        .unwrap();
}

/// Runs `retry_transaction` writers until `stop`, each inserting a row with a key of its own
/// and recording what it was told.
fn writers(
    pool: &Pool,
    count: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Write>>> {
    (0..count)
        .map(|writer| {
            let (pool, stop) = (pool.clone(), Arc::clone(stop));
            tokio::spawn(async move {
                let mut writes = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let key = format!("w{writer}-{n}");
                    let row = key.clone();
                    let result = pool
                        .retry_transaction(move |tx| {
                            let row = row.clone();
                            async move {
                                tx.execute("INSERT INTO ha_writes VALUES ($1)", &[&row])
                                    .await?;
                                Ok(())
                            }
                        })
                        .await;
                    let (told, error) = match result {
                        Ok(()) => (Told::Committed, None),
                        Err(error @ Error::CommitOutcomeUnknown { .. }) => {
                            (Told::Unknown, Some(error.to_string()))
                        }
                        Err(error) => (Told::Failed, Some(error.to_string())),
                    };
                    writes.push(Write {
                        key,
                        told,
                        at: Instant::now(),
                        error,
                    });
                }
                writes
            })
        })
        .collect()
}

/// The scenario: writers in `retry_transaction`, the primary killed under them with
/// commits in flight, the secondary promoted, and the proxy holding the first reconnects on
/// the dead compute for about 3 s. Every write reported committed is on the new primary,
/// none is there twice, `CommitOutcomeUnknown` only for commits in flight (at most one per
/// writer, at the kill), no other error reaches a caller, and writes resume within 2 s of
/// the new primary taking connections (hedged connect tries overtake the held ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_come_through_a_failover_with_nothing_lost_or_doubled() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .max_size(8)
        .build()
        .unwrap();
    writes_table(&pool).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(&pool, 4, &stop);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let failover = ha.fail_over().await.unwrap();
    // Well past the proxy's 3 s hold on the dead compute.
    tokio::time::sleep_until((failover.routed_at + Duration::from_secs(4)).into()).await;
    stop.store(true, Ordering::SeqCst);
    let mut writes = Vec::new();
    let mut resumed = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        let first_after = mine
            .iter()
            .find(|w| w.told == Told::Committed && w.at > failover.routed_at)
            .map(|w| w.at - failover.routed_at)
            .expect("every writer wrote again after the failover");
        resumed.push(first_after);
        writes.extend(mine);
    }

    let failed: Vec<_> = writes.iter().filter(|w| w.told == Told::Failed).collect();
    assert!(
        failed.is_empty(),
        "errors reached callers: {:?}",
        failed.iter().map(|w| &w.error).collect::<Vec<_>>()
    );
    let unknown: Vec<_> = writes.iter().filter(|w| w.told == Told::Unknown).collect();
    assert!(
        unknown.len() <= 4,
        "one commit in flight per writer at most: {}",
        unknown.len()
    );
    for write in &unknown {
        assert!(
            write.at >= failover.stopped_at
                && write.at <= failover.routed_at + Duration::from_secs(12),
            "an unknown outcome away from the failover: {:?}",
            write.error
        );
    }

    let primary = ha.primary();
    let admin = primary.admin_of("databricks_postgres").await.unwrap();
    let rows = admin
        .query("SELECT key, count(*) FROM ha_writes GROUP BY key", &[])
        .await
        .unwrap();
    let counts: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "written twice: {doubled:?}");
    let committed: Vec<_> = writes
        .iter()
        .filter(|w| w.told == Told::Committed)
        .collect();
    let lost: Vec<_> = committed
        .iter()
        .filter(|w| !counts.contains_key(&w.key))
        .map(|w| &w.key)
        .collect();
    assert!(
        lost.is_empty(),
        "reported committed, not on the new primary: {lost:?}"
    );

    let slowest = resumed.iter().max().copied().unwrap_or_default();
    let stats = pool.stats();
    eprintln!(
        "failover: {} writes committed, {} unknown; failover took {:?}; writers resumed {:?} \
         after the new primary took connections (slowest {slowest:?}); hedged tries {}",
        committed.len(),
        unknown.len(),
        failover.routed_at - failover.stopped_at,
        resumed,
        stats.connect_hedges,
    );
    assert!(
        slowest < Duration::from_secs(2),
        "writes resumed {slowest:?} after the new primary took connections; {stats:?}"
    );
}
