//! Break attempts on the high-availability features: connect tries held by the proxy (first
//! hedged tries beside them, now a stalled try replaced by a fresh one, `connect/stall.rs`),
//! the refusal of a read-write endpoint's login that reaches a standby (`StandbyLogin`), the
//! endpoint's read-only host as a replica (`read_only_host_as_replica`,
//! `LAKEBASE_READ_ONLY_HOST`), and the retirement of a replica's session whose standby was
//! promoted. Each test's doc says `FIXED:` (it failed before the fix it names) or `HOLDS:` (the
//! attack was tried and the feature held).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::{Environment, Error, Pool, PoolBuilder, RetryPolicy};
use lakebase_pool_testing::{Fault, LocalLakebase, LocalPostgres, StopMode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{backend_pid, chain, in_recovery};

/// Runs a blocking harness step (`pg_ctl`) off the runtime's threads.
async fn blocking(step: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(step).await.unwrap();
}

async fn stop(server: LocalPostgres) {
    blocking(move || server.stop(StopMode::Immediate).unwrap()).await;
}

async fn promote(server: LocalPostgres) {
    blocking(move || server.promote().unwrap()).await;
}

/// A TCP forwarder to `upstream` that counts the connections the client holds open through
/// it now and at most at once (a connection counts until the client closes its side: an
/// upstream that notices a closed client late does not inflate the count). Aborted (no new connections) when dropped; the open ones end with their
/// sockets.
struct CountingForwarder {
    port: u16,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl CountingForwarder {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (open, peak) = (Arc::clone(&open), Arc::clone(&peak));
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    // A connection the client closed just before opening this one (a stalled
                    // try dropped for a fresh one) is not counted: let its close be seen first.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = peak.fetch_max(now, Ordering::SeqCst);
                    let open = Arc::clone(&open);
                    tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(upstream).await {
                            let (mut from_client, mut to_client) = inbound.split();
                            let (mut from_server, mut to_server) = outbound.into_split();
                            let down = tokio::io::copy(&mut from_server, &mut to_client);
                            let up = async {
                                let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                                let _ = to_server.shutdown().await;
                            };
                            // The client's side ended: the connection is no longer its.
                            tokio::select! {
                                () = up => {}
                                _ = down => {}
                            }
                        }
                        let _ = open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        CountingForwarder {
            port,
            open,
            peak,
            accept,
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for CountingForwarder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The emulator's address (its resolver maps every endpoint host to loopback).
fn emulator_addr(lakebase: &LocalLakebase) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], lakebase.emulator().port()))
}

// ---------------------------------------------------------------------------------------------
// The read-only refusal at login
// ---------------------------------------------------------------------------------------------

/// FIXED (only `in_hot_standby` now counts at login): a read-write endpoint whose database (or role) is read-only by configuration
/// (`ALTER DATABASE ... SET default_transaction_read_only = on`: an archive, a reporting
/// role, a database frozen for a migration) can no longer be connected to at all. PostgreSQL
/// 14+ reports `default_transaction_read_only` at login, `Driver::server_read_only`
/// (src/session.rs) takes it for a failover's read-only server, and `connect_one`
/// (src/connect.rs) refuses every login as `ReadOnlyServer`, retried as transient until the
/// retry deadline: every checkout waits the whole deadline (40 s by default), then fails with
/// `ConnectRetriesExhausted` whose cause says "a failover is under way; waiting for the new
/// primary" -- wrong, the server is a primary (`in_hot_standby` off). Should: only
/// `in_hot_standby = on` marks a failover's standby; the session is handed out (reads work,
/// writes get 25006 as the database's owner asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_on_a_read_write_endpoint_is_not_taken_for_a_failover() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .retry(RetryPolicy::default().deadline(Duration::from_secs(3)))
        .build()
        .unwrap();
    let database: String = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    lakebase
        .postgres()
        .admin()
        .await
        .unwrap()
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET default_transaction_read_only = on"
        ))
        .await
        .unwrap();
    pool.retire_all();

    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), pool.get())
        .await
        .expect("bounded");
    let elapsed = started.elapsed();
    let conn = match result {
        Ok(conn) => conn,
        Err(error) => panic!(
            "no session on a primary whose database is read-only, after {elapsed:?}: {}",
            chain(&error)
        ),
    };
    let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert!(!in_recovery(&conn).await);
    pool.close();
}

