//! `PoolSettings` (feature `serde`) loaded with the `config` crate from a TOML file and from
//! environment variables builds the same pool as the builder's setters; mistakes in the data
//! are errors that name the setting.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use lakebase_pool::{CachePolicy, PoolBuilder, PoolSettings, RetryPolicy, SslMode};

const TOML: &str = r#"
endpoint = "projects/shop/branches/main/endpoints/primary"
port = 6543
user = "app@example.com"
dbname = "orders"
application_name = "checkout"
statement_timeout = "30s"
ssl_mode = "verify-full"
max_size = 24
max_lifetime = "30m"
lifetime_jitter = 0.1
idle_timeout = "5m"
validate_after_idle = "2s"
wait_timeout = "15s"
read_fallback = "fail"
replica_max_size = 6
replica_catch_up_timeout = "250ms"

[retry]
connect_timeout = "8s"
command_timeout = "20s"
backoff_initial = "50ms"
backoff_max = "3s"
deadline = "1m 30s"

[tokens]
min_remaining = "90s"
refresh_ahead = "10m"
mint_timeout = "20s"
failure_backoff_initial = "500ms"
failure_backoff_max = "1m"
"#;

/// The builder the TOML above describes, written with the setters.
fn by_hand() -> PoolBuilder {
    PoolBuilder::default()
        .lakebase_endpoint("projects/shop/branches/main/endpoints/primary")
        .port(6543)
        .user("app@example.com")
        .dbname("orders")
        .application_name("checkout")
        .statement_timeout(Duration::from_secs(30))
        .ssl_mode(SslMode::VerifyFull)
        .max_size(24)
        .max_lifetime(Duration::from_secs(30 * 60))
        .lifetime_jitter(0.1)
        .idle_timeout(Duration::from_secs(5 * 60))
        .validate_after_idle(Duration::from_secs(2))
        .wait_timeout(Duration::from_secs(15))
        .read_fallback(lakebase_pool::ReadFallback::Fail)
        .replica_max_size(6)
        .replica_catch_up_timeout(Duration::from_millis(250))
        .retry(
            RetryPolicy::default()
                .connect_timeout(Duration::from_secs(8))
                .command_timeout(Duration::from_secs(20))
                .backoff(Duration::from_millis(50), Duration::from_secs(3))
                .deadline(Duration::from_secs(90)),
        )
        .cache_policy(
            CachePolicy::default()
                .min_remaining(Duration::from_secs(90))
                .refresh_ahead(Duration::from_secs(600))
                .mint_timeout(Duration::from_secs(20))
                .failure_backoff(Duration::from_millis(500), Duration::from_secs(60)),
        )
}

fn from_toml(text: &str) -> Result<PoolSettings, config::ConfigError> {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    config::Config::builder()
        .add_source(config::File::from(file.path()))
        .build()?
        .try_deserialize()
}

#[test]
fn a_toml_file_builds_the_same_pool_as_the_builder() {
    let settings = from_toml(TOML).unwrap();
    let from_file = PoolBuilder::default().settings(settings);
    assert_eq!(format!("{from_file:?}"), format!("{:?}", by_hand()));
    // Every setting of the file reached the builder: none is left at its default.
    assert_ne!(
        format!("{from_file:?}"),
        format!("{:?}", PoolBuilder::default())
    );
}

#[tokio::test]
async fn the_loaded_settings_build_a_working_pool() {
    let postgres = lakebase_pool_testing::LocalPostgres::start().unwrap();
    postgres
        .create_role("settings_app", &lakebase_pool::Secret::new("pw"))
        .await
        .unwrap();
    postgres
        .create_database("databricks_postgres", "settings_app")
        .await
        .unwrap();
    let text = format!(
        "host = \"127.0.0.1\"\nport = {}\nuser = \"settings_app\"\ndbname = \"databricks_postgres\"\nmax_size = 3\nidle_timeout = \"1m\"\n",
        postgres.port()
    );
    let pool = PoolBuilder::default()
        .settings(from_toml(&text).unwrap())
        .password("pw")
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let row = conn.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(pool.stats().max_size, 3);
}

#[test]
fn environment_variables_give_the_same_settings() {
    let vars: HashMap<String, String> = [
        ("LAKEBASE_POOL__MAX_SIZE", "24"),
        ("LAKEBASE_POOL__MAX_LIFETIME", "30m"),
        ("LAKEBASE_POOL__RETRY__DEADLINE", "1m 30s"),
        ("LAKEBASE_POOL__TOKENS__REFRESH_AHEAD", "10m"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings: PoolSettings = config::Config::builder()
        .add_source(
            config::Environment::with_prefix("LAKEBASE_POOL")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        )
        .build()
        .unwrap()
        .try_deserialize()
        .unwrap();
    let from_env = PoolBuilder::default().settings(settings);
    let by_hand = PoolBuilder::default()
        .max_size(24)
        .max_lifetime(Duration::from_secs(1800))
        .retry(RetryPolicy::default().deadline(Duration::from_secs(90)))
        .cache_policy(CachePolicy::default().refresh_ahead(Duration::from_secs(600)));
    assert_eq!(format!("{from_env:?}"), format!("{by_hand:?}"));
}

#[test]
fn mistakes_in_the_data_are_errors_that_name_the_setting() {
    for (text, expected) in [
        ("max_sise = 3", "max_sise"),
        ("max_lifetime = \"45 parsecs\"", "parsecs"),
        ("ssl_mode = \"sometimes\"", "sometimes"),
        ("read_fallback = \"replica\"", "read_fallback"),
        ("[retry]\ndeadlin = \"1s\"", "deadlin"),
        ("max_size = -1", "max_size"),
    ] {
        let error = from_toml(text).unwrap_err().to_string();
        assert!(error.contains(expected), "{text}: {error}");
    }
}

#[test]
fn settings_not_given_keep_the_builders() {
    let settings: PoolSettings =
        serde_json::from_str(r#"{ "retry": { "backoff_max": "9s" } }"#).unwrap();
    let base = PoolBuilder::default()
        .max_size(7)
        .retry(RetryPolicy::default().backoff(Duration::from_millis(40), Duration::from_secs(1)));
    let applied = base.settings(settings);
    let expected = PoolBuilder::default()
        .max_size(7)
        .retry(RetryPolicy::default().backoff(Duration::from_millis(40), Duration::from_secs(9)));
    assert_eq!(format!("{applied:?}"), format!("{expected:?}"));
}
