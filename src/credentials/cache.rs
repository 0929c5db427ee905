//! `TokenCache`: when to ask the provider for a new token, and what to serve meanwhile.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tracing::Instrument;

use super::policy::CachePolicy;
use super::{Credential, CredentialProvider};
use crate::defaults;
use crate::error::{Error, SharedError, TokenKind};
use crate::telemetry::PoolTelemetry;

mod updates;
pub use self::updates::TokenUpdates;

/// A token with less life left than this is never handed out, even as a fallback: the login
/// it is used for must still complete before it expires.
const LOGIN_MARGIN: Duration = Duration::from_secs(5);

/// Counters of a [`TokenCache`], as reported by [`TokenCache::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenStats {
    /// Tokens the provider returned successfully.
    pub minted: u64,
    /// Provider calls that failed or timed out.
    pub mint_failures: u64,
    /// Requests answered from the cache without calling the provider.
    pub served_from_cache: u64,
    /// Refreshes forced because the server rejected a cached token.
    pub forced_refreshes: u64,
    /// Life left on the cached token (`None` when none is cached or it never expires).
    pub expires_in: Option<Duration>,
}

/// Caches the tokens of a [`CredentialProvider`] and decides when to mint new ones.
///
/// * **Reuse**: a token with at least [`min_remaining`](CachePolicy::min_remaining) left is
///   returned at once; callers holding a valid token never wait on a mint.
/// * **Refresh ahead**: once less than [`refresh_ahead`](CachePolicy::refresh_ahead) is left,
///   one background task mints the next token.
/// * **Single flight**: however many callers need a new token at once, the provider is called
///   once. The call runs on a task of its own, so it completes (within the
///   [`mint_timeout`](CachePolicy::mint_timeout)) and fills the cache even when every caller
///   that waited for it was cancelled; a provider that panics counts as a failed mint.
/// * **Stale while valid**: when a mint fails, a cached token that has not expired is still
///   served; new attempts are spaced by [`failure_backoff`](CachePolicy::failure_backoff).
/// * **Forced refresh**: [`force_refresh`](Self::force_refresh) replaces a token the server
///   rejected, once, however many connections report the same token.
///
/// * **Bounded lifetimes**: an expiry more than 24 hours ahead is taken as 24 hours ahead, so
///   an absurd `expire_time` cannot keep a token in use for ever.
///
/// Expiry is counted from the credential's own `expires_at`, on the system clock, so a machine
/// that was asleep does not hand out a token that expired while it slept.
///
/// Cloning is cheap; clones share the cache.
///
/// ```
/// use lakebase_pool::{CachePolicy, TokenCache};
/// use lakebase_pool::credentials::StaticPassword;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lakebase_pool::Error> {
/// let cache = TokenCache::new(StaticPassword::new("pw"), CachePolicy::default());
/// let credential = cache.token().await?;
/// assert_eq!(credential.secret().expose(), "pw");
/// assert_eq!(cache.stats().minted, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the tokens are, for error messages and logs.
    kind: TokenKind,
    provider: Box<dyn CredentialProvider>,
    policy: CachePolicy,
    clock: Clock,
    state: Mutex<State>,
    minted: AtomicU64,
    mint_failures: AtomicU64,
    served_from_cache: AtomicU64,
    forced_refreshes: AtomicU64,
    /// Where mint durations (and spans) go: the instruments of the first pool that uses the
    /// cache.
    telemetry: OnceLock<PoolTelemetry>,
    /// Each token the cache gets, for [`TokenCache::subscribe`].
    updates: watch::Sender<Option<Arc<Credential>>>,
}

#[derive(Default)]
struct State {
    current: Option<Arc<Credential>>,
    /// The shared mint in flight, if any; it carries the outcome once the mint has ended
    /// (and the outcome is recorded here). Everyone who needs a new token meanwhile waits
    /// on it.
    in_flight: Option<watch::Receiver<Option<Outcome>>>,
    consecutive_failures: u32,
    last_error: Option<SharedError>,
    /// No mint before this moment (set after a failure).
    retry_at: Option<SystemTime>,
}

