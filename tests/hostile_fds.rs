#![cfg(target_os = "linux")]
//! Children hold only their own descriptors: with a pipe and a listening TCP socket
//! open in this process without close-on-exec (as systemd's socket activation or a C
//! library leaves them), a worker holds exactly stdio and its channel (its reply ring
//! is mapped; the worker closed its memfd), and the fork server exactly stdio, its control socket and its signalfd. The same
//! again with `close_range` made to fail (the fallback that lists /proc/self/fd), in a
//! child run of this test binary.
//!
//! Run under each start method (`PROCPOOL_TEST_START_METHOD=spawn|fork|forkserver`).

procpool::enable_test_support!();

mod support;

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use procpool::{Pool, StartMethod};
use support::within;

/// The test switch that makes procpool act as if `close_range` were missing.
const NO_CLOSE_RANGE: &str = "__PROCPOOL_TEST_NO_CLOSE_RANGE";

/// Set in the child run of this binary that checks the fallback.
const FALLBACK_RUN: &str = "PROCPOOL_TEST_FDS_FALLBACK_RUN";

/// Every open descriptor of `pid` (`"self"` for the caller) with what it points to,
/// except the directory listing itself.
fn open_fds(pid: &str) -> Vec<(i32, String)> {
    let dir = format!("/proc/{pid}/fd");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("list fds").flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // The listing's own descriptor is gone by the time it is read, or points at
        // the /proc directory.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with("/proc/") && target.ends_with("/fd") {
            continue;
        }
        out.push((fd, target));
    }
    out.sort();
    out
}

/// Task: this worker's descriptors.
fn my_fds(_: ()) -> Vec<(i32, String)> {
    open_fds("self")
}

/// Leaves a pipe and a listening socket open without close-on-exec, as a service that
/// inherited them would; returns them (kept open by the caller) and what their
/// descriptors point to.
fn leak_descriptors() -> (Vec<OwnedFd>, TcpListener, Vec<String>) {
    let mut pipe = [0; 2];
    // SAFETY: pipe writes two new descriptors into the array (no O_CLOEXEC on purpose).
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: fresh descriptors that nothing else owns.
    let pipe: Vec<OwnedFd> = pipe
        .iter()
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    // SAFETY: fcntl on a descriptor the listener owns; clears close-on-exec.
    let rc = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_SETFD, 0) };
    assert_eq!(rc, 0, "clear FD_CLOEXEC");
    let mut targets: Vec<String> = pipe
        .iter()
        .map(|fd| fd.as_raw_fd())
        .chain([listener.as_raw_fd()])
        .map(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .expect("readlink")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    targets.dedup();
    (pipe, listener, targets)
}

/// Asserts that `fds` are exactly stdio and the channel on 3. (The reply ring is a
/// mapping: the worker closes its memfd once it has mapped it; `maps` must show it.)
fn assert_worker_fds(fds: &[(i32, String)], maps: &str, leaked: &[String]) {
    for target in leaked {
        assert!(
            !fds.iter().any(|(_, t)| t == target),
            "the worker holds our {target}: {fds:?}"
        );
    }
    let numbers: Vec<i32> = fds.iter().map(|(fd, _)| *fd).collect();
    assert_eq!(
        numbers,
        [0, 1, 2, 3],
        "a worker holds stdio and its channel, nothing more: {fds:?}"
    );
    assert!(
        fds[3].1.starts_with("socket:["),
        "the channel on 3: {fds:?}"
    );
    assert!(
        maps.contains("/memfd:procpool-replies"),
        "the worker maps its reply ring"
    );
}

/// Asserts that the fork server `pid` holds exactly stdio, its control socket and its
/// signalfd.
fn assert_server_fds(pid: u32, leaked: &[String]) {
    let fds = open_fds(&pid.to_string());
    for target in leaked {
        assert!(
            !fds.iter().any(|(_, t)| t == target),
            "the fork server holds our {target}: {fds:?}"
        );
    }
    let numbers: Vec<i32> = fds.iter().map(|(fd, _)| *fd).collect();
    assert!(numbers.starts_with(&[0, 1, 2]), "stdio: {fds:?}");
    let rest: Vec<&str> = fds[3..].iter().map(|(_, t)| t.as_str()).collect();
    assert!(
        rest.len() == 2
            && rest.iter().any(|t| t.starts_with("socket:["))
            && rest.contains(&"anon_inode:[signalfd]"),
        "the fork server holds its control socket, its signalfd and stdio, nothing more: {fds:?}"
    );
}

/// The checks of this file, on one pool.
async fn check_descriptors() {
    let (_pipe, _listener, leaked) = leak_descriptors();
    // A local link: the worker's reply ring is one of the mappings checked.
    let builder = support::builder().transport(procpool::Transport::Local);
    let pool: Pool = within("build", builder.processes(2).build())
        .await
        .expect("pool builds");
    let workers = support::worker_pids(&pool);
    let mut seen = Vec::new();
    for _ in 0..8 {
        let (fds, maps, pid) = within("task", pool.apply(fds_and_pid, ()))
            .await
            .expect("task runs");
        assert_worker_fds(&fds, &maps, &leaked);
        seen.push(pid);
    }
    assert!(
        workers.iter().all(|w| seen.contains(w)) || seen.len() == 8,
        "tasks ran on the pool's workers"
    );
    if support::start_method() == StartMethod::ForkServer {
        let server = pool.stats().forkserver_pid.expect("the fork server runs");
        assert_server_fds(server, &leaked);
    }
    within("terminate", pool.terminate()).await;
}

/// Task: this worker's descriptors, its memory map and its pid.
fn fds_and_pid(_: ()) -> (Vec<(i32, String)>, String, u32) {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read maps");
    (my_fds(()), maps, std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_hold_only_their_own_descriptors() {
    check_descriptors().await;
}

/// The same with `close_range` made to fail, so that the fallback runs: in a child run
/// of this binary, since the switch is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_close_range_the_fallback_closes_them() {
    let exe = std::env::current_exe().expect("test binary");
    let run = tokio::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "fallback_run",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(NO_CLOSE_RANGE, "1")
        .env(FALLBACK_RUN, "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the fallback run ends in time")
        .expect("the fallback run starts");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "fallback run: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run by [`without_close_range_the_fallback_closes_them`] only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by without_close_range_the_fallback_closes_them, in a process of its own"]
async fn fallback_run() {
    assert!(
        std::env::var_os(FALLBACK_RUN).is_some() && std::env::var_os(NO_CLOSE_RANGE).is_some(),
        "only meaningful with the switch set"
    );
    check_descriptors().await;
}
