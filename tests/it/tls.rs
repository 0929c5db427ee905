//! TLS that always verifies, and the resolver hook: TCP to an address, the name for TLS.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use lakebase_pool::resolve::{HickoryResolver, Resolve, StaticResolver};
use lakebase_pool::{Environment, Error, PoolBuilder, RetryPolicy, Secret, SslMode};
use lakebase_pool_testing::{IssuedCertificate, LocalPostgres, MockWorkspace, TestCa};

use crate::support::{INITIAL_PASSWORD, ROLE, app_pool, chain, cluster};

const HOST: &str = "ep-test.db.lakebase.test";
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn tls_cluster(names: &[&str]) -> (TestCa, IssuedCertificate, LocalPostgres) {
    let ca = TestCa::new("lakebase-pool test CA").unwrap();
    let certificate = ca.issue(names).unwrap();
    let pg = LocalPostgres::start_with_tls(&certificate).unwrap();
    pg.create_role(ROLE, &Secret::new(INITIAL_PASSWORD))
        .await
        .unwrap();
    (ca, certificate, pg)
}

/// A pool for `host`, which the static resolver maps to loopback.
fn pool_for(pg: &LocalPostgres, host: &str) -> PoolBuilder {
    PoolBuilder::default()
        .host(host)
        .port(pg.port())
        .user(ROLE)
        .dbname(ROLE)
        .password(INITIAL_PASSWORD)
        .resolver(StaticResolver::new().with(host, LOOPBACK))
        .retry(RetryPolicy::no_retry())
}

/// Whether the server sees this session as TLS.
async fn session_is_encrypted(conn: &lakebase_pool::Connection) -> bool {
    conn.query_one(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// The whole `source()` chain, where rustls's own explanation lives.

#[tokio::test]
async fn verified_tls_with_a_private_ca_and_a_resolved_address() {
    let (ca, _, pg) = tls_cluster(&[HOST]).await;
    let pool = pool_for(&pg, HOST)
        .root_certificates_pem(ca.cert_pem())
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    assert!(
        session_is_encrypted(&conn).await,
        "the session is encrypted"
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_and_names_the_mismatch() {
    let (ca, _, pg) = tls_cluster(&[HOST]).await;
    let other = "ep-other.db.lakebase.test";
    let pool = pool_for(&pg, other)
        .root_certificates_pem(ca.cert_pem())
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "not retried: {err:?}");
    let text = chain(&err);
    assert!(
        text.contains("not valid for name") && text.contains(other),
        "{text}"
    );
    assert_eq!(pool.stats().connections_opened, 0);

    // verify-ca checks the chain only, so the same server is accepted.
    let lenient = pool_for(&pg, other)
        .root_certificates_pem(ca.cert_pem())
        .ssl_mode(SslMode::VerifyCa)
        .build()
        .unwrap();
    let _ = lenient.get().await.unwrap();
}

#[tokio::test]
async fn an_untrusted_ca_fails_and_nothing_falls_back_to_plain_text() {
    let (_, _, pg) = tls_cluster(&[HOST]).await;
    // verify-ca without a CA of your own is refused at build (it would trust any publicly
    // trusted certificate for any name); with a CA that did not sign the server's, it fails.
    let err = pool_for(&pg, HOST)
        .ssl_mode(SslMode::VerifyCa)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                setting: "ssl_mode",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("PGSSLROOTCERT"), "{err}");
    let stranger = TestCa::new("a stranger CA").unwrap();
    let pool = pool_for(&pg, HOST)
        .ssl_mode(SslMode::VerifyCa)
        .root_certificates_pem(stranger.cert_pem())
        .build()
        .unwrap();
    let text = chain(&pool.get().await.unwrap_err());
    assert!(
        text.contains("UnknownIssuer") || text.contains("unknown issuer"),
        "verify-ca: {text}"
    );
    for mode in [SslMode::Prefer, SslMode::Require, SslMode::VerifyFull] {
        let pool = pool_for(&pg, HOST).ssl_mode(mode).build().unwrap();
        let err = pool.get().await.unwrap_err();
        let text = chain(&err);
        assert!(
            text.contains("UnknownIssuer") || text.contains("unknown issuer"),
            "{mode}: {text}"
        );
    }
    // A server without TLS is refused too, even for prefer: no plain-text fallback.
    let plain = LocalPostgres::start().unwrap();
    plain
        .create_role(ROLE, &Secret::new(INITIAL_PASSWORD))
        .await
        .unwrap();
    for mode in [SslMode::Prefer, SslMode::Require] {
        let pool = pool_for(&plain, HOST).ssl_mode(mode).build().unwrap();
        let err = pool.get().await.unwrap_err();
        assert!(
            chain(&err).contains("does not support TLS"),
            "{mode}: {}",
            chain(&err)
        );
    }
}

#[tokio::test]
async fn the_host_name_not_the_address_is_sent_as_sni() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A fake server: accepts Postgres's SSLRequest, then records the ClientHello's SNI.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorder = tokio::spawn(async move {
        let mut names = Vec::new();
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 8];
            stream.read_exact(&mut request).await.unwrap();
            assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "an SSLRequest");
            stream.write_all(b"S").await.unwrap();
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
            let start = acceptor.await.unwrap();
            names.push(start.client_hello().server_name().map(str::to_owned));
        }
        names
    });
    let build = |builder: PoolBuilder| {
        builder
            .port(port)
            .user(ROLE)
            .password(INITIAL_PASSWORD)
            .retry(RetryPolicy::no_retry())
            .build()
            .unwrap()
    };
    // Through the resolver hook, and through a fixed hostaddr (PGHOSTADDR).
    let resolved = build(
        PoolBuilder::default()
            .host(HOST)
            .resolver(StaticResolver::new().with(HOST, LOOPBACK)),
    );
    assert!(resolved.get().await.is_err());
    let fixed = build(
        PoolBuilder::default()
            .host("ep-fixed.db.lakebase.test")
            .hostaddr(LOOPBACK),
    );
    assert!(fixed.get().await.is_err());
    let names = recorder.await.unwrap();
    assert_eq!(
        names,
        vec![
            Some(HOST.to_owned()),
            Some(String::from("ep-fixed.db.lakebase.test"))
        ]
    );
}

