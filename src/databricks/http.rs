//! HTTP to the workspace: timeouts, retries, size caps, and error bodies of every shape.
//!
//! # Defaults
//!
//! | setting | default | why |
//! |---|---|---|
//! | request timeout | 30 s | covers sending, waiting and reading the whole answer |
//! | connect timeout | 10 s | |
//! | retry budget | 60 s | no call, retries included, runs longer (the SDKs allow 300 s; a pool checkout should not wait that long) |
//! | answer size cap | 1 MiB | the API's answers are a few KiB; a larger one is not what we asked for |
//!
//! Retried: connection errors, timeouts, and HTTP 429 and 503 (waiting `Retry-After` seconds,
//! or the body's `RetryInfo`, or 1 s, then a random part of as long again, twice as long from
//! the second refusal on, within the budget: a fleet of clients told the same `Retry-After`
//! comes back spread out, not in one wave). Never retried: other 4xx
//! (a bad request or missing permission does not fix itself) and 504 (the request may have
//! been carried out). Redirects are not followed, so a bearer token cannot be carried to
//! another host. Tokens travel in headers and secrets in bodies, never in URLs, so an error
//! that names a URL is safe to print.

use crate::error::WorkspaceError;
use std::time::Duration;

use reqwest::Url;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::answers::{decode, parse_error_body};
use crate::backoff::{Backoff, deadline_after, ends_before};
use crate::error::RequestProblem;
use crate::{Environment, Error, Secret, tls};

/// Timeouts and limits of workspace calls; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpPolicy {
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) retry_budget: Duration,
    pub(crate) max_body: usize,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry_budget: Duration::from_secs(60),
            max_body: 1024 * 1024,
        }
    }
}

/// How a request proves who it is.
pub(crate) enum Auth<'a> {
    None,
    Bearer(&'a Secret),
    Basic { user: &'a str, password: &'a Secret },
}

/// A request body.
pub(crate) enum Body {
    Empty,
    Json(serde_json::Value),
    Form(Vec<(&'static str, String)>),
}

/// One API call, as data, so that it can be sent again on retry.
pub(crate) struct Call<'a> {
    pub(crate) method: reqwest::Method,
    pub(crate) url: Url,
    pub(crate) auth: Auth<'a>,
    pub(crate) body: Body,
    pub(crate) workspace_id: Option<&'a str>,
}

impl<'a> Call<'a> {
    pub(crate) fn get(url: Url, auth: Auth<'a>) -> Self {
        Call {
            method: reqwest::Method::GET,
            url,
            auth,
            body: Body::Empty,
            workspace_id: None,
        }
    }

    pub(crate) fn post(url: Url, auth: Auth<'a>, body: Body) -> Self {
        Call {
            method: reqwest::Method::POST,
            url,
            auth,
            body,
            workspace_id: None,
        }
    }

    fn path(&self) -> String {
        self.url.path().to_owned()
    }

    fn request_error(&self, problem: RequestProblem, source: Option<reqwest::Error>) -> Error {
        Error::Workspace(WorkspaceError::Request {
            method: self.method.clone(),
            path: self.path(),
            problem,
            source: source.map(|e| Box::new(e.without_url()) as crate::BoxError),
        })
    }
}

/// A complete answer: status and (capped) body. Its `Debug` shows the body's length only:
/// bodies carry tokens.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    retry_after: Option<Duration>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

/// What one attempt produced.
enum Attempt {
    Answer(Answer),
    Failed(Error),
}

/// The forward proxy for workspace calls, read from the crate's [`Environment`], never from
/// the process environment behind its back.
///
/// Only https calls are proxied, through a CONNECT tunnel, so TLS runs end to end and the
/// proxy sees no credential: `HTTPS_PROXY` (or `https_proxy`, else `ALL_PROXY`/`all_proxy`).
/// `HTTP_PROXY` is ignored on purpose: a plain-http call (to a loopback test workspace) would
/// hand its token to the proxy in clear. Loopback hosts and those matching `NO_PROXY` (or
/// `no_proxy`) are never proxied.
#[derive(Clone, Default)]
pub(crate) struct ProxySettings {
    https_proxy: Option<Url>,
    no_proxy: String,
}

impl std::fmt::Debug for ProxySettings {
    /// The proxy's host and port only: its URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proxy = self.https_proxy.as_ref().map(|url| {
            format!(
                "{}:{}",
                url.host_str().unwrap_or("?"),
                url.port_or_known_default().unwrap_or(0)
            )
        });
        f.debug_struct("ProxySettings")
            .field("https_proxy", &proxy)
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ProxySettings {
    pub(crate) fn from_environment(env: &Environment) -> Result<Self, Error> {
        let found = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
            .into_iter()
            .find_map(|var| env.get(var).map(|value| (var, value)));
        let https_proxy = match found {
            None => None,
            Some((var, value)) => {
                // Not quoted back: a proxy URL may carry the proxy's password.
                let invalid = |problem: &str| Error::InvalidEnv {
                    var,
                    problem: format!("{problem} (expected http://proxy.example.com:3128)"),
                };
                let with_scheme = if value.contains("://") {
                    value.to_owned()
                } else {
                    format!("http://{value}")
                };
                let url = Url::parse(&with_scheme).map_err(|_| invalid("is not a URL"))?;
                let usable = matches!(url.scheme(), "http" | "https") && url.host_str().is_some();
                match (usable, var.eq_ignore_ascii_case("ALL_PROXY")) {
                    (true, _) => Some(url),
                    // ALL_PROXY often names a SOCKS proxy for other tools: not ours to refuse.
                    (false, true) => {
                        tracing::warn!(
                            var,
                            scheme = url.scheme(),
                            "ignoring a proxy that is not http:// or https://; workspace calls go direct"
                        );
                        None
                    }
                    (false, false) => {
                        return Err(invalid("must be an http:// or https:// proxy URL"));
                    }
                }
            }
        };
        let user_list = env
            .get("NO_PROXY")
            .or_else(|| env.get("no_proxy"))
            .unwrap_or_default();
        Ok(ProxySettings {
            https_proxy,
            no_proxy: format!("localhost,127.0.0.0/8,::1,{user_list}"),
        })
    }
}

