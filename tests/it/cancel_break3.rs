//! A third outside attempt to break cancel-on-drop, after f326953 (the watcher of a returned
//! connection, a lease per checkout and per return, `writing`, the `ROLLBACK` of a dropped
//! transaction, the cancels of a forced shutdown). Tests 1 to 4 and 7 failed on f326953 (7 in 2
//! runs of 5; each comment says what went wrong, "Observed", and what "Should" hold, which
//! the code now does; 7 says what was decided instead); 5 and 6 passed at once and cover
//! what no other test does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::Pool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cancel::{busy, poll_once_then_drop, sleep_ends_within, sleeping};
use crate::support::{ROLE, app_pool, backend_pid, cluster};

/// Every test is bounded.
const BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// 1. A COPY FROM STDIN whose sink outlives its connection guard is handed to the next caller.
//
// `copy_in` returns a `CopyInSink` that does not borrow the connection, so
// `let sink = { let conn = pool.get().await?; conn.copy_in(..).await? };` is ordinary code:
// the connection is returned while the server is in copy-in mode.
// Observed: `Watched::poll_read` takes the `Sync` sent with the COPY back at the server's
// CopyInResponse (src/activity.rs:370-377, `sent.fetch_sub`), and no `CopyData` has been
// written yet (`writing` is false), so `in_flight()` is false: `Drop for Connection`
// (src/pool/connection.rs:178) returns it as idle and `recycle` hands it to the next caller.
// The next caller's `SELECT 1` is written into the COPY: the server fails the copy with
// "unexpected message type 0x50 during COPY from stdin", whose ErrorResponse and
// ReadyForQuery go to the copy's response queue, and the next caller's query gets no answer
// at all (it waits for ever, here 3 s until the test gives up). 3 runs of 3.
// Should: a session in copy-in mode is in flight until the copy's own ReadyForQuery (the one
// after CopyDone/CopyFail + Sync); the next caller gets another connection at once.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn a_copy_in_sink_kept_after_its_connection_is_returned_is_not_handed_on() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg).max_size(2).build().unwrap();
        pool.get()
            .await
            .unwrap()
            .batch_execute("CREATE TABLE t (x int)")
            .await
            .unwrap();
        let (sink, pid) = {
            let conn = pool.get().await.unwrap();
            let pid = backend_pid(&conn).await;
            let sink = conn
                .copy_in::<_, &'static [u8]>("COPY t FROM STDIN")
                .await
                .unwrap();
            (sink, pid)
            // `conn` is returned here; the copy goes on through `sink`.
        };
        let next = pool.get().await.unwrap();
        let next_pid = backend_pid_within(&next, Duration::from_secs(3)).await;
        let answer =
            tokio::time::timeout(Duration::from_secs(3), next.query_one("SELECT 42", &[])).await;
        drop(next);
        drop(sink);
        assert!(
            matches!(&answer, Ok(Ok(row)) if row.get::<_, i32>(0) == 42) && next_pid != Some(pid),
            "the next caller got the session in copy-in mode (pid {pid}, its pid {next_pid:?}): \
             {answer:?}; {:?}",
            pool.stats()
        );
    })
    .await
    .expect("bounded");
}

