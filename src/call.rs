//! [`Apply`] and [`Map`]: calls whose options can be set before they are awaited or
//! spawned; [`MapHandle`], a spawned `Map`.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::error::TaskError;
use crate::handle::TaskHandle;
use crate::queue::{AbortSignal, Admission};
use crate::shared::{Admit, Counters};
use crate::stream::Lazy;
use crate::submit::{submit_one, JobFrame, Submitter, WaitForRoom};

/// One task, ready to submit: returned by [`Pool::apply`](crate::Pool::apply).
///
/// Await it for the result, or call [`spawn`](Apply::spawn) to submit it now and get a
/// [`TaskHandle`]. Nothing is submitted before either.
///
/// Awaiting it may take the direct path: when nothing is queued and a worker is idle,
/// the awaiting thread writes the task to the worker itself. If the worker's tasks take
/// microseconds, it then waits for the reply on the spot: it polls for it for at most
/// the pool's [`spin`](crate::PoolBuilder::spin) (20 µs by default where the pool
/// leaves a CPU free), or, without polling and on a thread that runs nothing else
/// meanwhile (the body of `block_on` on a multi-thread runtime, as under
/// `#[tokio::main]`), sleeps until the worker wakes it, for at most 100 µs. Such a
/// round trip wakes no thread but the worker and the caller. A task that takes longer
/// (or a caller in a task, which never blocks its thread) goes on the usual way from
/// there, its job already sent.
///
/// # Cancel safety
///
/// Dropping an `Apply` before awaiting it submits nothing. Once awaited, it is a
/// [`TaskHandle`], whose drop rules apply: a task that has not started is removed from
/// the queue (or, waiting for room under the pool's
/// [`queue_bound`](crate::PoolBuilder::queue_bound), gives up its place in line); a
/// running one finishes and its result is discarded.
#[must_use = "an Apply does nothing until it is awaited or spawned"]
pub struct Apply<R> {
    pool: Submitter,
    job: JobFrame,
    timeout: Option<Duration>,
    /// Whether to wait for room under the queue bound (`false`: the `try_` form).
    wait: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Apply<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Apply")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned + Send + 'static> Apply<R> {
    pub(crate) fn new(pool: Submitter, job: JobFrame) -> Self {
        Apply {
            pool,
            job,
            timeout: None,
            wait: true,
            _result: PhantomData,
        }
    }

    /// The form of [`Pool::try_apply`](crate::Pool::try_apply): awaited, it fails at
    /// once with [`TaskError::QueueFull`] when the pool's queue bound is reached.
    pub(crate) fn no_wait(mut self) -> Self {
        self.wait = false;
        self
    }

    /// Sets this task's timeout, overriding the pool's
    /// [`task_timeout`](crate::PoolBuilder::task_timeout). The clock starts when a worker
    /// starts the task; when it runs out, the worker is killed and replaced and the task
    /// fails with [`TaskError::TimedOut`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Submits the task now.
    ///
    /// In a pool with a [`queue_bound`](crate::PoolBuilder::queue_bound) that is
    /// reached, the task waits for room without blocking this call: in a task spawned
    /// on the current Tokio runtime (or, outside one, when the handle is polled), in
    /// line behind the tasks that waited before it. It is submitted once a place frees,
    /// whether or not the handle is polled; dropping or aborting the handle meanwhile
    /// gives up the wait. (An `Apply` from [`Pool::try_apply`](crate::Pool::try_apply)
    /// does not wait: its handle resolves to [`TaskError::QueueFull`].)
    pub fn spawn(self) -> TaskHandle<R> {
        let id = self.job.id;
        self.start(false)
            .unwrap_or_else(|e| TaskHandle::failed(id, e))
    }

    /// Submits the task now if the pool has room for it under its
    /// [`queue_bound`](crate::PoolBuilder::queue_bound) (always, without a bound): the
    /// shedding form of [`spawn`](Apply::spawn). This is what
    /// [`Pool::try_apply_async`](crate::Pool::try_apply_async) does.
    ///
    /// # Errors
    ///
    /// At once, with nothing submitted: [`TaskError::QueueFull`] if the bound is
    /// reached (counted in [`PoolStats::rejected`](crate::PoolStats::rejected)), and
    /// [`TaskError::Closed`] if the pool is closed or terminated, whatever its queue
    /// holds.
    pub fn try_spawn(mut self) -> Result<TaskHandle<R>, TaskError> {
        self.wait = false;
        self.start(false)
    }

