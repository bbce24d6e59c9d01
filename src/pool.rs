//! [`Pool`]: the handle users hold.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::builder::PoolBuilder;
use crate::call::{Apply, Map};
use crate::error::{Payload, TaskError};
use crate::handle::TaskHandle;
use crate::input::Input;
use crate::protocol::codec::encode_chunk;
use crate::protocol::put_varint;
use crate::protocol::ToWorker;
use crate::queue::{AbortSignal, ChunkRun, Job, Reply, ReplyTo};
use crate::shared::{Counters, Shared};
use crate::stats::PoolStats;
use crate::stream::{Feed, Imap, ImapUnordered, Lazy};
use crate::task_fn::{star_trampoline, trampoline, FnRef, StarFn};
use crate::trace::event;

/// A pool of worker processes.
///
/// Cheap to clone: every clone drives the same workers. Build one with
/// [`Pool::builder`]; submit work with [`apply`](Pool::apply),
/// [`apply_async`](Pool::apply_async), [`map`](Pool::map), [`imap`](Pool::imap),
/// [`imap_unordered`](Pool::imap_unordered) and [`starmap`](Pool::starmap).
///
/// A task is a plain `fn` or a closure that captures nothing, whose argument and result
/// implement serde's `Serialize` and `DeserializeOwned`. It runs in a worker process;
/// its panic, its crash, its timeout come back as a [`TaskError`].
///
/// # Shutdown
///
/// - [`close`](Pool::close) refuses new work; queued work still runs.
/// - [`join`](Pool::join) closes the pool, waits for the queued work to finish, and
///   waits for the workers to exit.
/// - [`terminate`](Pool::terminate) kills every worker now and reaps it; unfinished
///   tasks fail with [`TaskError::Terminated`].
/// - Dropping the last clone of the pool terminates it: no worker outlives the pool,
///   and none is left a zombie. Streams and `Map` futures hold a clone while they run;
///   a [`TaskHandle`] does not.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Owner>,
}

/// The last `Pool` clone to go terminates the pool.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.start_terminate();
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// A job's frame, ready to write: a 4-byte length, the header, the chunk of arguments,
/// encoded straight into one buffer.
pub(crate) struct JobFrame {
    id: u64,
    tasks: usize,
    frame: Result<Vec<u8>, TaskError>,
    /// See [`Job::tail`](crate::queue::Job).
    tail: Bytes,
}

/// Appends job `id`'s frame to `out`: a 4-byte length, the header, the chunk of
/// arguments. On error `out` is left as it was.
pub(crate) fn encode_frame<A: Serialize + 'static>(
    pool: &Pool,
    id: u64,
    func: Result<FnRef, String>,
    items: &[A],
    out: &mut Vec<u8>,
) -> Result<(), TaskError> {
    encode_frame_with(pool, id, func, out, 0, |out| {
        encode_chunk(items, out).map_err(|message| TaskError::Codec {
            what: Payload::Argument,
            message,
        })
    })
}

/// Appends job `id`'s frame to `out`, its arguments written by `chunk`, except for the
/// last `tail` bytes of the frame, which the caller writes from elsewhere (the length
/// prefix and the frame limit count them). On error `out` is left as it was.
fn encode_frame_with(
    pool: &Pool,
    id: u64,
    func: Result<FnRef, String>,
    out: &mut Vec<u8>,
    tail: usize,
    chunk: impl FnOnce(&mut Vec<u8>) -> Result<(), TaskError>,
) -> Result<(), TaskError> {
    let start = out.len();
    let encoded = func.map_err(TaskError::Unsupported).and_then(|func| {
        out.extend_from_slice(&[0; 4]);
        ToWorker::write_job(id, func, out);
        chunk(out)?;
        let len = out.len() - start - 4 + tail;
        let limit = pool.shared().config.max_frame_len;
        if len > limit {
            return Err(TaskError::TooLarge {
                what: Payload::Argument,
                size: len,
                limit,
            });
        }
        out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    });
    if encoded.is_err() {
        out.truncate(start);
    }
    encoded
}

/// Byte-string arguments from this size on travel without a copy (see [`JobFrame::one`]).
const TAIL_MIN: usize = 64 << 10;

