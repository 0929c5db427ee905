//! Break attempts on `PoolSettings` (feature `serde`), the unwatched sessions of the
//! diesel-async adapter (and the watched ones of the crate's pool and bb8), `Lifetimes::outlived`
//! as the diesel and sqlx adapters use it, and `TokenCache::subscribe`.
//!
//! Each test says in its doc comment whether it guards a defect found here (FIXED) or a claim
//! that stood up (HELD). Every wait is bounded; servers are local and throwaway.

// The environment lock is held for a whole test, awaits included, on purpose.
#![allow(clippy::await_holding_lock)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use diesel_async::RunQueryDsl;
use lakebase_pool::credentials::{Credential, StaticPassword, from_fn};
use lakebase_pool::drivers::bb8::LakebaseConnectionManager;
use lakebase_pool::drivers::diesel_async::deadpool;
use lakebase_pool::{CachePolicy, PoolBuilder, PoolSettings, TokenCache};

use crate::support::{ROLE, app_pool, cluster};

const BOUND: Duration = Duration::from_secs(15);

fn from_toml(text: &str) -> Result<PoolSettings, config::ConfigError> {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    config::Config::builder()
        .add_source(config::File::from(file.path()))
        .build()?
        .try_deserialize()
}

/// The environment recipe of the README (no `try_parsing`).
fn from_env_vars(vars: &[(&str, &str)]) -> Result<PoolSettings, config::ConfigError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    config::Config::builder()
        .add_source(
            config::Environment::with_prefix("LAKEBASE_POOL")
                .prefix_separator("__")
                .separator("__")
                .source(Some(vars)),
        )
        .build()?
        .try_deserialize()
}