    /// Submits the task (see [`spawn`](Apply::spawn)), or, in the `try_` form, fails
    /// at once if there is no room.
    fn start(self, direct: bool) -> Result<TaskHandle<R>, TaskError> {
        let shared = self.pool.shared_arc();
        let abort = Arc::new(AbortSignal::default());
        let (tx, rx) = oneshot::channel();
        let id = self.job.id;
        let admission = match shared.try_admit(!self.wait) {
            Admit::Unbounded => Admission::default(),
            Admit::Admitted(permit) => Admission::new(permit),
            Admit::Closed if !self.wait => return Err(TaskError::Closed),
            // Submitted all the same: the closed queue fails it as `Closed`.
            Admit::Closed => Admission::default(),
            Admit::Full(_) if !self.wait => {
                Counters::add(&shared.counters.rejected, 1);
                return Err(TaskError::QueueFull);
            }
            Admit::Full(room) => {
                let admission = Admission::shared();
                let mut wait = WaitForRoom::new(
                    shared.clone(),
                    room,
                    (self.job, self.timeout),
                    abort.clone(),
                    (admission.clone(), tx),
                    direct,
                );
                // In line now, first come first served, whoever polls it next.
                let noop = &mut Context::from_waker(std::task::Waker::noop());
                if wait.poll(noop).is_ready() {
                    return Ok(TaskHandle::new(id, rx, abort, admission, None));
                }
                let runtime = tokio::runtime::Handle::try_current();
                let wait = match (direct, runtime) {
                    (false, Ok(runtime)) => {
                        runtime.spawn(std::future::poll_fn(move |cx| wait.poll(cx)));
                        None
                    }
                    // Awaited now (or no runtime to wait in): the handle waits.
                    _ => Some(wait),
                };
                return Ok(TaskHandle::new(id, rx, abort, admission, wait));
            }
        };
        submit_one(
            shared,
            self.job,
            self.timeout,
            abort.clone(),
            (admission.clone(), tx),
            direct,
        );
        Ok(TaskHandle::new(id, rx, abort, admission, None))
    }
}

impl<R: DeserializeOwned + Send + 'static> IntoFuture for Apply<R> {
    type Output = Result<R, TaskError>;
    type IntoFuture = TaskHandle<R>;

    /// Submits the task; a worker that is idle is sent it at once, in this call, and
    /// one that runs tiny tasks may answer it within the call (see [`Apply`]). Under a
    /// reached [`queue_bound`](crate::PoolBuilder::queue_bound), the returned future
    /// waits for room first (or, from [`Pool::try_apply`](crate::Pool::try_apply),
    /// resolves to [`TaskError::QueueFull`] at once).
    fn into_future(self) -> TaskHandle<R> {
        let id = self.job.id;
        self.start(true)
            .unwrap_or_else(|e| TaskHandle::failed(id, e))
    }
}

/// A parallel map, ready to run: returned by [`Pool::map`](crate::Pool::map) and [`Pool::starmap`](crate::Pool::starmap).
///
/// Await it for every result in input order, or the first error; or call
/// [`spawn`](Map::spawn) to submit it now and get a [`MapHandle`]. Set
/// [`chunk_size`](Map::chunk_size) or [`timeout`](Map::timeout) before either.
///
/// # Cancel safety
///
/// Dropping a `Map` before awaiting or spawning it submits nothing. Dropping the future while it
/// runs removes the chunks that have not started from the queue; chunks already running
/// finish and their results are discarded.
///
/// # Panics
///
/// If the input (its iterator or stream) panics, the future resumes that panic once the
/// results of every item before it have come (unless one of them failed first: then
/// the future resolves to that error).
#[must_use = "a Map does nothing until it is awaited or spawned"]
pub struct Map<R> {
    inner: Lazy<R>,
}

impl<R> fmt::Debug for Map<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Map").finish_non_exhaustive()
    }
}