impl JobFrame {
    pub(crate) fn encode<A: Serialize + 'static>(
        pool: &Pool,
        func: Result<FnRef, String>,
        items: &[A],
    ) -> Self {
        let id = pool.next_id();
        // Room for the length, the header and small arguments, so that a tiny job
        // costs one allocation rather than one and a few regrowths.
        let mut frame = Vec::with_capacity(64 + std::mem::size_of_val(items));
        let frame = encode_frame(pool, id, func, items, &mut frame).map(|()| frame);
        JobFrame {
            id,
            tasks: items.len(),
            frame,
            tail: Bytes::new(),
        }
    }

    /// The frame of a single task. A large `Vec<u8>` or `Bytes` argument is not copied
    /// into the frame but written from where it is: the frame holds the header and the
    /// byte string's length, and the argument follows it on the wire as it is (the
    /// bytes are the same as `encode`'s).
    pub(crate) fn one<A: Serialize + 'static>(
        pool: &Pool,
        func: Result<FnRef, String>,
        arg: A,
    ) -> Self {
        let arg: Box<dyn std::any::Any> = Box::new(arg);
        let bytes = match arg.downcast::<Vec<u8>>() {
            Ok(vec) if vec.len() >= TAIL_MIN => Ok(Bytes::from(*vec)),
            Ok(vec) => Err(vec as Box<dyn std::any::Any>),
            Err(arg) => match arg.downcast::<Bytes>() {
                Ok(bytes) if bytes.len() >= TAIL_MIN => Ok(*bytes),
                Ok(bytes) => Err(bytes as Box<dyn std::any::Any>),
                Err(arg) => Err(arg),
            },
        };
        let tail = match bytes {
            Ok(tail) => tail,
            Err(arg) => {
                let arg = arg.downcast::<A>().expect("the argument's own type");
                return JobFrame::encode(pool, func, std::slice::from_ref(&*arg));
            }
        };
        // A chunk of one byte string: a sequence length of 1, the string's length;
        // the string itself follows on the wire.
        let id = pool.next_id();
        let mut frame = Vec::with_capacity(64);
        let frame = encode_frame_with(pool, id, func, &mut frame, tail.len(), |out| {
            out.push(1);
            put_varint(tail.len() as u64, out);
            Ok(())
        })
        .map(|()| frame);
        JobFrame {
            id,
            tasks: 1,
            frame,
            tail,
        }
    }
}

impl Pool {
    /// A builder for a pool; see [`PoolBuilder`].
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Pool {
        Pool {
            inner: Arc::new(Owner { shared }),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// A new job id.
    pub(crate) fn next_id(&self) -> u64 {
        self.shared().next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.shared().config.processes
    }

    /// Queues a job whose reply goes to a oneshot; returns its receiver and the id.
    /// With `direct`, for a caller that is about to wait for the result, an idle worker
    /// of tiny tasks may run the job at once, in this call (see [`crate::direct`];
    /// bounded by the pool's `spin`).
    pub(crate) fn submit(
        &self,
        job: JobFrame,
        timeout: Option<Duration>,
        abort: Option<Arc<AbortSignal>>,
        direct: bool,
    ) -> (oneshot::Receiver<Reply>, u64) {
        let (tx, rx) = oneshot::channel();
        let id = job.id;
        self.submit_to(job, timeout, abort, ReplyTo::One(tx), direct);
        (rx, id)
    }

    /// Queues a job whose reply goes to `reply`.
    pub(crate) fn submit_to(
        &self,
        job: JobFrame,
        timeout: Option<Duration>,
        abort: Option<Arc<AbortSignal>>,
        reply: ReplyTo,
        direct: bool,
    ) {
        if let Some(mut job) = self.prepare(job, timeout, reply) {
            job.abort = abort;
            self.submit_job(job, direct);
        }
    }

    /// Makes a job of `job` for the queue, or fails it at once (`None`) if it could not
    /// be encoded.
    pub(crate) fn prepare(
        &self,
        job: JobFrame,
        timeout: Option<Duration>,
        reply: ReplyTo,
    ) -> Option<Job> {
        match job.frame {
            Ok(frame) => Some(Job {
                id: job.id,
                frame: frame.into(),
                tail: job.tail,
                tasks: job.tasks,
                timeout,
                abort: None,
                reply,
            }),
            Err(e) => {
                reply.send(Err(e));
                None
            }
        }
    }

    /// Queues a stream's run of chunks under one lock of the queue.
    pub(crate) fn submit_chunks(&self, chunks: ChunkRun) {
        let shared = self.shared();
        let tasks = shared.queue.push_chunks(chunks);
        event!(tracing::Level::TRACE, tasks, "chunks submitted");
        Counters::add(&shared.counters.submitted, tasks);
    }

    fn submit_job(&self, job: Job, direct: bool) {
        let shared = self.shared();
        let tasks = job.tasks;
        event!(tracing::Level::TRACE, job = job.id, tasks, "job submitted");
        let job = match direct {
            true => {
                // Counted first, so that stats never show a task done before it was
                // submitted.
                let submitted = &shared.counters.submitted;
                Counters::add(submitted, tasks as u64);
                match crate::direct::try_direct(shared, job) {
                    Ok(()) => return,
                    Err(job) => {
                        submitted.fetch_sub(tasks as u64, std::sync::atomic::Ordering::Relaxed);
                        job
                    }
                }
            }
            false => job,
        };
        match shared.queue.push(job) {
            Ok(()) => Counters::add(&shared.counters.submitted, tasks as u64),
            Err(job) => job.fail(TaskError::Closed),
        }
    }

    /// Runs `f(arg)` in a worker: await the returned [`Apply`] for the result.
    ///
    /// `f` is a plain `fn` or a closure that captures nothing (a capturing closure is a
    /// compile error). Set a per-call timeout with [`Apply::timeout`].
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
    /// The future resolves to a [`TaskError`] if the task panicked, its worker died, it
    /// timed out, it was cancelled, the pool is closed or was terminated, or its
    /// argument or result could not be encoded or exceeds the frame limit.
    ///
    /// # Cancel safety
    ///
    /// See [`Apply`]: dropping it before it is awaited submits nothing; dropping the
    /// awaiting future removes a task that has not started, and detaches a running one.
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Apply<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        let func = FnRef::of(trampoline::<F, A, R>());
        let job = JobFrame::one(self, func, arg);
        Apply::new(self.clone(), job)
    }

    /// Submits `f(arg)` now and returns its [`TaskHandle`], a future of the result.
    ///
    /// The task is queued whether or not the handle is ever polled. This is
    /// `pool.apply(f, arg).spawn()`.
    ///
    /// # Errors
    ///
    /// As for [`apply`](Pool::apply).
    ///
    /// # Cancel safety
    ///
    /// See [`TaskHandle`].
    pub fn apply_async<F, A, R>(&self, f: F, arg: A) -> TaskHandle<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply(f, arg).spawn()
    }

