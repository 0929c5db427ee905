//! Workspace auth and the Lakebase API over real HTTP to `MockWorkspace`.

use lakebase_pool::databricks::WorkspaceError;
use std::time::{Duration, SystemTime};

use lakebase_pool::databricks::{
    AuthMethod, CredentialRequest, EndpointState, Workspace, WorkspaceBuilder,
};
use lakebase_pool::{EndpointName, Environment, Error, RequestProblem};
use lakebase_pool_testing::{Fault, MockDiscovery, MockWorkspace};

use crate::support::chain;

const ENDPOINT: &str = "projects/shop/branches/production/endpoints/ep-primary";
const PAT: &str = "dapi-test-token";
const USER: &str = "someone@example.com";

fn mock() -> MockWorkspace {
    let mock = MockWorkspace::start().unwrap();
    mock.add_pat(PAT, USER);
    mock.add_endpoint(ENDPOINT, "127.0.0.1");
    mock
}

fn endpoint() -> EndpointName {
    ENDPOINT.parse().unwrap()
}

fn with_pat(mock: &MockWorkspace) -> Workspace {
    Workspace::builder()
        .host(mock.url())
        .token(PAT)
        .build()
        .unwrap()
}

fn env(vars: &[(&str, &str)]) -> Environment {
    Environment::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[tokio::test]
async fn pat_authenticates_and_mints_an_endpoint_credential() {
    let mock = mock();
    let workspace = with_pat(&mock);
    assert_eq!(workspace.auth_method(), AuthMethod::Pat);
    assert_eq!(workspace.current_user().await.unwrap().user_name, USER);

    let before = SystemTime::now();
    let credential = workspace
        .generate_database_credential(&endpoint(), &CredentialRequest::default())
        .await
        .unwrap();
    let minted = mock.minted();
    assert_eq!(minted.len(), 1);
    assert_eq!(
        minted[0].endpoint, ENDPOINT,
        "the request named exactly the endpoint"
    );
    assert_eq!(minted[0].identity, USER, "the request carried the PAT");
    assert_eq!(credential.token(), &minted[0].token);
    // expire_time (whole seconds on the wire) is about an hour ahead.
    let ahead = credential.expire_time().duration_since(before).unwrap();
    assert!(
        ahead > Duration::from_secs(3598) && ahead <= Duration::from_secs(3601),
        "{ahead:?}"
    );
}

#[tokio::test]
async fn fractional_expire_times_are_read_exactly() {
    let mock = mock();
    mock.set_fractional_expire_time(true);
    let credential = with_pat(&mock)
        .generate_database_credential(
            &endpoint(),
            &CredentialRequest::default().ttl(Duration::from_secs(600)),
        )
        .await
        .unwrap();
    let recorded = mock.minted()[0].expire_time;
    let difference = recorded
        .duration_since(credential.expire_time())
        .unwrap_or_else(|e| e.duration());
    assert!(difference < Duration::from_micros(1), "{difference:?}");
}

#[tokio::test]
async fn endpoints_are_looked_up_and_listed_across_pages() {
    let mock = mock();
    for id in ["ep-a", "ep-b", "ep-c", "ep-d"] {
        mock.add_endpoint(
            &format!("projects/shop/branches/production/endpoints/{id}"),
            "127.0.0.1",
        );
    }
    mock.add_endpoint("projects/shop/branches/dev/endpoints/ep-x", "127.0.0.1");
    mock.set_endpoint_state(ENDPOINT, "IDLE");
    let workspace = with_pat(&mock);
    let found = workspace.get_endpoint(&endpoint()).await.unwrap();
    assert_eq!(found.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(found.state, Some(EndpointState::Idle));
    let listed = workspace
        .list_endpoints("shop", "production")
        .await
        .unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(
        mock.count(
            "GET",
            "/api/2.0/postgres/projects/shop/branches/production/endpoints"
        ),
        3 + 1
    );
    let missing = workspace
        .get_endpoint(
            &"projects/shop/branches/production/endpoints/ep-gone"
                .parse()
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(missing, Error::Workspace(WorkspaceError::Api { status: 404, ref error_code, .. }) if error_code.as_deref() == Some("NOT_FOUND"))
    );
}

async fn m2m_token_requests(discovery: MockDiscovery, token_path: &str) {
    let mock = mock();
    mock.add_service_principal("sp-client-id", "sp-secret");
    mock.set_discovery(discovery);
    let workspace = WorkspaceBuilder::from_environment(&env(&[
        ("DATABRICKS_HOST", &mock.url()),
        ("DATABRICKS_CLIENT_ID", "sp-client-id"),
        ("DATABRICKS_CLIENT_SECRET", "sp-secret"),
    ]))
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(workspace.auth_method(), AuthMethod::OAuthM2M);
    assert_eq!(
        workspace.current_user().await.unwrap().user_name,
        "sp-client-id"
    );
    let _ = workspace
        .generate_database_credential(&endpoint(), &CredentialRequest::default())
        .await
        .unwrap();
    assert_eq!(
        mock.count("POST", token_path),
        1,
        "one workspace token served both calls"
    );
    // Besides it, at most the early request to the conventional endpoint, made while
    // discovery ran (and, where that is not the token endpoint, refused and dropped).
    assert_eq!(
        mock.count("POST", "/oidc"),
        if token_path == "/oidc/v1/token" { 1 } else { 2 }
    );
}

#[tokio::test]
async fn oauth_m2m_uses_the_workspaces_own_oidc_endpoint_named_by_databricks_config() {
    m2m_token_requests(MockDiscovery::Workspace, "/oidc/v1/token").await;
}

#[tokio::test]
async fn oauth_m2m_uses_databricks_config_discovery() {
    m2m_token_requests(MockDiscovery::DatabricksConfig, "/oidc2/v1/token").await;
}

#[tokio::test]
async fn oauth_m2m_uses_oidc_discovery_of_older_sdks() {
    m2m_token_requests(MockDiscovery::OidcOnly, "/oidc/v1/token").await;
}

#[tokio::test]
async fn oauth_m2m_falls_back_to_the_conventional_path_when_discovery_fails() {
    m2m_token_requests(MockDiscovery::None, "/oidc/v1/token").await;
}

#[tokio::test]
async fn oauth_m2m_with_a_wrong_secret_is_an_auth_error_naming_the_client() {
    let mock = mock();
    mock.add_service_principal("sp-client-id", "right");
    let workspace = Workspace::builder()
        .host(mock.url())
        .client_credentials("sp-client-id", "wrong-secret")
        .build()
        .unwrap();
    let err = workspace.current_user().await.unwrap_err();
    let shown = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(
        shown.contains("the token endpoint refused client `sp-client-id`"),
        "{shown}"
    );
    assert!(
        shown.contains("invalid_client") && shown.contains("Client authentication failed"),
        "{shown}"
    );
    assert!(!shown.contains("wrong-secret"), "{shown}");
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

#[tokio::test]
async fn config_file_profiles_are_chosen_by_env_and_by_default_profile() {
    let mock = mock();
    mock.add_pat("dapi-staging", "staging@example.com");
    mock.add_pat("dapi-default", "default@example.com");
    let url = mock.url();
    let cfg = config_file(&format!(
        "[DEFAULT]\nhost = {url}\ntoken = dapi-default\n\n[staging]\nhost = {url}\ntoken = dapi-staging\n"
    ));
    let path = cfg.path().to_str().unwrap();
    let who = |vars: &[(&str, &str)]| {
        let workspace = WorkspaceBuilder::from_environment(&env(vars))
            .unwrap()
            .build()
            .unwrap();
        async move { workspace.current_user().await.unwrap().user_name }
    };
    assert_eq!(
        who(&[("DATABRICKS_CONFIG_FILE", path)]).await,
        "default@example.com"
    );
    assert_eq!(
        who(&[
            ("DATABRICKS_CONFIG_FILE", path),
            ("DATABRICKS_CONFIG_PROFILE", "staging")
        ])
        .await,
        "staging@example.com"
    );
    let with_default = config_file(&format!(
        "[__settings__]\ndefault_profile = staging\n\n[DEFAULT]\nhost = {url}\ntoken = dapi-default\n\n\
         [staging]\nhost = {url}\ntoken = dapi-staging\n"
    ));
    assert_eq!(
        who(&[(
            "DATABRICKS_CONFIG_FILE",
            with_default.path().to_str().unwrap()
        )])
        .await,
        "staging@example.com"
    );
    // The environment beats the file; the builder beats the environment.
    assert_eq!(
        who(&[("DATABRICKS_CONFIG_FILE", path), ("DATABRICKS_TOKEN", PAT)]).await,
        USER
    );
    let explicit = WorkspaceBuilder::from_environment(&env(&[
        ("DATABRICKS_CONFIG_FILE", path),
        ("DATABRICKS_TOKEN", PAT),
    ]))
    .unwrap()
    .token("dapi-staging")
    .build()
    .unwrap();
    assert_eq!(
        explicit.current_user().await.unwrap().user_name,
        "staging@example.com"
    );
    // A requested profile that does not exist is an error that lists the ones that do.
    let err = WorkspaceBuilder::from_environment(&env(&[
        ("DATABRICKS_CONFIG_FILE", path),
        ("DATABRICKS_CONFIG_PROFILE", "prod"),
    ]))
    .unwrap()
    .build()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("profile `prod` is not in the config file")
            && err.contains("DEFAULT, staging"),
        "{err}"
    );
}

#[tokio::test]
async fn a_token_from_env_and_a_client_id_from_the_file_conflict() {
    let mock = mock();
    let cfg = config_file(&format!(
        "[DEFAULT]\nhost = {}\nclient_id = sp\nclient_secret = s\n",
        mock.url()
    ));
    let err = WorkspaceBuilder::from_environment(&env(&[
        ("DATABRICKS_CONFIG_FILE", cfg.path().to_str().unwrap()),
        ("DATABRICKS_TOKEN", PAT),
    ]))
    .unwrap()
    .build()
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("two auth methods are configured at once"),
        "{err}"
    );
}

#[tokio::test]
async fn databricks_cli_tokens_are_used_when_nothing_else_is_configured() {
    use std::os::unix::fs::PermissionsExt;
    let mock = mock();
    mock.add_pat("dapi-from-cli", "cli-user@example.com");
    let bin = tempfile::tempdir().unwrap();
    let script = bin.path().join("databricks");
    let expected_args = format!("auth token --host {}", mock.url());
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$*\" = \"{expected_args}\" ]; then\n  echo '{{\"access_token\":\"dapi-from-cli\",\
             \"token_type\":\"Bearer\",\"expiry\":\"2099-01-01T10:00:00.123+01:00\"}}'\nelse\n  \
             echo \"unexpected arguments: $*\" >&2; exit 1\nfi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = bin.path().to_str().unwrap();
    let workspace = WorkspaceBuilder::from_environment(&env(&[
        ("DATABRICKS_HOST", &mock.url()),
        ("PATH", path),
    ]))
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(workspace.auth_method(), AuthMethod::DatabricksCli);
    assert_eq!(
        workspace.current_user().await.unwrap().user_name,
        "cli-user@example.com"
    );

    // A failing CLI is an auth error that tells how to log in, with the CLI's own message.
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'cannot find token: refresh token expired' >&2\nexit 1\n",
    )
    .unwrap();
    let workspace = WorkspaceBuilder::from_environment(&env(&[
        ("DATABRICKS_HOST", &mock.url()),
        ("PATH", path),
    ]))
    .unwrap()
    .build()
    .unwrap();
    let err = workspace.current_user().await.unwrap_err();
    let shown = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(
        shown.contains("refresh token expired") && shown.contains("databricks auth login"),
        "{shown}"
    );
}

