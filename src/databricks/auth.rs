//! Workspace token sources: OAuth machine-to-machine and the Databricks CLI.
//!
//! Each is a [`CredentialProvider`] that fetches one workspace token per call; the
//! workspace's [`TokenCache`](crate::TokenCache) decides when to call it, as it does for
//! database tokens.

use crate::error::{AuthMethod, WorkspaceError};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::Url;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use super::answers::decode;
use super::host::WorkspaceHost;
use super::http::{Auth, Body, Call, HttpClient, api_error};
use super::time::parse_rfc3339;
use crate::credentials::{Credential, CredentialProvider};
use crate::error::BoxFuture;
use crate::{BoxError, Error, Secret, defaults};

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
    ///
    /// Both styles' documents are fetched at once (one round trip where the SDKs take two or
    /// three): `/.well-known/databricks-config`, and the metadata of the workspace's own
    /// `/oidc`, which is what `databricks-config` names on a workspace. The choice keeps the
    /// SDKs' order: a token endpoint under the `oidc_endpoint` `databricks-config` names, else
    /// the one `/oidc`'s metadata names, else `/oidc/v1/token`.
    ///
    /// The token endpoint receives the client secret, so a discovered URL is used only when
    /// it is as trustworthy as the workspace host: https (plain http only on loopback, for a
    /// loopback workspace), and on the workspace's own origin or the origin the metadata
    /// document itself came from over https.
    async fn discover(&self) -> Url {
        let workspace_oidc = self.host.join("/oidc");
        let (named, from_workspace_oidc) = tokio::join!(
            self.oidc_endpoint_named(),
            self.token_endpoint_from(&workspace_oidc)
        );
        if let Some(oidc) = named {
            let same = |a: &Url, b: &Url| {
                a.as_str().trim_end_matches('/') == b.as_str().trim_end_matches('/')
            };
            if !same(&oidc, &workspace_oidc)
                && let Some(endpoint) = self.token_endpoint_from(&oidc).await
            {
                return endpoint;
            }
        }
        from_workspace_oidc.unwrap_or_else(|| self.conventional_token_endpoint())
    }

    /// The conventional token endpoint, on the workspace's own host.
    fn conventional_token_endpoint(&self) -> Url {
        self.host.join("/oidc/v1/token")
    }

    /// The `oidc_endpoint` that `/.well-known/databricks-config` names, if it answers with
    /// one the workspace host's rule permits.
    async fn oidc_endpoint_named(&self) -> Option<Url> {
        let well_known = self.host.join("/.well-known/databricks-config");
        let answer = self
            .http
            .send(&Call::get(well_known, Auth::None))
            .await
            .ok()?;
        if answer.status != 200 {
            return None;
        }
        let config: DatabricksConfig = decode(&answer.body).ok()?;
        let oidc = Url::parse(config.oidc_endpoint?.trim_end_matches('/')).ok()?;
        if self.host.permits(&oidc) {
            Some(oidc)
        } else {
            tracing::warn!(
                scheme = oidc.scheme(),
                "ignoring a discovered oidc_endpoint that is not https"
            );
            None
        }
    }

    async fn token_endpoint_from(&self, oidc: &Url) -> Option<Url> {
        let metadata = Url::parse(&format!(
            "{}/.well-known/oauth-authorization-server",
            oidc.as_str().trim_end_matches('/')
        ))
        .ok()?;
        let answer = self
            .http
            .send(&Call::get(metadata.clone(), Auth::None))
            .await
            .ok()?;
        if answer.status != 200 {
            return None;
        }
        let server: AuthorizationServer = decode(&answer.body).ok()?;
        let endpoint = Url::parse(&server.token_endpoint).ok()?;
        let same_origin = |a: &Url, b: &Url| a.origin() == b.origin();
        let trusted_origin = same_origin(&endpoint, self.host.url())
            || (metadata.scheme() == "https" && same_origin(&endpoint, &metadata));
        if self.host.permits(&endpoint) && trusted_origin {
            Some(endpoint)
        } else {
            tracing::warn!(
                scheme = endpoint.scheme(),
                "ignoring a discovered token endpoint outside the workspace and the metadata's \
                 https origin; it would receive the client secret"
            );
            None
        }
    }

    async fn fetch(&self) -> Result<Credential, Error> {
        if let Some(endpoint) = self.token_endpoint.get() {
            return self.request_token(endpoint.clone()).await;
        }
        // The first token: discovery, and beside it the request to the conventional endpoint
        // on the workspace's own host (the secret goes nowhere else). Its answer is used only
        // if discovery settles on that endpoint, so the SDKs' order holds, one round trip
        // sooner; otherwise it is dropped and the discovered endpoint asked.
        let conventional = self.conventional_token_endpoint();
        let discovery = self.token_endpoint.get_or_init(|| self.discover());
        let early = self.request_token(conventional.clone());
        tokio::pin!(discovery, early);
        let mut answered = None;
        let endpoint = loop {
            tokio::select! {
                endpoint = &mut discovery => break endpoint,
                result = &mut early, if answered.is_none() => answered = Some(result),
            }
        };
        if *endpoint == conventional {
            match answered {
                Some(result) => result,
                None => early.await,
            }
        } else {
            tracing::debug!("the token endpoint is not the conventional one; asking it");
            self.request_token(endpoint.clone()).await
        }
    }

    async fn request_token(&self, endpoint: Url) -> Result<Credential, Error> {
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
        let auth_error =
            |problem: String| Error::Workspace(WorkspaceError::auth(AuthMethod::OAuthM2M, problem));
        if answer.status != 200 {
            let error = api_error(&call.method, call.url.path().to_owned(), &answer);
            return Err(Error::Workspace(WorkspaceError::auth_because(
                AuthMethod::OAuthM2M,
                format!("the token endpoint refused client `{}`", self.client_id),
                error,
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
        // Server-supplied: clamped before it meets the clock (the token cache clamps again).
        let lifetime =
            Duration::from_secs(token.expires_in.unwrap_or(3600)).min(defaults::MAX_TOKEN_LIFETIME);
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
    /// The whole environment the CLI runs with: the builder's (secrets included, as the
    /// CLI may need them; never printed).
    environment: Vec<(String, String)>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct CliToken {
    access_token: String,
    expiry: Option<String>,
}

impl DatabricksCli {
    pub(crate) fn new(
        program: PathBuf,
        host: &WorkspaceHost,
        profile: Option<String>,
        environment: Vec<(String, String)>,
    ) -> Self {
        DatabricksCli {
            program,
            host: host.to_string(),
            profile,
            environment,
            timeout: Duration::from_secs(30),
        }
    }

    async fn fetch(&self) -> Result<Credential, Error> {
        let failed = |problem: String| {
            Error::Workspace(WorkspaceError::auth(AuthMethod::DatabricksCli, problem))
        };
        let mut command = tokio::process::Command::new(&self.program);
        let _ = command.args(["auth", "token"]);
        let _ = match &self.profile {
            Some(profile) => command.args(["--profile", profile]),
            None => command.args(["--host", &self.host]),
        };
        let _ = command
            .env_clear()
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(self.timeout, run_bounded(command))
            .await
            .map_err(|_| {
                failed(format!(
                    "`databricks auth token` did not finish within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|e| {
                Error::Workspace(WorkspaceError::auth_because(
                    AuthMethod::DatabricksCli,
                    format!("could not run {}", self.program.display()),
                    e,
                ))
            })?;
        if !output.status.success() {
            // stderr explains (e.g. "run databricks auth login"); stdout could hold a token.
            return Err(failed(format!(
                "`databricks auth token` failed ({}): {} (log in with `databricks auth login --host {}`)",
                output.status,
                printable(&output.stderr, CLI_STDERR_SHOWN),
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
            let at = parse_rfc3339(&expiry).map_err(|e| {
                Error::Workspace(WorkspaceError::auth_because(
                    AuthMethod::DatabricksCli,
                    "its `expiry` is unusable",
                    e,
                ))
            })?;
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

/// The most the CLI may print on either stream: its token answer is about 2 KiB.
const CLI_OUTPUT_CAP: usize = 64 * 1024;

/// How many characters of the CLI's stderr an error quotes.
const CLI_STDERR_SHOWN: usize = 300;

/// Runs `command` to its end, reading at most [`CLI_OUTPUT_CAP`] bytes of each stream; a
/// program that prints more is killed and reported, never buffered without end.
async fn run_bounded(
    mut command: tokio::process::Command,
) -> std::io::Result<std::process::Output> {
    let mut child = command.spawn()?;
    let read = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| async move {
        let mut bytes = Vec::new();
        if let Some(stream) = stream {
            let _ = stream
                .take(CLI_OUTPUT_CAP as u64 + 1)
                .read_to_end(&mut bytes)
                .await?;
        }
        if bytes.len() > CLI_OUTPUT_CAP {
            // An error ends the other read at once (it may never end while the program runs).
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("it printed more than {CLI_OUTPUT_CAP} bytes"),
            ));
        }
        Ok(bytes)
    };
    let stdout = child.stdout.take().map(|s| Box::new(s) as Box<_>);
    let stderr = child.stderr.take().map(|s| Box::new(s) as Box<_>);
    let (stdout, stderr) = match tokio::try_join!(read(stdout), read(stderr)) {
        Ok(streams) => streams,
        Err(error) => {
            let _ = child.start_kill();
            return Err(error);
        }
    };
    let status = child.wait().await?;
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// Text a program printed, made safe to put in an error or a log line: control characters
/// (newlines, escapes) become spaces, runs of white space one space, and it is cut to `max`
/// characters.
fn printable(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let single = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if single.chars().count() > max {
        let cut: String = single.chars().take(max).collect();
        format!("{cut}...")
    } else {
        single
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
    fn printed_text_loses_control_characters_and_is_capped() {
        let shown = printable(b"Error: not logged in\n\x1b[31mrun\r\n login\x07", 300);
        assert_eq!(shown, "Error: not logged in [31mrun login");
        assert!(!shown.chars().any(char::is_control));
        let long = printable("x".repeat(5000).as_bytes(), 300);
        assert_eq!(long.chars().count(), 303);
    }

    #[tokio::test]
    async fn a_program_printing_without_end_is_killed_and_reported() {
        let mut command = tokio::process::Command::new("sh");
        let _ = command
            .args(["-c", "cat /dev/zero; sleep 60"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(20), run_bounded(command))
            .await
            .expect("bounded")
            .unwrap_err();
        assert!(err.to_string().contains("printed more than"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

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
