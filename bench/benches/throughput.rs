//! Throughput of tiny tasks: `map` of 200,000 identity `u64` tasks on 2 workers with the
//! automatic chunk size and with `chunk_size(1)`, and `imap_unordered` with chunk size
//! 1; beside them rayon (one spawn per task) and `spawn_blocking` (one per task).
//! Then a scaling table: `map` with chunk size 1 as the number of workers grows (1, 2,
//! 4) and as the task grows (identity, then about 10 µs and 100 µs of integer work).
//!
//! ```text
//! cargo bench -p procpool-bench --bench throughput
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use futures::StreamExt;
use procpool::Pool;

use procpool_bench::identity;

const TASKS: usize = 200_000;

fn tiny_tasks(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut g = c.benchmark_group("throughput");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(TASKS as u64));
    let input: Vec<u64> = (0..TASKS as u64).collect();

    let pool = rt
        .block_on(Pool::builder().processes(2).build())
        .expect("build the pool");
    g.bench_function("map_auto_chunk", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let out = pool.map(identity, input.clone()).await.expect("map");
                    assert_eq!(out.len(), TASKS);
                    black_box(out);
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("map_chunk_1", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let out = pool
                        .map(identity, input.clone())
                        .chunk_size(1)
                        .await
                        .expect("map");
                    assert_eq!(out.len(), TASKS);
                    black_box(out);
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("imap_unordered_chunk_1", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut s = pool.imap_unordered(identity, input.clone()).chunk_size(1);
                    let mut n = 0usize;
                    while let Some(r) = s.next().await {
                        black_box(r.expect("task"));
                        n += 1;
                    }
                    assert_eq!(n, TASKS);
                }
                start.elapsed()
            })
        })
    });
    rt.block_on(pool.terminate());

    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a rayon pool");
    let slots: Vec<AtomicU64> = (0..TASKS).map(|_| AtomicU64::new(0)).collect();
    g.bench_function("rayon_spawn_per_task", |b| {
        b.iter(|| {
            rayon.scope(|s| {
                for (i, slot) in slots.iter().enumerate() {
                    s.spawn(move |_| slot.store(identity(i as u64), Ordering::Relaxed));
                }
            });
            black_box(&slots);
        })
    });
    g.bench_function("spawn_blocking_per_task", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let handles: Vec<_> = (0..TASKS as u64)
                        .map(|i| tokio::task::spawn_blocking(move || identity(i)))
                        .collect();
                    for h in handles {
                        black_box(h.await.expect("spawn_blocking"));
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

/// `map` with chunk size 1 as workers and task size grow: how close the pool gets to
/// N× one worker, and where per-task overhead stops mattering.
fn scaling(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut g = c.benchmark_group("throughput_scaling");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let per_us = procpool_bench::calibrate_spin(Duration::from_micros(1000)) / 1000;
    for workers in [1usize, 2, 4] {
        let pool = rt
            .block_on(Pool::builder().processes(workers).build())
            .expect("build the pool");
        for (label, work_us, tasks) in [
            ("identity", 0u64, 20_000u64),
            ("10us", 10, 10_000),
            ("100us", 100, 2_000),
        ] {
            let iters = per_us * work_us;
            g.throughput(Throughput::Elements(tasks));
            g.bench_function(BenchmarkId::new(format!("{label}_chunk_1"), workers), |b| {
                b.iter_custom(|n| {
                    procpool_bench::time_spin_maps(rt, &pool, iters, tasks as usize, n)
                })
            });
        }
        rt.block_on(pool.terminate());
    }
    g.finish();
}

fn main() {
    procpool_bench::run(&[tiny_tasks, scaling]);
}
