//! Bounded waits: every wait in a test that could hang goes through one of these.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use super::{is_gone, proc_state, zombie_children};

/// The bound on every wait that could hang.
pub const BOUND: Duration = Duration::from_secs(30);

/// How long a worker (or a descendant) may take to disappear after it was told to.
pub const GONE_WITHIN: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it has not finished within [`BOUND`].
pub async fn within<T>(what: &str, fut: impl IntoFuture<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut.into_future()).await {
        Ok(out) => out,
        Err(_) => panic!("no answer within {BOUND:?}: {what}"),
    }
}

/// Polls `cond` every 10 ms for up to `within`, blocking this thread (for code outside
/// a runtime, or in a worker; in async code use [`wait_until`]).
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

/// Polls `cond` every 10 ms for up to `within` without blocking the runtime (which
/// reaps the workers, so it must keep running while we poll).
pub async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
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

/// Whether every pid in `pids` is gone (neither running nor a zombie) within `within`.
pub async fn all_gone(pids: Vec<u32>, within: Duration) -> bool {
    wait_until(within, move || pids.iter().all(|&p| is_gone(p))).await
}

/// Waits until every pid in `pids` is gone (neither running nor a zombie); panics with
/// the survivors if some are still there after [`GONE_WITHIN`].
pub async fn assert_all_gone(pids: &[u32]) {
    let gone = wait_until(GONE_WITHIN, || pids.iter().all(|&p| is_gone(p))).await;
    let left: Vec<(u32, Option<char>)> = pids
        .iter()
        .map(|&p| (p, proc_state(p)))
        .filter(|(_, s)| s.is_some())
        .collect();
    assert!(gone, "workers still present (pid, state): {left:?}");
    assert_no_zombies(pids);
}

/// No pid of `pids` is a zombie child of this process.
pub fn assert_no_zombies(pids: &[u32]) {
    let zombies: Vec<u32> = zombie_children()
        .into_iter()
        .filter(|p| pids.contains(p))
        .collect();
    assert!(zombies.is_empty(), "zombie workers: {zombies:?}");
}
