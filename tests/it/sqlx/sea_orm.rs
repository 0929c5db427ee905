//! SeaORM 2 on the sqlx 0.9 adapter's pool: `from_sqlx_postgres_pool`, a rotation under
//! load, a suspend met through `retry_with`, a revoked token.

use std::time::Duration;

use lakebase_pool::Pool;
use lakebase_pool::drivers::sqlx_0_9 as adapter;
use lakebase_pool_testing::LocalLakebase;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, RuntimeErr, SqlxPostgresConnector,
    Statement,
};
use sqlx_0_9::postgres::{PgPool, PgPoolOptions};

/// The sqlx error inside a SeaORM error, as the README shows it.
fn sqlx_error(error: &DbErr) -> Option<&sqlx_0_9::Error> {
    match error {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

async fn select_one(db: &DatabaseConnection) -> Result<i32, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT 1 AS one",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(String::from("no row")))?;
    row.try_get("", "one")
}

async fn connect(pool: &Pool) -> (PgPool, DatabaseConnection) {
    let pg = adapter::pg_pool(
        pool,
        PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(20)),
    )
    .await
    .unwrap();
    let db = SqlxPostgresConnector::from_sqlx_postgres_pool(pg.clone());
    (pg, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaorm_survives_a_rotation_a_suspend_and_a_revoked_token() {
    // No process environment variable changes while sqlx reads them.
    let _env = crate::sqlx_break::env_unchanged();
    let lakebase = LocalLakebase::start().await.unwrap();
    let pool = crate::support::fast_rotation(&lakebase).build().unwrap();
    let (pg, db) = connect(&pool).await;

    // Rotation under load, on SeaORM's own calls.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for _ in 0..300 {
                match select_one(&db).await {
                    Ok(1) => {}
                    other => errors.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            errors
        }));
    }
    for task in tasks {
        let errors = task.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }
    assert!(lakebase.workspace().minted().len() >= 3);
    assert_eq!(pool.token_cache().stats().forced_refreshes, 0);

    // A suspend, met through `retry_with`.
    lakebase
        .emulator()
        .set_wake_delay(Duration::from_millis(300));
    lakebase.emulator().set_refusals_while_waking(2);
    lakebase.suspend();
    for _ in 0..4 {
        let one = adapter::retry_with(&pool, &pg, |_| select_one(&db), sqlx_error).await;
        assert_eq!(one, Ok(1));
    }

    pg.close().await;

    // A revoked token, replaced once (a pool of its own, whose token nothing refreshes
    // meanwhile).
    lakebase
        .workspace()
        .set_token_lifetime(Duration::from_secs(3600));
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    drop(pool.get().await.unwrap());
    lakebase.workspace().revoke_minted();
    let (pg, db) = connect(&pool).await;
    let one = adapter::retry_with(&pool, &pg, |_| select_one(&db), sqlx_error).await;
    assert_eq!(one, Ok(1));
    assert_eq!(pool.stats().auth_refreshes, 1);
    assert_eq!(pool.token_cache().stats().forced_refreshes, 1);
    pg.close().await;
}
