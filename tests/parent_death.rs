#![cfg(target_os = "linux")]
//! Parent death: when the process that owns a pool is SIGKILLed, every worker exits
//! promptly, also one busy with a long task.
//!
//! The test runs this same test binary again as a helper parent (the ignored test
//! `helper_parent`, activated by an environment variable), reads its workers' pids from
//! its stdout, SIGKILLs it, and watches the workers go.

procpool::enable_test_support!();

mod support;

use std::time::Duration;

use support::*;

/// Set in the helper's environment: a scratch directory for its markers.
const HELPER_ENV: &str = "PROCPOOL_TEST_PARENT_DEATH_HELPER";

/// The helper parent: a pool of two, one worker busy with a long task, pids printed,
/// then it waits to be killed. Does nothing when run without `HELPER_ENV`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for parent_sigkill_takes_the_workers_down"]
async fn helper_parent() {
    let Ok(dir) = std::env::var(HELPER_ENV) else {
        return;
    };
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let started = format!("{dir}/long-task-started");
    let long = pool.apply_async(start_then_sleep_60, started.clone());
    assert!(
        wait_until(BOUND, move || std::path::Path::new(&started).exists()).await,
        "the long task did not start"
    );
    let pids = support::worker_pids(&pool);
    assert_eq!(pids.len(), 2);
    println!(
        "PIDS {}",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Wait to be killed; if nobody does, clean up after a while.
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(long);
    within("terminate", pool.terminate()).await;
}

fn start_then_sleep_60(started: String) {
    std::fs::write(&started, b"").expect("marker");
    std::thread::sleep(Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_sigkill_takes_the_workers_down() {
    let scratch = Scratch::new("parent-death");
    // The helper's orphans come to us, and we reap them.
    support::become_subreaper();
    let mut helper = helper_command("helper_parent")
        .env(HELPER_ENV, scratch.dir())
        .spawn()
        .expect("start the helper");
    let helper_pid = helper.id().expect("helper pid");

    let workers = pids_line(helper.stdout.take().expect("helper stdout")).await;
    assert_eq!(workers.len(), 2, "{workers:?}");
    // Every process of the pool: the workers and, with the fork server start method,
    // the server that forked them (a child of the helper).
    let mut pool_procs = workers.clone();
    for &w in &workers {
        assert!(support::is_running(w), "worker {w} should be running");
        let parent = support::parent_of(w).expect("worker's parent");
        if parent != helper_pid {
            assert_eq!(
                support::parent_of(parent),
                Some(helper_pid),
                "worker {w} should be the helper's child or its fork server's"
            );
            if !pool_procs.contains(&parent) {
                pool_procs.push(parent);
            }
        }
    }
    assert!(scratch.exists("long-task-started"));

    let status = std::process::Command::new("kill")
        .args(["-9", &helper_pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let ended = within("reap the helper", helper.wait())
        .await
        .expect("wait for the helper");
    assert!(!ended.success());

    // The workers die with their parent. Orphaned, they come to this process (a
    // subreaper), which reaps them below.
    let watched = pool_procs.clone();
    let down = wait_until(Duration::from_secs(2), move || {
        watched.iter().all(|&w| !support::is_running(w))
    })
    .await;
    assert!(
        down,
        "processes of the pool outlived their SIGKILLed parent: {:?}",
        pool_procs
            .iter()
            .map(|&w| (w, support::proc_state(w)))
            .collect::<Vec<_>>()
    );
    for &p in &pool_procs {
        assert!(
            support::reap_orphan(p, Duration::from_secs(5)),
            "{p} left behind"
        );
    }
}
