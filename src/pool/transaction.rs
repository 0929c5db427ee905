//! Running a unit of work in a transaction, again after transient failures.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deadpool_postgres::ClientWrapper;
use tokio::time::Instant;
use tokio_postgres::error::{Severity, SqlState};

use super::pooled::PooledClient;
use super::{Connection, Pool};
use crate::backoff::deadline_after;
use crate::backoff::millis;
use crate::error::error_chain;
use crate::retry::{ErrorClass, classify_in_transaction};
use crate::{BoxError, Error, StatementTimedOut};

/// The connection a [`Pool::retry_transaction`] unit of work runs its statements on, inside
/// an open transaction. It dereferences to deadpool-postgres's [`ClientWrapper`] (and so to
/// [`tokio_postgres::Client`]): `query`, `execute`, `prepare_cached` and the rest work as
/// usual.
///
/// Do not `COMMIT` or `ROLLBACK` through it, and do not keep it after the work is done:
/// the pool commits when the work returns `Ok`, and rolls back when it returns `Err`.
///
/// ```no_run
/// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
/// let count: i64 = pool
///     .retry_transaction(|tx| async move {
///         let row = tx.query_one("SELECT count(*) FROM jobs", &[]).await?;
///         Ok(row.get(0))
///     })
///     .await?;
/// # let _ = count;
/// # Ok(())
/// # }
/// ```
pub struct TransactionHandle {
    conn: Arc<Connection>,
}

impl Deref for TransactionHandle {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        &self.conn
    }
}

impl fmt::Debug for TransactionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionHandle")
            .field("conn", &self.conn)
            .finish()
    }
}

/// How one attempt ended, when it did not succeed.
enum Failure {
    /// Failed before `COMMIT` was sent, or `COMMIT` was answered with an error: the
    /// transaction was not applied. Carries how to treat the error.
    RolledBack(BoxError, ErrorClass),
    /// The connection failed, or went silent, with `COMMIT` in flight.
    CommitUnknown(BoxError),
}

impl Failure {
    /// A rolled-back attempt on `pooled`. A write refused as read-only (`25006`) by a server
    /// that reports itself read-only is a failover's (the session is retired on its return,
    /// and the next attempt reaches the new primary): transient. Refused by a server that
    /// takes writes, it is the work's own read-only transaction: fatal, at once.
    fn rolled_back(error: tokio_postgres::Error, pooled: &PooledClient) -> Self {
        let class = if error.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
            && pooled.activity.server_read_only()
        {
            ErrorClass::Transient
        } else {
            classify_in_transaction(&error)
        };
        Failure::RolledBack(Box::new(error), class)
    }
}

/// While a transaction may be open on its connection: if the attempt ends without clearing
/// the mark (the caller's future was dropped, or `BEGIN`, `COMMIT` or `ROLLBACK` failed or
/// stalled), the session is closed at once, so the server rolls back and releases the
/// transaction's locks now rather than when the connection is next looked at.
struct CloseIfStillOpen<'a>(&'a PooledClient);

impl Drop for CloseIfStillOpen<'_> {
    fn drop(&mut self) {
        // With a statement in flight, the connection's own drop cancels it first, then
        // closes the session (closing alone would leave the statement running).
        if self.0.in_transaction.load(Ordering::Relaxed) && !self.0.activity.in_flight() {
            self.0.driver.abort();
        }
    }
}

