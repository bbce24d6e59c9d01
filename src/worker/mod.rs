//! The worker side: entry point, handshake, the job loop and panic capture.
//!
//! A worker is plain blocking code on one thread: it never starts a Tokio runtime, so
//! a task may start its own. It reads a job, runs it, writes the reply, and exits when
//! the pool closes its end of the channel.

mod conn;
pub(crate) mod server;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::image::{build_id, SameBuild};
use crate::panics::capture_panics;
use crate::per_process::PerProcess;
use crate::protocol::codec::{decode_frame, decode_results, Large};
use crate::protocol::FnRef;
use crate::protocol::{
    FromWorker, Hello, InitFailure, Outcome, ToWorker, MAGIC, PROTOCOL_VERSION, TIMED_RUN,
    TINY_JOB_NS,
};
use crate::start::spawn::{ENV_WORKER, ROLE_FORKSERVER, ROLE_PROCESS, WORKER_FD};

use self::conn::BlockingConn;
use crate::ring::WorkerRing;

/// Enters the worker loop if this process was started as a procpool worker (or fork
/// server); returns at once otherwise.
///
/// **You do not normally call this.** procpool registers a constructor that calls it
/// before `main` (and before any runtime or thread exists), so a worker never runs the
/// program's own code, in binaries, examples, tests and doc tests alike. Calling
/// `init()` as the first line of `main` is the explicit, belt-and-braces form: it is
/// harmless where the constructor already ran, and it is the fallback for builds that
/// drop constructors. In a worker it serves tasks until the pool lets it go, then exits
/// the process; it never returns.
///
/// ```no_run
/// # #[allow(clippy::needless_doctest_main)]
/// fn main() {
///     procpool::init(); // optional: procpool's constructor already did this
///     // ... the program, which may build pools ...
/// }
/// ```
pub fn init() {
    let role = match std::env::var(ENV_WORKER) {
        Ok(role) => role,
        Err(_) => return,
    };
    if role == crate::start::spawn::ROLE_REMOTE {
        std::env::remove_var(ENV_WORKER);
        crate::start::fds::read_test_switch();
        // Started by a launcher on another machine: its link is stdin and stdout, and
        // it has no settings from a local parent (see `crate::remote::keeper`).
        let interval = std::env::var(crate::remote::ENV_HEARTBEAT_MS)
            .ok()
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(
                crate::remote::DEFAULT_HEARTBEAT / 3,
                std::time::Duration::from_millis,
            );
        std::env::remove_var(crate::remote::ENV_HEARTBEAT_MS);
        let limits = std::env::var(crate::remote::ENV_LIMITS)
            .map(|l| crate::remote::Limits::decode(&l))
            .unwrap_or_default();
        std::env::remove_var(crate::remote::ENV_LIMITS);
        crate::start::names::set_comm(crate::start::names::COMM_KEEPER);
        std::process::exit(crate::remote::keeper::keeper_main(interval, limits, serve));
    }
    // Into its cgroup leaf, a subreaper, dying with its parent, with its niceness and
    // memory limit, before anything else: what `posix_spawn` could not do before the
    // exec (see `start::after_exec`).
    if let Err(why) = crate::start::after_exec::apply_from_env() {
        eprintln!("procpool: this {role} cannot run: {why}");
        std::process::exit(2);
    }
    // Not inherited by processes that a task starts.
    std::env::remove_var(ENV_WORKER);
    crate::start::fds::read_test_switch();
    // SAFETY: a spawned worker or fork server receives its channel on WORKER_FD (see
    // `start::spawn`), and nothing else in this process owns that descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(WORKER_FD) };
    let cloexec = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // Its command name, for `ps`, `top` and `pgrep` (the exec named it `exe`, after
    // /proc/self/exe); its argv[0] says the same at length, with the pool's name.
    crate::start::names::set_comm(match role.as_str() {
        ROLE_FORKSERVER => crate::start::names::COMM_FORKSERVER,
        ROLE_PROCESS => crate::start::names::COMM_PROCESS,
        _ => crate::start::names::COMM_WORKER,
    });
    let code = match (cloexec, role.as_str()) {
        (Err(_), _) => 2,
        (Ok(_), ROLE_FORKSERVER) => server::server_main(UnixStream::from(fd)),
        (Ok(_), _) => serve(UnixStream::from(fd)),
    };
    std::process::exit(code);
}

/// What a process knows about itself as a procpool worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pid: u32,
    name: String,
    index: Option<usize>,
    daemon: bool,
}

impl ProcessInfo {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The worker's name, such as `procpool-worker-0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's slot in its pool, from 0 to `processes - 1`. A replacement worker
    /// takes the slot of the one it replaces.
    pub fn index(&self) -> Option<usize> {
        self.index
    }

