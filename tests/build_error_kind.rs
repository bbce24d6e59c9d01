#![cfg(target_os = "linux")]
//! `BuildError` has a kind to match on and, where a system call failed, the
//! `std::io::Error` as its `source()`; its message still says what went wrong.
//!
//! One test, run in order: one of its steps lowers this process's descriptor limit,
//! which must not meet another test's pool.
procpool::enable_test_support!();
mod support;

use std::error::Error as _;

use procpool::{BuildErrorKind, Process, Sandbox};
use serde::{Deserialize, Serialize, Serializer};

fn noop(_: ()) {}

fn boom_init(_: ()) {
    panic!("no database");
}

fn double(n: u64) -> u64 {
    n * 2
}

/// An argument whose encoding fails.
#[derive(Debug, Deserialize)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

fn takes_unencodable(_: Unencodable) {}

/// Lowers this process's soft descriptor limit to the highest descriptor it has open,
/// so that opening another fails with `EMFILE`; returns the old limit.
fn leave_no_descriptor() -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a local.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let highest = std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("some fds");
    // (The listing's own descriptor is closed again; every number up to the highest
    // one that was open then is below the limit, and a new one gets the lowest free.)
    let lowest_free = (0..=highest)
        .find(|fd| !std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists())
        .unwrap_or(highest + 1);
    let tight = libc::rlimit {
        rlim_cur: lowest_free,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads a local.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &tight) }, 0);
    old
}

fn restore_limit(old: libc::rlimit) {
    // SAFETY: setrlimit reads a local.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
}

#[tokio::test]
async fn every_build_error_has_a_kind_and_the_io_error_as_its_source() {
    // Outside a runtime.
    let outside = std::thread::spawn(|| futures::executor::block_on(support::builder().build()))
        .join()
        .expect("the thread ends");
    let err = outside.expect_err("no runtime");
    assert_eq!(err.kind(), BuildErrorKind::NoRuntime);
    assert!(err.source().is_none());
    assert!(err.to_string().contains("Tokio runtime"), "{err}");

    // An initializer that panics: the worker does not start.
    let err = support::builder()
        .processes(1)
        .initializer(boom_init, ())
        .build()
        .await
        .expect_err("the initializer panics");
    assert_eq!(err.kind(), BuildErrorKind::Start);
    assert!(err.to_string().contains("no database"), "{err}");

    // An initializer argument that cannot be encoded.
    let err = support::builder()
        .processes(1)
        .initializer(takes_unencodable, Unencodable)
        .build()
        .await
        .expect_err("the argument cannot be encoded");
    assert_eq!(err.kind(), BuildErrorKind::Task);
    assert!(err.to_string().contains("bad initializer"), "{err}");

    // A sandbox that allows a path that does not exist.
    let missing = std::env::temp_dir().join("procpool-no-such-path-for-build-error");
    let err = support::builder()
        .processes(1)
        .sandbox(Sandbox::new().allow_read(&missing))
        .build()
        .await
        .expect_err("the path is missing");
    assert_eq!(err.kind(), BuildErrorKind::Sandbox);
    let err = Process::builder()
        .start_method(support::start_method())
        .sandbox(Sandbox::new().allow_read(&missing))
        .start(double, 1)
        .await
        .expect_err("the path is missing");
    assert_eq!(err.kind(), BuildErrorKind::Sandbox);

    // A system call that fails: no descriptor is left for the child's stdio.
    // (This runtime runs nothing else meanwhile: the start fails before it waits.)
    let old = leave_no_descriptor();
    let started = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        Process::builder()
            .start_method(support::start_method())
            .start(double, 1),
    )
    .await;
    restore_limit(old);
    let err = started.expect("bounded").expect_err("no descriptor left");
    assert_eq!(err.kind(), BuildErrorKind::Start);
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("an io::Error source: {err:?}"));
    assert_eq!(io.raw_os_error(), Some(libc::EMFILE), "{io}");
    assert!(err.to_string().contains(&io.to_string()), "{err}");

    // Nothing was held back: a pool builds and runs now.
    let pool = support::builder()
        .processes(1)
        .initializer(noop, ())
        .build()
        .await
        .expect("builds");
    assert_eq!(pool.apply(double, 21).await, Ok(42));
    pool.terminate().await;
}
