#![cfg(target_os = "linux")]
//! A compromised worker: a task that writes hostile bytes straight onto its worker's
//! channel (descriptor 3) or into its reply ring (the shared mapping
//! `memfd:procpool-replies`), then hangs, exits or goes on. Whatever it writes, its
//! caller gets a `TaskError` (or a value it forged as its own result) within a bound,
//! a task on the other worker succeeds, the worker is replaced when the pool gave up on
//! it, the pool serves the next task, the parent's memory stays within the frame limit,
//! and no process is left after `terminate()`.
//!
//! The seeded cases come from a small generator: `PROCPOOL_FUZZ_CASES` sets how many
//! per run (default 10), `PROCPOOL_FUZZ_SEED` the first seed.

procpool::enable_test_support!();

mod support;

use std::time::{Duration, Instant};

use procpool::{Payload, Pool, TaskError, Transport};
use serde::{Deserialize, Serialize};
use support::*;

/// The frame limit of the pools here: large enough for a frame read into a buffer of
/// its own (64 KiB and more), small enough that memory beyond it would show.
const MAX_FRAME: usize = 256 << 10;

/// Every task's timeout: what ends a hostile task that hangs after writing bytes the
/// pool cannot tell from a task still running.
const TASK_TIMEOUT: Duration = Duration::from_millis(1500);

/// What a normal end of the hostile task returns.
const RETURNED: u64 = 7;

/// The largest record the ring holds (see `src/ring.rs`).
const INLINE_MAX: u32 = 16 << 10;

// ---------------------------------------------------------------------------------
// The worker's side: what a compromised task does.
// ---------------------------------------------------------------------------------

/// One thing the hostile task does to its worker's channel or ring.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Act {
    /// Writes bytes on the channel.
    Channel(Vec<u8>),
    /// Writes bytes at the ring's `write` index and publishes them.
    Ring(Vec<u8>),
    /// Moves the ring's `write` index on by this much (wrapping).
    MoveWrite(u64),
    /// Overwrites ring memory at this running position.
    Scribble(u64, Vec<u8>),
    /// Sleeps, so that the pool acts on what came before.
    Pause(u64),
    /// Writes `frame` on the channel again and again, `total` bytes in all (or until
    /// the pool closes the channel).
    Flood { frame: Vec<u8>, total: usize },
}

