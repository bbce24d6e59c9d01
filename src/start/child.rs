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

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::error::WorkerExit;
use crate::per_process::PerProcess;
use crate::start::cgroup::Leaf;
use crate::start::tree;

/// A worker process, reaped exactly once, by us or by the fork server.
#[derive(Debug)]
pub(crate) struct ChildProc {
    pid: Pid,
    pidfd: AsyncFd<OwnedFd>,
    exit: Option<WorkerExit>,
    /// `Some` when the process is a child of a fork server, which reaps it and reports
    /// how it ended on the receiver; `Some(None)` once the server is gone unheard.
    remote: Option<Option<oneshot::Receiver<WorkerExit>>>,
    /// Whether dropping this kills the process (it always ends up reaped).
    kill_on_drop: bool,
    /// The child's cgroup leaf, if it has one: killed first at every kill, killed again
    /// and removed once the child is seen gone.
    leaf: Option<Leaf>,
    /// For a launcher of a worker on another machine: how the worker there ended, once
    /// its keeper said, which is the exit this child reports.
    reported: Option<Reported>,
}

/// How a process this child stands for ended, once known (see
/// [`ChildProc::with_reported_exit`]).
#[derive(Clone)]
pub(crate) struct Reported(pub(crate) std::sync::Arc<dyn Fn() -> Option<WorkerExit> + Send + Sync>);

impl std::fmt::Debug for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reported")
    }
}

impl ChildProc {
    /// Takes ownership of `pid`, which must be an unreaped child of this process.
    ///
    /// Must be called within a Tokio runtime.
    pub(crate) fn new(pid: u32) -> io::Result<Self> {
        Self::open(pid, None)
    }

    /// Takes charge of `pid`, a child of a fork server that reaps it and sends its
    /// status on `status`.
    pub(crate) fn remote(pid: u32, status: oneshot::Receiver<WorkerExit>) -> io::Result<Self> {
        Self::open(pid, Some(status))
    }

