#![cfg(target_os = "linux")]
//! Large payloads in shared memory (#16, `PoolBuilder::shared_memory_min`, off by
//! default): a task's one `Bytes` argument from the threshold on travels from the pool
//! to a local worker as a sealed memfd passed with its frame (`SCM_RIGHTS`), and a
//! result that is a view of it goes back in the same memfd.
//!
//! On real workers: off by default, on from its threshold; round trips of 1 MiB and
//! 16 MiB (echoes, transforms, a slice of the task's own argument) come back intact, a
//! large `Bytes` result that is a view of its argument is a view of a
//! `memfd:procpool-payload` mapping, new bytes and a byte string just under the
//! threshold come through the socket; a compromised worker that forges a shared reply
//! on its channel (descriptor 3) with a memfd that is not sealed, is sealed only
//! against growing, is too small for what the reply says, is not a memfd at all, is
//! missing, is one of too many, or is over the frame limit fails only its own task,
//! with an error and within a bound, is replaced, and leaks no descriptor in the
//! pool's process; a worker that aborts in the middle of a large task fails only that
//! task; a stream transport keeps the bytes inline. Shared memory is the local
//! transport's, so the pools here use it whatever `__PROCPOOL_TEST_TRANSPORT` says
//! (but the one of the stream test). Every test terminates its pools and checks that
//! their processes are gone.
//!
//! The tests count this process's open descriptors, so they run one at a time (see
//! [`SERIAL`]).

procpool::enable_test_support!();

mod support;

use std::time::Duration;

use bytes::Bytes;
use procpool::{Pool, TaskError, Transport};
use serde::{Deserialize, Serialize};
use support::{
    all_gone, channel_write, gave_up, ring_put, ring_write_index, serves, terminate, varint,
    wait_until, within, BOUND, CHANNEL, ON_SOCKET,
};

const MIB: usize = 1 << 20;

/// The frame limit of the hostile pools: over a shared payload of 1 MiB, under one of
/// 3 MiB.
const MAX_FRAME: usize = 2 * MIB;

/// The hostile pools' task timeout: what ends a hostile task that hangs, were the pool
/// not to give up on its worker at once.
const TASK_TIMEOUT: Duration = Duration::from_millis(1500);

/// The tests here run one at a time: each counts this process's open descriptors.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------

/// `len` bytes that differ from any shift of themselves, so that a wrong offset shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 11) ^ (i >> 19)) as u8)
        .collect()
}

/// Whether `addr..addr + len` lies in a mapping of a memfd named `name` in this
/// process.
fn in_memfd(name: &str, addr: usize, len: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines().any(|line| {
        let Some((range, rest)) = line.split_once(' ') else {
            return false;
        };
        let Some((start, end)) = range.split_once('-') else {
            return false;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            return false;
        };
        rest.contains(&format!("memfd:{name} ")) && start <= addr && addr + len <= end
    })
}

/// Whether `b` is a view of a payload's memfd mapping.
fn is_shared(b: &Bytes) -> bool {
    in_memfd("procpool-payload", b.as_ptr() as usize, b.len())
}

/// The number of descriptors this process holds open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Waits until this process holds at most `limit` descriptors; false (with the count)
/// if it still holds more after [`BOUND`].
async fn fds_back_to(limit: usize) -> Result<(), usize> {
    if wait_until(BOUND, || open_fds() <= limit).await {
        Ok(())
    } else {
        Err(open_fds())
    }
}

// ---------------------------------------------------------------------------------
// Tasks.
// ---------------------------------------------------------------------------------

fn echo_vec(v: Vec<u8>) -> Vec<u8> {
    v
}

fn echo_bytes(b: Bytes) -> Bytes {
    b
}

/// Every byte plus one, in a new buffer.
fn add_one(b: Bytes) -> Bytes {
    b.iter()
        .map(|x| x.wrapping_add(1))
        .collect::<Vec<u8>>()
        .into()
}

/// The bytes reversed, in the argument's own buffer.
fn reverse(mut v: Vec<u8>) -> Vec<u8> {
    v.reverse();
    v
}

