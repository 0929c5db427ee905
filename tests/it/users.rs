//! Connections on behalf of signed-in users (`UserPools`): row-level security per user over
//! real HTTP through the extractors, refusals as 401/403 with no login, the trust opt-in, a
//! refreshed user token, and 1,000 users against the bounds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lakebase_pool::integrations::UserConnection;
use lakebase_pool::users::{ForwardedHeaders, ForwardedUser, UserPools, UserPoolsBuilder};
use lakebase_pool::{Environment, Error, PoolBuilder, Secret, UserProblem};
use lakebase_pool_testing::{LocalLakebase, apps_proxy_headers};

#[allow(dead_code)]
#[path = "../../examples/apps_users.rs"]
mod apps_users;

pub const ALICE: &str = "alice@example.com";
pub const BOB: &str = "bob@example.com";
/// The app's service principal: its OAuth client id is its Postgres role.
pub const APP: &str = "notes-app-principal";
pub const APP_SECRET: &str = "notes-app-client-secret";

/// A local Lakebase with the app's service principal (which may create tables) and the
/// app's pool builder authenticating as it with OAuth M2M, as a deployed app does.
pub async fn apps_stack() -> (LocalLakebase, PoolBuilder) {
    let lakebase = LocalLakebase::start().await.unwrap();
    lakebase
        .add_service_principal(APP, APP_SECRET)
        .await
        .unwrap();
    lakebase
        .postgres()
        .admin_of("databricks_postgres")
        .await
        .unwrap()
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO \"{APP}\""))
        .await
        .unwrap();
    let builder = app_builder(&lakebase);
    (lakebase, builder)
}

/// The app's pool settings, as the service principal.
pub fn app_builder(lakebase: &LocalLakebase) -> PoolBuilder {
    crate::support::service_principal_pool(lakebase, APP, APP_SECRET)
}

fn trusted(builder: PoolBuilder) -> UserPoolsBuilder {
    UserPools::builder(builder).forwarded_headers(ForwardedHeaders::Trusted)
}

async fn serve(users: UserPools) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, apps_users::router(users)).await;
    });
    (addr, server)
}

/// `GET path` with these headers: the status and the body.
async fn get(addr: SocketAddr, path: &str, headers: reqwest::header::HeaderMap) -> (u16, String) {
    let answer = crate::support::http_client()
        .get(format!("http://{addr}{path}"))
        .headers(headers)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// Sessions open on the server for each of `roles`, summed.
async fn sessions_of(lakebase: &LocalLakebase, roles: &[&str]) -> i64 {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    lakebase
        .postgres()
        .admin()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = ANY($1)",
            &[&roles],
        )
        .await
        .unwrap()
        .get(0)
}