#[tokio::test]
async fn plain_text_to_a_non_loopback_host_is_refused_before_any_byte() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let plain = |host: &str| {
        PoolBuilder::default()
            .host(host)
            .hostaddr(LOOPBACK)
            .port(port)
            .user(ROLE)
            .password(INITIAL_PASSWORD)
            .ssl_mode(SslMode::Disable)
            .build()
    };
    match plain("db.example.test") {
        Err(Error::InvalidConfig {
            setting: "ssl_mode",
            problem,
            ..
        }) => {
            assert!(
                problem.contains("`db.example.test` is not one"),
                "{problem}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(listener.accept().is_err(), "nothing connected");
    // Towards loopback, plain text works.
    let pg = LocalPostgres::start().unwrap();
    pg.create_role(ROLE, &Secret::new(INITIAL_PASSWORD))
        .await
        .unwrap();
    let pool = pg
        .pool_builder(ROLE)
        .password(INITIAL_PASSWORD)
        .ssl_mode(SslMode::Disable)
        .build()
        .unwrap();
    let _ = pool.get().await.unwrap();
}

/// The plain-text rule is decided on the address dialled, not only on the name: a name that
/// looks local (`db.localhost`) but resolves elsewhere gets no token in clear. (0.0.0.0 is
/// not a loopback address, yet stays on this machine, so the test sends nothing anywhere.)
#[tokio::test]
async fn plain_text_goes_only_to_loopback_addresses_whatever_the_name_says() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let pool = PoolBuilder::default()
        .host("db.localhost")
        .port(port)
        .user(ROLE)
        .password(INITIAL_PASSWORD)
        .resolver(StaticResolver::new().with("db.localhost", Ipv4Addr::UNSPECIFIED))
        .retry(RetryPolicy::no_retry())
        .build()
        .expect("a loopback name may use plain text");
    let err = pool.get().await.unwrap_err();
    match &err {
        Error::PlaintextRefused { host, address, .. } => {
            assert_eq!(host, "db.localhost");
            assert_eq!(*address, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        }
        other => panic!("expected PlaintextRefused, got {other:?}"),
    }
    assert!(!err.is_transient());
    assert!(listener.accept().is_err(), "nothing connected");
    assert_eq!(pool.stats().connections_opened, 0);
}

#[tokio::test]
async fn hickory_resolves_the_hosts_file_and_fails_unknown_names_with_a_typed_retryable_error() {
    let resolver = HickoryResolver::new();
    let found = resolver.resolve("localhost").await.unwrap();
    assert!(found.iter().any(IpAddr::is_loopback), "{found:?}");
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        resolver.resolve("no-such-host.invalid"),
    )
    .await
    .expect("resolution is bounded")
    .unwrap_err();
    assert_eq!(err.host(), "no-such-host.invalid");

    // In a pool the failure is retried as transient, then reported with its cause.
    let pool = PoolBuilder::default()
        .host("no-such-host.invalid")
        .user(ROLE)
        .password(INITIAL_PASSWORD)
        .resolver(StaticResolver::new())
        .retry(RetryPolicy::default().deadline(Duration::from_millis(300)))
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(
        matches!(err, Error::ConnectRetriesExhausted { .. }),
        "{err:?}"
    );
    assert!(
        chain(&err).contains("could not resolve `no-such-host.invalid`"),
        "{}",
        chain(&err)
    );
    assert!(pool.stats().connect_retries_transient >= 1);
}

#[tokio::test]
async fn from_env_reaches_a_tls_endpoint_whose_name_resolves_nowhere() {
    // What the quickstart does with PGHOSTADDR, PGSSLMODE=verify-full and PGSSLROOTCERT.
    let endpoint_host = "ep-primary.db.lakebase.test";
    let (ca, _, pg) = tls_cluster(&[endpoint_host]).await;
    pg.create_database("databricks_postgres", ROLE)
        .await
        .unwrap();
    let mock = MockWorkspace::start().unwrap();
    mock.add_pat("dapi-test", ROLE);
    let endpoint = "projects/shop/branches/production/endpoints/ep-primary";
    mock.add_endpoint(endpoint, endpoint_host);
    mock.apply_tokens_to(&pg, ROLE);
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.cert_pem()).unwrap();

    let env = Environment::from_vars([
        ("DATABRICKS_HOST", mock.url()),
        ("DATABRICKS_TOKEN", String::from("dapi-test")),
        ("LAKEBASE_ENDPOINT", String::from(endpoint)),
        ("PGPORT", pg.port().to_string()),
        ("PGHOSTADDR", String::from("127.0.0.1")),
        ("PGSSLMODE", String::from("verify-full")),
        ("PGSSLROOTCERT", ca_file.path().to_str().unwrap().to_owned()),
    ]);
    let pool = PoolBuilder::from_environment(&env)
        .unwrap()
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one(
            "SELECT ssl, current_user::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), ROLE);
    assert_eq!(mock.minted().len(), 1, "logged in with the minted token");

    let bad = Environment::from_vars([
        ("PGHOST", "x"),
        ("PGPASSWORD", "p"),
        ("PGHOSTADDR", "not-an-ip"),
    ]);
    assert!(matches!(
        PoolBuilder::from_environment(&bad),
        Err(Error::InvalidEnv {
            var: "PGHOSTADDR",
            ..
        })
    ));
    let missing = Environment::from_vars([
        ("PGHOST", "x"),
        ("PGPASSWORD", "p"),
        ("PGSSLROOTCERT", "/nonexistent/ca.pem"),
    ]);
    assert!(matches!(
        PoolBuilder::from_environment(&missing),
        Err(Error::InvalidEnv {
            var: "PGSSLROOTCERT",
            ..
        })
    ));
}

#[tokio::test]
async fn the_dangerous_opt_out_accepts_an_untrusted_certificate_and_says_so() {
    let (logs, _guard) = crate::support::LogCapture::install();
    let (_, _, pg) = tls_cluster(&[HOST]).await;
    let pool = pool_for(&pg, HOST)
        .dangerous()
        .accept_invalid_certificates()
        .build()
        .unwrap();
    assert!(
        logs.text()
            .contains("DANGEROUS: TLS certificates are not verified"),
        "{}",
        logs.text()
    );
    let conn = pool.get().await.unwrap();
    assert!(
        session_is_encrypted(&conn).await,
        "still encrypted, only unverified"
    );
}

/// Plain text to a loopback *name* without a resolver: the pool resolves the name itself to
/// check the addresses, then connects to each in turn (here `localhost`, which may list `::1`
/// first while the server listens on 127.0.0.1 only).
#[tokio::test]
async fn plain_text_to_localhost_is_resolved_checked_and_connects() {
    let pg = cluster().await;
    let pool = app_pool(&pg).host("localhost").build().unwrap();
    let conn = pool.get().await.unwrap();
    conn.simple_query("SELECT 1").await.unwrap();
}

/// A TLS-terminating relay in front of `pg` that presents the server's own certificate (so
/// that a channel binding to it still verifies at the server) and records the SASL mechanism
/// each client picks. Serves `connections` clients.
async fn mechanism_recorder(
    pg: &LocalPostgres,
    ca: &TestCa,
    certificate: &IssuedCertificate,
    connections: usize,
) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let provider = lakebase_pool_testing::crypto_provider();
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(certificate.cert_pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(certificate.key_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream_port = pg.port();
    let recorder = tokio::spawn(async move {
        let mut mechanisms = Vec::new();
        for _ in 0..connections {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 8];
            tcp.read_exact(&mut request).await.unwrap();
            tcp.write_all(b"S").await.unwrap();
            let mut client = acceptor.accept(tcp).await.unwrap();
            let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port))
                .await
                .unwrap();
            upstream.write_all(&request).await.unwrap();
            assert_eq!(upstream.read_u8().await.unwrap(), b'S');
            let name = ServerName::try_from(HOST).unwrap();
            let mut upstream = connector.connect(name, upstream).await.unwrap();
            // The start-up message, then typed messages until the SASL initial response.
            let length = client.read_i32().await.unwrap();
            let mut startup = vec![0; length as usize - 4];
            client.read_exact(&mut startup).await.unwrap();
            upstream.write_all(&length.to_be_bytes()).await.unwrap();
            upstream.write_all(&startup).await.unwrap();
            let (mut client_read, mut client_write) = tokio::io::split(client);
            let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
            let to_client = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
            });
            let kind = client_read.read_u8().await.unwrap();
            let length = client_read.read_i32().await.unwrap();
            let mut body = vec![0; length as usize - 4];
            client_read.read_exact(&mut body).await.unwrap();
            assert_eq!(kind, b'p', "a SASL initial response");
            let end = body.iter().position(|b| *b == 0).unwrap();
            mechanisms.push(String::from_utf8_lossy(&body[..end]).into_owned());
            upstream_write.write_all(&[kind]).await.unwrap();
            upstream_write
                .write_all(&length.to_be_bytes())
                .await
                .unwrap();
            upstream_write.write_all(&body).await.unwrap();
            drop(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
            }));
            drop(to_client);
        }
        mechanisms
    });
    (port, recorder)
}

