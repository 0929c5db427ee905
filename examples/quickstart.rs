//! The main demo: a pool whose password is a minted token, a query, and a recycled connection.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With `LAKEBASE_ENDPOINT` (or `PGHOST`) set, it reads its configuration from the environment,
//! exactly as [`Pool::from_env`](lakebase_pool::Pool::from_env) does; see the README for the
//! variables. Otherwise it starts a throwaway local PostgreSQL, a mock Databricks workspace and
//! the Lakebase emulator in front of them, and gives the same code the environment a Databricks
//! App would have: the token is minted over HTTP, the endpoint's host and the user name are
//! discovered, the host name (which resolves nowhere) is mapped to the emulator by the resolver
//! hook, TLS is verified against the emulator's CA with the host name as SNI, and the token is
//! checked at login. It then suspends the compute, as scale-to-zero would, and shows the next
//! checkout waking it through the retry path.
//!
//! Log lines go to stderr; `RUST_LOG` overrides the default `info,lakebase_pool=debug`.

use std::process::ExitCode;
use std::time::Duration;

use lakebase_pool::Environment;
use lakebase_pool_testing::LocalLakebase;
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

async fn run() -> Result<(), lakebase_pool::BoxError> {
    // The endpoint the environment names, or a local PostgreSQL, mock workspace and Lakebase
    // emulator (kept alive by `local` until the end of `run`). The local builder reads the same
    // variables an App would have, plus the resolver hook (the endpoint's host name resolves
    // nowhere; the hook maps it to the emulator while TLS still verifies the name and sends it
    // as SNI) and the emulator's CA.
    let env = Environment::from_process();
    // `PGPASSWORD` is the password only without `LAKEBASE_ENDPOINT` (whose tokens win).
    let fixed_password = env.get("PGPASSWORD").is_some() && env.get("LAKEBASE_ENDPOINT").is_none();
    let (builder, local) = LocalLakebase::unless_configured(&env).await?;
    match &local {
        None => println!("using the configuration in the environment"),
        Some(local) => {
            println!(
                "no LAKEBASE_ENDPOINT or PGHOST set: started a local PostgreSQL, a mock workspace \
                 and the Lakebase emulator"
            );
            // Make waking visible: the first attempt is refused, as the proxy may do.
            local.emulator().set_wake_delay(Duration::from_millis(500));
            local.emulator().set_refusals_while_waking(1);
        }
    }
    let pool = builder.max_lifetime(DEMO_LIFETIME).build()?;
    // Mint, discover and log in before taking traffic, as a service would at start-up; a
    // readiness probe would report `pool.is_ready()`.
    let warm = pool.warm_up(2).await?;
    println!("warmed up {warm} connections; ready: {}", pool.is_ready());

    let conn = pool.get().await?;
    let row = conn
        .query_one(
            "SELECT version(), current_user::text, pg_backend_pid()",
            &[],
        )
        .await?;
    let (version, user, first_pid): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
    println!("connected as {user}: {version}");
    drop(conn);

    println!("waiting {DEMO_LIFETIME:?} for the connection to reach its (demo) max lifetime...");
    tokio::time::sleep(DEMO_LIFETIME + Duration::from_millis(500)).await;
    let conn = pool.get().await?;
    let second_pid: i32 = conn.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let login = if fixed_password {
        "with the same fixed password"
    } else {
        "with the cached token"
    };
    println!(
        "recycled: server process {first_pid} was retired, {second_pid} replaced it \
         (a new login {login})"
    );

    drop(conn);

    if let Some(local) = &local {
        println!("suspending the compute, as scale-to-zero does after a few idle minutes...");
        local.suspend();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        let conn = pool.get().await?;
        let _ = conn.simple_query("SELECT 1").await?;
        println!(
            "cold start: the next checkout woke the compute in {:.0?} ({} retry(ies) on the way)",
            started.elapsed(),
            pool.stats().connect_retries_transient
        );
    }

    let stats = pool.stats();
    let tokens = if fixed_password {
        String::from("a fixed password (PGPASSWORD), no tokens")
    } else {
        format!("{} token(s) minted", stats.tokens.minted)
    };
    println!(
        "stats: {tokens}, {} connection(s) opened, {} retired by lifetime, {} broken",
        stats.connections_opened, stats.retired_lifetime, stats.retired_broken
    );
    // Close the pool before the local servers stop.
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(())
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
