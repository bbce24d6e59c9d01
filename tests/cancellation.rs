#![cfg(target_os = "linux")]
//! Cancellation: dropping the future of a task that has not started removes it from
//! the queue; `abort()` on a running task kills its worker, which is replaced.

procpool::enable_test_support!();

mod support;

use std::time::Duration;

use procpool::{Pool, TaskError};
use support::*;

/// A pool of one whose worker is busy with a task that waits for `go`.
async fn busy_pool(scratch: &Scratch) -> (Pool, procpool::TaskHandle<u32>) {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let busy = pool.apply_async(block_until, (scratch.path("started"), scratch.path("go")));
    scratch.wait_for("started").await;
    (pool, busy)
}

/// A pool of one whose worker has run short tasks (so it is known for short jobs, which
/// it would take ahead) and now runs one that waits for `go` and has run for 20 ms.
async fn warm_pool_busy_long(scratch: &Scratch) -> (Pool, procpool::TaskHandle<u32>) {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    for _ in 0..20 {
        within("warm", pool.apply(whoami, ())).await.expect("warm");
    }
    let busy = pool.apply_async(block_until, (scratch.path("started"), scratch.path("go")));
    scratch.wait_for("started").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    (pool, busy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_queued_task_removes_it() {
    let scratch = Scratch::new("drop-queued");
    let (pool, busy) = busy_pool(&scratch).await;
    // No job is sent ahead to a worker whose running job is long (or of unknown
    // length): `b`, `c` and `d` wait in the queue.
    let b = pool.apply_async(touch, scratch.path("b"));
    let c = pool.apply_async(touch, scratch.path("c"));
    let d = pool.apply_async(touch, scratch.path("d"));
    let p = pool.clone();
    assert!(wait_until(BOUND, move || p.stats().queued == 3).await);
    drop(c);
    scratch.touch("go");
    within("busy", busy).await.expect("busy task ends");
    within("b", b).await.expect("b runs");
    within("d", d).await.expect("d runs");
    // Whatever was queued before now has run: c never will.
    within("after", pool.apply(whoami, ()))
        .await
        .expect("serves");
    assert!(
        !scratch.exists("c"),
        "a dropped task that had not started ran"
    );
    assert!(scratch.exists("b") && scratch.exists("d"));
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.completed, 4, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

/// Dropping an awaiting `Apply` (here: when an outer timeout gives up on it) while its
/// task waits in the queue removes the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_on_a_queued_apply_removes_it() {
    let scratch = Scratch::new("drop-apply");
    let (pool, busy) = busy_pool(&scratch).await;
    let b = pool.apply_async(touch, scratch.path("b"));
    let gave_up = tokio::time::timeout(
        Duration::from_millis(200),
        pool.apply(touch, scratch.path("c")),
    )
    .await;
    assert!(gave_up.is_err(), "c cannot run while the worker is busy");
    scratch.touch("go");
    within("busy", busy).await.expect("busy task ends");
    within("b", b).await.expect("b runs");
    within("after", pool.apply(whoami, ()))
        .await
        .expect("serves");
    assert!(
        !scratch.exists("c"),
        "an abandoned task that had not started ran"
    );
    assert_eq!(pool.stats().cancelled, 1);
    within("terminate", pool.terminate()).await;
}

/// An `Apply` dropped before it is awaited submits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_never_awaited_submits_nothing() {
    let scratch = Scratch::new("never-awaited");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let apply = pool.apply(touch, scratch.path("x"));
    drop(apply);
    within("after", pool.apply(whoami, ()))
        .await
        .expect("serves");
    assert!(!scratch.exists("x"));
    assert_eq!(pool.stats().submitted, 1);
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_kills_the_worker_of_a_running_task() {
    let scratch = Scratch::new("abort-running");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let pid = support::worker_pids(&pool)[0];
    let mut running = pool.apply_async(start_then_sleep, scratch.path("started"));
    scratch.wait_for("started").await;
    // Awaiting `&mut handle` is cancel safe: the task goes on.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut running)
            .await
            .is_err()
    );
    running.abort();
    let err = within("aborted task", running)
        .await
        .expect_err("an aborted task fails");
    assert_eq!(err, TaskError::Cancelled);
    assert!(err.is_cancelled());
    assert!(
        all_gone(vec![pid], BOUND).await,
        "the aborted task's worker {pid} is still there: {:?}",
        support::proc_state(pid)
    );
    let served_by = within("after", pool.apply(whoami, ()))
        .await
        .expect("the pool keeps serving");
    assert_ne!(served_by, pid);
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.workers_started, 2, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

/// Aborting the running task of a worker that has another job pipelined: the other job
/// is re-queued and runs on the replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_requeues_the_job_pipelined_behind() {
    let scratch = Scratch::new("abort-requeue");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let pid = support::worker_pids(&pool)[0];
    let running = pool.apply_async(start_then_sleep, scratch.path("started"));
    let behind = pool.apply_async(touch, scratch.path("behind"));
    scratch.wait_for("started").await;
    running.abort();
    assert_eq!(within("aborted", running).await, Err(TaskError::Cancelled));
    let ran_on = within("behind", behind)
        .await
        .expect("the pipelined job is re-queued, not failed");
    assert_ne!(ran_on, pid);
    assert!(scratch.exists("behind"));
    within("terminate", pool.terminate()).await;
}

/// `abort()` on a task still in the queue: it resolves to `Cancelled` without waiting
/// for the busy worker, and never runs.
///
/// What happens instead: `abort()` only sets a flag. A queued job's flag is looked at
/// when a driver pops the queue (`Queue::poll_pop` skips abandoned jobs), and a driver
/// with a full pipeline does not pop: the handle stays pending until the worker is
/// free (here: forever, were the test not to release it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_of_a_queued_task_resolves_at_once() {
    let scratch = Scratch::new("abort-queued");
    let (pool, busy) = busy_pool(&scratch).await;
    let b = pool.apply_async(touch, scratch.path("b"));
    let c = pool.apply_async(touch, scratch.path("c"));
    c.abort();
    let resolved = tokio::time::timeout(Duration::from_secs(10), c).await;
    scratch.touch("go");
    within("busy", busy).await.expect("busy task ends");
    within("b", b).await.expect("b runs");
    assert_eq!(
        resolved.ok(),
        Some(Err(TaskError::Cancelled)),
        "the aborted queued task should resolve while the worker is still busy"
    );
    assert!(!scratch.exists("c"));
    within("terminate", pool.terminate()).await;
}

