#![cfg(target_os = "linux")]
//! Large byte-string results: a `Vec<u8>` or `Bytes` result of 64 KiB or more (a reply
//! too large for the reply ring, so it comes over the socket) is read into a buffer of
//! its own, which becomes the result without a copy; when the task's argument was a
//! large `Vec<u8>` the caller gave up (written to the worker from the caller's own
//! buffer), that buffer is the one reused, if its capacity fits the result (at least
//! the result's length, at most twice it).
//!
//! On real workers: echoes and transforms that do or do not fit the argument's buffer
//! (the buffer's address and capacity tell which), results on both sides of the ring
//! and split thresholds, results of other types with the same wire encoding, the `map`
//! family, pipelined and concurrent jobs, the direct path, `Process`, panics, crashes
//! (also in the middle of a large reply), timeouts, recycling and the frame limit.
//! Every test checks at its end that no worker is left behind.

procpool::enable_test_support!();

mod support;

use std::collections::HashSet;
use std::future::IntoFuture;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use procpool::{Payload, Pool, Process, TaskError};
use serde_bytes::ByteBuf;

use support::{assert_all_gone, wait_until, within};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// The largest record of the reply ring (`ring::INLINE_MAX`), its length prefix
/// included: a larger reply goes over the socket.
const RING_MAX: usize = 16 * KIB;
/// From this frame size on, a byte-string reply is read into a buffer of its own.
const SPLIT_MIN: usize = 64 * KIB;

// ---------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------

/// `n` bytes of a pattern that repeats only every 251 bytes (byte `i` is
/// `(i * 31 + seed) % 251`).
fn pattern(n: usize, seed: usize) -> Vec<u8> {
    pattern_in(n, n, seed)
}

/// [`pattern`] in a buffer of exactly `cap` bytes of capacity.
fn pattern_in(n: usize, cap: usize, seed: usize) -> Vec<u8> {
    let period: Vec<u8> = (0..251).map(|i| ((i * 31 + seed) % 251) as u8).collect();
    let mut v = Vec::with_capacity(cap);
    while v.len() < n {
        let k = (n - v.len()).min(period.len());
        v.extend_from_slice(&period[..k]);
    }
    assert_eq!(
        v.capacity(),
        cap,
        "the test's buffer has the capacity asked for"
    );
    v
}

/// Fails with the first difference, without printing megabytes.
#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    panic!(
        "{what}: {} bytes came back where {} were expected; first difference at {at:?}",
        got.len(),
        want.len()
    );
}

/// The address of a buffer, to tell whether a result is its argument's memory.
fn addr(bytes: &[u8]) -> usize {
    bytes.as_ptr().addr()
}

/// Every process the pool has had while we looked: workers and fork server.
#[derive(Debug, Default)]
struct Seen(HashSet<u32>);

impl Seen {
    fn of(pool: &Pool) -> Self {
        let mut seen = Seen::default();
        seen.note(pool);
        seen
    }

    fn note(&mut self, pool: &Pool) {
        self.0.extend(support::worker_pids(pool));
        self.0.extend(pool.stats().forkserver_pid);
    }

    /// Terminates the pool and checks that every process noted is gone and reaped.
    async fn finish(mut self, pool: Pool) {
        self.note(&pool);
        within("terminate", pool.terminate()).await;
        let pids: Vec<u32> = self.0.into_iter().collect();
        assert_all_gone(&pids).await;
    }
}

async fn pool_of(n: usize) -> Pool {
    within("build", support::builder().processes(n).build())
        .await
        .expect("pool builds")
}

/// An argument for [`resize`]: `len` bytes of [`pattern`] in a buffer of `cap` bytes,
/// whose first 8 bytes say how long the result is to be.
fn resize_arg(len: usize, cap: usize, result_len: usize, seed: usize) -> Vec<u8> {
    let mut v = pattern_in(len, cap, seed);
    v[..8].copy_from_slice(&(result_len as u64).to_le_bytes());
    v
}

/// What [`resize`] makes of `arg`: the argument turned by one byte, repeated or cut to
/// the length its first 8 bytes say.
fn resized(arg: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(arg[..8].try_into().expect("8 bytes")) as usize;
    let turned = [&arg[1..], &arg[..1]].concat();
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let k = (n - v.len()).min(turned.len());
        v.extend_from_slice(&turned[..k]);
    }
    v
}

// ---------------------------------------------------------------------------------
// Tasks. They run in the workers.
// ---------------------------------------------------------------------------------

fn echo_vec(v: Vec<u8>) -> Vec<u8> {
    v
}

fn echo_bytes(b: Bytes) -> Bytes {
    b
}

/// A result of the length the argument's first 8 bytes say, made from the argument.
fn resize(v: Vec<u8>) -> Vec<u8> {
    resized(&v)
}

/// [`resize`], as `Bytes`.
fn resize_to_bytes(v: Vec<u8>) -> Bytes {
    Bytes::from(resized(&v))
}

