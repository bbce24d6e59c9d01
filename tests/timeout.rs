#![cfg(target_os = "linux")]
//! Timeouts: a pool-wide default and a per-call timeout; on expiry the worker is killed
//! (SIGKILL, after an optional SIGTERM grace period) and replaced, and the task fails
//! with `TimedOut`.

procpool::enable_test_support!();

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use procpool::TaskError;
use support::*;

const QUICK: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_timeout_kills_and_replaces_the_worker() {
    let after = Duration::from_millis(500);
    let pool = within(
        "build",
        support::builder().processes(1).task_timeout(after).build(),
    )
    .await
    .expect("pool builds");
    let first = support::worker_pids(&pool)[0];
    let stuck = pool.apply_async(sleep_forever, ());
    // Queued and pipelined behind the stuck task; their own timeout is generous so that
    // only the stuck one can time out.
    let behind: Vec<_> = (0..5u64)
        .map(|x| pool.apply(double_with_pid, x).timeout(QUICK).spawn())
        .collect();

    let err = within("stuck task", stuck)
        .await
        .expect_err("it never ends");
    assert_eq!(err, TaskError::TimedOut { pid: first, after });
    assert!(err.is_timeout() && !err.is_worker_died());
    assert_eq!(err.pid(), Some(first));
    assert!(err.to_string().contains(&first.to_string()), "{err}");

    for (x, h) in behind.into_iter().enumerate() {
        let (y, pid) = within("task behind", h)
            .await
            .unwrap_or_else(|e| panic!("task {x} behind the timeout failed: {e}"));
        assert_eq!(y, 2 * x as u64);
        assert_ne!(pid, first, "the timed-out worker cannot have run task {x}");
    }
    assert!(
        all_gone(vec![first], BOUND).await,
        "the timed-out worker {first} is still there: {:?}",
        support::proc_state(first)
    );
    let stats = pool.stats();
    assert_eq!(stats.timed_out, 1, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.workers_killed_on_timeout, 1, "{stats:?}");
    assert_eq!(
        stats.failed, 0,
        "a timeout is not counted as a failure: {stats:?}"
    );
    assert_eq!(stats.completed, 5, "{stats:?}");
    assert_eq!(stats.workers_started, 2, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_timeout() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let before = support::worker_pids(&pool);
    let after = Duration::from_millis(300);
    let err = within("timed call", pool.apply(sleep_forever, ()).timeout(after))
        .await
        .expect_err("it never ends");
    let pid = match err {
        TaskError::TimedOut { pid, after: a } => {
            assert_eq!(a, after);
            pid
        }
        other => panic!("expected TimedOut, got {other:?}"),
    };
    assert!(before.contains(&pid), "{pid} {before:?}");
    assert!(all_gone(vec![pid], BOUND).await);
    let p = pool.clone();
    assert!(
        wait_until(BOUND, move || {
            let live = support::worker_pids(&p);
            live.len() == 2 && !live.contains(&pid)
        })
        .await
    );
    // Calls without a timeout are not affected.
    assert_eq!(
        within("plain", pool.apply(pid_after_sleep, 400))
            .await
            .map(|_| ()),
        Ok(())
    );
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_timeout_overrides_the_pool_timeout() {
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .task_timeout(Duration::from_millis(200))
            .build(),
    )
    .await
    .expect("pool builds");
    let pid = within(
        "longer than the pool's timeout",
        pool.apply(pid_after_sleep, 1000).timeout(QUICK),
    )
    .await
    .expect("the call's own timeout applies, not the pool's");
    // And the pool's own applies to calls that set none.
    let err = within("pool timeout", pool.apply(pid_after_sleep, 10_000))
        .await
        .expect_err("the pool's timeout applies");
    assert_eq!(
        err,
        TaskError::TimedOut {
            pid,
            after: Duration::from_millis(200)
        }
    );
    within("terminate", pool.terminate()).await;
}

/// The clock starts when a worker starts the task, not when it is submitted or
/// pipelined: four one-second tasks queued on one worker all fit a three-second
/// timeout, though the last ends four seconds after submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_counts_from_the_start_of_the_task() {
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .task_timeout(Duration::from_secs(3))
            .build(),
    )
    .await
    .expect("pool builds");
    let submitted = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| pool.apply_async(pid_after_sleep, 1000))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        within("queued sleeper", h)
            .await
            .unwrap_or_else(|e| panic!("task {i} failed: {e}"));
    }
    assert!(submitted.elapsed() >= Duration::from_secs(4));
    assert_eq!(pool.stats().timed_out, 0);
    within("terminate", pool.terminate()).await;
}

