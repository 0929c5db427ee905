//! What the pool costs, measured against plain deadpool-postgres (static password) on the same
//! server in the same run.
//!
//! ```text
//! cargo bench --bench pool
//! ```
//!
//! Scenarios:
//! 1. checkout + `SELECT 1` throughput at concurrency 1, 8 and 32 (pool size 16 each);
//! 2. cold pool fill: 32 concurrent first checkouts, the token minted over HTTP with 50 ms
//!    of added latency, against plain deadpool's fill;
//! 3. rotation under load: max lifetime 2 s and tokens re-minted every ~2 s, against the same
//!    load without rotation;
//! 4. cold start: time from suspending the emulated compute to the first successful query,
//!    against the configured wake delay.
//!
//! With `POOL_BENCH_FIXED=ours|plain|plain-wait` (or `ours-noop-meter` with the feature;
//! optionally `POOL_BENCH_QUERIES`, default 2000, and `POOL_BENCH_WORKERS`, default 8) it
//! instead runs exactly that many checkouts + `SELECT 1` from that many workers on one pool
//! of 16 and exits,
//! for counting instructions under `valgrind --tool=callgrind`; see BENCHMARKS.md.
//!
//! With `--features opentelemetry`, an OpenTelemetry SDK meter provider (aggregating into an
//! in-memory exporter) is installed as the global one before any pool is built, so every
//! checkout records its wait and use times into real SDK histograms: the feature's cost, in
//! ratios against the same plain deadpool as without it.
//!
//! Compared configurations alternate in short slices (rotating which goes first), ratios are
//! taken per round and the median reported, so machine noise hits both sides alike. Prints a
//! table per scenario and one JSON line per scenario.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::databricks::Workspace;
use lakebase_pool::{CachePolicy, Pool, Secret};
use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};

const STATIC_ROLE: &str = "bench_static";
const STATIC_PASSWORD: &str = "bench-static-password";
/// Rounds of the fill and cold-start scenarios.
const ROUNDS: usize = 5;
/// Throughput: interleaved slices per configuration and level; short slices, many of them,
/// because this machine's speed drifts by several percent within seconds.
const THROUGHPUT_ROUNDS: usize = 15;
const THROUGHPUT_SLICE: Duration = Duration::from_millis(400);

type Plain = deadpool_postgres::Pool;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "opentelemetry")]
    let _meters = {
        use opentelemetry_sdk::metrics::{
            InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
        };
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        eprintln!("OpenTelemetry on: the pools record into an SDK meter provider");
        provider
    };
    let pg = LocalPostgres::start()?;
    pg.create_role(STATIC_ROLE, &Secret::new(STATIC_PASSWORD))
        .await?;
    if let Ok(side) = std::env::var("POOL_BENCH_FIXED") {
        return fixed_count(&pg, &side).await;
    }
    throughput(&pg).await?;
    cold_fill(&pg).await?;
    rotation_under_load(&pg).await?;
    cold_start().await?;
    Ok(())
}

fn plain_pool(
    pg: &LocalPostgres,
    max_size: usize,
    wait_timeout: Option<Duration>,
) -> Result<Plain, Box<dyn std::error::Error>> {
    let mut config = tokio_postgres::Config::new();
    let _ = config
        .host(pg.host())
        .port(pg.port())
        .user(STATIC_ROLE)
        .dbname(STATIC_ROLE)
        .password(STATIC_PASSWORD);
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(wait_timeout)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?)
}

fn ours(pg: &LocalPostgres, max_size: usize) -> Result<Pool, lakebase_pool::Error> {
    ours_builder(pg, max_size).build()
}

fn ours_builder(pg: &LocalPostgres, max_size: usize) -> lakebase_pool::PoolBuilder {
    // A token with an expiry, so the cache does real freshness checks; lifecycle at defaults.
    let tokens = lakebase_pool::credentials::from_fn(|| async {
        Ok::<_, std::io::Error>(
            lakebase_pool::credentials::Credential::new(STATIC_PASSWORD)
                .expires_at(std::time::SystemTime::now() + Duration::from_secs(3600)),
        )
    });
    pg.pool_builder(STATIC_ROLE)
        .credentials(tokens)
        .max_size(max_size)
}

