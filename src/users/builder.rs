//! `UserPoolsBuilder`: the per-user pools' settings, checked in `build()`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::OnceCell;

use super::check::TokenChecks;
use super::forwarded::ForwardedHeaders;
use super::provider::SharedHost;
use super::{Counters, Inner, UserPools, lock};
use crate::{Error, PoolBuilder};

/// The limits every user's pool and the registry keep to.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) max_users: usize,
    pub(super) max_size: usize,
    pub(super) idle_timeout: Duration,
    pub(super) evict_idle_after: Duration,
    pub(super) fall_back_to_app: bool,
}

/// Configures [`UserPools`]; from [`UserPools::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use lakebase_pool::users::{ForwardedHeaders, UserPools};
///
/// # fn demo() -> Result<(), lakebase_pool::Error> {
/// let users = UserPools::builder(lakebase_pool::PoolBuilder::from_env()?)
///     .max_users(100)
///     .max_size_per_user(2)
///     .idle_timeout(Duration::from_secs(30))
///     .forwarded_headers(ForwardedHeaders::WhenInDatabricksApps)
///     .build()?;
/// # let _ = users;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `.build()` is called"]
#[derive(Debug)]
pub struct UserPoolsBuilder {
    app: PoolBuilder,
    settings: Settings,
    forwarded_headers: ForwardedHeaders,
}

impl UserPoolsBuilder {
    /// The defaults, for the app's pool `app`.
    pub(super) fn new(app: PoolBuilder) -> Self {
        UserPoolsBuilder {
            app,
            settings: Settings {
                max_users: crate::defaults::MAX_USERS,
                max_size: crate::defaults::USER_MAX_SIZE,
                idle_timeout: crate::defaults::USER_IDLE_TIMEOUT,
                evict_idle_after: crate::defaults::USER_EVICT_AFTER,
                fall_back_to_app: false,
            },
            forwarded_headers: ForwardedHeaders::default(),
        }
    }

