#![cfg(target_os = "linux")]
//! No zombies: every worker the pool ever started is reaped, after a storm of crashes,
//! recycles, timeouts and aborts on one pool.

procpool::enable_test_support!();

mod support;

use std::collections::HashSet;
use std::time::Duration;

use procpool::{Pool, TaskError};
use support::*;

/// Notes the pool's live workers and, with the fork server start method, its server.
fn note_live(pool: &Pool, seen: &mut HashSet<u32>) {
    seen.extend(support::worker_pids(pool));
    seen.extend(pool.stats().forkserver_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_zombies_after_a_storm() {
    let scratch = Scratch::new("zombie-storm");
    let pool = within(
        "build",
        support::builder()
            .processes(3)
            .max_tasks_per_child(4)
            .build(),
    )
    .await
    .expect("pool builds");
    let mut seen = HashSet::new();
    note_live(&pool, &mut seen);

    for round in 0..4u64 {
        // Crashes of every kind, next to ordinary tasks (which recycle workers).
        let crashes = vec![
            pool.apply_async(exit_with, 3),
            pool.apply_async(abort, ()),
            pool.apply_async(segfault, ()),
            pool.apply_async(kill_self, ()),
        ];
        let ordinary: Vec<_> = (0..12u64)
            .map(|x| pool.apply_async(double_with_pid, x + round))
            .collect();
        let timeouts: Vec<_> = (0..2)
            .map(|_| {
                pool.apply(sleep_forever, ())
                    .timeout(Duration::from_millis(200))
                    .spawn()
            })
            .collect();
        note_live(&pool, &mut seen);

        for h in crashes {
            let err = within("crash", h).await.expect_err("a crash fails");
            seen.extend(err.pid());
        }
        for (x, h) in ordinary.into_iter().enumerate() {
            let (y, pid) = within("ordinary", h).await.expect("ordinary task runs");
            assert_eq!(y, 2 * (x as u64 + round));
            seen.insert(pid);
        }
        for h in timeouts {
            let err = within("timeout", h).await.expect_err("times out");
            assert!(err.is_timeout(), "{err:?}");
            seen.extend(err.pid());
        }
        // An abort, once the rest is done (a job pipelined behind a task that never
        // ends would wait for the abort).
        let started = format!("started-{round}");
        let aborted = pool.apply_async(start_then_sleep, scratch.path(&started));
        scratch.wait_for(&started).await;
        note_live(&pool, &mut seen);
        aborted.abort();
        assert_eq!(within("aborted", aborted).await, Err(TaskError::Cancelled));
        note_live(&pool, &mut seen);
    }

    let stats = pool.stats();
    let lost =
        stats.workers_crashed + stats.workers_killed_on_timeout + stats.workers_killed_on_abort;
    assert!(stats.workers_crashed >= 4 * 4, "{stats:?}");
    assert_eq!(stats.workers_killed_on_timeout, 4 * 2, "{stats:?}");
    assert_eq!(stats.workers_killed_on_abort, 4, "{stats:?}");
    assert!(stats.workers_recycled >= 1, "{stats:?}");
    assert!(
        seen.len() as u64 >= lost,
        "saw {} workers, {stats:?}",
        seen.len()
    );

    // Once things settle, every former worker is reaped: not a zombie, not there.
    let pool2 = pool.clone();
    let watched = seen.clone();
    let settled = wait_until(BOUND, move || {
        let mut live = support::worker_pids(&pool2);
        live.extend(pool2.stats().forkserver_pid);
        watched
            .iter()
            .filter(|p| !live.contains(p))
            .all(|&p| support::is_gone(p))
    })
    .await;
    let mut live = support::worker_pids(&pool);
    live.extend(pool.stats().forkserver_pid);
    let zombies: Vec<u32> = support::zombie_children()
        .into_iter()
        .filter(|z| seen.contains(z))
        .collect();
    assert!(
        zombies.is_empty(),
        "former workers left as zombies: {zombies:?}"
    );
    assert!(
        settled,
        "former workers still exist: {:?}",
        seen.iter()
            .filter(|p| !live.contains(p))
            .filter_map(|&p| support::proc_state(p).map(|s| (p, s)))
            .collect::<Vec<_>>()
    );

    // And after join, the last ones too.
    within("join", pool.join()).await;
    assert!(support::worker_pids(&pool).is_empty());
    let all: Vec<u32> = seen.iter().copied().collect();
    assert!(all_gone(all, BOUND).await, "workers left after join");
    let zombies: Vec<u32> = support::zombie_children()
        .into_iter()
        .filter(|z| seen.contains(z))
        .collect();
    assert!(zombies.is_empty(), "{zombies:?}");
}

/// Dropping the last handle of a busy pool (no terminate, no join) kills and reaps its
/// workers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_busy_pool_leaves_no_zombie() {
    let scratch = Scratch::new("zombie-drop");
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let mut pids = support::worker_pids(&pool);
    pids.extend(pool.stats().forkserver_pid);
    let busy = pool.apply_async(start_then_sleep, scratch.path("started"));
    scratch.wait_for("started").await;
    drop(pool);
    assert_eq!(within("busy", busy).await, Err(TaskError::Terminated));
    assert!(
        all_gone(pids.clone(), BOUND).await,
        "{:?}",
        pids.iter()
            .map(|&p| (p, support::proc_state(p)))
            .collect::<Vec<_>>()
    );
}
