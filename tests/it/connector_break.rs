//! An outside attempt to break the `Connector` seam (`Pool::connector()`): bounds, state
//! after close, shared token mint and discovery, dropped futures and drivers, NOTIFY by hand,
//! suspend and wake, secrets in errors.
//!
//! Tests marked "Observed / Should" failed on the code they were written against (a look-up
//! that never answers was unbounded; a closed pool still opened sessions); the code now does
//! what "Should" says.

use std::time::{Duration, Instant};

use lakebase_pool::{CachePolicy, Error, RetryPolicy, Session};
use lakebase_pool_testing::{FaultProxy, LocalLakebase, LocalPostgres, NetworkFault};
use tokio_postgres::AsyncMessage;

use crate::cancel::poll_once_then_drop;
use crate::support::{LogCapture, ROLE, app_pool, chain, cluster};

/// Every test is bounded.
const BOUND: Duration = Duration::from_secs(30);

/// The endpoint's get-endpoint path on the mock workspace (host discovery).
const GET_ENDPOINT: &str = "/api/2.0/postgres/projects/local/branches/main/endpoints/ep-local";
const CREDENTIALS: &str = "/api/2.0/postgres/credentials";
const ME: &str = "/api/2.0/preview/scim/v2/Me";

/// Sessions `user` has open on `pg`.
async fn sessions_of(pg: &LocalPostgres, user: &str) -> i64 {
    pg.admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits (up to 5 s) for `user`'s sessions on `pg` to fall to `want`; returns the last count.
async fn settle_sessions(pg: &LocalPostgres, user: &str, want: i64) -> i64 {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let n = sessions_of(pg, user).await;
        if n == want || Instant::now() > until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------------

/// 1. A connect is not bounded by the pool's connect bounds when host discovery hangs.
///
/// The pool bounds a connection's opening with deadpool's `create_timeout` (retry deadline +
/// connect timeout + 2 x mint timeout: here 1 + 1 + 2 = 4 s, src/pool/endpoint.rs
/// `create_bound`), because discovery (`TargetSource::complete`) runs under no bound of the
/// connect path: only the workspace HTTP client's (30 s per request, retried within a 60 s
/// budget). `Connector::connect` (src/connector.rs `connect`) awaits `connect::Connector::
/// connect` bare, so it has no such backstop.
///
/// Observed: `pool.get()` fails with `ConnectTimeout` after ~4 s; `connector.connect()` with
/// the same settings is still pending after 12 s (it ends only when the HTTP retry budget,
/// up to 60 s, runs out).
/// Should: the connector bounds its connect as the pool does (the same `create_bound`, or
/// discovery under the retry deadline), and says so in its docs (`Error::ConnectTimeout`).
#[tokio::test]
async fn a_connect_is_bounded_when_discovery_hangs() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .retry(
            RetryPolicy::default()
                .deadline(Duration::from_secs(1))
                .connect_timeout(Duration::from_secs(1)),
        )
        .cache_policy(CachePolicy::default().mint_timeout(Duration::from_secs(1)))
        .build()
        .unwrap();
    lakebase.workspace().inject(
        lakebase_pool_testing::Fault::hang()
            .on(GET_ENDPOINT)
            .for_method("GET")
            .times(1_000),
    );

    // The pool's own checkout: bounded by its create timeout.
    let started = Instant::now();
    let checkout = tokio::time::timeout(Duration::from_secs(12), pool.get()).await;
    let pool_took = started.elapsed();
    assert!(
        matches!(checkout, Ok(Err(_))),
        "control: pool.get() should fail within its create bound"
    );

    let started = Instant::now();
    let connect = tokio::time::timeout(Duration::from_secs(12), pool.connector().connect()).await;
    assert!(
        connect.is_ok(),
        "connector.connect() still pending after {:?} while discovery hangs \
         (pool.get() with the same settings gave up after {pool_took:?})",
        started.elapsed()
    );
}

/// 2. A closed (or shut down) pool still opens sessions through its connector.
///
/// `Pool::close` documents "every later get fails with PoolClosed"; `Pool::listener` refuses
/// a closed pool ("A closed pool opens no session, for a listener either", src/listener.rs);
/// `shutdown` exists so "that the server sees clean disconnects". `Connector::connect`
/// (src/connector.rs `connect`, and `Pool::connector` in src/pool/mod.rs) checks nothing:
/// it logs in after `close()` and after `shutdown()`, minting tokens for a pool that is gone,
/// and nothing in the docs (README "A session outside the pool", rustdoc) says so.
///
/// Observed: `Ok(Session)` after `close()` and after `shutdown()`, a session of the role
/// open on the server.
/// Should: `Error::PoolClosed` (as `get` and `listener`), or the behaviour documented.
#[tokio::test]
async fn a_closed_pool_opens_no_session_through_its_connector() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg).build().unwrap();
        // Taken before the close, as a long-lived adapter would hold it.
        let connector = pool.connector();
        drop(pool.get().await.unwrap());

        pool.close();
        assert!(matches!(pool.get().await, Err(Error::PoolClosed)));
        assert!(matches!(pool.listener(["x"]).await, Err(Error::PoolClosed)));
        let after_close = connector.connect().await;
        let after_close_fresh = pool.connector().connect().await;
        let _ = pool.shutdown(Duration::from_millis(100)).await;
        let after_shutdown = pool.connector().connect().await;
        let open = sessions_of(&pg, ROLE).await;
        let shown = |r: &Result<Session, Error>| match r {
            Ok(_) => "Ok(session)".to_owned(),
            Err(e) => format!("Err({e})"),
        };
        assert!(
            matches!(after_close, Err(Error::PoolClosed))
                && matches!(after_close_fresh, Err(Error::PoolClosed))
                && matches!(after_shutdown, Err(Error::PoolClosed)),
            "after close: {}; fresh connector after close: {}; after shutdown: {}; \
             {open} session(s) of the role open on the server",
            shown(&after_close),
            shown(&after_close_fresh),
            shown(&after_shutdown),
        );
    })
    .await
    .expect("bounded");
}

