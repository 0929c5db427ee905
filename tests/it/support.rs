//! Shared helpers: a cluster with an `app` role, log capture, small queries.

use std::io;
use std::sync::{Arc, Mutex};

use lakebase_pool::{Connection, Environment, PoolBuilder, Secret};
use lakebase_pool_testing::{LocalLakebase, LocalPostgres};

pub const ROLE: &str = "app";
pub const INITIAL_PASSWORD: &str = "initial-password";

/// A fresh cluster with a login role `app` (password [`INITIAL_PASSWORD`]) and database `app`.
pub async fn cluster() -> LocalPostgres {
    let pg = LocalPostgres::start().expect("start a local PostgreSQL");
    pg.create_role(ROLE, &Secret::new(INITIAL_PASSWORD))
        .await
        .expect("create the app role");
    pg
}

/// A fresh cluster laid out like a Lakebase project for `user`: a login role of that name
/// owning the database `databricks_postgres` (its password is never used: tokens are).
pub async fn lakebase_cluster(user: &str) -> LocalPostgres {
    let pg = LocalPostgres::start().expect("start a local PostgreSQL");
    pg.create_role(user, &Secret::new("replaced-by-tokens"))
        .await
        .expect("create the role");
    pg.create_database("databricks_postgres", user)
        .await
        .expect("create databricks_postgres");
    pg
}

/// The local Lakebase made to rotate fast: its tokens live 1.5 s, and the builder refreshes
/// them 800 ms ahead (never logging in with less than 400 ms left) and replaces sessions
/// after at most 300 ms, so that a few seconds of load cross several rotations.
pub fn fast_rotation(lakebase: &LocalLakebase) -> PoolBuilder {
    lakebase
        .workspace()
        .set_token_lifetime(std::time::Duration::from_millis(1500));
    lakebase
        .pool_builder()
        .unwrap()
        .cache_policy(
            lakebase_pool::CachePolicy::default()
                .min_remaining(std::time::Duration::from_millis(400))
                .refresh_ahead(std::time::Duration::from_millis(800)),
        )
        .max_lifetime(std::time::Duration::from_millis(300))
}

/// A pool builder for the `app` role with its initial (fixed) password.
pub fn app_pool(pg: &LocalPostgres) -> PoolBuilder {
    pg.pool_builder(ROLE).password(INITIAL_PASSWORD)
}

/// An error and its causes, `: `-separated, for assertions on what a message names.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether the server behind a connection is a standby (in recovery).
pub async fn in_recovery(conn: &Connection) -> bool {
    conn.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("ask whether the server is in recovery")
        .get(0)
}

/// The server process id behind a connection: which physical connection this is.
pub async fn backend_pid(conn: &Connection) -> i32 {
    conn.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("query the backend pid")
        .get(0)
}

/// Everything logged (at TRACE and above) on this thread while the capture is installed. Tests
/// run on tokio's current-thread runtime, so spawned tasks log here too.
///
/// One global subscriber serves every test and writes to the buffer of the thread an event
/// happens on. (Per-thread `set_default` subscribers race on tracing's global callsite-interest
/// cache when tests run in parallel, and then miss events.)
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { std::cell::RefCell::new(None) };
}

struct ThreadWriter;

impl io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        CAPTURE.with(|capture| {
            if let Some(buffer) = &*capture.borrow() {
                buffer.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Ends the capture on this thread when dropped.
pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|capture| *capture.borrow_mut() = None);
    }
}

impl LogCapture {
    pub fn install() -> (LogCapture, CaptureGuard) {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(|| ThreadWriter)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        });
        let capture = LogCapture::default();
        CAPTURE.with(|slot| *slot.borrow_mut() = Some(Arc::clone(&capture.0)));
        (capture, CaptureGuard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

/// Sessions the `app` role has open on the server.
pub async fn server_sessions(pg: &LocalPostgres) -> i64 {
    server_sessions_of(pg, ROLE).await
}

/// Sessions `user` has open on the server (all states), counted through the superuser.
pub async fn server_sessions_of(pg: &LocalPostgres, user: &str) -> i64 {
    let admin = pg.admin().await.unwrap();
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

/// A start-up message (protocol 3.0) with these parameters, for raw protocol clients.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608_i32.to_be_bytes().to_vec();
    for (key, value) in params {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = (body.len() as i32 + 4).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// An HTTP client for services on loopback, built as an application would build its own
/// (no crypto provider installed, no TLS configured), with a 30 s timeout.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// The pool settings of a Databricks App on `lakebase`: OAuth M2M as the service principal
/// `client_id` (added with `LocalLakebase::add_service_principal`), for the read-write
/// endpoint, read from the environment as a deployed app does.
pub fn service_principal_pool(
    lakebase: &LocalLakebase,
    client_id: &str,
    client_secret: &str,
) -> PoolBuilder {
    service_principal_pool_with(lakebase, client_id, client_secret, &[])
}

/// As [`service_principal_pool`], with `extra` variables in the environment.
pub fn service_principal_pool_with(
    lakebase: &LocalLakebase,
    client_id: &str,
    client_secret: &str,
    extra: &[(&str, &str)],
) -> PoolBuilder {
    let mut vars = vec![
        ("DATABRICKS_HOST", lakebase.workspace().url()),
        ("DATABRICKS_CLIENT_ID", client_id.to_owned()),
        ("DATABRICKS_CLIENT_SECRET", client_secret.to_owned()),
        ("LAKEBASE_ENDPOINT", LocalLakebase::ENDPOINT.to_owned()),
        ("PGPORT", lakebase.emulator().port().to_string()),
    ];
    vars.extend(
        extra
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    PoolBuilder::from_environment(&Environment::from_vars(vars))
        .unwrap()
        .resolver(lakebase.emulator().resolver())
        .root_certificates_pem(lakebase.emulator().ca_cert_pem())
}

/// A raw client: TCP to the emulator, `SSLRequest`, then TLS for `endpoint`'s host.
pub async fn raw_tls_client(
    lakebase: &lakebase_pool_testing::LocalLakebase,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let emulator = lakebase.emulator();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", emulator.port()))
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(emulator.ca_cert_pem().as_bytes())
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(lakebase_pool_testing::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let host = emulator.host_of(lakebase_pool_testing::LocalLakebase::ENDPOINT);
    let name = rustls_pki_types::ServerName::try_from(host).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}
