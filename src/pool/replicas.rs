//! Read replicas: the read-only endpoints beside a pool's read-write one, each with a pool of
//! its own, chosen per read by health and load.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tokio_postgres::types::PgLsn;

use super::ShutdownReport;
use super::endpoint::{EndpointParts, EndpointPool};
use super::stats::{ReadCounters, ReplicaStats};
use super::{Connection, Pool};
use crate::backoff::millis;
use crate::connect::Target;
use crate::credentials::TokenCache;
use crate::databricks::{HostKind, LakebaseCredentials, LakebaseDiscovery, Workspace};
use crate::error::{TokenKind, error_chain};
use crate::telemetry::replica_pool_name;
use crate::{EndpointName, Error, defaults};

mod spec;
pub(crate) use spec::ReplicaSpec;

/// What [`Pool::get_read`] does when no read replica can serve: none is healthy, none was
/// found, or (for [`Pool::get_read_at`]) none has caught up in time.
///
/// ```
/// # fn demo() -> Result<(), lakebase_pool::Error> {
/// let pool = lakebase_pool::Pool::builder()
///     .host("127.0.0.1")
///     .user("app")
///     .password("local-dev-password")
///     .read_replicas(["127.0.0.1:5433"])
///     .read_fallback(lakebase_pool::ReadFallback::Fail)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadFallback {
    /// Serve the read from the read-write endpoint (the default), counted in
    /// [`Stats::read_fallbacks`](crate::Stats::read_fallbacks).
    #[default]
    Primary,
    /// Fail with [`Error::ReplicaUnavailable`] or [`Error::ReplicaBehind`].
    Fail,
}

/// The read replica settings of a [`PoolBuilder`](crate::PoolBuilder).
#[derive(Debug)]
pub(crate) struct ReplicaSettings {
    /// Each replica, or the error from parsing it (returned by `build`).
    pub(crate) specs: Vec<Result<ReplicaSpec, Error>>,
    pub(crate) of_branch: bool,
    /// Read from the read-write endpoint's read-only host.
    pub(crate) read_only_host: bool,
    pub(crate) fallback: ReadFallback,
    pub(crate) max_size: Option<usize>,
    pub(crate) catch_up_timeout: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings {
            specs: Vec::new(),
            of_branch: false,
            read_only_host: false,
            fallback: ReadFallback::Primary,
            max_size: None,
            catch_up_timeout: defaults::REPLICA_CATCH_UP_TIMEOUT,
        }
    }
}