/// A view of the argument without its first and last 10 bytes.
fn middle(b: Bytes) -> Bytes {
    b.slice(10..b.len() - 10)
}

/// The argument's bytes, copied into a fresh `Bytes` (not a view of it).
fn copied(b: Bytes) -> Bytes {
    Bytes::copy_from_slice(&b)
}

/// Reads its large argument, then aborts in the middle of the task.
fn abort_midway(b: Bytes) -> Bytes {
    let sum = b.iter().fold(0u8, |a, x| a.wrapping_add(*x));
    std::thread::sleep(Duration::from_millis(100 + u64::from(sum % 2)));
    std::process::abort()
}

// ---------------------------------------------------------------------------------
// 1. Round trips.
// ---------------------------------------------------------------------------------

/// Shared memory is off by default (a 16 MiB `Bytes` echo comes through the socket);
/// with `shared_memory_min(16 MiB)` a 16 MiB echo comes back in shared memory and one
/// byte less through the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_is_off_by_default_and_on_from_its_threshold() {
    let _serial = SERIAL.lock().await;
    for (off, what) in [(true, "default"), (false, "16 MiB")] {
        let mut builder = support::builder().transport(Transport::Local).processes(1);
        if !off {
            builder = builder.shared_memory_min(16 * MIB);
        }
        let pool = within("build", builder.build()).await.expect("pool builds");
        let pids = support::worker_pids(&pool);
        for (len, shared) in [(16 * MIB, !off), (16 * MIB - 1, false)] {
            let data = pattern(len);
            let got = within(what, pool.apply(echo_bytes, Bytes::from(data.clone())))
                .await
                .expect("echo");
            assert!(got[..] == data[..], "{what}, {len} bytes: changed");
            assert_eq!(is_shared(&got), shared, "{what}, {len} bytes");
        }
        terminate(pool, pids, what).await;
    }
}

/// On a pool whose threshold is set to 1 MiB: 16 MiB and 1 MiB `Vec<u8>` and `Bytes`
/// arguments come back intact from echoes and transforms; a `Bytes` result of 1 MiB
/// or more that is a view of its argument (an echo, a slice) is a view of the
/// argument's memfd mapping in the caller (while it is alive); new bytes (a copy, a
/// transform) come back through the socket; one byte less than 1 MiB travels as
/// before, not in a memfd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_round_trip_intact() {
    let _serial = SERIAL.lock().await;
    let pool = within(
        "build",
        support::builder()
            .transport(Transport::Local)
            .processes(2)
            .shared_memory_min(MIB)
            .build(),
    )
    .await
    .expect("pool builds");
    let pids = support::worker_pids(&pool);
    for len in [16 * MIB, MIB] {
        let what = format!("{len} bytes");
        let data = pattern(len);

        let got = within(&what, pool.apply(echo_vec, data.clone()))
            .await
            .expect("echo_vec");
        assert!(got == data, "{what}: a Vec<u8> echo changed");

        let got = within(&what, pool.apply(reverse, data.clone()))
            .await
            .expect("reverse");
        let mut want = data.clone();
        want.reverse();
        assert!(got == want, "{what}: a reversed Vec<u8> is wrong");

        let got = within(&what, pool.apply(echo_bytes, Bytes::from(data.clone())))
            .await
            .expect("echo_bytes");
        assert!(got[..] == data[..], "{what}: a Bytes echo changed");
        assert!(is_shared(&got), "{what}: a Bytes echo is not a memfd view");

        let got = within(&what, pool.apply(copied, Bytes::from(data.clone())))
            .await
            .expect("copied");
        assert!(got[..] == data[..], "{what}: a copied Bytes changed");
        assert!(
            !is_shared(&got),
            "{what}: new bytes come through the socket, not in a memfd"
        );

        let got = within(&what, pool.apply(add_one, Bytes::from(data.clone())))
            .await
            .expect("add_one");
        let want: Vec<u8> = data.iter().map(|x| x.wrapping_add(1)).collect();
        assert!(got[..] == want[..], "{what}: a transformed Bytes is wrong");
        assert!(
            !is_shared(&got),
            "{what}: new bytes come through the socket, not in a memfd"
        );
        drop(got);

        let got = within(&what, pool.apply(middle, Bytes::from(data.clone())))
            .await
            .expect("middle");
        assert_eq!(got.len(), len - 20, "{what}");
        assert!(
            got[..] == data[10..len - 10],
            "{what}: a slice of the argument is wrong"
        );
        // From 1 MiB on only: the slice of 1 MiB is 20 bytes under it.
        if len > MIB {
            assert!(is_shared(&got), "{what}: a slice is not a memfd view");
        }
    }

    // Exactly 1 MiB: shared; one byte less: inline, as before.
    let at = pattern(MIB);
    let got = within("1 MiB", pool.apply(echo_bytes, Bytes::from(at.clone())))
        .await
        .expect("echo at 1 MiB");
    assert!(got[..] == at[..] && is_shared(&got), "1 MiB");
    let under = pattern(MIB - 1);
    let got = within(
        "1 MiB - 1",
        pool.apply(echo_bytes, Bytes::from(under.clone())),
    )
    .await
    .expect("echo under 1 MiB");
    assert!(got[..] == under[..], "1 MiB - 1: changed");
    assert!(!is_shared(&got), "1 MiB - 1 came in a memfd");
    let got = within("1 MiB - 1", pool.apply(echo_vec, under.clone()))
        .await
        .expect("echo_vec under 1 MiB");
    assert!(got == under, "1 MiB - 1 Vec: changed");

    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    terminate(pool, pids, "round trips").await;
}

