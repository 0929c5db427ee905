//! `LocalPostgres`: a throwaway PostgreSQL cluster on loopback, owned by the test.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::NoTls;

mod replication;
mod server;

use self::server::{Inner, find_bin_dir, run};
use super::{IssuedCertificate, RotatingPassword};
use lakebase_pool::{PoolBuilder, Secret};

/// How long a starting server may take before the harness gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// What the server logs once it takes connections; a standby says "read-only connections".
const READY_LINES: [&str; 2] = [
    "database system is ready to accept connections",
    "database system is ready to accept read-only connections",
];
const SUPERUSER: &str = "postgres";

/// Why the local cluster could not be set up or driven.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// `initdb` and `postgres` were not found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl) were not found in \
         $LAKEBASE_PG_BINDIR, $PATH or /usr/lib/postgresql/*/bin (install them: \
         `apt-get install -y postgresql` on Debian or Ubuntu, `brew install postgresql@17` on \
         macOS, or set LAKEBASE_PG_BINDIR to the directory that holds them)"
    )]
    BinariesNotFound,

    /// Running as root, and there is no `postgres` user to run the server as.
    #[error(
        "running as root, but there is no `postgres` user to run the server as (initdb and \
         postgres refuse to run as root; installing the postgresql package creates the user, \
         or run the tests as an ordinary user)"
    )]
    NoUnprivilegedUser,

    /// A command of the harness failed.
    #[error("`{command}` failed ({status}); its output:\n{output}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        output: String,
    },

    /// The server did not report being ready in time, or exited while starting.
    #[error(
        "the local PostgreSQL server did not start within {waited:?}; the end of its log:\n{log}"
    )]
    NotReady {
        /// How long the harness waited.
        waited: Duration,
        /// The last lines of the server log.
        log: String,
    },

    /// A file-system or process operation failed.
    #[error("could not {action}")]
    Io {
        /// What the harness was doing.
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// An administrative SQL statement failed.
    #[error("administrative SQL on the local server failed")]
    Sql(#[from] tokio_postgres::Error),

    /// A test certificate could not be generated.
    #[error("could not generate a test certificate: {0}")]
    Certificate(String),

    /// A name given to the harness is not valid for what it names.
    #[error("{0}")]
    InvalidName(String),
}

fn io_error(action: &'static str) -> impl FnOnce(io::Error) -> HarnessError {
    move |source| HarnessError::Io { action, source }
}

/// How [`LocalPostgres::stop`] shuts the server down (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopMode {
    /// Disconnect clients with `57P01` and shut down cleanly.
    Fast,
    /// Abort at once, as a crash would (recovery runs at the next start).
    Immediate,
}

/// A throwaway PostgreSQL cluster: created in a temporary directory, listening on a free
/// loopback port with password (SCRAM) authentication over TCP, stopped and deleted when the
/// last handle is dropped.
///
/// It works as root (as on CI machines): `initdb` and `postgres` then run as the `postgres`
/// system user. When the server binaries are missing, [`start`](Self::start) fails with
/// [`HarnessError::BinariesNotFound`], whose message says how to install them.
///
/// Cloning is cheap; clones drive the same server.
///
/// ```no_run
/// use lakebase_pool_testing::LocalPostgres;
/// use lakebase_pool::Secret;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pg = LocalPostgres::start()?;
/// pg.create_role("app", &Secret::new("app-password")).await?;
/// let pool = pg.pool_builder("app").password("app-password").build()?;
/// let conn = pool.get().await?;
/// conn.simple_query("SELECT 1").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LocalPostgres {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPostgres")
            .field("port", &self.inner.port)
            .field("dir", &self.inner.root.path())
            .finish()
    }
}

impl LocalPostgres {
    /// Creates and starts a cluster. Blocks for about a second (`initdb` plus start-up).
    ///
    /// # Errors
    ///
    /// [`HarnessError`] saying what is missing or what failed.
    ///
    /// ```no_run
    /// let pg = lakebase_pool_testing::LocalPostgres::start()?;
    /// println!("listening on port {}", pg.port());
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_inner(None)
    }

    /// Like [`start`](Self::start), with TLS on (`ssl=on`) serving `certificate`. Plain TCP is
    /// still accepted too, so tests can show that clients never fall back to it.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    ///
    /// ```no_run
    /// use lakebase_pool_testing::{LocalPostgres, TestCa};
    /// let ca = TestCa::new("Test CA")?;
    /// let pg = LocalPostgres::start_with_tls(&ca.issue(&["db.test"])?)?;
    /// # let _ = pg;
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn start_with_tls(certificate: &IssuedCertificate) -> Result<Self, HarnessError> {
        Self::start_inner(Some(certificate))
    }

    fn start_inner(certificate: Option<&IssuedCertificate>) -> Result<Self, HarnessError> {
        let mut pg = Inner::new(find_bin_dir()?)?;
        pg.initdb()?;
        if let Some(certificate) = certificate {
            pg.install_certificate(certificate)?;
        }
        pg.launch()
    }

    /// Starts a hot standby of this server: a copy taken with `pg_basebackup -R` that streams
    /// and replays its WAL, on its own port, taking read-only sessions (the roles, databases
    /// and TLS settings are the primary's, copied). Replication lag is real; see
    /// [`pause_replay`](Self::pause_replay). Both are independent servers: either can be
    /// stopped and resumed.
    ///
    /// # Errors
    ///
    /// [`HarnessError::CommandFailed`] when the copy fails (the primary must be running);
    /// [`HarnessError::NotReady`] when the standby does not come up.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let standby = pg.start_standby()?;
    /// assert_ne!(standby.port(), pg.port());
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn start_standby(&self) -> Result<LocalPostgres, HarnessError> {
        self.copy_as_standby(None)
    }

    /// A copy of this server taken with `pg_basebackup -R`, started as its standby; with
    /// `name`, the standby reports it as its `application_name` (its `cluster_name`), the
    /// name `synchronous_standby_names` refers to.
    fn copy_as_standby(&self, name: Option<&str>) -> Result<LocalPostgres, HarnessError> {
        let mut standby = Inner::new(self.inner.bin_dir.clone())?;
        standby.tls = self.inner.tls;
        let mut command = standby.command("pg_basebackup");
        let _ = command
            .arg("-h")
            .arg(self.inner.socket_dir())
            .arg("-p")
            .arg(self.inner.port.to_string())
            .args(["-U", SUPERUSER, "-D"])
            .arg(standby.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run(command)?;
        if let Some(name) = name {
            use std::io::Write as _;
            let mut settings = std::fs::OpenOptions::new()
                .append(true)
                .open(standby.data_dir().join("postgresql.auto.conf"))
                .map_err(io_error("name the standby"))?;
            writeln!(settings, "cluster_name = '{name}'").map_err(io_error("name the standby"))?;
        }
        standby.launch()
    }

    /// Pauses WAL replay on a standby (`pg_wal_replay_pause()`): writes on the primary stop
    /// showing on it until [`resume_replay`](Self::resume_replay).
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`] when the server is down or is not a standby.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let standby = pg.start_standby()?;
    /// standby.pause_replay().await?;
    /// standby.resume_replay().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn pause_replay(&self) -> Result<(), HarnessError> {
        let _ = self
            .admin()
            .await?
            .execute("SELECT pg_wal_replay_pause()", &[])
            .await?;
        Ok(())
    }

    /// Resumes WAL replay after [`pause_replay`](Self::pause_replay).
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`] when the server is down or is not a standby.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// # let standby = pg.start_standby()?;
    /// standby.resume_replay().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn resume_replay(&self) -> Result<(), HarnessError> {
        let _ = self
            .admin()
            .await?
            .execute("SELECT pg_wal_replay_resume()", &[])
            .await?;
        Ok(())
    }

    /// The host to connect to: `127.0.0.1`.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// assert_eq!(pg.host(), "127.0.0.1");
    /// ```
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The TCP port the server listens on.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// println!("postgres://app@127.0.0.1:{}/app", pg.port());
    /// ```
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// The server's TCP address: `127.0.0.1` and [`port`](Self::port).
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// assert!(pg.addr().ip().is_loopback());
    /// ```
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, self.inner.port))
    }

    /// The Unix socket of the server (trust authentication), as a path.
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.inner
            .socket_dir()
            .join(format!(".s.PGSQL.{}", self.inner.port))
    }

    /// A [`PoolBuilder`] with host, port, user `role` and database `role` set (the database
    /// [`create_role`](Self::create_role) creates); add credentials and build.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let builder = pg.pool_builder("app").password("app-password");
    /// # let _ = builder;
    /// ```
    pub fn pool_builder(&self, role: &str) -> PoolBuilder {
        lakebase_pool::Pool::builder()
            .host(self.host())
            .port(self.port())
            .user(role)
            .dbname(role)
    }

    /// A provider that mints a random token for `role` on every call and makes it the role's
    /// real password (valid for `ttl`), so Postgres itself checks each token.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let tokens = pg.rotating_password("app", std::time::Duration::from_secs(3600));
    /// assert_eq!(tokens.mint_count(), 0);
    /// ```
    pub fn rotating_password(&self, role: &str, ttl: Duration) -> RotatingPassword {
        RotatingPassword::new(self.clone(), role, ttl)
    }

    /// A superuser session over the server's Unix socket (trust authentication).
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`] when the server is down.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let admin = pg.admin().await?;
    /// admin.batch_execute("CREATE EXTENSION IF NOT EXISTS pgcrypto").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn admin(&self) -> Result<tokio_postgres::Client, HarnessError> {
        self.admin_of("postgres").await
    }

    /// A superuser session on `database`, over the server's Unix socket.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`] when the server is down or the database does not exist.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let admin = pg.admin_of("databricks_postgres").await?;
    /// admin.batch_execute("CREATE TABLE seed (id int)").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn admin_of(&self, database: &str) -> Result<tokio_postgres::Client, HarnessError> {
        let mut config = tokio_postgres::Config::new();
        let _ = config
            .host_path(self.inner.socket_dir())
            .port(self.inner.port)
            .user(SUPERUSER)
            .dbname(database)
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config.connect(NoTls).await?;
        drop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        Ok(client)
    }

    /// Creates a login role with `password`, and a database of the same name that it owns.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`], e.g. when the role exists.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// pg.create_role("app", &lakebase_pool::Secret::new("pw")).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_role(&self, role: &str, password: &Secret) -> Result<(), HarnessError> {
        let admin = self.admin().await?;
        let ident = escape_identifier(role);
        admin
            .batch_execute(&format!(
                "CREATE ROLE {ident} LOGIN PASSWORD {}",
                escape_literal(password.expose())
            ))
            .await?;
        // CREATE DATABASE cannot share a multi-statement query (an implicit transaction).
        admin
            .batch_execute(&format!("CREATE DATABASE {ident} OWNER {ident}"))
            .await?;
        Ok(())
    }

    /// Creates login roles without a password or a database of their own, all in one
    /// statement: for many users (the emulator logs them in; no password is checked here).
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`], e.g. when one exists.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// pg.create_login_roles(&["alice@example.com", "bob@example.com"]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_login_roles(&self, roles: &[&str]) -> Result<(), HarnessError> {
        if roles.is_empty() {
            return Ok(());
        }
        let statements: String = roles
            .iter()
            .map(|role| format!("CREATE ROLE {} LOGIN;", escape_identifier(role)))
            .collect();
        self.admin().await?.batch_execute(&statements).await?;
        Ok(())
    }

    /// Creates a database owned by `owner` (e.g. `databricks_postgres`, the database a new
    /// Lakebase project has).
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`], e.g. when it exists.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// pg.create_database("databricks_postgres", "app").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_database(&self, name: &str, owner: &str) -> Result<(), HarnessError> {
        let admin = self.admin().await?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} OWNER {}",
                escape_identifier(name),
                escape_identifier(owner)
            ))
            .await?;
        Ok(())
    }

    /// Creates database `target` as a copy of `source` (`CREATE DATABASE ... TEMPLATE`), as a
    /// branch of it, owned by `source`'s owner. PostgreSQL copies only a database nobody is connected to, so idle
    /// sessions on `source` (pooled connections waiting for work) are ended first; their
    /// pools replace them. A session busy in a query makes it fail after a few tries.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`]: `target` exists, `source` does not (or has no row to read its
    /// owner from), or `source` stayed busy.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// pg.copy_database("app", "app_branch_1").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn copy_database(&self, source: &str, target: &str) -> Result<(), HarnessError> {
        let admin = self.admin().await?;
        // The copy belongs to the source's owner, as a branch does.
        let owner: String = admin
            .query_one(
                "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
                &[&source],
            )
            .await?
            .get(0);
        let statement = format!(
            "CREATE DATABASE {} TEMPLATE {} OWNER {}",
            escape_identifier(target),
            escape_identifier(source),
            escape_identifier(&owner)
        );
        let mut tries = 0;
        loop {
            match admin.batch_execute(&statement).await {
                Ok(()) => return Ok(()),
                Err(error)
                    if error.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                        && tries < 20 =>
                {
                    tries += 1;
                    let _ = admin
                        .execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE datname = $1 AND state = 'idle' AND pid <> pg_backend_pid()",
                            &[&source],
                        )
                        .await?;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Drops database `name`, ending its sessions (`WITH (FORCE)`); nothing if it is gone.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`] when the server is down.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// pg.drop_database("app_branch_1").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn drop_database(&self, name: &str) -> Result<(), HarnessError> {
        let admin = self.admin().await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                escape_identifier(name)
            ))
            .await?;
        Ok(())
    }

    /// Sets `role`'s password, optionally valid only until `valid_until`. Calls are
    /// serialised, so concurrent rotations do not collide.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`] when the server is down or the role does not exist.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// pg.set_password("app", &lakebase_pool::Secret::new("new-pw"), None).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_password(
        &self,
        role: &str,
        password: &Secret,
        valid_until: Option<SystemTime>,
    ) -> Result<(), HarnessError> {
        let _serialised = self.inner.role_changes.lock().await;
        let admin = self.admin().await?;
        let until = match valid_until {
            None => String::from("infinity"),
            Some(at) => {
                let epoch = at
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                let row = admin
                    .query_one("SELECT to_timestamp($1::float8)::text", &[&epoch])
                    .await?;
                row.get(0)
            }
        };
        admin
            .batch_execute(&format!(
                "ALTER ROLE {} PASSWORD {} VALID UNTIL {}",
                escape_identifier(role),
                escape_literal(password.expose()),
                escape_literal(&until),
            ))
            .await?;
        Ok(())
    }

    /// Terminates every session of `role` (as `pg_terminate_backend` does when an operator
    /// kills them) and returns how many there were.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Sql`] when the server is down.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool_testing::HarnessError> {
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let killed = pg.terminate_sessions("app").await?;
    /// println!("{killed} sessions terminated");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn terminate_sessions(&self, role: &str) -> Result<u64, HarnessError> {
        let admin = self.admin().await?;
        let row = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Stops the server; [`resume`](Self::resume) starts it again on the same port.
    ///
    /// # Errors
    ///
    /// [`HarnessError::CommandFailed`] when `pg_ctl stop` fails.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// pg.stop(lakebase_pool_testing::StopMode::Fast)?;
    /// pg.resume()?;
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn stop(&self, mode: StopMode) -> Result<(), HarnessError> {
        self.inner.stop(mode)
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port and data.
    ///
    /// # Errors
    ///
    /// [`HarnessError::NotReady`] when it does not come up.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// pg.stop(lakebase_pool_testing::StopMode::Immediate)?;
    /// pg.resume()?;
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn resume(&self) -> Result<(), HarnessError> {
        self.inner.spawn_server()
    }
}
