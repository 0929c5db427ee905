//! One client connection, as the Lakebase proxy serves it: the start-up request, TLS with
//! SNI, the endpoint named by SNI or option, the token check, waking the compute, then the
//! relay to it; and cancel requests, relayed to the session they name.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UnixStream};

use crate::server_thread::accept;

use super::relay::relay;
use super::wire::{
    CANCEL_REQUEST, FORWARDED_PARAMS, GSSENC_REQUEST, PROTOCOL_3, SSL_REQUEST, error_response,
    first_duplicate, is_endpoint_id, parse_params, read_message, read_startup, refuse,
    split_endpoint_option, split_endpoint_password,
};
use super::{ComputeState, HANDSHAKE_TIMEOUT, Shared, WAKE_TEXTS, lock};

pub(super) async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => shared.suspend_idle(),
            accepted = accept(&listener) => {
                let Some(mut stream) = accepted else { continue };
                let Some(slot) = ConnectionSlot::take(&shared) else {
                    // Refused without reading anything: an error a client can show.
                    let message = error_response("ERROR", "53300", "too many connections to the emulator");
                    drop(tokio::spawn(async move {
                        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(&message)).await;
                    }));
                    continue;
                };
                let shared = Arc::clone(&shared);
                drop(tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(error) = serve_client(&shared, stream).await {
                        tracing::debug!(%error, "emulator: client connection ended");
                    }
                }));
            }
        }
    }
}

/// The proxy's answer when the control plane could not wake the compute.
const CONTROL_PLANE_FAILED: &str = "Control plane request failed";
/// The proxy's answer to a plain-text start-up.
const INSECURE: &str = "connection is insecure (try using `sslmode=require`)";
/// The proxy's answer when neither SNI, `options` nor the password names the endpoint.
const NO_ENDPOINT: &str = "Endpoint ID is not specified. Either please upgrade the postgres \
                           client library (libpq) for SNI support or pass the endpoint ID (first \
                           part of the domain name) as a parameter: \
                           '?options=endpoint%3D<endpoint-id>'. See more at https://neon.tech/sni";

async fn serve_client(shared: &Arc<Shared>, mut tcp: TcpStream) -> std::io::Result<()> {
    // Small protocol messages must not wait for delayed ACKs (Nagle): 40 ms per round trip.
    tcp.set_nodelay(true)?;
    let (handshake, direct_only) = {
        let settings = lock(&shared.settings);
        (settings.handshake_timeout, settings.direct_tls_only)
    };
    // Direct TLS negotiation (PostgreSQL 17): the first byte is a TLS record's.
    let mut first = [0u8; 1];
    if tokio::time::timeout(handshake, tcp.peek(&mut first)).await?? == 0 {
        return Ok(());
    }
    if first[0] == TLS_HANDSHAKE_RECORD {
        let client = tokio::time::timeout(handshake, shared.tls.accept(tcp)).await??;
        return serve_tls_client(shared, client, true).await;
    }
    let (code, body) = tokio::time::timeout(handshake, read_startup(&mut tcp)).await??;
    let code = if code == GSSENC_REQUEST {
        tcp.write_all(b"N").await?;
        tokio::time::timeout(handshake, read_startup(&mut tcp))
            .await??
            .0
    } else {
        code
    };
    match code {
        SSL_REQUEST if direct_only => {
            // A front that speaks TLS only from the first byte: no TLS this way.
            tcp.write_all(b"N").await?;
            return refuse(&mut tcp, INSECURE).await;
        }
        SSL_REQUEST => {}
        CANCEL_REQUEST => return relay_cancel(shared, &body).await,
        _ => return refuse(&mut tcp, INSECURE).await,
    }
    tcp.write_all(b"S").await?;
    let client = tokio::time::timeout(handshake, shared.tls.accept(tcp)).await??;
    serve_tls_client(shared, client, false).await
}

