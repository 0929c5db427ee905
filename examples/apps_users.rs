//! A Databricks App that reads the database as its signed-in users: notes behind row-level
//! security, so each user sees only their own, and an app-level route on the app's own
//! identity (its service principal).
//!
//! ```text
//! cargo run --example apps_users
//! ```
//!
//! Deployed as a Databricks App with user authorization, the Apps proxy forwards each user's
//! email and token, and the pools trust those headers because the Apps runtime sets
//! `DATABRICKS_APP_NAME`. Run anywhere else with `LAKEBASE_ENDPOINT` (or `PGHOST`) set, it
//! ignores forwarded headers and answers the per-user routes with 401. With neither set, it
//! starts a local Lakebase with two users, shows each of them writing and reading notes, and
//! serves the routes with forwarded headers trusted (the server listens on loopback only).
//! `PORT` sets the port (default 3000).
//!
//! Routes: `GET /notes` and `POST /notes` (text body) as the signed-in user, `GET /me`
//! (`current_user` as the user), `GET /stats` (every note, as the app).

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use lakebase_pool::integrations::{HttpError, UserConnection};
use lakebase_pool::users::{ForwardedHeaders, ForwardedUser, UserPools};
use lakebase_pool::{Connection, Environment, Pool};
use lakebase_pool_testing::LocalLakebase;

/// The routes. The state is the user pools; `Connection` extractors get the app's pool.
pub fn router(users: UserPools) -> Router {
    Router::new()
        .route("/notes", get(my_notes).post(add_note))
        .route("/me", get(me))
        .route("/stats", get(stats))
        .with_state(users)
}

/// The notes table: each row belongs to the role that wrote it, and a policy shows each
/// user only their own rows. The app owns the table, so its own routes see every row.
pub async fn migrate(app: &Pool) -> Result<(), HttpError> {
    app.get()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS notes (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 owner text NOT NULL DEFAULT current_user,
                 body text NOT NULL
             );
             ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
             DROP POLICY IF EXISTS own_notes ON notes;
             CREATE POLICY own_notes ON notes
                 USING (owner = current_user) WITH CHECK (owner = current_user);
             GRANT SELECT, INSERT ON notes TO PUBLIC;",
        )
        .await?;
    Ok(())
}

async fn my_notes(conn: UserConnection) -> Result<Json<Vec<String>>, HttpError> {
    let rows = conn
        .query("SELECT body FROM notes ORDER BY id", &[])
        .await?;
    Ok(Json(rows.iter().map(|row| row.get(0)).collect()))
}

async fn add_note(conn: UserConnection, body: String) -> Result<StatusCode, HttpError> {
    let _ = conn
        .execute("INSERT INTO notes (body) VALUES ($1)", &[&body])
        .await?;
    Ok(StatusCode::CREATED)
}

async fn me(conn: UserConnection) -> Result<String, HttpError> {
    Ok(conn
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0))
}

/// On the app's identity: how many notes there are, everyone's.
async fn stats(conn: Connection) -> Result<String, HttpError> {
    let row = conn.query_one("SELECT count(*) FROM notes", &[]).await?;
    Ok(row.get::<_, i64>(0).to_string())
}

#[tokio::main]
async fn main() -> Result<(), lakebase_pool::BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let env = Environment::from_process();
    let (builder, local) = LocalLakebase::unless_configured(&env).await?;
    // Behind the Apps proxy the default trusts the forwarded headers; the local demo trusts
    // them too, since only this machine can reach it.
    let trust = match local {
        Some(_) => ForwardedHeaders::Trusted,
        None => ForwardedHeaders::WhenInDatabricksApps,
    };
    let users = UserPools::builder(builder)
        .forwarded_headers(trust)
        .build()?;
    migrate(users.app_pool()).await?;

    let port = env.get("PORT").unwrap_or("3000");
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    if let Some(local) = &local {
        // Two signed-in users, as the Apps proxy would forward them; each writes a note and
        // reads back only their own. (Over HTTP the routes do the same with the proxy's
        // headers; `lakebase_pool_testing::apps_proxy_headers` makes them in tests.)
        let emails = ["alice@example.com", "bob@example.com"];
        let tokens = local.add_users(&emails).await?;
        for (email, token) in emails.iter().zip(tokens) {
            let conn = users.for_user(&ForwardedUser::new(*email, token)).await?;
            let _ = conn
                .execute(
                    "INSERT INTO notes (body) VALUES ($1)",
                    &[&format!("{email}'s note")],
                )
                .await?;
            let mine = conn.query("SELECT body FROM notes", &[]).await?;
            let bodies: Vec<String> = mine.iter().map(|row| row.get(0)).collect();
            println!("{email} sees {bodies:?}");
        }
        println!(
            "the app sees {} notes",
            users
                .app_pool()
                .get()
                .await?
                .query_one("SELECT count(*) FROM notes", &[])
                .await?
                .get::<_, i64>(0)
        );
    }
    axum::serve(listener, router(users.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    users.close();
    Ok(())
}
