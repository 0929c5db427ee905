//! Connections on behalf of the signed-in user of a Databricks App.
//!
//! With user authorization, the Databricks Apps proxy forwards each request's signed-in user:
//! their email (`X-Forwarded-Email`) and an OAuth token (`X-Forwarded-Access-Token`). A
//! Lakebase credential minted with that token logs in as the user's own Postgres role, so
//! grants and row-level security apply per person rather than to the app's service
//! principal. [`UserPools`] keeps a small pool per user for that, next to the app's own pool.
//!
//! # Security model
//!
//! * **Trust.** Forwarded headers are read only when [`ForwardedHeaders`] says so: by default
//!   only when the process runs as a Databricks App, whose proxy sets them. Elsewhere a
//!   request without a trusted user is refused ([`UserProblem::NotForwarded`]), or served as
//!   the app when [`UserPoolsBuilder::fall_back_to_app`] asks for that.
//! * **Every token is checked before it gets a connection.** A token the pool has not seen
//!   for the user (or not in the last five minutes) is checked with the workspace (`GET
//!   /api/2.0/preview/scim/v2/Me` with that token): it must be valid and belong to the
//!   forwarded email. A connection already open for the user is never handed to a request
//!   whose token failed that check.
//! * **Nothing is shared between users:** each has their own pool, token cache and
//!   credentials, minted with their own newest token. Refusals (401 from the workspace: an
//!   expired, revoked or forged token; 403: the token lacks the scope; a login the database
//!   refused) are errors at once: never retried, never answered with the app's identity.
//! * **Bounded:** at most [`max_users`](UserPoolsBuilder::max_users) users have a pool, each
//!   of at most [`max_size_per_user`](UserPoolsBuilder::max_size_per_user) connections; the
//!   least recently used idle user makes room for a new one, and users idle for
//!   [`evict_idle_after`](UserPoolsBuilder::evict_idle_after) are dropped. An evicted user's
//!   connections are closed.
//! * **No user is named** in errors, `Debug` output or logs: per-user targets show the user
//!   as `<user>`, and server texts that name the user are redacted.
//!
//! The check of each token needs the user authorization's `iam.current-user:read` scope
//! (added to every Databricks App by default); minting needs the Lakebase database scope.
//!
//! ```no_run
//! use lakebase_pool::Pool;
//! use lakebase_pool::users::{ForwardedUser, UserPools};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let users = UserPools::builder(
//!     Pool::builder()
//!         .workspace(lakebase_pool::databricks::Workspace::from_env()?)
//!         .lakebase_endpoint("projects/shop/branches/production/endpoints/ep-primary"),
//! )
//! .build()?;
//! let alice = ForwardedUser::new("alice@example.com", "token-from-x-forwarded-access-token");
//! let conn = users.for_user(&alice).await?;
//! let row = conn.query_one("SELECT current_user", &[]).await?;
//! assert_eq!(row.get::<_, String>(0), "alice@example.com");
//! # Ok(())
//! # }
//! ```

mod builder;
mod check;
mod forwarded;
#[cfg(feature = "opentelemetry")]
mod observe;
mod provider;
mod refusal;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use self::builder::Settings;
pub use self::builder::UserPoolsBuilder;
use self::check::{TokenChecks, user_key};
pub use self::forwarded::{ACCESS_TOKEN_HEADER, EMAIL_HEADER, ForwardedHeaders, ForwardedUser};
use self::provider::{LatestToken, SharedHost, UserCredentials, UserTarget};
use self::refusal::user_error;
use crate::connect::Target;
use crate::credentials::TokenCache;
use crate::databricks::Workspace;
use crate::pool::{EndpointPool, PoolTemplate};
use crate::{Connection, EndpointName, Error, Pool, PoolBuilder, Secret, UserProblem};

/// How long a checked token stays checked: the Apps proxy replaces tokens well before they
/// expire, so a token seen again after this is checked again (one round trip).
const TOKEN_RECHECK: Duration = crate::defaults::USER_TOKEN_RECHECK;
/// Checked tokens remembered per user: only the newest. A token the proxy has replaced may
/// have been revoked, so one seen again is checked again (a round trip, then remembered).
const CHECKED_TOKENS: usize = 1;

