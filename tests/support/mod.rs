//! Helpers shared by the integration tests: `mod support;` in a test file, then
//! `support::builder()` or `use support::{...}`.
//!
//! - here: the start method under test, pool builders, the pids of a pool's workers;
//! - [`waits`]: bounded waits (`within`, `eventually`, `wait_until`) and the checks that
//!   workers are gone;
//! - [`procs`]: processes as /proc shows them (state, parent, descendants, zombies);
//! - [`files`]: temporary marker files and directories that tasks and tests share;
//! - [`output`]: workers' output captured in memory (and so kept out of the run's);
//! - [`tasks`]: task functions that run in workers.
//! - [`hostile`]: what a test of a hostile worker checks after it (the pool gave up on
//!   that worker only, serves the next task, leaves no process after `terminate`).
//! - [`cluster`]: real sshd and Slurm daemons on loopback for the remote launcher's
//!   tests (issue 14), each a fixture started and stopped by the test.
//!
//! Everything is re-exported here, so `support::is_gone` and `support::within` work.
// Each test crate uses a part of this module, and its items are `pub` for them.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod cluster;
pub mod files;
pub mod hostile;
pub mod output;
pub mod procs;
pub mod tasks;
pub mod waits;

pub use files::*;
pub use hostile::*;
pub use output::*;
pub use procs::*;
pub use tasks::*;
pub use waits::*;

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

/// The pids of the pool's live workers.
pub fn worker_pids(pool: &Pool) -> Vec<u32> {
    pool.stats().workers.iter().map(|w| w.pid).collect()
}
