#![cfg(target_os = "linux")]
//! `map` and `starmap`: results in input order from iterators and streams, errors,
//! chunking (counted through the workers' job counts), and dropping a `Map`.
procpool::enable_test_support!();
mod support;

use std::future::IntoFuture;
use std::time::Duration;

use futures::Stream;
use procpool::Pool;

use support::{scripted, square, touch, wait_until, within, Script, TempPath};

fn str_len(s: String) -> usize {
    s.chars().count()
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn fma(a: u64, b: u64, c: u64) -> u64 {
    a * b + c
}

fn repeat(s: String, n: usize) -> String {
    s.repeat(n)
}

fn negate(x: i32) -> i32 {
    -x
}

fn fail_on_tens(x: u32) -> u32 {
    if x > 0 && x % 10 == 0 {
        panic!("bad item {x}");
    }
    x
}

fn parse(s: String) -> Result<u32, String> {
    s.parse::<u32>().map_err(|e| format!("{s:?}: {e}"))
}

fn tiny(x: u32) -> u32 {
    x.wrapping_mul(3)
}

/// Job counts of every live worker, summed.
fn jobs(pool: &Pool) -> u64 {
    pool.stats().workers.iter().map(|w| w.tasks).sum()
}

#[tokio::test]
async fn map_over_a_range_gives_every_result_in_input_order() {
    let pool = support::pool(2).await;
    let got = within("map", pool.map(square, 0..100u64)).await.unwrap();
    let want: Vec<u64> = (0..100).map(|x| x * x).collect();
    assert_eq!(got, want);

    let words = ["a", "bb", "ccc", "dddd", "ünïcödé"];
    let got = within(
        "map strings",
        pool.map(
            str_len,
            words.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(got, vec![1, 2, 3, 4, 7]);

    let stats = pool.stats();
    assert_eq!(stats.submitted, 105, "{stats:?}");
    assert_eq!(stats.completed, 105, "{stats:?}");
    pool.terminate().await;
}

#[tokio::test]
async fn map_keeps_input_order_when_later_items_finish_first() {
    let pool = support::pool(2).await;
    // Early items sleep longest.
    let input: Vec<u64> = (0..8).map(|i| (8 - i) * 15).collect();
    let got = within(
        "map",
        pool.map(support::sleep_ms, input.clone()).chunk_size(1),
    )
    .await
    .unwrap();
    assert_eq!(got, input);
    pool.terminate().await;
}

#[tokio::test]
async fn map_takes_a_stream_of_known_or_unknown_length() {
    let pool = support::pool(2).await;
    let want: Vec<i32> = (0..50).map(|x| -x).collect();

    let known = futures::stream::iter(0..50);
    assert_eq!(
        within("known", pool.map(negate, known)).await.unwrap(),
        want
    );

    let tokio_stream = tokio_stream::iter(0..50);
    assert_eq!(
        within("tokio-stream", pool.map(negate, tokio_stream))
            .await
            .unwrap(),
        want
    );

    // No size hint at all, and items that are not ready at once.
    let unknown = futures::stream::unfold(0, |n| async move {
        if n == 50 {
            return None;
        }
        tokio::task::yield_now().await;
        Some((n, n + 1))
    });
    assert_eq!(unknown.size_hint(), (0, None));
    assert_eq!(
        within("unknown", pool.map(negate, unknown)).await.unwrap(),
        want
    );

    // An iterator without an exact length.
    let filtered = (0..100).filter(|x| x % 2 == 0);
    let want_even: Vec<i32> = (0..100).filter(|x| x % 2 == 0).map(|x| -x).collect();
    assert_eq!(
        within("filter", pool.map(negate, filtered)).await.unwrap(),
        want_even
    );
    pool.terminate().await;
}

#[tokio::test]
async fn map_of_an_empty_input_is_empty() {
    let pool = support::pool(2).await;
    let got = within("empty", pool.map(square, Vec::<u64>::new())).await;
    assert_eq!(got, Ok(vec![]));
    let got = within(
        "empty stream",
        pool.map(square, futures::stream::empty::<u64>()),
    )
    .await;
    assert_eq!(got, Ok(vec![]));
    assert_eq!(pool.stats().submitted, 0);
    pool.terminate().await;
}

#[tokio::test]
async fn map_fails_with_the_first_error_in_input_order_and_the_pool_serves_on() {
    let pool = support::pool(2).await;
    for chunk in [1, 3, 50] {
        let err = within("map", pool.map(fail_on_tens, 0..50u32).chunk_size(chunk))
            .await
            .expect_err("items 10, 20, 30, 40 panic");
        assert_eq!(
            err.panic().map(|p| p.message().to_string()),
            Some("bad item 10".to_string()),
            "chunk size {chunk}: {err:?}"
        );
    }
    let got = within("after", pool.map(fail_on_tens, 1..10u32))
        .await
        .unwrap();
    assert_eq!(got, (1..10).collect::<Vec<_>>());
    assert_eq!(pool.stats().workers_crashed, 0);
    pool.terminate().await;
}

#[tokio::test]
async fn map_of_a_result_returning_task_gives_each_items_own_result() {
    let pool = support::pool(2).await;
    let input = vec!["1".to_string(), "x".to_string(), "3".to_string()];
    let got: Vec<Result<u32, String>> = within("map", pool.map(parse, input)).await.unwrap();
    assert_eq!(got[0], Ok(1));
    assert!(
        got[1].as_ref().unwrap_err().starts_with("\"x\":"),
        "{got:?}"
    );
    assert_eq!(got[2], Ok(3));
    pool.terminate().await;
}

#[tokio::test]
async fn starmap_unpacks_two_and_three_arguments() {
    let pool = support::pool(2).await;
    let sums = within(
        "starmap 2",
        pool.starmap(add, vec![(1, 2), (3, 4), (-10, 4)]),
    )
    .await
    .unwrap();
    assert_eq!(sums, vec![3, 7, -6]);

    let triples: Vec<(u64, u64, u64)> = (0..60).map(|i| (i, i + 1, i + 2)).collect();
    let want: Vec<u64> = triples.iter().map(|&(a, b, c)| a * b + c).collect();
    let got = within("starmap 3", pool.starmap(fma, triples))
        .await
        .unwrap();
    assert_eq!(got, want);

    let mixed = vec![
        ("ab".to_string(), 3usize),
        ("-".to_string(), 0),
        ("x".to_string(), 1),
    ];
    let got = within("starmap mixed", pool.starmap(repeat, mixed))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec!["ababab".to_string(), String::new(), "x".to_string()]
    );

    let stream = futures::stream::iter((0..20).map(|i| (i, 2 * i)));
    let got = within("starmap stream", pool.starmap(add, stream).chunk_size(3))
        .await
        .unwrap();
    assert_eq!(got, (0..20).map(|i| 3 * i).collect::<Vec<_>>());

    // A non-capturing closure of two arguments.
    let got = within(
        "starmap closure",
        pool.starmap(
            |a: u8, b: u8| u16::from(a) * u16::from(b),
            vec![(200u8, 200u8)],
        ),
    )
    .await
    .unwrap();
    assert_eq!(got, vec![40_000u16]);
    pool.terminate().await;
}

#[tokio::test]
async fn chunk_size_sets_how_many_items_go_in_one_job() {
    let pool = support::pool(2).await;
    let got = within("map", pool.map(square, 0..100u64).chunk_size(10))
        .await
        .unwrap();
    assert_eq!(got.len(), 100);
    assert_eq!(got[99], 99 * 99);
    let stats = pool.stats();
    assert_eq!(jobs(&pool), 10, "100 items in chunks of 10: {stats:?}");
    assert_eq!(stats.submitted, 100, "counts are of tasks: {stats:?}");
    assert_eq!(stats.completed, 100, "{stats:?}");

    // 7 does not divide 100: 15 jobs, the last one short.
    let got = within(
        "starmap",
        pool.starmap(add, (0..100).map(|i| (i, i))).chunk_size(7),
    )
    .await
    .unwrap();
    assert_eq!(got, (0..100).map(|i| 2 * i).collect::<Vec<_>>());
    assert_eq!(jobs(&pool), 10 + 15);

    // Chunk size 1: one job per item.
    within("map", pool.map(square, 0..9u64).chunk_size(1))
        .await
        .unwrap();
    assert_eq!(jobs(&pool), 10 + 15 + 9);
    pool.terminate().await;
}

#[tokio::test]
async fn the_automatic_chunk_size_sends_far_fewer_jobs_than_items() {
    let pool = support::pool(2).await;
    let n = 200_000u32;
    let got = within("map 200k", pool.map(tiny, 0..n)).await.unwrap();
    assert_eq!(got.len(), n as usize);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &r)| r == (i as u32).wrapping_mul(3)));
    let stats = pool.stats();
    let jobs = jobs(&pool);
    assert!(
        (2..=64).contains(&jobs),
        "200,000 items went out in {jobs} jobs: {stats:?}"
    );
    assert_eq!(stats.submitted, u64::from(n));
    assert_eq!(stats.completed, u64::from(n));
    pool.terminate().await;
}

