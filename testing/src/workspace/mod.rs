//! `MockWorkspace`: a Databricks workspace on loopback, speaking the real wire contract.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;

use super::LocalPostgres;
use super::server_thread::{ServerThread, accept};
use lakebase_pool::Secret;

mod branches;
mod codec;
mod faults;
mod routes;

pub(crate) use self::branches::{BranchEvent, BranchHook};
pub use self::faults::Fault;
use self::routes::handle;

/// How the mock answers token-endpoint discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MockDiscovery {
    /// As a workspace answers (the default): `/.well-known/databricks-config` names the
    /// workspace's `/oidc`, whose metadata names the token endpoint `/oidc/v1/token`.
    Workspace,
    /// Newer SDKs with an OIDC endpoint of its own: `/.well-known/databricks-config` names
    /// `/oidc2`, whose metadata names the token endpoint `/oidc2/v1/token`. (The conventional
    /// `/oidc/v1/token` still answers, as the fallback.)
    DatabricksConfig,
    /// Older SDKs: only `/oidc/.well-known/oauth-authorization-server` answers.
    OidcOnly,
    /// No discovery document answers; clients must fall back to `/oidc/v1/token`.
    None,
}

/// A request the mock received, with when it arrived and when it was answered.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// When its head arrived.
    pub started: Instant,
    /// When its answer was ready (`None` while it is served, or for a hang).
    pub answered: Option<Instant>,
    /// The answer's HTTP status, once answered.
    pub status: Option<u16>,
    /// The query string.
    pub query: String,
    /// The body, for the Lakebase API's JSON calls (`/api/2.0/postgres/...`, which carry no
    /// secret); `None` for the others (the OAuth token request carries the client secret).
    pub body: Option<String>,
}

/// How many round trips `requests` (in arrival order) took one after the other: the longest
/// chain in which each request arrived after the one before it was answered; see
/// [`MockWorkspace::sequential_round_trips`]. For a part of a log, such as the requests of
/// one cold start among several.
///
/// ```
/// use lakebase_pool_testing::sequential_round_trips;
///
/// assert_eq!(sequential_round_trips(&[]), 0);
/// ```
pub fn sequential_round_trips(requests: &[RecordedRequest]) -> usize {
    // Chain length ending at each request.
    let mut chains: Vec<usize> = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let before = requests[..i]
            .iter()
            .zip(&chains)
            .filter(|(earlier, _)| earlier.answered.is_some_and(|at| at <= request.started))
            .map(|(_, chain)| *chain)
            .max()
            .unwrap_or(0);
        chains.push(before + 1);
    }
    chains.into_iter().max().unwrap_or(0)
}

/// A cap on requests per second to paths under a prefix; beyond it, `429` with `Retry-After`.
pub(super) struct RateLimit {
    pub(super) path_prefix: String,
    pub(super) per_second: usize,
    /// When the requests served in the last second were served.
    pub(super) served: VecDeque<Instant>,
}

/// A token the mock minted, as the Lakebase token service would have recorded it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MintedToken {
    /// The token.
    pub token: Secret,
    /// The endpoint it is valid for.
    pub endpoint: String,
    /// The identity it was minted for (a user name or a client id).
    pub identity: String,
    /// When it expires.
    pub expire_time: SystemTime,
}

/// An OAuth access token the mock issued: a service principal's, or a signed-in user's as
/// the Databricks Apps proxy forwards it.
#[derive(Clone, Debug)]
pub(super) struct AccessToken {
    pub(super) identity: String,
    pub(super) expiry: SystemTime,
    /// Whether it may mint database credentials (users' tokens carry only the scopes the
    /// app's user authorization asked for).
    pub(super) database_scope: bool,
}

#[derive(Clone, Debug)]
pub(super) struct MockEndpoint {
    pub(super) host: String,
    pub(super) state: String,
    pub(super) disabled: bool,
    /// `ENDPOINT_TYPE_READ_ONLY` rather than `ENDPOINT_TYPE_READ_WRITE`.
    pub(super) read_only: bool,
    /// `status.hosts.read_only_host`: an HA endpoint's readable secondaries.
    pub(super) read_only_host: Option<String>,
}

