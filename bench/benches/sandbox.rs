//! The sandbox's cost: the time to a ready pool of 2 workers (`build().await`), and an
//! `apply` round trip of a trivial task, each with and without
//! [`Sandbox::new()`](procpool::Sandbox), under the default start method (fork server).
//! A sandboxed worker pays for Landlock, dropping capabilities and three seccomp
//! filters once at start-up, and a seccomp filter run on every system call after it.
//!
//! ```text
//! cargo bench -p procpool-bench --bench sandbox
//! ```

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use procpool::{Pool, PoolBuilder, Sandbox};

fn builder(sandboxed: bool) -> PoolBuilder {
    let builder = Pool::builder().processes(2);
    if sandboxed {
        builder.sandbox(Sandbox::new())
    } else {
        builder
    }
}

const CASES: [(&str, bool); 2] = [("plain", false), ("sandboxed", true)];

fn sandbox(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut g = c.benchmark_group("sandbox");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, sandboxed) in CASES {
        g.bench_function(BenchmarkId::new("ready_pool_2", name), |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        let start = Instant::now();
                        let pool = builder(sandboxed).build().await.expect("build the pool");
                        total += start.elapsed();
                        // Tearing down is not part of the start-up.
                        pool.terminate().await;
                    }
                    total
                })
            })
        });
    }
    for (name, sandboxed) in CASES {
        let pool = rt
            .block_on(builder(sandboxed).build())
            .expect("build the pool");
        g.bench_function(BenchmarkId::new("apply_round_trip", name), |b| {
            b.iter_custom(|n| procpool_bench::time_applies(rt, &pool, n))
        });
        rt.block_on(pool.terminate());
    }
    g.finish();
}

fn main() {
    procpool_bench::run(&[sandbox]);
}