/// What the hostile task does after its acts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
enum Then {
    /// Sleeps until killed (at most 30 s).
    Hang,
    /// Exits at once.
    Exit,
    /// Returns [`RETURNED`], as a task would.
    Return,
    /// Forks a grandchild that keeps the channel and writes empty frames on it, for at
    /// most 20 s or until the channel is closed; then exits. The grandchild's pid is
    /// written to the file named.
    Grandchild(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attack {
    acts: Vec<Act>,
    then: Then,
}

/// The task a compromised worker runs.
fn attack(attack: Attack) -> u64 {
    use std::sync::atomic::Ordering::SeqCst;
    for act in &attack.acts {
        match act {
            Act::Channel(bytes) => channel_write(bytes),
            Act::Ring(bytes) => {
                let write = ring_write_index();
                let at = write.load(SeqCst);
                ring_put(at, bytes);
                write.store(at.wrapping_add(bytes.len() as u64), SeqCst);
            }
            Act::MoveWrite(by) => {
                let write = ring_write_index();
                write.store(write.load(SeqCst).wrapping_add(*by), SeqCst);
            }
            Act::Scribble(at, bytes) => ring_put(*at, bytes),
            Act::Pause(ms) => std::thread::sleep(Duration::from_millis(*ms)),
            Act::Flood { frame, total } => {
                let batch: Vec<u8> = frame
                    .iter()
                    .copied()
                    .cycle()
                    .take(frame.len() << 16)
                    .collect();
                let mut sent = 0;
                while sent < *total {
                    // SAFETY: a send on descriptor 3 from memory that `batch` owns.
                    let n = unsafe {
                        libc::send(
                            CHANNEL,
                            batch.as_ptr().cast(),
                            batch.len(),
                            libc::MSG_NOSIGNAL,
                        )
                    };
                    if n <= 0 {
                        break;
                    }
                    sent += n as usize;
                }
            }
        }
    }
    match &attack.then {
        Then::Hang => std::thread::sleep(Duration::from_secs(30)),
        // SAFETY: `_exit` ends the process at once, which is what is asked.
        Then::Exit => unsafe { libc::_exit(3) },
        Then::Return => {}
        Then::Grandchild(pid_file) => {
            // SAFETY: the child only makes async-signal-safe calls (send, usleep,
            // _exit) before it exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let empty = [0u8; 4];
                for _ in 0..100_000 {
                    // SAFETY: a send on descriptor 3 from a local array.
                    let n = unsafe {
                        libc::send(CHANNEL, empty.as_ptr().cast(), 4, libc::MSG_NOSIGNAL)
                    };
                    if n <= 0 {
                        break;
                    }
                    // SAFETY: usleep takes an integer.
                    unsafe { libc::usleep(200) };
                }
                // SAFETY: as above.
                unsafe { libc::_exit(0) };
            }
            std::fs::write(pid_file, pid.to_string()).expect("write the grandchild's pid");
            // SAFETY: as for `Then::Exit`.
            unsafe { libc::_exit(0) };
        }
    }
    RETURNED
}

/// A task on the other worker: sleeps, returns its pid.
fn other(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

// ---------------------------------------------------------------------------------
// The pool's side: the bytes of replies, as a worker writes them.
// ---------------------------------------------------------------------------------

/// A reply's header with the outcome `Ok`: `FromWorker::Done` as postcard writes it.
fn done_ok(id: u64, panicked: u32, byte_string: bool, ran_ns: u64, ran_jobs: u32) -> Vec<u8> {
    let mut out = vec![3];
    varint(id, &mut out);
    out.push(0);
    varint(u64::from(panicked), &mut out);
    out.push(u8::from(byte_string));
    varint(ran_ns, &mut out);
    varint(u64::from(ran_jobs), &mut out);
    out
}

/// A chunk of `u64` results, every one `Ok`, whose count says `said`.
fn results(values: &[u64], said: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(said, &mut out);
    for &v in values {
        out.push(0);
        varint(v, &mut out);
    }
    out
}

/// A frame with its length prefix.
fn framed(frame: &[u8]) -> Vec<u8> {
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(frame);
    out
}

/// A reply for job `id` holding `value`, as a ring record.
fn forged_reply(id: u64, value: u64) -> Vec<u8> {
    let mut frame = done_ok(id, 0, false, 1000, 1);
    frame.extend(results(&[value], 1));
    framed(&frame)
}

/// The empty frame that wakes a pool sleeping on the ring.
const WAKE: [u8; 4] = [0; 4];

// ---------------------------------------------------------------------------------
// Cases from a seed.
// ---------------------------------------------------------------------------------

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The values an attack forged, which its caller may get as its result.
#[derive(Debug, Default)]
struct Forged {
    values: Vec<u64>,
    /// A byte of a reply was changed: any value may come of it.
    any: bool,
}

impl Forged {
    fn push(&mut self, value: u64) {
        self.values.push(value);
    }

    fn allows(&self, value: u64) -> bool {
        self.any || self.values.contains(&value)
    }
}

/// An attack by a task whose job id is `job`, and what it forged.
fn generate(seed: u64, job: u64) -> (Attack, Forged) {
    let mut rng = Rng(seed);
    let mut forged = Forged::default();
    let mut acts = Vec::new();
    for _ in 0..1 + rng.below(2) {
        match rng.below(9) {
            // Only wake-ups (empty frames): what follows decides.
            8 => acts.push(Act::Channel(WAKE.repeat(1 + rng.below(8) as usize))),
            // Bytes as they come, on the channel.
            0 => acts.push(Act::Channel(rng.bytes(48))),
            // A length prefix at an extreme, some bytes behind it.
            1 => {
                let said = rng.pick(&[
                    0,
                    1,
                    MAX_FRAME as u32,
                    MAX_FRAME as u32 + 1,
                    u32::MAX - 1,
                    u32::MAX,
                ]);
                let mut bytes = Vec::new();
                for _ in 0..1 + rng.below(if said == 0 { 50 } else { 1 }) {
                    bytes.extend(said.to_be_bytes());
                }
                bytes.extend(rng.bytes(32));
                acts.push(Act::Channel(bytes));
            }
            // A reply in the ring with its fields at extremes, maybe a byte changed.
            2 | 3 => {
                let id = rng.pick(&[job, job, job, job + 1, job.wrapping_sub(1), 0, u64::MAX]);
                let panicked = rng.pick(&[0, 0, 0, 1, u32::MAX]);
                let byte_string = rng.below(5) == 0;
                // (Timings at u64::MAX: see `ran_ns_of_u64_max`.)
                let ran_ns = rng.pick(&[0, 1, 1 << 40]);
                let ran_jobs = rng.pick(&[0, 1, 16, u32::MAX]);
                let value = rng.next() >> rng.below(64);
                let said = rng.pick(&[1, 1, 1, 0, 2, u64::MAX]);
                let mut frame = done_ok(id, panicked, byte_string, ran_ns, ran_jobs);
                frame.extend(results(&[value], said));
                forged.push(value);
                if rng.below(3) == 0 {
                    let at = rng.below(frame.len() as u64) as usize;
                    frame[at] = rng.next() as u8;
                    forged.any = true;
                }
                acts.push(Act::Ring(framed(&frame)));
                acts.push(Act::Channel(WAKE.to_vec()));
            }
            // A record whose length lies.
            4 => {
                let body = rng.bytes(40);
                let said = rng.pick(&[
                    body.len() as u32 + 1,
                    body.len() as u32 + 100,
                    INLINE_MAX - 3,
                    INLINE_MAX,
                    u32::MAX - 1,
                    0,
                ]);
                let mut record = said.to_be_bytes().to_vec();
                record.extend(body);
                acts.push(Act::Ring(record));
                acts.push(Act::Channel(WAKE.to_vec()));
            }
            // The ring's index moved where nothing was written.
            5 => {
                let any = rng.next();
                let by = rng.pick(&[1, 3, 4, RING_CAPACITY, RING_CAPACITY + 1, u64::MAX, any]);
                acts.push(Act::MoveWrite(by));
                acts.push(Act::Channel(WAKE.to_vec()));
            }
            // The mark of a reply on the channel, then a frame there: a reply, or not.
            6 => {
                acts.push(Act::Ring(ON_SOCKET.to_be_bytes().to_vec()));
                let value = rng.next() >> 8;
                if rng.below(2) == 0 {
                    forged.push(value);
                    let mut frame = done_ok(job, 0, false, 5, 1);
                    frame.extend(results(&[value], 1));
                    acts.push(Act::Channel(framed(&frame)));
                } else {
                    acts.push(Act::Channel(framed(&rng.bytes(30))));
                }
            }
            // Ring memory scribbled on, then a reply of its own.
            _ => {
                let at = rng.next();
                acts.push(Act::Scribble(at, rng.bytes(64)));
                let value = rng.next() >> 4;
                forged.push(value);
                acts.push(Act::Ring(forged_reply(job, value)));
                acts.push(Act::Channel(WAKE.to_vec()));
            }
        }
    }
    let then = match rng.below(3) {
        0 => Then::Hang,
        1 => Then::Exit,
        _ => Then::Return,
    };
    (Attack { acts, then }, forged)
}

// ---------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------

/// A pool whose workers have reply rings (what most cases attack), or, with
/// `Transport::Stream`, whose replies all come on the channel.
async fn hostile_pool(processes: usize) -> Pool {
    hostile_pool_over(Transport::Local, processes).await
}

async fn hostile_pool_over(transport: Transport, processes: usize) -> Pool {
    within(
        "build",
        support::builder()
            .transport(transport)
            .processes(processes)
            .max_frame_len(MAX_FRAME)
            .task_timeout(TASK_TIMEOUT)
            .build(),
    )
    .await
    .expect("pool builds")
}

/// This process's resident memory, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number");
    kib << 10
}

/// Errors that say the worker failed its task (not the caller or the pool).
fn is_the_workers_fault(e: &TaskError) -> bool {
    !matches!(
        e,
        TaskError::Cancelled
            | TaskError::Closed
            | TaskError::Terminated
            | TaskError::Codec {
                what: Payload::Argument,
                ..
            }
    )
}

/// Runs one attack on a pool of two, beside a task on the other worker, and checks
/// what the module docs promise.
async fn run_attack(
    what: &str,
    make: impl FnOnce(u64) -> (Attack, Forged),
) -> Result<u64, TaskError> {
    run_attack_over(Transport::Local, what, make).await
}

async fn run_attack_over(
    transport: Transport,
    what: &str,
    make: impl FnOnce(u64) -> (Attack, Forged),
) -> Result<u64, TaskError> {
    let pool = hostile_pool_over(transport, 2).await;
    let before = support::worker_pids(&pool);
    // Neither worker has run a job, so each takes one: the two tasks run on different
    // workers.
    let beside = pool.apply_async(other, 200u64);
    let job = beside.id() + 1;
    let (attack_args, forged) = make(job);
    let then = attack_args.then.clone();
    let hostile = pool.apply_async(attack, attack_args);
    assert_eq!(hostile.id(), job);

    let got = within(what, hostile).await;
    let beside_pid = within(what, beside)
        .await
        .unwrap_or_else(|e| panic!("{what}: the task on the other worker failed: {e:?}"));
    let victim = *before
        .iter()
        .find(|&&p| p != beside_pid)
        .expect("two workers");
    match &got {
        Ok(v) => assert!(
            forged.allows(*v) || (*v == RETURNED && then == Then::Return),
            "{what}: a value the worker did not write: {v}"
        ),
        Err(e) => {
            assert!(is_the_workers_fault(e), "{what}: {e:?}");
            if gave_up(e) {
                // Replaced: a new worker in its place, the other one untouched.
                let p = pool.clone();
                let replaced = wait_until(BOUND, move || {
                    let now = support::worker_pids(&p);
                    now.len() == 2 && !now.contains(&victim) && now.contains(&beside_pid)
                })
                .await;
                assert!(replaced, "{what}: not replaced: {:?}", pool.stats());
                assert!(
                    all_gone(vec![victim], BOUND).await,
                    "{what}: worker {victim} still there"
                );
            }
        }
    }
    serves(&pool, what).await;
    terminate(pool, before, what).await;
    got
}

fn fuzz_cases() -> u64 {
    std::env::var("PROCPOOL_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
}

fn first_seed() -> u64 {
    std::env::var("PROCPOOL_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x5eed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_hostile_workers() {
    let first = first_seed();
    let baseline = rss();
    // Two workers' frames at most, and room for the test's own runtime and pools.
    let bound = baseline + 2 * MAX_FRAME + (48 << 20);
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for seed in first..first + fuzz_cases() {
        let what = format!("seed {seed}");
        let mut shown = None;
        let got = run_attack(&what, |job| {
            let made = generate(seed, job);
            shown = Some(format!("{:?}", made.0));
            made
        })
        .await;
        let now = rss();
        assert!(
            now <= bound,
            "{what}: resident memory {now} over {bound} ({})",
            shown.unwrap_or_default()
        );
        outcomes.push(match got {
            Ok(_) => "value".to_string(),
            Err(e) => format!("{e:?}")
                .chars()
                .take_while(|c| c.is_alphanumeric())
                .collect(),
        });
    }
    eprintln!(
        "{} hostile workers from seed {first} in {:?}: {outcomes:?}",
        outcomes.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// Named cases.
// ---------------------------------------------------------------------------------

/// A reply for a job that is not the one running (the next one, the one before, and
/// the largest id) is a protocol error for the running one, and its worker is
/// replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_for_another_job() {
    for offset in [1u64, u64::MAX, 1 << 63] {
        let what = format!("reply for job + {offset}");
        let got = run_attack(&what, |job| {
            let acts = vec![
                Act::Ring(forged_reply(job.wrapping_add(offset), 5)),
                Act::Channel(WAKE.to_vec()),
            ];
            (
                Attack {
                    acts,
                    then: Then::Hang,
                },
                Forged::default(),
            )
        })
        .await;
        match got {
            Err(TaskError::Protocol(why)) => assert!(why.contains("not the one running"), "{why}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// Over a stream link (no ring: every reply comes on the channel), what a worker
/// writes on its channel is all the pool reads: an oversized frame, a reply for
/// another job, and an empty frame (a ring's wake-up call, a bad reply here) each fail
/// the running task with a protocol error, and the worker is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_link_takes_no_oversized_forged_or_empty_frame() {
    let channel_attack = |bytes: Vec<u8>| {
        (
            Attack {
                acts: vec![Act::Channel(bytes)],
                then: Then::Hang,
            },
            Forged::default(),
        )
    };
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend([1; 100]);
    let got = run_attack_over(Transport::Stream, "u32::MAX on a stream", |_| {
        channel_attack(huge)
    })
    .await;
    assert!(
        matches!(&got, Err(TaskError::Protocol(why)) if why.contains("over the limit")),
        "{got:?}"
    );
    let got = run_attack_over(Transport::Stream, "a reply for another job", |job| {
        channel_attack(forged_reply(job + 1, 5))
    })
    .await;
    assert!(
        matches!(&got, Err(TaskError::Protocol(why)) if why.contains("not the one running")),
        "{got:?}"
    );
    let got = run_attack_over(Transport::Stream, "an empty frame", |_| {
        channel_attack(WAKE.to_vec())
    })
    .await;
    assert!(matches!(got, Err(TaskError::Protocol(_))), "{got:?}");
}

/// A length prefix of u32::MAX: on the channel, a frame over the limit; in the ring,
/// the mark of a reply on the channel, which never comes (the task hangs: its timeout
/// ends it) or comes over the limit. Nothing of 4 GiB is allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_prefix_of_u32_max() {
    let rss_before = rss();
    let channel = run_attack("u32::MAX on the channel", |_| {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend([1; 100]);
        (
            Attack {
                acts: vec![Act::Channel(bytes)],
                then: Then::Hang,
            },
            Forged::default(),
        )
    })
    .await;
    match channel {
        Err(TaskError::Protocol(why)) => assert!(why.contains("over the limit"), "{why}"),
        other => panic!("u32::MAX on the channel: {other:?}"),
    }
    let mark = run_attack("u32::MAX in the ring", |_| {
        let acts = vec![
            Act::Ring(ON_SOCKET.to_be_bytes().to_vec()),
            Act::Channel(WAKE.to_vec()),
        ];
        (
            Attack {
                acts,
                then: Then::Hang,
            },
            Forged::default(),
        )
    })
    .await;
    assert!(matches!(mark, Err(TaskError::TimedOut { .. })), "{mark:?}");
    let both = run_attack("u32::MAX in the ring and on the channel", |_| {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend([1; 100]);
        let acts = vec![
            Act::Ring(ON_SOCKET.to_be_bytes().to_vec()),
            Act::Channel(bytes),
        ];
        (
            Attack {
                acts,
                then: Then::Hang,
            },
            Forged::default(),
        )
    })
    .await;
    assert!(matches!(both, Err(TaskError::Protocol(_))), "{both:?}");
    let grown = rss().saturating_sub(rss_before);
    assert!(
        grown < 2 * MAX_FRAME + (48 << 20),
        "resident memory grew {grown} bytes"
    );
}

/// A reply to a chunk of three tasks that says it holds two results, or four: every
/// task of the chunk fails with a protocol error (and the worker is replaced); one
/// that says three and holds one, or four, fails to decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_reply_with_too_few_or_too_many_results() {
    for (count, said) in [
        (2usize, 2u64),
        (4, 4),
        (3, 2),
        (3, u64::MAX),
        (1, 3),
        (4, 3),
    ] {
        let what = format!("{count} results, said {said}, for a chunk of 3");
        let pool = hostile_pool(1).await;
        let pids = support::worker_pids(&pool);
        let probe = pool.apply_async(support::double, 1);
        let job = probe.id() + 1;
        assert_eq!(within("probe", probe).await, Ok(2));
        let mut frame = done_ok(job, 0, false, 1000, 3);
        frame.extend(results(&vec![11; count], said));
        let acts = vec![Act::Ring(framed(&frame)), Act::Channel(WAKE.to_vec())];
        let attacks = vec![
            Attack {
                acts,
                then: Then::Hang
            };
            3
        ];
        let got: Vec<Result<u64, TaskError>> = within(
            &what,
            futures::StreamExt::collect(pool.imap(attack, attacks).chunk_size(3)),
        )
        .await;
        assert_eq!(got.len(), 3, "{what}: {got:?}");
        if said != 3 {
            // The pool gave up on the worker: it is replaced.
            let (p, old) = (pool.clone(), pids.clone());
            let replaced = wait_until(BOUND, move || {
                let now = support::worker_pids(&p);
                now.len() == 1 && now != old
            })
            .await;
            assert!(replaced, "{what}: not replaced: {:?}", pool.stats());
        }
        for r in &got {
            match r {
                Err(TaskError::Protocol(why)) if said != 3 => {
                    assert!(why.contains("results for its 3 tasks"), "{what}: {why}")
                }
                // The count is right, the bytes are not.
                Err(TaskError::Codec { .. }) if said == 3 => {}
                other => panic!("{what}: {other:?}"),
            }
        }
        serves(&pool, &what).await;
        terminate(pool, pids, &what).await;
    }
}

/// Replies timed at u64::MAX nanoseconds, over any number of jobs: the pool paces by
/// them without overflowing, and serves on.
///
/// Fails before the lead engineer's fix of the driver's pacing (`Pace::finished_head`
/// multiplies the smoothed time, which overflows: a panic in the driver's task in a
/// debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ran_ns_of_u64_max() {
    for ran_jobs in [1u32, 0, u32::MAX] {
        let what = format!("ran_ns u64::MAX over {ran_jobs} jobs");
        let pool = hostile_pool(1).await;
        let pids = support::worker_pids(&pool);
        let probe = pool.apply_async(support::double, 1);
        let job = probe.id() + 1;
        assert_eq!(within("probe", probe).await, Ok(2));
        let reply = |id: u64, value: u64| {
            let mut frame = done_ok(id, 0, false, u64::MAX, ran_jobs);
            frame.extend(results(&[value], 1));
            framed(&frame)
        };
        // Two replies in turn (the second once the job it answers has been sent): the
        // second is smoothed with the first.
        let acts = vec![
            Act::Ring(reply(job, 100)),
            Act::Channel(WAKE.to_vec()),
            Act::Pause(300),
            Act::Ring(reply(job + 1, 101)),
            Act::Channel(WAKE.to_vec()),
            Act::Pause(300),
            Act::Ring(reply(job + 2, 102)),
            Act::Channel(WAKE.to_vec()),
        ];
        let first = pool.apply_async(
            attack,
            Attack {
                acts,
                then: Then::Hang,
            },
        );
        assert_eq!(first.id(), job);
        let second = pool.apply_async(support::double, 50);
        let third = pool.apply_async(support::double, 50);
        for (handle, forged) in [(first, 100), (second, 101), (third, 102)] {
            match within(&what, handle).await {
                Ok(v) => assert_eq!(v, forged, "{what}"),
                Err(e) => assert!(gave_up(&e), "{what}: {e:?}"),
            }
        }
        serves(&pool, &what).await;
        terminate(pool, pids, &what).await;
    }
}

/// A worker that exits while a grandchild it forked keeps its channel and writes empty
/// frames on it without end: the task fails as its worker died, within a bound, and
/// the worker is replaced; the grandchild ends when the pool closes the channel.
///
/// Hangs before the lead engineer's fix of the driver's drain after a worker's death
/// (`Driver::died` reads frames until none comes for 50 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_empty_frames_after_the_worker_exits() {
    support::become_subreaper();
    let scratch = Scratch::new("hostile-grandchild");
    let pid_file = scratch.path("grandchild");
    let started = Instant::now();
    let got = run_attack("endless empty frames", |_| {
        (
            Attack {
                acts: vec![],
                then: Then::Grandchild(pid_file.clone()),
            },
            Forged::default(),
        )
    })
    .await;
    assert!(matches!(got, Err(TaskError::WorkerDied { .. })), "{got:?}");
    // Well before the grandchild would stop by itself (20 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let grandchild: u32 = std::fs::read_to_string(&pid_file)
        .expect("the grandchild's pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(
        tokio::task::spawn_blocking(move || support::reap_orphan(grandchild, BOUND))
            .await
            .expect("reaper"),
        "grandchild {grandchild} still there"
    );
}

/// A length prefix of nearly the frame limit (1 GiB here), for a reply whose result is
/// a byte string or for any frame, then nothing more: the pool holds no memory for
/// bytes that never come (what it sets aside for the frame is not resident until the
/// bytes arrive), and the task's timeout ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_that_never_comes_holds_no_memory() {
    const LIMIT: usize = 1 << 30;
    for byte_string in [true, false] {
        let what =
            format!("a frame of {LIMIT} bytes that never comes (byte string: {byte_string})");
        let pool = within(
            "build",
            support::builder()
                .processes(1)
                .max_frame_len(LIMIT)
                .task_timeout(Duration::from_secs(2))
                .build(),
        )
        .await
        .expect("pool builds");
        let pids = support::worker_pids(&pool);
        let probe = pool.apply_async(support::double, 1);
        let job = probe.id() + 1;
        assert_eq!(within("probe", probe).await, Ok(2));
        let len = LIMIT as u32 - 1;
        let mut bytes = len.to_be_bytes().to_vec();
        if byte_string {
            bytes.extend(done_ok(job, 0, true, 1, 1));
            bytes.extend([1, 0]);
            varint(u64::from(len) - (bytes.len() as u64 - 4) - 5, &mut bytes);
        }
        bytes.resize(bytes.len() + 200, 9);
        let rss_before = rss();
        let hostile = pool.apply_async(
            attack,
            Attack {
                acts: vec![Act::Channel(bytes)],
                then: Then::Hang,
            },
        );
        assert_eq!(hostile.id(), job);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let grown = rss().saturating_sub(rss_before);
        assert!(
            grown < 48 << 20,
            "{what}: resident memory grew {grown} bytes"
        );
        let got = within(&what, hostile).await;
        assert!(
            matches!(got, Err(TaskError::TimedOut { .. })),
            "{what}: {got:?}"
        );
        serves(&pool, &what).await;
        terminate(pool, pids, &what).await;
    }
}

/// A flood of small frames on the channel (256 MiB of them, as fast as the worker can
/// write): the pool gives up on the worker at once, holding no more than a few of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_frames_on_the_channel() {
    for frame in [vec![0, 0, 0, 1, 0], framed(&done_ok(0, 0, false, 1, 1))] {
        let what = format!("a flood of {frame:?}");
        let rss_before = rss();
        let got = run_attack(&what, |_| {
            let acts = vec![Act::Flood {
                frame,
                total: 256 << 20,
            }];
            (
                Attack {
                    acts,
                    then: Then::Hang,
                },
                Forged::default(),
            )
        })
        .await;
        assert!(
            matches!(got, Err(TaskError::Protocol(_))),
            "{what}: {got:?}"
        );
        let grown = rss().saturating_sub(rss_before);
        assert!(
            grown < 2 * MAX_FRAME + (48 << 20),
            "{what}: resident memory grew {grown} bytes"
        );
    }
}
