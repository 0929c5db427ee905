//! A local stand-in for a Databricks workspace with one Lakebase endpoint, for trying
//! lakebase-pool (or any Lakebase client) without an account.
//!
//! ```text
//! cargo run --features testing --bin lakebase-mock-workspace [-- --listen 127.0.0.1:8080]
//! ```
//!
//! It starts a throwaway PostgreSQL and a mock workspace whose endpoint points at it, makes every
//! minted token the role's real password, prints the environment a client needs, and runs until
//! interrupted (Ctrl-C), then removes everything it started.

use std::net::SocketAddr;
use std::process::ExitCode;

use lakebase_pool::Secret;
use lakebase_pool::testing::{LocalPostgres, MockWorkspace};

const ENDPOINT: &str = "projects/local/branches/production/endpoints/ep-local";
const USER: &str = "local@example.com";
const PAT: &str = "dapi-local-mock";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lakebase-mock-workspace: {error}");
            ExitCode::FAILURE
        }
    }
}

fn listen_address() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args
                    .next()
                    .ok_or("--listen needs an address, e.g. 127.0.0.1:8080")?;
                listen = value.parse().map_err(|e| {
                    format!("--listen `{value}` is not an address like 127.0.0.1:8080: {e}")
                })?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: lakebase-mock-workspace [--listen ADDR]  (default 127.0.0.1:0, a free port)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(listen)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let listen = listen_address()?;
    let pg = LocalPostgres::start()?;
    pg.create_role(USER, &Secret::new("replaced-by-the-first-token"))
        .await?;
    pg.create_database("databricks_postgres", USER).await?;
    let workspace = MockWorkspace::start_on(listen)?;
    workspace.add_pat(PAT, USER);
    workspace.add_endpoint(ENDPOINT, pg.host());
    workspace.apply_tokens_to(&pg, USER);

    println!("# A mock Databricks workspace and a local PostgreSQL; export these to connect:");
    println!("export DATABRICKS_HOST={}", workspace.url());
    println!("export DATABRICKS_TOKEN={PAT}");
    println!("export LAKEBASE_ENDPOINT={ENDPOINT}");
    println!("export PGHOST={}", pg.host());
    println!("export PGPORT={}", pg.port());
    println!("export PGUSER={USER}");
    println!("export PGDATABASE=databricks_postgres");
    println!("export PGSSLMODE=disable");
    println!("# Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
