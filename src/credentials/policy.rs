//! `CachePolicy`: when a [`TokenCache`](crate::TokenCache) asks its provider for a new token.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::defaults;
use crate::error::Error;

/// When the [`TokenCache`](crate::TokenCache) asks its provider for a new token.
///
/// The defaults suit Lakebase tokens, which live for an hour and are checked by Postgres only
/// at login:
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`min_remaining`](Self::min_remaining) | 2 min | a cached token with less life left is not reused; callers wait for a new one |
/// | [`refresh_ahead`](Self::refresh_ahead) | 15 min | once less life is left, one background refresh starts; callers keep the cached token meanwhile |
/// | [`mint_timeout`](Self::mint_timeout) | 30 s | a provider call that takes longer fails |
/// | [`failure_backoff`](Self::failure_backoff) | 1 s doubling to 30 s | after a failed mint, no new attempt before this; a still-valid token is served meanwhile |
///
/// [`CachePolicy::per_connect`] instead mints a new token for every physical connection, like
/// the Python recipe in the Lakebase docs. It costs one workspace call per connection and
/// gives up single-flight minting; use it only when each connection must have its own token.
///
/// ```
/// use std::time::Duration;
/// use lakebase_pool::CachePolicy;
///
/// # fn demo() -> Result<(), lakebase_pool::Error> {
/// let policy = CachePolicy::default()
///     .refresh_ahead(Duration::from_secs(10 * 60))
///     .min_remaining(Duration::from_secs(60));
/// let pool = lakebase_pool::Pool::builder()
///     .host("127.0.0.1")
///     .user("app")
///     .password("local-dev-password")
///     .cache_policy(policy)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    pub(crate) min_remaining: Duration,
    pub(crate) refresh_ahead: Duration,
    pub(crate) mint_timeout: Duration,
    pub(crate) failure_backoff: Backoff,
    pub(crate) per_connect: bool,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            min_remaining: defaults::TOKEN_MIN_REMAINING,
            refresh_ahead: defaults::TOKEN_REFRESH_AHEAD,
            mint_timeout: defaults::TOKEN_MINT_TIMEOUT,
            failure_backoff: Backoff {
                initial: defaults::TOKEN_FAILURE_BACKOFF,
                max: defaults::TOKEN_MAX_FAILURE_BACKOFF,
            },
            per_connect: false,
        }
    }
}

impl CachePolicy {
    /// Mint a new token for every physical connection instead of reusing a cached one.
    /// Stale-while-valid fallback, back-off and timeouts still apply.
    ///
    /// ```
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::CachePolicy::per_connect();
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .cache_policy(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn per_connect() -> Self {
        CachePolicy {
            per_connect: true,
            ..CachePolicy::default()
        }
    }

    /// A cached token is reused only while at least this much of its life is left.
    ///
    /// Default: 2 minutes.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::CachePolicy::default().min_remaining(Duration::from_secs(60));
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .cache_policy(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn min_remaining(mut self, min_remaining: Duration) -> Self {
        self.min_remaining = min_remaining;
        self
    }

    /// Start one background refresh once a cached token has less than this much life left.
    /// Must not be shorter than [`min_remaining`](Self::min_remaining).
    ///
    /// Default: 15 minutes.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::CachePolicy::default().refresh_ahead(Duration::from_secs(600));
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .cache_policy(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn refresh_ahead(mut self, refresh_ahead: Duration) -> Self {
        self.refresh_ahead = refresh_ahead;
        self
    }

    /// How long one call to the provider may take before it counts as failed.
    ///
    /// Default: 30 seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::CachePolicy::default().mint_timeout(Duration::from_secs(10));
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .cache_policy(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn mint_timeout(mut self, mint_timeout: Duration) -> Self {
        self.mint_timeout = mint_timeout;
        self
    }

    /// After a failed mint, wait `initial` before asking the provider again, doubling after
    /// each further failure up to `max`. Callers arriving meanwhile get the still-valid cached
    /// token, or, when there is none, [`Error::Credentials`] at once.
    ///
    /// Default: 1 second doubling up to 30 seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo() -> Result<(), lakebase_pool::Error> {
    /// let policy = lakebase_pool::CachePolicy::default()
    ///     .failure_backoff(Duration::from_millis(500), Duration::from_secs(10));
    /// let pool = lakebase_pool::Pool::builder()
    ///     .host("127.0.0.1")
    ///     .user("app")
    ///     .password("local-dev-password")
    ///     .cache_policy(policy)
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn failure_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.failure_backoff = Backoff { initial, max };
        self
    }

    /// Checks the settings as a whole.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.refresh_ahead < self.min_remaining {
            return Err(Error::invalid(
                "refresh_ahead",
                format!(
                    "{:?} is shorter than min_remaining ({:?}); refresh must start before a \
                     token becomes unusable",
                    self.refresh_ahead, self.min_remaining
                ),
            ));
        }
        if self.mint_timeout.is_zero() {
            return Err(Error::invalid("mint_timeout", "must be greater than zero"));
        }
        self.failure_backoff.validate("failure_backoff")?;
        Ok(())
    }

    pub(crate) fn mint_timeout_value(&self) -> Duration {
        self.mint_timeout
    }
}