    /// Most users with a pool at once; the least recently used idle one makes room for a new
    /// one. With [`max_size_per_user`](Self::max_size_per_user), this bounds the connections
    /// the users hold.
    ///
    /// Default: 32 (see [`defaults`](crate::defaults)).
    ///
    /// ```no_run
    /// # fn demo(builder: lakebase_pool::users::UserPoolsBuilder) {
    /// let builder = builder.max_users(200);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn max_users(mut self, max_users: usize) -> Self {
        self.settings.max_users = max_users;
        self
    }

    /// Most connections in one user's pool.
    ///
    /// Default: 2.
    ///
    /// ```no_run
    /// # fn demo(builder: lakebase_pool::users::UserPoolsBuilder) {
    /// let builder = builder.max_size_per_user(3);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn max_size_per_user(mut self, max_size: usize) -> Self {
        self.settings.max_size = max_size;
        self
    }

    /// How long a user's connection may sit idle before it is closed (users come and go;
    /// their sessions should not linger on the server).
    ///
    /// Default: 30 seconds.
    ///
    /// ```no_run
    /// # fn demo(builder: lakebase_pool::users::UserPoolsBuilder) {
    /// let builder = builder.idle_timeout(std::time::Duration::from_secs(10));
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.settings.idle_timeout = idle_timeout;
        self
    }

    /// How long a user may go without a request before their pool, cached credentials and
    /// tokens are dropped.
    ///
    /// Default: 5 minutes.
    ///
    /// ```no_run
    /// # fn demo(builder: lakebase_pool::users::UserPoolsBuilder) {
    /// let builder = builder.evict_idle_after(std::time::Duration::from_secs(600));
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn evict_idle_after(mut self, after: Duration) -> Self {
        self.settings.evict_idle_after = after;
        self
    }

    /// Whether to read the forwarded user headers; see [`ForwardedHeaders`].
    ///
    /// Default: [`ForwardedHeaders::WhenInDatabricksApps`].
    ///
    /// ```no_run
    /// # fn demo(builder: lakebase_pool::users::UserPoolsBuilder) {
    /// use lakebase_pool::users::ForwardedHeaders;
    /// let builder = builder.forwarded_headers(ForwardedHeaders::Ignored);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn forwarded_headers(mut self, trust: ForwardedHeaders) -> Self {
        self.forwarded_headers = trust;
        self
    }

    /// Serve requests without a (trusted) signed-in user with the app's own pool, instead of
    /// refusing them. Requests whose user is refused are refused all the same.
    ///
    /// Default: `false`.
    ///
    /// ```no_run
    /// # fn demo(builder: lakebase_pool::users::UserPoolsBuilder) {
    /// let builder = builder.fall_back_to_app(true);
    /// # let _ = builder;
    /// # }
    /// ```
    pub fn fall_back_to_app(mut self, fall_back: bool) -> Self {
        self.settings.fall_back_to_app = fall_back;
        self
    }

    /// Builds the app's pool and the (empty) user pools.
    ///
    /// Must be called within a Tokio runtime, like [`PoolBuilder::build`].
    ///
    /// # Errors
    ///
    /// Those of [`PoolBuilder::build`]; [`Error::InvalidConfig`] when the app's settings name
    /// no Lakebase endpoint (user credentials are minted for one) or a limit is zero.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool::Error> {
    /// let users = lakebase_pool::users::UserPools::builder(lakebase_pool::PoolBuilder::from_env()?).build()?;
    /// # let _ = users;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build(self) -> Result<UserPools, Error> {
        let settings = self.settings;
        for (setting, value) in [
            ("max_users", settings.max_users),
            ("max_size_per_user", settings.max_size),
        ] {
            if value == 0 {
                return Err(Error::invalid(setting, "must be at least 1"));
            }
        }
        if settings.evict_idle_after.is_zero() {
            return Err(Error::invalid(
                "evict_idle_after",
                "must be greater than zero",
            ));
        }
        let in_databricks_app = self.app.in_databricks_app();
        let (app, template) = self.app.build_with_template()?;
        let (Some(workspace), Some(endpoint)) =
            (template.workspace.clone(), template.endpoint.clone())
        else {
            return Err(Error::invalid(
                "lakebase_endpoint",
                "per-user pools mint each user's credentials for a Lakebase endpoint; set \
                 `.lakebase_endpoint(..)` (or LAKEBASE_ENDPOINT) on the app's pool builder",
            ));
        };
        let host = template.base.get_hosts().is_empty().then(|| {
            Arc::new(SharedHost {
                workspace: workspace.clone(),
                endpoint: endpoint.clone(),
                host: OnceCell::new(),
            })
        });
        let trusted = self.forwarded_headers.trusted(in_databricks_app);
        tracing::info!(
            trusted,
            max_users = settings.max_users,
            "per-user pools ready; forwarded user headers are {}",
            match (trusted, self.forwarded_headers) {
                (true, _) => "trusted",
                (false, ForwardedHeaders::WhenInDatabricksApps) => {
                    concat!(
                        "ignored: the app's pool builder did not come from an environment ",
                        "with DATABRICKS_APP_NAME (use PoolBuilder::from_env, or ",
                        "ForwardedHeaders::Trusted behind a proxy that sets them)"
                    )
                }
                (false, _) => "ignored",
            }
        );
        let sweep_every = (settings.evict_idle_after / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        let pools = UserPools {
            inner: Arc::new(Inner {
                app,
                template,
                workspace,
                endpoint,
                host,
                settings,
                trusted,
                users: Mutex::new(HashMap::new()),
                checks: TokenChecks::default(),
                closed: AtomicBool::new(false),
                arrivals: AtomicU64::new(0),
                live: Arc::new(AtomicUsize::new(0)),
                counters: Counters::default(),
                sweeper: Mutex::new(None),
            }),
        };
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&pools.inner), sweep_every));
        *lock(&pools.inner.sweeper) = Some(sweeper);
        #[cfg(feature = "opentelemetry")]
        pools.observe();
        Ok(pools)
    }
}

/// Evicts idle users every `every`, for as long as the pools exist.
async fn sweep(pools: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let _ = ticks.tick().await;
        let Some(inner) = pools.upgrade() else { return };
        UserPools { inner }.evict_idle();
    }
}
