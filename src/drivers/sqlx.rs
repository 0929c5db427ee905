// The sqlx adapter, one source for every supported sqlx version: `drivers/mod.rs` includes
// it in `sqlx_0_8` and `sqlx_0_9`, each with its own `sqlx` in scope. Examples name the
// 0.8 module; the 0.9 one is used the same way.

use std::future::Future;

use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use crate::backoff::deadline_after;
use crate::drivers::sqlx_support::{self, Failure, Login, LoginTls};
use crate::retry::ErrorClass;
use crate::telemetry::RetryCause;
use crate::{Error, Pool};

/// A `sqlx::PgPool` whose connections log in as `pool`'s do: its endpoint (looked up now if
/// it has not been), its user and database, a token fresh at each login, TLS verified with
/// the host name for SNI and the certificate, and its resolver hook or `hostaddr`; retired
/// after the pool's jittered lifetime or idle timeout.
///
/// `options` are sqlx's own (size, acquire timeout, `after_connect`, ...). The adapter sets
/// `before_acquire` (for the jittered lifetime: sqlx keeps one such hook, so one set on
/// `options` is replaced), `max_lifetime` and `idle_timeout`.
///
/// **Tokens.** sqlx logs in with the password its pool holds, so the adapter keeps one
/// there: a task hands the pool each token the pool's [`TokenCache`](crate::TokenCache)
/// gets, and asks the cache for the next one ahead of expiry. It holds a handle to the
/// `PgPool` and stops when the `PgPool` is closed or `pool` is closed (and then closes the
/// `PgPool`, so that a closed pool's adapter opens no more sessions, as the others do). Close
/// the `PgPool` when you are done with it: dropping every handle leaves the task running.
/// `pg.connect_options()` holds the current token, and sqlx's `Debug` of those options
/// prints it: do not log them (the `PgPool`'s own `Debug` does not show them). A token
/// too close to expiry while no new one can be minted is withdrawn: logins are then refused
/// rather than sent an expired token.
///
/// **The environment.** sqlx reads `PGDATABASE`, `PGAPPNAME`, `PGSSLROOTCERT`, `PGOPTIONS`
/// and `PGHOSTADDR` into every connection itself; the adapter sets or overrides each so that
/// only the pool's settings count, and refuses a `PGOPTIONS` that differs from the pool's
/// (sqlx cannot be told to drop it). `PGSSLCERT` and `PGSSLKEY` (a client certificate) are
/// left to sqlx.
///
/// **Resolver hook, `hostaddr`.** sqlx has neither; it resolves the host name itself. With
/// either set, the adapter gives sqlx a Unix socket in a private directory, and a relay of
/// its own carries each session to the address the pool would dial. TLS (with the name for
/// SNI and the certificate) stays end to end between sqlx and the server. Unix only;
/// elsewhere, refused.
///
/// **Cold starts and a refused token.** sqlx retries a failed connect only on a refused
/// socket, `53300` and `57P03`; the Lakebase proxy's wake-up texts (`XX000`) and its refused
/// login are not among them and reach the caller at once. Run units of work through
/// [`retry`] to have them retried by the pool's rules.
///
/// # Errors
///
/// Those of a failed endpoint look-up and token mint ([`Error::Credentials`],
/// [`Error::ConnectTimeout`], a workspace error); [`Error::PoolClosed`]; and
/// [`Error::InvalidConfig`] for what sqlx cannot do the pool's way: several hosts,
/// `verify-ca` (sqlx's also trusts the public roots), start-up options not of the form
/// `-c name=value`, `CachePolicy::per_connect`, or a relay that cannot listen.
///
/// ```no_run
/// use lakebase_pool::Pool;
/// use lakebase_pool::drivers::sqlx_0_8::pg_pool;
/// use sqlx::postgres::PgPoolOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::from_env()?;
/// let pg = pg_pool(&pool, PgPoolOptions::new().max_connections(16)).await?;
/// let (one,): (i32,) = sqlx::query_as("SELECT 1").fetch_one(&pg).await?;
/// assert_eq!(one, 1);
/// pg.close().await;
/// # Ok(())
/// # }
/// ```
pub async fn pg_pool(pool: &Pool, options: PgPoolOptions) -> Result<PgPool, Error> {
    let connector = pool.connector();
    if connector.is_closed() {
        return Err(Error::PoolClosed);
    }
    let login = sqlx_support::plan(pool.connect_path()).await?;
    let token = connector.token_cache().token().await?;
    let base = connect_options(&login);
    let lifetimes = connector.lifetimes();
    // The relay lives as long as the pool's options, which hold this hook.
    #[cfg(unix)]
    let relay = login.relay.clone();
    let options = options
        // sqlx's own bound: the longest a drawn lifetime can be.
        .max_lifetime(lifetimes.max_lifetime)
        .idle_timeout(lifetimes.idle_timeout)
        .before_acquire(move |_, metadata: PoolConnectionMetadata| {
            #[cfg(unix)]
            let _ = &relay;
            let keep = !sqlx_support::retire(&lifetimes, metadata.age, metadata.idle_for);
            Box::pin(async move { Ok(keep) })
        });
    let pg = options.connect_lazy_with(base.clone().password(token.secret().expose()));
    let holder = pg.clone();
    let closed = pg.close_event();
    drop(tokio::spawn(async move {
        let pushed = holder.clone();
        sqlx_support::keep_token_fresh(
            connector,
            move |token| {
                pushed.set_connect_options(match token {
                    Some(token) => base.clone().password(token.secret().expose()),
                    // No password: sqlx sends an empty one, which is refused.
                    None => base.clone(),
                });
            },
            closed,
        )
        .await;
        // Closed by the user (nothing to do), or `pool` closed: close this one too. `close`
        // marks the pool closed at once; waiting for its connections is not needed here.
        drop(holder.close());
    }));
    Ok(pg)
}

