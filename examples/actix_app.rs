//! A small todo service on Actix Web, with the pool as app data.
//!
//! ```text
//! cargo run --example actix_app
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

use actix_web::{App, HttpResponse, HttpServer, web};
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
pub fn routes(config: &mut web::ServiceConfig) {
    let _ = config
        .route("/todos", web::get().to(list))
        .route("/todos", web::post().to(create))
        .route("/todos/{id}", web::get().to(fetch));
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

async fn create(conn: Connection, todo: web::Json<NewTodo>) -> Result<HttpResponse, HttpError> {
    let row = conn
        .query_one(
            "INSERT INTO todos (title) VALUES ($1) RETURNING id, title, done",
            &[&todo.title],
        )
        .await?;
    Ok(HttpResponse::Created().json(Todo::from(row)))
}

/// A read that may lag a moment behind the writes: on a read replica when the pool has
/// them (`read_replicas`), on the read-write endpoint otherwise. To read a write of your
/// own, take its `write_position()` and use `Pool::get_read_at`.
async fn list(conn: ReadConnection) -> Result<HttpResponse, HttpError> {
    let rows = conn
        .query("SELECT id, title, done FROM todos ORDER BY id", &[])
        .await?;
    let todos: Vec<Todo> = rows.into_iter().map(Todo::from).collect();
    Ok(HttpResponse::Ok().json(todos))
}

async fn fetch(conn: Connection, id: web::Path<i64>) -> Result<HttpResponse, HttpError> {
    let row = conn
        .query_opt(
            "SELECT id, title, done FROM todos WHERE id = $1",
            &[&id.into_inner()],
        )
        .await?;
    Ok(match row {
        Some(row) => HttpResponse::Ok().json(Todo::from(row)),
        None => HttpResponse::NotFound().body("no such todo"),
    })
}

fn main() -> Result<(), lakebase_pool::BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // Actix runs its own Tokio runtimes; the pool is built inside one.
    actix_web::rt::System::new().block_on(serve())
}

async fn serve() -> Result<(), lakebase_pool::BoxError> {
    let env = Environment::from_process();
    // The database the environment names, or a local Lakebase (kept alive by `_local`).
    let (builder, _local) = LocalLakebase::unless_configured(&env).await?;
    let pool = builder.build()?;
    migrate(&pool).await?;

    let port: u16 = env.get("PORT").unwrap_or("3000").parse()?;
    let data = web::Data::new(pool.clone());
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
        .bind(("127.0.0.1", port))?;
    println!("listening on http://{}", server.addrs()[0]);
    // Stops on Ctrl-C (Actix's own signal handling), after in-flight requests finish.
    server.run().await?;
    let report = pool.shutdown(Duration::from_secs(10)).await;
    println!("pool shut down: {report:?}");
    Ok(())
}
