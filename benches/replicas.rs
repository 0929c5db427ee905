//! Read replicas, against a real primary and two streaming standbys on the same machine, in
//! the same run:
//!
//! ```text
//! cargo bench --bench replicas
//! ```
//!
//! 1. Read throughput (8 workers, checkout + a one-row `SELECT` by key) through `get_read`
//!    with 1 and with 2 replicas, against the same reads through `get` on the primary.
//! 2. Writers (4 workers, checkout + `INSERT`) while 4 readers read, with the replica up and
//!    with its standby stopped (reads then fall back to the primary): the writers' median
//!    latency, as a ratio.
//! 3. The cost of a read that falls back (the replica known to be down), against a plain
//!    checkout on the primary.
//!
//! Compared configurations alternate in short slices; medians of the per-round ratios.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::{Pool, Secret};
use lakebase_pool_testing::{LocalPostgres, StopMode};

const ROLE: &str = "bench";
const PASSWORD: &str = "bench-password";
const ROUNDS: usize = 7;
const SLICE: Duration = Duration::from_millis(800);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let primary = LocalPostgres::start()?;
    primary.create_role(ROLE, &Secret::new(PASSWORD)).await?;
    let setup = primary.pool_builder(ROLE).password(PASSWORD).build()?;
    setup
        .get()
        .await?
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;
             CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now());",
        )
        .await?;
    let standbys = [primary.start_standby()?, primary.start_standby()?];
    let replica = |pg: &LocalPostgres| format!("127.0.0.1:{}", pg.port());
    let plain = primary
        .pool_builder(ROLE)
        .password(PASSWORD)
        .max_size(8)
        .build()?;
    let one = primary
        .pool_builder(ROLE)
        .password(PASSWORD)
        .max_size(8)
        .read_replicas([replica(&standbys[0])])
        .build()?;
    let two = primary
        .pool_builder(ROLE)
        .password(PASSWORD)
        .max_size(8)
        .read_replicas([replica(&standbys[0]), replica(&standbys[1])])
        .build()?;
    read_throughput(&plain, &one, &two).await?;
    writers_with_a_replica_down(&primary, &standbys[0]).await?;
    fallback_cost(&primary, &standbys[1]).await?;
    Ok(())
}

