//! Break attempts on the failover work (each FIXED test guards a defect found here, fixed;
//! HELD ones a property that held): read-only refusals (`25006`) seen by the pool's stream
//! watcher, `retry_transaction`'s new transient class, and `Pool::retire_all`.
//!
//! Several tests put a small proxy of their own between the pool and the server that
//! delivers the backend's `ErrorResponse` carrying `C25006` in two TCP segments, or holds the
//! `ReadyForQuery` after it back for a moment, as any network (or TLS record boundary, or the
//! client's read buffer filling up) may.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lakebase_pool::{Error, RetryPolicy};
use lakebase_pool_testing::LocalPostgres;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::failover::{set_read_only, table};
use crate::support::{app_pool, backend_pid, cluster};

/// What the proxy does to a backend `ErrorResponse` that carries SQLSTATE 25006.
#[derive(Clone, Copy)]
enum Split {
    /// Its first 10 bytes, then the rest 100 ms later (two TCP segments).
    InsideError,
    /// The whole message, then whatever follows (its `ReadyForQuery`) 60 ms later: less than
    /// the pool's grace period (100 ms) for a statement whose results are all in.
    BeforeReady,
}

/// A loopback proxy to `upstream` that splits 25006 refusals as `split` says; every
/// connection ends when it is dropped.
struct SplitProxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SplitProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn split_proxy(upstream: SocketAddr, split: Split) -> SplitProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        // Dropped (aborting every connection's task) when the proxy's task is aborted.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let _ = connections.spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::select! {
                    _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                    () = forward_backend(&mut server_read, &mut client_write, split) => {}
                }
            });
        }
    });
    SplitProxy { port, task }
}

