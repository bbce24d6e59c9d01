#![cfg(target_os = "linux")]
//! Recycling: `max_tasks_per_child(n)` retires a worker after n jobs and starts its
//! replacement, keeping `processes` workers.

procpool::enable_test_support!();

mod support;

use std::collections::{HashMap, HashSet};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sequential_tasks_are_served_by_at_least_five_pids() {
    let pool = within(
        "build",
        support::builder()
            .processes(2)
            .max_tasks_per_child(2)
            .build(),
    )
    .await
    .expect("pool builds");
    let mut served: HashMap<u32, usize> = HashMap::new();
    for i in 0..10 {
        let pid = within("task", pool.apply(whoami, ()))
            .await
            .unwrap_or_else(|e| panic!("task {i} failed: {e}"));
        *served.entry(pid).or_default() += 1;
    }
    assert!(
        served.len() >= 5,
        "ten tasks with two per child need at least five workers: {served:?}"
    );
    assert!(
        served.values().all(|&n| n <= 2),
        "a worker ran more than max_tasks_per_child tasks: {served:?}"
    );

    // Every worker that ran two tasks retires, is reaped, and is counted.
    let retired: Vec<u32> = served
        .iter()
        .filter(|&(_, &n)| n == 2)
        .map(|(&p, _)| p)
        .collect();
    assert!(retired.len() >= 4, "{served:?}");
    assert!(
        all_gone(retired.clone(), BOUND).await,
        "retired workers still exist: {:?}",
        retired
            .iter()
            .map(|&p| (p, support::proc_state(p)))
            .collect::<Vec<_>>()
    );
    let p = pool.clone();
    let n = retired.len() as u64;
    assert!(
        wait_until(BOUND, move || p.stats().workers_recycled == n).await,
        "workers_recycled should be {n}: {:?}",
        pool.stats()
    );
    // The pool keeps `processes` workers, none of them a retired one.
    let p = pool.clone();
    let gone = retired.clone();
    assert!(
        wait_until(BOUND, move || {
            let live = support::worker_pids(&p);
            live.len() == 2 && live.iter().all(|w| !gone.contains(w))
        })
        .await,
        "{:?}",
        pool.stats()
    );
    let stats = pool.stats();
    assert_eq!(
        stats.workers_started,
        2 + stats.workers_recycled,
        "{stats:?}"
    );
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.completed, 10, "{stats:?}");
    assert!(
        stats.workers.iter().all(|w| w.tasks < 2),
        "a live worker never holds max_tasks_per_child completed jobs: {stats:?}"
    );
    within("join", pool.join()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_task_per_child_gives_every_task_a_fresh_process() {
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .max_tasks_per_child(1)
            .build(),
    )
    .await
    .expect("pool builds");
    let mut pids = Vec::new();
    for _ in 0..6 {
        pids.push(
            within("task", pool.apply(whoami, ()))
                .await
                .expect("task runs"),
        );
    }
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 6, "{pids:?}");
    let old = pids.clone();
    assert!(all_gone(old, BOUND).await);
    let p = pool.clone();
    assert!(wait_until(BOUND, move || p.stats().workers_recycled == 6).await);
    within("join", pool.join()).await;
}

/// Under concurrent load with pipelining, no worker takes more than `n` jobs, every
/// result is right, and the pool ends with `processes` workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_under_concurrent_load() {
    let pool = within(
        "build",
        support::builder()
            .processes(2)
            .max_tasks_per_child(3)
            .build(),
    )
    .await
    .expect("pool builds");
    let handles: Vec<_> = (0..60u64)
        .map(|x| pool.apply_async(double_with_pid, x))
        .collect();
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    for (x, h) in handles.into_iter().enumerate() {
        let (y, pid) = within("task", h)
            .await
            .unwrap_or_else(|e| panic!("task {x} failed: {e}"));
        assert_eq!(y, 2 * x as u64);
        *per_pid.entry(pid).or_default() += 1;
    }
    assert!(per_pid.len() >= 20, "{per_pid:?}");
    assert!(per_pid.values().all(|&n| n <= 3), "{per_pid:?}");
    let stats = pool.stats();
    assert_eq!(stats.completed, 60, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    let p = pool.clone();
    assert!(
        wait_until(BOUND, move || support::worker_pids(&p).len() == 2).await,
        "{:?}",
        pool.stats()
    );
    let finished: Vec<u32> = per_pid
        .iter()
        .filter(|&(_, &n)| n == 3)
        .map(|(&p, _)| p)
        .collect();
    assert!(all_gone(finished, BOUND).await);
    within("join", pool.join()).await;
}

/// A chunk of `map` counts as one job, as in Python: with one job per child, each chunk
/// runs in its own process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_chunk_counts_as_one_job() {
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .max_tasks_per_child(1)
            .build(),
    )
    .await
    .expect("pool builds");
    let results: Vec<(u64, u32)> = within("map", pool.map(double_with_pid, 0..12u64).chunk_size(4))
        .await
        .expect("map runs");
    let values: Vec<u64> = results.iter().map(|r| r.0).collect();
    assert_eq!(values, (0..12).map(|x| 2 * x).collect::<Vec<_>>());
    for chunk in results.chunks(4) {
        assert!(chunk.iter().all(|r| r.1 == chunk[0].1), "{results:?}");
    }
    let pids: HashSet<u32> = results.iter().map(|r| r.1).collect();
    assert_eq!(pids.len(), 3, "{results:?}");
    within("join", pool.join()).await;
}

/// A retiring worker leaves while its replacement starts: a long task on the other
/// worker is not disturbed, and every retired process is reaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_does_not_disturb_other_workers() {
    let pool = within(
        "build",
        support::builder()
            .processes(2)
            .max_tasks_per_child(2)
            .build(),
    )
    .await
    .expect("pool builds");
    let long = pool.apply_async(pid_after_sleep, 1500);
    // While the long task holds one worker, the other serves and retires repeatedly.
    let mut pids = HashSet::new();
    for _ in 0..6 {
        pids.insert(within("task", pool.apply(whoami, ())).await.expect("task"));
    }
    let long_pid = within("long", long).await.expect("the long task completes");
    // (The first short task may have been pipelined behind the long one, on its worker.)
    pids.remove(&long_pid);
    assert!(pids.len() >= 2, "{pids:?}");
    assert_eq!(pool.stats().workers_crashed, 0);
    within("join", pool.join()).await;
    let mut all: Vec<u32> = pids.into_iter().collect();
    all.push(long_pid);
    assert!(all_gone(all, BOUND).await);
}
