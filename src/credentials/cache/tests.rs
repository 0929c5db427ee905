//! The token cache, tested against a provider of the tests' own.

use std::sync::atomic::AtomicUsize;
use std::time::UNIX_EPOCH;

use super::*;
use crate::BoxError;
use crate::error::BoxFuture;

/// What the scripted provider does on its next call.
#[derive(Clone, Copy)]
enum Step {
    /// Succeed after `delay` with a token living `ttl`.
    Ok {
        delay: Duration,
        ttl: Duration,
    },
    Fail,
    Hang,
    Panic,
}

/// A provider whose behaviour the test scripts; it counts calls and numbers its tokens.
struct Scripted {
    clock: Clock,
    calls: Arc<AtomicUsize>,
    step: Arc<Mutex<Step>>,
}

impl CredentialProvider for Scripted {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, BoxError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let step = *self.step.lock().unwrap();
        let clock = self.clock;
        Box::pin(async move {
            match step {
                Step::Ok { delay, ttl } => {
                    tokio::time::sleep(delay).await;
                    Ok(Credential::new(format!("token-{n}")).expires_at(clock.now() + ttl))
                }
                Step::Fail => Err(BoxError::from("workspace says no")),
                Step::Hang => std::future::pending().await,
                Step::Panic => panic!("the provider broke"),
            }
        })
    }
}

struct Harness {
    cache: TokenCache,
    calls: Arc<AtomicUsize>,
    step: Arc<Mutex<Step>>,
}

const HOUR: Duration = Duration::from_secs(3600);
const MIN: Duration = Duration::from_secs(60);

