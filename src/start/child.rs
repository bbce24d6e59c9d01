//! A child process the pool owns: async wait through a pidfd, kill, and a guarantee
//! that it is reaped.
//!
//! Waiting uses a pidfd (Linux 5.3+) registered with Tokio's reactor: it becomes
//! readable when the child exits, and only then do we call `waitpid(WNOHANG)`, so no
//! SIGCHLD handler is installed and other users of `waitpid` are not disturbed.
//!
//! A `ChildProc` dropped before its child was reaped kills the child and hands its pid
//! to a reaper thread, which polls `waitpid(WNOHANG)` until the zombie is gone. That is
//! what lets `Drop for Pool` (which may run outside any runtime) promise no zombies.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use crate::error::WorkerExit;

/// A child process, reaped exactly once.
#[derive(Debug)]
pub(crate) struct ChildProc {
    pid: Pid,
    pidfd: AsyncFd<OwnedFd>,
    exit: Option<WorkerExit>,
}

impl ChildProc {
    /// Takes ownership of `pid`, which must be an unreaped child of this process.
    ///
    /// Must be called within a Tokio runtime.
    pub(crate) fn new(pid: u32) -> io::Result<Self> {
        let pid = Pid::from_raw(pid as i32);
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1;
        // it touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            let _ = kill(pid, Signal::SIGKILL);
            reap_in_background(pid);
            return Err(err);
        }
        // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: `fd` is an open pidfd owned by the `OwnedFd` that the `AsyncFd` takes
        // over; nothing else closes or replaces it while the `AsyncFd` lives.
        let registered =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        let pidfd = match registered {
            Ok(fd) => fd,
            Err(err) => {
                let _ = kill(pid, Signal::SIGKILL);
                reap_in_background(pid);
                return Err(io::Error::other(err.to_string()));
            }
        };
        Ok(ChildProc {
            pid,
            pidfd,
            exit: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// How the child ended, once it has been reaped.
    pub(crate) fn exit(&self) -> Option<WorkerExit> {
        self.exit
    }

    /// Reaps the child if it has exited.
    pub(crate) fn try_wait(&mut self) -> Option<WorkerExit> {
        if self.exit.is_none() {
            self.exit = try_reap(self.pid);
        }
        self.exit
    }

    /// Polls for the child's exit.
    pub(crate) fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<WorkerExit> {
        loop {
            if let Some(exit) = self.try_wait() {
                return Poll::Ready(exit);
            }
            match ready!(self.pidfd.poll_read_ready(cx)) {
                Ok(mut guard) => {
                    if let Some(exit) = try_reap(self.pid) {
                        self.exit = Some(exit);
                        return Poll::Ready(exit);
                    }
                    guard.clear_ready();
                }
                // The reactor is gone: nothing can wake us again.
                Err(_) => return Poll::Pending,
            }
        }
    }

    /// Waits for the child's exit.
    pub(crate) async fn wait(&mut self) -> WorkerExit {
        std::future::poll_fn(|cx| self.poll_wait(cx)).await
    }

    /// Sends `signal` unless the child was already reaped.
    pub(crate) fn signal(&self, signal: Signal) {
        // The pid cannot have been reused: it stays ours until we reap it.
        if self.exit.is_none() {
            let _ = kill(self.pid, signal);
        }
    }

    /// Kills the child and waits for it, at most `bound` (then leaves it to the reaper
    /// thread, which `Drop` hands it to).
    pub(crate) async fn kill_and_reap(&mut self, bound: Duration) -> Option<WorkerExit> {
        self.signal(Signal::SIGKILL);
        tokio::time::timeout(bound, self.wait()).await.ok()
    }

    /// Asks the child to leave with `SIGTERM`, then kills it after `grace`.
    pub(crate) async fn terminate(&mut self, grace: Duration) -> Option<WorkerExit> {
        self.signal(Signal::SIGTERM);
        if let Ok(exit) = tokio::time::timeout(grace, self.wait()).await {
            return Some(exit);
        }
        self.kill_and_reap(REAP_BOUND).await
    }
}

/// How long we wait for a SIGKILLed child to be reapable before leaving it to the
/// reaper thread.
pub(crate) const REAP_BOUND: Duration = Duration::from_secs(5);

impl Drop for ChildProc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
            reap_in_background(self.pid);
        }
    }
}

fn try_reap(pid: Pid) -> Option<WorkerExit> {
    loop {
        return match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(WorkerExit::Code(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(WorkerExit::Signal(signal as i32)),
            Ok(_) => None,
            Err(Errno::EINTR) => continue,
            // Not our child (any more): someone else reaped it; report it as gone.
            Err(_) => Some(WorkerExit::Code(-1)),
        };
    }
}

/// Hands a killed child to the reaper thread.
pub(crate) fn reap_in_background(pid: Pid) {
    static REAPER: OnceLock<mpsc::Sender<Pid>> = OnceLock::new();
    let tx = REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Pid>();
        let spawned = std::thread::Builder::new()
            .name("procpool-reaper".into())
            .spawn(move || {
                let mut pending: Vec<Pid> = Vec::new();
                loop {
                    if pending.is_empty() {
                        match rx.recv() {
                            Ok(pid) => pending.push(pid),
                            Err(_) => return,
                        }
                    }
                    pending.extend(rx.try_iter());
                    pending.retain(|pid| try_reap(*pid).is_none());
                    if !pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            });
        if spawned.is_err() {
            // No thread: the zombie is reaped when this process exits.
        }
        tx
    });
    let _ = tx.send(pid);
}