/// Dropping the handle of a task that has not started yet removes it: it never runs
/// (TaskHandle's documented cancel safety), even when its worker had been running
/// short tasks (which it takes ahead) before the long one: a worker whose running job
/// has gone on for milliseconds takes no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_task_behind_a_long_one_removes_it() {
    let scratch = Scratch::new("drop-pipelined");
    let (pool, busy) = warm_pool_busy_long(&scratch).await;
    let b = pool.apply_async(touch, scratch.path("b"));
    let p = pool.clone();
    // `b` waits in the queue, not behind the running task in the worker.
    assert!(wait_until(BOUND, move || p.stats().queued == 1).await);
    drop(b);
    scratch.touch("go");
    within("busy", busy).await.expect("busy task ends");
    within("after", pool.apply(whoami, ()))
        .await
        .expect("serves");
    assert!(
        !scratch.exists("b"),
        "a task whose handle was dropped before it started ran anyway"
    );
    within("terminate", pool.terminate()).await;
}

/// `abort()` on a task waiting behind a long running one on a worker known for short
/// tasks: it resolves to `Cancelled` without waiting for the running task, never runs,
/// and does not cost the running task its worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_of_a_task_behind_a_long_one_resolves_at_once() {
    let scratch = Scratch::new("abort-pipelined");
    let (pool, busy) = warm_pool_busy_long(&scratch).await;
    let worker = support::worker_pids(&pool)[0];
    let b = pool.apply_async(touch, scratch.path("b"));
    let p = pool.clone();
    assert!(wait_until(BOUND, move || p.stats().queued == 1).await);
    b.abort();
    let resolved = tokio::time::timeout(Duration::from_secs(10), b).await;
    scratch.touch("go");
    assert_eq!(
        within("busy", busy).await,
        Ok(worker),
        "the running task completes on its worker"
    );
    assert_eq!(
        resolved.ok(),
        Some(Err(TaskError::Cancelled)),
        "the aborted task should resolve while the running one still runs"
    );
    within("after", pool.apply(whoami, ()))
        .await
        .expect("serves");
    assert!(!scratch.exists("b"));
    assert_eq!(pool.stats().workers_crashed, 0, "{:?}", pool.stats());
    within("terminate", pool.terminate()).await;
}