    fn open(pid: u32, remote: Option<oneshot::Receiver<WorkerExit>>) -> io::Result<Self> {
        let remote = remote.map(Some);
        let is_ours = remote.is_none();
        let pid = Pid::from_raw(pid as i32);
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1;
        // it touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            if is_ours {
                let _ = kill(pid, Signal::SIGKILL);
                reap_in_background(pid);
            }
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
                if is_ours {
                    let _ = kill(pid, Signal::SIGKILL);
                    reap_in_background(pid);
                }
                return Err(io::Error::other(err.to_string()));
            }
        };
        Ok(ChildProc {
            pid,
            pidfd,
            exit: None,
            remote,
            kill_on_drop: true,
            leaf: None,
            reported: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Marks the child as the launcher (`ssh`, `srun`) of a worker on another machine:
    /// the exit it reports is the one `reported` gives, when it gives one by the time
    /// the child is reaped; and it is killed as a launcher must be, with `SIGTERM`
    /// alone first (on which `ssh` closes its connection and `srun` cancels its step,
    /// and so the far end ends the worker), then `SIGKILL` to it alone (never to its
    /// tree: `srun`'s own helper cancels the job when `srun` is killed).
    pub(crate) fn with_reported_exit(mut self, reported: Reported) -> Self {
        self.reported = Some(reported);
        self
    }

    /// `exit`, or the reported exit of the process this child stands for.
    fn as_reported(&self, exit: WorkerExit) -> WorkerExit {
        self.reported.as_ref().and_then(|r| (r.0)()).unwrap_or(exit)
    }

    /// Gives the child its cgroup leaf (which it entered, or will enter, itself).
    pub(crate) fn with_leaf(mut self, leaf: Option<Leaf>) -> Self {
        self.leaf = leaf;
        self
    }

    /// The child is gone: what it left in its leaf dies (as its group does, at the
    /// reap, whether or not it was detached), and the leaf goes.
    fn gone(&mut self) {
        if self.exit.is_some() {
            // (Dropping kills it, and removes it now or from a background thread.)
            self.leaf = None;
        }
    }

    /// How the child ended, once it has been reaped.
    pub(crate) fn exit(&self) -> Option<WorkerExit> {
        self.exit
    }

    /// Reaps the child if it has exited (for a fork server's child: if its status has
    /// been reported).
    pub(crate) fn try_wait(&mut self) -> Option<WorkerExit> {
        if self.exit.is_none() {
            self.exit = match &mut self.remote {
                None => try_reap(self.pid).map(|exit| self.as_reported(exit)),
                Some(Some(status)) => match status.try_recv() {
                    Ok(exit) => Some(exit),
                    Err(oneshot::error::TryRecvError::Empty) => None,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        self.remote = Some(None);
                        self.pidfd_readable().then_some(WorkerExit::Unknown)
                    }
                },
                // The server is gone without telling; the pidfd says whether the
                // process is.
                Some(None) => self.pidfd_readable().then_some(WorkerExit::Unknown),
            };
            self.gone();
        }
        self.exit
    }

    fn pidfd_readable(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.pidfd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) > 0 }
    }

    /// Polls for the child's exit.
    ///
    /// Cheap while the child runs: no system call until the pidfd reports the exit
    /// (the driver polls this at every event).
    pub(crate) fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<WorkerExit> {
        let polled = self.poll_exit(cx);
        if polled.is_ready() {
            self.gone();
        }
        polled
    }

    fn poll_exit(&mut self, cx: &mut Context<'_>) -> Poll<WorkerExit> {
        if let Some(exit) = self.exit {
            return Poll::Ready(exit);
        }
        loop {
            match &mut self.remote {
                // The server reports soon after the process ends.
                Some(Some(status)) => match ready!(Pin::new(status).poll(cx)) {
                    Ok(exit) => {
                        self.exit = Some(exit);
                        return Poll::Ready(exit);
                    }
                    Err(_) => {
                        self.remote = Some(None);
                        continue;
                    }
                },
                // No report will come: the pidfd alone says when it is gone.
                Some(None) => {
                    if let Ok(mut guard) = ready!(self.pidfd.poll_read_ready(cx)) {
                        guard.retain_ready();
                    }
                    self.exit = Some(WorkerExit::Unknown);
                    return Poll::Ready(WorkerExit::Unknown);
                }
                None => {}
            }
            match ready!(self.pidfd.poll_read_ready(cx)) {
                Ok(mut guard) => {
                    if let Some(exit) = try_reap(self.pid) {
                        let exit = self.as_reported(exit);
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

    /// Sends `signal` unless the child is known to have ended. `SIGKILL` kills the
    /// child's whole tree (see [`tree`](crate::start::tree)).
    pub(crate) fn signal(&self, signal: Signal) {
        if self.exit.is_none() {
            if signal == Signal::SIGKILL {
                self.kill_tree();
            } else {
                send_signal(&self.pidfd, signal);
            }
        }
    }

    /// Kills the child, its descendants and its group (bounded by
    /// [`TREE_KILL_BOUND`](crate::start::tree::TREE_KILL_BOUND)).
    fn kill_tree(&self) {
        if self.reported.is_some() {
            send_signal(&self.pidfd, Signal::SIGTERM);
            return;
        }
        self.kill_leaf();
        // Its group may be killed even after it exited while we, its parent, have not
        // reaped it; a fork server's child is reaped by the server, which kills the
        // group itself first.
        let group_safe = self.remote.is_none();
        tree::kill_tree(self.pidfd.get_ref().as_fd(), self.pid.as_raw(), group_safe);
    }

    /// Kills every process in the child's leaf, if it has one: the child and all it
    /// started, wherever they moved.
    fn kill_leaf(&self) {
        if let Some(leaf) = &self.leaf {
            leaf.kill();
        }
    }

    /// Kills the child and waits for it, at most `bound` (then leaves it to the reaper
    /// thread, which `Drop` hands it to).
    ///
    /// The tree kill (up to [`TREE_KILL_BOUND`](tree::TREE_KILL_BOUND) for a large
    /// tree) runs on a blocking thread, not on the runtime's.
    pub(crate) async fn kill_and_reap(&mut self, bound: Duration) -> Option<WorkerExit> {
        if self.exit.is_none() && self.reported.is_some() {
            send_signal(&self.pidfd, Signal::SIGTERM);
            if let Ok(exit) = tokio::time::timeout(LAUNCHER_GRACE.min(bound), self.wait()).await {
                return Some(exit);
            }
            send_signal(&self.pidfd, Signal::SIGKILL);
            return tokio::time::timeout(bound, self.wait()).await.ok();
        }
        if self.exit.is_none() {
            self.kill_leaf();
            let (pid, group_safe) = (self.pid.as_raw(), self.remote.is_none());
            let killed = match self.pidfd.get_ref().try_clone() {
                Ok(pidfd) => tokio::task::spawn_blocking(move || {
                    tree::kill_tree(pidfd.as_fd(), pid, group_safe);
                })
                .await
                .is_ok(),
                Err(_) => false,
            };
            if !killed {
                self.kill_tree();
            }
        }
        tokio::time::timeout(bound, self.wait()).await.ok()
    }

    /// Asks the child to leave with `SIGTERM`, then kills it after `grace`.
    ///
    /// Its descendants get no grace: those it has when asked are held by pidfd and
    /// killed when it ends (whether it leaves in time or is killed).
    pub(crate) async fn terminate(&mut self, grace: Duration) -> Option<WorkerExit> {
        let held = if self.exit.is_none() {
            tree::signal_subtree(
                self.pid.as_raw(),
                0,
                std::time::Instant::now() + tree::TREE_KILL_BOUND,
            )
        } else {
            Vec::new()
        };
        self.signal(Signal::SIGTERM);
        let exit = match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => Some(exit),
            Err(_) => self.kill_and_reap(REAP_BOUND).await,
        };
        for pidfd in &held {
            tree::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
        }
        exit
    }
}

/// How long a launcher of a remote worker has to leave after `SIGTERM` before it is
/// killed (see [`ChildProc::with_reported_exit`]).
const LAUNCHER_GRACE: Duration = Duration::from_secs(3);

/// How long we wait for a SIGKILLed child to be reapable before leaving it to the
/// reaper thread.
pub(crate) const REAP_BOUND: Duration = Duration::from_secs(5);

impl ChildProc {
    /// Lets the process run on after this is dropped (it is still reaped).
    pub(crate) fn detach_on_drop(&mut self) {
        self.kill_on_drop = false;
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            if self.kill_on_drop {
                self.kill_tree();
            }
            if self.remote.is_none() {
                reap_in_background(self.pid);
            }
        }
        if !self.kill_on_drop {
            if let Some(leaf) = self.leaf.take() {
                // The child runs on: its leaf stays (it is not ours to kill), and is
                // left behind (the runtime that watched the child is going).
                leaf.leave();
            }
        }
        // (A leaf still held is dropped here: killed, and removed once empty.)
    }
}

/// Signals through the pidfd: unlike `kill(pid)`, it cannot reach another process that
/// reused the pid after a fork server reaped ours.
fn send_signal(pidfd: &AsyncFd<OwnedFd>, signal: Signal) {
    // SAFETY: pidfd_send_signal reads only its integer arguments (the siginfo pointer
    // is null); the descriptor is a pidfd we own.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.get_ref().as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Reaps `pid`, a child of ours, if it has exited; first kills its process group,
/// while its unreaped pid keeps the group's id from naming anyone else's.
fn try_reap(pid: Pid) -> Option<WorkerExit> {
    loop {
        // SAFETY: waitid writes into `info`, a zeroed local; WNOWAIT leaves the child
        // unreaped.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                pid.as_raw() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if rc == 0 && info.si_pid() == 0 {
                return None;
            }
            rc
        };
        if rc < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if rc == 0 {
            tree::kill_group(pid.as_raw());
        }
        break;
    }
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

/// A child just forked, not yet owned by a [`ChildProc`]: if it is dropped unclaimed
/// (its requester gave up waiting), the child is killed and reaped, never leaked.
#[derive(Debug)]
pub(crate) struct NewChild(Option<u32>);

impl NewChild {
    pub(crate) fn new(pid: u32) -> Self {
        NewChild(Some(pid))
    }

    /// Takes the pid, for a [`ChildProc`] to own.
    pub(crate) fn claim(mut self) -> u32 {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for NewChild {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let pid = Pid::from_raw(pid as i32);
            // The pid is an unreaped child of ours: it cannot have been reused.
            let _ = kill(pid, Signal::SIGKILL);
            reap_in_background(pid);
        }
    }
}

/// Hands a killed child to the reaper thread.
pub(crate) fn reap_in_background(pid: Pid) {
    static REAPER: PerProcess<mpsc::Sender<Pid>> = PerProcess::new();
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
