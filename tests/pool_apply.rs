#![cfg(target_os = "linux")]
//! `apply`, `apply_async` and `TaskHandle`: results, the task's own errors, panics,
//! submission without polling, abort and drop of handles, and `current_process`.
procpool::enable_test_support!();
mod support;

use std::collections::HashSet;
use std::future::IntoFuture;

use procpool::{Pool, TaskError};
use serde::{Deserialize, Serialize};

use support::{scripted, square, touch, wait_until, whoami, within, Script, TempPath};

fn checked_div((a, b): (u64, u64)) -> Result<u64, String> {
    a.checked_div(b)
        .ok_or_else(|| format!("cannot divide {a} by zero"))
}

fn explode(n: u32) -> u64 {
    panic!("boom {n}");
}

fn explode_with_non_string(_: ()) -> u64 {
    std::panic::panic_any(17u8);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    items: Vec<(String, u32)>,
    note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invoice {
    id: u32,
    total: u32,
    summary: String,
}

fn invoice(order: Order) -> Invoice {
    Invoice {
        id: order.id,
        total: order.items.iter().map(|(_, n)| n).sum(),
        summary: format!(
            "{} [{}]",
            order
                .items
                .iter()
                .map(|(s, _)| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            order.note.unwrap_or_default()
        ),
    }
}

fn process_info(_: ()) -> Option<(u32, Option<usize>, String)> {
    procpool::current_process().map(|p| (p.pid(), p.index(), p.name().to_string()))
}

#[tokio::test]
async fn apply_returns_the_value_computed_in_a_worker() {
    let pool = support::pool(2).await;
    assert_eq!(pool.processes(), 2);
    assert_eq!(within("apply", pool.apply(square, 12)).await, Ok(144));

    let order = Order {
        id: 7,
        items: vec![("apple".into(), 3), ("pear".into(), 4)],
        note: Some("fragile".into()),
    };
    let got = within("apply struct", pool.apply(invoice, order)).await;
    assert_eq!(
        got,
        Ok(Invoice {
            id: 7,
            total: 7,
            summary: "apple,pear [fragile]".into()
        })
    );

    // A non-capturing closure is a task too; it runs in a worker, not here.
    let pid = within("closure", pool.apply(|_: ()| std::process::id(), ())).await;
    let pid = pid.expect("closure task");
    assert_ne!(pid, std::process::id());
    assert!(support::worker_pids(&pool).contains(&pid));
    pool.terminate().await;
}

#[tokio::test]
async fn a_task_returning_result_keeps_its_errors_apart_from_the_pools() {
    let pool = support::pool(2).await;
    let ok: Result<Result<u64, String>, TaskError> =
        within("ok", pool.apply(checked_div, (10, 2))).await;
    assert_eq!(ok, Ok(Ok(5)));
    let user_err = within("user error", pool.apply(checked_div, (1, 0))).await;
    assert_eq!(user_err, Ok(Err("cannot divide 1 by zero".to_string())));
    let stats = pool.stats();
    assert_eq!(stats.completed, 2, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    pool.terminate().await;
}

#[tokio::test]
async fn a_panic_comes_back_with_its_message_and_the_pool_keeps_serving() {
    let pool = support::pool(2).await;
    let pids = support::worker_pids(&pool);

    let err = within("panicking task", pool.apply(explode, 7))
        .await
        .expect_err("the task panicked");
    assert!(err.is_panic(), "{err:?}");
    let panic = err.panic().expect("a panic");
    assert_eq!(panic.message(), "boom 7");
    let location = panic.location().expect("a location");
    assert!(location.contains("pool_apply.rs"), "{location}");
    assert!(err.to_string().contains("boom 7"), "{err}");
    assert!(matches!(err, TaskError::Panicked(_)));

    let err = within("non-string panic", pool.apply(explode_with_non_string, ()))
        .await
        .expect_err("the task panicked");
    assert!(err.is_panic(), "{err:?}");

    // Many panics in a row: the workers catch them and stay.
    for n in 0..10 {
        let err = within("panic", pool.apply(explode, n)).await.unwrap_err();
        assert_eq!(
            err.panic().map(|p| p.message().to_string()),
            Some(format!("boom {n}"))
        );
    }
    assert_eq!(within("after panics", pool.apply(square, 9)).await, Ok(81));
    let stats = pool.stats();
    assert_eq!(support::worker_pids(&pool), pids, "no worker was replaced");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.workers_started, 2, "{stats:?}");
    pool.terminate().await;
}

#[tokio::test]
async fn apply_async_submits_even_if_the_handle_is_never_polled() {
    let pool = support::pool(2).await;
    let marker = TempPath::new("apply-async-unpolled");
    let handle = pool.apply_async(touch, marker.arg());
    assert!(handle.id() > 0);
    let ran = wait_until(support::BOUND, || marker.exists()).await;
    assert!(ran, "the task did not run although its handle is alive");
    // The handle still holds the result.
    let pid = within("handle", handle).await.expect("task result");
    assert!(support::worker_pids(&pool).contains(&pid));

    // `apply(..).spawn()` is the same.
    let marker2 = TempPath::new("apply-spawn-unpolled");
    let handle2 = pool.apply(touch, marker2.arg()).spawn();
    assert!(wait_until(support::BOUND, || marker2.exists()).await);
    drop(handle2);
    pool.terminate().await;
}

#[tokio::test]
async fn an_apply_dropped_before_it_is_awaited_submits_nothing() {
    let pool = support::pool(1).await;
    let never = TempPath::new("apply-dropped");
    let after = TempPath::new("apply-dropped-after");
    let apply = pool.apply(touch, never.arg());
    drop(apply);
    // One worker runs jobs in order: once a later task has run, an earlier one would have.
    within("later task", pool.apply(touch, after.arg()))
        .await
        .expect("later task");
    assert!(after.exists());
    assert!(!never.exists(), "a dropped Apply ran");
    assert_eq!(pool.stats().submitted, 1);
    pool.terminate().await;
}

/// One worker busy with a task that waits for `gate`; returns the handle and the pid.
async fn busy_single_worker(
    pool: &Pool,
    gate: &TempPath,
) -> (procpool::TaskHandle<(u64, u32)>, u32) {
    let started = TempPath::new("blocker-started");
    let blocker = pool.apply_async(scripted, Script::new(1).started(&started).wait_for(gate));
    assert!(
        wait_until(support::BOUND, || started.exists()).await,
        "the blocking task did not start"
    );
    let pid = support::worker_pids(pool)[0];
    (blocker, pid)
}

/// Gives the pool's driver the chance it has in any real program (it runs on the same
/// runtime) to take the job just submitted from the queue, as it does when its worker
/// has room in its pipeline. The task has still not started: its worker is busy.
async fn let_the_driver_take_it(pool: &Pool) {
    let _ = wait_until(std::time::Duration::from_millis(500), || {
        pool.stats().queued == 0
    })
    .await;
}

#[tokio::test]
async fn aborting_a_task_deep_in_the_queue_removes_it() {
    let pool = support::pool(1).await;
    let gate = TempPath::new("abort-deep-gate");
    let (blocker, pid) = busy_single_worker(&pool, &gate).await;
    // Enough work ahead of the target that it is still in the pool's queue.
    let fillers: Vec<_> = (0..3).map(|i| pool.apply_async(square, i)).collect();
    let target_file = TempPath::new("abort-deep-target");
    let target = pool.apply_async(touch, target_file.arg());
    target.abort();
    gate.touch();

    assert_eq!(within("blocker", blocker).await, Ok((1, pid)));
    for (i, f) in fillers.into_iter().enumerate() {
        assert_eq!(within("filler", f).await, Ok((i * i) as u64));
    }
    assert_eq!(within("aborted", target).await, Err(TaskError::Cancelled));
    let after = TempPath::new("abort-deep-after");
    within("after", pool.apply(touch, after.arg()))
        .await
        .unwrap();
    assert!(!target_file.exists(), "an aborted queued task ran");
    assert_eq!(
        support::worker_pids(&pool),
        vec![pid],
        "no worker was killed"
    );
    assert!(pool.stats().cancelled >= 1, "{:?}", pool.stats());
    pool.terminate().await;
}

#[tokio::test]
async fn aborting_the_next_queued_task_neither_runs_it_nor_kills_a_worker() {
    let pool = support::pool(1).await;
    let gate = TempPath::new("abort-next-gate");
    let (blocker, pid) = busy_single_worker(&pool, &gate).await;
    let target_file = TempPath::new("abort-next-target");
    let target = pool.apply_async(touch, target_file.arg());
    let_the_driver_take_it(&pool).await;
    target.abort();
    gate.touch();

    assert_eq!(within("blocker", blocker).await, Ok((1, pid)));
    assert_eq!(within("aborted", target).await, Err(TaskError::Cancelled));
    let after = TempPath::new("abort-next-after");
    within("after", pool.apply(touch, after.arg()))
        .await
        .unwrap();
    let stats = pool.stats();
    assert_eq!(
        support::worker_pids(&pool),
        vec![pid],
        "a worker was killed: {stats:?}"
    );
    assert!(
        !target_file.exists(),
        "an aborted task that had not started ran"
    );
    pool.terminate().await;
}

#[tokio::test]
async fn aborting_a_queued_task_resolves_without_waiting_for_running_work() {
    let pool = support::pool(1).await;
    let gate = TempPath::new("abort-prompt-gate");
    let (blocker, _pid) = busy_single_worker(&pool, &gate).await;
    let fillers: Vec<_> = (0..3).map(|i| pool.apply_async(square, i)).collect();
    let target = pool.apply_async(square, 5);
    target.abort();
    // The running task waits for a gate that opens only after this.
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), target).await;
    gate.touch();
    assert_eq!(
        got,
        Ok(Err(TaskError::Cancelled)),
        "the aborted handle did not resolve"
    );
    within("blocker", blocker).await.unwrap();
    drop(fillers);
    pool.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_goes_to_the_idle_worker_not_behind_a_busy_one() {
    let pool = support::pool(2).await;
    let gate = TempPath::new("idle-gate");
    let started = TempPath::new("idle-started");
    let long = pool.apply_async(scripted, Script::new(1).started(&started).wait_for(&gate));
    assert!(wait_until(support::BOUND, || started.exists()).await);
    // One worker is busy until the gate opens; the other is idle.
    let short =
        tokio::time::timeout(std::time::Duration::from_secs(10), pool.apply(whoami, ())).await;
    gate.touch();
    let (_, long_pid) = within("long", long).await.expect("long task");
    let short_pid = short
        .expect("the short task waited for the long one although a worker was idle")
        .expect("short task");
    assert_ne!(short_pid, long_pid);
    pool.terminate().await;
}

#[tokio::test]
async fn aborting_a_running_task_kills_and_replaces_its_worker() {
    let pool = support::pool(1).await;
    let started = TempPath::new("abort-running-started");
    let never = TempPath::new("abort-running-never");
    let mut handle = pool.apply_async(scripted, Script::new(3).started(&started).wait_for(&never));
    assert!(wait_until(support::BOUND, || started.exists()).await);
    let old = support::worker_pids(&pool);
    assert_eq!(old.len(), 1);

    handle.abort();
    assert_eq!(
        within("aborted", &mut handle).await,
        Err(TaskError::Cancelled)
    );
    assert!(
        wait_until(support::GONE_WITHIN, || support::is_gone(old[0])).await,
        "the aborted task's worker is still there"
    );
    support::assert_no_zombies(&old);
    // A replacement serves the next task.
    let new_pid = within("after abort", pool.apply(whoami, ())).await.unwrap();
    assert_ne!(new_pid, old[0]);
    assert_eq!(support::worker_pids(&pool), vec![new_pid]);
    let stats = pool.stats();
    assert_eq!(stats.workers_started, 2, "{stats:?}");
    assert!(stats.cancelled >= 1, "{stats:?}");
    pool.terminate().await;
}

#[tokio::test]
async fn aborting_a_finished_task_keeps_its_result() {
    let pool = support::pool(1).await;
    let handle = pool.apply_async(square, 6);
    let done = wait_until(support::BOUND, || pool.stats().completed == 1).await;
    assert!(done);
    let pids = support::worker_pids(&pool);
    handle.abort();
    assert_eq!(within("finished", handle).await, Ok(36));
    assert_eq!(support::worker_pids(&pool), pids);
    pool.terminate().await;
}

#[tokio::test]
async fn dropping_the_handle_of_a_task_deep_in_the_queue_removes_it() {
    let pool = support::pool(1).await;
    let gate = TempPath::new("drop-deep-gate");
    let (blocker, pid) = busy_single_worker(&pool, &gate).await;
    let fillers: Vec<_> = (0..3).map(|i| pool.apply_async(square, i)).collect();
    let target_file = TempPath::new("drop-deep-target");
    drop(pool.apply_async(touch, target_file.arg()));
    gate.touch();
    assert_eq!(within("blocker", blocker).await, Ok((1, pid)));
    for f in fillers {
        within("filler", f).await.unwrap();
    }
    let after = TempPath::new("drop-deep-after");
    within("after", pool.apply(touch, after.arg()))
        .await
        .unwrap();
    assert!(
        !target_file.exists(),
        "a task whose handle was dropped in the queue ran"
    );
    let stats = pool.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.queued, 0, "{stats:?}");
    pool.terminate().await;
}

