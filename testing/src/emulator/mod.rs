//! `LakebaseEmulator`: a token-checking, SNI-routing, scale-to-zero Postgres front on loopback.
//!
//! What a client of Lakebase sees, reproduced in front of a [`LocalPostgres`]; see
//! [`LakebaseEmulator`] for the steps and the texts it answers with.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::server_thread::ServerThread;
use super::workspace::WorkspaceHandle;
use super::{HaEndpoint, HarnessError, LocalPostgres, MockWorkspace, TestCa};
use lakebase_pool::resolve::StaticResolver;

mod relay;
mod session;
mod wire;

use self::session::serve;

/// How long a client may take over each step of its handshake (start-up request, TLS,
/// start-up message, password) by default.
/// The ALPN protocol of PostgreSQL's direct TLS (`sslnegotiation=direct`).
const POSTGRES_ALPN: &[u8] = b"postgresql";

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How the proxy retries a compute that does not answer (REFERENCE 13a: 5 tries over about
/// 3.2 s, always to the address it looked up for this connection): the waits between tries.
const COMPUTE_RETRY_WAITS: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1600),
];

/// How many client connections are served at once by default; more are refused (`53300`).
const MAX_CONNECTIONS: usize = 1024;

/// The proxy's texts while a compute wakes, used in turn for refused attempts.
const WAKE_TEXTS: [&str; 3] = [
    "Couldn't connect to compute node",
    "endpoint is idle, retry request",
    "timed out while waiting for endpoint to become active",
];

/// The state of an emulated compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ComputeState {
    /// Running: connections go through.
    Active,
    /// Suspended (scaled to zero): the next connection wakes it.
    Idle,
    /// Waking up.
    Waking,
}

struct Endpoint {
    name: String,
    /// The Unix socket of the server behind it: the upstream, or a standby of it.
    upstream: PathBuf,
    /// An HA endpoint's readable secondaries, served at the host `<label>-ro`: the socket
    /// of the standby (a path where nothing listens while there is none).
    read_only_upstream: Option<PathBuf>,
    /// `(database asked for, database served)`: a branch's copy of a database.
    database_rename: Option<(String, String)>,
    state: ComputeState,
    disabled: bool,
    sessions: usize,
    idle_since: Instant,
    wake_until: Option<Instant>,
    refusals_left: u32,
    /// Bumped on suspend; sessions watch it and end.
    generation: watch::Sender<u64>,
}

struct Settings {
    max_connections: usize,
    handshake_timeout: Duration,
    wake_delay: Duration,
    refuse_while_waking: u32,
    suspend_after_idle: Option<Duration>,
    /// Refuse `SSLRequest`: TLS only from the first byte.
    direct_tls_only: bool,
    /// `XX000` texts to answer the next connections with (rate limits and the like).
    scripted_errors: Vec<String>,
    /// Until then, waking a compute fails as a control-plane outage does.
    wakes_fail_until: Option<Instant>,
}

/// A backend key handed to a client, to the upstream's socket and its own key.
type CancelKeys = HashMap<[u8; 8], (PathBuf, [u8; 8])>;

