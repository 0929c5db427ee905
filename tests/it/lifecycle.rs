//! Connections are retired by lifetime (with jitter), idle timeout and breakage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Barrier, Mutex};

use crate::support::{ROLE, app_pool, backend_pid, cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_replaced_after_their_jittered_lifetime_without_failed_checkouts() {
    let pg = cluster().await;
    let lifetime = Duration::from_secs(2);
    let pool = app_pool(&pg)
        .max_size(8)
        .max_lifetime(lifetime)
        .lifetime_jitter(0.05)
        .build()
        .unwrap();

    // Open 8 connections at the same moment.
    let opened_at = Instant::now();
    let together = Arc::new(Barrier::new(8));
    let first: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            let together = Arc::clone(&together);
            tokio::spawn(async move {
                let conn = pool.get().await.unwrap();
                let _ = together.wait().await;
                let retire_at = conn.retire_at().unwrap();
                // The lifetime this connection was given: from its opening to its retirement.
                let assigned = retire_at + conn.age() - Instant::now();
                (backend_pid(&conn).await, retire_at, assigned)
            })
        })
        .collect();
    let mut retire = HashMap::new();
    let mut assigned = Vec::new();
    for task in first {
        let (pid, at, lifetime) = task.await.unwrap();
        let _ = retire.insert(pid, at);
        assigned.push(lifetime);
    }
    // Each got its own lifetime, within [95 %, 100 %] of the maximum. Eight uniform draws
    // over a 100 ms range all landing within 15 ms of each other has odds of about 1e-5.
    let tolerance = Duration::from_millis(2);
    for lifetime_given in &assigned {
        assert!(
            *lifetime_given >= lifetime.mul_f64(0.95) - tolerance,
            "{lifetime_given:?}"
        );
        assert!(
            *lifetime_given <= lifetime + tolerance,
            "{lifetime_given:?}"
        );
    }
    assigned.sort_unstable();
    let spread = *assigned.last().unwrap() - assigned[0];
    assert!(
        spread > Duration::from_millis(15),
        "jitter spreads lifetimes: {assigned:?}"
    );

    // Steady load for 3.5 s: every checkout succeeds, and the first connections are never
    // used after their retire time (plus the length of one query).
    let seen: Arc<Mutex<Vec<(i32, Instant)>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                while opened_at.elapsed() < Duration::from_millis(3500) {
                    let conn = pool.get().await.expect("checkout never fails");
                    let pid = backend_pid(&conn).await;
                    seen.lock().await.push((pid, Instant::now()));
                    drop(conn);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let seen = seen.lock().await;
    for (pid, at) in seen.iter() {
        if let Some(retire_at) = retire.get(pid) {
            assert!(
                *at <= *retire_at + Duration::from_millis(200),
                "pid {pid} used after retirement"
            );
        }
    }
    let late: Vec<i32> = seen
        .iter()
        .filter(|(_, at)| *at - opened_at > lifetime + Duration::from_millis(500))
        .map(|(pid, _)| *pid)
        .collect();
    assert!(!late.is_empty());
    assert!(
        late.iter().all(|pid| !retire.contains_key(pid)),
        "all first connections replaced"
    );
    assert!(pool.stats().retired_lifetime >= 8, "{:?}", pool.stats());
    // Thousands of statements, each complete before its connection came back: none was
    // taken for an abandoned one.
    assert_eq!(pool.stats().closed_abandoned, 0, "{:?}", pool.stats());
    assert_eq!(pool.stats().cancels_sent, 0);
}

#[tokio::test]
async fn connections_killed_while_idle_are_replaced_at_the_next_checkout() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(4).build().unwrap();
    let conns = checkout_many(&pool, 4).await;
    let mut before = Vec::new();
    for conn in &conns {
        before.push(backend_pid(conn).await);
    }
    drop(conns);
    assert_eq!(pool.stats().available, 4);

    assert_eq!(pg.terminate_sessions(ROLE).await.unwrap(), 4);
    // The server's termination notice reaches the idle connections' tasks.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let conns = checkout_many(&pool, 4).await;
    for conn in &conns {
        let pid = backend_pid(conn).await;
        assert!(!before.contains(&pid), "got a killed connection back");
    }
    assert_eq!(pool.stats().retired_broken, 4);
}

#[tokio::test]
async fn validation_catches_a_dead_connection_that_has_not_noticed_yet() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .validate_after_idle(Duration::ZERO)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let old_pid = backend_pid(&conn).await;
    drop(conn);
    // Kill it from another thread while this (single-threaded) runtime is blocked, so the
    // connection's task cannot run and notice: only a round trip can tell it is dead.
    let killer = pg.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let admin = killer.admin().await.unwrap();
            let _ = admin
                .execute("SELECT pg_terminate_backend($1)", &[&old_pid])
                .await
                .unwrap();
        });
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let conn = pool.get().await.unwrap();
    assert_ne!(backend_pid(&conn).await, old_pid);
}

