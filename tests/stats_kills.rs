#![cfg(target_os = "linux")]
//! `stats()` tells apart the workers the pool killed (on a task's timeout, on an abort)
//! from the workers that crashed by themselves.

procpool::enable_test_support!();

mod support;

use std::time::Duration;

use procpool::{PoolStats, TaskError};
use support::*;

/// The three loss counters, in the order crashed, killed on a timeout, killed on an
/// abort.
fn losses(s: &PoolStats) -> (u64, u64, u64) {
    (
        s.workers_crashed,
        s.workers_killed_on_timeout,
        s.workers_killed_on_abort,
    )
}

/// Waits until the pool has its one worker again, and returns the stats then.
async fn replaced(pool: &procpool::Pool, old: u32) -> PoolStats {
    assert!(
        wait_until(BOUND, || {
            let s = pool.stats();
            s.workers.len() == 1 && s.workers[0].pid != old
        })
        .await,
        "worker {old} was not replaced: {:?}",
        pool.stats()
    );
    assert_all_gone(&[old]).await;
    pool.stats()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_counts_as_a_kill_on_timeout_not_a_crash() {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let pid = support::worker_pids(&pool)[0];
    let after = Duration::from_millis(300);
    let err = within("timed out", pool.apply(sleep_forever, ()).timeout(after))
        .await
        .expect_err("it sleeps past its timeout");
    assert_eq!(err, TaskError::TimedOut { pid, after });
    let stats = replaced(&pool, pid).await;
    assert_eq!(losses(&stats), (0, 1, 0), "{stats:?}");
    assert_eq!(stats.timed_out, 1, "{stats:?}");
    assert_eq!(stats.workers_started, 2, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_counts_as_a_kill_on_abort_not_a_crash() {
    let scratch = Scratch::new("stats-abort");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let pid = support::worker_pids(&pool)[0];
    let running = pool.apply_async(start_then_sleep, scratch.path("started"));
    scratch.wait_for("started").await;
    running.abort();
    assert_eq!(within("aborted", running).await, Err(TaskError::Cancelled));
    let stats = replaced(&pool, pid).await;
    assert_eq!(losses(&stats), (0, 0, 1), "{stats:?}");
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_aborts_its_process_counts_as_a_crash() {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let pid = support::worker_pids(&pool)[0];
    let err = within("abort", pool.apply(abort, ()))
        .await
        .expect_err("the worker aborts");
    assert!(err.is_worker_died(), "{err:?}");
    let stats = replaced(&pool, pid).await;
    assert_eq!(losses(&stats), (1, 0, 0), "{stats:?}");
    assert_eq!(stats.failed, 1, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

/// All three on one pool: each loss lands in its own counter, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_loss_is_counted_once_in_its_own_counter() {
    let scratch = Scratch::new("stats-all");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let first = support::worker_pids(&pool)[0];
    let err = within(
        "timed out",
        pool.apply(sleep_forever, ())
            .timeout(Duration::from_millis(200)),
    )
    .await
    .expect_err("timeout");
    assert!(err.is_timeout(), "{err:?}");
    let second = replaced(&pool, first).await.workers[0].pid;
    let running = pool.apply_async(start_then_sleep, scratch.path("started"));
    scratch.wait_for("started").await;
    running.abort();
    assert_eq!(within("aborted", running).await, Err(TaskError::Cancelled));
    let third = replaced(&pool, second).await.workers[0].pid;
    let err = within("abort", pool.apply(abort, ()))
        .await
        .expect_err("dies");
    assert!(err.is_worker_died(), "{err:?}");
    let stats = replaced(&pool, third).await;
    assert_eq!(losses(&stats), (1, 1, 1), "{stats:?}");
    assert_eq!(stats.workers_started, 4, "{stats:?}");
    within("terminate", pool.terminate()).await;
}
