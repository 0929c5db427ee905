//! How much the Lakebase emulator's relay adds to a round trip: `SELECT 1` through the
//! emulator versus directly to the same PostgreSQL, with and without TLS.
//!
//! ```text
//! cargo bench --bench emulator_relay
//! ```
//!
//! Each round times every path in turn (rotating which goes first), so that machine noise
//! hits all paths alike; ratios are computed per round against the direct paths measured in
//! the same round, and the median is reported. Prints a table and one JSON line.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lakebase_pool::databricks::Workspace;
use lakebase_pool::resolve::StaticResolver;
use lakebase_pool::{Connection, Pool, Secret, SslMode};
use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace, TestCa};

const ROUNDS: usize = 7;
const QUERIES_PER_ROUND: usize = 2_000;
const USER: &str = "bench@example.com";
const PASSWORD: &str = "bench-password";
const ENDPOINT: &str = "projects/bench/branches/main/endpoints/ep-bench";
const DIRECT_HOST: &str = "db.bench.test";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ca = TestCa::new("bench CA")?;
    let pg = LocalPostgres::start_with_tls(&ca.issue(&[DIRECT_HOST])?)?;
    pg.create_role(USER, &Secret::new(PASSWORD)).await?;
    pg.create_database("databricks_postgres", USER).await?;
    let workspace = MockWorkspace::start()?;
    workspace.add_pat("dapi-bench", USER);
    let emulator = LakebaseEmulator::start(&pg, &workspace)?;
    emulator.add_endpoint(ENDPOINT);

    let direct = |mode: SslMode| -> Result<Pool, lakebase_pool::Error> {
        Pool::builder()
            .host(DIRECT_HOST)
            .port(pg.port())
            .user(USER)
            .dbname("databricks_postgres")
            .password(PASSWORD)
            .resolver(StaticResolver::new().with(DIRECT_HOST, Ipv4Addr::LOCALHOST))
            .root_certificates_pem(ca.cert_pem())
            .ssl_mode(mode)
            .max_size(1)
            .build()
    };
    // Plain text is only allowed to a loopback host name, so that path uses the address.
    let plain = pg
        .pool_builder(USER)
        .dbname("databricks_postgres")
        .password(PASSWORD)
        .max_size(1)
        .build()?;
    let tls = direct(SslMode::VerifyFull)?;
    let via_emulator = Pool::builder()
        .workspace(
            Workspace::builder()
                .host(workspace.url())
                .token("dapi-bench")
                .build()?,
        )
        .lakebase_endpoint(ENDPOINT)
        .port(emulator.port())
        .resolver(emulator.resolver())
        .root_certificates_pem(emulator.ca_cert_pem())
        .max_size(1)
        .build()?;

    let names = ["direct, plain", "direct, TLS", "emulator (TLS + relay)"];
    let conns: Vec<Connection> = vec![
        plain.get().await?,
        tls.get().await?,
        via_emulator.get().await?,
    ];
    for conn in &conns {
        round_trips(conn, 200).await?; // warm-up
    }

    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); conns.len()];
    for round in 0..ROUNDS {
        for offset in 0..conns.len() {
            let path = (round + offset) % conns.len();
            let elapsed = round_trips(&conns[path], QUERIES_PER_ROUND).await?;
            rates[path].push(QUERIES_PER_ROUND as f64 / elapsed.as_secs_f64());
        }
    }
    let ratio_to =
        |base: usize| median((0..ROUNDS).map(|r| rates[2][r] / rates[base][r]).collect());

    println!(
        "{:<24} {:>14} {:>14}",
        "path", "median q/s", "ratio to path"
    );
    for (path, name) in names.iter().enumerate() {
        let ratio = median((0..ROUNDS).map(|r| rates[path][r] / rates[0][r]).collect());
        println!(
            "{name:<24} {:>14.0} {:>14.3}",
            median(rates[path].clone()),
            ratio
        );
    }
    let relay_vs_tls = ratio_to(1);
    let relay_vs_plain = ratio_to(0);
    println!("emulator / direct TLS throughput (median of {ROUNDS} rounds): {relay_vs_tls:.3}");
    println!(
        "{{\"bench\":\"emulator_relay\",\"rounds\":{ROUNDS},\"queries_per_round\":{QUERIES_PER_ROUND},\
         \"direct_plain_qps\":{:.0},\"direct_tls_qps\":{:.0},\"emulator_qps\":{:.0},\
         \"emulator_vs_direct_tls\":{relay_vs_tls:.3},\"emulator_vs_direct_plain\":{relay_vs_plain:.3}}}",
        median(rates[0].clone()),
        median(rates[1].clone()),
        median(rates[2].clone()),
    );
    drop(conns);
    Ok(())
}

async fn round_trips(conn: &Connection, count: usize) -> Result<Duration, tokio_postgres::Error> {
    let started = Instant::now();
    for _ in 0..count {
        let _ = conn.simple_query("SELECT 1").await?;
    }
    Ok(started.elapsed())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
