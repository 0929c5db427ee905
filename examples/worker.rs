//! A job worker: each job is taken with `SELECT ... FOR UPDATE SKIP LOCKED` and finished in
//! the same transaction, so a job is done exactly once however often the database goes away.
//!
//! ```text
//! cargo run --example worker
//! ```
//!
//! With `LAKEBASE_ENDPOINT` (or `PGHOST`) set it uses that database; otherwise a local
//! Postgres behind the Lakebase emulator, whose compute it suspends halfway through to show
//! the workers carrying on. Idle workers sleep until a `NOTIFY jobs` (through a
//! [`Listener`](lakebase_pool::Listener)) or a one-second poll.
//!
//! Why nothing is lost or done twice: taking a job, recording its result and marking it done
//! happen in one transaction, run by [`Pool::retry_transaction`]. If the connection fails
//! before the commit, the transaction rolls back and the job is pending again, for this or
//! another worker. If it fails during the commit, the outcome is unknown and the worker does
//! not guess: either the job is done, or it is still pending and will be taken again.

use std::sync::Arc;
use std::time::Duration;

use lakebase_pool::{Environment, Error, ListenerEvent, Pool};
use lakebase_pool_testing::LocalLakebase;
use tokio::sync::Notify;

/// Creates the job and result tables if they are missing.
pub async fn migrate(pool: &Pool) -> Result<(), Error> {
    pool.retry_transaction(|tx| async move {
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS jobs (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 payload bigint NOT NULL,
                 done boolean NOT NULL DEFAULT false
             );
             CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (id) WHERE NOT done;
             CREATE TABLE IF NOT EXISTS job_results (
                 job_id bigint NOT NULL,
                 result bigint NOT NULL,
                 worker int NOT NULL
             );",
        )
        .await
    })
    .await
}

/// Adds `count` jobs in one transaction and wakes idle workers.
pub async fn enqueue(pool: &Pool, count: i64) -> Result<(), Error> {
    pool.retry_transaction(|tx| async move {
        tx.execute(
            "INSERT INTO jobs (payload) SELECT g FROM generate_series(1, $1::bigint) AS g",
            &[&count],
        )
        .await?;
        tx.execute("NOTIFY jobs", &[]).await?;
        Ok(())
    })
    .await
}

/// How a worker behaves.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Shown in logs and recorded with each result.
    pub id: i32,
    /// Simulated processing time per job, spent inside the job's transaction.
    pub job_time: Duration,
    /// Return when no job is pending (instead of waiting for more).
    pub until_empty: bool,
}

/// What a worker did.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    /// Jobs this worker committed.
    pub done: u64,
    /// Units of work that failed with a transient error even after `retry_transaction`'s own
    /// retries (the database was down longer than the retry deadline); the worker waited and
    /// went on.
    pub outages: u64,
    /// Commits whose outcome was unknown; the job was either done or taken again later.
    pub unknown_commits: u64,
}

/// Takes and finishes jobs until none is pending (`until_empty`) or forever, waiting on
/// `wake` (or a one-second poll) when idle.
///
/// # Errors
///
/// A non-transient error: a bug in the SQL, a permission problem, a broken configuration.
pub async fn run_worker(
    pool: &Pool,
    config: &WorkerConfig,
    wake: &Notify,
) -> Result<WorkerReport, Error> {
    let mut report = WorkerReport::default();
    loop {
        let (job_time, worker) = (config.job_time, config.id);
        let outcome = pool
            .retry_transaction(|tx| async move {
                let Some(job) = tx
                    .query_opt(
                        "SELECT id, payload FROM jobs WHERE NOT done
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                        &[],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                let (id, payload): (i64, i64) = (job.get(0), job.get(1));
                tokio::time::sleep(job_time).await; // the "work"
                tx.execute(
                    "INSERT INTO job_results (job_id, result, worker) VALUES ($1, $2, $3)",
                    &[&id, &(payload * 2), &worker],
                )
                .await?;
                tx.execute("UPDATE jobs SET done = true WHERE id = $1", &[&id])
                    .await?;
                Ok(Some(id))
            })
            .await;
        match outcome {
            Ok(Some(_)) => report.done += 1,
            Ok(None) if config.until_empty => return Ok(report),
            Ok(None) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            }
            Err(Error::CommitOutcomeUnknown { .. }) => report.unknown_commits += 1,
            Err(error) if error.is_transient() => {
                report.outages += 1;
                tracing::warn!(worker, error = %error, "database unavailable; waiting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), lakebase_pool::BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let env = Environment::from_process();
    // The database the environment names, or a local Lakebase (kept alive by `local`).
    let (builder, local) = LocalLakebase::unless_configured(&env).await?;
    let pool = builder.max_size(8).build()?;
    migrate(&pool).await?;

    // Idle workers wake on `NOTIFY jobs`; the listener reconnects by itself.
    let wake = Arc::new(Notify::new());
    let mut listener = pool.listener(["jobs"]).await?;
    let waker = tokio::spawn({
        let wake = Arc::clone(&wake);
        async move {
            while let Some(event) = listener.recv().await {
                match event {
                    // After a reconnect, notifications may have been missed: look anyway.
                    ListenerEvent::Notification(_) | ListenerEvent::Reconnected { .. } => {
                        wake.notify_waiters();
                    }
                    other => tracing::info!(?other, "listener"),
                }
            }
        }
    });

    const JOBS: i64 = 400;
    enqueue(&pool, JOBS).await?;
    println!("enqueued {JOBS} jobs; 4 workers start");
    let mut workers = tokio::task::JoinSet::new();
    for id in 1..=4 {
        let (pool, wake) = (pool.clone(), Arc::clone(&wake));
        let config = WorkerConfig {
            id,
            job_time: Duration::from_millis(5),
            until_empty: true,
        };
        workers.spawn(async move { run_worker(&pool, &config, &wake).await });
    }
    if let Some(local) = &local {
        tokio::time::sleep(Duration::from_millis(300)).await;
        println!("suspending the compute mid-run, as scale-to-zero would...");
        local.suspend();
    }
    let mut total = WorkerReport::default();
    while let Some(report) = workers.join_next().await {
        let report = report??;
        total.done += report.done;
        total.outages += report.outages;
        total.unknown_commits += report.unknown_commits;
    }
    let row = pool
        .get()
        .await?
        .query_one(
            "SELECT count(*), count(DISTINCT job_id) FROM job_results",
            &[],
        )
        .await?;
    let (results, distinct): (i64, i64) = (row.get(0), row.get(1));
    println!(
        "done: {} jobs committed by the workers, {results} results for {distinct} distinct jobs \
         ({} unknown commits, {} outages waited out)",
        total.done, total.unknown_commits, total.outages
    );
    waker.abort();
    pool.shutdown(Duration::from_secs(10)).await;
    Ok(())
}