/// Runs `work` on `pg` and runs it again, by `pool`'s retry rules, when it fails before a
/// statement reached the server: a cold start (the Lakebase proxy's wake-up texts, `57P03`),
/// a full server (`53300`), a refused socket, no connection within sqlx's acquire timeout;
/// and once, after one forced token refresh, when the login was refused. Retries wait with
/// backoff and end at the pool's retry deadline; the last error is returned.
///
/// Nothing else is retried: not a session ended mid-statement (`57P01`, a reset), not a
/// serialization failure, not a statement's own error. Those may come after a statement ran,
/// and running it again could do it twice. `work` runs again from its start, so give it one
/// unit of work: one statement on `&PgPool`, or one transaction (`pg.begin()` ...
/// `commit()`). A `work` that ran a statement and then failed to get a connection for the
/// next would run the first again.
///
/// Retries are counted in `pool`'s [`stats`](crate::Pool::stats) (`connect_retries_*`,
/// `auth_refreshes`).
///
/// ```no_run
/// use lakebase_pool::drivers::sqlx_0_8::retry;
///
/// # async fn demo(pool: lakebase_pool::Pool, pg: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// // The first query after a scale-to-zero suspend waits for the compute instead of failing.
/// let (orders,): (i64,) = retry(&pool, &pg, |pg| {
///     sqlx::query_as("SELECT count(*) FROM orders").fetch_one(pg)
/// })
/// .await?;
/// println!("{orders} orders");
/// # Ok(())
/// # }
/// ```
pub async fn retry<'a, T, F, Fut>(pool: &Pool, pg: &'a PgPool, work: F) -> Result<T, sqlx::Error>
where
    F: FnMut(&'a PgPool) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    retry_with(pool, pg, work, |error| Some(error)).await
}