/// With the feature: our pool recording into OpenTelemetry's no-op meter, the baseline that
/// isolates what the SDK's recording costs.
#[cfg(feature = "opentelemetry")]
fn ours_with_noop_meter(pg: &LocalPostgres, max_size: usize) -> Result<Pool, lakebase_pool::Error> {
    use opentelemetry::metrics::MeterProvider as _;
    let meter = opentelemetry::metrics::NoopMeterProvider::new().meter("bench");
    ours_builder(pg, max_size).meter(meter).build()
}

/// Runs `workers` loops of checkout + `SELECT 1` for `slice`; returns the queries done and the
/// checkout latencies.
async fn load<F, Fut>(
    workers: usize,
    slice: Duration,
    checkout_and_query: F,
) -> (u64, Vec<Duration>, u64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Duration, String>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (f, done, failed, stop) = (
                checkout_and_query.clone(),
                done.clone(),
                failed.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut waits = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match f().await {
                        Ok(waited) => {
                            waits.push(waited);
                            let _ = done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            let _ = failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                waits
            })
        })
        .collect();
    tokio::time::sleep(slice).await;
    stop.store(true, Ordering::Relaxed);
    let mut waits = Vec::new();
    for task in tasks {
        waits.extend(task.await.unwrap_or_default());
    }
    (
        done.load(Ordering::Relaxed),
        waits,
        failed.load(Ordering::Relaxed),
    )
}

/// One benchmark operation, boxed so that both pools' closures have the same type.
type Query = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration, String>> + Send>>;

/// Times a checkout, then runs `SELECT 1` on the connection it returned.
async fn checkout_then_query<C, E: std::fmt::Display>(
    checkout: impl std::future::Future<Output = Result<C, E>>,
    client: fn(&C) -> &tokio_postgres::Client,
) -> Result<Duration, String> {
    let started = Instant::now();
    let conn = checkout.await.map_err(|e| e.to_string())?;
    let waited = started.elapsed();
    let _ = client(&conn)
        .simple_query("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    Ok(waited)
}

fn ours_client(conn: &lakebase_pool::Connection) -> &tokio_postgres::Client {
    conn
}

fn plain_client(conn: &deadpool_postgres::Object) -> &tokio_postgres::Client {
    conn
}

fn ours_query(pool: Pool) -> impl Fn() -> Query + Clone + Send + 'static {
    move || {
        let pool = pool.clone();
        Box::pin(async move { checkout_then_query(pool.get(), ours_client).await })
    }
}

fn plain_query(pool: Plain) -> impl Fn() -> Query + Clone + Send + 'static {
    move || {
        let pool = pool.clone();
        Box::pin(async move { checkout_then_query(pool.get(), plain_client).await })
    }
}

