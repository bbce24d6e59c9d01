//! Payloads: the sequential echo of a `Vec<u8>` and of a `bytes::Bytes` of 1 KiB,
//! 64 KiB, 1, 4, 8 and 16 MiB on a pool of one worker, beside the raw round trip of the
//! same bytes over a socketpair to a forked child that echoes them, and the `Bytes`
//! echo again on a pool with shared memory off (`echo_bytes_socket`: the bytes
//! through the socket, as a `Vec<u8>` goes). Throughput is the
//! payload size per round trip (each round trip carries it both ways), as Python's
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

use procpool_bench::{echo_bytes, echo_vec, Channel, RawPeer};

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
                black_box(back[size - 1])
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
                        black_box(r);
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
                        black_box(r);
                    }
                    start.elapsed()
                })
            })
        });
    }
    let socket = rt
        .block_on(
            Pool::builder()
                .processes(1)
                .shared_memory_min(usize::MAX)
                .build(),
        )
        .expect("build the pool");
    for (label, size) in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let data = Bytes::from(vec![7u8; size]);
        g.bench_function(BenchmarkId::new("echo_bytes_socket", label), |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..n {
                        let r = socket.apply(echo_bytes, data.clone()).await.expect("echo");
                        assert_eq!(r.len(), size);
                        black_box(r);
                    }
                    start.elapsed()
                })
            })
        });
    }
    rt.block_on(socket.terminate());
    rt.block_on(pool.terminate());
    g.finish();
}

fn main() {
    procpool_bench::run(&[payload]);
}
