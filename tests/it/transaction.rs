//! `Pool::retry_transaction`: transient failures before the commit are retried, a commit
//! whose outcome is unknown never is.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lakebase_pool::{Error, Pool, RetryPolicy, StatementTimedOut};
use lakebase_pool_testing::{FaultProxy, LocalPostgres, NetworkFault};

use crate::support::{app_pool, backend_pid, cluster};

/// A cluster, and a pool of its app role with `schema` created.
async fn pool_with(schema: &str) -> (LocalPostgres, Pool) {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(schema)
        .await
        .unwrap();
    (pg, pool)
}

async fn rows(pool: &Pool, table: &str) -> i64 {
    pool.get()
        .await
        .unwrap()
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_transaction_killed_midway_runs_again_and_commits_once() {
    let (pg, pool) = pool_with("CREATE TABLE ledger (entry text NOT NULL)").await;
    let admin = pg.admin().await.unwrap();

    let runs = AtomicU32::new(0);
    let (runs_ref, admin) = (&runs, &admin);
    let value = pool
        .retry_transaction(|tx| async move {
            let run = runs_ref.fetch_add(1, Ordering::Relaxed) + 1;
            tx.execute("INSERT INTO ledger VALUES ('credit')", &[])
                .await?;
            if run == 1 {
                // The server ends this session between two statements, as a suspend does.
                let pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
                admin
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .unwrap();
            }
            tx.execute("INSERT INTO ledger VALUES ('debit')", &[])
                .await?;
            Ok(run * 10)
        })
        .await
        .expect("the second run commits");

    assert_eq!((runs.into_inner(), value), (2, 20));
    assert_eq!(
        rows(&pool, "ledger").await,
        2,
        "the killed run left nothing behind, the retry committed once"
    );
}

#[tokio::test]
async fn a_non_retryable_error_fails_at_once_and_rolls_back() {
    let (_pg, pool) = pool_with("CREATE TABLE t (id int PRIMARY KEY)").await;

    let runs = AtomicU32::new(0);
    let runs_ref = &runs;
    let err = pool
        .retry_transaction(|tx| async move {
            runs_ref.fetch_add(1, Ordering::Relaxed);
            tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
            tx.execute("INSERT INTO no_such_table VALUES (1)", &[])
                .await?;
            Ok(())
        })
        .await
        .unwrap_err();

    assert_eq!(runs.into_inner(), 1);
    assert!(
        matches!(&err, Error::Transaction { attempts: 1, source, .. } if source.downcast_ref::<tokio_postgres::Error>().and_then(tokio_postgres::Error::code) == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(
        rows(&pool, "t").await,
        0,
        "the first insert was rolled back"
    );
}

/// A deferred constraint that fails at COMMIT: the server answers COMMIT with an ERROR, so the
/// transaction certainly did not apply; the error is not transient, so it is not retried.
#[tokio::test]
async fn a_commit_answered_with_an_error_is_reported_as_rolled_back() {
    let (_pg, pool) = pool_with(
        "CREATE TABLE t (id int, CONSTRAINT one UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .await;

    let err = pool
        .retry_transaction(|tx| async move {
            tx.execute("INSERT INTO t VALUES (1), (1)", &[]).await?;
            Ok(())
        })
        .await
        .unwrap_err();

    assert!(
        matches!(&err, Error::Transaction { attempts: 1, source, .. } if source.downcast_ref::<tokio_postgres::Error>().and_then(tokio_postgres::Error::code) == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)),
        "{err:?}"
    );
}

/// The session dies while COMMIT is being processed (a deferred trigger terminates it): the
/// client cannot know whether the commit happened, so it must not run the work again.
#[tokio::test]
async fn a_connection_lost_during_commit_is_never_retried() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let admin = pg.admin().await.unwrap();
    // Terminating a backend needs a privilege the app role lacks; the trigger function runs
    // with its owner's (the superuser's) rights.
    admin
        .batch_execute(
            "GRANT pg_signal_backend TO app;
             GRANT ALL ON SCHEMA public TO app;",
        )
        .await
        .unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE t (id int);
             CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON t
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION die();",
        )
        .await
        .unwrap();

    let runs = AtomicU32::new(0);
    let runs_ref = &runs;
    let err = pool
        .retry_transaction(|tx| async move {
            runs_ref.fetch_add(1, Ordering::Relaxed);
            tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
            Ok(())
        })
        .await
        .unwrap_err();

    assert_eq!(runs.into_inner(), 1, "not run again");
    assert!(matches!(err, Error::CommitOutcomeUnknown { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("may or may not have been applied"));
}

#[tokio::test]
async fn retry_transaction_futures_can_be_spawned() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let label = String::from("spawned");
    let task = tokio::spawn({
        let pool = pool.clone();
        async move {
            let label = &label;
            pool.retry_transaction(|tx| async move {
                let row = tx.query_one("SELECT $1::text", &[label]).await?;
                Ok(row.get::<_, String>(0))
            })
            .await
        }
    });
    assert_eq!(task.await.unwrap().unwrap(), "spawned");
    let conn = pool.get().await.unwrap();
    assert!(backend_pid(&conn).await > 0);
}

/// A caller that gives up midway (request cancelled, timeout) drops the future with the
/// transaction open: the connection must not go back to the pool inside that transaction.
#[tokio::test]
async fn a_dropped_transaction_future_closes_its_connection() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    let conn = pool.get().await.unwrap();
    conn.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    let first_pid = backend_pid(&conn).await;
    drop(conn);

    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        pool.retry_transaction(|tx| async move {
            tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
            tx.execute("SELECT pg_sleep(10)", &[]).await?;
            Ok(())
        }),
    )
    .await;
    assert!(cancelled.is_err(), "the work was still running");

    let conn = pool.get().await.unwrap();
    assert_ne!(backend_pid(&conn).await, first_pid, "a new connection");
    drop(conn);
    assert_eq!(
        rows(&pool, "t").await,
        0,
        "the abandoned insert was rolled back"
    );
    // Its statement was in flight: cancelled on the server, then the session closed (counted
    // once the statement's grace period has passed).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while pool.stats().closed_abandoned == 0 {
        assert!(std::time::Instant::now() < until, "{:?}", pool.stats());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Dropped with its transaction open (and a lock held), the session is closed at once: the
/// lock is free within a second. It used to stay held until the housekeeper's next look at
/// the idle connection, 30 s later.
#[tokio::test]
async fn a_dropped_transactions_lock_is_free_within_a_second() {
    let (pg, pool) = pool_with("CREATE TABLE t (id int)").await;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(500),
        pool.retry_transaction(|tx| async move {
            tx.batch_execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
                .await?;
            // Client-side work: the server is idle in the transaction, holding the lock.
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }),
    )
    .await;
    assert!(cancelled.is_err(), "the work was still running");

    // Another pool: a checkout from the first would make it look at the abandoned connection.
    let other = app_pool(&pg).build().unwrap();
    let other = other.get().await.unwrap();
    let started = std::time::Instant::now();
    other
        .batch_execute(
            "SET lock_timeout = '1500ms'; BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; COMMIT",
        )
        .await
        .expect("the abandoned transaction's lock was released");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

fn through_stalling_proxy(
    pg: &LocalPostgres,
    proxy: &FaultProxy,
    command_timeout: Duration,
) -> Pool {
    app_pool(pg)
        .port(proxy.port())
        .retry(
            RetryPolicy::default()
                .command_timeout(command_timeout)
                .deadline(Duration::from_secs(1)),
        )
        .build()
        .unwrap()
}

/// A `COMMIT` that gets no answer (a server or proxy that stalls): `CommitOutcomeUnknown`
/// within the command timeout, not run again, and no write half-applied.
#[tokio::test]
async fn a_stalled_commit_is_commit_outcome_unknown_within_its_timeout() {
    let (pg, direct) = pool_with("CREATE TABLE t (id int)").await;
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    // BEGIN and the insert go through; COMMIT, the third simple query, is swallowed.
    proxy.set_fault(NetworkFault::StallQuery(3));
    let pool = through_stalling_proxy(&pg, &proxy, Duration::from_millis(500));

    let runs = AtomicU32::new(0);
    let runs_ref = &runs;
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        pool.retry_transaction(|tx| async move {
            runs_ref.fetch_add(1, Ordering::Relaxed);
            tx.batch_execute("INSERT INTO t VALUES (1)").await?;
            Ok(())
        }),
    )
    .await
    .expect("bounded by the command timeout")
    .unwrap_err();

    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(runs.into_inner(), 1, "not run again");
    assert!(matches!(err, Error::CommitOutcomeUnknown { .. }), "{err:?}");
    assert!(!err.is_transient());
    let timed_out = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<StatementTimedOut>())
        .expect("the cause is the timeout");
    assert_eq!(timed_out.statement(), "COMMIT");
    // The session was closed; the server rolled the unacknowledged insert back.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rows(&direct, "t").await != 0 || stuck_sessions(&pg).await > 0 {
        assert!(std::time::Instant::now() < deadline, "the session lingers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stuck_sessions(pg: &LocalPostgres) -> i64 {
    pg.admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A `BEGIN` that gets no answer is like a lost connection: retried on a new one until the
/// deadline, then a transient `Error::Transaction` naming the timeout.
#[tokio::test]
async fn a_stalled_begin_is_retried_then_reported_transient() {
    let (pg, _direct) = pool_with("CREATE TABLE t (id int)").await;
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    proxy.set_fault(NetworkFault::StallQuery(1));
    let pool = through_stalling_proxy(&pg, &proxy, Duration::from_millis(300));
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        pool.retry_transaction(|tx| async move {
            tx.batch_execute("INSERT INTO t VALUES (1)").await?;
            Ok(())
        }),
    )
    .await
    .expect("bounded by the deadline")
    .unwrap_err();
    match &err {
        Error::Transaction {
            attempts, source, ..
        } => {
            assert!(*attempts >= 2, "{err:?}");
            assert!(source.is::<StatementTimedOut>(), "{err:?}");
        }
        other => panic!("expected Error::Transaction, got {other:?}"),
    }
    assert!(err.is_transient());
}