/// `pattern(n, n)`, made in the worker.
fn make_vec(n: usize) -> Vec<u8> {
    pattern(n, n)
}

/// `pattern(n, n)`, made in the worker, as `Bytes`.
fn make_bytes(n: usize) -> Bytes {
    Bytes::from(pattern(n, n))
}

/// `pattern(n, seed)`.
fn sized((n, seed): (usize, usize)) -> Vec<u8> {
    pattern(n, seed)
}

/// Like [`sized`], but panics when `seed` is 13.
fn sized_or_panic((n, seed): (usize, usize)) -> Vec<u8> {
    assert_ne!(seed, 13, "seed 13 is unlucky");
    pattern(n, seed)
}

/// `n` zero bytes, but for a marker on each page: made in microseconds, so that the
/// pool counts this task as tiny.
fn zeros_marked(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    for (k, i) in (0..n).step_by(4096).enumerate() {
        v[i] = (k % 251) as u8 + 1;
    }
    v
}

fn plus_one(x: u64) -> u64 {
    x + 1
}

/// Panics holding a large argument.
fn panic_holding(v: Vec<u8>) -> Vec<u8> {
    panic!("refusing {} bytes", v.len())
}

/// Kills the worker when the argument's first byte is 0xAB; echoes otherwise.
fn echo_or_abort(v: Vec<u8>) -> Vec<u8> {
    if v.first() == Some(&0xAB) {
        std::process::abort();
    }
    v
}

/// This process's sockets.
fn socket_fds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target.to_str()?.starts_with("socket:").then_some(fd)
        })
        .collect()
}

/// The most bytes waiting in the send queue of one of `sockets`.
fn most_queued(sockets: &[i32]) -> i32 {
    let queued = sockets.iter().map(|&fd| {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int, the bytes not yet sent, to the
        // pointer; `fd` is one of this process's sockets (at worst an fd since
        // closed, and the call fails).
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
        if rc == 0 {
            n
        } else {
            0
        }
    });
    queued.max().unwrap_or(0)
}

/// Whether the thread whose /proc `syscall` file this is waits in a read: a worker
/// waits so for its next job once it has sent its reply.
fn waits_in_a_read(syscall: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(syscall) else {
        return false;
    };
    let reads = [libc::SYS_read, libc::SYS_recvfrom, libc::SYS_recvmsg];
    let number: Option<libc::c_long> = text.split_whitespace().next().and_then(|n| n.parse().ok());
    number.is_some_and(|n| reads.contains(&n))
}

/// Echoes, but kills the worker in the middle of writing the reply: it shrinks the
/// send buffers of its sockets (so that a large reply is written a little at a time,
/// as the pool reads it), and a thread aborts the worker as soon as more than 16 KiB
/// wait to be sent. If that thread misses the reply (it sees the worker wait for its
/// next job), or after 5 s, it aborts the worker all the same.
fn echo_then_abort_mid_reply(v: Vec<u8>) -> Vec<u8> {
    let sockets = socket_fds();
    assert!(!sockets.is_empty(), "the worker has its channel");
    for &fd in &sockets {
        let size: libc::c_int = 32 << 10;
        // SAFETY: SO_SNDBUF reads one int from the pointer, whose size is passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    // This thread, the one that writes the reply: "<pid>/task/<tid>".
    let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let syscall = std::path::Path::new("/proc").join(me).join("syscall");
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if most_queued(&sockets) > 16 << 10 || waits_in_a_read(&syscall) {
                break;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        std::process::abort();
    });
    v
}

/// Echoes after a nap far longer than the tests' timeouts.
fn sleepy_echo(v: Vec<u8>) -> Vec<u8> {
    std::thread::sleep(Duration::from_secs(20));
    v
}

/// A string of `n` characters, one, two, three and four bytes long in turn.
fn make_string(n: usize) -> String {
    ['a', 'ñ', '日', '🦀'].iter().cycle().take(n).collect()
}

fn echo_string(s: String) -> String {
    s
}

fn make_u16s(n: usize) -> Vec<u16> {
    (0..n).map(|i| (i * 7919 % 65_521) as u16).collect()
}

fn echo_u16s(v: Vec<u16>) -> Vec<u16> {
    v
}

fn make_byte_buf(n: usize) -> ByteBuf {
    ByteBuf::from(pattern(n, 5))
}

fn make_option(n: usize) -> Option<Vec<u8>> {
    Some(pattern(n, 6))
}

fn make_pair(n: usize) -> (u32, Vec<u8>) {
    (n as u32, pattern(n, 7))
}

fn make_result(n: usize) -> Result<Vec<u8>, String> {
    Ok(pattern(n, 8))
}

fn make_nested(n: usize) -> Vec<Vec<u8>> {
    vec![pattern(n, 9)]
}

// ---------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------

