//! [`Connector`]: one authenticated session, opened the way the pool opens its own, for code
//! that drives its sessions itself (another pool, a driver adapter, a long-running job).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio_postgres::AsyncMessage;

use crate::connect;
use crate::credentials::TokenCache;
use crate::error::Error;
use crate::session::{CancelRequest, Driver, Opened};

/// Opens one session the way a [`Pool`](crate::Pool) opens each of its connections: the
/// target (discovered once for a Lakebase endpoint), a token fresh at that moment from the
/// pool's [`TokenCache`], TLS verified with the host name for SNI and the certificate, the
/// resolver hook or `hostaddr`, the cold-start retries within the retry deadline, and one
/// forced token refresh after a rejected login. Get one from
/// [`Pool::connector`](crate::Pool::connector); it shares the pool's token cache, target and
/// counters.
///
/// Cheap to clone. The session it opens is the caller's: spawn its
/// [`driver`](Session::driver), as with `tokio_postgres::connect`. Idle timeouts and
/// cancel-on-drop are the pool's; a session opened here has none of them, and
/// [`retire_at`](Session::retire_at) says when the pool would replace it.
/// It does not keep the pool alive, and a pool dropped without being closed leaves it
/// working (it holds the token cache and the target itself).
/// Once the pool is closed (or shut down), it opens no more sessions; those already open
/// are the caller's to close.
///
/// ```no_run
/// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// // A session of its own for a nightly export that outlives any checkout.
/// let session = pool.connector().connect().await?;
/// tokio::spawn(session.driver);
/// let rows = session.client.query("SELECT id, total FROM orders", &[]).await?;
/// println!("{} orders", rows.len());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Connector {
    inner: Arc<connect::Connector>,
    /// Whether the pool it came from is closed.
    closed: Arc<dyn Fn() -> bool + Send + Sync>,
    lifetimes: Lifetimes,
}

/// The pool's rules for how long a connection lives, told to the holders of sessions opened
/// outside it (driver adapters keep their sessions as the pool keeps its connections).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lifetimes {
    pub(crate) max_lifetime: Duration,
    pub(crate) jitter: f64,
    pub(crate) idle_timeout: Duration,
}