pub(super) struct State {
    pub(super) base_url: String,
    pub(super) pats: HashMap<String, String>,
    pub(super) clients: HashMap<String, String>,
    pub(super) access_tokens: HashMap<String, AccessToken>,
    pub(super) endpoints: BTreeMap<String, MockEndpoint>,
    pub(super) minted: Vec<MintedToken>,
    /// Tokens minted before this index are revoked: logins with them are refused.
    pub(super) revoked_before: usize,
    pub(super) token_lifetime: Duration,
    pub(super) fractional: bool,
    pub(super) discovery: MockDiscovery,
    pub(super) faults: Vec<Fault>,
    pub(super) latency: Duration,
    pub(super) rate_limit: Option<RateLimit>,
    pub(super) branches: branches::Branches,
    /// The newest [`MAX_RECORDED_REQUESTS`]; `requests_dropped` older ones were let go.
    pub(super) requests: VecDeque<RecordedRequest>,
    pub(super) requests_dropped: usize,
    pub(super) apply_to: Option<(LocalPostgres, String)>,
}

/// How many requests the mock remembers (the newest): a long soak must not grow it without
/// bound.
pub(super) const MAX_RECORDED_REQUESTS: usize = 10_000;
/// How much of a request's body is remembered.
pub(super) const MAX_RECORDED_BODY: usize = 64 * 1024;
/// How many minted tokens the mock remembers (the newest); older ones no longer log in.
pub(super) const MAX_MINTED: usize = 10_000;

impl State {
    /// Records a request; its number, for [`request_mut`](Self::request_mut).
    pub(super) fn record(&mut self, request: RecordedRequest) -> usize {
        if self.requests.len() == MAX_RECORDED_REQUESTS {
            let _ = self.requests.pop_front();
            self.requests_dropped += 1;
        }
        self.requests.push_back(request);
        self.requests_dropped + self.requests.len() - 1
    }

    /// The request numbered `number`, if it is still remembered.
    pub(super) fn request_mut(&mut self, number: usize) -> Option<&mut RecordedRequest> {
        let index = number.checked_sub(self.requests_dropped)?;
        self.requests.get_mut(index)
    }

    /// Remembers a minted token, letting the oldest go past [`MAX_MINTED`].
    pub(super) fn remember_minted(&mut self, minted: MintedToken) {
        self.minted.push(minted);
        if self.minted.len() > MAX_MINTED {
            let excess = self.minted.len() - MAX_MINTED;
            let _ = self.minted.drain(..excess);
            self.revoked_before = self.revoked_before.saturating_sub(excess);
        }
    }
}

pub(super) type Shared = Arc<Mutex<State>>;

pub(super) fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A Databricks workspace on a loopback port, for tests and demos: OAuth discovery and token
/// endpoint (checking Basic auth), and the Lakebase credential, endpoint, list and
/// current-user calls with the real JSON shapes, checking bearer tokens and request bodies as
/// the service does.
///
/// It runs on its own thread and runtime, so it keeps answering while the test's runtime
/// is blocked, and it stops when dropped. Minted tokens can be made the real password of a
/// [`LocalPostgres`] role ([`apply_tokens_to`](Self::apply_tokens_to)), so Postgres itself
/// checks them. Faults ([`inject`](Self::inject)) and latency can be injected, and requests
/// are counted ([`count`](Self::count)).
///
/// ```no_run
/// use lakebase_pool_testing::MockWorkspace;
///
/// let mock = MockWorkspace::start().unwrap();
/// mock.add_pat("dapi-test", "someone@example.com");
/// mock.add_endpoint("projects/p/branches/b/endpoints/ep-test", "127.0.0.1");
/// println!("DATABRICKS_HOST={}", mock.url());
/// ```
pub struct MockWorkspace {
    state: Shared,
    addr: SocketAddr,
    _server: ServerThread,
}

