//! The Lakebase API calls: mint a credential, look up and list endpoints, who am I.

use crate::error::WorkspaceError;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::json;

use super::Workspace;
use super::time::parse_rfc3339;
use super::workspace::Caller;
use crate::endpoint::check_id;
use crate::error::RequestProblem;
use crate::{EndpointName, Error, Secret};

const CREDENTIALS_PATH: &str = "/api/2.0/postgres/credentials";

/// Options of a credential request; the default asks for the API's default lifetime (one
/// hour) and full permissions of the identity.
///
/// ```
/// use std::time::Duration;
/// use lakebase_pool::databricks::CredentialRequest;
///
/// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
/// let request = CredentialRequest::default()
///     .ttl(Duration::from_secs(1800))
///     .read_only_table("main.sales.orders");
/// let endpoint = "projects/shop/branches/production/endpoints/primary".parse()?;
/// let credential = workspace.generate_database_credential(&endpoint, &request).await?;
/// println!("expires at {:?}", credential.expire_time());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialRequest {
    ttl: Option<Duration>,
    read_only_tables: Vec<String>,
}

impl CredentialRequest {
    /// Ask for a token living `ttl` (the API accepts 300 s to 3600 s; whole seconds).
    ///
    /// Default: the API's default, one hour.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let request = lakebase_pool::databricks::CredentialRequest::default().ttl(Duration::from_secs(900));
    /// let endpoint = "projects/shop/branches/production/endpoints/primary".parse()?;
    /// let credential = workspace.generate_database_credential(&endpoint, &request).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Restrict the token to reading this table (`catalog.schema.table`); may be called
    /// several times.
    ///
    /// Default: no restriction.
    ///
    /// ```
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let request = lakebase_pool::databricks::CredentialRequest::default().read_only_table("main.a.b");
    /// let endpoint = "projects/shop/branches/production/endpoints/primary".parse()?;
    /// let credential = workspace.generate_database_credential(&endpoint, &request).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn read_only_table(mut self, table: impl Into<String>) -> Self {
        self.read_only_tables.push(table.into());
        self
    }

    fn body(&self, endpoint: &EndpointName) -> Result<serde_json::Value, Error> {
        let mut body = json!({ "endpoint": endpoint.to_string() });
        if let Some(ttl) = self.ttl {
            if !(300..=3600).contains(&ttl.as_secs()) || ttl.subsec_nanos() != 0 {
                return Err(Error::invalid(
                    "ttl",
                    format!(
                        "{ttl:?} is outside what the API accepts (whole seconds, 300 s to 3600 s)"
                    ),
                ));
            }
            body["ttl"] = json!(format!("{}s", ttl.as_secs()));
        }
        if !self.read_only_tables.is_empty() {
            let resources: Vec<_> = self
                .read_only_tables
                .iter()
                .map(|table| json!({ "table_name": table }))
                .collect();
            body["claims"] = json!([{ "permission_set": "READ_ONLY", "resources": resources }]);
        }
        Ok(body)
    }
}

/// A database token minted for one endpoint. `Debug` never shows the token.
#[derive(Clone)]
pub struct DatabaseCredential {
    token: Secret,
    expire_time: SystemTime,
}

impl DatabaseCredential {
    /// The token: the Postgres password.
    ///
    /// ```no_run
    /// # async fn demo(credential: lakebase_pool::databricks::DatabaseCredential) {
    /// let password: &str = credential.token().expose();
    /// # let _ = password;
    /// # }
    /// ```
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// When the token stops being accepted for new logins.
    ///
    /// ```no_run
    /// # fn demo(credential: lakebase_pool::databricks::DatabaseCredential) {
    /// let left = credential.expire_time().duration_since(std::time::SystemTime::now());
    /// println!("valid for {left:?}");
    /// # }
    /// ```
    pub fn expire_time(&self) -> SystemTime {
        self.expire_time
    }
}

impl fmt::Debug for DatabaseCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseCredential")
            .field("token", &self.token)
            .field("expire_time", &self.expire_time)
            .finish()
    }
}

/// The state of an endpoint's compute.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointState {
    /// Running.
    Active,
    /// Scaled to zero; the next connection wakes it.
    Idle,
    /// Being created.
    Init,
    /// Running with problems.
    Degraded,
    /// A state this version does not know.
    Other(String),
}

