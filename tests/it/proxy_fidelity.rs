//! The Lakebase proxy's own answers (REFERENCE: what the open-source Neon proxy sends), as the
//! emulator gives them and as the pool handles them: a token refused with the proxy's `XX000`
//! text is replaced once, and each configuration error fails at once saying what to fix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lakebase_pool::{Error, PoolBuilder, RetryPolicy, SslMode};
use lakebase_pool_testing::LocalLakebase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ID: &str = "ep-local";

async fn lakebase() -> LocalLakebase {
    LocalLakebase::start().await.unwrap()
}

async fn mint(lakebase: &LocalLakebase) -> String {
    use lakebase_pool::databricks::{CredentialRequest, Workspace};
    let workspace = Workspace::builder()
        .host(lakebase.workspace().url())
        .token(LocalLakebase::PAT)
        .build()
        .unwrap();
    let endpoint = LocalLakebase::ENDPOINT.parse().unwrap();
    workspace
        .generate_database_credential(&endpoint, &CredentialRequest::default())
        .await
        .unwrap()
        .token()
        .expose()
        .to_owned()
}

/// `(severity, SQLSTATE, message)` of the server's error behind `error`.
fn answer(error: &Error) -> Option<(String, String, String)> {
    let db = std::error::Error::source(error)?
        .downcast_ref::<tokio_postgres::Error>()?
        .as_db_error()?;
    Some((
        db.severity().to_owned(),
        db.code().code().to_owned(),
        db.message().to_owned(),
    ))
}

fn proxy_error(message: &str) -> Option<(String, String, String)> {
    Some(("ERROR".into(), "XX000".into(), message.to_owned()))
}

/// A pool reaching the emulator by IP address, so without SNI (the certificate does not name
/// the address, so it is not checked: these tests are about routing).
fn by_address(
    lakebase: &LocalLakebase,
    options: Option<&str>,
    password: &str,
    mode: SslMode,
) -> PoolBuilder {
    let mut config = tokio_postgres::Config::new();
    let _ = config
        .host("127.0.0.1")
        .port(lakebase.emulator().port())
        .user(LocalLakebase::USER)
        .dbname("databricks_postgres");
    if let Some(options) = options {
        let _ = config.options(options);
    }
    let builder = PoolBuilder::default()
        .pg_config(config)
        .password(password)
        .ssl_mode(mode)
        .retry(RetryPolicy::default());
    if mode == SslMode::Disable {
        builder
    } else {
        builder.dangerous().accept_invalid_certificates()
    }
}

/// Through the emulator answering as the proxy does: the pool's token is revoked behind its
/// back (the role's password changed), the proxy refuses the next login with `XX000`
/// "password authentication failed for user '...'", and the pool mints exactly one fresh
/// token and connects. (Keyed on `28P01` only, it used to fail without minting.)
#[tokio::test]
async fn a_token_the_proxy_refuses_is_replaced_by_exactly_one_fresh_mint() {
    let lakebase = lakebase().await;
    let pool = lakebase.pool_builder().unwrap().build().unwrap();
    let first = pool.get().await.unwrap();
    assert_eq!(lakebase.workspace().minted().len(), 1);

    lakebase.workspace().revoke_minted();
    let second = pool.get().await.expect("connects with a fresh token");
    let _ = second.simple_query("SELECT 1").await.unwrap();
    assert_eq!(lakebase.workspace().minted().len(), 2, "exactly one more");
    assert_eq!(pool.stats().auth_refreshes, 1);
    assert_eq!(pool.stats().connect_attempts_failed, 1);
    // The session opened with the revoked token goes on, as at Lakebase.
    let _ = first.simple_query("SELECT 1").await.unwrap();
}

