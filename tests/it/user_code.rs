//! The application's own code beside the crate: what Cargo merges into the application's
//! dependencies must not change how they behave.

use lakebase_pool_testing::MockWorkspace;

/// An application that uses reqwest 0.12 itself gets the crate's reqwest features merged into
/// its own. Its `reqwest::Client::new()`, with no crypto provider installed, builds and
/// serves requests (with a feature that brings no provider, reqwest panicked "No provider
/// set").
#[tokio::test]
async fn an_applications_own_reqwest_client_works_next_to_the_crate() {
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "nothing in this test binary installs a process-wide provider"
    );
    let workspace = MockWorkspace::start().unwrap();
    let client = std::panic::catch_unwind(reqwest::Client::new)
        .expect("reqwest::Client::new() must not panic next to the crate");
    let answer = client
        .get(format!("{}/api/2.0/preview/scim/v2/Me", workspace.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401, "the mock answered: no token sent");
    // HTTPS works too: the roots come with the merged features (a refused certificate is an
    // error, never a panic).
    let https = client.get("https://127.0.0.1:9/").send().await;
    assert!(https.is_err());
}

/// Code written for deadpool-postgres, beside the crate: a `Connection` derefs to
/// deadpool-postgres's own `ClientWrapper` (statement cache included), so functions taking
/// `&ClientWrapper` run unchanged on both pools, and functions taking
/// `&impl deadpool_postgres::GenericClient` run on deadpool's `Object` and on a transaction of
/// either pool. (deadpool-postgres seals that trait and implements it on its `Object`, not on
/// `ClientWrapper`: a function called with a bare `Connection` takes `&ClientWrapper`, which a
/// deadpool `Object` also passes as `&object`.)
#[tokio::test]
async fn code_written_for_deadpool_postgres_runs_on_the_crates_connections() {
    use lakebase_pool::deadpool_postgres::{self, ClientWrapper, GenericClient};

    async fn count_by_wrapper(client: &ClientWrapper) -> i64 {
        let statement = client
            .prepare_cached("SELECT count(*) FROM notes")
            .await
            .unwrap();
        client.query_one(&statement, &[]).await.unwrap().get(0)
    }
    async fn add_by_generic(client: &impl GenericClient, text: &str) -> u64 {
        let statement = client
            .prepare_cached("INSERT INTO notes (text) VALUES ($1)")
            .await
            .unwrap();
        client.execute(&statement, &[&text]).await.unwrap()
    }

    let pg = crate::support::cluster().await;
    let ours = crate::support::app_pool(&pg).build().unwrap();
    let mut conn = ours.get().await.unwrap();
    conn.batch_execute("CREATE TABLE notes (text text NOT NULL)")
        .await
        .unwrap();

    // The same functions through deadpool-postgres's own pool, on the same database.
    let mut config = deadpool_postgres::Config::new();
    config.host = Some(pg.host().to_string());
    config.port = Some(pg.port());
    config.user = Some(crate::support::ROLE.into());
    config.password = Some(crate::support::INITIAL_PASSWORD.into());
    config.dbname = Some(crate::support::ROLE.into());
    let theirs = config
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap();
    let object = theirs.get().await.unwrap();

    assert_eq!(add_by_generic(&object, "from deadpool-postgres").await, 1);
    // A transaction of the crate's connection is deadpool-postgres's own `Transaction`.
    let transaction = conn.transaction().await.unwrap();
    assert_eq!(
        add_by_generic(&transaction, "from the crate's pool").await,
        1
    );
    transaction.commit().await.unwrap();
    assert_eq!(count_by_wrapper(&conn).await, 2);
    assert_eq!(count_by_wrapper(&object).await, 2);
}
