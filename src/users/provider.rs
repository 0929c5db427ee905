//! What a user's pool connects with: database credentials minted with the user's own token,
//! and the endpoint's host, looked up once for every user.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use crate::connect::TargetSource;
use crate::credentials::{Credential, CredentialProvider};
use crate::databricks::{Caller, CredentialRequest, Workspace};
use crate::error::BoxFuture;
use crate::target::HIDDEN_USER;
use crate::{BoxError, EndpointName, Error, Secret, UserProblem};

/// A user's request was refused by the workspace: found in the source chain of a failed mint.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Refused(pub(super) UserProblem);

/// The newest token a user came with (the Apps proxy refreshes it), shared by the user's
/// entry, which updates it, and their credential provider, which mints with it.
#[derive(Clone)]
pub(super) struct LatestToken(Arc<Mutex<Secret>>);

impl LatestToken {
    pub(super) fn new(token: Secret) -> Self {
        LatestToken(Arc::new(Mutex::new(token)))
    }

    pub(super) fn get(&self) -> Secret {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stores `token`; whether it differs from the one stored.
    pub(super) fn replace(&self, token: &Secret) -> bool {
        let mut latest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if latest.expose() == token.expose() {
            return false;
        }
        *latest = token.clone();
        true
    }
}

/// Mints database credentials for one endpoint with a signed-in user's token: they log in as
/// the user's role.
pub(super) struct UserCredentials {
    pub(super) workspace: Workspace,
    pub(super) endpoint: EndpointName,
    pub(super) email: String,
    pub(super) token: LatestToken,
}

impl CredentialProvider for UserCredentials {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
        Box::pin(async move {
            let token = self.token.get();
            let minted = self
                .workspace
                .generate_database_credential_as(
                    Caller::User(&token),
                    &self.endpoint,
                    &CredentialRequest::default(),
                )
                .await
                .map_err(|error| refusal_or_redacted(error, &self.email))?;
            Ok(Credential::new(minted.token().clone()).expires_at(minted.expire_time()))
        })
    }
}

/// A workspace error for a call made with a user's token: 401 and 403 as the user's refusal
/// (never retried), anything else without the user's email in its text.
pub(super) fn refusal_or_redacted(error: Error, email: &str) -> BoxError {
    match error {
        Error::WorkspaceApi { status: 401, .. } => Box::new(Refused(UserProblem::TokenRejected)),
        Error::WorkspaceApi { status: 403, .. } => Box::new(Refused(UserProblem::Forbidden)),
        Error::WorkspaceApi {
            method,
            path,
            status,
            error_code,
            message,
        } => Box::new(Error::WorkspaceApi {
            method,
            path,
            status,
            error_code,
            message: redact(&message, email),
        }),
        other => Box::new(other),
    }
}

/// `text` with every occurrence of `email` (in any letter case) shown as `<user>`.
pub(super) fn redact(text: &str, email: &str) -> String {
    if email.is_empty() {
        return text.to_owned();
    }
    let lower_text = text.to_ascii_lowercase();
    let lower_email = email.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(found) = lower_text[rest..].find(&lower_email) {
        out.push_str(&text[rest..rest + found]);
        out.push_str(HIDDEN_USER);
        rest += found + lower_email.len();
    }
    out.push_str(&text[rest..]);
    out
}

/// The endpoint's host, looked up once (with the app's workspace identity) for all users.
pub(super) struct SharedHost {
    pub(super) workspace: Workspace,
    pub(super) endpoint: EndpointName,
    pub(super) host: OnceCell<String>,
}

impl SharedHost {
    async fn host(&self) -> Result<&str, Error> {
        self.host
            .get_or_try_init(|| async {
                let endpoint = self.workspace.get_endpoint(&self.endpoint).await?;
                endpoint.host.ok_or_else(|| {
                    Error::workspace_config(format!(
                        "endpoint {} reports no host yet (state {:?}); set the host explicitly \
                         or retry once the endpoint is ready",
                        self.endpoint, endpoint.state
                    ))
                })
            })
            .await
            .map(String::as_str)
    }
}

/// A user's connection target: the shared host, the user's role.
pub(super) struct UserTarget {
    pub(super) host: Arc<SharedHost>,
    pub(super) role: String,
}

impl TargetSource for UserTarget {
    fn describe(&self) -> String {
        format!("{HIDDEN_USER} on Lakebase endpoint {}", self.host.endpoint)
    }

    fn complete(
        &self,
        mut base: tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<tokio_postgres::Config, Error>> {
        Box::pin(async move {
            let host = self.host.host().await?;
            let _ = base.host(host).user(&self.role);
            Ok(base)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_every_spelling_of_the_email() {
        assert_eq!(
            redact(
                "User Alice@Example.com may not; alice@example.com again",
                "alice@example.com"
            ),
            "User <user> may not; <user> again"
        );
        assert_eq!(redact("nothing here", "alice@example.com"), "nothing here");
        assert_eq!(redact("keep", ""), "keep");
    }

    #[test]
    fn the_latest_token_says_when_it_changed() {
        let latest = LatestToken::new(Secret::new("a"));
        assert!(!latest.replace(&Secret::new("a")));
        assert!(latest.replace(&Secret::new("b")));
        assert_eq!(latest.get().expose(), "b");
    }
}
