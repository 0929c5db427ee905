//! The cold path of a Databricks App's process, from nothing to its first query, with WAN
//! latency injected: the pool against the same path taken step by step in the order of the
//! Python recipe, in the same run.
//!
//! ```text
//! cargo bench --bench cold_path
//! COLD_BENCH_WORKSPACE_MS=150 COLD_BENCH_NETWORK_MS=10 cargo bench --bench cold_path
//! ```
//!
//! * Every workspace answer is delayed by `COLD_BENCH_WORKSPACE_MS` (default 50).
//! * The emulated endpoint sits behind a `FaultProxy` delaying each chunk by
//!   `COLD_BENCH_NETWORK_MS` (default 10) in each direction: a round trip to it costs twice
//!   that.
//!
//! Scenarios (each `ROUNDS` times, alternating, medians reported):
//! 1. Time to first query of a cold process (OAuth M2M, `LAKEBASE_ENDPOINT`), with `PGHOST`
//!    given and without it, and the sequential workspace round trips it took (from the
//!    mock's request log), for the pool and for the recipe: `databricks-config`, OIDC
//!    metadata, token, `get_endpoint`, mint, connect, one after the other.
//! 2. One physical connection through the delayed network, `SSLRequest` first against TLS
//!    from the first byte (`sslnegotiation=direct`): time and round trips (time / RTT).

use std::time::{Duration, Instant};

use lakebase_pool::{Environment, PoolBuilder, SslNegotiation};
use lakebase_pool_testing::{
    FaultProxy, LocalLakebase, NetworkFault, RecordedRequest, sequential_round_trips,
};
use rustls_pki_types::pem::PemObject;

const ROUNDS: usize = 5;
const CLIENT_ID: &str = "bench-service-principal";
const CLIENT_SECRET: &str = "bench-service-principal-secret";

struct Setup {
    lakebase: LocalLakebase,
    /// In front of the emulator, delaying every chunk.
    network: FaultProxy,
    ca_file: tempfile::NamedTempFile,
    /// One way, per chunk.
    network_delay: Duration,
}

fn millis_from_env(name: &str, default: u64) -> Duration {
    let value = std::env::var(name).ok().and_then(|v| v.parse().ok());
    Duration::from_millis(value.unwrap_or(default))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workspace_delay = millis_from_env("COLD_BENCH_WORKSPACE_MS", 50);
    let network_delay = millis_from_env("COLD_BENCH_NETWORK_MS", 10);
    let lakebase = LocalLakebase::start().await?;
    lakebase
        .add_service_principal(CLIENT_ID, CLIENT_SECRET)
        .await?;
    lakebase.workspace().set_latency(workspace_delay);
    let network = FaultProxy::start(([127, 0, 0, 1], lakebase.emulator().port()).into())?;
    network.set_fault(NetworkFault::Latency(network_delay));
    let ca_file = tempfile::NamedTempFile::new()?;
    std::fs::write(ca_file.path(), lakebase.emulator().ca_cert_pem())?;
    let setup = Setup {
        lakebase,
        network,
        ca_file,
        network_delay,
    };
    println!(
        "cold path: workspace answers +{} ms, endpoint round trip {} ms, {ROUNDS} rounds, medians\n",
        workspace_delay.as_millis(),
        (2 * network_delay).as_millis()
    );
    cold_starts(&setup).await?;
    connect_round_trips(&setup).await?;
    Ok(())
}