    fn feed<A, R, I, M>(&self, func: Result<FnRef, String>, input: I, ordered: bool) -> Lazy<R>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned + Send + 'static,
        I: Input<A, M>,
    {
        let pool = self.clone();
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
    /// Work goes to the workers in chunks; see [`Map::chunk_size`].
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
    /// The first [`TaskError`] in input order; see [`apply`](Pool::apply).
    ///
    /// # Cancel safety
    ///
    /// See [`Map`].
    pub fn map<F, A, R, I, M>(&self, f: F, input: I) -> Map<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: Input<A, M>,
    {
        let _ = f;
        Map::new(self.feed(FnRef::of(trampoline::<F, A, R>()), input, true))
    }

    /// Runs `f` on every item of `input` (an iterator or a stream); a [`Stream`] of the
    /// results in input order, with backpressure.
    ///
    /// [`Stream`]: futures::Stream
    ///
    /// # Errors
    ///
    /// Each item is a `Result`: a [`TaskError`] fails only the task (or chunk) it is
    /// about, and the stream goes on.
    ///
    /// # Cancel safety
    ///
    /// See [`Imap`].
    pub fn imap<F, A, R, I, M>(&self, f: F, input: I) -> Imap<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: Input<A, M>,
    {
        let _ = f;
        Imap::new(self.feed(FnRef::of(trampoline::<F, A, R>()), input, true))
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
    pub fn imap_unordered<F, A, R, I, M>(&self, f: F, input: I) -> ImapUnordered<R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: Input<A, M>,
    {
        let _ = f;
        ImapUnordered::new(self.feed(FnRef::of(trampoline::<F, A, R>()), input, false))
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
        let _ = f;
        Map::new(self.feed(FnRef::of(star_trampoline::<F, Args, R>()), input, true))
    }

    /// Refuses new work from now on: submissions fail with [`TaskError::Closed`].
    /// Queued and running tasks still complete; the workers exit once the queue is
    /// empty. Python's `Pool.close()`.
    pub fn close(&self) {
        self.shared().queue.close();
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
        shared.queue.close();
        shared.tracker.close();
        shared.tracker.wait().await;
        shared.starter.shutdown().await;
    }

    /// Kills every worker now, fails unfinished tasks with [`TaskError::Terminated`],
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
