//! The driver adapters against the same drivers' own pools, on one local PostgreSQL with a
//! fixed password, in the same run:
//!
//! ```text
//! cargo bench --bench drivers
//! ```
//!
//! Checkout + `SELECT 1` by 1, 8 and 32 workers on pools of 16: bb8 through
//! `LakebaseConnectionManager` against bb8 with a plain `tokio_postgres` manager, and
//! diesel-async's deadpool pool from `deadpool(&pool, ..)` against the same pool over
//! `AsyncDieselConnectionManager::new(url)`. Both sides of a pair validate on checkout the
//! same way (bb8's `test_on_check_out`, diesel-async's `Verified` recycling); and sqlx's
//! `PgPool` from `sqlx_0_8::pg_pool(&pool, ..)` against `PgPoolOptions::connect_lazy_with`
//! (both pinging on acquire, sqlx's default). The sides
//! alternate in short slices; the table gives the median of the per-round ratios
//! (adapter / plain: above 1 is faster).
//!
//! For instruction counts:
//! `DRIVERS_BENCH_FIXED=bb8-adapter|bb8-plain|diesel-adapter|diesel-plain|sqlx-adapter|sqlx-plain`
//! runs `DRIVERS_BENCH_QUERIES` checkouts + `SELECT 1` (default 1,024) by
//! `DRIVERS_BENCH_WORKERS` workers (default 8) on that one pool, then exits: run it under
//! callgrind with two query counts and divide the difference by the difference in queries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool as DieselPool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use lakebase_pool::drivers::bb8::LakebaseConnectionManager;
use lakebase_pool::drivers::diesel_async::deadpool;
use lakebase_pool::{Pool, Secret};
use lakebase_pool_testing::LocalPostgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

const ROLE: &str = "bench";
const PASSWORD: &str = "bench-password";
const ROUNDS: usize = 7;
const SLICE: Duration = Duration::from_millis(600);
const SIZE: usize = 16;

/// bb8 over `tokio_postgres::connect`, as a user without this crate writes it.
struct PlainManager(tokio_postgres::Config);

impl bb8::ManageConnection for PlainManager {
    type Connection = tokio_postgres::Client;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.0.connect(tokio_postgres::NoTls).await?;
        drop(tokio::spawn(connection));
        Ok(client)
    }

    async fn is_valid(
        &self,
        conn: &mut tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        conn.simple_query("").await.map(drop)
    }

    fn has_broken(&self, conn: &mut tokio_postgres::Client) -> bool {
        conn.is_closed()
    }
}

/// One side of a pair: a pool that runs `SELECT 1` through a checkout.
#[derive(Clone)]
enum Side {
    Bb8Adapter(bb8::Pool<LakebaseConnectionManager>),
    Bb8Plain(bb8::Pool<PlainManager>),
    Diesel(DieselPool<AsyncPgConnection>),
    Sqlx(PgPool),
}

impl Side {
    async fn select_one(&self) {
        match self {
            Side::Bb8Adapter(pool) => {
                let conn = pool.get().await.expect("checkout");
                let _ = conn.query_one("SELECT 1", &[]).await.expect("query");
            }
            Side::Bb8Plain(pool) => {
                let conn = pool.get().await.expect("checkout");
                let _ = conn.query_one("SELECT 1", &[]).await.expect("query");
            }
            Side::Diesel(pool) => {
                let mut conn = pool.get().await.expect("checkout");
                let _: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
                    .get_result(&mut conn)
                    .await
                    .expect("query");
            }
            Side::Sqlx(pool) => {
                let mut conn = pool.acquire().await.expect("checkout");
                let _: (i32,) = sqlx::query_as("SELECT 1")
                    .fetch_one(&mut *conn)
                    .await
                    .expect("query");
            }
        }
    }
}

/// Checkouts + `SELECT 1` done by `workers` in `slice`.
async fn done_in(side: &Side, workers: usize, slice: Duration) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (side, done, stop) = (side.clone(), Arc::clone(&done), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    side.select_one().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(slice).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("worker");
    }
    done.load(Ordering::Relaxed)
}