struct Shared {
    domain: String,
    upstream: PathBuf,
    workspace: WorkspaceHandle,
    tls: tokio_rustls::TlsAcceptor,
    endpoints: Mutex<HashMap<String, Endpoint>>,
    settings: Mutex<Settings>,
    open_connections: Mutex<usize>,
    /// The backend keys the emulator gave its clients, to the upstream session's own: a
    /// cancel request names the former, as at the proxy.
    cancel_keys: Mutex<CancelKeys>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A local, token-checking, scale-to-zero stand-in for a Lakebase endpoint, in front of a
/// [`LocalPostgres`], answering as Lakebase's proxy (Neon's) does:
///
/// 1. TLS only: the certificate names `*.<domain>`, signed by a CA generated at start
///    ([`ca_cert_pem`](Self::ca_cert_pem)). A plain-text start-up is refused. TLS starts
///    after an `SSLRequest` or from the first byte (direct negotiation, ALPN `postgresql`
///    required; [`set_direct_tls_only`](Self::set_direct_tls_only) refuses the former).
/// 2. The endpoint id is the first label of the SNI (an SNI outside `<domain>` counts as
///    none), or `options=endpoint=<id>`, or a password field of the form
///    `endpoint=<id>;<password>`. Given in several places, they must agree; ids are ASCII
///    letters, digits and hyphens.
/// 3. A cleartext password, asked for before the endpoint must be known, checked against the
///    tokens [`MockWorkspace`] minted: for this endpoint, for this user, not expired.
/// 4. The compute: an `IDLE` endpoint wakes on connect after a delay, holding the connection
///    or refusing the first attempts with the proxy's wake-up texts. Suspending sends every
///    open session `57P01` and closes it.
/// 5. Then the session is the upstream's, relayed as is (over its Unix socket, as the same
///    role and database).
///
/// Every refusal is the proxy's: an `ErrorResponse` with severity `ERROR`, SQLSTATE `XX000`
/// and its text:
///
/// | situation | text |
/// |---|---|
/// | plain text | ``connection is insecure (try using `sslmode=require`)`` |
/// | no endpoint named | `Endpoint ID is not specified. Either please upgrade the postgres client library (libpq) for SNI support or pass the endpoint ID ...` |
/// | SNI and options disagree | `Inconsistent project name inferred from SNI ('ep-a') and project option ('ep-b').` |
/// | malformed id | `Project name ('ep_a!') must contain only alphanumeric characters and hyphen.` |
/// | wrong, expired or foreign token; unknown endpoint | `password authentication failed for user 'alice'` (not `28P01`) |
/// | disabled endpoint | `Control plane request failed: endpoint is disabled` |
/// | waking | `Couldn't connect to compute node`, `endpoint is idle, retry request`, ... ([`set_refusals_while_waking`](Self::set_refusals_while_waking)) |
///
/// **Where it differs from the open-source proxy:** with a known endpoint, Neon's proxy asks
/// for SCRAM (`SCRAM-SHA-256-PLUS` or `SCRAM-SHA-256`), which cannot check an OAuth token.
/// Lakebase's token login needs the token itself, so the emulator asks for a cleartext
/// password over TLS, as Lakebase presumably does. Channel binding therefore never applies to
/// token logins here, and `channel_binding=require` fails against the emulator.
///
/// ```no_run
/// use lakebase_pool::Secret;
/// use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pg = LocalPostgres::start()?;
/// pg.create_role("someone@example.com", &Secret::new("unused")).await?;
/// pg.create_database("databricks_postgres", "someone@example.com").await?;
/// let workspace = MockWorkspace::start()?;
/// workspace.add_pat("dapi-test", "someone@example.com");
/// let lakebase = LakebaseEmulator::start(&pg, &workspace)?;
/// lakebase.add_endpoint("projects/p/branches/b/endpoints/ep-test");
/// // Clients: host ep-test.<domain>, port lakebase.port(), resolver lakebase.resolver(),
/// // trusting lakebase.ca_cert_pem(); tokens from the workspace.
/// # Ok(())
/// # }
/// ```
pub struct LakebaseEmulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    _server: ServerThread,
}

impl std::fmt::Debug for LakebaseEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakebaseEmulator")
            .field("addr", &self.addr)
            .field("domain", &self.shared.domain)
            .finish_non_exhaustive()
    }
}

impl LakebaseEmulator {
    /// Starts an emulator on a free loopback port in front of `upstream`, checking tokens
    /// `workspace` minted. Endpoint hosts are `<endpoint-id>.lakebase.test`.
    ///
    /// # Errors
    ///
    /// When the certificate cannot be made or the port bound.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.add_endpoint("projects/p/branches/b/endpoints/ep-test");
    /// ```
    pub fn start(
        upstream: &LocalPostgres,
        workspace: &MockWorkspace,
    ) -> Result<Self, HarnessError> {
        Self::start_on(
            upstream,
            workspace,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            "lakebase.test",
        )
    }

