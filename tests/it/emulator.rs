//! The pool against the Lakebase emulator: verified TLS with SNI routing, tokens checked per
//! endpoint, user and expiry, scale-to-zero and the proxy's error texts.

use std::net::Ipv4Addr;
use std::time::Duration;

use lakebase_pool::databricks::{CredentialRequest, Workspace};
use lakebase_pool::resolve::StaticResolver;
use lakebase_pool::{EndpointName, Error, PoolBuilder, RetryPolicy};
use lakebase_pool_testing::{ComputeState, LakebaseEmulator, LocalPostgres, MockWorkspace};
use tokio_postgres::error::SqlState;

use crate::support::{LogCapture, lakebase_cluster};

const ENDPOINT: &str = "projects/shop/branches/production/endpoints/ep-primary";
const OTHER: &str = "projects/shop/branches/production/endpoints/ep-other";
const USER: &str = "someone@example.com";
const PAT: &str = "dapi-test";

struct Lakebase {
    // Field order is drop order: the emulator before its upstream.
    emulator: LakebaseEmulator,
    workspace: MockWorkspace,
    _pg: LocalPostgres,
}

async fn lakebase() -> Lakebase {
    let pg = lakebase_cluster(USER).await;
    let workspace = MockWorkspace::start().unwrap();
    workspace.add_pat(PAT, USER);
    let emulator = LakebaseEmulator::start(&pg, &workspace).unwrap();
    emulator.add_endpoint(ENDPOINT);
    emulator.add_endpoint(OTHER);
    Lakebase {
        emulator,
        workspace,
        _pg: pg,
    }
}

impl Lakebase {
    fn workspace_client(&self) -> Workspace {
        Workspace::builder()
            .host(self.workspace.url())
            .token(PAT)
            .build()
            .unwrap()
    }

    /// The pool a user would build: endpoint, discovery, resolver hook, trusted CA.
    fn pool(&self) -> PoolBuilder {
        PoolBuilder::default()
            .workspace(self.workspace_client())
            .lakebase_endpoint(ENDPOINT)
            .port(self.emulator.port())
            .resolver(self.emulator.resolver())
            .root_certificates_pem(self.emulator.ca_cert_pem())
    }

    /// A pool that logs in to `endpoint` with a fixed password.
    fn pool_with_password(&self, endpoint: &str, password: &str) -> PoolBuilder {
        PoolBuilder::default()
            .host(self.emulator.host_of(endpoint))
            .port(self.emulator.port())
            .user(USER)
            .dbname("databricks_postgres")
            .password(password)
            .resolver(
                StaticResolver::new().with(&self.emulator.host_of(endpoint), Ipv4Addr::LOCALHOST),
            )
            .root_certificates_pem(self.emulator.ca_cert_pem())
            .retry(RetryPolicy::no_retry())
    }

    async fn mint(&self, endpoint: &str) -> String {
        let name: EndpointName = endpoint.parse().unwrap();
        let credential = self
            .workspace_client()
            .generate_database_credential(&name, &CredentialRequest::default())
            .await
            .unwrap();
        credential.token().expose().to_owned()
    }
}

fn sqlstate(error: &Error) -> Option<SqlState> {
    std::error::Error::source(error)
        .and_then(|e| e.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.code().cloned())
}

#[tokio::test]
async fn full_path_with_discovery_verified_tls_and_sni_routing() {
    let lakebase = lakebase().await;
    let pool = lakebase.pool().build().unwrap();
    let conn = pool.get().await.unwrap();
    let user: String = conn
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, USER);
    assert_eq!(lakebase.emulator.sessions(ENDPOINT), 1);
    assert_eq!(
        lakebase.emulator.sessions(OTHER),
        0,
        "routed by SNI to ep-primary"
    );
    assert_eq!(lakebase.workspace.minted().len(), 1);
    assert_eq!(lakebase.workspace.minted()[0].endpoint, ENDPOINT);
}

