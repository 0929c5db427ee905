//! Read replicas under the conditions production brings: a replica that comes back while
//! another serves, asynchronous commits, a "replica" that is not replaying, and a workspace
//! that lists another branch's endpoint.

use std::time::{Duration, Instant};

use lakebase_pool::{Connection, Error, Pool, ReadFallback, RetryPolicy};
use lakebase_pool_testing::{Fault, LocalLakebase, StopMode};

use crate::support::{app_pool, cluster};

/// The port of the server behind a session (the standby's own, even through the emulator).
async fn server_port(conn: &Connection) -> u16 {
    let port: String = conn
        .query_one("SELECT current_setting('port')", &[])
        .await
        .unwrap()
        .get(0);
    port.parse().unwrap()
}

async fn notes(conn: &Connection) -> Vec<String> {
    conn.query("SELECT body FROM notes ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// With two replicas, one stops and comes back: while the other serves every read, the one
/// that came back is probed on its schedule (1 s after the failure, then doubling) and
/// serves again, within a few seconds, not never.
#[tokio::test]
async fn a_recovered_replica_serves_again_within_its_probe_schedule_while_another_is_healthy() {
    let lakebase = LocalLakebase::start_with_replicas(2).await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_replicas([lakebase.replica_endpoint(0), lakebase.replica_endpoint(1)])
        .retry(RetryPolicy::default().deadline(Duration::from_secs(1)))
        .build()
        .unwrap();
    let first = lakebase.replica(0).unwrap();
    let first_port = first.port();
    // Both serve before the fault (ties rotate).
    let a = pool.get_read().await.unwrap();
    let b = pool.get_read().await.unwrap();
    drop((a, b));

    first.stop(StopMode::Fast).unwrap();
    // Let the idle session's driver read the server's goodbye (see RELIABILITY.md: a session
    // that ends in the instant before its checkout surfaces on its next statement).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Reads go on; one of them finds the first replica down and marks it.
    let until = Instant::now() + Duration::from_secs(20);
    while pool.stats().replicas[0].healthy {
        let conn = pool.get_read().await.unwrap();
        assert_ne!(server_port(&conn).await, first_port);
        drop(conn);
        assert!(Instant::now() < until, "never marked: {:?}", pool.stats());
    }
    first.resume().unwrap();
    let back_at = Instant::now();
    // Reads keep being served by the healthy replica meanwhile; the recovered one must get
    // reads again within its probe schedule (1 s, 2 s, 4 s... after each failed probe).
    let mut reads = 0;
    loop {
        let conn = pool.get_read().await.unwrap();
        reads += 1;
        if server_port(&conn).await == first_port {
            break;
        }
        drop(conn);
        assert!(
            back_at.elapsed() < Duration::from_secs(15),
            "still out of rotation {:?} after it came back, across {reads} reads: {:?}",
            back_at.elapsed(),
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pool.stats().replicas[0].healthy);
}

/// Under `synchronous_commit = off` a commit returns before its record is written out, so
/// the WAL write position can lie before it. The position given for the write covers it:
/// every read of it sees the row, on the first try.
#[tokio::test]
async fn get_read_at_sees_an_asynchronously_committed_write() {
    let pg = cluster().await;
    let standby = pg.start_standby().unwrap();
    let pool = app_pool(&pg)
        .read_replicas([format!("127.0.0.1:{}", standby.port())])
        .replica_catch_up_timeout(Duration::from_secs(5))
        .read_fallback(ReadFallback::Fail)
        .build()
        .unwrap();
    let writer = pool.get().await.unwrap();
    writer
        .batch_execute(
            "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
             SET synchronous_commit = off;",
        )
        .await
        .unwrap();
    for round in 0..10 {
        let body = format!("row {round}");
        let _ = writer
            .execute("INSERT INTO notes (body) VALUES ($1)", &[&body])
            .await
            .unwrap();
        let position = writer.write_position().await.unwrap();
        let reader = pool.get_read_at(position).await.unwrap();
        assert_eq!(server_port(&reader).await, standby.port(), "on the replica");
        let seen = notes(&reader).await;
        assert_eq!(
            seen.last(),
            Some(&body),
            "round {round}: the write is missing"
        );
    }
}

/// A "replica" that is not replaying WAL (here another primary, as a promoted standby or a
/// misconfigured host is) can never prove it has the write: a read of a write position falls
/// back to the read-write endpoint at once, and with `ReadFallback::Fail` it fails. Plain
/// reads still go to it.
#[tokio::test]
async fn a_server_that_is_not_replaying_never_satisfies_a_read_of_your_writes() {
    let pg = cluster().await;
    let impostor = cluster().await;
    for server in [&pg, &impostor] {
        let admin = server.admin_of("app").await.unwrap();
        admin
            .batch_execute(
                "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
                 GRANT ALL ON notes TO app; GRANT ALL ON SEQUENCE notes_id_seq TO app;",
            )
            .await
            .unwrap();
    }
    let replicas = [format!("127.0.0.1:{}", impostor.port())];
    let pool = app_pool(&pg)
        .read_replicas(replicas.clone())
        .replica_catch_up_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let writer = pool.get().await.unwrap();
    let _ = writer
        .execute("INSERT INTO notes (body) VALUES ('mine')", &[])
        .await
        .unwrap();
    let position = writer.write_position().await.unwrap();
    drop(writer);

    let started = Instant::now();
    let reader = pool.get_read_at(position).await.unwrap();
    assert_eq!(notes(&reader).await, ["mine"], "served with the write");
    assert_eq!(server_port(&reader).await, pg.port(), "by the primary");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "fell back at once, not after the catch-up timeout"
    );
    drop(reader);
    let stats = pool.stats();
    assert_eq!(
        (stats.lag_fallbacks, stats.read_fallbacks),
        (1, 1),
        "{stats:?}"
    );
    let plain = pool.get_read().await.unwrap();
    assert_eq!(server_port(&plain).await, impostor.port());

    let strict: Pool = app_pool(&pg)
        .read_replicas(replicas)
        .read_fallback(ReadFallback::Fail)
        .build()
        .unwrap();
    let err = strict.get_read_at(position).await.unwrap_err();
    assert!(matches!(err, Error::ReplicaBehind { .. }), "{err:?}");
}

/// A workspace that lists another branch's endpoint among the branch's read-only ones is
/// not believed: no read goes to it (the look-up fails and reads fall back to the
/// read-write endpoint, as for any failed look-up).
#[tokio::test]
async fn replicas_of_the_branch_never_include_another_branchs_endpoint() {
    let lakebase = LocalLakebase::start_with_replicas(1).await.unwrap();
    let listing = "/api/2.0/postgres/projects/local/branches/main/endpoints";
    let foreign = serde_json::json!({"endpoints": [{
        "name": "projects/local/branches/production/endpoints/ep-prod-ro",
        "status": {"endpoint_type": "ENDPOINT_TYPE_READ_ONLY",
                   "hosts": {"host": lakebase.emulator().host_of("ep-local-replica-1")}}
    }]});
    lakebase
        .workspace()
        .inject(Fault::status(200, foreign.to_string()).on(listing));
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_replicas_of_branch()
        .read_fallback(ReadFallback::Fail)
        .build()
        .unwrap();
    let err = pool.get_read().await.unwrap_err();
    let Error::ReplicaUnavailable { source, .. } = &err else {
        panic!("expected no replica, got {err:?}");
    };
    let cause = source.as_ref().map(|s| s.to_string()).unwrap_or_default();
    assert!(cause.contains("belongs to another branch"), "{cause}");
    assert!(pool.stats().replicas.is_empty(), "none adopted");
}