/// Forwards the backend's messages, splitting each 25006 `ErrorResponse` as `split` says.
async fn forward_backend(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    split: Split,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0_u8; 64 * 1024];
    let mut first = true;
    loop {
        let Ok(n) = from.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&chunk[..n]);
        // An `SSLRequest` refused: one untyped byte, before any message.
        if first && pending.first() == Some(&b'N') {
            if to.write_all(&pending[..1]).await.is_err() {
                return;
            }
            let _ = pending.drain(..1);
        }
        first = false;
        let mut out = Vec::new();
        while pending.len() >= 5 {
            let length =
                i32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if pending.len() < 1 + length {
                break;
            }
            let message: Vec<u8> = pending.drain(..1 + length).collect();
            let refusal =
                message[0] == b'E' && message.windows(7).any(|w| w == b"C25006\0".as_slice());
            if !refusal {
                out.extend_from_slice(&message);
                continue;
            }
            match split {
                Split::InsideError => {
                    out.extend_from_slice(&message[..10]);
                    if to.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    out.extend_from_slice(&message[10..]);
                }
                Split::BeforeReady => {
                    out.extend_from_slice(&message);
                    if to.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
            }
        }
        if !out.is_empty() && to.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn is_read_only(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
}

/// Whether the server still has a session with this backend pid.
async fn session_alive(pg: &LocalPostgres, pid: i32) -> bool {
    let admin = pg.admin().await.unwrap();
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

/// FIXED. The refusal is only recognised when the whole `ErrorResponse` body arrives in one
/// read (`Framing::feed` passes the body only then). Delivered in two TCP segments (as a
/// network, a TLS record boundary or tokio-postgres's 8 KB read buffer filling up after other
/// results may deliver it), the 25006 is missed: the session that reached a read-only server
/// goes back into rotation and serves the next checkout, which writes into the same refusal
/// (a real standby never recovers: until the session's max lifetime).
#[tokio::test]
async fn a_refusal_split_across_reads_still_retires_the_session() {
    let pg = cluster().await;
    let proxy = split_proxy(pg.addr(), Split::InsideError).await;
    let pool = app_pool(&pg).port(proxy.port).max_size(1).build().unwrap();
    table(&pool).await;
    let conn = pool.get().await.unwrap();
    let first = backend_pid(&conn).await;
    set_read_only(&pg, true).await;
    let error = conn
        .execute("INSERT INTO writes VALUES (1)", &[])
        .await
        .unwrap_err();
    assert!(is_read_only(&error), "{error}");
    drop(conn);

    let conn = pool.get().await.unwrap();
    let next = backend_pid(&conn).await;
    let stats = pool.stats();
    drop(conn);
    set_read_only(&pg, false).await;
    assert_ne!(
        next, first,
        "the session refused a write was handed out again; stats: {stats:?}"
    );
    assert_eq!(stats.retired_read_only, 1, "{stats:?}");
}

/// FIXED (regression). The new `b'E' if is_read_only_refusal` arm comes before the
/// `ends_results` arm, so a 25006 `ErrorResponse` no longer marks the statement's results as
/// all in (`RESULTS_IN`). The caller gets the error at once and returns the connection; when
/// its `ReadyForQuery` is a few ms behind (here 60 ms, under the 100 ms grace), the
/// connection is no longer given the grace to settle and go back (`settle_then_return`): it
/// is taken out (`cancel::abandon`) and closed. On a read replica, whose sessions the README
/// says are kept when a write is sent there by mistake, the session is lost; any other error
/// in the same spot is kept.
#[tokio::test]
async fn a_replica_session_refusing_a_write_is_kept_when_its_ready_for_query_lags() {
    let pg = cluster().await;
    let standby = pg.start_standby().unwrap();
    let proxy = split_proxy(standby.addr(), Split::BeforeReady).await;
    let pool = app_pool(&pg)
        .read_replicas([format!("127.0.0.1:{}", proxy.port)])
        .replica_max_size(1)
        .build()
        .unwrap();
    let read = pool.get_read().await.unwrap();
    let first = backend_pid(&read).await;
    let error = read
        .batch_execute("CREATE TABLE refused (x int)")
        .await
        .unwrap_err();
    assert!(is_read_only(&error), "{error}");
    drop(read);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let read = pool.get_read().await.unwrap();
    let next = backend_pid(&read).await;
    drop(read);
    let stats = pool.stats();
    assert_eq!(
        (next, stats.cancels_sent),
        (first, 0),
        "the replica's session was taken out and closed, not kept; stats: {stats:?}"
    );
}

/// FIXED (same cause, on a primary). The session is closed either way, but through
/// `cancel::abandon`, which counts a session that settles within the grace in nothing: not
/// `retired_read_only` (nor `closed_abandoned`). The failover counter and the `read_only`
/// metric miss exactly the refusals whose `ReadyForQuery` came a moment later, and
/// `connections_opened` no longer adds up with `size` plus the retired counters.
#[tokio::test]
async fn a_primary_refusal_with_a_lagging_ready_for_query_is_counted_as_read_only() {
    let pg = cluster().await;
    let proxy = split_proxy(pg.addr(), Split::BeforeReady).await;
    let pool = app_pool(&pg).port(proxy.port).max_size(1).build().unwrap();
    table(&pool).await;
    let conn = pool.get().await.unwrap();
    set_read_only(&pg, true).await;
    let error = conn
        .execute("INSERT INTO writes VALUES (1)", &[])
        .await
        .unwrap_err();
    assert!(is_read_only(&error), "{error}");
    drop(conn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_read_only(&pg, false).await;
    drop(pool.get().await.unwrap());
    let stats = pool.stats();
    assert_eq!(
        (
            stats.retired_read_only,
            stats.closed_abandoned,
            stats.cancels_sent
        ),
        (1, 0, 0),
        "(retired_read_only, closed_abandoned, cancels_sent); {stats:?}"
    );
}

/// FIXED (false positive). A read-only transaction the application asked for on the
/// primary (`build_transaction().read_only(true)`, `BEGIN READ ONLY`, `SET TRANSACTION READ
/// ONLY`) that tries a write gets the same 25006, and the healthy primary session is
/// retired as if a failover had happened: a new login for each such mistake, and
/// `retired_read_only` (the failover signal on dashboards) counts it.
#[tokio::test]
async fn a_read_only_transaction_of_the_callers_own_does_not_retire_the_session() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    table(&pool).await;
    let mut conn = pool.get().await.unwrap();
    let first = backend_pid(&conn).await;
    {
        let tx = conn
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .unwrap();
        let error = tx
            .execute("INSERT INTO writes VALUES (1)", &[])
            .await
            .unwrap_err();
        assert!(is_read_only(&error), "{error}");
        tx.rollback().await.unwrap();
    }
    drop(conn);
    let conn = pool.get().await.unwrap();
    let next = backend_pid(&conn).await;
    let stats = pool.stats();
    assert_eq!(
        (next, stats.retired_read_only),
        (first, 0),
        "the primary's healthy session was retired; {stats:?}"
    );
}

/// FIXED (false positive, the crate's own). Without replicas, `retry_read_transaction`
/// runs on the primary's pool with `BEGIN READ ONLY`; a write in it ends with
/// `Error::ReadOnly` as documented, but the primary's session is also retired (the
/// `reads_only` exemption covers only replica pools).
#[tokio::test]
async fn retry_read_transaction_on_the_primary_does_not_retire_its_session() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    table(&pool).await;
    let first = backend_pid(&pool.get().await.unwrap()).await;
    let result = pool
        .retry_read_transaction(|tx| async move {
            tx.execute("INSERT INTO writes VALUES (1)", &[]).await?;
            Ok(())
        })
        .await;
    assert!(matches!(result, Err(Error::ReadOnly { .. })), "{result:?}");
    let next = backend_pid(&pool.get().await.unwrap()).await;
    let stats = pool.stats();
    assert_eq!(
        (next, stats.retired_read_only),
        (first, 0),
        "the primary's session was retired; {stats:?}"
    );
}

/// FIXED. `retry_transaction` now takes every 25006 for a failover: a unit of work that
/// made its own transaction read-only (`SET TRANSACTION READ ONLY`, or a database or role
/// made read-only with `default_transaction_read_only`) and writes fails the same way on
/// every new session, yet is run again with backoff until the retry deadline (40 s by
/// default; 2 s here), each attempt retiring its session and logging in again. The caller
/// sees `Error::Transaction { transient: true }` only at the deadline. Before, it failed at
/// once as fatal.
#[tokio::test]
async fn retry_transaction_does_not_spin_on_a_read_only_transaction_of_its_own() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .max_size(2)
        .retry(RetryPolicy::default().deadline(Duration::from_secs(2)))
        .build()
        .unwrap();
    table(&pool).await;
    let opened_before = pool.stats().connections_opened;
    let started = Instant::now();
    let result = pool
        .retry_transaction(|tx| async move {
            tx.batch_execute("SET TRANSACTION READ ONLY").await?;
            tx.execute("INSERT INTO writes VALUES (1)", &[]).await?;
            Ok(())
        })
        .await;
    let elapsed = started.elapsed();
    let stats = pool.stats();
    let attempts = match &result {
        Err(Error::Transaction { attempts, .. }) => *attempts,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        attempts,
        1,
        "retried {attempts} times over {elapsed:?}, {} new logins; {result:?}",
        stats.connections_opened - opened_before
    );
}

