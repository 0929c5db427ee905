//! The driver adapters (bb8, diesel-async) through the local Lakebase (emulator, mock
//! workspace, real PostgreSQL, TLS with SNI): a token rotation under load, a burst against a
//! suspended compute, and a revoked token, each as the crate's own pool survives them.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use lakebase_pool::Pool;
use lakebase_pool::drivers::bb8::LakebaseConnectionManager;
use lakebase_pool::drivers::diesel_async::deadpool;
use lakebase_pool_testing::LocalLakebase;

use crate::support::LogCapture;

/// One of the adapters' pools, asked for `SELECT 1` the driver's own way.
enum Sessions {
    Bb8(bb8::Pool<LakebaseConnectionManager>),
    Diesel(diesel_async::pooled_connection::deadpool::Pool<diesel_async::AsyncPgConnection>),
}

impl Sessions {
    async fn of(driver: &str, pool: &Pool, max_size: usize) -> Sessions {
        match driver {
            "bb8" => Sessions::Bb8(
                LakebaseConnectionManager::pool_builder(pool)
                    .max_size(max_size as u32)
                    .connection_timeout(Duration::from_secs(30))
                    .build(LakebaseConnectionManager::new(pool))
                    .await
                    .unwrap(),
            ),
            "diesel" => Sessions::Diesel(
                deadpool(pool, |builder| {
                    builder
                        .max_size(max_size)
                        .wait_timeout(Some(Duration::from_secs(30)))
                })
                .unwrap(),
            ),
            other => unreachable!("{other}"),
        }
    }

    async fn select_one(&self) -> Result<i32, String> {
        match self {
            Sessions::Bb8(pool) => {
                let conn = pool.get().await.map_err(|e| format!("{e:?}"))?;
                let row = conn
                    .query_one("SELECT 1", &[])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(row.get(0))
            }
            Sessions::Diesel(pool) => {
                let mut conn = pool.get().await.map_err(|e| format!("{e:?}"))?;
                diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
                    .get_result(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

const DRIVERS: [&str; 2] = ["bb8", "diesel"];

/// `tasks` tasks each running `SELECT 1` `rounds` times; every error, as text.
async fn load(sessions: &Arc<Sessions>, tasks: usize, rounds: usize) -> Vec<String> {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let sessions = Arc::clone(sessions);
        handles.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for _ in 0..rounds {
                match sessions.select_one().await {
                    Ok(1) => {}
                    Ok(other) => errors.push(format!("SELECT 1 gave {other}")),
                    Err(error) => errors.push(error),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for handle in handles {
        errors.extend(handle.await.unwrap());
    }
    errors
}

/// Tokens that live 1.5 s and sessions that live at most 300 ms: through about 3 s of load, every
/// new session logs in with a token fresh at that moment (the emulator refuses an expired
/// one, which would show as a forced refresh or an error), and no query fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotation_under_load_fails_no_query_and_needs_no_forced_refresh() {
    for driver in DRIVERS {
        let lakebase = LocalLakebase::start().await.unwrap();
        let pool = crate::support::fast_rotation(&lakebase).build().unwrap();
        let sessions = Arc::new(Sessions::of(driver, &pool, 4).await);
        let errors = load(&sessions, 6, 400).await;
        assert!(errors.is_empty(), "{driver}: {errors:?}");
        let stats = pool.stats();
        let minted = lakebase.workspace().minted().len();
        assert!(minted >= 3, "{driver}: tokens rotated, {minted} minted");
        assert!(
            stats.connections_opened >= 6,
            "{driver}: sessions replaced past their lifetime: {stats:?}"
        );
        assert_eq!(
            stats.auth_refreshes, 0,
            "{driver}: no login used a stale token"
        );
    }
}

/// The compute suspended (its sessions killed, as scale-to-zero does) and slow to wake,
/// refusing the first logins with the proxy's wake-up errors: a burst of queries from 8
/// tasks all succeed, through the connector's cold-start retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_against_a_suspended_compute_surfaces_no_error() {
    for driver in DRIVERS {
        let lakebase = LocalLakebase::start().await.unwrap();
        let pool = lakebase.pool_builder().unwrap().build().unwrap();
        let sessions = Arc::new(Sessions::of(driver, &pool, 4).await);
        assert!(load(&sessions, 4, 3).await.is_empty(), "{driver}: warm-up");

        lakebase
            .emulator()
            .set_wake_delay(Duration::from_millis(300));
        lakebase.emulator().set_refusals_while_waking(2);
        lakebase.suspend();
        let errors = load(&sessions, 8, 4).await;
        assert!(errors.is_empty(), "{driver}: {errors:?}");
        let stats = pool.stats();
        assert!(
            stats.connect_retries_transient >= 1,
            "{driver}: the wake-up refusals were retried: {stats:?}"
        );
    }
}

/// The pool's token revoked behind its back: the adapter's next login is refused with the
/// proxy's text, the connector mints exactly one fresh token, and the query succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_by_one_forced_refresh() {
    for driver in DRIVERS {
        let lakebase = LocalLakebase::start().await.unwrap();
        let pool = lakebase.pool_builder().unwrap().build().unwrap();
        drop(pool.get().await.unwrap());
        assert_eq!(lakebase.workspace().minted().len(), 1);

        lakebase.workspace().revoke_minted();
        let sessions = Sessions::of(driver, &pool, 1).await;
        assert_eq!(sessions.select_one().await, Ok(1), "{driver}");
        assert_eq!(
            lakebase.workspace().minted().len(),
            2,
            "{driver}: exactly one more"
        );
        assert_eq!(pool.stats().auth_refreshes, 1, "{driver}");
    }
}

/// A closed pool's adapters open no session. diesel-async's pool answers with the error;
/// bb8 answers `TimedOut` after its `connection_timeout` (its documented behaviour: it opens
/// connections in the background) and the adapter's error sink logs what failed.
#[tokio::test]
async fn adapters_of_a_closed_pool_open_no_session() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    let diesel = Sessions::of("diesel", &pool, 1).await;
    let (logs, _guard) = LogCapture::install();
    let bb8 = LakebaseConnectionManager::pool_builder(&pool)
        .connection_timeout(Duration::from_millis(500))
        .build(LakebaseConnectionManager::new(&pool))
        .await
        .unwrap();
    pool.close();
    let error = diesel.select_one().await.unwrap_err();
    assert!(error.contains("the pool is closed"), "diesel: {error}");
    let started = std::time::Instant::now();
    let error = bb8.get().await.unwrap_err();
    assert!(matches!(error, bb8::RunError::TimedOut), "bb8: {error:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = logs.text();
    assert!(
        text.contains("bb8 could not open or check a connection")
            && text.contains("the pool is closed"),
        "{text}"
    );
}

#[path = "../../examples/drivers.rs"]
mod drivers_example;

/// `cargo run --example drivers` as it runs with no configuration: a local Lakebase, a count
/// through bb8, diesel-async, sqlx and SeaORM, a suspend, and the count again.
#[test]
fn the_drivers_example_runs() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    drivers_example::main().expect("the example runs");
}
