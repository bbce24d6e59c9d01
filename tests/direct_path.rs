#![cfg(target_os = "linux")]
//! The direct path: `pool.apply(f, x).await` on a pool whose idle worker runs tiny
//! tasks is run by the caller itself (it writes the job and polls the reply ring for up
//! to the pool's `spin`), and handed to the worker's driver when the reply does not come
//! in time. Without polling, a caller on a thread of its own (`block_on`'s) sleeps on
//! the reply ring instead, and a caller in a task hands the job it wrote to the driver
//! without waking it (the worker's reply does). Results, counters, timeouts, crashes,
//! panics, large replies, aborts, recycling and `close` must all behave exactly as on
//! the usual path.

procpool::enable_test_support!();

mod support;

use std::collections::{BTreeSet, HashMap};
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use futures::FutureExt;
use procpool::{Apply, Polling, Pool, TaskError, Transport, WorkerExit};
use serde::de::DeserializeOwned;
use support::*;

/// A spin long enough that a tiny task's reply comes within it even on a noisy machine.
const SPIN: Duration = Duration::from_micros(200);

// ---------------------------------------------------------------------------------
// Tasks. They run in worker processes.
// ---------------------------------------------------------------------------------

/// This worker's pid, as cheaply as possible.
fn pid_of(_: ()) -> u32 {
    std::process::id()
}

/// `x + 1`, or a panic for 7.
fn panic_on_seven(x: u64) -> u64 {
    if x == 7 {
        panic!("direct boom {x}");
    }
    x + 1
}

/// Sleeps `ms` milliseconds; returns `3x` and its pid.
fn slow_triple((x, ms): (u64, u64)) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    (x * 3, std::process::id())
}

/// `n` bytes of a pattern the test can check.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// How long its argument is, and the sum of its bytes.
fn len_and_sum(v: Vec<u8>) -> (usize, u64) {
    (v.len(), v.iter().map(|&b| u64::from(b)).sum())
}

// ---------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------

/// A pool of one worker (the machine has two CPUs: below that, the pool polls).
async fn pool_of_one(spin: Option<Duration>) -> Pool {
    let mut b = support::builder().transport(Transport::Local).processes(1);
    if let Some(spin) = spin {
        b = b.spin(spin);
    }
    within("build", b.build()).await.expect("pool builds")
}

/// A pool of one worker that polls nowhere (the default where `processes` = CPUs).
async fn pool_without_polling() -> Pool {
    let b = support::builder()
        .transport(Transport::Local)
        .processes(1)
        .polling(Polling::OFF);
    within("build", b.build()).await.expect("pool builds")
}

/// Awaits `apply` (bounded), and says whether its result was already there when the
/// call was submitted. Only the direct path settles a task within the submission: on
/// the usual path the job is only queued then, and a driver on another thread (or on
/// this one, on a current-thread runtime) has yet to run it.
async fn apply_noting<R>(what: &str, apply: Apply<R>) -> (Result<R, TaskError>, bool)
where
    R: DeserializeOwned + Send + 'static,
{
    let mut handle = apply.into_future();
    match (&mut handle).now_or_never() {
        Some(result) => (result, true),
        None => (within(what, handle).await, false),
    }
}

/// Runs tiny tasks until one is settled directly (so the worker is offered right now),
/// after at least `min` of them. Returns the worker's pid and how many tasks ran.
async fn warm_up(pool: &Pool, min: u64) -> (u32, u64) {
    let mut direct = 0;
    let mut pid = None;
    for i in 0..10_000u64 {
        let (result, was_direct) = apply_noting("warm-up", pool.apply(double_with_pid, i)).await;
        let (y, p) = result.unwrap_or_else(|e| panic!("warm-up task {i} failed: {e}"));
        assert_eq!(y, 2 * i, "warm-up task {i}");
        assert!(pid.is_none_or(|q| q == p), "one worker: {pid:?} then {p}");
        pid = Some(p);
        direct += u64::from(was_direct);
        if was_direct && i + 1 >= min {
            return (p, i + 1);
        }
    }
    panic!(
        "10000 tiny tasks, {direct} of them settled directly, and never the last one: \
         the worker is never offered ({:?})",
        pool.stats()
    );
}

