//! The replicas' settings, specs and health.

use super::*;

#[test]
fn replicas_parse_as_endpoints_or_hosts_with_ports() {
    assert!(matches!(
        ReplicaSpec::parse("projects/p/branches/b/endpoints/ep-ro").unwrap(),
        ReplicaSpec::Endpoint(_)
    ));
    assert!(matches!(
        ReplicaSpec::parse("replica.internal:5433").unwrap(),
        ReplicaSpec::Host {
            port: Some(5433),
            ..
        }
    ));
    assert!(matches!(
        ReplicaSpec::parse("replica.internal").unwrap(),
        ReplicaSpec::Host { port: None, .. }
    ));
    for bad in ["", "projects/p", "host:0", "host:99999", "host:x"] {
        assert!(
            matches!(
                ReplicaSpec::parse(bad),
                Err(Error::InvalidConfig { .. } | Error::InvalidEndpointName { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn unhealthy_replicas_are_skipped_longer_after_each_failure_up_to_30_s() {
    assert_eq!(unhealthy_for(1), Duration::from_secs(1));
    assert_eq!(unhealthy_for(2), Duration::from_secs(2));
    assert_eq!(unhealthy_for(6), Duration::from_secs(30));
    assert_eq!(unhealthy_for(u32::MAX), Duration::from_secs(30));
}

/// A replica's settings are the base the primary's were made from (every field, whatever
/// fields a newer tokio-postgres adds: nothing is copied field by field), with its own host
/// and port and none of the primary's.
#[test]
fn a_replicas_settings_are_the_base_with_its_own_host() {
    use tokio_postgres::config::{ChannelBinding, SslNegotiation};
    let mut base = tokio_postgres::Config::new();
    let _ = base
        .user("app")
        .dbname("shop")
        .options("-c search_path=app")
        .application_name("orders")
        .connect_timeout(Duration::from_secs(3))
        .tcp_user_timeout(Duration::from_secs(4))
        .keepalives_idle(Duration::from_secs(5))
        .channel_binding(ChannelBinding::Require)
        .ssl_negotiation(SslNegotiation::Direct);
    let replica = replica_config(&base, Some("replica.example.com"), Some(6544));
    let mut expected = base.clone();
    let _ = expected.host("replica.example.com").port(6544);
    assert_eq!(format!("{replica:?}"), format!("{expected:?}"));
    assert_eq!(replica.get_hosts().len(), 1);
    // Discovered later: no host yet, the primary's port.
    let discovered = replica_config(&base, None, Some(5432));
    assert!(discovered.get_hosts().is_empty());
    assert_eq!(discovered.get_ports(), [5432]);
}

/// Hosts given inside `pg_config(..)` cannot be taken out of it for a replica: refused at
/// `build`, naming where to give them instead.
#[tokio::test]
async fn hosts_inside_config_with_replicas_are_refused_at_build() {
    let config: tokio_postgres::Config = "host=primary.example.com user=app".parse().unwrap();
    let err = Pool::builder()
        .pg_config(config)
        .password("p")
        .read_replicas(["replica.example.com"])
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                setting: "read_replicas",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("`.host(..)`"), "{err}");
}
