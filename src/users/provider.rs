//! What a user's pool connects with: database credentials minted with the user's own token,
//! and the endpoint's host, looked up once for every user.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use crate::connect::TargetSource;
use crate::credentials::{Credential, CredentialProvider};
use crate::databricks::{Caller, CredentialRequest, Workspace, endpoint_host};
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
                .map_err(|error| -> BoxError {
                    match refusal(&error) {
                        Some(problem) => Box::new(Refused(problem)),
                        None => Box::new(without_email(error, &self.email)),
                    }
                })?;
            Ok(Credential::new(minted.token().clone()).expires_at(minted.expire_time()))
        })
    }
}

/// The refusal a workspace error for a call made with a user's token means: 401 and 403
/// are the user's (never retried).
pub(super) fn refusal(error: &Error) -> Option<UserProblem> {
    match error {
        Error::WorkspaceApi { status: 401, .. } => Some(UserProblem::TokenRejected),
        Error::WorkspaceApi { status: 403, .. } => Some(UserProblem::Forbidden),
        _ => None,
    }
}

/// `error` without the user's email in an API message (messages may name the user).
pub(super) fn without_email(error: Error, email: &str) -> Error {
    match error {
        Error::WorkspaceApi {
            method,
            path,
            status,
            error_code,
            message,
        } => Error::WorkspaceApi {
            method,
            path,
            status,
            error_code,
            message: redact(&message, email),
        },
        other => other,
    }
}

/// `text` with every occurrence of `email` (in any letter case) shown as `<user>`.
fn redact(text: &str, email: &str) -> String {
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
            .get_or_try_init(|| endpoint_host(&self.workspace, &self.endpoint))
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