/// FIXED (stats). `retire_all` closes the replicas' sessions too, but neither
/// `Stats::retired_all` (the primary's counters only) nor `ReplicaStats::retired` (lifetime +
/// idle + broken only) counts them, although the docs say retire_all is "counted in
/// `Stats::retired_all`" and `retired` is "connections closed by the pool".
#[tokio::test]
async fn retire_all_of_replica_sessions_is_counted() {
    let pg = cluster().await;
    let standby = pg.start_standby().unwrap();
    let pool = app_pool(&pg)
        .read_replicas([format!("127.0.0.1:{}", standby.port())])
        .replica_max_size(1)
        .build()
        .unwrap();
    drop(pool.get_read().await.unwrap());
    assert_eq!(pool.stats().replicas[0].size, 1);
    pool.retire_all();
    let stats = pool.stats();
    assert_eq!(stats.replicas[0].size, 0, "closed: {stats:?}");
    // The primary had no session; the replica's retirement counts in its own stats, as the
    // docs of `Stats::retired_all` say.
    assert_eq!(
        (stats.retired_all, stats.replicas[0].retired),
        (0, 1),
        "(retired_all, replicas[0].retired): {stats:?}"
    );
}

/// FIXED (doc vs behaviour). `retire_all` says sessions in use "close when they are
/// returned"; they are only marked, and close at the next checkout that happens to pull
/// them or at the housekeeper's next round (up to 30 s with default settings). Until then the
/// old session (old credentials, old primary) stays open on the server and in `size`.
#[tokio::test]
async fn retire_all_closes_a_session_in_use_when_it_is_returned() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(2).build().unwrap();
    let conn = pool.get().await.unwrap();
    let pid = backend_pid(&conn).await;
    pool.retire_all();
    drop(conn);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alive = session_alive(&pg, pid).await;
    let stats = pool.stats();
    assert!(
        !alive,
        "1 s after its return, the retired session is still open on the server; {stats:?}"
    );
}

