//! [`Pool`]: the handle users hold.

use std::fmt;
use std::sync::Arc;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::PoolBuilder;
use crate::call::{Apply, Map};
use crate::handle::TaskHandle;
use crate::input::Input;
use crate::protocol::FnRef;
use crate::shared::Shared;
use crate::stats::PoolStats;
use crate::stream::{Feed, Imap, ImapUnordered, Lazy};
use crate::submit::{JobFrame, Submitter};
use crate::task_fn::{star_trampoline, task_ref, StarFn};

/// A pool of worker processes.
///
/// Cheap to clone: every clone drives the same workers. Build one with
/// [`Pool::builder`]; submit work with [`apply`](Pool::apply),
/// [`apply_async`](Pool::apply_async), [`map`](Pool::map), [`imap`](Pool::imap),
/// [`imap_unordered`](Pool::imap_unordered) and [`starmap`](Pool::starmap).
///
/// A task is a plain `fn` or a closure that captures nothing, whose argument and result
/// implement serde's `Serialize` and `DeserializeOwned`. It runs in a worker process;
/// its panic, its crash, its timeout come back as a [`TaskError`](crate::TaskError).
///
/// # Shutdown
///
/// - [`close`](Pool::close) refuses new work; queued work still runs.
/// - [`join`](Pool::join) closes the pool, waits for the queued work to finish, and
///   waits for the workers to exit.
/// - [`terminate`](Pool::terminate) kills every worker now and reaps it; unfinished
///   tasks fail with [`TaskError::Terminated`](crate::TaskError::Terminated).
/// - Dropping the last clone of the pool terminates it: no worker outlives the pool,
///   and none is left a zombie. Streams and `Map` futures hold a clone while they run;
///   a [`TaskHandle`] does not.
#[derive(Clone)]
pub struct Pool {
    sub: Submitter,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A builder for a pool; see [`PoolBuilder`].
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Pool {
        Pool {
            sub: Submitter::new(shared),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        self.sub.shared()
    }

    /// The number of worker processes: the local ones and those on other machines.
    pub fn processes(&self) -> usize {
        self.shared().config.slots()
    }

    /// Runs `f(arg)` in a worker: await the returned [`Apply`] for the result.
    ///
    /// `f` is a plain `fn` or a closure that captures nothing (a capturing closure is a
    /// compile error). Set a per-call timeout with [`Apply::timeout`]. In a pool with a
    /// [`queue_bound`](crate::PoolBuilder::queue_bound) that is reached, awaiting it
    /// waits for room first; [`try_apply`](Pool::try_apply) fails instead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = procpool::Pool::builder().processes(1).build().await?;
    /// fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
    /// let n = pool.apply(fib, 30).await?;
    /// assert_eq!(n, 832_040);
    /// # pool.terminate().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The future resolves to a [`TaskError`](crate::TaskError) if the task panicked, its worker died, it
    /// timed out, it was cancelled, the pool is closed or was terminated, or its
    /// argument or result could not be encoded or exceeds the frame limit.
    ///
    /// # Cancel safety
    ///
    /// See [`Apply`]: dropping it before it is awaited submits nothing; dropping the
    /// awaiting future removes a task that has not started, and detaches a running one.
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Apply<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let func = task_ref(f);
        let job = JobFrame::one(&self.sub, func, arg);
        Apply::new(self.sub.clone(), job)
    }