/// Pools of connections on behalf of signed-in users, one small pool per user, beside the
/// app's own pool; see the [module docs](self) for the security model.
///
/// Built from the app's [`PoolBuilder`]: every user pool shares its endpoint, TLS, resolver,
/// retry and lifecycle settings and its workspace client, and the endpoint's host is looked
/// up once for all of them. Cloning is cheap and shares the pools.
///
/// ```no_run
/// use lakebase_pool::Pool;
/// use lakebase_pool::users::UserPools;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lakebase_pool::Error> {
/// let users = UserPools::builder(lakebase_pool::PoolBuilder::from_env()?)
///     .max_users(50)
///     .build()?;
/// let app_pool: lakebase_pool::Pool = users.app_pool().clone(); // the service principal's
/// # let _ = app_pool;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct UserPools {
    inner: Arc<Inner>,
}

struct Inner {
    app: Pool,
    template: PoolTemplate,
    workspace: Workspace,
    endpoint: EndpointName,
    host: Option<Arc<SharedHost>>,
    settings: Settings,
    trusted: bool,
    /// By [`user_key`]: the email without regard to case.
    users: Mutex<HashMap<String, Arc<Entry>>>,
    checks: TokenChecks,
    /// Set by `close`: no user gets a new pool or session after it.
    closed: AtomicBool,
    /// Requests counted as they arrive: the order that decides which token is a user's newest.
    arrivals: AtomicU64,
    /// Live entries, in the map or not (an evicted user's checkout can still be running).
    live: Arc<AtomicUsize>,
    counters: Counters,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct Counters {
    created: AtomicU64,
    evicted_lru: AtomicU64,
    evicted_idle: AtomicU64,
    refused: AtomicU64,
    token_checks: AtomicU64,
    /// Mints of users no longer cached (the cached ones are read from their caches).
    mints_of_evicted: AtomicU64,
    mint_failures_of_evicted: AtomicU64,
}

/// One user's pool and what it needs.
struct Entry {
    pool: EndpointPool,
    tokens: TokenCache,
    latest: LatestToken,
    /// Tokens checked for this user, with when.
    checked: Mutex<Vec<(Secret, Instant)>>,
    last_used: Mutex<Instant>,
    /// Checkouts under way: an entry with one is never evicted.
    busy: AtomicUsize,
    live: Arc<AtomicUsize>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.pool.close();
        let _ = self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Entry {
    fn knows(&self, token: &Secret, now: Instant) -> bool {
        lock(&self.checked).iter().any(|(checked, at)| {
            now.saturating_duration_since(*at) < TOKEN_RECHECK && checked == token
        })
    }

    fn remember(&self, token: &Secret, now: Instant) {
        let mut checked = lock(&self.checked);
        checked.retain(|(known, _)| known != token);
        checked.insert(0, (token.clone(), now));
        checked.truncate(CHECKED_TOKENS);
    }

    /// Marks a checkout under way and the entry used now; the mark ends with the guard.
    fn start_checkout(self: &Arc<Self>, token: &Secret, arrival: u64, now: Instant) -> Busy {
        let _ = self.busy.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_used) = now;
        if self.latest.replace(token, arrival) {
            // A mint that failed with the user's previous token says nothing about this one.
            self.tokens.forget_failures();
        }
        Busy(Arc::clone(self))
    }

    fn idle(&self) -> bool {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let stats = self.pool.stats(None);
        stats.size == stats.available
    }
}

/// A checkout under way on an entry.
struct Busy(Arc<Entry>);

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover the data rather than propagate.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for UserPools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserPools")
            .field("users", &lock(&self.inner.users).len())
            .field("settings", &self.inner.settings)
            .field("trusts_forwarded_headers", &self.inner.trusted)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a [`UserPools`]' state and counters, from [`UserPools::stats`]. Names no
/// user.
///
/// ```no_run
/// # fn demo(users: lakebase_pool::users::UserPools) {
/// let stats = users.stats();
/// println!("{} users with a pool, {} evicted", stats.users, stats.evicted_lru + stats.evicted_idle);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserPoolStats {
    /// Users with a pool now.
    pub users: usize,
    /// The limit on users with a pool.
    pub max_users: usize,
    /// User pools still alive: the cached ones, plus evicted ones whose last checkout has
    /// not ended yet.
    pub live_pools: usize,
    /// User pools created so far.
    pub created: u64,
    /// Users evicted to make room for another (least recently used first).
    pub evicted_lru: u64,
    /// Users evicted after sitting idle past the idle eviction time.
    pub evicted_idle: u64,
    /// Requests refused with [`Error::UserUnauthorized`].
    pub refused: u64,
    /// Forwarded tokens checked with the workspace.
    pub token_checks: u64,
    /// Database credentials minted for users, all users together.
    pub mints: u64,
    /// Failed mints for users, all users together.
    pub mint_failures: u64,
    /// Each cached user's pool: `(open connections, of which in use)`, largest first.
    pub pool_sizes: Vec<(usize, usize)>,
}

