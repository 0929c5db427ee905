//! What a new user meets first: errors whose first line names the cause and the fix, at once.

use std::time::{Duration, Instant};

use lakebase_pool::{Environment, PoolBuilder};

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `DATABRICKS_HOST` pointing where nothing listens: the checkout fails at once (not after the
/// 30 s mint timeout), and the message's first line says the workspace refused the connection
/// and to check `DATABRICKS_HOST`, with the host it tried. Through the token (the host given
/// with `PGHOST`) and through the endpoint's look-up (no `PGHOST`).
#[tokio::test]
async fn an_unreachable_workspace_is_reported_at_once_naming_the_variable() {
    let port = closed_port();
    for pghost in [Some("ep-x.lakebase.test"), None] {
        let mut vars = vec![
            ("DATABRICKS_HOST", format!("http://127.0.0.1:{port}")),
            ("DATABRICKS_TOKEN", String::from("dapi-local-made-up")),
            (
                "LAKEBASE_ENDPOINT",
                String::from("projects/p/branches/b/endpoints/ep-x"),
            ),
            ("PGUSER", String::from("someone@example.com")),
        ];
        if let Some(host) = pghost {
            vars.push(("PGHOST", host.to_owned()));
        }
        let pool = PoolBuilder::from_environment(&Environment::from_vars(vars))
            .unwrap()
            .build()
            .unwrap();
        let started = Instant::now();
        let error = tokio::time::timeout(Duration::from_secs(20), pool.get())
            .await
            .expect("an answer well within the mint timeout")
            .unwrap_err();
        let took = started.elapsed();
        let first_line = error.to_string();
        assert!(
            first_line.contains("refused the connection")
                && first_line.contains("DATABRICKS_HOST")
                && first_line.contains(&format!("127.0.0.1:{port}")),
            "PGHOST {pghost:?}: {first_line}"
        );
        assert!(
            took < Duration::from_secs(3),
            "PGHOST {pghost:?}: took {took:?}"
        );
        assert!(!first_line.contains("dapi-local-made-up"));
    }
}

/// A wrong fixed password: the message says the password was refused and where it was set
/// (`PGPASSWORD`, or `PoolBuilder::password`), not tokens or endpoints.
#[tokio::test]
async fn a_wrong_fixed_password_is_named_with_where_it_was_set() {
    let pg = crate::support::cluster().await;
    let vars = [
        ("PGHOST", pg.host().to_owned()),
        ("PGPORT", pg.port().to_string()),
        ("PGUSER", crate::support::ROLE.to_owned()),
        ("PGPASSWORD", String::from("not-the-password")),
    ];
    let from_env = PoolBuilder::from_environment(&Environment::from_vars(vars))
        .unwrap()
        .build()
        .unwrap();
    let in_code = pg
        .pool_builder(crate::support::ROLE)
        .password("not-the-password")
        .build()
        .unwrap();
    for (pool, source) in [
        (from_env, "PGPASSWORD"),
        (in_code, "`PoolBuilder::password`"),
    ] {
        let error = pool.get().await.unwrap_err();
        let first_line = error.to_string();
        assert!(
            first_line.contains(&format!("the password (set in {source}) was refused")),
            "{first_line}"
        );
        assert!(!first_line.contains("database token"), "{first_line}");
        assert!(!first_line.contains("not-the-password"), "{first_line}");
    }
}

/// A server whose certificate no trusted CA signed: the first line says the certificate is
/// not trusted and how to trust a private CA (`PGSSLROOTCERT`, `root_certificates_*`).
#[tokio::test]
async fn an_untrusted_certificate_says_how_to_trust_a_private_ca() {
    use lakebase_pool::resolve::StaticResolver;
    use lakebase_pool::{RetryPolicy, Secret};
    use lakebase_pool_testing::{LocalPostgres, TestCa};

    let host = "db.first-hour.test";
    let ca = TestCa::new("a private CA").unwrap();
    let pg = LocalPostgres::start_with_tls(&ca.issue(&[host]).unwrap()).unwrap();
    pg.create_role("app", &Secret::new("pw")).await.unwrap();
    let pool = PoolBuilder::default()
        .host(host)
        .port(pg.port())
        .user("app")
        .password("pw")
        .resolver(StaticResolver::new().with(host, std::net::Ipv4Addr::LOCALHOST))
        .retry(RetryPolicy::no_retry())
        .build()
        .unwrap();
    let first_line = pool.get().await.unwrap_err().to_string();
    assert!(
        first_line.contains("certificate is not trusted")
            && first_line.contains("PGSSLROOTCERT")
            && first_line.contains("root_certificates_file"),
        "{first_line}"
    );
    // Trusting the CA as the message says connects.
    let pool = PoolBuilder::default()
        .host(host)
        .port(pg.port())
        .user("app")
        .dbname("postgres")
        .password("pw")
        .resolver(StaticResolver::new().with(host, std::net::Ipv4Addr::LOCALHOST))
        .root_certificates_pem(ca.cert_pem())
        .build()
        .unwrap();
    pool.get().await.unwrap();
}

/// An identity the workspace refuses for good (a revoked or wrong token: a 401 that a fresh
/// token does not cure) is not an outage: `HttpError` answers 500, without `Retry-After`. A
/// workspace that cannot answer (unreachable for a while) stays a 503 with `Retry-After`.
#[tokio::test]
async fn a_refused_identity_is_a_500_not_a_503() {
    use lakebase_pool::integrations::HttpError;
    use lakebase_pool_testing::LocalLakebase;

    let lakebase = LocalLakebase::start().await.unwrap();
    let mut vars: Vec<(String, String)> = ["DATABRICKS_HOST", "LAKEBASE_ENDPOINT", "PGPORT"]
        .iter()
        .map(|name| {
            let value = lakebase.environment().get(name).unwrap().to_owned();
            ((*name).to_owned(), value)
        })
        .collect();
    vars.push(("DATABRICKS_TOKEN".into(), "dapi-revoked".into()));
    vars.push((
        "PGHOST".into(),
        lakebase.emulator().host_of(LocalLakebase::ENDPOINT),
    ));
    vars.push(("PGUSER".into(), LocalLakebase::USER.into()));
    let pool = PoolBuilder::from_environment(&Environment::from_vars(vars))
        .unwrap()
        .resolver(lakebase.emulator().resolver())
        .root_certificates_pem(lakebase.emulator().ca_cert_pem())
        .build()
        .unwrap();
    let error = pool.get().await.unwrap_err();
    let answer = HttpError::from(error);
    assert_eq!(
        (answer.status(), answer.retry_after()),
        (500, None),
        "{answer:?}"
    );

    // A workspace down for a while (the mock answers 503) is worth waiting for.
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .cache_policy(lakebase_pool::CachePolicy::default().mint_timeout(Duration::from_secs(1)))
        .build()
        .unwrap();
    lakebase
        .workspace()
        .inject(lakebase_pool_testing::Fault::status(503, "{}").times(1000));
    let answer = HttpError::from(pool.get().await.unwrap_err());
    assert_eq!(answer.status(), 503, "{answer:?}");
    assert!(answer.retry_after().is_some());
}