    /// Whether the process is a daemon: it dies with its parent and may not start
    /// processes of its own through procpool. Pool workers are daemons; a
    /// [`Process`](crate::Process) is one if it was built with `daemon(true)`.
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }
}

/// Whether this process is a daemonic procpool process, which may not start children.
pub(crate) fn is_daemon() -> bool {
    CURRENT.get().is_some_and(|p| p.daemon)
}

static CURRENT: PerProcess<ProcessInfo> = PerProcess::new();

/// Inside a worker, who it is; `None` in a process that is not a procpool worker.
///
/// ```
/// assert!(procpool::current_process().is_none()); // not in a worker here
/// ```
pub fn current_process() -> Option<ProcessInfo> {
    CURRENT.get().cloned()
}

/// glibc serves an allocation as large as the last one freed with a fresh `mmap`, so
/// a worker echoing 16 MiB payloads faults in two fresh 16 MiB buffers page by page on
/// every task. A worker is a process that runs the same kind of task again and again:
/// keep blocks up to 64 MiB in the heap, and up to 64 MiB of free heap, for reuse.
/// (Only glibc's allocator is tuned; a program with its own global allocator is not
/// affected.)
fn keep_large_allocations() {
    const KEEP: libc::c_int = 64 << 20;
    // SAFETY: mallopt only sets allocator parameters; it is called before the worker
    // has started any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
    }
}

/// Serves the pool on `stream` until it closes; returns the exit code.
pub(crate) fn serve(stream: UnixStream) -> i32 {
    kill_descendants_at_exit();
    ignore_interrupts();
    capture_panics();
    keep_large_allocations();
    // The pool's setup may carry a large initializer argument; the pool is trusted
    // with it, and the configured limit applies from the first job on.
    let mut conn = BlockingConn::new(stream, u32::MAX as usize);
    let same = match handshake(&mut conn) {
        Ok(Some(same)) => same,
        Ok(None) => return 0,
        Err(_) => return 2,
    };
    match job_loop(&mut conn, same) {
        Ok(()) => 0,
        Err(_) => 2,
    }
}

/// Ctrl-C in a terminal signals the whole process group; the pool, not the worker,
/// decides when a worker stops. Writes to a closed channel fail with `EPIPE` rather
/// than kill, as in any Rust `main`.
/// Arranges that when this worker calls `exit` (a task's `std::process::exit`, or the
/// end of [`init`]) every process its tasks started is killed first. Only in this
/// process: a task's forked child inherits the hook, and must not kill its own children
/// when it exits.
fn kill_descendants_at_exit() {
    static WORKER: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    extern "C" fn at_exit() {
        // SAFETY: getpid takes no arguments.
        if WORKER.load(std::sync::atomic::Ordering::Relaxed) == unsafe { libc::getpid() } {
            crate::start::tree::kill_own_subtree();
        }
    }
    // SAFETY: getpid takes no arguments.
    let me = unsafe { libc::getpid() };
    if WORKER.swap(me, std::sync::atomic::Ordering::Relaxed) != me {
        // SAFETY: registers a plain function that lives as long as the program. A
        // failure only loses the hook (the pool still kills the worker's group).
        unsafe { libc::atexit(at_exit) };
    }
}

pub(crate) fn ignore_interrupts() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code.
    unsafe {
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal(Signal::SIGPIPE, SigHandler::SigIgn);
    }
}