    /// Like [`start`](Self::start), listening on `addr` with endpoint hosts under `domain`.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// let lakebase = LakebaseEmulator::start_on(&pg, &workspace, "127.0.0.1:6432".parse().unwrap(), "lakebase.test")?;
    /// # let _ = lakebase;
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn start_on(
        upstream: &LocalPostgres,
        workspace: &MockWorkspace,
        addr: SocketAddr,
        domain: &str,
    ) -> Result<Self, HarnessError> {
        let io = |action: &'static str| move |source| HarnessError::Io { action, source };
        let ca = TestCa::new("Lakebase emulator CA")?;
        let issued = ca.issue(&[&format!("*.{domain}"), domain])?;
        let certificate = CertificateDer::from_pem_slice(issued.cert_pem().as_bytes())
            .map_err(|e| HarnessError::Certificate(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem().as_bytes())
            .map_err(|e| HarnessError::Certificate(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| HarnessError::Certificate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![certificate], key)
            .map_err(|e| HarnessError::Certificate(e.to_string()))?;
        // Offered ALPN must be `postgresql`; none offered is accepted after an SSLRequest.
        tls.alpn_protocols = vec![POSTGRES_ALPN.to_vec()];
        let listener = std::net::TcpListener::bind(addr).map_err(io("bind the emulator's port"))?;
        listener
            .set_nonblocking(true)
            .map_err(io("bind the emulator's port"))?;
        let addr = listener
            .local_addr()
            .map_err(io("bind the emulator's port"))?;
        let shared = Arc::new(Shared {
            domain: domain.to_owned(),
            upstream: upstream.socket_path(),
            workspace: workspace.handle(),
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            endpoints: Mutex::new(HashMap::new()),
            open_connections: Mutex::new(0),
            cancel_keys: Mutex::new(HashMap::new()),
            settings: Mutex::new(Settings {
                max_connections: MAX_CONNECTIONS,
                handshake_timeout: HANDSHAKE_TIMEOUT,
                wake_delay: Duration::from_millis(300),
                refuse_while_waking: 0,
                suspend_after_idle: None,
                direct_tls_only: false,
                scripted_errors: Vec::new(),
                wakes_fail_until: None,
            }),
        });
        let served = Arc::clone(&shared);
        let server = ServerThread::spawn("lakebase-emulator", move |stop| {
            serve(listener, served, stop)
        })
        .map_err(io("start the emulator's thread"))?;
        Ok(LakebaseEmulator {
            shared,
            addr,
            ca_pem: ca.cert_pem().to_owned(),
            _server: server,
        })
    }

    /// The port clients connect to.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// let builder = lakebase_pool::Pool::builder().port(lakebase.port());
    /// # let _ = builder;
    /// ```
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The CA certificate clients must trust.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// let builder = lakebase_pool::Pool::builder().root_certificates_pem(lakebase.ca_cert_pem());
    /// # let _ = builder;
    /// ```
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The host name of an endpoint: `<endpoint-id>.<domain>`.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// assert_eq!(lakebase.host_of("projects/p/branches/b/endpoints/ep-a"), "ep-a.lakebase.test");
    /// ```
    pub fn host_of(&self, endpoint: &str) -> String {
        format!("{}.{}", self.shared.label_of(endpoint), self.shared.domain)
    }

    /// A resolver mapping every endpoint host (`*.<domain>`, endpoints added later and
    /// branches' endpoints included) to the emulator's address.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// let builder = lakebase_pool::Pool::builder().resolver(lakebase.resolver());
    /// # let _ = builder;
    /// ```
    pub fn resolver(&self) -> StaticResolver {
        let ip: IpAddr = if self.addr.ip().is_unspecified() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            self.addr.ip()
        };
        StaticResolver::new().with_domain(&self.shared.domain, ip)
    }

    /// Adds an active endpoint (`projects/../branches/../endpoints/<id>`), registering it with
    /// the mock workspace too, with host `<id>.<domain>`.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.add_endpoint("projects/p/branches/b/endpoints/ep-test");
    /// ```
    pub fn add_endpoint(&self, name: &str) {
        self.add(name, self.shared.upstream.clone(), false);
    }

    /// Adds an active read-only endpoint (a read replica) served by `standby` (see
    /// [`LocalPostgres::start_standby`]), registering it with the mock workspace as
    /// `ENDPOINT_TYPE_READ_ONLY`, with host `<id>.<domain>`. Tokens are checked for it as
    /// for any endpoint, and it scales to zero on its own.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// let standby = pg.start_standby()?;
    /// lakebase.add_read_only_endpoint("projects/p/branches/b/endpoints/ep-replica", &standby);
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn add_read_only_endpoint(&self, name: &str, standby: &LocalPostgres) {
        self.add(name, standby.socket_path(), true);
    }

    fn add(&self, name: &str, upstream: PathBuf, read_only: bool) {
        self.shared
            .add(name, endpoint_id(name), upstream, read_only, None);
    }

    /// Serves endpoint `name` from `server` from now on (existing sessions keep theirs), as
    /// the control plane does when it moves an endpoint to another compute (a failover).
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// let other = LocalPostgres::start()?;
    /// lakebase.add_endpoint("projects/p/branches/b/endpoints/ep-test");
    /// lakebase.route("projects/p/branches/b/endpoints/ep-test", &other);
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn route(&self, name: &str, server: &LocalPostgres) {
        self.handle().route(name, server.socket_path());
    }

    /// Adds an endpoint with high availability, served by `primary` and a new synchronous
    /// standby of it behind the endpoint's read-only host; see [`HaEndpoint`]. The mock
    /// workspace reports both hosts.
    ///
    /// # Errors
    ///
    /// When the standby cannot be copied, started or made synchronous.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// let ha = lakebase.add_ha_endpoint("projects/p/branches/b/endpoints/ep-ha", &pg).await?;
    /// ha.fail_over().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn add_ha_endpoint(
        &self,
        name: &str,
        primary: &LocalPostgres,
    ) -> Result<HaEndpoint, HarnessError> {
        self.add(name, primary.socket_path(), false);
        HaEndpoint::start(self.handle(), name, primary).await
    }

