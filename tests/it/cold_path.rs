//! Cold paths: the workspace round trips before the first login, direct TLS negotiation,
//! warm-up and readiness, and a fleet of pools starting at once against a rate-limited
//! workspace.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lakebase_pool::credentials::{Credential, from_fn};
use lakebase_pool::{Environment, Error, Pool, PoolBuilder};
use lakebase_pool_testing::{LocalLakebase, RecordedRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{INITIAL_PASSWORD, ROLE, app_pool, cluster};

const CLIENT_ID: &str = "app-service-principal";
const CLIENT_SECRET: &str = "app-service-principal-secret";

/// A local Lakebase with a service principal that has its own role, as a Databricks App's.
async fn apps_lakebase() -> (LocalLakebase, tempfile::NamedTempFile) {
    let lakebase = LocalLakebase::start().await.unwrap();
    lakebase
        .add_service_principal(CLIENT_ID, CLIENT_SECRET)
        .await
        .unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), lakebase.emulator().ca_cert_pem()).unwrap();
    (lakebase, ca)
}

/// What a Databricks App's process sees (M2M, `LAKEBASE_ENDPOINT`), reaching the emulator
/// through `PGHOSTADDR` with verify-full, as the quickstart does; `PGHOST` when `with_host`.
fn apps_environment(
    lakebase: &LocalLakebase,
    ca: &tempfile::NamedTempFile,
    with_host: bool,
    extra: &[(&str, &str)],
) -> Environment {
    let mut vars = vec![
        ("DATABRICKS_HOST", lakebase.workspace().url()),
        ("DATABRICKS_CLIENT_ID", CLIENT_ID.to_owned()),
        ("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
        ("LAKEBASE_ENDPOINT", LocalLakebase::ENDPOINT.to_owned()),
        ("PGPORT", lakebase.emulator().port().to_string()),
        ("PGHOSTADDR", String::from("127.0.0.1")),
        ("PGSSLMODE", String::from("verify-full")),
        ("PGSSLROOTCERT", ca.path().to_str().unwrap().to_owned()),
    ];
    if with_host {
        let host = lakebase.emulator().host_of(LocalLakebase::ENDPOINT);
        vars.push(("PGHOST", host));
    }
    for (name, value) in extra {
        vars.push((name, (*value).to_owned()));
    }
    Environment::from_vars(vars)
}

async fn first_query(pool: &Pool) -> Result<(), Error> {
    let conn = pool.get().await?;
    let _ = conn.simple_query("SELECT 1").await.unwrap();
    Ok(())
}

fn describe(requests: &[RecordedRequest], since: Instant) -> String {
    requests
        .iter()
        .map(|r| {
            let at = |t: Instant| t.saturating_duration_since(since).as_millis();
            format!(
                "{} {} {}..{} ms",
                r.method,
                r.path,
                at(r.started),
                r.answered.map_or(0, at)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// With 150 ms added to every workspace answer, an App's cold process (OAuth M2M) reaches its
/// first query after 2 sequential workspace round trips (the goal was at most 3), with
/// `PGHOST` given and without it: discovery documents and the first token request at once,
/// then the mint and the host look-up at once. Counted from the mock's request log: a request
/// that arrives before the previous one is answered ran beside it. (Before, it took 4 and 5:
/// discovery documents one after the other, then the token, the look-up, the mint.)
#[tokio::test]
async fn an_apps_cold_start_takes_at_most_three_sequential_workspace_round_trips() {
    for with_host in [true, false] {
        let (lakebase, ca) = apps_lakebase().await;
        lakebase.workspace().set_latency(Duration::from_millis(150));
        let env = apps_environment(&lakebase, &ca, with_host, &[]);
        let started = Instant::now();
        let pool = PoolBuilder::from_environment(&env)
            .unwrap()
            .build()
            .unwrap();
        first_query(&pool).await.unwrap();
        let requests = lakebase.workspace().requests();
        let log = describe(&requests, started);
        let rounds = lakebase.workspace().sequential_round_trips();
        assert!(
            rounds <= 2,
            "PGHOST given: {with_host}; {rounds} rounds:\n{log}"
        );
        // What had to happen did: discovery, the OAuth token, the mint (and the look-up).
        assert!(
            requests.iter().any(|r| r.path.starts_with("/.well-known")),
            "{log}"
        );
        assert_eq!(
            lakebase.workspace().count("POST", "/oidc/v1/token"),
            1,
            "{log}"
        );
        assert_eq!(lakebase.workspace().minted().len(), 1, "{log}");
        let lookups = lakebase
            .workspace()
            .count("GET", "/api/2.0/postgres/projects");
        assert_eq!(lookups, usize::from(!with_host), "{log}");
    }
}

/// The workspace's token endpoint is not the conventional one: its discovered endpoint is
/// used (the answer of the early request to the conventional path is not), at the cost of
/// a round trip.
#[tokio::test]
async fn a_token_endpoint_discovered_elsewhere_is_used_and_the_early_guess_dropped() {
    let (lakebase, ca) = apps_lakebase().await;
    lakebase
        .workspace()
        .set_discovery(lakebase_pool_testing::MockDiscovery::DatabricksConfig);
    let env = apps_environment(&lakebase, &ca, true, &[]);
    let pool = PoolBuilder::from_environment(&env)
        .unwrap()
        .build()
        .unwrap();
    first_query(&pool).await.unwrap();
    // Had the early answer from the conventional path been taken, the discovered endpoint
    // would never have been asked.
    let workspace = lakebase.workspace();
    assert_eq!(workspace.count("POST", "/oidc2/v1/token"), 1);
    assert_eq!(
        workspace.count("POST", "/oidc/v1/token"),
        1,
        "the early request"
    );
}

/// `PGSSLNEGOTIATION=direct`: the quickstart's App environment works through a front that
/// speaks TLS only from the first byte and refuses `SSLRequest`, with verify-full,
/// `PGHOSTADDR` and the SNI routing kept, and ALPN `postgresql` (which the front requires).
/// Without it, the same front refuses the connection.
#[tokio::test]
async fn direct_negotiation_works_through_a_front_that_refuses_ssl_request() {
    let (lakebase, ca) = apps_lakebase().await;
    lakebase.emulator().set_direct_tls_only(true);
    let direct = apps_environment(&lakebase, &ca, true, &[("PGSSLNEGOTIATION", "direct")]);
    let pool = PoolBuilder::from_environment(&direct)
        .unwrap()
        .build()
        .unwrap();
    first_query(&pool).await.unwrap();
    assert_eq!(lakebase.emulator().sessions(LocalLakebase::ENDPOINT), 1);

    let postgres = apps_environment(&lakebase, &ca, true, &[]);
    let pool = PoolBuilder::from_environment(&postgres)
        .unwrap()
        .retry(lakebase_pool::RetryPolicy::no_retry())
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(
        crate::support::chain(&err).contains("server does not support TLS"),
        "{err:?}"
    );

    // The front's ALPN check: a direct handshake without it is refused.
    let refused = direct_handshake(&lakebase, &[]).await;
    assert!(refused.contains("without ALPN"), "{refused}");
    let accepted = direct_handshake(&lakebase, &[b"postgresql".to_vec()]).await;
    assert!(
        accepted.starts_with('R'),
        "asked for a password: {accepted}"
    );
}

/// A raw client opening TLS from the first byte with `alpn`, sending a start-up message: the
/// first message's type and text.
async fn direct_handshake(lakebase: &LocalLakebase, alpn: &[Vec<u8>]) -> String {
    use rustls_pki_types::pem::PemObject;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", lakebase.emulator().port()))
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(
        lakebase.emulator().ca_cert_pem().as_bytes(),
    ) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(lakebase_pool_testing::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.to_vec();
    let host = lakebase.emulator().host_of(LocalLakebase::ENDPOINT);
    let name = rustls_pki_types::ServerName::try_from(host).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let packet = crate::support::startup_packet(&[("user", LocalLakebase::USER)]);
    tls.write_all(&packet).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = vec![0; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut answer))
        .await
        .expect("an answer within 5 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

/// Direct negotiation means TLS: with `sslmode=disable` (also as the loopback default) it is
/// refused at `build()`, as a bad `PGSSLNEGOTIATION` value is when read.
#[tokio::test]
async fn direct_negotiation_without_tls_is_refused_at_build() {
    let setting = |result: Result<Pool, Error>| match result {
        Err(Error::InvalidConfig { setting, .. }) => setting,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    let plain = Pool::builder()
        .host("127.0.0.1")
        .user(ROLE)
        .password(INITIAL_PASSWORD)
        .ssl_negotiation(lakebase_pool::SslNegotiation::Direct);
    assert_eq!(setting(plain.build()), "ssl_negotiation");
    let explicit = Pool::builder()
        .host("db.example.com")
        .user(ROLE)
        .password(INITIAL_PASSWORD)
        .ssl_mode(lakebase_pool::SslMode::Disable)
        .ssl_negotiation(lakebase_pool::SslNegotiation::Direct)
        .dangerous()
        .allow_plaintext();
    assert_eq!(setting(explicit.build()), "ssl_negotiation");
    let env = Environment::from_vars([
        ("PGHOST", "127.0.0.1"),
        ("PGPASSWORD", INITIAL_PASSWORD),
        ("PGSSLNEGOTIATION", "sometimes"),
    ]);
    assert!(matches!(
        PoolBuilder::from_environment(&env),
        Err(Error::InvalidEnv {
            var: "PGSSLNEGOTIATION",
            ..
        })
    ));
    // With TLS, it builds.
    let tls = Pool::builder()
        .host("db.example.com")
        .user(ROLE)
        .password(INITIAL_PASSWORD)
        .ssl_negotiation(lakebase_pool::SslNegotiation::Direct);
    assert!(tls.build().is_ok());
}

/// A relay in front of `upstream` that holds every connection until `expected` are open at
/// once (or 10 s pass), then relays them: a pool opening connections one after the other
/// never gets past it, one opening them together does.
async fn barrier_relay(upstream: u16, expected: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(tokio::spawn(async move {
        let mut held = Vec::new();
        let gathered = tokio::time::timeout(Duration::from_secs(10), async {
            while held.len() < expected {
                held.push(listener.accept().await.unwrap().0);
            }
        })
        .await;
        if gathered.is_err() {
            return; // dropping the held connections fails them
        }
        for mut client in held {
            drop(tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }));
        }
    }));
    port
}

/// `warm_up(4)` opens 4 connections at once (they all reach the server together) with one
/// mint, and leaves them idle in the pool; the pool is then ready. The warm connections are
/// closed by the idle timeout like any other: nothing keeps them, or the compute, busy.
#[tokio::test]
async fn warm_up_opens_connections_in_parallel_with_one_mint_and_they_idle_out() {
    let pg = cluster().await;
    let mints = Arc::new(AtomicU64::new(0));
    let provider = from_fn({
        let mints = Arc::clone(&mints);
        move || {
            let _ = mints.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(Credential::new(INITIAL_PASSWORD)) }
        }
    });
    let port = barrier_relay(pg.port(), 4).await;
    let pool = pg
        .pool_builder(ROLE)
        .port(port)
        .credentials(provider)
        .max_size(8)
        .idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert!(!pool.is_ready(), "no login yet");
    assert_eq!(pool.warm_up(4).await.unwrap(), 4);
    assert!(pool.is_ready());
    assert_eq!(mints.load(Ordering::SeqCst), 1, "one mint");
    let stats = pool.stats();
    assert_eq!((stats.size, stats.available), (4, 4), "{stats:?}");
    assert_eq!(stats.checkouts, 0, "warm-up is not a checkout");

    let until = Instant::now() + Duration::from_secs(10);
    while pool.stats().size > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = pool.stats();
    assert_eq!(stats.size, 0, "idled out: {stats:?}");
    assert_eq!(stats.retired_idle, 4);
}

/// A pool that never got a login is not ready, and its warm-up fails with the reason.
#[tokio::test]
async fn a_pool_that_never_logged_in_is_not_ready() {
    let pg = cluster().await;
    let pool = app_pool(&pg)
        .password("not-the-password")
        .retry(lakebase_pool::RetryPolicy::no_retry())
        .build()
        .unwrap();
    let err = pool.warm_up(3).await.unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    assert!(!pool.is_ready());
    assert_eq!(pool.stats().size, 0);

    let good = app_pool(&pg).build().unwrap();
    assert!(!good.is_ready());
    first_query(&good).await.unwrap();
    assert!(good.is_ready());
    good.close();
    assert!(!good.is_ready(), "a closed pool takes no traffic");
}

/// A deploy starts 50 instances at once against a workspace that serves 10 credential
/// requests a second and answers the rest 429 with `Retry-After`. Every pool gets its token
/// and its first connection; each pool mints once (every extra request is a retry of a 429);
/// and the retries come back spread over the window the server gave, not in one wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_starting_at_once_against_a_rate_limited_workspace_all_becomes_ready() {
    const POOLS: usize = 50;
    const PER_SECOND: usize = 10;
    let lakebase = LocalLakebase::start().await.unwrap();
    let credentials = "/api/2.0/postgres/credentials";
    lakebase.workspace().set_rate_limit(credentials, PER_SECOND);
    let pools: Vec<Pool> = (0..POOLS)
        .map(|_| {
            lakebase
                .pool_builder()
                .unwrap()
                .max_size(1)
                .build()
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for pool in pools.clone() {
        let _ = starts.spawn(async move {
            first_query(&pool).await?;
            Ok::<_, Error>(started.elapsed())
        });
    }
    let mut ready = Vec::new();
    while let Some(result) = starts.join_next().await {
        ready.push(result.unwrap().expect("every pool becomes ready"));
    }
    ready.sort();
    let last = ready[POOLS - 1];

    let requests: Vec<RecordedRequest> = lakebase
        .workspace()
        .requests()
        .into_iter()
        .filter(|r| r.path == credentials)
        .collect();
    let throttled = requests.iter().filter(|r| r.status == Some(429)).count();
    let served = requests.iter().filter(|r| r.status == Some(200)).count();
    println!(
        "fleet: {POOLS} pools, {PER_SECOND} mints/s: last ready after {:.2} s (ideal {:.1} s), \
         {} mint requests, {throttled} answered 429",
        last.as_secs_f64(),
        POOLS as f64 / PER_SECOND as f64,
        requests.len()
    );
    assert!(pools.iter().all(Pool::is_ready));
    assert_eq!(served, POOLS, "one successful mint per pool");
    assert_eq!(
        requests.len(),
        POOLS + throttled,
        "nothing but retries of 429s"
    );
    assert!(
        throttled >= POOLS - PER_SECOND,
        "the limit was hit: {throttled}"
    );

    // The first retries: those told at the start to come back in 1 s. Spread over that
    // second, not in one wave (retrying after exactly `Retry-After` plus a little jitter
    // put them all within a quarter of a second).
    let first_retries: Vec<Duration> = requests
        .iter()
        .map(|r| r.started.saturating_duration_since(started))
        .filter(|at| *at >= Duration::from_millis(900) && *at < Duration::from_millis(2100))
        .collect();
    assert!(first_retries.len() >= 10, "{first_retries:?}");
    let p10 = first_retries[first_retries.len() / 10];
    let p90 = first_retries[first_retries.len() * 9 / 10];
    assert!(
        p90 - p10 >= Duration::from_millis(500),
        "retries in a wave: 80 % of them within {:?}",
        p90 - p10
    );
}
