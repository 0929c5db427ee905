//! A local stand-in for Lakebase and its Databricks workspace, for trying lakebase-pool (or any
//! Lakebase client, in any language) without an account.
//!
//! ```text
//! cargo run -p lakebase-pool-testing --bin lakebase-emulator [-- OPTIONS]
//! ```
//!
//! It starts a throwaway PostgreSQL, the Lakebase emulator in front of it (TLS with a private
//! CA, SNI routing, tokens checked at login, scale-to-zero) and a mock workspace that mints the
//! tokens, prints the environment a client needs, and runs until interrupted (Ctrl-C), then
//! removes everything it started.
//!
//! Options: `--workspace-listen ADDR` (default 127.0.0.1:0), `--listen ADDR` for the
//! emulator (default 127.0.0.1:0), `--suspend-after SECONDS` (scale to zero after that long
//! without sessions; default never), `--ca-file PATH` (where to write the CA certificate
//! clients must trust; default a temporary file, removed at exit), `--ha` (the endpoint runs
//! with high availability: a synchronous secondary behind its read-only host; `kill -USR1`
//! the program to fail it over).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use lakebase_pool::Secret;
use lakebase_pool_testing::{LakebaseEmulator, LocalPostgres, MockWorkspace};

const ENDPOINT: &str = "projects/local/branches/production/endpoints/ep-local";
const USER: &str = "local@example.com";
const PAT: &str = "dapi-local-emulator";

struct Options {
    workspace: SocketAddr,
    emulator: SocketAddr,
    suspend_after: Option<Duration>,
    ca_file: Option<std::path::PathBuf>,
    ha: bool,
}

fn options() -> Result<Options, String> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut options = Options {
        workspace: loopback,
        emulator: loopback,
        suspend_after: None,
        ca_file: None,
        ha: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().ok_or(format!("{arg} needs {what}"));
        let address = |text: String| {
            text.parse::<SocketAddr>()
                .map_err(|e| format!("`{text}` is not an address like 127.0.0.1:8080: {e}"))
        };
        match arg.as_str() {
            "--workspace-listen" => options.workspace = address(value("an address")?)?,
            "--listen" => options.emulator = address(value("an address")?)?,
            "--suspend-after" => {
                let text = value("a number of seconds")?;
                let seconds = text
                    .parse::<u64>()
                    .map_err(|_| format!("--suspend-after takes whole seconds, not `{text}`"))?;
                options.suspend_after = Some(Duration::from_secs(seconds));
            }
            "--ca-file" => options.ca_file = Some(value("a path")?.into()),
            "--ha" => options.ha = true,
            "-h" | "--help" => {
                println!(
                    "usage: lakebase-emulator [--workspace-listen ADDR] [--listen ADDR] [--suspend-after SECONDS] [--ca-file PATH] [--ha]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(options)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lakebase-emulator: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let pg = LocalPostgres::start()?;
    pg.create_role(USER, &Secret::new("unused: the emulator checks tokens"))
        .await?;
    pg.create_database("databricks_postgres", USER).await?;
    let workspace = MockWorkspace::start_on(options.workspace)?;
    workspace.add_pat(PAT, USER);
    let emulator = LakebaseEmulator::start_on(&pg, &workspace, options.emulator, "lakebase.test")?;
    let ha = if options.ha {
        Some(emulator.add_ha_endpoint(ENDPOINT, &pg).await?)
    } else {
        emulator.add_endpoint(ENDPOINT);
        None
    };
    emulator.set_suspend_after_idle(options.suspend_after);
    // A temporary file is removed at exit; a given path is kept.
    let temporary = tempfile::Builder::new()
        .prefix("lakebase-emulator-ca-")
        .suffix(".pem")
        .tempfile()?;
    let ca_path = options
        .ca_file
        .clone()
        .unwrap_or_else(|| temporary.path().to_path_buf());
    std::fs::write(&ca_path, emulator.ca_cert_pem())?;

    println!("# Lakebase emulator and mock workspace; export these to connect.");
    println!(
        "# The endpoint's host ({}) resolves nowhere:",
        emulator.host_of(ENDPOINT)
    );
    println!("# TCP goes to PGHOSTADDR, while TLS verifies the name and sends it as SNI.");
    println!("export DATABRICKS_HOST={}", workspace.url());
    println!("export DATABRICKS_TOKEN={PAT}");
    println!("export LAKEBASE_ENDPOINT={ENDPOINT}");
    println!("export PGHOSTADDR=127.0.0.1");
    println!("export PGPORT={}", emulator.port());
    println!("export PGSSLMODE=verify-full");
    println!("export PGSSLROOTCERT={}", ca_path.display());
    if ha.is_some() {
        println!(
            "# High availability: the read-only host {} is served by the secondary. It resolves",
            emulator.host_of(ENDPOINT).replacen('.', "-ro.", 1)
        );
        println!(
            "# nowhere either: map it to 127.0.0.1 (a resolver hook, /etc/hosts), then read from"
        );
        println!("# it with LAKEBASE_READ_ONLY_HOST=true.");
        println!(
            "# Fail the endpoint over with: kill -USR1 {}",
            std::process::id()
        );
    }
    println!("# Press Ctrl-C to stop.");
    // Ctrl-C, or SIGTERM from `docker compose down` or a supervisor: either way, return so
    // that the emulator, the workspace and the throwaway server are stopped and removed.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut fail_over =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => break interrupted?,
            _ = terminate.recv() => break,
            _ = fail_over.recv() => match &ha {
                Some(ha) => match ha.fail_over().await {
                    Ok(failover) => println!(
                        "# Failed over: the new primary took connections {:?} after the old one stopped.",
                        failover.routed_at - failover.stopped_at
                    ),
                    Err(error) => eprintln!("lakebase-emulator: the failover failed: {error}"),
                },
                None => eprintln!("lakebase-emulator: SIGUSR1 fails over only with --ha"),
            },
        }
    }
    drop(emulator);
    Ok(())
}
