#![cfg(target_os = "linux")]
//! Hostile tasks against the pool's driver: tasks that misbehave inside their worker the
//! way an exploited decoder would, and what the pool owes its callers then. Every
//! caller resolves within its bound, the pool serves on, `terminate()` ends, the
//! parent's memory stays bounded, no process is left.

procpool::enable_test_support!();

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use procpool::{StartMethod, TaskError, WorkerExit};
use support::*;

/// The tests of this file measure the parent's memory: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Kills the recorded pids (by pid, never by name) when dropped, so that a failing test
/// leaves nothing behind either.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill(2) takes integers only.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// The parent's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A task that forks a grandchild, which keeps the worker's channel (descriptor 3) and
/// writes a frame of `len` bytes on it every `every_ms`, for up to a minute or until the
/// channel fails; the worker writes the grandchild's pid to `path` and exits with code 3.
fn flood_after_exit((path, len, every_ms): (String, u32, u64)) -> u32 {
    let mut frame = len.to_be_bytes().to_vec();
    frame.resize(4 + len as usize, 0x5a);
    // SAFETY: the worker is single-threaded; the child only writes, sleeps and _exits.
    match unsafe { libc::fork() } {
        0 => {
            // First the worker records who this is, so that the test can kill it.
            let end = Instant::now() + Duration::from_secs(5);
            while !std::path::Path::new(&path).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(1));
            }
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end {
                let mut at = 0;
                while at < frame.len() {
                    // SAFETY: write(2) from a live buffer.
                    let n =
                        unsafe { libc::write(3, frame[at..].as_ptr().cast(), frame.len() - at) };
                    if n <= 0 {
                        // SAFETY: _exit ends the process.
                        unsafe { libc::_exit(0) };
                    }
                    at += n as usize;
                }
                std::thread::sleep(Duration::from_millis(every_ms));
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => {
            let part = format!("{path}.part");
            std::fs::write(&part, pid.to_string()).expect("write the grandchild's pid");
            std::fs::rename(&part, &path).expect("publish the grandchild's pid");
            // SAFETY: _exit ends the worker at once, as a crash would.
            unsafe { libc::_exit(3) }
        }
        _ => panic!("fork failed"),
    }
}

/// The grandchild's pid, once the worker has written it.
async fn grandchild(scratch: &Scratch) -> u32 {
    scratch.wait_for("pid").await;
    let path = scratch.path("pid");
    let read = move || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.parse().ok())
    };
    assert!(
        wait_until(BOUND, {
            let read = read.clone();
            move || read().is_some()
        })
        .await
    );
    read().expect("a pid")
}

