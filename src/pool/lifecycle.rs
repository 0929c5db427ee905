//! When a connection is retired: max lifetime with jitter, idle timeout, validation; and the
//! deadpool manager and housekeeper that apply those rules.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;

use super::pooled::PooledClient;
use crate::Error;
use crate::activity::{Activity, Driven};
use crate::connect::{Connector, Driver, Opened};
use crate::error::error_chain;
use crate::metrics::{Counters, RetireReason};
use crate::session::CancelRequest;

/// The rules that decide when a connection is closed.
#[derive(Clone, Debug)]
pub(crate) struct Lifecycle {
    pub(crate) max_lifetime: Duration,
    /// Fraction of the max lifetime by which each connection's lifetime is shortened at most.
    pub(crate) jitter: f64,
    pub(crate) idle_timeout: Duration,
    pub(crate) validate_after_idle: Duration,
    /// The pool serves reads only (a replica's): a write refused as read-only there is the
    /// caller's mistake, not a failover, and does not retire the connection.
    pub(crate) reads_only: bool,
}

impl Lifecycle {
    /// When a connection created at `created` must be retired: the max lifetime shortened by
    /// a random fraction in `[0, jitter)`, chosen once per connection so that connections
    /// opened together do not all reconnect together. `None` means never.
    fn retire_at(&self, created: Instant) -> Option<Instant> {
        self.lifetimes().retire_at(created)
    }

    /// What a session opened outside the pool (`Connector`) is told of these rules.
    pub(crate) fn lifetimes(&self) -> crate::connector::Lifetimes {
        crate::connector::Lifetimes {
            max_lifetime: self.max_lifetime,
            jitter: self.jitter,
            idle_timeout: self.idle_timeout,
        }
    }

    /// Why `client` must be closed now, if it must.
    fn retire_reason(&self, client: &PooledClient, now: Instant) -> Option<RetireReason> {
        if client.client.is_closed() || client.lease.cancelled() {
            // (A cancel was sent on it, by a watcher of its return among others: whatever
            // that cancel is for, it is taken care of.)
            Some(RetireReason::Broken)
        } else if client.activity.in_flight() {
            // A statement written after its future was dropped: found running on a connection
            // back in the pool. `Manager::retire` cancels it.
            Some(RetireReason::Abandoned)
        } else if client.in_transaction.load(Ordering::Relaxed) {
            Some(RetireReason::Broken)
        } else if let Some(reason) = client.retire_on_return() {
            // A failover's read-only server, or `retire_all` since it opened.
            Some(reason)
        } else if client.retire_at.is_some_and(|at| now >= at) {
            Some(RetireReason::Lifetime)
        } else if now.saturating_duration_since(client.idle_since) >= self.idle_timeout {
            Some(RetireReason::Idle)
        } else {
            None
        }
    }

    /// How often the housekeeper looks for idle connections to retire: often enough to honour
    /// short lifetimes, rarely enough to cost nothing.
    pub(crate) fn housekeeping_interval(&self) -> Duration {
        self.lifetimes().housekeeping_interval()
    }
}

/// The deadpool manager: opens connections through the [`Connector`] and applies the
/// [`Lifecycle`] at every checkout.
#[derive(Debug)]
pub(crate) struct Manager {
    /// Shared with the pool's listeners, which open their sessions through it.
    connector: Arc<Connector>,
    lifecycle: Lifecycle,
    counters: Arc<Counters>,
    drivers: Drivers,
}

/// The tasks that drive the pool's connections, so that a shutdown can end the ones still
/// checked out when its grace period is over. (Each task also ends with its connection.)
#[derive(Debug, Default)]
pub(crate) struct Drivers {
    tasks: Mutex<Vec<DriverTask>>,
}

/// A connection's driver task, and what cancelling its statement takes.
struct DriverTask {
    task: tokio::task::AbortHandle,
    activity: Arc<Activity>,
    cancel: CancelRequest,
}

impl std::fmt::Debug for DriverTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverTask")
            .field("finished", &self.task.is_finished())
            .finish_non_exhaustive()
    }
}

