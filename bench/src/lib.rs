//! What the Criterion benches (`benches/`) and the comparison program
//! (`src/bin/compare.rs`) share: the tasks, the raw two-process
//! references (a forked child echoing over a pipe or a socketpair, forked children
//! doing CPU work without IPC, fork + waitpid, exec of this binary), and small
//! measurement helpers; and [`runs`], which lays several runs of the comparison side
//! by side.
//!
//! Every forked child here runs only syscalls and arithmetic on memory allocated
//! before the fork, then `_exit`s: the parent may run Tokio threads, and a child of a
//! multi-threaded process must not take locks (no allocation, no stdio).

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

pub mod openloop;
pub mod runs;

/// Set in the environment of the exec'd copy of a bench binary: it exits at once.
pub const EXIT_ENV: &str = "PROCPOOL_BENCH_EXIT";

/// Whether this process is the exec'd copy that only measures the cost of exec.
/// Check it first thing in `main` and return if true.
pub fn is_exec_probe() -> bool {
    std::env::var_os(EXIT_ENV).is_some()
}

// ---------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------

/// The trivial task.
pub fn identity(x: u64) -> u64 {
    x
}

/// Echo of a byte vector.
pub fn echo_vec(v: Vec<u8>) -> Vec<u8> {
    v
}

/// Echo of a `Bytes`.
pub fn echo_bytes(b: bytes::Bytes) -> bytes::Bytes {
    b
}

/// A transform of a `Bytes` into new bytes of the same size (a copy): unlike an echo,
/// its result is not the argument's memory.
pub fn copy_bytes(b: bytes::Bytes) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&b)
}

/// A digest of a `Bytes` (a sum of its bytes): a task that reads a large argument and
/// returns a small result.
pub fn sum_bytes(b: bytes::Bytes) -> u64 {
    b.iter().map(|&x| u64::from(x)).sum()
}

/// Integer work: `iters` rounds of a xorshift generator folded into a sum. No memory
/// traffic, nothing the compiler can shortcut.
pub fn spin(iters: u64) -> u64 {
    let mut x = iters | 1;
    let mut acc = 0u64;
    for i in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc = acc.wrapping_add(x.rotate_left((i & 63) as u32));
    }
    acc
}

/// The number of `spin` iterations that take about `target` on this machine (the
/// fastest of a few trials, so a busy moment does not inflate it).
pub fn calibrate_spin(target: Duration) -> u64 {
    let probe = 2_000_000u64;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(spin(std::hint::black_box(probe)));
        best = best.min(t.elapsed());
    }
    ((probe as f64) * target.as_secs_f64() / best.as_secs_f64()).max(1.0) as u64
}

// ---------------------------------------------------------------------------------
// Raw two-process references
// ---------------------------------------------------------------------------------

/// The channel between the bench and its raw peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Two default pipes, one each way (64 KiB buffer each).
    Pipe,
    /// One `AF_UNIX` `SOCK_STREAM` socketpair with default buffers (what procpool uses).
    SocketPair,
    /// A shared mapping of a `memfd`, the payload copied into it by the sender and out
    /// of it by the receiver (as a worker decodes its argument into memory of its own),
    /// with one byte each way over a socketpair to say it is there: the limit of a
    /// shared-memory path for large payloads.
    SharedMemory,
}

