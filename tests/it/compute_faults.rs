//! Compute and control-plane faults as the real Lakebase proxy reports them (REFERENCE 13a):
//! the compute's own refusals relabelled as `XX000` with only their message, and a failed
//! wake as `XX000` `Control plane request failed`. Each is retried within the deadline, so
//! a checkout, and a `retry_transaction`, rides it out.

use std::time::{Duration, Instant};

use lakebase_pool::{Error, RetryPolicy};
use lakebase_pool_testing::LocalLakebase;
use tokio_postgres::error::SqlState;

use crate::support::chain;

/// While the compute starts up, shuts down or is full, the proxy answers with the compute's
/// message as `XX000`: every one of these is retried, and the checkout succeeds.
#[tokio::test]
async fn the_computes_relabelled_refusals_are_retried() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    let texts = [
        "the database system is starting up",
        "the database system is not yet accepting connections",
        "the database system is shutting down",
        "sorry, too many clients already",
        "remaining connection slots are reserved for roles with the SUPERUSER attribute",
    ];
    for text in texts {
        lakebase.emulator().refuse_next(text);
        lakebase.emulator().refuse_next(text);
    }
    for text in texts {
        let conn = pool
            .get()
            .await
            .unwrap_or_else(|e| panic!("{text}: {}", chain(&e)));
        // Hold each, so that the next checkout opens a connection of its own.
        std::mem::forget(conn);
    }
    let stats = pool.stats();
    assert_eq!(
        stats.connect_retries_transient + stats.connect_retries_rate_limited,
        10,
        "{stats:?}"
    );
}

/// The emulator relabels the compute's refusal as the proxy does: a role over its
/// connection limit (53300 at the compute) reaches the client as `XX000` with the message,
/// and is retried as a rate limit until the deadline.
#[tokio::test]
async fn a_refusal_from_the_compute_reaches_the_client_relabelled_and_is_retried() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .retry(
            RetryPolicy::default()
                .backoff(Duration::from_millis(50), Duration::from_millis(200))
                .deadline(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let role = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    pool.close();
    lakebase
        .postgres()
        .admin()
        .await
        .unwrap()
        .batch_execute(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT 0"))
        .await
        .unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .retry(
            RetryPolicy::default()
                .backoff(Duration::from_millis(50), Duration::from_millis(200))
                .deadline(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    let Error::ConnectRetriesExhausted { attempts, .. } = &err else {
        panic!("retried as a rate limit: {err:?}");
    };
    assert!(*attempts > 1);
    // One attempt, to read the refusal itself (a retried one's last attempt may be cut short
    // by the deadline).
    let once = lakebase
        .pool_builder()
        .unwrap()
        .retry(RetryPolicy::no_retry())
        .build()
        .unwrap();
    let err = once.get().await.unwrap_err();
    let Error::ConnectRetriesExhausted { source, .. } = &err else {
        panic!("a rate limit: {err:?}");
    };
    let server = source
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
        .expect("the server's error");
    assert_eq!(
        server.code(),
        &SqlState::INTERNAL_ERROR,
        "relabelled by the proxy"
    );
    assert_eq!(server.severity(), "ERROR");
    assert!(
        server.message().contains("too many connections for role"),
        "{}",
        server.message()
    );
}

/// The control plane cannot wake the suspended compute for two seconds (the proxy answers
/// `Control plane request failed`, from its cache for 30 s in production): checkouts and a
/// `retry_transaction` keep retrying and succeed once it can, with nothing done twice.
#[tokio::test]
async fn a_failed_wake_is_retried_until_the_control_plane_is_back() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE orders (id int PRIMARY KEY)")
        .await
        .unwrap();
    lakebase.suspend();
    lakebase.emulator().fail_wakes_for(Duration::from_secs(2));
    // Let the pool see its sessions end with the suspend.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    pool.retry_transaction(|tx| async move {
        let _ = tx.execute("INSERT INTO orders VALUES (1)", &[]).await?;
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "waited for the wake"
    );
    let count: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    assert!(pool.stats().connect_retries_transient > 0);

    // The disabled-endpoint text keeps its suffix: fatal at once, with its fix.
    lakebase.suspend();
    lakebase
        .emulator()
        .refuse_next("Control plane request failed: endpoint is disabled");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = pool.get().await.unwrap_err();
    assert!(
        matches!(err, Error::Connect { fix: Some(_), .. }),
        "{err:?}"
    );
}