/// HOLDS: a read-write endpoint routed for good to a standby (the failover never completes):
/// the checkout is not handed a read-only session and does not hang; it fails within the
/// retry deadline (plus one attempt) with `ConnectRetriesExhausted`, whose cause names the
/// read-only server and `in_hot_standby`; no hedged try is started for these fast refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_endpoint_stuck_on_a_standby_fails_clearly_within_the_deadline() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .retry(RetryPolicy::default().deadline(Duration::from_secs(3)))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    pool.retire_all();
    lakebase
        .emulator()
        .route(LocalLakebase::ENDPOINT, &ha.secondary().unwrap());

    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), pool.get())
        .await
        .expect("no hang");
    let elapsed = started.elapsed();
    lakebase
        .emulator()
        .route(LocalLakebase::ENDPOINT, &ha.primary());
    let error = match result {
        Ok(conn) => panic!("handed a session, standby: {}", in_recovery(&conn).await),
        Err(error) => error,
    };
    let text = chain(&error);
    assert!(
        matches!(error, Error::ConnectRetriesExhausted { .. }),
        "{text}"
    );
    assert!(
        text.contains("standby") && text.contains("in_hot_standby"),
        "{text}"
    );
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}: {text}");
    assert_eq!(pool.stats().connect_stalled_tries, 0, "{:?}", pool.stats());
    pool.close();
}

// ---------------------------------------------------------------------------------------------
// Connect tries held by the proxy
// ---------------------------------------------------------------------------------------------

/// FIXED (hedging replaced by one try at a time, a stalled one dropped for a fresh one with a doubling window): hedging made recovery from a failover slower than no hedging when the endpoint
/// is re-routed more than `hedge_after` after an attempt began (a real failover's detection
/// and promotion take longer than 1-2 s). The attempt's three tries (at 0, 1 and 2 s) all
/// looked up the dead compute and are each held about 3 s by the proxy; the first fails at
/// ~3 s, which stops the hedging (`hedged`, src/connect/hedge.rs: `timer = None` on any
/// failure) but does not end the attempt: it waits for the two held siblings (failing at ~4
/// and ~5 s) before the retry loop may start a fresh try that reaches the new primary. Here
/// the route switches 2.4 s in: the checkout gets its session 2.65 s later; the same test
/// with `RetryPolicy::no_stalled_try_restart()` gets it 0.72 s later (the one try fails at ~3 s and the
/// retry goes at once), so hedging is 3.7x slower here. Should:
/// a try that fails while siblings are held by the proxy ends the attempt (or is replaced by
/// a fresh try), so a new route is picked up within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tries_held_on_a_dead_compute_do_not_delay_the_new_route() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .max_size(1)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    pool.retire_all();
    let (old, new) = (ha.primary(), ha.secondary().unwrap());
    stop(old).await;
    promote(new.clone()).await;

    let started = Instant::now();
    let checkout = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let conn = pool.get().await.map_err(|e| chain(&e))?;
            let standby = in_recovery(&conn).await;
            Ok::<(Instant, bool), String>((Instant::now(), standby))
        })
    };
    tokio::time::sleep(Duration::from_millis(2400)).await;
    lakebase.emulator().route(LocalLakebase::ENDPOINT, &new);
    let routed = Instant::now();
    let (done, standby) = tokio::time::timeout(Duration::from_secs(40), checkout)
        .await
        .expect("bounded")
        .unwrap()
        .unwrap();
    assert!(!standby);
    let resumed = done - routed;
    let stats = pool.stats();
    eprintln!(
        "routed {:?} after the checkout began; session {resumed:?} after the route; {stats:?}",
        routed - started
    );
    pool.close();
    assert!(
        resumed < Duration::from_millis(1500),
        "the checkout got its session {resumed:?} after the endpoint reached the new primary \
         (hedges {}, failed attempts {})",
        stats.connect_stalled_tries,
        stats.connect_attempts_failed
    );
}

