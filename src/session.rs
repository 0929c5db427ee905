//! One opened session: the stream it speaks over, watched for statements in flight, its
//! driver, and how to cancel its statement the way the session itself went.
//!
//! TLS sessions are opened by tokio-postgres with a TLS connector that wraps the decrypted
//! stream in [`Watched`]. Plain-text sessions (loopback only, or `allow_plaintext`) are opened
//! on a socket of the crate's own, watched the same way, since tokio-postgres never hands a
//! plain socket to a connector. A cancel goes to the same address: for TLS with the same
//! verification and the same SNI (the Lakebase proxy routes cancels by it, as logins).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_postgres::tls::{MakeTlsConnect, NoTls, NoTlsStream, TlsConnect};
use tokio_postgres::{AsyncMessage, CancelToken, Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::Error;
use crate::activity::{Activity, Watched};
use crate::defaults::CANCEL_TIMEOUT;
use crate::metrics::Counters;

type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
type RustlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;

/// The connection half of an opened session: the future that drives its socket.
pub(crate) enum Driver {
    /// Both boxed: the driver moves once, into its task, and a TLS connection's state is
    /// four times a plain one's.
    Tls(Box<tokio_postgres::Connection<Socket, Watched<RustlsStream>>>),
    Plain(Box<tokio_postgres::Connection<Watched<PlainSocket>, NoTlsStream>>),
}

impl Driver {
    /// Server messages that answer no statement (notifications, notices).
    pub(crate) fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsyncMessage, tokio_postgres::Error>>> {
        match self {
            Driver::Tls(connection) => connection.poll_message(cx),
            Driver::Plain(connection) => connection.poll_message(cx),
        }
    }

    /// Whether the server said at login that it is a hot standby (`in_hot_standby`, reported
    /// by PostgreSQL 14 and later and passed on by the Lakebase proxy). Not
    /// `default_transaction_read_only`: a database or role made read-only by its owner is a
    /// primary whose sessions refuse writes on purpose, not a failover.
    pub(crate) fn hot_standby(&self) -> bool {
        let parameter = match self {
            Driver::Tls(connection) => connection.parameter("in_hot_standby"),
            Driver::Plain(connection) => connection.parameter("in_hot_standby"),
        };
        parameter == Some("on")
    }
}

impl Future for Driver {
    type Output = Result<(), tokio_postgres::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Driver::Tls(connection) => Pin::new(connection.as_mut()).poll(cx),
            Driver::Plain(connection) => Pin::new(connection.as_mut()).poll(cx),
        }
    }
}

/// A freshly opened session. Whoever opened it decides how to drive the connection: the
/// pool spawns it and ignores server messages, a listener reads notifications from it.
pub(crate) struct Opened {
    pub(crate) client: Client,
    pub(crate) driver: Driver,
    /// Whether a statement is in flight, read off the session's bytes.
    pub(crate) activity: Arc<Activity>,
    /// The way a cancel goes.
    pub(crate) cancel: CancelRoute,
}

/// Where and how a cancel request for a session is sent.
#[derive(Clone)]
pub(crate) enum CancelRoute {
    /// Through the session's own address and TLS settings (`CancelToken` keeps the address
    /// the session went to, and the host name for SNI).
    Tls(MakeRustlsConnect),
    Tcp(SocketAddr),
    #[cfg(unix)]
    Unix(PathBuf),
}

impl std::fmt::Debug for CancelRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelRoute::Tls(_) => f.write_str("CancelRoute::Tls"),
            CancelRoute::Tcp(address) => write!(f, "CancelRoute::Tcp({address})"),
            #[cfg(unix)]
            CancelRoute::Unix(path) => write!(f, "CancelRoute::Unix({})", path.display()),
        }
    }
}

impl CancelRoute {
    /// Sends a cancel request for `token`'s session, within `timeout`.
    pub(crate) async fn cancel(&self, token: &CancelToken, timeout: Duration) -> io::Result<()> {
        let send = async {
            let sent = match self {
                CancelRoute::Tls(tls) => token.cancel_query(tls.clone()).await,
                CancelRoute::Tcp(address) => {
                    let stream = TcpStream::connect(address).await?;
                    token.cancel_query_raw(stream, NoTls).await
                }
                #[cfg(unix)]
                CancelRoute::Unix(path) => {
                    let stream = UnixStream::connect(path).await?;
                    token.cancel_query_raw(stream, NoTls).await
                }
            };
            match sent {
                Ok(()) => Ok(()),
                // The Lakebase proxy closes a cancel's TLS session without close_notify: the
                // request was delivered all the same (REFERENCE 13a).
                Err(error) if unexpected_eof(&error) => Ok(()),
                Err(error) => Err(io::Error::other(error)),
            }
        };
        tokio::time::timeout(timeout, send)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to the cancel request within {timeout:?}"),
                ))
            })
    }
}

