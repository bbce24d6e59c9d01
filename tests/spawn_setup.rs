#![cfg(target_os = "linux")]
//! A spawned child (`StartMethod::Spawn`) is started with `posix_spawn`, which runs none
//! of procpool's code before the exec; the child sets itself up first thing after it,
//! from the settings its parent put in `__PROCPOOL_SETUP`. Checked here: a spawned
//! worker leads its own process group, is a subreaper, has the parent-death signal
//! armed, holds only stdio and its channel, and does not show the settings to its
//! tasks; a child told that its parent is another process (its parent died before it
//! could arm the signal) leaves before it says hello; and one whose settings are
//! missing or malformed refuses to run, saying why.
//!
//! These tests name `StartMethod::Spawn` or run this binary themselves, whatever
//! `PROCPOOL_TEST_START_METHOD` says.

mod support;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use procpool::{Pool, StartMethod};
use support::within;

/// What a worker knows of its own set-up.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Setup {
    pid: u32,
    parent: u32,
    group: u32,
    subreaper: bool,
    death_signal: i32,
    setup_visible: bool,
    fds: Vec<i32>,
}

/// Task: this worker's set-up.
fn my_setup(_: ()) -> Setup {
    let mut subreaper: libc::c_int = 0;
    let mut death_signal: libc::c_int = 0;
    // SAFETY: the prctl reads write one int each into the locals passed.
    unsafe {
        libc::prctl(
            libc::PR_GET_CHILD_SUBREAPER,
            &mut subreaper as *mut libc::c_int,
        );
        libc::prctl(
            libc::PR_GET_PDEATHSIG,
            &mut death_signal as *mut libc::c_int,
        );
    }
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    // The listing's own descriptor is the last number listed.
    fds.pop();
    Setup {
        pid: std::process::id(),
        parent: std::os::unix::process::parent_id(),
        // SAFETY: getpgrp takes no arguments.
        group: unsafe { libc::getpgrp() } as u32,
        subreaper: subreaper == 1,
        death_signal,
        setup_visible: std::env::var_os("__PROCPOOL_SETUP").is_some(),
        fds,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_worker_sets_itself_up_after_its_exec() {
    let pool = within(
        "build",
        Pool::builder()
            .processes(2)
            .start_method(StartMethod::Spawn)
            .build(),
    )
    .await
    .expect("pool builds");
    for _ in 0..2 {
        let setup = within("setup", pool.apply(my_setup, ()))
            .await
            .expect("task runs");
        assert_eq!(setup.parent, std::process::id(), "{setup:?}");
        assert_eq!(setup.group, setup.pid, "its own process group: {setup:?}");
        assert!(setup.subreaper, "a subreaper: {setup:?}");
        assert_eq!(setup.death_signal, libc::SIGKILL, "{setup:?}");
        assert!(
            !setup.setup_visible,
            "the settings are not left to its tasks"
        );
        assert_eq!(setup.fds, [0, 1, 2, 3], "stdio and its channel only");
    }
    within("terminate", pool.terminate()).await;
}

/// Runs this test binary as a spawned worker would be run, with `setup` as its
/// start-up settings (none with `None`) and one end of a socketpair on descriptor 3;
/// returns its exit code, its stderr, and what it wrote on the socket.
fn run_as_worker(setup: Option<&str>) -> (Option<i32>, String, Vec<u8>) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.env("__PROCPOOL_WORKER", "worker")
        .env_remove("__PROCPOOL_SETUP")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(setup) = setup {
        cmd.env("__PROCPOOL_SETUP", setup);
    }
    // SAFETY: dup2 is async-signal-safe; `fd` stays open in this process until
    // `spawn` has returned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("run this binary as a worker");
    drop(theirs);
    // No setup will come: a worker that says hello then reads the end of its channel,
    // and exits.
    ours.shutdown(std::net::Shutdown::Write).expect("shutdown");
    // Bounded: the child closes its end by exiting; a child that hangs instead is
    // killed when the read times out.
    ours.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut said = Vec::new();
    let read = (&ours).read_to_end(&mut said);
    let pid = child.id();
    if read.is_err() {
        // SAFETY: kill of our own child, not yet reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let out = child.wait_with_output().expect("wait for it");
    read.expect("the child closed its channel");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        said,
    )
}

#[test]
fn a_child_whose_parent_is_not_the_one_named_leaves_before_its_hello() {
    // Named parent: pid 1, never this process. So it would be if its parent had died
    // before it armed the parent-death signal: no signal would ever come.
    let (code, stderr, said) = run_as_worker(Some("1,0,,,0"));
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(said.is_empty(), "it said {} bytes first", said.len());
}

#[test]
fn a_child_that_may_outlive_its_parent_does_not_check_it() {
    // The same settings with `outlive` set: it runs, says hello, and leaves when it
    // reads the end of its channel.
    let (code, stderr, said) = run_as_worker(Some("1,1,,,0"));
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(!said.is_empty(), "it said hello");
}

#[test]
fn malformed_start_up_settings_stop_the_child_with_a_message() {
    for (setup, why) in [
        (Some("not settings"), "bad start-up settings"),
        (Some("7,0,ten,,0"), "bad niceness"),
        (None, "no start-up settings"),
    ] {
        let (code, stderr, said) = run_as_worker(setup);
        assert_eq!(code, Some(2), "{setup:?}: stderr: {stderr}");
        assert!(
            stderr.contains("cannot run") && stderr.contains(why),
            "{setup:?}: stderr: {stderr}"
        );
        assert!(said.is_empty(), "{setup:?}: it said {} bytes", said.len());
    }
}