fn harness(policy: CachePolicy, first: Step) -> Harness {
    let clock = Clock::Tokio {
        origin: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        started: tokio::time::Instant::now(),
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let step = Arc::new(Mutex::new(first));
    let provider = Scripted {
        clock,
        calls: Arc::clone(&calls),
        step: Arc::clone(&step),
    };
    Harness {
        cache: TokenCache::with_clock(Box::new(provider), policy, clock, TokenKind::Database),
        calls,
        step,
    }
}

impl Harness {
    fn set(&self, step: Step) {
        *self.step.lock().unwrap() = step;
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn ok(ttl: Duration) -> Step {
    Step::Ok {
        delay: Duration::from_millis(50),
        ttl,
    }
}

/// Lets spawned tasks run without moving the paused clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn fresh_token_is_reused_without_calling_the_provider() {
    let h = harness(CachePolicy::default(), ok(HOUR));
    let first = h.cache.token().await.unwrap();
    let again = h.cache.token().await.unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(h.calls(), 1);
    assert_eq!(h.cache.stats().served_from_cache, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_share_one_mint() {
    let h = harness(CachePolicy::default(), ok(HOUR));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let cache = h.cache.clone();
            tokio::spawn(async move { cache.token().await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().secret().expose(), "token-1");
    }
    assert_eq!(h.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_runs_in_the_background_while_callers_keep_the_cached_token() {
    let h = harness(CachePolicy::default(), ok(HOUR));
    let first = h.cache.token().await.unwrap();
    // 50 min later 10 min are left: refresh is due. Make the next mint slow.
    tokio::time::advance(50 * MIN).await;
    h.set(Step::Ok {
        delay: Duration::from_secs(20),
        ttl: HOUR,
    });
    let started = tokio::time::Instant::now();
    let during = h.cache.token().await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &during),
        "the caller got the cached token"
    );
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "the caller did not wait on the mint"
    );
    // Another caller while the refresh is in flight does not start a second one.
    let _ = h.cache.token().await.unwrap();
    settle().await;
    assert_eq!(h.calls(), 2);
    tokio::time::advance(Duration::from_secs(21)).await;
    settle().await;
    let after = h.cache.token().await.unwrap();
    assert_eq!(after.secret().expose(), "token-2");
    assert_eq!(h.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn failed_refresh_keeps_serving_the_valid_token_then_reports_the_cause() {
    let h = harness(CachePolicy::default(), ok(HOUR));
    let first = h.cache.token().await.unwrap();
    h.set(Step::Fail);
    // Inside min_remaining: no longer reusable, still valid for 90 s.
    tokio::time::advance(HOUR - Duration::from_secs(90)).await;
    let fallback = h.cache.token().await.unwrap();
    assert!(Arc::ptr_eq(&first, &fallback));
    assert_eq!(h.calls(), 2);
    // Past expiry: the provider's error surfaces, naming the cause.
    tokio::time::advance(Duration::from_secs(100)).await;
    let err = h.cache.token().await.unwrap_err();
    assert!(matches!(err, Error::Credentials { .. }), "{err:?}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(cause, "workspace says no");
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_before_the_provider_is_called_again() {
    let policy =
        CachePolicy::default().failure_backoff(Duration::from_secs(1), Duration::from_secs(4));
    let h = harness(policy, Step::Fail);
    assert!(h.cache.token().await.is_err());
    assert_eq!(h.calls(), 1);
    // Within the back-off: an immediate error, no provider call, and it says when.
    let err = h.cache.token().await.unwrap_err();
    match err {
        Error::Credentials { retry_in, .. } => {
            assert_eq!(retry_in, Some(Duration::from_secs(1)))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(h.calls(), 1);
    // Back-off doubles: 1 s, 2 s, 4 s, 4 s.
    let mut expected_calls = 1;
    for wait in [1, 2, 4, 4] {
        tokio::time::advance(Duration::from_secs(wait) - Duration::from_millis(1)).await;
        assert!(h.cache.token().await.is_err());
        assert_eq!(
            h.calls(),
            expected_calls,
            "called again before the back-off ended"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(h.cache.token().await.is_err());
        expected_calls += 1;
        assert_eq!(h.calls(), expected_calls);
    }
    // Recovery: the next attempt after the back-off succeeds and resets it.
    tokio::time::advance(Duration::from_secs(4)).await;
    h.set(ok(HOUR));
    assert_eq!(h.cache.token().await.unwrap().secret().expose(), "token-6");
    assert_eq!(h.cache.stats().mint_failures, 5);
}

#[tokio::test(start_paused = true)]
async fn expired_tokens_are_never_served() {
    let h = harness(CachePolicy::default(), ok(Duration::from_secs(200)));
    let _ = h.cache.token().await.unwrap();
    h.set(Step::Fail);
    tokio::time::advance(Duration::from_secs(196)).await;
    // 4 s left is below the login margin: not served even though minting failed.
    assert!(h.cache.token().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn provider_returning_an_expired_token_is_a_failure() {
    let h = harness(CachePolicy::default(), ok(Duration::ZERO));
    let err = h.cache.token().await.unwrap_err();
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("expired"), "{cause}");
}

#[tokio::test(start_paused = true)]
async fn hanging_provider_hits_the_mint_timeout() {
    let policy = CachePolicy::default().mint_timeout(Duration::from_secs(3));
    let h = harness(policy, Step::Hang);
    let started = tokio::time::Instant::now();
    let err = h.cache.token().await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("did not answer within 3.0s"), "{cause}");
}

#[tokio::test(start_paused = true)]
async fn force_refresh_mints_once_for_many_reports_of_the_same_token() {
    let h = harness(CachePolicy::default(), ok(HOUR));
    let rejected = h.cache.token().await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let cache = h.cache.clone();
            let rejected = Arc::clone(&rejected);
            tokio::spawn(async move { cache.force_refresh(&rejected).await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().secret().expose(), "token-2");
    }
    assert_eq!(h.calls(), 2);
    assert_eq!(h.cache.stats().forced_refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn force_refresh_never_falls_back_to_the_rejected_token() {
    let h = harness(CachePolicy::default(), ok(HOUR));
    let rejected = h.cache.token().await.unwrap();
    h.set(Step::Fail);
    let err = h.cache.force_refresh(&rejected).await.unwrap_err();
    assert!(matches!(err, Error::Credentials { .. }));
    // Nor does a plain request afterwards.
    assert!(h.cache.token().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn per_connect_policy_mints_every_time() {
    let h = harness(CachePolicy::per_connect(), ok(HOUR));
    for _ in 0..3 {
        let _ = h.cache.token().await.unwrap();
    }
    assert_eq!(h.calls(), 3);
}

/// A mint belongs to no caller: callers that give up before it ends (request timeouts)
/// do not cancel it, so the token still lands in the cache. Tied to the first caller, a
/// 1.5 s mint with callers giving up after 1 s never completed (20 calls, no token).
#[tokio::test(start_paused = true)]
async fn cancelled_callers_do_not_cancel_the_shared_mint() {
    let h = harness(
        CachePolicy::default(),
        Step::Ok {
            delay: Duration::from_millis(1500),
            ttl: HOUR,
        },
    );
    let mut gave_up = 0;
    for _ in 0..20 {
        let cache = h.cache.clone();
        let waited =
            tokio::time::timeout(Duration::from_secs(1), async move { cache.token().await }).await;
        gave_up += usize::from(waited.is_err());
    }
    assert!(
        gave_up >= 1,
        "the first caller gives up before the mint ends"
    );
    assert!(h.calls() <= 2, "{} provider calls", h.calls());
    let started = tokio::time::Instant::now();
    let token = h.cache.token().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "served from the cache");
    assert_eq!(token.secret().expose(), "token-1");
    assert_eq!(h.cache.stats().minted, 1);
}

/// Concurrent callers that are all cancelled: one provider call, and the token cached.
#[tokio::test(start_paused = true)]
async fn a_mint_whose_every_waiter_was_cancelled_still_fills_the_cache() {
    let h = harness(
        CachePolicy::default(),
        Step::Ok {
            delay: Duration::from_millis(1500),
            ttl: HOUR,
        },
    );
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let cache = h.cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    settle().await;
    callers.iter().for_each(tokio::task::JoinHandle::abort);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(h.calls(), 1);
    assert_eq!(h.cache.stats().minted, 1);
    assert_eq!(h.cache.token().await.unwrap().secret().expose(), "token-1");
    assert_eq!(h.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_provider_is_a_failed_mint_and_the_cache_recovers() {
    let policy =
        CachePolicy::default().failure_backoff(Duration::from_secs(1), Duration::from_secs(1));
    let h = harness(policy, Step::Panic);
    let err = h.cache.token().await.unwrap_err();
    assert!(matches!(err, Error::Credentials { .. }), "{err:?}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("panicked"), "{cause}");
    tokio::time::advance(Duration::from_secs(1)).await;
    h.set(ok(HOUR));
    assert_eq!(h.cache.token().await.unwrap().secret().expose(), "token-2");
}

/// A panic in the background refresh once left the cache marked as refreshing for ever,
/// so no refresh ever started again and callers failed once the token expired.
#[tokio::test(start_paused = true)]
async fn a_panic_in_the_background_refresh_does_not_stop_later_refreshes() {
    let policy =
        CachePolicy::default().failure_backoff(Duration::from_secs(1), Duration::from_secs(1));
    let h = harness(policy, ok(HOUR));
    let first = h.cache.token().await.unwrap();
    tokio::time::advance(50 * MIN).await;
    h.set(Step::Panic);
    assert!(Arc::ptr_eq(&h.cache.token().await.unwrap(), &first));
    settle().await;
    assert_eq!(h.calls(), 2, "the background refresh ran and panicked");
    tokio::time::advance(Duration::from_secs(2)).await;
    h.set(ok(HOUR));
    assert!(Arc::ptr_eq(&h.cache.token().await.unwrap(), &first));
    settle().await;
    assert_eq!(h.calls(), 3, "a new background refresh started");
    tokio::time::advance(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(h.cache.token().await.unwrap().secret().expose(), "token-3");
}

#[tokio::test(start_paused = true)]
async fn an_absurd_lifetime_is_clamped_to_a_day() {
    let h = harness(
        CachePolicy::default(),
        ok(Duration::from_secs(u64::MAX / 4)),
    );
    let token = h.cache.token().await.unwrap();
    let left = h.cache.stats().expires_in.unwrap();
    assert!(left <= defaults::MAX_TOKEN_LIFETIME, "{left:?}");
    assert!(left > defaults::MAX_TOKEN_LIFETIME - MIN, "{left:?}");
    assert!(token.expiry().is_some());
}

#[test]
fn policy_rejects_refresh_ahead_shorter_than_min_remaining() {
    let err = CachePolicy::default()
        .min_remaining(10 * MIN)
        .refresh_ahead(5 * MIN)
        .validate()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid setting `refresh_ahead`"),
        "{err}"
    );
}
