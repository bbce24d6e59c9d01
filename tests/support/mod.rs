//! Helpers shared by the integration tests: `mod support;` in a test file.
// Each test crate uses a part of this module, and its items are `pub` for them.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use procpool::{Pool, PoolBuilder, Sandbox, StartMethod};

/// The start method under test: `PROCPOOL_TEST_START_METHOD` (`spawn`, `fork` or
/// `forkserver`; the crate's default when unset), so that CI can run the whole suite
/// once per start method.
pub fn start_method() -> StartMethod {
    match std::env::var("PROCPOOL_TEST_START_METHOD").as_deref() {
        Err(_) | Ok("") => StartMethod::default(),
        Ok("spawn") => StartMethod::Spawn,
        Ok("fork") => StartMethod::Fork,
        Ok("forkserver") => StartMethod::ForkServer,
        Ok(other) => panic!("unknown PROCPOOL_TEST_START_METHOD {other:?}"),
    }
}

/// A builder with the start method under test. Every test builds its pools from here.
///
/// With `PROCPOOL_TEST_SANDBOX=1` its workers run in a [`Sandbox`] (that may write
/// under the temporary directory, where the tests keep their marker files, and read
/// its own `/proc/self`), so that the suite shows what still works in one.
pub fn builder() -> PoolBuilder {
    let builder = Pool::builder().start_method(start_method());
    match std::env::var("PROCPOOL_TEST_SANDBOX").as_deref() {
        Err(_) | Ok("") | Ok("0") => builder,
        Ok("1") => builder.sandbox(
            Sandbox::new()
                .allow_write(std::env::temp_dir())
                .allow_read("/proc/self"),
        ),
        Ok(other) => panic!("unknown PROCPOOL_TEST_SANDBOX {other:?}"),
    }
}

/// A pool of `n` workers with the start method under test.
pub async fn pool(n: usize) -> Pool {
    builder().processes(n).build().await.expect("pool builds")
}

/// The state letter of `pid` from /proc (`R`, `S`, `Z`, ...), or `None` if it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// The parent pid of `pid`, if it exists.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is a process that still runs (a zombie does not count as running).
pub fn is_running(pid: u32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Whether `pid` is gone entirely: neither running nor a zombie.
pub fn is_gone(pid: u32) -> bool {
    proc_state(pid).is_none()
}

/// Polls `cond` every 10 ms for up to `within`.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Zombie children of this process.
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(me) && proc_state(pid) == Some('Z'))
        .collect()
}

/// The pids of the pool's live workers.
pub fn worker_pids(pool: &Pool) -> Vec<u32> {
    pool.stats().workers.iter().map(|w| w.pid).collect()
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`),
/// so that the processes of a helper parent a test kills come to it, not to init, and
/// the test can reap them: no zombie is left behind, whatever init does.
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes integers only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Reaps `pid`, an orphan that came to this process (see [`become_subreaper`]), once
/// it has ended; waits at most `within`. Returns whether it is gone.
pub fn reap_orphan(pid: u32, within: Duration) -> bool {
    eventually(within, || {
        if parent_of(pid) == Some(std::process::id()) {
            // SAFETY: waitpid on a child of ours, with a null status pointer.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        }
        is_gone(pid)
    })
}

/// Every descendant of `pid` (children, their children, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|&&p| parent_of(p) == Some(parent)));
        i += 1;
    }
    found.remove(0);
    found
}