impl std::fmt::Debug for MockWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockWorkspace")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl MockWorkspace {
    /// Starts a mock on a free loopback port.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound or the thread cannot start.
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start()?;
    /// println!("DATABRICKS_HOST={}", mock.url());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a mock listening on `addr` (for the command-line mock, which may serve other
    /// containers; tests should use [`start`](Self::start)).
    ///
    /// # Errors
    ///
    /// When `addr` cannot be bound or the thread cannot start.
    ///
    /// ```no_run
    /// let mock = lakebase_pool_testing::MockWorkspace::start_on("127.0.0.1:8080".parse().unwrap())?;
    /// # let _ = mock;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let host = if addr.ip().is_unspecified() {
            String::from("127.0.0.1")
        } else {
            addr.ip().to_string()
        };
        let state: Shared = Arc::new(Mutex::new(State {
            base_url: format!("http://{host}:{}", addr.port()),
            pats: HashMap::new(),
            clients: HashMap::new(),
            access_tokens: HashMap::new(),
            endpoints: BTreeMap::new(),
            minted: Vec::new(),
            revoked_before: 0,
            token_lifetime: Duration::from_secs(3600),
            fractional: false,
            discovery: MockDiscovery::Workspace,
            faults: Vec::new(),
            latency: Duration::ZERO,
            rate_limit: None,
            branches: branches::Branches {
                polls: 2,
                ..branches::Branches::default()
            },
            requests: VecDeque::new(),
            requests_dropped: 0,
            apply_to: None,
        }));
        let served = Arc::clone(&state);
        let server =
            ServerThread::spawn("mock-workspace", move |stop| serve(listener, served, stop))?;
        Ok(MockWorkspace {
            state,
            addr,
            _server: server,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`: the `DATABRICKS_HOST` of clients.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// let builder = lakebase_pool::databricks::Workspace::builder().host(mock.url());
    /// # let _ = builder;
    /// ```
    pub fn url(&self) -> String {
        lock(&self.state).base_url.clone()
    }

    /// The address the mock listens on.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// assert!(mock.addr().ip().is_loopback());
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts `token` as a personal access token of `user_name`.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.add_pat("dapi-test", "someone@example.com");
    /// ```
    pub fn add_pat(&self, token: &str, user_name: &str) {
        let _ = lock(&self.state)
            .pats
            .insert(token.to_owned(), user_name.to_owned());
    }

    /// Accepts OAuth client credentials of a service principal; its identity is the client id.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.add_service_principal("client-id", "client-secret");
    /// ```
    pub fn add_service_principal(&self, client_id: &str, client_secret: &str) {
        let _ = lock(&self.state)
            .clients
            .insert(client_id.to_owned(), client_secret.to_owned());
    }

    /// Issues an OAuth token of the signed-in user `user` (an email), as the Databricks Apps
    /// proxy forwards it in `X-Forwarded-Access-Token`: valid for an hour, with the scope to
    /// mint database credentials. Credentials minted with it are `user`'s: they log in as the
    /// Postgres role `user`. Call it again for the refreshed token the proxy would send next.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// let token = mock.issue_user_token("alice@example.com");
    /// # let _ = token;
    /// ```
    pub fn issue_user_token(&self, user: &str) -> Secret {
        self.issue_access_token(user, Duration::from_secs(3600), true)
    }

    /// A token of `user` that has already expired: the workspace answers 401 to it.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// let stale = mock.issue_expired_user_token("alice@example.com");
    /// # let _ = stale;
    /// ```
    pub fn issue_expired_user_token(&self, user: &str) -> Secret {
        self.issue_access_token(user, Duration::ZERO, false)
    }

    /// A valid token of `user` without the scope to mint database credentials (an app whose
    /// user authorization lacks it): the credential call answers 403.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// let unscoped = mock.issue_user_token_without_database_scope("alice@example.com");
    /// # let _ = unscoped;
    /// ```
    pub fn issue_user_token_without_database_scope(&self, user: &str) -> Secret {
        self.issue_access_token(user, Duration::from_secs(3600), false)
    }

    /// Revokes every token issued for `user`: the workspace answers 401 to them.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.revoke_user_tokens("alice@example.com");
    /// ```
    pub fn revoke_user_tokens(&self, user: &str) {
        lock(&self.state)
            .access_tokens
            .retain(|_, token| token.identity != user);
    }

    fn issue_access_token(
        &self,
        identity: &str,
        lifetime: Duration,
        database_scope: bool,
    ) -> Secret {
        let token = crate::rotating::random_token();
        let _ = lock(&self.state).access_tokens.insert(
            token.expose().to_owned(),
            AccessToken {
                identity: identity.to_owned(),
                expiry: SystemTime::now() + lifetime,
                database_scope,
            },
        );
        token
    }

    /// Adds an active endpoint (`projects/../branches/../endpoints/..`) served at `host`.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.add_endpoint("projects/p/branches/b/endpoints/ep-test", "127.0.0.1");
    /// ```
    pub fn add_endpoint(&self, name: &str, host: &str) {
        self.handle().add_endpoint(name, host, false);
    }

    /// Registers a read-only endpoint (`ENDPOINT_TYPE_READ_ONLY`, a read replica) with its
    /// host; it is listed and minted for like any other.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.add_read_only_endpoint("projects/p/branches/b/endpoints/ep-replica", "ep-replica.db.test");
    /// ```
    pub fn add_read_only_endpoint(&self, name: &str, host: &str) {
        self.handle().add_endpoint(name, host, true);
    }

    /// Sets an endpoint's reported state (`ACTIVE`, `IDLE`, `INIT`, `DEGRADED`).
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.set_endpoint_state("projects/p/branches/b/endpoints/ep-test", "IDLE");
    /// ```
    pub fn set_endpoint_state(&self, name: &str, state: &str) {
        self.handle().set_endpoint_state(name, state);
    }

    /// Marks an endpoint disabled (or enabled again): minting for it fails.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.set_endpoint_disabled("projects/p/branches/b/endpoints/ep-test", true);
    /// ```
    pub fn set_endpoint_disabled(&self, name: &str, disabled: bool) {
        if let Some(endpoint) = lock(&self.state).endpoints.get_mut(name) {
            endpoint.disabled = disabled;
        }
    }

    /// A handle on the mock's records, for the emulator (which checks tokens against them).
    pub(crate) fn handle(&self) -> WorkspaceHandle {
        WorkspaceHandle(Arc::clone(&self.state))
    }

    /// Lifetime of minted database tokens when the request gives no `ttl` (default 1 hour).
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.set_token_lifetime(std::time::Duration::from_secs(10));
    /// ```
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.state).token_lifetime = lifetime;
    }

    /// Whether `expire_time` carries fractional seconds (default: no).
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.set_fractional_expire_time(true);
    /// ```
    pub fn set_fractional_expire_time(&self, fractional: bool) {
        lock(&self.state).fractional = fractional;
    }

    /// How token-endpoint discovery answers (default: [`MockDiscovery::Workspace`]).
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.set_discovery(lakebase_pool_testing::MockDiscovery::OidcOnly);
    /// ```
    pub fn set_discovery(&self, discovery: MockDiscovery) {
        lock(&self.state).discovery = discovery;
    }

    /// Makes every minted token the password of `role` on `pg` (valid until its expiry), so
    /// the server checks the tokens. Only the newest token then logs in.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// let pg = lakebase_pool_testing::LocalPostgres::start()?;
    /// mock.apply_tokens_to(&pg, "someone@example.com");
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn apply_tokens_to(&self, pg: &LocalPostgres, role: &str) {
        lock(&self.state).apply_to = Some((pg.clone(), role.to_owned()));
    }

    /// Serves at most `per_second` requests to paths starting with `path_prefix` in any one
    /// second, and answers the others `429` with `Retry-After` (the whole seconds until a
    /// slot frees, at least 1), as the workspace's rate limits do. `per_second` of 0 removes
    /// the limit.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.set_rate_limit("/api/2.0/postgres/credentials", 10);
    /// ```
    pub fn set_rate_limit(&self, path_prefix: &str, per_second: usize) {
        lock(&self.state).rate_limit = (per_second > 0).then(|| RateLimit {
            path_prefix: path_prefix.to_owned(),
            per_second,
            served: VecDeque::new(),
        });
    }

    /// Delays every answer by `latency`.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.set_latency(std::time::Duration::from_millis(50));
    /// ```
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// Queues a fault for the next matching requests.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::rate_limited(1));
    /// ```
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push(fault);
    }

    /// Drops every queued fault: the workspace answers normally again.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool_testing::Fault::status(503, "down").times(1000));
    /// mock.clear_faults();
    /// ```
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// How many requests with this method had a path starting with `path_prefix`.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// assert_eq!(mock.count("POST", "/api/2.0/postgres/credentials"), 0);
    /// ```
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .count()
    }

    /// Every request so far (the newest 10,000), in the order they arrived, with at most
    /// 64 KiB of each body.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// for request in mock.requests() {
    ///     println!("{} {} at {:?}", request.method, request.path, request.started);
    /// }
    /// ```
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.iter().cloned().collect()
    }

    /// How many round trips a client made one after the other: the longest chain of
    /// requests in which each arrived after the one before it was answered. Requests that
    /// arrive while another is served ran beside it and add none. With a latency set
    /// ([`set_latency`](Self::set_latency)), this is what a cold start costs in WAN round
    /// trips.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// assert_eq!(mock.sequential_round_trips(), 0, "nothing asked yet");
    /// ```
    pub fn sequential_round_trips(&self) -> usize {
        sequential_round_trips(&self.requests())
    }

    /// Revokes every database token minted so far, as changing the role's password behind a
    /// pool's back would: the emulator refuses logins with them, and sessions already open go
    /// on. Tokens minted afterwards work.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.revoke_minted();
    /// ```
    pub fn revoke_minted(&self) {
        let mut state = lock(&self.state);
        state.revoked_before = state.minted.len();
    }

    /// How many polls a long-running operation of the branch API (creating or deleting a
    /// branch or an endpoint) takes to finish (default 2, at least 1), so that clients must
    /// poll it as the real service makes them.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.set_operation_polls(5);
    /// ```
    pub fn set_operation_polls(&self, polls: u32) {
        lock(&self.state).branches.polls = polls.max(1);
    }

    /// Ends the next long-running operation to finish with this error, as the service
    /// reports one: `{"error": {"error_code": code, "message": message}}`.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// mock.fail_next_operation("INTERNAL_ERROR", "compute provisioning failed");
    /// ```
    pub fn fail_next_operation(&self, code: &str, message: &str) {
        lock(&self.state).branches.fail_next = Some((code.to_owned(), message.to_owned()));
    }

    /// Every database token minted so far (the newest 10,000: older ones no longer log in).
    ///
    /// ```no_run
    /// # let mock = lakebase_pool_testing::MockWorkspace::start().unwrap();
    /// for token in mock.minted() {
    ///     println!("{} for {}", token.identity, token.endpoint);
    /// }
    /// ```
    pub fn minted(&self) -> Vec<MintedToken> {
        lock(&self.state).minted.clone()
    }
}