/// Hello, Setup, initializer, Ready. `Ok(None)`: the pool went away; `Some`: the
/// proof that the pool runs this build, which running its jobs needs.
fn handshake(conn: &mut BlockingConn) -> std::io::Result<Option<SameBuild>> {
    let pid = std::process::id();
    conn.send_message(&FromWorker::Hello(Hello {
        magic: MAGIC,
        protocol: PROTOCOL_VERSION,
        build_id: build_id().to_vec(),
        pid,
    }))?;
    let Some((frame, mut fds)) = conn.recv_with_fds()? else {
        return Ok(None);
    };
    let refuse = |conn: &mut BlockingConn, why: String| {
        conn.send_message(&FromWorker::InitFailed(InitFailure::Refused(why)))?;
        Err(std::io::Error::other("handshake refused"))
    };
    let (setup, payload) = match decode_frame::<ToWorker>(&frame) {
        Ok(decoded) => decoded,
        Err(e) => return refuse(conn, e),
    };
    let ToWorker::Setup {
        protocol,
        build_id: parent_build,
        index,
        name,
        daemon,
        max_frame_len,
        spin_us,
        ring,
        shared_min,
        initializer,
        env,
        sandbox,
    } = setup
    else {
        return refuse(conn, "expected Setup".into());
    };
    let same = match SameBuild::check(&parent_build) {
        Some(same) if protocol == PROTOCOL_VERSION => same,
        _ => {
            return refuse(
                conn,
                "the pool runs another build or protocol version".into(),
            )
        }
    };
    if ring {
        let attached = fds
            .pop_front()
            .ok_or_else(|| "no reply ring came with the setup".to_string())
            .and_then(|fd| WorkerRing::attach(fd).map_err(|e| e.to_string()));
        match attached {
            Ok(ring) => conn.set_ring(ring),
            Err(why) => return refuse(conn, format!("reply ring: {why}")),
        }
    }
    drop(fds);
    conn.set_max_frame_len(max_frame_len);
    // Results in shared memory need the ring (their place is marked there).
    if ring {
        conn.set_shared_min(usize::try_from(shared_min).unwrap_or(usize::MAX));
    }
    conn.set_spin(std::time::Duration::from_micros(u64::from(spin_us)));
    CURRENT.get_or_init(|| ProcessInfo {
        pid,
        name,
        index,
        daemon,
    });
    // Still one thread: the environment may change safely.
    if let Some(keep) = env {
        crate::sandbox::keep_only_env(&keep);
    }
    if let Some(init) = initializer {
        if let Some(failure) = run_initializer(init, payload, same) {
            conn.send_message(&FromWorker::InitFailed(failure))?;
            return Err(std::io::Error::other("initializer failed"));
        }
    }
    // After the initializer (which may load what the tasks need), before any task.
    if let Some(sandbox) = sandbox {
        if let Err(why) = crate::sandbox::apply(&sandbox) {
            return refuse(conn, format!("sandbox: {why}"));
        }
    }
    conn.send_message(&FromWorker::Ready)?;
    Ok(Some(same))
}

pub(crate) fn run_initializer(init: FnRef, payload: &[u8], same: SameBuild) -> Option<InitFailure> {
    let init = match init.resolve(same) {
        Ok(t) => t,
        Err(e) => return Some(InitFailure::Refused(e)),
    };
    let mut out = Vec::new();
    match init.run(payload, &mut out, &mut Large::default()) {
        Outcome::Ok { .. } => {}
        other => return Some(InitFailure::Refused(format!("{other:?}"))),
    }
    match decode_results::<()>(&out) {
        Ok(results) => results
            .into_iter()
            .find_map(|r| r.err())
            .map(InitFailure::Panicked),
        Err(e) => Some(InitFailure::Refused(e)),
    }
}

/// A job's argument whose bytes came in the memfd `fd`, `payload` being what its
/// chunk holds of it (a sequence of one, the string's length): the mapping.
fn shared_arg(
    fd: &std::os::fd::OwnedFd,
    payload: &[u8],
    max: usize,
) -> Result<bytes::Bytes, String> {
    use std::os::fd::AsFd;
    let len = postcard::take_from_bytes::<u64>(payload)
        .ok()
        .filter(|(count, _)| *count == 1)
        .and_then(|(_, rest)| postcard::take_from_bytes::<u64>(rest).ok())
        .and_then(|(len, _)| usize::try_from(len).ok())
        .ok_or("a shared argument without its length")?;
    crate::shm::map(fd.as_fd(), 0, len, max)
}

fn job_loop(conn: &mut BlockingConn, same: SameBuild) -> std::io::Result<()> {
    let mut out = Vec::new();
    let mut clock = Clock::new();
    // Whether the next frame is whole in the buffer, as last seen.
    let mut next = conn.buffered();
    loop {
        let len = match next? {
            Some(len) => len,
            None => match conn.recv()? {
                Some(len) => {
                    // A job that was waited for starts when it came.
                    clock.restart();
                    len
                }
                None => return Ok(()),
            },
        };
        let Some((id, func, header_len, shared)) = ToWorker::read_job(conn.frame(len)) else {
            return Err(std::io::Error::other("unexpected frame from the pool"));
        };
        // A shared argument's memfd came with the frame's first bytes.
        let arg_fd = match shared {
            true => Some(conn.take_fd().ok_or_else(|| {
                std::io::Error::other("a job of shared memory came without its memfd")
            })?),
            false => None,
        };
        if conn.begin_job() == crate::ring::Begin::Skip {
            // Taken back by the pool while the job before it ran long: sent elsewhere.
            conn.consume(len);
            next = conn.buffered();
            clock.restart();
            continue;
        }
        let payload = &conn.frame(len)[header_len..];
        out.clear();
        out.resize(conn::REPLY_GAP, 0);
        let mut large = Large {
            min: conn.shared_min(),
            ..Large::default()
        };
        // The argument's memfd and its mapping, kept until the reply is sent.
        let mut arg_mem = None;
        let mapped = match arg_fd {
            Some(fd) => match shared_arg(&fd, payload, conn.max_frame_len()) {
                Ok(bytes) => {
                    // As below: a result about as large as the argument.
                    out.reserve(bytes.len());
                    large.arg = Some(bytes.clone());
                    arg_mem = Some((fd, bytes));
                    Ok(())
                }
                Err(why) => Err(why),
            },
            None => {
                // Results are often about as large as the arguments (an echo, a
                // transform): reserve once rather than grow by doubling and copying.
                out.reserve(payload.len());
                Ok(())
            }
        };
        let outcome = match (mapped, func.resolve(same)) {
            (Err(why), _) => Outcome::BadArguments(why),
            (_, Err(e)) => Outcome::Unresolvable(e),
            (Ok(()), Ok(task)) => task.run(payload, &mut out, &mut large),
        };
        conn.consume(len);
        // (A bad next frame is reported after this job's reply, not instead of it.)
        next = conn.buffered();
        let ran = clock.job_done(matches!(next, Ok(Some(_))));
        match large.result.take() {
            Some(bytes) => conn.send_shared_reply(id, ran, &mut out, bytes, arg_mem.as_ref())?,
            None => conn.send_reply(id, outcome, ran, &mut out)?,
        }
    }
}

