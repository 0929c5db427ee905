//! Building a workspace client: the settings from builder, environment and profile (in that
//! order), the auth method they choose, and the token source for it.

use std::path::PathBuf;

use super::auth::{CustomSource, DatabricksCli, OAuthM2M, find_on_path};
use super::config_file::{self, Profile};
use super::host::WorkspaceHost;
use super::http::HttpClient;
use crate::config::Environment;
use crate::credentials::{Credential, CredentialProvider, StaticPassword};
use crate::error::{AuthMethod, BoxError, BoxFuture, Error};
use crate::secret::Secret;

/// The settings given to a [`WorkspaceBuilder`](super::WorkspaceBuilder) explicitly.
#[derive(Default)]
pub(super) struct GivenSettings {
    pub(super) host: Option<String>,
    pub(super) token: Option<Secret>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<Secret>,
    pub(super) profile: Option<String>,
    pub(super) config_file: Option<PathBuf>,
    pub(super) auth_method: Option<AuthMethod>,
    pub(super) workspace_id: Option<String>,
    pub(super) token_source: Option<CustomSource>,
}

/// Every setting, looked up: the builder's, else the environment's, else the profile's.
pub(super) struct ResolvedSettings {
    pub(super) host: WorkspaceHost,
    token: Option<Secret>,
    pub(super) client_id: Option<String>,
    client_secret: Option<Secret>,
    chosen: Option<AuthMethod>,
    pub(super) workspace_id: Option<String>,
    token_source: Option<CustomSource>,
    /// The profile the CLI is told to use, when one was requested and exists.
    cli_profile: Option<String>,
    /// The config file the profile was read from, for the CLI to read the same one.
    config_path: Option<PathBuf>,
}

impl ResolvedSettings {
    pub(super) fn read(builder: GivenSettings, env: &Environment) -> Result<Self, Error> {
        let requested_profile = builder
            .profile
            .clone()
            .or_else(|| env.get("DATABRICKS_CONFIG_PROFILE").map(str::to_owned));
        let config_path = builder
            .config_file
            .clone()
            .or_else(|| env.get("DATABRICKS_CONFIG_FILE").map(PathBuf::from))
            .or_else(|| {
                env.get("HOME")
                    .map(|home| PathBuf::from(home).join(".databrickscfg"))
            });
        let profile = match &config_path {
            Some(path) => config_file::load(path, requested_profile.as_deref())?,
            None if requested_profile.is_some() => {
                return Err(Error::workspace_config(
                    "a profile was requested but no config file is known (set \
                     DATABRICKS_CONFIG_FILE or HOME in the environment the builder was made \
                     from, e.g. `WorkspaceBuilder::from_env()`, or call `.config_file(..)`)",
                ));
            }
            None => None,
        }
        .unwrap_or_default();
        let lookup = Lookup {
            env,
            profile: &profile,
        };
        let host = lookup
            .pick(builder.host, "DATABRICKS_HOST", "host")
            .ok_or_else(|| {
                Error::workspace_config(
                    "no workspace host (call `.host(..)`, or set DATABRICKS_HOST or `host` in a \
                     ~/.databrickscfg profile, read from the environment the builder was made \
                     from: `WorkspaceBuilder::from_env()`)",
                )
            })?;
        let chosen = match builder.auth_method {
            Some(method) => Some(method),
            None => lookup
                .pick(None, "DATABRICKS_AUTH_TYPE", "auth_type")
                .map(|text| text.parse::<AuthMethod>())
                .transpose()?,
        };
        Ok(ResolvedSettings {
            host: WorkspaceHost::parse(&host)?,
            token: builder.token.or_else(|| {
                lookup
                    .pick(None, "DATABRICKS_TOKEN", "token")
                    .map(Secret::new)
            }),
            client_id: lookup.pick(builder.client_id, "DATABRICKS_CLIENT_ID", "client_id"),
            client_secret: builder.client_secret.or_else(|| {
                lookup
                    .pick(None, "DATABRICKS_CLIENT_SECRET", "client_secret")
                    .map(Secret::new)
            }),
            chosen,
            workspace_id: lookup.pick(
                builder.workspace_id,
                "DATABRICKS_WORKSPACE_ID",
                "workspace_id",
            ),
            token_source: builder.token_source,
            cli_profile: requested_profile.filter(|_| !profile.name.is_empty()),
            config_path,
        })
    }

