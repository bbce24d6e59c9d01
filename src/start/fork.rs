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
use std::time::Duration;

use tokio::io::AsyncReadExt;

use nix::unistd::{fork, ForkResult, Pid};

use crate::output::ChildStdio;
use crate::start::child::{ChildProc, NewChild};
use crate::start::fds::SocketId;
use crate::start::spawn::{on_spawner_thread, WORKER_FD};
use crate::start::{child_setup, ChildOptions};

/// How many times a worker is forked again when the child finds a lock held.
const FORK_ATTEMPTS: u32 = 8;

/// How long a forked child's lock probe may take (see [`locks_are_free`]).
const PROBE_BOUND: Duration = Duration::from_millis(250);

/// Starts a worker by forking this process (on the spawner thread).
///
/// Forking lands at an arbitrary instant of the other threads of this process: one of
/// them may hold a lock of Rust's standard library that a worker needs (the lock taken
/// by every thread start and end and by `process::exit`, the environment's, stdout's).
/// The child inherits it held by a thread it does not have, and would hang the first
/// time it took it: in a task that calls `std::process::exit`, say, for ever. So each
/// child first checks that those locks can be taken ([`locks_are_free`]) and says so
/// on a pipe; a child that finds one held exits, and the worker is forked again, up to
/// [`FORK_ATTEMPTS`] times.
pub(crate) async fn fork_worker(
    opts: ChildOptions,
    stdio: ChildStdio,
    body: ChildBody,
) -> io::Result<(ChildProc, UnixStream)> {
    crate::panics::install_panic_hook();
    // Found before the fork: the child may not allocate. Only a `Process` child gets a
    // signal pipe of its own: it may start processes (with a runtime), while a pool's
    // worker is a daemon that may not, and holds nothing but stdio and its channel.
    let signal_pipe = match opts.kind {
        crate::start::ChildKind::Process => crate::start::fds::tokio_signal_pipe(),
        crate::start::ChildKind::Worker => None,
    };
    for _ in 0..FORK_ATTEMPTS {
        if let Some(started) = fork_once(opts, stdio.try_clone()?, signal_pipe, body).await? {
            return Ok(started);
        }
    }
    Err(io::Error::other(format!(
        "a forked worker found a lock of the standard library held by another thread \
         of this process at each of {FORK_ATTEMPTS} forks"
    )))
}

