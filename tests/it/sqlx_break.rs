//! Break attempts on the sqlx adapters (`drivers::sqlx_0_8`, `drivers::sqlx_0_9`): process
//! environment variables that sqlx reads itself, the token in sqlx's `Debug`, leaks after
//! drop/close (relay directory, token task, half-open relay sockets), and `retry` through the
//! relay. Each test guards against a defect found here (fixed), or shows a property found to
//! hold, or a documented limit.
//!
//! Tests that set process environment variables take [`ENV`] for writing (and restore the
//! variables before releasing it); every other test here takes it for reading, so that no
//! `pg_pool` of another test reads a variable set here.

// The environment lock is held for a whole test, awaits included, on purpose.
#![allow(clippy::await_holding_lock)]

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serialises the tests that set process environment variables against every other test here.
pub(crate) static ENV: RwLock<()> = RwLock::new(());

/// A shared hold on the environment: no test changes it meanwhile.
pub(crate) fn env_unchanged() -> RwLockReadGuard<'static, ()> {
    ENV.read().unwrap_or_else(PoisonError::into_inner)
}

/// Process environment variables set for a test; the old values are back when dropped.
pub(crate) struct EnvVars {
    saved: Vec<(&'static str, Option<OsString>)>,
    _hold: RwLockWriteGuard<'static, ()>,
}

impl EnvVars {
    pub(crate) fn set(vars: &[(&'static str, &str)]) -> EnvVars {
        let hold = ENV.write().unwrap_or_else(PoisonError::into_inner);
        let mut saved = Vec::new();
        for (name, value) in vars {
            saved.push((*name, std::env::var_os(name)));
            // SAFETY: every test of this module that reads or writes the environment holds
            // `ENV`; no other test of the binary is run (`-- sqlx_break`).
            unsafe { std::env::set_var(name, value) };
        }
        EnvVars { saved, _hold: hold }
    }
}

impl Drop for EnvVars {
    fn drop(&mut self) {
        for (name, value) in self.saved.drain(..) {
            // SAFETY: as in `set`.
            unsafe {
                match value {
                    Some(value) => std::env::set_var(name, value),
                    None => std::env::remove_var(name),
                }
            }
        }
    }
}

/// An address of this machine that is not loopback (127.0.0.2, which is, if there is none).
pub(crate) fn non_loopback_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("8.8.8.8:53")?;
            socket.local_addr()
        })
        .map(|addr| addr.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
}

/// A fake Postgres server on `listener`: takes one plain-text startup, asks for the password
/// in clear text, and returns what the client sent (`None` if nobody came within `wait`).
pub(crate) async fn capture_password(
    listener: tokio::net::TcpListener,
    wait: Duration,
) -> Option<String> {
    tokio::time::timeout(wait, async {
        let (mut stream, _) = listener.accept().await.ok()?;
        let len = stream.read_u32().await.ok()? as usize;
        let mut startup = vec![0; len.saturating_sub(4)];
        stream.read_exact(&mut startup).await.ok()?;
        // AuthenticationCleartextPassword.
        stream
            .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])
            .await
            .ok()?;
        let _kind = stream.read_u8().await.ok()?;
        let len = stream.read_u32().await.ok()? as usize;
        let mut password = vec![0; len.saturating_sub(4)];
        stream.read_exact(&mut password).await.ok()?;
        Some(
            String::from_utf8_lossy(&password)
                .trim_end_matches('\0')
                .to_owned(),
        )
    })
    .await
    .ok()
    .flatten()
}

/// TCP sockets of this process's network namespace connected to `port` on the remote side,
/// not yet fully closed (`/proc/net/tcp` states other than TIME_WAIT and CLOSE), as
/// `(local port, state)`.
/// Of those, the ones a process still holds (an orphan the kernel keeps after a full close
/// has inode 0).
pub(crate) fn held_sockets_to(port: u16) -> Vec<(u16, &'static str)> {
    open_sockets_to(port, true)
}