#[tokio::test]
async fn dropping_the_handle_of_the_next_queued_task_removes_it() {
    let pool = support::pool(1).await;
    let gate = TempPath::new("drop-next-gate");
    let (blocker, pid) = busy_single_worker(&pool, &gate).await;
    let target_file = TempPath::new("drop-next-target");
    let target = pool.apply_async(touch, target_file.arg());
    let_the_driver_take_it(&pool).await;
    drop(target);
    gate.touch();
    assert_eq!(within("blocker", blocker).await, Ok((1, pid)));
    let after = TempPath::new("drop-next-after");
    within("after", pool.apply(touch, after.arg()))
        .await
        .unwrap();
    assert!(
        !target_file.exists(),
        "a task whose handle was dropped before it started ran"
    );
    pool.terminate().await;
}

#[tokio::test]
async fn dropping_the_handle_of_a_running_task_detaches_it() {
    let pool = support::pool(1).await;
    let started = TempPath::new("detach-started");
    let gate = TempPath::new("detach-gate");
    let done = TempPath::new("detach-done");
    let handle = pool.apply_async(
        scripted,
        Script::new(0).started(&started).wait_for(&gate).done(&done),
    );
    assert!(wait_until(support::BOUND, || started.exists()).await);
    let pids = support::worker_pids(&pool);
    drop(handle);
    gate.touch();
    assert!(
        wait_until(support::BOUND, || done.exists()).await,
        "a detached running task did not finish"
    );
    assert_eq!(within("after", pool.apply(whoami, ())).await, Ok(pids[0]));
    assert_eq!(pool.stats().workers_crashed, 0);
    pool.terminate().await;
}

