//! `MockWorkspace`: a Databricks workspace on loopback, speaking the real wire contract.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::LocalPostgres;
use super::rotating::random_token;
use super::server_thread::ServerThread;
use crate::Secret;
use crate::databricks::time::format_rfc3339;

/// How the mock answers token-endpoint discovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MockDiscovery {
    /// Newer SDKs: `/.well-known/databricks-config` names an OIDC endpoint (`/oidc2`) whose
    /// metadata names the token endpoint `/oidc2/v1/token`.
    DatabricksConfig,
    /// Older SDKs: only `/oidc/.well-known/oauth-authorization-server` answers.
    OidcOnly,
    /// No discovery document answers; clients must fall back to `/oidc/v1/token`.
    None,
}

/// A canned misbehaviour for the next matching requests; see [`MockWorkspace::inject`].
///
/// ```
/// use lakebase_pool::testing::Fault;
///
/// let fault = Fault::rate_limited(1).times(2).on("/api/2.0/postgres/credentials");
/// # let _ = fault;
/// ```
#[derive(Clone, Debug)]
pub struct Fault {
    kind: FaultKind,
    times: usize,
    path: Option<String>,
}

#[derive(Clone, Debug)]
enum FaultKind {
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    MalformedJson,
    Truncated,
    Hang,
}