/// The worker's timing of its jobs (see [`Done::ran_ns`](crate::protocol::Done)).
/// A job that was already waiting when the one before it ended starts then, and one
/// reading of the clock serves both; jobs that take under [`TINY_JOB_NS`] and come
/// back to back are timed together, up to [`TIMED_RUN`] at a time.
struct Clock {
    /// The last reading: when the jobs since began.
    mark: std::time::Instant,
    /// Jobs ended since `mark` without a reading.
    untimed: u32,
    /// What a job took at the last reading, on average; `u64::MAX` before it.
    per_job_ns: u64,
}

impl Clock {
    fn new() -> Self {
        Clock {
            mark: std::time::Instant::now(),
            untimed: 0,
            per_job_ns: u64::MAX,
        }
    }

    /// A job starts now, after a wait.
    fn restart(&mut self) {
        self.mark = std::time::Instant::now();
        self.untimed = 0;
    }

    /// A job ended; the next one has come already if `next_waiting`. Returns what the
    /// reply says of the time: nanoseconds, and how many jobs they cover (none: not
    /// timed).
    fn job_done(&mut self, next_waiting: bool) -> (u64, u32) {
        if next_waiting && self.per_job_ns < TINY_JOB_NS && self.untimed + 1 < TIMED_RUN {
            self.untimed += 1;
            return (0, 0);
        }
        let now = std::time::Instant::now();
        let jobs = self.untimed + 1;
        let ns = u64::try_from((now - self.mark).as_nanos()).unwrap_or(u64::MAX);
        self.mark = now;
        self.untimed = 0;
        self.per_job_ns = ns / u64::from(jobs);
        (ns, jobs)
    }
}

/// Enters the worker loop (or the fork server's) before `main`, and so before any
/// runtime or thread of the program exists.
///
/// # Safety
///
/// Only the C runtime calls it, once, before `main` (the `ctor` attribute requires an
/// `unsafe fn`); it calls nothing that needs `main`'s state.
#[ctor::ctor]
unsafe fn enter_before_main() {
    init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_jobs_back_to_back_are_timed_by_the_run() {
        let mut clock = Clock::new();
        // Nothing known yet: timed.
        assert_eq!(clock.job_done(true).1, 1);
        let mut covered = 0;
        for i in 0..3 * TIMED_RUN {
            // As if every job so far had taken no time at all.
            clock.per_job_ns = 0;
            let (ns, jobs) = clock.job_done(true);
            if (i + 1) % TIMED_RUN == 0 {
                assert_eq!(jobs, TIMED_RUN, "job {i}");
                covered += jobs;
            } else {
                assert_eq!((ns, jobs), (0, 0), "job {i}");
            }
        }
        assert_eq!(covered, 3 * TIMED_RUN);
        // The last of a run (nothing waits behind it) is timed, with the ones before.
        clock.per_job_ns = 0;
        assert_eq!(clock.job_done(true), (0, 0));
        assert_eq!(clock.job_done(false).1, 2);
    }

    #[test]
    fn longer_jobs_and_jobs_that_were_waited_for_are_timed_each() {
        let mut clock = Clock::new();
        clock.per_job_ns = TINY_JOB_NS;
        std::thread::sleep(std::time::Duration::from_millis(2));
        let (ns, jobs) = clock.job_done(true);
        assert_eq!(jobs, 1);
        assert!(ns >= 2_000_000, "{ns}");
        assert!(clock.per_job_ns >= 2_000_000);
        assert_eq!(clock.job_done(true).1, 1, "the last one was long");
        // After a wait, a job's time starts when it came.
        std::thread::sleep(std::time::Duration::from_millis(5));
        clock.restart();
        let (ns, jobs) = clock.job_done(false);
        assert_eq!(jobs, 1);
        assert!(ns < 5_000_000, "{ns}: the wait is not the job's");
    }
}