/// Item 1 of the containment issue: after the worker's death, a descendant holding its
/// channel writes on and on. The caller still hears of the death at once, the dead
/// worker leaves the stats, the pool serves on, `terminate()` ends, and the parent's
/// memory does not grow with what the descendant writes.
async fn a_descendant_writing_on_a_dead_worker_s_channel(len: u32, every_ms: u64) {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let _serial = SERIAL.lock().await;
    let scratch = Scratch::new("flood");
    let dead = support::worker_pids(&pool)[0];
    let before_rss = rss();
    let started = Instant::now();
    let call = pool
        .apply(flood_after_exit, (scratch.path("pid"), len, every_ms))
        .timeout(Duration::from_secs(8));
    let err = within("the flooding task", call)
        .await
        .expect_err("the worker died");
    let guard = KillOnDrop(vec![grandchild(&scratch).await]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the caller waited {:?} for a worker that died at once",
        started.elapsed()
    );
    // Whichever the pool saw first: the worker's exit, or the descendant's first frame
    // while the worker still lived (no reply of the worker's comes unannounced).
    match err {
        TaskError::WorkerDied {
            pid,
            exit: WorkerExit::Code(3),
        } => assert_eq!(pid, dead),
        TaskError::Protocol(_) => {}
        other => panic!("expected WorkerDied with code 3 or Protocol, got {other:?}"),
    }
    assert!(
        wait_until(Duration::from_secs(5), {
            let pool = pool.clone();
            move || !support::worker_pids(&pool).contains(&dead)
        })
        .await,
        "the dead worker {dead} is still listed as live"
    );
    // The pool serves on while the descendant writes.
    for i in 0..20u64 {
        assert_eq!(
            within("a later task", pool.apply(double, i)).await,
            Ok(i * 2)
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = rss().saturating_sub(before_rss);
    assert!(
        grown < 64 << 20,
        "the parent grew by {grown} bytes while a dead worker's descendant wrote"
    );
    let terminated = Instant::now();
    within("terminate", pool.terminate()).await;
    assert!(terminated.elapsed() < Duration::from_secs(10));
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descendant_writing_empty_frames_on_a_dead_worker_s_channel_holds_nothing() {
    a_descendant_writing_on_a_dead_worker_s_channel(0, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descendant_writing_large_frames_on_a_dead_worker_s_channel_holds_nothing() {
    a_descendant_writing_on_a_dead_worker_s_channel(1 << 20, 1).await;
}

/// Returns `x`, except that 0 waits until the file `stop` exists (at most a minute).
fn tiny_or_stuck((x, stop): (u64, String)) -> u64 {
    if x == 0 {
        let end = Instant::now() + Duration::from_secs(60);
        while !std::path::Path::new(&stop).exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    x
}

/// Item 7: tiny tasks pipelined behind a task that stops making progress (no timeout
/// set) are taken back and run by the other worker within the pipeline's stall bound,
/// instead of waiting for ever behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sent_ahead_to_a_stuck_worker_run_elsewhere() {
    let _serial = SERIAL.lock().await;
    // Jobs already written are taken back through the reply ring's gate: a local link.
    // (A stream link takes back only what it has not written; see `Transport::Stream`.)
    let builder = support::builder().transport(procpool::Transport::Local);
    let pool = within("build", builder.processes(2).build())
        .await
        .expect("pool builds");
    let scratch = Scratch::new("stall");
    let stop = scratch.path("stop");
    // Warm the pace: tiny tasks, so that drivers send many ahead.
    let warm: Vec<u64> = within(
        "warm-up",
        pool.map(tiny_or_stuck, {
            let stop = stop.clone();
            (1..5_000u64).map(move |x| (x, stop.clone()))
        })
        .chunk_size(1),
    )
    .await
    .expect("warm-up");
    assert_eq!(warm.len(), 4_999);
    // Now the first task sticks; everything else behind it must still come back.
    let inputs = {
        let stop = stop.clone();
        (0..20_000u64).map(move |x| (x, stop.clone()))
    };
    let mut results = pool.imap_unordered(tiny_or_stuck, inputs).chunk_size(1);
    let mut seen = 0u64;
    let started = Instant::now();
    while seen < 19_999 {
        let r = within("a task behind the stuck one", results.next())
            .await
            .expect("the stream goes on");
        let x = r.expect("a tiny task succeeds");
        assert_ne!(x, 0, "the stuck task cannot have finished");
        seen += 1;
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // Let the stuck one go; it finishes too.
    scratch.touch("stop");
    let last = within("the stuck task", results.next()).await;
    assert_eq!(last.map(|r| r.ok()), Some(Some(0)));
    let pids = support::worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert!(all_gone(pids, Duration::from_secs(10)).await);
}

/// Calls `std::process::exit`, which in a forked child takes locks of the standard
/// library that another thread of the parent may have held at the fork.
fn exit_cleanly(code: i32) -> u32 {
    std::process::exit(code)
}

/// Item 7: under `Fork`, with threads of the parent starting and ending without pause
/// beside the pool (each takes the standard library's lock of thread starts and ends,
/// which `process::exit` takes too), every task that calls `exit` still ends: no forked
/// worker hangs on a lock a vanished thread held at the fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_workers_never_inherit_a_held_lock_of_the_standard_library() {
    let _serial = SERIAL.lock().await;
    let pool = within(
        "build",
        procpool::Pool::builder()
            .start_method(StartMethod::Fork)
            .processes(2)
            .build(),
    )
    .await
    .expect("pool builds");
    let stop = Arc::new(AtomicBool::new(false));
    let churn: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::thread::spawn(|| {}).join();
                }
            })
        })
        .collect();
    let mut pids = Vec::new();
    for i in 0..150 {
        let call = tokio::time::timeout(Duration::from_secs(10), pool.apply(exit_cleanly, 7));
        match call.await {
            Ok(Err(TaskError::WorkerDied {
                pid,
                exit: WorkerExit::Code(7),
            })) => pids.push(pid),
            Ok(other) => panic!("task {i}: expected WorkerDied with code 7, got {other:?}"),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                panic!("task {i}: a worker that called exit never ended (a lock held)")
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in churn {
        t.join().expect("churn thread");
    }
    pids.extend(support::worker_pids(&pool));
    within("terminate", pool.terminate()).await;
    assert!(all_gone(pids, Duration::from_secs(10)).await);
}
