#![cfg(target_os = "linux")]
//! Resource caps: a per-worker memory limit (RLIMIT_AS) and niceness.

procpool::enable_test_support!();

mod support;

use std::collections::HashSet;

use procpool::{TaskError, WorkerExit};
use support::*;

const MIB: u64 = 1 << 20;

/// This process's address space in use, in bytes (VmSize in /proc/self/status).
fn own_address_space() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize");
    kib * 1024
}

/// The limit under test: 512 MiB, or, with `StartMethod::Fork` (whose workers start
/// with a copy of this process's address space, all of it counted, and which grows as
/// the tests running next to this one start threads), 1 GiB more than this process
/// holds now.
fn limit() -> u64 {
    if support::start_method() == procpool::StartMethod::Fork {
        (own_address_space() / MIB + 1024) * MIB
    } else {
        512 * MIB
    }
}

/// How many MiB this worker can still map under its address-space limit.
fn headroom_mib(_: ()) -> u64 {
    let limit: u64 = address_space_limit(()).parse().expect("a limit is set");
    limit.saturating_sub(own_address_space()) / MIB
}

/// Allocates `mib` MiB in 16 MiB blocks and touches every page; returns the MiB held.
fn hog(mib: u64) -> u64 {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib / 16 {
        let mut block = vec![0u8; 16 << 20];
        for page in block.iter_mut().step_by(4096) {
            *page = 1;
        }
        blocks.push(std::hint::black_box(block));
    }
    blocks.iter().map(|b| b.len() as u64 >> 20).sum()
}

/// This process's address-space limit, from /proc/self/limits.
fn address_space_limit(_: ()) -> String {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .expect("address space line");
    line.split_whitespace()
        .nth(3)
        .expect("soft limit")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_fails_the_task_that_exceeds_it() {
    let limit = limit();
    // 2 GiB past a 512 MiB limit; with Fork, as far past the limit.
    let too_much = limit / MIB + 1536;
    // The worker that runs out of memory prints "memory allocation of N bytes failed"
    // (and, with RUST_BACKTRACE, tries a backtrace) before it aborts: captured here,
    // out of the test run's output.
    let (lines, captured) = collector();
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .memory_limit(limit)
            .stderr(captured)
            .build(),
    )
    .await
    .expect("pool builds");
    let first = support::worker_pids(&pool)[0];
    assert_eq!(
        within("limit", pool.apply(address_space_limit, ())).await,
        Ok(limit.to_string()),
        "the worker runs with the limit"
    );
    // Within the limit, memory is there to use.
    let headroom = within("headroom", pool.apply(headroom_mib, ()))
        .await
        .expect("headroom");
    let fits = (headroom / 2).min(128) / 16 * 16;
    assert!(
        fits >= 16 || support::start_method() == procpool::StartMethod::Fork,
        "a fresh worker has only {headroom} MiB left under a {} MiB limit",
        limit / MIB
    );
    if fits >= 16 {
        assert_eq!(within("small", pool.apply(hog, fits)).await, Ok(fits));
    }

    let err = within("hog", pool.apply(hog, too_much))
        .await
        .expect_err("the task cannot fit in the limit");
    match err {
        TaskError::MemoryLimit {
            pid,
            exit,
            limit: reported,
        } => {
            assert_eq!(pid, first);
            assert_eq!(reported, limit);
            assert!(
                matches!(exit, WorkerExit::Signal(6 | 9 | 11)),
                "unexpected exit {exit}; the worker's stderr: {}",
                shown(&lines)
            );
            if exit == WorkerExit::Signal(6) {
                // The allocator's abort: its message went to the capture.
                assert!(
                    arrives(&lines, |l| l.0 == first
                        && l.2.starts_with("memory allocation of"))
                    .await,
                    "the worker's stderr: {}",
                    shown(&lines)
                );
            }
        }
        ref other => panic!("expected MemoryLimit, got {other:?}"),
    }
    assert!(err.is_worker_died());
    assert_eq!(err.pid(), Some(first));
    let message = err.to_string();
    assert!(
        message.contains("memory") && message.contains(&limit.to_string()),
        "the error should say it is about the memory limit: {message}"
    );

    // The pool keeps serving, and the replacement has the limit too.
    assert!(all_gone(vec![first], BOUND).await);
    if fits >= 16 {
        assert_eq!(within("small again", pool.apply(hog, fits)).await, Ok(fits));
    }
    assert_eq!(
        within("limit", pool.apply(address_space_limit, ())).await,
        Ok(limit.to_string())
    );
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 1, "{stats:?}");
    assert_eq!(stats.failed, 1, "{stats:?}");
    within("terminate", pool.terminate()).await;
}

/// Without a memory limit, a worker's death is `WorkerDied`, never `MemoryLimit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_memory_limit_no_memory_limit_error() {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    assert_eq!(
        within("limit", pool.apply(address_space_limit, ())).await,
        Ok("unlimited".to_string())
    );
    let err = within("abort", pool.apply(abort, ()))
        .await
        .expect_err("abort fails");
    assert!(
        matches!(
            err,
            TaskError::WorkerDied {
                exit: WorkerExit::Signal(6),
                ..
            }
        ),
        "{err:?}"
    );
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn niceness_applies_to_every_worker() {
    let own = niceness_of("self");
    if own > 10 {
        eprintln!("skipped: this test process already runs at niceness {own}");
        return;
    }
    let pool = within(
        "build",
        support::builder()
            .processes(2)
            .niceness(10)
            .max_tasks_per_child(1)
            .build(),
    )
    .await
    .expect("pool builds");
    let mut pids = HashSet::new();
    for _ in 0..4 {
        let (nice, pid) = within("niceness", pool.apply(my_niceness, ()))
            .await
            .expect("task runs");
        assert_eq!(nice, 10, "worker {pid} runs at niceness {nice}");
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 4, "each task ran in a fresh (recycled) worker");
    // Only the workers: this process keeps its niceness.
    assert_eq!(niceness_of("self"), own);
    within("terminate", pool.terminate()).await;
}