impl Fault {
    /// Answer with `status` and `body` (any text: JSON, HTML, nothing).
    ///
    /// ```
    /// let fault = lakebase_pool::testing::Fault::status(503, "<html>maintenance</html>");
    /// # let _ = fault;
    /// ```
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Fault {
            kind: FaultKind::Status {
                status,
                body: body.into(),
                retry_after: None,
            },
            times: 1,
            path: None,
        }
    }

    /// Answer 429 with `Retry-After: seconds` and an API error body.
    ///
    /// ```
    /// let fault = lakebase_pool::testing::Fault::rate_limited(2);
    /// # let _ = fault;
    /// ```
    pub fn rate_limited(seconds: u64) -> Self {
        Fault {
            kind: FaultKind::Status {
                status: 429,
                body:
                    json!({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Too many requests"})
                        .to_string(),
                retry_after: Some(seconds),
            },
            times: 1,
            path: None,
        }
    }

    /// Answer 200 with a truncated JSON document.
    ///
    /// ```
    /// let fault = lakebase_pool::testing::Fault::malformed_json();
    /// # let _ = fault;
    /// ```
    pub fn malformed_json() -> Self {
        Fault {
            kind: FaultKind::MalformedJson,
            times: 1,
            path: None,
        }
    }

    /// Answer 200 announcing a longer body than it sends, then close the connection: an
    /// answer cut off in transit.
    ///
    /// ```
    /// let fault = lakebase_pool::testing::Fault::truncated();
    /// # let _ = fault;
    /// ```
    pub fn truncated() -> Self {
        Fault {
            kind: FaultKind::Truncated,
            times: 1,
            path: None,
        }
    }

    /// Never answer (the connection stays open until the mock stops).
    ///
    /// ```
    /// let fault = lakebase_pool::testing::Fault::hang();
    /// # let _ = fault;
    /// ```
    pub fn hang() -> Self {
        Fault {
            kind: FaultKind::Hang,
            times: 1,
            path: None,
        }
    }

    /// Apply to the next `n` matching requests (default 1).
    ///
    /// ```
    /// let fault = lakebase_pool::testing::Fault::status(500, "").times(3);
    /// # let _ = fault;
    /// ```
    #[must_use]
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    /// Apply only to requests whose path starts with `prefix` (default: any request).
    ///
    /// ```
    /// let fault = lakebase_pool::testing::Fault::hang().on("/api/2.0/postgres/credentials");
    /// # let _ = fault;
    /// ```
    #[must_use]
    pub fn on(mut self, prefix: impl Into<String>) -> Self {
        self.path = Some(prefix.into());
        self
    }
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

#[derive(Clone, Debug)]
struct MockEndpoint {
    host: String,
    state: String,
    disabled: bool,
}

struct State {
    base_url: String,
    pats: HashMap<String, String>,
    clients: HashMap<String, String>,
    access_tokens: HashMap<String, (String, SystemTime)>,
    endpoints: BTreeMap<String, MockEndpoint>,
    minted: Vec<MintedToken>,
    token_lifetime: Duration,
    fractional: bool,
    discovery: MockDiscovery,
    faults: Vec<Fault>,
    latency: Duration,
    requests: Vec<(String, String)>,
    apply_to: Option<(LocalPostgres, String)>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
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
/// use lakebase_pool::testing::MockWorkspace;
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
    /// let mock = lakebase_pool::testing::MockWorkspace::start()?;
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
    /// let mock = lakebase_pool::testing::MockWorkspace::start_on("127.0.0.1:8080".parse().unwrap())?;
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
            token_lifetime: Duration::from_secs(3600),
            fractional: false,
            discovery: MockDiscovery::DatabricksConfig,
            faults: Vec::new(),
            latency: Duration::ZERO,
            requests: Vec::new(),
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
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// let builder = lakebase_pool::databricks::Workspace::builder().host(mock.url());
    /// # let _ = builder;
    /// ```
    pub fn url(&self) -> String {
        lock(&self.state).base_url.clone()
    }

    /// The address the mock listens on.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// assert!(mock.addr().ip().is_loopback());
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts `token` as a personal access token of `user_name`.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
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
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// mock.add_service_principal("client-id", "client-secret");
    /// ```
    pub fn add_service_principal(&self, client_id: &str, client_secret: &str) {
        let _ = lock(&self.state)
            .clients
            .insert(client_id.to_owned(), client_secret.to_owned());
    }

    /// Adds an active endpoint (`projects/../branches/../endpoints/..`) served at `host`.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// mock.add_endpoint("projects/p/branches/b/endpoints/ep-test", "127.0.0.1");
    /// ```
    pub fn add_endpoint(&self, name: &str, host: &str) {
        self.handle().add_endpoint(name, host);
    }

    /// Sets an endpoint's reported state (`ACTIVE`, `IDLE`, `INIT`, `DEGRADED`).
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// mock.set_endpoint_state("projects/p/branches/b/endpoints/ep-test", "IDLE");
    /// ```
    pub fn set_endpoint_state(&self, name: &str, state: &str) {
        self.handle().set_endpoint_state(name, state);
    }

    /// Marks an endpoint disabled (or enabled again): minting for it fails.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
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
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// mock.set_token_lifetime(std::time::Duration::from_secs(10));
    /// ```
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        lock(&self.state).token_lifetime = lifetime;
    }

    /// Whether `expire_time` carries fractional seconds (default: no).
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// mock.set_fractional_expire_time(true);
    /// ```
    pub fn set_fractional_expire_time(&self, fractional: bool) {
        lock(&self.state).fractional = fractional;
    }

    /// How token-endpoint discovery answers (default: [`MockDiscovery::DatabricksConfig`]).
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// mock.set_discovery(lakebase_pool::testing::MockDiscovery::OidcOnly);
    /// ```
    pub fn set_discovery(&self, discovery: MockDiscovery) {
        lock(&self.state).discovery = discovery;
    }

    /// Makes every minted token the password of `role` on `pg` (valid until its expiry), so
    /// the server checks the tokens. Only the newest token then logs in.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// let pg = lakebase_pool::testing::LocalPostgres::start()?;
    /// mock.apply_tokens_to(&pg, "someone@example.com");
    /// # Ok::<(), lakebase_pool::testing::HarnessError>(())
    /// ```
    pub fn apply_tokens_to(&self, pg: &LocalPostgres, role: &str) {
        lock(&self.state).apply_to = Some((pg.clone(), role.to_owned()));
    }

    /// Delays every answer by `latency`.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// mock.set_latency(std::time::Duration::from_millis(50));
    /// ```
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// Queues a fault for the next matching requests.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool::testing::Fault::rate_limited(1));
    /// ```
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push(fault);
    }

    /// Drops every queued fault: the workspace answers normally again.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// mock.inject(lakebase_pool::testing::Fault::status(503, "down").times(1000));
    /// mock.clear_faults();
    /// ```
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// How many requests with this method had a path starting with `path_prefix`.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
    /// assert_eq!(mock.count("POST", "/api/2.0/postgres/credentials"), 0);
    /// ```
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        lock(&self.state)
            .requests
            .iter()
            .filter(|(m, p)| m == method && p.starts_with(path_prefix))
            .count()
    }

    /// Every database token minted so far.
    ///
    /// ```no_run
    /// # let mock = lakebase_pool::testing::MockWorkspace::start().unwrap();
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
    pub(crate) fn add_endpoint(&self, name: &str, host: &str) {
        let endpoint = MockEndpoint {
            host: host.to_owned(),
            state: String::from("ACTIVE"),
            disabled: false,
        };
        let _ = lock(&self.0).endpoints.insert(name.to_owned(), endpoint);
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
        lock(&self.0).minted.iter().any(|minted| {
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
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
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

type Answer = Response<BoxBody<Bytes, std::io::Error>>;

/// The largest request body the mock reads.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

fn answer(status: u16, body: impl Into<Bytes>) -> Answer {
    let body = Full::new(body.into()).map_err(|never| match never {});
    let mut response = Response::new(body.boxed());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let _ = response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A body that sends the start of a JSON document, then fails, which makes the server drop
/// the connection short of the announced length. It yields once in between, so that the
/// status line, headers and first bytes are flushed before the connection drops.
struct CutOff {
    step: u8,
}

impl hyper::body::Body for CutOff {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.step += 1;
        match self.step {
            1 => {
                let start = Bytes::from_static(b"{\"token\": \"abc");
                std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(start))))
            }
            2 => {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            _ => std::task::Poll::Ready(Some(Err(std::io::Error::other("cut off")))),
        }
    }
}

fn api_error(status: u16, code: &str, message: &str) -> Answer {
    answer(
        status,
        json!({"error_code": code, "message": message}).to_string(),
    )
}

fn ok(value: Value) -> Answer {
    answer(200, value.to_string())
}

async fn handle(state: &Shared, request: Request<Incoming>) -> Answer {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let headers = request.headers().clone();
    // Capped like any server's: a client that streams without end gets 413, not our memory.
    let body = match http_body_util::Limited::new(request.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return api_error(
                413,
                "REQUEST_TOO_LARGE",
                "the request body is larger than 1 MiB",
            );
        }
    };

    let (fault, latency) = {
        let mut state = lock(state);
        state.requests.push((method.clone(), path.clone()));
        let index = state.faults.iter().position(|f| {
            f.times > 0 && f.path.as_ref().is_none_or(|p| path.starts_with(p.as_str()))
        });
        let fault = index.map(|i| {
            state.faults[i].times -= 1;
            state.faults[i].kind.clone()
        });
        state.faults.retain(|f| f.times > 0);
        (fault, state.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match fault {
        Some(FaultKind::Hang) => std::future::pending().await,
        Some(FaultKind::MalformedJson) => return answer(200, "{\"token\": \"abc"),
        Some(FaultKind::Truncated) => {
            let mut response = answer(200, "");
            *response.body_mut() = CutOff { step: 0 }.boxed();
            let _ = response
                .headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, 4096.into());
            return response;
        }
        Some(FaultKind::Status {
            status,
            body,
            retry_after,
        }) => {
            let mut response = answer(status, body);
            if let Some(seconds) = retry_after {
                let _ = response
                    .headers_mut()
                    .insert(hyper::header::RETRY_AFTER, seconds.into());
            }
            return response;
        }
        None => {}
    }

    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    match (method.as_str(), path.as_str()) {
        ("GET", "/.well-known/databricks-config") => discovery_config(state),
        ("GET", "/oidc/.well-known/oauth-authorization-server") => {
            oidc_metadata(state, "/oidc", MockDiscovery::OidcOnly)
        }
        ("GET", "/oidc2/.well-known/oauth-authorization-server") => {
            oidc_metadata(state, "/oidc2", MockDiscovery::DatabricksConfig)
        }
        ("POST", "/oidc/v1/token" | "/oidc2/v1/token") => oauth_token(state, &headers, &body),
        _ => {
            let identity = bearer
                .as_deref()
                .and_then(|token| identity_of(state, token));
            let Some(identity) = identity else {
                return api_error(401, "UNAUTHENTICATED", "Invalid access token.");
            };
            match (method.as_str(), path.as_str()) {
                ("POST", "/api/2.0/postgres/credentials") => mint(state, &identity, &body).await,
                ("GET", "/api/2.0/preview/scim/v2/Me") => {
                    ok(json!({"userName": identity, "id": "1234"}))
                }
                ("GET", p)
                    if p.starts_with("/api/2.0/postgres/projects/")
                        && p.ends_with("/endpoints") =>
                {
                    list_endpoints(
                        state,
                        p.trim_start_matches("/api/2.0/postgres/")
                            .trim_end_matches("/endpoints"),
                        &query,
                    )
                }
                ("GET", p) if p.starts_with("/api/2.0/postgres/projects/") => {
                    get_endpoint(state, p.trim_start_matches("/api/2.0/postgres/"))
                }
                _ => api_error(
                    404,
                    "ENDPOINT_NOT_FOUND",
                    &format!("No API found for '{method} {path}'"),
                ),
            }
        }
    }
}

fn identity_of(state: &Shared, token: &str) -> Option<String> {
    let state = lock(state);
    if let Some(user) = state.pats.get(token) {
        return Some(user.clone());
    }
    state
        .access_tokens
        .get(token)
        .filter(|(_, expiry)| *expiry > SystemTime::now())
        .map(|(identity, _)| identity.clone())
}

fn discovery_config(state: &Shared) -> Answer {
    let state = lock(state);
    if state.discovery != MockDiscovery::DatabricksConfig {
        return api_error(
            404,
            "ENDPOINT_NOT_FOUND",
            "No API found for '/.well-known/databricks-config'",
        );
    }
    ok(json!({"oidc_endpoint": format!("{}/oidc2", state.base_url), "workspace_id": "1234567890"}))
}

fn oidc_metadata(state: &Shared, prefix: &str, serves_in: MockDiscovery) -> Answer {
    let state = lock(state);
    if state.discovery != serves_in {
        return answer(404, "");
    }
    let base = format!("{}{prefix}", state.base_url);
    ok(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/v1/authorize"),
        "token_endpoint": format!("{base}/v1/token"),
    }))
}

