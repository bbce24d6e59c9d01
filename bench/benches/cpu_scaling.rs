//! CPU scaling: 64 tasks of about 25 ms of integer work each (`map`, chunk size 1) on a
//! pool of 1 and of 2 workers, against the same work done serially in this process and
//! by 2 forked children with no IPC at all (each does half, the parent waits for both).
//! The speedups are ratios of these times: serial / pool and serial / forked.
//!
//! ```text
//! cargo bench -p procpool-bench --bench cpu_scaling
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use procpool::Pool;

use procpool_bench::spin;

const TASKS: u64 = 64;

fn cpu_scaling(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let iters = procpool_bench::calibrate_spin(Duration::from_millis(25));
    let mut g = c.benchmark_group("cpu_scaling");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(TASKS));

    g.bench_function("serial_in_process", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for _ in 0..TASKS {
                acc = acc.wrapping_add(spin(black_box(iters)));
            }
            black_box(acc)
        })
    });

    g.bench_function("forked_2_children_no_ipc", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| procpool_bench::forked_spin(&[TASKS / 2, TASKS / 2], iters))
                .sum()
        })
    });

    for workers in [1usize, 2] {
        let pool = rt
            .block_on(Pool::builder().processes(workers).build())
            .expect("build the pool");
        g.bench_function(BenchmarkId::new("pool_map_chunk_1", workers), |b| {
            b.iter_custom(|n| procpool_bench::time_spin_maps(rt, &pool, iters, TASKS as usize, n))
        });
        rt.block_on(pool.terminate());
    }
    g.finish();
}

fn main() {
    procpool_bench::run(&[cpu_scaling]);
}