/// A builder that `build()` accepts without a server.
fn base() -> PoolBuilder {
    PoolBuilder::default()
        .host("127.0.0.1")
        .user("app")
        .password("pw")
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// HELD. A malformed value loaded with the `config` crate (a bad humantime unit, an
/// overflowing or negative duration, a number where a duration is expected, an unknown
/// `ssl_mode`, an out-of-range port, a word for the jitter, at the top level or in `[retry]`
/// / `[tokens]`) is an error that names the key.
#[test]
fn errors_of_malformed_values_name_the_setting() {
    let mut unnamed = Vec::new();
    for (text, key) in [
        ("max_lifetime = \"45 parsecs\"", "max_lifetime"),
        ("idle_timeout = \"600000000000y\"", "idle_timeout"),
        ("wait_timeout = \"-5s\"", "wait_timeout"),
        ("ssl_mode = \"sometimes\"", "ssl_mode"),
        ("[retry]\ndeadline = \"1 parsec\"", "deadline"),
        ("[tokens]\nrefresh_ahead = \"soon\"", "refresh_ahead"),
        ("max_lifetime = 30", "max_lifetime"),
        ("port = 70000", "port"),
        ("lifetime_jitter = \"lots\"", "lifetime_jitter"),
    ] {
        match from_toml(text) {
            Ok(settings) => unnamed.push(format!("{text:?} was accepted: {settings:?}")),
            Err(error) => {
                let error = error.to_string();
                if !error.contains(key) {
                    unnamed.push(format!("{text:?} -> {error:?}"));
                }
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "errors that do not name the setting:\n{}",
        unnamed.join("\n")
    );
}

/// FIXED. `read_replicas_of_branch = false` is accepted and silently ignored: applied on a
/// builder that reads the branch's replicas (set in code, or by an earlier layer), the pool
/// still reads them, though `settings` says "each setting given replaces the builder's".
/// (There is no setter to turn it off, so the data cannot either; it should at least not be
/// accepted as if it did.)
#[test]
fn read_replicas_of_branch_false_turns_it_off() {
    let settings: PoolSettings =
        serde_json::from_str(r#"{ "read_replicas_of_branch": false }"#).unwrap();
    let applied = PoolBuilder::default()
        .read_replicas_of_branch()
        .settings(settings);
    assert_eq!(
        format!("{applied:?}"),
        format!("{:?}", PoolBuilder::default()),
        "`read_replicas_of_branch = false` left the branch's replicas on"
    );
}

/// HELD. Zero, NaN, negative zero and out-of-range values: each either builds or is a
/// `build` error that names the setting (`backoff`/`failure_backoff` for their halves).
/// Nothing panics.
#[tokio::test(flavor = "current_thread")]
async fn zero_and_nan_values_build_or_name_the_setting() {
    let mut wrong = Vec::new();
    for (text, key) in [
        ("max_lifetime = \"0s\"", "max_lifetime"),
        ("idle_timeout = \"0s\"", "idle_timeout"),
        ("validate_after_idle = \"0s\"", ""),
        ("wait_timeout = \"0s\"", ""),
        ("statement_timeout = \"0s\"", ""),
        (
            "replica_catch_up_timeout = \"0s\"",
            "replica_catch_up_timeout",
        ),
        ("max_size = 0", "max_size"),
        ("replica_max_size = 0", "replica_max_size"),
        ("lifetime_jitter = nan", "lifetime_jitter"),
        ("lifetime_jitter = -0.0", ""),
        ("lifetime_jitter = 0.5000001", "lifetime_jitter"),
        ("lifetime_jitter = inf", "lifetime_jitter"),
        ("[retry]\nconnect_timeout = \"0s\"", "connect_timeout"),
        ("[retry]\ncommand_timeout = \"0s\"", "command_timeout"),
        ("[retry]\nbackoff_initial = \"0s\"", "backoff"),
        ("[retry]\nbackoff_max = \"1ms\"", "backoff"),
        ("[retry]\ndeadline = \"0s\"", ""),
        ("[tokens]\nmint_timeout = \"0s\"", "mint_timeout"),
        ("[tokens]\nrefresh_ahead = \"0s\"", "refresh_ahead"),
        ("[tokens]\nmin_remaining = \"0s\"", ""),
        (
            "[tokens]\nfailure_backoff_initial = \"0s\"",
            "failure_backoff",
        ),
    ] {
        let settings = match from_toml(text) {
            Ok(settings) => settings,
            Err(error) => {
                wrong.push(format!("{text:?} did not load: {error}"));
                continue;
            }
        };
        let built = std::panic::catch_unwind(|| base().settings(settings).build().map(drop));
        match built {
            Err(_) => wrong.push(format!("{text:?} panicked")),
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let error = crate::support::chain(&error);
                if key.is_empty() || !error.contains(key) {
                    wrong.push(format!("{text:?} -> {error}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// HELD. Every duration at the largest humantime takes ("100000000000y", about 3e18 s) and
/// the widest jitter: the pool builds, serves, takes its connection back, fails a checkout
/// it cannot serve only by the caller's own bound (no overflow in lifetimes, idle checks,
/// deadlines or `statement_timeout`, clamped to what the server takes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_durations_build_a_pool_that_works() {
    let pg = cluster().await;
    let huge = "\"100000000000y\"";
    let text = format!(
        "max_size = 1\nstatement_timeout = {huge}\nmax_lifetime = {huge}\nlifetime_jitter = 0.5\n\
         idle_timeout = {huge}\nvalidate_after_idle = {huge}\nwait_timeout = {huge}\n\
         replica_catch_up_timeout = {huge}\n\
         [retry]\nconnect_timeout = {huge}\ncommand_timeout = {huge}\nbackoff_initial = {huge}\n\
         backoff_max = {huge}\ndeadline = {huge}\n\
         [tokens]\nmin_remaining = {huge}\nrefresh_ahead = {huge}\nmint_timeout = {huge}\n\
         failure_backoff_initial = {huge}\nfailure_backoff_max = {huge}\n"
    );
    let settings = from_toml(&text).unwrap();
    let pool = app_pool(&pg).settings(settings).build().unwrap();
    for _ in 0..3 {
        let conn = tokio::time::timeout(BOUND, pool.get())
            .await
            .unwrap()
            .unwrap();
        let row = conn.query_one("SHOW statement_timeout", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "2147483647ms");
    }
    let held = pool.get().await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), pool.get()).await;
    assert!(
        waited.is_err(),
        "a second checkout of a pool of one was served"
    );
    drop(held);
    let conn = tokio::time::timeout(BOUND, pool.get())
        .await
        .unwrap()
        .unwrap();
    conn.query_one("SELECT 1", &[]).await.unwrap();
    drop(conn);
    pool.close();
}

/// FIXED. A `statement_timeout` under a millisecond ("500us", or `Duration::from_micros(500)`
/// with the setter) is sent as `statement_timeout=0`, which the server takes as *no limit*:
/// the tightest limit asked for becomes none, silently. Only `Duration::ZERO` is documented
/// to mean none; a non-zero limit should be at least 1 ms (or refused at `build`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_millisecond_statement_timeout_is_not_no_limit() {
    let pg = cluster().await;
    let settings = from_toml("statement_timeout = \"500us\"").unwrap();
    let pool = match app_pool(&pg).settings(settings).build() {
        Ok(pool) => pool,
        // Refused at build: fine.
        Err(_) => return,
    };
    let conn = tokio::time::timeout(BOUND, pool.get())
        .await
        .unwrap()
        .unwrap();
    let shown: String = conn
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    drop(conn);
    pool.close();
    assert_ne!(
        shown, "0",
        "statement_timeout 500us reached the server as no limit"
    );
}

/// HELD. The README's environment recipe (no `try_parsing`): numbers, floats and booleans
/// given as the strings the environment holds reach the builder as the setters would set
/// them.
#[test]
fn environment_strings_reach_the_builder_as_the_setters_would() {
    let settings = from_env_vars(&[
        ("LAKEBASE_POOL__PORT", "6543"),
        ("LAKEBASE_POOL__MAX_SIZE", "24"),
        ("LAKEBASE_POOL__LIFETIME_JITTER", "0.1"),
        ("LAKEBASE_POOL__DBNAME", "007"),
        ("LAKEBASE_POOL__SSL_MODE", "require"),
        ("LAKEBASE_POOL__READ_FALLBACK", "fail"),
        ("LAKEBASE_POOL__RETRY__CONNECT_TIMEOUT", "8s"),
        ("LAKEBASE_POOL__TOKENS__MINT_TIMEOUT", "20s"),
    ])
    .unwrap();
    let from_env = PoolBuilder::default().settings(settings);
    let by_hand = PoolBuilder::default()
        .port(6543)
        .max_size(24)
        .lifetime_jitter(0.1)
        .dbname("007")
        .ssl_mode(lakebase_pool::SslMode::Require)
        .read_fallback(lakebase_pool::ReadFallback::Fail)
        .retry(lakebase_pool::RetryPolicy::default().connect_timeout(Duration::from_secs(8)))
        .cache_policy(CachePolicy::default().mint_timeout(Duration::from_secs(20)));
    assert_eq!(format!("{from_env:?}"), format!("{by_hand:?}"));
}

/// HELD (limit). A list from the environment with the README's recipe (no
/// `list_separator`): `read_replicas` given as `a:5433,b:5434` is refused with an error that
/// names the key, not taken as one replica called `a:5433,b:5434`.
#[test]
fn a_replica_list_from_the_environment_is_not_one_replica() {
    match from_env_vars(&[("LAKEBASE_POOL__READ_REPLICAS", "a:5433,b:5434")]) {
        Err(error) => {
            let error = error.to_string();
            assert!(error.contains("read_replicas"), "{error}");
        }
        Ok(settings) => {
            let applied = format!("{:?}", PoolBuilder::default().settings(settings));
            let by_hand = format!(
                "{:?}",
                PoolBuilder::default().read_replicas(["a:5433", "b:5434"])
            );
            assert_eq!(applied, by_hand);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watched and unwatched sessions
// ---------------------------------------------------------------------------------------------

/// Statements of `ROLE` still running `pg_sleep` on the server.
async fn sleeping(pg: &lakebase_pool_testing::LocalPostgres) -> i64 {
    let admin = pg.admin().await.unwrap();
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active' \
             AND query LIKE '%pg_sleep(20)%'",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits (up to 3 s) for no `pg_sleep(20)` of the app to be running.
async fn until_no_sleeper(pg: &lakebase_pool_testing::LocalPostgres) -> i64 {
    let started = Instant::now();
    loop {
        let n = sleeping(pg).await;
        if n == 0 || started.elapsed() > Duration::from_secs(3) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HELD. The crate's own pool (plain text) still watches its sessions: a statement whose
/// future was dropped is cancelled on the server, and the next checkout is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_still_cancels_an_abandoned_statement() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    {
        let conn = pool.get().await.unwrap();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(300),
            conn.simple_query("SELECT pg_sleep(20)"),
        )
        .await;
        assert!(abandoned.is_err());
    }
    let started = Instant::now();
    let conn = tokio::time::timeout(BOUND, pool.get())
        .await
        .unwrap()
        .unwrap();
    conn.simple_query("SELECT 1").await.unwrap();
    let waited = started.elapsed();
    let left = until_no_sleeper(&pg).await;
    drop(conn);
    pool.close();
    assert!(
        left == 0 && waited < Duration::from_secs(2),
        "{left} abandoned statements still running; next checkout after {waited:?}"
    );
}

/// HELD. bb8's sessions (plain text) are still watched: a statement abandoned by a dropped
/// future is cancelled when the session comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_still_cancels_an_abandoned_statement() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let sessions = LakebaseConnectionManager::pool_builder(&pool)
        .max_size(1)
        .connection_timeout(BOUND)
        .build(LakebaseConnectionManager::new(&pool))
        .await
        .unwrap();
    {
        let conn = sessions.get().await.unwrap();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(300),
            conn.simple_query("SELECT pg_sleep(20)"),
        )
        .await;
        assert!(abandoned.is_err());
    }
    let left = until_no_sleeper(&pg).await;
    let conn = tokio::time::timeout(BOUND, sessions.get())
        .await
        .unwrap()
        .unwrap();
    conn.simple_query("SELECT 1").await.unwrap();
    drop(conn);
    drop(sessions);
    pool.close();
    assert_eq!(left, 0, "bb8 left the abandoned statement running");
}

/// HELD. diesel-async sessions, now opened unwatched (plain text here; the TLS path is run by
/// `drivers.rs`): a statement error, the server's statement timeout, LISTEN with a NOTIFY
/// arriving, a notice, and large results pass through, and the session stays good in and out
/// of the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_sessions_behave_through_errors_timeouts_listen_and_large_results() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .statement_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let diesel = deadpool(&pool, |b| {
        b.max_size(1).wait_timeout(Some(Duration::from_secs(10)))
    })
    .unwrap();
    let mut conn = tokio::time::timeout(BOUND, diesel.get())
        .await
        .unwrap()
        .unwrap();
    // A statement error, then the session still answers.
    let error = diesel::sql_query("SELECT 1/0").execute(&mut *conn).await;
    assert!(error.is_err());
    // The server's statement timeout, then the session still answers.
    let timed_out = diesel::sql_query("SELECT pg_sleep(2)")
        .execute(&mut *conn)
        .await;
    assert!(
        format!("{timed_out:?}").contains("statement timeout"),
        "{timed_out:?}"
    );
    // LISTEN, a NOTIFY to it, a notice: the session still answers.
    diesel::sql_query("LISTEN settings_break")
        .execute(&mut *conn)
        .await
        .unwrap();
    pg.admin()
        .await
        .unwrap()
        .batch_execute("NOTIFY settings_break, 'hello'")
        .await
        .unwrap();
    diesel::sql_query("DO $$ BEGIN RAISE NOTICE 'a notice'; END $$")
        .execute(&mut *conn)
        .await
        .unwrap();
    // A large result passes through the unwatched stream.
    let n: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM (SELECT repeat('x', 1000) FROM generate_series(1, 20000)) s)",
    ))
    .get_result(&mut *conn)
    .await
    .unwrap();
    assert_eq!(n, 20000);
    let rows: Vec<String> = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "repeat('y', 100000)",
    ))
    .load(&mut *conn)
    .await
    .unwrap();
    assert_eq!(rows[0].len(), 100000);
    drop(conn);
    // Back in the pool and out again: the same session, still good.
    let mut conn = tokio::time::timeout(BOUND, diesel.get())
        .await
        .unwrap()
        .unwrap();
    let one: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
        .get_result(&mut *conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    drop(conn);
    drop(diesel);
    pool.close();
}

