//! The server is down or restarting: checkouts retry within the deadline, then give up clearly.

use std::time::Duration;

use lakebase_pool::{Error, RetryPolicy};
use lakebase_pool_testing::StopMode;

use crate::support::{LogCapture, app_pool, cluster};

#[tokio::test]
async fn checkout_waits_out_a_server_restart_with_logged_retries() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let (logs, _guard) = LogCapture::install();

    pg.stop(StopMode::Fast).unwrap();
    let checkout = tokio::spawn({
        let pool = pool.clone();
        async move {
            let conn = pool.get().await?;
            conn.simple_query("SELECT 1").await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!checkout.is_finished(), "the checkout is still retrying");
    let restarter = pg.clone();
    tokio::task::spawn_blocking(move || restarter.resume())
        .await
        .unwrap()
        .unwrap();
    checkout
        .await
        .unwrap()
        .expect("checkout succeeds once the server is back");

    let stats = pool.stats();
    assert!(stats.connect_retries_transient >= 2, "{stats:?}");
    assert_eq!(stats.connections_opened, 1);
    let retries = logs.count("connect failed with a transient error; retrying");
    assert_eq!(
        retries as u64,
        stats.connect_retries_transient,
        "{}",
        logs.text()
    );
    let text = logs.text();
    assert!(
        text.contains("attempt=1") && text.contains("delay_ms="),
        "{text}"
    );
    assert!(
        text.contains("Connection refused"),
        "the cause is logged: {text}"
    );
}

#[tokio::test]
async fn checkout_gives_up_after_the_deadline_naming_attempts_and_cause() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .retry(RetryPolicy::default().deadline(Duration::from_secs(2)))
        .build()
        .unwrap();
    pg.stop(StopMode::Immediate).unwrap();

    let started = tokio::time::Instant::now();
    let err = pool.get().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "bounded by the deadline: {elapsed:?}"
    );
    let Error::ConnectRetriesExhausted {
        attempts,
        ref target,
        ..
    } = err
    else {
        panic!("unexpected error {err:?}");
    };
    assert!(attempts >= 3, "{attempts} attempts");
    assert_eq!(target, &format!("app@127.0.0.1:{}/app", pg.port()));
    assert!(
        err.to_string().starts_with(&format!(
            "gave up connecting to app@127.0.0.1:{}/app after {attempts} attempts in",
            pg.port()
        )),
        "{err}"
    );
    assert!(err.is_transient());
    // The last attempt's error is the source: connection refused (the plain-text socket is
    // the pool's own, so the I/O error comes first-hand).
    let source = std::error::Error::source(&err).unwrap();
    let io = source.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn no_retry_policy_fails_after_one_attempt() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .retry(RetryPolicy::no_retry())
        .build()
        .unwrap();
    pg.stop(StopMode::Fast).unwrap();
    match pool.get().await.unwrap_err() {
        Error::ConnectRetriesExhausted { attempts, .. } => assert_eq!(attempts, 1),
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn wrong_database_fails_at_once_without_retries() {
    let pg = cluster().await;
    let pool = app_pool(&pg).dbname("no_such_database").build().unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(pool.stats().connect_retries_transient, 0);
    let code = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.code().cloned());
    assert_eq!(
        code,
        Some(tokio_postgres::error::SqlState::INVALID_CATALOG_NAME)
    );
}

/// Checkouts waiting out a long backoff while the server is down go again as soon as one of
/// them gets through, instead of each sleeping out its own random wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_connection_to_open_cuts_short_the_backoff_of_the_others() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .max_size(4)
        .retry(
            RetryPolicy::default()
                // Every wait is random in 0-6 s: without the wake-up, four checkouts would
                // finish seconds apart.
                .backoff(Duration::from_secs(6), Duration::from_secs(6))
                .deadline(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    pg.stop(StopMode::Fast).unwrap();
    let checkouts: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let conn = pool.get().await.unwrap();
                let done = std::time::Instant::now();
                (conn, done)
            })
        })
        .collect();
    // Let every checkout fail once and start a long wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarter = pg.clone();
    tokio::task::spawn_blocking(move || restarter.resume())
        .await
        .unwrap()
        .unwrap();

    let mut finished = Vec::new();
    for checkout in checkouts {
        let (conn, done) = tokio::time::timeout(Duration::from_secs(20), checkout)
            .await
            .expect("every checkout ends")
            .unwrap();
        finished.push(done);
        drop(conn);
    }
    let first = finished.iter().min().unwrap();
    let last = finished.iter().max().unwrap();
    assert!(
        *last - *first < Duration::from_millis(1500),
        "the others followed the first within {:?}",
        *last - *first
    );
}
