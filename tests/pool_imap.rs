#![cfg(target_os = "linux")]
//! `imap` and `imap_unordered`: order, per-item errors, iterator and stream inputs,
//! backpressure over an endless input, and what dropping the stream does.
procpool::enable_test_support!();
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use procpool::{Pool, TaskError};

use support::{scripted, square, touch, wait_until, within, Script, TempPath};

fn identity(x: u64) -> u64 {
    x
}

fn fail_on_5_and_13(x: u32) -> u32 {
    if x == 5 || x == 13 {
        panic!("item {x} fails");
    }
    x * 10
}

/// Pulls the next item, failing the test if the stream ends or takes too long.
async fn next<S: futures::Stream + Unpin>(s: &mut S) -> S::Item {
    within("next item", s.next())
        .await
        .expect("the stream ended early")
}

/// Every submitted task is accounted for: it completed, failed or was cancelled.
fn settled(pool: &Pool) -> bool {
    let s = pool.stats();
    s.queued == 0 && s.submitted == s.completed + s.failed + s.cancelled + s.timed_out
}

#[tokio::test]
async fn imap_yields_in_input_order() {
    let pool = support::pool(2).await;
    // Early items sleep longest, so they finish last.
    let input: Vec<u64> = (0..10).map(|i| (10 - i) * 10).collect();
    let got: Vec<u64> = within(
        "imap",
        pool.imap(support::sleep_ms, input.clone())
            .chunk_size(1)
            .map(|r| r.expect("task result"))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got, input);

    let got: Vec<u64> = within(
        "imap range",
        pool.imap(square, 0..500u64)
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got, (0..500).map(|x| x * x).collect::<Vec<_>>());
    pool.terminate().await;
}

#[tokio::test]
async fn imap_takes_streams_in_order() {
    let pool = support::pool(2).await;
    let want: Vec<u64> = (0..40).map(|x| x * x).collect();
    let s = pool.imap(square, futures::stream::iter(0..40u64));
    let got: Vec<u64> = within("futures stream", s.map(Result::unwrap).collect::<Vec<_>>()).await;
    assert_eq!(got, want);
    let s = pool
        .imap(square, tokio_stream::iter(0..40u64))
        .chunk_size(3);
    let got: Vec<u64> = within("tokio stream", s.map(Result::unwrap).collect::<Vec<_>>()).await;
    assert_eq!(got, want);
    pool.terminate().await;
}

#[tokio::test]
async fn an_imap_error_fails_only_its_own_item() {
    let pool = support::pool(2).await;
    for chunk in [1, 4] {
        let got: Vec<Result<u32, TaskError>> = within(
            "imap",
            pool.imap(fail_on_5_and_13, 0..20u32)
                .chunk_size(chunk)
                .collect::<Vec<_>>(),
        )
        .await;
        assert_eq!(got.len(), 20, "the stream goes on after an error");
        for (i, r) in got.iter().enumerate() {
            match i {
                5 | 13 => {
                    let msg = r
                        .as_ref()
                        .unwrap_err()
                        .panic()
                        .map(|p| p.message().to_string());
                    assert_eq!(msg, Some(format!("item {i} fails")), "chunk {chunk}");
                }
                _ => assert_eq!(r, &Ok(i as u32 * 10), "chunk {chunk}"),
            }
        }
    }
    pool.terminate().await;
}

#[tokio::test]
async fn a_finished_imap_stays_finished() {
    let pool = support::pool(2).await;
    let mut s = pool.imap(square, vec![1u64, 2]);
    assert_eq!(next(&mut s).await, Ok(1));
    assert_eq!(next(&mut s).await, Ok(4));
    assert_eq!(within("end", s.next()).await, None);
    assert_eq!(within("end again", s.next()).await, None);
    pool.terminate().await;
}

#[tokio::test]
async fn imap_unordered_from_an_iterator_yields_every_result() {
    let pool = support::pool(2).await;
    let got: Vec<u64> = within(
        "imap_unordered",
        pool.imap_unordered(square, 0..300u64)
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got.len(), 300);
    let got: HashSet<u64> = got.into_iter().collect();
    assert_eq!(got, (0..300).map(|x| x * x).collect::<HashSet<_>>());
    pool.terminate().await;
}

