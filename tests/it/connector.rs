//! `Connector`: a session outside the pool, opened the pool's way (target, token, TLS and
//! SNI, resolver, cold-start retries, forced refresh).

use std::time::Duration;

use lakebase_pool::Secret;
use lakebase_pool_testing::LocalLakebase;

use crate::support::{ROLE, cluster};

/// Through the emulator: verified TLS with SNI, the resolver hook, a minted token. The
/// session logs in as the pool's connections do, with the pool's cached token (no second
/// mint), and its `Debug` names no secret.
#[tokio::test]
async fn a_session_goes_the_pools_way_and_shares_its_token() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    let conn = pool.get().await.unwrap();
    let pooled_user: String = conn
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get(0);

    let connector = pool.connector();
    let session = connector.connect().await.unwrap();
    let shown = format!("{connector:?} {session:?} {:?}", session.driver);
    let driver = tokio::spawn(session.driver);
    let user: String = session
        .client
        .query_one("SELECT current_user", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, pooled_user);
    assert_eq!(pool.stats().tokens.minted, 1, "{:?}", pool.stats());
    assert!(
        connector.target().contains(&pooled_user),
        "{}",
        connector.target()
    );
    let token = pool.token_cache().token().await.unwrap();
    assert!(!shown.contains(token.secret().expose()), "{shown}");
    drop(session.client);
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the driver ends with its client")
        .unwrap()
        .unwrap();
}

/// A suspended compute that refuses twice while it wakes: the session is opened after the
/// retries, as a checkout would be.
#[tokio::test]
async fn a_session_rides_out_a_cold_start() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    drop(pool.get().await.unwrap());
    lakebase.emulator().set_refusals_while_waking(2);
    lakebase.suspend();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let session = pool.connector().connect().await.unwrap();
    tokio::spawn(session.driver);
    let _ = session.client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        pool.stats().connect_retries_transient,
        2,
        "{:?}",
        pool.stats()
    );
}

/// A token the server now rejects: one forced refresh, and the session opens.
#[tokio::test]
async fn a_session_gets_a_fresh_token_after_a_rejected_one() {
    let pg = cluster().await;
    let tokens = pg.rotating_password(ROLE, Duration::from_secs(3600));
    let pool = pg
        .pool_builder(ROLE)
        .credentials(tokens.clone())
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    pg.set_password(ROLE, &Secret::new("changed-elsewhere"), None)
        .await
        .unwrap();

    let session = pool.connector().connect().await.unwrap();
    tokio::spawn(session.driver);
    let _ = session.client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(tokens.mint_count(), 2);
    assert_eq!(pool.stats().auth_refreshes, 1, "{:?}", pool.stats());
}

/// A caller that gives up while the session opens (a request timed out) leaves nothing
/// behind: the next connect works, and the pool is untouched.
#[tokio::test]
async fn a_connect_given_up_midway_leaves_the_next_one_working() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    let connector = pool.connector();
    for wait in [0, 1, 2, 5, 10, 20] {
        let _ = tokio::time::timeout(Duration::from_millis(wait), connector.connect()).await;
    }
    let session = connector.connect().await.unwrap();
    tokio::spawn(session.driver);
    let _ = session.client.simple_query("SELECT 1").await.unwrap();
    let stats = pool.stats();
    assert_eq!((stats.size, stats.tokens.minted), (0, 1), "{stats:?}");
}
