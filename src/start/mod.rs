//! How worker processes are started, and what every child does before it runs.

pub(crate) mod cgroup;
pub(crate) mod child;
pub(crate) mod fds;
pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod spawn;
pub(crate) mod tree;

use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::unistd::Pid;

use self::child::ChildProc;
use crate::output::{ChildStdio, WorkerOutput};

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
    /// `exec` and the program's start-up.
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

/// A pool's way of starting workers, with the state it needs.
#[derive(Debug)]
pub(crate) enum Starter {
    /// With the environment variables the workers keep (`None`: all).
    Spawn(Option<Vec<String>>),
    Fork,
    ForkServer(Box<forkserver::ForkServer>),
}

impl Starter {
    /// `output` says where a fork server's own stdout and stderr go.
    pub(crate) fn new(
        method: StartMethod,
        preload: Option<(crate::task_fn::FnRef, bytes::Bytes)>,
        startup_timeout: std::time::Duration,
        env: Option<Vec<String>>,
        output: (WorkerOutput, WorkerOutput),
    ) -> Self {
        fds::read_test_switch();
        match method {
            StartMethod::Spawn => Starter::Spawn(env),
            StartMethod::Fork => Starter::Fork,
            StartMethod::ForkServer => Starter::ForkServer(Box::new(forkserver::ForkServer::new(
                preload,
                startup_timeout,
                output,
            ))),
        }
    }

    /// Starts one worker with `stdio` as its standard descriptors; returns the child
    /// and our end of its channel.
    pub(crate) async fn start(
        &self,
        opts: ChildOptions,
        stdio: ChildStdio,
    ) -> io::Result<(ChildProc, UnixStream)> {
        match self {
            Starter::Spawn(env) => spawn::spawn_worker(opts, stdio, env.clone()).await,
            Starter::Fork => fork::fork_worker(opts, stdio).await,
            Starter::ForkServer(server) => server.fork_worker(opts, stdio).await,
        }
    }

    /// Releases what the starter holds (the fork server).
    pub(crate) async fn shutdown(&self) {
        if let Starter::ForkServer(server) = self {
            server.shutdown().await;
        }
    }
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

/// Settings applied in a child between fork and exec.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChildOptions {
    pub(crate) nice: Option<i32>,
    pub(crate) memory_limit: Option<u64>,
    /// Whether the child survives its parent: only non-daemon `Process`es do.
    pub(crate) outlive_parent: bool,
    /// The child's cgroup leaf's `cgroup.procs`, open in the process that forks it (a
    /// fork server replaces the pool's number with that of the copy it received).
    pub(crate) cgroup_procs: Option<RawFd>,
    /// What the child is, for its process name.
    pub(crate) kind: ChildKind,
    /// The pool's (or the `Process`'s) name, shown in the child's `argv[0]` where it
    /// has one of its own (see [`argv0`]).
    pub(crate) label: Label,
}

/// What a child is, which names it: see [`ChildKind::comm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum ChildKind {
    /// A pool's worker.
    #[default]
    Worker,
    /// A [`Process`](crate::Process).
    Process,
}

/// The command name (`/proc/PID/comm`, what `ps`, `top` and `pgrep` show) of a pool's
/// worker. At most 15 bytes: the kernel keeps no more.
pub(crate) const COMM_WORKER: &std::ffi::CStr = c"procpool-worker";
/// The command name of a [`Process`](crate::Process) child.
pub(crate) const COMM_PROCESS: &std::ffi::CStr = c"procpool-proc";
/// The command name of a fork server (`procpool-forkserver` has 19 bytes).
pub(crate) const COMM_FORKSERVER: &std::ffi::CStr = c"procpool-server";

impl ChildKind {
    /// The child's command name.
    pub(crate) fn comm(self) -> &'static std::ffi::CStr {
        match self {
            ChildKind::Worker => COMM_WORKER,
            ChildKind::Process => COMM_PROCESS,
        }
    }

    /// The role named in its `argv[0]`: `procpool-<role>`.
    pub(crate) fn role(self) -> &'static str {
        match self {
            ChildKind::Worker => "worker",
            ChildKind::Process => "process",
        }
    }
}

