//! The replicas' settings, specs and health.

use super::*;

/// `without_hosts` copies `tokio_postgres::Config` field by field (it has no way to drop
/// hosts): every field is either copied or left out on purpose, and a field a newer
/// tokio-postgres adds fails this test until it is decided for.
#[test]
fn a_replicas_settings_keep_every_field_of_the_primarys_but_its_hosts() {
    use std::time::Duration;
    use tokio_postgres::config::{ChannelBinding, SslNegotiation};
    let mut primary = tokio_postgres::Config::new();
    let _ = primary
        .user("app")
        .dbname("shop")
        .options("-c statement_timeout=5000")
        .application_name("orders")
        .host("primary.internal")
        .hostaddr(std::net::Ipv4Addr::LOCALHOST.into())
        .port(5433)
        .connect_timeout(Duration::from_secs(3))
        .tcp_user_timeout(Duration::from_secs(4))
        .keepalives(false)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(6))
        .keepalives_retries(7)
        .channel_binding(ChannelBinding::Require)
        .ssl_negotiation(SslNegotiation::Direct);
    let replica = without_hosts(&primary, Some(5433));
    // The pool's own TLS settings decide `sslmode` (never read from here), and a replica
    // has one host: the session attributes and load balancing of a host list do not apply.
    const LEFT_OUT: [&str; 6] = [
        "host",
        "hostaddr",
        "password",
        "ssl_mode",
        "target_session_attrs",
        "load_balance_hosts",
    ];
    // `Config { a: .., b: Some([..]), .. }`: the fields at the outer level, by name.
    let fields = |config: &tokio_postgres::Config| -> Vec<(String, String)> {
        let text = format!("{config:?}");
        let inner = &text[text.find('{').unwrap() + 1..text.rfind('}').unwrap()];
        let (mut parts, mut depth, mut start) = (Vec::new(), 0_i32, 0);
        for (at, c) in inner.char_indices() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&inner[start..at]);
                    start = at + 1;
                }
                _ => {}
            }
        }
        parts.push(&inner[start..]);
        parts
            .iter()
            .filter_map(|part| part.trim().split_once(": "))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .filter(|(name, _)| !LEFT_OUT.contains(&name.as_str()))
            .collect()
    };
    let (of_primary, of_replica) = (fields(&primary), fields(&replica));
    let names: Vec<&str> = of_primary.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "user",
            "dbname",
            "options",
            "application_name",
            "port",
            "connect_timeout",
            "tcp_user_timeout",
            "keepalives",
            "keepalives_idle",
            "keepalives_interval",
            "keepalives_retries",
            "channel_binding",
        ],
        "tokio-postgres's Config has fields `without_hosts` does not know: copy or leave out each"
    );
    assert_eq!(of_replica, of_primary);
    assert!(replica.get_hosts().is_empty() && replica.get_hostaddrs().is_empty());
    assert_eq!(replica.get_ssl_negotiation(), SslNegotiation::Direct);
}

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

#[test]
fn a_replicas_settings_are_the_primarys_without_its_hosts() {
    let mut primary = tokio_postgres::Config::new();
    let _ = primary
        .host("primary.example.com")
        .hostaddr([10, 0, 0, 1].into())
        .port(6543)
        .user("app")
        .dbname("shop")
        .application_name("orders")
        .connect_timeout(Duration::from_secs(3));
    let replica = without_hosts(&primary, Some(6544));
    assert!(replica.get_hosts().is_empty() && replica.get_hostaddrs().is_empty());
    assert_eq!(replica.get_ports(), [6544]);
    assert_eq!(replica.get_user(), Some("app"));
    assert_eq!(replica.get_dbname(), Some("shop"));
    assert_eq!(replica.get_application_name(), Some("orders"));
    assert_eq!(replica.get_connect_timeout(), Some(&Duration::from_secs(3)));
}