impl Pool {
    /// Runs `work` in a transaction on a pooled connection and commits it; when the attempt
    /// fails with a transient error before the commit could have happened, runs it again on
    /// another connection, with backoff, until the retry deadline
    /// ([`RetryPolicy::deadline`](crate::RetryPolicy::deadline), 40 s by default).
    ///
    /// This is the way to make a unit of work survive a compute suspend or a server restart
    /// in the middle of it. Retried: the connection closed or reset, the server shutting down
    /// or restarting (`57P01`, `57P02`, `57P03`, `08xxx`), the Lakebase proxy's wake-up
    /// errors, serialization failures (`40001`) and deadlocks (`40P01`); see
    /// [`classify_in_transaction`](crate::retry::classify_in_transaction). Everything else
    /// ends at once with [`Error::Transaction`].
    ///
    /// **Never retried once a commit may have happened:** if the connection fails while
    /// `COMMIT` is in flight, the outcome is unknown and the result is
    /// [`Error::CommitOutcomeUnknown`]. A `COMMIT` the server answered with an error was not
    /// applied, and is retried like any other statement when the error is transient.
    ///
    /// `work` may run several times, so it must not have effects outside the database that
    /// cannot be repeated. Propagate database errors with `?`: an error that is swallowed
    /// leaves the transaction aborted, and its `COMMIT` then silently rolls back. Errors of
    /// your own can travel inside `Ok` (for example `Ok(Err(MyError))`), which commits.
    ///
    /// If the returned future is dropped midway (a cancelled request, a timeout), the
    /// connection is closed instead of going back to the pool, which rolls the transaction
    /// back on the server.
    ///
    /// # Errors
    ///
    /// [`Error::Transaction`] with the last attempt's error, [`Error::CommitOutcomeUnknown`],
    /// or any error of [`get`](Self::get) (a checkout already retries cold starts itself).
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let (from, to, amount) = (1_i64, 2_i64, 100_i64);
    /// pool.retry_transaction(|tx| async move {
    ///     tx.execute("UPDATE accounts SET balance = balance - $2 WHERE id = $1", &[&from, &amount])
    ///         .await?;
    ///     tx.execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1", &[&to, &amount])
    ///         .await?;
    ///     Ok(())
    /// })
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    // `work` takes an owned handle, not a `&Transaction`: a closure over a borrowed
    // transaction needs a higher-ranked bound, and rustc then cannot prove the caller's future
    // `Send` (as Axum and `tokio::spawn` require) when the closure borrows anything.
    pub async fn retry_transaction<T, F, Fut>(&self, work: F) -> Result<T, Error>
    where
        F: FnMut(TransactionHandle) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        self.run_transaction(Access::ReadWrite, work).await
    }

    /// [`retry_transaction`](Self::retry_transaction) for a read-only unit of work, on a
    /// read replica ([`get_read`](Self::get_read), with its fallback): the transaction is
    /// `BEGIN READ ONLY`, and runs again on a fresh connection after transient failures
    /// (a replica restarting or being suspended, or a query canceled by a conflict with
    /// replay, `40001`).
    ///
    /// A write in it fails at once, without retries, with [`Error::ReadOnly`] (SQLSTATE
    /// `25006`), on a replica and on the read-write endpoint alike.
    ///
    /// # Errors
    ///
    /// As for [`retry_transaction`](Self::retry_transaction), plus [`Error::ReadOnly`] and
    /// those of [`get_read`](Self::get_read).
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let (orders, revenue) = pool
    ///     .retry_read_transaction(|tx| async move {
    ///         let orders: i64 = tx.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
    ///         let revenue: i64 = tx.query_one("SELECT coalesce(sum(total), 0)::int8 FROM orders", &[]).await?.get(0);
    ///         Ok((orders, revenue))
    ///     })
    ///     .await?;
    /// # let _ = (orders, revenue);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn retry_read_transaction<T, F, Fut>(&self, work: F) -> Result<T, Error>
    where
        F: FnMut(TransactionHandle) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        self.run_transaction(Access::ReadOnly, work).await
    }

    async fn run_transaction<T, F, Fut>(&self, access: Access, mut work: F) -> Result<T, Error>
    where
        F: FnMut(TransactionHandle) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let policy = self.connect_path().retry_policy();
        let started = Instant::now();
        let deadline = deadline_after(started, policy.total_deadline());
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let conn = Arc::new(match access {
                Access::ReadWrite => self.get().await?,
                Access::ReadOnly => self.get_read().await?,
            });
            let timeout = policy.command_timeout_value();
            let (error, class) = match attempt(&conn, &mut work, timeout, access.begin()).await {
                Ok(value) => return Ok(value),
                Err(Failure::CommitUnknown(source)) => {
                    tracing::warn!(
                        cause = %error_chain(&*source),
                        "connection failed during COMMIT; the outcome is unknown, not retrying"
                    );
                    return Err(Error::CommitOutcomeUnknown { source });
                }
                Err(Failure::RolledBack(error, class)) => (error, class),
            };
            let error = match access {
                Access::ReadWrite => error,
                // A write refused by a replica: retrying would fail the same way.
                Access::ReadOnly => match error.downcast::<tokio_postgres::Error>() {
                    Ok(source) if source.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {
                        let target = deadpool::managed::Object::pool(conn.pooled()).map_or_else(
                            || String::from("the replica"),
                            |pool| pool.manager().connector().target().to_owned(),
                        );
                        return Err(Error::ReadOnly {
                            target,
                            source: *source,
                        });
                    }
                    Ok(source) => source,
                    Err(other) => other,
                },
            };
            drop(conn);
            let wait = match class {
                ErrorClass::Fatal => None,
                class => policy.wait_before(attempts, class, deadline),
            };
            let Some(delay) = wait else {
                return Err(Error::Transaction {
                    attempts,
                    source: error,
                    transient: class != ErrorClass::Fatal,
                });
            };
            tracing::info!(
                attempt = attempts,
                delay_ms = millis(delay),
                cause = %error_chain(&*error),
                "transaction failed with a transient error; running it again"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// Whether a unit of work may write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// On the read-write endpoint.
    ReadWrite,
    /// On a read replica, in a `READ ONLY` transaction.
    ReadOnly,
}

