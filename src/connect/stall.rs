//! Stalled connection tries: a try that has not answered within a window is abandoned and a
//! fresh one starts, each with twice the last one's window.
//!
//! Why: after a failover, the Lakebase proxy holds a connect that looked up the dead
//! compute's address for about 3 s (five tries of its own, REFERENCE 13a), while the new
//! primary already answers through the same host. A fresh try reaches it. Only one try is in
//! flight at a time, so a pool never has more sessions opening than it has slots; the
//! windows double so that a login that is merely slow (a far region, a busy server) still
//! completes, at the cost of one window.

use std::future::Future;
use std::time::Duration;

/// Runs `start()` under `window`; a try that has not answered by then is dropped (its socket
/// closed) and another started under twice the window, and so on, within `budget` (the
/// connect timeout, which the caller enforces). A try after which less than twice its window
/// of the budget would remain is not abandoned but given the rest: a slow login keeps the
/// longest wait there is. `None`: one try, however long. `on_stall` is called for each
/// abandoned try.
pub(crate) async fn restarting_stalled<T, Fut>(
    window: Option<Duration>,
    budget: Duration,
    mut start: impl FnMut() -> Fut,
    mut on_stall: impl FnMut(),
) -> T
where
    Fut: Future<Output = T>,
{
    let Some(mut window) = window else {
        return start().await;
    };
    let mut left = budget;
    loop {
        let after = left.saturating_sub(window);
        if after < window.saturating_mul(2) {
            return start().await;
        }
        left = after;
        match tokio::time::timeout(window, start()).await {
            Ok(answer) => return answer,
            Err(_) => {
                on_stall();
                window = window.saturating_mul(2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// Try `n` (from 0) answers `n` after `delays[n]` ms; the tries started and the stalls.
    async fn run(window: Option<u64>, delays: &[u64]) -> (usize, usize, Duration) {
        run_within(window, 10_000, delays).await
    }

    async fn run_within(
        window: Option<u64>,
        budget: u64,
        delays: &[u64],
    ) -> (usize, usize, Duration) {
        let started = Instant::now();
        let next = AtomicUsize::new(0);
        let stalls = AtomicUsize::new(0);
        let answer = restarting_stalled(
            window.map(Duration::from_millis),
            Duration::from_millis(budget),
            || {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let delay = delays[n];
                async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    n
                }
            },
            || {
                let _ = stalls.fetch_add(1, Ordering::Relaxed);
            },
        )
        .await;
        (answer, stalls.load(Ordering::Relaxed), started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_try_that_answers_in_its_window_is_the_only_one() {
        assert_eq!(
            run(Some(1_000), &[900]).await,
            (0, 0, Duration::from_millis(900))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_try_is_replaced_by_a_fresh_one() {
        // The first is held for 3 s (the proxy on a dead compute); the second answers at once.
        let outcome = run(Some(1_000), &[3_000, 50]).await;
        assert_eq!(outcome, (1, 1, Duration::from_millis(1_050)));
    }

    #[tokio::test(start_paused = true)]
    async fn windows_double_so_a_slow_login_completes() {
        // Every login takes 1.5 s: the first window (1 s) is too short, the second (2 s) not.
        let outcome = run(Some(1_000), &[1_500, 1_500]).await;
        assert_eq!(outcome, (1, 1, Duration::from_millis(2_500)));
        // 2.5 s logins: windows of 1, 2 and 4 s.
        let outcome = run(Some(1_000), &[2_500, 2_500, 2_500]).await;
        assert_eq!(outcome, (2, 2, Duration::from_millis(5_500)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_try_keeps_the_rest_of_the_budget() {
        // Within 10 s: windows of 1 and 2 s, then the third try (from 3 s) keeps the 7 s left,
        // so a 6 s login completes at 9 s.
        let outcome = run_within(Some(1_000), 10_000, &[6_000, 6_000, 6_000]).await;
        assert_eq!(outcome, (2, 2, Duration::from_millis(9_000)));
        // A budget under three windows: one try.
        let outcome = run_within(Some(1_000), 2_500, &[2_000]).await;
        assert_eq!(outcome, (0, 0, Duration::from_millis(2_000)));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_window_there_is_one_try() {
        assert_eq!(run(None, &[30_000]).await, (0, 0, Duration::from_secs(30)));
    }
}