// ---------------------------------------------------------------------------------------
// Passing: what tests/it/connector.rs does not cover
// ---------------------------------------------------------------------------------------

/// Many connects at once, through the emulator, before the pool has ever connected: one
/// host discovery, one identity look-up, one mint; none of the sessions counted in the
/// pool's size or available; the counters shared.
#[tokio::test]
async fn concurrent_connects_share_one_mint_and_one_discovery() {
    tokio::time::timeout(BOUND, async {
        let lakebase = LocalLakebase::start().await.unwrap();
        lakebase.workspace().set_latency(Duration::from_millis(200));
        let pool = lakebase.pool_builder().unwrap().build().unwrap();
        let connector = pool.connector();
        let connects: Vec<_> = (0..12)
            .map(|_| {
                let connector = connector.clone();
                tokio::spawn(async move { connector.connect().await })
            })
            .collect();
        let mut sessions = Vec::new();
        for connect in connects {
            let session = connect.await.unwrap().unwrap();
            tokio::spawn(session.driver);
            sessions.push(session.client);
        }
        let ws = lakebase.workspace();
        assert_eq!(
            (
                ws.count("GET", GET_ENDPOINT),
                ws.count("GET", ME),
                ws.count("POST", CREDENTIALS)
            ),
            (1, 1, 1),
            "discovery and mint once for 12 concurrent connects"
        );
        let stats = pool.stats();
        assert_eq!(
            (stats.size, stats.available, stats.tokens.minted),
            (0, 0, 1),
            "{stats:?}"
        );
        assert_eq!(stats.connections_opened, 12, "{stats:?}");
        assert_eq!(
            lakebase.emulator().sessions(LocalLakebase::ENDPOINT),
            12,
            "the emulator sees the connector's sessions"
        );
        // The pool's own connection reuses what the connector found and minted.
        drop(pool.get().await.unwrap());
        assert_eq!(ws.count("POST", CREDENTIALS), 1);
        assert_eq!(pool.stats().size, 1);
        drop(sessions);
    })
    .await
    .expect("bounded");
}

/// Callers that give up at every stage of the open (TCP, TLS, login, through a slow
/// network) leave no session on the server and no task behind.
#[tokio::test]
async fn a_connect_dropped_at_any_point_leaves_no_session_and_no_task() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let proxy = FaultProxy::start(pg.addr()).unwrap();
        proxy.set_fault(NetworkFault::Latency(Duration::from_millis(30)));
        let pool = app_pool(&pg).port(proxy.port()).build().unwrap();
        let connector = pool.connector();
        let metrics = tokio::runtime::Handle::current().metrics();
        let tasks_before = metrics.num_alive_tasks();

        poll_once_then_drop(connector.connect()).await;
        for wait in [1, 5, 15, 30, 45, 60, 75, 90, 120, 150, 200, 250] {
            let _ = tokio::time::timeout(Duration::from_millis(wait), connector.connect()).await;
        }
        let left = settle_sessions(&pg, ROLE, 0).await;
        assert_eq!(left, 0, "sessions left on the server by dropped connects");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tasks_after = metrics.num_alive_tasks();
        assert!(
            tasks_after <= tasks_before,
            "tasks left behind by dropped connects: {tasks_before} before, {tasks_after} after"
        );
        let stats = pool.stats();
        assert_eq!((stats.size, stats.available), (0, 0), "{stats:?}");

        proxy.set_fault(NetworkFault::Pass);
        let session = connector.connect().await.unwrap();
        tokio::spawn(session.driver);
        let _ = session.client.simple_query("SELECT 1").await.unwrap();
    })
    .await
    .expect("bounded");
}

