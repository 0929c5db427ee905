//! The mock workspace's routes: OAuth discovery and token endpoint, and the Lakebase API.

use std::time::{Duration, Instant, SystemTime};

use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::{Bytes, Incoming};
use serde_json::{Value, json};

use super::codec::{Answer, answer, api_error, base64_decode, ok, parse_form};
use super::faults::{CutOff, FaultKind};
use super::{MintedToken, MockDiscovery, MockEndpoint, RecordedRequest, Shared, lock};
use crate::api_formats::{format_rfc3339, proto_duration};
use crate::rotating::random_token;

/// The largest request body the mock reads.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Answers `request`, recording when it arrived and when its answer was ready.
pub(super) async fn handle(state: &Shared, request: Request<Incoming>) -> Answer {
    let index = {
        let mut state = lock(state);
        state.record(RecordedRequest {
            method: request.method().as_str().to_owned(),
            path: request.uri().path().to_owned(),
            started: Instant::now(),
            answered: None,
            status: None,
            query: request.uri().query().unwrap_or_default().to_owned(),
            body: None,
        })
    };
    let answer = respond(state, index, request).await;
    if let Some(record) = lock(state).request_mut(index) {
        record.answered = Some(Instant::now());
        record.status = Some(answer.status().as_u16());
    }
    answer
}

/// `429` if `path` is over the rate limit now; otherwise counts it as served.
fn over_rate_limit(state: &Shared, path: &str) -> Option<Answer> {
    let mut state = lock(state);
    let limit = state.rate_limit.as_mut()?;
    if !path.starts_with(&limit.path_prefix) {
        return None;
    }
    let now = Instant::now();
    let second = Duration::from_secs(1);
    while limit
        .served
        .front()
        .is_some_and(|at| now.duration_since(*at) >= second)
    {
        let _ = limit.served.pop_front();
    }
    if limit.served.len() < limit.per_second {
        limit.served.push_back(now);
        return None;
    }
    let frees_in = limit
        .served
        .front()
        .map_or(second, |at| second.saturating_sub(now.duration_since(*at)));
    let seconds = frees_in.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = api_error(429, "REQUEST_LIMIT_EXCEEDED", "Too many requests");
    let _ = response
        .headers_mut()
        .insert(hyper::header::RETRY_AFTER, seconds.into());
    Some(response)
}