/// How usable a cached token is at a given moment.
#[derive(Debug, PartialEq, Eq)]
enum Freshness {
    /// Reusable; `refresh_due` once it is within `refresh_ahead` of expiry.
    Fresh {
        refresh_due: bool,
    },
    /// Too close to expiry to reuse, still good for a login (the fallback when minting fails).
    Valid,
    Expired,
}

/// The system clock, or in unit tests one driven by tokio's pausable clock.
#[derive(Clone, Copy, Debug)]
enum Clock {
    System,
    #[cfg(test)]
    Tokio {
        origin: SystemTime,
        started: tokio::time::Instant,
    },
}

impl Clock {
    fn now(self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            #[cfg(test)]
            Clock::Tokio { origin, started } => origin + started.elapsed(),
        }
    }
}

/// Why a provider call produced no usable credential, when the provider itself did not fail.
#[derive(Debug, thiserror::Error)]
enum MintError {
    #[error(
        "the credential provider did not answer within {0:.1?} (see `CachePolicy::mint_timeout`)"
    )]
    Timeout(Duration),
    #[error("the credential provider returned an empty token")]
    EmptySecret,
    #[error(
        "the credential provider returned a token that expired {0:.1?} ago (check the system clock)"
    )]
    AlreadyExpired(Duration),
    #[error(
        "the token mint ended without a result (the credential provider panicked, or the \
         runtime is shutting down)"
    )]
    Abandoned,
}

