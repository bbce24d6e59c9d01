//! A slow capture sink never blocks the pool or the worker: lines it cannot take in
//! time are dropped and counted. (Its own test binary: the sink holds up the one
//! output thread of the process, which other tests' captures would share.)
#![cfg(target_os = "linux")]

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use procpool::{OutputLine, WorkerOutput};

const BOUND: Duration = Duration::from_secs(30);

/// Writes `n` short lines to stdout.
fn chatter(n: u32) -> u32 {
    let mut out = std::io::stdout().lock();
    for i in 0..n {
        out.write_all(format!("line {i}\n").as_bytes())
            .expect("write");
    }
    out.flush().expect("flush");
    std::process::id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_drops_lines_and_blocks_nobody() {
    const LINES: u32 = 20_000;
    let seen = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (s, d) = (seen.clone(), dropped.clone());
    let sink = WorkerOutput::capture_with(move |line: &OutputLine<'_>| {
        s.fetch_add(1, Ordering::Relaxed);
        d.fetch_add(line.dropped, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    });
    let pool = tokio::time::timeout(BOUND, support::builder().processes(1).stdout(sink).build())
        .await
        .expect("bounded")
        .expect("pool builds");
    // 20 000 lines at 5 ms each would hold a blocked worker 100 s.
    let started = Instant::now();
    let worker = tokio::time::timeout(BOUND, pool.apply(chatter, LINES))
        .await
        .expect("the worker was not held up by the sink")
        .expect("runs");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "the task took {took:?}");
    // The last line comes with the count of those dropped before it.
    let one_more = tokio::time::timeout(BOUND, pool.apply(chatter, 1))
        .await
        .expect("bounded")
        .expect("runs");
    assert_eq!(one_more, worker);
    assert!(
        support::eventually(BOUND, || dropped.load(Ordering::Relaxed) > 0),
        "no drop reported; {} lines seen",
        seen.load(Ordering::Relaxed)
    );
    let seen = seen.load(Ordering::Relaxed);
    assert!(seen < u64::from(LINES), "{seen} lines seen: none dropped?");
    tokio::time::timeout(BOUND, pool.terminate())
        .await
        .expect("bounded");
    assert!(support::eventually(BOUND, || support::is_gone(worker)));
}