impl<R: Send + 'static> Map<R> {
    pub(crate) fn new(inner: Lazy<R>) -> Self {
        Map { inner }
    }

    /// Sets how many tasks go to a worker in one message. The default is about
    /// `len / (4 × processes)` when the input's length is known exactly (as Python's
    /// `Pool.map` does), and 1 otherwise.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    #[track_caller]
    pub fn chunk_size(mut self, n: usize) -> Self {
        assert!(n > 0, "chunk_size must be at least 1");
        self.inner.opts().chunk_size = Some(n);
        self
    }

    /// Sets a timeout for each chunk (each task, with a chunk size of 1), overriding the
    /// pool's [`task_timeout`](crate::PoolBuilder::task_timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.inner.opts().timeout = Some(timeout);
        self
    }

    /// Calls `hook` with the [`Progress`](crate::Progress) so far: once at the start,
    /// then each time results arrive (those of all the chunks that came meanwhile, at
    /// once). A progress bar plugs in here.
    pub fn progress(mut self, hook: impl Fn(crate::Progress) + Send + Sync + 'static) -> Self {
        self.inner.opts().progress = Some(Arc::new(hook));
        self
    }

    /// Submits the map now, before this returns, and returns a [`MapHandle`]: a future
    /// of its results. Python's `map_async`.
    ///
    /// Every item of the input that is ready is taken and queued in this call: the
    /// whole of an iterator (with no bound on the chunks in flight, as a `Map` holds
    /// every result anyway), and of a stream the items it has ready; in a pool with a
    /// [`queue_bound`](crate::PoolBuilder::queue_bound), only as many as it has room
    /// for (the rest wait for room, and fail with [`TaskError::Closed`] if the pool
    /// closes first). So the work is accepted even if
    /// [`Pool::close`](crate::Pool::close) comes next, and
    /// [`Pool::join`](crate::Pool::join) waits for it:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = procpool::Pool::builder().processes(2).build().await?;
    /// fn square(x: u64) -> u64 { x * x }
    /// let squares = pool.map(square, 0..100).spawn();
    /// pool.close();
    /// pool.join().await;
    /// assert_eq!(squares.await?[9], 81);
    /// # Ok(()) }
    /// ```
    ///
    /// The rest of the work (collecting the results, and the items of a stream that
    /// were not ready yet) runs in a task spawned on the current Tokio runtime, or,
    /// outside one, when the handle is awaited. Items of a stream that come after the
    /// pool was closed fail with [`TaskError::Closed`].
    ///
    /// # Panics
    ///
    /// If the input panics, the handle resumes that panic when awaited, after the
    /// results of every item before it have come (see [`Map`]).
    pub fn spawn(mut self) -> MapHandle<R> {
        self.inner.spawn();
        MapHandle::new(self.into_future())
    }
}

/// A [`Map`] submitted by [`Map::spawn`]: a future of its results in input order, or
/// its first error.
///
/// # Errors
///
/// As for [`Pool::map`](crate::Pool::map); [`TaskError::Terminated`] if the runtime
/// that ran the map's task shut down first.
///
/// # Cancel safety
///
/// Awaiting `&mut MapHandle` is cancel safe: the map goes on and the handle can be
/// awaited again. Dropping the handle stops the map, as dropping a `Map`'s future
/// does: its chunks that have not started are removed from the queue; chunks already
/// running finish and their results are discarded.
#[must_use = "dropping a MapHandle cancels the chunks of its map that have not started"]
pub struct MapHandle<R> {
    inner: MapTask<R>,
}

enum MapTask<R> {
    /// Collecting in a task of its own.
    Spawned(tokio::task::JoinHandle<Result<Vec<R>, TaskError>>),
    /// No runtime when it was spawned: collected when awaited.
    Here(BoxFuture<'static, Result<Vec<R>, TaskError>>),
}

impl<R> fmt::Debug for MapHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapHandle").finish_non_exhaustive()
    }
}

impl<R: Send + 'static> MapHandle<R> {
    fn new(rest: BoxFuture<'static, Result<Vec<R>, TaskError>>) -> Self {
        let inner = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => MapTask::Spawned(runtime.spawn(rest)),
            Err(_) => MapTask::Here(rest),
        };
        MapHandle { inner }
    }
}

impl<R> Future for MapHandle<R> {
    type Output = Result<Vec<R>, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            MapTask::Here(rest) => rest.as_mut().poll(cx),
            MapTask::Spawned(task) => match ready!(Pin::new(task).poll(cx)) {
                Ok(result) => Poll::Ready(result),
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // Cancelled: the runtime is shutting down.
                    Err(_) => Poll::Ready(Err(TaskError::Terminated)),
                },
            },
        }
    }
}

impl<R> Drop for MapHandle<R> {
    fn drop(&mut self) {
        if let MapTask::Spawned(task) = &self.inner {
            task.abort();
        }
    }
}

impl<R: Send + 'static> IntoFuture for Map<R> {
    type Output = Result<Vec<R>, TaskError>;
    type IntoFuture = BoxFuture<'static, Result<Vec<R>, TaskError>>;

    fn into_future(self) -> Self::IntoFuture {
        // The same window as the streams': it keeps the workers fed, and the chunks
        // not yet submitted cost no memory.
        let mut inner = self.inner;
        async move {
            let mut results = Vec::with_capacity(inner.len().unwrap_or(0));
            while let Some(chunk) = std::future::poll_fn(|cx| inner.poll_chunk(cx)).await {
                results.reserve(chunk.len());
                for result in chunk {
                    results.push(result?);
                }
            }
            Ok(results)
        }
        .boxed()
    }
}