/// A forked child that reads `req` bytes and answers `resp` bytes, forever, over a
/// pipe or a socketpair: the raw limit of a two-process round trip. `resp == req` is
/// an echo; `resp == 1` measures one-way bandwidth.
#[derive(Debug)]
pub struct RawPeer {
    pid: libc::pid_t,
    tx: RawFd,
    rx: RawFd,
    req: usize,
    resp: usize,
    /// With `Channel::SharedMemory`: the shared mapping's address and length.
    shm: Option<(usize, usize)>,
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Closes every descriptor of this (child) process above 2 except `a` and `b`
/// (allocates nothing).
///
/// # Safety
///
/// Only in a freshly forked child that owns nothing but `a` and `b`.
unsafe fn close_all_but(a: RawFd, b: RawFd) {
    let mut start: u32 = 3;
    for k in [a.min(b) as u32, a.max(b) as u32] {
        if k > start {
            // SAFETY: close_range takes integers only.
            unsafe { libc::syscall(libc::SYS_close_range, start, k - 1, 0) };
        }
        start = start.max(k + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, start, u32::MAX, 0) };
}

/// The descriptor `fd` as a `File` that does not close it when dropped.
///
/// # Safety
///
/// `fd` must stay open while the `File` is used.
unsafe fn borrowed_file(fd: RawFd) -> std::mem::ManuallyDrop<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller keeps `fd` open; `ManuallyDrop` never closes it.
    std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Dies with the parent, so that a killed bench leaves no child behind.
///
/// # Safety
///
/// Only in a freshly forked child.
unsafe fn die_with_parent(parent: libc::pid_t) {
    // SAFETY: prctl and getppid take integers only; _exit ends the process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
    }
}

impl RawPeer {
    /// Forks the peer.
    pub fn start(channel: Channel, req: usize, resp: usize) -> io::Result<RawPeer> {
        let mut fds = [0 as RawFd; 4];
        // (ours to write, ours to read, theirs to read, theirs to write)
        let mut shm = None;
        match channel {
            Channel::SocketPair | Channel::SharedMemory => {
                let mut sv = [0 as RawFd; 2];
                // SAFETY: sv is a valid array of two descriptors.
                check(unsafe {
                    libc::socketpair(
                        libc::AF_UNIX,
                        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                        0,
                        sv.as_mut_ptr(),
                    )
                })?;
                fds = [sv[0], sv[0], sv[1], sv[1]];
                if channel == Channel::SharedMemory {
                    let len = req.max(resp).max(1);
                    // SAFETY: a fresh memfd of `len` bytes, mapped shared before the
                    // fork, so that both processes see the same pages; the name is a
                    // valid C string.
                    unsafe {
                        let fd =
                            check(libc::memfd_create(c"raw-peer".as_ptr(), libc::MFD_CLOEXEC))?;
                        check(libc::ftruncate(fd, len as libc::off_t))?;
                        let addr = libc::mmap(
                            std::ptr::null_mut(),
                            len,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_SHARED,
                            fd,
                            0,
                        );
                        libc::close(fd);
                        if addr == libc::MAP_FAILED {
                            return Err(io::Error::last_os_error());
                        }
                        shm = Some((addr as usize, len));
                    }
                }
            }
            Channel::Pipe => {
                let mut down = [0 as RawFd; 2];
                let mut up = [0 as RawFd; 2];
                // SAFETY: valid arrays of two descriptors.
                check(unsafe { libc::pipe2(down.as_mut_ptr(), libc::O_CLOEXEC) })?;
                // SAFETY: as above.
                check(unsafe { libc::pipe2(up.as_mut_ptr(), libc::O_CLOEXEC) })?;
                fds[0] = down[1];
                fds[1] = up[0];
                fds[2] = down[0];
                fds[3] = up[1];
            }
        }
        let mut buf = vec![0u8; req.max(resp).max(1)];
        let ptr = buf.as_mut_ptr();
        // SAFETY: getpid takes nothing.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child runs only syscalls on memory allocated above and `_exit`s.
        let pid = check(unsafe { libc::fork() })?;
        if pid == 0 {
            // SAFETY: we are the freshly forked child; `buf` is ours (copy-on-write).
            unsafe {
                die_with_parent(parent);
                close_all_but(fds[2], fds[3]);
                let (mut input, mut output) = (borrowed_file(fds[2]), borrowed_file(fds[3]));
                let buf = std::slice::from_raw_parts_mut(ptr, req.max(resp).max(1));
                if let Some((addr, len)) = shm {
                    let shared = std::slice::from_raw_parts_mut(addr as *mut u8, len);
                    let mut byte = [0u8; 1];
                    loop {
                        if input.read_exact(&mut byte).is_err() {
                            libc::_exit(0);
                        }
                        buf[..req].copy_from_slice(&shared[..req]);
                        shared[..resp].copy_from_slice(&buf[..resp]);
                        if output.write_all(&byte).is_err() {
                            libc::_exit(0);
                        }
                    }
                }
                loop {
                    if input.read_exact(&mut buf[..req]).is_err()
                        || output.write_all(&buf[..resp]).is_err()
                    {
                        libc::_exit(0);
                    }
                }
            }
        }
        drop(buf);
        // Our copies of the child's ends.
        // SAFETY: closing descriptors we created above and own.
        unsafe {
            libc::close(fds[2]);
            if fds[3] != fds[2] {
                libc::close(fds[3]);
            }
        }
        Ok(RawPeer {
            pid,
            tx: fds[0],
            rx: fds[1],
            req,
            resp,
            shm,
        })
    }