impl Drivers {
    /// Spawns the task that drives `opened`'s connection and returns the pool's client for it,
    /// with the handle that ends the task.
    /// The client's wrapper gets a task of no consequence: deadpool-postgres aborts the
    /// task it is given when the client is dropped, and the real driver must outlive the
    /// client while a statement runs (tokio-postgres then ends the session once the
    /// statement's answer is in), so that a cancel sent for it still finds the session.
    /// Closing at once goes through the returned handle.
    fn spawn(
        &self,
        driver: Driver,
        client: tokio_postgres::Client,
        activity: &Arc<Activity>,
        cancel: CancelRequest,
    ) -> (ClientWrapper, tokio::task::AbortHandle) {
        let driven = Driven::new(driver, Arc::clone(activity));
        let task = tokio::spawn(async move {
            if let Err(error) = driven.await {
                tracing::debug!(error = %error_chain(&error), "connection ended with an error");
            }
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget finished tasks whenever the list has doubled, so it stays about pool-sized.
        if tasks.len() == tasks.capacity() {
            tasks.retain(|driver| !driver.task.is_finished());
        }
        let handle = task.abort_handle();
        tasks.push(DriverTask {
            task: handle.clone(),
            activity: Arc::clone(activity),
            cancel,
        });
        drop(task);
        (ClientWrapper::new(client, tokio::spawn(async {})), handle)
    }

    /// Ends every connection task still running, closing its socket; a statement still
    /// running on one is cancelled first (closing alone does not end it: the server notices
    /// only when it next writes), the cancels sent together, each within `CANCEL_TIMEOUT`.
    pub(crate) async fn close_all(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let mut cancels = tokio::task::JoinSet::new();
        for driver in &tasks {
            if !driver.task.is_finished() && driver.activity.in_flight() {
                let cancel = driver.cancel.clone();
                // Counted by `send`; a failure is the closing's business no further.
                let _ = cancels.spawn(async move { cancel.send().await.is_ok() });
            }
        }
        while cancels.join_next().await.is_some() {}
        tasks.iter().for_each(|driver| driver.task.abort());
    }
}

impl Manager {
    pub(crate) fn new(connector: Connector, lifecycle: Lifecycle, counters: Arc<Counters>) -> Self {
        Manager {
            connector: Arc::new(connector),
            lifecycle,
            counters,
            drivers: Drivers::default(),
        }
    }

    pub(crate) fn drivers(&self) -> &Drivers {
        &self.drivers
    }

    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    pub(crate) fn connector(&self) -> &Arc<Connector> {
        &self.connector
    }

    pub(crate) fn retire(&self, reason: RetireReason, client: &PooledClient) {
        self.counters.retired(reason);
        if reason == RetireReason::Abandoned {
            // Cancel first: dropping the client leaves the session open only until its
            // statement ends (its driver runs on), and that is what the cancel ends.
            super::cancel::cancel_then_close(client);
        }
        tracing::debug!(
            reason = reason.as_str(),
            age_s = client.created.elapsed().as_secs_f64(),
            "retiring connection"
        );
    }
}

impl managed::Manager for Manager {
    /// Boxed: deadpool moves the pooled object at every checkout and return (queue, object,
    /// connection), and a pointer moves for free where the whole object (twice the size of
    /// the client it holds) took a `memcpy` each time.
    type Type = Box<PooledClient>;
    type Error = Error;

    async fn create(&self) -> Result<Box<PooledClient>, Error> {
        // Boxed: opening a connection (discovery, token, retries, TLS) is a large state
        // machine, and unboxed it would be part of every checkout's future, copied in full
        // (about 19 KB) each time a caller's future moves, even when no connect happens.
        let started = Instant::now();
        // A `retire_all` while the session logs in: it is the old generation's (logged in,
        // say, with a token just replaced), and a checkout after the call must get a session
        // opened after it. One more login, no more (the next call would do the same).
        let mut generation = self.counters.generation.load(Ordering::Acquire);
        let mut opened = Box::pin(self.connector.connect()).await?;
        let now_at = self.counters.generation.load(Ordering::Acquire);
        if now_at != generation {
            drop(opened);
            generation = now_at;
            opened = Box::pin(self.connector.connect()).await?;
        }
        let Opened {
            client,
            driver,
            activity,
            cancel,
        } = opened;
        let request = CancelRequest::new(
            client.cancel_token(),
            cancel.clone(),
            Arc::clone(&self.counters),
        );
        let (client, driver) = self.drivers.spawn(driver, client, &activity, request);
        let now = Instant::now();
        self.counters
            .telemetry
            .create_time(now.saturating_duration_since(started));
        Ok(Box::new(PooledClient {
            client,
            created: now,
            retire_at: self.lifecycle.retire_at(now),
            idle_since: now,
            in_transaction: AtomicBool::new(false),
            driver,
            command_timeout: self.connector.retry_policy().command_timeout_value(),
            telemetry: self.counters.telemetry.clone(),
            activity,
            cancel,
            counters: Arc::clone(&self.counters),
            lease: Arc::default(),
            generation,
            takes_writes: !self.lifecycle.reads_only,
        }))
    }

    async fn recycle(&self, client: &mut Box<PooledClient>, _: &Metrics) -> RecycleResult<Error> {
        // A statement queued just before its future was dropped may not be written yet (the
        // driver has not run since: on a current-thread runtime, or another worker has not
        // got to it), and the session would look idle. The driver's next poll writes it, so
        // that the check below finds it (and cancels it). Rare: the driver is behind only
        // between a wake and the end of its poll.
        // A new lease: a watcher of the last return (`cancel::watch_returned`) cancels nothing
        // from now on; what it would have found, the checks below find.
        client.lease.next();
        if client.activity.driver_behind() {
            let caught_up = Box::pin(tokio::time::timeout(
                super::cancel::DRIVER_CATCH_UP,
                client.activity.driver_caught_up(),
            ));
            if caught_up.await.is_err() {
                self.retire(RetireReason::Abandoned, client);
                return Err(RecycleError::message(RetireReason::Abandoned.as_str()));
            }
        }
        if client.activity.only_ready_to_come() {
            // A statement that had all its results, its `ReadyForQuery` on its way: given
            // the grace period to end, as at its return, before it counts as abandoned.
            let settled = Box::pin(tokio::time::timeout(
                super::cancel::GRACE,
                client.activity.settled(),
            ));
            let _ = settled.await;
        }
        let now = Instant::now();
        if let Some(reason) = self.lifecycle.retire_reason(client, now) {
            let ended_by_server = client.client.is_closed() && !client.lease.cancelled();
            if ended_by_server || reason == RetireReason::ReadOnly {
                self.counters.session_lost();
            }
            self.retire(reason, client);
            return Err(RecycleError::message(reason.as_str()));
        }
        // A connection that sat idle may have been killed without the client noticing
        // (suspend, network change); one empty round trip finds out before the caller does.
        if now.saturating_duration_since(client.idle_since) >= self.lifecycle.validate_after_idle {
            // Boxed, like `create`: the round trip is rare, and would otherwise enlarge every
            // checkout's future.
            let check = Box::pin(tokio::time::timeout(
                self.connector.retry_policy().command_timeout_value(),
                client.client.simple_query(""),
            ));
            let healthy = matches!(check.await, Ok(Ok(_)));
            if !healthy {
                self.counters.session_lost();
                self.retire(RetireReason::Broken, client);
                return Err(RecycleError::message(RetireReason::Broken.as_str()));
            }
        }
        Ok(())
    }
}

/// The background task that closes idle connections past their lifetime or idle timeout,
/// so that they do not hold server resources (or keep a compute awake) until the next
/// checkout. It holds only a weak reference and ends when the pool is dropped or closed.
pub(crate) fn spawn_housekeeper(
    pool: managed::WeakPool<Manager>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let _ = ticks.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            if pool.is_closed() {
                return;
            }
            retire_idle(&pool);
        }
    })
}

/// Retires every connection of `pool`: idle ones now, in-use ones when they come back, and
/// ones logging in when they first come back; the next ones open fresh.
pub(crate) fn retire_all<W: From<managed::Object<Manager>>>(pool: &managed::Pool<Manager, W>) {
    let _ = pool
        .manager()
        .counters
        .generation
        .fetch_add(1, Ordering::AcqRel);
    retire_idle(pool);
}

/// Removes idle connections that must be retired now; never sends a query.
fn retire_idle<W: From<managed::Object<Manager>>>(pool: &managed::Pool<Manager, W>) {
    let manager = pool.manager();
    let now = Instant::now();
    let mut reasons = Vec::new();
    let removed = pool.retain(
        |client, _| match manager.lifecycle.retire_reason(client, now) {
            Some(reason) => {
                reasons.push(reason);
                false
            }
            None => true,
        },
    );
    for (reason, client) in reasons.into_iter().zip(&removed.removed) {
        manager.retire(reason, client);
    }
}