#[tokio::test]
async fn with_an_unknown_length_the_default_chunk_is_one_item() {
    let pool = support::pool(2).await;
    let input = futures::stream::unfold(0u64, |n| async move { (n < 12).then_some((n, n + 1)) });
    let got = within("map", pool.map(square, input)).await.unwrap();
    assert_eq!(got.len(), 12);
    assert_eq!(jobs(&pool), 12);
    pool.terminate().await;
}

#[tokio::test]
#[should_panic(expected = "chunk_size must be at least 1")]
async fn a_chunk_size_of_zero_is_refused() {
    // The pool is dropped (its workers killed) while the panic unwinds.
    let pool = support::pool(1).await;
    let _ = pool.map(square, 0..3u64).chunk_size(0);
}

#[tokio::test]
async fn a_map_dropped_before_it_is_awaited_submits_nothing() {
    let pool = support::pool(1).await;
    let file = TempPath::new("map-not-awaited");
    let map = pool.map(touch, vec![file.arg()]);
    drop(map);
    within("later", pool.apply(support::whoami, ()))
        .await
        .unwrap();
    assert!(!file.exists());
    assert_eq!(pool.stats().submitted, 1);
    pool.terminate().await;
}

#[tokio::test]
async fn dropping_a_running_map_removes_the_chunks_that_have_not_started() {
    let pool = support::pool(1).await;
    let gate = TempPath::new("map-drop-gate");
    let started = TempPath::new("map-drop-started");
    let files: Vec<TempPath> = (0..10).map(|_| TempPath::new("map-drop-item")).collect();
    let mut scripts = vec![Script::new(0).started(&started).wait_for(&gate)];
    scripts.extend(files.iter().map(|f| Script::new(1).done(f)));

    let mut map = Box::pin(pool.map(scripted, scripts).chunk_size(1).into_future());
    // Poll the map until its first item runs, then drop it.
    let first_started = tokio::select! {
        _ = &mut map => false,
        ok = wait_until(support::BOUND, || started.exists()) => ok,
    };
    assert!(first_started, "the first item never started");
    drop(map);
    gate.touch();
    within("later", pool.apply(support::whoami, ()))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || pool.stats().queued == 0).await,
        "{:?}",
        pool.stats()
    );
    let ran = files.iter().filter(|f| f.exists()).count();
    // The running item finishes; items already handed to the busy worker may run too,
    // but most of the ten never start.
    assert!(ran < 5, "{ran} of 10 items of a dropped map ran");
    assert!(!files[9].exists());
    assert!(pool.stats().cancelled > 0, "{:?}", pool.stats());
    pool.terminate().await;
}