super::answers::api_states!(EndpointState {
    Active => "ACTIVE",
    Idle => "IDLE",
    Init => "INIT",
    Degraded => "DEGRADED",
});

/// A Lakebase endpoint as the API describes it. Fields the API left out are `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// Resource name, `projects/.../branches/.../endpoints/...`.
    pub name: EndpointName,
    /// Host to connect to (read-write for a read-write endpoint).
    pub host: Option<String>,
    /// Read-only host, when there is one.
    pub read_only_host: Option<String>,
    /// Host of the built-in connection pooler.
    pub pooled_host: Option<String>,
    /// Compute state.
    pub state: Option<EndpointState>,
    /// `ENDPOINT_TYPE_READ_WRITE` or `ENDPOINT_TYPE_READ_ONLY`.
    pub endpoint_type: Option<String>,
    /// Whether the endpoint is disabled (connections are refused).
    pub disabled: bool,
}

/// The identity the workspace client authenticates as.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CurrentUser {
    /// The user name (an email for people, the application id for service principals).
    pub user_name: String,
}

#[derive(Deserialize)]
struct CredentialAnswer {
    token: String,
    expire_time: String,
}

#[derive(Deserialize)]
struct EndpointAnswer {
    name: Option<String>,
    #[serde(default)]
    status: Option<StatusAnswer>,
}

#[derive(Deserialize, Default)]
struct StatusAnswer {
    #[serde(default)]
    hosts: Option<HostsAnswer>,
    current_state: Option<String>,
    endpoint_type: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
}

#[derive(Deserialize, Default)]
struct HostsAnswer {
    host: Option<String>,
    read_only_host: Option<String>,
    read_write_pooled_host: Option<String>,
}

#[derive(Deserialize)]
struct EndpointPage {
    #[serde(default)]
    endpoints: Vec<EndpointAnswer>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct MeAnswer {
    #[serde(rename = "userName")]
    user_name: String,
}

impl EndpointAnswer {
    /// The endpoint, named `name` (the one asked for, or the one a listing gave).
    fn into_endpoint(self, name: EndpointName) -> Endpoint {
        let status = self.status.unwrap_or_default();
        let hosts = status.hosts.unwrap_or_default();
        Endpoint {
            name,
            host: hosts.host.filter(|h| !h.is_empty()),
            read_only_host: hosts.read_only_host.filter(|h| !h.is_empty()),
            pooled_host: hosts.read_write_pooled_host.filter(|h| !h.is_empty()),
            state: status.current_state.as_deref().map(EndpointState::from_api),
            endpoint_type: status.endpoint_type,
            disabled: status.disabled.unwrap_or(false),
        }
    }
}

/// Most pages a listing follows, so a server that keeps returning page tokens cannot loop us.
const MAX_PAGES: usize = 100;

impl Workspace {
    /// Mints a database token for `endpoint` (`POST /api/2.0/postgres/credentials`).
    ///
    /// # Errors
    ///
    /// [`WorkspaceError::Api`] with the API's `error_code` and message (e.g. 403 when the
    /// identity may not use the endpoint), [`WorkspaceError::Request`] when the workspace is
    /// unreachable or the answer unusable (an empty token, an `expire_time` that is not RFC
    /// 3339 or already past), [`Error::InvalidConfig`] for a `ttl` the API would refuse.
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// use lakebase_pool::databricks::CredentialRequest;
    /// let endpoint = "projects/shop/branches/production/endpoints/ep-primary".parse()?;
    /// let credential = workspace.generate_database_credential(&endpoint, &CredentialRequest::default()).await?;
    /// println!("expires at {:?}", credential.expire_time());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn generate_database_credential(
        &self,
        endpoint: &EndpointName,
        request: &CredentialRequest,
    ) -> Result<DatabaseCredential, Error> {
        self.generate_database_credential_as(Caller::Workspace, endpoint, request)
            .await
    }