/// The same through the emulator (TLS, SNI routing, a compute waking): no session left
/// upstream, none on the emulator.
#[tokio::test]
async fn a_connect_dropped_midway_through_the_emulator_leaves_nothing_upstream() {
    tokio::time::timeout(BOUND, async {
        let lakebase = LocalLakebase::start().await.unwrap();
        let pool = lakebase.pool_builder().unwrap().build().unwrap();
        let connector = pool.connector();
        drop(connector.connect().await.unwrap());
        lakebase
            .emulator()
            .set_wake_delay(Duration::from_millis(150));
        for wait in [1, 3, 8, 20, 50, 100, 140, 160, 200] {
            lakebase.suspend();
            let _ = tokio::time::timeout(Duration::from_millis(wait), connector.connect()).await;
        }
        let left = settle_sessions(lakebase.postgres(), LocalLakebase::USER, 0).await;
        assert_eq!(left, 0, "upstream sessions left by dropped connects");
        assert_eq!(lakebase.emulator().sessions(LocalLakebase::ENDPOINT), 0);
    })
    .await
    .expect("bounded");
}

/// A driver that is dropped ends the session: the client's next statement fails (no
/// panic, no hang), and the server session goes. A statement queued while the driver was
/// never polled fails when the driver is dropped.
#[tokio::test]
async fn a_dropped_driver_fails_the_client_and_ends_the_server_session() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg).build().unwrap();
        let connector = pool.connector();

        let session = connector.connect().await.unwrap();
        drop(session.driver);
        let result = session.client.simple_query("SELECT 1").await;
        assert!(result.is_err(), "a client without its driver answers");
        assert!(session.client.is_closed());
        assert_eq!(settle_sessions(&pg, ROLE, 0).await, 0);

        // Never polled: the statement waits; dropping the driver then fails it.
        let session = connector.connect().await.unwrap();
        let client = session.client;
        let query = tokio::spawn(async move { client.simple_query("SELECT 1").await.is_err() });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!query.is_finished());
        drop(session.driver);
        let failed = tokio::time::timeout(Duration::from_secs(5), query)
            .await
            .expect("the statement ends once the driver is gone")
            .unwrap();
        assert!(failed);
        assert_eq!(settle_sessions(&pg, ROLE, 0).await, 0);
        assert_eq!(pool.stats().size, 0);
    })
    .await
    .expect("bounded");
}

/// Reads messages off a driver polled by hand until it ends, sending them on.
fn drive_by_hand(
    mut driver: lakebase_pool::SessionDriver,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| driver.poll_message(cx)).await {
                Some(Ok(message)) => {
                    let _ = tx.send(message);
                }
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    });
    (rx, task)
}

/// `poll_message` on a driver polled by hand delivers NOTIFY (LISTEN on the session's
/// client), through the emulator's TLS relay and in plain text alike.
#[tokio::test]
async fn poll_message_delivers_notifications() {
    tokio::time::timeout(BOUND, async {
        let lakebase = LocalLakebase::start().await.unwrap();
        let tls_pool = lakebase.pool_builder().unwrap().build().unwrap();
        let pg = cluster().await;
        let plain_pool = app_pool(&pg).build().unwrap();

        for pool in [&tls_pool, &plain_pool] {
            let session = pool.connector().connect().await.unwrap();
            let (mut messages, task) = drive_by_hand(session.driver);
            session.client.batch_execute("LISTEN jobs").await.unwrap();
            pool.get()
                .await
                .unwrap()
                .batch_execute("NOTIFY jobs, 'job-42'")
                .await
                .unwrap();
            let message = tokio::time::timeout(Duration::from_secs(5), messages.recv())
                .await
                .expect("a notification within 5 s")
                .expect("the driver still runs");
            match message {
                AsyncMessage::Notification(n) => {
                    assert_eq!((n.channel(), n.payload()), ("jobs", "job-42"));
                }
                other => panic!("expected a notification, got {other:?}"),
            }
            drop(session.client);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the hand-polled driver ends with its client")
                .unwrap()
                .unwrap();
        }
    })
    .await
    .expect("bounded");
}

