//! `Workspace`: an authenticated client of one Databricks workspace.

use crate::error::WorkspaceError;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::host::{WorkspaceHost, without_user_info};
use super::http::{Auth, Body, Call, HttpClient, HttpPolicy, ProxySettings};
use super::settings::{GivenSettings, ResolvedSettings};
use crate::credentials::{CachePolicy, CredentialProvider, TokenCache};
use crate::error::AuthMethod;
use crate::tls::{Trust, parse_pem_certificates};
use crate::{Environment, Error, Secret};

/// An authenticated client of one Databricks workspace: the Lakebase API calls live on it
/// (see [`generate_database_credential`](Self::generate_database_credential) and the others).
///
/// Workspace tokens are cached and refreshed ahead of expiry like the official SDKs do
/// (treated as expired 40 s early, refreshed in the background once less than 20 minutes
/// are left). Cloning is cheap and shares the client and its token cache.
///
/// ```no_run
/// use lakebase_pool::databricks::Workspace;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lakebase_pool::Error> {
/// // DATABRICKS_HOST plus DATABRICKS_TOKEN, or DATABRICKS_CLIENT_ID/SECRET, or a
/// // ~/.databrickscfg profile, or a `databricks auth login`.
/// let workspace = Workspace::from_env()?;
/// println!("{}", workspace.current_user().await?.user_name);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Workspace {
    inner: Arc<Inner>,
}

struct Inner {
    host: WorkspaceHost,
    http: HttpClient,
    tokens: TokenCache,
    method: AuthMethod,
    client_id: Option<String>,
    workspace_id: Option<String>,
}

impl fmt::Debug for Workspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workspace")
            .field("host", &self.inner.host)
            .field("auth", &self.inner.method)
            .field("workspace_id", &self.inner.workspace_id)
            .finish_non_exhaustive()
    }
}

impl Workspace {
    /// Starts configuring a workspace client from explicit settings only: nothing is read from
    /// the environment or `~/.databrickscfg` unless a profile or config file is given. Start
    /// from [`WorkspaceBuilder::from_env`] for the official SDKs' unified auth.
    ///
    /// ```no_run
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .token("dapi-example")
    ///     .build()?;
    /// assert_eq!(workspace.host(), "https://my-workspace.cloud.databricks.com");
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn builder() -> WorkspaceBuilder {
        WorkspaceBuilder::default()
    }

    /// A client configured from the process environment and `~/.databrickscfg`; the same as
    /// `WorkspaceBuilder::from_env()?.build()`.
    ///
    /// # Errors
    ///
    /// See [`WorkspaceBuilder::build`].
    ///
    /// ```no_run
    /// let workspace = lakebase_pool::databricks::Workspace::from_env()?;
    /// println!("{} via {}", workspace.host(), workspace.auth_method());
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn from_env() -> Result<Self, Error> {
        WorkspaceBuilder::from_env()?.build()
    }

    /// The workspace URL.
    ///
    /// ```no_run
    /// # let workspace = lakebase_pool::databricks::Workspace::from_env().unwrap();
    /// println!("{}", workspace.host());
    /// ```
    pub fn host(&self) -> String {
        self.inner.host.to_string()
    }

    /// How this client authenticates.
    ///
    /// ```no_run
    /// # let workspace = lakebase_pool::databricks::Workspace::from_env().unwrap();
    /// println!("authenticating with {}", workspace.auth_method());
    /// ```
    pub fn auth_method(&self) -> AuthMethod {
        self.inner.method
    }

    /// The service principal's client id, with OAuth M2M: the Postgres user name of the
    /// principal (and of every Databricks App).
    pub(crate) fn client_id(&self) -> Option<&str> {
        self.inner.client_id.as_deref()
    }

    /// An authenticated API call returning JSON. A 401 with a token source that can mint a
    /// new token (OAuth, CLI, custom) replaces the token once and tries again.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<T, Error> {
        self.call_as(Caller::Workspace, method, path, query, body)
            .await
    }

    /// [`call`](Self::call), as `caller`. A signed-in user's token is sent as it is: only the
    /// Apps proxy can refresh it, so a 401 is final.
    pub(crate) async fn call_as<T: DeserializeOwned>(
        &self,
        caller: Caller<'_>,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
    ) -> Result<T, Error> {
        let mut url = self.inner.host.join(path);
        if !query.is_empty() {
            let _ = url.query_pairs_mut().extend_pairs(query);
        }
        if let Caller::User(token) = caller {
            return self
                .inner
                .http
                .json(&self.request(&method, &url, body.as_ref(), token))
                .await;
        }
        let mut token = self.inner.tokens.token().await?;
        let mut retried = false;
        loop {
            let call = self.request(&method, &url, body.as_ref(), token.secret());
            match self.inner.http.json(&call).await {
                Err(Error::Workspace(WorkspaceError::Api { status: 401, .. }))
                    if !retried && self.inner.method != AuthMethod::Pat =>
                {
                    retried = true;
                    token = self.inner.tokens.force_refresh(&token).await?;
                }
                result => return result,
            }
        }
    }
}

