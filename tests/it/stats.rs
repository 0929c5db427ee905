//! `Pool::stats()` counts what the pool did.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use lakebase_pool::credentials::{Credential, from_fn};
use lakebase_pool::{CachePolicy, Secret};

use crate::support::{ROLE, cluster};

#[tokio::test]
async fn stats_count_each_step_of_a_scripted_sequence() {
    let pg = cluster().await;
    let failing = Arc::new(AtomicBool::new(false));
    // Mints a token valid for 10 s and makes it the role's password, until told to fail.
    let provider = from_fn({
        let pg = pg.clone();
        let failing = Arc::clone(&failing);
        move || {
            let pg = pg.clone();
            let failing = failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    return Err(lakebase_pool::BoxError::from("token service down"));
                }
                let token = Secret::new(format!("token-{}", fastrand::u64(..)));
                let expires = SystemTime::now() + Duration::from_secs(10);
                pg.set_password(ROLE, &token, Some(expires)).await?;
                Ok(Credential::new(token).expires_at(expires))
            }
        }
    });
    let pool = pg
        .pool_builder(ROLE)
        .credentials(provider)
        // Reuse a token only while 9.5 s of its 10 s are left: the next connect mints again.
        .cache_policy(
            CachePolicy::default()
                .min_remaining(Duration::from_millis(9500))
                .refresh_ahead(Duration::from_millis(9500)),
        )
        .max_lifetime(Duration::from_millis(300))
        .build()
        .unwrap();

    // 1. A mint and a connection.
    drop(pool.get().await.unwrap());
    let stats = pool.stats();
    assert_eq!(
        (
            stats.tokens.minted,
            stats.connections_opened,
            stats.checkouts
        ),
        (1, 1, 1)
    );
    assert!(
        stats
            .tokens
            .expires_in
            .is_some_and(|left| left <= Duration::from_secs(10))
    );

    // 2. The idle connection outlives its lifetime: the housekeeper retires it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let stats = pool.stats();
    assert_eq!((stats.retired_lifetime, stats.size), (1, 0), "{stats:?}");

    // 3. The next connect needs a new token; the mint fails; the still-valid one is used.
    failing.store(true, Ordering::SeqCst);
    drop(pool.get().await.unwrap());
    let stats = pool.stats();
    assert_eq!(
        (stats.tokens.minted, stats.tokens.mint_failures),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!((stats.connections_opened, stats.checkouts), (2, 2));
    assert_eq!(
        (stats.connect_attempts_failed, stats.auth_refreshes),
        (0, 0)
    );

    // 4. A failed checkout.
    pool.close();
    assert!(pool.get().await.is_err());
    let stats = pool.stats();
    assert_eq!(stats.checkout_failures, 1);
    let recorded: u64 = stats.checkout_wait.iter().map(|(_, count)| count).sum();
    assert_eq!(recorded, 3, "every get() is in the wait histogram");
    assert!(stats.checkout_wait_quantile(0.5).is_some());
}
