//! What a user's pool connects with: database credentials minted with the user's own token,
//! and the endpoint's host, looked up once for every user.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use super::refusal::{Refused, refusal, without_email};
use crate::connect::{Completed, TargetSource};
use crate::credentials::{Credential, CredentialProvider};
use crate::databricks::{
    Caller, CredentialRequest, EndpointHost, HostKind, Workspace, endpoint_host,
};
use crate::error::BoxFuture;
use crate::target::HIDDEN_USER;
use crate::{BoxError, EndpointName, Error, Secret};

/// The newest token a user came with (the Apps proxy refreshes it), shared by the user's
/// entry, which updates it, and their credential provider, which mints with it. Newest means
/// of the request that arrived last: a check of an older token that finishes after a newer
/// one's never puts the older token back.
#[derive(Clone)]
pub(super) struct LatestToken(Arc<Mutex<(Secret, u64)>>);

impl LatestToken {
    /// `token`, of the request that arrived `arrival`-th.
    pub(super) fn new(token: Secret, arrival: u64) -> Self {
        LatestToken(Arc::new(Mutex::new((token, arrival))))
    }

    pub(super) fn get(&self) -> Secret {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Stores `token` if its request arrived after the stored one's; whether the stored
    /// token changed.
    pub(super) fn replace(&self, token: &Secret, arrival: u64) -> bool {
        let mut latest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if arrival <= latest.1 {
            return false;
        }
        latest.1 = arrival;
        if latest.0 == *token {
            return false;
        }
        latest.0 = token.clone();
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

/// The endpoint's host, looked up once (with the app's workspace identity) for all users.
pub(super) struct SharedHost {
    pub(super) workspace: Workspace,
    pub(super) endpoint: EndpointName,
    pub(super) host: OnceCell<EndpointHost>,
}

impl SharedHost {
    async fn host(&self) -> Result<&EndpointHost, Error> {
        self.host
            .get_or_try_init(|| endpoint_host(&self.workspace, &self.endpoint, HostKind::Main))
            .await
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
    ) -> BoxFuture<'_, Result<Completed, Error>> {
        Box::pin(async move {
            let host = self.host.host().await?;
            let _ = base.host(&host.host).user(&self.role);
            Ok(Completed {
                config: base,
                writable: host.writable,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_token_is_the_last_arrived_and_says_when_it_changed() {
        let latest = LatestToken::new(Secret::new("a"), 1);
        assert!(!latest.replace(&Secret::new("a"), 2));
        assert!(latest.replace(&Secret::new("c"), 4));
        // A request that arrived earlier finishes later: its token does not come back.
        assert!(!latest.replace(&Secret::new("b"), 3));
        assert_eq!(latest.get().expose(), "c");
    }
}