fn open_sockets_to(port: u16, held_only: bool) -> Vec<(u16, &'static str)> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut found = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 {
            continue;
        }
        let port_of = |addr: &str| {
            addr.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        if port_of(fields[2]) != Some(port) || (held_only && fields.get(9) == Some(&"0")) {
            continue;
        }
        let state = match fields[3] {
            "01" => "ESTABLISHED",
            "04" => "FIN_WAIT1",
            "05" => "FIN_WAIT2",
            "08" => "CLOSE_WAIT",
            "09" => "LAST_ACK",
            "0B" => "CLOSING",
            _ => continue,
        };
        if let Some(local) = port_of(fields[1]) {
            found.push((local, state));
        }
    }
    found
}

/// A listener on 127.0.0.1 that accepts connections and never reads, writes or closes them
/// (a hung server), until the returned sender is dropped.
pub(crate) async fn silent_server() -> (u16, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => break,
                },
                _ = &mut stopped => break,
            }
        }
        drop(held);
    });
    (port, stop)
}

macro_rules! cases {
    () => {
        use std::time::Duration;

        use lakebase_pool::resolve::StaticResolver;
        use lakebase_pool::{Pool, RetryPolicy};
        use lakebase_pool_testing::{LocalLakebase, StopMode};

        use crate::sqlx_break::{EnvVars, env_unchanged, held_sockets_to, silent_server};
        use crate::support::{INITIAL_PASSWORD, ROLE, app_pool, cluster};

        fn options(max: u32) -> PgPoolOptions {
            PgPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(5))
        }

        async fn one_text(pg: &PgPool, sql: &'static str) -> Result<String, sqlx::Error> {
            let (text,): (String,) = sqlx::query_as(sql).fetch_one(pg).await?;
            Ok(text)
        }

        async fn backend(pg: &PgPool) -> Result<i32, sqlx::Error> {
            let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
                .fetch_one(pg)
                .await?;
            Ok(pid)
        }

        /// Fixed: `PGAPPNAME` (and `PGDATABASE`) in the process environment, which sqlx reads
        /// itself, are overridden with the pool's own settings; a `PGOPTIONS` that differs from
        /// the pool's (sqlx only appends to it) is refused at once, naming the variable.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn environment_settings_sqlx_reads_do_not_change_its_sessions() {
            let pg_server = cluster().await;
            let pool = app_pool(&pg_server).build().unwrap();
            let own = pool.get().await.unwrap();
            let own_app: String = own
                .query_one("SHOW application_name", &[])
                .await
                .unwrap()
                .get(0);
            drop(own);

            let refused = {
                let _env = EnvVars::set(&[("PGOPTIONS", "-c search_path=from_the_environment")]);
                adapter::pg_pool(&pool, options(1)).await
            };
            let error = refused.unwrap_err().to_string();
            assert!(error.contains("PGOPTIONS"), "{error}");

            let pg = {
                let _env = EnvVars::set(&[("PGAPPNAME", "from-the-environment")]);
                adapter::pg_pool(&pool, options(1)).await.unwrap()
            };
            let app = tokio::time::timeout(
                Duration::from_secs(15),
                one_text(&pg, "SHOW application_name"),
            )
            .await
            .unwrap()
            .unwrap();
            pg.close().await;
            pool.close();
            assert_eq!(
                app, own_app,
                "sqlx sessions took PGAPPNAME from the environment"
            );
        }

        /// Guards (TLS): `PGSSLROOTCERT` in the process environment adds a trusted root to the
        /// sqlx sessions of a pool that does not trust it. Here the pool is built without the
        /// emulator's CA: the pool's own checkout is refused (UnknownIssuer), but with
        /// `PGSSLROOTCERT` pointing at that CA the sqlx login is accepted. The adapter sets
        /// `ssl_root_cert` only when the pool has extra roots, so sqlx's value from the
        /// environment stays.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn pgsslrootcert_in_the_environment_does_not_widen_trust() {
            let lakebase = LocalLakebase::start().await.unwrap();
            let pool = lakebase_pool::PoolBuilder::from_environment(&lakebase.environment())
                .unwrap()
                .resolver(lakebase.emulator().resolver())
                .retry(RetryPolicy::default().deadline(Duration::from_secs(2)))
                .build()
                .unwrap();
            let own = tokio::time::timeout(Duration::from_secs(20), pool.get())
                .await
                .unwrap();
            assert!(
                own.is_err(),
                "the pool itself does not trust the emulator's CA"
            );

            let dir = tempfile::tempdir().unwrap();
            let ca = dir.path().join("ca.pem");
            std::fs::write(&ca, lakebase.emulator().ca_cert_pem()).unwrap();
            let pg = {
                let _env = EnvVars::set(&[("PGSSLROOTCERT", ca.to_str().unwrap())]);
                adapter::pg_pool(&pool, options(1)).await.unwrap()
            };
            let answer = tokio::time::timeout(Duration::from_secs(15), backend(&pg))
                .await
                .unwrap();
            pg.close().await;
            pool.close();
            assert!(
                answer.is_err(),
                "sqlx logged in over TLS the pool refuses, trusting PGSSLROOTCERT: {answer:?}"
            );
        }

        /// Held, and the documented limit: `Debug` of the `PgPool` does not show the token.
        /// (`pg.connect_options()` holds it, and sqlx's own `Debug` of those options prints
        /// it: `pg_pool`'s docs say not to log them; the adapter cannot change sqlx's `Debug`.)
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_token_is_not_in_debug_of_the_pg_pool() {
            let _env = env_unchanged();
            let lakebase = LocalLakebase::start().await.unwrap();
            let pool = lakebase.pool_builder().unwrap().build().unwrap();
            let pg = adapter::pg_pool(&pool, options(1)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(15), backend(&pg))
                .await
                .unwrap()
                .unwrap();
            let token = lakebase
                .workspace()
                .minted()
                .last()
                .unwrap()
                .token
                .expose()
                .to_owned();
            let debug = format!("{pg:?}");
            pg.close().await;
            pool.close();
            assert!(
                !debug.contains(&token),
                "the token is in Debug of the PgPool"
            );
        }

        /// The documented limit, and its way out: dropping every handle of the `PgPool`
        /// without `close()` leaves the token task holding one (sqlx has no weak handle), so
        /// the relay lives on; closing the `Pool` ends both within a second.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_dropped_pg_pool_is_cleaned_up_when_the_pool_closes() {
            let _env = env_unchanged();
            let lakebase = LocalLakebase::start().await.unwrap();
            let pool = lakebase.pool_builder().unwrap().build().unwrap();
            let pg = adapter::pg_pool(&pool, options(1)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(15), backend(&pg))
                .await
                .unwrap()
                .unwrap();
            let dir = pg
                .connect_options()
                .get_socket()
                .cloned()
                .expect("through the relay");
            drop(pg);
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert!(
                dir.exists(),
                "the documented limit: still there until the pool closes"
            );
            pool.close();
            let cleaned = tokio::time::timeout(Duration::from_secs(5), async {
                while dir.exists() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .is_ok();
            assert!(cleaned, "the relay directory stays even after pool.close()");
        }

        /// Guards (retry): through the relay (here: plain text to the name `localhost`; the
        /// same with a resolver hook or `hostaddr`), a server that is restarting refuses the
        /// relay's TCP connect, but sqlx sees only its Unix socket closed (an EOF, not
        /// `ConnectionRefused`): neither sqlx's own connect retry nor `retry` treats it as a
        /// refused socket, and `retry` gives up at once although the server is back 2 s later,
        /// well within the 15 s retry deadline.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retry_waits_out_a_restart_behind_the_relay() {
            let _env = env_unchanged();
            let pg_server = cluster().await;
            let pool = Pool::builder()
                .host("localhost")
                .port(pg_server.port())
                .user(ROLE)
                .dbname(ROLE)
                .password(INITIAL_PASSWORD)
                .retry(RetryPolicy::default().deadline(Duration::from_secs(15)))
                .build()
                .unwrap();
            let pg = adapter::pg_pool(&pool, options(2).acquire_timeout(Duration::from_secs(10)))
                .await
                .unwrap();
            assert!(
                pg.connect_options().get_socket().is_some(),
                "through the relay"
            );
            backend(&pg).await.unwrap();

            let server = pg_server.clone();
            tokio::task::spawn_blocking(move || server.stop(StopMode::Fast))
                .await
                .unwrap()
                .unwrap();
            let server = pg_server.clone();
            let restart = tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_secs(2));
                server.resume()
            });
            let started = std::time::Instant::now();
            let answer =
                tokio::time::timeout(Duration::from_secs(30), adapter::retry(&pool, &pg, backend))
                    .await
                    .expect("retry ends within its deadline");
            let took = started.elapsed();
            restart.await.unwrap().unwrap();
            pg.close().await;
            pool.close();
            assert!(
                answer.is_ok(),
                "retry gave up after {took:?} (server back after 2 s, deadline 15 s): {answer:?}"
            );
        }

        /// HELD (for contrast): the same restart without the relay (`127.0.0.1`): sqlx's own
        /// connect retry on `ConnectionRefused` waits it out.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retry_waits_out_a_restart_without_the_relay() {
            let _env = env_unchanged();
            let pg_server = cluster().await;
            let pool = app_pool(&pg_server)
                .retry(RetryPolicy::default().deadline(Duration::from_secs(15)))
                .build()
                .unwrap();
            let pg = adapter::pg_pool(&pool, options(2).acquire_timeout(Duration::from_secs(10)))
                .await
                .unwrap();
            assert!(pg.connect_options().get_socket().is_none(), "direct");
            backend(&pg).await.unwrap();
            let server = pg_server.clone();
            tokio::task::spawn_blocking(move || server.stop(StopMode::Fast))
                .await
                .unwrap()
                .unwrap();
            let server = pg_server.clone();
            let restart = tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_secs(2));
                server.resume()
            });
            let answer =
                tokio::time::timeout(Duration::from_secs(30), adapter::retry(&pool, &pg, backend))
                    .await
                    .expect("bounded");
            restart.await.unwrap().unwrap();
            pg.close().await;
            pool.close();
            assert!(answer.is_ok(), "{answer:?}");
        }

        /// Guards (leak): a server that accepts TCP and then says nothing (a hung proxy or
        /// compute). sqlx gives up at its acquire timeout and drops its side, but the relay only
        /// half-closes its TCP connection and keeps copying the other way for as long as the
        /// server stays silent: after `close()` and dropping the `PgPool`, the relay's sockets
        /// (and their tasks) are still open. The pool's own attempt would have closed its socket
        /// at its connect timeout.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_silent_server_leaves_no_relay_socket_after_close() {
            let _env = env_unchanged();
            let (port, stop) = silent_server().await;
            let pool = Pool::builder()
                .host("silent.lakebase.test")
                .port(port)
                .user("someone")
                .password("not-a-real-password")
                .resolver(
                    StaticResolver::new()
                        .with("silent.lakebase.test", std::net::Ipv4Addr::LOCALHOST),
                )
                .retry(RetryPolicy::default().connect_timeout(Duration::from_secs(1)))
                .build()
                .unwrap();
            let pg = adapter::pg_pool(&pool, options(1).acquire_timeout(Duration::from_secs(1)))
                .await
                .unwrap();
            let answer = tokio::time::timeout(Duration::from_secs(10), backend(&pg))
                .await
                .expect("bounded by sqlx's acquire timeout");
            assert!(answer.is_err());
            pg.close().await;
            drop(pg);
            pool.close();
            drop(pool);
            tokio::time::sleep(Duration::from_secs(2)).await;
            // FIN_WAIT2 is the kernel's own state after a full close too (the silent peer
            // never closes); what counts is that no socket is left in this process: the
            // relay's would be half-closed, still readable, and still in FIN_WAIT2 past the
            // close of every pool. The kernel keeps an orphan for at most tcp_fin_timeout.
            let held = held_sockets_to(port);
            drop(stop);
            assert!(
                held.is_empty(),
                "2 s after close and drop, the relay still holds {} connection(s) to the silent \
                 server: {held:?}",
                held.len()
            );
        }
    };
}

