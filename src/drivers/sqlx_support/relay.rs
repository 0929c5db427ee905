//! [`Relay`]: a Unix socket in a private directory that carries sqlx's sessions to the
//! server at the address the pool's resolver hook (or `hostaddr`) gives.
//!
//! sqlx has no `hostaddr`: it resolves the host name itself and uses the same name for TLS.
//! Told to connect through a Unix socket directory while keeping the host name, it runs TLS
//! (SNI and the certificate check) with the name over whatever the socket leads to. The
//! relay makes that the server: it opens a TCP connection to the address the pool would
//! dial and copies bytes both ways. TLS stays end to end between sqlx and the server; the
//! relay sees only ciphertext.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpStream, UnixListener, UnixStream};

use crate::error::Error;
use crate::resolve::Resolve;

/// Where the relay's sessions go.
pub(crate) struct Route {
    /// The host name, for the resolver hook and messages.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `hostaddr`: used as given, before any resolver.
    pub(crate) addresses: Vec<IpAddr>,
    pub(crate) resolver: Option<Arc<dyn Resolve>>,
    /// Plain text: every address dialled must be loopback, whatever the name says.
    pub(crate) loopback_only: bool,
    /// How long one attempt to resolve and connect may take.
    pub(crate) connect_timeout: Duration,
    /// How long to go on trying to reach the server for one session (the pool's retry
    /// deadline): a server restarting or waking is waited for, as the pool's own connects
    /// wait for it, since nothing has been sent to it yet. sqlx's acquire timeout bounds the
    /// wait from its side.
    pub(crate) reach_deadline: Duration,
}

/// A running relay; dropping it stops accepting and removes its directory (sessions already
/// carried go on until either side closes).
pub(crate) struct Relay {
    dir: PathBuf,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on `.s.PGSQL.<port>` in a new directory only this user can enter.
    pub(crate) fn start(route: Route) -> Result<Relay, Error> {
        use std::os::unix::fs::DirBuilderExt;

        let dir = std::env::temp_dir().join(format!(
            "lakebase-pool-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let failed = |what: &str, error: std::io::Error| {
            Error::invalid_because(
                "resolver",
                format!(
                    "the local relay that gives sqlx the resolver's address could not {what} \
                     in `{}` (set TMPDIR to a short, writable directory)",
                    dir.display()
                ),
                error,
            )
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| failed("create its directory", e))?;
        let listener =
            UnixListener::bind(dir.join(format!(".s.PGSQL.{}", route.port))).map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                failed("listen", e)
            })?;
        let route = Arc::new(route);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // Out of file descriptors and the like: pause rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let route = Arc::clone(&route);
                drop(tokio::spawn(async move { carry(client, &route).await }));
            }
        });
        Ok(Relay { dir, accept })
    }

    /// The directory to give sqlx as its socket.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to the server and copies `client`'s bytes to it and back, until either side
/// ends (then both are closed: a server that never answers a closed client is not waited
/// for). A server that cannot be reached within the route's deadline closes `client`, which
/// sqlx reports as a connect error; the cause is logged here.
async fn carry(client: UnixStream, route: &Route) {
    let Some(server) = reach(route).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    tokio::select! {
        _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
        _ = tokio::io::copy(&mut from_server, &mut to_client) => {}
    }
}

/// The server, tried again with backoff (refused, unreachable, not resolved) until the
/// route's deadline.
async fn reach(route: &Route) -> Option<TcpStream> {
    let deadline = tokio::time::Instant::now() + route.reach_deadline;
    let mut pause = Duration::from_millis(50);
    loop {
        let cause = match tokio::time::timeout(route.connect_timeout, connect(route)).await {
            Ok(Ok(server)) => return Some(server),
            Ok(Err(cause)) => cause,
            Err(_) => format!("no answer within {:?}", route.connect_timeout),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            tracing::warn!(host = %route.host, %cause, "sqlx relay: could not reach the server");
            return None;
        }
        tracing::debug!(host = %route.host, %cause, "sqlx relay: server not reached yet; trying again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// A TCP connection to the first address of the route's host that answers.
async fn connect(route: &Route) -> Result<TcpStream, String> {
    let addresses = if !route.addresses.is_empty() {
        route.addresses.clone()
    } else if let Some(resolver) = &route.resolver {
        resolver
            .resolve(&route.host)
            .await
            .map_err(|e| e.to_string())?
    } else {
        tokio::net::lookup_host((route.host.as_str(), route.port))
            .await
            .map_err(|e| format!("could not resolve `{}`: {e}", route.host))?
            .map(|a| a.ip())
            .collect()
    };
    if route.loopback_only
        && let Some(address) = addresses.iter().find(|a| !a.is_loopback())
    {
        return Err(format!(
            "plain text refused: `{}` resolved to {address}, which is not loopback",
            route.host
        ));
    }
    let mut last = format!("`{}` has no address", route.host);
    for address in addresses {
        match TcpStream::connect(SocketAddr::new(address, route.port)).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                // A server that vanishes without a word (a compute gone, a network cut) is
                // noticed, as on the pool's own sessions.
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(30))
                    .with_interval(Duration::from_secs(10));
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                return Ok(stream);
            }
            Err(error) => last = format!("{address}: {error}"),
        }
    }
    Err(last)
}