/// Exactly `POOL_BENCH_QUERIES` checkouts + `SELECT 1`, split over 8 workers, on one pool.
/// Run under callgrind twice with different counts: the difference divided by the difference
/// in queries is the client's instructions per query, free of set-up costs and of noise.
async fn fixed_count(pg: &LocalPostgres, side: &str) -> Result<(), Box<dyn std::error::Error>> {
    let number = |var: &str, default: u64| {
        std::env::var(var)
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let queries = number("POOL_BENCH_QUERIES", 2000);
    let workers = number("POOL_BENCH_WORKERS", 8);
    let query: Side = match side {
        "ours" => Arc::new(ours_query(ours(pg, 16)?)),
        "plain" => Arc::new(plain_query(plain_pool(pg, 16, None)?)),
        "plain-wait" => Arc::new(plain_query(plain_pool(
            pg,
            16,
            Some(Duration::from_secs(30)),
        )?)),
        #[cfg(feature = "opentelemetry")]
        "ours-noop-meter" => Arc::new(ours_query(ours_with_noop_meter(pg, 16)?)),
        other => {
            return Err(
                format!("POOL_BENCH_FIXED must be ours, plain or plain-wait (or ours-noop-meter), not {other}").into(),
            );
        }
    };
    let (started, cpu_before) = (Instant::now(), machine_cpu_seconds());
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let query = Arc::clone(&query);
            tokio::spawn(async move {
                for _ in 0..queries / workers {
                    query().await?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let done = (queries / workers * workers) as f64;
    let (wall, cpu) = (started.elapsed(), machine_cpu_seconds() - cpu_before);
    println!(
        "{side}: {done} queries, {:.0} q/s, {:.1} µs of machine CPU per query (client, server and kernel)",
        done / wall.as_secs_f64(),
        cpu * 1e6 / done
    );
    Ok(())
}

/// CPU time spent by the whole machine so far (all processes, user and kernel), from
/// `/proc/stat`; 0 where that does not exist.
fn machine_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let busy: f64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy / 100.0
}

/// One pool's benchmark operation, whichever pool it is.
type Side = Arc<dyn Fn() -> Query + Send + Sync>;

fn callable(side: &Side) -> impl Fn() -> Query + Clone + Send + 'static {
    let side = Arc::clone(side);
    move || side()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn p99(mut waits: Vec<Duration>) -> Duration {
    waits.sort_unstable();
    waits
        .get(waits.len() * 99 / 100)
        .copied()
        .unwrap_or_default()
}

async fn throughput(pg: &LocalPostgres) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "\n1. checkout + SELECT 1 throughput (pool size 16, {THROUGHPUT_ROUNDS} rounds of {THROUGHPUT_SLICE:?} slices)"
    );
    println!(
        "{:>11} {:>11} {:>13} {:>10} {:>12} {:>16}",
        "concurrency", "plain q/s", "plain+wait q/s", "ours q/s", "ours/plain", "ours/plain+wait"
    );
    for concurrency in [1usize, 8, 32] {
        // Plain deadpool as configured by default (a checkout may wait forever), and with
        // the same 30 s wait timeout as ours, which costs a timer for every checkout that
        // has to wait.
        let mut sides: Vec<Side> = vec![
            Arc::new(plain_query(plain_pool(pg, 16, None)?)),
            Arc::new(plain_query(plain_pool(
                pg,
                16,
                Some(Duration::from_secs(30)),
            )?)),
            Arc::new(ours_query(ours(pg, 16)?)),
        ];
        // With the feature, a fourth side: ours recording into a no-op meter.
        #[cfg(feature = "opentelemetry")]
        sides.push(Arc::new(ours_query(ours_with_noop_meter(pg, 16)?)));
        for side in &sides {
            let _ = load(concurrency, Duration::from_millis(300), callable(side)).await;
        }
        let n = sides.len();
        let mut rates = vec![Vec::new(); n];
        let (mut vs_plain, mut vs_wait, mut vs_noop) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..THROUGHPUT_ROUNDS {
            // Rotate which side goes first, so that drift within a round hits each alike.
            let mut done = vec![0_f64; n];
            for k in 0..n {
                let side = (round + k) % n;
                done[side] = load(concurrency, THROUGHPUT_SLICE, callable(&sides[side]))
                    .await
                    .0 as f64;
            }
            for (rate, count) in rates.iter_mut().zip(&done) {
                rate.push(count / THROUGHPUT_SLICE.as_secs_f64());
            }
            vs_plain.push(done[2] / done[0]);
            vs_wait.push(done[2] / done[1]);
            if n == 4 {
                vs_noop.push(done[2] / done[3]);
            }
        }
        let mut rates = rates.into_iter().map(median);
        let (plain, wait, ours) = (
            rates.next().unwrap_or_default(),
            rates.next().unwrap_or_default(),
            rates.next().unwrap_or_default(),
        );
        let (vs_plain, vs_wait) = (median(vs_plain), median(vs_wait));
        println!(
            "{concurrency:>11} {plain:>11.0} {wait:>13.0} {ours:>10.0} {vs_plain:>12.3} {vs_wait:>16.3}"
        );
        let noop = if vs_noop.is_empty() {
            String::new()
        } else {
            let vs_noop = median(vs_noop);
            println!(
                "{:>11} ours with the SDK / ours with a no-op meter: {vs_noop:.3}",
                ""
            );
            format!(",\"ratio_vs_noop_meter\":{vs_noop:.3}")
        };
        println!(
            "{{\"bench\":\"throughput\",\"concurrency\":{concurrency},\"plain_qps\":{plain:.0},\"plain_wait_qps\":{wait:.0},\"ours_qps\":{ours:.0},\"ratio\":{vs_plain:.3},\"ratio_vs_wait\":{vs_wait:.3}{noop}}}"
        );
    }
    Ok(())
}

async fn fill<P, G, Fut>(pool: P, get: G) -> Duration
where
    P: Clone + Send + 'static,
    G: Fn(P) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (pool, get, barrier) = (pool.clone(), get.clone(), barrier.clone());
            tokio::spawn(async move {
                let ok = get(pool).await;
                let _ = barrier.wait().await;
                ok
            })
        })
        .collect();
    for task in tasks {
        assert!(
            task.await.unwrap_or(false),
            "a checkout failed during the fill"
        );
    }
    started.elapsed()
}

