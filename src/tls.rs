//! rustls client configuration: one explicit crypto provider (ring) and the webpki roots.
//!
//! Every config is built with `builder_with_provider`, never with the process-wide default
//! provider, so the crate works whatever other crates in the binary compile into rustls.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;

use crate::Error;

/// The crate's one crypto provider.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that verifies the chain against the webpki roots and the host name.
pub(crate) fn client_config() -> Result<ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("tls", format!("the crypto provider is unusable: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