/// FIXED (one try at a time): hedged tries opened up to three connections per slot at once, so a pool opened more
/// than `max_size` connections ("the most connections open at once, idle or in use") to the
/// server. After a cold start (here a 2.5 s wake), `max_size(2)` and two checkouts put six
/// connections on the proxy at once; every idle-to-busy burst of a whole application fleet
/// triples its connection count exactly when the compute is slowest (waking, overloaded),
/// against Lakebase's per-compute connection limit. Cause: `Connector::attempt`
/// (src/connect.rs) runs `hedge::hedged` with `defaults::HEDGED_TRIES` = 3 per slot, outside
/// the pool's slot accounting. Should: hedged tries stay within `max_size` (hedge only into a
/// free slot), or `max_size`'s docs and the hedge docs say the bound is 3 x `max_size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tries_do_not_open_more_than_max_size_connections() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let forwarder = CountingForwarder::start(emulator_addr(&lakebase)).await;
    lakebase
        .emulator()
        .set_wake_delay(Duration::from_millis(2500));
    lakebase.suspend();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .port(forwarder.port)
        .max_size(2)
        .build()
        .unwrap();
    let checkouts: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop).map_err(|e| chain(&e)) })
        })
        .collect();
    for checkout in checkouts {
        tokio::time::timeout(Duration::from_secs(30), checkout)
            .await
            .expect("bounded")
            .unwrap()
            .unwrap();
    }
    // The losers are closed: only the pool's two sessions stay.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (open, peak, stats) = (forwarder.open(), forwarder.peak(), pool.stats());
    pool.close();
    assert!(open <= 2, "{open} connections left open; {stats:?}");
    assert!(
        peak <= 2,
        "max_size 2, yet {peak} connections open at once (hedges {}); {stats:?}",
        stats.connect_stalled_tries
    );
}

/// HOLDS: a checkout dropped after a stalled try was replaced (tries held on a waking compute,
/// right after the server ended the pool's session) leaks nothing: no connection stays open on the proxy, the pool's slot is free
/// (`max_size(1)`: the next checkout gets a session), and `connections_opened` counts only
/// the session kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_dropped_mid_restart_leaks_no_session_or_slot() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let forwarder = CountingForwarder::start(emulator_addr(&lakebase)).await;
    lakebase.emulator().set_wake_delay(Duration::from_secs(3));
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .port(forwarder.port)
        .max_size(1)
        .build()
        .unwrap();
    // A session the suspend ends: the next checkout finds it closed, and its connect
    // replaces stalled tries (as after a failover).
    drop(pool.get().await.unwrap());
    lakebase.suspend();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped = tokio::time::timeout(Duration::from_millis(1600), pool.get()).await;
    assert!(dropped.is_err(), "the checkout was still connecting");
    assert!(
        pool.stats().connect_stalled_tries >= 1,
        "{:?}",
        pool.stats()
    );

    let conn = tokio::time::timeout(Duration::from_secs(20), pool.get())
        .await
        .expect("the slot is free")
        .unwrap();
    let pid = backend_pid(&conn).await;
    drop(conn);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = pool.stats();
    let (open, sessions) = (
        forwarder.open(),
        lakebase.emulator().sessions(LocalLakebase::ENDPOINT),
    );
    let alive: i64 = lakebase
        .postgres()
        .admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND usename = $1",
            &[&LocalLakebase::USER],
        )
        .await
        .unwrap()
        .get(0);
    pool.close();
    assert!(pid > 0);
    assert!(open <= 1, "{open} connections open on the proxy; {stats:?}");
    assert!(sessions <= 1, "{sessions} emulator sessions; {stats:?}");
    assert!(alive <= 1, "{alive} server sessions of the pool's user");
    assert!(stats.size <= 1, "{stats:?}");
    // The session before the suspend, and the one kept after it.
    assert_eq!(stats.connections_opened, 2, "{stats:?}");
}

// ---------------------------------------------------------------------------------------------
// The read-only host as a replica
// ---------------------------------------------------------------------------------------------

/// FIXED (a replica's connects end within 5 s): while the read-only host has nothing behind it (REFERENCE 15: "with a single
/// readable secondary, `-ro` reads stop until it is replaced"), `get_read()` does not fall
/// back to the primary promptly: the replica's pool shares the primary's `RetryPolicy`, and
/// "Couldn't connect to compute node" is transient, so the read waits out the whole connect
/// deadline (40 s by default, hedged tries included) before `ReplicaSet::get`
/// (src/pool/replicas.rs) marks the replica unhealthy and falls back. Every HA failover thus
/// stalls the first reads (all concurrent ones) for 40 s, though the primary serves at once.
/// Should: a replica connect is bounded far below the primary's deadline (one attempt, or a
/// short replica deadline), so reads fall back within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_promptly_while_the_read_only_host_has_no_secondary() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_only_host_as_replica()
        .build()
        .unwrap();
    let reader = pool.get_read().await.unwrap();
    assert!(in_recovery(&reader).await, "served by the secondary");
    drop(reader);
    stop(ha.secondary().unwrap()).await;

    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(60), pool.get_read()).await;
    let elapsed = started.elapsed();
    let stats = pool.stats();
    let reader = result.expect("bounded").unwrap();
    assert!(!in_recovery(&reader).await, "the primary serves");
    drop(reader);
    pool.close();
    assert!(
        elapsed < Duration::from_secs(10),
        "the read waited {elapsed:?} for a read-only host with nothing behind it; {stats:?}"
    );
}

