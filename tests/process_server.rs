//! The fork server shared by `Process`es stops once no `Process` needs it, and starts
//! again when one does. Alone in its test binary: another test's `Process` would keep
//! the shared server busy.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use procpool::{Process, StartMethod};
use support::{sleep_ms, BOUND};

/// The server lingers 1 s after the last `Process` has ended, then closes its channel
/// (and is killed if it has not left within 5 s); this leaves room for a slow host.
const SERVER_GONE: Duration = Duration::from_secs(10);

/// Starts a `Process` running `sleep_ms(ms)` from the shared server, joins it, and
/// returns the server's pid (the process's parent).
async fn one_process(daemon: bool, ms: u64) -> u32 {
    let child = tokio::time::timeout(
        BOUND,
        Process::builder()
            .daemon(daemon)
            .start_method(StartMethod::ForkServer)
            .start(sleep_ms, ms),
    )
    .await
    .expect("bounded")
    .expect("starts");
    let pid = child.pid();
    let server = support::parent_of(pid).expect("the process has a parent");
    assert_ne!(server, std::process::id(), "forked by a server, not by us");
    assert_eq!(support::parent_of(server), Some(std::process::id()));
    // A daemon dies with its parent: a server let go under it would fail this join.
    let out = tokio::time::timeout(BOUND, child.join())
        .await
        .expect("bounded");
    assert_eq!(out, Ok(ms));
    assert!(support::eventually(BOUND, || support::is_gone(pid)));
    server
}

#[tokio::test]
async fn the_process_fork_server_stops_when_idle_and_starts_again() {
    let first = one_process(true, 0).await;
    assert!(
        support::eventually(SERVER_GONE, || support::is_gone(first)),
        "the idle fork server {first} still runs"
    );
    // A new Process starts a new server. It stays while a Process runs longer than
    // the linger, and through a gap shorter than the linger between two Processes.
    let second = one_process(true, 2_500).await;
    assert_ne!(second, first);
    assert!(
        support::is_running(second),
        "the server went while it was needed"
    );
    let third = one_process(false, 0).await;
    assert_eq!(third, second, "back-to-back processes share the server");
    assert!(
        support::eventually(SERVER_GONE, || support::is_gone(second)),
        "the idle fork server {second} still runs"
    );
}