#[tokio::test]
async fn imap_unordered_from_a_stream_yields_every_result() {
    let pool = support::pool(2).await;
    let want: HashSet<u64> = (0..100).map(|x| x * x).collect();
    let s = pool.imap_unordered(square, futures::stream::iter(0..100u64));
    let got: HashSet<u64> = within("futures", s.map(Result::unwrap).collect::<HashSet<_>>()).await;
    assert_eq!(got, want);
    let s = pool
        .imap_unordered(square, tokio_stream::iter(0..100u64))
        .chunk_size(7);
    let got: HashSet<u64> = within("tokio", s.map(Result::unwrap).collect::<HashSet<_>>()).await;
    assert_eq!(got, want);
    let unknown = futures::stream::unfold(0u64, |n| async move { (n < 100).then_some((n, n + 1)) });
    let s = pool.imap_unordered(square, unknown);
    let got: HashSet<u64> = within("unfold", s.map(Result::unwrap).collect::<HashSet<_>>()).await;
    assert_eq!(got, want);
    pool.terminate().await;
}

#[tokio::test]
async fn imap_unordered_yields_in_completion_order() {
    let pool = support::pool(2).await;
    let gate = TempPath::new("unordered-gate");
    // Item 0 blocks until the gate opens; the six others are quick.
    let mut input = vec![Script::new(0).wait_for(&gate)];
    input.extend((1..=6).map(Script::new));
    let mut s = pool.imap_unordered(scripted, input).chunk_size(1);
    // At most one quick item can be stuck behind item 0 on its worker, so three quick
    // results come while item 0 still waits.
    let mut early = Vec::new();
    for _ in 0..3 {
        early.push(next(&mut s).await.expect("task").0);
    }
    assert!(!early.contains(&0), "{early:?}");
    gate.touch();
    let mut all: Vec<u64> = early;
    while let Some(r) = within("rest", s.next()).await {
        all.push(r.expect("task").0);
    }
    all.sort_unstable();
    assert_eq!(all, (0..=6).collect::<Vec<_>>());
    pool.terminate().await;
}

#[tokio::test]
async fn imap_sends_short_chunks_when_the_input_has_nothing_more_ready() {
    let pool = support::pool(2).await;
    let (mut tx, rx) = futures::channel::mpsc::channel::<u64>(1);
    // Chunks of 4 are asked for, but each item must come back before the next is sent.
    let mut s = pool.imap(square, rx).chunk_size(4);
    for i in 0..5u64 {
        within("send", tx.send(i)).await.expect("send");
        assert_eq!(next(&mut s).await, Ok(i * i));
    }
    drop(tx);
    assert_eq!(within("end", s.next()).await, None);
    pool.terminate().await;
}

