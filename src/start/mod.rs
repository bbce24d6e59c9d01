//! How worker processes are started, and what every child does before it runs.

pub(crate) mod child;
pub(crate) mod spawn;

use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;

use nix::unistd::Pid;

use self::child::ChildProc;

/// How a pool starts its worker processes (Python's start methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// Run this executable again (`/proc/self/exe`) with a marker in its environment;
    /// [`init`](crate::init) (or [`enable_test_support!`](crate::enable_test_support))
    /// sees it and enters the worker loop before the program's own code runs.
    ///
    /// Each worker is a fresh process: nothing of the parent's state is shared, and no
    /// lock held by a parent thread can be inherited. What runs before `init()` in
    /// `main` (and any static constructors) runs in every worker too.
    #[default]
    Spawn,
}

/// Settings applied in a child between fork and exec.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChildOptions {
    pub(crate) nice: Option<i32>,
    pub(crate) memory_limit: Option<u64>,
}

/// Starts one worker; returns the child and our end of its channel.
pub(crate) async fn start_worker(
    method: StartMethod,
    opts: ChildOptions,
) -> io::Result<(ChildProc, UnixStream)> {
    match method {
        StartMethod::Spawn => spawn::spawn_worker(opts).await,
    }
}

/// Runs in a freshly forked child: puts its channel on `target`, arranges to die with
/// the parent, and applies the resource settings.
///
/// Only async-signal-safe calls are allowed here: the parent may have had other threads,
/// which do not exist in the child, holding locks (of the allocator, say).
pub(crate) fn child_setup(
    fd: RawFd,
    target: RawFd,
    parent: Pid,
    opts: &ChildOptions,
) -> io::Result<()> {
    // SAFETY: each call below is a plain syscall wrapper on integers owned by this
    // child; none reads or writes memory of ours except through arguments passed by
    // value.
    unsafe {
        if fd == target {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
        } else if libc::dup2(fd, target) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died before the line above took effect; then no signal
        // will ever come, so leave now.
        if libc::getppid() != parent.as_raw() {
            libc::_exit(1);
        }
        if let Some(nice) = opts.nice {
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(bytes) = opts.memory_limit {
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
