//! An async-first process pool for Tokio: Python's `multiprocessing.Pool` for async
//! Rust.
//!
//! Rust has no GIL, so a Rust program reaches for processes for what threads cannot
//! give: **isolation** (a segfault, an abort or an out-of-memory kill in a worker fails
//! one task, not the service), **killability** (a task past its deadline is killed),
//! **resource caps**, and **recycling** of leaky or non-thread-safe code.
//!
//! ```
//! use procpool::Pool;
//!
//! fn fib(n: u64) -> u64 {
//!     if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = Pool::builder().processes(2).build().await?;
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
//! # The worker entry
//!
//! With [`StartMethod::Spawn`] a worker is this same executable started again with a
//! marker; with [`StartMethod::ForkServer`] (the default) so is the fork server that
//! forks the workers. procpool registers a constructor that sees the marker and enters
//! the worker loop **before `main`**, before any runtime or thread of the program
//! exists: no line is needed in `main`, in test files or in doc tests.
//! [`init`] as the first line of `main` is the explicit form and the fallback for
//! builds that drop constructors.
//!
//! # Worker output
//!
//! A worker's stdout and stderr never share an open file description with this
//! process, so a task cannot change this process's descriptors (setting `O_NONBLOCK`
//! on its fd 1 used to make the service's next `println!` panic). By default
//! ([`WorkerOutput::Inherit`]) they lead where this process's do, through descriptions
//! of their own; [`PoolBuilder::stdout`] and [`PoolBuilder::stderr`] (and the same on
//! [`ProcessBuilder`]) can discard them, or capture them line by line into this
//! process's stderr, `tracing` events, or a function, tagged with the worker's pid.
//! A worker's stdin is `/dev/null`.
//!
//! # Start methods
//!
//! [`StartMethod::ForkServer`] (default), [`StartMethod::Spawn`] and
//! [`StartMethod::Fork`]; see [`StartMethod`] for what each costs and risks.
//!
//! # One process
//!
//! [`Process`] runs one function once in one child, with Python's verbs: `pid`,
//! `is_alive`, `join`, `exit_code`, `terminate`, `kill`, and `daemon`.
//!
//! # Shutdown
//!
//! See [`Pool`]: `close`, `join`, `terminate`, and a `Drop` that never leaks a process.
//!
//! # Platform support
//!
//! Linux (the parent-death signal, pidfds and `/proc/self/exe` are Linux features).

//! # Feature flags
//!
//! - `tracing`: spans and events (target `procpool`) for worker start, exit, crash
//!   and recycle, and for task submit and completion, with the worker pid and the
//!   task id.
//!
//! Progress bars need no feature: [`Map::progress`], [`Imap::progress`] and
//! [`ImapUnordered::progress`] take any hook, such as one that moves an `indicatif`
//! bar (the `primes` example does).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(attr(deny(warnings))))]

mod builder;
mod call;
mod chan;
mod connect;
mod direct;
mod driver;
mod error;
mod fdpass;
#[cfg(test)]
mod fuzz;
mod handle;
mod input;
mod output;
mod per_process;
mod pool;
mod process;
mod protocol;
mod queue;
mod ring;
mod sandbox;
mod shared;
mod start;
mod stats;
mod stream;
mod supervisor;
mod task_fn;
mod trace;
mod worker;

pub use builder::{PoolBuilder, DEFAULT_MAX_FRAME_LEN};
pub use call::{Apply, Map};
pub use error::{BuildError, Payload, RemotePanic, TaskError, WorkerExit};
pub use handle::TaskHandle;
pub use input::{FromIter, FromStream, Input};
pub use output::{LineSink, OutputLine, OutputStream, WorkerOutput, MAX_LINE};
pub use pool::Pool;
pub use process::{Process, ProcessBuilder, ProcessHandle};
pub use sandbox::{Sandbox, SANDBOX_ENV};
pub use start::StartMethod;
pub use stats::{PoolStats, WorkerStats};
pub use stream::{Imap, ImapUnordered, Progress};
pub use task_fn::StarFn;
pub use worker::{current_process, init, ProcessInfo};

/// Registers, in the calling crate, a constructor that calls [`init`] before `main`.
///
/// procpool's own constructor already does this for every binary that links it, so the
/// macro is only the explicit form for test files (`procpool::enable_test_support!();`
/// at the top), kept for builds that drop a library's constructors. Outside a worker it
/// does nothing.
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