fn unexpected_eof(error: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// A TLS connector that watches the decrypted stream of the session it opens.
pub(crate) struct WatchedTls {
    pub(crate) tls: MakeRustlsConnect,
    pub(crate) activity: Arc<Activity>,
}

impl MakeTlsConnect<Socket> for WatchedTls {
    type Stream = Watched<RustlsStream>;
    type TlsConnect = WatchedTlsConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<WatchedTlsConnect, Self::Error> {
        let inner =
            <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(&mut self.tls, host)?;
        Ok(WatchedTlsConnect {
            inner,
            activity: Arc::clone(&self.activity),
        })
    }
}

pub(crate) struct WatchedTlsConnect {
    inner: RustlsConnect,
    activity: Arc<Activity>,
}

impl TlsConnect<Socket> for WatchedTlsConnect {
    type Stream = Watched<RustlsStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Stream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        let connecting = self.inner.connect(stream);
        let activity = self.activity;
        Box::pin(async move { Ok(Watched::new(connecting.await?, activity)) })
    }
}

/// A plain-text socket of the crate's own.
pub(crate) enum PlainSocket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for PlainSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainSocket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            PlainSocket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PlainSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlainSocket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            PlainSocket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainSocket::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            PlainSocket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainSocket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            PlainSocket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens a plain-text TCP socket to `address` with `config`'s socket settings (as
/// tokio-postgres would: no delay, keep-alive, `TCP_USER_TIMEOUT`).
pub(crate) async fn plain_tcp(
    address: SocketAddr,
    config: &tokio_postgres::Config,
) -> io::Result<TcpStream> {
    let stream = within_connect_timeout(config, TcpStream::connect(address)).await?;
    stream.set_nodelay(true)?;
    let socket = SockRef::from(&stream);
    #[cfg(target_os = "linux")]
    if let Some(timeout) = config.get_tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(*timeout))?;
    }
    if config.get_keepalives() {
        let mut keepalive = TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        #[cfg(not(windows))]
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    Ok(stream)
}

/// Opens a plain-text Unix socket at `path`, within `config`'s connect timeout.
#[cfg(unix)]
pub(crate) async fn plain_unix(
    path: &std::path::Path,
    config: &tokio_postgres::Config,
) -> io::Result<UnixStream> {
    within_connect_timeout(config, UnixStream::connect(path)).await
}

/// `connect`, bounded by `config`'s connect timeout when it has one.
async fn within_connect_timeout<T>(
    config: &tokio_postgres::Config,
    connect: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match config.get_connect_timeout() {
        Some(timeout) => tokio::time::timeout(*timeout, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))?,
        None => connect.await,
    }
}

/// A cancel request for one session, sent the way the session went, counted.
#[derive(Clone)]
pub(crate) struct CancelRequest {
    token: CancelToken,
    route: CancelRoute,
    counters: Arc<Counters>,
}

impl CancelRequest {
    pub(crate) fn new(token: CancelToken, route: CancelRoute, counters: Arc<Counters>) -> Self {
        CancelRequest {
            token,
            route,
            counters,
        }
    }

    /// Counts a cancel that could not be sent at all (no runtime to send it on).
    pub(crate) fn count_unsent(&self) {
        self.counters.cancel(false);
    }

    /// Sends one cancel request, within [`CANCEL_TIMEOUT`].
    pub(crate) async fn send(&self) -> Result<(), Error> {
        let sent = self.route.cancel(&self.token, CANCEL_TIMEOUT).await;
        self.counters.cancel(sent.is_ok());
        sent.map_err(|error| Error::CancelFailed {
            source: Box::new(error),
        })
    }

    /// Cancels the statement in flight on the session of `activity` and waits, up to
    /// `within` after the first request was delivered, for it to end; whether it did.
    ///
    /// PostgreSQL drops a cancel that arrives while the backend still reads the statement
    /// (before it runs it): a statement found the moment it was written may miss its cancel.
    /// While it has not ended, the request is sent again every [`RESEND`] (counted once; the
    /// session is never reused after a cancel, so a late one hits nothing of anyone's).
    pub(crate) async fn until_ended(&self, activity: &Activity, within: Duration) -> bool {
        if let Err(error) = self.send().await {
            tracing::warn!(error = %crate::error::error_chain(&error), "could not cancel a statement; closing its connection");
            return false;
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(RESEND.min(left), activity.settled())
                .await
                .is_ok()
            {
                return true;
            }
            if left <= RESEND {
                return false;
            }
            // Not counted again: the statement already counts as cancelled.
            let _ = self
                .route
                .cancel(&self.token, left.min(CANCEL_TIMEOUT))
                .await;
        }
    }
}

/// How often a cancel is sent again while its statement has not ended.
const RESEND: Duration = Duration::from_millis(200);
