//! A handler behind a request timeout that fires mid-query, over real HTTP: the timeout
//! response goes out, and the next request on the same one-connection pool is served at
//! once (the abandoned statement is cancelled and its connection replaced).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lakebase_pool::integrations::HttpError;
use lakebase_pool::{Connection, Pool};

use crate::support::{app_pool, cluster, http_client};

async fn slow(conn: Connection) -> Result<String, HttpError> {
    let _ = conn.query("SELECT pg_sleep(5)", &[]).await?;
    Ok(String::from("done"))
}

async fn fast(conn: Connection) -> Result<String, HttpError> {
    let one: i32 = conn.query_one("SELECT 1", &[]).await?.get(0);
    Ok(one.to_string())
}

/// `/slow` times out (the server answers `timed_out`), then `/fast` is served within a
/// second; the sleep no longer runs on the server.
async fn exercise(addr: SocketAddr, timed_out: u16, pg: &lakebase_pool_testing::LocalPostgres) {
    let client = http_client();
    let started = Instant::now();
    let answer = client
        .get(format!("http://{addr}/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), timed_out);
    assert!(started.elapsed() < Duration::from_secs(2));
    let started = Instant::now();
    let answer = client
        .get(format!("http://{addr}/fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(answer.text().await.unwrap(), "1");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the next request waited {:?}",
        started.elapsed()
    );
    let admin = pg.admin().await.unwrap();
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let running: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)' \
                 AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if running == 0 {
            break;
        }
        assert!(Instant::now() < until, "the abandoned statement still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_a_request_timeout_mid_query_cancels_it_and_the_next_request_is_served() {
    use axum::Router;
    use axum::routing::get;
    use tower_http::timeout::TimeoutLayer;

    let pg = cluster().await;
    let pool: Pool = app_pool(&pg).max_size(1).build().unwrap();
    let router = Router::new()
        .route("/slow", get(slow))
        .route("/fast", get(fast))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(300),
        ))
        .with_state(pool.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, router).into_future());
    exercise(addr, 408, &pg).await;
    assert_eq!(pool.stats().closed_abandoned, 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_a_request_timeout_mid_query_cancels_it_and_the_next_request_is_served() {
    use actix_web::dev::Service;

    let pg = cluster().await;
    let pool: Pool = app_pool(&pg).max_size(1).build().unwrap();
    let (started, server) = std::sync::mpsc::channel();
    let served = pool.clone();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = actix_web::web::Data::new(served);
            let server = actix_web::HttpServer::new(move || {
                actix_web::App::new()
                    .app_data(data.clone())
                    // A request timeout: the handler's future is dropped when it fires.
                    .wrap_fn(|request, service| {
                        let call = service.call(request);
                        async move {
                            match tokio::time::timeout(Duration::from_millis(300), call).await {
                                Ok(answer) => answer,
                                Err(_) => Err(actix_web::error::ErrorServiceUnavailable(
                                    "request timed out",
                                )),
                            }
                        }
                    })
                    .route("/slow", actix_web::web::get().to(slow))
                    .route("/fast", actix_web::web::get().to(fast))
            })
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))?;
            let addr = server.addrs()[0];
            let server = server.run();
            let _ = started.send((addr, server.handle()));
            server.await
        })
    });
    let (addr, handle) = server.recv_timeout(Duration::from_secs(30)).unwrap();
    exercise(addr, 503, &pg).await;
    assert_eq!(pool.stats().closed_abandoned, 1);
    handle.stop(true).await;
    thread.join().unwrap().unwrap();
}
