//! An outside attempt to break cancellation: each test reproduced a defect of the first
//! version (its comment says what went wrong, and "Should" what it now holds the code to).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lakebase_pool::Pool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cancel::{poll_once_then_drop, sleeping};
use crate::support::{app_pool, backend_pid, cluster};

/// Every test is bounded.
const BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// 1. COPY FROM STDIN leaves the session "in flight" for ever.
//
// tokio-postgres's copy_in sends Bind/Execute/Sync, then CopyDone/Sync. The server ignores
// a Sync received in copy-in mode (copyfromparse.c: "Ignore Flush/Sync for the convenience
// of client libraries"), so two Syncs get one ReadyForQuery. activity.rs counts both Syncs
// (`b'S' => take(work)`, with CopyData/CopyDone counted as work), so `sent` stays one
// ahead of `ready` for the rest of the session.
// ---------------------------------------------------------------------------------------

/// Should: a finished COPY leaves nothing in flight; the connection goes back to the pool
/// and is reused (same backend). Does: on return the session is taken for one with an
/// abandoned statement (Connection::drop -> cancel::abandon) and the healthy session is
/// closed; with the `expected` queue now misaligned, the ReadyForQuery of a later
/// Close/Sync "settles" it within the grace period, so it is closed silently (no
/// `closed_abandoned`, no `retired_*`), and later settle/in-flight answers are wrong.
#[tokio::test]
async fn a_finished_copy_in_is_not_taken_for_an_abandoned_statement() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg).max_size(1).build().unwrap();
        let conn = pool.get().await.unwrap();
        conn.batch_execute("CREATE TABLE t (x int)").await.unwrap();
        let pid = backend_pid(&conn).await;
        let sink = conn
            .copy_in::<_, &'static [u8]>("COPY t FROM STDIN")
            .await
            .unwrap();
        tokio::pin!(sink);
        assert_eq!(sink.as_mut().finish().await.unwrap(), 0);
        // The session is perfectly usable afterwards.
        let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        drop(conn);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let conn = pool.get().await.unwrap();
        let again = backend_pid(&conn).await;
        let stats = pool.stats();
        assert_eq!(
            (
                again,
                stats.cancels_sent + stats.cancels_failed,
                stats.closed_abandoned
            ),
            (pid, 0, 0),
            "a COPY that finished cost a cancel and the connection: {stats:?}"
        );
    })
    .await
    .expect("bounded");
}

// ---------------------------------------------------------------------------------------
// 2. A CancelHandle outlives its checkout.
// ---------------------------------------------------------------------------------------

/// Should: a cancel never hits another caller's statement; a handle taken during one
/// checkout does nothing (or fails) once the connection was returned. Does: the handle
/// keeps the session's backend key and cancels whatever the next caller runs on it
/// (src/pool/cancel.rs `cancel_handle`/`CancelHandle::cancel`: no tie to the checkout).
#[tokio::test]
async fn a_cancel_handle_of_a_returned_connection_cancels_nothing() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg).max_size(1).build().unwrap();
        let conn = pool.get().await.unwrap();
        let handle = conn.cancel_handle();
        drop(conn); // the first caller is done

        let next = pool.get().await.unwrap(); // another caller, same session
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            handle.cancel().await
        });
        let result = next.query("SELECT pg_sleep(1)", &[]).await;
        let _ = late.await;
        assert!(
            result.is_ok(),
            "another caller's stale CancelHandle cancelled this statement: {result:?}"
        );
    })
    .await
    .expect("bounded");
}

// ---------------------------------------------------------------------------------------
// 3. A statement future dropped after it handed its request to the driver, before the
//    driver wrote it.
//
// `in_flight()` counts bytes written to the socket. A request still in tokio-postgres's
// channel is invisible: Connection::drop (src/pool/mod.rs) returns the connection to the
// pool as idle; then the driver writes the statement. Either the next caller gets a
// session busy with it (and waits behind it), or recycle/housekeeping retire it as
// `Broken` (src/pool/lifecycle.rs retire_reason) without any cancel, leaving the statement
// running on the server.
// ---------------------------------------------------------------------------------------