/// A 16 MiB echo comes back intact in the very buffer the caller gave up, again and
/// again on one pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_echo_comes_back_in_its_arguments_buffer() {
    let pool = pool_of(1).await;
    let seen = Seen::of(&pool);
    for seed in 0..4 {
        let arg = pattern(16 * MIB, seed);
        let want = arg.clone();
        let (at, cap) = (addr(&arg), arg.capacity());
        let got = within("echo", pool.apply(echo_vec, arg))
            .await
            .expect("echo");
        assert_same(&got, &want, "16 MiB echo");
        assert_eq!(
            addr(&got),
            at,
            "round {seed}: the argument's buffer was not reused"
        );
        assert_eq!(got.capacity(), cap, "round {seed}");
    }
    // The same as `Bytes`: a transform from a `Vec<u8>` argument to a `Bytes` result.
    let arg = resize_arg(16 * MIB, 16 * MIB, 16 * MIB, 4);
    let want = resized(&arg);
    let at = addr(&arg);
    let got = within("to Bytes", pool.apply(resize_to_bytes, arg))
        .await
        .expect("to Bytes");
    assert_same(&got, &want, "16 MiB Vec to Bytes");
    assert_eq!(
        addr(&got),
        at,
        "a Bytes result reuses the argument's buffer too"
    );
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.completed, 5, "{stats:?}");
    seen.finish(pool).await;
}

/// A transform's result lands in its argument's buffer exactly when the buffer's
/// capacity is at least the result's length and at most twice it; either way it is
/// correct. Where the buffer is not reused, the result's capacity shows it (the
/// address cannot: the allocator may well hand out the freed argument's address
/// again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_reuses_its_argument_only_when_the_capacity_fits() {
    let pool = pool_of(1).await;
    let seen = Seen::of(&pool);
    // (argument length, argument capacity, result length, reused)
    let cases = [
        (MIB, MIB, MIB + MIB / 2, false),        // too small
        (4 * MIB, 4 * MIB, MIB, false),          // more than twice as large
        (MIB, MIB, 600 * KIB, true),             // fits
        (MIB, MIB, MIB, true),                   // the same size
        (MIB, MIB, MIB + 1, false),              // one byte short
        (MIB, MIB, MIB / 2, true),               // exactly twice as large
        (MIB, MIB, MIB / 2 - 1, false),          // more than twice as large, by 2 bytes
        (600 * KIB, MIB, 700 * KIB, true),       // longer than the argument, within its capacity
        (SPLIT_MIN, SPLIT_MIN, SPLIT_MIN, true), // the smallest argument sent in place
        (3 * MIB, 3 * MIB, 100 * KIB, false),    // far more than twice as large
    ];
    for (i, &(len, cap, result_len, reused)) in cases.iter().enumerate() {
        for as_bytes in [false, true] {
            let arg = resize_arg(len, cap, result_len, i);
            let want = resized(&arg);
            let at = addr(&arg);
            let what = format!(
                "case {i}: {len} bytes in {cap}, to {result_len} as {}",
                if as_bytes { "Bytes" } else { "Vec<u8>" }
            );
            let (got_at, got_cap) = if as_bytes {
                let got = within(&what, pool.apply(resize_to_bytes, arg))
                    .await
                    .expect("task");
                assert_same(&got, &want, &what);
                (addr(&got), None)
            } else {
                let got = within(&what, pool.apply(resize, arg)).await.expect("task");
                assert_same(&got, &want, &what);
                (addr(&got), Some(got.capacity()))
            };
            if reused {
                assert_eq!(got_at, at, "{what}: the argument's buffer was not reused");
                if let Some(got_cap) = got_cap {
                    assert_eq!(got_cap, cap, "{what}");
                }
            } else if let Some(got_cap) = got_cap {
                // Too small a buffer could not hold the result; one too large must
                // not be handed over as a smaller result.
                assert!(
                    got_cap < cap || cap < result_len,
                    "{what}: the result has the argument's capacity {got_cap}"
                );
                assert!(got_cap <= 2 * result_len, "{what}: capacity {got_cap}");
            }
        }
    }
    assert_eq!(pool.stats().workers_crashed, 0);
    seen.finish(pool).await;
}

