//! Reproducers against the last three commits: the test crate's own time formats, the nested
//! `WorkspaceError`, and "one door to the environment". Each test says at its top whether it
//! showed a DEFECT (it failed on the code it was written against; fixed since) or is COVERAGE
//! (it holds, and guards a claim that a regression would break).

use std::time::Duration;

use lakebase_pool::databricks::{AuthMethod, Workspace, WorkspaceBuilder, WorkspaceError};
use lakebase_pool::users::UserPools;
use lakebase_pool::{Environment, Error, Pool, PoolBuilder};
use lakebase_pool_testing::MockWorkspace;

use crate::support::{LogCapture, chain};

const ENDPOINT: &str = "projects/shop/branches/production/endpoints/ep-primary";
const PAT: &str = "dapi-arch-break";
const USER: &str = "someone@example.com";

fn mock() -> MockWorkspace {
    let mock = MockWorkspace::start().unwrap();
    mock.add_pat(PAT, USER);
    // Also makes `production` the project's default branch, which new branches start from.
    mock.add_endpoint(ENDPOINT, "127.0.0.1");
    mock
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `POST .../projects/shop/branches?branch_id=<id>` with `spec.expire_time = at`, raw: the
/// crate's own client never writes some of these texts, a caller in another language may.
async fn create_branch_expiring_at(mock: &MockWorkspace, id: &str, at: &str) -> (u16, String) {
    let url = format!(
        "{}/api/2.0/postgres/projects/shop/branches?branch_id={id}",
        mock.url()
    );
    let answer = client()
        .post(url)
        .bearer_auth(PAT)
        .header("content-type", "application/json")
        .body(serde_json::json!({"spec": {"expire_time": at}}).to_string())
        .send()
        .await
        .expect("the mock answers a branch creation");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}

// Was a DEFECT, now fixed. The mock's `expire_time` check (testing/src/api_formats.rs:26 `parse_rfc3339`, on the
// `time` crate) accepts texts the in-library parser it replaced refused with 400 (see
// `git show HEAD~3:src/databricks/time.rs`): a time before 1970 ("no credential expires
// then"), and any byte at all between date and time (`time` takes "any separator"; the old
// code took `T`, `t` or a space, and the API's protobuf-JSON timestamps take `T`). The mock
// now creates such branches, so a client bug that sends them passes against the mock.
#[tokio::test]
async fn arch_break_mock_refuses_expire_times_the_api_refuses() {
    let mock = mock();
    let mut accepted = Vec::new();
    for (i, text) in [
        "1969-12-31T23:59:59Z",
        "2030-01-01X00:00:00Z",
        "2030-01-01_00:00:00Z",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = create_branch_expiring_at(&mock, &format!("ci-odd-{i}"), text).await;
        if status != 400 {
            accepted.push(format!("{text} -> {status} {body}"));
        }
    }
    assert!(
        accepted.is_empty(),
        "the mock took expire_time texts the old check (and the API) refuse: {accepted:#?}"
    );
}

// Was a DEFECT, now fixed. An `expire_time` the mock accepts can make it panic when it writes the branch back:
// "9999-12-31T23:59:59-23:59" is valid RFC 3339 (year 9999 with an offset), i.e. 10000-01-01
// in UTC. `format_rfc3339` (testing/src/api_formats.rs:14, `OffsetDateTime::from(SystemTime)`)
// panics past year 9999 without `time`'s `large-dates` ("resulting value is out of range"),
// so GET of the branch (branch_json, testing/src/workspace/branches.rs:121) drops the
// connection instead of answering; so would every listing of the project. The old formatter
// wrote the date without panicking.
#[tokio::test]
async fn arch_break_mock_survives_an_expire_time_past_year_9999() {
    let mock = mock();
    let (status, body) =
        create_branch_expiring_at(&mock, "ci-far", "9999-12-31T23:59:59-23:59").await;
    if status == 400 {
        // Refusing it up front is a fine answer too.
        return;
    }
    assert_eq!(status, 200, "{body}");
    let url = format!(
        "{}/api/2.0/postgres/projects/shop/branches/ci-far",
        mock.url()
    );
    let answer = client().get(url).bearer_auth(PAT).send().await;
    match answer {
        Ok(answer) => assert_eq!(answer.status().as_u16(), 200),
        Err(error) => panic!(
            "the mock accepted the branch but could not answer a GET of it: {}",
            chain(&error)
        ),
    }
}

// Was a DEFECT, now fixed (fidelity). With `set_fractional_expire_time(true)` the mock used to write exactly
// six fractional digits (`.{:06}` of the microseconds); the `time`-based formatter
// (testing/src/api_formats.rs:14-23) writes 1 to 9 digits with trailing zeros cut (".25"),
// and invents a 1 ns fraction on whole seconds (`replace_nanosecond(1)`), so the time it
// writes is not the time it records. Protobuf-JSON timestamps, which the API writes, always
// have 0, 3, 6 or 9 fractional digits. With 200 mints, about 10% of them end in a zero
// nanosecond digit, so this fails on every run in practice.
#[tokio::test]
async fn arch_break_mock_fractional_expire_times_have_0_3_6_or_9_digits() {
    let mock = mock();
    mock.set_fractional_expire_time(true);
    let http = client();
    let mut odd = Vec::new();
    for _ in 0..200 {
        let answer: serde_json::Value = http
            .post(format!("{}/api/2.0/postgres/credentials", mock.url()))
            .bearer_auth(PAT)
            .header("content-type", "application/json")
            .body(serde_json::json!({"endpoint": ENDPOINT}).to_string())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|body| serde_json::from_slice(&body).unwrap())
            .unwrap();
        let text = answer["expire_time"].as_str().unwrap().to_owned();
        let digits = text
            .split_once('.')
            .map_or(0, |(_, fraction)| fraction.trim_end_matches('Z').len());
        if ![0, 3, 6, 9].contains(&digits) {
            odd.push(text);
        }
    }
    assert!(
        odd.is_empty(),
        "{} of 200 expire_times have a fraction no protobuf-JSON writer produces, e.g. {:?}",
        odd.len(),
        odd.first()
    );
}