async fn cold_fill(pg: &LocalPostgres) -> Result<(), Box<dyn std::error::Error>> {
    let role = "bench_token@example.com";
    pg.create_role(role, &Secret::new("replaced")).await?;
    let mock = MockWorkspace::start()?;
    mock.add_pat("dapi-bench", role);
    mock.add_endpoint("projects/b/branches/main/endpoints/ep-fill", pg.host());
    mock.apply_tokens_to(pg, role);
    mock.set_latency(Duration::from_millis(50));
    let workspace = Workspace::builder()
        .host(mock.url())
        .token("dapi-bench")
        .build()?;
    let endpoint = "projects/b/branches/main/endpoints/ep-fill".parse()?;

    println!(
        "\n2. cold pool fill: 32 concurrent first checkouts, mint with 50 ms added latency ({ROUNDS} rounds)"
    );
    let (mut plain_fills, mut our_fills, mut mint_trips, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let _ = workspace
            .generate_database_credential(
                &endpoint,
                &lakebase_pool::databricks::CredentialRequest::default(),
            )
            .await?;
        let mint_trip = started.elapsed();
        let plain = plain_pool(pg, 32, None)?;
        let plain_fill = fill(plain, |p: Plain| async move { p.get().await.is_ok() }).await;
        let minted_before = mock.minted().len();
        let pool = Pool::builder()
            .workspace(workspace.clone())
            .lakebase_endpoint("projects/b/branches/main/endpoints/ep-fill")
            // Host given, so that only the mint is a workspace round trip.
            .host(pg.host())
            .port(pg.port())
            .user(role)
            .dbname(STATIC_ROLE)
            .max_size(32)
            .build()?;
        let our_fill = fill(pool, |p: Pool| async move { p.get().await.is_ok() }).await;
        assert_eq!(
            mock.minted().len() - minted_before,
            1,
            "one mint for 32 connections"
        );
        plain_fills.push(plain_fill.as_secs_f64() * 1e3);
        our_fills.push(our_fill.as_secs_f64() * 1e3);
        mint_trips.push(mint_trip.as_secs_f64() * 1e3);
        ratios.push((our_fill.saturating_sub(mint_trip)).as_secs_f64() / plain_fill.as_secs_f64());
    }
    let ratio = median(ratios);
    println!(
        "plain fill {:.1} ms, ours {:.1} ms, one mint round trip {:.1} ms, mints per fill 1",
        median(plain_fills.clone()),
        median(our_fills.clone()),
        median(mint_trips.clone())
    );
    println!("(ours - mint) / plain: {ratio:.3}");
    println!(
        "{{\"bench\":\"cold_fill\",\"plain_ms\":{:.1},\"ours_ms\":{:.1},\"mint_ms\":{:.1},\"mints\":1,\"ratio_less_mint\":{ratio:.3}}}",
        median(plain_fills),
        median(our_fills),
        median(mint_trips)
    );
    Ok(())
}