#[tokio::test]
async fn tokens_for_another_endpoint_or_expired_are_refused_but_open_sessions_go_on() {
    let lakebase = lakebase().await;
    let for_other = lakebase.mint(OTHER).await;
    let pool = lakebase
        .pool_with_password(ENDPOINT, &for_other)
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    assert_eq!(server_message(&err), Some(password_failed()), "{err:?}");
    // The same token does open its own endpoint.
    let _ = lakebase
        .pool_with_password(OTHER, &for_other)
        .build()
        .unwrap()
        .get()
        .await
        .unwrap();

    lakebase
        .workspace
        .set_token_lifetime(Duration::from_secs(2));
    let short = lakebase.mint(ENDPOINT).await;
    let pool = lakebase
        .pool_with_password(ENDPOINT, &short)
        .build()
        .unwrap();
    let before_expiry = pool.get().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let late = lakebase
        .pool_with_password(ENDPOINT, &short)
        .build()
        .unwrap();
    let err = late.get().await.unwrap_err();
    assert!(matches!(err, Error::AuthRejected { .. }), "{err:?}");
    assert_eq!(sqlstate(&err), Some(SqlState::INTERNAL_ERROR), "{err:?}");
    // Lakebase checks the token only at login: the session opened before goes on.
    let _ = before_expiry.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn suspend_kills_busy_sessions_and_the_next_checkout_wakes_the_compute() {
    let lakebase = lakebase().await;
    let pool = lakebase.pool().build().unwrap();
    let busy = pool.get().await.unwrap();
    let idle = pool.get().await.unwrap();
    drop(idle);
    let running =
        tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(5)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;

    lakebase.emulator.suspend(ENDPOINT);
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err:?}");
    assert_eq!(lakebase.emulator.state(ENDPOINT), Some(ComputeState::Idle));
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The idle connection died too; the pool discards it and opens one, waking the compute.
    let conn = pool.get().await.unwrap();
    let _ = conn.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        lakebase.emulator.state(ENDPOINT),
        Some(ComputeState::Active)
    );
    assert!(pool.stats().retired_broken >= 1, "{:?}", pool.stats());
}

#[tokio::test]
async fn wake_up_refusals_are_retried_and_the_checkout_succeeds_after_them() {
    let lakebase = lakebase().await;
    let pool = lakebase.pool().build().unwrap();
    drop(pool.get().await.unwrap());
    let (logs, _guard) = LogCapture::install();
    lakebase.emulator.set_refusals_while_waking(2);
    lakebase.emulator.suspend(ENDPOINT);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let conn = pool.get().await.unwrap();
    let _ = conn.simple_query("SELECT 1").await.unwrap();
    let stats = pool.stats();
    assert_eq!(stats.connect_retries_transient, 2, "{stats:?}");
    let text = logs.text();
    assert_eq!(
        text.matches("connect failed with a transient error; retrying")
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("endpoint is idle, retry request")
            || text.contains("Couldn't connect to compute node"),
        "{text}"
    );
}

#[tokio::test]
async fn rate_limit_texts_back_off_longer_and_succeed() {
    let lakebase = lakebase().await;
    let pool = lakebase.pool().build().unwrap();
    lakebase
        .emulator
        .refuse_next("Too many connections attempts");
    let started = std::time::Instant::now();
    let _ = pool.get().await.unwrap();
    assert_eq!(pool.stats().connect_retries_rate_limited, 1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "rate limits wait 2-4 s"
    );
}

#[tokio::test]
async fn disabled_and_unknown_endpoints_fail_fast_with_the_servers_message() {
    let lakebase = lakebase().await;
    lakebase.emulator.set_disabled(ENDPOINT, true);
    let pool = lakebase
        .pool()
        .retry(RetryPolicy::default())
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "no retries");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let cause = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.as_db_error())
        .map(|e| e.message().to_owned());
    assert_eq!(
        cause.as_deref(),
        Some("Control plane request failed: endpoint is disabled")
    );
    assert!(
        err.to_string().contains("enable it"),
        "says what to fix: {err}"
    );
    assert_eq!(pool.stats().connect_retries_transient, 0);

    let unknown = "projects/shop/branches/production/endpoints/ep-gone";
    let token = lakebase.mint(ENDPOINT).await;
    let pool = lakebase
        .pool_with_password(unknown, &token)
        .retry(RetryPolicy::default())
        .build()
        .unwrap();
    // As at the real proxy, an unknown endpoint reads as a refused password: one retry with
    // a fresh password, then an error that names the possibility.
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::AuthRejected { .. }), "{err:?}");
    assert_eq!(server_message(&err), Some(password_failed()));
    assert!(err.to_string().contains("endpoint exists"), "{err}");
    assert_eq!(pool.stats().connect_attempts_failed, 2);
}