/// `Bytes` and `Vec<u8>` results around the ring's limit and the size from which a
/// reply gets a buffer of its own, made in the worker or echoed; one at a time and all
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_strings_around_the_thresholds_come_back_intact() {
    let pool = pool_of(2).await;
    let seen = Seen::of(&pool);
    let mut sizes = vec![0, 1, 9 * MIB];
    for edge in [RING_MAX, SPLIT_MIN] {
        // The reply's frame carries a header of a dozen bytes or so besides the
        // bytes: these sizes put the frame on both sides of the edge.
        sizes.extend([
            edge - 40,
            edge - 24,
            edge - 16,
            edge - 8,
            edge - 1,
            edge,
            edge + 1,
        ]);
    }
    for &n in &sizes {
        let want = pattern(n, n);
        let made = within("make_bytes", pool.apply(make_bytes, n))
            .await
            .expect("make_bytes");
        assert_same(&made, &want, &format!("make_bytes({n})"));
        let made = within("make_vec", pool.apply(make_vec, n))
            .await
            .expect("make_vec");
        assert_same(&made, &want, &format!("make_vec({n})"));
        let echoed = within(
            "echo_bytes",
            pool.apply(echo_bytes, Bytes::from(want.clone())),
        )
        .await
        .expect("echo_bytes");
        assert_same(&echoed, &want, &format!("echo_bytes({n})"));
        let echoed = within("echo_vec", pool.apply(echo_vec, want.clone()))
            .await
            .expect("echo_vec");
        assert_same(&echoed, &want, &format!("echo_vec({n})"));
    }
    // All at once: replies of every size back to back on each worker's channel.
    let made: Vec<_> = sizes
        .iter()
        .map(|&n| pool.apply(make_bytes, n).into_future())
        .collect();
    let echoed: Vec<_> = sizes
        .iter()
        .map(|&n| pool.apply(echo_vec, pattern(n, n)).into_future())
        .collect();
    let (made, echoed) = within(
        "all at once",
        futures::future::join(
            futures::future::join_all(made),
            futures::future::join_all(echoed),
        ),
    )
    .await;
    for ((&n, made), echoed) in sizes.iter().zip(made).zip(echoed) {
        let want = pattern(n, n);
        assert_same(
            &made.expect("make_bytes"),
            &want,
            &format!("make_bytes({n}), at once"),
        );
        assert_same(
            &echoed.expect("echo_vec"),
            &want,
            &format!("echo_vec({n}), at once"),
        );
    }
    assert_eq!(pool.stats().workers_crashed, 0);
    seen.finish(pool).await;
}

/// The `map` family, one task per chunk, with results that alternate between small
/// and large: every result in its place (or, unordered, each exactly once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_and_imap_with_small_and_large_results_alternating() {
    let pool = pool_of(2).await;
    let seen = Seen::of(&pool);
    let specs: Vec<(usize, usize)> = (0..24)
        .map(|i| {
            let n = match i % 4 {
                0 => 10 + i,
                1 => SPLIT_MIN + 1000 * i,
                2 => RING_MAX - 100 + i,
                _ => MIB + i,
            };
            (n, i)
        })
        .collect();
    let wants: Vec<Vec<u8>> = specs.iter().map(|&(n, s)| pattern(n, s)).collect();

    let got = within("map", pool.map(sized, specs.clone()).chunk_size(1))
        .await
        .expect("map");
    assert_eq!(got.len(), wants.len());
    for (i, (g, w)) in got.iter().zip(&wants).enumerate() {
        assert_same(g, w, &format!("map, item {i}"));
    }

    // Chunks of several results (not a lone byte string) and the automatic chunk size.
    for chunk in [3, 0] {
        let map = pool.map(sized, specs.clone());
        let map = if chunk > 0 {
            map.chunk_size(chunk)
        } else {
            map
        };
        let got = within("map in chunks", map).await.expect("map in chunks");
        for (i, (g, w)) in got.iter().zip(&wants).enumerate() {
            assert_same(g, w, &format!("map, chunk size {chunk}, item {i}"));
        }
    }

    let got: Vec<_> = within(
        "imap",
        pool.imap(sized, specs.clone())
            .chunk_size(1)
            .max_in_flight(8)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got.len(), wants.len());
    for (i, (g, w)) in got.into_iter().zip(&wants).enumerate() {
        assert_same(&g.expect("imap item"), w, &format!("imap, item {i}"));
    }

    let got: Vec<_> = within(
        "imap_unordered",
        pool.imap_unordered(sized, specs.clone())
            .chunk_size(1)
            .collect::<Vec<_>>(),
    )
    .await;
    let mut left = wants.clone();
    for g in got {
        let g = g.expect("imap_unordered item");
        let i = left.iter().position(|w| *w == g).unwrap_or_else(|| {
            panic!(
                "imap_unordered: a result of {} bytes matches no input left",
                g.len()
            )
        });
        left.swap_remove(i);
    }
    assert!(
        left.is_empty(),
        "imap_unordered: {} results missing",
        left.len()
    );

    // A stream as the input, with large byte arguments too.
    let args = futures::stream::iter(wants.clone());
    let got: Vec<_> = within(
        "imap of echoes",
        pool.imap(echo_vec, args).chunk_size(1).collect::<Vec<_>>(),
    )
    .await;
    for (i, (g, w)) in got.into_iter().zip(&wants).enumerate() {
        assert_same(&g.expect("echo item"), w, &format!("imap echo, item {i}"));
    }
    assert_eq!(pool.stats().workers_crashed, 0);
    seen.finish(pool).await;
}

