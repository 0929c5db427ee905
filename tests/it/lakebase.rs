//! The pool against `MockWorkspace` and a real local Postgres: discovery, minting, rotation,
//! and configuration from the environment.

use std::time::Duration;

use lakebase_pool::databricks::Workspace;
use lakebase_pool::{CachePolicy, Environment, Error, Pool, PoolBuilder};
use lakebase_pool_testing::{LocalPostgres, MockWorkspace};

use crate::support::{backend_pid, lakebase_cluster};

const ENDPOINT: &str = "projects/shop/branches/production/endpoints/ep-primary";

/// A cluster whose role `role` (with database `databricks_postgres`) gets every token the mock
/// mints as its password.
async fn setup(role: &str) -> (LocalPostgres, MockWorkspace) {
    let pg = lakebase_cluster(role).await;
    let mock = MockWorkspace::start().unwrap();
    mock.add_endpoint(ENDPOINT, "127.0.0.1");
    mock.apply_tokens_to(&pg, role);
    (pg, mock)
}

/// A workspace client authenticating with a PAT the mock accepts for `user`.
fn workspace_with_pat(mock: &MockWorkspace, user: &str) -> Workspace {
    mock.add_pat("dapi-test", user);
    Workspace::builder()
        .host(mock.url())
        .token("dapi-test")
        .build()
        .unwrap()
}

#[tokio::test]
async fn lakebase_endpoint_discovers_host_and_user_mints_and_connects() {
    let user = "someone@example.com";
    let (pg, mock) = setup(user).await;
    let workspace = workspace_with_pat(&mock, user);
    let pool = Pool::builder()
        .workspace(workspace)
        .lakebase_endpoint(ENDPOINT)
        .port(pg.port())
        .build()
        .unwrap();

    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        user,
        "user resolved from the workspace identity"
    );
    assert_eq!(row.get::<_, String>(1), "databricks_postgres");
    assert_eq!(
        mock.count("GET", &format!("/api/2.0/postgres/{ENDPOINT}")),
        1,
        "host discovered"
    );
    assert_eq!(
        mock.count("GET", "/api/2.0/preview/scim/v2/Me"),
        1,
        "user resolved"
    );
    assert_eq!(mock.minted().len(), 1);

    // The workspace rotates the token: new connections use the new one, old ones go on.
    let first = pool.token_cache().token().await.unwrap();
    let second = pool.token_cache().force_refresh(&first).await.unwrap();
    assert_eq!(mock.minted().len(), 2);
    assert_eq!(second.secret(), &mock.minted()[1].token);
    let newer = pool.get().await.unwrap();
    assert_ne!(backend_pid(&conn).await, backend_pid(&newer).await);
    assert_eq!(pool.stats().auth_refreshes, 0);
    // Discovery ran once.
    assert_eq!(mock.count("GET", "/api/2.0/preview/scim/v2/Me"), 1);
}

#[tokio::test]
async fn short_lived_tokens_are_replaced_before_they_expire_and_never_served_expired() {
    let user = "someone@example.com";
    let (pg, mock) = setup(user).await;
    mock.set_token_lifetime(Duration::from_secs(8));
    let workspace = workspace_with_pat(&mock, user);
    let pool = Pool::builder()
        .workspace(workspace)
        .lakebase_endpoint(ENDPOINT)
        .port(pg.port())
        .user(user)
        .cache_policy(
            CachePolicy::default()
                .min_remaining(Duration::from_secs(6))
                .refresh_ahead(Duration::from_secs(7)),
        )
        .max_lifetime(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let conn = pool.get().await.expect("every checkout succeeds");
        let _ = conn.simple_query("SELECT 1").await.unwrap();
        drop(conn);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let minted = mock.minted();
    // Each token is usable for 2 s (8 s life, 6 s minimum left): about three in 5 s.
    assert!(minted.len() >= 3, "{} tokens minted", minted.len());
    let current = pool.token_cache().token().await.unwrap();
    let left = current
        .expiry()
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left >= Duration::from_secs(5),
        "never serves a token near expiry: {left:?}"
    );
}

