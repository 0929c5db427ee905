//! Certificates generated at run time for TLS tests (none are committed, so none expire).

use std::fmt;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::HarnessError;

/// The crypto provider the crate's own TLS uses (the process default the application
/// installed, else ring), for raw TLS clients and servers in tests.
///
/// ```
/// let config = rustls::ClientConfig::builder_with_provider(lakebase_pool_testing::crypto_provider())
///     .with_safe_default_protocol_versions()
///     .unwrap()
///     .with_root_certificates(rustls::RootCertStore::empty())
///     .with_no_client_auth();
/// assert!(config.alpn_protocols.is_empty());
/// ```
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    // As the crate's own TLS does: ring's provider is deprecated for lacking post-quantum key
    // exchange, but it is the one both ends of a loopback test are built with.
    #[allow(deprecated)]
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
}

/// A throwaway certificate authority: trust its [`cert_pem`](Self::cert_pem) in the client,
/// serve one of its [`issue`](Self::issue)d certificates from the server.
///
/// ```
/// use lakebase_pool_testing::TestCa;
///
/// let ca = TestCa::new("Test CA")?;
/// let server = ca.issue(&["ep-test.db.lakebase.test"])?;
/// assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// assert!(server.cert_pem().contains("BEGIN CERTIFICATE"));
/// # Ok::<(), lakebase_pool_testing::HarnessError>(())
/// ```
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A server certificate and its private key, in PEM.
#[derive(Clone)]
pub struct IssuedCertificate {
    cert_pem: String,
    key_pem: String,
}

fn failed(error: rcgen::Error) -> HarnessError {
    HarnessError::Certificate(error.to_string())
}

impl TestCa {
    /// A new CA whose certificate carries `name` as its common name.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Certificate`] if generation fails.
    ///
    /// ```
    /// let ca = lakebase_pool_testing::TestCa::new("My test CA")?;
    /// # let _ = ca;
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn new(name: &str) -> Result<Self, HarnessError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.self_signed(&key).map_err(failed)?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate, to trust in clients.
    ///
    /// ```
    /// let ca = lakebase_pool_testing::TestCa::new("My test CA")?;
    /// let builder = lakebase_pool::Pool::builder().root_certificates_pem(ca.cert_pem());
    /// # let _ = builder;
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    ///
    /// # Errors
    ///
    /// [`HarnessError::Certificate`] for an invalid name.
    ///
    /// ```
    /// let ca = lakebase_pool_testing::TestCa::new("My test CA")?;
    /// let server = ca.issue(&["db.test", "127.0.0.1"])?;
    /// # let _ = server;
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn issue(&self, names: &[&str]) -> Result<IssuedCertificate, HarnessError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).map_err(failed)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl IssuedCertificate {
    /// The certificate.
    ///
    /// ```
    /// let server = lakebase_pool_testing::TestCa::new("CA")?.issue(&["db.test"])?;
    /// assert!(server.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key.
    ///
    /// ```
    /// let server = lakebase_pool_testing::TestCa::new("CA")?.issue(&["db.test"])?;
    /// assert!(server.key_pem().contains("PRIVATE KEY"));
    /// # Ok::<(), lakebase_pool_testing::HarnessError>(())
    /// ```
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}
