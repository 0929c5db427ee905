//! A branch per CI run: create a Lakebase branch, migrate and query it through a pool, and
//! delete it at the end, also when a step failed.
//!
//! ```text
//! cargo run --example branch_per_run
//! ```
//!
//! With `LAKEBASE_PROJECT=projects/<id>` and the `DATABRICKS_*` variables of a workspace
//! (see the README), it works on that project: the branch is made from
//! `LAKEBASE_SOURCE_BRANCH` (default: the project's default branch) with a 2-hour TTL, so a
//! run that is killed leaves nothing behind for long. `PGPORT`, `PGHOSTADDR` and
//! `PGSSLROOTCERT` apply to the branch's connections as usual. Without `LAKEBASE_PROJECT`,
//! it does the same against a local Postgres, mock workspace and Lakebase emulator, whose
//! branch API makes real branches (copies of the database).
//!
//! Exits 0 when every step worked.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use lakebase_pool::branch::EphemeralBranch;
use lakebase_pool::databricks::{Workspace, WorkspaceBuilder};
use lakebase_pool::{BoxError, Environment, PoolBuilder};
use lakebase_pool_testing::LocalLakebase;

/// What a run did, for its report.
#[derive(Debug)]
pub struct Report {
    pub branch: String,
    pub rows: i64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&Environment::from_process()).await {
        Ok(report) => {
            println!(
                "branch {} created, migrated ({} rows), queried and deleted",
                report.branch, report.rows
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("branch_per_run failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The whole run against the environment's project, or a local one.
pub async fn run(env: &Environment) -> Result<Report, BoxError> {
    match env.get("LAKEBASE_PROJECT") {
        Some(project) => {
            let workspace = WorkspaceBuilder::from_environment(env)?.build()?;
            let mut builder = EphemeralBranch::builder(workspace, project).prefix("ci");
            if let Some(source) = env.get("LAKEBASE_SOURCE_BRANCH") {
                builder = builder.source_branch(source);
            }
            let branch = builder.create().await?;
            let pool = connection_settings(env, branch.pool_builder())?;
            on_branch(branch, pool).await
        }
        None => {
            println!(
                "no LAKEBASE_PROJECT set: using a local Postgres, mock workspace and emulator"
            );
            let local = LocalLakebase::start().await?;
            let workspace = Workspace::builder()
                .host(local.workspace().url())
                .token(LocalLakebase::PAT)
                .build()?;
            let branch = EphemeralBranch::builder(workspace, "projects/local")
                .prefix("ci")
                // The mock finishes its operations in milliseconds.
                .poll_interval(Duration::from_millis(20))
                .create()
                .await?;
            let pool = branch
                .pool_builder()
                .port(local.emulator().port())
                .resolver(local.emulator().resolver())
                .root_certificates_pem(local.emulator().ca_cert_pem());
            on_branch(branch, pool).await
        }
    }
}

/// `PGPORT`, `PGHOSTADDR` and `PGSSLROOTCERT`, for the branch's connections.
fn connection_settings(env: &Environment, mut pool: PoolBuilder) -> Result<PoolBuilder, BoxError> {
    if let Some(port) = env.get("PGPORT") {
        pool = pool.port(
            port.parse()
                .map_err(|_| format!("PGPORT `{port}` is not a port"))?,
        );
    }
    if let Some(address) = env.get("PGHOSTADDR") {
        pool = pool.hostaddr(
            address
                .parse()
                .map_err(|_| format!("PGHOSTADDR `{address}` is not an address"))?,
        );
    }
    if let Some(path) = env.get("PGSSLROOTCERT") {
        pool = pool.root_certificates_file(Path::new(path));
    }
    Ok(pool)
}

/// The steps on the branch, then its deletion whatever they did.
async fn on_branch(branch: EphemeralBranch, pool: PoolBuilder) -> Result<Report, BoxError> {
    println!(
        "created branch {} (endpoint {})",
        branch.name(),
        branch.endpoint()
    );
    let result = steps(pool).await;
    let name = branch.name().to_owned();
    let deleted = branch.delete().await;
    let rows = result?;
    deleted?;
    Ok(Report { branch: name, rows })
}

async fn steps(pool: PoolBuilder) -> Result<i64, BoxError> {
    let pool = pool.build()?;
    let conn = pool.get().await?;
    // The migration under test.
    conn.batch_execute(
        "CREATE TABLE demo_items (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO demo_items SELECT g, 'item ' || g FROM generate_series(1, 100) g;",
    )
    .await?;
    println!("migrated: created demo_items with 100 rows");
    let rows: i64 = conn
        .query_one("SELECT count(*) FROM demo_items", &[])
        .await?
        .get(0);
    println!("queried: {rows} rows");
    drop(conn);
    pool.close();
    Ok(rows)
}
