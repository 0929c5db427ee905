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