// Was a DEFECT, now fixed (secret in an error). `WorkspaceBuilder::from_environment` now parses
// DATABRICKS_HOST at once and names it in the error with `without_user_info`
// (src/databricks/host.rs:98-112), which looks for the `@` only before the first `/`, `?` or
// `#`. A password holding one of those (a token copied into the URL) is printed whole: the
// URL does not parse ("invalid port number") and the message quotes it as given.
#[test]
fn arch_break_host_password_with_a_slash_is_not_echoed_by_from_environment() {
    for host in [
        "https://token:s3cr/etpart@w.example.com",
        "https://token:s3cr#etpart@w.example.com",
        "token:s3cr?etpart@w.example.com",
    ] {
        let env = Environment::from_vars([("DATABRICKS_HOST", host), ("DATABRICKS_TOKEN", "t")]);
        let err = WorkspaceBuilder::from_environment(&env)
            .map(|_| ())
            .expect_err("a host with user info is refused");
        let text = format!("{} | {err:?}", chain(&err));
        assert!(
            !text.contains("s3cr") && !text.contains("etpart"),
            "{host}: the password is in the error: {text}"
        );
    }
}

// Was a DEFECT, now fixed (secret in Debug). The same `without_user_info` serves `WorkspaceBuilder`'s Debug
// (src/databricks/workspace.rs:236): a host given with a password holding `/` shows it.
#[test]
fn arch_break_workspace_builder_debug_hides_a_host_password_with_a_slash() {
    let builder = Workspace::builder().host("https://token:s3cr/etpart@w.example.com");
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains("s3cr") && !shown.contains("etpart"),
        "{shown}"
    );
}

