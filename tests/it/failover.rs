//! After a failover: a session that reaches a server now read-only (the old primary back as a
//! standby) is retired at its first refused write, and `retry_transaction` runs the work
//! again on a new session; `retire_all` replaces every session on demand.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lakebase_pool::Pool;
use lakebase_pool_testing::LocalPostgres;

use crate::support::{app_pool, backend_pid, cluster, in_recovery};

/// Makes every new transaction on `pg` read-only (`default_transaction_read_only`), as a
/// standby is, or read-write again; sessions already open follow at their next statement.
pub(crate) async fn set_read_only(pg: &LocalPostgres, read_only: bool) {
    let admin = pg.admin().await.unwrap();
    let setting = if read_only {
        "ALTER SYSTEM SET default_transaction_read_only = on"
    } else {
        "ALTER SYSTEM RESET default_transaction_read_only"
    };
    admin.batch_execute(setting).await.unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    // The reload reaches sessions asynchronously: wait until a new one sees it.
    let expected = if read_only { "on" } else { "off" };
    for _ in 0..100 {
        let admin = pg.admin().await.unwrap();
        let row = admin
            .query_one("SHOW default_transaction_read_only", &[])
            .await
            .unwrap();
        if row.get::<_, String>(0) == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server did not become read_only={read_only}");
}

/// The `writes` table the failover tests write to.
pub(crate) async fn table(pool: &Pool) {
    let conn = pool.get().await.unwrap();
    conn.batch_execute("CREATE TABLE IF NOT EXISTS writes (id int PRIMARY KEY)")
        .await
        .unwrap();
}

/// A pooled session that meets a read-only server gets `25006` once and is retired when it
/// comes back: the next checkout is another session (which, the server being read-write
/// again, writes).
#[tokio::test]
async fn a_session_refused_a_write_as_read_only_is_retired() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    table(&pool).await;
    let conn = pool.get().await.unwrap();
    let first = backend_pid(&conn).await;
    set_read_only(&pg, true).await;
    let error = conn
        .execute("INSERT INTO writes VALUES (1)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{error}"
    );
    drop(conn);
    set_read_only(&pg, false).await;

    let conn = pool.get().await.unwrap();
    assert_ne!(backend_pid(&conn).await, first, "a new session");
    conn.execute("INSERT INTO writes VALUES (1)", &[])
        .await
        .unwrap();
    assert_eq!(pool.stats().retired_read_only, 1, "{:?}", pool.stats());
}

/// A replica's sessions refuse writes by nature: a write sent there by mistake does not
/// retire the session (only a primary's sessions count a refusal as a failover).
#[tokio::test]
async fn a_replica_session_refusing_a_write_is_kept() {
    let pg = cluster().await;
    let standby = pg.start_standby().unwrap();
    let pool = app_pool(&pg)
        .read_replicas([format!("127.0.0.1:{}", standby.port())])
        .replica_max_size(1)
        .build()
        .unwrap();
    table(&pool).await;
    let read = pool.get_read().await.unwrap();
    assert!(in_recovery(&read).await, "served by the standby");
    assert!(
        read.execute("INSERT INTO writes VALUES (7)", &[])
            .await
            .is_err()
    );
    drop(read);
    // The next checkout of the replica's pool recycles the session: kept, not retired.
    drop(pool.get_read().await.unwrap());
    let stats = pool.stats();
    assert_eq!(stats.retired_read_only, 0);
    assert_eq!(stats.replicas[0].retired, 0, "{stats:?}");
    assert_eq!(stats.replicas[0].connections_opened, 1, "{stats:?}");
}

/// Writers in `retry_transaction` while the server is read-only for a while (as the old
/// primary is, back as a standby, until the route reaches the new one): each unit of work is
/// run again on a new session and succeeds once the server takes writes; each row is there
/// once, and no caller saw an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_transaction_writes_through_a_read_only_spell() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(4).build().unwrap();
    table(&pool).await;
    set_read_only(&pg, true).await;
    let mut writers = Vec::new();
    for id in 0..4 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            pool.retry_transaction(move |tx| async move {
                tx.execute("INSERT INTO writes VALUES ($1)", &[&id]).await?;
                Ok(())
            })
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    set_read_only(&pg, false).await;
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let conn = pool.get().await.unwrap();
    let rows = conn
        .query_one("SELECT count(*) FROM writes", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 4);
    assert!(pool.stats().retired_read_only >= 1, "{:?}", pool.stats());
}

/// `retire_all` under load: no checkout fails because of it, and every checkout that starts
/// after it returns gets a session opened after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_all_under_load_hands_out_only_new_sessions() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(4).build().unwrap();
    // `calling`: set just before the call; `retired`: just after it returned.
    let calling = Arc::new(AtomicBool::new(false));
    let retired = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (pool, calling, retired) = (pool.clone(), Arc::clone(&calling), Arc::clone(&retired));
        tasks.push(tokio::spawn(async move {
            let (mut before, mut after) = (BTreeSet::new(), BTreeSet::new());
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
            while tokio::time::Instant::now() < deadline {
                let started_after = retired.load(Ordering::SeqCst);
                let conn = pool.get().await.expect("no checkout fails");
                let pid = backend_pid(&conn).await;
                if started_after {
                    after.insert(pid);
                } else if !calling.load(Ordering::SeqCst) {
                    // Served and used before the call began: a session from before.
                    before.insert(pid);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (before, after)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    calling.store(true, Ordering::SeqCst);
    pool.retire_all();
    retired.store(true, Ordering::SeqCst);
    let (mut before, mut after) = (BTreeSet::new(), BTreeSet::new());
    for task in tasks {
        let (b, a) = task.await.unwrap();
        before.extend(b);
        after.extend(a);
    }
    assert!(!before.is_empty() && !after.is_empty());
    let reused: Vec<_> = before.intersection(&after).collect();
    assert!(
        reused.is_empty(),
        "sessions from before retire_all: {reused:?}"
    );
    assert!(pool.stats().retired_all >= 1, "{:?}", pool.stats());
}