/// Reads done by `workers` for `slice`: checkout (`get_read`, or `get` when `primary`) and a
/// one-row `SELECT`.
async fn reads(pool: &Pool, workers: usize, slice: Duration, primary: bool) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (pool, done, stop) = (pool.clone(), Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut key = worker as i32;
            while !stop.load(Ordering::Relaxed) {
                let conn = if primary {
                    pool.get().await
                } else {
                    pool.get_read().await
                };
                let conn = conn.expect("a connection");
                key = key % 1000 + 1;
                let _ = conn
                    .query_one("SELECT name FROM items WHERE id = $1", &[&key])
                    .await
                    .expect("a row");
                let _ = done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(slice).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    done.load(Ordering::Relaxed)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn read_throughput(
    plain: &Pool,
    one: &Pool,
    two: &Pool,
) -> Result<(), Box<dyn std::error::Error>> {
    // Warm every pool first (connections opened, statements cached).
    for pool in [plain, one, two] {
        let _ = reads(
            pool,
            8,
            Duration::from_millis(300),
            std::ptr::eq(pool, plain),
        )
        .await;
    }
    let (mut ratio_one, mut ratio_two, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut results = [0u64; 3];
        for step in 0..3 {
            let which = (round + step) % 3;
            let pool = [plain, one, two][which];
            results[which] = reads(pool, 8, SLICE, which == 0).await;
        }
        let per_second = |n: u64| n as f64 / SLICE.as_secs_f64();
        base.push(per_second(results[0]));
        ratio_one.push(results[1] as f64 / results[0] as f64);
        ratio_two.push(results[2] as f64 / results[0] as f64);
    }
    println!("read throughput, 8 workers, checkout + one-row SELECT, {ROUNDS} rounds");
    println!(
        "  primary only (get):          {:>8.0} reads/s (median)",
        median(base.clone())
    );
    println!(
        "  1 replica (get_read) / that: {:>8.3}",
        median(ratio_one.clone())
    );
    println!(
        "  2 replicas (get_read) / that:{:>8.3}",
        median(ratio_two.clone())
    );
    println!(
        "{{\"scenario\":\"read_throughput\",\"primary_reads_per_s\":{:.0},\"one_replica_ratio\":{:.3},\"two_replicas_ratio\":{:.3}}}\n",
        median(base),
        median(ratio_one),
        median(ratio_two)
    );
    Ok(())
}

/// A pool with `standby` as its replica, and a short connect deadline: the moment a stopped
/// standby is found down is not what is measured.
fn replica_pool(
    primary: &LocalPostgres,
    standby: &LocalPostgres,
) -> Result<Pool, lakebase_pool::Error> {
    primary
        .pool_builder(ROLE)
        .password(PASSWORD)
        .max_size(8)
        .read_replicas([format!("127.0.0.1:{}", standby.port())])
        .retry(lakebase_pool::RetryPolicy::default().deadline(Duration::from_secs(1)))
        .build()
}

/// Median latency of writes done by 4 writers while 4 readers read, for `slice`.
async fn writer_latency(pool: &Pool, slice: Duration) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (pool, stop) = (pool.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(conn) = pool.get_read().await {
                        let _ = conn.query_one("SELECT count(*) FROM items", &[]).await;
                    }
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (pool, stop) = (pool.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let conn = pool.get().await.expect("a writer's connection");
                    let _ = conn
                        .execute("INSERT INTO events DEFAULT VALUES", &[])
                        .await
                        .expect("an insert");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(slice).await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    let mut all = Vec::new();
    for writer in writers {
        all.extend(writer.await.unwrap_or_default());
    }
    all.sort();
    all.get(all.len() / 2).copied().unwrap_or_default()
}

async fn writers_with_a_replica_down(
    primary: &LocalPostgres,
    standby: &LocalPostgres,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = replica_pool(primary, standby)?;
    let _ = writer_latency(&pool, Duration::from_millis(500)).await;
    let mut ratios = Vec::new();
    let (mut up_all, mut down_all) = (Vec::new(), Vec::new());
    let mut running = true;
    for round in 0..ROUNDS {
        let mut samples = [Duration::ZERO; 2];
        for step in 0..2 {
            let down = (round + step) % 2 == 1;
            if down && running {
                standby.stop(StopMode::Fast)?;
                running = false;
                // The first read finds it down, within the (short) connect deadline.
                let _ = pool.get_read().await;
            } else if !down && !running {
                standby.resume()?;
                running = true;
                // Until a probe has found it again, reads still fall back.
                while !pool.stats().replicas[0].healthy {
                    let _ = pool.get_read().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            samples[usize::from(down)] = writer_latency(&pool, SLICE).await;
        }
        let [up, down] = samples;
        up_all.push(up.as_secs_f64() * 1e6);
        down_all.push(down.as_secs_f64() * 1e6);
        ratios.push(down.as_secs_f64() / up.as_secs_f64());
    }
    if !running {
        standby.resume()?;
    }
    println!(
        "writers (4) beside readers (4), median write latency, replica up vs its standby stopped"
    );
    println!("  replica up:       {:>8.0} µs", median(up_all.clone()));
    println!("  standby stopped:  {:>8.0} µs", median(down_all.clone()));
    println!("  stopped / up:     {:>8.3}", median(ratios.clone()));
    println!(
        "{{\"scenario\":\"writers_with_replica_down\",\"up_us\":{:.0},\"down_us\":{:.0},\"ratio\":{:.3}}}\n",
        median(up_all),
        median(down_all),
        median(ratios)
    );
    Ok(())
}

async fn fallback_cost(
    primary: &LocalPostgres,
    standby: &LocalPostgres,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = replica_pool(primary, standby)?;
    standby.stop(StopMode::Fast)?;
    // The first read finds it down (and waits out the connect retries); later ones skip it.
    let _ = pool.get_read().await?;
    let mut ratios = Vec::new();
    const N: u32 = 2000;
    for round in 0..ROUNDS {
        let timed = |fallback: bool| {
            let pool = pool.clone();
            async move {
                let started = Instant::now();
                for _ in 0..N {
                    let conn = if fallback {
                        pool.get_read().await
                    } else {
                        pool.get().await
                    };
                    drop(conn.expect("a connection"));
                }
                started.elapsed()
            }
        };
        let (get, read) = if round % 2 == 0 {
            let get = timed(false).await;
            (get, timed(true).await)
        } else {
            let read = timed(true).await;
            (timed(false).await, read)
        };
        ratios.push(read.as_secs_f64() / get.as_secs_f64());
    }
    println!("a read that falls back (replica down, skipped) against a plain checkout, {N} each");
    println!("  get_read / get:   {:>8.3}", median(ratios.clone()));
    println!(
        "{{\"scenario\":\"fallback_cost\",\"ratio\":{:.3}}}",
        median(ratios)
    );
    Ok(())
}
