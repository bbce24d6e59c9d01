//! Start-up: the time to a ready pool (`build().await`: every worker has answered its
//! handshake) of 1, 2 and 4 workers per start method, and the time to replace a worker
//! (a one-worker pool with `max_tasks_per_child(1)` running sequential trivial tasks:
//! every task waits for a fresh worker, so its time is the replacement plus one round
//! trip); beside them the raw cost of `fork()` + `waitpid` of this process and of
//! exec'ing this same binary (which exits at once when it sees `PROCPOOL_BENCH_EXIT`).
//! The group `startup_grown` measures a ready pool of 2 per start method and the raw
//! references again with this process grown to 1 GiB resident: spawning (`posix_spawn`)
//! and the fork server should not care, `fork` copies the page tables of the whole
//! parent.
//!
//! ```text
//! cargo bench -p procpool-bench --bench startup
//! ```

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use procpool::{Pool, StartMethod};

const METHODS: [(&str, StartMethod); 3] = [
    ("forkserver", StartMethod::ForkServer),
    ("spawn", StartMethod::Spawn),
    ("fork", StartMethod::Fork),
];

fn startup(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut g = c.benchmark_group("startup");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    g.bench_function("raw_fork_waitpid", |b| {
        b.iter(procpool_bench::fork_and_wait)
    });
    g.bench_function("raw_exec_self", |b| b.iter(procpool_bench::exec_self));

    for (name, method) in METHODS {
        for workers in [1usize, 2, 4] {
            g.bench_function(
                BenchmarkId::new(format!("ready_pool_{name}"), workers),
                |b| {
                    b.iter_custom(|n| {
                        rt.block_on(async {
                            let mut total = Duration::ZERO;
                            for _ in 0..n {
                                let start = Instant::now();
                                let pool = Pool::builder()
                                    .processes(workers)
                                    .start_method(method)
                                    .build()
                                    .await
                                    .expect("build the pool");
                                total += start.elapsed();
                                // Tearing down is not part of the start-up.
                                pool.terminate().await;
                            }
                            total
                        })
                    })
                },
            );
        }
    }

    for (name, method) in METHODS {
        let pool = rt
            .block_on(
                Pool::builder()
                    .processes(1)
                    .start_method(method)
                    .max_tasks_per_child(1)
                    .build(),
            )
            .expect("build the pool");
        g.bench_function(BenchmarkId::new("replace_worker", name), |b| {
            b.iter_custom(|n| procpool_bench::time_applies(rt, &pool, n))
        });
        rt.block_on(pool.terminate());
    }
    g.finish();
}

/// The resident size of this process in the `startup_grown` group.
const GROWN_MIB: usize = 1024;

fn startup_grown(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let now = procpool_bench::rss_mib(std::process::id()).unwrap_or(0.0) as usize;
    // Every page written: an untouched allocation is not resident.
    let mut ballast = vec![0u8; GROWN_MIB.saturating_sub(now) << 20];
    for page in ballast.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&ballast);
    let mut g = c.benchmark_group("startup_grown");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("raw_fork_waitpid", |b| {
        b.iter(procpool_bench::fork_and_wait)
    });
    g.bench_function("raw_exec_self", |b| b.iter(procpool_bench::exec_self));
    for (name, method) in METHODS {
        g.bench_function(BenchmarkId::new(format!("ready_pool_{name}"), 2), |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        let start = Instant::now();
                        let pool = Pool::builder()
                            .processes(2)
                            .start_method(method)
                            .build()
                            .await
                            .expect("build the pool");
                        total += start.elapsed();
                        pool.terminate().await;
                    }
                    total
                })
            })
        });
    }
    g.finish();
    drop(std::hint::black_box(ballast));
}

fn main() {
    procpool_bench::run(&[startup, startup_grown]);
}
