//! A test server whose process has run out of file descriptors pauses between failed
//! accepts instead of spinning at full speed. Alone in its own test binary: it lowers the
//! process's open-file limit.

#![cfg(target_os = "linux")]

use std::io::{Read, Seek};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use lakebase_pool_testing::{FaultProxy, NetworkFault};

/// CPU time this process has used (user + system), from `/proc/self/stat`, read through a
/// file opened beforehand (no descriptor is left to open one).
fn cpu_time(stat: &mut std::fs::File) -> Duration {
    let mut text = String::new();
    stat.rewind().unwrap();
    stat.read_to_string(&mut text).unwrap();
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// The lowest descriptor number free now.
fn lowest_free_descriptor() -> u64 {
    // SAFETY: dup and close of a descriptor this function owns.
    unsafe {
        let fd = libc::dup(0);
        assert!(fd >= 0);
        libc::close(fd);
        fd as u64
    }
}

fn set_open_file_limit(limit: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimit structs.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: limit,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
    }
    old
}

#[test]
fn a_test_server_out_of_file_descriptors_pauses_between_accepts() {
    // Upstream: a port nothing listens on (nothing is forwarded in this test).
    let proxy = FaultProxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 9))).unwrap();
    // The accepted connection is held, so its descriptor stays taken.
    proxy.set_fault(NetworkFault::Blackhole);
    let port = proxy.addr().port();
    // A client in another process connects once this process has no descriptor left.
    let mut client = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,time; time.sleep(0.5); \
                 s=socket.create_connection(('127.0.0.1',{port})); time.sleep(3)"
            ),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs the client");
    let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // One descriptor left: the client's connection takes it, and every accept after that
    // fails (Linux checks for a free descriptor before it looks at the queue).
    let old = set_open_file_limit(lowest_free_descriptor() + 1);
    std::thread::sleep(Duration::from_millis(1000));
    let before = cpu_time(&mut stat);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_time(&mut stat) - before;
    // SAFETY: restores the limit read above.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &old), 0);
    }
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        used < Duration::from_millis(300),
        "the accept loop spun: {used:?} of CPU in 1 s"
    );
}