/// Database credentials the mock minted for `identity`.
fn mints_for(lakebase: &LocalLakebase, identity: &str) -> usize {
    lakebase
        .workspace()
        .minted()
        .iter()
        .filter(|m| m.identity == identity)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_reads_only_their_own_rows_over_http() {
    let (lakebase, builder) = apps_stack().await;
    let tokens = lakebase.add_users(&[ALICE, BOB]).await.unwrap();
    let users = trusted(builder).build().unwrap();
    apps_users::migrate(users.app_pool()).await.unwrap();
    let (addr, server) = serve(users.clone()).await;
    let alice = apps_proxy_headers(&ForwardedUser::new(ALICE, tokens[0].clone()));
    let bob = apps_proxy_headers(&ForwardedUser::new(BOB, tokens[1].clone()));

    let http = crate::support::http_client();
    for (headers, note) in [(&alice, "a1"), (&alice, "a2"), (&bob, "b1")] {
        let answer = http
            .post(format!("http://{addr}/notes"))
            .headers(headers.clone())
            .body(note)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
    }
    assert_eq!(
        get(addr, "/notes", alice.clone()).await,
        (200, String::from(r#"["a1","a2"]"#))
    );
    assert_eq!(
        get(addr, "/notes", bob.clone()).await,
        (200, String::from(r#"["b1"]"#))
    );
    assert_eq!(get(addr, "/me", bob).await, (200, String::from(BOB)));
    // The app's route on its service principal, which owns the table: every row.
    assert_eq!(
        get(addr, "/stats", Default::default()).await,
        (200, String::from("3"))
    );

    // Each identity minted its own credentials, once, and logged in as itself.
    assert_eq!(mints_for(&lakebase, ALICE), 1);
    assert_eq!(mints_for(&lakebase, BOB), 1);
    assert_eq!(mints_for(&lakebase, APP), 1);
    assert!(sessions_of(&lakebase, &[ALICE]).await >= 1);
    let stats = users.stats();
    assert_eq!((stats.users, stats.created, stats.refused), (2, 2, 0));
    assert_eq!(
        stats.token_checks, 2,
        "one check per user token, then remembered"
    );
    assert_eq!(stats.mints, 2);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_users_get_401_or_403_and_never_a_login() {
    let (lakebase, builder) = apps_stack().await;
    let tokens = lakebase.add_users(&[ALICE, BOB]).await.unwrap();
    let users = trusted(builder).build().unwrap();
    apps_users::migrate(users.app_pool()).await.unwrap();
    let (addr, server) = serve(users.clone()).await;
    let mock = lakebase.workspace();
    let as_alice = |token: Secret| apps_proxy_headers(&ForwardedUser::new(ALICE, token));
    let credential_calls = || mock.count("POST", "/api/2.0/postgres/credentials");
    let before = credential_calls();

    // No headers, an expired token, a forged one, Bob's token under Alice's email, and only
    // the email (an app without user authorization forwards no token): 401, no mint.
    let mut email_only = reqwest::header::HeaderMap::new();
    let _ = email_only.insert("x-forwarded-email", ALICE.parse().unwrap());
    for (case, headers) in [
        ("no headers", Default::default()),
        ("expired", as_alice(mock.issue_expired_user_token(ALICE))),
        ("forged", as_alice(Secret::new("dapi-forged-token"))),
        ("someone else's", as_alice(tokens[1].clone())),
        ("email only", email_only),
    ] {
        let (status, body) = get(addr, "/notes", headers).await;
        assert_eq!((status, body.as_str()), (401, "sign-in required"), "{case}");
    }
    assert_eq!(credential_calls(), before, "no credential was minted");

    // A token without the database scope: the mint is refused (403), once, not retried.
    let unscoped = as_alice(mock.issue_user_token_without_database_scope(ALICE));
    assert_eq!(get(addr, "/notes", unscoped.clone()).await.0, 403);
    assert_eq!(credential_calls(), before + 1);
    assert_eq!(get(addr, "/notes", unscoped).await.0, 403);
    assert_eq!(
        credential_calls(),
        before + 1,
        "a refused mint is not retried"
    );
    assert_eq!(
        sessions_of(&lakebase, &[ALICE]).await,
        0,
        "no login as Alice"
    );

    // A user the workspace knows but who has no Postgres role: the login is refused (with
    // one fresh mint, as for any rejected login), and answered 401.
    let carol = "carol@example.com";
    let carol_token = mock.issue_user_token(carol);
    let (status, _) = get(
        addr,
        "/notes",
        apps_proxy_headers(&ForwardedUser::new(carol, carol_token)),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(mints_for(&lakebase, carol), 2);

    // Alice with her real token is served, after all that.
    assert_eq!(
        get(addr, "/notes", as_alice(tokens[0].clone())).await.0,
        200
    );
    let stats = users.stats();
    assert_eq!(stats.refused, 8, "{stats:?}");
    assert_eq!(
        mints_for(&lakebase, APP),
        1,
        "never the app's identity for a user"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_ignored_unless_trusted() {
    let (lakebase, builder) = apps_stack().await;
    let tokens = lakebase.add_users(&[ALICE]).await.unwrap();
    let alice = apps_proxy_headers(&ForwardedUser::new(ALICE, tokens[0].clone()));

    // Outside Databricks Apps (no DATABRICKS_APP_NAME), the default ignores them: 401.
    let outside = UserPools::builder(builder).build().unwrap();
    assert!(!outside.trusts_forwarded_headers());
    apps_users::migrate(outside.app_pool()).await.unwrap();
    let (addr, server) = serve(outside.clone()).await;
    assert_eq!(get(addr, "/me", alice.clone()).await.0, 401);
    assert_eq!(mints_for(&lakebase, ALICE), 0);
    assert_eq!(
        outside.stats().token_checks,
        0,
        "the token was never even looked at"
    );
    server.abort();

    // Inside Databricks Apps (the app's builder read DATABRICKS_APP_NAME from its
    // environment), the default trusts them.
    let in_apps = [("DATABRICKS_APP_NAME", "notes")];
    let in_apps = crate::support::service_principal_pool_with(&lakebase, APP, APP_SECRET, &in_apps);
    let inside = UserPools::builder(in_apps).build().unwrap();
    assert!(inside.trusts_forwarded_headers());
    // A name of blanks is no Databricks App.
    let blank = PoolBuilder::from_environment(&Environment::from_vars([
        ("PGHOST", "127.0.0.1"),
        ("PGPASSWORD", "p"),
        ("DATABRICKS_APP_NAME", "  "),
    ]))
    .unwrap();
    let blank = UserPools::builder(
        blank.lakebase_endpoint(LocalLakebase::ENDPOINT).workspace(
            lakebase_pool::databricks::Workspace::builder()
                .host(lakebase.workspace().url())
                .token(LocalLakebase::PAT)
                .build()
                .unwrap(),
        ),
    );
    assert!(!blank.build().unwrap().trusts_forwarded_headers());

    // Explicitly ignored, with the fallback to the app asked for: served as the app.
    let fallback = UserPools::builder(app_builder(&lakebase))
        .forwarded_headers(ForwardedHeaders::Ignored)
        .fall_back_to_app(true)
        .build()
        .unwrap();
    let (addr, server) = serve(fallback).await;
    assert_eq!(get(addr, "/me", alice).await, (200, String::from(APP)));
    server.abort();
}

/// `UserPools::retire_all`: a user's session from before the call serves no one after it.
#[tokio::test]
async fn retire_all_replaces_each_users_session() {
    let (lakebase, builder) = apps_stack().await;
    let token = lakebase.add_users(&[ALICE]).await.unwrap().remove(0);
    let users = trusted(builder).build().unwrap();
    let alice = ForwardedUser::new(ALICE, token);
    let conn = users.for_user(&alice).await.unwrap();
    let before = crate::support::backend_pid(&conn).await;
    drop(conn);
    users.retire_all();
    let conn = users.for_user(&alice).await.unwrap();
    assert_ne!(
        crate::support::backend_pid(&conn).await,
        before,
        "a new session"
    );
}

#[tokio::test]
async fn the_newest_user_token_mints_and_a_replaced_one_is_checked_again() {
    let (lakebase, builder) = apps_stack().await;
    let first = lakebase.add_users(&[ALICE]).await.unwrap().remove(0);
    let users = trusted(builder).build().unwrap();
    let conn = users
        .for_user(&ForwardedUser::new(ALICE, first.clone()))
        .await
        .unwrap();
    drop(conn);

    // The proxy moves to a new token, and the old one is revoked; the database credential
    // is revoked too and Alice's session ends, so the next checkout must mint again.
    let mock = lakebase.workspace();
    mock.revoke_user_tokens(ALICE);
    let second = mock.issue_user_token(ALICE);
    mock.revoke_minted();
    let _ = lakebase.postgres().terminate_sessions(ALICE).await.unwrap();
    // Let the pool see its idle session end (a session that dies within the validation
    // interval otherwise surfaces on its next query, as the replica test notes too).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let conn = users
        .for_user(&ForwardedUser::new(ALICE, second.clone()))
        .await
        .expect("minted with the newest token (a mint with the revoked one would fail)");
    let row = conn
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), ALICE);
    drop(conn);
    assert_eq!(mints_for(&lakebase, ALICE), 2);

    // The revoked token was replaced, so it is checked again, and refused.
    let err = users
        .for_user(&ForwardedUser::new(ALICE, first))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UserUnauthorized {
                problem: UserProblem::TokenRejected,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actix_extractor_serves_the_user_and_refuses_without_one() {
    use actix_web::{App, HttpServer, web};

    async fn me(conn: UserConnection) -> Result<String, lakebase_pool::integrations::HttpError> {
        Ok(conn
            .query_one("SELECT current_user::text", &[])
            .await?
            .get(0))
    }

    let (lakebase, builder) = apps_stack().await;
    let tokens = lakebase.add_users(&[ALICE]).await.unwrap();
    let users = trusted(builder).build().unwrap();
    let (started, server) = std::sync::mpsc::channel();
    let served = users.clone();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = web::Data::new(served);
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .route("/me", web::get().to(me))
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
    let alice = apps_proxy_headers(&ForwardedUser::new(ALICE, tokens[0].clone()));
    assert_eq!(get(addr, "/me", alice).await, (200, String::from(ALICE)));
    assert_eq!(get(addr, "/me", Default::default()).await.0, 401);
    handle.stop(true).await;
    thread.join().unwrap().unwrap();
}

/// 1,000 distinct users in turn, 8 at a time, each taking 2 connections at once, against 16
/// user pools of 2 connections: the
/// users cached, the pools alive and the sessions on the server stay within the limits all
/// along, and evicted users' sessions end on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_stay_within_the_bounds() {
    const USERS: usize = 1_000;
    const MAX_USERS: usize = 16;
    const PER_USER: usize = 2;
    const AT_ONCE: usize = 8;
    let (lakebase, builder) = apps_stack().await;
    let emails: Vec<String> = (0..USERS)
        .map(|i| format!("user{i:04}@example.com"))
        .collect();
    let names: Vec<&str> = emails.iter().map(String::as_str).collect();
    let tokens = lakebase.add_users(&names).await.unwrap();
    let users = trusted(builder)
        .max_users(MAX_USERS)
        .max_size_per_user(PER_USER)
        .build()
        .unwrap();
    let started = Instant::now();
    let mut rss_at_200 = 0;
    let mut peak_sessions = 0;
    let mut peak_live = 0;
    for batch in (0..USERS).collect::<Vec<_>>().chunks(AT_ONCE) {
        let mut tasks = tokio::task::JoinSet::new();
        for &i in batch {
            let users = users.clone();
            let user = ForwardedUser::new(emails[i].clone(), tokens[i].clone());
            let _ = tasks.spawn(async move {
                // Two connections at once: the user's pool fills to its limit.
                let first = users.for_user(&user).await?;
                let second = users.for_user(&user).await?;
                for conn in [&first, &second] {
                    let row = conn.query_one("SELECT current_user::text", &[]).await;
                    assert_eq!(row.unwrap().get::<_, String>(0), user.email());
                }
                Ok::<_, Error>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let stats = users.stats();
        assert!(stats.users <= MAX_USERS, "{stats:?}");
        assert!(stats.pool_sizes.iter().all(|(open, _)| *open <= PER_USER));
        peak_live = peak_live.max(stats.live_pools);
        assert!(stats.live_pools <= MAX_USERS + AT_ONCE, "{stats:?}");
        if batch[0] == 200 {
            rss_at_200 = resident_kib();
        }
        if batch[0] % 100 == 0 {
            let sessions = sessions_of(&lakebase, &names).await;
            peak_sessions = peak_sessions.max(sessions);
        }
    }
    let elapsed = started.elapsed();
    let stats = users.stats();
    assert_eq!(stats.created, USERS as u64);
    assert_eq!(stats.evicted_lru, (USERS - MAX_USERS) as u64);
    assert_eq!(stats.mints, USERS as u64);

    // Evicted users' sessions end on the server; the cached users keep theirs.
    let evicted = &names[..USERS - MAX_USERS];
    let deadline = Instant::now() + Duration::from_secs(10);
    while sessions_of(&lakebase, evicted).await > 0 {
        assert!(
            Instant::now() < deadline,
            "evicted users' sessions stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cached = sessions_of(&lakebase, &names[USERS - MAX_USERS..]).await;
    assert!(cached as usize <= MAX_USERS * PER_USER, "{cached}");
    assert!(
        peak_sessions as usize <= (MAX_USERS + AT_ONCE) * PER_USER,
        "{peak_sessions}"
    );
    let cached_now: HashSet<usize> = stats.pool_sizes.iter().map(|(open, _)| *open).collect();
    assert!(cached_now.iter().all(|open| *open <= PER_USER));
    let rss_after = resident_kib();
    println!(
        "1,000 users in {elapsed:.1?}: peak {peak_sessions} user sessions on the server, peak \
         {peak_live} live user pools; resident memory {rss_at_200} KiB after 200 users, \
         {rss_after} KiB after 1,000"
    );
}

/// The process's resident memory, from `/proc/self/statm` (0 where there is none).
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}
