//! A token the server rejects: one forced refresh, then success or a clear error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lakebase_pool::credentials::{Credential, from_fn};
use lakebase_pool::{Error, Secret};
use tokio_postgres::error::SqlState;

use crate::support::{INITIAL_PASSWORD, ROLE, backend_pid, cluster};

#[tokio::test]
async fn rejected_cached_token_is_refreshed_once_and_the_connect_succeeds() {
    let pg = cluster().await;
    let tokens = pg.rotating_password(ROLE, Duration::from_secs(3600));
    let pool = pg
        .pool_builder(ROLE)
        .credentials(tokens.clone())
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    assert_eq!(tokens.mint_count(), 1);

    // Someone changes the password behind the pool's back; the cached token is now wrong.
    pg.set_password(ROLE, &Secret::new("changed-elsewhere"), None)
        .await
        .unwrap();
    let fresh = pool.get().await.expect("a forced refresh recovers");
    assert_ne!(backend_pid(&held).await, backend_pid(&fresh).await);
    let stats = pool.stats();
    assert_eq!(tokens.mint_count(), 2);
    assert_eq!(stats.auth_refreshes, 1);
    assert_eq!(stats.tokens.forced_refreshes, 1);
    assert_eq!(stats.connections_opened, 2);
}

#[tokio::test]
async fn tokens_the_server_always_rejects_end_in_an_auth_error_after_one_refresh() {
    let pg = cluster().await;
    let calls = Arc::new(AtomicU64::new(0));
    let provider = from_fn({
        let calls = Arc::clone(&calls);
        move || {
            let _ = calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(Credential::new("never-the-password")) }
        }
    });
    let pool = pg.pool_builder(ROLE).credentials(provider).build().unwrap();

    let err = pool.get().await.unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "app@127.0.0.1:{}/app refused the login as `app`: the token was rejected, and a \
             freshly minted one too (check that the role exists, may log in, and matches the identity the tokens are \
             minted for, and that the endpoint exists: Lakebase answers a token for an unknown \
             endpoint the same way)",
            pg.port()
        )
    );
    let code = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.code().cloned());
    assert_eq!(code, Some(SqlState::INVALID_PASSWORD));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one mint, one forced refresh, no loop"
    );
}

#[tokio::test]
async fn provider_failing_after_a_rejection_yields_its_error_not_a_loop() {
    let pg = cluster().await;
    let calls = Arc::new(AtomicU64::new(0));
    let provider = from_fn({
        let calls = Arc::clone(&calls);
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Ok(Credential::new(INITIAL_PASSWORD))
                } else {
                    Err(std::io::Error::other("token service unavailable"))
                }
            }
        }
    });
    let pool = pg.pool_builder(ROLE).credentials(provider).build().unwrap();
    let held = pool.get().await.unwrap();
    pg.set_password(ROLE, &Secret::new("changed-elsewhere"), None)
        .await
        .unwrap();

    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::Credentials { .. }), "{err:?}");
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "token service unavailable"
    );
    // A second checkout within the back-off does not call the provider again.
    let again = pool.get().await.unwrap_err();
    assert!(
        matches!(
            again,
            Error::Credentials {
                retry_in: Some(_),
                ..
            }
        ),
        "{again:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    drop(held);
}