/// One fork; `None` if the child found a lock held (it has been killed and is reaped).
async fn fork_once(
    opts: ChildOptions,
    stdio: ChildStdio,
    signal_pipe: Option<SocketId>,
    body: ChildBody,
) -> io::Result<Option<(ChildProc, UnixStream)>> {
    let (ours, theirs) = crate::start::channel_pair()?;
    let (probe_read, probe_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let parent = nix::unistd::getpid();
    let mut leaf = crate::start::cgroup::Leaf::create();
    // The job on the spawner thread owns every descriptor the child is given (`stdio`,
    // the leaf's copy): it runs even if this future is dropped meanwhile.
    let procs = leaf.as_ref().and_then(|l| l.procs_copy());
    let mut opts = opts;
    opts.cgroup_procs = procs.as_ref().map(AsRawFd::as_raw_fd);
    let pid = on_spawner_thread(move || -> io::Result<NewChild> {
        // Forking waits while a reply ring is between its `mmap` and its
        // `MADV_DONTFORK`, so that the child never gets a sibling's ring.
        let forked = crate::ring::fork_exclusive(|| {
            // SAFETY: the child runs only `forked_worker`, which starts with
            // async-signal-safe calls, checks the locks it needs with a bounded probe,
            // then runs the worker loop on this one thread without touching the
            // parent's runtime; see the module docs for what it may still meet (locks
            // of the program's own held by other threads of the parent), which the
            // `Fork` variant documents for users.
            unsafe { fork() }
        });
        match forked.map_err(io::Error::from)? {
            ForkResult::Child => {
                let probe = Some(probe_write.as_raw_fd());
                forked_worker(
                    theirs.as_raw_fd(),
                    stdio.raw(),
                    parent,
                    &opts,
                    probe,
                    signal_pipe,
                    body,
                )
            }
            ForkResult::Parent { child } => {
                drop((theirs, probe_write, stdio, procs));
                Ok(NewChild::new(child.as_raw() as u32))
            }
        }
    })
    .await;
    if let Some(leaf) = &mut leaf {
        leaf.close_procs();
    }
    let child = ChildProc::new(pid??.claim())?.with_leaf(leaf);
    nix::fcntl::fcntl(
        &probe_read,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut probe = tokio::net::unix::pipe::Receiver::from_owned_fd(probe_read)?;
    let mut answer = [0u8; 1];
    // A child that passed writes one byte; one that did not exits (end of file).
    let passed = matches!(
        tokio::time::timeout(PROBE_BOUND * 4, probe.read(&mut answer)).await,
        Ok(Ok(1))
    ) && answer[0] == PROBE_OK;
    // (Dropping the `ChildProc` of one that did not kills and reaps it.)
    Ok(passed.then_some((child, ours)))
}

/// What a forked child writes on its probe pipe when the locks it needs are free.
const PROBE_OK: u8 = b'k';

/// Whether the locks of Rust's standard library that a worker may need can be taken:
/// a thread of its own (a raw one: starting a `std` thread takes one of those locks)
/// starts and joins a `std` thread (the lock of every thread start and end, which
/// `process::exit` takes too), and takes the environment's lock and stdout's and
/// stderr's, while this thread waits for it at most [`PROBE_BOUND`]. A lock held by a
/// thread that did not survive the fork is never released: then the probe does not
/// answer in time, and this process must not serve.
fn locks_are_free() -> bool {
    extern "C" fn probe(fd: *mut libc::c_void) -> *mut libc::c_void {
        let passed = std::panic::catch_unwind(|| {
            let _ = std::thread::spawn(|| {}).join();
            let _ = std::env::var_os("PATH");
            drop(std::io::stdout().lock());
            drop(std::io::stderr().lock());
        })
        .is_ok();
        if passed {
            let fd = fd as usize as RawFd;
            // SAFETY: write(2) of one byte from a local to the pipe's write end, which
            // the waiting thread keeps open until it has read or given up.
            unsafe { libc::write(fd, [PROBE_OK].as_ptr().cast(), 1) };
        }
        std::ptr::null_mut()
    }
    let Ok((read, write)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return false;
    };
    // SAFETY: a zeroed pthread_t is a valid out-parameter; `probe` matches the start
    // routine's signature, and its argument is the write end's number (an integer, not
    // a pointer it dereferences), open until this function returns.
    let started = unsafe {
        let mut thread: libc::pthread_t = std::mem::zeroed();
        let rc = libc::pthread_create(
            &mut thread,
            std::ptr::null(),
            probe,
            write.as_raw_fd() as usize as *mut libc::c_void,
        );
        (rc == 0).then_some(thread)
    };
    let Some(thread) = started else {
        return false;
    };
    let mut fds = [libc::pollfd {
        fd: read.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let deadline = std::time::Instant::now() + PROBE_BOUND;
    let passed = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, left.as_millis() as libc::c_int) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        let mut byte = [0u8; 1];
        break n > 0 && nix::unistd::read(&read, &mut byte) == Ok(1) && byte[0] == PROBE_OK;
    };
    if passed {
        // SAFETY: the thread was started above and has answered: it ends at once.
        unsafe { libc::pthread_join(thread, std::ptr::null_mut()) };
    }
    // (A probe that hangs is left to die with this process.)
    passed
}

/// What a forked child runs on its channel, to its exit code: the worker's loop
/// (`crate::worker::serve`), given by whoever forks.
pub(crate) type ChildBody = fn(UnixStream) -> i32;

/// The life of a forked worker, from the fork to `_exit`: it never returns.
///
/// `fd` is its channel; `stdio` its stdin, stdout and stderr; `parent` the process
/// that forked it. With `probe`, the child first checks the locks it needs
/// ([`locks_are_free`]) and writes on `probe` that it did, or exits: a fork of a
/// multi-threaded process (the fork server forks from one thread, and needs no probe).
/// `signal_pipe` is the parent's Tokio signal pipe, if it has one: the child gives its
/// numbers a pipe of its own (see [`replace_signal_pipe`]), so that a task can build a
/// Tokio runtime (to start a [`Process`](crate::Process), say).
///
/// [`replace_signal_pipe`]: crate::start::fds::replace_signal_pipe
pub(crate) fn forked_worker(
    fd: RawFd,
    stdio: [RawFd; 3],
    parent: Pid,
    opts: &ChildOptions,
    probe: Option<RawFd>,
    signal_pipe: Option<SocketId>,
    body: ChildBody,
) -> ! {
    if child_setup(fd, WORKER_FD, stdio, parent, opts).is_err() {
        // SAFETY: _exit ends the process at once; nothing of ours is left to run.
        unsafe { libc::_exit(1) };
    }
    // Named for `ps`, `top` and `pgrep` (it would show its parent's name otherwise).
    crate::start::names::set_comm(opts.kind.comm());
    reset_signal_handlers();
    if let Some(probe) = probe {
        if !locks_are_free() {
            // SAFETY: as above.
            unsafe { libc::_exit(1) };
        }
        // SAFETY: write(2) of one byte from a local; `probe` is the pipe's write end,
        // inherited from the parent, which closes on exec or exit (close-on-exec).
        unsafe { libc::write(probe, [PROBE_OK].as_ptr().cast(), 1) };
    }
    // Where the parent's Tokio signal pipe is, to be given a pipe of our own below.
    let mut pipe_fds = [0 as RawFd; crate::start::fds::SIGNAL_PIPE_COPIES];
    let pipe_count = signal_pipe.map_or(0, |id| {
        crate::start::fds::find_socket(id, WORKER_FD + 1, &mut pipe_fds)
    });
    // Descriptors above the channel are the parent's (its runtime's, its files, its
    // other workers' channels): this process has no use for them, and must not keep
    // the parent's sockets open. If they cannot be closed, it must not run at all.
    if crate::start::fds::close_from(WORKER_FD + 1, false).is_err() {
        // SAFETY: _exit ends the process at once.
        unsafe { libc::_exit(1) };
    }
    crate::start::fds::replace_signal_pipe(&pipe_fds[..pipe_count]);
    // SAFETY: `child_setup` put our channel on WORKER_FD and nothing else owns it.
    let channel = unsafe { OwnedFd::from_raw_fd(WORKER_FD) };
    let _ = nix::fcntl::fcntl(
        &channel,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let code = body(UnixStream::from(channel));
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
