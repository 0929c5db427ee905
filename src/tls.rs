//! TLS: rustls with one explicit crypto provider, and what each `sslmode` means here.
//!
//! Every config is built with `builder_with_provider`: the provider the application installed
//! as the process default (`CryptoProvider::install_default`, e.g. aws-lc-rs for post-quantum
//! key exchange), else ring. Never `ClientConfig::builder()`, which panics when the binary
//! compiles two providers into rustls and none is installed.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::Error;

/// How a connection is secured; libpq's `sslmode`, with stricter meanings.
///
/// A database token is a bearer secret, so it is only ever sent over a channel whose server
/// was verified:
///
/// | mode | here | libpq |
/// |---|---|---|
/// | `disable` | plain TCP; **only to loopback hosts** (or with [`Dangerous::allow_plaintext`](crate::Dangerous::allow_plaintext)) | plain TCP |
/// | `allow`, `prefer`, `require` | TLS, chain and host name verified; never falls back to plain TCP | `require` encrypts without verifying anything |
/// | `verify-ca` | TLS, chain verified against **your own CA only** (`PGSSLROOTCERT`, `root_certificates_*`; refused at `build()` without one), host name not checked | the same since libpq 16 (`sslrootcert=system` is refused with it) |
/// | `verify-full` | TLS, chain and host name verified | the same |
///
/// `require` is stricter than libpq's because Databricks Apps set `PGSSLMODE=require`, Lakebase
/// serves publicly trusted certificates, and an unverified TLS channel would hand the token to
/// anyone able to intercept the connection. Without an explicit mode, loopback hosts use
/// `disable` and every other host `verify-full`.
///
/// Trusted roots: the webpki (Mozilla) roots, plus the operating system's store with the
/// `native-roots` feature, plus any extra CA certificates configured; for `verify-ca`, only
/// the extra CA certificates
/// ([`PoolBuilder::root_certificates_pem`](crate::PoolBuilder::root_certificates_pem), `PGSSLROOTCERT`).
///
/// ```
/// use lakebase_pool::SslMode;
///
/// let mode: SslMode = "require".parse()?;
/// assert_eq!(mode, SslMode::Require);
/// assert!(mode.verifies_host_name());
/// # Ok::<(), lakebase_pool::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain TCP, allowed only to loopback hosts unless explicitly opted out.
    Disable,
    /// libpq `allow`/`prefer`: here TLS with full verification (no plain-text fallback).
    Prefer,
    /// TLS with chain and host-name verification (stricter than libpq).
    Require,
    /// TLS with chain verification; the host name is not checked.
    VerifyCa,
    /// TLS with chain and host-name verification.
    VerifyFull,
}

impl SslMode {
    /// Whether the certificate must name the host.
    ///
    /// ```
    /// assert!(!lakebase_pool::SslMode::VerifyCa.verifies_host_name());
    /// ```
    pub fn verifies_host_name(self) -> bool {
        matches!(
            self,
            SslMode::Prefer | SslMode::Require | SslMode::VerifyFull
        )
    }

    /// Whether the connection uses TLS.
    ///
    /// ```
    /// assert!(!lakebase_pool::SslMode::Disable.uses_tls());
    /// ```
    pub fn uses_tls(self) -> bool {
        self != SslMode::Disable
    }
}

impl FromStr for SslMode {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text.trim() {
            "disable" => Ok(SslMode::Disable),
            "allow" | "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(Error::invalid(
                "ssl_mode",
                format!(
                    "`{other}` is not an sslmode (use disable, allow, prefer, require, verify-ca \
                     or verify-full)"
                ),
            )),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// Whether a SCRAM login is bound to the TLS session; libpq's `channel_binding`