// ---------------------------------------------------------------------------------------------
// Lifetimes
// ---------------------------------------------------------------------------------------------

/// FIXED. sqlx's lifetime key is "when the session was made, in ms since ORIGIN", and ORIGIN
/// is a process-wide `OnceLock` set at its first use. Since `outlived` skips the draw while a
/// session is younger than the shortest lifetime, the key closure (and so ORIGIN) first runs
/// only when some session reaches `max_lifetime * (1 - jitter)`: every session made before
/// that moment (all those opened at start-up, in the first ~95 % of a lifetime by default)
/// has `made < ORIGIN`, key 0, and the *same* lifetime. They are all replaced together,
/// which is what the jitter is for. (Before the change, ORIGIN was set at the first
/// check of any session, here the re-checkout at 20 ms.)
///
/// Five sessions opened 60 ms apart under max_lifetime 4 s, jitter 0.5 (lifetimes drawn in
/// (2 s, 4 s]): the ages at which they are retired should be spread; here they are all the
/// same, within the polling step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_sessions_opened_apart_do_not_all_share_one_lifetime() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    use lakebase_pool::drivers::sqlx_0_8::pg_pool;
    use sqlx::postgres::PgPoolOptions;

    let pg = cluster().await;
    let pool = app_pool(&pg)
        .max_lifetime(Duration::from_secs(4))
        .lifetime_jitter(0.5)
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let options = PgPoolOptions::new()
        .max_connections(6)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5));
    let sqlx_pool = pg_pool(&pool, options).await.unwrap();
    async fn pid(conn: &mut sqlx::PgConnection) -> i32 {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
            .unwrap()
    }
    // One session, made, handed back, and checked out again (its first check).
    let mut first = sqlx_pool.acquire().await.unwrap();
    let _ = pid(&mut first).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut held = vec![sqlx_pool.acquire().await.unwrap()];
    // Five more, made 60 ms apart.
    let mut made = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut conn = sqlx_pool.acquire().await.unwrap();
        made.push((pid(&mut conn).await, Instant::now()));
        held.push(conn);
    }
    drop(held);
    // Every 50 ms, check out all six: the sessions missing were retired.
    let mut retired_at: HashMap<i32, Duration> = HashMap::new();
    let started = Instant::now();
    while retired_at.len() < made.len() && started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let mut conns = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let mut conn = sqlx_pool.acquire().await.unwrap();
            seen.push(pid(&mut conn).await);
            conns.push(conn);
        }
        drop(conns);
        for (pid, at) in &made {
            if !seen.contains(pid) {
                let _ = retired_at.entry(*pid).or_insert(now - *at);
            }
        }
    }
    sqlx_pool.close().await;
    pool.close();
    assert_eq!(
        retired_at.len(),
        made.len(),
        "not all retired: {retired_at:?}"
    );
    let ages: Vec<Duration> = retired_at.values().copied().collect();
    let spread = *ages.iter().max().unwrap() - *ages.iter().min().unwrap();
    assert!(
        spread > Duration::from_millis(250),
        "five sessions made apart were retired at the same age (spread {spread:?}): {ages:?}"
    );
}