/// Stats after `n` tasks that all succeeded, one job each, on the one worker `pid`.
fn assert_all_done_on_one_worker(stats: &procpool::PoolStats, n: u64, pid: u32) {
    assert_eq!(stats.submitted, n, "{stats:?}");
    assert_eq!(stats.completed, n, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.timed_out, 0, "{stats:?}");
    assert_eq!(stats.cancelled, 0, "{stats:?}");
    assert_eq!(stats.queued, 0, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.workers_started, 1, "{stats:?}");
    assert_eq!(stats.workers.len(), 1, "{stats:?}");
    assert_eq!(stats.workers[0].pid, pid, "{stats:?}");
    assert_eq!(stats.workers[0].tasks, n, "one job per task: {stats:?}");
}

/// Terminates the pool and checks that every worker it had (and `seen`) is gone.
async fn finish(pool: Pool, seen: impl IntoIterator<Item = u32>) {
    let mut pids: BTreeSet<u32> = seen.into_iter().collect();
    pids.extend(support::worker_pids(&pool));
    within("terminate", pool.terminate()).await;
    let pids: Vec<u32> = pids.into_iter().collect();
    let left = pids.clone();
    assert!(
        all_gone(pids, BOUND).await,
        "workers left behind: {:?}",
        left.iter()
            .map(|&p| (p, support::proc_state(p)))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------
// 1. Many sequential tiny applies.
// ---------------------------------------------------------------------------------

async fn many_sequential_applies(spin: Option<Duration>) {
    const CALLS: u64 = 3000;
    let pool = pool_of_one(spin).await;
    let pid = support::worker_pids(&pool)[0];
    let mut direct = 0;
    for i in 0..CALLS {
        let (result, was_direct) = apply_noting("tiny", pool.apply(double_with_pid, i)).await;
        let (y, p) = result.unwrap_or_else(|e| panic!("task {i} failed: {e}"));
        assert_eq!(y, 2 * i, "task {i}: wrong result (out of order?)");
        assert_eq!(p, pid, "task {i} ran on another worker");
        direct += u64::from(was_direct);
    }
    let stats = pool.stats();
    assert_all_done_on_one_worker(&stats, CALLS, pid);
    if spin == Some(SPIN) {
        // With a spin of 200 µs, tiny tasks must be run directly most of the time.
        assert!(
            direct > 0,
            "none of {CALLS} tiny tasks was settled directly: the direct path is unused"
        );
    }
    eprintln!("many_sequential_applies(spin {spin:?}): {direct} of {CALLS} settled directly");
    finish(pool, [pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sequential_applies_multi_thread() {
    many_sequential_applies(Some(SPIN)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sequential_applies_multi_thread_default_spin() {
    many_sequential_applies(None).await;
}

#[tokio::test]
async fn many_sequential_applies_current_thread() {
    many_sequential_applies(Some(SPIN)).await;
}

// ---------------------------------------------------------------------------------
// 2. A timeout on a job handed over by a direct caller.
// ---------------------------------------------------------------------------------

async fn timeout_after_handover(pool: Pool) {
    let (first, warm) = warm_up(&pool, 200).await;

    let after = Duration::from_millis(100);
    let started = Instant::now();
    let err = within(
        "the stuck task",
        pool.apply(pid_after_sleep, 5_000).timeout(after),
    )
    .await
    .expect_err("a task of 5 s with a timeout of 100 ms must time out");
    let took = started.elapsed();
    assert_eq!(err, TaskError::TimedOut { pid: first, after });
    assert!(
        took >= after,
        "timed out after {took:?}, before its timeout {after:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "a timeout of {after:?} took {took:?} to fire (the task sleeps 5 s)"
    );

    let stats = pool.stats();
    assert_eq!(stats.timed_out, 1, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.workers_killed_on_timeout, 1, "{stats:?}");
    assert_eq!(stats.failed, 0, "a timeout is not a failure: {stats:?}");
    assert_eq!(stats.completed, warm, "{stats:?}");

    let second = within("after the timeout", pool.apply(whoami, ()))
        .await
        .expect("the pool serves after a timeout");
    assert_ne!(
        second, first,
        "the timed-out worker must have been replaced"
    );
    assert!(
        all_gone(vec![first], BOUND).await,
        "the timed-out worker {first} is still there: {:?}",
        support::proc_state(first)
    );
    // The replacement is offered in its turn, and a task within its timeout is fine.
    let (third, _) = warm_up(&pool, 50).await;
    assert_eq!(third, second);
    let (x, pid) = within(
        "a task within its timeout",
        pool.apply(slow_triple, (5, 5))
            .timeout(Duration::from_secs(10)),
    )
    .await
    .expect("a 5 ms task with a timeout of 10 s");
    assert_eq!((x, pid), (15, second));
    finish(pool, [first, second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_after_handover_multi_thread() {
    timeout_after_handover(pool_of_one(Some(SPIN)).await).await;
}

/// Without polling, the test's own thread (`block_on`'s) sleeps on the ring instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_after_handover_without_polling() {
    timeout_after_handover(pool_without_polling().await).await;
}

#[tokio::test]
async fn timeout_after_handover_current_thread() {
    timeout_after_handover(pool_of_one(Some(SPIN)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_task_timeout_after_handover() {
    let after = Duration::from_millis(300);
    let pool = within(
        "build",
        support::builder()
            .transport(Transport::Local)
            .processes(1)
            .spin(SPIN)
            .task_timeout(after)
            .build(),
    )
    .await
    .expect("pool builds");
    let (first, _) = warm_up(&pool, 200).await;
    let started = Instant::now();
    let err = within("the stuck task", pool.apply(pid_after_sleep, 5_000))
        .await
        .expect_err("the pool's timeout applies");
    let took = started.elapsed();
    assert_eq!(err, TaskError::TimedOut { pid: first, after });
    assert!(took >= after && took < Duration::from_secs(3), "{took:?}");
    let second = within("after", pool.apply(whoami, ()))
        .await
        .expect("serves");
    assert_ne!(second, first);
    finish(pool, [first, second]).await;
}

// ---------------------------------------------------------------------------------
// 3. A worker that dies under a direct caller.
// ---------------------------------------------------------------------------------

async fn crash_after_handover(pool: Pool) {
    let (first, _) = warm_up(&pool, 200).await;

    let err = within("abort", pool.apply(abort, ()))
        .await
        .expect_err("a task that aborts its worker must fail");
    assert_eq!(
        err,
        TaskError::WorkerDied {
            pid: first,
            exit: WorkerExit::Signal(libc::SIGABRT)
        }
    );
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 1, "{stats:?}");
    assert_eq!(stats.failed, 1, "{stats:?}");

    let second = within("after the abort", pool.apply(whoami, ()))
        .await
        .expect("the pool serves after a crash");
    assert_ne!(second, first);
    assert!(all_gone(vec![first], BOUND).await, "{first} left behind");
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 1, "{stats:?}");
    assert_eq!(stats.workers_started, 2, "{stats:?}");

    // Once more with an exit code, on the replacement once it is offered.
    let (again, _) = warm_up(&pool, 50).await;
    assert_eq!(again, second);
    let err = within("exit", pool.apply(exit_with, 3))
        .await
        .expect_err("a task that exits its worker must fail");
    assert_eq!(
        err,
        TaskError::WorkerDied {
            pid: second,
            exit: WorkerExit::Code(3)
        }
    );
    let third = within("after the exit", pool.apply(whoami, ()))
        .await
        .expect("the pool serves after a second crash");
    assert!(third != first && third != second);
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 2, "{stats:?}");
    assert_eq!(stats.failed, 2, "{stats:?}");
    assert_eq!(stats.submitted, stats.completed + stats.failed, "{stats:?}");
    finish(pool, [first, second, third]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_handover_multi_thread() {
    crash_after_handover(pool_of_one(Some(SPIN)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_handover_without_polling() {
    crash_after_handover(pool_without_polling().await).await;
}

#[tokio::test]
async fn crash_after_handover_current_thread() {
    crash_after_handover(pool_of_one(Some(SPIN)).await).await;
}

// ---------------------------------------------------------------------------------
// 4. Tasks longer than the spin, handed over, interleaved with tiny ones.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longer_tasks_are_handed_over_and_complete() {
    const ROUNDS: u64 = 50;
    // A 5 ms task raises the worker's average; this many tiny ones bring it back under
    // the 20 µs that gets the worker offered again.
    const TINY_PER_ROUND: u64 = 20;
    let pool = pool_of_one(Some(SPIN)).await;
    let (pid, warm) = warm_up(&pool, 200).await;
    let mut offered_before_long = 0;
    let mut n = 0;
    for round in 0..ROUNDS {
        let mut last_direct = false;
        for j in 0..TINY_PER_ROUND {
            let x = round * 1000 + j;
            let (result, was_direct) = apply_noting("tiny", pool.apply(double_with_pid, x)).await;
            assert_eq!(result.expect("tiny task"), (2 * x, pid));
            last_direct = was_direct;
            n += 1;
        }
        offered_before_long += u64::from(last_direct);
        let apply = pool.apply(slow_triple, (round, 5));
        // Half of them with a timeout that must not fire.
        let apply = if round % 2 == 0 {
            apply.timeout(Duration::from_secs(10))
        } else {
            apply
        };
        let (result, _) = apply_noting("5 ms task", apply).await;
        assert_eq!(
            result.unwrap_or_else(|e| panic!("5 ms task {round} failed: {e}")),
            (3 * round, pid)
        );
        n += 1;
    }
    eprintln!("{offered_before_long} of {ROUNDS} long tasks found the worker offered");
    assert!(
        offered_before_long > 0,
        "no 5 ms task found the worker offered: the handover path was never exercised"
    );
    let stats = pool.stats();
    assert_eq!(stats.submitted, warm + n, "{stats:?}");
    assert_eq!(stats.completed, warm + n, "{stats:?}");
    assert_eq!(
        stats.failed + stats.timed_out + stats.workers_crashed,
        0,
        "{stats:?}"
    );
    assert_eq!(stats.workers[0].tasks, warm + n, "{stats:?}");
    finish(pool, [pid]).await;
}

// ---------------------------------------------------------------------------------
// 5. Replies (and arguments) around and above the ring's inline limit.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replies_and_arguments_mixed_with_tiny_tasks() {
    let pool = pool_of_one(Some(SPIN)).await;
    let (pid, _) = warm_up(&pool, 200).await;
    let limit = 16 * 1024;
    let mut sizes: Vec<usize> = (limit - 40..=limit + 40).collect();
    sizes.extend([100_000, 0, 1, limit * 2, 100_000, 128 * 1024, 100_000]);
    let mut offered_before = 0;
    let mut tiny = 0u64;
    for (k, &n) in sizes.iter().enumerate() {
        // A few tiny ones between: the worker is offered again before the next.
        let mut last_direct = false;
        for _ in 0..6 {
            let (result, was_direct) =
                apply_noting("tiny", pool.apply(double_with_pid, tiny)).await;
            assert_eq!(result.expect("tiny task"), (2 * tiny, pid));
            last_direct = was_direct;
            tiny += 1;
        }
        offered_before += u64::from(last_direct);
        let (result, _) = apply_noting("large reply", pool.apply(pattern, n)).await;
        let got = result.unwrap_or_else(|e| panic!("reply of {n} bytes failed: {e}"));
        assert_eq!(got.len(), n, "reply {k} of {n} bytes");
        assert!(got == pattern(n), "reply {k} of {n} bytes: wrong contents");
    }
    assert!(
        offered_before > 0,
        "the worker was never offered before a large reply"
    );

    // Arguments on both sides of the limit of a job sent directly.
    let mut arg_sizes: Vec<usize> = (limit - 60..=limit + 60).step_by(3).collect();
    arg_sizes.extend([100_000, 0, 5]);
    for &n in &arg_sizes {
        let (result, _) = apply_noting("tiny", pool.apply(double_with_pid, 1)).await;
        assert_eq!(result.expect("tiny"), (2, pid));
        let v = pattern(n);
        let expected = (n, v.iter().map(|&b| u64::from(b)).sum::<u64>());
        let (result, _) = apply_noting("large argument", pool.apply(len_and_sum, v)).await;
        assert_eq!(
            result.unwrap_or_else(|e| panic!("argument of {n} bytes failed: {e}")),
            expected
        );
    }
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.completed, "{stats:?}");
    assert_eq!(stats.failed + stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(support::worker_pids(&pool), vec![pid]);
    finish(pool, [pid]).await;
}

// ---------------------------------------------------------------------------------
// 6. Concurrent callers and a map on one worker.
// ---------------------------------------------------------------------------------

async fn concurrent_callers_and_a_map() {
    const CALLERS: u64 = 4;
    const CALLS: u64 = 500;
    const MAPPED: u64 = 5000;
    let pool = pool_of_one(Some(SPIN)).await;
    let (pid, warm) = warm_up(&pool, 200).await;

    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut direct = 0u64;
            for i in 0..CALLS {
                let x = c * 1_000_000 + i;
                let (result, was_direct) =
                    apply_noting("concurrent apply", pool.apply(double_with_pid, x)).await;
                let (y, p) = result.unwrap_or_else(|e| panic!("caller {c}, task {i}: {e}"));
                assert_eq!(y, 2 * x, "caller {c}, task {i}");
                assert_eq!(p, pid, "caller {c}, task {i}");
                direct += u64::from(was_direct);
            }
            direct
        }));
    }
    let map = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.map(double, 0..MAPPED).chunk_size(1).await })
    };
    let mut direct = 0;
    for t in tasks {
        direct += within("a caller", t).await.expect("caller task");
    }
    let mapped = within("the map", map)
        .await
        .expect("map task")
        .expect("the map succeeds");
    assert_eq!(mapped, (0..MAPPED).map(|x| 2 * x).collect::<Vec<_>>());
    eprintln!(
        "concurrent: {direct} of {} applies settled directly",
        CALLERS * CALLS
    );

    let total = warm + CALLERS * CALLS + MAPPED;
    assert_all_done_on_one_worker(&pool.stats(), total, pid);
    // And it still works afterwards.
    let (y, p) = within("after", pool.apply(double_with_pid, 21))
        .await
        .expect("after");
    assert_eq!((y, p), (42, pid));
    finish(pool, [pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_and_a_map_multi_thread() {
    concurrent_callers_and_a_map().await;
}

#[tokio::test]
async fn concurrent_callers_and_a_map_current_thread() {
    concurrent_callers_and_a_map().await;
}

// ---------------------------------------------------------------------------------
// 7. Recycling stays exact.
// ---------------------------------------------------------------------------------

async fn recycling_stays_exact(spin: Option<Duration>, max: usize, calls: usize) {
    let mut b = support::builder()
        .transport(Transport::Local)
        .processes(1)
        .max_tasks_per_child(max);
    if let Some(spin) = spin {
        b = b.spin(spin);
    }
    let pool = within("build", b.build()).await.expect("pool builds");
    let mut order: Vec<u32> = Vec::new();
    let mut served: HashMap<u32, usize> = HashMap::new();
    for i in 0..calls {
        let (result, _) = apply_noting("recycled apply", pool.apply(pid_of, ())).await;
        let pid = result.unwrap_or_else(|e| panic!("task {i} failed: {e}"));
        if !served.contains_key(&pid) {
            order.push(pid);
        }
        *served.entry(pid).or_default() += 1;
    }
    let counts: Vec<usize> = order.iter().map(|p| served[p]).collect();
    assert!(
        counts.iter().all(|&n| n <= max),
        "a worker served more than max_tasks_per_child = {max}: {counts:?} ({order:?})"
    );
    // Sequential calls on one slot: each worker serves exactly its `max`.
    let mut expected = vec![max; calls / max];
    if calls % max != 0 {
        expected.push(calls % max);
    }
    assert_eq!(counts, expected, "{order:?}");
    let retired = (calls / max) as u64 - u64::from(calls % max == 0);
    let p = pool.clone();
    assert!(
        wait_until(BOUND, move || p.stats().workers_recycled == retired).await,
        "{:?}",
        pool.stats()
    );
    let stats = pool.stats();
    assert_eq!(stats.completed, calls as u64, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    finish(pool, order).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_stays_exact_with_spin() {
    recycling_stays_exact(Some(SPIN), 5, 23).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_stays_exact_with_default_spin() {
    recycling_stays_exact(None, 5, 23).await;
}

/// Enough tasks per worker that, without the rule, its tiny tasks would run directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_stays_exact_with_many_tiny_tasks_per_child() {
    recycling_stays_exact(Some(SPIN), 50, 230).await;
}

#[tokio::test]
async fn recycling_stays_exact_current_thread() {
    recycling_stays_exact(Some(SPIN), 50, 230).await;
}

// ---------------------------------------------------------------------------------
// 8. A panic in a task run directly.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_a_direct_task() {
    const PANICS: u64 = 5;
    let pool = pool_of_one(Some(SPIN)).await;
    let (pid, warm) = warm_up(&pool, 200).await;
    let mut direct_panics = 0;
    let mut ok = 0;
    for round in 0..PANICS {
        let (result, was_direct) =
            apply_noting("panicking task", pool.apply(panic_on_seven, 7)).await;
        match result {
            Err(TaskError::Panicked(p)) => {
                assert!(
                    p.message().contains("direct boom 7"),
                    "round {round}: the panic's message: {p}"
                );
            }
            other => panic!("round {round}: expected Panicked, got {other:?}"),
        }
        direct_panics += u64::from(was_direct);
        // The same worker goes on.
        let (y, p) = within("after the panic", pool.apply(double_with_pid, round))
            .await
            .expect("the worker serves after a panic");
        assert_eq!((y, p), (2 * round, pid), "round {round}");
        assert_eq!(
            within("tiny", pool.apply(panic_on_seven, 8)).await,
            Ok(9),
            "round {round}"
        );
        ok += 2;
        let (again, n) = warm_up(&pool, 20).await;
        assert_eq!(again, pid);
        ok += n;
    }
    eprintln!("{direct_panics} of {PANICS} panics settled directly");
    let stats = pool.stats();
    assert_eq!(stats.failed, PANICS, "{stats:?}");
    assert_eq!(stats.completed, warm + ok, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.workers_started, 1, "{stats:?}");
    assert_eq!(support::worker_pids(&pool), vec![pid]);
    finish(pool, [pid]).await;
}

// ---------------------------------------------------------------------------------
// 9. A closed pool refuses, offered worker or not.
// ---------------------------------------------------------------------------------

async fn closed_pool_refuses() {
    let pool = pool_of_one(Some(SPIN)).await;
    let (pid, warm) = warm_up(&pool, 200).await;
    pool.close();
    assert!(pool.is_closed());
    for _ in 0..3 {
        let err = within("apply after close", pool.apply(double_with_pid, 1))
            .await
            .expect_err("a closed pool refuses");
        assert_eq!(err, TaskError::Closed);
    }
    let stats = pool.stats();
    assert_eq!(
        stats.submitted, warm,
        "refused tasks are not submitted: {stats:?}"
    );
    assert_eq!(stats.completed, warm, "{stats:?}");
    // The worker drains and exits by itself.
    within("join", pool.join()).await;
    assert_eq!(
        within("apply after join", pool.apply(double_with_pid, 2)).await,
        Err(TaskError::Closed)
    );
    finish(pool, [pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pool_refuses_multi_thread() {
    closed_pool_refuses().await;
}

#[tokio::test]
async fn closed_pool_refuses_current_thread() {
    closed_pool_refuses().await;
}

// ---------------------------------------------------------------------------------
// Handed-over jobs whose callers give up.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handed_over_call_does_not_confuse_the_next() {
    let pool = pool_of_one(Some(SPIN)).await;
    let (pid, warm) = warm_up(&pool, 200).await;
    // Given up after 50 ms: the task runs on and its result is discarded.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        pool.apply(slow_triple, (1000, 300)).into_future(),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "a 300 ms task finished within 50 ms: {gave_up:?}"
    );
    // The next calls get their own results, not the discarded one.
    for i in 0..200u64 {
        let (y, p) = within("after the drop", pool.apply(double_with_pid, i))
            .await
            .unwrap_or_else(|e| panic!("task {i} after the drop: {e}"));
        assert_eq!((y, p), (2 * i, pid), "task {i} after the drop");
    }
    let p = pool.clone();
    let expected = warm + 1 + 200;
    assert!(
        wait_until(BOUND, move || p.stats().completed == expected).await,
        "{:?}",
        pool.stats()
    );
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    finish(pool, [pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_of_a_handed_over_call_kills_the_worker() {
    let pool = pool_of_one(Some(SPIN)).await;
    let (first, _) = warm_up(&pool, 200).await;
    let mut handle = pool.apply(sleep_forever, ()).into_future();
    assert!((&mut handle).now_or_never().is_none(), "it never ends");
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.abort();
    assert_eq!(within("aborted", handle).await, Err(TaskError::Cancelled));
    assert!(
        all_gone(vec![first], BOUND).await,
        "the aborted task's worker {first} is still there: {:?}",
        support::proc_state(first)
    );
    let second = within("after the abort", pool.apply(whoami, ()))
        .await
        .expect("the pool serves after an abort");
    assert_ne!(second, first);
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.workers_killed_on_abort, 1, "{stats:?}");
    finish(pool, [first, second]).await;
}

// ---------------------------------------------------------------------------------
// Without polling: callers that sleep on the ring, and callers in tasks that hand
// their job to the driver without waking it.
// ---------------------------------------------------------------------------------

/// The test's body runs in `block_on` on a multi-thread runtime, a thread of its own:
/// tiny tasks are settled on the spot there, by sleeping on the ring, without polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_polling_a_caller_of_its_own_thread_settles_tiny_tasks_on_the_spot() {
    let pool = pool_without_polling().await;
    // Panics unless some task is settled within its submission.
    let (pid, warm) = warm_up(&pool, 500).await;
    for i in 0..500u64 {
        let (y, p) = within("tiny", pool.apply(double_with_pid, i))
            .await
            .unwrap_or_else(|e| panic!("task {i} failed: {e}"));
        assert_eq!((y, p), (2 * i, pid), "task {i}");
    }
    // A task longer than the sleep is handed over, and the next tiny ones are fine.
    let (x, p) = within("longer", pool.apply(slow_triple, (3, 20)))
        .await
        .expect("a 20 ms task");
    assert_eq!((x, p), (9, pid));
    let (again, _) = warm_up(&pool, 10).await;
    assert_eq!(again, pid);
    let stats = pool.stats();
    assert_eq!(stats.completed, stats.submitted, "{stats:?}");
    assert!(stats.completed >= warm + 501, "{stats:?}");
    assert_eq!(
        stats.failed + stats.cancelled + stats.workers_crashed,
        0,
        "{stats:?}"
    );
    finish(pool, [pid]).await;
}

/// Callers in tasks (which must not block their thread) write their job and leave it
/// to the driver without waking it: every result must still come, in every mix of
/// tiny and longer tasks, from one caller and from several at once.
async fn callers_in_tasks_hand_over_quietly() {
    let pool = pool_without_polling().await;
    let pid = support::worker_pids(&pool)[0];
    let p = pool.clone();
    let one = tokio::spawn(async move {
        for i in 0..1000u64 {
            let (y, q) = within("tiny in a task", p.apply(double_with_pid, i))
                .await
                .unwrap_or_else(|e| panic!("task {i} failed: {e}"));
            assert_eq!((y, q), (2 * i, pid), "task {i}");
            if i % 100 == 0 {
                let (x, q) = within("longer in a task", p.apply(slow_triple, (i, 3)))
                    .await
                    .expect("a 3 ms task");
                assert_eq!((x, q), (3 * i, pid));
            }
        }
    });
    within("the caller's task", one).await.expect("no panic");
    let callers: Vec<_> = (0..4u64)
        .map(|c| {
            let p = pool.clone();
            tokio::spawn(async move {
                for i in 0..200u64 {
                    let x = c * 1000 + i;
                    let (y, _) = within("concurrent", p.apply(double_with_pid, x))
                        .await
                        .unwrap_or_else(|e| panic!("task {x} failed: {e}"));
                    assert_eq!(y, 2 * x);
                }
            })
        })
        .collect();
    for c in callers {
        within("a concurrent caller", c).await.expect("no panic");
    }
    let expected = 1000 + 10 + 800;
    let stats = pool.stats();
    assert_eq!(stats.submitted, expected, "{stats:?}");
    assert_eq!(stats.completed, expected, "{stats:?}");
    assert_eq!(
        stats.failed + stats.cancelled + stats.workers_crashed,
        0,
        "{stats:?}"
    );
    // A task left to the driver when the pool is terminated answers `Terminated`.
    let p = pool.clone();
    let running = tokio::spawn(async move { p.apply(sleep_forever, ()).await });
    let p = pool.clone();
    assert!(
        wait_until(BOUND, move || p.stats().submitted == expected + 1).await,
        "the last task was never submitted"
    );
    finish(pool, [pid]).await;
    assert_eq!(
        within("the terminated task", running)
            .await
            .expect("no panic"),
        Err(TaskError::Terminated)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_polling_callers_in_tasks_hand_over_quietly_multi_thread() {
    callers_in_tasks_hand_over_quietly().await;
}

#[tokio::test]
async fn without_polling_callers_in_tasks_hand_over_quietly_current_thread() {
    callers_in_tasks_hand_over_quietly().await;
}

/// The abort of a job a caller left to the driver without waking it wakes the driver,
/// which kills the worker: from a task (handed over at once) and from `block_on`
/// (after a sleep on the ring).
async fn abort_of_a_quiet_handover(in_a_task: bool) {
    let pool = pool_without_polling().await;
    let first = support::worker_pids(&pool)[0];
    for i in 0..50u64 {
        let (y, _) = within("warm", pool.apply(double_with_pid, i))
            .await
            .expect("a tiny task");
        assert_eq!(y, 2 * i);
    }
    let p = pool.clone();
    let submit = move || {
        let mut handle = p.apply(sleep_forever, ()).into_future();
        assert!((&mut handle).now_or_never().is_none(), "it never ends");
        handle
    };
    // The task only submits: it hands back the handle, not awaited, on purpose.
    #[allow(clippy::async_yields_async)]
    let handle = match in_a_task {
        true => within("submit in a task", tokio::spawn(async move { submit() }))
            .await
            .expect("no panic"),
        false => submit(),
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.abort();
    assert_eq!(within("aborted", handle).await, Err(TaskError::Cancelled));
    assert!(
        all_gone(vec![first], BOUND).await,
        "the aborted task's worker {first} is still there: {:?}",
        support::proc_state(first)
    );
    let second = within("after the abort", pool.apply(whoami, ()))
        .await
        .expect("the pool serves after an abort");
    assert_ne!(second, first);
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.workers_killed_on_abort, 1, "{stats:?}");
    finish(pool, [first, second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_polling_abort_of_a_quiet_handover_from_a_task() {
    abort_of_a_quiet_handover(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_polling_abort_of_a_quiet_handover_from_block_on() {
    abort_of_a_quiet_handover(false).await;
}

#[tokio::test]
async fn without_polling_abort_of_a_quiet_handover_current_thread() {
    abort_of_a_quiet_handover(true).await;
}

/// A worker that dies under a job left to the driver without waking it: the driver,
/// asleep on the worker's exit and socket, fails the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_polling_a_crash_under_a_quiet_handover_fails_the_task() {
    let pool = pool_without_polling().await;
    let first = support::worker_pids(&pool)[0];
    let p = pool.clone();
    let err = within(
        "abort in a task",
        tokio::spawn(async move { p.apply(abort, ()).await }),
    )
    .await
    .expect("no panic")
    .expect_err("a task that aborts its worker must fail");
    assert_eq!(
        err,
        TaskError::WorkerDied {
            pid: first,
            exit: WorkerExit::Signal(libc::SIGABRT)
        }
    );
    let second = within("after the crash", pool.apply(whoami, ()))
        .await
        .expect("the pool serves after a crash");
    assert_ne!(second, first);
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 1, "{stats:?}");
    assert_eq!(stats.failed, 1, "{stats:?}");
    finish(pool, [first, second]).await;
}