/// Channel binding, seen from the server's side: with TLS, `prefer` (the default) and
/// `require` log in with `SCRAM-SHA-256-PLUS`, bound to the certificate the server presented,
/// and the server accepts the binding; `disable` picks plain `SCRAM-SHA-256`.
#[tokio::test]
async fn scram_logins_over_tls_are_bound_to_the_session_unless_disabled() {
    use lakebase_pool::ChannelBinding;

    let (ca, certificate, pg) = tls_cluster(&[HOST]).await;
    let (port, recorder) = mechanism_recorder(&pg, &ca, &certificate, 4).await;
    for binding in [
        None,
        Some(ChannelBinding::Prefer),
        Some(ChannelBinding::Require),
        Some(ChannelBinding::Disable),
    ] {
        let mut builder = pool_for(&pg, HOST)
            .port(port)
            .root_certificates_pem(ca.cert_pem());
        if let Some(binding) = binding {
            builder = builder.channel_binding(binding);
        }
        let pool = builder.build().unwrap();
        let conn = pool
            .get()
            .await
            .unwrap_or_else(|e| panic!("{binding:?}: {e:?}"));
        assert!(session_is_encrypted(&conn).await);
    }
    assert_eq!(
        recorder.await.unwrap(),
        [
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-256"
        ]
    );
}

