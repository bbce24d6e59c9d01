//! Helpers for the core integration tests (`pool_*.rs`): bounded waits, temporary files
//! used as side effects and gates, and tasks that use them.
//!
//! Needs `mod support;` in the test file, next to `mod core_util;`.
#![allow(dead_code)]

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::support;

/// The bound on every wait that could hang.
pub(crate) const BOUND: Duration = Duration::from_secs(30);

/// How long a worker may take to disappear after it was told to.
pub(crate) const GONE_WITHIN: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it has not finished within [`BOUND`].
pub(crate) async fn bounded<F: IntoFuture>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not finished within {BOUND:?}"),
    }
}

/// Polls `cond` every 10 ms for up to `within`, without blocking the runtime.
pub(crate) async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every pid in `pids` is gone (neither running nor a zombie); panics with
/// the survivors if some are still there after [`GONE_WITHIN`].
pub(crate) async fn assert_all_gone(pids: &[u32]) {
    let gone = wait_until(GONE_WITHIN, || pids.iter().all(|&p| support::is_gone(p))).await;
    let left: Vec<(u32, Option<char>)> = pids
        .iter()
        .map(|&p| (p, support::proc_state(p)))
        .filter(|(_, s)| s.is_some())
        .collect();
    assert!(gone, "workers still present (pid, state): {left:?}");
    assert_no_zombies(pids);
}

/// No pid of `pids` is a zombie child of this process.
pub(crate) fn assert_no_zombies(pids: &[u32]) {
    let zombies: Vec<u32> = support::zombie_children()
        .into_iter()
        .filter(|p| pids.contains(p))
        .collect();
    assert!(zombies.is_empty(), "zombie workers: {zombies:?}");
}

/// A file path in the temp dir, unique to this process and call; removed on drop.
#[derive(Debug)]
pub(crate) struct TempPath(PathBuf);

impl TempPath {
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("procpool-core-{}-{tag}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(&path);
        TempPath(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a task argument.
    pub(crate) fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    pub(crate) fn exists(&self) -> bool {
        self.0.exists()
    }

    /// Creates the file (opens the gate of a task waiting for it).
    pub(crate) fn touch(&self) {
        std::fs::write(&self.0, b"").expect("create temp file");
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What [`scripted`] does, in order: touch `started`, wait until `wait_for` exists
/// (at most 60 s, then panic), touch `done`, return `(value, pid)`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Script {
    pub(crate) started: Option<String>,
    pub(crate) wait_for: Option<String>,
    pub(crate) done: Option<String>,
    pub(crate) value: u64,
}

impl Script {
    pub(crate) fn new(value: u64) -> Self {
        Script {
            value,
            ..Script::default()
        }
    }

    pub(crate) fn started(mut self, p: &TempPath) -> Self {
        self.started = Some(p.arg());
        self
    }

    pub(crate) fn wait_for(mut self, p: &TempPath) -> Self {
        self.wait_for = Some(p.arg());
        self
    }

    pub(crate) fn done(mut self, p: &TempPath) -> Self {
        self.done = Some(p.arg());
        self
    }
}

/// A task: see [`Script`].
pub(crate) fn scripted(s: Script) -> (u64, u32) {
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

/// A task: creates the file `path` and returns the worker's pid.
pub(crate) fn touch(path: String) -> u32 {
    std::fs::write(path, b"").expect("touch");
    std::process::id()
}

/// A task: the worker's pid.
pub(crate) fn worker_pid(_: ()) -> u32 {
    std::process::id()
}

/// A task: sleeps `ms` milliseconds, returns `ms`.
pub(crate) fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A task: `x * x`.
pub(crate) fn square(x: u64) -> u64 {
    x * x
}