/// FIXED (the read-only host is a member from `build`): with `read_replicas_of_branch` and `read_only_host_as_replica` together, the
/// read-only host is only added to the members once the branch's listing succeeds
/// (`ReplicaSettings::build` leaves it to `ReplicaSet::discover`, src/pool/replicas.rs): a
/// failed list-endpoints call (one 403, a workspace hiccup) takes the read-only host out too,
/// and reads go to the primary for `DISCOVERY_RETRY` (10 s) though the read-only host needs
/// no listing (it is looked up by get-endpoint at its own connect). Should: the read-only
/// host is a member from `build`, whatever becomes of the branch's listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_branch_listing_does_not_take_the_read_only_host_away() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_replicas_of_branch()
        .read_only_host_as_replica()
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    lakebase.workspace().inject(
        Fault::status(
            403,
            r#"{"error_code":"PERMISSION_DENIED","message":"no list"}"#,
        )
        .times(1)
        .for_method("GET")
        .on("/api/2.0/postgres/projects/local/branches/main/endpoints"),
    );
    let reader = tokio::time::timeout(Duration::from_secs(30), pool.get_read())
        .await
        .expect("bounded")
        .unwrap();
    let standby = in_recovery(&reader).await;
    drop(reader);
    let stats = pool.stats();
    pool.close();
    assert!(
        standby,
        "the read went to the primary: the read-only host was dropped with the branch's \
         listing; {stats:?}"
    );
}

/// HOLDS: `read_only_host_as_replica` with `read_replicas_of_branch` (whose branch has no
/// read-only endpoint) and alone: one replica, the read-only host, served by the standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_host_with_the_branch_s_replicas_is_one_member() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_replicas_of_branch()
        .read_only_host_as_replica()
        .build()
        .unwrap();
    let reader = tokio::time::timeout(Duration::from_secs(30), pool.get_read())
        .await
        .expect("bounded")
        .unwrap();
    assert!(in_recovery(&reader).await);
    drop(reader);
    let stats = pool.stats();
    pool.close();
    assert_eq!(stats.replicas.len(), 1, "{stats:?}");
}

/// HOLDS: `LAKEBASE_READ_ONLY_HOST` with a value that is not a boolean is refused by name;
/// set without `LAKEBASE_ENDPOINT` (a plain `PGHOST`), `build` says it needs the endpoint; the
/// builder method without an endpoint is refused the same way; case and spaces are accepted.
#[tokio::test]
async fn lakebase_read_only_host_is_validated() {
    let env = |value: &str| {
        Environment::from_vars([
            ("PGHOST", String::from("127.0.0.1")),
            ("PGUSER", String::from("app")),
            ("PGPASSWORD", String::from("pw")),
            ("LAKEBASE_READ_ONLY_HOST", value.to_owned()),
        ])
    };
    match PoolBuilder::from_environment(&env("maybe")) {
        Err(Error::InvalidEnv { var, .. }) => assert_eq!(var, "LAKEBASE_READ_ONLY_HOST"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let built = PoolBuilder::from_environment(&env(" TRUE "))
        .unwrap()
        .build()
        .map(|_| ());
    let error = built.expect_err("the read-only host needs an endpoint");
    assert!(chain(&error).contains("lakebase_endpoint"), "{error}");
    assert!(
        PoolBuilder::from_environment(&env("off"))
            .unwrap()
            .build()
            .is_ok()
    );
    let error = Pool::builder()
        .host("127.0.0.1")
        .user("app")
        .password("pw")
        .read_only_host_as_replica()
        .build()
        .map(|_| ())
        .expect_err("needs an endpoint");
    assert!(matches!(error, Error::InvalidConfig { .. }), "{error}");
}

/// HOLDS: an endpoint without a read-only host (no HA): `get_read` falls back to the primary
/// at once, and the replica's failed look-up is not repeated on every read (the replica is
/// skipped while unhealthy): 20 reads cost a handful of get-endpoint calls, not 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_without_a_read_only_host_falls_back_without_a_lookup_per_read() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_only_host_as_replica()
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    let before = lakebase.workspace().count(
        "GET",
        "/api/2.0/postgres/projects/local/branches/main/endpoints/",
    );
    let started = Instant::now();
    for _ in 0..20 {
        let reader = tokio::time::timeout(Duration::from_secs(30), pool.get_read())
            .await
            .expect("bounded")
            .unwrap();
        assert!(!in_recovery(&reader).await);
    }
    let elapsed = started.elapsed();
    let lookups = lakebase.workspace().count(
        "GET",
        "/api/2.0/postgres/projects/local/branches/main/endpoints/",
    ) - before;
    let stats = pool.stats();
    pool.close();
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(lookups <= 3, "{lookups} look-ups for 20 reads; {stats:?}");
    assert_eq!(stats.replicas.len(), 1, "{stats:?}");
}

// ---------------------------------------------------------------------------------------------
// A replica's promoted standby
// ---------------------------------------------------------------------------------------------

/// HOLDS: `default_transaction_read_only` toggled on a replica's session (the caller's own
/// `SET`, on and off) is not taken for a promotion: the session goes back to the replica's
/// pool and serves the next read (same backend), nothing counted retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggling_default_transaction_read_only_on_a_replica_is_not_a_promotion() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .read_only_host_as_replica()
        .build()
        .unwrap();
    let reader = pool.get_read().await.unwrap();
    assert!(in_recovery(&reader).await);
    let pid = backend_pid(&reader).await;
    reader
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    reader
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .unwrap();
    reader
        .batch_execute("RESET default_transaction_read_only")
        .await
        .unwrap();
    drop(reader);
    let again = pool.get_read().await.unwrap();
    let same = backend_pid(&again).await == pid;
    drop(again);
    let stats = pool.stats();
    pool.close();
    assert!(same, "the session was replaced; {stats:?}");
    assert_eq!(stats.replicas[0].retired, 0, "{stats:?}");
}