// ---------------------------------------------------------------------------------
// 2. A hostile worker forges shared replies.
// ---------------------------------------------------------------------------------

/// What the forged reply passes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Pass {
    /// A memfd of `size` bytes with every seal a payload needs.
    Sealed,
    /// A memfd with no seal.
    Unsealed,
    /// A memfd sealed against growing only.
    GrowOnly,
    /// The read end of a pipe.
    Pipe,
    /// A regular file, opened read-only.
    File,
    /// No descriptor at all.
    Nothing,
    /// This many descriptors, with one byte of junk and no frame.
    Many(usize),
}

/// What the hostile task does after its forgery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Then {
    /// Sleeps until killed (at most 30 s).
    Hang,
    /// Returns a small result, as a task would.
    Return,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Forgery {
    /// The id of the job the forged reply answers: the hostile task's own.
    job: u64,
    pass: Pass,
    /// The memfd's size.
    size: u64,
    /// Where the reply says its bytes are in the memfd, and how many.
    offset: u64,
    len: u64,
    then: Then,
}

/// Puts the mark of a reply on the channel in the ring, as a worker does before it
/// sends a shared reply.
fn ring_mark_on_socket() {
    use std::sync::atomic::Ordering::SeqCst;
    let write = ring_write_index();
    let at = write.load(SeqCst);
    ring_put(at, &ON_SOCKET.to_be_bytes());
    write.store(at.wrapping_add(4), SeqCst);
}

/// A `FromWorker::SharedDone` frame, length prefix included, as a worker writes it:
/// the `Done` header with tag 4 (`Ok`, no panic, a byte string), the chunk's prefix
/// (one result, `Ok`, the string's length), then the string's offset in the memfd.
fn shared_done(job: u64, offset: u64, len: u64) -> Vec<u8> {
    let mut frame = vec![4];
    varint(job, &mut frame);
    frame.push(0);
    varint(0, &mut frame);
    frame.push(1);
    varint(1000, &mut frame);
    varint(1, &mut frame);
    varint(1, &mut frame);
    frame.push(0);
    varint(len, &mut frame);
    varint(offset, &mut frame);
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend(frame);
    out
}

/// sendmsg(2) of `bytes` on the channel with `fds` attached; what it returns.
fn send_with_fds(bytes: &[u8], fds: &[i32]) -> isize {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let data_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; it points at `iov` (readable memory of its
    // length) and at `control`, 8-byte aligned and `space` bytes long, into which the
    // one SCM_RIGHTS header and its descriptors are written within its bounds.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<i32>(),
                fds.len(),
            );
        }
        libc::sendmsg(CHANNEL, &msg, libc::MSG_NOSIGNAL)
    }
}

