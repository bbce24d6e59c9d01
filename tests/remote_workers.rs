#![cfg(target_os = "linux")]
//! Workers started by a launcher (issue 14), through the real code path of a remote
//! worker: a launcher process, a keeper at the other end of its stdin and stdout, and
//! the worker the keeper forks. Here the launcher is a local command prefix (`sh -c
//! '"$@"' sh`, which runs the keeper as its child, as `ssh` and `srun` do at the other
//! end of their link), so that the suite runs on any machine; `remote_cluster.rs` runs
//! the same through a real sshd and a real Slurm.

procpool::enable_test_support!();

mod support;

use std::time::Duration;

use procpool::{Launcher, Pool, TaskError, WorkerExit};
use support::*;

/// A launcher that stays a process of its own between the pool and the keeper.
fn local_launcher() -> Launcher {
    Launcher::command(["sh", "-c", "\"$@\"; exit $?", "sh"])
}

async fn remote_pool(n: usize) -> Pool {
    within(
        "build",
        support::builder()
            .processes(0)
            .remote(local_launcher(), n)
            .heartbeat(Duration::from_millis(600))
            .build(),
    )
    .await
    .expect("pool builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_workers_run_map_and_report_their_host() {
    let pool = remote_pool(2).await;
    let got: Vec<u64> = within("map", pool.map(square, 0..200u64))
        .await
        .expect("map");
    assert_eq!(got, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    let stats = pool.stats();
    assert_eq!(stats.workers.len(), 2, "{stats:?}");
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    for w in &stats.workers {
        assert_eq!(w.host.as_deref(), Some(host.as_str()), "{w:?}");
        // The pid is the worker's, not its launcher's or keeper's.
        assert_eq!(comm(w.pid).as_deref(), Some("procpool-worker"), "{w:?}");
    }
    let pids = worker_pids(&pool);
    within("join", async {
        pool.close();
        pool.join().await
    })
    .await;
    assert_all_gone(&pids).await;
}

/// Local and remote workers in one pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_remote_workers_mix() {
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .remote(local_launcher(), 1)
            .build(),
    )
    .await
    .expect("pool builds");
    assert_eq!(pool.processes(), 2);
    let stats = pool.stats();
    assert_eq!(stats.workers.iter().filter(|w| w.host.is_some()).count(), 1);
    let got: Vec<(u64, u32)> = within("map", pool.map(double_with_pid, 0..400u64).chunk_size(1))
        .await
        .expect("map");
    assert!(got.iter().enumerate().all(|(i, (d, _))| *d == 2 * i as u64));
    let pids = worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert_all_gone(&pids).await;
}

/// A crash fails only its task, with the remote pid and the signal, and the slot
/// gets a new worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_crash_fails_only_its_task_with_the_remote_pid_and_signal() {
    let pool = remote_pool(1).await;
    let before = worker_pids(&pool);
    let err = within("abort", pool.apply(abort, ()))
        .await
        .expect_err("aborts");
    match err {
        TaskError::WorkerDied { pid, exit } => {
            assert_eq!(pid, before[0]);
            assert_eq!(exit, WorkerExit::Signal(libc::SIGABRT));
        }
        other => panic!("{other:?}"),
    }
    let err = within("exit", pool.apply(exit_with, 7))
        .await
        .expect_err("exits");
    assert!(
        matches!(
            err,
            TaskError::WorkerDied {
                exit: WorkerExit::Code(7),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(within("after", pool.apply(double, 21)).await, Ok(42));
    let pids = worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert_all_gone(&[before, pids].concat()).await;
}

/// A timeout kills the remote worker (its keeper kills it when the pool kills the
/// launcher).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_remote_worker() {
    let pool = remote_pool(1).await;
    let before = worker_pids(&pool);
    let err = within(
        "timeout",
        pool.apply(sleep_ms, 60_000)
            .timeout(Duration::from_millis(300)),
    )
    .await
    .expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");
    assert_all_gone(&before).await;
    assert_eq!(within("after", pool.apply(double, 2)).await, Ok(4));
    within("terminate", pool.terminate()).await;
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}