/// HELD. diesel's deadpool pool with jitter 0: a session is kept until its max lifetime and
/// replaced after it (the skipped draw and the drawn lifetime agree at the boundary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_with_no_jitter_replaces_a_session_at_its_max_lifetime() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .max_lifetime(Duration::from_millis(1500))
        .lifetime_jitter(0.0)
        .build()
        .unwrap();
    let diesel = deadpool(&pool, |b| b.max_size(1)).unwrap();
    async fn pid(
        diesel: &diesel_async::pooled_connection::deadpool::Pool<diesel_async::AsyncPgConnection>,
    ) -> i32 {
        let mut conn = tokio::time::timeout(BOUND, diesel.get())
            .await
            .unwrap()
            .unwrap();
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
            "pg_backend_pid()",
        ))
        .get_result(&mut *conn)
        .await
        .unwrap()
    }
    let first = pid(&diesel).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    let kept = pid(&diesel).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let replaced = pid(&diesel).await;
    drop(diesel);
    pool.close();
    assert_eq!(first, kept, "replaced before its lifetime");
    assert_ne!(first, replaced, "kept past its lifetime");
}

/// HELD. `Duration::MAX` as the max lifetime (documented: no limit) with the widest jitter,
/// under diesel's and sqlx's checks: sessions are served and kept, nothing overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_lifetime_under_diesel_and_sqlx() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .max_lifetime(Duration::MAX)
        .lifetime_jitter(0.5)
        .idle_timeout(Duration::MAX)
        .build()
        .unwrap();
    let diesel = deadpool(&pool, |b| b.max_size(1)).unwrap();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let mut conn = tokio::time::timeout(BOUND, diesel.get())
            .await
            .unwrap()
            .unwrap();
        pids.push(
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                "pg_backend_pid()",
            ))
            .get_result::<i32>(&mut *conn)
            .await
            .unwrap(),
        );
    }
    drop(diesel);
    let sqlx_pool = lakebase_pool::drivers::sqlx_0_8::pg_pool(
        &pool,
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let (one,): (i32,) = sqlx::query_as("SELECT 1")
            .fetch_one(&sqlx_pool)
            .await
            .unwrap();
        assert_eq!(one, 1);
    }
    sqlx_pool.close().await;
    pool.close();
    assert!(pids.windows(2).all(|w| w[0] == w[1]), "{pids:?}");
}

