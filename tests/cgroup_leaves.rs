#![cfg(target_os = "linux")]
//! Where this process can create cgroup v2 leaves, every child procpool starts runs in
//! one of its own (`<base>/procpool-<our pid>-<n>`), with everything it starts: a
//! daemon that left the worker's process group and subtree (a `setsid` double fork)
//! is in the leaf too, and dies when its worker crashes (the escape that process
//! groups and tree walks leave under `Spawn` and `Fork`). No leaf outlives its child:
//! after `terminate()` none of ours is left.
//!
//! One test in this file, so that no other pool of this process makes leaves while it
//! counts them. Skipped (loudly) where no cgroup leaf can be made; run under each start
//! method (`PROCPOOL_TEST_START_METHOD=spawn|fork|forkserver`).

procpool::enable_test_support!();

mod support;

use std::path::Path;

use procpool::TaskError;
use support::{abort, start_descendants, wait_until, within, GONE_WITHIN};

/// The last component of the cgroup v2 path of `pid` (the `0::` line).
fn leaf_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(path.rsplit('/').next()?.to_string())
}

/// Our leaves under `base`.
fn our_leaves(base: &Path) -> Vec<String> {
    let prefix = format!("procpool-{}-", std::process::id());
    std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Whether `pid` has died (reaping it if it is an orphan that came to us).
fn dead(pid: u32) -> bool {
    if support::parent_of(pid) == Some(std::process::id()) {
        // SAFETY: waitpid on an orphan that came to us, with a null status.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
    }
    !support::is_running(pid)
}

fn whoami(_: ()) -> String {
    std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default()
}

/// Starts a `Process` of its own (its leaf is made inside this one's) and returns the
/// grandchild's cgroup.
fn start_grandchild(_: ()) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let child = procpool::Process::builder()
            .start(whoami, ())
            .await
            .map_err(|e| e.to_string())?;
        child.join().await.map_err(|e| e.to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_child_runs_in_a_leaf_that_takes_its_escaped_daemon_and_goes() {
    let Some(base) = procpool::__cgroup_base() else {
        if std::env::var_os("__PROCPOOL_TEST_NO_CGROUP").is_some_and(|v| !v.is_empty() && v != "0")
        {
            eprintln!("cgroup leaves turned off (__PROCPOOL_TEST_NO_CGROUP): skipped");
        } else {
            eprintln!(
                "\n*** SKIPPED: no writable cgroup v2 hierarchy with cgroup.kill here: \
                 procpool runs without cgroup leaves (see src/start/cgroup.rs) ***\n"
            );
        }
        return;
    };
    support::become_subreaper();
    let prefix = format!("procpool-{}-", std::process::id());
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let pids = within("task", pool.apply(start_descendants, ()))
        .await
        .expect("task runs");
    let (child, daemon) = (pids[0], pids[1]);
    let workers = support::worker_pids(&pool);
    assert_eq!(workers.len(), 1);
    let leaf = leaf_of(workers[0]).expect("the worker's cgroup");
    assert!(
        leaf.starts_with(&prefix),
        "the worker is not in a leaf of ours: {leaf:?}"
    );
    assert!(base.join(&leaf).is_dir(), "no {leaf} under {base:?}");
    // The daemon left the worker's group (and, once the worker is gone, its subtree),
    // not its leaf.
    for pid in [child, daemon] {
        assert_eq!(leaf_of(pid).as_deref(), Some(leaf.as_str()), "pid {pid}");
    }

    let err = within("crash", pool.apply(abort, ()))
        .await
        .expect_err("the worker crashes");
    assert!(matches!(err, TaskError::WorkerDied { .. }), "{err:?}");
    assert!(
        wait_until(GONE_WITHIN, move || dead(child) && dead(daemon)).await,
        "a crash left descendants running: {:?}",
        [
            (child, support::proc_state(child)),
            (daemon, support::proc_state(daemon))
        ]
    );
    let (dir, gone_leaf) = (base.clone(), leaf.clone());
    assert!(
        wait_until(GONE_WITHIN, move || !dir.join(&gone_leaf).exists()).await,
        "the crashed worker's leaf {leaf} was not removed"
    );

    // Its replacement has a leaf of its own, and so does a `Process`.
    let replacement = within("again", pool.apply(start_descendants, ()))
        .await
        .expect("task runs");
    let workers = support::worker_pids(&pool);
    let second = leaf_of(workers[0]).expect("the worker's cgroup");
    assert!(second.starts_with(&prefix) && second != leaf, "{second:?}");
    let process = within(
        "process",
        procpool::Process::builder()
            .start_method(support::start_method())
            .start(whoami, ()),
    )
    .await
    .expect("process starts");
    let own = within("join", process.join()).await.expect("joins");
    assert!(own.contains(&format!("/{prefix}")), "{own:?}");
    // A child that starts a child of its own makes its leaves inside its own leaf;
    // removing the outer one removes them. (Not under `Fork`: a forked child cannot
    // run Tokio's I/O.)
    let nested_method = match support::start_method() {
        procpool::StartMethod::Fork => procpool::StartMethod::Spawn,
        other => other,
    };
    let process = within(
        "nested process",
        procpool::Process::builder()
            .start_method(nested_method)
            .start(start_grandchild, ()),
    )
    .await
    .expect("process starts");
    let nested = within("join", process.join())
        .await
        .expect("joins")
        .expect("the grandchild ran");
    let depth = nested
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.matches("/procpool-").count());
    assert_eq!(depth, Some(2), "not in a nested leaf: {nested:?}");

    within("terminate", pool.terminate()).await;
    assert!(
        wait_until(GONE_WITHIN, move || replacement.iter().all(|&p| dead(p))).await,
        "terminate left descendants running"
    );
    let dir = base.clone();
    let left = wait_until(GONE_WITHIN, move || our_leaves(&dir).is_empty()).await;
    assert!(left, "leaves left after terminate: {:?}", our_leaves(&base));
}