/// The workspace's HTTP client. Cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
    policy: HttpPolicy,
}

impl std::fmt::Debug for HttpClient {
    /// The policy only: reqwest's own `Debug` would print the proxy URL, password included.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// How long to wait after a server asked for `server_wait`: that, plus a random part of as
/// long again (twice as long from the second refusal on), so that clients refused together
/// come back spread out; never past `deadline`.
fn spread_after(server_wait: Duration, attempt: u32, deadline: Instant) -> Duration {
    let factor = f64::from(attempt.min(2)) * fastrand::f64();
    let spread =
        Duration::try_from_secs_f64(server_wait.as_secs_f64() * factor).unwrap_or(Duration::MAX);
    let left = deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(server_wait);
    server_wait.saturating_add(spread.min(left))
}

impl HttpClient {
    /// A client trusting the webpki roots plus `trust`'s extra CA certificates, with the
    /// crate's crypto provider; host names are always verified. It uses `proxy` and no
    /// other: reqwest's reading of the process's proxy variables is switched off.
    pub(crate) fn new(
        policy: HttpPolicy,
        trust: &tls::Trust,
        proxy: &ProxySettings,
    ) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(url) = &proxy.https_proxy {
            let proxy = reqwest::Proxy::https(url.as_str())
                .map_err(|_| {
                    Error::workspace_config(String::from("the HTTPS_PROXY URL is not usable"))
                })?
                .no_proxy(reqwest::NoProxy::from_string(&proxy.no_proxy));
            builder = builder.proxy(proxy);
        }
        let client = builder
            .use_preconfigured_tls(tls::client_config(trust, true)?)
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("lakebase-pool/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::workspace_config_because("could not set up the HTTP client", e))?;
        Ok(HttpClient { client, policy })
    }

    /// Sends `call`, retrying transient failures within the budget, and returns the final
    /// answer whatever its status.
    pub(crate) async fn send(&self, call: &Call<'_>) -> Result<Answer, Error> {
        let deadline = deadline_after(Instant::now(), self.policy.retry_budget);
        let backoff = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(8),
        };
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let (outcome, wait) = match self.attempt(call).await {
                Attempt::Answer(answer) if matches!(answer.status, 429 | 503) => {
                    // Server-supplied, so any number: compared, never added to an instant.
                    let server_wait = answer
                        .retry_after
                        .or_else(|| parse_error_body(&answer.body).retry_delay)
                        .unwrap_or(Duration::from_secs(1));
                    if !ends_before(server_wait, deadline) {
                        return Err(call.request_error(
                            RequestProblem::Throttled {
                                status: answer.status,
                                retry_after: server_wait,
                                budget_left: deadline.saturating_duration_since(Instant::now()),
                            },
                            None,
                        ));
                    }
                    (Ok(answer), spread_after(server_wait, attempt, deadline))
                }
                Attempt::Answer(answer) => return Ok(answer),
                Attempt::Failed(error) if error.is_transient() => {
                    let step = backoff.step(attempt);
                    (Err(error), step.mul_f64(0.5 + fastrand::f64() / 2.0))
                }
                Attempt::Failed(error) => return Err(error),
            };
            if !ends_before(wait, deadline) {
                tracing::warn!(
                    method = %call.method,
                    path = %call.url.path(),
                    attempts = attempt,
                    "workspace call still failing when its retry budget ran out"
                );
                return outcome;
            }
            tracing::info!(
                method = %call.method,
                path = %call.url.path(),
                attempt,
                status = outcome.as_ref().ok().map(|a| a.status),
                error = outcome.as_ref().err().map(ToString::to_string),
                wait_ms = crate::backoff::millis(wait),
                "workspace call failed with a transient error; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends `call` and decodes a successful JSON answer; an error status becomes
    /// [`WorkspaceError::Api`].
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: &Call<'_>) -> Result<T, Error> {
        let answer = self.send(call).await?;
        if !(200..300).contains(&answer.status) {
            return Err(api_error(&call.method, call.path(), &answer));
        }
        decode(&answer.body).map_err(|problem| call.request_error(problem, None))
    }