fn apps_env(mock: &MockWorkspace, pg: &LocalPostgres) -> Vec<(String, String)> {
    [
        (
            "DATABRICKS_HOST",
            mock.url().trim_start_matches("http://").to_owned(),
        ),
        ("DATABRICKS_CLIENT_ID", String::from("app-sp-id")),
        ("DATABRICKS_CLIENT_SECRET", String::from("app-sp-secret")),
        ("DATABRICKS_WORKSPACE_ID", String::from("1234567890")),
        ("DATABRICKS_APP_NAME", String::from("orders")),
        ("PGHOST", String::from("127.0.0.1")),
        ("PGPORT", pg.port().to_string()),
        ("PGDATABASE", String::from("databricks_postgres")),
        ("PGUSER", String::from("app-sp-id")),
        ("PGSSLMODE", String::from("disable")),
        ("PGAPPNAME", String::from("orders-app")),
        ("LAKEBASE_ENDPOINT", String::from(ENDPOINT)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[tokio::test]
async fn from_env_with_an_apps_like_environment_connects() {
    let (pg, mock) = setup("app-sp-id").await;
    mock.add_service_principal("app-sp-id", "app-sp-secret");
    // DATABRICKS_HOST without a scheme gets https://, which a loopback mock does not speak;
    // Apps hosts are real https hosts. Give the scheme here, as a local setup would.
    let mut vars = apps_env(&mock, &pg);
    vars[0].1 = mock.url();
    let pool = PoolBuilder::from_environment(&Environment::from_vars(vars.clone()))
        .unwrap()
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let row = conn
        .query_one(
            "SELECT current_user::text, current_setting('application_name')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app-sp-id");
    assert_eq!(row.get::<_, String>(1), "orders-app");
    assert_eq!(mock.count("POST", "/oidc/v1/token"), 1);
    assert_eq!(
        mock.count("GET", "/api/2.0/postgres/projects"),
        0,
        "PGHOST given: no lookup"
    );
    // Apps set PGSSLMODE=require: accepted, and it means verified TLS, which this plain local
    // server cannot offer, so the login is refused rather than sent in plain text.
    vars.retain(|(k, _)| k != "PGSSLMODE");
    vars.push((String::from("PGSSLMODE"), String::from("require")));
    let strict = PoolBuilder::from_environment(&Environment::from_vars(vars))
        .unwrap()
        .retry(lakebase_pool::RetryPolicy::no_retry())
        .build()
        .unwrap();
    let err = strict.get().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn from_env_names_each_missing_or_malformed_variable() {
    let (pg, mock) = setup("app-sp-id").await;
    let base = apps_env(&mock, &pg);
    let error_with = |change: &[(&str, Option<&str>)]| {
        let mut vars = base.clone();
        for (name, value) in change {
            vars.retain(|(k, _)| k != name);
            if let Some(value) = value {
                vars.push((name.to_string(), value.to_string()));
            }
        }
        PoolBuilder::from_environment(&Environment::from_vars(vars))
            .and_then(PoolBuilder::build)
            .unwrap_err()
    };
    let var_of = |err: &Error| match err {
        Error::InvalidEnv { var, .. } => *var,
        other => panic!("unexpected {other:?}"),
    };
    let err = error_with(&[("PGPORT", Some("54x"))]);
    assert_eq!(var_of(&err), "PGPORT");
    assert!(err.to_string().contains("must be a port number"), "{err}");
    let err = error_with(&[("LAKEBASE_ENDPOINT", Some("projects/shop/endpoints/x"))]);
    assert_eq!(var_of(&err), "LAKEBASE_ENDPOINT");
    assert!(
        err.to_string().contains("is not a Lakebase endpoint name"),
        "{err}"
    );
    let err = error_with(&[("LAKEBASE_ENDPOINT", None)]);
    assert_eq!(var_of(&err), "LAKEBASE_ENDPOINT");
    assert!(err.to_string().contains("is not set"), "{err}");
    assert_eq!(
        var_of(&error_with(&[("PGSSLMODE", Some("sometimes"))])),
        "PGSSLMODE"
    );
    assert_eq!(
        var_of(&error_with(&[("PGHOSTADDR", Some("10.0.0.300"))])),
        "PGHOSTADDR"
    );
    assert_eq!(
        var_of(&error_with(&[("PGCONNECT_TIMEOUT", Some("-3"))])),
        "PGCONNECT_TIMEOUT"
    );
    let err = error_with(&[("DATABRICKS_HOST", None)]);
    assert!(err.to_string().contains("DATABRICKS_HOST"), "{err}");
    let err = error_with(&[("DATABRICKS_CLIENT_SECRET", None)]);
    assert!(
        err.to_string().contains("DATABRICKS_CLIENT_SECRET"),
        "{err}"
    );
    let err = error_with(&[("DATABRICKS_HOST", Some("http://workspace.example.com"))]);
    assert!(
        err.to_string().contains("allowed only for loopback hosts"),
        "{err}"
    );
    let err = error_with(&[
        ("LAKEBASE_ENDPOINT", None),
        ("PGPASSWORD", Some("pw")),
        ("PGHOST", None),
    ]);
    assert_eq!(var_of(&err), "PGHOST");
}
