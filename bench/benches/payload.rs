//! Payloads: the sequential echo of a `Vec<u8>` and of a `bytes::Bytes` of 1 KiB,
//! 64 KiB, 1, 4, 8 and 16 MiB on a pool of one worker, beside the raw round trip of the
//! same bytes over a socketpair to a forked child that echoes them. Then the `Bytes`
//! tasks on pools with shared memory off (`*_socket`) and on for every size
//! (`*_memfd`, `PoolBuilder::shared_memory_min`): an echo (the result a view of the
//! argument), a copy (new bytes of the same size) and a digest (a small result).
//! Every round trip reads a byte of each page of what came back, as a consumer would
//! (a view of shared memory pays its page faults there). Throughput is the payload
//! size per round trip (each round trip carries it both ways), as Python's
//! `bench_pools.py` counts it.
//!
//! ```text
//! cargo bench -p procpool-bench --bench payload
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use procpool::Pool;

use procpool_bench::{copy_bytes, echo_bytes, echo_vec, sum_bytes, Channel, RawPeer};

const SIZES: [(&str, usize); 6] = [
    ("1KiB", 1 << 10),
    ("64KiB", 64 << 10),
    ("1MiB", 1 << 20),
    ("4MiB", 4 << 20),
    ("8MiB", 8 << 20),
    ("16MiB", 16 << 20),
];

fn payload(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut g = c.benchmark_group("payload");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    // The raw references first, before any pool exists.
    for (label, size) in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut peer = RawPeer::start(Channel::SocketPair, size, size).expect("fork the raw peer");
        let out = vec![7u8; size];
        let mut back = vec![0u8; size];
        g.bench_function(BenchmarkId::new("raw_socketpair", label), |b| {
            b.iter(|| {
                peer.round_trip(black_box(&out), &mut back);
                black_box(touch(&back))
            })
        });
    }

    let pool = rt
        .block_on(Pool::builder().processes(1).build())
        .expect("build the pool");
    for (label, size) in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let data = vec![7u8; size];
        g.bench_function(BenchmarkId::new("echo_vec", label), |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..n {
                        // The copy the caller hands over is not part of the round trip.
                        let arg = data.clone();
                        let start = Instant::now();
                        let r = pool.apply(echo_vec, arg).await.expect("echo");
                        total += start.elapsed();
                        assert_eq!(r.len(), size);
                        black_box(touch(&r));
                    }
                    total
                })
            })
        });
        let data = Bytes::from(vec![7u8; size]);
        g.bench_function(BenchmarkId::new("echo_bytes", label), |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..n {
                        let r = pool.apply(echo_bytes, data.clone()).await.expect("echo");
                        assert_eq!(r.len(), size);
                        black_box(touch(&r));
                    }
                    start.elapsed()
                })
            })
        });
    }
    // The `Bytes` tasks on pools whose threshold sends every size through the socket
    // (`*_socket`) and every size through shared memory (`*_memfd`): an echo, a copy
    // (a result of new bytes, not a view of the argument) and a digest (a small
    // result: the argument's way alone).
    for (way, min) in [("socket", usize::MAX), ("memfd", 1)] {
        let other = rt
            .block_on(Pool::builder().processes(1).shared_memory_min(min).build())
            .expect("build the pool");
        let read = |r: &Bytes, size: usize| {
            assert_eq!(r.len(), size);
            touch(r)
        };
        tasks_by_size(
            &mut g,
            rt,
            &other,
            &format!("echo_bytes_{way}"),
            echo_bytes,
            read,
        );
        tasks_by_size(
            &mut g,
            rt,
            &other,
            &format!("copy_bytes_{way}"),
            copy_bytes,
            read,
        );
        tasks_by_size(
            &mut g,
            rt,
            &other,
            &format!("sum_bytes_{way}"),
            sum_bytes,
            |r, size| {
                assert_eq!(*r, 7 * size as u64);
                0
            },
        );
        rt.block_on(other.terminate());
    }
    rt.block_on(pool.terminate());
    g.finish();
}

/// `task` on a `Bytes` of each size, through `pool`, as `name/size`; `read` checks and
/// reads each result.
fn tasks_by_size<R>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    name: &str,
    task: fn(Bytes) -> R,
    read: impl Fn(&R, usize) -> u8,
) where
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    for (label, size) in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let data = Bytes::from(vec![7u8; size]);
        g.bench_function(BenchmarkId::new(name, label), |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..n {
                        let r = pool.apply(task, data.clone()).await.expect("task");
                        black_box(read(&r, size));
                    }
                    start.elapsed()
                })
            })
        });
    }
}

/// Reads a byte of every page of `bytes`, as a consumer of the result would read it:
/// a view of shared memory that is mapped lazily faults its pages in then, and the
/// figure must include that.
fn touch(bytes: &[u8]) -> u8 {
    bytes.iter().step_by(4096).fold(0, |a, &b| a ^ b)
}

fn main() {
    procpool_bench::run(&[payload]);
}
