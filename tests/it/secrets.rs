//! No token appears in `Debug`, `Display`, errors or log output.

use std::time::Duration;

use lakebase_pool::credentials::{Credential, StaticPassword, from_fn};
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
        logs.text().contains("minted a database token"),
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
