#![cfg(target_os = "linux")]
//! The queue bound (`PoolBuilder::queue_bound`): at most `n` tasks in the pool
//! (submitted, not yet resolved). `apply`, `apply_async` and the `map` family wait for
//! room; `try_apply` and `try_apply_async` fail at once with `TaskError::QueueFull`;
//! a place comes back however its task ends.
//!
//! No timing here: tasks that hold their place block until a marker file exists, and
//! "it waits" is read from the pool's counters while they block.

procpool::enable_test_support!();

mod support;

use std::future::IntoFuture;
use std::time::Duration;

use futures::StreamExt;
use procpool::{Pool, TaskError, TaskHandle};
use support::*;

/// A pool of `processes` workers and a bound of `bound`.
async fn bounded(processes: usize, bound: usize) -> Pool {
    within(
        "build",
        support::builder()
            .processes(processes)
            .queue_bound(bound)
            .build(),
    )
    .await
    .expect("pool builds")
}

/// A task that holds its place until `go` exists, started (it wrote `started`).
async fn started_blocker(pool: &Pool, scratch: &Scratch, name: &str) -> TaskHandle<u32> {
    let started = format!("{name}-started");
    let handle = pool.apply_async(block_until, (scratch.path(&started), scratch.path("go")));
    scratch.wait_for(&started).await;
    handle
}

/// Waits until the pool's places taken are `n`.
async fn admitted_becomes(pool: &Pool, n: usize) {
    let p = pool.clone();
    assert!(
        wait_until(BOUND, move || p.stats().admitted == n).await,
        "admitted never became {n}: {:?}",
        pool.stats()
    );
}

