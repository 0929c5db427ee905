//! Lakebase discovery: the endpoint's host and the Postgres user, looked up in the workspace
//! before the first connect, as a target source of the connect path.

use super::Workspace;
use crate::connect::{Completed, TargetSource};
use crate::endpoint::EndpointName;
use crate::error::{BoxFuture, Error};

/// What to find out about a Lakebase endpoint before connecting to it.
pub(crate) struct LakebaseDiscovery {
    pub(crate) workspace: Workspace,
    pub(crate) endpoint: EndpointName,
    /// Look the host up with get-endpoint: which one, if any.
    pub(crate) host: Option<HostKind>,
    /// Resolve the user: the service principal's client id, else the workspace user name.
    pub(crate) user: bool,
}

impl LakebaseDiscovery {
    /// Both look-ups at once: each is a round trip to the workspace, and neither needs the
    /// other.
    async fn discover(&self, mut pg_config: tokio_postgres::Config) -> Result<Completed, Error> {
        let (host, user) = tokio::try_join!(self.host(), self.user())?;
        let mut writable = false;
        if let Some(host) = host {
            let _ = pg_config.host(&host.host);
            writable = host.writable;
        }
        if let Some(user) = user {
            let _ = pg_config.user(&user);
        }
        Ok(Completed {
            config: pg_config,
            writable,
        })
    }

    async fn host(&self) -> Result<Option<EndpointHost>, Error> {
        let Some(kind) = self.host else {
            return Ok(None);
        };
        endpoint_host(&self.workspace, &self.endpoint, kind)
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

/// Which of an endpoint's hosts to connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostKind {
    /// `status.hosts.host`: the primary, for a read-write endpoint.
    Main,
    /// `status.hosts.read_only_host`: the readable secondaries of an HA endpoint.
    ReadOnly,
}

/// An endpoint's host, as get-endpoint reported it.
pub(crate) struct EndpointHost {
    pub(crate) host: String,
    /// The main host of an `ENDPOINT_TYPE_READ_WRITE` endpoint: only a primary may serve it.
    pub(crate) writable: bool,
}

/// The host of `kind` that `endpoint` is served at, looked up with get-endpoint.
pub(crate) async fn endpoint_host(
    workspace: &Workspace,
    endpoint: &EndpointName,
    kind: HostKind,
) -> Result<EndpointHost, Error> {
    let answer = workspace.get_endpoint(endpoint).await?;
    let (host, writable) = match kind {
        HostKind::Main => {
            let host = answer.host.ok_or_else(|| {
                Error::workspace_config(format!(
                    "endpoint {endpoint} reports no host yet (state {:?}); set the host \
                     explicitly or retry once the endpoint is ready",
                    answer.state
                ))
            })?;
            let writable = answer.endpoint_type.as_deref() == Some("ENDPOINT_TYPE_READ_WRITE");
            (host, writable)
        }
        HostKind::ReadOnly => {
            let host = answer.read_only_host.ok_or_else(|| {
                Error::workspace_config(format!(
                    "endpoint {endpoint} reports no read-only host: only an endpoint with \
                     high availability and readable secondaries has one; turn \
                     `read_only_host_as_replica` (LAKEBASE_READ_ONLY_HOST) off, or enable \
                     readable secondaries on the endpoint"
                ))
            })?;
            (host, false)
        }
    };
    tracing::debug!(%endpoint, %host, ?kind, "discovered the endpoint's host");
    Ok(EndpointHost { host, writable })
}

impl TargetSource for LakebaseDiscovery {
    fn describe(&self) -> String {
        format!("Lakebase endpoint {}", self.endpoint)
    }

    fn complete(&self, base: tokio_postgres::Config) -> BoxFuture<'_, Result<Completed, Error>> {
        Box::pin(self.discover(base))
    }
}
