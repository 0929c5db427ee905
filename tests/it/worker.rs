//! The worker example under faults: 1,000 jobs while the compute is suspended twice and
//! Postgres is restarted once; afterwards every job is done exactly once.

use std::sync::Arc;
use std::time::Duration;

use lakebase_pool::Pool;
use lakebase_pool_testing::{LocalLakebase, StopMode};
use tokio::sync::Notify;

#[allow(dead_code)]
#[path = "../../examples/worker.rs"]
mod worker_example;

const JOBS: i64 = 1000;

async fn jobs_done(pool: &Pool) -> i64 {
    pool.retry_transaction(|tx| async move {
        Ok(tx
            .query_one("SELECT count(*) FROM jobs WHERE done", &[])
            .await?
            .get(0))
    })
    .await
    .expect("count the finished jobs")
}

/// Waits until at least `threshold` jobs are done; returns how many are.
async fn wait_for_progress(pool: &Pool, threshold: i64) -> i64 {
    loop {
        let done = jobs_done(pool).await;
        if done >= threshold {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_survive_two_suspends_and_a_restart_each_done_exactly_once() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .max_size(6)
        .build()
        .unwrap();
    worker_example::migrate(&pool).await.unwrap();
    worker_example::enqueue(&pool, JOBS).await.unwrap();

    let wake = Arc::new(Notify::new());
    let mut workers = tokio::task::JoinSet::new();
    for id in 1..=4 {
        let (pool, wake) = (pool.clone(), Arc::clone(&wake));
        let config = worker_example::WorkerConfig {
            id,
            job_time: Duration::from_millis(5),
            until_empty: true,
        };
        workers.spawn(async move { worker_example::run_worker(&pool, &config, &wake).await });
    }

    let faults = async {
        let done = wait_for_progress(&pool, 150).await;
        assert!(
            done < JOBS,
            "the first suspend hits a running batch ({done} done)"
        );
        lakebase.suspend();

        let done = wait_for_progress(&pool, 450).await;
        assert!(
            done < JOBS,
            "the restart hits a running batch ({done} done)"
        );
        let postgres = lakebase.postgres().clone();
        tokio::task::spawn_blocking(move || {
            postgres.stop(StopMode::Immediate)?;
            std::thread::sleep(Duration::from_millis(300));
            postgres.resume()
        })
        .await
        .unwrap()
        .unwrap();

        let done = wait_for_progress(&pool, 750).await;
        assert!(
            done < JOBS,
            "the second suspend hits a running batch ({done} done)"
        );
        lakebase.suspend();
    };
    let run = async {
        let mut reports = Vec::new();
        while let Some(report) = workers.join_next().await {
            reports.push(report.unwrap().expect("no worker fails"));
        }
        reports
    };
    let ((), reports) = tokio::time::timeout(Duration::from_secs(180), async {
        tokio::join!(faults, run)
    })
    .await
    .expect("the workers finish within 3 minutes");

    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one(
            "SELECT (SELECT count(*) FROM jobs WHERE NOT done),
                    count(*), count(DISTINCT job_id), coalesce(sum(result), 0)::bigint
             FROM job_results",
            &[],
        )
        .await
        .unwrap();
    let (pending, results, distinct, sum): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(pending, 0, "no job left behind");
    assert_eq!(results, JOBS, "one result per job");
    assert_eq!(distinct, JOBS, "no job done twice");
    assert_eq!(sum, JOBS * (JOBS + 1), "each result belongs to its job");

    let committed: u64 = reports.iter().map(|r| r.done).sum();
    let unknown: u64 = reports.iter().map(|r| r.unknown_commits).sum();
    assert!(
        committed <= JOBS as u64 && committed + unknown >= JOBS as u64,
        "{reports:?}"
    );
    let stats = pool.stats();
    assert!(
        stats.retired_broken > 0 && stats.connections_opened > 6,
        "the faults broke connections: {stats:?}"
    );
    drop(conn);
    pool.shutdown(Duration::from_secs(5)).await;
}
