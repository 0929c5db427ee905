//! The test servers users run in their own suites: none of them may hang, spin or grow
//! without bound, whatever a client does. (A hang there is a hang in users' CI.)

use std::time::{Duration, Instant};

use lakebase_pool::databricks::{CredentialRequest, Workspace};
use lakebase_pool::{EndpointName, Error};
use lakebase_pool_testing::{LocalLakebase, MockWorkspace};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{app_pool, cluster, raw_tls_client, startup_packet};

/// A client that logs in, asks for a large result and stops reading: when the compute is
/// suspended, its session still ends (the relay's writes, the suspend notice and the TLS
/// close are all bounded), freeing its slot.
#[tokio::test]
async fn a_client_that_stops_reading_loses_its_session_when_the_compute_suspends() {
    let lakebase = LocalLakebase::start().await.unwrap();
    let workspace = Workspace::builder()
        .host(lakebase.workspace().url())
        .token(LocalLakebase::PAT)
        .build()
        .unwrap();
    let endpoint: EndpointName = LocalLakebase::ENDPOINT.parse().unwrap();
    let token = workspace
        .generate_database_credential(&endpoint, &CredentialRequest::default())
        .await
        .unwrap();
    let mut client = raw_tls_client(&lakebase).await;
    let packet = startup_packet(&[
        ("user", LocalLakebase::USER),
        ("database", "databricks_postgres"),
    ]);
    client.write_all(&packet).await.unwrap();
    client.flush().await.unwrap();
    // The emulator asks for a cleartext password (R, length 8, code 3).
    let mut ask = [0u8; 9];
    client.read_exact(&mut ask).await.unwrap();
    assert_eq!(ask[0], b'R');
    let mut password = vec![b'p'];
    let secret = token.token().expose().as_bytes();
    password.extend_from_slice(&(secret.len() as i32 + 5).to_be_bytes());
    password.extend_from_slice(secret);
    password.push(0);
    client.write_all(&password).await.unwrap();
    // Read up to ReadyForQuery.
    let mut seen = Vec::new();
    while !seen.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before ready: {seen:?}");
        seen.extend_from_slice(&chunk[..n]);
    }
    let query = b"SELECT repeat('x', 1000000) FROM generate_series(1, 300)\0";
    let mut message = vec![b'Q'];
    message.extend_from_slice(&(query.len() as i32 + 4).to_be_bytes());
    message.extend_from_slice(query);
    client.write_all(&message).await.unwrap();
    client.flush().await.unwrap();
    // Never read again: the relay's writes fill the buffers and wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(lakebase.emulator().sessions(LocalLakebase::ENDPOINT), 1);

    lakebase.suspend();
    let until = Instant::now() + Duration::from_secs(10);
    while lakebase.emulator().sessions(LocalLakebase::ENDPOINT) > 0 {
        assert!(Instant::now() < until, "the session outlived the suspend");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
}

/// The mock workspace remembers the newest 10,000 requests (with at most 64 KiB of each
/// body) and minted tokens: a long soak does not grow it without bound, and it keeps
/// answering.
#[tokio::test]
async fn the_mock_workspaces_records_are_bounded() {
    let mock = MockWorkspace::start().unwrap();
    mock.add_pat("dapi-soak", "soak@example.com");
    mock.add_endpoint("projects/p/branches/b/endpoints/e", "e.db.test");
    let workspace = Workspace::builder()
        .host(mock.url())
        .token("dapi-soak")
        .build()
        .unwrap();
    let endpoint: EndpointName = "projects/p/branches/b/endpoints/e".parse().unwrap();
    let client = crate::support::http_client();
    // One body of 1 MiB (refused by the API, but read and recorded).
    let big = "x".repeat(1024 * 1024 - 16);
    let _ = client
        .post(format!("{}/api/2.0/postgres/credentials", mock.url()))
        .bearer_auth("dapi-soak")
        .body(big)
        .send()
        .await
        .unwrap();
    // 10,050 mints, 50 at a time.
    for _ in 0..201 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (workspace, endpoint) = (workspace.clone(), endpoint.clone());
            let _ = batch.spawn(async move {
                workspace
                    .generate_database_credential(&endpoint, &CredentialRequest::default())
                    .await
                    .map(drop)
            });
        }
        while let Some(minted) = batch.join_next().await {
            minted.unwrap().unwrap();
        }
    }
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 10_000);
    assert!(
        recorded
            .iter()
            .all(|r| r.body.as_ref().is_none_or(|b| b.len() <= 64 * 1024))
    );
    assert_eq!(mock.minted().len(), 10_000);
    // The newest token still logs in as the mock knows it; the mock still answers.
    assert!(
        workspace
            .generate_database_credential(&endpoint, &CredentialRequest::default())
            .await
            .is_ok()
    );
}

/// `Pool::listener()` on a closed pool fails with `PoolClosed` and opens no session.
#[tokio::test]
async fn a_closed_pool_opens_no_listener_session() {
    let pg = cluster().await;
    let pool = app_pool(&pg).build().unwrap();
    drop(pool.get().await.unwrap());
    pool.close();
    let err = pool.listener(["jobs"]).await.unwrap_err();
    assert!(matches!(err, Error::PoolClosed), "{err:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sessions: i64 = pg
        .admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 0);
}