fn oauth_token(state: &Shared, headers: &hyper::HeaderMap, body: &[u8]) -> Answer {
    let oauth_error = |status: u16, error: &str, description: &str| {
        answer(
            status,
            json!({"error": error, "error_description": description}).to_string(),
        )
    };
    let basic = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(base64_decode)
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((client_id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    };
    let form = parse_form(body);
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    if form.get("scope").map(String::as_str) != Some("all-apis") {
        return oauth_error(400, "invalid_scope", "scope must be all-apis");
    }
    let mut state = lock(state);
    if state.clients.get(client_id).map(String::as_str) != Some(secret) {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    }
    let token = random_token().expose().to_owned();
    let lifetime = 3600;
    let expiry = SystemTime::now() + Duration::from_secs(lifetime);
    let _ = state
        .access_tokens
        .insert(token.clone(), (client_id.to_owned(), expiry));
    ok(
        json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": "all-apis"}),
    )
}

async fn mint(state: &Shared, identity: &str, body: &[u8]) -> Answer {
    let request: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Value::Object(map),
        _ => {
            return api_error(
                400,
                "MALFORMED_REQUEST",
                "Request body must be a JSON object",
            );
        }
    };
    let Some(endpoint) = request
        .get("endpoint")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return api_error(
            400,
            "INVALID_PARAMETER_VALUE",
            "Field 'endpoint' is required",
        );
    };
    let (lifetime, fractional, apply_to) = {
        let state = lock(state);
        match state.endpoints.get(&endpoint) {
            None => {
                return api_error(
                    404,
                    "NOT_FOUND",
                    &format!("Endpoint '{endpoint}' does not exist."),
                );
            }
            Some(e) if e.disabled => {
                return api_error(400, "INVALID_STATE", "Endpoint is disabled");
            }
            Some(_) => {}
        }
        (
            state.token_lifetime,
            state.fractional,
            state.apply_to.clone(),
        )
    };
    let lifetime = match request.get("ttl") {
        None => lifetime,
        Some(ttl) => match ttl
            .as_str()
            .and_then(crate::databricks::http::parse_proto_duration)
        {
            Some(ttl) if (300..=3600).contains(&ttl.as_secs()) => ttl,
            _ => {
                return api_error(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "ttl must be between 300s and 3600s",
                );
            }
        },
    };
    let token = random_token();
    let expire_time = SystemTime::now() + lifetime;
    if let Some((pg, role)) = apply_to
        && let Err(error) = pg.set_password(&role, &token, Some(expire_time)).await
    {
        return api_error(
            500,
            "INTERNAL_ERROR",
            &format!("could not apply the token: {error}"),
        );
    }
    lock(state).minted.push(MintedToken {
        token: token.clone(),
        endpoint,
        identity: identity.to_owned(),
        expire_time,
    });
    ok(json!({"token": token.expose(), "expire_time": format_rfc3339(expire_time, fractional)}))
}