async fn respond(state: &Shared, index: usize, request: Request<Incoming>) -> Answer {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let headers = request.headers().clone();
    // Capped like any server's: a client that streams without end gets 413, not our memory.
    let body = match http_body_util::Limited::new(request.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(body) => {
            let body = body.to_bytes();
            if path.starts_with("/api/2.0/postgres/")
                && let Some(record) = lock(state).request_mut(index)
            {
                let kept = &body[..body.len().min(super::MAX_RECORDED_BODY)];
                record.body = Some(String::from_utf8_lossy(kept).into_owned());
            }
            body
        }
        Err(_) => {
            return api_error(
                413,
                "REQUEST_TOO_LARGE",
                "the request body is larger than 1 MiB",
            );
        }
    };

    let (fault, latency) = {
        let mut state = lock(state);
        let index = state.faults.iter().position(|f| f.matches(&method, &path));
        let fault = index.map(|i| {
            state.faults[i].times -= 1;
            state.faults[i].kind.clone()
        });
        state.faults.retain(|f| f.times > 0);
        (fault, state.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(refused) = over_rate_limit(state, &path) {
        return refused;
    }
    match fault {
        Some(FaultKind::Hang) => std::future::pending().await,
        Some(FaultKind::MalformedJson) => return answer(200, "{\"token\": \"abc"),
        Some(FaultKind::Truncated) => {
            let mut response = answer(200, "");
            *response.body_mut() = CutOff { step: 0 }.boxed();
            let _ = response
                .headers_mut()
                .insert(hyper::header::CONTENT_LENGTH, 4096.into());
            return response;
        }
        Some(FaultKind::Status {
            status,
            body,
            retry_after,
        }) => {
            let mut response = answer(status, body);
            if let Some(seconds) = retry_after {
                let _ = response
                    .headers_mut()
                    .insert(hyper::header::RETRY_AFTER, seconds.into());
            }
            return response;
        }
        Some(FaultKind::LostAnswer) => {
            let _ = route(state, &method, &path, &query, &headers, &body).await;
            return api_error(
                503,
                "TEMPORARILY_UNAVAILABLE",
                "The service is temporarily unavailable.",
            );
        }
        None => {}
    }
    route(state, &method, &path, &query, &headers, &body).await
}

/// What the workspace does with a request that no fault intercepts.
async fn route(
    state: &Shared,
    method: &str,
    path: &str,
    query: &str,
    headers: &hyper::HeaderMap,
    body: &Bytes,
) -> Answer {
    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    match (method, path) {
        ("GET", "/.well-known/databricks-config") => discovery_config(state),
        ("GET", "/oidc/.well-known/oauth-authorization-server") => oidc_metadata(
            state,
            "/oidc",
            &[MockDiscovery::Workspace, MockDiscovery::OidcOnly],
        ),
        ("GET", "/oidc2/.well-known/oauth-authorization-server") => {
            oidc_metadata(state, "/oidc2", &[MockDiscovery::DatabricksConfig])
        }
        ("POST", "/oidc/v1/token" | "/oidc2/v1/token") => oauth_token(state, headers, body),
        _ => {
            let identity = bearer
                .as_deref()
                .and_then(|token| identity_of(state, token));
            let Some((identity, database_scope)) = identity else {
                return api_error(401, "UNAUTHENTICATED", "Invalid access token.");
            };
            if let Some(answer) = super::branches::handle(state, method, path, query, body).await {
                return answer;
            }
            match (method, path) {
                ("POST", "/api/2.0/postgres/credentials") if !database_scope => api_error(
                    403,
                    "PERMISSION_DENIED",
                    "Provided OAuth token does not have required scopes",
                ),
                ("POST", "/api/2.0/postgres/credentials") => mint(state, &identity, body).await,
                ("GET", "/api/2.0/preview/scim/v2/Me") => {
                    ok(json!({"userName": identity, "id": "1234"}))
                }
                ("GET", p)
                    if p.starts_with("/api/2.0/postgres/projects/")
                        && p.ends_with("/endpoints") =>
                {
                    list_endpoints(
                        state,
                        p.trim_start_matches("/api/2.0/postgres/")
                            .trim_end_matches("/endpoints"),
                        query,
                    )
                }
                ("GET", p) if p.starts_with("/api/2.0/postgres/projects/") => {
                    get_endpoint(state, p.trim_start_matches("/api/2.0/postgres/"))
                }
                _ => api_error(
                    404,
                    "ENDPOINT_NOT_FOUND",
                    &format!("No API found for '{method} {path}'"),
                ),
            }
        }
    }
}

/// Who `token` is, and whether it may mint database credentials.
fn identity_of(state: &Shared, token: &str) -> Option<(String, bool)> {
    let state = lock(state);
    if let Some(user) = state.pats.get(token) {
        return Some((user.clone(), true));
    }
    state
        .access_tokens
        .get(token)
        .filter(|access| access.expiry > SystemTime::now())
        .map(|access| (access.identity.clone(), access.database_scope))
}

fn discovery_config(state: &Shared) -> Answer {
    let state = lock(state);
    let oidc = match state.discovery {
        MockDiscovery::Workspace => "/oidc",
        MockDiscovery::DatabricksConfig => "/oidc2",
        MockDiscovery::OidcOnly | MockDiscovery::None => {
            return api_error(
                404,
                "ENDPOINT_NOT_FOUND",
                "No API found for '/.well-known/databricks-config'",
            );
        }
    };
    ok(json!({"oidc_endpoint": format!("{}{oidc}", state.base_url), "workspace_id": "1234567890"}))
}

fn oidc_metadata(state: &Shared, prefix: &str, serves_in: &[MockDiscovery]) -> Answer {
    let state = lock(state);
    if !serves_in.contains(&state.discovery) {
        return answer(404, "");
    }
    let base = format!("{}{prefix}", state.base_url);
    ok(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/v1/authorize"),
        "token_endpoint": format!("{base}/v1/token"),
    }))
}

