//! Start method `Fork`, and the life of every forked worker (also the fork server's).
//!
//! Forking a process that runs threads is hazardous: the child has one thread, and a
//! lock another thread held at the fork stays held forever in the child. glibc's
//! `malloc` guards itself with fork handlers, so the child can allocate; Rust's
//! `stdout` lock, a `Mutex` in the program, or a C library's lock have no such guard.
//! The forked worker therefore never touches the parent's Tokio runtime (its loop is
//! blocking), resets every signal handler the parent installed (Tokio's, for one, would
//! write into descriptors that no longer mean the same thing), and closes every
//! inherited descriptor but its channel and the standard three.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::unistd::{fork, ForkResult, Pid};

use crate::start::child::{ChildProc, NewChild};
use crate::start::spawn::{on_spawner_thread, WORKER_FD};
use crate::start::{child_setup, ChildOptions};

/// Starts a worker by forking this process (on the spawner thread).
pub(crate) async fn fork_worker(opts: ChildOptions) -> io::Result<(ChildProc, UnixStream)> {
    let (ours, theirs) = crate::start::channel_pair()?;
    let parent = nix::unistd::getpid();
    crate::worker::install_panic_hook();
    let pid = on_spawner_thread(move || -> io::Result<NewChild> {
        // SAFETY: the child runs only `forked_worker`, which starts with
        // async-signal-safe calls, then runs the worker loop on this one thread without
        // touching the parent's runtime; see the module docs for what it may still
        // meet (locks held by other threads of the parent), which the `Fork` variant
        // documents for users.
        match unsafe { fork() }.map_err(io::Error::from)? {
            ForkResult::Child => forked_worker(theirs.as_raw_fd(), parent, &opts),
            ForkResult::Parent { child } => {
                drop(theirs);
                Ok(NewChild::new(child.as_raw() as u32))
            }
        }
    })
    .await??;
    Ok((ChildProc::new(pid.claim())?, ours))
}

/// The life of a forked worker, from the fork to `_exit`: it never returns.
///
/// `fd` is its channel; `parent` the process that forked it.
pub(crate) fn forked_worker(fd: RawFd, parent: Pid, opts: &ChildOptions) -> ! {
    if child_setup(fd, WORKER_FD, parent, opts).is_err() {
        // SAFETY: _exit ends the process at once; nothing of ours is left to run.
        unsafe { libc::_exit(1) };
    }
    reset_signal_handlers();
    // Descriptors above the channel are the parent's (its runtime's, its files, its
    // other workers' channels): this process has no use for them, and must not keep
    // the parent's sockets open. If they cannot be closed, it must not run at all.
    if crate::start::fds::close_from(WORKER_FD + 1, false).is_err() {
        // SAFETY: _exit ends the process at once.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: `child_setup` put our channel on WORKER_FD and nothing else owns it.
    let channel = unsafe { OwnedFd::from_raw_fd(WORKER_FD) };
    let _ = nix::fcntl::fcntl(
        &channel,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let code = crate::worker::serve(UnixStream::from(channel));
    // What its tasks started dies with it (`_exit` runs no atexit hook).
    crate::start::tree::kill_own_subtree();
    // `_exit`, not `exit`: the parent's atexit handlers and buffers are not ours to run
    // or flush a second time.
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Puts every caught signal back to its default action and unblocks all signals.
/// Ignored signals stay ignored, as across `exec`.
fn reset_signal_handlers() {
    // SAFETY: sigaction and sigprocmask are async-signal-safe; the structures passed
    // are zero-initialised locals valid for each call.
    unsafe {
        for signal in 1..libc::SIGRTMAX() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}