    /// [`generate_database_credential`](Self::generate_database_credential) as `caller`: with
    /// a signed-in user's token, the credential logs in as that user's role.
    pub(crate) async fn generate_database_credential_as(
        &self,
        caller: Caller<'_>,
        endpoint: &EndpointName,
        request: &CredentialRequest,
    ) -> Result<DatabaseCredential, Error> {
        let body = request.body(endpoint)?;
        let answer: CredentialAnswer = self
            .call_as(
                caller,
                reqwest::Method::POST,
                CREDENTIALS_PATH,
                &[],
                Some(body),
            )
            .await?;
        let unusable = |problem: String| {
            Error::Workspace(WorkspaceError::Request {
                method: reqwest::Method::POST,
                path: CREDENTIALS_PATH.to_owned(),
                problem: RequestProblem::InvalidResponse(problem),
                source: None,
            })
        };
        if answer.token.is_empty() {
            return Err(unusable(String::from("the token is empty")));
        }
        let expire_time = parse_rfc3339(&answer.expire_time)
            .map_err(|e| unusable(format!("expire_time: {e}")))?;
        if expire_time <= SystemTime::now() {
            return Err(unusable(format!(
                "expire_time {} is already past (check the system clock)",
                answer.expire_time
            )));
        }
        Ok(DatabaseCredential {
            token: Secret::new(answer.token),
            expire_time,
        })
    }

