//! Read replicas against real streaming standbys: reads spread over healthy replicas, reads
//! of your own writes wait for replay, a replica that is down is skipped and comes back, and
//! writes on a replica fail as read-only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::{Connection, Error, Pool, PoolBuilder, ReadFallback, RetryPolicy};
use lakebase_pool_testing::{LocalLakebase, StopMode};

use crate::support::{app_pool, cluster, in_recovery};

const CLIENT_ID: &str = "replica-app";
const CLIENT_SECRET: &str = "replica-app-secret";

/// Whether the session is on a standby.
async fn notes(conn: &Connection) -> Vec<String> {
    conn.query("SELECT body FROM notes ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// A Lakebase with `replicas` read-only endpoints, and a service principal whose role owns a
/// `notes` table (created on the primary, so replicated).
async fn lakebase(replicas: usize) -> LocalLakebase {
    let lakebase = LocalLakebase::start_with_replicas(replicas).await.unwrap();
    lakebase
        .add_service_principal(CLIENT_ID, CLIENT_SECRET)
        .await
        .unwrap();
    let owner = lakebase.pool_builder().unwrap().build().unwrap();
    let conn = owner.get().await.unwrap();
    conn.batch_execute(&format!(
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);
             GRANT SELECT, INSERT ON notes TO \"{CLIENT_ID}\";
             GRANT USAGE ON SEQUENCE notes_id_seq TO \"{CLIENT_ID}\";"
    ))
    .await
    .unwrap();
    // Every standby has the table before the test starts.
    let position = conn.write_position().await.unwrap();
    for index in 0..replicas {
        let standby = lakebase.replica(index).unwrap().admin().await.unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        while !standby
            .query_one("SELECT pg_last_wal_replay_lsn() >= $1", &[&position])
            .await
            .unwrap()
            .get::<_, bool>(0)
        {
            assert!(Instant::now() < until, "standby {index} never caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(conn);
    lakebase
}

/// An App's pool (OAuth M2M) for the read-write endpoint.
fn apps_pool(lakebase: &LocalLakebase) -> PoolBuilder {
    crate::support::service_principal_pool(lakebase, CLIENT_ID, CLIENT_SECRET)
}

async fn insert(pool: &Pool, body: &str) -> tokio_postgres::types::PgLsn {
    let conn = pool.get().await.unwrap();
    let _ = conn
        .execute("INSERT INTO notes (body) VALUES ($1)", &[&body])
        .await
        .unwrap();
    conn.write_position().await.unwrap()
}

/// A row written on the primary is read on the replica once replayed. With replay paused,
/// `get_read_at` waits its catch-up timeout and then reads from the primary (or fails, with
/// `ReadFallback::Fail`); once replay resumes, the replica serves it. Tokens are minted per
/// endpoint, through one workspace login.
#[tokio::test]
async fn reads_of_your_own_writes_wait_for_replay_then_fall_back_per_the_setting() {
    let lakebase = lakebase(1).await;
    let replica = lakebase.replica_endpoint(0);
    let pool = apps_pool(&lakebase)
        .read_replicas([replica.as_str()])
        .replica_catch_up_timeout(Duration::from_millis(800))
        .build()
        .unwrap();

    let first = insert(&pool, "first").await;
    let reader = pool.get_read_at(first).await.unwrap();
    assert!(in_recovery(&reader).await, "served by the replica");
    assert_eq!(notes(&reader).await, ["first"]);
    drop(reader);

    let standby = lakebase.replica(0).unwrap();
    standby.pause_replay().await.unwrap();
    let second = insert(&pool, "second").await;
    let reader = pool.get_read_at(second).await.unwrap();
    assert!(!in_recovery(&reader).await, "fell back to the primary");
    assert_eq!(notes(&reader).await, ["first", "second"]);
    drop(reader);
    let stats = pool.stats();
    assert_eq!((stats.lag_waits, stats.lag_fallbacks), (1, 1), "{stats:?}");
    let replica_stats = &stats.replicas[0];
    assert_eq!(
        (replica_stats.lag_waits, replica_stats.lag_fallbacks),
        (1, 1),
        "counted on the replica waited on"
    );
    assert_eq!(stats.read_fallbacks, 1);

    let strict = apps_pool(&lakebase)
        .read_replicas([replica.as_str()])
        .replica_catch_up_timeout(Duration::from_millis(300))
        .read_fallback(ReadFallback::Fail)
        .build()
        .unwrap();
    let err = strict.get_read_at(second).await.unwrap_err();
    assert!(
        matches!(err, Error::ReplicaBehind { ref position, .. } if *position == second.to_string()),
        "{err:?}"
    );
    assert!(err.is_transient());
    // A plain read does not wait: the replica serves what it has.
    let stale = strict.get_read().await.unwrap();
    assert_eq!(notes(&stale).await, ["first"]);
    drop(stale);

    standby.resume_replay().await.unwrap();
    let reader = pool.get_read_at(second).await.unwrap();
    assert!(in_recovery(&reader).await);
    assert_eq!(notes(&reader).await, ["first", "second"]);

    let workspace = lakebase.workspace();
    let mut endpoints: Vec<String> = workspace.minted().into_iter().map(|m| m.endpoint).collect();
    endpoints.sort();
    endpoints.dedup();
    assert_eq!(
        endpoints,
        [LocalLakebase::ENDPOINT.to_owned(), replica.clone()]
    );
    assert_eq!(
        workspace.count("POST", "/oidc/v1/token"),
        2,
        "one workspace login per pool (two pools here)"
    );
    assert_eq!(pool.stats().replicas[0].endpoint, replica);
}

/// The replica's standby stops: the next read finds it down (within the connect deadline)
/// and falls back, later reads skip it at once, and writes are not touched. When it is
/// back, a background probe finds it and reads go to it again.
#[tokio::test]
async fn a_replica_that_is_down_is_skipped_and_comes_back_after_a_probe() {
    let lakebase = lakebase(1).await;
    let pool = apps_pool(&lakebase)
        .read_replicas([lakebase.replica_endpoint(0)])
        .retry(RetryPolicy::default().deadline(Duration::from_secs(2)))
        .build()
        .unwrap();
    assert!(in_recovery(&pool.get_read().await.unwrap()).await);

    let standby = lakebase.replica(0).unwrap();
    standby.stop(StopMode::Fast).unwrap();
    // Its idle session ends with the server; let the pool see that (a connection that dies
    // between two checkouts within the validation interval surfaces on its next query, for a
    // replica as for the primary).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reader = pool.get_read().await.unwrap();
    assert!(!in_recovery(&reader).await, "fell back");
    drop(reader);
    let stats = pool.stats();
    assert!(!stats.replicas[0].healthy, "{stats:?}");
    assert_eq!(stats.replicas[0].unhealthy_periods, 1);
    let failed_before = stats.replicas[0].connections_opened;
    // Skipped now: served by the primary, the replica not tried again yet.
    for _ in 0..5 {
        assert!(!in_recovery(&pool.get_read().await.unwrap()).await);
    }
    assert_eq!(pool.stats().read_fallbacks, 6);
    assert_eq!(pool.stats().replicas[0].connections_opened, failed_before);
    let _ = insert(&pool, "written while the replica is down").await;

    standby.resume().unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let conn = pool.get_read().await.unwrap();
        if in_recovery(&conn).await {
            break;
        }
        drop(conn);
        assert!(
            Instant::now() < until,
            "the replica never came back: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(pool.stats().replicas[0].healthy);
}

/// Reads spread over the branch's read-only endpoints, found by listing the branch: with a
/// connection held on one, the next read goes to the other (least in use).
#[tokio::test]
async fn the_branchs_read_only_endpoints_are_found_and_reads_spread_over_them() {
    let lakebase = lakebase(2).await;
    let pool = apps_pool(&lakebase)
        .read_replicas_of_branch()
        .build()
        .unwrap();
    let a = pool.get_read().await.unwrap();
    let b = pool.get_read().await.unwrap();
    assert!(in_recovery(&a).await && in_recovery(&b).await);
    let stats = pool.stats();
    let mut names: Vec<&str> = stats.replicas.iter().map(|r| r.endpoint.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [lakebase.replica_endpoint(0), lakebase.replica_endpoint(1)]
    );
    assert!(
        stats.replicas.iter().all(|r| r.in_use == 1),
        "one each: {stats:?}"
    );
    let listings = || {
        lakebase
            .workspace()
            .requests()
            .into_iter()
            .filter(|r| r.path == "/api/2.0/postgres/projects/local/branches/main/endpoints")
            .count()
    };
    // One listing: the mock serves two endpoints a page, so three take two pages.
    assert_eq!(listings(), 2);
    drop((a, b));
    let _ = pool.get_read().await.unwrap();
    assert_eq!(listings(), 2, "not listed again");
}

/// A write in a read-only unit of work fails at once with `Error::ReadOnly`: the work ran
/// once, no retry. A read-only unit of work runs on the replica.
#[tokio::test]
async fn a_write_on_a_replica_fails_at_once_as_read_only() {
    let lakebase = lakebase(1).await;
    let pool = apps_pool(&lakebase)
        .read_replicas([lakebase.replica_endpoint(0)])
        .build()
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let err = pool
        .retry_read_transaction(|tx| {
            let runs = Arc::clone(&runs);
            async move {
                let _ = runs.fetch_add(1, Ordering::SeqCst);
                tx.execute("INSERT INTO notes (body) VALUES ('nope')", &[])
                    .await
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err:?}");
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "not retried");

    let in_recovery = pool
        .retry_read_transaction(|tx| async move {
            Ok(tx
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await?
                .get::<_, bool>(0))
        })
        .await
        .unwrap();
    assert!(in_recovery);
}

/// Plain Postgres: a standby given by `host:port` serves reads, logging in with the
/// primary's password (physical replication copies the roles).
#[tokio::test]
async fn a_plain_postgres_standby_by_host_serves_reads_after_catch_up() {
    let pg = cluster().await;
    let standby = pg.start_standby().unwrap();
    let pool = app_pool(&pg)
        .read_replicas([format!("127.0.0.1:{}", standby.port())])
        .build()
        .unwrap();
    let writer = pool.get().await.unwrap();
    writer
        .batch_execute("CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)")
        .await
        .unwrap();
    let _ = writer
        .execute("INSERT INTO notes (body) VALUES ('hello')", &[])
        .await
        .unwrap();
    let position = writer.write_position().await.unwrap();
    drop(writer);
    let reader = pool.get_read_at(position).await.unwrap();
    assert!(in_recovery(&reader).await);
    assert_eq!(notes(&reader).await, ["hello"]);
    assert!(
        matches!(reader.write_position().await, Err(Error::Statement { .. })),
        "a standby has no write position"
    );
}

/// Bad replica settings are `build` errors naming the setting.
#[tokio::test]
async fn bad_replica_settings_fail_build_naming_the_setting() {
    let pg = cluster().await;
    let setting = |result: Result<Pool, Error>| match result {
        Err(Error::InvalidConfig { setting, .. }) => setting,
        Err(Error::InvalidEndpointName { .. }) => "endpoint name",
        other => panic!("expected a build error, got {other:?}"),
    };
    assert_eq!(
        setting(app_pool(&pg).read_replicas(["db:0"]).build()),
        "read_replicas"
    );
    assert_eq!(
        setting(
            app_pool(&pg)
                .read_replicas(["projects/p/branches/b/endpoints/ep-ro"])
                .build()
        ),
        "read_replicas",
        "an endpoint name without a workspace"
    );
    assert_eq!(
        setting(app_pool(&pg).read_replicas(["projects/p"]).build()),
        "endpoint name"
    );
    assert_eq!(
        setting(app_pool(&pg).read_replicas_of_branch().build()),
        "read_replicas_of_branch"
    );
    assert_eq!(
        setting(
            app_pool(&pg)
                .read_replicas(["127.0.0.1:5999"])
                .replica_max_size(0)
                .build()
        ),
        "replica_max_size"
    );
    // Without replicas, reads are the primary's.
    let plain = app_pool(&pg).build().unwrap();
    assert!(!in_recovery(&plain.get_read().await.unwrap()).await);
    assert!(plain.stats().replicas.is_empty());
}

/// The `ReadConnection` extractor serves a handler from the replica, over real HTTP; the
/// `Connection` extractor beside it from the read-write endpoint.
#[tokio::test]
async fn the_read_connection_extractor_reads_from_the_replica() {
    use axum::routing::get;
    use lakebase_pool::integrations::{HttpError, ReadConnection};

    async fn read(conn: ReadConnection) -> Result<String, HttpError> {
        let row = conn.query_one("SELECT pg_is_in_recovery()", &[]).await?;
        Ok(row.get::<_, bool>(0).to_string())
    }
    async fn write(conn: Connection) -> Result<String, HttpError> {
        let row = conn.query_one("SELECT pg_is_in_recovery()", &[]).await?;
        Ok(row.get::<_, bool>(0).to_string())
    }

    let lakebase = lakebase(1).await;
    let pool = apps_pool(&lakebase)
        .read_replicas([lakebase.replica_endpoint(0)])
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/read", get(read))
        .route("/write", get(write))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = crate::support::http_client();
    let body = |path: &'static str| {
        let http = http.clone();
        async move {
            http.get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert_eq!(body("/read").await, "true", "on the standby");
    assert_eq!(body("/write").await, "false", "on the primary");
    server.abort();
}
