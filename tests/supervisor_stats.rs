#![cfg(target_os = "linux")]
//! `Pool::stats()`: the counters and the live workers move as documented across a
//! scripted sequence of completions, recycles, crashes, timeouts and cancellations.

procpool::enable_test_support!();

mod support;

use std::time::Duration;

use procpool::{Pool, PoolStats, TaskError};
use support::*;

fn fails_politely(x: u64) -> Result<u64, String> {
    Err(format!("no {x}"))
}

fn panics(_: ()) -> u32 {
    panic!("counted as a failure")
}

/// Waits until `check` holds of the pool's stats, and returns them.
async fn stats_when(
    pool: &Pool,
    what: &str,
    check: impl Fn(&PoolStats) -> bool + Send + 'static,
) -> PoolStats {
    let p = pool.clone();
    let ok = wait_until(BOUND, move || check(&p.stats())).await;
    let stats = pool.stats();
    assert!(ok, "{what}: {stats:?}");
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_follow_a_scripted_sequence() {
    let scratch = Scratch::new("stats");
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .max_tasks_per_child(4)
            .build(),
    )
    .await
    .expect("pool builds");

    let s = pool.stats();
    assert_eq!(
        (
            s.submitted,
            s.completed,
            s.failed,
            s.timed_out,
            s.cancelled,
            s.queued
        ),
        (0, 0, 0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(
        (
            s.workers_started,
            s.workers_recycled,
            s.workers_crashed,
            s.start_failures
        ),
        (1, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.workers.len(), 1);
    assert_eq!(s.workers[0].index, 0);
    assert_eq!(s.workers[0].tasks, 0);
    let w1 = s.workers[0].pid;

    // Two completions on the first worker; its task count follows.
    assert_eq!(within("1", pool.apply(whoami, ())).await, Ok(w1));
    assert_eq!(within("2", pool.apply(double, 2)).await, Ok(4));
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed, s.failed), (2, 2, 0), "{s:?}");
    assert_eq!(s.workers[0].pid, w1);
    assert_eq!(s.workers[0].tasks, 2, "{s:?}");

    // A task's own `Err` is a completion, not a failure.
    assert_eq!(
        within("3", pool.apply(fails_politely, 3)).await,
        Ok(Err("no 3".to_string()))
    );
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed, s.failed), (3, 3, 0), "{s:?}");

    // The fourth job retires the worker (max_tasks_per_child(4)).
    assert_eq!(within("4", pool.apply(whoami, ())).await, Ok(w1));
    let s = stats_when(&pool, "recycle", |s| {
        s.workers_recycled == 1 && s.workers_started == 2 && s.workers.len() == 1
    })
    .await;
    assert_eq!((s.submitted, s.completed), (4, 4), "{s:?}");
    assert_ne!(s.workers[0].pid, w1);
    assert_eq!(
        s.workers[0].tasks, 0,
        "a fresh worker has run nothing: {s:?}"
    );
    assert!(all_gone(vec![w1], BOUND).await);

    // A crash: a failure and a crashed worker.
    let err = within("5", pool.apply(exit_with, 5))
        .await
        .expect_err("exit");
    assert!(err.is_worker_died());
    let s = stats_when(&pool, "crash", |s| {
        s.workers_started == 3 && s.workers.len() == 1
    })
    .await;
    assert_eq!(
        (
            s.submitted,
            s.completed,
            s.failed,
            s.workers_crashed,
            s.workers_recycled
        ),
        (5, 4, 1, 1, 1),
        "{s:?}"
    );

    // A timeout: counted as timed out, not failed; the worker counts as killed on a
    // timeout, not as crashed.
    let err = within(
        "6",
        pool.apply(sleep_forever, ())
            .timeout(Duration::from_millis(200)),
    )
    .await
    .expect_err("timeout");
    assert!(err.is_timeout());
    let s = stats_when(&pool, "timeout", |s| {
        s.workers_started == 4 && s.workers.len() == 1
    })
    .await;
    assert_eq!(
        (
            s.submitted,
            s.completed,
            s.failed,
            s.timed_out,
            s.workers_crashed,
            s.workers_killed_on_timeout
        ),
        (6, 4, 1, 1, 1, 1),
        "{s:?}"
    );

    // A busy worker and two jobs queued behind it (none is sent ahead to a worker
    // whose job is long or of unknown length); one of them is dropped.
    let busy = pool.apply_async(block_until, (scratch.path("started"), scratch.path("go")));
    scratch.wait_for("started").await;
    let b = pool.apply_async(double, 7);
    let c = pool.apply_async(touch, scratch.path("c"));
    let s = stats_when(&pool, "queued", |s| s.queued == 2).await;
    assert_eq!(s.submitted, 9, "{s:?}");
    drop(c);
    scratch.touch("go");
    within("busy", busy).await.expect("busy ends");
    assert_eq!(within("b", b).await, Ok(14));
    let s = stats_when(&pool, "dropped", |s| s.cancelled == 1 && s.queued == 0).await;
    assert_eq!((s.submitted, s.completed, s.cancelled), (9, 6, 1), "{s:?}");
    assert!(!scratch.exists("c"));

    // An abort of a running task: cancelled, and its worker replaced.
    let running = pool.apply_async(start_then_sleep, scratch.path("started-2"));
    scratch.wait_for("started-2").await;
    running.abort();
    assert_eq!(within("abort", running).await, Err(TaskError::Cancelled));
    let s = stats_when(&pool, "abort", |s| {
        s.workers_started == 5 && s.workers.len() == 1
    })
    .await;
    assert_eq!(
        (s.submitted, s.completed, s.failed, s.timed_out, s.cancelled),
        (10, 6, 1, 1, 2),
        "{s:?}"
    );
    assert_eq!(
        (
            s.workers_crashed,
            s.workers_killed_on_timeout,
            s.workers_killed_on_abort
        ),
        (1, 1, 1),
        "{s:?}"
    );

    // One more completion on the last worker.
    assert_eq!(within("last", pool.apply(double, 1)).await, Ok(2));
    let s = pool.stats();
    assert_eq!(
        (s.submitted, s.completed, s.failed, s.timed_out, s.cancelled),
        (11, 7, 1, 1, 2),
        "{s:?}"
    );
    assert_eq!(
        s.submitted,
        s.completed + s.failed + s.timed_out + s.cancelled,
        "every task has one outcome: {s:?}"
    );
    assert_eq!(
        (
            s.workers_started,
            s.workers_recycled,
            s.workers_crashed,
            s.workers_killed_on_timeout,
            s.workers_killed_on_abort,
            s.start_failures
        ),
        (5, 1, 1, 1, 1, 0),
        "{s:?}"
    );
    assert_eq!(s.workers[0].tasks, 1, "{s:?}");

    within("join", pool.join()).await;
    let s = pool.stats();
    assert!(s.workers.is_empty(), "no live worker after join: {s:?}");
    assert_eq!(s.workers_started, 5);
}

