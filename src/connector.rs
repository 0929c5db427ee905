//! [`Connector`]: one authenticated session, opened the way the pool opens its own, for code
//! that drives its sessions itself (another pool, a driver adapter, a long-running job).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_postgres::AsyncMessage;

use crate::connect;
use crate::credentials::TokenCache;
use crate::error::Error;
use crate::session::{Driver, Opened};

/// Opens one session the way a [`Pool`](crate::Pool) opens each of its connections: the
/// target (discovered once for a Lakebase endpoint), a token fresh at that moment from the
/// pool's [`TokenCache`], TLS verified with the host name for SNI and the certificate, the
/// resolver hook or `hostaddr`, the cold-start retries within the retry deadline, and one
/// forced token refresh after a rejected login. Get one from
/// [`Pool::connector`](crate::Pool::connector); it shares the pool's token cache, target and
/// counters.
///
/// Cheap to clone. The session it opens is the caller's: spawn its
/// [`driver`](Session::driver), as with `tokio_postgres::connect`. Lifetimes, idle
/// timeouts and cancel-on-drop are the pool's; a session opened here has none of them.
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
}

impl Connector {
    pub(crate) fn new(
        inner: Arc<connect::Connector>,
        closed: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        Connector { inner, closed }
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
        if (self.closed)() {
            return Err(Error::PoolClosed);
        }
        // Boxed: the connect path is a large state machine (discovery, token, retries, TLS).
        // Bounded there, as for the pool's own connections.
        let Opened { client, driver, .. } = Box::pin(self.inner.connect()).await?;
        // Closed while the session opened: dropped, which closes it.
        if (self.closed)() {
            return Err(Error::PoolClosed);
        }
        Ok(Session {
            client,
            driver: SessionDriver(driver),
        })
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
