//! A worker's descendants die with it.
//!
//! A task may start processes: a plain `fork`, a daemon's double fork with `setsid`, a
//! fork bomb. None of them may outlive the worker. Linux offers no single handle on "a
//! process and everything it started" short of a cgroup: where this process may create
//! cgroup v2 leaves, each child has one ([`cgroup`](super::cgroup)), killed first at
//! every kill and when the child is seen gone. In any case (the only line where no leaf
//! can be made, a second one where one can) procpool combines three mechanisms:
//!
//! - **A process group per child.** Every child procpool starts (workers, `Process`
//!   children, the fork server) calls `setpgid(0, 0)` before it runs anything, so its
//!   descendants that do not leave the group can be killed with one `kill(-pgid)`. The
//!   group is killed while the child is still unreaped (alive or a zombie): its pid,
//!   which is the group's id, cannot be reused until then.
//! - **A subreaper per child.** Every child is also a child subreaper
//!   (`PR_SET_CHILD_SUBREAPER`): an orphan in its subtree (the grandchild of a double
//!   fork whose middle process exited) is reparented to it, not to init, so *while the
//!   child lives* every process it started is in its subtree in `/proc`, whatever
//!   group or session it moved to.
//! - **A walk of the subtree.** To kill a child, the pool stops it (`SIGSTOP`: a
//!   stopped subreaper still adopts orphans, and cannot fork), then walks
//!   `/proc/PID/task/*/children` from it and kills each process found through a pidfd
//!   (after checking, once the pidfd is open, that the process's parent is in the tree:
//!   a pid reused between the walk and the `pidfd_open` is left alone), and walks again
//!   until a walk finds nothing new. A process with a pending `SIGKILL` cannot complete
//!   a `fork`, so each walk only has to catch what was forked before the previous one.
//!   Then the group, then the child itself. The walk is bounded: at most
//!   [`MAX_PASSES`] walks within [`TREE_KILL_BOUND`] (a fork bomb cannot make the pool
//!   loop forever); the group kill follows in any case.
//!
//! A child that exits by itself (a crash, `std::process::exit`, a recycle) takes its
//! group with it: its reaper (the pool, or the fork server) kills the group between the
//! exit and the reap. A worker that returns from its loop or calls `exit` first kills
//! its own subtree (an `atexit` hook). The fork server is a subreaper whose only
//! legitimate children are its live workers: any other child is an orphan of a dead
//! worker, and it kills it (and its group) at once; when it exits it kills its whole
//! subtree.
//!
//! What remains without a cgroup leaf, under `Spawn` and `Fork` (whose parent is the user's program, which the
//! pool does not make a subreaper): a descendant that left the worker's process group
//! (`setsid`, `setpgid`) and was orphaned, when the worker then dies of a signal the pool
//! did not send (a segfault, `abort`, the OOM killer, a `kill` from outside) — that
//! process is reparented out of the worker's tree before anyone can see it.

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The most time a tree kill spends walking (the kills themselves follow at once).
pub(crate) const TREE_KILL_BOUND: Duration = Duration::from_secs(1);

/// The most walks of a tree in one kill.
pub(crate) const MAX_PASSES: usize = 64;

/// How long the pool waits for a worker to stop before walking its tree anyway.
const STOP_BOUND: Duration = Duration::from_millis(250);