// ---------------------------------------------------------------------------------------------
// Token updates
// ---------------------------------------------------------------------------------------------

/// HELD. A subscriber sees the token minted after it subscribed; a `changed()` polled and
/// dropped before the mint loses nothing; once every clone of the cache is gone, `changed()`
/// ends with `None` (no hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_each_token_survives_cancellation_and_ends_with_the_cache() {
    let cache = TokenCache::new(StaticPassword::new("pw"), CachePolicy::per_connect());
    let mut updates = cache.subscribe();
    // Polled once (pending), then dropped.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), updates.changed())
            .await
            .is_err()
    );
    let minted = cache.token().await.unwrap();
    let seen = tokio::time::timeout(BOUND, updates.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(Arc::ptr_eq(&minted, &seen));
    let second = cache.token().await.unwrap();
    let seen = tokio::time::timeout(BOUND, updates.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(Arc::ptr_eq(&second, &seen));
    drop(cache);
    let ended = tokio::time::timeout(BOUND, updates.changed()).await;
    assert!(matches!(ended, Ok(None)), "{ended:?}");
}

/// Whether the subscription of a pool's cache ends once the pool is closed or dropped.
async fn updates_end_with_the_pool(close: bool) -> Result<(), String> {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let mut updates = pool.token_cache().subscribe();
    let conn = pool.get().await.unwrap();
    conn.simple_query("SELECT 1").await.unwrap();
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(1), updates.changed()).await;
    if close {
        pool.close();
    }
    drop(pool);
    match tokio::time::timeout(Duration::from_secs(5), updates.changed()).await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err("a token after the pool went".into()),
        Err(_) => Err(format!(
            "changed() still pending 5 s after the pool was {}",
            if close {
                "closed and dropped"
            } else {
                "dropped"
            }
        )),
    }
}

