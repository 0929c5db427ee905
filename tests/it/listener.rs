//! `Listener`: notifications arrive, and keep arriving after the connection is lost.

use std::time::Duration;

use lakebase_pool::{Error, Listener, ListenerEvent, Pool, RetryPolicy};
use lakebase_pool_testing::{FaultProxy, LocalPostgres, NetworkFault, StopMode};

use crate::support::{ROLE, app_pool, cluster, server_sessions};

/// The next event, or a panic naming what was awaited after 15 s.
async fn next(listener: &mut Listener, waiting_for: &str) -> ListenerEvent {
    tokio::time::timeout(Duration::from_secs(15), listener.recv())
        .await
        .unwrap_or_else(|_| panic!("no event within 15 s while waiting for {waiting_for}"))
        .expect("the listener runs while it exists")
}

async fn notify(pool: &Pool, channel: &str, payload: &str) {
    pool.get()
        .await
        .unwrap()
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await
        .unwrap();
}

async fn expect_notification(listener: &mut Listener, channel: &str, payload: &str) {
    match next(listener, payload).await {
        ListenerEvent::Notification(n) => {
            assert_eq!((n.channel(), n.payload()), (channel, payload));
        }
        other => panic!("expected the notification {payload:?}, got {other:?}"),
    }
}

async fn listener_sessions(pg: &LocalPostgres) -> i64 {
    pg.admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND query LIKE 'LISTEN%'",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn notifications_on_every_channel_are_received_in_order() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let mut listener = pool.listener(["jobs", "Audit Log"]).await.unwrap();
    assert_eq!(listener.channels(), ["jobs", "Audit Log"]);

    notify(&pool, "jobs", "1").await;
    notify(&pool, "Audit Log", "2").await;
    notify(&pool, "ignored", "3").await;
    notify(&pool, "jobs", "4").await;
    expect_notification(&mut listener, "jobs", "1").await;
    expect_notification(&mut listener, "Audit Log", "2").await;
    expect_notification(&mut listener, "jobs", "4").await;
    // The listener's session is not one of the pool's.
    assert_eq!(pool.stats().size, 1);
}

#[tokio::test]
async fn a_terminated_session_is_reported_reopened_and_listens_again() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let mut listener = pool.listener(["jobs"]).await.unwrap();
    notify(&pool, "jobs", "before").await;
    expect_notification(&mut listener, "jobs", "before").await;

    assert!(pg.terminate_sessions(ROLE).await.unwrap() >= 1);
    match next(&mut listener, "the disconnect").await {
        ListenerEvent::Disconnected(Error::ConnectionLost { source, .. }) => {
            let source = source.expect("the server said why");
            assert_eq!(
                source.code(),
                Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN)
            );
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    match next(&mut listener, "the reconnect").await {
        ListenerEvent::Reconnected { downtime } => assert!(downtime < Duration::from_secs(10)),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    notify(&pool, "jobs", "after").await;
    expect_notification(&mut listener, "jobs", "after").await;
}

#[tokio::test]
async fn a_server_down_past_the_deadline_reports_failed_rounds_then_recovers() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .retry(RetryPolicy::default().deadline(Duration::from_millis(500)))
        .build()
        .unwrap();
    let mut listener = pool.listener(["jobs"]).await.unwrap();

    pg.stop(StopMode::Immediate).unwrap();
    assert!(matches!(
        next(&mut listener, "the disconnect").await,
        ListenerEvent::Disconnected(_)
    ));
    match next(&mut listener, "a failed reconnect round").await {
        ListenerEvent::ReconnectFailed(err) => assert!(err.is_transient(), "{err:?}"),
        other => panic!("expected ReconnectFailed, got {other:?}"),
    }
    let restarter = pg.clone();
    tokio::task::spawn_blocking(move || restarter.resume())
        .await
        .unwrap()
        .unwrap();
    loop {
        match next(&mut listener, "the reconnect").await {
            ListenerEvent::ReconnectFailed(_) => continue,
            ListenerEvent::Reconnected { .. } => break,
            other => panic!("expected Reconnected, got {other:?}"),
        }
    }
    notify(&pool, "jobs", "after restart").await;
    expect_notification(&mut listener, "jobs", "after restart").await;
}

#[tokio::test]
async fn dropping_the_listener_closes_its_connection() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let listener = pool.listener(["jobs"]).await.unwrap();
    assert_eq!(listener_sessions(&pg).await, 1);
    drop(listener);
    let mut sessions = 1;
    for _ in 0..100 {
        sessions = listener_sessions(&pg).await;
        if sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sessions, 0);
}

#[tokio::test]
async fn invalid_channel_names_are_refused_before_connecting() {
    let pool = lakebase_pool::Pool::builder()
        .host("127.0.0.1")
        .port(1)
        .user("nobody")
        .password("unused")
        .build()
        .unwrap();
    let err = pool.listener([""; 1]).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                setting: "channels",
                ..
            }
        ),
        "{err}"
    );
}

/// `LISTEN` that gets no answer (a server or proxy that stalls after login): the first open
/// fails within the command timeout, and on a reconnect it is a failed round, reported as
/// `ReconnectFailed`, after which the listener recovers.
#[tokio::test]
async fn a_stalled_listen_fails_the_open_and_is_a_failed_round_on_reconnect() {
    let pg = cluster().await;
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    let pool = app_pool(&pg)
        .port(proxy.port())
        .retry(
            RetryPolicy::default()
                .command_timeout(Duration::from_millis(300))
                .deadline(Duration::from_millis(500)),
        )
        .build()
        .unwrap();

    proxy.set_fault(NetworkFault::StallQuery(1));
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), pool.listener(["jobs"]))
        .await
        .expect("bounded by the command timeout")
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(err, Error::Listen { .. }), "{err:?}");
    assert!(
        crate::support::chain(&err).contains("`LISTEN` got no answer"),
        "{err}"
    );

    proxy.set_fault(NetworkFault::Pass);
    let mut listener = pool.listener(["jobs"]).await.unwrap();
    proxy.set_fault(NetworkFault::StallQuery(1));
    proxy.reset_connections();
    assert!(matches!(
        next(&mut listener, "the loss").await,
        ListenerEvent::Disconnected(_)
    ));
    match next(&mut listener, "a failed round").await {
        ListenerEvent::ReconnectFailed(Error::Listen { .. }) => {}
        other => panic!("expected ReconnectFailed(Listen), got {other:?}"),
    }
    proxy.set_fault(NetworkFault::Pass);
    loop {
        match next(&mut listener, "the reconnect").await {
            ListenerEvent::Reconnected { .. } => break,
            ListenerEvent::ReconnectFailed(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A listener shares the pool's settings and tokens but not the pool: dropping every pool
/// handle closes the pool's connections while the listener goes on receiving.
#[tokio::test]
async fn a_listener_does_not_keep_its_pool_alive() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    drop(pool.get().await.unwrap());
    let mut listener = pool.listener(["jobs"]).await.unwrap();
    drop(pool);

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server_sessions(&pg).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool's idle connection outlived the pool"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = app_pool(&pg).build().unwrap();
    notify(&other, "jobs", "after the pool").await;
    expect_notification(&mut listener, "jobs", "after the pool").await;
}