/// Results whose encoding is, or starts like, a byte string, but whose type is not
/// `Vec<u8>` or `Bytes`: they take the general decoder, and decode right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_of_other_types_decode_right() {
    let pool = pool_of(1).await;
    let seen = Seen::of(&pool);
    let n = 2 * MIB + 3;

    let want = make_string(n);
    let got = within("String", pool.apply(make_string, n))
        .await
        .expect("String");
    assert!(
        got == want,
        "a {} byte String came back altered",
        want.len()
    );
    let got = within("String echo", pool.apply(echo_string, want.clone()))
        .await
        .expect("String echo");
    assert!(
        got == want,
        "a {} byte String echo came back altered",
        want.len()
    );

    let want = make_u16s(n / 2);
    let got = within("Vec<u16>", pool.apply(make_u16s, n / 2))
        .await
        .expect("Vec<u16>");
    assert!(
        got == want,
        "a Vec<u16> of {} came back altered",
        want.len()
    );
    let got = within("Vec<u16> echo", pool.apply(echo_u16s, want.clone()))
        .await
        .expect("Vec<u16> echo");
    assert!(
        got == want,
        "a Vec<u16> echo of {} came back altered",
        want.len()
    );

    let got = within("ByteBuf", pool.apply(make_byte_buf, n))
        .await
        .expect("ByteBuf");
    assert_same(&got, &pattern(n, 5), "ByteBuf");
    let got = within("Option", pool.apply(make_option, n))
        .await
        .expect("Option");
    assert_same(&got.expect("Some"), &pattern(n, 6), "Option<Vec<u8>>");
    let (len, got) = within("pair", pool.apply(make_pair, n))
        .await
        .expect("pair");
    assert_eq!(len as usize, n);
    assert_same(&got, &pattern(n, 7), "(u32, Vec<u8>)");
    let got = within("Result", pool.apply(make_result, n))
        .await
        .expect("Result");
    assert_same(&got.expect("Ok"), &pattern(n, 8), "Result<Vec<u8>, String>");
    let got = within("nested", pool.apply(make_nested, n))
        .await
        .expect("nested");
    assert_eq!(got.len(), 1);
    assert_same(&got[0], &pattern(n, 9), "Vec<Vec<u8>>");

    // And a byte string after them, on the same channel.
    let got = within("after", pool.apply(make_vec, n))
        .await
        .expect("after");
    assert_same(&got, &pattern(n, n), "make_vec after the others");
    assert_eq!(pool.stats().workers_crashed, 0);
    seen.finish(pool).await;
}

/// Panics next to large results fail only their own task, on the same worker; the
/// next large echo still comes back in its argument's buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_next_to_large_results_fails_only_its_task() {
    let pool = pool_of(1).await;
    let seen = Seen::of(&pool);
    let pid = support::worker_pids(&pool)[0];

    for round in 0..2 {
        let arg = pattern(4 * MIB, round);
        let want = arg.clone();
        let at = addr(&arg);
        let got = within("echo", pool.apply(echo_vec, arg))
            .await
            .expect("echo");
        assert_same(&got, &want, "echo before the panic");
        assert_eq!(addr(&got), at, "round {round}: echo before the panic");

        // A panic holding a large argument (lent to the pool to read into).
        let err = within("panic", pool.apply(panic_holding, pattern(4 * MIB, 1)))
            .await
            .expect_err("the task panics");
        match &err {
            TaskError::Panicked(p) => assert!(
                p.message().contains(&format!("refusing {} bytes", 4 * MIB)),
                "{p:?}"
            ),
            other => panic!("expected Panicked, got {other:?}"),
        }
        // A panic after a large result was made.
        let err = within("panic", pool.apply(sized_or_panic, (4 * MIB, 13)))
            .await
            .expect_err("the task panics");
        assert!(err.is_panic(), "{err:?}");

        let arg = pattern(4 * MIB, 2 + round);
        let want = arg.clone();
        let at = addr(&arg);
        let got = within("echo", pool.apply(echo_vec, arg))
            .await
            .expect("echo");
        assert_same(&got, &want, "echo after the panic");
        assert_eq!(addr(&got), at, "round {round}: echo after the panic");
    }

    // In a stream, one task per chunk and several per chunk: only the panicking item
    // fails.
    let specs: Vec<(usize, usize)> = (0..12).map(|i| ((i % 3) * MIB + 70 * KIB, i + 8)).collect();
    for chunk in [1, 4] {
        let got: Vec<_> = within(
            "imap",
            pool.imap(sized_or_panic, specs.clone())
                .chunk_size(chunk)
                .collect::<Vec<_>>(),
        )
        .await;
        assert_eq!(got.len(), specs.len());
        for (&(n, seed), r) in specs.iter().zip(got) {
            if seed == 13 {
                assert!(matches!(&r, Err(e) if e.is_panic()), "chunk {chunk}: {r:?}");
            } else {
                assert_same(
                    &r.expect("item"),
                    &pattern(n, seed),
                    &format!("chunk {chunk}, item {seed}"),
                );
            }
        }
    }

    assert_eq!(
        support::worker_pids(&pool),
        vec![pid],
        "panics do not cost the worker"
    );
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.failed, 6, "{stats:?}");
    seen.finish(pool).await;
}