/// Passes a cancel request on to the upstream session whose keys the emulator handed out
/// as `body` (process id and secret key), as the proxy does; an unknown key is accepted and
/// does nothing.
async fn relay_cancel(shared: &Arc<Shared>, body: &[u8]) -> std::io::Result<()> {
    let Ok(key) = <[u8; 8]>::try_from(body) else {
        return Ok(());
    };
    let Some((path, upstream_key)) = lock(&shared.cancel_keys).get(&key).cloned() else {
        return Ok(());
    };
    let mut upstream =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, UnixStream::connect(&path)).await??;
    let mut request = Vec::with_capacity(16);
    request.extend_from_slice(&16i32.to_be_bytes());
    request.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    request.extend_from_slice(&upstream_key);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, upstream.write_all(&request)).await??;
    Ok(())
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serves a client once TLS is up, reached by `SSLRequest` or, when `direct`, from the first
/// byte, which needs ALPN `postgresql` as PostgreSQL 17 requires (against cross-protocol
/// attacks).
async fn serve_tls_client(
    shared: &Arc<Shared>,
    mut client: tokio_rustls::server::TlsStream<TcpStream>,
    direct: bool,
) -> std::io::Result<()> {
    let handshake = lock(&shared.settings).handshake_timeout;
    if direct && client.get_ref().1.alpn_protocol() != Some(super::POSTGRES_ALPN) {
        return refuse(
            &mut client,
            "received direct SSL connection request without ALPN protocol negotiation extension",
        )
        .await;
    }
    let sni = client.get_ref().1.server_name().map(str::to_owned);
    let (code, body) = tokio::time::timeout(handshake, read_startup(&mut client)).await??;
    if code == CANCEL_REQUEST {
        // A cancel inside TLS, as libpq and tokio-postgres send it to a TLS server.
        return relay_cancel(shared, &body).await;
    }
    if code != PROTOCOL_3 {
        return refuse(&mut client, "unsupported frontend protocol").await;
    }
    let mut params = parse_params(&body);
    // One value per parameter: with two `user`s, a check of the first and an upstream that
    // takes the last would log a token's holder in as someone else.
    if let Some(duplicate) = first_duplicate(&params) {
        let message = format!("duplicate start-up parameter `{duplicate}`");
        return refuse(&mut client, &message).await;
    }
    params.retain(|(key, _)| FORWARDED_PARAMS.contains(&key.as_str()));

    let scripted = {
        let mut settings = lock(&shared.settings);
        (!settings.scripted_errors.is_empty()).then(|| settings.scripted_errors.remove(0))
    };
    if let Some(message) = scripted {
        return refuse(&mut client, &message).await;
    }

    // Which endpoint: the SNI's first label under our domain (an SNI outside it counts as
    // none, as at the proxy), or options=endpoint=<id>, or the password's endpoint=<id>;.
    let from_sni = sni
        .as_deref()
        .and_then(|name| name.strip_suffix(&format!(".{}", shared.domain)))
        .map(|label| label.split('.').next().unwrap_or(label).to_owned());
    let options = params
        .iter()
        .find(|(k, _)| k == "options")
        .map(|(_, v)| v.clone());
    let (from_options, other_options) =
        split_endpoint_option(options.as_deref().unwrap_or_default());
    params.retain(|(k, _)| k != "options");
    if !other_options.is_empty() {
        params.push((String::from("options"), other_options));
    }
    if let Some(id) = [&from_sni, &from_options]
        .into_iter()
        .flatten()
        .find(|id| !is_endpoint_id(id))
    {
        return refuse(&mut client, &malformed_id(id)).await;
    }
    if let (Some(a), Some(b)) = (&from_sni, &from_options)
        && a != b
    {
        return refuse(&mut client, &inconsistent_ids(a, b)).await;
    }

    // A cleartext password (the token), asked for before the endpoint must be known: the
    // password may name it. (Lakebase's token login; the open-source proxy asks for SCRAM.)
    client.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    client.flush().await?;
    let (kind, message) = tokio::time::timeout(handshake, read_message(&mut client)).await??;
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let field = if kind == b'p' {
        String::from_utf8_lossy(message[5..].split(|b| *b == 0).next().unwrap_or_default())
            .into_owned()
    } else {
        String::new()
    };
    let (from_password, password) = split_endpoint_password(&field);
    let id = match (from_sni.or(from_options), from_password) {
        (Some(a), Some(b)) if a != b => return refuse(&mut client, &inconsistent_ids(&a, b)).await,
        (Some(id), _) => id,
        (None, Some(id)) if !is_endpoint_id(id) => {
            return refuse(&mut client, &malformed_id(id)).await;
        }
        (None, Some(id)) => id.to_owned(),
        (None, None) => return refuse(&mut client, NO_ENDPOINT).await,
    };
    let refused = password_failed(&user);
    // `<label>-ro` is the read-only host of the endpoint `<label>`, when it has one: the
    // same endpoint (its tokens, its compute state), served by its secondary.
    let (id, read_only_host) = {
        let endpoints = lock(&shared.endpoints);
        match id.strip_suffix("-ro") {
            Some(base)
                if !endpoints.contains_key(&id)
                    && endpoints
                        .get(base)
                        .is_some_and(|e| e.read_only_upstream.is_some()) =>
            {
                (base.to_owned(), true)
            }
            _ => (id, false),
        }
    };
    let found = lock(&shared.endpoints).get(&id).map(|endpoint| {
        let upstream = match (&endpoint.read_only_upstream, read_only_host) {
            (Some(secondary), true) => secondary.clone(),
            _ => endpoint.upstream.clone(),
        };
        (
            endpoint.name.clone(),
            endpoint.disabled,
            upstream,
            endpoint.database_rename.clone(),
        )
    });
    // An unknown endpoint reads as a wrong password, as with the proxy's production backend.
    let Some((name, disabled, upstream, rename)) = found else {
        return refuse(&mut client, &refused).await;
    };
    if disabled {
        return refuse(
            &mut client,
            "Control plane request failed: endpoint is disabled",
        )
        .await;
    }
    if !shared.workspace.accepts(password, &name, &user) {
        return refuse(&mut client, &refused).await;
    }

    // The compute must be running.
    if let Err(text) = wake(shared, &id).await {
        return refuse(&mut client, text).await;
    }
    if let Some((from, to)) = rename {
        for (key, value) in &mut params {
            if key == "database" && *value == from {
                value.clone_from(&to);
            }
        }
    }
    relay(shared, &id, &upstream, client, &params).await
}