async fn rotation_under_load(pg: &LocalPostgres) -> Result<(), Box<dyn std::error::Error>> {
    let role = "bench_rotating";
    pg.create_role(role, &Secret::new("replaced")).await?;
    let tokens = pg.rotating_password(role, Duration::from_secs(6));
    let rotating = pg
        .pool_builder(role)
        .dbname(STATIC_ROLE)
        .credentials(tokens.clone())
        .cache_policy(
            CachePolicy::default()
                .min_remaining(Duration::from_secs(1))
                .refresh_ahead(Duration::from_secs(4)),
        )
        .max_lifetime(Duration::from_secs(2))
        .max_size(8)
        .build()?;
    let steady = ours(pg, 8)?;
    println!("\n3. rotation under load: 8 workers, 20 s each, alternating 2 s slices");
    let (mut rot_done, mut steady_done, mut rot_waits, mut steady_waits, mut failed) =
        (0, 0, Vec::new(), Vec::new(), 0);
    let retired_before = rotating.stats().retired_lifetime;
    for slice in 0..20 {
        let pool = if slice % 2 == 0 { &rotating } else { &steady };
        let (done, waits, fails) = load(8, Duration::from_secs(2), ours_query(pool.clone())).await;
        failed += fails;
        if slice % 2 == 0 {
            rot_done += done;
            rot_waits.extend(waits);
        } else {
            steady_done += done;
            steady_waits.extend(waits);
        }
    }
    let throughput_ratio = rot_done as f64 / steady_done as f64;
    let (rot_p99, steady_p99) = (p99(rot_waits), p99(steady_waits));
    let latency_ratio = rot_p99.as_secs_f64() / steady_p99.as_secs_f64().max(1e-9);
    let stats = rotating.stats();
    println!(
        "rotating {rot_done} queries, steady {steady_done}: throughput ratio {throughput_ratio:.3}; p99 checkout {rot_p99:?} vs {steady_p99:?}: ratio {latency_ratio:.2}; failed queries {failed}"
    );
    println!(
        "tokens minted {}, connections retired by lifetime {}, logins refused then retried {}",
        tokens.mint_count(),
        stats.retired_lifetime - retired_before,
        stats.auth_refreshes
    );
    println!(
        "{{\"bench\":\"rotation\",\"throughput_ratio\":{throughput_ratio:.3},\"p99_ratio\":{latency_ratio:.2},\"failed\":{failed},\"mints\":{},\"retired\":{}}}",
        tokens.mint_count(),
        stats.retired_lifetime - retired_before
    );
    Ok(())
}

async fn cold_start() -> Result<(), Box<dyn std::error::Error>> {
    let user = "bench_cold@example.com";
    let pg = LocalPostgres::start()?;
    pg.create_role(user, &Secret::new("unused")).await?;
    pg.create_database("databricks_postgres", user).await?;
    let mock = MockWorkspace::start()?;
    mock.add_pat("dapi-bench", user);
    let emulator = LakebaseEmulator::start(&pg, &mock)?;
    let endpoint = "projects/b/branches/main/endpoints/ep-cold";
    emulator.add_endpoint(endpoint);
    let wake = Duration::from_millis(500);
    emulator.set_wake_delay(wake);
    let pool = Pool::builder()
        .workspace(
            Workspace::builder()
                .host(mock.url())
                .token("dapi-bench")
                .build()?,
        )
        .lakebase_endpoint(endpoint)
        .port(emulator.port())
        .resolver(emulator.resolver())
        .root_certificates_pem(emulator.ca_cert_pem())
        .build()?;
    drop(pool.get().await?);
    println!(
        "\n4. cold start: suspend, then time to the first successful query (wake delay {wake:?})"
    );
    for refusals in [0u32, 2] {
        emulator.set_refusals_while_waking(refusals);
        let mut overheads = Vec::new();
        for _ in 0..ROUNDS {
            emulator.suspend(endpoint);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let started = Instant::now();
            let conn = pool.get().await?;
            let _ = conn.simple_query("SELECT 1").await?;
            overheads.push(started.elapsed().saturating_sub(wake).as_secs_f64() * 1e3);
        }
        let overhead = median(overheads);
        println!(
            "refusals while waking {refusals}: time beyond the wake delay {overhead:.0} ms (median)"
        );
        println!(
            "{{\"bench\":\"cold_start\",\"wake_ms\":{},\"refusals\":{refusals},\"overhead_ms\":{overhead:.0}}}",
            wake.as_millis()
        );
    }
    Ok(())
}
