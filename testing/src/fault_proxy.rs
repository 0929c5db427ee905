//! A loopback TCP proxy that puts network faults between a client and a server.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::server_thread::{ServerThread, accept};

/// What a [`FaultProxy`] does to the connections it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkFault {
    /// Forward bytes both ways, untouched (the initial setting).
    Pass,
    /// Accept the connection and never answer nor forward a byte, like a host that dropped
    /// off the network: only a timeout ends the client's wait.
    Blackhole,
    /// Accept, read the client's first bytes (its TLS or start-up request), then reset the
    /// connection: a failure in the middle of the handshake.
    ResetHandshake,
    /// Forward, delaying each chunk by this long in each direction.
    Latency(Duration),
    /// Forward the start-up and login, and the client's first `n - 1` simple queries (`Q`
    /// messages: `BEGIN`, `COMMIT`, `LISTEN`, `batch_execute`); swallow the `n`-th and
    /// everything after it without an answer, like a server that stalls after login. The
    /// server side is closed when the client closes. For plain-text (loopback) connections.
    StallQuery(u32),
}

/// A TCP proxy on a loopback port in front of `upstream`, for testing what the pool does when
/// the network misbehaves: connections that hang, resets during the handshake or in the
/// middle of a query, latency.
///
/// [`set_fault`](Self::set_fault) changes what happens to connections accepted from then on;
/// [`reset_connections`](Self::reset_connections) resets every open one at once (a query in
/// flight fails). The proxy runs on its own thread and stops when dropped, closing
/// everything.
///
/// ```no_run
/// use std::time::Duration;
/// use lakebase_pool_testing::{FaultProxy, LocalPostgres, NetworkFault};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pg = LocalPostgres::start()?;
/// let proxy = FaultProxy::start(pg.addr())?;
/// let pool = pg.pool_builder("postgres").port(proxy.port()).password("unused").build()?;
/// proxy.set_fault(NetworkFault::Latency(Duration::from_millis(20)));
/// # let _ = pool;
/// # Ok(())
/// # }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: ServerThread,
}

struct Shared {
    fault: Mutex<NetworkFault>,
    accepted: Mutex<usize>,
    /// Bumped by `reset_connections`; every open connection watches it.
    resets: watch::Sender<u64>,
}

impl FaultProxy {
    /// Starts the proxy on a free loopback port, forwarding to `upstream`.
    ///
    /// # Errors
    ///
    /// When no port can be bound or the thread cannot start.
    ///
    /// ```no_run
    /// # let pg = lakebase_pool_testing::LocalPostgres::start().unwrap();
    /// let proxy = lakebase_pool_testing::FaultProxy::start(pg.addr())?;
    /// # let _ = proxy;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            fault: Mutex::new(NetworkFault::Pass),
            accepted: Mutex::new(0),
            resets: watch::Sender::new(0),
        });
        let serving = Arc::clone(&shared);
        let server = ServerThread::spawn("fault-proxy", move |stop| async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            tokio::select! {
                () = accept_loop(listener, upstream, serving) => {}
                _ = stop => {}
            }
        })?;
        Ok(FaultProxy {
            addr,
            shared,
            _server: server,
        })
    }

    /// The proxy's address (on 127.0.0.1).
    ///
    /// ```no_run
    /// # let proxy = lakebase_pool_testing::FaultProxy::start("127.0.0.1:5432".parse().unwrap()).unwrap();
    /// assert!(proxy.addr().ip().is_loopback());
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    ///
    /// ```no_run
    /// # let proxy = lakebase_pool_testing::FaultProxy::start("127.0.0.1:5432".parse().unwrap()).unwrap();
    /// assert_ne!(proxy.port(), 0);
    /// ```
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What happens to connections accepted from now on; open ones keep their setting.
    ///
    /// ```no_run
    /// # let proxy = lakebase_pool_testing::FaultProxy::start("127.0.0.1:5432".parse().unwrap()).unwrap();
    /// use lakebase_pool_testing::NetworkFault;
    /// proxy.set_fault(NetworkFault::Blackhole);
    /// proxy.set_fault(NetworkFault::Pass);
    /// ```
    pub fn set_fault(&self, fault: NetworkFault) {
        *self
            .shared
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fault;
    }

    /// Resets (TCP RST) every connection open through the proxy now, on both sides.
    ///
    /// ```no_run
    /// # let proxy = lakebase_pool_testing::FaultProxy::start("127.0.0.1:5432".parse().unwrap()).unwrap();
    /// proxy.reset_connections();
    /// ```
    pub fn reset_connections(&self) {
        self.shared
            .resets
            .send_modify(|generation| *generation += 1);
    }

    /// How many connections the proxy has accepted.
    ///
    /// ```no_run
    /// # let proxy = lakebase_pool_testing::FaultProxy::start("127.0.0.1:5432".parse().unwrap()).unwrap();
    /// assert_eq!(proxy.accepted(), 0);
    /// ```
    pub fn accepted(&self) -> usize {
        *self
            .shared
            .accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field(
                "fault",
                &*self
                    .shared
                    .fault
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            )
            .finish_non_exhaustive()
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Some(client) = accept(&listener).await else {
            continue;
        };
        let fault = {
            *shared
                .accepted
                .lock()
                .unwrap_or_else(PoisonError::into_inner) += 1;
            shared
                .fault
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        };
        let resets = shared.resets.subscribe();
        drop(tokio::spawn(handle(client, upstream, fault, resets)));
    }
}