impl ReplicaSettings {
    /// The replica set, if any replica is configured; checked as a whole.
    pub(super) fn build(
        self,
        parts: &EndpointParts,
        base: ReplicaBase,
        primary_max_size: usize,
        workspace: Option<Workspace>,
        primary_endpoint: Option<&EndpointName>,
        primary_tokens: &TokenCache,
    ) -> Result<Option<Arc<ReplicaSet>>, Error> {
        let specs = self.specs.into_iter().collect::<Result<Vec<_>, Error>>()?;
        if specs.is_empty() && !self.of_branch && !self.read_only_host {
            return Ok(None);
        }
        let ReplicaBase {
            config: base,
            port: primary_port,
        } = base;
        if !base.get_hosts().is_empty()
            || !base.get_hostaddrs().is_empty()
            || !base.get_ports().is_empty()
        {
            // tokio-postgres's setters only add hosts: a replica's settings can be made from
            // a base without any, not from one with the primary's.
            return Err(Error::invalid(
                "read_replicas",
                "replicas take the primary's settings but its host, port and address, which \
                 must then be given with `.host(..)`, `.port(..)` and `.hostaddr(..)` (or \
                 discovered with `.lakebase_endpoint(..)`), not inside `pg_config(..)`",
            ));
        }
        let primary_port = primary_port.or_else(|| base.get_ports().first().copied());
        let max_size = self.max_size.unwrap_or(primary_max_size);
        if max_size == 0 {
            return Err(Error::invalid("replica_max_size", "must be at least 1"));
        }
        let read_only_host = match (self.read_only_host, primary_endpoint) {
            (false, _) => None,
            (true, Some(endpoint)) => Some(ReplicaSpec::ReadOnlyHost(endpoint.clone())),
            (true, None) => {
                return Err(Error::invalid(
                    "read_only_host_as_replica",
                    "needs the read-write endpoint's name to look its read-only host up: call \
                     `.lakebase_endpoint(..)` (or set LAKEBASE_ENDPOINT)",
                ));
            }
        };
        let branch = match (self.of_branch, primary_endpoint) {
            (false, _) => None,
            (true, Some(endpoint)) => Some(endpoint.clone()),
            (true, None) => {
                return Err(Error::invalid(
                    "read_replicas_of_branch",
                    "needs the read-write endpoint's name to find its branch: call \
                     `.lakebase_endpoint(..)` (or set LAKEBASE_ENDPOINT)",
                ));
            }
        };
        let mut parts = parts.clone();
        parts.lifecycle.reads_only = true;
        // A read has somewhere else to go: a replica that cannot be reached is given up on
        // (and probed in the background) well before the primary's deadline, which outlasts
        // the proxy's 30 s cache of a failed wake for the sake of writes. The first attempt
        // always gets the whole connect timeout, so that is bounded too.
        let bound = defaults::REPLICA_CONNECT_DEADLINE;
        let deadline = parts.retry.total_deadline().min(bound);
        let attempt = parts.retry.attempt_timeout().min(bound);
        parts.retry = parts
            .retry
            .clone()
            .deadline(deadline)
            .connect_timeout(attempt);
        let factory = ReplicaFactory {
            parts,
            base,
            primary_port,
            workspace,
            primary_tokens: primary_tokens.clone(),
            max_size,
        };
        // The branch's replicas are looked up at the first read unless others were given;
        // the read-only host is a member from now on either way (it needs no listing), and is
        // added to those found.
        let discovered = branch.is_some() && specs.is_empty();
        let read_only_host = read_only_host
            .iter()
            .map(|spec| factory.member(spec))
            .collect::<Result<Vec<_>, Error>>()?;
        let (members, fixed) = if discovered {
            (OnceCell::new(), read_only_host)
        } else {
            let mut members = specs
                .iter()
                .map(|spec| factory.member(spec))
                .collect::<Result<Vec<_>, Error>>()?;
            members.extend(read_only_host);
            (OnceCell::new_with(Some(members)), Vec::new())
        };
        Ok(Some(Arc::new(ReplicaSet {
            members,
            branch: branch.filter(|_| discovered),
            fixed,
            factory,
            discovery_failed: Mutex::new(None),
            fallback: self.fallback,
            catch_up_timeout: self.catch_up_timeout,
            next: AtomicUsize::new(0),
            counters: ReadCounters::default(),
        })))
    }
}

/// Builds the pool of one replica with the primary's settings.
struct ReplicaFactory {
    parts: EndpointParts,
    /// The primary's configuration without its host, port and address; a replica's is this
    /// with its own.
    base: tokio_postgres::Config,
    /// The primary's port: a replica's unless it names its own.
    primary_port: Option<u16>,
    workspace: Option<Workspace>,
    /// For plain Postgres replicas, which share the primary's roles and so its password.
    primary_tokens: TokenCache,
    max_size: usize,
}

impl ReplicaFactory {
    fn member(&self, spec: &ReplicaSpec) -> Result<Arc<Member>, Error> {
        let primary_port = self.primary_port;
        let (target, tokens) = match spec {
            ReplicaSpec::Host { host, port } => {
                let config = replica_config(&self.base, Some(host), port.or(primary_port));
                (Target::Fixed(config), self.primary_tokens.clone())
            }
            ReplicaSpec::Endpoint(endpoint) => {
                let credentials =
                    LakebaseCredentials::new(self.workspace()?.clone(), endpoint.clone());
                // A token is minted for the endpoint it is used on.
                let tokens = TokenCache::labelled(
                    Box::new(credentials),
                    self.parts.cache_policy.clone(),
                    TokenKind::Database,
                );
                (self.discovered(endpoint, HostKind::Main)?, tokens)
            }
            // The read-only host is the same endpoint's: its tokens are the primary's.
            ReplicaSpec::ReadOnlyHost(endpoint) => (
                self.discovered(endpoint, HostKind::ReadOnly)?,
                self.primary_tokens.clone(),
            ),
        };
        let name = spec.label(primary_port);
        let telemetry = self
            .parts
            .telemetry
            .pool(&replica_pool_name(&self.parts.pool_name, &name));
        let pool = EndpointPool::open(&self.parts, target, tokens, self.max_size, telemetry)?;
        let member = Arc::new(Member {
            name,
            pool,
            health: Mutex::new(Health::default()),
            lag_waits: AtomicU64::new(0),
            lag_fallbacks: AtomicU64::new(0),
        });
        member.observe();
        Ok(member)
    }
}