/// A memfd holding `size` bytes of [`pattern`], with `seals`.
fn memfd(size: u64, seals: i32) -> i32 {
    // SAFETY: memfd_create with a static C string and flags.
    let fd = unsafe {
        libc::memfd_create(
            c"forged".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create");
    let bytes = pattern(size as usize);
    let mut file = std::mem::ManuallyDrop::new(
        // SAFETY: `fd` is ours; ManuallyDrop keeps it open.
        unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) },
    );
    std::io::Write::write_all(&mut *file, &bytes).expect("fill the memfd");
    if seals != 0 {
        // SAFETY: fcntl on a descriptor we own, with integer flags.
        let rc = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) };
        assert_eq!(rc, 0, "F_ADD_SEALS");
    }
    fd
}

/// The hostile task: forges a shared reply for its own job on its worker's channel.
fn forge(f: Forgery) -> Bytes {
    let all_seals =
        libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    let fds: Vec<i32> = match f.pass {
        Pass::Sealed => vec![memfd(f.size, all_seals)],
        Pass::Unsealed => vec![memfd(f.size, 0)],
        Pass::GrowOnly => vec![memfd(f.size, libc::F_SEAL_GROW)],
        Pass::Pipe => {
            let mut ends = [0; 2];
            // SAFETY: pipe(2) writes two descriptors into `ends`.
            assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
            vec![ends[0]]
        }
        Pass::File => {
            // A regular file (under the temporary directory, where a sandboxed test
            // worker may write), removed once open.
            use std::os::fd::IntoRawFd;
            let path = std::env::temp_dir().join(format!("procpool-shm-{}", std::process::id()));
            std::fs::write(&path, vec![7u8; 8192]).expect("write a regular file");
            let file = std::fs::File::open(&path).expect("open the regular file");
            let _ = std::fs::remove_file(&path);
            vec![file.into_raw_fd()]
        }
        Pass::Nothing => vec![],
        Pass::Many(n) => {
            let one = memfd(4096, all_seals);
            // SAFETY: dup(2) of a descriptor we own.
            (0..n).map(|_| unsafe { libc::dup(one) }).collect()
        }
    };
    if let Pass::Many(_) = f.pass {
        send_with_fds(&[0x5a], &fds);
    } else {
        ring_mark_on_socket();
        let frame = shared_done(f.job, f.offset, f.len);
        let sent = send_with_fds(&frame, &fds);
        let sent = usize::try_from(sent).expect("sendmsg");
        channel_write(&frame[sent..]);
    }
    if f.then == Then::Hang {
        std::thread::sleep(Duration::from_secs(30));
    }
    Bytes::from_static(b"returned")
}

async fn hostile_pool() -> Pool {
    within(
        "build",
        support::builder()
            .transport(Transport::Local)
            .processes(1)
            .shared_memory_min(MIB)
            .max_frame_len(MAX_FRAME)
            .task_timeout(TASK_TIMEOUT)
            .build(),
    )
    .await
    .expect("pool builds")
}

