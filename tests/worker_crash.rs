#![cfg(target_os = "linux")]
//! Crash isolation: a task that kills its worker fails alone, with the worker's pid and
//! exit status; work behind it is re-queued; the worker is replaced.

procpool::enable_test_support!();

mod support;

use std::collections::HashSet;
use std::time::Duration;

use procpool::{TaskError, WorkerExit};
use support::*;

/// Runs `crash` alone on a pool of two and checks what the issue promises about the
/// error and the worker's replacement. Returns how the worker ended.
async fn crash_alone(crash: fn(()) -> u32, what: &str) -> WorkerExit {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let before = support::worker_pids(&pool);
    assert_eq!(before.len(), 2);

    let err = within(what, pool.apply(crash, ()))
        .await
        .expect_err("a crashing task must fail");
    let (pid, exit) = match err {
        TaskError::WorkerDied { pid, exit } => (pid, exit),
        ref other => panic!("{what}: expected WorkerDied, got {other:?} ({other})"),
    };
    assert!(err.is_worker_died(), "{what}: is_worker_died()");
    assert!(!err.is_timeout() && !err.is_cancelled() && !err.is_panic());
    assert_eq!(err.pid(), Some(pid));
    assert!(
        before.contains(&pid),
        "{what}: the error names pid {pid}, which is not one of the pool's workers {before:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&pid.to_string()) && message.contains(&exit.to_string()),
        "{what}: the message should name the pid and the exit: {message}"
    );

    // The dead worker is reaped and replaced, and the pool keeps serving.
    assert!(
        all_gone(vec![pid], BOUND).await,
        "{what}: crashed worker {pid} still exists ({:?})",
        support::proc_state(pid)
    );
    let p = pool.clone();
    assert!(
        wait_until(BOUND, move || {
            let now = support::worker_pids(&p);
            now.len() == 2 && !now.contains(&pid)
        })
        .await,
        "{what}: the pool should be back to two workers, without {pid}: {:?}",
        pool.stats()
    );
    for _ in 0..4 {
        let served_by = within("after the crash", pool.apply(whoami, ()))
            .await
            .expect("the pool keeps serving after a crash");
        assert_ne!(served_by, pid);
    }
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 1, "{what}: {stats:?}");
    assert_eq!(stats.workers_started, 3, "{what}: {stats:?}");
    assert_eq!(stats.failed, 1, "{what}: {stats:?}");
    assert_eq!(stats.completed, 4, "{what}: {stats:?}");

    let pids = support::worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert!(
        all_gone(pids, BOUND).await,
        "{what}: workers left after terminate"
    );
    exit
}

