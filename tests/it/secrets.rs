//! No token appears in `Debug`, `Display`, errors or log output.

use std::time::Duration;

use lakebase_pool::credentials::{Credential, StaticPassword, from_fn};
use lakebase_pool::databricks::Workspace;
use lakebase_pool::{CachePolicy, Error, Secret, TokenCache};

use crate::support::{LogCapture, ROLE, cluster};

#[tokio::test]
async fn tokens_never_appear_in_debug_display_errors_or_trace_logs() {
    let (logs, _guard) = LogCapture::install();
    let pg = cluster().await;
    let tokens = pg.rotating_password(ROLE, Duration::from_secs(3600));
    let builder = pg.pool_builder(ROLE).credentials(tokens.clone());
    let mut shown = vec![format!("{builder:?}")];
    let pool = builder.build().unwrap();

    // A mint and a connection, a rotation, a rejected token and its forced refresh.
    let conn = pool.get().await.unwrap();
    let first = pool.token_cache().token().await.unwrap();
    let second = pool.token_cache().force_refresh(&first).await.unwrap();
    pg.set_password(ROLE, &Secret::new("changed-elsewhere"), None)
        .await
        .unwrap();
    let conn2 = pool.get().await.unwrap();
    let third = pool.token_cache().token().await.unwrap();
    assert_eq!(pool.stats().auth_refreshes, 1, "the rejection path ran");
    let secrets = [
        first.secret().clone(),
        second.secret().clone(),
        third.secret().clone(),
    ];

    // A retry and a give-up: the server goes away under a pool with a short deadline.
    let short = pg
        .pool_builder(ROLE)
        .credentials(tokens.clone())
        .retry(lakebase_pool::RetryPolicy::default().deadline(Duration::from_millis(500)))
        .build()
        .unwrap();
    let held = short.get().await.unwrap();
    let fourth = short.token_cache().token().await.unwrap();
    pg.stop(lakebase_pool_testing::StopMode::Fast).unwrap();
    let gave_up = short.get().await.unwrap_err();
    assert!(
        matches!(gave_up, Error::ConnectRetriesExhausted { .. }),
        "{gave_up:?}"
    );
    assert!(logs.text().contains("retrying"), "the retry was logged");
    pg.resume().unwrap();
    drop(held);
    let secrets = [
        secrets[0].clone(),
        secrets[1].clone(),
        secrets[2].clone(),
        fourth.secret().clone(),
    ];
    shown.push(format!("{gave_up} {gave_up:?} {short:?}"));

    // An auth failure and a provider failure produce errors; format them too.
    let bad = pg
        .pool_builder(ROLE)
        .credentials(StaticPassword::new("static-secret-value"))
        .build()
        .unwrap();
    let auth_error = bad.get().await.unwrap_err();
    assert!(auth_error.is_auth());
    let cache = TokenCache::new(
        from_fn(|| async { Err::<Credential, _>(std::io::Error::other("mint failed")) }),
        CachePolicy::default(),
    );
    let mint_error = cache.token().await.unwrap_err();
    assert!(matches!(mint_error, Error::Credentials { .. }));

    shown.extend([
        format!("{pool:?}"),
        format!("{bad:?}"),
        format!("{conn:?} {conn2:?}"),
        format!("{first:?} {second:?} {third:?}"),
        format!("{:?}", pool.token_cache()),
        format!("{:?}", pool.stats()),
        format!("{tokens:?}"),
        format!("{:?}", StaticPassword::new("static-secret-value")),
        format!("{:?}", Secret::new("static-secret-value")),
        format!(
            "{auth_error} {auth_error:?} {:?}",
            std::error::Error::source(&auth_error)
        ),
        format!("{mint_error} {mint_error:?}"),
        logs.text(),
    ]);
    let everything = shown.join("\n");
    assert!(
        logs.text()
            .contains("minted a token kind=\"database token\""),
        "logs were captured"
    );
    for secret in secrets
        .iter()
        .map(Secret::expose)
        .chain(["static-secret-value"])
    {
        assert!(!secret.is_empty());
        assert!(
            !everything.contains(secret),
            "a secret leaked into:\n{everything}"
        );
    }
}

