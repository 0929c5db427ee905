//! The pool of one endpoint and one identity: the primary's, each read replica's and each
//! user's. Every one is opened by [`EndpointPool::open`], from the settings they share
//! ([`EndpointParts`]), a target and a token cache.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool::Runtime;
use deadpool::managed::{self, PoolError, TimeoutType};

use super::Connection;
use super::ShutdownReport;
use super::lifecycle::{Lifecycle, Manager, spawn_housekeeper};
use super::stats::{ReadCounters, ReplicaStats, Stats};
use crate::Error;
use crate::RetryPolicy;
use crate::backoff::millis;
use crate::connect::{Connector, Target};
use crate::credentials::{CachePolicy, TokenCache};
use crate::metrics::{Counted, Counters};
use crate::resolve::Resolve;
use crate::target::TlsSettings;
use crate::telemetry::{PoolTelemetry, Telemetry};

/// What every endpoint pool opened from one builder shares: the primary's, each replica's,
/// each user's.
#[derive(Clone)]
pub(crate) struct EndpointParts {
    pub(crate) tls: TlsSettings,
    pub(crate) resolver: Option<Arc<dyn Resolve>>,
    pub(crate) retry: RetryPolicy,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) wait_timeout: Duration,
    pub(crate) cache_policy: CachePolicy,
    /// Keep the user name out of errors and logs (per-user pools: the role is an email).
    pub(crate) hide_user: bool,
    /// Where each endpoint pool's instruments are made.
    pub(crate) telemetry: Telemetry,
    /// The pool's name in its metrics; its replicas' and per-user pools' are made from it.
    pub(crate) pool_name: String,
}

/// The pool of one endpoint and one identity: its connector, deadpool pool, counters and
/// housekeeper.
pub(crate) struct EndpointPool {
    pool: managed::Pool<Manager, Connection>,
    counters: Arc<Counters>,
    /// Taken (and awaited) by [`shutdown`](Self::shutdown).
    housekeeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Checkouts waiting for a free connection.
    waiters: AtomicUsize,
}

