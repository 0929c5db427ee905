//! The `lakebase-emulator` program, run as a user runs it: the environment it prints opens a
//! pool, and SIGTERM (what `docker compose down` sends) stops it and everything it started.

use std::time::Duration;

use lakebase_pool::resolve::StaticResolver;
use lakebase_pool::{Environment, PoolBuilder};

/// The program, started with `args`, and its output line by line.
struct Program {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Program {
    fn start(args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lakebase-emulator"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_in, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_in.send(line).is_err() {
                    break;
                }
            }
        });
        Program { child, lines }
    }

    /// Reads its output until a line that starts with `prefix`, within 60 s; the variables
    /// it printed to export on the way.
    async fn read_until(&mut self, prefix: &str) -> Vec<(String, String)> {
        let mut exports = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no line `{prefix}...` within 60 s"))
                .expect("the program runs");
            if line.starts_with(prefix) {
                return exports;
            }
            if let Some((name, value)) =
                line.strip_prefix("export ").and_then(|l| l.split_once('='))
            {
                exports.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// Sends it `signal` (`-TERM`, `-USR1`) with `kill`.
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM (what `docker compose down` sends): it exits cleanly within 30 s.
    async fn terminate(mut self) {
        self.signal("-TERM");
        let exited = tokio::task::spawn_blocking(move || self.child.wait().unwrap());
        let status = tokio::time::timeout(Duration::from_secs(30), exited)
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

#[tokio::test]
async fn the_emulator_program_prints_an_environment_that_works() {
    let mut program = Program::start(&[]);
    let exports = program.read_until("# Press Ctrl-C").await;
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

    // SIGTERM stops it cleanly, removing its server.
    program.terminate().await;
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

/// With `--ha`, the program's endpoint has a synchronous secondary behind its read-only host
/// (read from with `LAKEBASE_READ_ONLY_HOST=true`, the host mapped to loopback as the program
/// says) and `kill -USR1` fails it over: a pool from the printed environment writes before
/// and after, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_program_fails_over_on_sigusr1_with_ha() {
    let mut program = Program::start(&["--ha"]);
    let mut exports = program.read_until("# Press Ctrl-C").await;
    exports.push(("LAKEBASE_READ_ONLY_HOST".to_owned(), "true".to_owned()));
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    let pool = PoolBuilder::from_environment(&Environment::from_vars(exports))
        .unwrap()
        .resolver(StaticResolver::new().with_domain("lakebase.test", loopback))
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    conn.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let position = conn.write_position().await.unwrap();
    drop(conn);
    let reader = pool.get_read_at(position).await.unwrap();
    let on_secondary: bool = reader
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(on_secondary, "read through the read-only host");
    drop(reader);

    program.signal("-USR1");
    let _ = program.read_until("# Failed over").await;
    let conn = pool.get().await.unwrap();
    conn.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    let rows: i64 = conn
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2, "the write before the failover survived it");
    drop(conn);
    drop(pool);

    program.terminate().await;
}
