//! The builder's checks.

use tokio_postgres::config::Host;

#[test]
fn host_port_and_hostaddr_replace_rather_than_append() {
    let config: tokio_postgres::Config =
        "user=u dbname=d options=-cx=1 application_name=app connect_timeout=7"
            .parse()
            .unwrap();
    let builder = PoolBuilder::default()
        .pg_config(config)
        .port(2)
        .port(3)
        .host("a")
        .host("b")
        .hostaddr("10.0.0.1".parse().unwrap())
        .hostaddr("10.0.0.2".parse().unwrap());
    let config = builder.target_config().unwrap();
    assert_eq!(config.get_hosts(), [Host::Tcp("b".into())]);
    assert_eq!(config.get_ports(), [3]);
    assert_eq!(
        config.get_hostaddrs(),
        ["10.0.0.2".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(config.get_user(), Some("u"));
    assert_eq!(config.get_dbname(), Some("d"));
    assert_eq!(config.get_options(), Some("-cx=1"));
    assert_eq!(config.get_application_name(), Some("app"));
    assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(7)));
}

#[test]
fn a_host_or_port_set_in_two_places_is_a_build_error() {
    let config: tokio_postgres::Config = "host=a port=1 user=u".parse().unwrap();
    for (builder, setting) in [
        (
            PoolBuilder::default().pg_config(config.clone()).host("b"),
            "host",
        ),
        (PoolBuilder::default().pg_config(config).port(2), "port"),
    ] {
        match builder.target_config() {
            Err(Error::InvalidConfig {
                setting: got,
                problem,
                ..
            }) => {
                assert_eq!(got, setting);
                assert!(problem.contains("set it in one place"), "{problem}");
            }
            other => panic!("{setting}: {other:?}"),
        }
    }
}

use super::*;

fn base() -> PoolBuilder {
    PoolBuilder::default()
        .host("127.0.0.1")
        .user("app")
        .password("pw")
}

fn setting_of(result: Result<Pool, Error>) -> &'static str {
    match result {
        Err(Error::InvalidConfig { setting, .. }) => setting,
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("built a pool from an invalid configuration"),
    }
}

#[tokio::test]
async fn missing_or_invalid_settings_name_the_setting() {
    assert_eq!(
        setting_of(PoolBuilder::default().host("127.0.0.1").user("a").build()),
        "credentials"
    );
    assert_eq!(
        setting_of(PoolBuilder::default().user("a").password("p").build()),
        "host"
    );
    assert_eq!(
        setting_of(PoolBuilder::default().host("::1").password("p").build()),
        "user"
    );
    assert_eq!(setting_of(base().max_size(0).build()), "max_size");
    assert_eq!(
        setting_of(base().lifetime_jitter(0.9).build()),
        "lifetime_jitter"
    );
    assert_eq!(
        setting_of(base().lifetime_jitter(f64::NAN).build()),
        "lifetime_jitter"
    );
    assert_eq!(
        setting_of(base().max_lifetime(Duration::ZERO).build()),
        "max_lifetime"
    );
    assert_eq!(
        setting_of(base().idle_timeout(Duration::ZERO).build()),
        "idle_timeout"
    );
    let with_password: tokio_postgres::Config = "user=a password=x".parse().unwrap();
    assert_eq!(
        setting_of(base().pg_config(with_password).build()),
        "pg_config"
    );
}

#[tokio::test]
async fn plaintext_to_a_non_loopback_host_is_refused() {
    let plain = |host: &str| base().host(host).ssl_mode(SslMode::Disable).build();
    assert_eq!(setting_of(plain("db.example.com")), "ssl_mode");
    assert_eq!(setting_of(plain("10.0.0.5")), "ssl_mode");
    for host in [
        "localhost",
        "127.0.0.1",
        "::1",
        "[::1]",
        "/var/run/postgresql",
    ] {
        assert!(base().host(host).build().is_ok(), "{host}");
    }
}

#[test]
fn build_outside_a_runtime_is_an_error_not_a_panic() {
    assert_eq!(setting_of(base().build()), "build");
}

/// An endpoint without a workspace is a build error naming the fix: `build` reads no
/// environment (before, it built a workspace from the process environment behind the
/// caller's back).
#[tokio::test]
async fn an_endpoint_without_a_workspace_names_the_fix_and_reads_no_environment() {
    let err = Pool::builder()
        .lakebase_endpoint("projects/p/branches/b/endpoints/e")
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                setting: "workspace",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("PoolBuilder::from_env()"), "{err}");
}