impl EndpointPool {
    /// A pool of up to `max_size` connections to `target` with `tokens`, recording into
    /// `telemetry` (as do the token cache's mints unless another pool's already do).
    pub(crate) fn open(
        parts: &EndpointParts,
        target: Target,
        tokens: TokenCache,
        max_size: usize,
        telemetry: PoolTelemetry,
    ) -> Result<Self, Error> {
        tokens.attach_telemetry(&telemetry);
        let counters = Arc::new(Counters::new(telemetry));
        let connector = Connector::new(
            target,
            parts.tls.clone(),
            parts.resolver.clone(),
            tokens,
            parts.retry.clone(),
            Arc::clone(&counters),
            parts.hide_user,
        )?;
        let interval = parts.lifecycle.housekeeping_interval();
        // Opening a connection is bounded by the connector itself; deadpool's backstop is
        // the same bound.
        let create_bound = connector.bound();
        let manager = Manager::new(connector, parts.lifecycle.clone(), Arc::clone(&counters));
        let pool = managed::Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(parts.wait_timeout))
            .create_timeout(Some(create_bound))
            // No recycle timeout: recycling bounds its one await (the validation round trip)
            // itself, and a deadpool timeout would cost a timer on every checkout.
            .recycle_timeout(None)
            .build()
            .map_err(|e| {
                Error::invalid_because("build", "deadpool refused the pool settings", e)
            })?;
        let housekeeper = spawn_housekeeper(pool.weak(), interval);
        Ok(EndpointPool {
            pool,
            counters,
            housekeeper: Mutex::new(Some(housekeeper)),
            waiters: AtomicUsize::new(0),
        })
    }

    /// Checks out a connection (see [`Pool::get`](crate::Pool::get)), counted.
    pub(crate) async fn get(&self) -> Result<Connection, Error> {
        let started = Instant::now();
        let mut result = self.checkout().await.map_err(|e| self.checkout_error(e));
        let now = Instant::now();
        let timed_out = matches!(result, Err(Error::PoolTimeout { .. }));
        self.counters.checkout(
            now.saturating_duration_since(started),
            result.is_ok(),
            timed_out,
        );
        if let Ok(connection) = &mut result {
            connection.mark_checked_out(now);
        }
        result
    }

    /// Takes a free connection without waiting when there is one (deadpool's non-blocking
    /// path, which sets no timer), and only otherwise waits under the wait timeout. Waiting
    /// callers are served in order either way: the semaphore hands released permits to them
    /// before anyone else can take one, which is also why the non-blocking attempt is skipped
    /// while anyone waits (it would fail).
    async fn checkout(&self) -> Result<Connection, PoolError<Error>> {
        let mut timeouts = self.pool.timeouts();
        let wait = timeouts.wait;
        if self.waiters.load(Ordering::Relaxed) == 0 {
            timeouts.wait = Some(Duration::ZERO);
            match self.pool.timeout_get(&timeouts).await {
                Err(PoolError::Timeout(TimeoutType::Wait)) if wait != Some(Duration::ZERO) => {
                    timeouts.wait = wait;
                }
                result => return result,
            }
        }
        let _waiting = Counted::new(&self.waiters);
        self.pool.timeout_get(&timeouts).await
    }

    /// Opens up to `connections` connections at once (see
    /// [`Pool::warm_up`](crate::Pool::warm_up)).
    pub(crate) async fn warm_up(&self, connections: usize) -> Result<usize, Error> {
        let wanted = connections.min(self.pool.status().max_size);
        let mut timeouts = self.pool.timeouts();
        // Free slots only: a connection someone else holds is not worth waiting for.
        timeouts.wait = Some(Duration::ZERO);
        let started = Instant::now();
        let mut attempts = tokio::task::JoinSet::new();
        for _ in 0..wanted {
            let pool = self.pool.clone();
            // Each holds its connection until all are opened, so that each opens its own.
            let _ = attempts.spawn(async move { pool.timeout_get(&timeouts).await });
        }
        let mut first_error = None;
        let mut opened = Vec::with_capacity(wanted);
        while let Some(result) = attempts.join_next().await {
            match result.unwrap_or(Err(PoolError::Closed)) {
                Ok(connection) => opened.push(connection),
                // Everything else was in use: nothing to warm up.
                Err(PoolError::Timeout(TimeoutType::Wait)) => {}
                Err(error) => {
                    let error = self.checkout_error(error);
                    tracing::warn!(error = %crate::error::error_chain(&error), "warm-up: a connection could not be opened");
                    let _ = first_error.get_or_insert(error);
                }
            }
        }
        let warm = opened.len();
        drop(opened);
        tracing::info!(
            warm,
            wanted,
            elapsed_ms = millis(started.elapsed()),
            "warm-up done"
        );
        match first_error {
            Some(error) if warm == 0 => Err(error),
            _ => Ok(warm),
        }
    }

    /// Whether a login has worked since the pool was opened, and it is not closed.
    pub(crate) fn is_ready(&self) -> bool {
        !self.is_closed() && self.counters.connections_opened.load(Ordering::Relaxed) > 0
    }

    /// A snapshot of the pool's state and counters, with the read counters and replica
    /// stats of a pool that has replicas.
    pub(crate) fn stats(&self, reads: Option<(&ReadCounters, Vec<ReplicaStats>)>) -> Stats {
        Stats::new(
            &self.counters,
            self.pool.status(),
            self.token_cache().stats(),
            reads,
        )
    }

    /// Connections checked out now.
    pub(crate) fn in_use(&self) -> usize {
        let status = self.pool.status();
        status.size.saturating_sub(status.available)
    }

    /// The pool's counters (its instruments are registered through them).
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub(crate) fn token_cache(&self) -> &TokenCache {
        self.connector().tokens()
    }

    pub(crate) fn connector(&self) -> &Arc<Connector> {
        self.pool.manager().connector()
    }

    /// The lifetimes its connections get, for sessions opened outside it.
    pub(crate) fn lifetimes(&self) -> crate::connector::Lifetimes {
        self.pool.manager().lifecycle().lifetimes()
    }

    /// Closes the pool: idle connections now, checked-out ones when returned; the
    /// housekeeper ends.
    pub(crate) fn close(&self) {
        self.pool.close();
        let _ = self.take_housekeeper();
    }

    /// Retires every connection: idle ones now, in-use ones when they come back.
    pub(crate) fn retire_all(&self) {
        super::lifecycle::retire_all(&self.pool);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// Closes the pool, waits up to `grace` for the connections in use to be returned, then
    /// closes the rest under their users, and waits for the housekeeper to end.
    pub(crate) async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let started = tokio::time::Instant::now();
        self.close();
        // Closing resized the pool to zero, so idle connections are gone and `size` counts
        // the ones in use; each is dropped, not kept, when it is returned.
        let in_use = self.pool.status().size;
        let deadline = crate::backoff::deadline_after(started, grace);
        while self.pool.status().size > 0 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(SHUTDOWN_POLL.min(left)).await;
        }
        let waited = started.elapsed();
        let forced = self.pool.status().size;
        self.pool.manager().drivers().close_all().await;
        if forced > 0 {
            tracing::warn!(
                forced,
                grace_ms = millis(grace),
                "closed connections still in use at the end of the shutdown grace period"
            );
        }
        if let Some(housekeeper) = self.take_housekeeper() {
            // It was aborted; this waits until it has actually stopped.
            let _ = housekeeper.await;
        }
        tracing::info!(in_use, forced, waited_ms = millis(waited), "pool shut down");
        ShutdownReport {
            in_use,
            forced,
            waited,
        }
    }

    /// What the pool connects to, for errors and logs.
    pub(crate) fn target(&self) -> &str {
        self.connector().target()
    }

    fn take_housekeeper(&self) -> Option<tokio::task::JoinHandle<()>> {
        let task = self
            .housekeeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = &task {
            task.abort();
        }
        task
    }

    fn checkout_error(&self, error: PoolError<Error>) -> Error {
        match error {
            PoolError::Backend(error) => error,
            PoolError::Closed => Error::PoolClosed,
            PoolError::Timeout(TimeoutType::Create) => Error::ConnectTimeout {
                target: self.target().to_owned(),
                after: self.pool.timeouts().create.unwrap_or_default(),
            },
            PoolError::Timeout(TimeoutType::Wait | TimeoutType::Recycle) => Error::PoolTimeout {
                waited: self.pool.timeouts().wait.unwrap_or_default(),
                max_size: self.pool.status().max_size,
            },
            // The pool is always built with a runtime and without hooks.
            PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => Error::invalid(
                "build",
                "the pool was built without a runtime or with a hook (a bug in lakebase-pool)",
            ),
        }
    }
}

impl Drop for EndpointPool {
    fn drop(&mut self) {
        let _ = self.take_housekeeper();
    }
}

/// How often [`EndpointPool::shutdown`] looks whether every connection has been returned.
const SHUTDOWN_POLL: Duration = Duration::from_millis(5);
