//! How worker processes are started, and what every child does before it runs.

pub(crate) mod after_exec;
pub(crate) mod cgroup;
pub(crate) mod child;
pub(crate) mod fds;
pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod names;
pub(crate) mod options;
pub(crate) mod posix_spawn;
pub(crate) mod spawn;
pub(crate) mod tree;

use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;

use nix::unistd::Pid;

pub(crate) use names::{ChildKind, Label};
pub(crate) use options::ChildOptions;

/// How a pool starts its worker processes (Python's start methods).
///
/// The default on Linux is [`ForkServer`](StartMethod::ForkServer): it is as safe as
/// [`Spawn`](StartMethod::Spawn) — workers are forked from a clean single-threaded
/// process, never from the caller's multi-threaded one — and starts or replaces a
/// worker at the cost of a `fork` rather than an `exec`. Python 3.14 made the same
/// move, from `fork` to `forkserver`, because forking a threaded process is hazardous;
/// a Tokio program always is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// Run this executable again (`/proc/self/exe`) with a marker in its environment;
    /// procpool's constructor sees it and enters the worker loop before `main`, before
    /// the program's own code runs (no line is needed in `main`; [`init`](crate::init)
    /// and [`enable_test_support!`](crate::enable_test_support) are the explicit forms).
    ///
    /// Each worker is a fresh process: nothing of the parent's state is shared, and no
    /// lock held by a parent thread can be inherited. Static constructors that run
    /// before procpool's run in every worker too (and, where constructors are dropped,
    /// what runs before an explicit `init()` in `main`). Starting a worker costs an
    /// `exec` and the program's start-up, whatever the parent's size: the child is
    /// started with `posix_spawn`, which does not copy the parent's page tables, and
    /// sets itself up (its cgroup leaf, dying with the parent, niceness, memory limit)
    /// in procpool's constructor, before the program's code runs.
    Spawn,
    /// Fork the calling process for each worker.
    ///
    /// Fast, needs no entry line, and a worker inherits the parent's memory (its tables,
    /// its loaded data) copy-on-write. **But forking a multi-threaded process is
    /// hazardous**, and any process running Tokio is multi-threaded: the child has only
    /// the forking thread, and a lock that another thread held at that instant stays
    /// held forever in the child. glibc's `malloc` protects itself, but Rust's
    /// `stdout`/`stderr` locks, a `Mutex` of your program, a logger, or a C library's
    /// internal lock do not: a task that takes such a lock can hang (its timeout, if
    /// set, kills it). The forked worker never touches the parent's runtime (its loop
    /// is blocking), resets the parent's signal handlers, and closes every inherited
    /// descriptor but its channel and the standard three. One consequence: a task in a
    /// forked pool worker cannot build a Tokio runtime with I/O enabled, because Tokio's
    /// I/O driver joins a process-wide signal pipe that belongs to the parent (the build
    /// fails with an error; a runtime with only `enable_time()` works). A forked
    /// [`Process`](crate::Process) child gives that pipe's number a pipe of its own, so
    /// that its function can build a runtime and start processes of its own (signals do
    /// not reach such a runtime: `tokio::signal` believes the parent's handlers in
    /// place). Prefer
    /// [`ForkServer`](StartMethod::ForkServer) unless you need the parent's in-memory
    /// state in the workers and know which locks the tasks touch.
    Fork,
    /// Fork workers from a fork server: a clean exec of this executable that stays
    /// single-threaded, never starts Tokio, and forks a worker on request, handing it
    /// its channel over a Unix socket (`SCM_RIGHTS`). One server per pool; a
    /// [`preload`](crate::PoolBuilder::forkserver_preload) hook runs once in it, so
    /// every worker starts warm. If the server dies, its workers die with it (their
    /// tasks fail; queued work waits) and the pool starts a new server. Like `Spawn`,
    /// it runs this executable again, and needs no line in `main`: procpool's
    /// constructor enters the server before `main` runs (see the crate docs, "The
    /// worker entry"; [`init`](crate::init) is the explicit form).
    #[default]
    ForkServer,
}

