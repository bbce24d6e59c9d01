//! The keeper: what a launcher (`ssh`, `srun`, a command prefix) starts on the other
//! machine. It is this same executable, entered before `main` with the role
//! [`ROLE_REMOTE`](crate::start::spawn::ROLE_REMOTE), and it stands between the link
//! (its stdin and stdout, carried by the launcher) and a worker it forks over a
//! socketpair, exactly as a local worker is forked:
//!
//! - it relays bytes both ways, with bounded buffers and without blocking either way;
//! - it tells the pool who it is (host and the worker's pid) in a meta frame, and sends
//!   a heartbeat (an empty frame, between the worker's frames) whenever the link
//!   toward the pool has been quiet for the heartbeat interval, so that the pool can
//!   tell a silent link from a long task;
//! - when its stdin ends (the pool dropped the link, killed the launcher, or died), it
//!   kills the worker with its whole tree and exits: nothing outlives the link;
//! - when the worker dies, it passes on what the worker sent, reaps it, sends its exit
//!   status (code or signal) and the pid in a meta frame, kills what the worker left,
//!   and exits.
//!
//! It is single-threaded and runs before any runtime exists, so forking is safe.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::remote::wire::{self, Meta};
use crate::start::tree;

/// How much the keeper holds for each direction before it stops reading that way.
const BUFFER_LIMIT: usize = 1 << 20;
/// How much it reads at once.
const READ_CHUNK: usize = 64 << 10;
/// How long it waits for a worker whose channel closed to exit, before killing it.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Runs the keeper; returns its exit code. `heartbeat` is the interval of its
/// heartbeats toward the pool.
///
/// `body` is what the forked worker runs on its channel (the worker's loop, given by
/// the worker's entry, as to `start::fork`: this layer does not import the worker).
pub(crate) fn keeper_main(
    heartbeat: Duration,
    limits: crate::remote::Limits,
    body: crate::start::fork::ChildBody,
) -> i32 {
    match run(heartbeat, limits, body) {
        Ok(code) => code,
        Err(_) => {
            tree::kill_own_subtree();
            3
        }
    }
}

fn run(
    heartbeat: Duration,
    limits: crate::remote::Limits,
    body: crate::start::fork::ChildBody,
) -> io::Result<i32> {
    // Ctrl-C reaches the launcher's group, not the pool's decision; a write to a closed
    // link fails with EPIPE rather than kills.
    // SAFETY: SIG_IGN installs no handler code.
    unsafe {
        use nix::sys::signal::{signal, SigHandler, Signal};
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal(Signal::SIGPIPE, SigHandler::SigIgn);
    }
    // The link is stdin and stdout: keep them above the standard numbers, and give the
    // standard numbers /dev/null and stderr, so that nothing written to stdout by this
    // process or the worker's tasks can corrupt the link.
    let link_in = dup_high(0)?;
    let link_out = dup_high(1)?;
    let null = std::fs::File::open("/dev/null")?;
    dup2(null.as_raw_fd(), 0)?;
    dup2(2, 1)?;
    drop(null);
    for fd in [&link_in, &link_out] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
    }
    // The reaper of whatever the worker's tasks leave behind, so that it can kill it.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // A launcher that ends its far side (srun cancelling its step, sshd its session)
    // signals the keeper: it must end its worker first. Blocked here and read from a
    // signalfd in the relay's loop; the worker unblocks every signal after its fork.
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGTERM);
    mask.add(nix::sys::signal::Signal::SIGHUP);
    mask.thread_block()?;
    let signals = nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )?;
    let (ours, theirs) = crate::start::channel_pair()?;
    let worker = fork_worker(theirs, limits, body)?;
    let worker_fd = OwnedFd::from(ours);
    nix::fcntl::fcntl(
        &worker_fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let pidfd = tree::pidfd_open(worker).ok_or_else(io::Error::last_os_error)?;
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let mut relay = Relay::new(heartbeat);
    relay.to_pool.push_meta(&Meta::Hello {
        host,
        pid: worker as u32,
    });
    let end = relay.run(
        &link_in,
        &link_out,
        &worker_fd,
        pidfd.as_fd_ref(),
        signals.as_fd_ref(),
    )?;
    match end {
        End::LinkClosed => {
            tree::kill_tree(pidfd.as_fd_ref(), worker, true);
            // Reaped here, not left a zombie to whoever inherits it.
            let _ = reap(worker, EXIT_WAIT);
            tree::kill_own_subtree();
            Ok(0)
        }
        End::WorkerGone => {
            drop(worker_fd);
            let exit = reap(worker, EXIT_WAIT).unwrap_or_else(|| {
                tree::kill_tree(pidfd.as_fd_ref(), worker, true);
                reap(worker, EXIT_WAIT).unwrap_or(Meta::Exit {
                    pid: worker as u32,
                    kind: wire::EXIT_UNKNOWN,
                    value: 0,
                })
            });
            tree::kill_own_subtree();
            relay.to_pool.push_meta(&exit);
            relay.flush(&link_out, Instant::now() + EXIT_WAIT);
            Ok(0)
        }
    }
}

