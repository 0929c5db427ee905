//! [`TokenUpdates`]: the tokens a [`TokenCache`](super::TokenCache) gets, as it gets them, for
//! pools that keep a password of their own (sqlx's) and must be told when it changes.

use std::sync::Arc;

use tokio::sync::watch;

use crate::credentials::Credential;

/// A subscription to the tokens of a [`TokenCache`](crate::TokenCache), from
/// [`TokenCache::subscribe`](crate::TokenCache::subscribe): each token the cache gets (minted
/// ahead of expiry, after an expiry, or forced after a rejection) is seen by every
/// subscriber. A subscriber that falls behind sees the newest token, not every one.
///
/// ```no_run
/// # async fn demo(cache: lakebase_pool::TokenCache) {
/// let mut updates = cache.subscribe();
/// while let Some(token) = updates.changed().await {
///     // Hand `token.secret()` to whatever logs in with it next.
///     println!("new token, expires at {:?}", token.expiry());
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct TokenUpdates {
    pub(super) receiver: watch::Receiver<Option<Arc<Credential>>>,
}

impl TokenUpdates {
    /// Waits for the next token the cache gets, and returns it; `None` once the cache is
    /// gone (every clone of it dropped), when no more will come.
    ///
    /// Cancel-safe: dropping the future loses no token (the next call returns it).
    ///
    /// ```no_run
    /// # async fn demo(mut updates: lakebase_pool::credentials::TokenUpdates) {
    /// if let Some(token) = updates.changed().await {
    ///     assert!(!token.secret().expose().is_empty());
    /// }
    /// # }
    /// ```
    pub async fn changed(&mut self) -> Option<Arc<Credential>> {
        loop {
            self.receiver.changed().await.ok()?;
            if let Some(token) = self.receiver.borrow_and_update().clone() {
                return Some(token);
            }
        }
    }

    /// The newest token the cache holds, if any: none before the first mint, nor once the
    /// server refused it ([`force_refresh`](crate::TokenCache::force_refresh)) until the next
    /// one. It may be close to expiry: ask [`TokenCache::token`](crate::TokenCache::token)
    /// for one to log in with.
    ///
    /// ```
    /// use lakebase_pool::{CachePolicy, TokenCache};
    /// use lakebase_pool::credentials::StaticPassword;
    ///
    /// let cache = TokenCache::new(StaticPassword::new("pw"), CachePolicy::default());
    /// assert!(cache.subscribe().latest().is_none()); // nothing minted yet
    /// ```
    pub fn latest(&self) -> Option<Arc<Credential>> {
        self.receiver.borrow().clone()
    }
}

/// When a holder of `credential` should ask the cache again so that the cache refreshes it
/// ahead of expiry: `refresh_ahead` before it expires (`None`: it never expires).
#[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
pub(crate) fn refresh_due(
    credential: &Credential,
    refresh_ahead: std::time::Duration,
) -> Option<std::time::SystemTime> {
    let expiry = credential.expiry()?;
    Some(
        expiry
            .checked_sub(refresh_ahead)
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH),
    )
}
