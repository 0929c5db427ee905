//! A statement the pool sends itself that went unanswered.

use std::time::Duration;

/// A statement the pool sent by itself (`BEGIN`, `COMMIT`, `ROLLBACK`, `LISTEN`) got no
/// answer within [`RetryPolicy::command_timeout`](crate::RetryPolicy::command_timeout); the
/// connection was closed. Found as the [`source`](std::error::Error::source) of
/// [`Error::Transaction`](crate::Error::Transaction), [`Error::CommitOutcomeUnknown`](crate::Error::CommitOutcomeUnknown) and [`Error::Listen`](crate::Error::Listen).
///
/// ```
/// # fn demo(err: &lakebase_pool::Error) {
/// use std::error::Error as _;
/// if let Some(timed_out) = err.source().and_then(|s| s.downcast_ref::<lakebase_pool::StatementTimedOut>()) {
///     eprintln!("{} stalled for {:?}", timed_out.statement(), timed_out.after());
/// }
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{statement}` got no answer within {after:.1?}; the connection was closed (the server or \
     a proxy stalls; see `RetryPolicy::command_timeout`)"
)]
pub struct StatementTimedOut {
    statement: &'static str,
    after: Duration,
}

impl StatementTimedOut {
    pub(crate) fn new(statement: &'static str, after: Duration) -> Self {
        StatementTimedOut { statement, after }
    }

    /// The statement, e.g. `"COMMIT"`.
    ///
    /// ```
    /// # fn demo(timed_out: &lakebase_pool::StatementTimedOut) {
    /// println!("{}", timed_out.statement());
    /// # }
    /// ```
    pub fn statement(&self) -> &'static str {
        self.statement
    }

    /// How long it went unanswered.
    ///
    /// ```
    /// # fn demo(timed_out: &lakebase_pool::StatementTimedOut) {
    /// println!("{:?}", timed_out.after());
    /// # }
    /// ```
    pub fn after(&self) -> Duration {
        self.after
    }
}