trait AsFdRef {
    fn as_fd_ref(&self) -> BorrowedFd<'_>;
}

impl<T: std::os::fd::AsFd> AsFdRef for T {
    fn as_fd_ref(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

/// Forks the worker on `channel`: the same child set-up as a local worker's (its own
/// group, a subreaper, dies with the keeper, its niceness and memory limit), then the
/// worker's loop.
fn fork_worker(
    channel: std::os::unix::net::UnixStream,
    limits: crate::remote::Limits,
    body: crate::start::fork::ChildBody,
) -> io::Result<i32> {
    let parent = nix::unistd::getpid();
    let opts = crate::start::ChildOptions {
        nice: limits.nice,
        memory_limit: limits.memory_limit,
        ..crate::start::ChildOptions::default()
    };
    // SAFETY: the keeper is single-threaded (it runs before `main`, in a process that
    // started no thread), so the child may do anything the parent could.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => crate::start::fork::forked_worker(
            channel.as_raw_fd(),
            [0, 2, 2],
            parent,
            &opts,
            None,
            None,
            body,
        ),
        pid => Ok(pid),
    }
}

/// Waits up to `bound` for the worker to exit, and reaps it: its exit as a meta frame.
fn reap(pid: i32, bound: Duration) -> Option<Meta> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + bound;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                return Some(Meta::Exit {
                    pid: pid as u32,
                    kind: wire::EXIT_CODE,
                    value: code,
                })
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Some(Meta::Exit {
                    pid: pid as u32,
                    kind: wire::EXIT_SIGNAL,
                    value: signal as i32,
                })
            }
            Ok(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(nix::errno::Errno::EINTR) => {}
            _ => return None,
        }
    }
}

/// Why the relay stopped.
enum End {
    LinkClosed,
    WorkerGone,
}

/// Records on their way toward the pool (see [`wire`]).
struct ToPool {
    buf: Vec<u8>,
}

impl ToPool {
    fn push_meta(&mut self, meta: &Meta) {
        wire::write_meta(meta, &mut self.buf);
    }

    /// Takes bytes the worker sent.
    fn push_worker(&mut self, bytes: &[u8]) {
        wire::write_data(bytes, &mut self.buf);
    }
}

struct Relay {
    heartbeat: Duration,
    to_pool: ToPool,
    to_worker: Vec<u8>,
    last_to_pool: Instant,
    /// The pool's frames, followed to take out its heartbeats.
    from_pool: wire::FrameTrack,
    last_from_pool: Instant,
}

impl Relay {
    fn new(heartbeat: Duration) -> Self {
        Relay {
            heartbeat,
            to_pool: ToPool { buf: Vec::new() },
            to_worker: Vec::new(),
            last_to_pool: Instant::now(),
            from_pool: wire::FrameTrack::default(),
            last_from_pool: Instant::now(),
        }
    }

    /// How long the pool may be silent: three of its heartbeat intervals, which are
    /// the keeper's (the pool's silence bound, the same way).
    fn silence(&self) -> Duration {
        self.heartbeat.saturating_mul(3)
    }