impl UserPools {
    /// Starts configuring per-user pools on the endpoint of `app`, the app's own pool
    /// settings (which must name a Lakebase endpoint).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let users = lakebase_pool::users::UserPools::builder(lakebase_pool::PoolBuilder::from_env()?).build()?;
    /// # let _ = users;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(app: PoolBuilder) -> UserPoolsBuilder {
        UserPoolsBuilder::new(app)
    }

    /// The app's own pool (its service principal), built from the same settings.
    ///
    /// ```no_run
    /// # async fn demo(users: lakebase_pool::users::UserPools) -> Result<(), lakebase_pool::Error> {
    /// let conn = users.app_pool().get().await?;
    /// # let _ = conn;
    /// # Ok(())
    /// # }
    /// ```
    pub fn app_pool(&self) -> &Pool {
        &self.inner.app
    }

    /// Whether forwarded user headers are read (see [`ForwardedHeaders`]).
    ///
    /// ```no_run
    /// # fn demo(users: lakebase_pool::users::UserPools) {
    /// if !users.trusts_forwarded_headers() {
    ///     eprintln!("not running as a Databricks App: per-user routes answer 401");
    /// }
    /// # }
    /// ```
    pub fn trusts_forwarded_headers(&self) -> bool {
        self.inner.trusted
    }

    /// A connection logged in as `user`: from their pool, made on first use. The user's token
    /// is checked with the workspace the first time it is seen (and every five minutes), and
    /// their database credentials are minted with their newest token.
    ///
    /// # Errors
    ///
    /// [`Error::UserUnauthorized`] when the workspace refuses the token, the token is not the
    /// email's, a mint is refused, or the database refuses the login; nothing of that is
    /// retried. [`Error::UserPoolsFull`] when a new user finds every pool busy. Otherwise the
    /// errors of [`Pool::get`] (outages are transient and answered 503 by the web
    /// integrations).
    ///
    /// ```no_run
    /// # async fn demo(users: lakebase_pool::users::UserPools) -> Result<(), Box<dyn std::error::Error>> {
    /// use lakebase_pool::users::ForwardedUser;
    /// let conn = users.for_user(&ForwardedUser::new("alice@example.com", "token")).await?;
    /// let rows = conn.query("SELECT * FROM my_orders", &[]).await?; // row-level security applies
    /// # let _ = rows;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn for_user(&self, user: &ForwardedUser) -> Result<Connection, Error> {
        let result = self.checkout(user).await;
        if let Err(Error::UserUnauthorized { problem }) = &result {
            let _ = self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%problem, "refused a request on behalf of a user");
        }
        result
    }

    /// A connection for a request with these headers (`header` gives a value by lower-case
    /// name): as its signed-in user when forwarded headers are trusted and carry one, else as
    /// the app if [`fall_back_to_app`](UserPoolsBuilder::fall_back_to_app) is set. Returns
    /// whether the connection is the user's. The web integrations' `UserConnection` calls it.
    ///
    /// # Errors
    ///
    /// [`Error::UserUnauthorized`] with [`UserProblem::NotForwarded`] for a request without a
    /// trusted user (and no fallback), or with bad forwarded headers; those of
    /// [`for_user`](Self::for_user) and [`Pool::get`].
    ///
    /// ```no_run
    /// # async fn demo(users: lakebase_pool::users::UserPools) -> Result<(), lakebase_pool::Error> {
    /// let headers = [("x-forwarded-email", "alice@example.com"), ("x-forwarded-access-token", "t")];
    /// let (conn, as_user) = users
    ///     .for_request(|name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes()))
    ///     .await?;
    /// assert!(as_user);
    /// # let _ = conn;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn for_request<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Result<(Connection, bool), Error> {
        let user = if self.inner.trusted {
            ForwardedUser::from_headers(header).map_err(|problem| self.refuse(problem))?
        } else {
            None
        };
        match user {
            Some(user) => Ok((self.for_user(&user).await?, true)),
            None if self.inner.settings.fall_back_to_app => {
                Ok((self.inner.app.get().await?, false))
            }
            None => Err(self.refuse(UserProblem::NotForwarded)),
        }
    }

    fn refuse(&self, problem: UserProblem) -> Error {
        let _ = self.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%problem, "refused a request on behalf of a user");
        Error::UserUnauthorized { problem }
    }

    async fn checkout(&self, user: &ForwardedUser) -> Result<Connection, Error> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::PoolClosed);
        }
        let arrival = inner.arrivals.fetch_add(1, Ordering::Relaxed) + 1;
        let token = user.access_token();
        let key = user_key(user.email());
        let known = lock(&inner.users)
            .get(&key)
            .filter(|entry| entry.knows(token, Instant::now()))
            .map(|entry| entry.start_checkout(token, arrival, Instant::now()));
        let busy = match known {
            Some(busy) => busy,
            None => {
                let user_name = inner
                    .checks
                    .check(&inner.workspace, user.email(), token, || {
                        let _ = inner.counters.token_checks.fetch_add(1, Ordering::Relaxed);
                    })
                    .await?;
                self.entry_for(user, key, &user_name, arrival)?
            }
        };
        let entry = &busy.0;
        let connection = entry
            .pool
            .get()
            .await
            .map_err(|error| user_error(error, user.email()))?;
        // `close` may have run while the session opened: it is not handed out (dropped, it
        // goes back to a closed pool, which closes it).
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::PoolClosed);
        }
        Ok(connection)
    }

    /// The user's entry (made now if there is none, evicting the least recently used idle
    /// user when full), with their checked token remembered and a checkout marked.
    /// `user_name` is the workspace's spelling: the user's Postgres role.
    fn entry_for(
        &self,
        user: &ForwardedUser,
        key: String,
        user_name: &str,
        arrival: u64,
    ) -> Result<Busy, Error> {
        let now = Instant::now();
        let token = user.access_token();
        let mut users = lock(&self.inner.users);
        // Under the lock that `close` drains: no pool is made after it.
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::PoolClosed);
        }
        if let Some(entry) = users.get(&key) {
            entry.remember(token, now);
            return Ok(entry.start_checkout(token, arrival, now));
        }
        if users.len() >= self.inner.settings.max_users {
            let victim = users
                .iter()
                .filter(|(_, entry)| entry.idle())
                .min_by_key(|(_, entry)| *lock(&entry.last_used))
                .map(|(key, _)| key.clone());
            let Some(victim) = victim else {
                return Err(Error::UserPoolsFull {
                    max_users: self.inner.settings.max_users,
                });
            };
            if let Some(evicted) = users.remove(&victim) {
                self.retire(&evicted);
                let _ = self
                    .inner
                    .counters
                    .evicted_lru
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!("evicted the least recently used user's pool to make room");
            }
        }
        let entry = Arc::new(self.new_entry(user_name, token, arrival)?);
        entry.remember(token, now);
        let busy = entry.start_checkout(token, arrival, now);
        let _ = users.insert(key, entry);
        Ok(busy)
    }

    fn new_entry(&self, user_name: &str, token: &Secret, arrival: u64) -> Result<Entry, Error> {
        let inner = &self.inner;
        let latest = LatestToken::new(token.clone(), arrival);
        let provider = UserCredentials {
            workspace: inner.workspace.clone(),
            endpoint: inner.endpoint.clone(),
            email: user_name.to_owned(),
            token: latest.clone(),
        };
        let tokens = TokenCache::labelled(
            Box::new(provider),
            inner.template.cache_policy().clone(),
            crate::error::TokenKind::UserDatabase,
        );
        let target = match &inner.host {
            Some(host) => Target::Lazy {
                base: inner.template.base.clone(),
                source: Box::new(UserTarget {
                    host: Arc::clone(host),
                    role: user_name.to_owned(),
                }),
            },
            None => {
                let mut config = inner.template.base.clone();
                let _ = config.user(user_name);
                Target::Fixed(config)
            }
        };
        let pool = inner.template.pool(
            target,
            tokens.clone(),
            inner.settings.max_size,
            inner.settings.idle_timeout,
        )?;
        let _ = inner.counters.created.fetch_add(1, Ordering::Relaxed);
        let _ = inner.live.fetch_add(1, Ordering::Relaxed);
        Ok(Entry {
            pool,
            tokens,
            latest,
            checked: Mutex::new(Vec::new()),
            last_used: Mutex::new(Instant::now()),
            busy: AtomicUsize::new(0),
            live: Arc::clone(&inner.live),
        })
    }

    /// Closes an evicted user's pool (idle connections close now; one still checked out
    /// closes when returned) and keeps its counts.
    fn retire(&self, entry: &Entry) {
        entry.pool.close();
        let tokens = entry.tokens.stats();
        let counters = &self.inner.counters;
        let _ = counters
            .mints_of_evicted
            .fetch_add(tokens.minted, Ordering::Relaxed);
        let _ = counters
            .mint_failures_of_evicted
            .fetch_add(tokens.mint_failures, Ordering::Relaxed);
    }

    /// Drops the users idle past the idle eviction time.
    fn evict_idle(&self) {
        let now = Instant::now();
        let after = self.inner.settings.evict_idle_after;
        let mut users = lock(&self.inner.users);
        let stale: Vec<String> = users
            .iter()
            .filter(|(_, entry)| {
                entry.idle() && now.saturating_duration_since(*lock(&entry.last_used)) >= after
            })
            .map(|(email, _)| email.clone())
            .collect();
        for email in stale {
            if let Some(entry) = users.remove(&email) {
                self.retire(&entry);
                let _ = self
                    .inner
                    .counters
                    .evicted_idle
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The state and counters of the per-user pools.
    ///
    /// ```no_run
    /// # fn demo(users: lakebase_pool::users::UserPools) {
    /// assert!(users.stats().users <= users.stats().max_users);
    /// # }
    /// ```
    pub fn stats(&self) -> UserPoolStats {
        let counters = &self.inner.counters;
        let users = lock(&self.inner.users);
        let mut mints = counters.mints_of_evicted.load(Ordering::Relaxed);
        let mut mint_failures = counters.mint_failures_of_evicted.load(Ordering::Relaxed);
        let mut pool_sizes = Vec::with_capacity(users.len());
        for entry in users.values() {
            let tokens = entry.tokens.stats();
            mints += tokens.minted;
            mint_failures += tokens.mint_failures;
            let stats = entry.pool.stats(None);
            pool_sizes.push((stats.size, stats.size.saturating_sub(stats.available)));
        }
        pool_sizes.sort_unstable_by(|a, b| b.cmp(a));
        UserPoolStats {
            users: users.len(),
            max_users: self.inner.settings.max_users,
            live_pools: self.inner.live.load(Ordering::Relaxed),
            created: counters.created.load(Ordering::Relaxed),
            evicted_lru: counters.evicted_lru.load(Ordering::Relaxed),
            evicted_idle: counters.evicted_idle.load(Ordering::Relaxed),
            refused: counters.refused.load(Ordering::Relaxed),
            token_checks: counters.token_checks.load(Ordering::Relaxed),
            mints,
            mint_failures,
            pool_sizes,
        }
    }

    /// Replaces every session of every user's pool and of the app's: see
    /// [`Pool::retire_all`]. Each user's next checkout logs in anew.
    ///
    /// ```no_run
    /// # fn demo(users: lakebase_pool::users::UserPools) {
    /// // A failover the application was told of: no session from before serves anyone.
    /// users.retire_all();
    /// # }
    /// ```
    pub fn retire_all(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.inner.users).values().cloned().collect();
        for entry in &entries {
            entry.pool.retire_all();
        }
        self.inner.app.retire_all();
    }

    /// Closes every user's pool and the app's: see [`Pool::close`].
    ///
    /// ```no_run
    /// # fn demo(users: lakebase_pool::users::UserPools) {
    /// users.close();
    /// # }
    /// ```
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let drained: Vec<Arc<Entry>> = lock(&self.inner.users).drain().map(|(_, e)| e).collect();
        for entry in &drained {
            self.retire(entry);
        }
        self.inner.app.close();
        if let Some(sweeper) = lock(&self.inner.sweeper).take() {
            sweeper.abort();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(sweeper) = lock(&self.sweeper).take() {
            sweeper.abort();
        }
    }
}