    /// Looks up an endpoint (`GET /api/2.0/postgres/{name}`), e.g. to find its host.
    ///
    /// # Errors
    ///
    /// [`WorkspaceError::Api`] (404 when it does not exist), [`WorkspaceError::Request`].
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// let endpoint = workspace.get_endpoint(&"projects/p/branches/b/endpoints/e".parse()?).await?;
    /// println!("{:?} is {:?}", endpoint.host, endpoint.state);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_endpoint(&self, endpoint: &EndpointName) -> Result<Endpoint, Error> {
        let name = endpoint.to_string();
        let answer: EndpointAnswer = self
            .call(
                reqwest::Method::GET,
                &format!("/api/2.0/postgres/{name}"),
                &[],
                None,
            )
            .await?;
        Ok(answer.into_endpoint(endpoint.clone()))
    }

    /// Lists the endpoints of a branch, following pagination.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpointName`] for malformed ids, [`WorkspaceError::Api`],
    /// [`WorkspaceError::Request`] (also when the server keeps paginating past 100 pages).
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// for endpoint in workspace.list_endpoints("shop", "production").await? {
    ///     println!("{} {:?}", endpoint.name, endpoint.host);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_endpoints(
        &self,
        project: &str,
        branch: &str,
    ) -> Result<Vec<Endpoint>, Error> {
        for (kind, id) in [("project", project), ("branch", branch)] {
            check_id(kind, id).map_err(|problem| Error::InvalidEndpointName {
                input: format!("projects/{project}/branches/{branch}"),
                problem,
            })?;
        }
        let base = format!("/api/2.0/postgres/projects/{project}/branches/{branch}/endpoints");
        self.list_pages(&base, |page: EndpointPage| {
            let endpoints = page
                .endpoints
                .into_iter()
                .map(|answer| {
                    // A listing names its entries; one without a valid name is not usable.
                    let invalid = |problem: String| {
                        Error::Workspace(WorkspaceError::Request {
                            method: reqwest::Method::GET,
                            path: base.clone(),
                            problem: RequestProblem::InvalidResponse(problem),
                            source: None,
                        })
                    };
                    let name = answer
                        .name
                        .as_deref()
                        .and_then(|name| name.parse::<EndpointName>().ok())
                        .ok_or_else(|| {
                            invalid(String::from("a listed endpoint has no valid `name`"))
                        })?;
                    // A pool or a CI job that took another branch's endpoint would read or
                    // migrate the wrong database: an answer that lists one is refused whole.
                    if name.project() != project || name.branch() != branch {
                        return Err(invalid(format!(
                            "the listing of branch `projects/{project}/branches/{branch}` \
                             named endpoint `{name}`, which belongs to another branch"
                        )));
                    }
                    Ok(answer.into_endpoint(name))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Ok((endpoints, page.next_page_token))
        })
        .await
    }

    /// Every entry of a paginated listing at `path`: pages of 100, each turned by `page` into
    /// its entries and the next page's token, until there is none (at most [`MAX_PAGES`]).
    pub(super) async fn list_pages<P, T>(
        &self,
        path: &str,
        mut page: impl FnMut(P) -> Result<(Vec<T>, Option<String>), Error>,
    ) -> Result<Vec<T>, Error>
    where
        P: serde::de::DeserializeOwned,
    {
        let mut entries = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("page_size", "100")];
            if let Some(token) = &page_token {
                query.push(("page_token", token));
            }
            let answer: P = self.call(reqwest::Method::GET, path, &query, None).await?;
            let (more, next) = page(answer)?;
            entries.extend(more);
            match next.filter(|t| !t.is_empty()) {
                Some(next) => page_token = Some(next),
                None => return Ok(entries),
            }
        }
        Err(Error::Workspace(WorkspaceError::Request {
            method: reqwest::Method::GET,
            path: path.to_owned(),
            problem: RequestProblem::InvalidResponse(format!(
                "still paginating after {MAX_PAGES} pages"
            )),
            source: None,
        }))
    }

    /// The identity this client authenticates as (`GET /api/2.0/preview/scim/v2/Me`).
    ///
    /// # Errors
    ///
    /// [`WorkspaceError::Api`], [`WorkspaceError::Request`].
    ///
    /// ```no_run
    /// # async fn demo(workspace: lakebase_pool::databricks::Workspace) -> Result<(), lakebase_pool::Error> {
    /// println!("I am {}", workspace.current_user().await?.user_name);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn current_user(&self) -> Result<CurrentUser, Error> {
        self.current_user_as(Caller::Workspace).await
    }

    /// [`current_user`](Self::current_user) as `caller`.
    pub(crate) async fn current_user_as(&self, caller: Caller<'_>) -> Result<CurrentUser, Error> {
        let me: MeAnswer = self
            .call_as(
                caller,
                reqwest::Method::GET,
                "/api/2.0/preview/scim/v2/Me",
                &[],
                None,
            )
            .await?;
        Ok(CurrentUser {
            user_name: me.user_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointName {
        "projects/p/branches/b/endpoints/e".parse().unwrap()
    }

    #[test]
    fn credential_request_body_has_exactly_the_contract_fields() {
        assert_eq!(
            CredentialRequest::default().body(&endpoint()).unwrap(),
            json!({ "endpoint": "projects/p/branches/b/endpoints/e" })
        );
        let full = CredentialRequest::default()
            .ttl(Duration::from_secs(1800))
            .read_only_table("main.s.t")
            .body(&endpoint())
            .unwrap();
        assert_eq!(
            full,
            json!({
                "endpoint": "projects/p/branches/b/endpoints/e",
                "ttl": "1800s",
                "claims": [{ "permission_set": "READ_ONLY", "resources": [{ "table_name": "main.s.t" }] }]
            })
        );
    }

    #[test]
    fn ttl_outside_the_api_range_is_refused_before_sending() {
        for ttl in [
            Duration::from_secs(299),
            Duration::from_secs(3601),
            Duration::from_millis(1500),
        ] {
            let err = CredentialRequest::default()
                .ttl(ttl)
                .body(&endpoint())
                .unwrap_err();
            assert!(err.to_string().contains("`ttl`"), "{err}");
        }
    }

    #[test]
    fn endpoint_answers_with_missing_parts_still_parse() {
        let full: EndpointAnswer = serde_json::from_str(
            r#"{"name":"projects/p/branches/b/endpoints/e","status":{"hosts":{"host":"ep-e.db.example.com"},
                "current_state":"IDLE","endpoint_type":"ENDPOINT_TYPE_READ_WRITE","disabled":false},"spec":{}}"#,
        )
        .unwrap();
        let full = full.into_endpoint(endpoint());
        assert_eq!(full.host.as_deref(), Some("ep-e.db.example.com"));
        assert_eq!(full.state, Some(EndpointState::Idle));
        let bare: EndpointAnswer = serde_json::from_str("{}").unwrap();
        let bare = bare.into_endpoint(endpoint());
        assert_eq!(bare.name, endpoint());
        assert_eq!((bare.host, bare.state, bare.disabled), (None, None, false));
    }
}