/// Sets this process's command name (`PR_SET_NAME`). Async-signal-safe (one system
/// call, no allocation): forked children call it before anything else runs. Best
/// effort: a failure leaves the inherited name.
pub(crate) fn set_comm(comm: &std::ffi::CStr) {
    // SAFETY: prctl(PR_SET_NAME) reads at most 16 bytes of the NUL-terminated string,
    // which is static; it touches no other memory of ours.
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// A name shown in a child's `argv[0]`: at most [`Label::MAX`] bytes of the name given
/// to the builder, control characters replaced by `?`. `Copy`, so that it travels in
/// [`ChildOptions`] (and to a fork server) and can be written out after a fork without
/// allocating.
#[derive(Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Label {
    bytes: [u8; Label::MAX],
    len: u8,
}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Label {
    /// The most bytes of a name kept.
    pub(crate) const MAX: usize = 32;

    pub(crate) fn new(name: &str) -> Label {
        let mut label = Label::default();
        let mut len = 0;
        for c in name.chars() {
            let c = if c.is_control() { '?' } else { c };
            let mut utf8 = [0u8; 4];
            let encoded = c.encode_utf8(&mut utf8).as_bytes();
            if len + encoded.len() > Label::MAX {
                break;
            }
            label.bytes[len..len + encoded.len()].copy_from_slice(encoded);
            len += encoded.len();
        }
        label.len = len as u8;
        label
    }

    /// The bytes (bounded by [`Label::MAX`] even if `len` came from elsewhere).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(Label::MAX)]
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

/// The `argv[0]` of a child in `role` (`procpool-worker`, `procpool-forkserver`,
/// `procpool-process`), with `[label]` after it if the label is not empty; written
/// into `out` without allocating; returns its length (cut to `out`'s).
pub(crate) fn argv0(role: &str, label: &Label, out: &mut [u8]) -> usize {
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            if at < out.len() {
                out[at] = b;
                at += 1;
            }
        }
    };
    put(b"procpool-");
    put(role.as_bytes());
    if !label.as_bytes().is_empty() {
        put(b"[");
        put(label.as_bytes());
        put(b"]");
    }
    at
}

/// [`argv0`] as a string.
pub(crate) fn argv0_string(role: &str, label: &Label) -> String {
    let mut buf = [0u8; 64];
    let len = argv0(role, label, &mut buf);
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// The area of this process's argument strings (`/proc/self/stat`'s `arg_start` and
/// `arg_end`), read once, in a process that means to rename its forked children (the
/// fork server): they inherit it, and [`rename_argv`] writes their own name there.
static ARGV_AREA: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));

/// Records this process's argument area for [`rename_argv`] (allocates: call it before
/// forking). Only for a process that this crate started (the fork server), whose
/// arguments are its name and perhaps blanks for room.
pub(crate) fn record_argv_area() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which is in parentheses and may hold anything);
    // arg_start and arg_end are fields 48 and 49, so 46 and 47 after the name.
    let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(start), Some(end)) = (
        fields.get(45).and_then(|f| f.parse::<usize>().ok()),
        fields.get(46).and_then(|f| f.parse::<usize>().ok()),
    ) else {
        return;
    };
    // The area must hold the arguments this process has, each with its NUL: only then
    // is it what we think.
    let args: usize = std::env::args_os().map(|a| a.len() + 1).sum();
    if args > 0 && end > start && end - start == args {
        ARGV_AREA.0.store(start, Ordering::Relaxed);
        ARGV_AREA.1.store(end, Ordering::Relaxed);
    }
}

/// In a child forked from a process that called [`record_argv_area`]: writes
/// `procpool-<role>[label]` over its inherited argument area (cut to fit, the rest
/// zeroed), so that `/proc/PID/cmdline` (`ps -f`, `pgrep -f`) shows what it is.
/// Async-signal-safe: plain stores, no allocation.
pub(crate) fn rename_argv(role: &str, label: &Label) {
    let (start, end) = (
        ARGV_AREA.0.load(Ordering::Relaxed),
        ARGV_AREA.1.load(Ordering::Relaxed),
    );
    if start == 0 || end <= start {
        return;
    }
    let mut name = [0u8; 64];
    let len = argv0(role, label, &mut name);
    let area = end - start;
    // SAFETY: [start, end) is this process's argument area, as the kernel reported it
    // (checked in `record_argv_area` to be exactly the arguments and their NULs):
    // strings on the initial stack, mapped writable for the life of the process, which
    // nothing but argv (and the standard library's pointers into it, which read C
    // strings) refers to. This process is single-threaded (a fresh fork), so nothing
    // reads it meanwhile; the area keeps a NUL at its end, so every argument stays a C
    // string (those after the name become empty).
    unsafe {
        let out = std::slice::from_raw_parts_mut(start as *mut u8, area);
        let keep = len.min(area - 1);
        out[..keep].copy_from_slice(&name[..keep]);
        out[keep..].fill(0);
    }
}

/// Runs in a freshly forked child: moves it into its cgroup leaf if it has one, puts `stdio` on descriptors 0, 1 and 2 and its
/// channel on `target`, arranges to die with the parent, makes it the leader of a
/// process group of its own and a child subreaper (so that its descendants can be
/// found and killed with it: see [`tree`]), and applies the resource settings.
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
        // Its own group, and the reaper of its orphaned descendants: every process it
        // starts stays in its subtree while it lives.
        if libc::setpgid(0, 0) < 0
            || libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) < 0
        {
            return Err(io::Error::last_os_error());
        }
        if !opts.outlive_parent {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the line above took effect; then no
            // signal will ever come, so leave now.
            if libc::getppid() != parent.as_raw() {
                libc::_exit(1);
            }
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