/// A pool reaching the emulator by IP address (so without SNI), routed by `options` alone.
fn by_address(lakebase: &Lakebase, options: Option<&str>, password: &str) -> PoolBuilder {
    let mut config = tokio_postgres::Config::new();
    let _ = config
        .host("127.0.0.1")
        .port(lakebase.emulator.port())
        .user(USER)
        .dbname("databricks_postgres");
    if let Some(options) = options {
        let _ = config.options(options);
    }
    // An IP address gets no SNI, and the certificate does not name it: accept it for this test.
    PoolBuilder::default()
        .pg_config(config)
        .password(password)
        .ssl_mode(lakebase_pool::SslMode::Require)
        .retry(RetryPolicy::no_retry())
        .dangerous()
        .accept_invalid_certificates()
}

/// The proxy's text for a refused token (and for an unknown endpoint).
fn password_failed() -> String {
    format!("password authentication failed for user '{USER}'")
}

fn server_message(error: &Error) -> Option<String> {
    std::error::Error::source(error)
        .and_then(|e| e.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.as_db_error())
        .map(|e| e.message().to_owned())
}

#[tokio::test]
async fn without_sni_the_endpoint_comes_from_options_and_must_be_given() {
    let lakebase = lakebase().await;
    let token = lakebase.mint(ENDPOINT).await;
    let routed = by_address(&lakebase, Some("endpoint=ep-primary"), &token)
        .build()
        .unwrap();
    let _ = routed.get().await.unwrap();
    assert_eq!(lakebase.emulator.sessions(ENDPOINT), 1);

    let missing = by_address(&lakebase, None, &token).build().unwrap();
    let err = missing.get().await.unwrap_err();
    assert!(
        server_message(&err).is_some_and(|m| m.starts_with("Endpoint ID is not specified")),
        "{err:?}"
    );
}