// Was a DEFECT, now fixed (a message that lies). `Workspace::builder()` now reads no environment, so it never
// finds the Databricks CLI (find_on_path gets no PATH, src/databricks/settings.rs:157) and
// DATABRICKS_HOST / DATABRICKS_TOKEN have no effect on it. Yet its errors still say "set
// DATABRICKS_TOKEN ... or install the Databricks CLI" (settings.rs:157-162) and "set
// DATABRICKS_HOST" (settings.rs:74-77), even when the CLI was asked for explicitly and is
// installed. The profile error was updated to name `WorkspaceBuilder::from_env()`
// (settings.rs:58-63); these were not.
#[test]
fn arch_break_workspace_builder_errors_name_the_missing_environment() {
    let cli = Workspace::builder()
        .host("https://w.example.com")
        .auth_method(AuthMethod::DatabricksCli)
        .build()
        .map(|_| ())
        .expect_err("no PATH to find the CLI on");
    let no_host = Workspace::builder()
        .token("t")
        .build()
        .map(|_| ())
        .expect_err("no host");
    for err in [cli, no_host] {
        assert!(
            matches!(err, Error::Workspace(WorkspaceError::Config { .. })),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("from_env"),
            "the error of a builder that reads no environment sends the user to set \
             variables it will never read: {text}"
        );
    }
}

// Was a DEFECT, now fixed (hidden read of the process environment). A workspace built from an `Environment`
// resolves `DATABRICKS_CONFIG_FILE` and `DATABRICKS_CONFIG_PROFILE` from it, then runs
// `databricks auth token --profile <p>` (src/databricks/auth.rs:262-271) with the *process's*
// environment: the CLI looks the profile up in another file than the one the builder read
// (and sees the process's DATABRICKS_* variables). The fake CLI below reports what it sees.
#[tokio::test]
async fn arch_break_cli_runs_with_the_builders_environment() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("databrickscfg");
    std::fs::write(&config, "[ci]\nhost = https://w.example.com\n").unwrap();
    let program = dir.path().join("databricks");
    std::fs::write(
        &program,
        "#!/bin/sh\necho \"cli-saw-config=${DATABRICKS_CONFIG_FILE:-unset} args=$*\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Let any fork of another test thread that inherited the write handle exec first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let config_text = config.to_str().unwrap().to_owned();
    let env = Environment::from_vars([
        ("PATH", dir.path().to_str().unwrap().to_owned()),
        ("DATABRICKS_CONFIG_FILE", config_text.clone()),
        ("DATABRICKS_CONFIG_PROFILE", String::from("ci")),
    ]);
    let workspace = WorkspaceBuilder::from_environment(&env)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(workspace.auth_method(), AuthMethod::DatabricksCli);
    let err = tokio::time::timeout(Duration::from_secs(20), workspace.current_user())
        .await
        .expect("the fake CLI answers at once")
        .expect_err("the fake CLI always fails");
    let text = chain(&err);
    assert!(text.contains("args=auth token --profile ci"), "{text}");
    assert!(
        text.contains(&format!("cli-saw-config={config_text}")),
        "the CLI was told profile `ci` of {config_text}, but ran with the process's \
         environment: {text}"
    );
}

/// A pool builder for an endpoint, made by hand (no environment), with a workspace that is
/// never called at build.
fn hand_made_app() -> PoolBuilder {
    Pool::builder()
        .host("127.0.0.1")
        .user("app")
        .lakebase_endpoint(ENDPOINT)
        .workspace(
            Workspace::builder()
                .host("http://127.0.0.1:9")
                .token("t")
                .build()
                .unwrap(),
        )
}

// Was a DEFECT, now fixed (a message that got worse). The new build log line for an untrusted default
// (src/users/builder.rs:222) is a string literal broken over lines without `\`, so the
// message carries two runs of 22 spaces: "...an environment with
// DATABRICKS_APP_NAME (use PoolBuilder::from_env, or                      ForwardedHeaders...".
#[tokio::test]
async fn arch_break_untrusted_headers_log_line_is_one_clean_sentence() {
    let (logs, _guard) = LogCapture::install();
    let users = UserPools::builder(hand_made_app()).build().unwrap();
    assert!(!users.trusts_forwarded_headers());
    let text = logs.text();
    let line = text
        .lines()
        .find(|line| line.contains("per-user pools ready"))
        .unwrap_or_else(|| panic!("no build log line in {text}"));
    assert!(line.contains("DATABRICKS_APP_NAME"), "{line}");
    // The formatter's own padding before the level is not the message's.
    let message = &line[line.find("per-user pools ready").unwrap()..];
    assert!(!message.contains("  "), "runs of blanks in: {message:?}");
}

