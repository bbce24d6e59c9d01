//! Task functions: they run in worker processes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{niceness_of, TempPath, BOUND};

/// This worker's pid, as the worker itself knows it.
pub fn whoami(_: ()) -> u32 {
    let info = procpool::current_process().expect("tasks run in a procpool worker");
    assert_eq!(info.pid(), std::process::id());
    info.pid()
}

/// `2x`, with the pid of the worker that computed it.
pub fn double_with_pid(x: u64) -> (u64, u32) {
    (x * 2, std::process::id())
}

pub fn double(x: u64) -> u64 {
    x * 2
}

/// Sleeps `ms` milliseconds; returns its pid.
pub fn pid_after_sleep(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Never returns (the test kills it).
pub fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Creates the file `path`; returns its pid. A side effect the test can look for.
pub fn touch(path: String) -> u32 {
    std::fs::write(&path, b"").expect("task writes its marker");
    std::process::id()
}

/// Creates `started`, then waits (at most 30 s) until `go` exists; returns its pid.
pub fn block_until((started, go): (String, String)) -> u32 {
    std::fs::write(&started, b"").expect("task writes its start marker");
    let deadline = Instant::now() + BOUND;
    while !Path::new(&go).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::process::id()
}

/// Creates `started`, then sleeps forever.
pub fn start_then_sleep(started: String) {
    std::fs::write(&started, b"").expect("task writes its start marker");
    sleep_forever(())
}

pub fn exit_with(code: i32) -> u32 {
    std::process::exit(code)
}

pub fn abort(_: ()) -> u32 {
    std::process::abort()
}

pub fn segfault(_: ()) -> u32 {
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
pub fn overflow_stack(_: ()) -> u32 {
    recurse(0) as u32
}

/// Sends itself SIGKILL (by pid, through kill(1)).
pub fn kill_self(_: ()) -> u32 {
    let me = std::process::id();
    let _ = std::process::Command::new("kill")
        .args(["-9", &me.to_string()])
        .status();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// This worker's niceness and pid.
pub fn my_niceness(_: ()) -> (i32, u32) {
    (niceness_of("self"), std::process::id())
}

/// Starts a plain child that sleeps (it stays in the worker's process group) and a
/// daemon (a double fork with `setsid`: its own session and group, its parent gone).
/// Returns `[child, daemon]`.
pub fn start_descendants(_: ()) -> Vec<u32> {
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

/// What [`scripted`] does, in order: touch `started`, wait until `wait_for` exists
/// (at most 60 s, then panic), touch `done`, return `(value, pid)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Script {
    pub started: Option<String>,
    pub wait_for: Option<String>,
    pub done: Option<String>,
    pub value: u64,
}

impl Script {
    pub fn new(value: u64) -> Self {
        Script {
            value,
            ..Script::default()
        }
    }

    pub fn started(mut self, p: &TempPath) -> Self {
        self.started = Some(p.arg());
        self
    }

    pub fn wait_for(mut self, p: &TempPath) -> Self {
        self.wait_for = Some(p.arg());
        self
    }

    pub fn done(mut self, p: &TempPath) -> Self {
        self.done = Some(p.arg());
        self
    }
}

/// A task: see [`Script`].
pub fn scripted(s: Script) -> (u64, u32) {
    if let Some(p) = &s.started {
        std::fs::write(p, b"").expect("touch started");
    }
    if let Some(p) = &s.wait_for {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Path::new(p).exists() {
            assert!(Instant::now() < deadline, "gate {p} never opened");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    if let Some(p) = &s.done {
        std::fs::write(p, b"").expect("touch done");
    }
    (s.value, std::process::id())
}

/// A task: sleeps `ms` milliseconds, returns `ms`.
pub fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A task: `x * x`.
pub fn square(x: u64) -> u64 {
    x * x
}