/// Exactly `queries` checkouts + `SELECT 1`, shared by `workers`, after every connection is
/// opened (so that the count is the checkout path's, not the logins').
async fn fixed_count(side: &Side, queries: usize, workers: usize) {
    let warm: Vec<_> = (0..SIZE)
        .map(|_| {
            let side = side.clone();
            tokio::spawn(async move { side.select_one().await })
        })
        .collect();
    for task in warm {
        task.await.expect("warm-up");
    }
    let left = Arc::new(AtomicU64::new(queries as u64));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (side, left) = (side.clone(), Arc::clone(&left));
            tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    side.select_one().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("worker");
    }
}

/// The median over rounds of adapter / plain, the sides alternating.
async fn ratio(adapter: &Side, plain: &Side, workers: usize) -> f64 {
    // Warm both: every connection opened before the first slice counts.
    let _ = done_in(adapter, workers, Duration::from_millis(200)).await;
    let _ = done_in(plain, workers, Duration::from_millis(200)).await;
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let (a, p) = if round % 2 == 0 {
            let a = done_in(adapter, workers, SLICE).await;
            (a, done_in(plain, workers, SLICE).await)
        } else {
            let p = done_in(plain, workers, SLICE).await;
            (done_in(adapter, workers, SLICE).await, p)
        };
        ratios.push(a as f64 / p.max(1) as f64);
    }
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pg = LocalPostgres::start()?;
    pg.create_role(ROLE, &Secret::new(PASSWORD)).await?;
    let pool: Pool = pg
        .pool_builder(ROLE)
        .password(PASSWORD)
        .max_size(SIZE)
        .build()?;
    let (host, port) = (pg.host(), pg.port());
    let config: tokio_postgres::Config =
        format!("host={host} port={port} user={ROLE} password={PASSWORD} dbname={ROLE}").parse()?;
    let url = format!("postgres://{ROLE}:{PASSWORD}@{host}:{port}/{ROLE}");

    let bb8_adapter = Side::Bb8Adapter(
        LakebaseConnectionManager::pool_builder(&pool)
            .max_size(SIZE as u32)
            .build(LakebaseConnectionManager::new(&pool))
            .await?,
    );
    let bb8_plain = Side::Bb8Plain(
        bb8::Pool::builder()
            .max_size(SIZE as u32)
            .build(PlainManager(config))
            .await?,
    );
    let diesel_adapter = Side::Diesel(deadpool(&pool, |builder| builder.max_size(SIZE))?);
    let diesel_plain = Side::Diesel(
        DieselPool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url))
            .max_size(SIZE)
            .build()?,
    );
    let sqlx_adapter = Side::Sqlx(
        lakebase_pool::drivers::sqlx_0_8::pg_pool(
            &pool,
            PgPoolOptions::new().max_connections(SIZE as u32),
        )
        .await?,
    );
    let sqlx_plain = Side::Sqlx(
        PgPoolOptions::new()
            .max_connections(SIZE as u32)
            .connect_lazy_with(
                PgConnectOptions::new_without_pgpass()
                    .host(host)
                    .port(port)
                    .username(ROLE)
                    .password(PASSWORD)
                    .database(ROLE)
                    .ssl_mode(PgSslMode::Disable),
            ),
    );

    if let Ok(fixed) = std::env::var("DRIVERS_BENCH_FIXED") {
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let (queries, workers) = (
            number("DRIVERS_BENCH_QUERIES", 1024),
            number("DRIVERS_BENCH_WORKERS", 8),
        );
        let side = match fixed.as_str() {
            "bb8-adapter" => bb8_adapter,
            "bb8-plain" => bb8_plain,
            "diesel-adapter" => diesel_adapter,
            "diesel-plain" => diesel_plain,
            "sqlx-adapter" => sqlx_adapter,
            "sqlx-plain" => sqlx_plain,
            other => return Err(format!("unknown DRIVERS_BENCH_FIXED {other}").into()),
        };
        fixed_count(&side, queries, workers).await;
        return Ok(());
    }
    println!("| pair | 1 worker | 8 workers | 32 workers |");
    println!("|---|---|---|---|");
    for (name, adapter, plain) in [
        ("bb8: adapter / plain", &bb8_adapter, &bb8_plain),
        (
            "diesel-async: adapter / plain",
            &diesel_adapter,
            &diesel_plain,
        ),
        ("sqlx: adapter / plain", &sqlx_adapter, &sqlx_plain),
    ] {
        let mut row = format!("| {name} |");
        for workers in [1, 8, 32] {
            row.push_str(&format!(" {:.3} |", ratio(adapter, plain, workers).await));
        }
        println!("{row}");
    }
    Ok(())
}