/// HOLDS: a primary's session held by the caller across a failover fails with a lost
/// connection; returned, it is not reused, and the next checkout writes on the new primary;
/// a second failover right after the first is survived the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_across_two_failovers_is_not_reused() {
    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .max_size(2)
        .build()
        .unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    for round in 0..2 {
        let held = pool.get().await.unwrap();
        let pid = backend_pid(&held).await;
        ha.fail_over().await.unwrap();
        assert!(
            held.execute("INSERT INTO t VALUES (0)", &[]).await.is_err(),
            "round {round}: the old primary's session still answered"
        );
        drop(held);
        let conn = tokio::time::timeout(Duration::from_secs(40), pool.get())
            .await
            .expect("bounded")
            .unwrap();
        assert_ne!(backend_pid(&conn).await, pid);
        assert!(!in_recovery(&conn).await, "round {round}");
        conn.execute("INSERT INTO t VALUES ($1)", &[&(round + 1)])
            .await
            .unwrap();
    }
    let rows: i64 = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    pool.close();
    assert_eq!(rows, 2);
}

/// HOLDS: nothing of the new types prints a secret or an email: `HaEndpoint`'s and
/// `Failover`'s `Debug`, and a signed-in user's checkout refused by a read-only server (the
/// error names neither the user's email nor their token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_types_print_no_secret_or_email() {
    use lakebase_pool::users::{ForwardedHeaders, ForwardedUser, UserPools};

    let lakebase = LocalLakebase::start_ha().await.unwrap();
    let ha = lakebase.ha().unwrap();
    let debug = format!("{ha:?}");
    assert!(!debug.contains(LocalLakebase::USER) && !debug.contains(LocalLakebase::PAT));
    let tokens = lakebase.add_users(&["alice@example.com"]).await.unwrap();
    let users = UserPools::builder(
        lakebase
            .pool_builder()
            .unwrap()
            .retry(RetryPolicy::default().deadline(Duration::from_secs(2))),
    )
    .forwarded_headers(ForwardedHeaders::Trusted)
    .build()
    .unwrap();
    let alice = ForwardedUser::new("alice@example.com", tokens[0].clone());
    drop(users.for_user(&alice).await.unwrap());
    users.retire_all();
    lakebase
        .emulator()
        .route(LocalLakebase::ENDPOINT, &ha.secondary().unwrap());
    let result = tokio::time::timeout(Duration::from_secs(30), users.for_user(&alice))
        .await
        .expect("bounded");
    lakebase
        .emulator()
        .route(LocalLakebase::ENDPOINT, &ha.primary());
    let error = match result {
        Ok(conn) => panic!(
            "a standby session, in recovery: {}",
            in_recovery(&conn).await
        ),
        Err(error) => error,
    };
    let text = format!("{} {error:?}", chain(&error));
    let token = tokens[0].expose().to_owned();
    assert!(
        !text.contains("alice@example.com") && !text.contains(&token),
        "{text}"
    );
    assert!(text.contains("standby"), "{text}");
    let failover = ha.fail_over().await.unwrap();
    assert!(!format!("{failover:?}").contains("example.com"));
}
