//! Latency: the sequential round trip of one trivial task, `pool.apply(identity, 1u64)`
//! on a pool of one worker, per start method; beside it the raw two-process round trip
//! of the same 8 bytes (a forked child echoing over a blocking pipe, and over a
//! socketpair) and Tokio's `spawn_blocking` round trip.
//!
//! ```text
//! cargo bench -p procpool-bench --bench latency
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use procpool::{Pool, StartMethod};

use procpool_bench::{identity, Channel, RawPeer};

fn latency(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut g = c.benchmark_group("latency");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // The raw references first, before any pool exists.
    for (name, channel) in [
        ("raw_pipe_8B", Channel::Pipe),
        ("raw_socketpair_8B", Channel::SocketPair),
    ] {
        let mut peer = RawPeer::start(channel, 8, 8).expect("fork the raw peer");
        let out = 1u64.to_ne_bytes();
        let mut back = [0u8; 8];
        g.bench_function(name, |b| {
            b.iter(|| {
                peer.round_trip(black_box(&out), &mut back);
                black_box(back)
            })
        });
    }

    g.bench_function("spawn_blocking", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let r = tokio::task::spawn_blocking(|| identity(black_box(1)))
                        .await
                        .expect("spawn_blocking");
                    black_box(r);
                }
                start.elapsed()
            })
        })
    });

    for (name, method) in [
        ("forkserver", StartMethod::ForkServer),
        ("spawn", StartMethod::Spawn),
        ("fork", StartMethod::Fork),
    ] {
        let pool = rt
            .block_on(Pool::builder().processes(1).start_method(method).build())
            .expect("build the pool");
        g.bench_function(BenchmarkId::new("apply", name), |b| {
            b.iter_custom(|iters| procpool_bench::time_applies(rt, &pool, iters))
        });
        rt.block_on(pool.terminate());
    }
    g.finish();
}

fn main() {
    procpool_bench::run(&[latency]);
}