impl Workspace {
    fn request<'a>(
        &'a self,
        method: &reqwest::Method,
        url: &reqwest::Url,
        body: Option<&serde_json::Value>,
        token: &'a Secret,
    ) -> Call<'a> {
        let auth = Auth::Bearer(token);
        let mut call = match body {
            Some(json) => Call::post(url.clone(), auth, Body::Json(json.clone())),
            None => Call::get(url.clone(), auth),
        };
        call.method = method.clone();
        call.workspace_id = self.inner.workspace_id.as_deref();
        call
    }
}

/// Whose token a workspace call carries.
#[derive(Clone, Copy)]
pub(crate) enum Caller<'a> {
    /// The client's own authentication (refreshed and cached).
    Workspace,
    /// A signed-in user's OAuth token, as the Databricks Apps proxy forwards it.
    User(&'a Secret),
}

/// Configures a [`Workspace`].
///
/// Each setting is taken from, in order: the builder, the environment it was made from
/// ([`WorkspaceBuilder::from_env`] for the process's, [`WorkspaceBuilder::from_environment`];
/// none for [`Workspace::builder`]:
/// `DATABRICKS_HOST`, `DATABRICKS_TOKEN`, `DATABRICKS_CLIENT_ID`,
/// `DATABRICKS_CLIENT_SECRET`, `DATABRICKS_AUTH_TYPE`, `DATABRICKS_WORKSPACE_ID`), then the
/// config-file profile (`DATABRICKS_CONFIG_FILE`, default `~/.databrickscfg`; profile
/// `DATABRICKS_CONFIG_PROFILE`, else `[__settings__] default_profile`, else `[DEFAULT]`). A
/// value set earlier is never overwritten.
///
/// The auth method is `auth_type` when set (`pat`, `oauth-m2m`, `databricks-cli`); otherwise a
/// token means a PAT, a client id means OAuth M2M (both at once is an error), and with
/// neither the Databricks CLI is used when it is on that environment's `PATH` (it runs with
/// that environment, and reads the config file the profile came from).
///
/// ```no_run
/// use lakebase_pool::databricks::Workspace;
///
/// let workspace = Workspace::builder()
///     .host("my-workspace.cloud.databricks.com")
///     .client_credentials("service-principal-id", "secret")
///     .build()?;
/// # Ok::<(), lakebase_pool::Error>(())
/// ```
#[must_use = "a builder does nothing until `.build()` is called"]
#[derive(Default)]
pub struct WorkspaceBuilder {
    /// The settings given explicitly; the rest are read from the environment at `build`.
    pub(super) given: GivenSettings,
    http: HttpPolicy,
    root_pems: Vec<Vec<u8>>,
    /// Read instead of the process environment (see [`from_environment`](Self::from_environment)).
    environment: Option<Environment>,
}

impl fmt::Debug for WorkspaceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkspaceBuilder")
            .field("host", &self.given.host.as_deref().map(without_user_info))
            .field("token", &self.given.token)
            .field("client_id", &self.given.client_id)
            .field("client_secret", &self.given.client_secret)
            .field("profile", &self.given.profile)
            .field("config_file", &self.given.config_file)
            .field("auth_method", &self.given.auth_method)
            .finish_non_exhaustive()
    }
}