#[tokio::test]
async fn dropping_a_running_map_runs_no_chunk_that_had_not_started() {
    let pool = support::pool(1).await;
    let gate = TempPath::new("map-drop-strict-gate");
    let started = TempPath::new("map-drop-strict-started");
    let files: Vec<TempPath> = (0..4)
        .map(|_| TempPath::new("map-drop-strict-item"))
        .collect();
    let mut scripts = vec![Script::new(0).started(&started).wait_for(&gate)];
    scripts.extend(files.iter().map(|f| Script::new(1).done(f)));

    let mut map = Box::pin(pool.map(scripted, scripts).chunk_size(1).into_future());
    let first_started = tokio::select! {
        _ = &mut map => false,
        ok = wait_until(support::BOUND, || started.exists()) => ok,
    };
    assert!(first_started, "the first item never started");
    drop(map);
    gate.touch();
    within("later", pool.apply(support::whoami, ()))
        .await
        .unwrap();
    let ran: Vec<usize> = (0..files.len()).filter(|&i| files[i].exists()).collect();
    assert!(
        ran.is_empty(),
        "items {ran:?} of a dropped map ran although they had not started"
    );
    pool.terminate().await;
}

#[tokio::test]
async fn a_map_future_can_be_spawned() {
    let pool = support::pool(2).await;
    let fut = pool.map(square, 0..30u64).chunk_size(4).into_future();
    let got = within("spawned map", tokio::spawn(fut))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, (0..30).map(|x| x * x).collect::<Vec<_>>());
    pool.terminate().await;
}