#[tokio::test]
async fn awaiting_a_handle_by_reference_is_cancel_safe() {
    let pool = support::pool(1).await;
    let started = TempPath::new("ref-started");
    let gate = TempPath::new("ref-gate");
    let mut handle = pool.apply_async(scripted, Script::new(11).started(&started).wait_for(&gate));
    assert!(wait_until(support::BOUND, || started.exists()).await);
    // Give up waiting once; the task goes on and the handle still resolves.
    let first = tokio::time::timeout(std::time::Duration::from_millis(50), &mut handle).await;
    assert!(
        first.is_err(),
        "the task cannot have finished: its gate is closed"
    );
    gate.touch();
    let (value, _) = within("second await", &mut handle).await.expect("result");
    assert_eq!(value, 11);
    pool.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_process_names_the_worker_running_the_task() {
    assert!(
        procpool::current_process().is_none(),
        "the test process is no worker"
    );
    let pool = support::pool(2).await;
    assert!(procpool::current_process().is_none());

    let stats_workers = pool.stats().workers;
    let mut seen = HashSet::new();
    // Many tasks: the two workers both run some.
    let results = within(
        "map process_info",
        pool.map(process_info, std::iter::repeat_n((), 40))
            .chunk_size(1),
    )
    .await
    .expect("map");
    for info in results {
        let (pid, index, name) = info.expect("inside a worker, current_process() is Some");
        let index = index.expect("a pool worker has an index");
        let w = stats_workers
            .iter()
            .find(|w| w.pid == pid)
            .unwrap_or_else(|| panic!("pid {pid} is not a worker of the pool: {stats_workers:?}"));
        assert_eq!(w.index, index);
        assert_eq!(name, format!("procpool-worker-{index}"));
        seen.insert(pid);
    }
    assert!(!seen.is_empty());
    let indices: HashSet<usize> = stats_workers.iter().map(|w| w.index).collect();
    assert_eq!(indices, HashSet::from([0, 1]));
    pool.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_clone_works_from_spawned_tasks() {
    let pool = support::pool(2).await;
    let mut joins = Vec::new();
    for i in 0..4u64 {
        let pool = pool.clone();
        joins.push(tokio::spawn(async move {
            let one = pool.apply(square, i).await?;
            let handle = pool.apply_async(square, i + 100);
            let many = pool.map(square, 0..20u64).await?;
            Ok::<_, TaskError>((one, handle.await?, many))
        }));
    }
    // The futures themselves are Send + 'static too.
    let direct = tokio::spawn(pool.apply(square, 5).into_future());
    let map = tokio::spawn(std::future::IntoFuture::into_future(
        pool.map(square, 0..3u64),
    ));
    let handle = tokio::spawn(pool.apply_async(square, 4));
    let expected: Vec<u64> = (0..20).map(|x| x * x).collect();
    for (i, j) in joins.into_iter().enumerate() {
        let (one, two, many) = within("spawned", j).await.expect("join").expect("tasks");
        let i = i as u64;
        assert_eq!(one, i * i);
        assert_eq!(two, (i + 100) * (i + 100));
        assert_eq!(many, expected);
    }
    assert_eq!(within("direct", direct).await.unwrap(), Ok(25));
    assert_eq!(within("map", map).await.unwrap(), Ok(vec![0, 1, 4]));
    assert_eq!(within("handle", handle).await.unwrap(), Ok(16));
    pool.terminate().await;
}

#[tokio::test]
async fn many_concurrent_applies_all_come_back() {
    let pool = support::pool(2).await;
    let calls = (0..50u64).map(|i| pool.apply(square, i).into_future());
    let results = within("join_all", futures::future::join_all(calls)).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r, Ok((i * i) as u64));
    }
    let stats = pool.stats();
    assert_eq!(stats.submitted, 50);
    assert_eq!(stats.completed, 50);
    pool.terminate().await;
}
