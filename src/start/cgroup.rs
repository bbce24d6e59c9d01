//! A cgroup v2 leaf per child, where this process may create one.
//!
//! A cgroup holds every process started in it, whatever group, session or parent it
//! moves to: nothing leaves it but by a write to another cgroup's `cgroup.procs`, which
//! an unprivileged worker cannot make. Writing `1` to its `cgroup.kill` (Linux 5.14+)
//! kills every process in it at once. So where this process may create cgroups, every
//! child procpool starts gets a leaf of its own, `<base>/procpool-<pool pid>-<n>`, next
//! to each other under the cgroup this process runs in (`<base>`), and every kill of
//! the child kills its leaf first (the tree walk of [`tree`](super::tree) follows, as a
//! second line). When the pool sees the child gone (killed, crashed, exited), it kills
//! the leaf again, which takes whatever the child left running, and removes it once it
//! is empty (at once, or from a background thread within [`REMOVE_BOUND`]).
//!
//! A child is moved into its leaf before it runs anything of its own: the pool opens the
//! leaf's `cgroup.procs` before the fork and the child writes `0` to it first thing in
//! [`child_setup`](super::child_setup) (a fork server's worker gets the descriptor with
//! its fork request), or, if it was spawned, first thing after its exec (see
//! [`after_exec`](super::after_exec): it finds the descriptor on
//! [`CGROUP_FD`](super::after_exec::CGROUP_FD)).
//!
//! The leaves are used only if a probe, once per process, finds them usable: the
//! cgroup2 mount (from `/proc/self/mountinfo`) joined with this process's cgroup (the
//! `0::` line of `/proc/self/cgroup`) must let us create a directory, which must have a
//! `cgroup.kill`, and a forked probe process must be able to move itself into it (a
//! cgroup with controllers enabled for its children cannot hold processes, for one).
//! Otherwise procpool falls back, silently, to process groups, subreapers and tree walks.
//! The environment variable `__PROCPOOL_TEST_NO_CGROUP` (read once) turns the leaves off.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::per_process::PerProcess;

/// Test switch: with it set (to anything but empty or `0`), procpool does not use
/// cgroup leaves.
pub(crate) const ENV_NO_CGROUP: &str = "__PROCPOOL_TEST_NO_CGROUP";

/// How long a leaf that is not empty yet is retried for removal before it is left.
pub(crate) const REMOVE_BOUND: Duration = Duration::from_secs(10);

/// How long dropping a leaf waits for the processes it killed to leave before handing
/// the leaf to the background thread.
const DROP_WAIT: Duration = Duration::from_millis(50);

/// Where this process creates leaves, if it can (probed once per process).
pub(crate) fn base() -> Option<&'static Path> {
    static BASE: PerProcess<Option<PathBuf>> = PerProcess::new();
    BASE.get_or_init(|| {
        if std::env::var_os(ENV_NO_CGROUP).is_some_and(|v| !v.is_empty() && v != "0") {
            return None;
        }
        let base = candidates().into_iter().find(|base| probe(base))?;
        sweep(&base);
        Some(base)
    })
    .as_deref()
}

/// The cgroup directories this process is in, one per cgroup2 mount that shows it.
fn candidates() -> Vec<PathBuf> {
    let Ok(own) = fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let Some(own) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Vec::new();
    };
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            if after.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = before.split_whitespace();
            let root = fields.nth(3)?;
            let point = fields.next()?;
            if point.contains('\\') || root.contains('\\') {
                // An escaped (unusual) path: not worth decoding.
                return None;
            }
            // The mount shows the hierarchy from `root` down.
            let rel = if root == "/" {
                own
            } else {
                own.strip_prefix(root)
                    .filter(|r| r.is_empty() || r.starts_with('/'))?
            };
            Some(Path::new(point).join(rel.trim_start_matches('/')))
        })
        .collect()
}