/// The server process id behind a connection, or `None` if it does not answer within `within`.
async fn backend_pid_within(conn: &lakebase_pool::Connection, within: Duration) -> Option<i32> {
    match tokio::time::timeout(within, conn.query_one("SELECT pg_backend_pid()", &[])).await {
        Ok(Ok(row)) => Some(row.get(0)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// 2. Finished work whose last message comes before its ReadyForQuery loses its connection.
//
// tokio-postgres 0.7.18 ends a query at ReadyForQuery, but `prepare`/`prepare_cached` at
// RowDescription/NoData (prepare.rs:82), a `copy_out` stream at CopyDone (copy_out.rs:53) and
// `CopyInSink::finish` at CommandComplete (copy_in.rs:113): their futures end before the
// ReadyForQuery is read whenever it arrives in a read of its own (a TCP segment or TLS record
// boundary, a proxy forwarding what it has read; the relay below puts it 2 ms later).
// Observed (3 runs of 3; every one of prepare-only, finished copy_in, consumed copy_out; a
// plain query keeps its connection): `Drop for Connection` (src/pool/connection.rs:178) sees
// `in_flight()`, `cancel::abandon` takes the connection out of the pool, the statement settles
// within the grace, and `abandon` returns and drops it (src/pool/cancel.rs:115-120): the
// healthy session is closed, and counted nowhere (`closed_abandoned`, `retired_*`,
// `cancels_*` all 0; only `connections_opened` grows: 4 for 3 operations + the first).
// Should: a connection whose statement settles within the grace goes back to the pool (or
// at least the close is counted); only one whose statement does not end is abandoned.
// ---------------------------------------------------------------------------------------

/// A relay in front of `upstream` that delivers each backend `ReadyForQuery` in a write of
/// its own, `gap` after what precedes it (a segment boundary on a real network). The
/// client's `SSLRequest` answer, if any, is passed on as is.
async fn split_ready_relay(upstream: SocketAddr, gap: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            drop(tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                // The first frontend packet: an SSLRequest gets a one-byte answer.
                let mut first = [0_u8; 8];
                if client_read.read_exact(&mut first).await.is_err() {
                    return;
                }
                let ssl_request = first == [0, 0, 0, 8, 4, 210, 22, 47];
                if server_write.write_all(&first).await.is_err() {
                    return;
                }
                if ssl_request {
                    let mut answer = [0_u8; 1];
                    if server_read.read_exact(&mut answer).await.is_err()
                        || client_write.write_all(&answer).await.is_err()
                    {
                        return;
                    }
                }
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    let _ = server_write.shutdown().await;
                });
                // Backend messages: a header is 5 bytes, the length counts itself.
                let mut pending: Vec<u8> = Vec::new();
                let mut chunk = vec![0_u8; 64 * 1024];
                'relay: loop {
                    let n = match server_read.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&chunk[..n]);
                    let mut at = 0;
                    while pending.len() - at >= 5 {
                        let kind = pending[at];
                        let len = u32::from_be_bytes(pending[at + 1..at + 5].try_into().unwrap())
                            as usize;
                        if pending.len() - at < 1 + len {
                            break;
                        }
                        if kind == b'Z' {
                            if at > 0 {
                                if client_write.write_all(&pending[..at]).await.is_err() {
                                    break 'relay;
                                }
                                tokio::time::sleep(gap).await;
                            }
                            if client_write
                                .write_all(&pending[at..at + 1 + len])
                                .await
                                .is_err()
                            {
                                break 'relay;
                            }
                            let _ = pending.drain(..at + 1 + len);
                            at = 0;
                        } else {
                            at += 1 + len;
                        }
                    }
                    // Whole messages before an incomplete one (none of them `Z`) pass on now.
                    if at > 0 {
                        if client_write.write_all(&pending[..at]).await.is_err() {
                            break;
                        }
                        let _ = pending.drain(..at);
                    }
                }
                up.abort();
            }));
        }
    }));
    addr
}

/// What a checkout does before it returns its connection.
#[derive(Debug, Clone, Copy)]
enum Work {
    Query,
    Prepare,
    CopyInFinished,
    CopyOutRead,
}

