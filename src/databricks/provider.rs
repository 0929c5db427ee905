//! `LakebaseCredentials`: the credential provider that mints endpoint-scoped tokens.

use super::{CredentialRequest, Workspace};
use crate::credentials::{Credential, CredentialProvider};
use crate::error::BoxFuture;
use crate::{BoxError, EndpointName};

/// Mints Lakebase database tokens for one endpoint through a [`Workspace`]; each token's
/// expiry comes from the API's `expire_time`. Put it behind a pool with
/// [`PoolBuilder::credentials`](crate::PoolBuilder::credentials), or let
/// [`PoolBuilder::lakebase_endpoint`](crate::PoolBuilder::lakebase_endpoint) do that.
///
/// ```no_run
/// use lakebase_pool::databricks::{LakebaseCredentials, Workspace};
///
/// let workspace = Workspace::from_env()?;
/// let endpoint = "projects/shop/branches/production/endpoints/ep-primary".parse()?;
/// let provider = LakebaseCredentials::new(workspace, endpoint);
/// # let _ = provider;
/// # Ok::<(), lakebase_pool::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LakebaseCredentials {
    workspace: Workspace,
    endpoint: EndpointName,
    request: CredentialRequest,
}

impl LakebaseCredentials {
    /// Tokens for `endpoint`, with the API's default lifetime and permissions.
    ///
    /// ```no_run
    /// use lakebase_pool::databricks::{LakebaseCredentials, Workspace};
    /// let provider = LakebaseCredentials::new(Workspace::from_env()?, "projects/p/branches/b/endpoints/e".parse()?);
    /// # let _ = provider;
    /// # Ok::<(), lakebase_pool::Error>(())
    /// ```
    pub fn new(workspace: Workspace, endpoint: EndpointName) -> Self {
        LakebaseCredentials {
            workspace,
            endpoint,
            request: CredentialRequest::default(),
        }
    }

    /// Ask for tokens with these options (lifetime, read-only tables).
    ///
    /// ```no_run
    /// # let provider: lakebase_pool::databricks::LakebaseCredentials = unimplemented!();
    /// use std::time::Duration;
    /// let provider = provider.request(
    ///     lakebase_pool::databricks::CredentialRequest::default().ttl(Duration::from_secs(1800)),
    /// );
    /// ```
    #[must_use]
    pub fn request(mut self, request: CredentialRequest) -> Self {
        self.request = request;
        self
    }
}

impl CredentialProvider for LakebaseCredentials {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
        Box::pin(async move {
            let minted = self
                .workspace
                .generate_database_credential(&self.endpoint, &self.request)
                .await?;
            Ok(Credential::new(minted.token().clone()).expires_at(minted.expire_time()))
        })
    }
}
