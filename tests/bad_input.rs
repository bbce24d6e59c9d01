#![cfg(target_os = "linux")]
//! Bad input: values that do not encode or decode, oversized frames, and a worker that
//! writes garbage on its channel. Each gives a clear error for the task concerned, and
//! the pool stays usable.

procpool::enable_test_support!();

mod support;

use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::Duration;

use procpool::{Payload, TaskError, Transport};
use serde::de::Deserializer;
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use support::*;

/// A value whose `Serialize` always fails.
#[derive(Debug)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Unserializable refuses"))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Unserializable)
    }
}

/// A value that serialises but whose `Deserialize` always fails.
#[derive(Debug)]
struct Undeserializable;

impl Serialize for Undeserializable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Undeserializable {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("Undeserializable refuses"))
    }
}

fn returns_unserializable(_: ()) -> Unserializable {
    Unserializable
}

fn returns_undeserializable(_: ()) -> Undeserializable {
    Undeserializable
}

fn takes_undeserializable(_: Undeserializable) -> u32 {
    unreachable!("the argument never decodes")
}

fn takes_unserializable(_: Unserializable) -> u32 {
    unreachable!("the argument never encodes")
}

/// A pool of one and its worker's pid.
async fn pool_of_one() -> (procpool::Pool, u32) {
    pool_of_one_over(None).await
}

/// A pool of one over `transport` (the test run's default if `None`), and its pid.
async fn pool_of_one_over(transport: Option<Transport>) -> (procpool::Pool, u32) {
    let mut builder = support::builder().processes(1);
    if let Some(transport) = transport {
        builder = builder.transport(transport);
    }
    let pool = within("build", builder.build()).await.expect("pool builds");
    let pid = support::worker_pids(&pool)[0];
    (pool, pid)
}