    fn run(
        &mut self,
        link_in: &OwnedFd,
        link_out: &OwnedFd,
        worker: &OwnedFd,
        pidfd: BorrowedFd<'_>,
        signals: BorrowedFd<'_>,
    ) -> io::Result<End> {
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut worker_open = true;
        loop {
            if self.last_to_pool.elapsed() >= self.heartbeat && self.to_pool.buf.is_empty() {
                wire::write_beat(&mut self.to_pool.buf);
            }
            let want_in = self.to_worker.len() < BUFFER_LIMIT;
            let want_worker = worker_open && self.to_pool.buf.len() < BUFFER_LIMIT;
            let mut fds = [
                pollfd(link_in.as_raw_fd(), if want_in { libc::POLLIN } else { 0 }),
                pollfd(
                    link_out.as_raw_fd(),
                    if self.to_pool.buf.is_empty() {
                        0
                    } else {
                        libc::POLLOUT
                    },
                ),
                pollfd(
                    worker.as_raw_fd(),
                    (if want_worker { libc::POLLIN } else { 0 })
                        | (if self.to_worker.is_empty() || !worker_open {
                            0
                        } else {
                            libc::POLLOUT
                        }),
                ),
                pollfd(pidfd.as_raw_fd(), libc::POLLIN),
                pollfd(signals.as_raw_fd(), libc::POLLIN),
            ];
            if self.last_from_pool.elapsed() >= self.silence() {
                // Nothing from the pool, not even a heartbeat: the link is dead though
                // its end never came (a launcher killed while its far side lives on).
                return Ok(End::LinkClosed);
            }
            let wait = self
                .heartbeat
                .saturating_sub(self.last_to_pool.elapsed())
                .min(self.silence().saturating_sub(self.last_from_pool.elapsed()))
                .max(Duration::from_millis(1));
            let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: `fds` is a valid array of pollfds for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let ready = |i: usize, what: libc::c_short| fds[i].revents & what != 0;
            let hangup = libc::POLLHUP | libc::POLLERR;
            if ready(4, libc::POLLIN) {
                // SIGTERM or SIGHUP: the far side of the link is ending.
                return Ok(End::LinkClosed);
            }
            // From the pool: to the worker.
            if ready(0, libc::POLLIN | hangup) {
                match read(link_in.as_raw_fd(), &mut chunk)? {
                    Some(0) => return Ok(End::LinkClosed),
                    Some(n) => {
                        self.last_from_pool = Instant::now();
                        let followed =
                            self.from_pool
                                .follow(&chunk[..n], true, &mut self.to_worker);
                        if followed.is_err() {
                            // Not the pool's frames: the link is broken.
                            return Ok(End::LinkClosed);
                        }
                    }
                    None => {}
                }
            }
            if ready(2, libc::POLLOUT) && !self.to_worker.is_empty() {
                match write(worker.as_raw_fd(), &self.to_worker) {
                    Ok(Some(n)) => {
                        self.to_worker.drain(..n);
                    }
                    Ok(None) => {}
                    // The worker is gone; its exit is seen through the pidfd.
                    Err(_) => worker_open = false,
                }
            }
            // From the worker: toward the pool.
            if worker_open && ready(2, libc::POLLIN | hangup) {
                match read(worker.as_raw_fd(), &mut chunk) {
                    Ok(Some(0)) | Err(_) => worker_open = false,
                    Ok(Some(n)) => self.to_pool.push_worker(&chunk[..n]),
                    Ok(None) => {}
                }
            }
            if ready(1, libc::POLLOUT | hangup) && !self.to_pool.buf.is_empty() {
                match write(link_out.as_raw_fd(), &self.to_pool.buf) {
                    Ok(Some(n)) => {
                        self.to_pool.buf.drain(..n);
                        self.last_to_pool = Instant::now();
                    }
                    Ok(None) => {}
                    Err(_) => return Ok(End::LinkClosed),
                }
            }
            if ready(3, libc::POLLIN) {
                // The worker exited: pass on what it sent before it did (what is in the
                // socket now, at most a bound of it: a descendant that kept the socket
                // may write on).
                let mut drained = 0usize;
                while worker_open && drained < BUFFER_LIMIT {
                    match read(worker.as_raw_fd(), &mut chunk) {
                        Ok(Some(n)) if n > 0 => {
                            self.to_pool.push_worker(&chunk[..n]);
                            drained += n;
                        }
                        _ => worker_open = false,
                    }
                }
                return Ok(End::WorkerGone);
            }
        }
    }

    /// Writes what is left toward the pool, until `deadline`.
    fn flush(&mut self, link_out: &OwnedFd, deadline: Instant) {
        while !self.to_pool.buf.is_empty() && Instant::now() < deadline {
            let mut fds = [pollfd(link_out.as_raw_fd(), libc::POLLOUT)];
            // SAFETY: as in `run`.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            match write(link_out.as_raw_fd(), &self.to_pool.buf) {
                Ok(Some(n)) => {
                    self.to_pool.buf.drain(..n);
                }
                Ok(None) => {}
                Err(_) => return,
            }
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// A non-blocking read: `None` when nothing is there yet.
fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    nonblocking(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// A non-blocking write: `None` when nothing could be written yet.
fn write(fd: RawFd, buf: &[u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for reads of its length for the duration of the call.
    nonblocking(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// What a non-blocking read or write returned: the count, `None` for "not now"
/// (`EAGAIN`, `EINTR`), or the error.
fn nonblocking(n: isize) -> io::Result<Option<usize>> {
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    match io::Error::last_os_error() {
        e if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
            Ok(None)
        }
        e => Err(e),
    }
}

/// A close-on-exec copy of `fd` above the standard numbers and the worker's channel.
fn dup_high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on an integer; the result is a new descriptor that only we own.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on integers.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::remote::wire::tests::frame;

    /// A worker that dies in the middle of a frame: its exit status still reaches
    /// the pool, after the half frame.
    #[test]
    fn an_exit_follows_even_half_a_frame() {
        let mut relay = Relay::new(Duration::from_secs(1));
        let whole = frame(b"hello world");
        relay.to_pool.push_worker(&whole[..6]);
        let exit = Meta::Exit {
            pid: 7,
            kind: wire::EXIT_SIGNAL,
            value: 9,
        };
        relay.to_pool.push_meta(&exit);
        let mut parser = wire::Parser::default();
        let mut out = Vec::new();
        let metas = parser.feed(&relay.to_pool.buf, &mut out).unwrap();
        assert_eq!(out, whole[..6]);
        assert_eq!(metas, [exit]);
    }
}