/// Shared access to a mock's records, usable from another thread.
#[derive(Clone)]
pub(crate) struct WorkspaceHandle(Shared);

impl WorkspaceHandle {
    pub(crate) fn add_endpoint(&self, name: &str, host: &str, read_only: bool) {
        let endpoint = MockEndpoint {
            host: host.to_owned(),
            state: String::from("ACTIVE"),
            disabled: false,
            read_only,
            read_only_host: None,
        };
        let mut state = lock(&self.0);
        let _ = state.endpoints.insert(name.to_owned(), endpoint);
        branches::ensure_branch(&mut state.branches, name);
    }

    /// Makes branches real: called when the branch API creates or deletes one.
    pub(crate) fn set_branch_hook(&self, hook: BranchHook) {
        lock(&self.0).branches.hook = Some(hook);
    }

    /// Drops the hook (and what it holds).
    pub(crate) fn clear_branch_hook(&self) {
        let hook = lock(&self.0).branches.hook.take();
        drop(hook);
    }

    /// Reports `host` as the endpoint's `status.hosts.read_only_host`.
    pub(crate) fn set_read_only_host(&self, name: &str, host: &str) {
        if let Some(endpoint) = lock(&self.0).endpoints.get_mut(name) {
            endpoint.read_only_host = Some(host.to_owned());
        }
    }

    pub(crate) fn set_endpoint_state(&self, name: &str, state: &str) {
        if let Some(endpoint) = lock(&self.0).endpoints.get_mut(name) {
            endpoint.state = state.to_owned();
        }
    }

    /// Whether `token` was minted for `endpoint` and `user` and has not expired: what Lakebase
    /// checks at login.
    pub(crate) fn accepts(&self, token: &str, endpoint: &str, user: &str) -> bool {
        let now = SystemTime::now();
        let state = lock(&self.0);
        state.minted[state.revoked_before..].iter().any(|minted| {
            minted.token.expose() == token
                && minted.endpoint == endpoint
                && minted.identity == user
                && minted.expire_time > now
        })
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Shared,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = accept(&listener) => {
                let Some(stream) = accepted else { continue };
                let state = Arc::clone(&state);
                drop(tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }));
            }
        }
    }
}