impl Access {
    fn begin(self) -> &'static str {
        match self {
            Access::ReadWrite => "BEGIN",
            Access::ReadOnly => "BEGIN READ ONLY",
        }
    }
}

/// One run of `work` between `BEGIN` and `COMMIT`, each of the pool's own statements under
/// `command_timeout`.
async fn attempt<T, F, Fut>(
    conn: &Arc<Connection>,
    work: &mut F,
    command_timeout: Duration,
    begin: &'static str,
) -> Result<T, Failure>
where
    F: FnMut(TransactionHandle) -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let pooled: &PooledClient = conn.pooled();
    let open = &pooled.in_transaction;
    open.store(true, Ordering::Relaxed);
    let _close = CloseIfStillOpen(pooled);
    let bounded = |statement: &'static str| async move {
        tokio::time::timeout(command_timeout, conn.batch_execute(statement))
            .await
            .map_err(|_| StatementTimedOut::new(statement, command_timeout))
    };
    match bounded(begin).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(Failure::rolled_back(error, pooled)),
        // Like a lost connection: the session is closed, and the work may run again.
        Err(timed_out) => {
            return Err(Failure::RolledBack(
                Box::new(timed_out),
                ErrorClass::Transient,
            ));
        }
    }
    let handle = TransactionHandle {
        conn: Arc::clone(conn),
    };
    let value = match work(handle).await {
        Ok(value) => value,
        Err(error) => {
            // If the rollback fails or stalls, the mark stays set and the session is closed,
            // which rolls back on the server just as well.
            if let Ok(Ok(())) = bounded("ROLLBACK").await {
                open.store(false, Ordering::Relaxed);
            }
            return Err(Failure::rolled_back(error, pooled));
        }
    };
    match bounded("COMMIT").await {
        Ok(Ok(())) => {
            open.store(false, Ordering::Relaxed);
            Ok(value)
        }
        // The server answered COMMIT with an ERROR: it rolled back and the session goes on.
        Ok(Err(error)) if answered_with_error(&error) => {
            open.store(false, Ordering::Relaxed);
            Err(Failure::rolled_back(error, pooled))
        }
        // A FATAL (the session ended) or no answer at all: the outcome is unknown.
        Ok(Err(error)) => Err(Failure::CommitUnknown(Box::new(error))),
        Err(timed_out) => Err(Failure::CommitUnknown(Box::new(timed_out))),
    }
}

fn answered_with_error(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.parsed_severity() == Some(Severity::Error))
}
