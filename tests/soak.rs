//! A soak test with time compressed about a hundredfold: connections that live half a second
//! (45 minutes in production), tokens that live four seconds (an hour), under steady load
//! for 40 seconds, through the full Lakebase path (emulator checking every token at login).
//!
//! It must see zero failed queries, a task count that stays bounded and returns to where it
//! started, and no growth in live heap memory after warm-up. It is its own test binary so
//! that its allocation counter sees no other test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::CachePolicy;
use lakebase_pool_testing::LocalLakebase;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged and only counts sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let _ = LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) };
        let _ = LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            let _ = LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let _ = LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LOAD: Duration = Duration::from_secs(40);
const WARM_UP: Duration = Duration::from_secs(8);
const WORKERS: usize = 8;
const POOL_SIZE: usize = 6;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_soak_loses_no_query_and_leaks_neither_tasks_nor_memory() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let lakebase = LocalLakebase::start().await.unwrap();
    lakebase
        .workspace()
        .set_token_lifetime(Duration::from_secs(4));
    let tasks_before = metrics.num_alive_tasks();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .max_size(POOL_SIZE)
        .max_lifetime(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(1))
        .cache_policy(
            CachePolicy::default()
                .min_remaining(Duration::from_secs(1))
                .refresh_ahead(Duration::from_secs(2)),
        )
        .build()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (pool, stop, queries) = (pool.clone(), Arc::clone(&stop), Arc::clone(&queries));
        workers.spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let conn = pool.get().await?;
                    let row = conn.query_one("SELECT 1", &[]).await?;
                    Ok::<i32, Box<dyn std::error::Error + Send + Sync>>(row.get(0))
                }
                .await;
                match result {
                    Ok(1) => {
                        let _ = queries.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        });
    }

    let started = Instant::now();
    let mut task_samples = Vec::new();
    let mut memory_samples = Vec::new();
    while started.elapsed() < LOAD {
        tokio::time::sleep(Duration::from_secs(1)).await;
        task_samples.push(metrics.num_alive_tasks());
        if started.elapsed() >= WARM_UP {
            memory_samples.push(live_mib());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    while let Some(worker) = workers.join_next().await {
        failures.extend(worker.unwrap());
    }
    let stats = pool.stats();
    let report = pool.shutdown(Duration::from_secs(5)).await;
    drop(pool);

    let total = queries.load(Ordering::Relaxed);
    println!(
        "soak: {total} queries in {:?}, {} connections opened, {} tokens minted, \
         tasks {:?}..{:?}, live heap {:.1}..{:.1} MiB after warm-up",
        LOAD,
        stats.connections_opened,
        stats.tokens.minted,
        task_samples.iter().min(),
        task_samples.iter().max(),
        memory_samples.iter().copied().fold(f64::MAX, f64::min),
        memory_samples.iter().copied().fold(0.0, f64::max),
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total > 1000, "the load ran: {total} queries");
    assert!(
        stats.connections_opened > 100 && stats.retired_lifetime > 50,
        "connections were replaced throughout: {stats:?}"
    );
    assert!(
        stats.tokens.minted >= 8,
        "tokens were re-minted throughout: {stats:?}"
    );
    assert_eq!(report.forced, 0);

    // Bounded tasks: the load, the pool's connections and housekeeper, the few that a
    // replacement has in flight, and at most one short watcher per connection (returned
    // while its driver still had work queued: `cancel::watch_returned`, ended within the
    // driver's next poll).
    let bound = tasks_before + WORKERS + 2 * POOL_SIZE + 1 + 4;
    assert!(
        task_samples.iter().all(|n| *n <= bound),
        "task count exceeded {bound}: {task_samples:?}"
    );
    let mut tasks_after = metrics.num_alive_tasks();
    for _ in 0..100 {
        if tasks_after <= tasks_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        tasks_after = metrics.num_alive_tasks();
    }
    assert!(
        tasks_after <= tasks_before,
        "{tasks_after} tasks left, {tasks_before} before"
    );

    // No growth after warm-up: the second half's peak within 2 MiB of the first half's.
    let (first, second) = memory_samples.split_at(memory_samples.len() / 2);
    let peak = |samples: &[f64]| samples.iter().copied().fold(0.0, f64::max);
    assert!(
        peak(second) <= peak(first) + 2.0,
        "live heap grew: first half peak {:.2} MiB, second half peak {:.2} MiB ({memory_samples:?})",
        peak(first),
        peak(second)
    );
}