    /// Submits `f(arg)` now and returns its [`TaskHandle`], a future of the result.
    ///
    /// The task is queued whether or not the handle is ever polled. This is
    /// `pool.apply(f, arg).spawn()`: under a reached
    /// [`queue_bound`](crate::PoolBuilder::queue_bound) the task waits for room in the
    /// background and is submitted when a place frees (see [`Apply::spawn`]);
    /// [`try_apply_async`](Pool::try_apply_async) fails instead.
    ///
    /// # Errors
    ///
    /// As for [`apply`](Pool::apply).
    ///
    /// # Cancel safety
    ///
    /// See [`TaskHandle`].
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> TaskHandle<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply(f, arg).spawn()
    }

    /// Like [`apply`](Pool::apply), but never waits for room: in a pool whose
    /// [`queue_bound`](crate::PoolBuilder::queue_bound) is reached, the returned future
    /// resolves at once to [`TaskError::QueueFull`](crate::TaskError::QueueFull) and
    /// nothing is submitted. The load-shedding form, for a service that answers "503"
    /// rather than make a request wait. Without a bound it is `apply`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use procpool::TaskError;
    ///
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = procpool::Pool::builder().processes(2).queue_bound(8).build().await?;
    /// let status = match pool.try_apply(square, 12).await {
    ///     Ok(n) => { assert_eq!(n, 144); 200 }
    ///     Err(TaskError::QueueFull) => 503,
    ///     Err(_) => 500,
    /// };
    /// assert_eq!(status, 200);
    /// # pool.terminate().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`TaskError::QueueFull`](crate::TaskError::QueueFull) when the bound is reached
    /// (counted in [`PoolStats::rejected`]); [`TaskError::Closed`](crate::TaskError::Closed)
    /// on a closed or terminated pool, whatever its queue holds; otherwise as for
    /// [`apply`](Pool::apply).
    ///
    /// # Cancel safety
    ///
    /// As for [`apply`](Pool::apply).
    pub fn try_apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Apply<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply(f, arg).no_wait()
    }

    /// Submits `f(arg)` now if the pool has room under its
    /// [`queue_bound`](crate::PoolBuilder::queue_bound) (always, without a bound), and
    /// returns its [`TaskHandle`]. This is `pool.apply(f, arg).try_spawn()`.
    ///
    /// # Errors
    ///
    /// At once, with nothing submitted: [`TaskError::QueueFull`](crate::TaskError::QueueFull)
    /// when the bound is reached (counted in [`PoolStats::rejected`]), and
    /// [`TaskError::Closed`](crate::TaskError::Closed) on a closed or terminated pool,
    /// whatever its queue holds. The handle's own errors are those of
    /// [`apply`](Pool::apply).
    ///
    /// # Cancel safety
    ///
    /// See [`TaskHandle`].
    pub fn try_apply_async<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
    ) -> Result<TaskHandle<R>, crate::TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply(f, arg).try_spawn()
    }

    fn feed<A, R, I, M>(&self, func: Result<FnRef, String>, input: I, ordered: bool) -> Lazy<R>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        I: Input<A, M>,
    {
        let pool = self.sub.clone();
        let parts = input.into_parts();
        let len = parts.0;
        Lazy::new(
            len,
            Box::new(move |opts| Feed::new(pool, func, parts, opts, ordered).boxed()),
        )
    }

    /// Runs `f` on every item of `input` (an iterator or a stream) and collects the
    /// results in input order: await the returned [`Map`].
    ///
    /// Work goes to the workers in chunks; see [`Map::chunk_size`]. In a pool with a
    /// [`queue_bound`](crate::PoolBuilder::queue_bound), each item takes a place as it
    /// is fed: a map larger than the room waits for room as it goes, and never fails
    /// for want of it (the same for [`imap`](Pool::imap), [`imap_unordered`](Pool::imap_unordered)
    /// and [`starmap`](Pool::starmap)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = procpool::Pool::builder().processes(2).build().await?;
    /// fn square(x: u64) -> u64 { x * x }
    /// let squares: Vec<u64> = pool.map(square, 0..1000).await?;
    /// assert_eq!(squares[999], 998_001);
    /// # pool.terminate().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The first [`TaskError`](crate::TaskError) in input order; see [`apply`](Pool::apply).
    ///
    /// # Cancel safety
    ///
    /// See [`Map`].
    pub fn map<A, R, I, M>(&self, f: fn(A) -> R, input: I) -> Map<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: Input<A, M>,
    {
        Map::new(self.feed(task_ref(f), input, true))
    }

    /// Runs `f` on every item of `input` (an iterator or a stream); a [`Stream`] of the
    /// results in input order, with backpressure.
    ///
    /// [`Stream`]: futures::Stream
    ///
    /// # Errors
    ///
    /// Each item is a `Result`: a [`TaskError`](crate::TaskError) fails only the task (or chunk) it is
    /// about, and the stream goes on.
    ///
    /// # Cancel safety
    ///
    /// See [`Imap`].
    pub fn imap<A, R, I, M>(&self, f: fn(A) -> R, input: I) -> Imap<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: Input<A, M>,
    {
        Imap::new(self.feed(task_ref(f), input, true))
    }

    /// Like [`imap`](Pool::imap), but yields results as they complete.
    ///
    /// # Errors
    ///
    /// As for [`imap`](Pool::imap).
    ///
    /// # Cancel safety
    ///
    /// See [`ImapUnordered`].
    pub fn imap_unordered<A, R, I, M>(&self, f: fn(A) -> R, input: I) -> ImapUnordered<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: Input<A, M>,
    {
        ImapUnordered::new(self.feed(task_ref(f), input, false))
    }

    /// Like [`map`](Pool::map), for a function of several arguments: each item of
    /// `input` is a tuple, unpacked into the call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = procpool::Pool::builder().processes(2).build().await?;
    /// fn add(a: i32, b: i32) -> i32 { a + b }
    /// let sums = pool.starmap(add, vec![(1, 2), (3, 4)]).await?;
    /// assert_eq!(sums, [3, 7]);
    /// # pool.terminate().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`map`](Pool::map).
    ///
    /// # Cancel safety
    ///
    /// See [`Map`].
    pub fn starmap<F, Args, R, I, M>(&self, f: F, input: I) -> Map<R>
    where
        F: StarFn<Args, R>,
        Args: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: Input<Args, M>,
    {
        Map::new(self.feed(FnRef::of(star_trampoline(f), None), input, true))
    }

    /// Refuses new work from now on: submissions fail with [`TaskError::Closed`](crate::TaskError::Closed).
    /// Queued and running tasks still complete; the workers exit once the queue is
    /// empty. Python's `Pool.close()`.
    pub fn close(&self) {
        self.shared().close();
    }

    /// Whether the pool refuses new work.
    pub fn is_closed(&self) -> bool {
        self.shared().queue.is_closed()
    }

    /// Closes the pool (see [`close`](Pool::close)) and waits until every queued task
    /// has finished and every worker has exited and been reaped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops the waiting, not the shutdown.
    pub async fn join(&self) {
        let shared = self.shared();
        shared.close();
        shared.tracker.close();
        shared.tracker.wait().await;
        shared.starter.shutdown().await;
    }

    /// Kills every worker now, fails unfinished tasks with [`TaskError::Terminated`](crate::TaskError::Terminated),
    /// and waits until every worker is reaped (each wait is bounded).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the kill happens at the first poll; dropping the future after that
    /// stops only the waiting for the reaping.
    pub async fn terminate(&self) {
        self.start_terminate();
        self.shared().tracker.wait().await;
        self.shared().starter.shutdown().await;
    }

    /// Starts [`terminate`](Pool::terminate) without waiting: the workers are killed and
    /// reaped in the background.
    pub fn start_terminate(&self) {
        self.shared().start_terminate();
    }

    /// Counters and the live workers; see [`PoolStats`].
    pub fn stats(&self) -> PoolStats {
        self.shared().stats()
    }
}