impl Lifetimes {
    /// How often to look for sessions to retire: often enough to honour short lifetimes and
    /// idle timeouts, rarely enough to cost nothing.
    pub(crate) fn housekeeping_interval(&self) -> Duration {
        (self.max_lifetime.min(self.idle_timeout) / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30))
    }

    /// When a session opened at `created` is to be replaced: its lifetime drawn now, at
    /// random. `None` for a lifetime too long to count.
    pub(crate) fn retire_at(&self, created: Instant) -> Option<Instant> {
        created.checked_add(self.draw(fastrand::f64()))
    }

    /// The lifetime of the session known by `key` (something that stays the same for it, such
    /// as when it was made): drawn at random once, the same at every look, for pools that keep
    /// nothing of ours beside their sessions.
    #[cfg(any(feature = "diesel-async", feature = "sqlx-0_8", feature = "sqlx-0_9"))]
    /// Whether a session of this age, known by `key` (see [`lifetime_of`](Self::lifetime_of)),
    /// has lived past its lifetime.
    pub(crate) fn outlived<K: std::hash::Hash>(
        &self,
        age: Duration,
        key: impl FnOnce() -> K,
    ) -> bool {
        // Younger than the shortest lifetime a draw can give (`draw(1.0)`, the bound of
        // `[0, 1)`): no need to draw (this runs at every checkout).
        age >= self.draw(1.0) && age >= self.lifetime_of(key())
    }

    #[cfg(any(feature = "diesel-async", feature = "sqlx-0_8", feature = "sqlx-0_9"))]
    fn lifetime_of(&self, key: impl std::hash::Hash) -> Duration {
        use std::hash::Hasher;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        self.draw((hasher.finish() >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// A session's lifetime for `draw` in `[0, 1)`.
    pub(crate) fn draw(&self, draw: f64) -> Duration {
        crate::backoff::jittered_lifetime(self.max_lifetime, self.jitter, draw)
    }
}

impl Connector {
    /// Tells the connect path that the server ended a session opened here (an adapter's
    /// pool noticed it): right after, stalled connect tries are replaced, as after a
    /// failover (`RetryPolicy::stalled_try_after`).
    #[cfg(feature = "bb8")]
    pub(crate) fn session_lost(&self) {
        self.inner.counters().session_lost();
    }

    pub(crate) fn new(
        inner: Arc<connect::Connector>,
        closed: Arc<dyn Fn() -> bool + Send + Sync>,
        lifetimes: Lifetimes,
    ) -> Self {
        Connector {
            inner,
            closed,
            lifetimes,
        }
    }

    /// Whether the pool it came from is closed (it opens no more sessions).
    #[cfg(any(feature = "sqlx-0_8", feature = "sqlx-0_9"))]
    pub(crate) fn is_closed(&self) -> bool {
        (self.closed)()
    }

    /// Opens one session.
    ///
    /// # Errors
    ///
    /// Those of [`Pool::get`](crate::Pool::get) that come from opening a connection:
    /// [`Error::Credentials`], [`Error::ConnectRetriesExhausted`], [`Error::AuthRejected`],
    /// [`Error::Connect`], a failed endpoint look-up, and [`Error::ConnectTimeout`] past the
    /// pool's bound on opening one (a look-up that never answers); [`Error::PoolClosed`] once
    /// the pool is closed.
    ///
    /// ```no_run
    /// # async fn demo(connector: lakebase_pool::Connector) -> Result<(), lakebase_pool::Error> {
    /// let session = connector.connect().await?;
    /// tokio::spawn(session.driver);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(&self) -> Result<Session, Error> {
        self.open(true).await
    }

    /// As [`connect`](Self::connect), for a pool that never looks at what its sessions have
    /// in flight (diesel-async's): the session's stream passes its bytes through unread.
    #[cfg(feature = "diesel-async")]
    pub(crate) async fn connect_unwatched(&self) -> Result<Session, Error> {
        self.open(false).await
    }

    async fn open(&self, watched: bool) -> Result<Session, Error> {
        if (self.closed)() {
            return Err(Error::PoolClosed);
        }
        // Boxed: the connect path is a large state machine (discovery, token, retries, TLS).
        // Bounded there, as for the pool's own connections.
        let Opened {
            client,
            driver,
            activity,
            cancel,
        } = Box::pin(self.inner.connect_watching(watched)).await?;
        // Closed while the session opened: dropped, which closes it.
        if (self.closed)() {
            return Err(Error::PoolClosed);
        }
        let request = CancelRequest::new(
            client.cancel_token(),
            cancel,
            Arc::clone(self.inner.counters()),
        );
        Ok(Session {
            client,
            driver: SessionDriver(driver),
            retire_at: self.lifetimes.retire_at(Instant::now()),
            watch: SessionWatch { request, activity },
        })
    }

    /// The pool's lifetime rules, for adapters whose pools keep no per-session state.
    #[cfg_attr(not(any(feature = "bb8", feature = "diesel-async")), allow(dead_code))]
    pub(crate) fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// How long a session may stay idle before it is closed: the pool's
    /// [`idle_timeout`](crate::PoolBuilder::idle_timeout), for the pools of driver adapters.
    ///
    /// ```no_run
    /// # fn demo(connector: lakebase_pool::Connector) {
    /// println!("idle sessions close after {:?}", connector.idle_timeout());
    /// # }
    /// ```
    pub fn idle_timeout(&self) -> Duration {
        self.lifetimes.idle_timeout
    }

    /// The bound on each statement the pool sends itself (a validation, a `ROLLBACK`):
    /// [`RetryPolicy::command_timeout`](crate::RetryPolicy::command_timeout), for adapters
    /// that check a session before handing it out.
    ///
    /// ```no_run
    /// # fn demo(connector: lakebase_pool::Connector) {
    /// assert!(connector.command_timeout() > std::time::Duration::ZERO);
    /// # }
    /// ```
    pub fn command_timeout(&self) -> Duration {
        self.inner.retry_policy().command_timeout_value()
    }

    /// What it connects to, `user@host:port/dbname` (the user hidden where the pool hides
    /// it), or the endpoint's name before the first connect has looked the host up.
    ///
    /// ```no_run
    /// # fn demo(connector: lakebase_pool::Connector) {
    /// println!("connecting to {}", connector.target());
    /// # }
    /// ```
    pub fn target(&self) -> &str {
        self.inner.target()
    }

    /// The token cache it takes each session's password from (the pool's).
    ///
    /// ```no_run
    /// # fn demo(connector: lakebase_pool::Connector) {
    /// println!("token expires in {:?}", connector.token_cache().stats().expires_in);
    /// # }
    /// ```
    pub fn token_cache(&self) -> &TokenCache {
        self.inner.tokens()
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target())
            .finish_non_exhaustive()
    }
}