impl ReplicaFactory {
    fn workspace(&self) -> Result<&Workspace, Error> {
        self.workspace.as_ref().ok_or_else(|| {
            Error::invalid(
                "read_replicas",
                "replicas given by endpoint name mint their tokens through the workspace: \
                 call `.lakebase_endpoint(..)` or `.workspace(..)`",
            )
        })
    }

    /// The target of `endpoint`'s host of `kind`, looked up at the first connect.
    fn discovered(&self, endpoint: &EndpointName, kind: HostKind) -> Result<Target, Error> {
        let base = replica_config(&self.base, None, self.primary_port);
        let source = LakebaseDiscovery {
            host: Some(kind),
            user: base.get_user().is_none(),
            workspace: self.workspace()?.clone(),
            endpoint: endpoint.clone(),
        };
        Ok(Target::Lazy {
            base,
            source: Box::new(source),
        })
    }
}

/// What the replicas' settings are made from: the primary's configuration without its host,
/// port and address, and the primary's port.
pub(super) struct ReplicaBase {
    pub(super) config: tokio_postgres::Config,
    pub(super) port: Option<u16>,
}

/// A replica's configuration: `base` (the primary's without its host settings) with the
/// replica's host, when known before discovery, and port. Nothing is copied field by field.
fn replica_config(
    base: &tokio_postgres::Config,
    host: Option<&str>,
    port: Option<u16>,
) -> tokio_postgres::Config {
    let mut config = base.clone();
    if let Some(host) = host {
        let _ = config.host(host);
    }
    if let Some(port) = port {
        let _ = config.port(port);
    }
    config
}

/// A replica, its pool and its health.
pub(crate) struct Member {
    name: String,
    pool: EndpointPool,
    health: Mutex<Health>,
    /// `get_read_at` calls that waited for it to replay, and of those the ones it did not
    /// catch up in time.
    lag_waits: AtomicU64,
    lag_fallbacks: AtomicU64,
}

#[derive(Debug, Default)]
struct Health {
    /// Skipped until then; `None` while healthy.
    unhealthy_until: Option<Instant>,
    /// Consecutive failed connects (for the backoff).
    failures: u32,
    /// A background probe connect is running.
    probing: bool,
    unhealthy_periods: u64,
}

