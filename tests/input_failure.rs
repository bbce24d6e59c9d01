#![cfg(target_os = "linux")]
//! An input that panics mid-way: the `map` family yields the results of every item
//! before the panic first, then resumes the panic at its place.

procpool::enable_test_support!();

mod support;

use std::panic::AssertUnwindSafe;

use futures::{FutureExt, Stream, StreamExt};
use procpool::Pool;
use support::*;

const FAILS_AT: u64 = 50;

/// 0..100, panicking when it reaches item 50. Its size hint is exact (100), so the
/// default chunk size is Python's (several items per chunk).
fn failing_input() -> impl Iterator<Item = u64> + Send + 'static {
    (0..100u64).inspect(|&x| {
        if x == FAILS_AT {
            panic!("input fails at {x}");
        }
    })
}

/// The message of a panic payload.
fn message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Takes items until the stream panics; returns the items and the panic's message.
async fn until_panic<S>(mut stream: S) -> (Vec<u64>, String)
where
    S: Stream<Item = Result<u64, procpool::TaskError>> + Unpin,
{
    let mut got = Vec::new();
    loop {
        match within("next", AssertUnwindSafe(stream.next()).catch_unwind()).await {
            Ok(Some(result)) => got.push(result.expect("a task before the failure fails")),
            Ok(None) => panic!("the stream ended without the input's panic, after {got:?}"),
            Err(panic) => return (got, message(&*panic)),
        }
    }
}

async fn check_the_pool_goes_on(pool: Pool) {
    let pids = worker_pids(&pool);
    assert_eq!(
        within("after", pool.map(double, 0..10u64)).await,
        Ok((0..10).map(|x| 2 * x).collect::<Vec<_>>()),
        "the pool serves after an input's panic"
    );
    within("terminate", pool.terminate()).await;
    assert_all_gone(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_yields_the_results_before_a_panicking_input_then_the_panic() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let (got, panic) = until_panic(pool.imap(double, failing_input())).await;
    assert_eq!(got, (0..FAILS_AT).map(|x| 2 * x).collect::<Vec<_>>());
    assert_eq!(panic, "input fails at 50");
    check_the_pool_goes_on(pool).await;
}

#[tokio::test(flavor = "current_thread")]
async fn imap_of_chunks_of_one_on_a_current_thread_runtime() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let (got, panic) = until_panic(pool.imap(double, failing_input()).chunk_size(1)).await;
    assert_eq!(got, (0..FAILS_AT).map(|x| 2 * x).collect::<Vec<_>>());
    assert_eq!(panic, "input fails at 50");
    check_the_pool_goes_on(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_of_a_panicking_stream() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let input = futures::stream::iter(failing_input());
    let (got, panic) = until_panic(pool.imap(double, input).max_in_flight(3)).await;
    assert_eq!(got, (0..FAILS_AT).map(|x| 2 * x).collect::<Vec<_>>());
    assert_eq!(panic, "input fails at 50");
    check_the_pool_goes_on(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_unordered_yields_every_result_before_the_panic() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let (mut got, panic) = until_panic(pool.imap_unordered(double, failing_input())).await;
    got.sort_unstable();
    assert_eq!(got, (0..FAILS_AT).map(|x| 2 * x).collect::<Vec<_>>());
    assert_eq!(panic, "input fails at 50");
    check_the_pool_goes_on(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_resumes_the_panic_after_the_results_before_it() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let progress = std::sync::Arc::new(std::sync::Mutex::new(0usize));
    let seen = progress.clone();
    let map = pool
        .map(double, failing_input())
        .progress(move |p| *seen.lock().unwrap() = p.done);
    let panic = within(
        "map",
        AssertUnwindSafe(std::future::IntoFuture::into_future(map)).catch_unwind(),
    )
    .await
    .expect_err("the input panics");
    assert_eq!(message(&*panic), "input fails at 50");
    assert_eq!(
        *progress.lock().unwrap(),
        FAILS_AT as usize,
        "every item before the panic was answered first"
    );
    check_the_pool_goes_on(pool).await;
}
