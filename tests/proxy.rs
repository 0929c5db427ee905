//! Workspace calls and forward proxies. Its own test binary, because the process environment
//! is changed (reqwest used to read `HTTP_PROXY` from it behind the crate's back), and a
//! single test, so that nothing reads the environment while it is changed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lakebase_pool::databricks::{CredentialRequest, Workspace, WorkspaceBuilder};
use lakebase_pool::{EndpointName, Environment};
use lakebase_pool_testing::MockWorkspace;

const ENDPOINT: &str = "projects/shop/branches/production/endpoints/ep-primary";
const PAT: &str = "dapi-proxy-test-token";
const CLIENT_ID: &str = "proxy-test-client";
const CLIENT_SECRET: &str = "proxy-test-client-secret";

/// A forward proxy that records the head of every request it is sent and refuses it.
struct RecordingProxy {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RecordingProxy {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&heads);
        // Ends with the test binary; it only ever answers loopback connections.
        drop(std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut head = vec![0; 16 * 1024];
                let read = stream.read(&mut head).unwrap_or(0);
                recorded
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head[..read]).into_owned());
                let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
            }
        }));
        RecordingProxy { url, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn endpoint() -> EndpointName {
    ENDPOINT.parse().unwrap()
}

#[test]
fn workspace_credentials_never_reach_a_proxy_in_clear_and_https_proxy_tunnels() {
    let proxy = RecordingProxy::start();
    // The variables that send plain-http calls to a proxy, set before any thread could read
    // them. (The https ones are given through `Environment` below.)
    for var in ["HTTP_PROXY", "http_proxy"] {
        // SAFETY: the only test of this binary, and no other thread exists yet but the
        // proxy's, which reads no environment.
        unsafe { std::env::set_var(var, &proxy.url) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mock = MockWorkspace::start().unwrap();
        mock.add_pat(PAT, "someone@example.com");
        mock.add_service_principal(CLIENT_ID, CLIENT_SECRET);
        mock.add_endpoint(ENDPOINT, "127.0.0.1");

        // 1. An http:// loopback workspace, with HTTP_PROXY in the process environment (and
        //    ALL_PROXY in the crate's): PAT and OAuth M2M both go straight to the workspace.
        let with_pat = Workspace::builder()
            .host(mock.url())
            .token(PAT)
            .build()
            .unwrap();
        let with_oauth = WorkspaceBuilder::from_environment(&Environment::from_vars([(
            "ALL_PROXY",
            proxy.url.as_str(),
        )]))
        .unwrap()
        .host(mock.url())
        .client_credentials(CLIENT_ID, CLIENT_SECRET)
        .build()
        .unwrap();
        for workspace in [&with_pat, &with_oauth] {
            let _ = workspace
                .generate_database_credential(&endpoint(), &CredentialRequest::default())
                .await
                .expect("minted without the proxy");
        }
        assert_eq!(mock.minted().len(), 2);
        assert_eq!(
            proxy.heads(),
            Vec::<String>::new(),
            "the proxy was sent a plain-http workspace call"
        );

        // 2. An https workspace behind HTTPS_PROXY: a CONNECT tunnel, so the proxy learns the
        //    host and port and nothing else (TLS runs inside the tunnel).
        let remote = |extra: &[(&str, &str)]| {
            let mut vars = vec![
                ("DATABRICKS_HOST", "https://workspace.example.test"),
                ("DATABRICKS_TOKEN", PAT),
                ("HTTPS_PROXY", proxy.url.as_str()),
            ];
            vars.extend_from_slice(extra);
            WorkspaceBuilder::from_environment(&Environment::from_vars(vars))
                .unwrap()
                .request_timeout(Duration::from_secs(2))
                .retry_budget(Duration::from_secs(1))
                .build()
                .unwrap()
        };
        let err = remote(&[])
            .generate_database_credential(&endpoint(), &CredentialRequest::default())
            .await
            .expect_err("the proxy refuses every tunnel");
        assert!(!format!("{err:?}").contains(PAT), "{err:?}");
        let heads = proxy.heads();
        assert!(!heads.is_empty(), "HTTPS_PROXY was not used");
        for head in &heads {
            assert!(
                head.starts_with("CONNECT workspace.example.test:443 "),
                "not a tunnel: {head:?}"
            );
            assert!(!head.contains(PAT), "the PAT reached the proxy: {head:?}");
            assert!(
                !head.to_ascii_lowercase().contains("authorization"),
                "{head:?}"
            );
        }

        // 3. NO_PROXY and loopback hosts bypass the proxy.
        let before = proxy.heads().len();
        let _ = remote(&[("NO_PROXY", ".example.test")])
            .generate_database_credential(&endpoint(), &CredentialRequest::default())
            .await;
        let loopback = WorkspaceBuilder::from_environment(&Environment::from_vars([(
            "HTTPS_PROXY",
            proxy.url.as_str(),
        )]))
        .unwrap()
        .host("https://127.0.0.1:1")
        .token(PAT)
        .retry_budget(Duration::from_secs(1))
        .build()
        .unwrap();
        let _ = loopback
            .generate_database_credential(&endpoint(), &CredentialRequest::default())
            .await;
        assert_eq!(proxy.heads().len(), before, "{:?}", proxy.heads());

        // 4. A malformed proxy setting is a typed error, when the environment is read, that does
        // not echo the value.
        let err = WorkspaceBuilder::from_environment(&Environment::from_vars([(
            "HTTPS_PROXY",
            "http://user:proxy-pass@[bad",
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("HTTPS_PROXY"), "{err}");
        assert!(!err.to_string().contains("proxy-pass"), "{err}");
    });
}
