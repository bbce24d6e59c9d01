#![cfg(target_os = "linux")]
//! Workers, fork servers and `Process` children are named, so that `ps`, `top` and
//! `pgrep` tell them apart from the service and from each other: the command name
//! (`/proc/PID/comm`) under every start method, and `argv[0]` (`/proc/PID/cmdline`)
//! with the pool's name wherever the child has a command line of its own (`Spawn`,
//! the fork server and its workers).
procpool::enable_test_support!();
mod support;

use std::time::Duration;

use procpool::{Process, StartMethod};

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// The command line's words (the area may end in padding NULs).
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

fn pause_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Whether the start method gives a child a command line of its own.
fn has_own_cmdline() -> bool {
    support::start_method() != StartMethod::Fork
}

#[tokio::test]
async fn workers_and_the_fork_server_are_named_with_the_pool() {
    let pool = support::builder()
        .processes(2)
        .name("names-test")
        .build()
        .await
        .expect("builds");
    let workers = support::worker_pids(&pool);
    assert_eq!(workers.len(), 2);
    for &pid in &workers {
        assert_eq!(comm(pid), "procpool-worker", "worker {pid}");
        if has_own_cmdline() {
            assert_eq!(
                cmdline(pid),
                ["procpool-worker[names-test]"],
                "worker {pid}"
            );
        }
    }
    match support::start_method() {
        StartMethod::ForkServer => {
            let server = pool.stats().forkserver_pid.expect("a server runs");
            assert_eq!(comm(server), "procpool-server");
            assert_eq!(cmdline(server), ["procpool-forkserver[names-test]"]);
        }
        _ => assert_eq!(pool.stats().forkserver_pid, None),
    }
    // This process keeps its own name.
    assert_ne!(comm(std::process::id()), "procpool-worker");
    pool.terminate().await;

    // Without a name: the role alone.
    let pool = support::builder()
        .processes(1)
        .build()
        .await
        .expect("builds");
    let pid = support::worker_pids(&pool)[0];
    assert_eq!(comm(pid), "procpool-worker");
    if has_own_cmdline() {
        assert_eq!(cmdline(pid), ["procpool-worker"]);
    }
    if let Some(server) = pool.stats().forkserver_pid {
        assert_eq!(cmdline(server), ["procpool-forkserver"]);
    }
    pool.terminate().await;
}

#[tokio::test]
async fn a_replacement_worker_is_named_too() {
    let pool = support::builder()
        .processes(1)
        .max_tasks_per_child(1)
        .name("recycled")
        .build()
        .await
        .expect("builds");
    let first = pool.apply(pause_ms, 1).await.expect("runs");
    let second = pool.apply(pause_ms, 1).await.expect("runs");
    assert_ne!(first, second, "the worker was recycled");
    // (The replacement of the second worker may still be starting.)
    let listed = tokio::time::timeout(Duration::from_secs(10), async {
        while support::worker_pids(&pool).len() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(listed.await.is_ok(), "no replacement worker");
    let pid = support::worker_pids(&pool)[0];
    assert_eq!(comm(pid), "procpool-worker");
    if has_own_cmdline() {
        assert_eq!(cmdline(pid), ["procpool-worker[recycled]"]);
    }
    pool.terminate().await;
}

#[tokio::test]
async fn a_process_is_named_with_its_name() {
    let child = Process::builder()
        .start_method(support::start_method())
        .name("job")
        .daemon(true)
        .start(pause_ms, 500)
        .await
        .expect("starts");
    let pid = child.pid();
    assert_eq!(comm(pid), "procpool-proc");
    if has_own_cmdline() {
        assert_eq!(cmdline(pid), ["procpool-process[job]"]);
    }
    let joined = tokio::time::timeout(Duration::from_secs(30), child.join())
        .await
        .expect("bounded");
    assert_eq!(joined, Ok(pid));
}