/// With a kill grace, the worker gets SIGTERM first; a task that does not handle it
/// dies of it, and the timeout resolves without waiting out the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_with_kill_grace_ends_on_sigterm() {
    let grace = Duration::from_secs(25);
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .task_timeout(Duration::from_millis(300))
            .kill_grace(grace)
            .build(),
    )
    .await
    .expect("pool builds");
    let pid = support::worker_pids(&pool)[0];
    let started = Instant::now();
    let err = within("timeout with grace", pool.apply(sleep_forever, ()))
        .await
        .expect_err("it never ends");
    assert!(
        started.elapsed() < grace,
        "SIGTERM should have ended the worker before the grace period ran out"
    );
    assert_eq!(
        err,
        TaskError::TimedOut {
            pid,
            after: Duration::from_millis(300)
        }
    );
    assert!(all_gone(vec![pid], BOUND).await);
    assert_ne!(
        within("after", pool.apply(whoami, ()).timeout(QUICK))
            .await
            .expect("serves"),
        pid
    );
    within("terminate", pool.terminate()).await;
}

/// Catches SIGTERM (through a Tokio signal handler, which replaces the default action),
/// records that it did in `dir/got-sigterm`, and goes on sleeping.
fn survive_sigterm(dir: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime in the task");
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        std::fs::write(format!("{dir}/armed"), b"").expect("marker");
        term.recv().await;
        std::fs::write(format!("{dir}/got-sigterm"), b"").expect("marker");
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}

/// A task that survives SIGTERM is killed when the grace period ends, and the timeout
/// still resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_with_kill_grace_escalates_to_sigkill() {
    if support::start_method() == procpool::StartMethod::Fork {
        // A forked worker cannot build a Tokio runtime with I/O (StartMethod::Fork's
        // docs), and this test has no other way to handle SIGTERM in a task.
        eprintln!("skipped under StartMethod::Fork");
        return;
    }
    let scratch = Scratch::new("kill-grace");
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .kill_grace(Duration::from_secs(1))
            .build(),
    )
    .await
    .expect("pool builds");
    let pid = support::worker_pids(&pool)[0];
    // The timeout leaves the task ample time to install its handler first.
    let after = Duration::from_secs(3);
    let err = within(
        "timeout with grace",
        pool.apply(survive_sigterm, scratch.dir()).timeout(after),
    )
    .await
    .expect_err("it never ends");
    assert_eq!(err, TaskError::TimedOut { pid, after });
    assert!(
        scratch.exists("armed"),
        "the task did not get to install its handler"
    );
    assert!(
        scratch.exists("got-sigterm"),
        "with a kill grace the worker gets SIGTERM before SIGKILL"
    );
    assert!(all_gone(vec![pid], BOUND).await, "SIGKILL after the grace");
    assert_ne!(
        within("after", pool.apply(whoami, ()))
            .await
            .expect("serves"),
        pid
    );
    within("terminate", pool.terminate()).await;
}

fn sleep_on_five(x: u64) -> u64 {
    if x == 5 {
        sleep_forever(());
    }
    // Long enough that the worker does not hold this reply back to batch it with the
    // next one: that is the bug `a_hanging_task_does_not_hold_back_earlier_results`
    // shows; this test is about the stream.
    std::thread::sleep(Duration::from_millis(2));
    x + 100
}

