#![cfg(target_os = "linux")]
//! Crash loops: workers that die at start-up make `build()` fail with a clear error, and
//! a pool whose replacements keep failing backs off and fails its callers instead of
//! spinning or leaving them waiting.

procpool::enable_test_support!();

mod support;

use std::path::Path;
use std::time::Duration;

use procpool::TaskError;
use support::*;

/// Records its pid in `dir`, then panics.
fn record_and_panic(dir: String) {
    std::fs::write(format!("{dir}/{}", std::process::id()), b"").expect("record pid");
    panic!("initializer exploded on purpose");
}

fn pids_in(dir: &str) -> Vec<u32> {
    std::fs::read_dir(dir)
        .expect("read scratch dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_initializer_fails_build_with_its_message() {
    let scratch = Scratch::new("init-panic");
    // Failing fast: the first failure ends the build; it does not wait for the
    // start-up timeout, nor retry (`within` gives it 30 s).
    let built = within(
        "build with a panicking initializer",
        support::builder()
            .processes(2)
            .startup_timeout(Duration::from_secs(120))
            .initializer(record_and_panic, scratch.dir())
            .build(),
    )
    .await;
    let err = built.expect_err("build must fail when the initializer panics");
    let message = err.to_string();
    assert!(
        message.contains("initializer exploded on purpose"),
        "the build error should carry the panic's message: {message}"
    );
    assert!(
        message.contains("initializer"),
        "the build error should say the initializer failed: {message}"
    );
    // Every worker that was started is gone, none is left a zombie.
    let pids = pids_in(&scratch.dir());
    assert!(
        !pids.is_empty(),
        "the initializer ran in at least one worker"
    );
    assert!(
        all_gone(pids.clone(), BOUND).await,
        "workers of a failed build left behind: {:?}",
        pids.iter()
            .map(|&p| (p, support::proc_state(p)))
            .collect::<Vec<_>>()
    );
    let zombies = support::zombie_children();
    assert!(pids.iter().all(|p| !zombies.contains(p)));
}

/// Records its pid in `dir`; panics while the file `poison` exists.
fn panic_if_poisoned((dir, poison): (String, String)) {
    std::fs::write(format!("{dir}/{}", std::process::id()), b"").expect("record pid");
    if Path::new(&poison).exists() {
        panic!("poisoned start-up: {poison}");
    }
}

/// After a crash, the replacement's initializer panics again and again: callers get
/// `WorkerStart` with the reason instead of waiting, the supervisor backs off instead
/// of spinning, and once start-up works again the pool serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_replacements_back_off_and_fail_callers() {
    let scratch = Scratch::new("crash-loop");
    let poison = scratch.path("poison");
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .initializer(panic_if_poisoned, (scratch.dir(), poison.clone()))
            .build(),
    )
    .await
    .expect("the initializer passes while there is no poison");
    let first = support::worker_pids(&pool)[0];

    scratch.touch("poison");
    let err = within("crash", pool.apply(exit_with, 4))
        .await
        .expect_err("exit fails the task");
    assert_eq!(err.pid(), Some(first));
    assert!(all_gone(vec![first], BOUND).await);

    // No worker can start now: a caller gets the start-up error, not an endless wait.
    let err = within("a task while no worker can start", pool.apply(double, 1))
        .await
        .expect_err("no worker can run it");
    match &err {
        TaskError::WorkerStart(why) => assert!(
            why.contains("poisoned start-up"),
            "the error should carry the initializer's panic: {why}"
        ),
        other => panic!("expected WorkerStart, got {other:?}"),
    }

    // The supervisor backs off: over two seconds it tries only a few times. (Without a
    // back-off, a worker that fails in a few milliseconds is retried hundreds of times.)
    let before = pool.stats().start_failures;
    assert!(before >= 1, "{:?}", pool.stats());
    let why = pool
        .stats()
        .start_error
        .expect("stats say why workers cannot start");
    assert!(why.contains("poisoned start-up"), "{why}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pool.stats().start_failures;
    assert!(
        after - before <= 8,
        "{} start attempts in two seconds: the supervisor spins",
        after - before
    );
    assert!(support::worker_pids(&pool).is_empty());

    // Start-up works again: the pool recovers by itself.
    std::fs::remove_file(&poison).expect("remove poison");
    let recovered = within("recovery", async {
        loop {
            match pool.apply(double, 21).await {
                Ok(v) => return v,
                // A start attempt that read the poison before it went away.
                Err(TaskError::WorkerStart(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(other) => panic!("unexpected error while recovering: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(recovered, 42);
    assert_eq!(
        pool.stats().start_error,
        None,
        "cleared once a worker starts"
    );
    let live = support::worker_pids(&pool);
    assert_eq!(live.len(), 1);
    assert_eq!(pool.stats().workers_started, 2);
    // Every worker that failed to start was reaped.
    let failed: Vec<u32> = pids_in(&scratch.dir())
        .into_iter()
        .filter(|p| *p != first && !live.contains(p))
        .collect();
    assert_eq!(
        failed.len() as u64,
        pool.stats().start_failures,
        "each failed start-up ran the initializer once"
    );
    assert!(
        all_gone(failed.clone(), BOUND).await,
        "failed start-ups left processes: {:?}",
        failed
            .iter()
            .map(|&p| (p, support::proc_state(p)))
            .collect::<Vec<_>>()
    );
    within("terminate", pool.terminate()).await;
    assert!(all_gone(live, BOUND).await);
}
