//! Shared helpers: a cluster with an `app` role, log capture, small queries.

use std::io;
use std::sync::{Arc, Mutex};

use lakebase_pool::testing::LocalPostgres;
use lakebase_pool::{Connection, PoolBuilder, Secret};
use tracing::subscriber::DefaultGuard;

pub const ROLE: &str = "app";
pub const INITIAL_PASSWORD: &str = "initial-password";

/// A fresh cluster with a login role `app` (password [`INITIAL_PASSWORD`]) and database `app`.
pub async fn cluster() -> LocalPostgres {
    let pg = LocalPostgres::start().expect("start a local PostgreSQL");
    pg.create_role(ROLE, &Secret::new(INITIAL_PASSWORD))
        .await
        .expect("create the app role");
    pg
}

/// A fresh cluster laid out like a Lakebase project for `user`: a login role of that name
/// owning the database `databricks_postgres` (its password is never used: tokens are).
pub async fn lakebase_cluster(user: &str) -> LocalPostgres {
    let pg = LocalPostgres::start().expect("start a local PostgreSQL");
    pg.create_role(user, &Secret::new("replaced-by-tokens"))
        .await
        .expect("create the role");
    pg.create_database("databricks_postgres", user)
        .await
        .expect("create databricks_postgres");
    pg
}

/// A pool builder for the `app` role with its initial (fixed) password.
pub fn app_pool(pg: &LocalPostgres) -> PoolBuilder {
    pg.pool_builder(ROLE).password(INITIAL_PASSWORD)
}

/// The server process id behind a connection: which physical connection this is.
pub async fn backend_pid(conn: &Connection) -> i32 {
    conn.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("query the backend pid")
        .get(0)
}

/// Everything logged (at TRACE and above) on this thread while the guard lives. Tests run on
/// tokio's current-thread runtime, so spawned tasks log here too.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub fn install() -> (LogCapture, DefaultGuard) {
        let capture = LogCapture::default();
        let buffer = Arc::clone(&capture.0);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || CaptureWriter(Arc::clone(&buffer)))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}