/// A worker that dies with a large echo in flight (while running it, with more sent
/// behind it, or while writing its reply), or that is killed at a timeout, fails that
/// task alone: the jobs behind it are sent again, whole, and the next large echo on
/// the pool comes back in its argument's buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_a_large_echo_in_flight_fails_only_that_task() {
    let pool = pool_of(1).await;
    let mut seen = Seen::of(&pool);

    async fn echo_reuses(pool: &Pool, seed: usize, what: &str) {
        let arg = pattern(8 * MIB, seed);
        let want = arg.clone();
        let at = addr(&arg);
        let got = within(what, pool.apply(echo_vec, arg)).await.expect(what);
        assert_same(&got, &want, what);
        assert_eq!(
            addr(&got),
            at,
            "{what}: the argument's buffer was not reused"
        );
    }

    echo_reuses(&pool, 0, "echo before the crashes").await;

    // Dies while running, holding the argument.
    let mut doomed = pattern(8 * MIB, 1);
    doomed[0] = 0xAB;
    let pid = support::worker_pids(&pool)[0];
    let err = within("abort", pool.apply(echo_or_abort, doomed))
        .await
        .expect_err("the worker aborts");
    assert!(
        matches!(err, TaskError::WorkerDied { pid: p, .. } if p == pid),
        "{err:?}"
    );
    echo_reuses(&pool, 2, "echo after the abort").await;
    seen.note(&pool);

    // Dies with jobs sent ahead of it: those are sent again to the new worker, intact.
    let args: Vec<Vec<u8>> = (0..6).map(|i| pattern(2 * MIB, 10 + i)).collect();
    let mut handles = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let mut arg = arg.clone();
        if i == 2 {
            arg[0] = 0xAB;
        }
        handles.push(pool.apply_async(echo_or_abort, arg));
    }
    let results = within("pipelined", futures::future::join_all(handles)).await;
    for (i, (r, want)) in results.into_iter().zip(&args).enumerate() {
        if i == 2 {
            assert!(matches!(r, Err(TaskError::WorkerDied { .. })), "{r:?}");
        } else {
            assert_same(
                &r.expect("a job behind the crash"),
                want,
                &format!("pipelined echo {i}"),
            );
        }
    }
    seen.note(&pool);
    echo_reuses(&pool, 3, "echo after the pipelined abort").await;

    // Dies while writing the reply to a large echo: the pool has read part of it
    // into the buffer of its own. The task fails (or, should the reply get out whole
    // before the worker dies, succeeds intact); the worker dies either way.
    let mut died = 0;
    for round in 0..3 {
        seen.note(&pool);
        let pid = support::worker_pids(&pool)[0];
        let arg = pattern(8 * MIB, 20 + round);
        let want = arg.clone();
        match within(
            "abort mid-reply",
            pool.apply(echo_then_abort_mid_reply, arg),
        )
        .await
        {
            Ok(got) => assert_same(&got, &want, "a reply out before the worker died"),
            Err(TaskError::WorkerDied { pid: p, .. }) => {
                assert_eq!(p, pid);
                died += 1;
            }
            Err(other) => panic!("expected WorkerDied or the result, got {other:?}"),
        }
        // Wait for the dead worker to be gone and replaced.
        let p = pool.clone();
        assert!(
            wait_until(support::BOUND, move || {
                let now = support::worker_pids(&p);
                support::is_gone(pid) && now.len() == 1 && !now.contains(&pid)
            })
            .await,
            "worker {pid} not replaced: {:?}",
            pool.stats()
        );
        seen.note(&pool);
        echo_reuses(&pool, 30 + round, "echo after an abort mid-reply").await;
    }
    assert!(
        died > 0,
        "no worker died in the middle of its reply: nothing was tested"
    );

    // Killed at its timeout, holding the argument.
    let err = within(
        "timeout",
        pool.apply(sleepy_echo, pattern(8 * MIB, 4))
            .timeout(Duration::from_millis(100)),
    )
    .await
    .expect_err("the task times out");
    assert!(err.is_timeout(), "{err:?}");
    seen.note(&pool);
    echo_reuses(&pool, 5, "echo after the timeout").await;

    let stats = pool.stats();
    assert!(
        stats.workers_crashed + stats.workers_killed_on_timeout + stats.workers_killed_on_abort
            >= 3,
        "{stats:?}"
    );
    assert_eq!(stats.workers_killed_on_timeout, 1, "{stats:?}");
    assert_eq!(stats.timed_out, 1, "{stats:?}");
    seen.finish(pool).await;
}

