//! The main job: count the primes among 64-bit numbers near 10^12 on a process pool,
//! with a progress bar fed by the pool's progress hook, then the same count in this one
//! process for the speedup.
//!
//! ```text
//! cargo run --release --example primes            # 12 million numbers
//! cargo run --release --example primes -- 200000  # a quick run
//! ```

#[path = "common/primes.rs"]
mod primes;
use primes::is_prime;

use std::time::Instant;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use procpool::Pool;

/// The task: how many primes lie in `[start, end)`.
fn count_primes((start, end): (u64, u64)) -> u64 {
    (start..end).filter(|&n| is_prime(n)).count() as u64
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let span: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 12_000_000,
    };
    let first = 1_000_000_000_000u64;
    let pieces = 200u64;
    let step = span.div_ceil(pieces);
    let ranges: Vec<(u64, u64)> = (0..pieces)
        .map(|i| (first + i * step, (first + (i + 1) * step).min(first + span)))
        .filter(|(a, b)| a < b)
        .collect();

    let pool = Pool::builder().build().await?;
    println!(
        "counting primes in [{first}, {}) in {} ranges on {} worker processes",
        first + span,
        ranges.len(),
        pool.processes()
    );

    let bar = ProgressBar::new(ranges.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} ranges, {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let tick = bar.clone();
    let mut results = pool
        .imap_unordered(count_primes, ranges.clone())
        .chunk_size(1)
        .progress(move |p| tick.set_position(p.done as u64));
    let mut total = 0u64;
    while let Some(count) = results.next().await {
        total += count?;
        bar.set_message(format!("{total} primes so far"));
    }
    bar.finish();
    let pooled = started.elapsed();
    pool.join().await;

    let started = Instant::now();
    let serial: u64 = ranges.iter().copied().map(count_primes).sum();
    let alone = started.elapsed();
    assert_eq!(serial, total, "the pool and the single process disagree");

    println!("{total} primes");
    println!(
        "pool: {:.2?} on {} processes; one process: {:.2?}; speedup {:.2}x",
        pooled,
        pool.processes(),
        alone,
        alone.as_secs_f64() / pooled.as_secs_f64()
    );
    Ok(())
}
