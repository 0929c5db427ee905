//! The Axum and Actix example services over real HTTP, against the Lakebase emulator: the
//! happy path, a compute suspended between requests, and the database down past the retry
//! deadline (503 with `Retry-After`, and no secret in the body).

use std::net::SocketAddr;
use std::time::Duration;

use lakebase_pool::{Pool, RetryPolicy};
use lakebase_pool_testing::{LocalLakebase, StopMode};

#[allow(dead_code)]
#[path = "../../examples/actix_app.rs"]
mod actix_app;
#[allow(dead_code)]
#[path = "../../examples/axum_app.rs"]
mod axum_app;

/// What both example services return for a todo (the two define the same type).
use axum_app::Todo;

async fn local_lakebase_pool() -> (LocalLakebase, Pool) {
    let lakebase = LocalLakebase::start()
        .await
        .expect("start the local Lakebase");
    let pool = lakebase
        .pool_builder()
        .unwrap()
        // Short, so that "down past the deadline" takes 2 s, not 30.
        .retry(RetryPolicy::default().deadline(Duration::from_secs(2)))
        .build()
        .unwrap();
    (lakebase, pool)
}

/// The scenario both frameworks must pass, against the service at `addr`.
async fn exercise(addr: SocketAddr, lakebase: &LocalLakebase) {
    let http = crate::support::http_client();
    let url = |path: &str| format!("http://{addr}{path}");

    // Happy path: create, list, get, and a 404.
    let created = http
        .post(url("/todos"))
        .header("content-type", "application/json")
        .body(r#"{"title":"write docs"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let todo: Todo = serde_json::from_str(&created.text().await.unwrap()).unwrap();
    assert_eq!(todo.title, "write docs");
    assert!(!todo.done);
    let listed = http.get(url("/todos")).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    let todos: Vec<Todo> = serde_json::from_str(&listed.text().await.unwrap()).unwrap();
    assert_eq!(todos, [Todo { ..todo }]);
    let fetched = http
        .get(url(&format!("/todos/{}", todos[0].id)))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(
        http.get(url("/todos/999999"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Scale-to-zero between two requests: the next request wakes the compute and succeeds.
    // (The pause lets the pooled connection see its session end, as it would have long
    // before a real suspend, which follows minutes of idleness.)
    lakebase.suspend();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_suspend = http.get(url("/todos")).send().await.unwrap();
    assert_eq!(after_suspend.status(), 200);
    let todos: Vec<Todo> = serde_json::from_str(&after_suspend.text().await.unwrap()).unwrap();
    assert_eq!(todos.len(), 1);

    // The database down for longer than the retry deadline: 503, Retry-After, no secrets.
    lakebase.postgres().stop(StopMode::Fast).unwrap();
    let down = http.get(url("/todos")).send().await.unwrap();
    assert_eq!(down.status(), 503);
    assert_eq!(
        down.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let body = down.text().await.unwrap();
    assert_eq!(
        body,
        "the database is temporarily unavailable; retry shortly"
    );
    let minted = lakebase.workspace().minted();
    assert!(!minted.is_empty());
    for token in &minted {
        assert!(!body.contains(token.token.expose()));
    }
    assert!(!body.contains(LocalLakebase::PAT));

    // And back: the same pool serves requests again once the server is up.
    lakebase.postgres().resume().unwrap();
    let recovered = http.get(url("/todos")).send().await.unwrap();
    assert_eq!(recovered.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_service_survives_suspend_and_reports_an_outage_as_503() {
    let (lakebase, pool) = local_lakebase_pool().await;
    axum_app::migrate(&pool).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum::serve(listener, axum_app::router(pool.clone())).into_future());

    exercise(addr, &lakebase).await;

    server.abort();
    let _ = pool.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_service_survives_suspend_and_reports_an_outage_as_503() {
    let (lakebase, pool) = local_lakebase_pool().await;
    actix_app::migrate(&pool).await.unwrap();
    let (started, server) = std::sync::mpsc::channel();
    let served = pool.clone();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = actix_web::web::Data::new(served);
            let server = actix_web::HttpServer::new(move || {
                actix_web::App::new()
                    .app_data(data.clone())
                    .configure(actix_app::routes)
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

    exercise(addr, &lakebase).await;

    handle.stop(true).await;
    thread.join().unwrap().unwrap();
    let _ = pool.shutdown(Duration::from_secs(5)).await;
}