/// A result whose `Serialize` fails gives `Codec { what: Result }` and the worker goes
/// on serving.
///
/// What happens instead: the worker aborts (SIGABRT) and the task fails with
/// `WorkerDied`. `protocol::codec::extend` hands `out` to `postcard::to_extend` by
/// value (`std::mem::take(out)`); on error that buffer is dropped and `out` is left
/// empty, so `run_chunk`'s `out.truncate(start)` cannot restore the REPLY_GAP prefix.
/// `BlockingConn::send_reply` then computes `out.len() - REPLY_GAP` (underflow; in
/// release, `out[start..]` out of range), panics outside any task, and the panic
/// cannot unwind out of the worker's entry point. (The worker's panic hook also
/// swallows that panic's message: it records every main-thread panic.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_that_fails_to_serialize() {
    let (pool, pid) = pool_of_one().await;
    let err = within("bad result", pool.apply(returns_unserializable, ()))
        .await
        .expect_err("the result cannot be encoded");
    assert!(
        matches!(
            err,
            TaskError::Codec {
                what: Payload::Result,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("result"), "{err}");
    // The worker goes on serving: same process.
    assert_eq!(within("after", pool.apply(whoami, ())).await, Ok(pid));
    let stats = pool.stats();
    assert_eq!(stats.failed, 1, "{stats:?}");
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_that_fails_to_deserialize() {
    let (pool, pid) = pool_of_one().await;
    let err = within("bad result", pool.apply(returns_undeserializable, ()))
        .await
        .expect_err("the result cannot be decoded");
    // (postcard does not keep a custom error's text: the message is its own.)
    assert!(
        matches!(
            err,
            TaskError::Codec {
                what: Payload::Result,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(within("after", pool.apply(whoami, ())).await, Ok(pid));
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_that_fails_to_deserialize_in_the_worker() {
    let (pool, pid) = pool_of_one().await;
    let err = within(
        "bad argument",
        pool.apply(takes_undeserializable, Undeserializable),
    )
    .await
    .expect_err("the argument cannot be decoded");
    assert!(
        matches!(
            err,
            TaskError::Codec {
                what: Payload::Argument,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(within("after", pool.apply(whoami, ())).await, Ok(pid));
    assert_eq!(pool.stats().workers_crashed, 0);
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_that_fails_to_serialize() {
    let (pool, pid) = pool_of_one().await;
    let err = within(
        "bad argument",
        pool.apply(takes_unserializable, Unserializable),
    )
    .await
    .expect_err("the argument cannot be encoded");
    assert!(
        matches!(
            err,
            TaskError::Codec {
                what: Payload::Argument,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(within("after", pool.apply(whoami, ())).await, Ok(pid));
    within("terminate", pool.terminate()).await;
}

fn bytes_of_len(n: usize) -> Vec<u8> {
    vec![7; n]
}

fn len_of(v: Vec<u8>) -> usize {
    v.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_fail_only_their_task() {
    let limit = 64 * 1024;
    let pool = within(
        "build",
        support::builder().processes(1).max_frame_len(limit).build(),
    )
    .await
    .expect("pool builds");
    let pid = support::worker_pids(&pool)[0];

    let err = within("big argument", pool.apply(len_of, vec![1u8; 2 * limit]))
        .await
        .expect_err("the argument exceeds the frame limit");
    match err {
        TaskError::TooLarge {
            what: Payload::Argument,
            size,
            limit: l,
        } => {
            assert!(size >= 2 * limit, "{size}");
            assert_eq!(l, limit);
        }
        other => panic!("expected TooLarge(Argument), got {other:?}"),
    }

    let err = within("big result", pool.apply(bytes_of_len, 2 * limit))
        .await
        .expect_err("the result exceeds the frame limit");
    match err {
        TaskError::TooLarge {
            what: Payload::Result,
            size,
            limit: l,
        } => {
            assert!(size >= 2 * limit, "{size}");
            assert_eq!(l, limit);
        }
        other => panic!("expected TooLarge(Result), got {other:?}"),
    }

    // Just under the limit still works, on the same worker.
    assert_eq!(
        within("fits", pool.apply(len_of, vec![1u8; limit / 2])).await,
        Ok(limit / 2)
    );
    assert_eq!(within("after", pool.apply(whoami, ())).await, Ok(pid));
    assert_eq!(pool.stats().workers_crashed, 0);
    within("terminate", pool.terminate()).await;
}

/// The descriptor of this worker's channel to the pool: its only socket above the
/// standard streams (descriptor 3 with the spawn start method).
fn channel_fd() -> i32 {
    let sockets: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("list descriptors")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&fd| fd > 2)
        .filter(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .collect();
    assert_eq!(
        sockets.len(),
        1,
        "cannot tell which socket is the worker's channel: {sockets:?}"
    );
    sockets[0]
}

/// Writes `bytes` raw on this worker's channel, as a broken worker would, then waits
/// to be killed.
fn write_on_channel(bytes: Vec<u8>) -> u32 {
    let fd = channel_fd();
    // SAFETY: `fd` is the worker's channel socket, open for the life of the process;
    // the ManuallyDrop keeps this File from closing it.
    let mut channel = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    channel.write_all(&bytes).expect("write on the channel");
    std::thread::sleep(Duration::from_secs(30));
    std::process::id()
}

/// Appends `record` to the reply ring as a worker would and wakes the pool, then waits
/// to be killed.
fn write_into_ring(record: Vec<u8>) -> u32 {
    const CAPACITY: u64 = 128 << 10;
    let base = ring_base();
    // SAFETY: the ring's mapping is 4 KiB + 128 KiB, readable and writable, and lives
    // as long as the worker; the indices are aligned u64s at offsets 0 and 64. The pool
    // reads only what `write` publishes, which is stored last.
    unsafe {
        let write = &*(base as *const std::sync::atomic::AtomicU64);
        let at = write.load(std::sync::atomic::Ordering::SeqCst);
        for (i, b) in record.iter().enumerate() {
            *base.add(4096 + ((at + i as u64) % CAPACITY) as usize) = *b;
        }
        write.store(
            at + record.len() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }
    wake_the_pool()
}

/// Writes the empty frame that wakes a pool waiting for the ring, then waits to be
/// killed.
fn wake_the_pool() -> u32 {
    write_on_channel(vec![0, 0, 0, 0])
}

/// Sets the ring's `write` index far beyond anything written and wakes the pool, then
/// waits to be killed.
fn scramble_ring_index(_: Vec<u8>) -> u32 {
    let base = ring_base();
    // SAFETY: as in `write_into_ring`.
    unsafe {
        let write = &*(base as *const std::sync::atomic::AtomicU64);
        write.fetch_add(1 << 40, std::sync::atomic::Ordering::SeqCst);
    }
    wake_the_pool()
}

async fn garbage_is_a_protocol_error(bytes: Vec<u8>, what: &str) -> String {
    garbage_through(None, write_on_channel, bytes, what).await
}

/// What a worker that writes `bytes` with `f` gets: a protocol error, and its worker
/// is replaced. Over `transport`; the attacks on the reply ring need a local one.
async fn garbage_through(
    transport: Option<Transport>,
    f: fn(Vec<u8>) -> u32,
    bytes: Vec<u8>,
    what: &str,
) -> String {
    let (pool, pid) = pool_of_one_over(transport).await;
    let broken = pool.apply_async(f, bytes);
    let behind = pool.apply_async(double, 21);
    let err = within(what, broken)
        .await
        .expect_err("the worker broke the protocol");
    let why = match err {
        TaskError::Protocol(why) => why,
        other => panic!("{what}: expected Protocol, got {other:?}"),
    };
    assert!(
        all_gone(vec![pid], BOUND).await,
        "{what}: a worker that broke the protocol is killed"
    );
    assert_eq!(
        within("behind", behind).await,
        Ok(42),
        "{what}: the job pipelined behind is re-queued"
    );
    assert_ne!(
        within("after", pool.apply(whoami, ()))
            .await
            .expect("serves"),
        pid
    );
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 1, "{what}: {stats:?}");
    assert_eq!(stats.failed, 1, "{what}: {stats:?}");
    within("terminate", pool.terminate()).await;
    why
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_reply_in_the_ring() {
    // A well-formed record of five bytes whose header does not decode.
    let why = garbage_through(
        Some(Transport::Local),
        write_into_ring,
        vec![0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff],
        "corrupt record",
    )
    .await;
    assert!(why.contains("frame header"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_record_in_the_ring() {
    // A length prefix beyond what the ring may hold.
    let why = garbage_through(
        Some(Transport::Local),
        write_into_ring,
        vec![0, 0x10, 0, 0, 1, 2],
        "big record",
    )
    .await;
    assert!(why.contains("ring corrupt"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrambled_ring_index() {
    let why = garbage_through(
        Some(Transport::Local),
        scramble_ring_index,
        vec![],
        "scrambled index",
    )
    .await;
    assert!(why.contains("ring corrupt"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_frame_from_a_worker() {
    // A well-formed frame of five bytes whose header does not decode.
    let why = garbage_is_a_protocol_error(
        vec![0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff],
        "corrupt frame",
    )
    .await;
    assert!(why.contains("frame"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_from_a_worker() {
    // A length prefix far beyond the frame limit (256 MiB by default).
    let why =
        garbage_is_a_protocol_error(vec![0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4], "oversized frame")
            .await;
    assert!(why.contains("frame"), "{why}");
}
