//! An endpoint with high availability, failed over under load: through the local Lakebase's
//! HA endpoint (a primary, a synchronous secondary behind the read-only host, a failover
//! that stops the primary, promotes the secondary and routes the endpoint's host to it, and
//! a proxy that holds a connect to the dead compute for about 3 s).

#[path = "../common/failover_drill.rs"]
mod failover_drill;

use std::time::{Duration, Instant};

use lakebase_pool_testing::LocalLakebase;

use self::failover_drill::{Drill, Told, drill, rows_by_key};
use crate::support::in_recovery;

/// The scenario: writers in `retry_transaction`, the primary killed under them with
/// commits in flight, the secondary promoted, and the proxy holding the first reconnects on
/// the dead compute for about 3 s. Every write reported committed is on the new primary,
/// none is there twice, `CommitOutcomeUnknown` only for commits in flight (at most one per
/// writer, at the kill), no other error reaches a caller, and writes resume within 2 s of
/// the new primary taking connections (a stalled connect try is replaced by a fresh one, which reaches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_come_through_a_failover_with_nothing_lost_or_doubled() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .max_size(8)
        .build()
        .unwrap();
    let Drill {
        writes,
        failover,
        resumed,
    } = drill(ha, &pool).await;

    let failed: Vec<_> = writes.iter().filter(|w| w.told == Told::Failed).collect();
    assert!(
        failed.is_empty(),
        "errors reached callers: {:?}",
        failed.iter().map(|w| &w.error).collect::<Vec<_>>()
    );
    let unknown: Vec<_> = writes.iter().filter(|w| w.told == Told::Unknown).collect();
    assert!(
        unknown.len() <= 4,
        "one commit in flight per writer at most: {}",
        unknown.len()
    );
    for write in &unknown {
        assert!(
            write.at >= failover.stopped_at
                && write.at <= failover.routed_at + Duration::from_secs(12),
            "an unknown outcome away from the failover: {:?}",
            write.error
        );
    }

    let counts = rows_by_key(ha).await;
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "written twice: {doubled:?}");
    let committed: Vec<_> = writes
        .iter()
        .filter(|w| w.told == Told::Committed)
        .collect();
    let lost: Vec<_> = committed
        .iter()
        .filter(|w| !counts.contains_key(&w.key))
        .map(|w| &w.key)
        .collect();
    assert!(
        lost.is_empty(),
        "reported committed, not on the new primary: {lost:?}"
    );

    let slowest = resumed.iter().max().copied().unwrap_or_default();
    let stats = pool.stats();
    eprintln!(
        "failover: {} writes committed, {} unknown; failover took {:?}; writers resumed {:?} \
         after the new primary took connections (slowest {slowest:?}); stalled tries restarted {}",
        committed.len(),
        unknown.len(),
        failover.routed_at - failover.stopped_at,
        resumed,
        stats.connect_stalled_tries,
    );
    assert!(
        slowest < Duration::from_secs(2),
        "writes resumed {slowest:?} after the new primary took connections; {stats:?}"
    );
}