    /// A handle for the harness (branches add and remove endpoints from another thread).
    pub(crate) fn handle(&self) -> EmulatorHandle {
        EmulatorHandle(Arc::clone(&self.shared))
    }

    /// Suspends an endpoint now: open sessions get `57P01` and are closed; the next connection
    /// wakes it.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.suspend("projects/p/branches/b/endpoints/ep-test");
    /// ```
    pub fn suspend(&self, endpoint: &str) {
        self.shared.suspend(&self.shared.label_of(endpoint));
    }

    /// Disables (or enables) an endpoint: connections are refused with "endpoint is disabled".
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.set_disabled("projects/p/branches/b/endpoints/ep-test", true);
    /// ```
    pub fn set_disabled(&self, endpoint: &str, disabled: bool) {
        let _ = self
            .shared
            .with_endpoint(endpoint, |e| e.disabled = disabled);
    }

    /// The state of an endpoint's compute.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// println!("{:?}", lakebase.state("projects/p/branches/b/endpoints/ep-test"));
    /// ```
    pub fn state(&self, endpoint: &str) -> Option<ComputeState> {
        self.shared.with_endpoint(endpoint, |e| e.state)
    }

    /// Open client sessions of an endpoint.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// assert_eq!(lakebase.sessions("projects/p/branches/b/endpoints/ep-test"), 0);
    /// ```
    pub fn sessions(&self, endpoint: &str) -> usize {
        self.shared
            .with_endpoint(endpoint, |e| e.sessions)
            .unwrap_or(0)
    }

    /// How long waking a suspended compute takes (default 300 ms).
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.set_wake_delay(std::time::Duration::from_secs(1));
    /// ```
    pub fn set_wake_delay(&self, delay: Duration) {
        lock(&self.shared.settings).wake_delay = delay;
    }