/// Removes the empty leaves that procpool processes no longer running left under
/// `base` (a pool process that ended without dropping its pool: a panic that
/// aborted, `std::process::exit`, a `SIGKILL`). A leaf still holding processes, or of
/// a process that runs (or of a pid reused since), is left alone; `rmdir` fails on a
/// populated cgroup in any case.
fn sweep(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("procpool-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the pid exists.
        let exists = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !exists && is_empty(&entry.path()) {
            remove_tree(&entry.path());
        }
    }
}

/// Whether leaves under `base` can be made, populated, killed and removed.
fn probe(base: &Path) -> bool {
    // Threads may probe at once (the first use is not serialized): each its own dir.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("procpool-{}-probe{n}", std::process::id()));
    if fs::create_dir(&dir).is_err() {
        return false;
    }
    let works = probe_leaf(&dir);
    let _ = fs::remove_dir(&dir);
    works
}

fn probe_leaf(dir: &Path) -> bool {
    if !dir.join("cgroup.kill").exists() {
        return false;
    }
    let Ok(procs) = OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
    else {
        return false;
    };
    let fd = procs.as_raw_fd();
    // SAFETY: the child makes only async-signal-safe calls (write, _exit) on integers
    // and a static byte string, then ends; the parent only waits for it.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            let moved = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::_exit(if moved { 0 } else { 1 });
        }
    }
    if pid < 0 {
        return false;
    }
    let status = loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    matches!(status, Ok(nix::sys::wait::WaitStatus::Exited(_, 0)))
        && fs::write(dir.join("cgroup.kill"), "1").is_ok()
}

/// A cgroup leaf for one child: killed and removed when dropped.
#[derive(Debug)]
pub(crate) struct Leaf {
    dir: PathBuf,
    /// The leaf's `cgroup.procs`, open for the child to move itself in.
    procs: Option<OwnedFd>,
}

impl Leaf {
    /// A new leaf, if this process uses leaves and one can be made (else `None`: the
    /// child runs without, under the other mechanisms).
    pub(crate) fn create() -> Option<Leaf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = base()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("procpool-{}-{n}", std::process::id()));
        fs::create_dir(&dir).ok()?;
        // (Dropped on an error below: removed.)
        let mut leaf = Leaf { dir, procs: None };
        let procs = OpenOptions::new()
            .write(true)
            .open(leaf.dir.join("cgroup.procs"))
            .ok()?;
        leaf.procs = Some(procs.into());
        Some(leaf)
    }

    /// The descriptor a child writes `0` to, to move itself into the leaf.
    pub(crate) fn procs_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// A copy of the `cgroup.procs` descriptor, for a start that may outlive this leaf's
    /// requester (see [`ChildStdio::try_clone`](crate::output::ChildStdio::try_clone)).
    pub(crate) fn procs_copy(&self) -> Option<OwnedFd> {
        self.procs.as_ref()?.try_clone().ok()
    }

    /// Closes the `cgroup.procs` descriptor (once the child has been started).
    pub(crate) fn close_procs(&mut self) {
        self.procs = None;
    }

    /// Lets the leaf be, with whatever runs in it (a child that outlives the pool).
    pub(crate) fn leave(mut self) {
        self.procs = None;
        self.dir = PathBuf::new();
    }

    /// Kills every process in the leaf.
    pub(crate) fn kill(&self) {
        kill_dir(&self.dir);
    }

    /// The leaf's directory.
    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        self.procs = None;
        if self.dir.as_os_str().is_empty() {
            return;
        }
        kill_dir(&self.dir);
        // Killed processes leave within a moment: wait that long (bounded) for the leaf
        // to empty, so that it is gone now, not only if this process lives on.
        let until = Instant::now() + DROP_WAIT;
        while !is_empty(&self.dir) && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(250));
        }
        if !remove_tree(&self.dir) {
            remove_in_background(std::mem::take(&mut self.dir));
        }
    }
}

fn kill_dir(dir: &Path) {
    if let Ok(mut kill) = OpenOptions::new().write(true).open(dir.join("cgroup.kill")) {
        let _ = kill.write_all(b"1");
    }
}

