//! One Lakebase pool, queried through every driver the crate adapts: bb8, diesel-async,
//! sqlx and SeaORM (on sqlx 0.9). Each counts the rows of one table its own way, and then
//! again after the compute was suspended, as scale-to-zero does.
//!
//! ```text
//! cargo run --example drivers
//! ```
//!
//! With `LAKEBASE_ENDPOINT` (or `PGHOST`) set it uses that database; otherwise a local
//! Postgres behind the Lakebase emulator. In a service, keep the one of these pools you use,
//! built from `Pool::from_env()?` (features `bb8`, `diesel-async`, `sqlx-0_8` or `sqlx-0_9`).

use diesel_async::RunQueryDsl;
use lakebase_pool::drivers::bb8::LakebaseConnectionManager;
use lakebase_pool::drivers::diesel_async as diesel_adapter;
use lakebase_pool::drivers::sqlx_0_9 as sqlx_adapter;
use lakebase_pool::{BoxError, Environment, Pool};
use lakebase_pool_testing::LocalLakebase;
use sea_orm::{ConnectionTrait, DbErr, RuntimeErr, SqlxPostgresConnector, Statement};
use sqlx_0_9 as sqlx;

/// The sqlx error inside a SeaORM error, for `retry_with`.
fn sqlx_error(error: &DbErr) -> Option<&sqlx::Error> {
    match error {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// The count, through each driver.
async fn count_everywhere(pool: &Pool, pg: &sqlx::PgPool) -> Result<(), BoxError> {
    const COUNT: &str = "SELECT count(*) FROM visits";

    let bb8_pool = LakebaseConnectionManager::pool_builder(pool)
        .max_size(2)
        .build(LakebaseConnectionManager::new(pool))
        .await?;
    let bb8: i64 = bb8_pool.get().await?.query_one(COUNT, &[]).await?.get(0);

    let diesel_pool = diesel_adapter::deadpool(pool, |builder| builder.max_size(2))?;
    let diesel: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(COUNT)
        .get_result(&mut diesel_pool.get().await?)
        .await?;

    // sqlx's own executor, through `retry`: a cold start is waited out, not surfaced.
    let (sqlx,): (i64,) =
        sqlx_adapter::retry(pool, pg, |pg| sqlx::query_as(COUNT).fetch_one(pg)).await?;

    let db = SqlxPostgresConnector::from_sqlx_postgres_pool(pg.clone());
    let statement = Statement::from_string(sea_orm::DbBackend::Postgres, COUNT);
    let row = sqlx_adapter::retry_with(
        pool,
        pg,
        |_| db.query_one_raw(statement.clone()),
        sqlx_error,
    )
    .await?
    .ok_or("no row")?;
    let sea_orm: i64 = row.try_get("", "count")?;

    println!("visits: bb8 {bb8}, diesel-async {diesel}, sqlx {sqlx}, SeaORM {sea_orm}");
    Ok(())
}

#[tokio::main]
pub async fn main() -> Result<(), BoxError> {
    let env = Environment::from_process();
    // The database the environment names, or a local Lakebase (kept alive by `local`).
    let (builder, local) = LocalLakebase::unless_configured(&env).await?;
    let pool = builder.build()?;
    let pg = sqlx_adapter::pg_pool(
        &pool,
        sqlx::postgres::PgPoolOptions::new().max_connections(4),
    )
    .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS visits (at timestamptz NOT NULL DEFAULT now())")
        .execute(&pg)
        .await?;
    sqlx::query("INSERT INTO visits DEFAULT VALUES")
        .execute(&pg)
        .await?;

    count_everywhere(&pool, &pg).await?;
    if let Some(local) = &local {
        println!("suspending the compute, as scale-to-zero would...");
        local.suspend();
        count_everywhere(&pool, &pg).await?;
    }
    pg.close().await;
    pool.close();
    Ok(())
}
