#![cfg(target_os = "linux")]
//! A worker's whole descendant tree dies with it: a plain `fork` from a task, and a
//! daemon's double fork with `setsid` (a new session and group, orphaned), are gone
//! after `terminate()`, a drop of the pool, a timeout kill (with and without a grace),
//! an abort, a recycle, and the worker's own `exit`. A crash of the worker takes the
//! plain child (its group) everywhere, and the daemon where the worker has a cgroup leaf
//! or runs under `ForkServer`; under `Spawn` and `Fork` without a leaf the daemon is
//! the documented escape (a descendant that left the group, orphaned, when the worker
//! dies of a signal the pool did not send).
//!
//! Run both ways: as is (with cgroup leaves where the machine allows them) and with
//! `__PROCPOOL_TEST_NO_CGROUP=1` (process groups, subreapers and tree walks alone).
//!
//! Run under each start method (`PROCPOOL_TEST_START_METHOD=spawn|fork|forkserver`).
//!
//! This test process is a subreaper (as init would be): the killed descendants of a
//! worker that the pool started directly (Spawn, Fork) come to it as zombies, and the
//! tests reap them by pid. The tests check that they *died*; reaping orphans is init's
//! job (the init of some containers never does it).

procpool::enable_test_support!();

mod support;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use procpool::{StartMethod, TaskError};
use support::{abort, exit_with, start_descendants, within, Scratch, GONE_WITHIN};

// ---------------------------------------------------------------------------------
// Tasks. They run in worker processes.
// ---------------------------------------------------------------------------------

/// Starts descendants, writes their pids to `path`, then sleeps until it is killed.
fn start_descendants_and_hang(path: String) {
    let pids = start_descendants(());
    let text = format!("{} {}", pids[0], pids[1]);
    std::fs::write(format!("{path}.tmp"), text).expect("write pids");
    std::fs::rename(format!("{path}.tmp"), &path).expect("publish pids");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A process that never stays put: each generation renames itself `name`, starts a new
/// session, forks its successor and exits (so each one is orphaned in turn), one
/// generation every 20 ms, for at most 2 000 generations (40 s). Writes the first
/// generation's pid to `path`, then sleeps until it is killed.
fn start_walking_chain((path, name): (String, String)) {
    let mut cname = [0u8; 16];
    let n = name.len().min(15);
    cname[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: the chain's processes make only async-signal-safe calls (prctl, setsid,
    // fork, nanosleep, _exit) on locals.
    let first = unsafe {
        let first = libc::fork();
        assert!(first >= 0, "fork");
        if first == 0 {
            for _ in 0..2_000 {
                libc::prctl(libc::PR_SET_NAME, cname.as_ptr());
                libc::setsid();
                let pause = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 20_000_000,
                };
                libc::nanosleep(&pause, std::ptr::null_mut());
                match libc::fork() {
                    0 => continue,
                    _ => libc::_exit(0),
                }
            }
            libc::_exit(0);
        }
        first
    };
    std::fs::write(format!("{path}.tmp"), first.to_string()).expect("write pid");
    std::fs::rename(format!("{path}.tmp"), &path).expect("publish pid");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Running processes named `name`, and a pidfd on each.
fn named(name: &str) -> Vec<(u32, Option<OwnedFd>)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
                && support::is_running(pid)
        })
        .map(|pid| {
            // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as i32, 0) };
            // SAFETY: a fresh descriptor that nothing else owns.
            (
                pid,
                (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            )
        })
        .collect()
}

/// Returns this worker's pid (a task that does nothing else).
fn exit_later(_: ()) -> u32 {
    std::process::id()
}

// ---------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------

/// Holds a pidfd on each process a task started, and kills them through it when
/// dropped: whatever the product does, the test leaves nothing behind (a pidfd cannot
/// reach a process that reused the pid).
struct Guard {
    procs: Vec<(u32, OwnedFd)>,
}

impl Guard {
    /// Watches `pids`, which must all be running now.
    fn watch(pids: &[u32]) -> Guard {
        support::become_subreaper();
        let mut procs = Vec::new();
        for &pid in pids {
            // SAFETY: pidfd_open takes integers and returns a new descriptor or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as i32, 0) };
            assert!(fd >= 0, "pidfd_open({pid}): the descendant is not running");
            // SAFETY: a fresh descriptor that nothing else owns.
            procs.push((pid, unsafe { OwnedFd::from_raw_fd(fd as i32) }));
        }
        assert!(
            pids.iter().all(|&p| support::is_running(p)),
            "descendants run"
        );
        Guard { procs }
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(p, _)| *p).collect()
    }

    /// Whether `pid` has died: gone, or a zombie (which the test reaps if it came
    /// to this process).
    fn dead(pid: u32) -> bool {
        if support::parent_of(pid) == Some(std::process::id()) {
            // SAFETY: waitpid on an orphan that came to us, with a null status.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        }
        !support::is_running(pid)
    }

    /// Waits (on a blocking thread, bounded) until every watched process is dead.
    async fn all_dead(&self, within: Duration) -> bool {
        let pids = self.pids();
        tokio::task::spawn_blocking(move || {
            support::eventually(within, || pids.iter().all(|&p| Guard::dead(p)))
        })
        .await
        .expect("poller")
    }

    fn describe(&self) -> Vec<(u32, Option<char>)> {
        self.pids()
            .into_iter()
            .map(|p| (p, support::proc_state(p)))
            .collect()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for (pid, fd) in &self.procs {
            // SAFETY: pidfd_send_signal reads only its integer arguments.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
            let pid = *pid;
            support::eventually(GONE_WITHIN, || Guard::dead(pid));
        }
    }
}