/// Opens a pidfd on `pid`, if it exists.
pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` through a pidfd: it cannot reach a process that reused the pid.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) {
    // SAFETY: pidfd_send_signal reads only its integer arguments (the siginfo pointer
    // is null).
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Whether the process behind `pidfd` has exited (it may still be an unreaped zombie).
pub(crate) fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) > 0 }
}

/// Kills the group `pgid`. Only call this while the group's leader is alive or an
/// unreaped zombie, so that the id cannot name another program's group.
pub(crate) fn kill_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill takes integers only.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// Reads a small /proc file into `buf` (cleared first); false if it cannot be read.
fn read_proc(path: &str, buf: &mut String) -> bool {
    buf.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(buf))
        .is_ok()
}

/// The fields of /proc/PID/stat after the command name (which may hold anything).
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// The parent of `pid`, from /proc.
fn parent_of(pid: i32, buf: &mut String) -> Option<i32> {
    if !read_proc(&format!("/proc/{pid}/stat"), buf) {
        return None;
    }
    stat_fields(buf)?.nth(1)?.parse().ok()
}

/// Whether every thread of `pid` is stopped, or the process is dead.
fn is_stopped(pid: i32, buf: &mut String) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    for task in tasks.flatten() {
        let path = task.path().join("stat");
        if !read_proc(&path.to_string_lossy(), buf) {
            continue;
        }
        match stat_fields(buf).and_then(|mut f| f.next()) {
            Some("T" | "t" | "Z" | "X" | "x") | None => {}
            Some(_) => return false,
        }
    }
    true
}

/// The children of `pid` (of each of its threads), from /proc.
fn children_of(pid: i32, out: &mut Vec<i32>, buf: &mut String) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if read_proc(&path.to_string_lossy(), buf) {
            out.extend(buf.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
}

/// The children of `pid`, from /proc.
pub(crate) fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    children_of(pid, &mut out, &mut String::new());
    out
}

/// Walks the subtree under `root` (which must be alive and unable to fork: stopped, or
/// the caller itself) and sends `signal` to every process in it, through pidfds; walks
/// again until a walk finds nothing new (no new process, no process that died since
/// the listing, whose children moved up the tree), at most [`MAX_PASSES`] times and
/// until `deadline`. `root` itself is not signalled.
///
/// Returns the pidfds of the processes signalled: the caller holds them while it
/// finishes (no pid among them can be reused meanwhile).
pub(crate) fn signal_subtree(root: i32, signal: libc::c_int, deadline: Instant) -> Vec<OwnedFd> {
    let mut known: HashSet<i32> = HashSet::from([root]);
    let mut tree: Vec<i32> = vec![root];
    let mut held = Vec::new();
    let mut buf = String::new();
    let mut kids = Vec::new();
    for _ in 0..MAX_PASSES {
        let mut found = false;
        let mut i = 0;
        while i < tree.len() {
            kids.clear();
            children_of(tree[i], &mut kids, &mut buf);
            for &kid in &kids {
                if known.contains(&kid) {
                    continue;
                }
                let Some(pidfd) = pidfd_open(kid) else {
                    // Gone since the listing: its children (if any) were reparented
                    // within the tree; walk again to find them.
                    found = true;
                    continue;
                };
                // The pidfd names one process for good; /proc names whoever has the
                // pid now. If the process is still alive after we read its parent,
                // the parent we read is its own: it must be in the tree.
                let parent = parent_of(kid, &mut buf);
                if has_exited(pidfd.as_fd()) {
                    // Dead already (a zombie, whose pid stays its own): it has no
                    // children left, but those it had were reparented within the
                    // tree, perhaps to a process already walked: walk again.
                    known.insert(kid);
                    found = true;
                    continue;
                }
                if !parent.is_some_and(|p| known.contains(&p)) {
                    continue;
                }
                pidfd_signal(pidfd.as_fd(), signal);
                known.insert(kid);
                tree.push(kid);
                held.push(pidfd);
                found = true;
            }
            i += 1;
        }
        if !found || Instant::now() >= deadline {
            break;
        }
    }
    held
}

/// Kills a child procpool started, with its whole tree: stops it, kills every
/// descendant it has, then its process group, then the child. Bounded by
/// [`TREE_KILL_BOUND`] (plus the wait for the stop, at most 250 ms).
///
/// `group_safe`: whether the caller is the child's parent and has not reaped it, so
/// that its group may be killed even once it has exited.
pub(crate) fn kill_tree(pidfd: BorrowedFd<'_>, pid: i32, group_safe: bool) {
    if !has_exited(pidfd) {
        pidfd_signal(pidfd, libc::SIGSTOP);
        let mut buf = String::new();
        let stop_by = Instant::now() + STOP_BOUND;
        while !has_exited(pidfd) && !is_stopped(pid, &mut buf) && Instant::now() < stop_by {
            std::thread::sleep(Duration::from_micros(200));
        }
        if !has_exited(pidfd) {
            let held = signal_subtree(pid, libc::SIGKILL, Instant::now() + TREE_KILL_BOUND);
            // The child is alive (stopped): its pid, the group's id, is still its own.
            kill_group(pid);
            pidfd_signal(pidfd, libc::SIGKILL);
            drop(held);
            return;
        }
    }
    // It exited by itself: its descendants were reparented away (to the fork server,
    // under ForkServer, which kills them); its group is still there to kill.
    pidfd_signal(pidfd, libc::SIGKILL);
    if group_safe {
        kill_group(pid);
    }
}

/// Kills every descendant of this process, which must be a subreaper (bounded as
/// [`kill_tree`]). For a worker or fork server about to exit.
pub(crate) fn kill_own_subtree() {
    // SAFETY: getpid takes no arguments.
    let me = unsafe { libc::getpid() };
    let held = signal_subtree(me, libc::SIGKILL, Instant::now() + TREE_KILL_BOUND);
    drop(held);
}