mod v0_8 {
    use lakebase_pool::drivers::sqlx_0_8 as adapter;
    use sqlx::postgres::{PgPool, PgPoolOptions};

    cases!();

    /// Fixed (expired token at login): while mints fail, the token task withdraws the token
    /// it pushed once it is too close to expiry to log in with, so sqlx never sends an expired
    /// token (its logins are refused until a mint succeeds). The same source runs for sqlx
    /// 0.9.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_expired_token_is_sent_while_mints_fail() {
        let _env = env_unchanged();
        let lakebase = LocalLakebase::start().await.unwrap();
        let pool = crate::support::fast_rotation(&lakebase)
            .max_lifetime(Duration::from_millis(200))
            .retry(RetryPolicy::default().deadline(Duration::from_secs(2)))
            .build()
            .unwrap();
        let pg = adapter::pg_pool(&pool, options(1)).await.unwrap();
        backend(&pg).await.unwrap();
        lakebase.workspace().inject(
            lakebase_pool_testing::Fault::status(503, "maintenance")
                .times(100_000)
                .on("/api/2.0/postgres/credentials"),
        );
        // Every token minted so far has expired.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), backend(&pg))
            .await
            .unwrap();
        let withdrawn = format!("{:?}", pg.connect_options()).contains("password: None");
        lakebase.workspace().clear_faults();
        pg.close().await;
        pool.close();
        // The login is refused (sqlx cannot be kept from trying), but the expired token is
        // no longer the pool's password: withdrawn, never sent.
        assert!(answer.is_err(), "{answer:?}");
        assert!(
            withdrawn,
            "the expired token is still sqlx's password while mints fail"
        );
    }

    /// HELD: sqlx 0.8 reads `PGHOSTADDR` only as a default host, which the adapter replaces.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pghostaddr_does_not_redirect_sqlx_0_8() {
        let pg_server = cluster().await;
        let pool = app_pool(&pg_server).build().unwrap();
        let ip = crate::sqlx_break::non_loopback_ip();
        let listener = tokio::net::TcpListener::bind((ip, pg_server.port()))
            .await
            .unwrap();
        let capture = tokio::spawn(crate::sqlx_break::capture_password(
            listener,
            Duration::from_secs(8),
        ));
        let pg = {
            let _env = EnvVars::set(&[("PGHOSTADDR", &ip.to_string())]);
            adapter::pg_pool(&pool, options(1)).await.unwrap()
        };
        let answer = tokio::time::timeout(Duration::from_secs(8), backend(&pg))
            .await
            .unwrap();
        capture.abort();
        let captured = capture.await.ok().flatten();
        pg.close().await;
        pool.close();
        assert!(captured.is_none(), "{captured:?}");
        assert!(answer.is_ok(), "{answer:?}");
    }
}