fn password_failed(user: &str) -> String {
    format!("password authentication failed for user '{user}'")
}

fn malformed_id(id: &str) -> String {
    format!("Project name ('{id}') must contain only alphanumeric characters and hyphen.")
}

fn inconsistent_ids(from_sni: &str, from_option: &str) -> String {
    format!(
        "Inconsistent project name inferred from SNI ('{from_sni}') and project option \
         ('{from_option}')."
    )
}

/// Waits for the compute to be active, waking it if needed; or the text to refuse with.
async fn wake(shared: &Arc<Shared>, id: &str) -> Result<(), &'static str> {
    let wait_until = {
        let (delay, wakes_fail) = {
            let settings = lock(&shared.settings);
            let failing = settings
                .wakes_fail_until
                .is_some_and(|until| Instant::now() < until);
            (settings.wake_delay, failing)
        };
        let mut endpoints = lock(&shared.endpoints);
        let Some(endpoint) = endpoints.get_mut(id) else {
            return Err("endpoint cannot be found");
        };
        if endpoint.state == ComputeState::Active {
            return Ok(());
        }
        if wakes_fail {
            return Err(CONTROL_PLANE_FAILED);
        }
        let until = *endpoint
            .wake_until
            .get_or_insert_with(|| Instant::now() + delay);
        if endpoint.state == ComputeState::Idle {
            endpoint.state = ComputeState::Waking;
            shared.workspace.set_endpoint_state(&endpoint.name, "INIT");
            tracing::debug!(endpoint = id, "emulator: waking the compute");
        }
        if endpoint.refusals_left > 0 {
            endpoint.refusals_left -= 1;
            return Err(WAKE_TEXTS[endpoint.refusals_left as usize % WAKE_TEXTS.len()]);
        }
        until
    };
    tokio::time::sleep_until(wait_until.into()).await;
    let mut endpoints = lock(&shared.endpoints);
    if let Some(endpoint) = endpoints.get_mut(id)
        && endpoint.state == ComputeState::Waking
    {
        endpoint.state = ComputeState::Active;
        endpoint.wake_until = None;
        shared
            .workspace
            .set_endpoint_state(&endpoint.name, "ACTIVE");
    }
    Ok(())
}

/// One of the emulator's client connections, counted against its cap while it lives.
struct ConnectionSlot(Arc<Shared>);

impl ConnectionSlot {
    fn take(shared: &Arc<Shared>) -> Option<Self> {
        let max = lock(&shared.settings).max_connections;
        let mut open = lock(&shared.open_connections);
        (*open < max).then(|| {
            *open += 1;
            ConnectionSlot(Arc::clone(shared))
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        *lock(&self.0.open_connections) -= 1;
    }
}
