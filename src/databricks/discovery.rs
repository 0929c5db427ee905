//! Lakebase discovery: the endpoint's host and the Postgres user, looked up in the workspace
//! before the first connect, as a target source of the connect path.

use super::Workspace;
use crate::connect::TargetSource;
use crate::endpoint::EndpointName;
use crate::error::{BoxFuture, Error};

/// What to find out about a Lakebase endpoint before connecting to it.
pub(crate) struct LakebaseDiscovery {
    pub(crate) workspace: Workspace,
    pub(crate) endpoint: EndpointName,
    /// Look the host up with get-endpoint.
    pub(crate) host: bool,
    /// Resolve the user: the service principal's client id, else the workspace user name.
    pub(crate) user: bool,
}

impl LakebaseDiscovery {
    /// Both look-ups at once: each is a round trip to the workspace, and neither needs the
    /// other.
    async fn discover(
        &self,
        mut pg_config: tokio_postgres::Config,
    ) -> Result<tokio_postgres::Config, Error> {
        let (host, user) = tokio::try_join!(self.host(), self.user())?;
        if let Some(host) = host {
            let _ = pg_config.host(&host);
        }
        if let Some(user) = user {
            let _ = pg_config.user(&user);
        }
        Ok(pg_config)
    }

    async fn host(&self) -> Result<Option<String>, Error> {
        if !self.host {
            return Ok(None);
        }
        endpoint_host(&self.workspace, &self.endpoint)
            .await
            .map(Some)
    }

    async fn user(&self) -> Result<Option<String>, Error> {
        if !self.user {
            return Ok(None);
        }
        let user = match self.workspace.client_id() {
            Some(client_id) => client_id.to_owned(),
            None => self.workspace.current_user().await?.user_name,
        };
        tracing::debug!(%user, "resolved the Postgres user from the workspace identity");
        Ok(Some(user))
    }
}

/// The host `endpoint` is served at, looked up with get-endpoint.
pub(crate) async fn endpoint_host(
    workspace: &Workspace,
    endpoint: &EndpointName,
) -> Result<String, Error> {
    let answer = workspace.get_endpoint(endpoint).await?;
    let host = answer.host.ok_or_else(|| {
        Error::workspace_config(format!(
            "endpoint {endpoint} reports no host yet (state {:?}); set the host explicitly or \
             retry once the endpoint is ready",
            answer.state
        ))
    })?;
    tracing::debug!(%endpoint, %host, "discovered the endpoint's host");
    Ok(host)
}

impl TargetSource for LakebaseDiscovery {
    fn describe(&self) -> String {
        format!("Lakebase endpoint {}", self.endpoint)
    }

    fn complete(
        &self,
        base: tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<tokio_postgres::Config, Error>> {
        Box::pin(self.discover(base))
    }
}