/// [`retry`] for work whose error is not `sqlx::Error` but may carry one (SeaORM's `DbErr`):
/// `sqlx_error` finds it; an error without one is not retried.
///
/// ```no_run
/// use lakebase_pool::drivers::sqlx_0_9::retry_with;
/// use sea_orm::{ConnectionTrait, DbErr, RuntimeErr};
///
/// /// The sqlx error inside a SeaORM error, if there is one.
/// fn sqlx_error(error: &DbErr) -> Option<&sqlx_0_9::Error> {
///     match error {
///         DbErr::Conn(RuntimeErr::SqlxError(e))
///         | DbErr::Exec(RuntimeErr::SqlxError(e))
///         | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
///         _ => None,
///     }
/// }
///
/// # async fn demo(pool: lakebase_pool::Pool, pg: sqlx_0_9::PgPool) -> Result<(), DbErr> {
/// let db = sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pg.clone());
/// retry_with(&pool, &pg, |_| db.execute_unprepared("UPDATE jobs SET seen = now()"), sqlx_error)
///     .await?;
/// # Ok(())
/// # }
/// ```
pub async fn retry_with<'a, T, E, F, Fut>(
    pool: &Pool,
    pg: &'a PgPool,
    mut work: F,
    sqlx_error: impl Fn(&E) -> Option<&sqlx::Error>,
) -> Result<T, E>
where
    F: FnMut(&'a PgPool) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let connect = pool.connect_path();
    let tokens = connect.tokens();
    let policy = connect.retry_policy();
    let deadline = deadline_after(tokio::time::Instant::now(), policy.total_deadline());
    let mut refreshed = false;
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        // The token the work logs in with, if it must: the one to replace if it is refused.
        let used = tokens.subscribe().latest();
        let error = match work(pg).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let class = sqlx_error(&error).map_or(ErrorClass::Fatal, class_of);
        match class {
            ErrorClass::Auth if !refreshed => {
                refreshed = true;
                connect.counters().retry(RetryCause::AuthRefresh);
                let fresh = match &used {
                    Some(used) => tokens.force_refresh(used).await,
                    None => tokens.token().await,
                };
                match fresh {
                    Ok(token) => {
                        let options = pg.connect_options().as_ref().clone();
                        pg.set_connect_options(options.password(token.secret().expose()));
                        tracing::info!("sqlx login rejected; minted a fresh token, retrying once");
                    }
                    Err(cause) => {
                        tracing::warn!(%cause, "sqlx login rejected, and no fresh token");
                        return Err(error);
                    }
                }
            }
            ErrorClass::Transient | ErrorClass::RateLimited => {
                let Some(delay) = policy.wait_before(attempts, class, deadline) else {
                    return Err(error);
                };
                connect.counters().retry(RetryCause::of(class));
                tracing::info!(
                    attempt = attempts,
                    delay_ms = crate::backoff::millis(delay),
                    cause = %error,
                    "sqlx work failed before a statement ran; retrying"
                );
                tokio::time::sleep(delay).await;
            }
            ErrorClass::Auth | ErrorClass::Fatal => return Err(error),
        }
    }
}

/// How [`retry`] treats `error`.
fn class_of(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code();
            sqlx_support::class_of(&Failure::Server {
                code: code.as_deref().unwrap_or_default(),
                message: db.message(),
            })
        }
        sqlx::Error::Io(io) => sqlx_support::class_of(&Failure::Io(io.kind())),
        sqlx::Error::PoolTimedOut => sqlx_support::class_of(&Failure::PoolTimedOut),
        _ => sqlx_support::class_of(&Failure::Other),
    }
}

/// sqlx's options for `login`, without the password. sqlx starts them from the process
/// environment (`PGDATABASE`, `PGAPPNAME`, `PGSSLROOTCERT`, ...): every setting the pool
/// has an opinion on is set here, so that none of those changes what the adapter does.
/// (`PGSSLCERT` and `PGSSLKEY`, a client certificate sqlx would present, are left to it.)
fn connect_options(login: &Login) -> PgConnectOptions {
    let mut options = PgConnectOptions::new_without_pgpass()
        .host(&login.host)
        .port(login.port)
        .username(&login.user)
        // Postgres's own default, as the pool's sessions have it.
        .database(login.database.as_deref().unwrap_or(&login.user))
        .application_name(login.application_name.as_deref().unwrap_or_default());
    if !login.options.is_empty() {
        options = options.options(login.options.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    if let Some(dir) = &login.socket_dir {
        options = options.socket(dir);
    }
    match &login.tls {
        LoginTls::Disable => options.ssl_mode(PgSslMode::Disable),
        LoginTls::AcceptAny => options.ssl_mode(PgSslMode::Require),
        // The pool's own CA certificates, or none (which also drops a `PGSSLROOTCERT` sqlx
        // read, that the pool does not trust), beside the webpki roots.
        LoginTls::VerifyFull { extra_roots_pem } => options
            .ssl_mode(PgSslMode::VerifyFull)
            .ssl_root_cert_from_pem(extra_roots_pem.clone().unwrap_or_default()),
    }
}