/// A session opened by a [`Connector`]: the client, and the driver that must be spawned (or
/// polled) for the client to get answers, as `tokio_postgres::connect` returns them.
#[non_exhaustive]
pub struct Session {
    /// The client, as `tokio_postgres` gives it.
    pub client: tokio_postgres::Client,
    /// Drives the session's socket; it ends when the client is dropped (after the answers
    /// in flight) or the connection is lost.
    pub driver: SessionDriver,
    /// When to close the session: the pool's
    /// [`max_lifetime`](crate::PoolBuilder::max_lifetime) shortened by its jitter, drawn for
    /// this session, so that sessions opened together are not all replaced together. `None`
    /// for a lifetime too long to count.
    pub retire_at: Option<Instant>,
    /// Whether a statement is in flight, and the way a cancel for it goes.
    #[cfg_attr(not(feature = "bb8"), allow(dead_code))]
    pub(crate) watch: SessionWatch,
}

/// What an adapter needs to find a statement abandoned on a session handed back to it, and
/// to cancel it as the pool cancels its own.
#[cfg_attr(not(feature = "bb8"), allow(dead_code))]
pub(crate) struct SessionWatch {
    activity: Arc<crate::activity::Activity>,
    request: CancelRequest,
}

#[cfg_attr(not(feature = "bb8"), allow(dead_code))]
impl SessionWatch {
    /// Whether a statement was sent whose answer has not all come back.
    pub(crate) fn in_flight(&self) -> bool {
        self.activity.in_flight()
    }

    /// Cancels the statement in flight as the pool cancels its own (sent again while it has
    /// not ended, counted in the pool's stats), on a task of its own, bounded.
    pub(crate) fn cancel(&self) {
        let (request, activity) = (self.request.clone(), Arc::clone(&self.activity));
        drop(tokio::spawn(async move {
            let _ = request
                .until_ended(&activity, crate::defaults::CANCEL_SETTLE_TIMEOUT)
                .await;
        }));
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

/// The future that drives a [`Session`]'s socket (TLS or plain text alike), like
/// `tokio_postgres::Connection`.
///
/// ```no_run
/// # async fn demo(connector: lakebase_pool::Connector) -> Result<(), lakebase_pool::Error> {
/// let session = connector.connect().await?;
/// tokio::spawn(async move {
///     if let Err(error) = session.driver.await {
///         eprintln!("session ended: {error}");
///     }
/// });
/// # Ok(())
/// # }
/// ```
pub struct SessionDriver(Driver);

impl SessionDriver {
    /// Server messages that answer no statement (notifications, notices), for a driver
    /// polled by hand, as `tokio_postgres::Connection::poll_message`.
    ///
    /// ```no_run
    /// # async fn demo(mut driver: lakebase_pool::SessionDriver) {
    /// let message = std::future::poll_fn(|cx| driver.poll_message(cx)).await;
    /// # let _ = message;
    /// # }
    /// ```
    pub fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
        self.0.poll_message(cx)
    }
}

impl Future for SessionDriver {
    type Output = Result<(), tokio_postgres::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

impl fmt::Debug for SessionDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionDriver")
    }
}