    /// The peer's pid.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Sends `out` (`req` bytes) and reads the answer (`resp` bytes) into `back`.
    pub fn round_trip(&mut self, out: &[u8], back: &mut [u8]) {
        assert_eq!(out.len(), self.req);
        assert_eq!(back.len(), self.resp);
        if let Some((addr, len)) = self.shm {
            // SAFETY: the mapping is this peer's, `len` bytes, until it is dropped; the
            // peer touches it only between our byte and its answer.
            let shared = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
            shared[..out.len()].copy_from_slice(out);
            let mut byte = [1u8];
            // SAFETY: as below.
            let ok = unsafe {
                borrowed_file(self.tx).write_all(&byte).is_ok()
                    && borrowed_file(self.rx).read_exact(&mut byte).is_ok()
            };
            assert!(ok, "the raw peer went away");
            back.copy_from_slice(&shared[..back.len()]);
            return;
        }
        // SAFETY: both descriptors are this peer's, open until it is dropped.
        let ok = unsafe {
            borrowed_file(self.tx).write_all(out).is_ok()
                && borrowed_file(self.rx).read_exact(back).is_ok()
        };
        assert!(ok, "the raw peer went away");
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptors; the child then sees EOF and exits,
        // and waitpid reaps it.
        unsafe {
            libc::close(self.tx);
            if self.rx != self.tx {
                libc::close(self.rx);
            }
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
            if let Some((addr, len)) = self.shm {
                libc::munmap(addr as *mut libc::c_void, len);
            }
        }
    }
}

/// Forks one child per entry of `parts`; child `i` runs `spin(iters)` `parts[i]` times
/// and exits, with no IPC at all. Returns the time from the first fork to the last
/// reap: the ideal a process pool would reach for the same work.
pub fn forked_spin(parts: &[u64], iters: u64) -> Duration {
    // SAFETY: getpid takes nothing.
    let parent = unsafe { libc::getpid() };
    let start = Instant::now();
    let mut pids = Vec::with_capacity(parts.len());
    for &tasks in parts {
        // SAFETY: the child runs arithmetic only, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: the freshly forked child.
            unsafe {
                die_with_parent(parent);
                let mut acc = 0u64;
                for _ in 0..tasks {
                    acc = acc.wrapping_add(spin(std::hint::black_box(iters)));
                }
                std::hint::black_box(acc);
                libc::_exit(0);
            }
        }
        pids.push(pid);
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    start.elapsed()
}