/// The same statement, written by the driver while the connection sits idle in the pool:
/// the next checkout's recycle retired the session as "broken" and closed it without a
/// cancel, so the statement kept running on the server. Should: cancelled (as the
/// feature claims for every abandoned statement), counted in `cancels_sent`. (It is now
/// found and cancelled by the watcher of the connection's return, before any checkout:
/// `cancel_break::a_statement_queued_then_dropped_is_cancelled_without_another_checkout`.)
#[tokio::test]
async fn an_idle_connection_found_busy_is_cancelled_then_closed() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg).max_size(1).build().unwrap();
        let conn = pool.get().await.unwrap();
        let statement = conn.prepare("SELECT pg_sleep(6)").await.unwrap();
        poll_once_then_drop(conn.query(&statement, &[])).await;
        drop(statement);
        drop(conn);
        // The driver now writes the statement; the connection is idle in the pool.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The next checkout does not get that session.
        let next = pool.get().await.unwrap();
        let one: i32 = next.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
        drop(next);
        assert_eq!(pool.stats().cancels_sent, 1, "{:?}", pool.stats());
        let until = Instant::now() + Duration::from_secs(3);
        while sleeping(&pg).await > 0 {
            assert!(
                Instant::now() < until,
                "the abandoned statement still runs 3 s after its session was retired, \
                 uncancelled: {:?}",
                pool.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("bounded");
}

// ---------------------------------------------------------------------------------------
// 4. Connection::timeout keeps a connection whose cancel may still be on its way.
//
// REFERENCE 13a: the Lakebase proxy accepts a CancelRequest and passes it on through its
// shared store; the statement ended ~1 s later. The client's cancel returns once the proxy
// has the request, not once the compute acted on it. If the statement ends on its own in
// between, `settled()` is true, the connection is kept (cancel.rs `timeout`), and the cancel
// lands later on whatever runs then: another caller's statement.
// ---------------------------------------------------------------------------------------

/// A plain-text relay in front of `upstream` that, like the proxy, accepts a cancel request,
/// closes it at once, and delivers it `delay` later.
async fn delayed_cancel_proxy(upstream: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            drop(tokio::spawn(async move {
                let mut head = [0u8; 8];
                if client.read_exact(&mut head).await.is_err() {
                    return;
                }
                let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
                if code == 80_877_102 {
                    let mut key = [0u8; 8];
                    if client.read_exact(&mut key).await.is_err() {
                        return;
                    }
                    drop(client);
                    tokio::time::sleep(delay).await;
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = server.write_all(&head).await;
                        let _ = server.write_all(&key).await;
                        let mut rest = Vec::new();
                        let _ = server.read_to_end(&mut rest).await;
                    }
                    return;
                }
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                if server.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }));
        }
    }));
    addr
}

/// Should: after `Connection::timeout` the connection is kept only if no cancel can still
/// arrive; a statement of the next caller is never cancelled. Does: the statement ends on
/// its own just after the limit, the connection is kept as "settled", and the cancel lands
/// on the next caller's statement (57014).
#[tokio::test]
async fn a_connection_a_cancel_was_sent_on_is_never_reused() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let proxy = delayed_cancel_proxy(pg.addr(), Duration::from_millis(400)).await;
        let pool: Pool = app_pool(&pg)
            .host("127.0.0.1")
            .port(proxy.port())
            .max_size(1)
            .build()
            .unwrap();
        let conn = pool.get().await.unwrap();
        let outcome = conn
            .timeout(
                Duration::from_millis(300),
                conn.query("SELECT pg_sleep(0.4)", &[]),
            )
            .await;
        drop(conn);
        let next = pool.get().await.unwrap();
        let result = next.query("SELECT pg_sleep(1)", &[]).await;
        assert!(
            result.is_ok(),
            "the first caller's timeout ({outcome:?}) cancelled the next caller's \
             statement: {result:?}; {:?}",
            pool.stats()
        );
    })
    .await
    .expect("bounded");
}

/// A statement future dropped right after its first poll (its request queued, not yet written
/// by the driver), then the next checkout at once on a current-thread runtime: the checkout
/// lets the driver run first, finds the statement, cancels it and opens a new connection. The
/// next caller is served at once, and the statement does not run on.
#[tokio::test]
async fn a_statement_dropped_before_it_was_written_is_neither_waited_on_nor_left_running() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg).max_size(1).build().unwrap();
        let conn = pool.get().await.unwrap();
        let statement = conn.prepare("SELECT pg_sleep(4)").await.unwrap();
        poll_once_then_drop(conn.query(&statement, &[])).await;
        drop(statement);
        drop(conn);
        let started = Instant::now();
        let next = pool.get().await.unwrap();
        let served =
            tokio::time::timeout(Duration::from_secs(1), next.query_one("SELECT 1", &[])).await;
        assert!(
            served.is_ok(),
            "the next caller waited {:?}",
            started.elapsed()
        );
        drop(next);
        let until = Instant::now() + Duration::from_millis(1500);
        while sleeping(&pg).await > 0 {
            assert!(Instant::now() < until, "still running: {:?}", pool.stats());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(pool.stats().cancels_sent, 1);
    })
    .await
    .expect("bounded");
}

/// The same on a multi-threaded runtime, where the driver runs on another worker: the
/// checkout in the same task, before it yields, found the session idle (its statement queued
/// but not yet written) about two times in three, and the next caller waited behind the
/// statement. Repeated, since a race lost once in a while is what this guards against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_dropped_before_it_was_written_is_found_on_a_multi_threaded_runtime() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg).max_size(1).build().unwrap();
        for round in 0..10 {
            let conn = pool.get().await.unwrap();
            let statement = conn.prepare("SELECT pg_sleep(4)").await.unwrap();
            poll_once_then_drop(conn.query(&statement, &[])).await;
            drop(statement);
            drop(conn);
            let started = Instant::now();
            let next = pool.get().await.unwrap();
            let served =
                tokio::time::timeout(Duration::from_secs(1), next.query_one("SELECT 1", &[])).await;
            assert!(
                served.is_ok(),
                "round {round}: the next caller waited {:?}",
                started.elapsed()
            );
            drop(next);
        }
        let until = Instant::now() + Duration::from_millis(1500);
        while sleeping(&pg).await > 0 {
            assert!(Instant::now() < until, "still running: {:?}", pool.stats());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(pool.stats().cancels_sent, 10, "{:?}", pool.stats());
    })
    .await
    .expect("bounded");
}