fn endpoint_json(name: &str, endpoint: &MockEndpoint) -> Value {
    let (parent, id) = name.rsplit_once("/endpoints/").unwrap_or((name, name));
    json!({
        "name": name,
        "parent": parent,
        "endpoint_id": id,
        "uid": format!("uid-{id}"),
        "create_time": "2026-01-01T00:00:00Z",
        "update_time": "2026-01-01T00:00:00Z",
        "spec": {"endpoint_type": "ENDPOINT_TYPE_READ_WRITE"},
        "status": {
            "hosts": {"host": endpoint.host},
            "current_state": endpoint.state,
            "endpoint_type": "ENDPOINT_TYPE_READ_WRITE",
            "disabled": endpoint.disabled,
        },
    })
}

fn get_endpoint(state: &Shared, name: &str) -> Answer {
    match lock(state).endpoints.get(name) {
        Some(endpoint) => ok(endpoint_json(name, endpoint)),
        None => api_error(
            404,
            "NOT_FOUND",
            &format!("Endpoint '{name}' does not exist."),
        ),
    }
}

/// Lists a branch's endpoints two per page, so that clients must follow `next_page_token`.
fn list_endpoints(state: &Shared, branch: &str, query: &str) -> Answer {
    const PAGE: usize = 2;
    let form = parse_form(query.as_bytes());
    // Page tokens are opaque base64-like text, `+`, `/` and `=` included, as the real API's
    // are: a client that does not escape them gets the wrong page.
    let start: usize = form
        .get("page_token")
        .and_then(|t| t.strip_prefix("pg+")?.strip_suffix("/==")?.parse().ok())
        .unwrap_or(0);
    let state = lock(state);
    let prefix = format!("{branch}/endpoints/");
    let all: Vec<Value> = state
        .endpoints
        .iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .map(|(name, endpoint)| endpoint_json(name, endpoint))
        .collect();
    let page: Vec<Value> = all.iter().skip(start).take(PAGE).cloned().collect();
    let mut body = json!({"endpoints": page});
    if start + PAGE < all.len() {
        body["next_page_token"] = json!(format!("pg+{}/==", start + PAGE));
    }
    ok(body)
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let decode = |text: &str| {
        let bytes = text.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|&c| c == byte)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_forms_decode() {
        assert_eq!(
            base64_decode("aWQ6c2VjcmV0").as_deref(),
            Some(&b"id:secret"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("not base64!"), None);
        let form = parse_form(b"grant_type=client_credentials&scope=all-apis&x=a+b%26c");
        assert_eq!(form["scope"], "all-apis");
        assert_eq!(form["x"], "a b&c");
    }
}