async fn work(conn: &lakebase_pool::Connection, work: Work, round: i32) {
    match work {
        Work::Query => {
            let row = conn.query_one("SELECT $1::int4", &[&round]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), round);
        }
        Work::Prepare => {
            let _ = conn.prepare_cached("SELECT $1::int4 + 1").await.unwrap();
        }
        Work::CopyInFinished => {
            let sink = conn
                .copy_in::<_, &'static [u8]>("COPY t FROM STDIN")
                .await
                .unwrap();
            let mut sink = Box::pin(sink);
            assert_eq!(sink.as_mut().finish().await.unwrap(), 0);
        }
        Work::CopyOutRead => {
            use futures_core::Stream;
            let stream = conn
                .copy_out("COPY (SELECT g FROM generate_series(1, 3) g) TO STDOUT")
                .await
                .unwrap();
            let mut stream = Box::pin(stream);
            while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
                let _ = chunk.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn finished_work_whose_ready_for_query_comes_apart_keeps_its_connection() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let relay = split_ready_relay(pg.addr(), Duration::from_millis(2)).await;
        let pool: Pool = app_pool(&pg)
            .host("127.0.0.1")
            .port(relay.port())
            .max_size(1)
            .build()
            .unwrap();
        let first = {
            let conn = pool.get().await.unwrap();
            conn.batch_execute("CREATE TABLE t (x int)").await.unwrap();
            backend_pid(&conn).await
        };
        let mut lost = Vec::new();
        for (round, kind) in [
            Work::Query,
            Work::Prepare,
            Work::CopyInFinished,
            Work::CopyOutRead,
        ]
        .into_iter()
        .enumerate()
        {
            let before = {
                let conn = pool.get().await.unwrap();
                backend_pid(&conn).await
            };
            let conn = pool.get().await.unwrap();
            work(&conn, kind, round as i32).await;
            drop(conn);
            tokio::time::sleep(Duration::from_millis(150)).await; // past the grace
            let conn = pool.get().await.unwrap();
            if backend_pid(&conn).await != before {
                lost.push(kind);
            }
        }
        let stats = pool.stats();
        assert!(
            lost.is_empty(),
            "finished work lost its connection: {lost:?} (first backend {first}); {stats:?}"
        );
    })
    .await
    .expect("bounded");
}

// ---------------------------------------------------------------------------------------
// 3. A forced shutdown leaves the read replicas' statements running.
//
// Observed: `Pool::shutdown` (src/pool/mod.rs:323-328) only `close()`s the replica pools
// (replicas.rs:696-700); `Drivers::close_all` runs for the primary's drivers alone
// (endpoint.rs:252-257). A reader still checked out past the grace keeps its session and
// its `pg_sleep(5)` runs to the end after `shutdown` returned (a report on a replica keeps
// the replica's compute busy and its snapshot held); `forced` does not count it either.
// Should: the doc ("waits up to `grace` for the connections in use to be returned ..., then
// closes the connections of any still in use") holds for every endpoint of the pool:
// replica connections still in use are cancelled and closed like the primary's. 3 runs of 3
// (the report says `in_use: 0, forced: 0`, the reader's query returns Ok after 5 s).
// ---------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_shutdown_cancels_the_statements_of_replica_readers_too() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        // The cluster itself serves as a plain-host "replica" (`get_read` does not ask it
        // whether it is in recovery).
        let pool = app_pool(&pg)
            .read_replicas([format!("127.0.0.1:{}", pg.port())])
            .max_size(2)
            .build()
            .unwrap();
        let reader = pool.get_read().await.unwrap();
        let running = tokio::spawn(async move {
            let result = reader.query("SELECT pg_sleep(5)", &[]).await.map(drop);
            drop(reader);
            result
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sleeping(&pg).await, 1);
        assert_eq!(pool.stats().replicas.len(), 1, "served by the replica pool");
        let report = pool.shutdown(Duration::from_millis(100)).await;
        let stopped = tokio::time::timeout(Duration::from_millis(1500), async {
            while sleeping(&pg).await > 0 {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        let result = tokio::time::timeout(Duration::from_secs(6), running)
            .await
            .unwrap()
            .unwrap();
        assert!(
            stopped.is_ok() && result.is_err(),
            "the replica reader's statement ran on after shutdown ({report:?}, its result \
             {result:?}); {:?}",
            pool.stats()
        );
    })
    .await
    .expect("bounded");
}

// ---------------------------------------------------------------------------------------
// 4. Savepoints dropped unfinished, and the transaction around them (an early `?`): the
//    rollbacks tokio-postgres sends unawaited are not abandoned statements.
//
// Observed: the savepoint named `café` (a valid unquoted identifier, and what
// `Transaction::savepoint("café")` sends) and one named `"my point"` (quoted, as its name
// needs) are taken for a statement in flight: `is_dropped_transactions_rollback`
// (src/activity.rs:290-303) accepts only ASCII letters, digits, `_` and `"` after
// `ROLLBACK TO `; the `ROLLBACK TO ...` then counts as a statement, and the next checkout
// (or the watcher of the return) retires the healthy session as abandoned: a cancel is sent
// and the connection closed (3 runs of 3: `cancels_sent: 2, closed_abandoned: 2`).
// Should: any `ROLLBACK TO <name>` tokio-postgres sends for a dropped savepoint keeps its
// connection, as `sp_1` and plain names do.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn dropped_savepoints_of_any_name_keep_their_connection() {
    use lakebase_pool_testing::{FaultProxy, NetworkFault};

    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let proxy = FaultProxy::start(pg.addr()).unwrap();
        proxy.set_fault(NetworkFault::Latency(Duration::from_millis(1)));
        let pool = app_pool(&pg)
            .host("127.0.0.1")
            .port(proxy.addr().port())
            .max_size(1)
            .build()
            .unwrap();
        let mut lost = Vec::new();
        for name in [
            None,
            Some("named"),
            Some("Named_2"),
            Some("café"),
            Some("\"my point\""),
        ] {
            let mut conn = pool.get().await.unwrap();
            let pid = backend_pid(&conn).await;
            {
                let mut tx = conn.transaction().await.unwrap();
                let savepoint = match name {
                    None => tx.transaction().await.unwrap(),
                    Some(name) => tx.savepoint(name).await.unwrap(),
                };
                let _ = savepoint.execute("SELECT 1", &[]).await.unwrap();
                // An early return from the inner block only: the savepoint is rolled back
                // unawaited, the outer transaction goes on and commits.
                drop(savepoint);
                tx.commit().await.unwrap();
            }
            {
                let mut tx = conn.transaction().await.unwrap();
                let savepoint = match name {
                    None => tx.transaction().await.unwrap(),
                    Some(name) => tx.savepoint(name).await.unwrap(),
                };
                let _ = savepoint.execute("SELECT 1", &[]).await.unwrap();
                // Now both are dropped unfinished (an early `?` in the handler).
            }
            drop(conn);
            let next = pool.get().await.unwrap();
            if backend_pid(&next).await != pid {
                lost.push(name.unwrap_or("sp_1 (nested transaction)"));
            }
        }
        let stats = pool.stats();
        assert!(
            lost.is_empty() && stats.cancels_sent + stats.cancels_failed == 0,
            "dropped savepoints lost their connection: {lost:?}; {stats:?}"
        );
    })
    .await
    .expect("bounded");
}