    /// How long a client may take over each step of its handshake (start-up request, TLS
    /// handshake, start-up message, password) before the emulator closes the connection
    /// (default 10 s).
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.set_handshake_timeout(std::time::Duration::from_secs(2));
    /// ```
    pub fn set_handshake_timeout(&self, timeout: Duration) {
        lock(&self.shared.settings).handshake_timeout = timeout;
    }

    /// How many client connections are served at once (default 1,024); more are refused at
    /// once with `53300`, so that a flood of idle clients cannot exhaust the process.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.set_max_connections(64);
    /// ```
    pub fn set_max_connections(&self, max: usize) {
        lock(&self.shared.settings).max_connections = max;
    }

    /// Refuse the first `attempts` connections of every wake-up with the proxy's wake-up texts
    /// (`XX000`), instead of holding them (default 0: hold, as the proxy usually does).
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.set_refusals_while_waking(2);
    /// ```
    pub fn set_refusals_while_waking(&self, attempts: u32) {
        lock(&self.shared.settings).refuse_while_waking = attempts;
    }

    /// Suspend endpoints that had no session for `idle` (default: never on its own).
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.set_suspend_after_idle(Some(std::time::Duration::from_secs(5)));
    /// ```
    pub fn set_suspend_after_idle(&self, idle: Option<Duration>) {
        lock(&self.shared.settings).suspend_after_idle = idle;
    }

    /// Speak TLS only from the first byte (direct negotiation, PostgreSQL 17's
    /// `sslnegotiation=direct`), refusing `SSLRequest`, as a front that supports nothing else
    /// would (default: both are accepted).
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.set_direct_tls_only(true);
    /// ```
    pub fn set_direct_tls_only(&self, direct_only: bool) {
        lock(&self.shared.settings).direct_tls_only = direct_only;
    }

    /// For `outage` from now, waking a suspended compute fails: its connections get `XX000`
    /// `Control plane request failed`, as through the proxy when the control plane cannot
    /// wake it (the proxy also keeps answering so for 30 s after a failed wake, which an
    /// outage this long stands for). Computes already running are not affected.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.fail_wakes_for(std::time::Duration::from_secs(5));
    /// ```
    pub fn fail_wakes_for(&self, outage: Duration) {
        lock(&self.shared.settings).wakes_fail_until = Instant::now().checked_add(outage);
    }

    /// Answers the next connection with `XX000` and `message` (e.g. "Too many connections
    /// attempts"), before any check.
    ///
    /// ```no_run
    /// # use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};
    /// # let pg = LocalPostgres::start().unwrap();
    /// # let workspace = MockWorkspace::start().unwrap();
    /// # let lakebase = LakebaseEmulator::start(&pg, &workspace).unwrap();
    /// lakebase.refuse_next("Too many connections attempts");
    /// ```
    pub fn refuse_next(&self, message: &str) {
        lock(&self.shared.settings)
            .scripted_errors
            .push(message.to_owned());
    }
}

/// The label `name` is registered under in `endpoints`.
fn label_in(endpoints: &HashMap<String, Endpoint>, name: &str) -> String {
    endpoints
        .iter()
        .find(|(_, endpoint)| endpoint.name == name)
        .map_or_else(|| endpoint_id(name).to_owned(), |(label, _)| label.clone())
}

fn endpoint_id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The emulator's endpoints, for the harness: what a branch adds and removes.
#[derive(Clone)]
pub(crate) struct EmulatorHandle(Arc<Shared>);

impl EmulatorHandle {
    /// Adds the endpoint of a branch: host `<label>.<domain>`, served by the upstream with
    /// `database` in place of `renamed_from` (the branch's copy of that database).
    pub(crate) fn add_branch_endpoint(
        &self,
        name: &str,
        label: &str,
        renamed_from: &str,
        database: &str,
    ) {
        let rename = Some((renamed_from.to_owned(), database.to_owned()));
        self.0
            .add(name, label, self.0.upstream.clone(), false, rename);
    }

