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
//! ## A task captures nothing
//!
//! The worker finds the task by its address in the executable alone: no bytes of it
//! cross, so it cannot carry data. Give the task what it needs in its argument. The
//! calls take the task as a `fn` pointer, so a closure that captures a variable is a
//! type error that `cargo check` reports, naming the captured variable: "closures can
//! only be coerced to `fn` types if they do not capture any variables". Capturing a
//! value that is not `Copy` (a `String`):
//!
//! ```compile_fail,E0308
//! # async fn run(pool: procpool::Pool) {
//! let prefix = String::from("n = ");
//! let _ = pool.apply(move |n: u64| format!("{prefix}{n}"), 1).await;
//! # }
//! ```
//!
//! Capturing a `Copy` value (a `u64`), the same:
//!
//! ```compile_fail,E0308
//! # async fn run(pool: procpool::Pool) {
//! let k = 3u64;
//! let _ = pool.map(move |n: u64| n * k, 0..10).await;
//! # }
//! ```
//!
//! [`Pool::starmap`] takes a task of several arguments, which Rust cannot coerce to a
//! `fn` pointer of any arity, so there `cargo check` reports a captured `String` as
//! "the trait bound `String: Copy` is not satisfied", and a captured `u64` is caught by
//! `cargo build` with "a procpool task must be a plain `fn` or a closure that captures
//! nothing" (see [`StarFn`]):
//!
//! ```compile_fail,E0277
//! # async fn run(pool: procpool::Pool) {
//! let s = String::from("x");
//! let _ = pool.starmap(move |a: u64, b: u64| a + b + s.len() as u64, [(1, 2)]).await;
//! # }
//! ```
//!
//! ```compile_fail,E0080
//! # async fn run(pool: procpool::Pool) {
//! let k = 3u64;
//! let _ = pool.starmap(move |a: u64, b: u64| a + b + k, [(1, 2)]).await;
//! # }
//! ```
//!
//! Either way the fix is the same: pass the value in the argument.
//!
//! ```
//! fn scale((n, k): (u64, u64)) -> u64 {
//!     n * k
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let pool = procpool::Pool::builder().processes(1).build().await?;
//! let k = 3u64;
//! assert_eq!(pool.apply(scale, (7, k)).await?, 21);
//! // A closure that captures nothing is a task too.
//! assert_eq!(pool.apply(|(n, k): (u64, u64)| n + k, (7, k)).await?, 10);
//! # pool.terminate().await;
//! # Ok(()) }
//! ```
//!
//! ## Which error type a task returns
//!
//! The error crosses from the worker to the caller, so it must implement serde's
//! `Serialize` and `Deserialize` like any result. Most error types of the standard
//! library and of other crates do not: a task returning `Result<T, std::io::Error>`
//! fails to compile (the compiler suggests deriving `Serialize` on `io::Error`, which
//! you cannot do). Return a `String` (the error's text, `e.to_string()`), or an enum
//! of your own that derives `Serialize` and `Deserialize`, carrying what the caller
//! needs to act on:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! /// What can go wrong in `file_len`, as the caller needs to know it.
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum ReadError {
//!     NotFound(String),
//!     Other { kind: String, message: String },
//! }
//!
//! fn file_len(path: String) -> Result<u64, ReadError> {
//!     std::fs::metadata(&path).map(|m| m.len()).map_err(|e| match e.kind() {
//!         std::io::ErrorKind::NotFound => ReadError::NotFound(path),
//!         kind => ReadError::Other { kind: format!("{kind:?}"), message: e.to_string() },
//!     })
//! }
//!
//! // Or just the text.
//! fn file_text(path: String) -> Result<String, String> {
//!     std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = procpool::Pool::builder().processes(1).build().await?;
//! let missing = "/no/such/file".to_string();
//! // The outer `?` is the pool's error (TaskError); the inner result is the task's.
//! let len = pool.apply(file_len, missing.clone()).await?;
//! assert_eq!(len, Err(ReadError::NotFound(missing.clone())));
//! let text = pool.apply(file_text, missing).await?;
//! assert!(text.unwrap_err().starts_with("/no/such/file: "));
//! # pool.terminate().await;
//! # Ok(()) }
//! ```
//!
//! The same task returning `std::io::Error` is refused at compile time:
//!
//! ```compile_fail,E0277
//! fn file_len(path: String) -> Result<u64, std::io::Error> {
//!     std::fs::metadata(path).map(|m| m.len())
//! }
//! # async fn run(pool: procpool::Pool) {
//! let _ = pool.apply(file_len, "/etc/hostname".to_string()).await;
//! # }
//! ```
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
//! # Containment: descendants and descriptors
//!
//! What a task starts dies with its worker. Where the machine has a writable cgroup v2
//! hierarchy (the cgroup this process runs in, under the `cgroup2` mount, lets it
//! create directories with a `cgroup.kill`, Linux 5.14+), every child procpool starts
//! (workers, [`Process`] children, the fork server's workers) runs in a cgroup leaf of
//! its own, `procpool-<pid of the pool's process>-<n>`, which it enters before it runs
//! anything else. Nothing a task starts can leave its leaf: every kill of the child
//! writes the leaf's `cgroup.kill` first, and when the pool sees the child gone (killed,
//! crashed, exited) it kills the leaf again and removes it. **With a writable cgroup v2
//! hierarchy, nothing a worker starts outlives it** (short of the pool's own process
//! being killed: see below). One caveat: the leaf holds what the worker starts, not a
//! worker that moves itself out on purpose. A process may write its pid to any cgroup's
//! `cgroup.procs` that its user may write (and the common ancestor's), and a worker runs
//! as the pool's user, which could create the leaves, unless its writes are confined
//! (a [`Sandbox`] allows writes only where it says). Without one (no cgroup v2, a read-only one, a cgroup whose
//! controllers keep it from holding processes), procpool falls back silently to the
//! mechanisms below, which it uses in any case as a second line.
//!
//! Every child leads a process group of its own and is a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`), so while it lives every process it started, even a
//! daemon that double-forked with `setsid`, stays in its subtree. When the pool kills a
//! worker (a timeout, an abort, `terminate`, a drop), it stops it, walks its subtree in
//! `/proc` and kills each process through a pidfd, walking again until nothing new
//! turns up (at most 64 walks within 1 s, so a fork bomb cannot hold the pool), then
//! kills its group and the worker. A worker that ends by itself (a recycle,
//! `std::process::exit`) first kills its own subtree; whoever reaps a worker kills its
//! group before the reap. The fork server kills every child of its that is not a live
//! worker (an orphan of a dead worker comes to it, a subreaper), and its whole subtree
//! when it exits.
//!
//! **The escape that remains without a cgroup leaf**: under [`StartMethod::Spawn`] and
//! [`StartMethod::Fork`], a descendant that left the worker's process group (`setsid`,
//! `setpgid`) and was orphaned survives when the worker dies of a signal the pool did
//! not send (a segfault, `abort`, the OOM killer, a `kill` from outside): it is
//! reparented out of the worker's tree (to init, or to your program if it is a
//! subreaper) before anyone can see it. Under [`StartMethod::ForkServer`] (the default)
//! the server adopts it and kills it; the same escape exists only if the server itself
//! is killed from outside. With or without leaves, if the pool's own process dies
//! (`SIGKILL`), its workers die (their parent-death signal) but nobody is left to kill
//! what they started outside their group: it runs on (in its leaf, which the next
//! procpool process on the machine removes once it is empty).
//!
//! A side effect of the subreaper: a worker collects the zombies of the orphans it
//! adopted until it exits (its own reaper then reaps them); `max_tasks_per_child`
//! bounds that. Workers are in their own process group, so a terminal's Ctrl-C
//! reaches the pool's process, not its workers (the pool ends them).
//!
//! Every child holds only its own descriptors: stdio, its channel (and its reply ring,
//! mapped). Descriptors of the parent without close-on-exec (a systemd socket-activation
//! listener, a C library's file) are closed before `exec` (`close_range`, or a walk of
//! `/proc/self/fd` where it is missing) and in every forked worker; the fork server
//! holds only stdio, its control socket and its signalfd.
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
// The layers, from the top down: a module imports only from its own layer and those
// below it (ARCHITECTURE.md draws them). `unsafe` is denied but in the OS pieces and
// the child's entry point, where each block states its argument.
#![deny(unsafe_code)]

// The user's API.
mod builder;
mod call;
mod handle;
mod input;
mod policy;
mod pool;
mod process;
mod stats;
mod stream;

// Submitting work; the queue and the state shared with the drivers.
mod queue;
mod shared;
mod submit;

// Driving workers: a supervisor per slot, a driver per worker, the direct path.
mod connect;
mod direct;
mod driver;
mod lease;
mod outcome;
mod supervisor;
mod sync;

// Starting a child by each start method.
mod launch;
// Launchers of workers on other machines, their keeper there, and the link's rules.
#[allow(unsafe_code)]
mod remote;

// A worker's connection: local (socketpair and reply ring) or a byte stream.
mod transport;

// Tasks as a worker runs them, and the functions the wire names.
#[allow(unsafe_code)]
mod image;
#[allow(unsafe_code)]
mod task_fn;

// Every byte on the wire.
mod protocol;

// The vocabulary every layer speaks.
mod error;
mod panics;
mod trace;

// OS pieces.
#[allow(unsafe_code)]
mod chan;
#[allow(unsafe_code)]
mod fdpass;
#[allow(unsafe_code)]
mod output;
#[allow(unsafe_code)]
mod per_process;
#[allow(unsafe_code)]
mod ring;
// Sealed shared memory for large payloads.
#[allow(unsafe_code)]
mod sandbox;
#[allow(unsafe_code)]
mod shm;
#[allow(unsafe_code)]
mod start;

// The child's side: the worker's entry point and loop.
#[allow(unsafe_code)]
mod worker;

#[cfg(test)]
#[allow(unsafe_code)]
mod fuzz;

// Model checks of the hand-made synchronisation, under `--cfg procpool_loom` (see `sync`).
#[cfg(all(test, procpool_loom))]
#[allow(unsafe_code)]
mod loom_tests;

pub use builder::{PoolBuilder, DEFAULT_MAX_FRAME_LEN};
pub use call::{Apply, Map, MapHandle};
pub use error::{BuildError, BuildErrorKind, Payload, RemotePanic, TaskError, WorkerExit};
pub use handle::TaskHandle;
pub use input::{FromIter, FromStream, Input};
pub use output::{LineSink, OutputLine, OutputStream, WorkerOutput, MAX_LINE};
pub use policy::{Polling, Transport};
pub use pool::Pool;
pub use process::{Process, ProcessBuilder, ProcessHandle};
pub use remote::{Launcher, DEFAULT_HEARTBEAT};
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

/// The README's code blocks, compiled and run as doc tests (`cargo test --doc`), so
/// that what a new user copies from it works as written. Its shell and TOML blocks are
/// marked as such and skipped; `tests/readme.rs` checks that the quick start's
/// `[dependencies]` list every crate its code uses.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[doc(hidden)]
pub mod __private {
    pub use ctor;
}

/// The cgroup v2 directory under which this process puts each child in a leaf of its
/// own (`procpool-<pid>-<n>`), or `None` if it cannot (no writable cgroup v2 hierarchy,
/// no `cgroup.kill`, leaves that cannot hold processes, or `__PROCPOOL_TEST_NO_CGROUP`
/// set): then containment rests on process groups, subreapers and tree walks alone.
/// Probed once per process. For tests and diagnostics.
#[doc(hidden)]
pub fn __cgroup_base() -> Option<std::path::PathBuf> {
    start::cgroup::base().map(std::path::Path::to_path_buf)
}