/// What a Databricks App's process sees.
fn apps_environment(setup: &Setup, with_host: bool, negotiation: &str) -> Environment {
    let mut vars = vec![
        ("DATABRICKS_HOST", setup.lakebase.workspace().url()),
        ("DATABRICKS_CLIENT_ID", CLIENT_ID.to_owned()),
        ("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
        ("LAKEBASE_ENDPOINT", LocalLakebase::ENDPOINT.to_owned()),
        ("PGPORT", setup.network.port().to_string()),
        ("PGHOSTADDR", String::from("127.0.0.1")),
        ("PGSSLMODE", String::from("verify-full")),
        (
            "PGSSLROOTCERT",
            setup.ca_file.path().to_string_lossy().into_owned(),
        ),
        ("PGSSLNEGOTIATION", negotiation.to_owned()),
    ];
    if with_host {
        vars.push(("PGHOST", endpoint_host(setup)));
    }
    Environment::from_vars(vars)
}

fn endpoint_host(setup: &Setup) -> String {
    setup.lakebase.emulator().host_of(LocalLakebase::ENDPOINT)
}

/// The workspace requests made since `since`.
fn requests_since(setup: &Setup, since: Instant) -> Vec<RecordedRequest> {
    setup
        .lakebase
        .workspace()
        .requests()
        .into_iter()
        .filter(|r| r.started >= since)
        .collect()
}

/// A cold process with the pool: build from the environment, first checkout, `SELECT 1`.
async fn ours(
    setup: &Setup,
    with_host: bool,
) -> Result<(Duration, usize), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let pool =
        PoolBuilder::from_environment(&apps_environment(setup, with_host, "postgres"))?.build()?;
    let _ = pool.get().await?.simple_query("SELECT 1").await?;
    let elapsed = started.elapsed();
    pool.close();
    Ok((
        elapsed,
        sequential_round_trips(&requests_since(setup, started)),
    ))
}