/// A suspend ends the session (its driver returns, its client fails: no hang); the next
/// connect wakes the compute, as the pool's next checkout does.
#[tokio::test]
async fn a_session_ends_at_suspend_and_the_next_connect_wakes_the_compute() {
    tokio::time::timeout(BOUND, async {
        let lakebase = LocalLakebase::start().await.unwrap();
        let pool = lakebase.pool_builder().unwrap().build().unwrap();
        let connector = pool.connector();
        let session = connector.connect().await.unwrap();
        let driver = tokio::spawn(session.driver);
        let _ = session.client.simple_query("SELECT 1").await.unwrap();

        lakebase
            .emulator()
            .set_wake_delay(Duration::from_millis(300));
        lakebase.suspend();
        let ended = tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .expect("the driver ends when the compute suspends")
            .unwrap();
        let _ = ended;
        assert!(session.client.simple_query("SELECT 1").await.is_err());

        let session = connector.connect().await.unwrap();
        tokio::spawn(session.driver);
        let _ = session.client.simple_query("SELECT 1").await.unwrap();
        let stats = pool.stats();
        assert_eq!((stats.size, stats.tokens.minted), (0, 1), "{stats:?}");
        let conn = pool.get().await.unwrap();
        let _ = conn.simple_query("SELECT 1").await.unwrap();
    })
    .await
    .expect("bounded");
}

/// A rejected password: `AuthRejected`, naming the cause and the fix, and the password
/// nowhere in its Display, Debug or chain, nor in the logs.
#[tokio::test]
async fn a_rejected_login_names_the_fix_and_no_secret() {
    const WRONG: &str = "wrong-S3cr3t-password-9f2c";
    let (logs, _guard) = LogCapture::install();
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = pg.pool_builder(ROLE).password(WRONG).build().unwrap();
        let connector = pool.connector();
        let error = connector.connect().await.expect_err("a wrong password");
        assert!(matches!(error, Error::AuthRejected { .. }), "{error:?}");
        let text = format!("{error} | {error:?} | {} | {connector:?}", chain(&error));
        assert!(!text.contains(WRONG), "{text}");
        assert!(text.contains("the role exists"), "{text}");
        assert!(!logs.text().contains(WRONG), "the password in the logs");
        assert_eq!(settle_sessions(&pg, ROLE, 0).await, 0);
    })
    .await
    .expect("bounded");
}

/// A server that accepts TCP and never answers: the connect ends with
/// `ConnectRetriesExhausted` within deadline + one attempt, and its text names the setting.
#[tokio::test]
async fn a_blackholed_server_ends_the_connect_within_the_deadline() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let proxy = FaultProxy::start(pg.addr()).unwrap();
        proxy.set_fault(NetworkFault::Blackhole);
        let pool = app_pool(&pg)
            .port(proxy.port())
            .retry(
                RetryPolicy::default()
                    .deadline(Duration::from_secs(1))
                    .connect_timeout(Duration::from_millis(500)),
            )
            .build()
            .unwrap();
        let started = Instant::now();
        let error = pool.connector().connect().await.expect_err("no answer");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(error, Error::ConnectRetriesExhausted { .. }),
            "{error:?}"
        );
        let text = chain(&error);
        assert!(
            text.contains("RetryPolicy::deadline") && text.contains("connect_timeout"),
            "{text}"
        );
    })
    .await
    .expect("bounded");
}

/// A token mint that never answers: the connect ends at the mint timeout with
/// `Error::Credentials`, not at the HTTP client's 30 s.
#[tokio::test]
async fn a_connect_is_bounded_when_the_mint_hangs() {
    tokio::time::timeout(BOUND, async {
        let lakebase = LocalLakebase::start().await.unwrap();
        let pool = lakebase
            .pool_builder()
            .unwrap()
            .cache_policy(CachePolicy::default().mint_timeout(Duration::from_secs(1)))
            .build()
            .unwrap();
        lakebase.workspace().inject(
            lakebase_pool_testing::Fault::hang()
                .on(CREDENTIALS)
                .for_method("POST")
                .times(1_000),
        );
        let started = Instant::now();
        let error = pool.connector().connect().await.expect_err("no token");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(error, Error::Credentials { .. }), "{error:?}");
        assert_eq!(pool.stats().size, 0);
    })
    .await
    .expect("bounded");
}