#[tokio::test]
async fn an_imap_submits_nothing_until_it_is_polled() {
    let pool = support::pool(1).await;
    let file = TempPath::new("imap-unpolled");
    let mut s = pool.imap(touch, vec![file.arg()]);
    within("other", pool.apply(support::whoami, ()))
        .await
        .unwrap();
    assert!(!file.exists(), "an unpolled imap ran its task");
    assert_eq!(pool.stats().submitted, 1);
    next(&mut s).await.expect("task");
    assert!(file.exists());
    pool.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_over_an_endless_stream_pulls_a_bounded_number_of_items() {
    // Shallow pipelines, so that the default window is small beside what is consumed.
    const DEPTH: u64 = 64;
    let pool = support::builder()
        .processes(2)
        .pipeline_depth(DEPTH as usize)
        .build()
        .await
        .expect("pool builds");
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let input = futures::stream::iter(0u64..).map(move |i| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        // An unbounded pull would never return to the test: fail instead of hanging.
        assert!(n <= 100_000, "imap pulled its input without bound");
        i
    });
    let mut results = pool.imap(identity, input);

    // More than the window holds, so that it is refilled a few times.
    const N: u64 = 1_500;
    let (mut lead_first_half, mut lead_second_half, mut max_queued) = (0, 0, 0);
    for k in 0..N {
        assert_eq!(next(&mut results).await, Ok(k));
        let lead = pulled.load(Ordering::SeqCst) - (k + 1);
        if k < N / 2 {
            lead_first_half = lead_first_half.max(lead);
        } else {
            lead_second_half = lead_second_half.max(lead);
        }
        max_queued = max_queued.max(pool.stats().queued);
        // A slow consumer: the workers are done with everything in flight meanwhile.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The lead is bounded by a constant, not by how much was consumed: by default, four
    // times what fills both workers' pipelines of tiny tasks (2 x DEPTH), and a chunk.
    const LEAD: u64 = 4 * 2 * DEPTH + 16;
    assert!(
        lead_first_half <= LEAD,
        "lead {lead_first_half} in the first half"
    );
    assert!(
        lead_second_half <= LEAD,
        "lead {lead_second_half} in the second half"
    );
    assert!(max_queued <= LEAD as usize, "{max_queued} jobs queued");

    // Dropping the stream stops feeding work, and the queue empties.
    drop(results);
    let at_drop = pulled.load(Ordering::SeqCst);
    assert!(
        wait_until(support::BOUND, || settled(&pool)).await,
        "{:?}",
        pool.stats()
    );
    let submitted = pool.stats().submitted;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        at_drop,
        "input pulled after the drop"
    );
    assert_eq!(
        pool.stats().submitted,
        submitted,
        "work submitted after the drop"
    );
    assert_eq!(within("after", pool.apply(square, 3)).await, Ok(9));
    pool.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_the_items_pulled_ahead() {
    let pool = support::pool(2).await;
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let input = futures::stream::iter(0u64..).map(move |i| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(
            n <= 100_000,
            "imap_unordered pulled its input without bound"
        );
        i
    });
    let mut results = pool
        .imap_unordered(identity, input)
        .max_in_flight(3)
        .chunk_size(2);
    let mut max_lead = 0;
    for k in 0..100u64 {
        next(&mut results).await.expect("task");
        max_lead = max_lead.max(pulled.load(Ordering::SeqCst) - (k + 1));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Three chunks of two in flight, less the one being yielded.
    assert!(
        max_lead <= 6,
        "pulled {max_lead} items ahead with max_in_flight(3), chunk 2"
    );
    drop(results);
    assert!(wait_until(support::BOUND, || settled(&pool)).await);
    pool.terminate().await;
}

#[tokio::test]
async fn dropping_an_imap_of_slow_tasks_empties_the_queue() {
    let pool = support::pool(2).await;
    let input = futures::stream::iter(std::iter::repeat(20u64));
    let mut results = pool.imap(support::sleep_ms, input);
    for _ in 0..3 {
        assert_eq!(next(&mut results).await, Ok(20));
    }
    let queued = pool.stats().queued;
    drop(results);
    assert!(
        wait_until(support::BOUND, || settled(&pool)).await,
        "{:?}",
        pool.stats()
    );
    let stats = pool.stats();
    // The jobs still queued at the drop were removed, not run.
    assert!(
        stats.cancelled as usize >= queued.saturating_sub(2),
        "{queued} queued at the drop: {stats:?}"
    );
    assert!(stats.submitted < 40, "{stats:?}");
    pool.terminate().await;
}

/// Streams that share workers: one driver's batch of replies holds replies for several
/// streams, each handed to its own stream, and a stream dropped midway takes nothing
/// from the others.
#[tokio::test]
async fn concurrent_streams_on_one_worker_each_get_their_own_replies() {
    let pool = support::pool(1).await;
    let streams = (0..4u64).map(|k| {
        let pool = pool.clone();
        async move {
            let input: Vec<u64> = (0..5_000).map(|i| i * 4 + k).collect();
            let ordered: Vec<u64> = pool
                .imap(identity, input.clone())
                .chunk_size(1)
                .map(|r| r.expect("task result"))
                .collect()
                .await;
            assert_eq!(ordered, input, "stream {k}, ordered");
            let mut unordered: Vec<u64> = pool
                .imap_unordered(identity, input.clone())
                .chunk_size(1)
                .map(|r| r.expect("task result"))
                .collect()
                .await;
            unordered.sort_unstable();
            assert_eq!(unordered, input, "stream {k}, unordered");
        }
    });
    let dropped = async {
        let mut s = pool.imap(identity, 0..1_000_000u64).chunk_size(1);
        for i in 0..100 {
            assert_eq!(next(&mut s).await, Ok(i));
        }
    };
    within(
        "four streams and a dropped one",
        futures::future::join(futures::future::join_all(streams), dropped),
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || settled(&pool)).await,
        "every task settled: {:?}",
        pool.stats()
    );
    pool.terminate().await;
}