// ---------------------------------------------------------------------------------------
// 5. (passes) A normal workload (nothing given up) on a multi-threaded runtime: no connection is
//    ever closed as abandoned, no cancel is sent, no connection is lost; 6 tasks on a pool
//    of 3, about 1,500 checkouts of queries, executes, committed and early-returned
//    transactions (a nested one too), `prepare_cached` then a query, `batch_execute`, a
//    finished COPY in and a consumed COPY out.
// ---------------------------------------------------------------------------------------
async fn normal_workload(rounds: i32, latency: Option<Duration>) {
    use lakebase_pool_testing::{FaultProxy, NetworkFault};

    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let proxy = FaultProxy::start(pg.addr()).unwrap();
        let mut builder = app_pool(&pg);
        if let Some(latency) = latency {
            proxy.set_fault(NetworkFault::Latency(latency));
            builder = builder.host("127.0.0.1").port(proxy.addr().port());
        }
        let pool = builder
            .max_size(3)
            .wait_timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        pool.get()
            .await
            .unwrap()
            .batch_execute("CREATE TABLE t (x int)")
            .await
            .unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..6_i32 {
            let pool = pool.clone();
            let done = Arc::clone(&done);
            let _ = tasks.spawn(async move {
                let mut rng = fastrand::Rng::with_seed(task as u64 + 17);
                for round in 0..rounds {
                    let value = task * 10_000 + round;
                    let mut conn = pool.get().await.unwrap();
                    match rng.u8(0..8) {
                        0 => {
                            let row = conn.query_one("SELECT $1::int4", &[&value]).await.unwrap();
                            assert_eq!(row.get::<_, i32>(0), value);
                        }
                        1 => {
                            let n = conn.execute("SELECT $1::int4", &[&value]).await.unwrap();
                            assert_eq!(n, 1);
                        }
                        2 => {
                            let tx = conn.transaction().await.unwrap();
                            let row = tx.query_one("SELECT $1::int4", &[&value]).await.unwrap();
                            assert_eq!(row.get::<_, i32>(0), value);
                            tx.commit().await.unwrap();
                        }
                        3 => {
                            // An early return: dropped unfinished.
                            let mut tx = conn.transaction().await.unwrap();
                            let inner = tx.transaction().await.unwrap();
                            let _ = inner.execute("SELECT 1", &[]).await.unwrap();
                        }
                        4 => {
                            let statement =
                                conn.prepare_cached("SELECT $1::int4 + 0").await.unwrap();
                            let row = conn.query_one(&statement, &[&value]).await.unwrap();
                            assert_eq!(row.get::<_, i32>(0), value);
                        }
                        5 => conn.batch_execute("SELECT 1; SELECT 2").await.unwrap(),
                        6 => work(&conn, Work::CopyInFinished, value).await,
                        _ => work(&conn, Work::CopyOutRead, value).await,
                    }
                    drop(conn);
                    let _ = done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // any watcher has acted
        let stats = pool.stats();
        assert_eq!(done.load(Ordering::Relaxed), 6 * rounds as usize);
        assert!(
            stats.closed_abandoned == 0
                && stats.cancels_sent + stats.cancels_failed == 0
                && stats.retired_broken == 0
                && stats.connections_opened <= 3,
            "a normal workload lost connections or sent cancels: {stats:?}"
        );
        assert_eq!(busy(&pg).await, 0);
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_workload_on_many_tasks_closes_nothing_and_cancels_nothing() {
    normal_workload(250, None).await;
}

/// The same a round trip away (1 ms each way, the relay forwarding what it has read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_workload_with_latency_closes_nothing_and_cancels_nothing() {
    normal_workload(60, Some(Duration::from_millis(1))).await;
}

// ---------------------------------------------------------------------------------------
// 6. (passes) Watchers of returns racing with checkouts on other workers, on a pool of one: every
//    return with a statement queued (dropped after one poll, inside a transaction or not)
//    or an unawaited `ROLLBACK` starts a watcher while seven other tasks wait for the one
//    connection. No statement nobody gave up on may fail (57014 above all) or get another's
//    answer; nothing is left running.
// ---------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_racing_checkouts_on_a_pool_of_one_cancel_no_one_else() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg)
            .max_size(1)
            .wait_timeout(Duration::from_secs(25))
            .build()
            .unwrap();
        let completed = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..8_i32 {
            let pool = pool.clone();
            let completed = Arc::clone(&completed);
            let _ = tasks.spawn(async move {
                let mut rng = fastrand::Rng::with_seed(task as u64 * 31 + 5);
                for round in 0..30_i32 {
                    let value = task * 1000 + round;
                    let mut conn = pool.get().await.unwrap();
                    match rng.u8(0..5) {
                        0 => poll_once_then_drop(conn.query("SELECT pg_sleep(2)", &[])).await,
                        1 => {
                            let tx = conn.transaction().await.unwrap();
                            poll_once_then_drop(tx.query("SELECT pg_sleep(2)", &[])).await;
                            // statement queued, then the ROLLBACK behind it
                        }
                        2 => {
                            let tx = conn.transaction().await.unwrap();
                            let _ = tx.execute("SELECT 1", &[]).await.unwrap();
                            // an early return: only the unawaited ROLLBACK
                        }
                        _ => {
                            let row = conn
                                .query_one("SELECT $1::int4 FROM pg_sleep(0.002)", &[&value])
                                .await
                                .unwrap_or_else(|e| {
                                    panic!("task {task} round {round}: a statement nobody gave up on failed: {e:?}")
                                });
                            assert_eq!(row.get::<_, i32>(0), value);
                            let _ = completed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(conn);
                }
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
        sleep_ends_within(
            &pg,
            Duration::from_millis(3000),
            &format!("after the race; {:?}", pool.stats()),
        )
        .await;
        assert!(completed.load(Ordering::Relaxed) > 0);
    })
    .await
    .expect("bounded");
}

// ---------------------------------------------------------------------------------------
// 7. A shutdown with an idle connection, one running a statement, one with an INSERT
//    queued behind a running statement (a pipeline), and a caller waiting for a connection.
//
// Observed (fails 9 of 21 runs, 40 %; the rest of the test passes every time:
// the waiter fails at once, `forced == 2`, no pg_sleep left): the queued INSERT runs and
// commits after the shutdown cut its pipeline off; its caller then gets `Ok(1)` or, worse,
// `Err(Closed)` for a write that was applied. `Drivers::close_all` (src/pool/lifecycle.rs,
// `close_all`) cancels the statement in flight and aborts the driver at once, but the
// pipelined Bind/Execute/Sync are already in the server's buffer: the cancel ends
// `pg_sleep`, the backend reads on and runs the INSERT before it sees the socket close.
// The same holds for `abandon` (cancel then close): a pipeline given up midway
// runs its queued writes (cancel_break's pipeline test only queues SELECTs, so it cannot
// see it).
// Should (first asked): a statement queued behind one that is cut off does not run after it.
// Decided otherwise: what a client has sent is in the server's hands; closing the socket does
// not recall it (the backend reads its buffer before it sees the close), and a cancel ends
// only the statement running when it lands. No client can promise more without a second
// session to terminate the backend from. What holds, and is tested: the running statement is
// cancelled, nothing runs on after the shutdown, every cut-off caller gets an error or the
// true result (never `Ok` for a write that did not happen), and the docs say an error after a
// forced shutdown leaves the outcome of what was already sent unknown.
// ---------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_idle_busy_queued_and_waiting_leaves_nothing_running() {
    tokio::time::timeout(BOUND, async {
        let pg = cluster().await;
        let pool = app_pool(&pg)
            .max_size(3)
            .wait_timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        pool.get()
            .await
            .unwrap()
            .batch_execute("CREATE TABLE marks (x int)")
            .await
            .unwrap();
        let idle = pool.get().await.unwrap();
        let busy_conn = pool.get().await.unwrap();
        let piped = pool.get().await.unwrap();
        drop(idle);
        let idle_again = pool.get().await.unwrap(); // all three in use
        drop(idle_again); // back to idle
        let hold = pool.get().await.unwrap(); // the idle one, held: the pool is full
        let running = tokio::spawn(async move {
            let result = busy_conn.query("SELECT pg_sleep(5)", &[]).await.map(drop);
            drop(busy_conn);
            result
        });
        let pipeline = tokio::spawn(async move {
            let (slow, queued) = tokio::join!(
                piped.query("SELECT pg_sleep(5)", &[]),
                piped.execute("INSERT INTO marks VALUES (1)", &[])
            );
            drop(piped);
            (slow.map(drop), queued)
        });
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sleeping(&pg).await, 2);
        // Returned within the grace (idle again), while the waiter still waits.
        let returned = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(hold);
        });
        let started = Instant::now();
        let report = pool.shutdown(Duration::from_millis(100)).await;
        returned.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "shutdown took {:?}",
            started.elapsed()
        );
        let waited = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        sleep_ends_within(&pg, Duration::from_millis(1500), &format!("{report:?}")).await;
        let (slow, queued) = tokio::time::timeout(Duration::from_secs(3), pipeline)
            .await
            .unwrap()
            .unwrap();
        let result = tokio::time::timeout(Duration::from_secs(3), running)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_err() && slow.is_err(), "{result:?} {slow:?}");
        assert!(report.forced == 2, "{report:?}");
        assert!(matches!(waited, Ok(Ok(Err(_)))), "the waiter: {waited:?}");
        let marks: i64 = pg
            .admin_of(ROLE)
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM marks", &[])
            .await
            .unwrap()
            .get(0);
        // The queued INSERT's outcome is unknown to its caller unless it said `Ok(1)`.
        match queued {
            Ok(1) => assert_eq!(marks, 1, "told it was written, and it was not"),
            Ok(other) => panic!("the queued INSERT said {other}"),
            Err(_) => assert!(marks <= 1, "{marks}"),
        }
    })
    .await
    .expect("bounded");
}