/// (`PGCHANNELBINDING`).
///
/// With channel binding (`SCRAM-SHA-256-PLUS`, `tls-server-end-point`), the server's proof of
/// the password covers the certificate it presented, so a man in the middle holding some other
/// certificate the client happens to trust cannot relay the login. Lakebase's proxy offers it,
/// and so does any PostgreSQL 11+ with TLS.
///
/// | setting | here |
/// |---|---|
/// | `disable` | never bind |
/// | `prefer` (default) | bind whenever the server offers `SCRAM-SHA-256-PLUS` over TLS; log in without it otherwise (a cleartext password over TLS, which the emulator asks for with tokens and Lakebase's token login presumably does, cannot be bound) |
/// | `require` | refuse any login that is not bound: refused at `build()` without TLS, and fails (without retries) against a server that asks for a cleartext or MD5 password or plain SCRAM |
///
/// ```
/// use lakebase_pool::ChannelBinding;
///
/// let binding: ChannelBinding = "require".parse()?;
/// assert_eq!(binding, ChannelBinding::Require);
/// assert_eq!(ChannelBinding::default(), ChannelBinding::Prefer);
/// # Ok::<(), lakebase_pool::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChannelBinding {
    /// Never bind the login to the TLS session.
    Disable,
    /// Bind when the server offers it (the default).
    #[default]
    Prefer,
    /// Refuse logins that are not bound.
    Require,
}

impl ChannelBinding {
    pub(crate) fn to_tokio_postgres(self) -> tokio_postgres::config::ChannelBinding {
        match self {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        }
    }
}

impl FromStr for ChannelBinding {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text.trim() {
            "disable" => Ok(ChannelBinding::Disable),
            "prefer" => Ok(ChannelBinding::Prefer),
            "require" => Ok(ChannelBinding::Require),
            other => Err(Error::invalid(
                "channel_binding",
                format!("`{other}` is not a channel_binding (use disable, prefer or require)"),
            )),
        }
    }
}

impl fmt::Display for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        })
    }
}

/// How TLS is started on a Postgres connection; libpq's `sslnegotiation`
/// (`PGSSLNEGOTIATION`, PostgreSQL 17).
///
/// | setting | here |
/// |---|---|
/// | `postgres` (default) | the client asks with an `SSLRequest` and waits for the server's yes before the TLS handshake: one round trip more per connection, understood by every PostgreSQL |
/// | `direct` | the TLS handshake starts with the first byte (ALPN `postgresql`), saving that round trip; needs PostgreSQL 17+ or a proxy that supports it, such as Neon's under Lakebase. Never with `sslmode=disable` (refused at `build()`) |
///
/// The default stays `postgres` because servers before PostgreSQL 17 do not understand a
/// direct handshake (they see garbage and close), and whether every Lakebase region's proxy
/// accepts it is not verified. Where it does, `direct` makes each new connection one round
/// trip faster: worth it for a WAN link and for cold starts. The ALPN protocol `postgresql`
/// is offered either way, as libpq 17 does.
///
/// ```
/// use lakebase_pool::SslNegotiation;
///
/// let negotiation: SslNegotiation = "direct".parse()?;
/// assert_eq!(negotiation, SslNegotiation::Direct);
/// assert_eq!(SslNegotiation::default(), SslNegotiation::Postgres);
/// # Ok::<(), lakebase_pool::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SslNegotiation {
    /// `SSLRequest` first, then TLS (the default).
    #[default]
    Postgres,
    /// TLS from the first byte.
    Direct,
}

impl SslNegotiation {
    pub(crate) fn to_tokio_postgres(self) -> tokio_postgres::config::SslNegotiation {
        match self {
            SslNegotiation::Postgres => tokio_postgres::config::SslNegotiation::Postgres,
            SslNegotiation::Direct => tokio_postgres::config::SslNegotiation::Direct,
        }
    }
}

impl FromStr for SslNegotiation {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text.trim() {
            "postgres" => Ok(SslNegotiation::Postgres),
            "direct" => Ok(SslNegotiation::Direct),
            other => Err(Error::invalid(
                "ssl_negotiation",
                format!("`{other}` is not an sslnegotiation (use postgres or direct)"),
            )),
        }
    }
}