/// The same path, one step after the other, in the order of the Python recipe.
async fn recipe(setup: &Setup) -> Result<(Duration, usize), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let host = setup.lakebase.workspace().url();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes);
    let config = json(
        &http
            .get(format!("{host}/.well-known/databricks-config"))
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let oidc = config["oidc_endpoint"].as_str().ok_or("no oidc_endpoint")?;
    let metadata = json(
        &http
            .get(format!("{oidc}/.well-known/oauth-authorization-server"))
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let token_endpoint = metadata["token_endpoint"]
        .as_str()
        .ok_or("no token_endpoint")?;
    let token = json(
        &http
            .post(token_endpoint)
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&scope=all-apis")
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let bearer = format!(
        "Bearer {}",
        token["access_token"].as_str().ok_or("no token")?
    );
    let endpoint = json(
        &http
            .get(format!(
                "{host}/api/2.0/postgres/{}",
                LocalLakebase::ENDPOINT
            ))
            .header("authorization", &bearer)
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let pg_host = endpoint["status"]["hosts"]["host"]
        .as_str()
        .ok_or("no host")?
        .to_owned();
    let credential = json(
        &http
            .post(format!("{host}/api/2.0/postgres/credentials"))
            .header("authorization", &bearer)
            .body(serde_json::json!({ "endpoint": LocalLakebase::ENDPOINT }).to_string())
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let password = credential["token"].as_str().ok_or("no database token")?;
    let mut config = tokio_postgres::Config::new();
    let _ = config
        .host(&pg_host)
        .hostaddr([127, 0, 0, 1].into())
        .port(setup.network.port())
        .user(CLIENT_ID)
        .dbname("databricks_postgres")
        .password(password)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config.connect(recipe_tls(setup)?).await?;
    let driver = tokio::spawn(connection);
    let _ = client.simple_query("SELECT 1").await?;
    let elapsed = started.elapsed();
    drop(client);
    let _ = driver.await;
    Ok((
        elapsed,
        sequential_round_trips(&requests_since(setup, started)),
    ))
}

fn recipe_tls(
    setup: &Setup,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(
        setup.lakebase.emulator().ca_cert_pem().as_bytes(),
    ) {
        roots.add(cert?)?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(lakebase_pool_testing::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

async fn cold_starts(setup: &Setup) -> Result<(), Box<dyn std::error::Error>> {
    let mut with_host = (Vec::new(), Vec::new());
    let mut without_host = (Vec::new(), Vec::new());
    let mut sequential = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Rotate which goes first, so drift hits all alike.
        for step in 0..3 {
            let (target, result) = match (round + step) % 3 {
                0 => (&mut with_host, ours(setup, true).await?),
                1 => (&mut without_host, ours(setup, false).await?),
                _ => (&mut sequential, recipe(setup).await?),
            };
            target.0.push(result.0);
            target.1.push(result.1);
        }
    }
    let recipe_time = median(sequential.0.clone());
    println!("time to first query of a cold process (OAuth M2M)");
    println!(
        "{:<40} {:>10} {:>12} {:>14}",
        "path", "median ms", "vs recipe", "workspace RTs"
    );
    let mut json = Vec::new();
    for (name, (times, rounds)) in [
        ("pool, PGHOST given", &with_host),
        ("pool, host looked up", &without_host),
        ("recipe (sequential, PGHOST looked up)", &sequential),
    ] {
        let time = median(times.clone());
        let rounds_max = rounds.iter().max().copied().unwrap_or(0);
        println!(
            "{name:<40} {:>10.1} {:>12.3} {:>14}",
            ms(time),
            time.as_secs_f64() / recipe_time.as_secs_f64(),
            rounds_max
        );
        json.push(format!(
            r#"{{"path":"{name}","median_ms":{:.1},"ratio_vs_recipe":{:.3},"workspace_round_trips":{rounds_max}}}"#,
            ms(time),
            time.as_secs_f64() / recipe_time.as_secs_f64()
        ));
    }
    println!(
        "{{\"scenario\":\"cold_start\",\"results\":[{}]}}\n",
        json.join(",")
    );
    Ok(())
}

async fn connect_round_trips(setup: &Setup) -> Result<(), Box<dyn std::error::Error>> {
    // A token minted once: only the connection is measured.
    let token = {
        let pool =
            PoolBuilder::from_environment(&apps_environment(setup, true, "postgres"))?.build()?;
        let _ = pool.get().await?;
        pool.token_cache()
            .token()
            .await?
            .secret()
            .expose()
            .to_owned()
    };
    let rtt = 2 * setup.network_delay;
    let mut times = (Vec::new(), Vec::new());
    for round in 0..ROUNDS * 2 {
        for step in 0..2 {
            let negotiation = if (round + step) % 2 == 0 {
                SslNegotiation::Postgres
            } else {
                SslNegotiation::Direct
            };
            let pool = PoolBuilder::default()
                .host(endpoint_host(setup))
                .hostaddr([127, 0, 0, 1].into())
                .port(setup.network.port())
                .user(CLIENT_ID)
                .dbname("databricks_postgres")
                .password(token.as_str())
                .root_certificates_pem(setup.lakebase.emulator().ca_cert_pem())
                .ssl_negotiation(negotiation)
                .build()?;
            let started = Instant::now();
            let conn = pool.get().await?;
            let elapsed = started.elapsed();
            drop(conn);
            pool.close();
            match negotiation {
                SslNegotiation::Postgres => times.0.push(elapsed),
                _ => times.1.push(elapsed),
            }
        }
    }
    println!(
        "one physical connection (TCP, TLS, login), round trip {} ms",
        rtt.as_millis()
    );
    println!(
        "{:<40} {:>10} {:>14}",
        "negotiation", "median ms", "round trips"
    );
    let mut json = Vec::new();
    for (name, samples) in [("postgres (SSLRequest)", &times.0), ("direct", &times.1)] {
        let time = median(samples.clone());
        let rounds = time.as_secs_f64() / rtt.as_secs_f64();
        println!("{name:<40} {:>10.1} {rounds:>14.1}", ms(time));
        json.push(format!(
            r#"{{"negotiation":"{name}","median_ms":{:.1},"round_trips":{rounds:.1}}}"#,
            ms(time)
        ));
    }
    println!(
        "{{\"scenario\":\"connect\",\"results\":[{}]}}",
        json.join(",")
    );
    Ok(())
}
