//! The `lakebase-emulator` program, run as a user runs it: the environment it prints opens a
//! pool, and SIGTERM (what `docker compose down` sends) stops it and everything it started.

use std::time::Duration;

use lakebase_pool::{Environment, PoolBuilder};

#[tokio::test]
async fn the_emulator_program_prints_an_environment_that_works() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lakebase-emulator"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut exports = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line.starts_with("# Press Ctrl-C") {
                break;
            }
            if let Some((name, value)) =
                line.strip_prefix("export ").and_then(|l| l.split_once('='))
            {
                exports.push((name.to_owned(), value.to_owned()));
            }
        }
        exports
    });
    let exports = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .unwrap()
        .unwrap();
    assert!(
        exports.iter().any(|(k, _)| k == "LAKEBASE_ENDPOINT"),
        "{exports:?}"
    );

    let pool = PoolBuilder::from_environment(&Environment::from_vars(exports.clone()))
        .unwrap()
        .build()
        .unwrap();
    let connected: bool = pool
        .get()
        .await
        .unwrap()
        .query_one("SELECT true", &[])
        .await
        .unwrap()
        .get(0);
    assert!(connected);
    drop(pool);

    // SIGTERM (what `docker compose down` sends) stops it cleanly, removing its server.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(30), exited)
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let port: u16 = exports
        .iter()
        .find(|(k, _)| k == "PGPORT")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens any more"
    );
}