/// Removes `dir` and the cgroups below it (a child that starts a pool of its own makes
/// its leaves inside its own; `cgroup.kill` killed them all with it), deepest first.
/// Returns whether `dir` is gone. Bounded in depth: a cgroup tree is at most
/// `cgroup.max.depth` deep, and this stops at 64.
fn remove_tree(dir: &Path) -> bool {
    fn remove(dir: &Path, depth: usize) -> bool {
        if depth < 64 {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&entry.path(), depth + 1);
                    }
                }
            }
        }
        fs::remove_dir(dir).is_ok() || !dir.exists()
    }
    remove(dir, 0)
}

/// Whether `cgroup.events` says the leaf holds no process.
fn is_empty(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l == "populated 0"))
        .unwrap_or(true)
}

/// Hands a leaf that is not empty yet to a thread that kills it again and removes it
/// once it is, retried for at most [`REMOVE_BOUND`] (then it is left).
fn remove_in_background(dir: PathBuf) {
    static REMOVER: PerProcess<std::sync::Mutex<mpsc::Sender<PathBuf>>> = PerProcess::new();
    let tx = REMOVER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let _ = std::thread::Builder::new()
            .name("procpool-cgroup".into())
            .spawn(move || {
                let mut pending: Vec<(PathBuf, Instant)> = Vec::new();
                loop {
                    if pending.is_empty() {
                        match rx.recv() {
                            Ok(dir) => pending.push((dir, Instant::now() + REMOVE_BOUND)),
                            Err(_) => return,
                        }
                    }
                    let now = Instant::now();
                    pending.extend(rx.try_iter().map(|dir| (dir, now + REMOVE_BOUND)));
                    pending.retain(|(dir, until)| {
                        if is_empty(dir) && remove_tree(dir) {
                            return false;
                        }
                        kill_dir(dir);
                        now < *until
                    });
                    if !pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            });
        std::sync::Mutex::new(tx)
    });
    if let Ok(tx) = tx.lock() {
        let _ = tx.send(dir);
    }
}

/// Moves the calling process into the leaf whose `cgroup.procs` is open on `fd`.
/// Async-signal-safe. A failure is ignored: the child still runs under the other
/// mechanisms.
pub(crate) fn enter(fd: RawFd) {
    // SAFETY: write(2) of one byte from a static string to a descriptor the caller
    // holds open.
    unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_empty_leaves_of_dead_pools_only() {
        let Some(base) = base() else {
            eprintln!("SKIPPED: no writable cgroup v2 hierarchy here");
            return;
        };
        // A pid that is gone: a child of ours, reaped.
        // SAFETY: the child only calls _exit.
        let dead = unsafe { libc::fork() };
        if dead == 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        assert!(dead > 0);
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(dead), None).unwrap();
        let stale = base.join(format!("procpool-{dead}-7"));
        let live = base.join(format!("procpool-{}-sweep", std::process::id()));
        fs::create_dir(&stale).unwrap();
        fs::create_dir(&live).unwrap();
        sweep(base);
        let (stale_gone, live_kept) = (!stale.exists(), live.exists());
        let _ = fs::remove_dir(&stale);
        let _ = fs::remove_dir(&live);
        assert!(stale_gone, "a dead pool's empty leaf was kept");
        assert!(live_kept, "a live pool's leaf was removed");
    }

    #[test]
    fn a_leaf_holds_its_child_and_goes_when_dropped() {
        let Some(base) = base() else {
            eprintln!("SKIPPED: no writable cgroup v2 hierarchy here");
            return;
        };
        let leaf = Leaf::create().expect("a leaf");
        let dir = leaf.dir().to_path_buf();
        assert!(dir.starts_with(base));
        let fd = leaf.procs_fd().expect("open cgroup.procs");
        // SAFETY: the child calls only write (through `enter`), pause and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            enter(fd);
            // SAFETY: as above.
            unsafe {
                libc::pause();
                libc::_exit(0);
            }
        }
        assert!(pid > 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut procs = String::new();
        while procs.trim().is_empty() && Instant::now() < deadline {
            procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(procs.trim(), pid.to_string());
        drop(leaf);
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        assert!(matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!dir.exists(), "the leaf was not removed");
    }
}
