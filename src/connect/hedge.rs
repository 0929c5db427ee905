//! Hedged connection tries: when a try has not answered within a delay, another starts
//! beside it, and the first to succeed is the session.
//!
//! Why: after a failover, the Lakebase proxy holds a connect to the dead compute's address
//! for about 3 s (five tries of its own, REFERENCE 13a) while the new primary already takes
//! connections through the same host. A second try started a second later reaches it; the
//! first is dropped. A try that is merely slow (a cold start) costs one extra login at the
//! proxy, which is why the tries are few and spaced.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Runs `start()` and, while no try has answered, another one every `after` (never with
/// `None`), at most `max_tries` in all. The first success is returned and the other tries
/// are dropped. Once a try has failed no new one starts (the server answered: the retry loop
/// decides); the call fails when every try started has failed, with the last error.
///
/// `on_hedge` is called for each try started beside the first.
pub(crate) async fn hedged<T, E, Fut>(
    after: Option<Duration>,
    max_tries: usize,
    mut start: impl FnMut() -> Fut,
    mut on_hedge: impl FnMut(),
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut tries: Vec<Pin<Box<Fut>>> = vec![Box::pin(start())];
    let mut started = 1;
    let mut timer: Option<(Pin<Box<Sleep>>, Duration)> = match after {
        Some(delay) if max_tries > 1 => Some((Box::pin(tokio::time::sleep(delay)), delay)),
        _ => None,
    };
    std::future::poll_fn(move |cx| {
        // Start every try that is due (a timer that fires is re-armed, and polled again so
        // that it wakes this task when it fires next).
        while let Some((sleep, delay)) = timer.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            tries.push(Box::pin(start()));
            started += 1;
            on_hedge();
            if started >= max_tries {
                timer = None;
            } else {
                let next = Instant::now() + *delay;
                sleep.as_mut().reset(next);
            }
        }
        let mut index = 0;
        while index < tries.len() {
            match tries[index].as_mut().poll(cx) {
                Poll::Pending => index += 1,
                Poll::Ready(Ok(value)) => return Poll::Ready(Ok(value)),
                Poll::Ready(Err(error)) => {
                    drop(tries.swap_remove(index));
                    timer = None;
                    if tries.is_empty() {
                        return Poll::Ready(Err(error));
                    }
                }
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const DELAY: Duration = Duration::from_millis(100);

    /// Try `n` (from 0) answers `outcomes[n]` after `delays[n]`.
    async fn run(
        delays: &[u64],
        outcomes: &[Result<usize, usize>],
        max: usize,
    ) -> (Result<usize, usize>, usize) {
        let next = AtomicUsize::new(0);
        let hedges = AtomicUsize::new(0);
        let result = hedged(
            Some(DELAY),
            max,
            || {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let (delay, outcome) = (delays[n], outcomes[n]);
                async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    outcome
                }
            },
            || {
                let _ = hedges.fetch_add(1, Ordering::Relaxed);
            },
        )
        .await;
        (result, hedges.load(Ordering::Relaxed))
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_try_is_not_hedged() {
        assert_eq!(run(&[10], &[Ok(0)], 3).await, (Ok(0), 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_try_is_overtaken_by_the_next() {
        // The first is held for 3 s; the second (at 100 ms) answers 20 ms later.
        let started = Instant::now();
        let outcome = run(&[3_000, 20], &[Err(0), Ok(1)], 3).await;
        assert_eq!(outcome, (Ok(1), 1));
        assert_eq!(started.elapsed(), Duration::from_millis(120));
    }

    #[tokio::test(start_paused = true)]
    async fn tries_are_spaced_and_capped() {
        // Two held tries, the third answers: started at 0, 100 and 200 ms, no fourth.
        let started = Instant::now();
        let outcome = run(&[1_000, 1_000, 50], &[Err(0), Err(1), Ok(2)], 3).await;
        assert_eq!(outcome, (Ok(2), 2));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        let outcome = run(&[1_000, 800], &[Err(0), Err(1)], 2).await;
        assert_eq!(outcome, (Err(0), 1), "the last error, after both failed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_stops_the_hedging() {
        // The first fails at 150 ms while the second (at 100 ms) is pending: no third starts,
        // and the second's answer is the result.
        let outcome = run(&[150, 500, 0], &[Err(0), Ok(1), Ok(2)], 3).await;
        assert_eq!(outcome, (Ok(1), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_delay_there_is_one_try() {
        let result: Result<(), ()> = hedged(
            None,
            3,
            || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Err(())
            },
            || panic!("no hedge without a delay"),
        )
        .await;
        assert_eq!(result, Err(()));
    }
}