#[tokio::test]
async fn rate_limited_calls_wait_for_retry_after_then_succeed() {
    let mock = mock();
    mock.inject(Fault::rate_limited(1).on("/api/2.0/postgres/credentials"));
    let started = std::time::Instant::now();
    let _ = with_pat(&mock)
        .generate_database_credential(&endpoint(), &CredentialRequest::default())
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(mock.count("POST", "/api/2.0/postgres/credentials"), 2);
}

#[tokio::test]
async fn service_unavailable_is_retried() {
    let mock = mock();
    mock.inject(
        Fault::status(503, "upstream unavailable")
            .times(2)
            .on("/api/2.0/postgres/credentials"),
    );
    let _ = with_pat(&mock)
        .generate_database_credential(&endpoint(), &CredentialRequest::default())
        .await
        .unwrap();
    assert_eq!(mock.count("POST", "/api/2.0/postgres/credentials"), 3);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_carry_the_servers_code_and_message() {
    for (status, code) in [
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
    ] {
        let mock = mock();
        let body = format!(r#"{{"error_code":"{code}","message":"the {status} message"}}"#);
        mock.inject(Fault::status(status, body).on("/api/2.0/postgres/credentials"));
        let err = with_pat(&mock)
            .generate_database_credential(&endpoint(), &CredentialRequest::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "POST /api/2.0/postgres/credentials failed with HTTP {status} {code}: the {status} message"
            )
        );
        assert_eq!(
            mock.count("POST", "/api/2.0/postgres/credentials"),
            1,
            "{status} was not retried"
        );
        assert_eq!(err.is_auth(), status != 404);
    }
}

#[tokio::test]
async fn odd_answers_give_clear_errors_never_panics() {
    let cases: Vec<(Fault, &str)> = vec![
        (
            Fault::status(502, "<!DOCTYPE html><html><body>Bad gateway</body></html>"),
            "HTML page",
        ),
        (
            Fault::status(500, "internal failure, try later"),
            "internal failure, try later",
        ),
        (Fault::status(500, ""), "(empty body)"),
        (Fault::malformed_json(), "malformed JSON"),
        (Fault::status(200, "{}"), "missing field `token`"),
        (
            Fault::status(200, r#"{"token":"t","expire_time":"tomorrow"}"#),
            "not an RFC 3339 timestamp",
        ),
        (
            Fault::status(200, r#"{"token":"t","expire_time":"2001-01-01T00:00:00Z"}"#),
            "already past",
        ),
        (
            Fault::status(200, r#"{"token":"","expire_time":"2099-01-01T00:00:00Z"}"#),
            "the token is empty",
        ),
        (
            Fault::status(200, "x".repeat(2 * 1024 * 1024)),
            "larger than the 1048576-byte limit",
        ),
    ];
    for (fault, expected) in cases {
        let mock = mock();
        mock.inject(fault.on("/api/2.0/postgres/credentials"));
        let err = with_pat(&mock)
            .generate_database_credential(&endpoint(), &CredentialRequest::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "expected `{expected}` in: {err}"
        );
    }
}

#[tokio::test]
async fn a_hanging_server_hits_the_request_timeout_within_the_budget() {
    let mock = mock();
    mock.inject(Fault::hang().times(10));
    let workspace = Workspace::builder()
        .host(mock.url())
        .token(PAT)
        .request_timeout(Duration::from_millis(300))
        .retry_budget(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let err = workspace.current_user().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            Error::Workspace(WorkspaceError::Request {
                problem: RequestProblem::TimedOut(_),
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.is_timeout() && err.is_transient());
    assert!(
        mock.count("GET", "/api/2.0/preview/scim/v2/Me") >= 2,
        "timeouts are retried"
    );
}

#[tokio::test]
async fn an_unreachable_workspace_is_reported_as_such() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let workspace = Workspace::builder()
        .host(url)
        .token(PAT)
        .retry_budget(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = workspace.current_user().await.unwrap_err();
    // A refused connection is a wrong host, known at once: not retried, and said so.
    assert!(
        matches!(
            err,
            Error::Workspace(WorkspaceError::Request {
                problem: RequestProblem::ConnectionRefused { .. },
                ..
            })
        ),
        "{err:?}"
    );
    assert!(!err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("DATABRICKS_HOST"), "{err}");
}

/// The client secret goes only where the workspace host's rule allows: a discovered
/// `oidc_endpoint` or `token_endpoint` on another origin, learnt over plain http, is ignored
/// and the workspace's own token endpoint is used.
#[tokio::test]
async fn discovered_token_endpoints_on_other_origins_never_get_the_client_secret() {
    let evil = MockWorkspace::start().unwrap();
    evil.add_service_principal("sp-client-id", "sp-secret");
    evil.set_discovery(MockDiscovery::DatabricksConfig);
    for (path, body) in [
        (
            "/.well-known/databricks-config",
            format!(r#"{{"oidc_endpoint": "{}/oidc2"}}"#, evil.url()),
        ),
        (
            "/oidc2/.well-known/oauth-authorization-server",
            format!(r#"{{"token_endpoint": "{}/oidc2/v1/token"}}"#, evil.url()),
        ),
    ] {
        let mock = mock();
        mock.add_service_principal("sp-client-id", "sp-secret");
        mock.set_discovery(MockDiscovery::DatabricksConfig);
        mock.inject(Fault::status(200, body).on(path));
        let workspace = Workspace::builder()
            .host(mock.url())
            .client_credentials("sp-client-id", "sp-secret")
            .build()
            .unwrap();
        let user = workspace.current_user().await;
        assert_eq!(
            evil.count("POST", "/oidc"),
            0,
            "{path}: the secret went to another origin"
        );
        assert!(user.is_ok(), "{path}: {user:?}");
        assert_eq!(mock.count("POST", "/oidc"), 1, "{path}");
    }
}

/// Server-supplied numbers at the edge of `u64` once panicked on clock arithmetic.
#[tokio::test]
async fn absurd_retry_after_retry_info_and_expires_in_give_errors_not_panics() {
    let credentials = "/api/2.0/postgres/credentials";
    let retry_info = |delay: &str| {
        format!(
            r#"{{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy", "details": [{{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "{delay}"}}]}}"#
        )
    };
    for fault in [
        Fault::rate_limited(u64::MAX),
        Fault::status(429, retry_info("1e19s")),
        Fault::status(503, retry_info("18446744073709551615s")),
    ] {
        let mock = mock();
        mock.inject(fault.on(credentials));
        let started = std::time::Instant::now();
        let err = with_pat(&mock)
            .generate_database_credential(&endpoint(), &CredentialRequest::default())
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "no waiting");
        assert!(
            matches!(
                err,
                Error::Workspace(WorkspaceError::Request {
                    problem: RequestProblem::Throttled { .. },
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains("more than the"), "{err}");
    }

    // An OAuth token that claims to live u64::MAX seconds is cached (clamped) and used; the
    // workspace refuses it, and one fresh token replaces it.
    let mock = mock();
    mock.add_service_principal("sp-client-id", "sp-secret");
    mock.set_discovery(MockDiscovery::None);
    mock.inject(
        Fault::status(
            200,
            r#"{"access_token": "not-a-real-token", "token_type": "Bearer", "expires_in": 18446744073709551615}"#,
        )
        .on("/oidc/v1/token"),
    );
    let workspace = Workspace::builder()
        .host(mock.url())
        .client_credentials("sp-client-id", "sp-secret")
        .build()
        .unwrap();
    assert_eq!(
        workspace.current_user().await.unwrap().user_name,
        "sp-client-id"
    );
    assert_eq!(mock.count("POST", "/oidc/v1/token"), 2);
}

/// The CLI's stderr reaches errors cleaned: no control characters, at most 300 characters.
#[tokio::test]
async fn a_databricks_cli_error_is_quoted_without_control_characters_or_length() {
    use std::os::unix::fs::PermissionsExt;
    let mock = mock();
    let bin = tempfile::tempdir().unwrap();
    let script = bin.path().join("databricks");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf 'Error: expired\\n\\033[2J\\rFAKE LOG LINE level=info\\n' >&2\n\
         head -c 100000 /dev/zero | tr '\\0' x >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let workspace = WorkspaceBuilder::from_environment(&env(&[
        ("DATABRICKS_HOST", &mock.url()),
        ("PATH", bin.path().to_str().unwrap()),
    ]))
    .unwrap()
    .build()
    .unwrap();
    let err = workspace.current_user().await.unwrap_err();
    let shown = chain(&err);
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
    assert!(shown.len() < 2000, "{} characters", shown.len());
    assert!(
        shown.contains("printed more than") || shown.contains("Error: expired"),
        "{shown}"
    );
}

/// The mock workspace reads at most 1 MiB of a request body, then answers 413.
#[tokio::test]
async fn the_mock_workspace_refuses_request_bodies_over_a_mebibyte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = mock();
    let address = mock.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /api/2.0/postgres/credentials HTTP/1.1\r\nhost: {address}\r\n\
         authorization: Bearer {PAT}\r\ncontent-length: 4194304\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..20 {
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// Config and CA paths that are not regular files (a FIFO, `/dev/zero`) or are huge give a
/// clear error from `build()`, never a hang or an unbounded read.
#[tokio::test]
async fn special_files_as_config_or_ca_paths_fail_build_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for path in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
        let built = tokio::time::timeout(Duration::from_secs(5), async {
            Workspace::builder()
                .host("https://x.cloud.databricks.com")
                .token(PAT)
                .config_file(path)
                .build()
        })
        .await
        .expect("no hang");
        let err = built.unwrap_err();
        assert!(
            matches!(err, Error::Workspace(WorkspaceError::Config { .. })),
            "{err:?}"
        );
        assert!(chain(&err).contains("not a regular file"), "{err}");

        let err = lakebase_pool::Pool::builder()
            .host("127.0.0.1")
            .user("app")
            .password("pw")
            .root_certificates_file(path)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(chain(&err).contains("not a regular file"), "{err}");
    }
}