/// Each live worker is listed with its slot and pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_list_every_live_worker() {
    let pool = within("build", support::builder().processes(3).build())
        .await
        .expect("pool builds");
    let s = pool.stats();
    let mut slots: Vec<usize> = s.workers.iter().map(|w| w.index).collect();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1, 2]);
    // Workers are this process's children, or its fork server's.
    let parent = match support::start_method() {
        procpool::StartMethod::ForkServer => {
            let server = s
                .forkserver_pid
                .expect("a fork server pool names its server");
            assert!(support::is_running(server));
            assert_eq!(support::parent_of(server), Some(std::process::id()));
            server
        }
        _ => {
            assert_eq!(s.forkserver_pid, None);
            std::process::id()
        }
    };
    for w in &s.workers {
        assert!(support::is_running(w.pid), "{w:?}");
        assert_eq!(support::parent_of(w.pid), Some(parent), "{w:?}");
    }
    let results: Vec<u32> = within(
        "map",
        pool.map(pid_after_sleep, vec![50u64; 12]).chunk_size(1),
    )
    .await
    .expect("map");
    let s = pool.stats();
    assert_eq!(s.workers.iter().map(|w| w.tasks).sum::<u64>(), 12, "{s:?}");
    for w in &s.workers {
        let ran = results.iter().filter(|&&p| p == w.pid).count() as u64;
        assert_eq!(w.tasks, ran, "{w:?}");
    }
    within("terminate", pool.terminate()).await;
}

/// A panicking task is a failure (`PoolStats::failed`: "panics, worker deaths, codec
/// errors, termination"), not a completion.
///
/// What happens instead: the driver counts every job whose reply is `Outcome::Ok` as
/// completed (`driver.rs`, `complete`: "Panics inside the chunk are counted as
/// completions here"); the panic is only found when the caller decodes the results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_counts_as_failed() {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let err = within("panic", pool.apply(panics, ()))
        .await
        .expect_err("panics");
    assert!(err.is_panic());
    let s = pool.stats();
    assert_eq!((s.completed, s.failed), (0, 1), "{s:?}");
    within("terminate", pool.terminate()).await;
}

/// Tasks failed by `terminate` are failures (`PoolStats::failed` includes
/// "termination"), whether they were running or still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_tasks_count_as_failed() {
    let scratch = Scratch::new("stats-terminate");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let busy = pool.apply_async(start_then_sleep, scratch.path("started"));
    scratch.wait_for("started").await;
    let rest: Vec<_> = (0..3u64).map(|x| pool.apply_async(double, x)).collect();
    let p = pool.clone();
    // Nothing is sent ahead to a worker whose job is long or of unknown length.
    assert!(wait_until(BOUND, move || p.stats().queued == 3).await);
    within("terminate", pool.terminate()).await;
    assert_eq!(within("busy", busy).await, Err(TaskError::Terminated));
    for h in rest {
        assert_eq!(within("rest", h).await, Err(TaskError::Terminated));
    }
    let s = pool.stats();
    assert_eq!(s.submitted, 4, "{s:?}");
    assert_eq!(
        s.failed, 4,
        "running, pipelined and queued tasks all failed: {s:?}"
    );
}
