#![cfg(target_os = "linux")]
//! `Map::spawn`, Python's `map_async`: the map is submitted before `spawn` returns, so
//! `close()` and `join()` right after it lose nothing.

procpool::enable_test_support!();

mod support;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use support::*;

fn squares(n: u64) -> Vec<u64> {
    (0..n).map(|x| x * x).collect()
}

/// On a current-thread runtime the spawned task cannot run before `close()`: only an
/// eager submission gets the work in.
#[tokio::test(flavor = "current_thread")]
async fn spawn_then_close_then_join_on_a_current_thread_runtime() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let pids = worker_pids(&pool);
    let h = pool.map(square, 0..100u64).spawn();
    pool.close();
    within("join", pool.join()).await;
    assert_eq!(within("results", h).await, Ok(squares(100)));
    assert!(pool.stats().workers.is_empty());
    assert_all_gone(&pids).await;
}

/// More chunks than a stream's window: the whole input is taken at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_takes_the_whole_input_not_a_window() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let pids = worker_pids(&pool);
    let h = pool.map(square, 0..1000u64).chunk_size(1).spawn();
    pool.close();
    within("join", pool.join()).await;
    assert_eq!(within("results", h).await, Ok(squares(1000)));
    assert_eq!(pool.stats().completed, 1000);
    assert_all_gone(&pids).await;
}

/// Spawned outside any runtime: still submitted at once, collected when awaited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_outside_a_runtime() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let pids = worker_pids(&pool);
    let other = pool.clone();
    let h = std::thread::spawn(move || other.map(square, 0..100u64).spawn())
        .join()
        .expect("spawns");
    pool.close();
    within("join", pool.join()).await;
    assert_eq!(within("results", h).await, Ok(squares(100)));
    assert_all_gone(&pids).await;
}

/// A task's error comes back through the handle, as from an awaited `Map`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_error_comes_through_the_handle() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let h = pool
        .map(sleep_ms, [0u64, 5_000, 0])
        .chunk_size(1)
        .timeout(Duration::from_millis(200))
        .spawn();
    pool.close();
    let err = within("results", h)
        .await
        .expect_err("the second times out");
    assert!(err.is_timeout(), "{err:?}");
    within("join", pool.join()).await;
}

/// The input's panic is resumed by the handle, after the items before it ran.
#[tokio::test(flavor = "current_thread")]
async fn an_input_panic_comes_through_the_handle() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let input = (0..100u64).inspect(|&x| {
        if x == 50 {
            panic!("input fails at 50");
        }
    });
    let h = pool.map(square, input).spawn();
    pool.close();
    within("join", pool.join()).await;
    assert_eq!(pool.stats().completed, 50, "{:?}", pool.stats());
    let panic = within("results", AssertUnwindSafe(h).catch_unwind())
        .await
        .expect_err("the input panicked");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"input fails at 50"));
}

/// Dropping the handle cancels the chunks that have not started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_cancels_what_has_not_started() {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let h = pool.map(sleep_ms, vec![100u64; 20]).chunk_size(1).spawn();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(h);
    assert!(
        wait_until(BOUND, || {
            let s = pool.stats();
            s.queued == 0 && s.submitted == s.completed + s.cancelled
        })
        .await,
        "{:?}",
        pool.stats()
    );
    let s = pool.stats();
    assert!(
        s.cancelled >= 15,
        "the queued chunks were not cancelled: {s:?}"
    );
    within("terminate", pool.terminate()).await;
}

/// `Imap::spawn` and `ImapUnordered::spawn`, Python's `imap`: the whole input is
/// submitted before `spawn` returns, past the stream's window, so `close()` and
/// `join()` right after it lose nothing; the results wait to be taken.
#[tokio::test(flavor = "current_thread")]
async fn imap_spawn_then_close_then_join_on_a_current_thread_runtime() {
    use futures::StreamExt;
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let pids = worker_pids(&pool);
    // 500 chunks of one: far more than the lazy stream's window (16 × processes).
    let ordered = pool.imap(square, 0..500u64).chunk_size(1).spawn();
    let unordered = pool.imap_unordered(square, 0..500u64).chunk_size(1).spawn();
    pool.close();
    within("join", pool.join()).await;
    assert_eq!(pool.stats().completed, 1000, "{:?}", pool.stats());
    let got: Vec<_> = within("ordered", ordered.collect::<Vec<_>>()).await;
    assert_eq!(got, squares(500).into_iter().map(Ok).collect::<Vec<_>>());
    let mut got: Vec<u64> = within("unordered", unordered.collect::<Vec<_>>())
        .await
        .into_iter()
        .map(|r| r.expect("succeeds"))
        .collect();
    got.sort_unstable();
    assert_eq!(got, squares(500));
    assert_all_gone(&pids).await;
}

/// Without `spawn`, the same lazy stream submits nothing before it is polled, and a
/// pool closed first refuses it: the difference `spawn` makes.
#[tokio::test(flavor = "current_thread")]
async fn a_lazy_imap_after_close_fails_closed() {
    use futures::StreamExt;
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let lazy = pool.imap(square, 0..10u64);
    pool.close();
    within("join", pool.join()).await;
    let got: Vec<_> = within("lazy", lazy.collect::<Vec<_>>()).await;
    assert!(!got.is_empty());
    assert!(
        got.iter()
            .all(|r| matches!(r, Err(procpool::TaskError::Closed))),
        "{got:?}"
    );
}

/// An input that panics before its first item: `spawn` returns, and the stream's
/// first `next()` resumes the panic.
#[tokio::test(flavor = "current_thread")]
async fn imap_spawn_resumes_an_early_input_panic_in_next() {
    use futures::StreamExt;
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let input = (0..10u64).inspect(|_| panic!("input fails at once"));
    let mut results = pool.imap(square, input).spawn();
    let panic = within("next", AssertUnwindSafe(results.next()).catch_unwind())
        .await
        .expect_err("the input panicked");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"input fails at once"));
    within("terminate", pool.terminate()).await;
}

/// An input that panics mid-way: the results before it come first, then the panic.
#[tokio::test(flavor = "current_thread")]
async fn imap_spawn_yields_the_results_before_an_input_panic() {
    use futures::StreamExt;
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let input = (0..100u64).inspect(|&x| {
        if x == 30 {
            panic!("input fails at 30");
        }
    });
    let mut results = pool.imap(square, input).chunk_size(1).spawn();
    pool.close();
    within("join", pool.join()).await;
    for x in 0..30u64 {
        assert_eq!(within("next", results.next()).await, Some(Ok(x * x)));
    }
    let panic = within("next", AssertUnwindSafe(results.next()).catch_unwind())
        .await
        .expect_err("the input panicked");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"input fails at 30"));
}
