//! Requests as the Databricks Apps proxy forwards them.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use lakebase_pool::users::{ACCESS_TOKEN_HEADER, EMAIL_HEADER, ForwardedUser};

/// The headers the Databricks Apps proxy adds to a request of the signed-in `user`:
/// `X-Forwarded-Email`, `X-Forwarded-User`, `X-Forwarded-Preferred-Username`,
/// `X-Forwarded-Access-Token` (marked sensitive, so `Debug` hides it) and `X-Request-Id`.
/// Send them to your app in tests to act as that user (the app must trust forwarded headers,
/// as it does in Databricks Apps).
///
/// ```no_run
/// # async fn demo(lakebase: lakebase_pool_testing::LocalLakebase, url: &str) -> Result<(), Box<dyn std::error::Error>> {
/// use lakebase_pool_testing::apps_proxy_headers;
/// use lakebase_pool::users::ForwardedUser;
///
/// let token = lakebase.workspace().issue_user_token("alice@example.com");
/// let alice = ForwardedUser::new("alice@example.com", token);
/// let answer = reqwest::Client::new().get(url).headers(apps_proxy_headers(&alice)).send().await?;
/// # let _ = answer;
/// # Ok(())
/// # }
/// ```
pub fn apps_proxy_headers(user: &ForwardedUser) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str, sensitive: bool| {
        // Values that are not valid header text are left out, as no proxy could send them.
        if let Ok(mut value) = HeaderValue::from_str(value) {
            value.set_sensitive(sensitive);
            let _ = headers.insert(HeaderName::from_static(name), value);
        }
    };
    let email = user.email();
    put(EMAIL_HEADER, email, false);
    put(
        "x-forwarded-user",
        &format!("{:016x}@1234567890", stable_id(email)),
        false,
    );
    put("x-forwarded-preferred-username", email, false);
    put(ACCESS_TOKEN_HEADER, user.access_token().expose(), true);
    put(
        "x-request-id",
        &format!("{:032x}", fastrand::u128(..)),
        false,
    );
    headers
}

/// A number that stays the same for an email (the user id the proxy forwards is stable).
fn stable_id(email: &str) -> u64 {
    // FNV-1a: deterministic across runs, unlike the standard library's hasher.
    email.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