/// Whether the pool has room for one task now: a `try_apply` of it succeeds.
async fn has_room(pool: &Pool) -> bool {
    match within("try_apply", pool.try_apply(double, 21)).await {
        Ok(n) => {
            assert_eq!(n, 42);
            true
        }
        Err(TaskError::QueueFull) => false,
        Err(e) => panic!("try_apply failed otherwise: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_past_the_bound_waits_until_one_finishes_and_nothing_is_lost() {
    let scratch = Scratch::new("qb-backpressure");
    let pool = bounded(1, 2).await;
    let first = started_blocker(&pool, &scratch, "a").await;
    let second = pool.apply_async(block_until, (scratch.path("b-started"), scratch.path("go")));
    admitted_becomes(&pool, 2).await;
    // Past the bound: a handle that waits in the background, an awaited `apply`, and
    // a `map`, each waiting for room.
    let third = pool.apply_async(double, 3);
    let p = pool.clone();
    let fourth = tokio::spawn(async move { p.apply(double, 4).await });
    let p = pool.clone();
    let map = tokio::spawn(async move { p.map(double, 10..20u64).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = pool.stats();
    assert_eq!(stats.submitted, 2, "only the two that fit: {stats:?}");
    assert_eq!(
        (stats.admitted, stats.queue_bound),
        (2, Some(2)),
        "{stats:?}"
    );
    assert!(!third.is_finished() && !fourth.is_finished() && !map.is_finished());
    assert!(!scratch.exists("b-started"), "the second has not started");
    scratch.touch("go");
    within("first", first).await.expect("first");
    within("second", second).await.expect("second");
    assert_eq!(within("third", third).await, Ok(6));
    assert_eq!(within("fourth", fourth).await.expect("joins"), Ok(8));
    let doubled = within("map", map).await.expect("joins").expect("map");
    assert_eq!(doubled, (10..20u64).map(|x| 2 * x).collect::<Vec<_>>());
    let stats = pool.stats();
    assert_eq!(stats.submitted, 14, "{stats:?}");
    assert_eq!(stats.completed, 14, "{stats:?}");
    assert_eq!((stats.admitted, stats.rejected), (0, 0), "{stats:?}");
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_apply_is_refused_at_the_bound_and_admitted_once_room_frees() {
    let scratch = Scratch::new("qb-shed");
    let pool = bounded(1, 2).await;
    let first = started_blocker(&pool, &scratch, "a").await;
    let second = pool.try_apply_async(block_until, (scratch.path("b"), scratch.path("go")));
    let second = second.expect("room for the second");
    let refused = within("try_apply", pool.try_apply(double, 1)).await;
    assert_eq!(refused, Err(TaskError::QueueFull));
    let refused = refused.unwrap_err();
    assert!(refused.is_queue_full());
    assert_eq!(refused.to_string(), "pool's queue is full");
    let refused = pool.try_apply_async(double, 2).map(|_| ());
    assert_eq!(refused, Err(TaskError::QueueFull));
    let stats = pool.stats();
    assert_eq!(
        (stats.rejected, stats.submitted, stats.admitted),
        (2, 2, 2),
        "{stats:?}"
    );
    scratch.touch("go");
    within("first", first).await.expect("first");
    // The place is given back before the caller hears of the result: room at once.
    assert!(has_room(&pool).await, "no room after a task ended");
    within("second", second).await.expect("second");
    let handle = pool.try_apply_async(double, 5).expect("room");
    assert_eq!(within("handle", handle).await, Ok(10));
    let stats = pool.stats();
    assert_eq!((stats.rejected, stats.admitted), (2, 0), "{stats:?}");
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_comes_back_after_a_crash_and_a_timeout() {
    let pool = bounded(1, 1).await;
    let crashed = within("crash", pool.apply(abort, ())).await;
    assert!(
        matches!(crashed, Err(TaskError::WorkerDied { .. })),
        "{crashed:?}"
    );
    assert!(has_room(&pool).await, "no room after a crash");
    let timed_out = within(
        "timeout",
        pool.apply(sleep_forever, ())
            .timeout(Duration::from_millis(200)),
    )
    .await;
    assert!(
        matches!(timed_out, Err(TaskError::TimedOut { .. })),
        "{timed_out:?}"
    );
    assert!(has_room(&pool).await, "no room after a timeout");
    // The same for a `try_apply` that crashes.
    let crashed = within("crash", pool.try_apply(abort, ())).await;
    assert!(crashed.is_err_and(|e| e.is_worker_died()));
    assert!(has_room(&pool).await, "no room after a crash");
    assert_eq!(pool.stats().admitted, 0);
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_comes_back_when_a_task_is_aborted_running_or_queued() {
    let scratch = Scratch::new("qb-abort");
    let pool = bounded(1, 2).await;
    // Running: the worker is killed, the place freed.
    let running = pool.apply_async(start_then_sleep, scratch.path("running"));
    scratch.wait_for("running").await;
    running.abort();
    assert_eq!(within("aborted", running).await, Err(TaskError::Cancelled));
    admitted_becomes(&pool, 0).await;
    // Queued: the place is freed by the abort itself, before any driver sees the task.
    let busy = started_blocker(&pool, &scratch, "busy").await;
    let queued = pool.apply_async(touch, scratch.path("queued"));
    assert_eq!(pool.stats().admitted, 2);
    queued.abort();
    assert_eq!(pool.stats().admitted, 1, "{:?}", pool.stats());
    let taken = pool
        .try_apply_async(double, 7)
        .expect("the aborted task's place");
    assert_eq!(within("aborted", queued).await, Err(TaskError::Cancelled));
    scratch.touch("go");
    within("busy", busy).await.expect("busy");
    assert_eq!(within("taken", taken).await, Ok(14));
    assert!(!scratch.exists("queued"), "an aborted queued task ran");
    admitted_becomes(&pool, 0).await;
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_comes_back_when_a_queued_or_waiting_task_is_dropped() {
    let scratch = Scratch::new("qb-drop");
    let pool = bounded(1, 2).await;
    let busy = started_blocker(&pool, &scratch, "busy").await;
    // A queued task's awaiting future, dropped: its place is free at once.
    let mut queued = pool.apply(touch, scratch.path("queued")).into_future();
    assert!(futures::poll!(&mut queued).is_pending());
    assert_eq!(pool.stats().admitted, 2);
    drop(queued);
    assert_eq!(pool.stats().admitted, 1, "{:?}", pool.stats());
    // A queued task's handle, dropped.
    let queued = pool.apply_async(touch, scratch.path("queued"));
    assert_eq!(pool.stats().admitted, 2);
    drop(queued);
    assert_eq!(pool.stats().admitted, 1, "{:?}", pool.stats());
    // Waiting for room (the bound is full again), then dropped: it is never submitted,
    // neither the background wait of a handle nor an awaited `apply`.
    let holder = pool.apply_async(block_until, (scratch.path("h"), scratch.path("go")));
    let waiting = pool.apply_async(touch, scratch.path("waiting"));
    let mut awaiting = pool.apply(touch, scratch.path("awaiting")).into_future();
    assert!(futures::poll!(&mut awaiting).is_pending());
    drop(waiting);
    drop(awaiting);
    scratch.touch("go");
    within("busy", busy).await.expect("busy");
    within("holder", holder).await.expect("holder");
    admitted_becomes(&pool, 0).await;
    // Whatever was queued before has run by now.
    assert!(has_room(&pool).await);
    for name in ["queued", "waiting", "awaiting"] {
        assert!(!scratch.exists(name), "the dropped task {name} ran");
    }
    let stats = pool.stats();
    // busy, holder and has_room's task: nothing else was submitted and ran.
    assert_eq!(stats.completed, 3, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_running_task_keeps_its_place_until_it_ends() {
    let scratch = Scratch::new("qb-detach");
    let pool = bounded(1, 1).await;
    let running = started_blocker(&pool, &scratch, "a").await;
    drop(running);
    assert_eq!(
        pool.stats().admitted,
        1,
        "a running task is still in the pool"
    );
    assert!(!has_room(&pool).await);
    scratch.touch("go");
    admitted_becomes(&pool, 0).await;
    assert!(has_room(&pool).await);
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_fails_what_is_in_the_pool_and_what_waits_for_room() {
    let scratch = Scratch::new("qb-terminate");
    let pool = bounded(1, 2).await;
    let busy = started_blocker(&pool, &scratch, "busy").await;
    let queued = pool.apply_async(double, 1);
    let waiting = pool.apply_async(double, 2);
    // Polled once: it waits in line for room (a spawned task might not have reached
    // the pool before the terminate, and would then find it closed).
    let mut awaiting = pool.apply(double, 3).into_future();
    assert!(futures::poll!(&mut awaiting).is_pending());
    let p = pool.clone();
    let map = tokio::spawn(async move { p.map(double, 0..50u64).await });
    admitted_becomes(&pool, 2).await;
    within("terminate", pool.terminate()).await;
    assert_eq!(within("busy", busy).await, Err(TaskError::Terminated));
    assert_eq!(within("queued", queued).await, Err(TaskError::Terminated));
    assert_eq!(within("waiting", waiting).await, Err(TaskError::Terminated));
    assert_eq!(
        within("awaiting", awaiting).await,
        Err(TaskError::Terminated)
    );
    let mapped = within("map", map).await.expect("joins");
    assert!(
        matches!(mapped, Err(TaskError::Terminated | TaskError::Closed)),
        "{mapped:?}"
    );
    assert_eq!(pool.stats().admitted, 0, "{:?}", pool.stats());
    let refused = pool.try_apply_async(double, 4).map(|_| ());
    assert_eq!(refused, Err(TaskError::Closed), "submitted after terminate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_larger_than_the_bound_waits_for_room_and_completes() {
    let pool = bounded(2, 3).await;
    // Chunks larger than the bound, and the default chunking.
    let squares = within("map", pool.map(square, 0..500u64).chunk_size(10)).await;
    assert_eq!(
        squares.expect("map"),
        (0..500u64).map(|x| x * x).collect::<Vec<_>>()
    );
    let squares = within("map", pool.map(square, 0..500u64)).await;
    assert_eq!(
        squares.expect("map"),
        (0..500u64).map(|x| x * x).collect::<Vec<_>>()
    );
    let unordered: Vec<u64> = within(
        "imap_unordered",
        pool.imap_unordered(double, 0..200u64)
            .map(|r| r.expect("task"))
            .collect::<Vec<_>>(),
    )
    .await;
    let mut sorted = unordered;
    sorted.sort_unstable();
    assert_eq!(sorted, (0..200u64).map(|x| 2 * x).collect::<Vec<_>>());
    // A map spawned at once takes what fits and the rest as room frees.
    let spawned = pool.map(double, 0..100u64).spawn();
    assert_eq!(
        within("spawned map", spawned).await.expect("map").len(),
        100
    );
    let stats = pool.stats();
    assert_eq!((stats.admitted, stats.rejected), (0, 0), "{stats:?}");
    assert_eq!(stats.completed, 1300, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_gives_back_the_places_of_its_queued_chunks() {
    let scratch = Scratch::new("qb-stream");
    let pool = bounded(1, 4).await;
    let busy = started_blocker(&pool, &scratch, "busy").await;
    let mut stream = pool.imap(double, 0..100u64).chunk_size(1);
    assert!(futures::poll!(stream.next()).is_pending());
    assert_eq!(pool.stats().admitted, 4, "{:?}", pool.stats());
    drop(stream);
    assert_eq!(pool.stats().admitted, 1, "{:?}", pool.stats());
    scratch.touch("go");
    within("busy", busy).await.expect("busy");
    admitted_becomes(&pool, 0).await;
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_says_closed_not_queue_full() {
    let scratch = Scratch::new("qb-closed");
    let pool = bounded(1, 1).await;
    let busy = started_blocker(&pool, &scratch, "busy").await;
    let waiting = pool.apply_async(double, 1);
    pool.close();
    assert_eq!(
        within("try_apply", pool.try_apply(double, 2)).await,
        Err(TaskError::Closed)
    );
    assert_eq!(
        pool.try_apply_async(double, 3).map(|_| ()),
        Err(TaskError::Closed)
    );
    // The task waiting for room was not accepted: it fails; the running one finishes.
    assert_eq!(within("waiting", waiting).await, Err(TaskError::Closed));
    scratch.touch("go");
    within("busy", busy)
        .await
        .expect("accepted work still runs");
    assert_eq!(
        pool.stats().rejected,
        0,
        "Closed is not counted as rejected"
    );
    within("join", pool.join()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bound_the_try_forms_never_refuse() {
    let scratch = Scratch::new("qb-unbounded");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let busy = started_blocker(&pool, &scratch, "busy").await;
    let handles: Vec<_> = (0..50u64)
        .map(|i| pool.try_apply_async(double, i).expect("no bound"))
        .collect();
    scratch.touch("go");
    within("busy", busy).await.expect("busy");
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(within("handle", handle).await, Ok(2 * i as u64));
    }
    assert_eq!(within("try_apply", pool.try_apply(double, 4)).await, Ok(8));
    let stats = pool.stats();
    assert_eq!(
        (stats.queue_bound, stats.admitted, stats.rejected),
        (None, 0, 0)
    );
    pool.close();
    assert_eq!(
        within("try_apply", pool.try_apply(double, 2)).await,
        Err(TaskError::Closed)
    );
    within("join", pool.join()).await;
}

/// Every way a task can end, many at once against a small bound: when all is done,
/// every place has come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_place_leaks_whatever_the_tasks_do() {
    let pool = bounded(2, 3).await;
    let mut joins = Vec::new();
    let mut dropped = Vec::new();
    for i in 0..60u64 {
        let p = pool.clone();
        match i % 6 {
            0 => joins.push(tokio::spawn(async move {
                assert_eq!(p.apply(double, i).await, Ok(2 * i));
            })),
            1 => joins.push(tokio::spawn(async move {
                let r = p.try_apply(double, i).await;
                assert!(r == Ok(2 * i) || r == Err(TaskError::QueueFull), "{r:?}");
            })),
            // Dropped at once: queued, waiting for room, or running, detached.
            2 => dropped.push(p.apply_async(pid_after_sleep, 5)),
            3 => joins.push(tokio::spawn(async move {
                let handle = p.apply_async(pid_after_sleep, 5);
                handle.abort();
                let r = handle.await;
                assert!(r.is_ok() || r == Err(TaskError::Cancelled), "{r:?}");
            })),
            4 => joins.push(tokio::spawn(async move {
                let r = p.apply(abort, ()).await;
                assert!(r.is_err_and(|e| e.is_worker_died()));
            })),
            _ => joins.push(tokio::spawn(async move {
                let r = p
                    .apply(sleep_forever, ())
                    .timeout(Duration::from_millis(50));
                assert!(r.await.is_err_and(|e| e.is_timeout()));
            })),
        }
        if i % 12 == 11 {
            dropped.clear();
        }
    }
    drop(dropped);
    for join in joins {
        within("a task of the mix", join)
            .await
            .expect("its checks hold");
    }
    admitted_becomes(&pool, 0).await;
    assert!(has_room(&pool).await);
    within("terminate", pool.terminate()).await;
}

/// A stream's results that wait for its consumer hold no place: a place comes back
/// when its task ends, not when its result is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_waiting_for_a_slow_consumer_hold_no_place() {
    let pool = bounded(1, 3).await;
    let mut stream = pool.imap(double, 0..3u64).chunk_size(1);
    let first = futures::poll!(stream.next());
    assert!(
        first.is_pending() || first == std::task::Poll::Ready(Some(Ok(0))),
        "{first:?}"
    );
    // Not polled again until every task has ended.
    admitted_becomes(&pool, 0).await;
    assert!(has_room(&pool).await);
    let rest: Vec<u64> = within("the rest", stream.map(|r| r.expect("task")).collect()).await;
    let expected: &[u64] = if first.is_pending() {
        &[0, 2, 4]
    } else {
        &[2, 4]
    };
    assert_eq!(rest, expected);
    within("terminate", pool.terminate()).await;
}