async fn assert_all_dead(guard: &Guard, what: &str) {
    assert!(
        guard.all_dead(GONE_WITHIN).await,
        "{what}: descendants left running: {:?}",
        guard.describe()
    );
}

/// Reads the pids that `start_descendants_and_hang` wrote to `path`.
async fn read_pids(scratch: &Scratch, name: &str) -> Vec<u32> {
    scratch.wait_for(name).await;
    std::fs::read_to_string(scratch.path(name))
        .expect("read pids")
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect()
}

// ---------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_kills_every_descendant() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let pids = within("task", pool.apply(start_descendants, ()))
        .await
        .expect("task runs");
    let guard = Guard::watch(&pids);
    within("terminate", pool.terminate()).await;
    assert_all_dead(&guard, "terminate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_kills_every_descendant() {
    let pool = within("build", support::builder().processes(2).build())
        .await
        .expect("pool builds");
    let pids = within("task", pool.apply(start_descendants, ()))
        .await
        .expect("task runs");
    let guard = Guard::watch(&pids);
    drop(pool);
    assert_all_dead(&guard, "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kill_takes_every_descendant() {
    let scratch = Scratch::new("descend-timeout");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let task = pool
        .apply(start_descendants_and_hang, scratch.path("pids"))
        .timeout(Duration::from_secs(3))
        .spawn();
    let guard = Guard::watch(&read_pids(&scratch, "pids").await);
    let err = within("timeout", task).await.expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");
    assert_all_dead(&guard, "timeout").await;
    within("terminate", pool.terminate()).await;
}

/// With a kill grace, the worker gets `SIGTERM` and leaves by itself (a worker dies of
/// it): the descendants it had are held by pidfd and killed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_with_a_grace_takes_every_descendant() {
    let scratch = Scratch::new("descend-grace");
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .kill_grace(Duration::from_millis(500))
            .build(),
    )
    .await
    .expect("pool builds");
    let task = pool
        .apply(start_descendants_and_hang, scratch.path("pids"))
        .timeout(Duration::from_secs(3))
        .spawn();
    let guard = Guard::watch(&read_pids(&scratch, "pids").await);
    let err = within("timeout", task).await.expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");
    assert_all_dead(&guard, "timeout with grace").await;
    within("terminate", pool.terminate()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_takes_every_descendant() {
    let scratch = Scratch::new("descend-abort");
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let task = pool.apply_async(start_descendants_and_hang, scratch.path("pids"));
    let guard = Guard::watch(&read_pids(&scratch, "pids").await);
    task.abort();
    assert_eq!(within("abort", task).await, Err(TaskError::Cancelled));
    assert_all_dead(&guard, "abort").await;
    within("terminate", pool.terminate()).await;
}

/// A worker retired after `max_tasks_per_child` leaves by itself (its channel closes);
/// what its tasks started goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycle_takes_every_descendant() {
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .max_tasks_per_child(2)
            .build(),
    )
    .await
    .expect("pool builds");
    let pids = within("task", pool.apply(start_descendants, ()))
        .await
        .expect("task runs");
    // Watched before the worker's second task retires it.
    let guard = Guard::watch(&pids);
    let worker = within("second task", pool.apply(exit_later, ()))
        .await
        .expect("task runs");
    assert_all_dead(&guard, "recycle").await;
    assert!(
        support::worker_pids(&pool) != vec![worker],
        "the worker was recycled"
    );
    within("terminate", pool.terminate()).await;
}

/// A task that calls `std::process::exit` ends its worker; the worker's tree goes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_takes_every_descendant() {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let pids = within("task", pool.apply(start_descendants, ()))
        .await
        .expect("task runs");
    let worker = support::worker_pids(&pool);
    let guard = Guard::watch(&pids);
    let err = within("exit", pool.apply(exit_with, 3))
        .await
        .expect_err("the worker exits");
    assert!(matches!(err, TaskError::WorkerDied { .. }), "{err:?}");
    assert!(worker.len() == 1 && err.pid() == Some(worker[0]), "{err:?}");
    assert_all_dead(&guard, "exit").await;
    within("terminate", pool.terminate()).await;
}