/// One client connection, under `fault`, until either side closes or a reset is ordered.
async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: NetworkFault,
    mut resets: watch::Receiver<u64>,
) {
    let _ = client.set_nodelay(true);
    let latency = match fault {
        NetworkFault::Blackhole => {
            // Swallow whatever arrives, answer nothing, until the client gives up.
            let mut sink = [0_u8; 1024];
            tokio::select! {
                () = async { while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {} } => {}
                _ = resets.changed() => reset(&client),
            }
            return;
        }
        NetworkFault::ResetHandshake => {
            let mut first = [0_u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(10), client.read(&mut first)).await;
            reset(&client);
            return;
        }
        NetworkFault::Pass | NetworkFault::StallQuery(_) => Duration::ZERO,
        NetworkFault::Latency(latency) => latency,
    };
    let stall_at = match fault {
        NetworkFault::StallQuery(n) => Some(n),
        _ => None,
    };
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        reset(&client);
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let forward = async {
        let to_server = async {
            match stall_at {
                Some(n) => pump_until_query(&mut client_read, &mut server_write, n).await,
                None => pump(&mut client_read, &mut server_write, latency).await,
            }
        };
        tokio::select! {
            () = to_server => {}
            () = pump(&mut server_read, &mut client_write, latency) => {}
        }
    };
    let reset_ordered = tokio::select! {
        () = forward => false,
        _ = resets.changed() => true,
    };
    if reset_ordered {
        reset(&client);
        reset(&server);
    }
}

/// Copies bytes from `from` to `to`, each chunk after `latency`, until either side ends.
async fn pump<R, W>(from: &mut R, to: &mut W, latency: Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Forwards the client's start-up packet and typed messages whole until its `n`-th simple
/// query, which it swallows with everything after it until the client closes.
async fn pump_until_query<R, W>(from: &mut R, to: &mut W, n: u32)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let forwarded = async {
        // The start-up packet: a length that counts itself, no type byte.
        let length = from.read_u32().await?;
        let mut startup = length.to_be_bytes().to_vec();
        let _ = (&mut *from)
            .take(u64::from(length.saturating_sub(4)))
            .read_to_end(&mut startup)
            .await?;
        to.write_all(&startup).await?;
        let mut queries = 0;
        loop {
            let kind = from.read_u8().await?;
            let length = from.read_u32().await?;
            if kind == b'Q' {
                queries += 1;
                if queries >= n {
                    return Ok::<(), std::io::Error>(());
                }
            }
            let mut message = vec![kind];
            message.extend_from_slice(&length.to_be_bytes());
            let _ = (&mut *from)
                .take(u64::from(length.saturating_sub(4)))
                .read_to_end(&mut message)
                .await?;
            to.write_all(&message).await?;
        }
    };
    if forwarded.await.is_ok() {
        let mut sink = [0_u8; 1024];
        while matches!(from.read(&mut sink).await, Ok(n) if n > 0) {}
    }
}

/// Makes the coming close a reset (RST) rather than an orderly FIN.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}