    /// Removes an endpoint; its sessions are ended as by a suspend.
    pub(crate) fn remove_endpoint(&self, name: &str) {
        let label = self.0.label_of(name);
        self.0.suspend(&label);
        let _ = lock(&self.0.endpoints).remove(&label);
    }

    pub(crate) fn host_of(&self, name: &str) -> String {
        format!("{}.{}", self.0.label_of(name), self.0.domain)
    }

    /// Serves `name` from the server at `socket` from now on.
    pub(crate) fn route(&self, name: &str, socket: PathBuf) {
        let _ = self.0.with_endpoint(name, |e| e.upstream = socket);
    }

    /// Serves `name`'s read-only host (`<label>-ro`) from the server at `socket`, reporting
    /// that host in the mock workspace; `None`: the host stays, with nothing behind it (no
    /// secondary), so connections to it fail as the proxy's do.
    pub(crate) fn route_read_only(&self, name: &str, socket: Option<PathBuf>) {
        let socket = socket.unwrap_or_else(|| PathBuf::from("/nonexistent/lakebase-secondary"));
        let host = self.0.with_endpoint(name, |e| {
            e.read_only_upstream = Some(socket);
        });
        if host.is_some() {
            let label = self.0.label_of(name);
            let host = format!("{label}-ro.{}", self.0.domain);
            self.0.workspace.set_read_only_host(name, &host);
        }
    }
}

impl Shared {
    /// Registers an endpoint under `label` (its host's first label), with the mock workspace
    /// too.
    fn add(
        &self,
        name: &str,
        label: &str,
        upstream: PathBuf,
        read_only: bool,
        rename: Option<(String, String)>,
    ) {
        self.workspace
            .add_endpoint(name, &format!("{label}.{}", self.domain), read_only);
        let endpoint = Endpoint {
            name: name.to_owned(),
            upstream,
            database_rename: rename,
            state: ComputeState::Active,
            disabled: false,
            sessions: 0,
            idle_since: Instant::now(),
            wake_until: None,
            refusals_left: 0,
            generation: watch::channel(0).0,
            read_only_upstream: None,
        };
        let _ = lock(&self.endpoints).insert(label.to_owned(), endpoint);
    }

    /// The host label of the endpoint named `name`: its id, unless it was added under
    /// another label (a branch's endpoint, whose id may repeat across branches).
    fn label_of(&self, name: &str) -> String {
        label_in(&lock(&self.endpoints), name)
    }

    /// `f` on the endpoint named `name`, under one lock (the endpoints' lock is not
    /// reentrant, so nothing inside may take it again).
    fn with_endpoint<T>(&self, name: &str, f: impl FnOnce(&mut Endpoint) -> T) -> Option<T> {
        let mut endpoints = lock(&self.endpoints);
        let label = label_in(&endpoints, name);
        endpoints.get_mut(&label).map(f)
    }

    fn suspend(&self, id: &str) {
        let mut endpoints = lock(&self.endpoints);
        let refusals = lock(&self.settings).refuse_while_waking;
        if let Some(endpoint) = endpoints.get_mut(id) {
            endpoint.state = ComputeState::Idle;
            endpoint.wake_until = None;
            endpoint.refusals_left = refusals;
            endpoint.generation.send_modify(|g| *g += 1);
            self.workspace.set_endpoint_state(&endpoint.name, "IDLE");
            tracing::debug!(endpoint = id, "emulator: compute suspended");
        }
    }

    /// Suspends endpoints idle past the configured time.
    fn suspend_idle(&self) {
        let Some(after) = lock(&self.settings).suspend_after_idle else {
            return;
        };
        let due: Vec<String> = lock(&self.endpoints)
            .iter()
            .filter(|(_, e)| {
                e.state == ComputeState::Active
                    && e.sessions == 0
                    && e.idle_since.elapsed() >= after
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.suspend(&id);
        }
    }
}