// COVERAGE (security). Forwarded user headers are trusted by default only when the app's
// builder came from an environment with a non-blank DATABRICKS_APP_NAME: a hand-made
// builder is not trusted whatever the process environment holds, nor is one from an
// environment without the variable; the flag survives further settings on the builder.
#[tokio::test]
async fn arch_break_default_trust_comes_only_from_the_builders_environment() {
    let hand = UserPools::builder(hand_made_app()).build().unwrap();
    assert!(!hand.trusts_forwarded_headers());
    let from = |vars: &[(&str, &str)]| {
        let mut all = vec![
            ("PGHOST", "127.0.0.1"),
            ("PGUSER", "app"),
            ("PGPASSWORD", "p"),
        ];
        all.extend_from_slice(vars);
        let builder = PoolBuilder::from_environment(&Environment::from_vars(all))
            .unwrap()
            .max_size(2)
            .lakebase_endpoint(ENDPOINT)
            .workspace(
                Workspace::builder()
                    .host("http://127.0.0.1:9")
                    .token("t")
                    .build()
                    .unwrap(),
            );
        UserPools::builder(builder)
            .build()
            .unwrap()
            .trusts_forwarded_headers()
    };
    assert!(!from(&[]));
    assert!(!from(&[("PGAPPNAME", "notes")]));
    assert!(!from(&[("DATABRICKS_APP_NAME", " \t ")]));
    assert!(from(&[("DATABRICKS_APP_NAME", "notes")]));
}

// COVERAGE. Both doors check the same variables at once: a malformed DATABRICKS_HOST,
// DATABRICKS_AUTH_TYPE or HTTPS_PROXY fails `WorkspaceBuilder::from_environment` and
// `PoolBuilder::from_environment` (with an endpoint) alike, and the proxy's password is in
// neither error.
#[test]
fn arch_break_both_doors_refuse_the_same_variables_without_echoing_a_proxy_password() {
    for (var, value) in [
        ("DATABRICKS_HOST", "ftp://w.example.com"),
        ("DATABRICKS_AUTH_TYPE", "magic"),
        (
            "HTTPS_PROXY",
            "ftp://user:proxy-s3cret@proxy.example.com:21",
        ),
        ("HTTPS_PROXY", "http://user:proxy-s3cret@[bad"),
    ] {
        let base = [
            ("DATABRICKS_HOST", "https://w.example.com"),
            ("DATABRICKS_TOKEN", "t"),
            ("LAKEBASE_ENDPOINT", ENDPOINT),
        ];
        let vars: Vec<(&str, &str)> = base
            .into_iter()
            .filter(|(name, _)| *name != var)
            .chain([(var, value)])
            .collect();
        let env = Environment::from_vars(vars);
        let workspace = WorkspaceBuilder::from_environment(&env)
            .map(|_| ())
            .expect_err(var);
        let pool = PoolBuilder::from_environment(&env)
            .map(|_| ())
            .expect_err(var);
        for err in [workspace, pool] {
            let text = format!("{} | {err:?}", chain(&err));
            assert!(!text.contains("proxy-s3cret"), "{var}: {text}");
        }
    }
}

// COVERAGE. The nested errors keep their old classification, `error.type` names and
// source chains (the claims of the WorkspaceError commit).
#[tokio::test]
async fn arch_break_workspace_errors_classify_as_before() {
    let mock = mock();
    let workspace = Workspace::builder()
        .host(mock.url())
        .token(PAT)
        .build()
        .unwrap();
    mock.inject(lakebase_pool_testing::Fault::status(403, "no").times(1));
    let err = workspace.current_user().await.unwrap_err();
    assert!(
        err.is_auth() && !err.is_transient() && !err.is_timeout(),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("GET /api/2.0/preview/scim/v2/Me failed with HTTP 403"),
        "{err}"
    );
    let unreachable = Workspace::builder()
        .host("http://127.0.0.1:9")
        .token(PAT)
        .request_timeout(Duration::from_secs(2))
        .retry_budget(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), unreachable.current_user())
        .await
        .expect("bounded by the retry budget")
        .unwrap_err();
    // Nothing listens there: a wrong host, told at once (not retried as a passing fault).
    assert!(!err.is_transient() && !err.is_auth(), "{err:?}");
    assert!(
        matches!(err, Error::Workspace(WorkspaceError::Request { .. })),
        "{err:?}"
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the transport error stays the source"
    );
}