/// How long an unhealthy replica is skipped before a probe: 1 s, doubling per failed probe,
/// at most 30 s.
fn unhealthy_for(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

impl Member {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether reads may go to it now. An unhealthy replica whose backoff has passed gets a
    /// probe in the background, on every read, whatever the other replicas' health: a
    /// replica that is back serves again within its probe schedule.
    fn serves(self: &Arc<Self>) -> bool {
        {
            let mut health = self.health();
            match health.unhealthy_until {
                None => return true,
                Some(until) if until <= Instant::now() && !health.probing => health.probing = true,
                Some(_) => return false,
            }
        }
        self.probe();
        false
    }

    /// Registers the replica's own instruments, which read its stats while it exists.
    #[cfg(feature = "opentelemetry")]
    fn observe(self: &Arc<Self>) {
        let member = Arc::downgrade(self);
        super::observe::observe_endpoint(self.pool.counters(), move || {
            member.upgrade().map(|member| member.pool.stats(None))
        });
    }

    #[cfg(not(feature = "opentelemetry"))]
    fn observe(self: &Arc<Self>) {}

    fn in_use(&self) -> usize {
        self.pool.in_use()
    }

    fn mark_healthy(&self) {
        let mut health = self.health();
        if health.unhealthy_until.is_some() {
            tracing::info!(replica = %self.name, "read replica is back");
        }
        health.unhealthy_until = None;
        health.failures = 0;
    }

    fn mark_unhealthy(&self, error: &Error) {
        let mut health = self.health();
        if health.unhealthy_until.is_none() {
            health.unhealthy_periods += 1;
        }
        health.failures = health.failures.saturating_add(1);
        let skip = unhealthy_for(health.failures);
        health.unhealthy_until = Some(Instant::now() + skip);
        tracing::warn!(
            replica = %self.name,
            skip_ms = millis(skip),
            cause = %error_chain(error),
            "read replica failed to connect; skipping it until a probe connects"
        );
    }

    /// A probe connect in the background: once a replica is known to be down, no read
    /// waits for it.
    fn probe(self: &Arc<Self>) {
        let member = Arc::clone(self);
        drop(tokio::spawn(async move {
            // Cleared however the probe ends, dropped with its runtime too: a flag left set
            // would keep the replica out of rotation for good.
            let _probing = Probing(Arc::clone(&member));
            match member.pool.get().await {
                Ok(connection) => {
                    drop(connection);
                    member.mark_healthy();
                }
                // Busy is not down: every connection is checked out, so it serves.
                Err(Error::PoolTimeout { .. }) => member.mark_healthy(),
                Err(error) => member.mark_unhealthy(&error),
            }
        }));
    }

    fn stats(&self) -> ReplicaStats {
        let stats = self.pool.stats(None);
        let health = self.health();
        ReplicaStats {
            endpoint: self.name.clone(),
            healthy: health.unhealthy_until.is_none(),
            size: stats.size,
            in_use: stats.size.saturating_sub(stats.available),
            connections_opened: stats.connections_opened,
            retired: stats.retired_lifetime
                + stats.retired_idle
                + stats.retired_broken
                + stats.retired_read_only
                + stats.retired_all,
            unhealthy_periods: health.unhealthy_periods,
            lag_waits: self.lag_waits.load(Ordering::Relaxed),
            lag_fallbacks: self.lag_fallbacks.load(Ordering::Relaxed),
        }
    }
}

/// A probe under way on a member; clears the mark when dropped.
struct Probing(Arc<Member>);

impl Drop for Probing {
    fn drop(&mut self) {
        self.0.health().probing = false;
    }
}

/// The replicas of a pool.
pub(crate) struct ReplicaSet {
    /// Set at build for replicas given explicitly, at the first read for those of the branch.
    members: OnceCell<Vec<Arc<Member>>>,
    /// The read-write endpoint whose branch's read-only endpoints are looked up.
    branch: Option<EndpointName>,
    /// Members known without the branch's listing (the read-only host): added to the
    /// branch's replicas when they are found, and the members while they cannot be.
    fixed: Vec<Arc<Member>>,
    factory: ReplicaFactory,
    /// When the last look-up failed: not repeated for a while, so that a workspace outage
    /// does not slow every read down.
    discovery_failed: Mutex<Option<Instant>>,
    fallback: ReadFallback,
    catch_up_timeout: Duration,
    /// Rotates the starting point among equally loaded replicas.
    next: AtomicUsize,
    pub(crate) counters: ReadCounters,
}

impl fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("replicas", &self.known().len())
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

/// How long a failed look-up of the branch's replicas is not repeated.
const DISCOVERY_RETRY: Duration = Duration::from_secs(10);

/// Where a read was served.
pub(crate) enum Served {
    /// By a replica, which counts what `get_read_at` waited on it.
    Replica(Connection, Arc<Member>),
    /// By the read-write endpoint, after a fallback.
    Primary(Connection),
}

impl Served {
    pub(crate) fn into_connection(self) -> Connection {
        match self {
            Served::Replica(connection, _) | Served::Primary(connection) => connection,
        }
    }
}

impl ReplicaSet {
    /// The replicas, looking those of the branch up the first time.
    async fn members(&self) -> Result<&[Arc<Member>], Error> {
        if let Some(members) = self.members.get() {
            return Ok(members);
        }
        let Some(endpoint) = &self.branch else {
            return Ok(&[]);
        };
        let failed_at = *self
            .discovery_failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if failed_at.is_some_and(|at| at.elapsed() < DISCOVERY_RETRY) {
            if !self.fixed.is_empty() {
                return Ok(&self.fixed);
            }
            return Err(Error::workspace_config(String::from(
                "looking up the branch's read replicas failed moments ago",
            )));
        }
        let result = self
            .members
            .get_or_try_init(|| self.discover(endpoint))
            .await;
        if let Err(error) = &result {
            tracing::warn!(cause = %error_chain(error), "could not look up the branch's read replicas");
            *self
                .discovery_failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            if !self.fixed.is_empty() {
                return Ok(&self.fixed);
            }
        }
        result.map(Vec::as_slice)
    }

    async fn discover(&self, endpoint: &EndpointName) -> Result<Vec<Arc<Member>>, Error> {
        let workspace = self.factory.workspace.as_ref().ok_or_else(|| {
            Error::workspace_config(String::from("no workspace to look the replicas up in"))
        })?;
        let endpoints = workspace
            .list_endpoints(endpoint.project(), endpoint.branch())
            .await?;
        let members = endpoints
            .into_iter()
            .filter(|e| {
                e.endpoint_type.as_deref() == Some("ENDPOINT_TYPE_READ_ONLY") && !e.disabled
            })
            .map(|e| self.factory.member(&ReplicaSpec::Endpoint(e.name)))
            .chain(self.fixed.iter().cloned().map(Ok))
            .collect::<Result<Vec<_>, Error>>()?;
        tracing::info!(
            branch = %endpoint.branch_path(),
            replicas = members.len(),
            "looked up the branch's read replicas"
        );
        Ok(members)
    }

    /// A connection to a healthy replica, the least in use (ties taken in turn), or the
    /// fallback.
    pub(crate) async fn get(&self, primary: &Pool) -> Result<Served, Error> {
        let members = match self.members().await {
            Ok(members) => members,
            Err(error) => return self.fall_back(primary, 0, "none found", Some(error)).await,
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut candidates: Vec<&Arc<Member>> = (0..members.len())
            .map(|i| &members[(start + i) % members.len()])
            .filter(|member| member.serves())
            .collect();
        // Stable: among equally loaded replicas, the rotated order stands.
        candidates.sort_by_key(|member| member.in_use());
        let mut last_error = None;
        for member in candidates {
            match member.pool.get().await {
                Ok(connection) => return Ok(Served::Replica(connection, Arc::clone(member))),
                // Busy is not broken: the caller waited its wait timeout, as with any pool.
                Err(error @ Error::PoolTimeout { .. }) => return Err(error),
                Err(error) => {
                    member.mark_unhealthy(&error);
                    last_error = Some(error);
                }
            }
        }
        let problem = if members.is_empty() {
            "none found"
        } else {
            "none healthy"
        };
        self.fall_back(primary, members.len(), problem, last_error)
            .await
    }

    async fn fall_back(
        &self,
        primary: &Pool,
        replicas: usize,
        problem: &str,
        error: Option<Error>,
    ) -> Result<Served, Error> {
        tracing::debug!(problem, "no read replica can serve");
        self.fall_back_or(primary, || Error::ReplicaUnavailable {
            replicas,
            problem: problem.to_owned(),
            source: error.map(Box::new),
        })
        .await
    }

    /// The read-write endpoint's connection (counted) with [`ReadFallback::Primary`], or
    /// `failure` with [`ReadFallback::Fail`].
    async fn fall_back_or(
        &self,
        primary: &Pool,
        failure: impl FnOnce() -> Error,
    ) -> Result<Served, Error> {
        match self.fallback {
            ReadFallback::Primary => {
                let _ = self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                primary.get().await.map(Served::Primary)
            }
            ReadFallback::Fail => Err(failure()),
        }
    }

    /// A connection that has replayed `position`: a replica once it has caught up (polled
    /// until the catch-up timeout), or the fallback.
    pub(crate) async fn get_at(&self, primary: &Pool, position: PgLsn) -> Result<Served, Error> {
        let (connection, member) = match self.get(primary).await? {
            Served::Replica(connection, member) => (connection, member),
            // The read-write endpoint has every write.
            served @ Served::Primary(_) => return Ok(served),
        };
        let started = Instant::now();
        let mut poll = Duration::from_millis(5);
        let mut waited = false;
        loop {
            let state = match replay_state(&connection, position).await {
                Ok(state) => state,
                // The replica cannot say (its session died, the check timed out): the
                // fallback decides, as for a replica that is behind.
                Err(error) if self.fallback == ReadFallback::Primary => {
                    tracing::warn!(replica = %member.name, cause = %error_chain(&error), "the replay check failed; falling back");
                    Replay::Unknown
                }
                Err(error) => return Err(error),
            };
            if state == Replay::Replayed {
                return Ok(Served::Replica(connection, member));
            }
            if !waited {
                waited = true;
                let _ = self.counters.lag_waits.fetch_add(1, Ordering::Relaxed);
                let _ = member.lag_waits.fetch_add(1, Ordering::Relaxed);
            }
            if state == Replay::Unknown {
                break;
            }
            if state == Replay::NotReplaying {
                tracing::warn!(
                    replica = %member.name,
                    "the read replica is not replaying WAL (promoted, or not a replica); \
                     reads of a write position fall back"
                );
                break;
            }
            let left = self.catch_up_timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(poll.min(left)).await;
            poll = (poll * 2).min(Duration::from_millis(100));
        }
        drop(connection);
        let _ = self.counters.lag_fallbacks.fetch_add(1, Ordering::Relaxed);
        let _ = member.lag_fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            %position,
            waited_ms = millis(started.elapsed()),
            "the replica has not caught up; falling back"
        );
        let waited = started.elapsed();
        self.fall_back_or(primary, || Error::ReplicaBehind {
            position: position.to_string(),
            waited,
        })
        .await
    }

    /// The replicas there are so far: all of them once the branch's were looked up, else
    /// those known without it.
    fn known(&self) -> &[Arc<Member>] {
        self.members.get().map_or(&self.fixed, Vec::as_slice)
    }

    pub(crate) fn stats(&self) -> Vec<ReplicaStats> {
        self.known().iter().map(|m| m.stats()).collect()
    }

    pub(crate) fn close(&self) {
        self.known().iter().for_each(|member| member.pool.close());
    }

    /// Retires every replica's connections, as the primary's.
    pub(crate) fn retire_all(&self) {
        self.known()
            .iter()
            .for_each(|member| member.pool.retire_all());
    }

    /// Shuts every replica's pool down, together, as the primary's (see
    /// [`Pool::shutdown`](crate::Pool::shutdown)): their reports, summed.
    pub(crate) async fn shutdown(&self, grace: Duration) -> Option<ShutdownReport> {
        let members = self.known();
        if members.is_empty() {
            return None;
        }
        let mut shutdowns = tokio::task::JoinSet::new();
        for member in members {
            let member = Arc::clone(member);
            let _ = shutdowns.spawn(async move { member.pool.shutdown(grace).await });
        }
        let mut total: Option<ShutdownReport> = None;
        while let Some(report) = shutdowns.join_next().await {
            let Ok(report) = report else { continue };
            total = Some(match total {
                None => report,
                Some(sum) => sum.and(report),
            });
        }
        total
    }
}

const REPLAY_CHECK: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() >= $1";

/// Where a replica stands against a write position.
#[derive(Debug, PartialEq, Eq)]
enum Replay {
    Replayed,
    Behind,
    /// Not in recovery: a promoted standby or a host that is no replica. Its own WAL is not
    /// the primary's, so nothing it says proves it has the write.
    NotReplaying,
    /// The check failed (the session died, no answer in time).
    Unknown,
}

/// Where the server behind `connection` stands against `position`.
async fn replay_state(connection: &Connection, position: PgLsn) -> Result<Replay, Error> {
    let row = connection
        .query_one_bounded(REPLAY_CHECK, &[&position])
        .await?;
    let answer = row
        .try_get::<_, bool>(0)
        .and_then(|in_recovery| Ok((in_recovery, row.try_get::<_, Option<bool>>(1)?)));
    match answer {
        Ok((false, _)) => Ok(Replay::NotReplaying),
        Ok((true, Some(true))) => Ok(Replay::Replayed),
        // Not replayed yet, or nothing replayed yet (NULL during a standby's start).
        Ok((true, _)) => Ok(Replay::Behind),
        Err(e) => Err(Error::Statement {
            statement: REPLAY_CHECK,
            source: Box::new(e),
        }),
    }
}

#[cfg(test)]
mod tests;
