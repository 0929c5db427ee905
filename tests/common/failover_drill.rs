//! A failover drill: writers in `retry_transaction` while the local HA endpoint fails over,
//! and what each was told. Shared by the test that checks the outcome (`tests/it/ha.rs`) and
//! the benchmark that times the resume with and without stalled connect tries restarted (`benches/failover.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::{Error, Pool};
use lakebase_pool_testing::{Failover, HaEndpoint};

/// What one `retry_transaction` call told its writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Told {
    Committed,
    Unknown,
    Failed,
}

pub struct Write {
    pub key: String,
    pub told: Told,
    pub at: Instant,
    pub error: Option<String>,
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

/// What the writers were told through one failover, and how long after the new primary took
/// connections each committed again.
pub struct Drill {
    pub writes: Vec<Write>,
    pub failover: Failover,
    pub resumed: Vec<Duration>,
}

/// Four writers on `pool` for 0.7 s, a failover of `ha`, and 4 s more (past the proxy's 3 s
/// hold on the dead compute).
pub async fn drill(ha: &HaEndpoint, pool: &Pool) -> Drill {
    writes_table(pool).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = writers(pool, 4, &stop);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let failover = ha.fail_over().await.unwrap();
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
    Drill {
        writes,
        failover,
        resumed,
    }
}

/// How many rows each key has on the endpoint's primary now.
pub async fn rows_by_key(ha: &HaEndpoint) -> BTreeMap<String, i64> {
    let admin = ha.primary().admin_of("databricks_postgres").await.unwrap();
    let rows = admin
        .query("SELECT key, count(*) FROM ha_writes GROUP BY key", &[])
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}
