#![cfg(target_os = "linux")]
//! A `Process`'s function can build a Tokio runtime and start a `Process` from it,
//! under every start method: in a non-daemon `Process`, the nested one starts and is
//! joined; in a daemon one, and in a pool's worker, the start is refused by the daemon
//! rule. Under `Fork`, the forked child used to have closed Tokio's signal
//! pipe with the rest of what it inherited, and building a runtime there failed.
procpool::enable_test_support!();
mod support;

use std::time::Duration;

use procpool::{BuildErrorKind, Process};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn double(n: u64) -> u64 {
    n * 2
}

/// Builds a runtime and starts a `Process` running `f(n)` from it, with the start
/// method under test; joins it. What happened, as text.
fn start_and_join<R>(f: fn(u64) -> R, n: u64) -> Result<R, String>
where
    R: Serialize + DeserializeOwned + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let child = Process::builder()
            .start_method(support::start_method())
            .start(f, n)
            .await
            .map_err(|e| match e.kind() {
                BuildErrorKind::Daemon => "daemon".to_string(),
                _ => format!("start: {e}"),
            })?;
        tokio::time::timeout(Duration::from_secs(30), child.join())
            .await
            .map_err(|_| "join timed out".to_string())?
            .map_err(|e| format!("join: {e}"))
    })
}

/// One level: starts a `Process` running `double(n)`.
fn start_nested(n: u64) -> Result<u64, String> {
    start_and_join(double, n)
}

/// Two levels: a Process that starts a Process that starts one.
fn start_nested_twice(n: u64) -> Result<u64, String> {
    start_and_join(start_nested, n)?
}

#[tokio::test]
async fn a_process_starts_a_process_and_joins_it() {
    let child = Process::builder()
        .start_method(support::start_method())
        .start(start_nested, 21)
        .await
        .expect("starts");
    let pid = child.pid();
    let got = tokio::time::timeout(Duration::from_secs(60), child.join())
        .await
        .expect("bounded");
    assert_eq!(got, Ok(Ok(42)));
    assert!(support::eventually(Duration::from_secs(10), || {
        support::is_gone(pid)
    }));

    let child = Process::builder()
        .start_method(support::start_method())
        .start(start_nested_twice, 5)
        .await
        .expect("starts");
    let got = tokio::time::timeout(Duration::from_secs(60), child.join())
        .await
        .expect("bounded");
    assert_eq!(got, Ok(Ok(10)));
}

#[tokio::test]
async fn a_daemon_process_may_not_start_one() {
    let child = Process::builder()
        .start_method(support::start_method())
        .daemon(true)
        .start(start_nested, 1)
        .await
        .expect("starts");
    let got = tokio::time::timeout(Duration::from_secs(60), child.join())
        .await
        .expect("bounded");
    assert_eq!(got, Ok(Err("daemon".to_string())));
}

/// In a pool's worker: the start, polled without a runtime (a forked pool worker
/// cannot build one with I/O), is refused because workers are daemons.
fn start_from_a_worker(n: u64) -> Result<u64, String> {
    futures::executor::block_on(Process::builder().start(double, n))
        .map(|_| 0)
        .map_err(|e| match e.kind() {
            BuildErrorKind::Daemon => "daemon".to_string(),
            _ => format!("start: {e}"),
        })
}

#[tokio::test]
async fn a_pool_task_meets_the_daemon_rule() {
    let pool = support::pool(1).await;
    let got = tokio::time::timeout(Duration::from_secs(60), pool.apply(start_from_a_worker, 1))
        .await
        .expect("bounded");
    assert_eq!(got, Ok(Err("daemon".to_string())));
    // The worker serves on.
    assert_eq!(pool.apply(double, 4).await, Ok(8));
    pool.terminate().await;
}