#[tokio::test]
async fn workspace_secrets_never_appear_in_debug_errors_or_trace_logs() {
    use lakebase_pool::databricks::{CredentialRequest, LakebaseCredentials};
    use lakebase_pool::{EndpointName, Environment};
    use lakebase_pool_testing::{Fault, MockWorkspace};

    let (logs, _guard) = LogCapture::install();
    let mock = MockWorkspace::start().unwrap();
    let endpoint: EndpointName = "projects/p/branches/b/endpoints/ep".parse().unwrap();
    mock.add_endpoint(&endpoint.to_string(), "127.0.0.1");
    mock.add_service_principal("sp-id", "sp-client-secret-value");
    mock.add_pat("dapi-pat-secret-value", "someone@example.com");

    let m2m_builder = Workspace::builder()
        .host(mock.url())
        .client_credentials("sp-id", "sp-client-secret-value");
    let mut shown = vec![format!("{m2m_builder:?}")];
    let m2m = m2m_builder.build().unwrap();
    let credential = m2m
        .generate_database_credential(&endpoint, &CredentialRequest::default())
        .await
        .unwrap();
    let pat = Workspace::builder()
        .host(mock.url())
        .token("dapi-pat-secret-value")
        .build()
        .unwrap();
    let provider = LakebaseCredentials::new(pat.clone(), endpoint.clone());
    // Failures: a refused secret, a refused PAT call, and a rate-limit retry in the logs.
    let wrong = Workspace::builder()
        .host(mock.url())
        .client_credentials("sp-id", "sp-client-secret-value-but-wrong")
        .build()
        .unwrap();
    let refused = wrong.current_user().await.unwrap_err();
    mock.inject(Fault::rate_limited(0).on("/api/2.0/postgres/credentials"));
    mock.inject(
        Fault::status(403, r#"{"error_code":"PERMISSION_DENIED","message":"no"}"#)
            .on("/api/2.0/preview"),
    );
    let forbidden = pat.current_user().await.unwrap_err();
    let second = pat
        .generate_database_credential(&endpoint, &CredentialRequest::default())
        .await
        .unwrap();

    shown.extend([
        format!("{m2m:?} {pat:?} {wrong:?} {provider:?}"),
        format!("{credential:?} {second:?}"),
        format!("{refused} {refused:?} {forbidden} {forbidden:?}"),
        format!("{:?}", mock.minted()),
        // The request log: the OAuth call's form (with the client secret) is never kept.
        format!("{:?}", mock.requests()),
        format!(
            "{:?}",
            Environment::from_vars([("DATABRICKS_TOKEN", "dapi-pat-secret-value")])
        ),
        logs.text(),
    ]);
    let everything = shown.join("\n");
    assert!(logs.text().contains("retrying"), "the retry was logged");
    for secret in [
        "sp-client-secret-value",
        "dapi-pat-secret-value",
        credential.token().expose(),
        second.token().expose(),
    ] {
        assert!(
            !everything.contains(secret),
            "`{secret}` leaked into:\n{everything}"
        );
    }
}

/// The types added for services and workers hold or pass errors and connections, never a
/// token: listener events, transaction handles, HTTP errors, shutdown reports, the local
/// Lakebase, and everything they log at TRACE.
#[tokio::test]
async fn listener_transaction_and_http_types_never_show_a_token() {
    use lakebase_pool::integrations::HttpError;
    use lakebase_pool_testing::{LocalLakebase, StopMode};

    let (logs, _guard) = LogCapture::install();
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .retry(lakebase_pool::RetryPolicy::default().deadline(std::time::Duration::from_secs(1)))
        .build()
        .unwrap();
    let mut listener = pool.listener(["jobs"]).await.unwrap();
    let handle = pool
        .retry_transaction(|tx| async move { Ok(format!("{tx:?}")) })
        .await
        .unwrap();
    let mut shown = vec![handle, format!("{listener:?}"), format!("{lakebase:?}")];

    lakebase.suspend();
    for _ in 0..2 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(15), listener.recv())
            .await
            .unwrap()
            .unwrap();
        shown.push(format!("{event:?}"));
        if let lakebase_pool::ListenerEvent::Disconnected(error) = &event {
            shown.push(format!("{error} {:?}", std::error::Error::source(error)));
        }
    }

    lakebase.postgres().stop(StopMode::Fast).unwrap();
    let down = pool.get().await.unwrap_err();
    let http = HttpError::from(down);
    shown.push(format!("{http} {http:?}"));
    let report = pool.shutdown(std::time::Duration::from_secs(1)).await;
    shown.push(format!("{report:?} {pool:?}"));
    shown.push(logs.text());

    let everything = shown.join("\n");
    let minted = lakebase.workspace().minted();
    assert!(!minted.is_empty());
    for token in &minted {
        assert!(
            !everything.contains(token.token.expose()),
            "a token leaked into:\n{everything}"
        );
    }
    assert!(
        !everything.contains(LocalLakebase::PAT),
        "the workspace token leaked into:\n{everything}"
    );
}