    /// The auth method: a token source's, else the one chosen, else what is configured.
    pub(super) fn auth_method(&self) -> Result<AuthMethod, Error> {
        Ok(match (&self.token_source, self.chosen) {
            (Some(_), _) => AuthMethod::Custom,
            (None, Some(AuthMethod::Custom)) => {
                return Err(Error::workspace_config(
                    "auth method custom needs a token source (`WorkspaceBuilder::token_source`)",
                ));
            }
            (None, Some(method)) => method,
            (None, None) => match (&self.token, &self.client_id) {
                (Some(_), Some(_)) => return Err(conflict()),
                (Some(_), None) => AuthMethod::Pat,
                (None, Some(_)) => AuthMethod::OAuthM2M,
                (None, None) => AuthMethod::DatabricksCli,
            },
        })
    }

    /// The source of workspace tokens for `method`.
    pub(super) fn token_source(
        &self,
        method: AuthMethod,
        http: &HttpClient,
        env: &Environment,
    ) -> Result<Box<dyn CredentialProvider>, Error> {
        Ok(match method {
            AuthMethod::Custom => Box::new(SharedSource(
                self.token_source.clone().ok_or_else(conflict)?,
            )),
            AuthMethod::Pat => Box::new(StaticPassword::new(self.token.clone().ok_or_else(
                || {
                    Error::workspace_config(
                        "auth_type is pat but no token is set (set DATABRICKS_TOKEN)",
                    )
                },
            )?)),
            AuthMethod::OAuthM2M => {
                let (Some(id), Some(secret)) = (self.client_id.clone(), self.client_secret.clone())
                else {
                    return Err(Error::workspace_config(
                        "OAuth M2M needs both DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET",
                    ));
                };
                Box::new(OAuthM2M::new(http.clone(), self.host.clone(), id, secret))
            }
            AuthMethod::DatabricksCli => {
                let program = find_on_path("databricks", env.get("PATH")).ok_or_else(|| {
                    Error::workspace_config(
                        "no workspace credentials found (call `.token(..)` or \
                         `.client_credentials(..)`, or set DATABRICKS_TOKEN, or \
                         DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET, or install the \
                         Databricks CLI and run `databricks auth login`; variables and the \
                         CLI's PATH are read from the environment the builder was made from: \
                         `WorkspaceBuilder::from_env()`)",
                    )
                })?;
                // The CLI sees the builder's environment, not the process's, and reads the
                // config file the profile came from.
                let mut cli_env: Vec<(String, String)> = env
                    .vars()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                if let Some(path) = &self.config_path {
                    cli_env.retain(|(k, _)| k != "DATABRICKS_CONFIG_FILE");
                    cli_env.push((
                        "DATABRICKS_CONFIG_FILE".into(),
                        path.to_string_lossy().into_owned(),
                    ));
                }
                Box::new(DatabricksCli::new(
                    program,
                    &self.host,
                    self.cli_profile.clone(),
                    cli_env,
                ))
            }
        })
    }
}

fn conflict() -> Error {
    Error::workspace_config(
        "two auth methods are configured at once: a token (pat) and a client id \
         (oauth-m2m); remove one, or choose with DATABRICKS_AUTH_TYPE",
    )
}

/// Looks settings up in precedence order: explicit, environment, profile.
struct Lookup<'a> {
    env: &'a Environment,
    profile: &'a Profile,
}

impl Lookup<'_> {
    fn pick(&self, explicit: Option<String>, var: &str, key: &str) -> Option<String> {
        explicit
            .filter(|v| !v.trim().is_empty())
            .or_else(|| self.env.get(var).map(str::to_owned))
            .or_else(|| self.profile.get(key).map(str::to_owned))
    }
}

/// Lets a caller's shared token source sit behind the cache.
struct SharedSource(CustomSource);

impl CredentialProvider for SharedSource {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
        self.0.credential()
    }
}
