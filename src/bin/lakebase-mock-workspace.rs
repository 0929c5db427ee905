//! A local stand-in for a Databricks workspace with one Lakebase endpoint, for trying
//! lakebase-pool (or any Lakebase client) without an account.
//!
//! ```text
//! cargo run --features testing --bin lakebase-mock-workspace [-- --listen 127.0.0.1:8080] [--tls]
//! ```
//!
//! It starts a throwaway PostgreSQL and a mock workspace whose endpoint points at it, makes every
//! minted token the role's real password, prints the environment a client needs, and runs until
//! interrupted (Ctrl-C), then removes everything it started.
//!
//! With `--tls` the server speaks TLS with a certificate from a private CA for
//! `ep-local.db.lakebase.test`, a name that resolves nowhere: clients reach it through
//! `PGHOSTADDR`, verify it with `PGSSLROOTCERT` and send the name as SNI, as with Lakebase.

use std::net::SocketAddr;
use std::process::ExitCode;

use lakebase_pool::Secret;
use lakebase_pool::testing::{LocalPostgres, MockWorkspace, TestCa};

const ENDPOINT: &str = "projects/local/branches/production/endpoints/ep-local";
const USER: &str = "local@example.com";
const PAT: &str = "dapi-local-mock";
const TLS_HOST: &str = "ep-local.db.lakebase.test";

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

struct Options {
    listen: SocketAddr,
    tls: bool,
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut tls = false;
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
            "--tls" => tls = true,
            "-h" | "--help" => {
                println!(
                    "usage: lakebase-mock-workspace [--listen ADDR] [--tls]  (default 127.0.0.1:0, a free port)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(Options { listen, tls })
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    // Kept until exit: the CA file clients are pointed at.
    let mut ca_file = None;
    let pg = if options.tls {
        let ca = TestCa::new("lakebase-mock-workspace CA")?;
        let pg = LocalPostgres::start_with_tls(&ca.issue(&[TLS_HOST])?)?;
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), ca.cert_pem())?;
        ca_file = Some(file);
        pg
    } else {
        LocalPostgres::start()?
    };
    pg.create_role(USER, &Secret::new("replaced-by-the-first-token"))
        .await?;
    pg.create_database("databricks_postgres", USER).await?;
    let workspace = MockWorkspace::start_on(options.listen)?;
    workspace.add_pat(PAT, USER);
    workspace.add_endpoint(ENDPOINT, if options.tls { TLS_HOST } else { pg.host() });
    workspace.apply_tokens_to(&pg, USER);

    println!("# A mock Databricks workspace and a local PostgreSQL; export these to connect:");
    println!("export DATABRICKS_HOST={}", workspace.url());
    println!("export DATABRICKS_TOKEN={PAT}");
    println!("export LAKEBASE_ENDPOINT={ENDPOINT}");
    match &ca_file {
        Some(file) => {
            println!(
                "# {TLS_HOST} resolves nowhere: TCP goes to PGHOSTADDR, TLS verifies the name."
            );
            println!("export PGHOSTADDR={}", pg.host());
            println!("export PGSSLMODE=verify-full");
            println!("export PGSSLROOTCERT={}", file.path().display());
        }
        None => {
            println!("export PGHOST={}", pg.host());
            println!("export PGSSLMODE=disable");
        }
    }
    println!("export PGPORT={}", pg.port());
    println!("export PGUSER={USER}");
    println!("export PGDATABASE=databricks_postgres");
    println!("# Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
