//! Workspace token sources: OAuth machine-to-machine and the Databricks CLI.
//!
//! Each is a [`CredentialProvider`] that fetches one workspace token per call; the
//! workspace's [`TokenCache`](crate::TokenCache) decides when to call it, as it does for
//! database tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::host::WorkspaceHost;
use super::http::{Auth, Body, Call, HttpClient, api_error, decode};
use super::time::parse_rfc3339;
use crate::credentials::{BoxFuture, Credential, CredentialProvider};
use crate::{BoxError, Error, Secret};

/// OAuth client credentials (a service principal's id and secret), as Databricks Apps use.
pub(crate) struct OAuthM2M {
    http: HttpClient,
    host: WorkspaceHost,
    client_id: String,
    client_secret: Secret,
    token_endpoint: OnceCell<Url>,
}

#[derive(Deserialize)]
struct DatabricksConfig {
    oidc_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct AuthorizationServer {
    token_endpoint: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

impl OAuthM2M {
    pub(crate) fn new(
        http: HttpClient,
        host: WorkspaceHost,
        client_id: String,
        client_secret: Secret,
    ) -> Self {
        OAuthM2M {
            http,
            host,
            client_id,
            client_secret,
            token_endpoint: OnceCell::new(),
        }
    }

    /// Finds the token endpoint the way the SDKs do, newest style first, then falls back to
    /// the conventional path. Discovery failures are not errors: the fallback is tried.
    async fn discover(&self) -> Url {
        let get = |url: Url| async move {
            let answer = self.http.send(&Call::get(url, Auth::None)).await.ok()?;
            (answer.status == 200).then_some(answer.body)
        };
        let well_known = self.host.join("/.well-known/databricks-config");
        if let Some(body) = get(well_known).await
            && let Ok(config) = decode::<DatabricksConfig>(&body)
            && let Some(oidc) = config.oidc_endpoint
            && let Ok(oidc) = Url::parse(oidc.trim_end_matches('/'))
            && let Some(endpoint) = self.token_endpoint_from(&oidc).await
        {
            return endpoint;
        }
        let oidc = self.host.join("/oidc");
        if let Some(endpoint) = self.token_endpoint_from(&oidc).await {
            return endpoint;
        }
        self.host.join("/oidc/v1/token")
    }

    async fn token_endpoint_from(&self, oidc: &Url) -> Option<Url> {
        let metadata = Url::parse(&format!(
            "{}/.well-known/oauth-authorization-server",
            oidc.as_str().trim_end_matches('/')
        ))
        .ok()?;
        let answer = self
            .http
            .send(&Call::get(metadata, Auth::None))
            .await
            .ok()?;
        if answer.status != 200 {
            return None;
        }
        let server: AuthorizationServer = decode(&answer.body).ok()?;
        let endpoint = Url::parse(&server.token_endpoint).ok()?;
        // The endpoint receives the client secret: it must be as trustworthy as the host.
        let safe =
            endpoint.scheme() == "https" || endpoint.host_str() == self.host.url().host_str();
        safe.then_some(endpoint)
    }

    async fn fetch(&self) -> Result<Credential, Error> {
        let endpoint = self
            .token_endpoint
            .get_or_init(|| self.discover())
            .await
            .clone();
        let call = Call::post(
            endpoint,
            Auth::Basic {
                user: &self.client_id,
                password: &self.client_secret,
            },
            Body::Form(vec![
                ("grant_type", String::from("client_credentials")),
                ("scope", String::from("all-apis")),
            ]),
        );
        let answer = self.http.send(&call).await?;
        let auth_error = |problem: String| Error::WorkspaceAuth {
            method: "OAuth M2M",
            problem,
        };
        if answer.status != 200 {
            let error = api_error(call.method, call.url.path().to_owned(), &answer);
            return Err(auth_error(format!(
                "the token endpoint refused client `{}`: {error}",
                self.client_id
            )));
        }
        let token: TokenAnswer = decode(&answer.body).map_err(|problem| {
            auth_error(format!("the token endpoint answered oddly: {problem}"))
        })?;
        if token.access_token.is_empty() {
            return Err(auth_error(String::from(
                "the token endpoint returned an empty access token",
            )));
        }
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600));
        Ok(Credential::new(token.access_token).expires_at(SystemTime::now() + lifetime))
    }
}

impl CredentialProvider for OAuthM2M {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
        Box::pin(async move { self.fetch().await.map_err(BoxError::from) })
    }
}

/// `databricks auth token`, for laptops where the CLI holds the user's login.
pub(crate) struct DatabricksCli {
    program: PathBuf,
    host: String,
    profile: Option<String>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct CliToken {
    access_token: String,
    expiry: Option<String>,
}

impl DatabricksCli {
    pub(crate) fn new(program: PathBuf, host: &WorkspaceHost, profile: Option<String>) -> Self {
        DatabricksCli {
            program,
            host: host.to_string(),
            profile,
            timeout: Duration::from_secs(30),
        }
    }

    async fn fetch(&self) -> Result<Credential, Error> {
        let failed = |problem: String| Error::WorkspaceAuth {
            method: "Databricks CLI",
            problem,
        };
        let mut command = tokio::process::Command::new(&self.program);
        let _ = command.args(["auth", "token"]);
        let _ = match &self.profile {
            Some(profile) => command.args(["--profile", profile]),
            None => command.args(["--host", &self.host]),
        };
        let _ = command
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(self.timeout, command.output())
            .await
            .map_err(|_| {
                failed(format!(
                    "`databricks auth token` did not finish within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|e| failed(format!("could not run {}: {e}", self.program.display())))?;
        if !output.status.success() {
            // stderr explains (e.g. "run databricks auth login"); stdout could hold a token.
            let stderr: String = String::from_utf8_lossy(&output.stderr)
                .chars()
                .take(500)
                .collect();
            return Err(failed(format!(
                "`databricks auth token` failed ({}): {} (log in with `databricks auth login --host {}`)",
                output.status,
                stderr.trim(),
                self.host
            )));
        }
        let token: CliToken = decode(&output.stdout)
            .map_err(|problem| failed(format!("`databricks auth token` printed {problem}")))?;
        if token.access_token.is_empty() {
            return Err(failed(String::from(
                "`databricks auth token` printed an empty token",
            )));
        }
        let mut credential = Credential::new(token.access_token);
        if let Some(expiry) = token.expiry {
            let at = parse_rfc3339(&expiry)
                .map_err(|e| failed(format!("its `expiry` is unusable: {e}")))?;
            credential = credential.expires_at(at);
        }
        Ok(credential)
    }
}

impl CredentialProvider for DatabricksCli {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
        Box::pin(async move { self.fetch().await.map_err(BoxError::from) })
    }
}

/// Finds an executable named `name` in the directories of a `PATH` value.
pub(crate) fn find_on_path(name: &str, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |candidate: &Path| {
        candidate
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// A token source given by the caller, shared.
pub(crate) type CustomSource = Arc<dyn CredentialProvider>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found_on_the_given_path_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("databricks");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(
            find_on_path("databricks", dir.path().to_str()),
            None,
            "not executable yet"
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_on_path("databricks", dir.path().to_str()),
            Some(script)
        );
        assert_eq!(find_on_path("databricks", Some("/nonexistent")), None);
        assert_eq!(find_on_path("databricks", None), None);
    }
}