impl fmt::Display for SslNegotiation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslNegotiation::Postgres => "postgres",
            SslNegotiation::Direct => "direct",
        })
    }
}

/// The ALPN protocol of Postgres over TLS (PostgreSQL 17), required for direct negotiation.
pub(crate) const POSTGRES_ALPN: &[u8] = b"postgresql";

/// A client config for Postgres connections: as [`client_config`], offering ALPN
/// `postgresql` (never for the HTTP client, whose servers speak HTTP).
pub(crate) fn postgres_client_config(
    trust: &Trust,
    verify_name: bool,
) -> Result<ClientConfig, Error> {
    let mut config = client_config(trust, verify_name)?;
    config.alpn_protocols = vec![POSTGRES_ALPN.to_vec()];
    Ok(config)
}

/// Which server certificates a client accepts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Trust {
    /// CA certificates trusted in addition to the built-in roots.
    pub(crate) extra_roots: Vec<CertificateDer<'static>>,
    /// Accept any certificate (the dangerous opt-out for local self-signed servers).
    pub(crate) accept_invalid_certificates: bool,
}

/// The crypto provider of every TLS config: the application's process default when it
/// installed one, else ring.
///
/// rustls 0.23.48 deprecates its ring provider (no post-quantum key exchange) in favour of
/// aws-lc-rs. The crate still compiles only ring: reqwest 0.12 enables rustls's ring feature,
/// and with aws-lc-rs enabled too, rustls can no longer pick a default from its features, so an
/// application's own `rustls::ClientConfig::builder()` would panic. An application that wants
/// aws-lc-rs installs it as the process default, and the crate follows.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    if let Some(installed) = CryptoProvider::get_default() {
        return Arc::clone(installed);
    }
    #[allow(deprecated)] // See above: the one provider that cannot break the application.
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config for `trust`, checking the host name only when `verify_name`.
pub(crate) fn client_config(trust: &Trust, verify_name: bool) -> Result<ClientConfig, Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_because("tls", "the crypto provider is unusable", e))?;
    if trust.accept_invalid_certificates {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth());
    }
    if verify_name {
        let roots = Arc::new(root_store(&trust.extra_roots)?);
        return Ok(builder.with_root_certificates(roots).with_no_client_auth());
    }
    // verify-ca, as libpq 16+: with the public roots, a chain check without the name would
    // accept any publicly trusted certificate for any host, so only the user's own CA counts.
    let roots = Arc::new(verify_ca_roots(trust)?);
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| Error::invalid_because("tls", "cannot verify certificates", e))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
        .with_no_client_auth())
}

/// `verify-ca` needs CA certificates of the user's own (`PGSSLROOTCERT`, `root_certificates_*`).
pub(crate) fn check_verify_ca(trust: &Trust) -> Result<(), Error> {
    if trust.extra_roots.is_empty() && !trust.accept_invalid_certificates {
        return Err(Error::invalid(
            "ssl_mode",
            "verify-ca checks the certificate chain but not the host name, so it needs your own \
             CA certificates (`root_certificates_file`/`root_certificates_pem`, or PGSSLROOTCERT) \
             and trusts only those: with the public roots, any publicly trusted certificate for \
             any host would pass. Give your CA, or use verify-full",
        ));
    }
    Ok(())
}

/// The roots `verify-ca` trusts: the user's own CA certificates, and nothing else.
fn verify_ca_roots(trust: &Trust) -> Result<RootCertStore, Error> {
    check_verify_ca(trust)?;
    extend_roots(RootCertStore::empty(), &trust.extra_roots)
}

fn root_store(extra: &[CertificateDer<'static>]) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    #[cfg(feature = "native-roots")]
    {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, "trusting the operating system's certificate store");
    }
    extend_roots(roots, extra)
}