/// A connected pair of sockets for a worker's channel, with send and receive buffers
/// as large as the system allows up to 4 MiB: a 16 MiB argument then crosses in a
/// few writes rather than eighty, each of which costs both processes a wake-up.
pub(crate) fn channel_pair() -> io::Result<(UnixStream, UnixStream)> {
    use nix::sys::socket::{setsockopt, sockopt};
    const BUFFER: usize = 4 << 20;
    let (a, b) = UnixStream::pair()?;
    for end in [&a, &b] {
        // Best effort: the kernel caps these at net.core.[wr]mem_max.
        let _ = setsockopt(end, sockopt::SndBuf, &BUFFER);
        let _ = setsockopt(end, sockopt::RcvBuf, &BUFFER);
    }
    Ok((a, b))
}

/// Runs in a freshly forked child that will not exec (`StartMethod::Fork`, a fork
/// server's workers): moves it into its cgroup leaf if it has one, puts `stdio` on
/// descriptors 0, 1 and 2 and its channel on `target`, makes it the leader of a
/// process group of its own, and [`settle`]s it (a child subreaper, so that its
/// descendants can be found and killed with it: see [`tree`]; dying with the parent;
/// the resource settings).
///
/// Only async-signal-safe calls are allowed here: the parent may have had other threads,
/// which do not exist in the child, holding locks (of the allocator, say).
pub(crate) fn child_setup(
    fd: RawFd,
    target: RawFd,
    stdio: [RawFd; 3],
    parent: Pid,
    opts: &ChildOptions,
) -> io::Result<()> {
    // Into its cgroup leaf before anything else: from here on, nothing it starts can
    // leave the leaf (see [`cgroup`]).
    if let Some(procs) = opts.cgroup_procs {
        cgroup::enter(procs);
    }
    // Sources are first copied above every target (close-on-exec, so the copies do not
    // outlive an exec), so that placing one cannot overwrite another still to be
    // placed, and none is its own target (`dup2` onto itself would keep the
    // close-on-exec flag).
    const ABOVE: libc::c_int = 10;
    // SAFETY: each call below is a plain syscall wrapper on integers owned by this
    // child; none reads or writes memory of ours except through arguments passed by
    // value.
    unsafe {
        let high = |fd: RawFd| -> io::Result<RawFd> {
            let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, ABOVE);
            if copy < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(copy)
        };
        let channel = high(fd)?;
        let stdio = [high(stdio[0])?, high(stdio[1])?, high(stdio[2])?];
        for (target, source) in (0..).zip(stdio) {
            if libc::dup2(source, target) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if libc::dup2(channel, target) < 0 {
            return Err(io::Error::last_os_error());
        }
        // Its own group (a spawned child's is set by `posix_spawn`).
        if libc::setpgid(0, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    settle(parent, opts.outlive_parent, opts.nice, opts.memory_limit)
}

/// What every child does for itself once it is in its own process group: becomes the
/// reaper of its orphaned descendants (so that every process it starts stays in its
/// subtree while it lives), arranges to die with `parent` unless it is to outlive it,
/// and applies its niceness and memory limit. A forked child calls it from
/// [`child_setup`]; a spawned one first thing after the exec (see [`after_exec`]).
///
/// If `parent` is gone by the time the parent-death signal is armed, no signal will
/// ever come: the child exits at once (`_exit(1)`).
///
/// Async-signal-safe: it makes plain syscalls and allocates nothing.
pub(crate) fn settle(
    parent: Pid,
    outlive_parent: bool,
    nice: Option<i32>,
    memory_limit: Option<u64>,
) -> io::Result<()> {
    // SAFETY: each call below is a plain syscall wrapper on integers, or on a local
    // `rlimit` passed by reference for the call only.
    unsafe {
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) < 0 {
            return Err(io::Error::last_os_error());
        }
        if !outlive_parent {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the line above took effect; then no
            // signal will ever come, so leave now.
            if libc::getppid() != parent.as_raw() {
                libc::_exit(1);
            }
        }
        if let Some(nice) = nice {
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(bytes) = memory_limit {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}
