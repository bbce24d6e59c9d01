#![cfg(target_os = "linux")]
//! Progress hooks of the `map` family: the first call before any result, counts that
//! only grow and end at the number of tasks, failures counted, the total known from a
//! sized input and unknown from a stream of unknown length; and the workers gone at the
//! end.
procpool::enable_test_support!();
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use procpool::{Pool, Progress, TaskError};

use support::{wait_until, within};

fn fail_on_multiples_of_7(x: u64) -> u64 {
    if x % 7 == 0 {
        panic!("{x} is a multiple of 7");
    }
    x
}

/// A hook that records every call, and the record.
fn recorder() -> (
    impl Fn(Progress) + Send + Sync + 'static,
    Arc<Mutex<Vec<Progress>>>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (move |p| sink.lock().unwrap().push(p), seen)
}

/// Checks a run's record: it starts at nothing done, never goes back, and ends with
/// `done` tasks of which `failed` failed, out of `total`.
fn check(seen: &[Progress], done: usize, failed: usize, total: Option<usize>, what: &str) {
    let first = seen.first().unwrap_or_else(|| panic!("{what}: no call"));
    assert_eq!((first.done, first.failed), (0, 0), "{what}: first call");
    for pair in seen.windows(2) {
        assert!(
            pair[1].done >= pair[0].done && pair[1].failed >= pair[0].failed,
            "{what}: went back: {pair:?}"
        );
    }
    assert!(
        seen.iter().all(|p| p.total == total && p.failed <= p.done),
        "{what}: {seen:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!(
        (last.done, last.failed),
        (done, failed),
        "{what}: last call"
    );
}

async fn finish(pool: Pool) {
    let pids = support::worker_pids(&pool);
    pool.terminate().await;
    assert!(
        wait_until(Duration::from_secs(10), || pids
            .iter()
            .all(|&p| support::is_gone(p)))
        .await,
        "workers left behind: {pids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_reports_every_task_and_every_failure() {
    let pool = support::pool(2).await;
    let n = 2_000u64;
    let (hook, seen) = recorder();
    let results = within(
        "map",
        pool.map(support::square, 0..n).chunk_size(3).progress(hook),
    )
    .await
    .expect("map");
    assert_eq!(results.len(), n as usize);
    check(
        &seen.lock().unwrap(),
        n as usize,
        0,
        Some(n as usize),
        "map",
    );

    // Failures: map stops at the first, the hook counts what came until then.
    let (hook, seen) = recorder();
    let err = within(
        "failing map",
        pool.map(fail_on_multiples_of_7, 1..=n)
            .chunk_size(1)
            .progress(hook),
    )
    .await
    .expect_err("a task fails");
    assert!(matches!(err, TaskError::Panicked(_)), "{err:?}");
    let last = *seen.lock().unwrap().last().unwrap();
    assert!(last.failed >= 1 && last.done >= 7, "{last:?}");
    finish(pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_report_failures_and_an_unknown_total() {
    let pool = support::pool(2).await;
    let n = 1_000u64;
    let failing = (1..=n).filter(|x| x % 7 == 0).count();

    let (hook, seen) = recorder();
    let got: Vec<Result<u64, TaskError>> = within(
        "imap_unordered",
        pool.imap_unordered(fail_on_multiples_of_7, (1..=n).collect::<Vec<_>>())
            .chunk_size(1)
            .progress(hook)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got.iter().filter(|r| r.is_err()).count(), failing);
    check(
        &seen.lock().unwrap(),
        n as usize,
        failing,
        Some(n as usize),
        "imap_unordered",
    );

    // A stream whose length is not known in advance (a filter's may be anything).
    let (hook, seen) = recorder();
    let input = futures::stream::iter(1..=n).filter(|_| futures::future::ready(true));
    let got: Vec<Result<u64, TaskError>> = within(
        "imap over a stream",
        pool.imap(fail_on_multiples_of_7, input)
            .chunk_size(2)
            .progress(hook)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got.len(), n as usize);
    check(
        &seen.lock().unwrap(),
        n as usize,
        failing,
        None,
        "imap over a stream",
    );
    finish(pool).await;
}