/// In a stream of one-task chunks with a timeout, only the stuck item times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_timeout_fails_only_the_stuck_item() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let results: Vec<_> = within(
        "imap",
        pool.imap(sleep_on_five, 0..12u64)
            .chunk_size(1)
            .timeout(Duration::from_secs(2))
            .collect::<Vec<_>>(),
    )
    .await;
    for (x, r) in results.into_iter().enumerate() {
        if x == 5 {
            assert!(
                matches!(r, Err(TaskError::TimedOut { after, .. }) if after == Duration::from_secs(2)),
                "item 5: {r:?}"
            );
        } else {
            assert_eq!(r, Ok(x as u64 + 100), "item {x}");
        }
    }
    assert_eq!(pool.stats().timed_out, 1);
    within("terminate", pool.terminate()).await;
}

/// A task that runs for a long time (here: until the test releases it) holds up only
/// itself: a quick task submitted while another worker is idle completes meanwhile.
///
/// What happens instead: a driver takes jobs ahead of its worker's need (up to two
/// while it has not yet measured how long its jobs take), and `Queue::push` wakes the
/// driver that registered last, which is usually the one that just took the long task.
/// The quick job then waits behind the long task while the other worker idles, with no
/// way back to the queue short of a crash; behind a task that never ends and has no
/// timeout, it waits forever. Whether a given round hits it depends on wake-up order,
/// so the test tries up to twenty fresh pools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_task_does_not_hold_up_work_while_a_worker_idles() {
    for round in 0..20 {
        let scratch = Scratch::new("head-of-line");
        let pool = within("build", support::builder().processes(2).build())
            .await
            .expect("pool builds");
        let long = pool.apply_async(block_until, (scratch.path("started"), scratch.path("go")));
        scratch.wait_for("started").await;
        let quick = tokio::time::timeout(Duration::from_secs(3), pool.apply(double, round)).await;
        scratch.touch("go");
        within("long", long).await.expect("long task ends");
        within("terminate", pool.terminate()).await;
        match quick {
            Ok(r) => assert_eq!(r, Ok(2 * round)),
            Err(_) => panic!(
                "round {round}: a quick task waited behind the long task while a worker was idle"
            ),
        }
    }
}

/// Returns `k` at once, or never returns for `k == 0`.
fn value_or_hang(k: u64) -> u64 {
    if k == 0 {
        sleep_forever(());
    }
    k
}

/// A task that hangs does not hold back the results of the tasks before it, and its
/// own timeout fires.
///
/// What happens instead (since df2563b, "batched replies"): the worker holds back the
/// reply of a job that took under 50 us when the next job, already buffered, runs the
/// same function, and writes it only before it blocks reading. When that next job
/// never ends, the reply is never written, and the driver still takes the finished job
/// for the running one: the deadline it runs is the finished job's. With a timeout on
/// every task (here), the finished task is reported `TimedOut` and the hanging one
/// times out only later, on a new worker; with a timeout on the hanging task alone,
/// no deadline is armed and both callers wait forever. Whether a round hits it depends
/// on how the frames arrive, so the test runs up to ten rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_task_does_not_hold_back_earlier_results() {
    use futures::StreamExt;
    let after = Duration::from_millis(500);
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    for round in 0..10 {
        let results: Vec<_> = within(
            "imap",
            pool.imap(value_or_hang, vec![1u64, 2, 3, 0])
                .chunk_size(1)
                .timeout(after)
                .collect::<Vec<_>>(),
        )
        .await;
        for (i, r) in results[..3].iter().enumerate() {
            assert_eq!(
                r,
                &Ok(i as u64 + 1),
                "round {round}: task {} finished, but its result was held back",
                i + 1
            );
        }
        assert!(
            matches!(results[3], Err(TaskError::TimedOut { after: a, .. }) if a == after),
            "round {round}: the hanging task: {:?}",
            results[3]
        );
    }
    within("terminate", pool.terminate()).await;
}
