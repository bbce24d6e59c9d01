//! An async-first process pool for Tokio: Python's `multiprocessing.Pool` for async
//! Rust.
//!
//! Rust has no GIL, so a Rust program reaches for processes for what threads cannot
//! give: **isolation** (a segfault, an abort or an out-of-memory kill in a worker fails
//! one task, not the service), **killability** (a task past its deadline is killed),
//! **resource caps**, and **recycling** of leaky or non-thread-safe code.
//!
//! ```no_run
//! use procpool::Pool;
//!
//! fn fib(n: u64) -> u64 {
//!     if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     procpool::init(); // first line: a worker enters its loop here
//!
//!     let pool = Pool::builder().processes(4).build().await?;
//!     let n: u64 = pool.apply(fib, 30).await?;
//!     let v: Vec<u64> = pool.map(fib, 0..30).await?;
//!     pool.join().await;
//!     println!("{n} {v:?}");
//!     Ok(())
//! }
//! ```
//!
//! # Tasks
//!
//! A task is a plain `fn` or a closure that captures nothing, with serde arguments and
//! result. No registration is needed: the worker runs the same executable and finds the
//! function at the same place (the handshake checks that both ends are the same build).
//! A task that returns `Result<T, E>` gives the caller `Result<Result<T, E>,
//! TaskError>`: the task's errors and the pool's never mix.
//!
//! # The worker entry line
//!
//! A worker is this same executable, started again with a marker. Call [`init`] as the
//! first line of `main`: in a worker it serves tasks and never returns; elsewhere it
//! returns at once. In integration tests run by `cargo test`, put
//! [`enable_test_support!()`] at the top of the test file instead. Doc tests that build
//! a pool must be `no_run`: a doc test's binary has no entry line.
//!
//! # Shutdown
//!
//! See [`Pool`]: `close`, `join`, `terminate`, and a `Drop` that never leaks a process.
//!
//! # Platform support
//!
//! Linux (the parent-death signal, pidfds and `/proc/self/exe` are Linux features).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod builder;
mod call;
mod driver;
mod error;
mod handle;
mod input;
mod pool;
mod protocol;
mod queue;
mod shared;
mod start;
mod stats;
mod stream;
mod supervisor;
mod task_fn;
mod worker;

pub use builder::{PoolBuilder, DEFAULT_MAX_FRAME_LEN};
pub use call::{Apply, Map};
pub use error::{BuildError, Payload, RemotePanic, TaskError, WorkerExit};
pub use handle::TaskHandle;
pub use input::{FromIter, FromStream, Input};
pub use pool::Pool;
pub use start::StartMethod;
pub use stats::{PoolStats, WorkerStats};
pub use stream::{Imap, ImapUnordered};
pub use task_fn::StarFn;
pub use worker::{current_process, init, ProcessInfo};

/// Makes a test binary run by `cargo test` able to serve as a worker: put
/// `procpool::enable_test_support!();` once at the top of an integration test file.
///
/// Test binaries have no `main` of their own to call [`init`] from, so this registers a
/// constructor that calls it before the test harness starts. Outside a worker it does
/// nothing.
#[macro_export]
macro_rules! enable_test_support {
    () => {
        #[$crate::__private::ctor::ctor(crate_path = $crate::__private::ctor)]
        unsafe fn __procpool_worker_entry() {
            $crate::init();
        }
    };
}

#[doc(hidden)]
pub mod __private {
    pub use ctor;
}