    async fn attempt(&self, call: &Call<'_>) -> Attempt {
        let timeout = self.policy.request_timeout;
        match tokio::time::timeout(timeout, self.exchange(call)).await {
            Err(_) => Attempt::Failed(call.request_error(RequestProblem::TimedOut(timeout), None)),
            Ok(Err(error)) => Attempt::Failed(error),
            Ok(Ok(answer)) => Attempt::Answer(answer),
        }
    }

    async fn exchange(&self, call: &Call<'_>) -> Result<Answer, Error> {
        let mut request = self.client.request(call.method.clone(), call.url.clone());
        request = match &call.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token.expose()),
            Auth::Basic { user, password } => request.basic_auth(user, Some(password.expose())),
        };
        if let Some(id) = call.workspace_id {
            request = request.header("X-Databricks-Workspace-Id", id);
        }
        request = match &call.body {
            Body::Empty => request,
            Body::Json(value) => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(value.to_string()),
            Body::Form(fields) => request.form(fields),
        };
        let transport = |e: reqwest::Error| {
            let problem = if e.is_timeout() {
                RequestProblem::TimedOut(self.policy.request_timeout)
            } else {
                let host = call.url.host_str().unwrap_or_default();
                let host = match call.url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                };
                unreachable_because(&e, &host)
            };
            call.request_error(problem, Some(e))
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let limit = self.policy.max_body;
        let too_large = || call.request_error(RequestProblem::BodyTooLarge(limit), None);
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(too_large());
        }
        // An answer that stops short is not an unreachable workspace; a timeout still is one.
        let cut_off = |e: reqwest::Error| {
            if e.is_timeout() {
                transport(e)
            } else {
                call.request_error(RequestProblem::CutOff, Some(e))
            }
        };
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(cut_off)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            body,
            retry_after,
        })
    }
}

/// Why a request could not reach the workspace: a refused connection or a name that does not
/// resolve are a wrong host, known at once; anything else (a reset, TLS, a DNS server that
/// did not answer) may pass.
fn unreachable_because(error: &reqwest::Error, host: &str) -> RequestProblem {
    if !error.is_connect() {
        return RequestProblem::Unreachable;
    }
    let mut refused = false;
    let mut text = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        text.push_str(&error.to_string());
        text.push('\n');
        cause = error.source();
    }
    unreachable_from(refused, &text, host)
}

/// [`unreachable_because`] on what the error chain says: whether an I/O error in it was a
/// refused connection, and its text.
fn unreachable_from(refused: bool, text: &str, host: &str) -> RequestProblem {
    let host = host.to_owned();
    if refused {
        return RequestProblem::ConnectionRefused { host };
    }
    // getaddrinfo's answers for a name that does not exist (glibc, musl, macOS); a resolver
    // that could not be asked ("Temporary failure in name resolution") may recover.
    const NO_SUCH_NAME: [&str; 4] = [
        "Name or service not known",
        "No address associated with hostname",
        "nodename nor servname provided",
        "Name does not resolve",
    ];
    if text.contains("dns error") && NO_SUCH_NAME.iter().any(|known| text.contains(known)) {
        return RequestProblem::HostNotFound { host };
    }
    RequestProblem::Unreachable
}

