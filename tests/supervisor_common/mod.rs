//! Helpers and tasks shared by the supervisor's integration tests:
//! `mod supervisor_common;` after `mod support;` in a test file.
#![allow(dead_code)]

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::support;

/// The bound on every await that could hang.
pub(crate) const BOUND: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test if it takes longer than [`BOUND`].
pub(crate) async fn within<T>(what: &str, fut: impl IntoFuture<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut.into_future()).await {
        Ok(out) => out,
        Err(_) => panic!("no answer within {BOUND:?}: {what}"),
    }
}

/// [`support::eventually`] on a blocking thread, so that the runtime (which reaps the
/// workers) keeps running while we poll.
pub(crate) async fn eventually(
    within: Duration,
    cond: impl FnMut() -> bool + Send + 'static,
) -> bool {
    tokio::task::spawn_blocking(move || support::eventually(within, cond))
        .await
        .expect("eventually's thread")
}

/// Whether every pid in `pids` is gone (neither running nor a zombie) within `within`.
pub(crate) async fn all_gone(pids: Vec<u32>, within: Duration) -> bool {
    eventually(within, move || pids.iter().all(|&p| support::is_gone(p))).await
}

/// A scratch directory for marker files, removed on drop.
#[derive(Debug)]
pub(crate) struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub(crate) fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "procpool-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch { dir }
    }

    /// The path of `name` in the directory, as a string a task can take.
    pub(crate) fn path(&self, name: &str) -> String {
        self.dir
            .join(name)
            .to_str()
            .expect("utf-8 path")
            .to_string()
    }

    pub(crate) fn dir(&self) -> String {
        self.dir.to_str().expect("utf-8 path").to_string()
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    pub(crate) fn touch(&self, name: &str) {
        std::fs::write(self.dir.join(name), b"").expect("touch marker");
    }

    /// Waits (bounded) until the marker `name` exists.
    pub(crate) async fn wait_for(&self, name: &str) {
        let path = self.dir.join(name);
        let shown = path.display().to_string();
        assert!(
            eventually(BOUND, move || path.exists()).await,
            "marker {shown} never appeared"
        );
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------
// Tasks. They run in worker processes.
// ---------------------------------------------------------------------------------

/// This worker's pid, as the worker itself knows it.
pub(crate) fn whoami(_: ()) -> u32 {
    let info = procpool::current_process().expect("tasks run in a procpool worker");
    assert_eq!(info.pid(), std::process::id());
    info.pid()
}

/// `2x`, with the pid of the worker that computed it.
pub(crate) fn double_with_pid(x: u64) -> (u64, u32) {
    (x * 2, std::process::id())
}

pub(crate) fn double(x: u64) -> u64 {
    x * 2
}

/// Sleeps `ms` milliseconds; returns its pid.
pub(crate) fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Never returns (the test kills it).
pub(crate) fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Creates the file `path`; returns its pid. A side effect the test can look for.
pub(crate) fn touch(path: String) -> u32 {
    std::fs::write(&path, b"").expect("task writes its marker");
    std::process::id()
}

/// Creates `started`, then waits (at most 30 s) until `go` exists; returns its pid.
pub(crate) fn block_until((started, go): (String, String)) -> u32 {
    std::fs::write(&started, b"").expect("task writes its start marker");
    let deadline = std::time::Instant::now() + BOUND;
    while !Path::new(&go).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::process::id()
}

/// Creates `started`, then sleeps forever.
pub(crate) fn start_then_sleep(started: String) {
    std::fs::write(&started, b"").expect("task writes its start marker");
    sleep_forever(())
}

pub(crate) fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

pub(crate) fn abort(_: ()) -> u32 {
    std::process::abort()
}

pub(crate) fn segfault(_: ()) -> u32 {
    // SAFETY: not safe at all, on purpose: the write faults and the kernel kills the
    // worker with SIGSEGV, which is what the test is about. Nothing runs after it.
    unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
    0
}

fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth as u8; 64 * 1024]);
    if std::hint::black_box(depth) == u64::MAX {
        return u64::from(frame[0]);
    }
    recurse(depth + 1).wrapping_add(u64::from(std::hint::black_box(frame)[1]))
}

/// Overflows its stack: unbounded recursion with a large frame.
pub(crate) fn overflow_stack(_: ()) -> u32 {
    recurse(0) as u32
}

/// Sends itself SIGKILL (by pid, through kill(1)).
pub(crate) fn kill_self(_: ()) -> u32 {
    let me = std::process::id();
    let _ = std::process::Command::new("kill")
        .args(["-9", &me.to_string()])
        .status();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Reads this process's niceness: field 19 of /proc/self/stat.
pub(crate) fn niceness_of(pid: &str) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which is in parentheses) start at field 3.
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    rest.split_whitespace()
        .nth(19 - 3)
        .expect("field 19")
        .parse()
        .expect("niceness is a number")
}

/// This worker's niceness and pid.
pub(crate) fn my_niceness(_: ()) -> (i32, u32) {
    (niceness_of("self"), std::process::id())
}

/// Starts a plain child that sleeps (it stays in the worker's process group) and a
/// daemon (a double fork with `setsid`: its own session and group, its parent gone).
/// Returns `[child, daemon]`.
pub(crate) fn start_descendants(_: ()) -> Vec<u32> {
    // SAFETY: the children make only async-signal-safe calls (setsid, fork, write,
    // pause, _exit); the worker waits for its middle child, passes plain integers.
    unsafe {
        let child = libc::fork();
        assert!(child >= 0, "fork");
        if child == 0 {
            loop {
                libc::pause();
            }
        }
        let mut pipe = [0; 2];
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0, "pipe");
        let middle = libc::fork();
        assert!(middle >= 0, "fork");
        if middle == 0 {
            libc::setsid();
            let daemon = libc::fork();
            if daemon == 0 {
                loop {
                    libc::pause();
                }
            }
            libc::write(pipe[1], (&raw const daemon).cast(), 4);
            libc::_exit(0);
        }
        let mut daemon: i32 = 0;
        let n = libc::read(pipe[0], (&raw mut daemon).cast(), 4);
        libc::waitpid(middle, std::ptr::null_mut(), 0);
        libc::close(pipe[0]);
        libc::close(pipe[1]);
        assert!(n == 4 && daemon > 0, "the daemon's pid");
        vec![child as u32, daemon as u32]
    }
}