/// A worker that crashes (here `abort`) takes its group (the plain child) under every
/// start method. The daemon, which left the group and was orphaned, goes with it where
/// the worker had a cgroup leaf (the pool kills the leaf when it sees the worker gone),
/// and under `ForkServer` (the server is its subreaper and kills orphans); under `Spawn`
/// and `Fork` without a leaf (`__PROCPOOL_TEST_NO_CGROUP=1`, or no writable cgroup v2)
/// it is the documented escape: it runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_takes_the_group_and_under_forkserver_the_daemon() {
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let pids = within("task", pool.apply(start_descendants, ()))
        .await
        .expect("task runs");
    let (child, daemon) = (pids[0], pids[1]);
    let guard = Guard::watch(&pids);
    let err = within("crash", pool.apply(abort, ()))
        .await
        .expect_err("the worker crashes");
    assert!(matches!(err, TaskError::WorkerDied { .. }), "{err:?}");
    let plain_dead = tokio::task::spawn_blocking(move || {
        support::eventually(GONE_WITHIN, || Guard::dead(child))
    })
    .await
    .expect("poller");
    assert!(
        plain_dead,
        "the plain child runs on: {:?}",
        guard.describe()
    );
    if procpool::__cgroup_base().is_some() {
        // Where the worker had a cgroup leaf, the daemon was in it: no escape.
        assert_all_dead(&guard, "crash with a cgroup leaf").await;
    } else if support::start_method() == StartMethod::ForkServer {
        assert_all_dead(&guard, "crash under forkserver").await;
    } else {
        // The escape, exactly: given time to be killed, the daemon still runs.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            support::is_running(daemon),
            "the documented escape closed? {:?}",
            guard.describe()
        );
    }
    within("terminate", pool.terminate()).await;
    drop(guard);
}

/// A chain of processes that fork and exit, each in a new session, is caught by the
/// walk (which repeats until it finds nothing new) when the pool kills the worker: no
/// process of the chain runs afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walking_chain_is_caught() {
    let scratch = Scratch::new("descend-chain");
    let name = format!("ppchain{}", std::process::id() % 100_000);
    let pool = within("build", support::builder().processes(1).build())
        .await
        .expect("pool builds");
    let task = pool
        .apply(start_walking_chain, (scratch.path("pid"), name.clone()))
        .timeout(Duration::from_secs(2))
        .spawn();
    scratch.wait_for("pid").await;
    // Let the chain walk a few hundred generations.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A sample of /proc can miss a generation that is just being replaced, but not
    // for long: it runs.
    let look = name.clone();
    let runs = tokio::task::spawn_blocking(move || {
        support::eventually(GONE_WITHIN, || !named(&look).is_empty())
    })
    .await
    .expect("poller");
    assert!(runs, "the chain runs");
    let err = within("timeout", task).await.expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");
    // Gone for good: not seen in 30 samples over at least 600 ms (a live generation
    // is missed by one sample now and then, never by thirty).
    let poll_name = name.clone();
    let gone = tokio::task::spawn_blocking(move || {
        support::become_subreaper();
        let mut unseen = 0;
        support::eventually(GONE_WITHIN, || {
            let live = named(&poll_name);
            live.iter().for_each(|(pid, _)| {
                Guard::dead(*pid);
            });
            unseen = if live.is_empty() { unseen + 1 } else { 0 };
            std::thread::sleep(Duration::from_millis(10));
            unseen >= 30
        })
    })
    .await
    .expect("poller");
    // Whatever the outcome, nothing of the chain is left (killed through pidfds).
    let left: Vec<u32> = named(&name).iter().map(|(pid, _)| *pid).collect();
    for (pid, fd) in named(&name) {
        if let Some(fd) = fd {
            // SAFETY: pidfd_send_signal reads only its integer arguments.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
        support::eventually(GONE_WITHIN, || Guard::dead(pid));
    }
    assert!(gone, "the chain runs on: {left:?}");
    within("terminate", pool.terminate()).await;
    // Generations that exited were orphans of the worker, and came to us as zombies
    // when it died (under Spawn and Fork): reap them.
    let me = std::process::id();
    support::eventually(GONE_WITHIN, || {
        let mine: Vec<u32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                support::parent_of(pid) == Some(me)
                    && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim_end() == name)
            })
            .collect();
        mine.iter()
            .all(|&pid| Guard::dead(pid) && support::is_gone(pid))
    });
}

/// A `Process` child (not a pool worker) is a subreaper with its own group too:
/// killing it takes its descendants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_process_takes_every_descendant() {
    let scratch = Scratch::new("descend-process");
    let child = within(
        "start",
        procpool::Process::builder()
            .start_method(support::start_method())
            .start(start_descendants_and_hang, scratch.path("pids")),
    )
    .await
    .expect("process starts");
    let guard = Guard::watch(&read_pids(&scratch, "pids").await);
    child.kill();
    let err = within("join", child.join())
        .await
        .expect_err("the process was killed");
    assert!(matches!(err, TaskError::WorkerDied { .. }), "{err:?}");
    assert_all_dead(&guard, "Process::kill").await;
}