/// One `fork()` of this process whose child `_exit`s at once, and its `waitpid`.
pub fn fork_and_wait() {
    // SAFETY: the child only `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Runs this very binary again with [`EXIT_ENV`] set (its `main` returns at once) and
/// waits for it: the raw cost of exec'ing the binary that a spawned worker pays.
pub fn exec_self() {
    let exe = std::env::current_exe().expect("current_exe");
    let status = std::process::Command::new(exe)
        .env(EXIT_ENV, "1")
        .stdin(std::process::Stdio::null())
        .status()
        .expect("exec of this binary");
    assert!(status.success(), "the exec'd copy failed: {status}");
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// A field in kB of `/proc/<pid>/<file>` (`VmRSS` of `status`, `Pss` of
/// `smaps_rollup`), in MiB.
pub fn proc_kib_field(pid: u32, file: &str, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: f64 = line[field.len() + 1..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// `VmRSS` of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    proc_kib_field(pid, "status", "VmRSS")
}

/// `Pss` of a process, in MiB.
pub fn pss_mib(pid: u32) -> Option<f64> {
    proc_kib_field(pid, "smaps_rollup", "Pss")
}

/// Pins every thread of process `pid` (as listed in `/proc/<pid>/task`) to `cpus`;
/// threads it starts later inherit the mask of the thread that starts them. Returns
/// false if any thread could not be pinned.
pub fn pin_process(pid: u32, cpus: &[usize]) -> bool {
    // SAFETY: a cpu_set_t is plain bits; CPU_ZERO and CPU_SET write inside it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        set
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut ok = true;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
        ok &= r == 0;
    }
    ok
}

/// Minor page faults of a process so far (`minflt` of `/proc/<pid>/stat`).
pub fn minor_faults(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    // state ppid pgrp session tty_nr tpgid flags minflt
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// The median of some durations.
pub fn median(mut xs: Vec<Duration>) -> Duration {
    assert!(!xs.is_empty());
    xs.sort_unstable();
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2
    }
}

/// The times of `calls` timed calls of `f`, after `warm` untimed ones.
pub fn timed(warm: usize, calls: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..warm {
        f();
    }
    let mut xs = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        f();
        xs.push(t.elapsed());
    }
    xs
}

/// The times of `calls` timed calls of the async `f`, after `warm` untimed ones.
pub async fn timed_async<F, Fut>(warm: usize, calls: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..warm {
        f().await;
    }
    let mut xs = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        f().await;
        xs.push(t.elapsed());
    }
    xs
}

/// The median of `calls` timed calls of `f`, after `warm` untimed ones.
///
/// # Panics
///
/// If `calls` is 0.
pub fn median_of(warm: usize, calls: usize, f: impl FnMut()) -> Duration {
    median(timed(warm, calls, f))
}

/// The median of `calls` timed calls of the async `f`, after `warm` untimed ones.
///
/// # Panics
///
/// If `calls` is 0.
pub async fn median_of_async<F, Fut>(warm: usize, calls: usize, f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    median(timed_async(warm, calls, f).await)
}

/// A bench binary's `main`: exits at once when it is the exec'd probe of
/// [`is_exec_probe`], else runs `groups` with Criterion on one Tokio runtime.
pub fn run(groups: &[fn(&mut criterion::Criterion, &tokio::runtime::Runtime)]) {
    if is_exec_probe() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let mut c = criterion::Criterion::default().configure_from_args();
    for group in groups {
        group(&mut c, &rt);
    }
    c.final_summary();
}

/// The time of `n` sequential `apply(identity, 1)` round trips on `pool`.
pub fn time_applies(
    rt: &tokio::runtime::Runtime,
    pool: &procpool::Pool,
    n: u64,
) -> std::time::Duration {
    rt.block_on(async {
        let start = std::time::Instant::now();
        for _ in 0..n {
            let r = pool
                .apply(identity, std::hint::black_box(1u64))
                .await
                .expect("apply");
            std::hint::black_box(r);
        }
        start.elapsed()
    })
}

/// The time of `n` runs of a `map` of `tasks` tasks of `spin(iters)`, chunk size 1.
pub fn time_spin_maps(
    rt: &tokio::runtime::Runtime,
    pool: &procpool::Pool,
    iters: u64,
    tasks: usize,
    n: u64,
) -> std::time::Duration {
    rt.block_on(async {
        let start = std::time::Instant::now();
        for _ in 0..n {
            let out = pool
                .map(spin, vec![iters; tasks])
                .chunk_size(1)
                .await
                .expect("map");
            std::hint::black_box(out);
        }
        start.elapsed()
    })
}