/// `require` fails at once, saying why, against a server that does not offer a bound login
/// (the emulator asks for the token as a cleartext password); and it is refused at `build`
/// where no TLS is used, for a fixed target and for one discovered later alike.
#[tokio::test]
async fn channel_binding_require_fails_clearly_without_a_bound_login_and_without_tls() {
    use lakebase_pool::ChannelBinding;

    let lakebase = lakebase_pool_testing::LocalLakebase::start().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .channel_binding(ChannelBinding::Require)
        .retry(RetryPolicy::default())
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "not retried");
    assert!(
        matches!(err, Error::Connect { fix: Some(_), .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("did not offer SCRAM-SHA-256-PLUS"),
        "{err}"
    );
    assert_eq!(pool.stats().connect_attempts_failed, 1);

    let setting = |result: Result<lakebase_pool::Pool, Error>| match result {
        Err(Error::InvalidConfig { setting, .. }) => setting,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    // A loopback host defaults to `disable`.
    let pg_free = PoolBuilder::default()
        .host("127.0.0.1")
        .user(ROLE)
        .password(INITIAL_PASSWORD)
        .channel_binding(ChannelBinding::Require);
    assert_eq!(setting(pg_free.build()), "channel_binding");
    let discovered = lakebase
        .pool_builder()
        .unwrap()
        .ssl_mode(SslMode::Disable)
        .channel_binding(ChannelBinding::Require);
    assert_eq!(setting(discovered.build()), "channel_binding");
    // From the environment, as libpq reads it.
    let env = Environment::from_vars([
        ("PGHOST", "127.0.0.1"),
        ("PGUSER", ROLE),
        ("PGPASSWORD", INITIAL_PASSWORD),
        ("PGCHANNELBINDING", "require"),
    ]);
    assert_eq!(
        setting(PoolBuilder::from_environment(&env).unwrap().build()),
        "channel_binding"
    );
    let env = Environment::from_vars([
        ("PGHOST", "127.0.0.1"),
        ("PGPASSWORD", INITIAL_PASSWORD),
        ("PGCHANNELBINDING", "sometimes"),
    ]);
    assert!(matches!(
        PoolBuilder::from_environment(&env),
        Err(Error::InvalidEnv {
            var: "PGCHANNELBINDING",
            ..
        })
    ));
}