/// The documented limit (the docs said "every session" before): a `Listener`'s session is
/// its own, opened outside the pool, and `retire_all` leaves it; the docs say to drop the
/// listener and open a new one. This shows the limit holds as documented.
#[tokio::test]
async fn retire_all_leaves_a_listeners_session_as_documented() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    let listener = pool.listener(["jobs"]).await.unwrap();
    let admin = pg.admin().await.unwrap();
    let listening =
        "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND query LIKE 'LISTEN%'";
    let before: i32 = admin.query_one(listening, &[]).await.unwrap().get(0);
    pool.retire_all();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<i32> = admin
        .query(listening, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    drop(listener);
    assert!(
        after.contains(&before),
        "the listener's own session is documented to be left as it is: {after:?}"
    );
}

/// HELD. The check matches a whole `C` field only: `C25006` inside a message, detail or
/// hint of another error does not retire the session.
#[tokio::test]
async fn c25006_in_an_errors_text_is_not_a_refusal() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    let conn = pool.get().await.unwrap();
    let first = backend_pid(&conn).await;
    let error = conn
        .batch_execute(
            "DO $$ BEGIN RAISE EXCEPTION 'C25006' USING DETAIL = 'C25006', HINT = 'C25006'; END $$",
        )
        .await
        .unwrap_err();
    assert!(!is_read_only(&error), "{error}");
    drop(conn);
    let next = backend_pid(&pool.get().await.unwrap()).await;
    assert_eq!(next, first);
    assert_eq!(pool.stats().retired_read_only, 0);
}

/// HELD. A refusal in a savepoint, via `simple_query`, `batch_execute` and in a pipeline is
/// each seen (when delivered in one read, and returned after its `ReadyForQuery`) and retires
/// its session once. (A refused `COPY FROM STDIN` is left out: tokio-postgres closes that
/// session itself, and the pool counts it as broken.)
#[tokio::test]
async fn refusals_through_every_path_are_seen() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    table(&pool).await;
    set_read_only(&pg, true).await;
    let paths = ["savepoint", "simple_query", "batch_execute", "pipeline"];
    for (n, path) in paths.into_iter().enumerate() {
        let mut conn = pool.get().await.unwrap();
        let error = match path {
            "savepoint" => {
                let mut tx = conn.transaction().await.unwrap();
                let sp = tx.savepoint("sp").await.unwrap();
                let error = sp
                    .execute("INSERT INTO writes VALUES (1)", &[])
                    .await
                    .unwrap_err();
                drop(sp);
                tx.rollback().await.unwrap();
                error
            }
            "simple_query" => conn
                .simple_query("SELECT 1; INSERT INTO writes VALUES (1)")
                .await
                .unwrap_err(),
            "batch_execute" => conn
                .batch_execute("INSERT INTO writes VALUES (1)")
                .await
                .unwrap_err(),
            _ => {
                let (a, b) = tokio::join!(
                    conn.query_one("SELECT 1", &[]),
                    conn.execute("INSERT INTO writes VALUES (1)", &[])
                );
                a.unwrap();
                b.unwrap_err()
            }
        };
        assert!(is_read_only(&error), "{path}: {error}");
        // Its `ReadyForQuery` in (see the lagging-`ReadyForQuery` defect above).
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(conn);
        drop(pool.get().await.unwrap());
        assert_eq!(pool.stats().retired_read_only, n as u64 + 1, "{path}");
    }
    set_read_only(&pg, false).await;
}