fn abandoned() -> Outcome {
    Err(Arc::new(MintError::Abandoned))
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // No code panics while holding this lock; recover the data rather than propagate a poison.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a mint produced: the new token, or why there is none.
type Outcome = Result<Arc<Credential>, SharedError>;

/// What a caller that needs a new token does next.
enum Next {
    /// Wait for the shared mint in flight.
    Wait(watch::Receiver<Option<Outcome>>),
    /// Launch this mint, then wait for it like everyone else.
    Start(Flight, watch::Receiver<Option<Outcome>>),
    /// Nothing to wait for: the answer is known now (backing off after a failure).
    Done(Result<Arc<Credential>, Error>),
}

/// One shared mint, run in a task of its own so that no caller's cancellation cancels it.
/// Dropping it (at the end of the task, or when the provider panics and the task unwinds)
/// records the outcome, clears the in-flight mark and wakes every waiter.
struct Flight {
    cache: TokenCache,
    outcome: Option<Result<Credential, SharedError>>,
    done: watch::Sender<Option<Outcome>>,
}

impl Flight {
    /// Runs the mint on its own task.
    fn launch(self) {
        drop(tokio::spawn(self.run()));
    }

    async fn run(mut self) {
        self.outcome = Some(self.cache.mint().await);
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let outcome = match self.outcome.take() {
            Some(Ok(credential)) => Ok(Arc::new(credential)),
            Some(Err(error)) => Err(error),
            None => Err(Arc::new(MintError::Abandoned) as SharedError),
        };
        {
            let mut state = lock(&self.cache.inner.state);
            match &outcome {
                Ok(credential) => self
                    .cache
                    .record_success(&mut state, Arc::clone(credential)),
                Err(error) => {
                    let _ = self.cache.record_failure(&mut state, Arc::clone(error));
                }
            }
            state.in_flight = None;
        }
        let _ = self.done.send(Some(outcome));
    }
}

impl TokenCache {
    /// Where its provider's fixed password comes from, when it has one (see
    /// [`CredentialProvider::fixed_password_source`]).
    pub(crate) fn fixed_password_source(&self) -> Option<&str> {
        self.inner.provider.fixed_password_source()
    }

    /// How long one mint may take (the cache's policy).
    pub(crate) fn mint_timeout(&self) -> Duration {
        self.inner.policy.mint_timeout_value()
    }

    /// A cache in front of `provider`. The policy is not checked here;
    /// [`PoolBuilder::build`](crate::PoolBuilder::build) checks it.
    ///
    /// ```
    /// use lakebase_pool::{CachePolicy, TokenCache};
    /// use lakebase_pool::credentials::StaticPassword;
    ///
    /// let cache = TokenCache::new(StaticPassword::new("pw"), CachePolicy::default());
    /// # let _ = cache;
    /// ```
    pub fn new(provider: impl CredentialProvider, policy: CachePolicy) -> Self {
        Self::with_clock(
            Box::new(provider),
            policy,
            Clock::System,
            TokenKind::Database,
        )
    }

    /// A cache whose errors and logs name its tokens as `kind`.
    pub(crate) fn labelled(
        provider: Box<dyn CredentialProvider>,
        policy: CachePolicy,
        kind: TokenKind,
    ) -> Self {
        Self::with_clock(provider, policy, Clock::System, kind)
    }

    fn with_clock(
        provider: Box<dyn CredentialProvider>,
        policy: CachePolicy,
        clock: Clock,
        kind: TokenKind,
    ) -> Self {
        TokenCache {
            inner: Arc::new(Inner {
                kind,
                provider,
                policy,
                clock,
                state: Mutex::new(State::default()),
                minted: AtomicU64::new(0),
                mint_failures: AtomicU64::new(0),
                served_from_cache: AtomicU64::new(0),
                forced_refreshes: AtomicU64::new(0),
                telemetry: OnceLock::new(),
                updates: watch::Sender::new(None),
            }),
        }
    }

    /// A token to log in with now.
    ///
    /// Returns the cached token when it is fresh enough (starting a background refresh when it
    /// is due), otherwise waits for the one mint in flight, starting it if needed. The mint
    /// runs on its own task: cancelling this call does not cancel it.
    ///
    /// # Errors
    ///
    /// [`Error::Credentials`] when the provider failed (or is being backed off from) and no
    /// cached token is still valid.
    ///
    /// ```no_run
    /// # async fn demo(cache: lakebase_pool::TokenCache) -> Result<(), lakebase_pool::Error> {
    /// let credential = cache.token().await?;
    /// println!("token expires at {:?}", credential.expiry());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn token(&self) -> Result<Arc<Credential>, Error> {
        if self.inner.policy.per_connect {
            return self.mint_alone().await;
        }
        let next = {
            let mut state = lock(&self.inner.state);
            match self.fresh_from_cache(&mut state) {
                Some(cached) => Err(cached),
                None => Ok(self.join_or_start_mint(&mut state)),
            }
        };
        match next {
            Ok(next) => self.finish(next).await,
            Err((credential, refresh)) => {
                if let Some(refresh) = refresh {
                    refresh.launch();
                }
                Ok(credential)
            }
        }
    }

    /// Replaces `rejected`, a token the server refused at login, and returns its successor.
    ///
    /// When the cache already holds a newer token (another connection reported the same
    /// rejection first), that token is returned and the provider is not called, so a burst
    /// of failed logins costs one mint. The rejected token is never served again.
    ///
    /// # Errors
    ///
    /// [`Error::Credentials`] when the provider fails (or is being backed off from).
    ///
    /// ```no_run
    /// # async fn demo(cache: lakebase_pool::TokenCache) -> Result<(), lakebase_pool::Error> {
    /// let rejected = cache.token().await?;
    /// // ... the server answered 28P01 to a login with `rejected` ...
    /// let fresh = cache.force_refresh(&rejected).await?;
    /// assert!(!std::sync::Arc::ptr_eq(&rejected, &fresh));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn force_refresh(
        &self,
        rejected: &Arc<Credential>,
    ) -> Result<Arc<Credential>, Error> {
        let next = {
            let mut state = lock(&self.inner.state);
            match &state.current {
                Some(current) if Arc::ptr_eq(current, rejected) => {
                    state.current = None;
                    // Subscribers' `latest` no longer offers the refused token.
                    let _ = self.inner.updates.send_replace(None);
                    let _ = self.inner.forced_refreshes.fetch_add(1, Ordering::Relaxed);
                }
                Some(current) if self.freshness(current) != Freshness::Expired => {
                    return Ok(Arc::clone(current));
                }
                _ => {}
            }
            if self.inner.policy.per_connect {
                None
            } else {
                Some(self.join_or_start_mint(&mut state))
            }
        };
        match next {
            Some(next) => self.finish(next).await,
            None => self.mint_alone().await,
        }
    }

    /// A subscription to the tokens the cache gets from now on: for a pool that keeps a
    /// password of its own (sqlx's `set_connect_options`) and must be handed each new token.
    /// Subscribing mints nothing; the cache mints when asked ([`token`](Self::token)), ahead
    /// of expiry once asked within [`refresh_ahead`](CachePolicy::refresh_ahead) of it.
    ///
    /// ```
    /// use lakebase_pool::{CachePolicy, TokenCache};
    /// use lakebase_pool::credentials::StaticPassword;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lakebase_pool::Error> {
    /// let cache = TokenCache::new(StaticPassword::new("pw"), CachePolicy::default());
    /// let mut updates = cache.subscribe();
    /// let minted = cache.token().await?;
    /// let seen = updates.changed().await.expect("the cache is alive");
    /// assert!(std::sync::Arc::ptr_eq(&minted, &seen));
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self) -> TokenUpdates {
        TokenUpdates {
            receiver: self.inner.updates.subscribe(),
        }
    }

    /// When a holder of `credential` should ask again for the cache to refresh it ahead of
    /// expiry (`None`: it never expires).
    #[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
    pub(crate) fn refresh_due(&self, credential: &Credential) -> Option<SystemTime> {
        updates::refresh_due(credential, self.inner.policy.refresh_ahead)
    }

    /// How much life a token must have left to be logged in with: the fallback rule's
    /// margin, never more than the policy's `min_remaining`.
    #[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
    pub(crate) fn login_margin(&self) -> Duration {
        LOGIN_MARGIN.min(self.inner.policy.min_remaining)
    }

    /// Whether the cache mints a token for every login (`CachePolicy::per_connect`).
    #[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
    pub(crate) fn per_connect(&self) -> bool {
        self.inner.policy.per_connect
    }

    /// A snapshot of the cache's counters.
    ///
    /// ```
    /// use lakebase_pool::{CachePolicy, TokenCache};
    /// use lakebase_pool::credentials::StaticPassword;
    ///
    /// let cache = TokenCache::new(StaticPassword::new("pw"), CachePolicy::default());
    /// assert_eq!(cache.stats().minted, 0);
    /// ```
    pub fn stats(&self) -> TokenStats {
        let expires_in = lock(&self.inner.state)
            .current
            .as_ref()
            .and_then(|c| c.expiry())
            .map(|at| {
                at.duration_since(self.inner.clock.now())
                    .unwrap_or_default()
            });
        TokenStats {
            minted: self.inner.minted.load(Ordering::Relaxed),
            mint_failures: self.inner.mint_failures.load(Ordering::Relaxed),
            served_from_cache: self.inner.served_from_cache.load(Ordering::Relaxed),
            forced_refreshes: self.inner.forced_refreshes.load(Ordering::Relaxed),
            expires_in,
        }
    }

    /// Records mints with `telemetry`, unless a pool's instruments already do (a cache shared
    /// by several pools reports under the first one's name).
    pub(crate) fn attach_telemetry(&self, telemetry: &PoolTelemetry) {
        let _ = self.inner.telemetry.set(telemetry.clone());
    }

    /// Lets the next request mint at once, whatever the backoff after a failure says: for
    /// when what made the mint fail has changed (a signed-in user came back with a new token).
    pub(crate) fn forget_failures(&self) {
        let mut state = lock(&self.inner.state);
        state.retry_at = None;
        state.consecutive_failures = 0;
    }

    fn freshness(&self, credential: &Credential) -> Freshness {
        let Some(expires_at) = credential.expiry() else {
            return Freshness::Fresh { refresh_due: false };
        };
        let left = expires_at
            .duration_since(self.inner.clock.now())
            .unwrap_or_default();
        if left >= self.inner.policy.min_remaining {
            Freshness::Fresh {
                refresh_due: left < self.inner.policy.refresh_ahead,
            }
        } else if left > LOGIN_MARGIN {
            Freshness::Valid
        } else {
            Freshness::Expired
        }
    }

    fn backing_off(&self, state: &State) -> bool {
        state.retry_at.is_some_and(|at| self.inner.clock.now() < at)
    }

    /// The cached token if it may be reused, with the background refresh to launch when one
    /// is due (nobody waits for it: callers keep the cached token meanwhile).
    fn fresh_from_cache(&self, state: &mut State) -> Option<(Arc<Credential>, Option<Flight>)> {
        let current = state.current.clone()?;
        let Freshness::Fresh { refresh_due } = self.freshness(&current) else {
            return None;
        };
        let refresh = (refresh_due && state.in_flight.is_none() && !self.backing_off(state))
            .then(|| self.start_mint(state).1);
        let _ = self.inner.served_from_cache.fetch_add(1, Ordering::Relaxed);
        Some((current, refresh))
    }

    /// Joins the mint in flight, or starts one unless backing off after a failure.
    fn join_or_start_mint(&self, state: &mut State) -> Next {
        if let Some(in_flight) = &state.in_flight {
            return Next::Wait(in_flight.clone());
        }
        if let Some(answer) = self.answer_while_backing_off(state) {
            return Next::Done(answer);
        }
        let (receiver, flight) = self.start_mint(state);
        Next::Start(flight, receiver)
    }

    /// While backing off after a failure: the fallback answer, without calling the provider.
    fn answer_while_backing_off(&self, state: &State) -> Option<Result<Arc<Credential>, Error>> {
        let now = self.inner.clock.now();
        match (state.retry_at, &state.last_error) {
            (Some(retry_at), Some(error)) if now < retry_at => {
                Some(self.fallback(state, error, retry_at.duration_since(now).ok()))
            }
            _ => None,
        }
    }

    /// Marks a mint as in flight; the caller launches it once the state lock is released (a
    /// flight dropped at once, as on a runtime shutting down, takes the lock itself).
    fn start_mint(&self, state: &mut State) -> (watch::Receiver<Option<Outcome>>, Flight) {
        let (done, receiver) = watch::channel(None);
        state.in_flight = Some(receiver.clone());
        let flight = Flight {
            cache: self.clone(),
            outcome: None,
            done,
        };
        (receiver, flight)
    }

    /// Waits (when there is anything to wait for) for the mint's outcome: its token, or the
    /// fallback when it failed.
    async fn finish(&self, next: Next) -> Result<Arc<Credential>, Error> {
        let mut in_flight = match next {
            Next::Done(answer) => return answer,
            Next::Wait(in_flight) => in_flight,
            Next::Start(flight, in_flight) => {
                flight.launch();
                in_flight
            }
        };
        // The flight always sends before it goes; a closed channel would mean it could not.
        let outcome = match in_flight.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or_else(abandoned),
            Err(_) => abandoned(),
        };
        match outcome {
            Ok(credential) => Ok(credential),
            Err(error) => {
                let state = lock(&self.inner.state);
                let retry_in = state
                    .retry_at
                    .and_then(|at| at.duration_since(self.inner.clock.now()).ok());
                self.fallback(&state, &error, retry_in)
            }
        }
    }

    /// [`CachePolicy::per_connect`]: one provider call for this caller alone (still on its own
    /// task, so that a panicking provider is a failed mint), unless backing off.
    async fn mint_alone(&self) -> Result<Arc<Credential>, Error> {
        if let Some(answer) = self.answer_while_backing_off(&lock(&self.inner.state)) {
            return answer;
        }
        let cache = self.clone();
        let outcome = tokio::spawn(async move { cache.mint().await })
            .await
            .unwrap_or_else(|_| Err(Arc::new(MintError::Abandoned)));
        let mut state = lock(&self.inner.state);
        match outcome {
            Ok(credential) => {
                let credential = Arc::new(credential);
                self.record_success(&mut state, Arc::clone(&credential));
                Ok(credential)
            }
            Err(error) => {
                let retry_in = self.record_failure(&mut state, Arc::clone(&error));
                self.fallback(&state, &error, Some(retry_in))
            }
        }
    }

    fn record_success(&self, state: &mut State, credential: Arc<Credential>) {
        let _ = self
            .inner
            .updates
            .send_replace(Some(Arc::clone(&credential)));
        state.current = Some(credential);
        state.consecutive_failures = 0;
        state.last_error = None;
        state.retry_at = None;
    }

    /// Records a failed mint and returns how long to back off.
    fn record_failure(&self, state: &mut State, error: SharedError) -> Duration {
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let backoff = self
            .inner
            .policy
            .failure_backoff
            .step(state.consecutive_failures);
        // A back-off of `Duration::MAX` waits decades, never "not at all" by overflowing.
        state.retry_at = self
            .inner
            .clock
            .now()
            .checked_add(backoff.min(crate::backoff::FAR_FUTURE));
        tracing::warn!(
            kind = self.inner.kind.as_str(),
            error = %error,
            consecutive_failures = state.consecutive_failures,
            retry_in_ms = crate::backoff::millis(backoff),
            "token mint failed"
        );
        state.last_error = Some(error);
        backoff
    }

    /// The cached token if it is still good for a login, else the provider's error.
    fn fallback(
        &self,
        state: &State,
        error: &SharedError,
        retry_in: Option<Duration>,
    ) -> Result<Arc<Credential>, Error> {
        match &state.current {
            Some(current) if self.freshness(current) != Freshness::Expired => {
                tracing::debug!(
                    kind = self.inner.kind.as_str(),
                    "serving the cached token while minting fails"
                );
                Ok(Arc::clone(current))
            }
            _ => Err(self.credentials_error(error, retry_in)),
        }
    }

    fn credentials_error(&self, error: &SharedError, retry_in: Option<Duration>) -> Error {
        Error::Credentials {
            kind: self.inner.kind,
            retry_in,
            source: Arc::clone(error),
        }
    }

    /// One provider call under the mint timeout, with the result checked.
    async fn mint(&self) -> Result<Credential, SharedError> {
        let span = tracing::info_span!("lakebase.token.mint", kind = self.inner.kind.as_str());
        let timeout = self.inner.policy.mint_timeout;
        let started = Instant::now();
        let call = tokio::time::timeout(timeout, self.inner.provider.credential());
        let (result, error_type) = match call.instrument(span.clone()).await {
            Err(_) => (
                Err(Arc::new(MintError::Timeout(timeout)) as SharedError),
                Some("timeout"),
            ),
            Ok(Err(error)) => (Err(SharedError::from(error)), Some("provider_error")),
            Ok(Ok(credential)) => {
                let checked = self.check(credential);
                let error_type = checked.is_err().then_some("invalid_credential");
                (checked, error_type)
            }
        };
        if let Some(telemetry) = self.inner.telemetry.get() {
            telemetry.mint(started.elapsed(), error_type, self.inner.kind.as_str());
        }
        match &result {
            Ok(credential) => {
                let _ = self.inner.minted.fetch_add(1, Ordering::Relaxed);
                let expires_in = credential.expiry().map(|at| {
                    at.duration_since(self.inner.clock.now())
                        .unwrap_or_default()
                        .as_secs()
                });
                match expires_in {
                    Some(expires_in_s) => {
                        tracing::info!(parent: &span, kind = self.inner.kind.as_str(), expires_in_s, "minted a token");
                    }
                    // A fixed password: nothing was really minted.
                    None => {
                        tracing::debug!(parent: &span, kind = self.inner.kind.as_str(), "read a fixed credential")
                    }
                }
            }
            Err(_) => {
                let _ = self.inner.mint_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn check(&self, credential: Credential) -> Result<Credential, SharedError> {
        if credential.secret().is_empty() {
            return Err(Arc::new(MintError::EmptySecret) as SharedError);
        }
        let Some(expires_at) = credential.expiry() else {
            return Ok(credential);
        };
        let now = self.inner.clock.now();
        if let Ok(ago) = now.duration_since(expires_at) {
            return Err(Arc::new(MintError::AlreadyExpired(ago)) as SharedError);
        }
        let left = expires_at.duration_since(now).unwrap_or_default();
        if left > defaults::MAX_TOKEN_LIFETIME {
            tracing::warn!(
                kind = self.inner.kind.as_str(),
                expires_in_s = left.as_secs(),
                "the credential provider claims a lifetime of more than 24 hours; taking it \
                 as 24 hours"
            );
            return Ok(credential.expires_at(now + defaults::MAX_TOKEN_LIFETIME));
        }
        if left < self.inner.policy.min_remaining {
            tracing::warn!(
                kind = self.inner.kind.as_str(),
                expires_in_s = left.as_secs(),
                min_remaining_s = self.inner.policy.min_remaining.as_secs(),
                "the credential provider returned a token that expires sooner than \
                 min_remaining; every connection will mint a new one"
            );
        }
        Ok(credential)
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("policy", &self.inner.policy)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
