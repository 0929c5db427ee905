//! A small todo service on Axum, with the pool in the router state.
//!
//! ```text
//! cargo run --example axum_app
//! curl -X POST localhost:3000/todos -H 'content-type: application/json' -d '{"title":"write docs"}'
//! curl localhost:3000/todos
//! curl localhost:3000/todos/1
//! ```
//!
//! With `LAKEBASE_ENDPOINT` (or `PGHOST`) set it uses that database, like
//! [`Pool::from_env`](lakebase_pool::Pool::from_env); otherwise a local Postgres behind the
//! Lakebase emulator ([`LocalLakebase`]). `PORT` sets the port (default 3000). Ctrl-C stops
//! the server, then the pool, gracefully.

use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use lakebase_pool::integrations::{HttpError, ReadConnection};
use lakebase_pool::{Connection, Environment, Pool};
use lakebase_pool_testing::LocalLakebase;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Todo {
    pub id: i64,
    pub title: String,
    pub done: bool,
}

#[derive(Debug, Deserialize)]
pub struct NewTodo {
    pub title: String,
}

impl From<Row> for Todo {
    fn from(row: Row) -> Self {
        Todo {
            id: row.get("id"),
            title: row.get("title"),
            done: row.get("done"),
        }
    }
}

/// The service's routes; every handler takes a pooled connection as an extractor.
pub fn router(pool: Pool) -> Router {
    Router::new()
        .route("/todos", get(list).post(create))
        .route("/todos/{id}", get(fetch))
        .with_state(pool)
}

/// Creates the table if it is missing.
pub async fn migrate(pool: &Pool) -> Result<(), HttpError> {
    pool.get()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS todos (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 title text NOT NULL,
                 done boolean NOT NULL DEFAULT false
             )",
        )
        .await?;
    Ok(())
}

async fn create(
    conn: Connection,
    Json(todo): Json<NewTodo>,
) -> Result<(StatusCode, Json<Todo>), HttpError> {
    let row = conn
        .query_one(
            "INSERT INTO todos (title) VALUES ($1) RETURNING id, title, done",
            &[&todo.title],
        )
        .await?;
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// A read that may lag a moment behind the writes: on a read replica when the pool has
/// them (`read_replicas`), on the read-write endpoint otherwise. To read a write of your
/// own, take its `write_position()` and use `Pool::get_read_at`.
async fn list(conn: ReadConnection) -> Result<Json<Vec<Todo>>, HttpError> {
    let rows = conn
        .query("SELECT id, title, done FROM todos ORDER BY id", &[])
        .await?;
    Ok(Json(rows.into_iter().map(Todo::from).collect()))
}

async fn fetch(conn: Connection, Path(id): Path<i64>) -> Result<Json<Todo>, TodoError> {
    let row = conn
        .query_opt("SELECT id, title, done FROM todos WHERE id = $1", &[&id])
        .await
        .map_err(HttpError::from)?;
    row.map(|row| Json(row.into())).ok_or(TodoError::NotFound)
}

/// A missing todo (404), or a database error.
pub enum TodoError {
    NotFound,
    Database(HttpError),
}

impl From<HttpError> for TodoError {
    fn from(error: HttpError) -> Self {
        TodoError::Database(error)
    }
}

impl axum::response::IntoResponse for TodoError {
    fn into_response(self) -> axum::response::Response {
        match self {
            TodoError::NotFound => (StatusCode::NOT_FOUND, "no such todo").into_response(),
            TodoError::Database(error) => error.into_response(),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), lakebase_pool::BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let env = Environment::from_process();
    // The database the environment names, or a local Lakebase (kept alive by `_local`).
    let (builder, _local) = LocalLakebase::unless_configured(&env).await?;
    let pool = builder.build()?;
    migrate(&pool).await?;

    let port = env.get("PORT").unwrap_or("3000");
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(pool.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let report = pool.shutdown(Duration::from_secs(10)).await;
    println!("pool shut down: {report:?}");
    Ok(())
}
