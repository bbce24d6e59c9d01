//! `Process`: one function in one child, under every start method.
#![cfg(target_os = "linux")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use procpool::{Process, StartMethod, TaskError, WorkerExit};
use support::{double, sleep_ms, BOUND};

const METHODS: [StartMethod; 3] = [
    StartMethod::Spawn,
    StartMethod::Fork,
    StartMethod::ForkServer,
];

fn panics(_: ()) -> u64 {
    panic!("no luck")
}

fn exits(code: i32) {
    std::process::exit(code)
}

fn whoami(_: ()) -> (u32, String, Option<usize>, bool) {
    let me = procpool::current_process().expect("inside a process");
    (me.pid(), me.name().to_string(), me.index(), me.is_daemon())
}

/// Tries to start a grandchild; returns the error message if refused.
fn start_grandchild(with_io: bool) -> Result<u64, String> {
    // A `Fork` child cannot enable Tokio's I/O (see `StartMethod::Fork`); the daemon
    // check comes before any I/O, so a bare runtime shows it.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    if with_io {
        builder.enable_all();
    }
    let rt = builder.build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        match Process::builder().start(double, 1).await {
            Ok(child) => child.join().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
}

#[tokio::test]
async fn join_returns_the_result_and_the_exit_code() {
    for method in METHODS {
        let mut child = Process::builder()
            .start_method(method)
            .start(sleep_ms, 300)
            .await
            .expect("starts");
        assert!(child.is_alive(), "{method:?}");
        assert!(support::is_running(child.pid()), "{method:?}");
        assert_eq!(child.exit_code(), None);
        let exit = tokio::time::timeout(BOUND, child.wait())
            .await
            .expect("bounded");
        assert_eq!(exit, WorkerExit::Code(0), "{method:?}");
        assert!(!child.is_alive());
        assert_eq!(child.exit_code(), Some(WorkerExit::Code(0)));
        let pid = child.pid();
        assert_eq!(child.join().await, Ok(300), "{method:?}");
        assert!(
            support::eventually(BOUND, || support::is_gone(pid)),
            "{method:?}: {pid} reaped"
        );
    }
}

#[tokio::test]
async fn current_process_knows_the_name_and_that_it_is_no_pool_worker() {
    for method in METHODS {
        let child = Process::builder()
            .name("analyst")
            .daemon(true)
            .start_method(method)
            .start(whoami, ())
            .await
            .expect("starts");
        let pid = child.pid();
        let (inner_pid, name, index, daemon) = child.join().await.expect("result");
        assert_eq!(
            (inner_pid, name.as_str(), index, daemon),
            (pid, "analyst", None, true),
            "{method:?}"
        );
    }
}

#[tokio::test]
async fn a_panic_and_an_exit_come_back_as_errors() {
    for method in METHODS {
        let child = Process::builder()
            .start_method(method)
            .start(panics, ())
            .await
            .unwrap();
        let err = child.join().await.unwrap_err();
        assert_eq!(
            err.panic().map(|p| p.message()),
            Some("no luck"),
            "{method:?}"
        );

        let child = Process::builder()
            .start_method(method)
            .start(exits, 4)
            .await
            .unwrap();
        let pid = child.pid();
        assert_eq!(
            child.join().await,
            Err(TaskError::WorkerDied {
                pid,
                exit: WorkerExit::Code(4)
            }),
            "{method:?}"
        );
    }
}

#[tokio::test]
async fn kill_and_terminate_end_the_process() {
    for method in METHODS {
        let mut child = Process::builder()
            .start_method(method)
            .start(sleep_ms, 60_000)
            .await
            .unwrap();
        child.kill();
        let exit = tokio::time::timeout(BOUND, child.wait())
            .await
            .expect("bounded");
        assert_eq!(exit, WorkerExit::Signal(9), "{method:?}");
        let pid = child.pid();
        assert!(
            matches!(child.join().await, Err(TaskError::WorkerDied { pid: p, .. }) if p == pid)
        );

        let mut child = Process::builder()
            .start_method(method)
            .start(sleep_ms, 60_000)
            .await
            .unwrap();
        child.terminate();
        let exit = tokio::time::timeout(BOUND, child.wait())
            .await
            .expect("bounded");
        assert_eq!(exit, WorkerExit::Signal(15), "{method:?}");
    }
}

#[tokio::test]
async fn a_daemon_may_not_start_children() {
    for method in METHODS {
        let child = Process::builder()
            .daemon(true)
            .start_method(method)
            .start(start_grandchild, false)
            .await
            .unwrap();
        let refused = child.join().await.expect("ran").unwrap_err();
        assert!(
            refused.contains("daemonic processes are not allowed to have children"),
            "{refused}"
        );

        // A non-daemon may (where the child can run Tokio's I/O).
        if method != StartMethod::Fork {
            let child = Process::builder()
                .start_method(method)
                .start(start_grandchild, true)
                .await
                .unwrap();
            assert_eq!(child.join().await.expect("ran"), Ok(2), "{method:?}");
        }
    }
}

/// The helper parent for `a_daemon_dies_with_its_parent_and_a_non_daemon_does_not`.
#[tokio::test]
#[ignore = "helper: run by another test as a separate process"]
async fn helper_process_parent() {
    if std::env::var_os("PROCPOOL_HELPER_PROCESS_PARENT").is_none() {
        return;
    }
    let method = support::start_method();
    let daemon = Process::builder()
        .daemon(true)
        .start_method(method)
        .start(sleep_ms, 60_000)
        .await
        .unwrap();
    let other = Process::builder()
        .daemon(false)
        .start_method(method)
        .start(sleep_ms, 60_000)
        .await
        .unwrap();
    println!("PIDS {} {}", daemon.pid(), other.pid());
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[test]
fn a_daemon_dies_with_its_parent_and_a_non_daemon_does_not() {
    // The helper's orphans come to us, and we reap them.
    support::become_subreaper();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_process_parent",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROCPOOL_HELPER_PROCESS_PARENT", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("PIDS "))
        .expect("the helper reports its children");
    // libtest may print "test helper_process_parent ... " on the same line first.
    let pids: Vec<u32> = line[line.find("PIDS ").unwrap() + 5..]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (daemon, other) = (pids[0], pids[1]);
    // The helper's fork server too: every descendant is reaped at the end.
    let family = support::descendants(helper.id());
    assert!(support::is_running(daemon) && support::is_running(other));
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert!(
        support::eventually(Duration::from_secs(2), || !support::is_running(daemon)),
        "the daemon died with its parent"
    );
    assert!(
        support::is_running(other),
        "the non-daemon outlives its parent"
    );
    // Clean up the survivor, by its pid, and reap both.
    let _ = Command::new("kill")
        .args(["-9", &other.to_string()])
        .status();
    for pid in family {
        assert!(support::reap_orphan(pid, BOUND), "{pid} left behind");
    }
}
