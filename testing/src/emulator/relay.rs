//! A session once it is let through: start-up on the trusting upstream, then bytes both
//! ways, whole messages towards the client, until either side ends or the compute suspends.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use super::wire::{PROTOCOL_3, error_message, error_response, read_message, refuse};
use super::{COMPUTE_RETRY_WAITS, HANDSHAKE_TIMEOUT, Shared, lock};

/// Counts a session for its endpoint while it lives.
struct SessionGuard<'a> {
    shared: &'a Shared,
    id: String,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        if let Some(endpoint) = lock(&self.shared.endpoints).get_mut(&self.id) {
            endpoint.sessions = endpoint.sessions.saturating_sub(1);
            endpoint.idle_since = Instant::now();
        }
    }
}

/// Forgets a session's cancel key when it ends.
struct ForgetKey<'a> {
    shared: &'a Shared,
    key: Option<[u8; 8]>,
}

impl Drop for ForgetKey<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let _ = lock(&self.shared.cancel_keys).remove(&key);
        }
    }
}

/// Connects to the compute as the proxy does: the address looked up for this connection,
/// tried again after each of `COMPUTE_RETRY_WAITS` (so about 3 s) before giving up. After a
/// failover, a connection that looked up the old primary is held this long even though the
/// endpoint already routes to the new one.
async fn connect_compute(path: &std::path::Path) -> Option<UnixStream> {
    for wait in std::iter::once(Duration::ZERO).chain(COMPUTE_RETRY_WAITS) {
        tokio::time::sleep(wait).await;
        if let Ok(Ok(stream)) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, UnixStream::connect(path)).await
        {
            return Some(stream);
        }
    }
    None
}

pub(super) async fn relay(
    shared: &Arc<Shared>,
    id: &str,
    upstream_path: &std::path::Path,
    mut client: tokio_rustls::server::TlsStream<TcpStream>,
    params: &[(String, String)],
) -> std::io::Result<()> {
    let Some(mut upstream) = connect_compute(upstream_path).await else {
        return refuse(&mut client, "Couldn't connect to compute node").await;
    };
    let mut startup = Vec::new();
    startup.extend_from_slice(&PROTOCOL_3.to_be_bytes());
    for (key, value) in params {
        startup.extend_from_slice(key.as_bytes());
        startup.push(0);
        startup.extend_from_slice(value.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    upstream
        .write_all(&(startup.len() as i32 + 4).to_be_bytes())
        .await?;
    upstream.write_all(&startup).await?;
    // The upstream trusts its socket. As the proxy does, the emulator completes the
    // compute's start-up (to ReadyForQuery) before the client hears anything of it: an error
    // on the way (starting up, shutting down, too many clients, too many connections for
    // the role) reaches the client relabelled as the proxy's own, `XX000` with the
    // compute's message only.
    let mut startup_answer = Vec::new();
    // Armed before the loop: a refusal after the key arrived forgets it too.
    let mut forget_key = ForgetKey { shared, key: None };
    loop {
        let (kind, message) =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, read_message(&mut upstream)).await??;
        if kind == b'E' {
            let text = error_message(&message)
                .unwrap_or_else(|| String::from("Couldn't connect to compute node"));
            return refuse(&mut client, &text).await;
        }
        if kind == b'K' && message.len() == 13 {
            // The client gets keys of the emulator's own; a cancel naming them is passed
            // on with the upstream's (as the proxy maps its keys to the compute's).
            let mut ours = [0u8; 8];
            ours.iter_mut().for_each(|b| *b = fastrand::u8(..));
            let mut theirs = [0u8; 8];
            theirs.copy_from_slice(&message[5..13]);
            let _ = lock(&shared.cancel_keys).insert(ours, (upstream_path.to_owned(), theirs));
            forget_key.key = Some(ours);
            startup_answer.extend_from_slice(&message[..5]);
            startup_answer.extend_from_slice(&ours);
        } else {
            startup_answer.extend_from_slice(&message);
        }
        if kind == b'Z' {
            break;
        }
    }
    // Counted before the client hears it is in: a client that sees its session open sees
    // it counted.
    let mut suspended = {
        let mut endpoints = lock(&shared.endpoints);
        let Some(endpoint) = endpoints.get_mut(id) else {
            return Ok(());
        };
        endpoint.sessions += 1;
        endpoint.generation.subscribe()
    };
    let _session = SessionGuard {
        shared,
        id: id.to_owned(),
    };
    client.write_all(&startup_answer).await?;
    client.flush().await?;
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (upstream_read, mut upstream_write) = upstream.into_split();
    let mut upstream_read = tokio::io::BufReader::new(upstream_read);
    let to_upstream = tokio::io::copy(&mut client_read, &mut upstream_write);
    // Whole messages towards the client, so that a suspend notice never splits one: set
    // while a message is partly written.
    let mid_message = std::sync::atomic::AtomicBool::new(false);
    let to_client = forward_messages(&mut upstream_read, &mut client_write, &mid_message);
    // A suspend ends the session even while a write waits on a client that stopped reading.
    let suspend = tokio::select! {
        _ = to_upstream => false,
        _ = to_client => false,
        _ = suspended.changed() => true,
    };
    // The notice and the TLS close are bounded too: a client that does not read gets
    // neither, and loses its session and slot all the same.
    if suspend && !mid_message.load(Relaxed) {
        let notice = error_response(
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        );
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            client_write.write_all(&notice).await?;
            client_write.flush().await
        })
        .await;
    }
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, client_write.shutdown()).await;
    Ok(())
}

/// Copies whole messages from the upstream to the client until either side fails; sets
/// `mid_message` while one is partly written.
async fn forward_messages<R, W>(
    upstream: &mut tokio::io::BufReader<R>,
    client: &mut W,
    mid_message: &std::sync::atomic::AtomicBool,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    loop {
        let (_, message) = read_message(upstream).await?;
        mid_message.store(true, Relaxed);
        client.write_all(&message).await?;
        // Send once nothing more has already arrived: one TLS record for a whole reply, and
        // nothing held back while the upstream is quiet.
        if upstream.buffer().is_empty() {
            client.flush().await?;
        }
        mid_message.store(false, Relaxed);
    }
}

/// How long a session's last words (the suspend notice, the TLS close) may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
