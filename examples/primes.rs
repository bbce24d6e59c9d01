//! The main job: count the primes among 64-bit numbers near 10^12 on a process pool,
//! with a progress bar fed by the pool's progress hook, then the same count in this one
//! process for the speedup.
//!
//! The speedup is the one process's time over the pool's. On an idle machine it
//! approaches the number of workers (the CPUs); it says little when other processes
//! compete for the CPUs, so the example reports the machine's load average and the
//! CPU that other processes used during each run, and says when the figure is not to
//! be trusted.
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

    let load_before = load_average();
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
    let machine = CpuClock::now();
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
    // (The workers have exited and been reaped: their CPU counts as this process's.)
    let others_pooled = machine.others_busy(pooled);

    let started = Instant::now();
    let machine = CpuClock::now();
    let serial: u64 = ranges.iter().copied().map(count_primes).sum();
    let alone = started.elapsed();
    let others_alone = machine.others_busy(alone);
    assert_eq!(serial, total, "the pool and the single process disagree");

    println!("{total} primes");
    println!(
        "pool: {:.2?} on {} processes; one process: {:.2?}; speedup {:.2}x",
        pooled,
        pool.processes(),
        alone,
        alone.as_secs_f64() / pooled.as_secs_f64()
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "speedup: the one process's time over the pool's; on an idle machine it nears \
         the number of workers ({}) as long as they do not outnumber the CPUs ({cpus})",
        pool.processes()
    );
    let fmt = |v: Option<f64>| v.map_or("unknown".to_string(), |v| format!("{v:.2}"));
    println!(
        "machine: load average {} before the run on {cpus} CPUs; other processes kept \
         {} CPUs busy on average during the pool's run, {} during the single process's",
        fmt(load_before),
        fmt(others_pooled),
        fmt(others_alone),
    );
    // Busy if other processes took a fair share of a CPU in either run, or the load
    // average said so before it.
    let busy = [others_pooled, others_alone, load_before]
        .into_iter()
        .flatten()
        .any(|v| v > 0.5);
    if busy {
        println!(
            "warning: the machine was busy: the workers and the single process shared \
             the CPUs with other programs, so the speedup above is not a measure of the \
             pool; rerun on an idle machine"
        );
    }
    Ok(())
}

/// The one-minute load average (`/proc/loadavg`): processes running or waiting for a
/// CPU, on average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine's busy CPU time (`/proc/stat`) and this process's own, with its reaped
/// children's (`/proc/self/stat`), in clock ticks, at one instant.
struct CpuClock {
    machine: Option<u64>,
    ours: Option<u64>,
}

impl CpuClock {
    fn now() -> Self {
        CpuClock {
            machine: machine_busy_ticks(),
            ours: own_ticks(),
        }
    }

    /// How many CPUs other processes kept busy on average since `self`, over `wall`.
    fn others_busy(&self, wall: std::time::Duration) -> Option<f64> {
        let machine = machine_busy_ticks()?.checked_sub(self.machine?)?;
        let ours = own_ticks()?.checked_sub(self.ours?)?;
        // SAFETY: sysconf takes an integer and reads no memory of ours.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz <= 0 || wall.is_zero() {
            return None;
        }
        let others = machine.saturating_sub(ours) as f64 / hz as f64;
        Some(others / wall.as_secs_f64())
    }
}

/// Busy ticks of all CPUs: user, nice, system, irq, softirq and steal.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let pick = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(pick(0) + pick(1) + pick(2) + pick(5) + pick(6) + pick(7))
}

/// This process's CPU ticks and its reaped children's: utime, stime, cutime, cstime.
fn own_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14; so utime is at index 11 here.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(tick(11)? + tick(12)? + tick(13)? + tick(14)?)
}