fn oauth_token(state: &Shared, headers: &hyper::HeaderMap, body: &[u8]) -> Answer {
    let oauth_error = |status: u16, error: &str, description: &str| {
        answer(
            status,
            json!({"error": error, "error_description": description}).to_string(),
        )
    };
    let basic = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(base64_decode)
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((client_id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    };
    let form = parse_form(body);
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(
            400,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    if form.get("scope").map(String::as_str) != Some("all-apis") {
        return oauth_error(400, "invalid_scope", "scope must be all-apis");
    }
    let mut state = lock(state);
    if state.clients.get(client_id).map(String::as_str) != Some(secret) {
        return oauth_error(401, "invalid_client", "Client authentication failed");
    }
    let token = random_token().expose().to_owned();
    let lifetime = 3600;
    let expiry = SystemTime::now() + Duration::from_secs(lifetime);
    let _ = state.access_tokens.insert(
        token.clone(),
        super::AccessToken {
            identity: client_id.to_owned(),
            expiry,
            database_scope: true,
        },
    );
    ok(
        json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": "all-apis"}),
    )
}

async fn mint(state: &Shared, identity: &str, body: &[u8]) -> Answer {
    let request: Value = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Value::Object(map),
        _ => {
            return api_error(
                400,
                "MALFORMED_REQUEST",
                "Request body must be a JSON object",
            );
        }
    };
    let Some(endpoint) = request
        .get("endpoint")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return api_error(
            400,
            "INVALID_PARAMETER_VALUE",
            "Field 'endpoint' is required",
        );
    };
    let (lifetime, fractional, apply_to) = {
        let state = lock(state);
        match state.endpoints.get(&endpoint) {
            None => {
                return api_error(
                    404,
                    "NOT_FOUND",
                    &format!("Endpoint '{endpoint}' does not exist."),
                );
            }
            Some(e) if e.disabled => {
                return api_error(400, "INVALID_STATE", "Endpoint is disabled");
            }
            Some(_) => {}
        }
        (
            state.token_lifetime,
            state.fractional,
            state.apply_to.clone(),
        )
    };
    let lifetime = match request.get("ttl") {
        None => lifetime,
        Some(ttl) => match ttl.as_str().and_then(proto_duration) {
            Some(ttl) if (300..=3600).contains(&ttl.as_secs()) => ttl,
            _ => {
                return api_error(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "ttl must be between 300s and 3600s",
                );
            }
        },
    };
    let token = random_token();
    let expire_time = SystemTime::now() + lifetime;
    if let Some((pg, role)) = apply_to
        && let Err(error) = pg.set_password(&role, &token, Some(expire_time)).await
    {
        return api_error(
            500,
            "INTERNAL_ERROR",
            &format!("could not apply the token: {error}"),
        );
    }
    lock(state).remember_minted(MintedToken {
        token: token.clone(),
        endpoint,
        identity: identity.to_owned(),
        expire_time,
    });
    ok(json!({"token": token.expose(), "expire_time": format_rfc3339(expire_time, fractional)}))
}

fn endpoint_json(name: &str, endpoint: &MockEndpoint) -> Value {
    let (parent, id) = name.rsplit_once("/endpoints/").unwrap_or((name, name));
    let endpoint_type = if endpoint.read_only {
        "ENDPOINT_TYPE_READ_ONLY"
    } else {
        "ENDPOINT_TYPE_READ_WRITE"
    };
    let mut hosts = json!({"host": endpoint.host});
    if let Some(read_only_host) = &endpoint.read_only_host {
        hosts["read_only_host"] = json!(read_only_host);
    }
    json!({
        "name": name,
        "parent": parent,
        "endpoint_id": id,
        "uid": format!("uid-{id}"),
        "create_time": "2026-01-01T00:00:00Z",
        "update_time": "2026-01-01T00:00:00Z",
        "spec": {"endpoint_type": endpoint_type, "disabled": endpoint.disabled},
        "status": {
            "hosts": hosts,
            "current_state": endpoint.state,
            "endpoint_type": endpoint_type,
            "disabled": endpoint.disabled,
        },
    })
}

fn get_endpoint(state: &Shared, name: &str) -> Answer {
    match lock(state).endpoints.get(name) {
        Some(endpoint) => ok(endpoint_json(name, endpoint)),
        None => api_error(
            404,
            "NOT_FOUND",
            &format!("Endpoint '{name}' does not exist."),
        ),
    }
}

/// Lists a branch's endpoints two per page, so that clients must follow `next_page_token`.
fn list_endpoints(state: &Shared, branch: &str, query: &str) -> Answer {
    const PAGE: usize = 2;
    let form = parse_form(query.as_bytes());
    // Page tokens are opaque base64-like text, `+`, `/` and `=` included, as the real API's
    // are: a client that does not escape them gets the wrong page.
    let start: usize = form
        .get("page_token")
        .and_then(|t| t.strip_prefix("pg+")?.strip_suffix("/==")?.parse().ok())
        .unwrap_or(0);
    let state = lock(state);
    let prefix = format!("{branch}/endpoints/");
    let all: Vec<Value> = state
        .endpoints
        .iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .map(|(name, endpoint)| endpoint_json(name, endpoint))
        .collect();
    let page: Vec<Value> = all.iter().skip(start).take(PAGE).cloned().collect();
    let mut body = json!({"endpoints": page});
    if start + PAGE < all.len() {
        body["next_page_token"] = json!(format!("pg+{}/==", start + PAGE));
    }
    ok(body)
}