/// Every token refused (the pool logs in as a role the tokens are not minted for): one fresh
/// mint, then `AuthRejected` naming the user and saying the token was refused; no loop.
#[tokio::test]
async fn a_second_refusal_fails_clearly_after_one_fresh_mint() {
    let lakebase = lakebase().await;
    let pool = lakebase
        .pool_builder()
        .unwrap()
        .user("someone-else@example.com")
        .build()
        .unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "no retry loop");
    let Error::AuthRejected { user, .. } = &err else {
        panic!("expected AuthRejected, got {err:?}");
    };
    assert_eq!(user, "someone-else@example.com");
    let text = err.to_string();
    assert!(
        text.contains("refused the login as `someone-else@example.com`")
            && text.contains("the token was rejected, and a freshly minted one too"),
        "{text}"
    );
    assert_eq!(
        answer(&err),
        proxy_error("password authentication failed for user 'someone-else@example.com'")
    );
    assert_eq!(lakebase.workspace().minted().len(), 2, "one fresh mint");
    assert_eq!(pool.stats().connect_attempts_failed, 2);
}

/// Each of the proxy's configuration errors fails at once (one attempt, no backoff, although
/// the policy allows retries), with the proxy's severity, SQLSTATE and text, and with a
/// message saying what to change.
#[tokio::test]
async fn each_fatal_proxy_text_fails_at_once_saying_what_to_fix() {
    let lakebase = lakebase().await;
    let token = mint(&lakebase).await;
    let sni_and_option = {
        let mut config = tokio_postgres::Config::new();
        let _ = config
            .host(lakebase.emulator().host_of(LocalLakebase::ENDPOINT))
            .port(lakebase.emulator().port())
            .user(LocalLakebase::USER)
            .dbname("databricks_postgres")
            .options("endpoint=ep-other");
        PoolBuilder::default()
            .pg_config(config)
            .password(token.as_str())
            .resolver(lakebase.emulator().resolver())
            .root_certificates_pem(lakebase.emulator().ca_cert_pem())
    };
    let cases: Vec<(&str, PoolBuilder, String, &str)> = vec![
        (
            "no SNI and no option",
            by_address(&lakebase, None, &token, SslMode::Require),
            String::from(
                "Endpoint ID is not specified. Either please upgrade the postgres client library \
                 (libpq) for SNI support or pass the endpoint ID (first part of the domain name) \
                 as a parameter: '?options=endpoint%3D<endpoint-id>'. See more at \
                 https://neon.tech/sni",
            ),
            "SNI",
        ),
        (
            "SNI and option disagree",
            sni_and_option,
            format!(
                "Inconsistent project name inferred from SNI ('{ID}') and project option \
                 ('ep-other')."
            ),
            "drop the option",
        ),
        (
            "a malformed id",
            by_address(
                &lakebase,
                Some("endpoint=ep_test!"),
                &token,
                SslMode::Require,
            ),
            String::from(
                "Project name ('ep_test!') must contain only alphanumeric characters and hyphen.",
            ),
            "malformed",
        ),
        (
            "plain text",
            by_address(
                &lakebase,
                Some("endpoint=ep-local"),
                &token,
                SslMode::Disable,
            ),
            String::from("connection is insecure (try using `sslmode=require`)"),
            "TLS only",
        ),
    ];
    for (case, builder, text, fix) in cases {
        let pool = builder.build().unwrap();
        let started = Instant::now();
        let err = pool.get().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{case}: not retried"
        );
        assert_eq!(
            pool.stats().connect_attempts_failed,
            1,
            "{case}: one attempt"
        );
        assert!(
            matches!(err, Error::Connect { fix: Some(_), .. }),
            "{case}: {err:?}"
        );
        assert_eq!(answer(&err), proxy_error(&text), "{case}");
        assert!(err.to_string().contains(fix), "{case}: {err}");
    }
    assert_eq!(lakebase.emulator().sessions(LocalLakebase::ENDPOINT), 0);
}

/// Clients without SNI can name the endpoint in the password field, as at the proxy.
#[tokio::test]
async fn the_endpoint_may_come_in_the_password_field() {
    let lakebase = lakebase().await;
    let token = mint(&lakebase).await;
    let pool = by_address(
        &lakebase,
        None,
        &format!("endpoint={ID};{token}"),
        SslMode::Require,
    )
    .build()
    .unwrap();
    let conn = pool.get().await.unwrap();
    let _ = conn.simple_query("SELECT 1").await.unwrap();
    assert_eq!(lakebase.emulator().sessions(LocalLakebase::ENDPOINT), 1);

    // The same field naming another endpoint than the option does is refused.
    let pool = by_address(
        &lakebase,
        Some("endpoint=ep-local"),
        &format!("endpoint=ep-other;{token}"),
        SslMode::Require,
    )
    .build()
    .unwrap();
    let err = pool.get().await.unwrap_err();
    assert_eq!(
        answer(&err),
        proxy_error(
            "Inconsistent project name inferred from SNI ('ep-local') and project option \
             ('ep-other')."
        )
    );
}

