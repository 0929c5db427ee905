//! The server process behind a [`LocalPostgres`](super::LocalPostgres): its binaries, its
//! data directory, starting, waiting until it takes connections, stopping.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{
    HarnessError, LocalPostgres, READY_LINES, READY_TIMEOUT, SUPERUSER, StopMode, io_error,
};
use crate::IssuedCertificate;

pub(super) struct Inner {
    /// Deleted on drop, after the server has stopped.
    pub(super) root: tempfile::TempDir,
    pub(super) bin_dir: PathBuf,
    pub(super) port: u16,
    /// `(uid, gid)` to run server processes as when this process is root.
    pub(super) run_as: Option<(u32, u32)>,
    pub(super) server: Mutex<Option<Child>>,
    /// Whether the server was started with TLS on.
    pub(super) tls: bool,
    /// `ALTER ROLE` on one role from two sessions at once can fail with "tuple concurrently
    /// updated"; role changes go through this lock.
    pub(super) role_changes: tokio::sync::Mutex<()>,
}

impl Inner {
    /// A server-to-be in a new temporary directory (owned by the unprivileged user when
    /// running as root); nothing is started.
    pub(super) fn new(bin_dir: PathBuf) -> Result<Self, HarnessError> {
        let run_as = unprivileged_user()?;
        let root = tempfile::Builder::new()
            .prefix("lakebase-pg-")
            .tempdir()
            .map_err(io_error("create a temporary directory"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid)).map_err(io_error(
                "hand the temporary directory to the postgres user",
            ))?;
        }
        Ok(Inner {
            root,
            bin_dir,
            port: 0,
            run_as,
            server: Mutex::new(None),
            tls: false,
            role_changes: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts the server on a free port. A port found free can be taken by someone else
    /// before the server binds it, so up to three are tried.
    pub(super) fn launch(mut self) -> Result<LocalPostgres, HarnessError> {
        let mut last_error = None;
        for _ in 0..3 {
            self.port = free_port()?;
            match self.spawn_server() {
                Ok(()) => {
                    return Ok(LocalPostgres {
                        inner: Arc::new(self),
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(HarnessError::NotReady {
            waited: READY_TIMEOUT,
            log: String::new(),
        }))
    }

    /// The server child process, if running. No code panics while holding the lock, so a
    /// poisoned lock is recovered rather than propagated.
    pub(super) fn server(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub(super) fn socket_dir(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    pub(super) fn log_path(&self) -> PathBuf {
        self.root.path().join("postgres.log")
    }

    /// A command for one of the server binaries, run as the unprivileged user if needed.
    pub(super) fn command(&self, program: &str) -> Command {
        let mut command = Command::new(tool_path(&self.bin_dir, program));
        if let Some((uid, gid)) = self.run_as {
            let _ = command.uid(uid).gid(gid);
        }
        let _ = command.env("LC_ALL", "C").stdin(Stdio::null());
        command
    }

    /// Writes the server certificate and key into the data directory and turns TLS on.
    pub(super) fn install_certificate(
        &mut self,
        certificate: &IssuedCertificate,
    ) -> Result<(), HarnessError> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        for (name, text) in [
            ("server.crt", certificate.cert_pem()),
            ("server.key", certificate.key_pem()),
        ] {
            let path = data.join(name);
            fs::write(&path, text).map_err(io_error("write the server certificate"))?;
            // Postgres refuses a key readable by others.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(io_error("protect the server key"))?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(io_error("hand the server key to the postgres user"))?;
            }
        }
        self.tls = true;
        Ok(())
    }

    pub(super) fn initdb(&self) -> Result<(), HarnessError> {
        let mut command = self.command("initdb");
        let _ = command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        run(command)
    }

    /// Starts `postgres` in the foreground as a child and waits for it to be ready.
    pub(super) fn spawn_server(&self) -> Result<(), HarnessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io_error("open the server log"))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log.try_clone().map_err(io_error("open the server log"))?;
        let mut command = self.command("postgres");
        let _ = command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Fast but crash-safe for the server process: WAL still reaches the operating
            // system before a commit is acknowledged (synchronous_commit stays on), so an
            // immediate stop (`StopMode::Immediate`, a crash) loses no acknowledged write;
            // only a crash of the machine could, which tests do not simulate.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .args(["-c", if self.tls { "ssl=on" } else { "ssl=off" }])
            .stdout(log)
            .stderr(stderr);
        let child = command.spawn().map_err(io_error("start postgres"))?;
        *self.server() = Some(child);
        self.wait_until_ready(log_start)
    }

    pub(super) fn wait_until_ready(&self, log_start: u64) -> Result<(), HarnessError> {
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            let log = read_log_from(&self.log_path(), log_start);
            if READY_LINES.iter().any(|line| log.contains(line)) {
                return Ok(());
            }
            let exited = {
                let mut server = self.server();
                match server.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(_))) => {
                        *server = None;
                        true
                    }
                    _ => false,
                }
            };
            if exited {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_server();
        Err(HarnessError::NotReady {
            waited: started.elapsed(),
            log: tail(&read_log_from(&self.log_path(), log_start), 20),
        })
    }

    pub(super) fn stop(&self, mode: StopMode) -> Result<(), HarnessError> {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let mut command = self.command("pg_ctl");
        let _ = command
            .arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "30"]);
        let result = run(command);
        if let Some(mut child) = self.server().take() {
            let _ = child.wait();
        }
        result
    }