fn extend_roots(
    mut roots: RootCertStore,
    extra: &[CertificateDer<'static>],
) -> Result<RootCertStore, Error> {
    for certificate in extra {
        roots.add(certificate.clone()).map_err(|e| {
            Error::invalid_because("root_certificates", "a CA certificate is not usable", e)
        })?;
    }
    Ok(roots)
}

/// Parses every certificate of a PEM document; `origin` names it in errors.
pub(crate) fn parse_pem_certificates(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::invalid_because("root_certificates", format!("{origin} is not valid PEM"), e)
        })?;
    if certificates.is_empty() {
        return Err(Error::invalid(
            "root_certificates",
            format!("{origin} contains no `BEGIN CERTIFICATE` block"),
        ));
    }
    Ok(certificates)
}

/// Reads CA certificates from a PEM file (`PGSSLROOTCERT`).
pub(crate) fn read_pem_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = crate::files::read_bounded(path, crate::files::MAX_CONFIG_FILE).map_err(|e| {
        Error::invalid_because(
            "root_certificates",
            format!("could not read {}", path.display()),
            e,
        )
    })?;
    parse_pem_certificates(&pem, &path.display().to_string())
}

/// `verify-ca`: the chain must lead to a trusted root; the name on it is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate. Only behind the `dangerous()` opt-out; the handshake signatures
/// are still checked, so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmodes_parse_with_libpq_names() {
        assert_eq!("disable".parse::<SslMode>().unwrap(), SslMode::Disable);
        assert_eq!("allow".parse::<SslMode>().unwrap(), SslMode::Prefer);
        assert_eq!("verify-ca".parse::<SslMode>().unwrap(), SslMode::VerifyCa);
        let err = "sometimes".parse::<SslMode>().unwrap_err();
        assert!(
            err.to_string().contains("`sometimes` is not an sslmode"),
            "{err}"
        );
        assert!(SslMode::Require.verifies_host_name() && SslMode::Prefer.uses_tls());
    }

    #[test]
    fn pem_without_certificates_is_refused_with_its_origin() {
        let err = parse_pem_certificates(b"hello", "ca.pem").unwrap_err();
        assert!(
            err.to_string()
                .contains("ca.pem contains no `BEGIN CERTIFICATE` block"),
            "{err}"
        );
        let err = read_pem_file(std::path::Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            err.to_string()
                .contains("could not read /nonexistent/ca.pem"),
            "{err}"
        );
    }

    /// A self-signed CA certificate, made here, as the user's own root.
    fn own_ca() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn verify_ca_trusts_exactly_the_users_own_roots_and_never_the_public_ones() {
        let trust = Trust {
            extra_roots: vec![own_ca()],
            accept_invalid_certificates: false,
        };
        assert_eq!(verify_ca_roots(&trust).unwrap().len(), 1);
        assert!(root_store(&trust.extra_roots).unwrap().len() > 100);
        assert!(client_config(&trust, false).is_ok());
    }

    #[test]
    fn configs_build_for_every_trust_setting_but_verify_ca_without_own_roots() {
        for accept in [false, true] {
            for verify_name in [false, true] {
                let trust = Trust {
                    extra_roots: Vec::new(),
                    accept_invalid_certificates: accept,
                };
                let built = client_config(&trust, verify_name);
                if verify_name || accept {
                    assert!(built.is_ok());
                } else {
                    let err = built.unwrap_err();
                    assert!(err.to_string().contains("verify-ca"), "{err}");
                    assert!(err.to_string().contains("PGSSLROOTCERT"), "{err}");
                }
            }
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bytes, PEM-looking or not, give certificates or a typed configuration error.
        #[test]
        fn any_pem_input_is_read_or_refused_typed(
            head in proptest::collection::vec(any::<u8>(), 0..64),
            body in "[A-Za-z0-9+/=\n]{0,200}",
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut pem = head;
            pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
            pem.extend_from_slice(body.as_bytes());
            pem.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
            pem.extend_from_slice(&tail);
            if let Err(error) = parse_pem_certificates(&pem, "test.pem") {
                prop_assert!(matches!(error, Error::InvalidConfig { .. }), "{error:?}");
            }
        }
    }
}