pub(crate) fn api_error(method: &reqwest::Method, path: String, answer: &Answer) -> Error {
    let body = parse_error_body(&answer.body);
    Error::Workspace(WorkspaceError::Api {
        method: method.clone(),
        path,
        status: answer.status,
        error_code: body.error_code,
        message: body.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_host_is_told_from_a_passing_network_fault() {
        let host = "wrong.example.com";
        assert_eq!(
            unreachable_from(true, "error sending request\ntcp connect error\n", host),
            RequestProblem::ConnectionRefused { host: host.into() }
        );
        for answer in [
            "dns error: failed to lookup address information: Name or service not known",
            "dns error: failed to lookup address information: nodename nor servname provided, or not known",
        ] {
            assert_eq!(
                unreachable_from(false, answer, host),
                RequestProblem::HostNotFound { host: host.into() }
            );
        }
        // A resolver that could not be asked, a reset: may pass, retried.
        assert_eq!(
            unreachable_from(
                false,
                "dns error: failed to lookup address information: Temporary failure in name resolution",
                host
            ),
            RequestProblem::Unreachable
        );
        assert_eq!(
            unreachable_from(false, "connection reset by peer", host),
            RequestProblem::Unreachable
        );
        let refused = RequestProblem::ConnectionRefused { host: host.into() }.to_string();
        assert!(
            refused.contains("DATABRICKS_HOST") && refused.contains(host),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn waits_after_a_refusal_are_spread_within_bounds_and_the_budget() {
        let second = Duration::from_secs(1);
        let far = Instant::now() + Duration::from_secs(60);
        let first: Vec<Duration> = (0..200).map(|_| spread_after(second, 1, far)).collect();
        assert!(first.iter().all(|w| *w >= second && *w <= 2 * second));
        let later: Vec<Duration> = (0..200).map(|_| spread_after(second, 5, far)).collect();
        assert!(later.iter().all(|w| *w >= second && *w <= 3 * second));
        // Spread, not one wave: the middle 80 % of 200 draws covers most of the window.
        let mut sorted = first.clone();
        sorted.sort();
        assert!(
            sorted[180] - sorted[20] > Duration::from_millis(500),
            "{sorted:?}"
        );
        // Never past the deadline, and no overflow with absurd numbers.
        let near = Instant::now() + Duration::from_millis(1500);
        assert!(spread_after(second, 2, near) <= Duration::from_millis(1500));
        let _ = spread_after(Duration::MAX, 2, far);
    }

    #[test]
    fn answers_and_clients_never_show_tokens_or_proxy_passwords_in_debug() {
        let answer = Answer {
            status: 200,
            body: br#"{"token": "minted-secret-value"}"#.to_vec(),
            retry_after: None,
        };
        let shown = format!("{answer:?}");
        assert!(
            !shown.contains("minted-secret-value") && shown.contains("body_len"),
            "{shown}"
        );
        let env =
            Environment::from_vars([("HTTPS_PROXY", "http://user:proxy-pass@127.0.0.1:3128")]);
        let proxy = ProxySettings::from_environment(&env).unwrap();
        assert!(!format!("{proxy:?}").contains("proxy-pass"), "{proxy:?}");
        let client =
            HttpClient::new(HttpPolicy::default(), &tls::Trust::default(), &proxy).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("proxy-pass"), "{shown}");
    }

    #[test]
    fn proxy_settings_come_from_https_proxy_or_an_http_all_proxy() {
        let read = |vars: &[(&str, &str)]| {
            ProxySettings::from_environment(&Environment::from_vars(vars.iter().copied()))
        };
        let chosen = |vars: &[(&str, &str)]| read(vars).unwrap().https_proxy.map(String::from);
        assert_eq!(chosen(&[]), None);
        assert_eq!(
            chosen(&[("HTTP_PROXY", "http://p:1")]),
            None,
            "never HTTP_PROXY"
        );
        assert_eq!(
            chosen(&[
                ("HTTPS_PROXY", "proxy.corp:3128"),
                ("ALL_PROXY", "http://other:1")
            ]),
            Some("http://proxy.corp:3128/".to_owned())
        );
        assert_eq!(
            chosen(&[("all_proxy", "http://other:1")]),
            Some("http://other:1/".to_owned())
        );
        assert_eq!(chosen(&[("ALL_PROXY", "socks5h://localhost:1080")]), None);
        let err = read(&[("HTTPS_PROXY", "socks5://user:pw-123@localhost:1080")]).unwrap_err();
        assert!(err.to_string().contains("HTTPS_PROXY"), "{err}");
        assert!(!err.to_string().contains("pw-123"), "{err}");
        let no_proxy = read(&[("NO_PROXY", "internal.example")]).unwrap().no_proxy;
        assert!(no_proxy.contains("127.0.0.0/8") && no_proxy.ends_with("internal.example"));
    }
}