/// Large echoes and transforms from many callers at once, on 2 workers: each result
/// is its own argument's, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_echoes_each_get_their_own_bytes() {
    let pool = pool_of(2).await;
    let seen = Seen::of(&pool);
    let args: Vec<Vec<u8>> = (0..8).map(|i| pattern(2 * MIB, 40 + i)).collect();
    let wants = args.clone();
    let ats: Vec<usize> = args.iter().map(|a| addr(a)).collect();
    let tasks: Vec<_> = args
        .into_iter()
        .map(|a| pool.apply(echo_vec, a).into_future())
        .collect();
    let got = within("concurrent echoes", futures::future::join_all(tasks)).await;
    for (i, ((g, w), at)) in got.into_iter().zip(&wants).zip(ats).enumerate() {
        let g = g.expect("echo");
        assert_same(&g, w, &format!("concurrent echo {i}"));
        assert_eq!(
            addr(&g),
            at,
            "concurrent echo {i}: not its argument's buffer"
        );
    }

    // Transforms whose results are smaller than their buffers (the buffer may hold
    // bytes of the replies behind), echoes and small tasks, all at once.
    let mut transforms = Vec::new();
    let mut echoes = Vec::new();
    let mut small = Vec::new();
    for i in 0..6 {
        let arg = resize_arg(MIB, MIB, 600 * KIB + i, i);
        transforms.push((resized(&arg), addr(&arg), pool.apply_async(resize, arg)));
        let arg = pattern(MIB + i, 50 + i);
        echoes.push((arg.clone(), pool.apply_async(echo_vec, arg)));
        small.push(pool.apply_async(plus_one, i as u64));
    }
    for (i, (want, at, h)) in transforms.into_iter().enumerate() {
        let got = within("transform", h).await.expect("transform");
        assert_same(&got, &want, &format!("concurrent transform {i}"));
        assert_eq!(
            addr(&got),
            at,
            "concurrent transform {i}: not its argument's buffer"
        );
    }
    for (i, (want, h)) in echoes.into_iter().enumerate() {
        let got = within("echo", h).await.expect("echo");
        assert_same(
            &got,
            &want,
            &format!("concurrent echo {i} among transforms"),
        );
    }
    for (i, h) in small.into_iter().enumerate() {
        assert_eq!(within("small", h).await, Ok(i as u64 + 1));
    }
    assert_eq!(pool.stats().workers_crashed, 0);
    seen.finish(pool).await;
}

/// A caller whose runtime is busy between replies (here: blocked for a moment after
/// each one) lets a worker's replies pile up on the channel. A large reply read into
/// its argument's buffer, which is larger than the reply, then reads the start of the
/// replies behind it too: those bytes go back to be read as the next frames, and every
/// reply comes back whole.
#[tokio::test(flavor = "current_thread")]
async fn replies_piled_up_behind_a_large_one_come_back_whole() {
    let pool = pool_of(1).await;
    let seen = Seen::of(&pool);
    // Quick tasks first: the pool then sends this worker many jobs ahead.
    for x in 0..20 {
        assert_eq!(within("tiny", pool.apply(plus_one, x)).await, Ok(x + 1));
    }
    let mut transforms = Vec::new();
    let mut made = Vec::new();
    let mut small = Vec::new();
    for i in 0..40 {
        // A 64 KiB result in a 128 KiB argument's buffer: reused, with room to spare.
        let arg = resize_arg(128 * KIB, 128 * KIB, SPLIT_MIN + 17 + i, i);
        transforms.push((resized(&arg), addr(&arg), pool.apply_async(resize, arg)));
        if i % 4 == 0 {
            let n = SPLIT_MIN + i;
            made.push((pattern(n, n), pool.apply_async(make_vec, n)));
            small.push(pool.apply_async(plus_one, i as u64));
        }
    }
    for (i, (want, at, handle)) in transforms.into_iter().enumerate() {
        let got = within("transform", handle).await.expect("transform");
        assert_same(&got, &want, &format!("transform {i}"));
        assert_eq!(addr(&got), at, "transform {i}: not its argument's buffer");
        // Blocks this runtime's only thread, the driver's too, while the worker goes on.
        std::thread::sleep(Duration::from_millis(1));
    }
    for (i, (want, handle)) in made.into_iter().enumerate() {
        let got = within("make_vec", handle).await.expect("make_vec");
        assert_same(&got, &want, &format!("make_vec {i}"));
    }
    for (i, handle) in small.into_iter().enumerate() {
        assert_eq!(within("small", handle).await, Ok(4 * i as u64 + 1));
    }
    assert_eq!(pool.stats().workers_crashed, 0);
    seen.finish(pool).await;
}

