//! The pool's OpenTelemetry metrics, exported to stdout.
//!
//! ```text
//! cargo run --example metrics --features opentelemetry
//! ```
//!
//! It installs an OpenTelemetry SDK meter provider as the global one (the pool's default
//! meter), puts some load on a pool of 4 connections (16 tasks, so checkouts wait), lets the
//! compute scale to zero and wakes it, then flushes the metrics to stdout: the semantic
//! conventions' `db.client.connection.*` and the `lakebase.*` ones, each with its
//! `db.client.connection.pool.name`. A service would use an OTLP or Prometheus exporter in
//! place of the stdout one; nothing else changes.
//!
//! As with the quickstart, `LAKEBASE_ENDPOINT` (or `PGHOST`) selects a real endpoint;
//! otherwise a local PostgreSQL, mock workspace and Lakebase emulator are started.

use std::process::ExitCode;
use std::time::Duration;

use lakebase_pool::Environment;
use lakebase_pool_testing::LocalLakebase;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("metrics example failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), lakebase_pool::BoxError> {
    // Set before the pool is built: the pool takes the global meter when it is built.
    let provider = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(opentelemetry_stdout::MetricExporter::default()).build(),
        )
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());

    let (builder, local) = LocalLakebase::unless_configured(&Environment::from_process()).await?;
    let pool = builder.pool_name("metrics-example").max_size(4).build()?;

    // Load: 16 tasks on 4 connections, so that some checkouts wait.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let pool = pool.clone();
        let _ = tasks.spawn(async move {
            for _ in 0..20 {
                let conn = pool.get().await?;
                let _ = conn.simple_query("SELECT pg_sleep(0.005)").await?;
            }
            Ok::<_, lakebase_pool::BoxError>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }

    // Locally: the compute scales to zero, and the next checkout wakes it through retries.
    if let Some(local) = &local {
        local.emulator().set_refusals_while_waking(2);
        local.suspend();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let conn = pool.get().await?;
        let _ = conn.simple_query("SELECT 1").await?;
    }

    let stats = pool.stats();
    eprintln!(
        "{} checkouts, {} connections opened, {} connect retries; the metrics follow",
        stats.checkouts,
        stats.connections_opened,
        stats.connect_retries_transient + stats.connect_retries_rate_limited
    );
    provider.force_flush()?;
    provider.shutdown()?;
    Ok(())
}