#[tokio::test]
async fn idle_connections_are_closed_by_the_housekeeper_after_the_idle_timeout() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .idle_timeout(Duration::from_millis(600))
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    // Time in use does not count as idle time.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let pid = backend_pid(&conn).await;
    drop(conn);
    let conn = pool.get().await.unwrap();
    assert_eq!(
        backend_pid(&conn).await,
        pid,
        "a connection just returned is not idle"
    );
    drop(conn);

    // Without any checkout, the housekeeper closes it within the timeout plus one interval.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(pool.stats().size, 0, "{:?}", pool.stats());
    assert_eq!(pool.stats().retired_idle, 1);
    let admin = pg.admin().await.unwrap();
    let sessions: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 0, "the server session is gone too");
}

#[tokio::test]
async fn dropping_the_pool_ends_its_background_task() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let _ = pool.get().await.unwrap();
    let tasks_with_pool = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    drop(pool);
    // The housekeeper and the idle connection's task end (abort takes effect when the
    // runtime next gets to them).
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while alive() + 2 > tasks_with_pool && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        alive() + 2 <= tasks_with_pool,
        "{tasks_with_pool} -> {}",
        alive()
    );
}

#[tokio::test]
async fn closed_pool_refuses_checkouts() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let _ = pool.get().await.unwrap();
    pool.close();
    assert!(pool.is_closed());
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, lakebase_pool::Error::PoolClosed), "{err:?}");
    assert_eq!(err.to_string(), "the pool is closed");
}

/// Checks out `n` connections at once (so they are `n` distinct physical connections).
async fn checkout_many(pool: &lakebase_pool::Pool, n: usize) -> Vec<lakebase_pool::Connection> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(pool.get().await.unwrap());
    }
    conns
}

#[tokio::test]
async fn checkouts_wait_for_a_free_connection_then_time_out_with_a_clear_error() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .max_size(1)
        .wait_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(
        matches!(err, lakebase_pool::Error::PoolTimeout { max_size: 1, .. }),
        "{err:?}"
    );
    assert!(err.is_timeout() && err.is_transient());

    // A connection returned while someone waits goes to the waiter.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(held);
    waiter.await.unwrap().unwrap();
    let stats = pool.stats();
    assert_eq!((stats.checkouts, stats.checkout_failures), (2, 1));
}

/// Every connection the pool opens carries TCP keep-alive and, on Linux, `TCP_USER_TIMEOUT`,
/// read back from the real socket: a server that vanishes ends the connection in about a
/// minute whether it was idle (keep-alive) or had a query in flight (user timeout). The
/// vanishing itself is not simulated here (it needs packet loss, not a loopback reset).
#[tokio::test]
async fn connections_carry_keepalive_and_a_tcp_user_timeout() {
    let pg = crate::support::cluster().await;
    let pool = crate::support::app_pool(&pg).build().unwrap();
    let _conn = pool.get().await.unwrap();
    let port = pg.addr().port();
    let mut checked = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is open (listed just now) and only borrowed for the reads.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let is_ours = socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == port && a.ip().is_loopback());
        if !is_ours {
            continue;
        }
        assert!(socket.keepalive().unwrap(), "keep-alive on");
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(60))
        );
        checked += 1;
    }
    assert!(
        checked >= 1,
        "found the pool's connection among the open sockets"
    );
}

/// `Duration::MAX` for every duration setting means "no limit", never an overflow panic on
/// `Instant + Duration`: the pool builds, checks out, runs a transaction, listens and shuts
/// down.
#[tokio::test]
async fn duration_max_in_every_setting_means_no_limit_and_never_panics() {
    let pg = crate::support::cluster().await;
    let pool = crate::support::app_pool(&pg)
        .retry(
            lakebase_pool::RetryPolicy::default()
                .connect_timeout(Duration::MAX)
                .command_timeout(Duration::MAX)
                .backoff(Duration::from_millis(1), Duration::MAX)
                .deadline(Duration::MAX),
        )
        .cache_policy(
            lakebase_pool::CachePolicy::default()
                .mint_timeout(Duration::MAX)
                .refresh_ahead(Duration::MAX)
                .failure_backoff(Duration::from_millis(1), Duration::MAX),
        )
        .max_lifetime(Duration::MAX)
        .idle_timeout(Duration::MAX)
        .validate_after_idle(Duration::MAX)
        .wait_timeout(Duration::MAX)
        .build()
        .unwrap();
    let one: i32 = pool
        .retry_transaction(|tx| async move { Ok(tx.query_one("SELECT 1", &[]).await?.get(0)) })
        .await
        .unwrap();
    assert_eq!(one, 1);
    let listener = pool.listener(["jobs"]).await.unwrap();
    drop(listener);
    let report = pool.shutdown(Duration::MAX).await;
    assert_eq!(report.forced, 0);
}