    pub(super) fn kill_server(&self) {
        if let Some(mut child) = self.server().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let running = self.server().is_some();
        if running && self.stop(StopMode::Immediate).is_err() {
            self.kill_server();
        }
    }
}

pub(super) fn run(mut command: Command) -> Result<(), HarnessError> {
    let output = command
        .output()
        .map_err(io_error("run a PostgreSQL command"))?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(HarnessError::CommandFailed {
        command: format!("{command:?}"),
        status: output.status.to_string(),
        output: tail(&text, 20),
    })
}

fn read_log_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_error("find a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("find a free port"))?
        .port();
    Ok(port)
}

/// `program` in `bin_dir`, or beside the real `postgres` binary when `bin_dir` only links
/// to some of the tools (a `/usr/local/bin` with links to `initdb`, `pg_ctl` and `postgres`
/// alone, while `pg_basebackup` lives in `/usr/lib/postgresql/<version>/bin`).
fn tool_path(bin_dir: &Path, program: &str) -> PathBuf {
    let direct = bin_dir.join(program);
    if direct.is_file() {
        return direct;
    }
    fs::canonicalize(bin_dir.join("postgres"))
        .ok()
        .and_then(|postgres| postgres.parent().map(|dir| dir.join(program)))
        .filter(|beside| beside.is_file())
        .unwrap_or(direct)
}

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
pub(super) fn find_bin_dir() -> Result<PathBuf, HarnessError> {
    first_with_binaries(bin_dir_candidates())
}

fn first_with_binaries(candidates: Vec<PathBuf>) -> Result<PathBuf, HarnessError> {
    let has_all = |dir: &Path| {
        ["initdb", "postgres", "pg_ctl"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    candidates
        .into_iter()
        .find(|dir| has_all(dir))
        .ok_or(HarnessError::BinariesNotFound)
}

/// `$LAKEBASE_PG_BINDIR`, then `$PATH`, then Debian's versioned directories, newest first.
fn bin_dir_candidates() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("LAKEBASE_PG_BINDIR") {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    // Debian and Ubuntu keep the server binaries off $PATH; prefer the newest version.
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    candidates.extend(versioned.into_iter().map(|(_, dir)| dir));
    candidates
}

/// `(uid, gid)` of the `postgres` user when this process runs as root, else `None`.
fn unprivileged_user() -> Result<Option<(u32, u32)>, HarnessError> {
    if id(&["-u"])? != 0 {
        return Ok(None);
    }
    let uid = id(&["-u", SUPERUSER]).map_err(|_| HarnessError::NoUnprivilegedUser)?;
    let gid = id(&["-g", SUPERUSER]).map_err(|_| HarnessError::NoUnprivilegedUser)?;
    Ok(Some((uid, gid)))
}

fn id(args: &[&str]) -> Result<u32, HarnessError> {
    let output = Command::new("id")
        .args(args)
        .output()
        .map_err(io_error("run `id`"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.trim().parse() {
        Ok(value) if output.status.success() => Ok(value),
        _ => Err(HarnessError::CommandFailed {
            command: format!("id {}", args.join(" ")),
            status: output.status.to_string(),
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_fail_with_an_install_hint() {
        let empty = tempfile::tempdir().unwrap();
        let err = first_with_binaries(vec![empty.path().to_path_buf()]).unwrap_err();
        assert!(matches!(err, HarnessError::BinariesNotFound));
        let message = err.to_string();
        assert!(
            message.contains("apt-get install -y postgresql"),
            "{message}"
        );
        assert!(message.contains("LAKEBASE_PG_BINDIR"), "{message}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
