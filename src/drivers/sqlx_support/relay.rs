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
    /// The bound on resolving and connecting, for each session.
    pub(crate) connect_timeout: Duration,
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

/// Connects to the server and copies `client`'s bytes to it and back. A failure closes
/// `client`, which sqlx reports as a connect error; the cause is logged here.
async fn carry(mut client: UnixStream, route: &Route) {
    let server = tokio::time::timeout(route.connect_timeout, connect(route)).await;
    let mut server = match server {
        Ok(Ok(server)) => server,
        Ok(Err(cause)) => {
            tracing::warn!(host = %route.host, %cause, "sqlx relay: could not reach the server");
            return;
        }
        Err(_) => {
            tracing::warn!(
                host = %route.host,
                timeout_ms = crate::backoff::millis(route.connect_timeout),
                "sqlx relay: could not reach the server in time"
            );
            return;
        }
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
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
                return Ok(stream);
            }
            Err(error) => last = format!("{address}: {error}"),
        }
    }
    Err(last)
}