mod v0_9 {
    use lakebase_pool::drivers::sqlx_0_9 as adapter;
    use sqlx_0_9 as sqlx;
    use sqlx_0_9::postgres::{PgPool, PgPoolOptions};

    cases!();

    /// Guards (secret in plain text): sqlx 0.9 reads `PGHOSTADDR` into its own `hostaddr`,
    /// which the adapter leaves set, and dials that address instead of the pool's host. A pool
    /// for `127.0.0.1` (plain text, allowed only because it is loopback) then sends its
    /// password in clear text to whatever address `PGHOSTADDR` names, here a non-loopback
    /// address of this machine where a fake server asks for a clear-text password.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pghostaddr_does_not_redirect_sqlx_0_9() {
        let pg_server = cluster().await;
        let pool = app_pool(&pg_server).build().unwrap();
        let ip = crate::sqlx_break::non_loopback_ip();
        let listener = tokio::net::TcpListener::bind((ip, pg_server.port()))
            .await
            .unwrap();
        let capture = tokio::spawn(crate::sqlx_break::capture_password(
            listener,
            Duration::from_secs(8),
        ));
        let pg = {
            let _env = EnvVars::set(&[("PGHOSTADDR", &ip.to_string())]);
            adapter::pg_pool(&pool, options(1)).await.unwrap()
        };
        let answer = tokio::time::timeout(Duration::from_secs(8), backend(&pg))
            .await
            .unwrap();
        let captured = capture.await.unwrap();
        pg.close().await;
        pool.close();
        assert!(
            captured.is_none(),
            "the pool is for 127.0.0.1, yet sqlx 0.9 dialled PGHOSTADDR={ip} in plain text and \
             sent the password {captured:?} (query: {answer:?})"
        );
    }
}