/// A reply of `n` bytes, each `n % 251`.
fn bytes_of(n: usize) -> Vec<u8> {
    vec![(n % 251) as u8; n]
}

/// Short jobs are pipelined and their replies go through the worker's reply ring;
/// replies too large for it go over the channel in their place. Mixed in one stream of
/// jobs, every reply still arrives whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_large_replies_mixed_in_one_pipeline_arrive_in_order() {
    let pool = support::pool(2).await;
    // Small warm-up so the driver pipelines (it does for jobs under 100 µs).
    let warm: Vec<u32> = (0..2000).collect();
    let warmed = within("warm-up", pool.map(tiny, warm).chunk_size(1)).await;
    assert_eq!(warmed.unwrap().len(), 2000);
    let sizes: Vec<usize> = (0..3000)
        .map(|i| match i % 7 {
            0 => 16 * 1024 - 40 + i % 80, // around the ring's inline limit
            3 => 200_000 + i,             // far over it
            5 => 0,
            _ => i % 300,
        })
        .collect();
    let out = within("mixed", pool.map(bytes_of, sizes.clone()).chunk_size(1))
        .await
        .expect("map");
    assert_eq!(out.len(), sizes.len());
    for (n, got) in sizes.iter().zip(&out) {
        assert!(
            got.len() == *n && got.iter().all(|&b| b == (n % 251) as u8),
            "reply for {n}"
        );
    }
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    pool.terminate().await;
}

/// A `map` of many small chunks keeps a bounded number of them queued (the stream's
/// window), not every chunk at once: a map of millions of tasks holds no million jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_map_queues_a_bounded_number_of_chunks() {
    let pool = support::builder()
        .processes(2)
        .pipeline_depth(64)
        .build()
        .await
        .expect("pool builds");
    let n = 100_000u32;
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let pool = pool.clone();
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut most = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(pool.stats().queued);
                tokio::task::yield_now().await;
            }
            most
        })
    };
    let out = within("map", pool.map(tiny, 0..n).chunk_size(1))
        .await
        .expect("map");
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(out.len(), n as usize);
    assert!(out.iter().enumerate().all(|(i, &x)| x == tiny(i as u32)));
    let most = within("sampler", sampler).await.expect("sampler");
    // The window: four times both workers' pipelines (2 x 64), so 512 chunks of one
    // task in flight, queued or sent.
    assert!(most > 0, "the sampler saw the queue");
    assert!(most <= 4 * 2 * 64, "{most} tasks queued at once");
    pool.terminate().await;
}