impl WorkspaceBuilder {
    /// The workspace URL. `https://` is added when no scheme is given; plain `http://` is
    /// accepted only for loopback hosts.
    ///
    /// Default: `DATABRICKS_HOST`, else the profile's `host`.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.given.host = Some(host.into());
        self
    }

    /// Authenticate with a personal access token.
    ///
    /// Default: `DATABRICKS_TOKEN`, else the profile's `token`.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .token("dapi-example")
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn token(mut self, token: impl Into<Secret>) -> Self {
        self.given.token = Some(token.into());
        self
    }

    /// Authenticate as a service principal with OAuth client credentials.
    ///
    /// Default: `DATABRICKS_CLIENT_ID` and `DATABRICKS_CLIENT_SECRET`, else the profile's
    /// `client_id` and `client_secret`.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .client_credentials("id", "secret")
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_credentials(
        mut self,
        client_id: impl Into<String>,
        client_secret: impl Into<Secret>,
    ) -> Self {
        self.given.client_id = Some(client_id.into());
        self.given.client_secret = Some(client_secret.into());
        self
    }

    /// The config-file profile to read.
    ///
    /// Default: `DATABRICKS_CONFIG_PROFILE`, else `[__settings__] default_profile`, else
    /// `[DEFAULT]`.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .profile("staging")
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.given.profile = Some(profile.into());
        self
    }

    /// The config file to read profiles from.
    ///
    /// Default: `DATABRICKS_CONFIG_FILE`, else `~/.databrickscfg`.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .config_file("/etc/app/databrickscfg")
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.given.config_file = Some(path.into());
        self
    }

    /// Chooses the auth method when several are configured. ([`AuthMethod::Custom`] is chosen
    /// by [`token_source`](Self::token_source), not here.)
    ///
    /// Default: `DATABRICKS_AUTH_TYPE` (`pat`, `oauth-m2m`, `databricks-cli`), else the
    /// profile's `auth_type`, else chosen from what is configured.
    ///
    /// ```
    /// use lakebase_pool::Environment;
    /// use lakebase_pool::databricks::{AuthMethod, WorkspaceBuilder};
    ///
    /// let env = Environment::from_vars([
    ///     ("DATABRICKS_HOST", "my-workspace.cloud.databricks.com"),
    ///     ("DATABRICKS_TOKEN", "dapi-example"),
    ///     ("DATABRICKS_CLIENT_ID", "sp-id"),
    ///     ("DATABRICKS_CLIENT_SECRET", "sp-secret"),
    /// ]);
    /// let workspace = WorkspaceBuilder::from_environment(&env)?.auth_method(AuthMethod::Pat).build()?;
    /// assert_eq!(workspace.auth_method(), AuthMethod::Pat);
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn auth_method(mut self, method: AuthMethod) -> Self {
        self.given.auth_method = Some(method);
        self
    }

    /// The workspace id, sent as `X-Databricks-Workspace-Id`.
    ///
    /// Default: `DATABRICKS_WORKSPACE_ID`, else the profile's `workspace_id`, else not sent.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .workspace_id("1234567890")
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn workspace_id(mut self, id: impl Into<String>) -> Self {
        self.given.workspace_id = Some(id.into());
        self
    }

    /// Authenticate with tokens from your own source (a provider returning workspace tokens);
    /// takes precedence over every other method.
    ///
    /// ```
    /// use lakebase_pool::credentials::{from_fn, Credential};
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .token_source(from_fn(|| async { Ok::<_, std::io::Error>(Credential::new("token")) }))
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn token_source(mut self, source: impl CredentialProvider) -> Self {
        self.given.token_source = Some(Arc::new(source));
        self
    }

    /// Trust the CA certificates in this PEM document for the workspace's HTTPS, in addition to
    /// the webpki roots (for a TLS-inspecting proxy, say). Checked at build.
    ///
    /// Default: none.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let pem = b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n".to_vec();
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .root_certificates_pem(pem)
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_pems.push(pem.into());
        self
    }

    /// Bound on one HTTP request to the workspace, answer included.
    ///
    /// Default: 30 seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .request_timeout(Duration::from_secs(10))
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.http.request_timeout = timeout;
        self
    }

    /// How long one API call may keep retrying transient failures (429, 503, connection
    /// errors, timeouts).
    ///
    /// Default: 60 seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let workspace = lakebase_pool::databricks::Workspace::builder()
    ///     .host("my-workspace.cloud.databricks.com")
    ///     .retry_budget(Duration::from_secs(20))
    ///     .build()?;
    /// println!("{}", workspace.host());
    /// # Ok(())
    /// # }
    /// ```
    pub fn retry_budget(mut self, budget: Duration) -> Self {
        self.http.retry_budget = budget;
        self
    }

    /// Builds the client from the builder's settings, then the environment it was made from
    /// ([`from_env`](Self::from_env), [`from_environment`](Self::from_environment); none for
    /// [`Workspace::builder`]), then the config file. It reads no environment of its own.
    ///
    /// # Errors
    ///
    /// [`WorkspaceError::Config`] when no host is set, two auth methods are configured at
    /// once, a requested profile does not exist, or no credentials are found.
    ///
    /// ```no_run
    /// let workspace = lakebase_pool::databricks::WorkspaceBuilder::from_env()?.profile("staging").build()?;
    /// # let _ = workspace;
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn build(mut self) -> Result<Workspace, Error> {
        let env = self.environment.take().unwrap_or_default();
        self.build_with(&env)
    }

    /// A builder over the process environment (`DATABRICKS_*`, `HOME` for
    /// `~/.databrickscfg`, the proxy variables), read and checked now; settings made on the
    /// builder afterwards still come first. The same as
    /// `WorkspaceBuilder::from_environment(&Environment::from_process())`.
    ///
    /// # Errors
    ///
    /// As [`from_environment`](Self::from_environment).
    ///
    /// ```no_run
    /// let workspace = lakebase_pool::databricks::WorkspaceBuilder::from_env()?
    ///     .request_timeout(std::time::Duration::from_secs(10))
    ///     .build()?;
    /// # let _ = workspace;
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn from_env() -> Result<Self, Error> {
        Self::from_environment(&Environment::from_process())
    }

    /// A builder over `env` instead of the process environment, as
    /// [`PoolBuilder::from_environment`](crate::PoolBuilder::from_environment) is; settings
    /// made on the builder still come first, and the config file is read at `build` (after
    /// them, as a `profile` set on the builder decides which profile is read).
    ///
    /// # Errors
    ///
    /// [`WorkspaceError::Config`] at once for a malformed `DATABRICKS_HOST` or an unknown
    /// `DATABRICKS_AUTH_TYPE`; [`Error::InvalidConfig`] for a malformed proxy variable.
    ///
    /// ```
    /// use lakebase_pool::Environment;
    /// use lakebase_pool::databricks::{AuthMethod, WorkspaceBuilder};
    ///
    /// let env = Environment::from_vars([
    ///     ("DATABRICKS_HOST", "my-workspace.cloud.databricks.com"),
    ///     ("DATABRICKS_TOKEN", "dapi-example"),
    /// ]);
    /// let workspace = WorkspaceBuilder::from_environment(&env)?.build()?;
    /// assert_eq!(workspace.auth_method(), AuthMethod::Pat);
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn from_environment(env: &Environment) -> Result<Self, Error> {
        if let Some(host) = env.get("DATABRICKS_HOST") {
            let _ = WorkspaceHost::parse(host)?;
        }
        if let Some(method) = env.get("DATABRICKS_AUTH_TYPE") {
            let _ = method.parse::<AuthMethod>()?;
        }
        let _ = ProxySettings::from_environment(env)?;
        Ok(WorkspaceBuilder {
            environment: Some(env.clone()),
            ..WorkspaceBuilder::default()
        })
    }

    fn build_with(self, env: &Environment) -> Result<Workspace, Error> {
        if self.http.request_timeout.is_zero() {
            return Err(Error::invalid(
                "request_timeout",
                "must be greater than zero",
            ));
        }
        let mut trust = Trust::default();
        for pem in &self.root_pems {
            trust.extra_roots.extend(parse_pem_certificates(
                pem,
                "the PEM given to root_certificates_pem",
            )?);
        }
        let proxy = ProxySettings::from_environment(env)?;
        let http = HttpClient::new(self.http.clone(), &trust, &proxy)?;
        let settings = ResolvedSettings::read(self.given, env)?;
        let method = settings.auth_method()?;
        let source = settings.token_source(method, &http, env)?;
        let tokens = TokenCache::labelled(
            source,
            workspace_token_policy(),
            crate::error::TokenKind::Workspace,
        );
        Ok(Workspace {
            inner: Arc::new(Inner {
                client_id: settings
                    .client_id
                    .filter(|_| method == AuthMethod::OAuthM2M),
                host: settings.host,
                http,
                tokens,
                method,
                workspace_id: settings.workspace_id,
            }),
        })
    }
}

