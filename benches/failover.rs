//! How soon writers resume after a failover of the local HA endpoint, with stalled connect
//! tries restarted (the default) and without (`RetryPolicy::no_stalled_try_restart`), in the
//! same run:
//!
//! ```text
//! cargo bench --bench failover
//! ```
//!
//! Each round starts a local Lakebase with high availability, runs four writers in
//! `retry_transaction` (the drill of `tests/it/ha.rs`), fails the endpoint over (the primary
//! stopped as a crash, the synchronous secondary promoted, the host routed to it; the
//! emulator holds connects that looked up the dead compute for about 3 s, as the proxy does)
//! and records, per writer, the time from the new primary taking connections to its next
//! commit. The two configurations alternate; medians and the ratio of medians.

#[path = "../tests/common/failover_drill.rs"]
mod failover_drill;

use std::time::Duration;

use lakebase_pool::RetryPolicy;
use lakebase_pool_testing::LocalLakebase;

const ROUNDS: usize = 3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut restarted = Vec::new();
    let mut plain = Vec::new();
    for round in 0..ROUNDS {
        for restarting in [true, false] {
            let lakebase = LocalLakebase::start_ha().await?;
            let retry = if restarting {
                RetryPolicy::default()
            } else {
                RetryPolicy::default().no_stalled_try_restart()
            };
            let pool = lakebase.pool_builder()?.max_size(8).retry(retry).build()?;
            let drill = failover_drill::drill(lakebase.ha().expect("HA"), &pool).await;
            let slowest = drill.resumed.iter().max().copied().unwrap_or_default();
            let told = |what| drill.writes.iter().filter(|w| w.told == what).count();
            let rows = failover_drill::rows_by_key(lakebase.ha().expect("HA")).await;
            let lost = drill
                .writes
                .iter()
                .filter(|w| w.told == failover_drill::Told::Committed)
                .filter(|w| !rows.contains_key(&w.key))
                .count();
            assert_eq!(lost, 0, "writes reported committed are missing");
            println!(
                "round {round} restarting={restarting}: {} writes ({} rows, none lost): {} committed, {} unknown, {} failed{}",
                drill.writes.len(),
                rows.len(),
                told(failover_drill::Told::Committed),
                told(failover_drill::Told::Unknown),
                told(failover_drill::Told::Failed),
                drill
                    .writes
                    .iter()
                    .find_map(|w| w.error.as_deref())
                    .map(|e| format!(" (first error: {e})"))
                    .unwrap_or_default()
            );
            println!(
                "round {round} restarting={restarting}: failover took {:?}; writers resumed {:?} after it",
                drill.failover.routed_at - drill.failover.stopped_at,
                drill.resumed
            );
            if restarting {
                restarted.push(slowest);
            } else {
                plain.push(slowest);
            }
        }
    }
    let (restarted, plain) = (median(restarted), median(plain));
    println!(
        "slowest writer's resume, median of {ROUNDS}: restarting stalled tries {restarted:?}, without {plain:?}, ratio {:.2}",
        restarted.as_secs_f64() / plain.as_secs_f64()
    );
    Ok(())
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}