#[tokio::test]
async fn sni_and_options_naming_different_endpoints_are_refused() {
    let lakebase = lakebase().await;
    let token = lakebase.mint(ENDPOINT).await;
    let mut config = tokio_postgres::Config::new();
    let _ = config
        .host(lakebase.emulator.host_of(ENDPOINT))
        .port(lakebase.emulator.port())
        .user(USER)
        .dbname("databricks_postgres")
        .options("endpoint=ep-other");
    let pool = PoolBuilder::default()
        .pg_config(config)
        .password(token)
        .resolver(lakebase.emulator.resolver())
        .root_certificates_pem(lakebase.emulator.ca_cert_pem())
        .retry(RetryPolicy::no_retry())
        .build()
        .unwrap();
    let err = pool.get().await.unwrap_err();
    assert_eq!(
        server_message(&err).as_deref(),
        Some(
            "Inconsistent project name inferred from SNI ('ep-primary') and project option \
             ('ep-other')."
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_workspace_reports_the_compute_state_through_suspend_and_wake() {
    let lakebase = lakebase().await;
    let workspace = lakebase.workspace_client();
    let name: EndpointName = ENDPOINT.parse().unwrap();
    let state = || async { workspace.get_endpoint(&name).await.unwrap().state };
    use lakebase_pool::databricks::EndpointState;
    assert_eq!(state().await, Some(EndpointState::Active));
    lakebase.emulator.suspend(ENDPOINT);
    assert_eq!(state().await, Some(EndpointState::Idle));
    let pool = lakebase.pool().build().unwrap();
    let _ = pool.get().await.unwrap();
    assert_eq!(state().await, Some(EndpointState::Active));
    let host = workspace.get_endpoint(&name).await.unwrap().host;
    assert_eq!(host.as_deref(), Some("ep-primary.lakebase.test"));
}

/// Garbage on the emulator's port (random bytes, bad lengths, a TLS request followed by
/// noise): each connection is refused or closed promptly, and the emulator goes on serving.
#[tokio::test]
async fn garbage_on_the_wire_is_refused_and_the_emulator_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let lakebase = lakebase_pool_testing::LocalLakebase::start().await.unwrap();
    let port = lakebase.emulator().port();
    let mut rng = fastrand::Rng::with_seed(0x1a4e_ba5e);
    let ssl_request = [0, 0, 0, 8, 4, 210, 22, 47];
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0, 0, 3],
        vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        vec![0, 0, 0, 8, 4, 210, 22, 46],
        [&ssl_request[..], b"GET / HTTP/1.1\r\n\r\n"].concat(),
        [&ssl_request[..], &[0x16, 3, 1, 0xff, 0xff][..]].concat(),
    ];
    for _ in 0..40 {
        let len = rng.usize(1..600);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if rng.bool() {
            bytes.splice(0..0, ssl_request);
        }
        inputs.push(bytes);
    }
    for input in &inputs {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = stream.write_all(input).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(ended.is_ok(), "no end within 5 s for input {input:?}");
    }
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    pool.get()
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

/// A token is bound to the identity it was minted for: presented with another user name (a
/// role that exists upstream), it is refused like a wrong password.
#[tokio::test]
async fn a_token_is_refused_for_any_user_but_its_own() {
    let lakebase = lakebase_pool_testing::LocalLakebase::start().await.unwrap();
    lakebase
        .postgres()
        .create_role("intruder", &lakebase_pool::Secret::new("unused"))
        .await
        .unwrap();
    let workspace = Workspace::builder()
        .host(lakebase.workspace().url())
        .token(lakebase_pool_testing::LocalLakebase::PAT)
        .build()
        .unwrap();
    let endpoint: EndpointName = lakebase_pool_testing::LocalLakebase::ENDPOINT
        .parse()
        .unwrap();
    let token = workspace
        .generate_database_credential(&endpoint, &CredentialRequest::default())
        .await
        .unwrap();
    let as_user = |user: &str| {
        PoolBuilder::default()
            .host(
                lakebase
                    .emulator()
                    .host_of(lakebase_pool_testing::LocalLakebase::ENDPOINT),
            )
            .port(lakebase.emulator().port())
            .user(user)
            .dbname("databricks_postgres")
            .password(token.token().expose())
            .resolver(lakebase.emulator().resolver())
            .root_certificates_pem(lakebase.emulator().ca_cert_pem())
            .retry(RetryPolicy::no_retry())
            .build()
            .unwrap()
    };
    let err = as_user("intruder").get().await.unwrap_err();
    assert_eq!(
        server_message(&err).as_deref(),
        Some("password authentication failed for user 'intruder'"),
        "{err:?}"
    );
    as_user(lakebase_pool_testing::LocalLakebase::USER)
        .get()
        .await
        .expect("the token works for its own user");
}

/// Two `user` parameters: the emulator used to check the token against the first and pass
/// both to its trusting upstream, where the last one wins (a token for a developer opened a
/// session as the superuser). Duplicates are refused before any password is asked for.
#[tokio::test]
async fn a_start_up_packet_naming_two_users_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let lakebase = lakebase_pool_testing::LocalLakebase::start().await.unwrap();
    let mut client = crate::support::raw_tls_client(&lakebase).await;
    let packet = crate::support::startup_packet(&[
        ("user", lakebase_pool_testing::LocalLakebase::USER),
        ("database", "databricks_postgres"),
        ("user", "postgres"),
    ]);
    client.write_all(&packet).await.unwrap();
    client.flush().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
        .await
        .expect("the emulator answers and closes")
        .ok();
    assert_eq!(
        answer.first(),
        Some(&b'E'),
        "refused, not asked for a password: {answer:?}"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("duplicate start-up parameter `user`"),
        "{text}"
    );
    assert!(text.contains("XX000"), "{text}");
}

/// A client that sends `SSLRequest` and then nothing (or stops mid-handshake) is closed once
/// the handshake timeout passes; it used to stay open for ever.
#[tokio::test]
async fn an_idle_client_after_ssl_request_is_closed_by_the_emulator() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let lakebase = lakebase_pool_testing::LocalLakebase::start().await.unwrap();
    lakebase
        .emulator()
        .set_handshake_timeout(Duration::from_millis(500));
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", lakebase.emulator().port()))
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    // No TLS ClientHello follows.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open 5 s after the SSLRequest");

    // A client that completes TLS and then sends no start-up message is closed as well.
    let mut client = crate::support::raw_tls_client(&lakebase).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open 5 s after the TLS handshake");
}

/// Past the connection cap, connections are refused at once with `53300`, and those already
/// open are unaffected.
#[tokio::test]
async fn connections_past_the_cap_are_refused_with_too_many_connections() {
    use tokio::io::AsyncReadExt;

    let lakebase = lakebase_pool_testing::LocalLakebase::start().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .max_size(1)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    lakebase.emulator().set_max_connections(1);
    let mut extra = tokio::net::TcpStream::connect(("127.0.0.1", lakebase.emulator().port()))
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut answer))
        .await
        .expect("refused at once")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("53300") && text.contains("too many connections"),
        "{text}"
    );
    conn.simple_query("SELECT 1").await.unwrap();
}
