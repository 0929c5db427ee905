//! The main demo: a pool whose password rotates, a query, and a connection being recycled.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With no configuration it starts a throwaway local PostgreSQL whose role password is
//! replaced by every token the pool mints, so the server itself checks each token. With
//! `PGHOST` set (for example to the `postgres` service of docker-compose.yml) it connects there
//! instead, using `PGPORT`, `PGUSER`, `PGPASSWORD` and `PGDATABASE`.
//!
//! Log lines go to stderr; `RUST_LOG` overrides the default `info,lakebase_pool=debug`.

use std::process::ExitCode;
use std::time::Duration;

use lakebase_pool::testing::LocalPostgres;
use lakebase_pool::{Pool, Secret};
use tracing_subscriber::EnvFilter;

/// Short enough to watch a connection being replaced; the default is 45 minutes.
const DEMO_LIFETIME: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lakebase_pool=debug"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart failed: {}", chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // Keeps the throwaway server alive until the end of `run`.
    let (pool, _local) = match std::env::var("PGHOST") {
        Ok(host) => (external_pool(&host)?, None),
        Err(_) => {
            let (pool, local) = local_pool().await?;
            (pool, Some(local))
        }
    };

    let conn = pool.get().await?;
    let version: String = conn.query_one("SELECT version()", &[]).await?.get(0);
    println!("connected: {version}");
    let first_pid: i32 = conn.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    drop(conn);

    println!("waiting {DEMO_LIFETIME:?} for the connection to reach its (demo) max lifetime...");
    tokio::time::sleep(DEMO_LIFETIME + Duration::from_millis(500)).await;
    let conn = pool.get().await?;
    let second_pid: i32 = conn.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    println!(
        "recycled: server process {first_pid} was retired, {second_pid} replaced it \
         (a new login with the cached token)"
    );

    let stats = pool.stats();
    println!(
        "stats: {} token(s) minted, {} connection(s) opened, {} retired by lifetime",
        stats.tokens.minted, stats.connections_opened, stats.retired_lifetime
    );
    // Close the pool before the throwaway server stops.
    drop(conn);
    drop(pool);
    Ok(())
}

/// A throwaway local server whose `app` role password is rotated by every token the pool mints.
async fn local_pool() -> Result<(Pool, LocalPostgres), Box<dyn std::error::Error>> {
    println!("no PGHOST set: starting a throwaway local PostgreSQL");
    let local = LocalPostgres::start()?;
    local
        .create_role("app", &Secret::new("replaced-by-the-first-token"))
        .await?;
    let tokens = local.rotating_password("app", Duration::from_secs(3600));
    let pool = local
        .pool_builder("app")
        .credentials(tokens)
        .max_lifetime(DEMO_LIFETIME)
        .build()?;
    Ok((pool, local))
}

/// A pool for the server the `PG*` variables describe (e.g. docker-compose's `postgres`).
fn external_pool(host: &str) -> Result<Pool, Box<dyn std::error::Error>> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let port = var("PGPORT", "5432")
        .parse::<u16>()
        .map_err(|e| format!("PGPORT must be a port number: {e}"))?;
    let user = var("PGUSER", "postgres");
    let password = std::env::var("PGPASSWORD")
        .map_err(|_| "PGHOST is set but PGPASSWORD is not; set it to the server's password")?;
    println!("connecting to {user}@{host}:{port} as PG* variables say");
    let pool = Pool::builder()
        .host(host)
        .port(port)
        .user(&user)
        .dbname(var("PGDATABASE", &user))
        .password(password)
        .max_lifetime(DEMO_LIFETIME)
        .build()?;
    Ok(pool)
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