/// Per-user pools never show a user's token, and never their email, in errors, `Debug`
/// output or logs: a success, each kind of refusal (expired, forged, someone else's, no
/// database scope, no role), the HTTP errors made of them, and everything logged at TRACE.
#[tokio::test]
async fn user_tokens_and_emails_never_appear_in_errors_debug_or_logs() {
    use lakebase_pool::integrations::HttpError;
    use lakebase_pool::users::{ForwardedHeaders, ForwardedUser, UserPools};

    use crate::users::{ALICE, BOB, apps_stack};

    let (logs, _guard) = LogCapture::install();
    let (lakebase, builder) = apps_stack().await;
    let carol = "carol@example.com";
    let tokens = lakebase.add_users(&[ALICE, BOB]).await.unwrap();
    let mock = lakebase.workspace();
    let expired = mock.issue_expired_user_token(ALICE);
    let unscoped = mock.issue_user_token_without_database_scope(BOB);
    let carol_token = mock.issue_user_token(carol);
    let users = UserPools::builder(builder)
        .forwarded_headers(ForwardedHeaders::Trusted)
        .build()
        .unwrap();

    let alice = ForwardedUser::new(ALICE, tokens[0].clone());
    let conn = users.for_user(&alice).await.unwrap();
    let mut shown = vec![
        format!("{alice:?} {conn:?} {users:?} {:?}", users.stats()),
        format!("{:?}", users.app_pool().stats()),
    ];
    for user in [
        ForwardedUser::new(ALICE, expired.clone()),
        ForwardedUser::new(ALICE, Secret::new("forged-user-token-value")),
        ForwardedUser::new(ALICE, tokens[1].clone()),
        ForwardedUser::new(BOB, unscoped.clone()),
        ForwardedUser::new(carol, carol_token.clone()),
    ] {
        let error = users.for_user(&user).await.unwrap_err();
        assert!(error.is_auth(), "{error:?}");
        let http = HttpError::from(error);
        assert!(matches!(http.status(), 401 | 403));
        shown.push(format!(
            "{user:?} {http} {http:?} {}",
            crate::support::chain(&http)
        ));
    }
    // The refusal was logged with the server's text, which names the user: redacted.
    assert!(
        logs.text().contains("<user>"),
        "the login refusal was logged"
    );
    shown.push(format!("{:?}", users.stats()));
    shown.push(logs.text());
    let everything = shown.join("\n");
    for secret in [
        tokens[0].expose(),
        tokens[1].expose(),
        expired.expose(),
        unscoped.expose(),
        carol_token.expose(),
        "forged-user-token-value",
        ALICE,
        BOB,
        carol,
    ] {
        assert!(
            !everything.contains(secret),
            "`{secret}` leaked into:\n{everything}"
        );
    }
}

/// No token, secret or user email in any exported metric attribute, span attribute or span
/// event: the app's database tokens (before and after a rotation), its OAuth client secret,
/// a signed-in user's token and email, and a refused token.
#[cfg(feature = "opentelemetry")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_user_appears_in_any_exported_attribute() {
    use lakebase_pool::users::{ForwardedHeaders, ForwardedUser, UserPools};

    use crate::telemetry::{Otel, span_attribute_values};
    use crate::users::{ALICE, APP_SECRET, apps_stack};

    let (lakebase, builder) = apps_stack().await;
    let user_tokens = lakebase.add_users(&[ALICE]).await.unwrap();
    let otel = Otel::new();
    let users = UserPools::builder(builder.meter(otel.meter()).tracer(otel.tracer()))
        .forwarded_headers(ForwardedHeaders::Trusted)
        .build()
        .unwrap();
    let app = users.app_pool();
    drop(app.get().await.unwrap());
    let first = app.token_cache().token().await.unwrap();
    let second = app.token_cache().force_refresh(&first).await.unwrap();
    drop(
        users
            .for_user(&ForwardedUser::new(ALICE, user_tokens[0].clone()))
            .await
            .unwrap(),
    );
    let expired = lakebase.workspace().issue_expired_user_token(ALICE);
    let refused = users
        .for_user(&ForwardedUser::new(ALICE, expired.clone()))
        .await;
    assert!(refused.is_err());

    let mut values = otel.collect().attribute_values();
    let spans = otel.spans();
    values.extend(span_attribute_values(&spans));
    // What was exported is there: both pools' connects and mints.
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name == "lakebase.connect")
            .count(),
        2
    );
    assert!(values.iter().any(|v| v == "postgresql"));
    assert!(values.iter().any(|v| v.ends_with("/users")));
    let exported = values.join("\n");
    for secret in [
        first.secret().expose(),
        second.secret().expose(),
        user_tokens[0].expose(),
        expired.expose(),
        APP_SECRET,
        ALICE,
    ] {
        assert!(!secret.is_empty());
        assert!(
            !exported.contains(secret),
            "{secret} was exported:\n{exported}"
        );
    }
}