/// A large result over the pool's frame limit fails its task with `TooLarge`, whether
/// it came from a large argument or not; the pool goes on, on the same worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_over_the_frame_limit_fails_only_its_task() {
    let limit = MIB;
    let pool = within(
        "build",
        support::builder().processes(1).max_frame_len(limit).build(),
    )
    .await
    .expect("pool builds");
    let seen = Seen::of(&pool);
    let pid = support::worker_pids(&pool)[0];

    let check = |err: TaskError, at_least: usize| match err {
        TaskError::TooLarge {
            what: Payload::Result,
            size,
            limit: l,
        } => {
            assert!(size >= at_least, "size {size}");
            assert_eq!(l, limit);
        }
        other => panic!("expected TooLarge {{ Result }}, got {other:?}"),
    };
    for round in 0..2 {
        let err = within("too large", pool.apply(make_vec, 2 * MIB))
            .await
            .expect_err("over the limit");
        check(err, 2 * MIB);
        let err = within("too large", pool.apply(make_bytes, limit + 1))
            .await
            .expect_err("over the limit");
        check(err, limit + 1);
        // An argument under the limit, a result over it.
        let arg = resize_arg(900 * KIB, 900 * KIB, 3 * MIB / 2, round);
        let err = within("grown", pool.apply(resize, arg))
            .await
            .expect_err("over the limit");
        check(err, 3 * MIB / 2);

        // Under the limit: fine, and in the argument's buffer.
        let arg = pattern(900 * KIB, round);
        let want = arg.clone();
        let at = addr(&arg);
        let got = within("under", pool.apply(echo_vec, arg))
            .await
            .expect("under");
        assert_same(&got, &want, "an echo under the limit");
        assert_eq!(
            addr(&got),
            at,
            "an echo under the limit: not the argument's buffer"
        );
        let got = within("under", pool.apply(make_bytes, 900 * KIB))
            .await
            .expect("under");
        assert_same(
            &got,
            &pattern(900 * KIB, 900 * KIB),
            "make_bytes under the limit",
        );
    }
    assert_eq!(
        support::worker_pids(&pool),
        vec![pid],
        "the worker kept serving"
    );
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    assert_eq!(stats.failed, 6, "{stats:?}");
    seen.finish(pool).await;
}

/// Tiny tasks between large results: the pool may run an awaited task on the caller's
/// thread (the direct path; a large result takes longer than the pool polls for it
/// there, and the driver takes the job over), and a large reply then comes over the
/// socket all the same.
#[tokio::test(flavor = "current_thread")]
async fn large_results_between_tiny_tasks_on_the_direct_path() {
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .spin(Duration::from_micros(200))
            .build(),
    )
    .await
    .expect("pool builds");
    let seen = Seen::of(&pool);
    for round in 0..20u64 {
        for x in 0..10 {
            assert_eq!(within("tiny", pool.apply(plus_one, x)).await, Ok(x + 1));
        }
        let n = [SPLIT_MIN, SPLIT_MIN + 1, 300 * KIB, 2 * MIB][round as usize % 4] + round as usize;
        let got = within("large", pool.apply(zeros_marked, n))
            .await
            .expect("large");
        assert!(
            got == zeros_marked(n),
            "round {round}: {n} bytes came back altered"
        );
    }
    assert_eq!(pool.stats().workers_crashed, 0);
    seen.finish(pool).await;
}

/// Recycled workers (`max_tasks_per_child`) with large echoes queued and in flight:
/// every echo arrives whole, in its argument's buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_echoes_across_recycled_workers() {
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .max_tasks_per_child(2)
            .build(),
    )
    .await
    .expect("pool builds");
    let mut seen = Seen::of(&pool);
    let args: Vec<Vec<u8>> = (0..7).map(|i| pattern(MIB + i, 60 + i)).collect();
    let wants = args.clone();
    let ats: Vec<usize> = args.iter().map(|a| addr(a)).collect();
    let handles: Vec<_> = args
        .into_iter()
        .map(|a| pool.apply_async(echo_vec, a))
        .collect();
    for (i, ((h, want), at)) in handles.into_iter().zip(&wants).zip(ats).enumerate() {
        let got = within("echo", h).await.expect("echo");
        assert_same(&got, want, &format!("echo {i} across recycling"));
        assert_eq!(addr(&got), at, "echo {i}: not its argument's buffer");
        seen.note(&pool);
    }
    let stats = pool.stats();
    assert!(stats.workers_recycled >= 3, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    seen.finish(pool).await;
}

/// `Process` reads its one reply with the same codec: large byte strings and others
/// come back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_returns_large_byte_strings_intact() {
    let n = 3 * MIB + 1;
    let start = |what: &'static str| {
        Process::builder()
            .start_method(support::start_method())
            .daemon(true)
            .name(what)
    };
    let child = within("start", start("vec").start(make_vec, n))
        .await
        .expect("start");
    let pid = child.pid();
    let got = within("join", child.join()).await.expect("Vec<u8>");
    assert_same(&got, &pattern(n, n), "a Process's Vec<u8>");
    assert_all_gone(&[pid]).await;

    let arg = pattern(n, 3);
    let child = within(
        "start",
        start("echo").start(echo_bytes, Bytes::from(arg.clone())),
    )
    .await
    .expect("start");
    let pid = child.pid();
    let got = within("join", child.join()).await.expect("Bytes");
    assert_same(&got, &arg, "a Process's Bytes echo");
    assert_all_gone(&[pid]).await;

    let child = within("start", start("string").start(make_string, n))
        .await
        .expect("start");
    let pid = child.pid();
    let got = within("join", child.join()).await.expect("String");
    assert!(
        got == make_string(n),
        "a Process's String came back altered"
    );
    assert_all_gone(&[pid]).await;
}