/// Builds a pool of one worker, runs the forgery `make(job)` on it as job `job`, and
/// checks that the pool replaced the worker if it gave up on it, serves the next task
/// and holds no descriptor more than before, before and after `terminate`.
async fn run_forgery(what: &str, make: impl FnOnce(u64) -> Forgery) -> Result<Bytes, TaskError> {
    let baseline = open_fds();
    let pool = hostile_pool().await;
    let pids = support::worker_pids(&pool);
    let probe = pool.apply_async(support::double, 1);
    let job = probe.id() + 1;
    assert_eq!(within("probe", probe).await, Ok(2), "{what}");
    let alive = open_fds();

    let hostile = pool.apply_async(forge, make(job));
    assert_eq!(hostile.id(), job, "{what}");
    let got = within(what, hostile).await;
    if let Err(e) = &got {
        assert!(gave_up(e), "{what}: {e:?}");
        let (p, old) = (pool.clone(), pids.clone());
        let replaced = wait_until(BOUND, move || {
            let now = support::worker_pids(&p);
            now.len() == 1 && now != old
        })
        .await;
        assert!(replaced, "{what}: not replaced: {:?}", pool.stats());
        assert!(
            all_gone(pids.clone(), BOUND).await,
            "{what}: worker {pids:?} still there"
        );
    }
    serves(&pool, what).await;
    // The replacement holds what the first worker held, and no passed descriptor is
    // left open.
    if let Err(now) = fds_back_to(alive).await {
        panic!("{what}: {now} descriptors open with the new worker, {alive} with the first");
    }
    terminate(pool, pids, what).await;
    if let Err(now) = fds_back_to(baseline).await {
        panic!("{what}: {now} descriptors open after terminate, {baseline} before the pool");
    }
    got
}

/// Builds and terminates a pool once, so that whatever a first pool opens for good
/// (a fork server, say) is open before descriptors are counted.
async fn warm_up() {
    let pool = hostile_pool().await;
    let pids = support::worker_pids(&pool);
    assert_eq!(
        within("warm-up", pool.apply(support::double, 1)).await,
        Ok(2)
    );
    terminate(pool, pids, "warm-up").await;
}

/// A forgery done right (a sealed memfd, a range within it) is what the pool takes
/// for the task's result: the check that the forged frames below are well formed, so
/// that what fails them is the descriptor they pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_forged_shared_reply_is_taken() {
    let _serial = SERIAL.lock().await;
    warm_up().await;
    let (size, offset, len) = (2 * MIB as u64, 4096 + 5, MIB as u64);
    let got = run_forgery("a well-formed forgery", |job| Forgery {
        job,
        pass: Pass::Sealed,
        size,
        offset,
        len,
        then: Then::Return,
    })
    .await
    .expect("the forged reply is taken");
    let want = pattern(size as usize);
    assert!(
        got[..] == want[offset as usize..(offset + len) as usize],
        "the forged bytes differ"
    );
    assert!(
        in_memfd("forged", got.as_ptr() as usize, got.len()),
        "the forged bytes are not a view of the worker's memfd"
    );
}