/// The official SDKs treat a workspace token as expired 40 s early and refresh it once less
/// than min(TTL/2, 20 min) is left; for the usual one-hour tokens that is 20 minutes.
fn workspace_token_policy() -> CachePolicy {
    CachePolicy::default()
        .min_remaining(Duration::from_secs(40))
        .refresh_ahead(Duration::from_secs(20 * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(vars: &[(&str, &str)]) -> Result<Workspace, Error> {
        WorkspaceBuilder::from_environment(&Environment::from_vars(vars.iter().copied()))?.build()
    }

    /// `HOME` is set in every test process: a builder not made from an environment must not
    /// use it to find `~/.databrickscfg` (it used to read the process environment at `build`).
    #[test]
    fn a_builder_not_made_from_an_environment_reads_none() {
        assert!(std::env::var_os("HOME").is_some());
        let err = Workspace::builder().profile("staging").build().unwrap_err();
        assert!(err.to_string().contains("no config file is known"), "{err}");
        assert!(err.to_string().contains("from_env()"), "{err}");
    }

    #[test]
    fn from_environment_checks_the_variables_at_once() {
        for (var, value) in [
            ("DATABRICKS_HOST", "ftp://w.example.com"),
            ("DATABRICKS_AUTH_TYPE", "magic"),
            ("HTTPS_PROXY", "http://[bad"),
        ] {
            let env = Environment::from_vars([(var, value)]);
            let err = WorkspaceBuilder::from_environment(&env).unwrap_err();
            let text = crate::error::error_chain(&err);
            assert!(text.contains(var) || text.contains(value), "{var}: {text}");
        }
    }

    #[test]
    fn token_means_pat_and_client_id_means_oauth() {
        let pat = build(&[
            ("DATABRICKS_HOST", "w.example.com"),
            ("DATABRICKS_TOKEN", "t"),
        ])
        .unwrap();
        assert_eq!(pat.auth_method(), AuthMethod::Pat);
        assert_eq!(pat.host(), "https://w.example.com");
        let m2m = build(&[
            ("DATABRICKS_HOST", "w.example.com"),
            ("DATABRICKS_CLIENT_ID", "sp-id"),
            ("DATABRICKS_CLIENT_SECRET", "s"),
        ])
        .unwrap();
        assert_eq!(m2m.auth_method(), AuthMethod::OAuthM2M);
        assert_eq!(m2m.client_id(), Some("sp-id"));
    }

    #[test]
    fn two_methods_at_once_is_an_error_unless_auth_type_chooses() {
        let both = [
            ("DATABRICKS_HOST", "w.example.com"),
            ("DATABRICKS_TOKEN", "t"),
            ("DATABRICKS_CLIENT_ID", "id"),
            ("DATABRICKS_CLIENT_SECRET", "s"),
        ];
        let err = build(&both).unwrap_err().to_string();
        assert!(
            err.contains("two auth methods are configured at once"),
            "{err}"
        );
        let mut chosen = both.to_vec();
        chosen.push(("DATABRICKS_AUTH_TYPE", "oauth-m2m"));
        assert_eq!(build(&chosen).unwrap().auth_method(), AuthMethod::OAuthM2M);
    }

    #[test]
    fn explicit_settings_beat_the_environment() {
        let env = Environment::from_vars([
            ("DATABRICKS_HOST", "env.example.com"),
            ("DATABRICKS_TOKEN", "t"),
        ]);
        let workspace = WorkspaceBuilder::from_environment(&env)
            .unwrap()
            .host("explicit.example.com")
            .build()
            .unwrap();
        assert_eq!(workspace.host(), "https://explicit.example.com");
    }

    #[test]
    fn missing_pieces_are_named() {
        let no_host = build(&[("DATABRICKS_TOKEN", "t")]).unwrap_err().to_string();
        assert!(no_host.contains("no workspace host"), "{no_host}");
        let no_secret = build(&[
            ("DATABRICKS_HOST", "w.example.com"),
            ("DATABRICKS_CLIENT_ID", "id"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            no_secret.contains("DATABRICKS_CLIENT_SECRET"),
            "{no_secret}"
        );
        let nothing = build(&[
            ("DATABRICKS_HOST", "w.example.com"),
            ("PATH", "/nonexistent"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            nothing.contains("no workspace credentials found"),
            "{nothing}"
        );
        let odd = build(&[
            ("DATABRICKS_HOST", "w.example.com"),
            ("DATABRICKS_AUTH_TYPE", "magic"),
        ])
        .unwrap_err()
        .to_string();
        assert!(odd.contains("auth_type `magic` is not supported"), "{odd}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let builder = Workspace::builder()
            .token("dapi-secret-1")
            .client_credentials("id", "secret-2");
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("dapi-secret-1") && !shown.contains("secret-2"),
            "{shown}"
        );
    }
}