/// Runs `crash` on a pool of two next to twenty ordinary tasks submitted at once: only
/// the crashing task fails, and whatever was queued or pipelined behind it succeeds.
async fn crash_among_others(crash: fn(()) -> u32, what: &str, expected: WorkerExit) {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let before = support::worker_pids(&pool);
    let crashing = pool.apply_async(crash, ());
    let others: Vec<_> = (0..20u64)
        .map(|x| pool.apply_async(double_with_pid, x))
        .collect();
    let err = within(what, crashing)
        .await
        .expect_err("a crashing task must fail");
    match err {
        TaskError::WorkerDied { pid, exit } => {
            assert!(before.contains(&pid), "{what}: {pid} not in {before:?}");
            assert_eq!(exit, expected, "{what}");
        }
        other => panic!("{what}: expected WorkerDied, got {other:?}"),
    }
    for (x, handle) in others.into_iter().enumerate() {
        let (y, _) = within("ordinary task", handle)
            .await
            .unwrap_or_else(|e| panic!("{what}: task {x} next to the crash failed: {e}"));
        assert_eq!(y, 2 * x as u64);
    }
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 1, "{what}: {stats:?}");
    assert_eq!(stats.failed, 1, "{what}: {stats:?}");
    assert_eq!(stats.completed, 20, "{what}: {stats:?}");
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segfault_fails_only_its_task() {
    let exit = crash_alone(segfault, "segfault").await;
    crash_among_others(segfault, "segfault", exit).await;
    assert_eq!(exit, WorkerExit::Signal(11));
    assert_eq!(exit.signal_name(), Some("SIGSEGV"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_fails_only_its_task() {
    let exit = crash_alone(abort, "abort").await;
    crash_among_others(abort, "abort", exit).await;
    assert_eq!(exit, WorkerExit::Signal(6));
    assert_eq!(exit.signal_name(), Some("SIGABRT"));
}

fn exit_3(_: ()) -> u32 {
    exit_with(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_exit_fails_only_its_task() {
    let exit = crash_alone(exit_3, "exit(3)").await;
    crash_among_others(exit_3, "exit(3)", exit).await;
    assert_eq!(exit, WorkerExit::Code(3));
    assert_eq!(exit.signal_name(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_overflow_fails_only_its_task() {
    let exit = crash_alone(overflow_stack, "stack overflow").await;
    crash_among_others(overflow_stack, "stack overflow", exit).await;
    // Rust's own overflow handler aborts (SIGABRT); without it the kernel's SIGSEGV
    // ends the process. Both are a death by signal.
    assert!(
        matches!(exit, WorkerExit::Signal(11) | WorkerExit::Signal(6)),
        "stack overflow ended the worker with {exit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_fails_only_its_task() {
    let exit = crash_alone(kill_self, "SIGKILL").await;
    crash_among_others(kill_self, "SIGKILL", exit).await;
    assert_eq!(exit, WorkerExit::Signal(9));
    assert_eq!(exit.signal_name(), Some("SIGKILL"));
}

/// A worker killed from outside while it runs a task: the task fails with the pid and
/// SIGKILL, and the pool goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_from_outside_fails_its_task() {
    let scratch = Scratch::new("outside-kill");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let pid = support::worker_pids(&pool)[0];
    let running = pool.apply_async(start_then_sleep, scratch.path("started"));
    scratch.wait_for("started").await;
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let err = within("killed task", running)
        .await
        .expect_err("the task's worker was killed");
    assert_eq!(
        err,
        TaskError::WorkerDied {
            pid,
            exit: WorkerExit::Signal(9)
        }
    );
    let served_by = within("after the kill", pool.apply(whoami, ()))
        .await
        .expect("the pool keeps serving");
    assert_ne!(served_by, pid);
    assert!(all_gone(vec![pid], BOUND).await);
    within("terminate", pool.terminate()).await;
}

/// On a pool of one, the tasks queued and pipelined behind a crashing task are not
/// failed with it: they are re-queued and run on the replacement worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_behind_a_crash_is_requeued() {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let first = support::worker_pids(&pool)[0];
    let crashing = pool.apply_async(abort, ());
    let behind: Vec<_> = (0..30u64)
        .map(|x| pool.apply_async(double_with_pid, x))
        .collect();

    let err = within("crash", crashing).await.expect_err("abort fails");
    assert!(
        err == TaskError::WorkerDied {
            pid: first,
            exit: WorkerExit::Signal(6)
        },
        "expected WorkerDied for {first}, got {err:?}"
    );
    for (x, handle) in behind.into_iter().enumerate() {
        let (y, pid) = within("queued task", handle)
            .await
            .unwrap_or_else(|e| panic!("task {x} queued behind the crash failed: {e}"));
        assert_eq!(y, 2 * x as u64);
        assert_ne!(
            pid, first,
            "task {x} cannot have run on the worker that died"
        );
    }
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 1, "{stats:?}");
    assert_eq!(stats.failed, 1, "{stats:?}");
    assert_eq!(stats.completed, 30, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

/// Several crashes in a row on a pool of one: each is reported with its own pid, and
/// each replacement serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_crashes_each_get_a_fresh_worker() {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let mut dead = HashSet::new();
    for round in 0..5 {
        let live = support::worker_pids(&pool);
        let err = within("crash", pool.apply(exit_with, 40 + round))
            .await
            .expect_err("exit fails the task");
        let pid = match err {
            TaskError::WorkerDied { pid, exit } => {
                assert_eq!(exit, WorkerExit::Code(40 + round));
                pid
            }
            other => panic!("expected WorkerDied, got {other:?}"),
        };
        assert!(
            live.is_empty() || live == [pid],
            "the error names {pid}, the pool had {live:?}"
        );
        assert!(dead.insert(pid), "pid {pid} reported twice");
        let served_by = within("after crash", pool.apply(whoami, ()))
            .await
            .expect("serves after crash");
        assert!(!dead.contains(&served_by));
    }
    assert_eq!(pool.stats().workers_crashed, 5);
    assert!(all_gone(dead.into_iter().collect(), BOUND).await);
    within("terminate", pool.terminate()).await;
}

fn exit_on_seven(x: u64) -> u64 {
    if x == 7 {
        std::process::exit(7);
    }
    // Long enough that the worker does not hold this reply back to batch it with the
    // next one: that is the bug `a_crash_does_not_take_the_previous_result_with_it`
    // shows; this test is about the stream.
    std::thread::sleep(Duration::from_millis(2));
    x * 2
}

/// In a stream of one-task chunks, a crash fails only its own item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_imap_fails_only_its_item() {
    use futures::StreamExt;
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let results: Vec<_> = within(
        "imap",
        pool.imap(exit_on_seven, 0..20u64)
            .chunk_size(1)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(results.len(), 20);
    for (x, result) in results.into_iter().enumerate() {
        if x == 7 {
            match result {
                Err(TaskError::WorkerDied { exit, .. }) => assert_eq!(exit, WorkerExit::Code(7)),
                other => panic!("item 7 should fail with WorkerDied, got {other:?}"),
            }
        } else {
            assert_eq!(result, Ok(2 * x as u64), "item {x}");
        }
    }
    within("terminate", pool.terminate()).await;
}

/// Marks that it started, then exits with `code` after a pause, in which the test
/// submits a job that the driver pipelines to this worker: it lies unread in the
/// worker's socket when the worker dies.
fn mark_then_exit((started, code): (String, i32)) -> u32 {
    std::fs::write(&started, b"").expect("marker");
    std::thread::sleep(Duration::from_millis(300));
    std::process::exit(code)
}

/// A worker that dies with a job pipelined to it must still be reported as
/// `WorkerDied` with its pid and exit status.
///
/// What happens instead: closing a Unix socket that holds unread data makes the peer's
/// next read fail with ECONNRESET. The driver polls the socket before the pidfd, gets
/// `Frame(Some(Err(ECONNRESET)))`, and `driver.rs` turns every read error into
/// `TaskError::Protocol("unreadable frame: ...")`, killing a worker that is already
/// dead; the pid and the exit status are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_with_a_pipelined_job_reports_worker_died() {
    let scratch = Scratch::new("reset");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let mut wrong = Vec::new();
    for round in 0..5u64 {
        let pid = support::worker_pids(&pool)[0];
        let started = format!("started-{round}");
        let crashing = pool.apply_async(mark_then_exit, (scratch.path(&started), 9));
        scratch.wait_for(&started).await;
        // Pipelined behind the running task, written while the worker is not reading.
        let behind = pool.apply_async(double, round);
        let err = within("crash", crashing).await.expect_err("exit fails");
        let expected = TaskError::WorkerDied {
            pid,
            exit: WorkerExit::Code(9),
        };
        if err != expected {
            wrong.push(format!("round {round}: expected {expected:?}, got {err:?}"));
        }
        assert_eq!(within("behind", behind).await, Ok(2 * round));
    }
    assert!(
        wrong.is_empty(),
        "{} of 5 crashes misreported:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    within("terminate", pool.terminate()).await;
}

/// Runs `1`, `2`, `3` quickly, and exits the worker on `1000`.
fn value_or_exit(k: u64) -> u64 {
    if k == 1000 {
        std::process::exit(9);
    }
    k
}

/// A crash fails only the crashing task, also when the tasks before it were quick and
/// ran the same function: their results are not lost with the worker.
///
/// What happens instead (since df2563b, "batched replies"): the worker holds back the
/// reply of a job that took under 50 us when the next job, already buffered, runs the
/// same function (`BlockingConn::send_reply`, `batch`), and writes it only before it
/// blocks or once 256 KiB have piled up. When that next job kills the worker, the
/// held reply dies with it: the driver fails the finished job with `WorkerDied` and
/// re-queues the crashing one, which crashes a second worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_does_not_take_the_previous_result_with_it() {
    use futures::StreamExt;
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let mut wrong = Vec::new();
    for round in 0..5 {
        let results: Vec<_> = within(
            "imap",
            pool.imap(value_or_exit, vec![1u64, 2, 3, 1000])
                .chunk_size(1)
                .collect::<Vec<_>>(),
        )
        .await;
        for (i, r) in results[..3].iter().enumerate() {
            if r != &Ok(i as u64 + 1) {
                wrong.push(format!("round {round}, task {}: {r:?}", i + 1));
            }
        }
        match &results[3] {
            Err(TaskError::WorkerDied { exit, .. }) => assert_eq!(*exit, WorkerExit::Code(9)),
            other => panic!("the crashing task: {other:?}"),
        }
    }
    assert!(
        wrong.is_empty(),
        "tasks that ran before a crash lost their results:\n{}",
        wrong.join("\n")
    );
    within("terminate", pool.terminate()).await;
}
