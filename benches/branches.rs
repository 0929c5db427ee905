//! How long a local branch takes: `LocalLakebase::branch` of a database seeded with 5,000
//! rows, against seeding a fresh database with the same rows, in the same run.
//!
//! ```text
//! cargo bench --bench branches
//! ```

use std::time::{Duration, Instant};

use lakebase_pool_testing::LocalLakebase;

const ROUNDS: usize = 15;
const SEED: &str = "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, created timestamptz DEFAULT now());
                    INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 5000) g;";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lakebase = LocalLakebase::start().await?;
    let main = lakebase.pool_builder()?.build()?;
    main.get().await?.batch_execute(SEED).await?;
    main.close();
    let admin = lakebase.postgres().admin().await?;
    let (mut branch_times, mut seed_times) = (Vec::new(), Vec::new());
    let mut branches = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        branches.push(lakebase.branch(&format!("bench-{round}")).await?);
        branch_times.push(started.elapsed());

        let database = format!("seeded_{round}");
        let started = Instant::now();
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await?;
        lakebase
            .postgres()
            .admin_of(&database)
            .await?
            .batch_execute(SEED)
            .await?;
        seed_times.push(started.elapsed());
    }
    let median = |mut values: Vec<Duration>| {
        values.sort();
        values[values.len() / 2]
    };
    let (branch, seed) = (median(branch_times), median(seed_times));
    println!("a branch of a database with 5,000 rows, {ROUNDS} rounds, medians");
    println!(
        "  LocalLakebase::branch:          {:>7.1} ms",
        branch.as_secs_f64() * 1e3
    );
    println!(
        "  seeding a fresh database:       {:>7.1} ms",
        seed.as_secs_f64() * 1e3
    );
    println!(
        "  branch / seed:                  {:>7.3}",
        branch.as_secs_f64() / seed.as_secs_f64()
    );
    println!(
        "{{\"scenario\":\"local_branch\",\"branch_ms\":{:.1},\"seed_ms\":{:.1}}}",
        branch.as_secs_f64() * 1e3,
        seed.as_secs_f64() * 1e3
    );
    drop(branches);
    Ok(())
}