/// Each bad descriptor with a shared reply: the task fails with a protocol error that
/// says what was wrong, within the bound (not by its timeout), whether the task then
/// hangs or returns; the worker is replaced, the pool serves the next task, and the
/// pool's process holds no more descriptors than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_shared_reply_with_a_bad_descriptor_fails_only_its_task() {
    let _serial = SERIAL.lock().await;
    warm_up().await;
    let m = MIB as u64;
    let cases: [(&str, Pass, u64, u64, u64, &str); 9] = [
        ("an unsealed memfd", Pass::Unsealed, m, 0, m, "not sealed"),
        (
            "a memfd sealed against growing only",
            Pass::GrowOnly,
            m,
            0,
            m,
            "not sealed",
        ),
        (
            "a range one past the end",
            Pass::Sealed,
            m,
            1,
            m,
            "in a memfd of",
        ),
        (
            "a length past the end",
            Pass::Sealed,
            m,
            0,
            m + 1,
            "in a memfd of",
        ),
        (
            "an offset that overflows",
            Pass::Sealed,
            m,
            u64::MAX,
            m,
            "in a memfd of",
        ),
        ("a pipe", Pass::Pipe, 0, 0, m, "not a sealed memfd"),
        ("a regular file", Pass::File, 0, 0, m, "not a sealed memfd"),
        ("no descriptor", Pass::Nothing, 0, 0, m, "without its memfd"),
        (
            "a length over the frame limit",
            Pass::Sealed,
            3 * m,
            0,
            3 * m,
            "over the limit",
        ),
    ];
    for (name, pass, size, offset, len, says) in cases {
        for then in [Then::Hang, Then::Return] {
            let what = format!("{name}, then {then:?}");
            let got = run_forgery(&what, |job| Forgery {
                job,
                pass,
                size,
                offset,
                len,
                then,
            })
            .await;
            match got {
                Err(TaskError::Protocol(why)) => assert!(why.contains(says), "{what}: {why}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}

/// Twenty descriptors passed with one byte of junk, more than the pool holds
/// unclaimed: the task fails (not by its timeout; a task that returns may get its own
/// result first), the worker is replaced when the pool gave up on it, and none of the
/// twenty stays open in the pool's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_passed_descriptors_fail_only_their_task() {
    let _serial = SERIAL.lock().await;
    warm_up().await;
    for then in [Then::Hang, Then::Return] {
        let what = format!("20 descriptors, then {then:?}");
        let got = run_forgery(&what, |job| Forgery {
            job,
            pass: Pass::Many(20),
            size: 0,
            offset: 0,
            len: 0,
            then,
        })
        .await;
        match got {
            Err(TaskError::Protocol(_) | TaskError::WorkerDied { .. }) => {}
            // The task's own reply, in the ring, may be read before the junk on the
            // channel (which no mark in the ring announced): the pool gives up on the
            // worker only when it reads the junk.
            Ok(b) if then == Then::Return && b[..] == b"returned"[..] => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// 3. A worker that aborts in the middle of a large task.
// ---------------------------------------------------------------------------------

/// A worker that aborts while it runs a task on a 16 MiB `Bytes` fails only that task
/// (a 16 MiB echo on the other worker meanwhile comes back intact); the next 16 MiB
/// echo works, and no descriptor is left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_aborts_midway_fails_only_its_task() {
    let _serial = SERIAL.lock().await;
    warm_up().await;
    let baseline = open_fds();
    let pool = within(
        "build",
        support::builder()
            .transport(Transport::Local)
            .processes(2)
            .shared_memory_min(MIB)
            .build(),
    )
    .await
    .expect("pool builds");
    let pids = support::worker_pids(&pool);
    let data = pattern(16 * MIB);
    let beside = pool.apply_async(echo_bytes, Bytes::from(data.clone()));
    let aborted = pool.apply_async(abort_midway, Bytes::from(data.clone()));
    let got = within("abort", aborted).await;
    assert!(matches!(got, Err(TaskError::WorkerDied { .. })), "{got:?}");
    let echoed = within("beside", beside).await.expect("the echo beside");
    assert!(echoed[..] == data[..], "the echo beside changed");
    drop(echoed);
    let again = within("next", pool.apply(echo_bytes, Bytes::from(data.clone())))
        .await
        .expect("the next echo");
    assert!(again[..] == data[..], "the next echo changed");
    assert!(is_shared(&again), "the next echo is not a memfd view");
    drop(again);
    assert_eq!(pool.stats().workers_crashed, 1, "{:?}", pool.stats());
    terminate(pool, pids, "abort midway").await;
    if let Err(now) = fds_back_to(baseline).await {
        panic!("{now} descriptors open after terminate, {baseline} before the pool");
    }
}

// ---------------------------------------------------------------------------------
// 4. A stream transport keeps the bytes inline.
// ---------------------------------------------------------------------------------

/// Over `Transport::Stream` a 16 MiB echo comes back intact, inline (not a memfd view).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_transport_echoes_16_mib_inline() {
    let _serial = SERIAL.lock().await;
    let pool = within(
        "build",
        support::builder()
            .transport(Transport::Stream)
            .processes(1)
            .build(),
    )
    .await
    .expect("pool builds");
    let pids = support::worker_pids(&pool);
    let data = pattern(16 * MIB);
    let got = within(
        "stream echo",
        pool.apply(echo_bytes, Bytes::from(data.clone())),
    )
    .await
    .expect("echo_bytes");
    assert!(got[..] == data[..], "a Bytes echo over a stream changed");
    assert!(
        !is_shared(&got),
        "a Bytes echo over a stream came in a memfd"
    );
    let got = within("stream echo", pool.apply(echo_vec, data.clone()))
        .await
        .expect("echo_vec");
    assert!(got == data, "a Vec<u8> echo over a stream changed");
    terminate(pool, pids, "stream").await;
}