/// HELD. `retire_all` in a tight loop beside checkouts, then after `close`: no checkout fails
/// before the close, the pool never grows past its size, and a closed pool's `retire_all` is
/// harmless (checkouts keep failing with `PoolClosed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_all_in_a_loop_and_after_close() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(3).build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_millis(800);
            while Instant::now() < deadline {
                let conn = pool.get().await.expect("no checkout fails");
                let _ = backend_pid(&conn).await;
                assert!(pool.stats().size <= 3);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        pool.retire_all();
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    pool.close();
    pool.retire_all();
    assert!(matches!(pool.get().await, Err(Error::PoolClosed)));
    let report = pool.shutdown(Duration::from_millis(100)).await;
    let _ = report;
}

/// FIXED (the lagging-`ReadyForQuery` regression, with no proxy at all). PostgreSQL flushes
/// an `ErrorResponse` on its own (`send_message_to_frontend` calls `pq_flush`) and the
/// `ReadyForQuery` in a second write, so a caller that gets the error from `batch_execute`
/// and returns the connection at once often does so before the `ReadyForQuery` is read. Ten
/// such writes sent by mistake to a replica: each should keep the replica's one session.
#[tokio::test]
async fn replica_sessions_refusing_writes_are_kept_without_any_network_delay() {
    let pg = cluster().await;
    let standby = pg.start_standby().unwrap();
    let pool = app_pool(&pg)
        .read_replicas([format!("127.0.0.1:{}", standby.port())])
        .replica_max_size(1)
        .build()
        .unwrap();
    for _ in 0..10 {
        let read = pool.get_read().await.unwrap();
        let error = read
            .batch_execute("CREATE TABLE refused (x int)")
            .await
            .unwrap_err();
        assert!(is_read_only(&error), "{error}");
        drop(read);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = pool.stats();
    assert_eq!(
        stats.replicas[0].connections_opened, 1,
        "replica sessions closed after a refused write: {stats:?}"
    );
}

/// FIXED (the split refusal, with no proxy at all). tokio-postgres reads into an 8 KB
/// buffer whose spare room shrinks as messages are consumed (`reserve(1)` before each read),
/// so read boundaries fall anywhere in the stream. A fresh session per try, a `SELECT` of
/// `p` bytes to move the refusal along the stream, then the refused `INSERT`: for some `p`
/// the `ErrorResponse` straddles a read and the session is not retired.
#[tokio::test]
async fn refusals_at_every_stream_offset_retire_their_session() {
    let pg = cluster().await;
    let pool = app_pool(&pg).max_size(1).build().unwrap();
    table(&pool).await;
    set_read_only(&pg, true).await;
    let mut missed = Vec::new();
    let mut tries = 0_u64;
    for padding in (7_000..8_400).step_by(25) {
        tries += 1;
        let before = pool.stats().retired_read_only;
        let conn = pool.get().await.unwrap();
        conn.batch_execute(&format!("SELECT repeat('x', {padding})"))
            .await
            .unwrap();
        let error = conn
            .batch_execute("INSERT INTO writes VALUES (1)")
            .await
            .unwrap_err();
        assert!(is_read_only(&error), "{error}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(conn);
        drop(pool.get().await.unwrap());
        if pool.stats().retired_read_only == before {
            missed.push(padding);
        }
    }
    set_read_only(&pg, false).await;
    assert!(
        missed.is_empty(),
        "{} of {tries} sessions refused a write were not retired (padding {missed:?})",
        missed.len()
    );
}