/// The emulator's answers on the wire, read by a raw client: without SNI it first asks for a
/// cleartext password (`AuthenticationCleartextPassword`), and only then refuses, with
/// severity `ERROR` and `XX000`, as the proxy does. A disabled endpoint and a plain-text
/// start-up get the proxy's texts too.
#[tokio::test]
async fn without_sni_the_password_is_asked_for_before_the_refusal() {
    let lakebase = lakebase().await;
    let mut client = tls_without_sni(lakebase.emulator().port()).await;
    client
        .write_all(&crate::support::startup_packet(&[
            ("user", LocalLakebase::USER),
            ("database", "databricks_postgres"),
        ]))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let (kind, body) = read_message(&mut client).await;
    assert_eq!(
        (kind, body),
        (b'R', 3_i32.to_be_bytes().to_vec()),
        "cleartext"
    );
    let mut password = vec![b'p'];
    password.extend_from_slice(&(4 + 3_i32).to_be_bytes());
    password.extend_from_slice(b"pw\0");
    client.write_all(&password).await.unwrap();
    client.flush().await.unwrap();
    let (kind, body) = read_message(&mut client).await;
    assert_eq!(kind, b'E');
    let fields = error_fields(&body);
    assert_eq!(fields.get(&b'S').map(String::as_str), Some("ERROR"));
    assert_eq!(fields.get(&b'C').map(String::as_str), Some("XX000"));
    assert!(
        fields[&b'M'].starts_with("Endpoint ID is not specified."),
        "{fields:?}"
    );

    // Disabled: the proxy's text from its control plane.
    lakebase
        .emulator()
        .set_disabled(LocalLakebase::ENDPOINT, true);
    let err = lakebase
        .pool_builder()
        .unwrap()
        .build()
        .unwrap()
        .get()
        .await
        .unwrap_err();
    assert_eq!(
        answer(&err),
        proxy_error("Control plane request failed: endpoint is disabled")
    );

    // Plain text, read raw: the whole start-up is answered with the proxy's refusal.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", lakebase.emulator().port()))
        .await
        .unwrap();
    tcp.write_all(&crate::support::startup_packet(&[(
        "user",
        LocalLakebase::USER,
    )]))
    .await
    .unwrap();
    let (kind, body) = read_message(&mut tcp).await;
    assert_eq!(kind, b'E');
    let fields = error_fields(&body);
    assert_eq!(fields.get(&b'S').map(String::as_str), Some("ERROR"));
    assert_eq!(fields.get(&b'C').map(String::as_str), Some("XX000"));
    assert_eq!(
        fields.get(&b'M').map(String::as_str),
        Some("connection is insecure (try using `sslmode=require`)")
    );
}

/// One typed message: its type and body, within 5 s.
async fn read_message<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (u8, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(5), async {
        let kind = stream.read_u8().await.unwrap();
        let length = stream.read_i32().await.unwrap();
        let mut body = vec![0; length as usize - 4];
        let _ = stream.read_exact(&mut body).await.unwrap();
        (kind, body)
    })
    .await
    .expect("the emulator answers within 5 s")
}

fn error_fields(body: &[u8]) -> std::collections::HashMap<u8, String> {
    body.split(|b| *b == 0)
        .filter(|field| !field.is_empty())
        .map(|field| (field[0], String::from_utf8_lossy(&field[1..]).into_owned()))
        .collect()
}

/// TCP to the emulator, `SSLRequest`, then TLS without SNI (an IP address as the server
/// name), accepting the certificate, which does not name the address.
async fn tls_without_sni(port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let provider = lakebase_pool_testing::crypto_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Accepts any certificate (with valid signatures): these tests are about the protocol.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