/// Reads through the endpoint's read-only host (the secondary), reported by the workspace
/// and opted into with `read_only_host_as_replica`: served by the standby, reads of your
/// writes wait for its replay and fall back to the primary when it is paused; during a
/// failover (no secondary) reads go to the primary, and the new secondary serves them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_through_the_read_only_host_and_survive_a_failover() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_only_host_as_replica()
        .replica_catch_up_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    conn.batch_execute("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('first')")
        .await
        .unwrap();
    let first = conn.write_position().await.unwrap();
    drop(conn);

    let reader = pool.get_read_at(first).await.unwrap();
    assert!(in_recovery(&reader).await, "served by the secondary");
    assert_eq!(pool.stats().replicas.len(), 1);
    drop(reader);

    let secondary = ha.secondary().unwrap();
    secondary.pause_replay().await.unwrap();
    let conn = pool.get().await.unwrap();
    conn.execute("INSERT INTO notes VALUES ('second')", &[])
        .await
        .unwrap();
    let second = conn.write_position().await.unwrap();
    drop(conn);
    let reader = pool.get_read_at(second).await.unwrap();
    assert!(!in_recovery(&reader).await, "fell back to the primary");
    let rows: i64 = reader
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2, "the write is seen");
    drop(reader);
    assert_eq!(pool.stats().lag_fallbacks, 1);
    secondary.resume_replay().await.unwrap();

    // A session on the secondary, idle in the replica's pool through the failover.
    drop(pool.get_read().await.unwrap());
    ha.fail_over().await.unwrap();
    // The old secondary, now the primary, may serve one more read on the session the replica
    // kept; that session is retired on its return (its server reported the promotion), and
    // the new secondary serves the reads after it.
    let until = Instant::now() + Duration::from_secs(40);
    loop {
        let reader = pool.get_read().await.unwrap();
        let rows: i64 = reader
            .query_one("SELECT count(*) FROM notes", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 2, "nothing lost in the failover");
        if in_recovery(&reader).await {
            break;
        }
        assert!(
            Instant::now() < until,
            "the new secondary never served a read"
        );
        drop(reader);
        let stats = pool.stats();
        assert_ne!(
            stats.replicas[0].retired, 0,
            "retired on its return: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A read-write endpoint routed, mid-failover, to a server that takes no writes (here the
/// secondary, a standby): its logins are refused and retried, so no checkout is handed a
/// read-only session; once the route reaches the primary the waiting checkout gets one and
/// its write succeeds. A host given directly is not refused (it may be a standby on
/// purpose), nor is an endpoint the workspace reports read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_endpoint_never_hands_out_a_read_only_session() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    pool.retire_all();
    lakebase
        .emulator()
        .route(LocalLakebase::ENDPOINT, &ha.secondary().unwrap());
    let writer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let conn = pool.get().await.map_err(|e| e.to_string())?;
            let standby = in_recovery(&conn).await;
            conn.execute("INSERT INTO t VALUES (1)", &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<bool, String>(standby)
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!writer.is_finished(), "no session while the route is wrong");
    lakebase
        .emulator()
        .route(LocalLakebase::ENDPOINT, &ha.primary());
    let standby = writer.await.unwrap().unwrap();
    assert!(!standby, "the session is the primary's");
    let stats = pool.stats();
    assert!(stats.connect_attempts_failed >= 1, "{stats:?}");
    assert_eq!(stats.checkout_failures, 0, "{stats:?}");

    // A host given directly: a standby there is served (reads only).
    let secondary = ha.secondary().unwrap();
    let direct = lakebase
        .pool_builder()
        .unwrap()
        .host(lakebase.emulator().host_of(LocalLakebase::ENDPOINT))
        .build()
        .unwrap();
    lakebase
        .emulator()
        .route(LocalLakebase::ENDPOINT, &secondary);
    let conn = tokio::time::timeout(Duration::from_secs(10), direct.get())
        .await
        .expect("a host given directly is not refused")
        .unwrap();
    assert!(in_recovery(&conn).await);
    lakebase
        .emulator()
        .route(LocalLakebase::ENDPOINT, &ha.primary());
}

/// Everything built on the pool comes back after a failover: a `Listener` reconnects and
/// listens again on the new primary, and a signed-in user's pool serves them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_and_user_pools_come_back_after_a_failover() {
    use lakebase_pool::ListenerEvent;
    use lakebase_pool::users::{ForwardedHeaders, ForwardedUser, UserPools};

    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    let tokens = lakebase.add_users(&["alice@example.com"]).await.unwrap();
    let users = UserPools::builder(lakebase.pool_builder().unwrap())
        .forwarded_headers(ForwardedHeaders::Trusted)
        .build()
        .unwrap();
    let alice = ForwardedUser::new("alice@example.com", tokens[0].clone());
    let who = |conn: lakebase_pool::Connection| async move {
        conn.query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    assert_eq!(
        who(users.for_user(&alice).await.unwrap()).await,
        "alice@example.com"
    );
    let mut listener = pool.listener(["jobs"]).await.unwrap();

    ha.fail_over().await.unwrap();

    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(until.into(), listener.recv())
            .await
            .expect("the listener reconnects within 30 s")
            .unwrap();
        if matches!(event, ListenerEvent::Reconnected { .. }) {
            break;
        }
    }
    pool.get()
        .await
        .unwrap()
        .execute("SELECT pg_notify('jobs', 'after')", &[])
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), listener.recv()).await {
        Ok(Some(ListenerEvent::Notification(n))) => assert_eq!(n.payload(), "after"),
        other => panic!("expected the notification, got {other:?}"),
    }
    let conn = users.for_user(&alice).await.unwrap();
    assert!(!in_recovery(&conn).await);
    assert_eq!(who(conn).await, "alice@example.com");
}