/// HELD. A subscription to a pool's cache ends (no hang, nothing left holding the cache) once
/// the pool is closed and dropped, or only dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_to_a_pools_cache_ends_with_the_pool() {
    let closed = updates_end_with_the_pool(true).await;
    let dropped = updates_end_with_the_pool(false).await;
    assert!(closed.is_ok() && dropped.is_ok(), "{closed:?} {dropped:?}");
}

/// FIXED (minor). `TokenUpdates::latest` is documented as "the newest token the cache
/// holds"; after `force_refresh` withdrew a rejected token and the new mint failed, the
/// cache holds none (`token()` fails), but `latest()` still hands out the rejected token, so
/// code that logs in with `latest()` (as its doc suggests it may) retries a token the server
/// already refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_not_a_token_the_cache_withdrew() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let cache = TokenCache::new(
        from_fn(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Ok(Credential::new("first")
                        .expires_at(SystemTime::now() + Duration::from_secs(3600)))
                } else {
                    Err(std::io::Error::other("workspace down"))
                }
            }
        }),
        CachePolicy::default(),
    );
    let updates = cache.subscribe();
    let rejected = cache.token().await.unwrap();
    let refreshed = cache.force_refresh(&rejected).await;
    assert!(refreshed.is_err(), "{refreshed:?}");
    assert!(
        cache.token().await.is_err(),
        "the cache still serves a token"
    );
    let latest = updates.latest();
    assert!(
        !latest.as_ref().is_some_and(|t| Arc::ptr_eq(t, &rejected)),
        "latest() still hands out the token the server rejected"
    );
}
