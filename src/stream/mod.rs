//! The `map` family: chunked submission with a bound on work in flight.
//!
//! [`Feed`] pulls items from the input, groups them into chunks, submits each chunk as
//! one job, and yields the results one task at a time, in input order or in completion
//! order. It keeps at most `max_in_flight` chunks submitted and not yet yielded, and it
//! pulls input only when polled: a slow consumer slows the producer, and an endless
//! input runs in constant memory. [`Imap`], [`ImapUnordered`] and
//! [`Map`](crate::Map) are thin public fronts on it.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::PollSemaphore;

use crate::error::TaskError;
use crate::queue::{Admission, ChunkRun, QueuedChunk};
use crate::submit::{encode_frame, Submitter};

mod in_flight;

#[cfg(test)]
pub(crate) use in_flight::decode_chunk_reply;
use in_flight::InFlight;

/// Chunks queued at once (see `Feed::batch`).
const BATCH: usize = 256;

/// A batch is queued once its frames are this large: the buffer they share is freed
/// only when the last of them is done.
const BATCH_BYTES: usize = 1 << 20;
use crate::protocol::FnRef;

/// How far a `map`, `imap`, `imap_unordered` or `starmap` call has come: what a
/// [progress hook](Imap::progress) receives each time results arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Tasks finished so far (successfully or not).
    pub done: usize,
    /// Of those, the tasks that ended in a [`TaskError`].
    pub failed: usize,
    /// How many tasks there are, when the input's length is known in advance.
    pub total: Option<usize>,
}

pub(crate) type ProgressHook = Arc<dyn Fn(Progress) + Send + Sync>;

/// Per-call settings of the `map` family.
#[derive(Clone, Default)]
pub(crate) struct FeedOptions {
    pub(crate) chunk_size: Option<usize>,
    pub(crate) max_in_flight: Option<usize>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) progress: Option<ProgressHook>,
}

impl fmt::Debug for FeedOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedOptions")
            .field("chunk_size", &self.chunk_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("timeout", &self.timeout)
            .field("progress", &self.progress.as_ref().map(|_| "<hook>"))
            .finish()
    }
}

/// See the module docs.
pub(crate) struct Feed<A, R: DeserializeOwned + 'static> {
    pool: Submitter,
    func: Result<FnRef, String>,
    input: BoxStream<'static, A>,
    input_done: bool,
    /// The input panicked: its panic, resumed once the results of every item before it
    /// have been yielded.
    input_panic: Option<Box<dyn std::any::Any + Send>>,
    chunk: Vec<A>,
    chunk_size: usize,
    /// The pool's queue bound, when it has one: each item takes a place before it
    /// joins a chunk (see [`crate::queue::admission`]).
    room: Option<PollSemaphore>,
    /// The places of the items in `chunk`.
    chunk_places: Option<OwnedSemaphorePermit>,
    /// An item taken from the input that waits for a place.
    waiting: Option<A>,
    /// The places of this stream's chunks that are queued and not yet taken by a
    /// driver; released when the stream goes.
    admission: Admission,
    /// `None`: see [`Feed::room`].
    max_in_flight: Option<usize>,
    timeout: Option<Duration>,
    in_flight: InFlight,
    /// Chunks encoded and not yet queued: they are queued in batches, under one lock,
    /// as one entry of the queue ([`ChunkRun`]), and their frames encoded one after
    /// another into `frames`, one buffer per batch (each job's frame is a slice of
    /// it): an allocation per batch, not per chunk, and frames that a driver writes
    /// from one place in memory.
    batch: VecDeque<QueuedChunk>,
    frames: Vec<u8>,
    _result: std::marker::PhantomData<fn() -> R>,
    progress: Option<(ProgressHook, Progress)>,
}

impl<A, R> Feed<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(
        pool: Submitter,
        func: Result<FnRef, String>,
        (len, input): (Option<usize>, BoxStream<'static, A>),
        opts: FeedOptions,
        ordered: bool,
    ) -> Self {
        let processes = pool.shared().config.slots();
        let chunk_size = opts.chunk_size.unwrap_or_else(|| match len {
            // Python's rule: about four chunks per worker.
            Some(len) => len.div_ceil(4 * processes).max(1),
            None => 1,
        });
        let max_in_flight = opts.max_in_flight;
        let room = pool.shared().bound.clone().map(PollSemaphore::new);
        let admission = match room {
            Some(_) => Admission::shared(),
            None => Admission::default(),
        };
        Feed {
            room,
            chunk_places: None,
            waiting: None,
            admission,
            pool,
            func,
            input,
            input_done: false,
            input_panic: None,
            chunk: Vec::new(),
            chunk_size,
            max_in_flight,
            timeout: opts.timeout,
            progress: opts.progress.map(|hook| {
                let start = Progress {
                    done: 0,
                    failed: 0,
                    total: len,
                };
                hook(start);
                (hook, start)
            }),
            in_flight: InFlight::new(ordered),
            batch: VecDeque::new(),
            frames: Vec::new(),
            _result: std::marker::PhantomData,
        }
    }

    /// Encodes the chunk gathered so far; it is queued with the next batch.
    fn submit_chunk(&mut self) {
        let tasks = self.chunk.len();
        let id = self.pool.next_id();
        let start = self.frames.len();
        let encoded = encode_frame(
            &self.pool,
            id,
            self.func.clone(),
            &self.chunk,
            &mut self.frames,
        );
        // The buffer is kept for the next chunk (its items are dropped here).
        self.chunk.clear();
        let seq = self.in_flight.push(tasks);
        let places = self.chunk_places.take();
        match encoded {
            Ok(()) => {
                if let Some(places) = places {
                    self.admission.add(places);
                }
                self.batch.push_back(QueuedChunk {
                    id,
                    seq,
                    len: (self.frames.len() - start) as u32,
                    tasks: tasks as u32,
                });
                if self.batch.len() >= BATCH || self.frames.len() >= BATCH_BYTES {
                    self.submit_batch();
                }
            }
            Err(e) => self.in_flight.inbox.answer(seq, Err(e)),
        }
    }

    /// Queues the batch.
    fn submit_batch(&mut self) {
        let size = self.frames.len();
        let frames = bytes::Bytes::from(std::mem::replace(
            &mut self.frames,
            Vec::with_capacity(size),
        ));
        let batch = std::mem::replace(&mut self.batch, VecDeque::with_capacity(BATCH));
        let chunks = ChunkRun::new(
            frames,
            self.in_flight.inbox.clone(),
            self.timeout,
            batch,
            self.admission.clone(),
        );
        self.pool.submit_chunks(chunks);
    }

    /// How many chunks may be in flight: the caller's bound, or by default four times
    /// what the workers' pipelines hold now (deep for tiny tasks, see the driver's
    /// `Pace`) and never fewer than 16 per worker: the queue keeps a reserve, so that a
    /// driver refilling its pipeline finds jobs there rather than waits for this
    /// stream's consumer. A fixed small window made a stream of tiny tasks wait on its
    /// consumer every few results; a large one would read far ahead of slow tasks.
    fn room(&self) -> usize {
        self.max_in_flight.unwrap_or_else(|| {
            let shared = self.pool.shared();
            (16 * shared.config.slots()).max(4 * shared.pipelines())
        })
    }

    /// A place under the pool's queue bound for one more item of `chunk` (at once
    /// without a bound; none when the pool is closed: the closed queue refuses the
    /// chunk).
    fn admit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(room) = &mut self.room else {
            return Poll::Ready(());
        };
        if let Some(place) = ready!(room.poll_acquire(cx)) {
            match &mut self.chunk_places {
                Some(places) => places.merge(place),
                None => self.chunk_places = Some(place),
            }
        }
        Poll::Ready(())
    }

    /// Pulls input and submits chunks while there is room in flight.
    fn fill(&mut self, cx: &mut Context<'_>) {
        let room = self.room();
        // The default window is refilled once half of it is free: chunks go out in
        // batches, and a driver is woken for a batch, not for each chunk that comes
        // back. (A bound the caller set is kept full: it may be the number of workers.)
        if self.max_in_flight.is_none() && self.in_flight.len() > room / 2 {
            return;
        }
        while (!self.input_done || self.waiting.is_some()) && self.in_flight.len() < room {
            let mut pending = false;
            while self.chunk.len() < self.chunk_size {
                let item = match self.waiting.take() {
                    Some(item) => item,
                    None if self.input_done => break,
                    None => {
                        // The input is the caller's code: a panic in it ends the input
                        // here, and is resumed at its place in the results (see
                        // `poll_next`).
                        let input = &mut self.input;
                        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            input.poll_next_unpin(cx)
                        }));
                        match next {
                            Ok(Poll::Ready(Some(item))) => item,
                            Ok(Poll::Ready(None)) => {
                                self.input_done = true;
                                break;
                            }
                            Ok(Poll::Pending) => {
                                pending = true;
                                break;
                            }
                            Err(panic) => {
                                // It is not polled again, nor dropped before the feed.
                                self.input_panic = Some(panic);
                                self.input_done = true;
                                break;
                            }
                        }
                    }
                };
                // No room under the queue bound: the item waits for a place, and the
                // chunk gathered so far goes out (its places come back as its tasks
                // end; holding them while waiting for more could leave every place
                // held by chunks that wait for one).
                if self.admit(cx).is_pending() {
                    self.waiting = Some(item);
                    pending = true;
                    break;
                }
                self.chunk.push(item);
            }
            // A short chunk goes out when the input has nothing more ready: items that
            // arrived do not wait for ones that have not.
            if !self.chunk.is_empty() {
                self.submit_chunk();
            }
            if pending {
                break;
            }
        }
        if !self.batch.is_empty() {
            self.submit_batch();
        }
    }
}

impl<A, R> Stream for Feed<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    /// The results of every chunk that came meanwhile, at once: a join extends its
    /// `Vec` by whole chunks.
    type Item = Vec<Result<R, TaskError>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.fill(cx);
        match this.in_flight.poll_next(cx) {
            Poll::Ready(Some(results)) => {
                if let Some((hook, progress)) = &mut this.progress {
                    progress.done += results.len();
                    progress.failed += results.iter().filter(|r| r.is_err()).count();
                    hook(*progress);
                }
                Poll::Ready(Some(results))
            }
            Poll::Ready(None) if this.input_done && this.waiting.is_none() => {
                match this.input_panic.take() {
                    // Every item before the panic has been answered and yielded: the
                    // panic comes at its place, after them.
                    Some(panic) => std::panic::resume_unwind(panic),
                    None => Poll::Ready(None),
                }
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

impl<A, R: DeserializeOwned + 'static> Unpin for Feed<A, R> {}

impl<A, R: DeserializeOwned + 'static> Drop for Feed<A, R> {
    /// The places of its chunks still queued come back now: they will not run.
    fn drop(&mut self) {
        self.admission.release();
    }
}

/// The chunks of results of a `map`-family call.
pub(crate) type Chunks<R> = BoxStream<'static, Vec<Result<R, TaskError>>>;

type MakeStream<R> = Box<dyn FnOnce(FeedOptions) -> Chunks<R> + Send>;

/// A stream built on first poll, so that its options can be set until then; it yields
/// results one by one, or ([`poll_chunk`](Lazy::poll_chunk)) whole chunks at a time.
pub(crate) struct Lazy<R> {
    /// How many items the input holds, when known.
    len: Option<usize>,
    opts: FeedOptions,
    make: Option<MakeStream<R>>,
    stream: Option<Chunks<R>>,
    ready: std::vec::IntoIter<Result<R, TaskError>>,
    /// A panic of the input caught by [`spawn`](Lazy::spawn), resumed by the next poll.
    panic: Option<Box<dyn std::any::Any + Send>>,
}

impl<R> Lazy<R> {
    pub(crate) fn new(len: Option<usize>, make: MakeStream<R>) -> Self {
        Lazy {
            len,
            opts: FeedOptions::default(),
            make: Some(make),
            stream: None,
            ready: Vec::new().into_iter(),
            panic: None,
        }
    }

    /// Submits the whole input now (every item of an iterator, the ready items of a
    /// stream), with no window: the eager form of the streams, as [`Map::spawn`](crate::Map::spawn).
    /// A panic of the input before any item was taken is resumed by the next poll.
    pub(crate) fn spawn(&mut self) {
        self.opts.max_in_flight = Some(usize::MAX);
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.start()));
        if let Err(panic) = started {
            self.panic = Some(panic);
        }
    }

    /// How many items the input holds, when known.
    pub(crate) fn len(&self) -> Option<usize> {
        self.len
    }

    pub(crate) fn opts(&mut self) -> &mut FeedOptions {
        &mut self.opts
    }

    /// Builds the stream now and polls it once, without a waker: it pulls every input
    /// item that is ready, up to its window, and submits their chunks before this
    /// returns. Results that came meanwhile are kept for the next poll.
    ///
    /// # Panics
    ///
    /// If the input panics before any item was taken from it (a later panic is
    /// resumed at its place, by a later poll).
    pub(crate) fn start(&mut self) {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        if let Poll::Ready(Some(chunk)) = self.poll_chunk(&mut cx) {
            self.ready = chunk.into_iter();
        }
    }

    /// The next chunks' results (after any left over from the last ones).
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Vec<Result<R, TaskError>>>> {
        if let Some(panic) = self.panic.take() {
            std::panic::resume_unwind(panic);
        }
        if self.ready.len() > 0 {
            return Poll::Ready(Some(std::mem::take(&mut self.ready).collect()));
        }
        if let Some(make) = self.make.take() {
            self.stream = Some(make(std::mem::take(&mut self.opts)));
        }
        match &mut self.stream {
            Some(stream) => stream.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

// Results are never pinned: they are moved out as they are yielded.
impl<R> Unpin for Lazy<R> {}

impl<R> Stream for Lazy<R> {
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.next() {
                return Poll::Ready(Some(item));
            }
            match ready!(this.poll_chunk(cx)) {
                Some(chunk) => this.ready = chunk.into_iter(),
                None => return Poll::Ready(None),
            }
        }
    }
}

#[track_caller]
fn positive(n: usize, what: &str) -> usize {
    assert!(n > 0, "{what} must be at least 1");
    n
}

macro_rules! map_stream {
    ($(#[$doc:meta])* $name:ident, $method:literal) => {
        $(#[$doc])*
        #[must_use = "streams do nothing unless polled"]
        pub struct $name<R> {
            inner: Lazy<R>,
        }

        impl<R> $name<R> {
            pub(crate) fn new(inner: Lazy<R>) -> Self {
                $name { inner }
            }

            /// Sets how many tasks go to a worker in one message. The default is
            /// about `len / (4 × processes)` when the input's length is known
            /// exactly, and 1 otherwise. It takes effect when the stream is first
            /// polled.
            ///
            /// # Panics
            ///
            /// If `n` is 0.
            #[track_caller]
            pub fn chunk_size(mut self, n: usize) -> Self {
                self.inner.opts().chunk_size = Some(positive(n, "chunk_size"));
                self
            }

            /// Sets how many chunks may be submitted and not yet yielded at once:
            /// the backpressure bound, kept full. By default it follows the tasks:
            /// `16 × processes`, or, while the workers run tasks of microseconds, four
            /// times what fills their pipelines (up to `4 × processes ×`
            /// [`pipeline_depth`](crate::PoolBuilder::pipeline_depth)), refilled
            /// whenever half of it is free.
            ///
            /// # Panics
            ///
            /// If `n` is 0.
            #[track_caller]
            pub fn max_in_flight(mut self, n: usize) -> Self {
                self.inner.opts().max_in_flight = Some(positive(n, "max_in_flight"));
                self
            }

            /// Sets a timeout for each chunk (each task, with a chunk size of 1),
            /// overriding the pool's [`task_timeout`](crate::PoolBuilder::task_timeout).
            pub fn timeout(mut self, timeout: Duration) -> Self {
                self.inner.opts().timeout = Some(timeout);
                self
            }

            /// Calls `hook` with the [`Progress`] so far: once when the stream is
            /// first polled, then each time results arrive (those of all the chunks
            /// that came meanwhile, at once). A progress bar plugs in here (see the
            /// `primes` example).
            pub fn progress(mut self, hook: impl Fn(Progress) + Send + Sync + 'static) -> Self {
                self.inner.opts().progress = Some(Arc::new(hook));
                self
            }

            /// Submits the whole input now, before this returns, with no window
            /// (Python's `imap`, which takes its whole input at once), and returns
            /// the stream of its results: the work is accepted even if
            /// [`Pool::close`](crate::Pool::close) comes next, and
            /// [`Pool::join`](crate::Pool::join) waits for it. Every item of an
            /// iterator is taken in this call, so do not spawn an endless one (the
            /// lazy stream is the form for those); of a stream, the items it has
            /// ready, and the rest as the stream is polled (those that come after
            /// the pool was closed fail with [`TaskError::Closed`]). The results wait
            /// in memory until they are taken.
            ///
            /// ```
            /// # #[tokio::main(flavor = "current_thread")]
            /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
            /// use futures::StreamExt;
            /// # let pool = procpool::Pool::builder().processes(2).build().await?;
            /// fn square(x: u64) -> u64 { x * x }
            #[doc = concat!("let results = pool.", $method, "(square, 0..100).spawn();")]
            /// pool.close();
            /// pool.join().await;
            /// let all: Vec<_> = results.collect().await;
            /// assert_eq!(all.len(), 100);
            /// # Ok(()) }
            /// ```
            ///
            /// # Panics
            ///
            /// Never here: a panic of the input is resumed in the consumer's `next()`
            /// at its place (the first, if it panicked before its first item).
            pub fn spawn(mut self) -> Self {
                self.inner.spawn();
                self
            }
        }

        impl<R> Stream for $name<R> {
            type Item = Result<R, TaskError>;

            fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                self.get_mut().inner.poll_next_unpin(cx)
            }
        }

        impl<R> fmt::Debug for $name<R> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }
    };
}

map_stream!(
    /// The stream of results of [`Pool::imap`](crate::Pool::imap), in input order.
    ///
    /// Nothing is submitted until the stream is first polled. It then keeps at most
    /// [`max_in_flight`](Imap::max_in_flight) chunks submitted ahead of the consumer and
    /// pulls more input only as results are taken, so an endless input runs in constant
    /// memory.
    ///
    /// What it has not submitted when the pool is [closed](crate::Pool::close) fails
    /// with [`TaskError::Closed`]. To submit a whole input now (Python's `imap`, before
    /// `close` and `join`), use its eager form, [`spawn`](Imap::spawn).
    ///
    /// # Cancel safety
    ///
    /// `next()` is cancel safe: no result is lost if it is dropped before completing.
    /// Dropping the stream stops feeding work: queued chunks are removed from the queue
    /// and chunks already running finish with their results discarded.
    ///
    /// # Panics
    ///
    /// If the input (its iterator or stream) panics, the panic is resumed in the
    /// consumer's `next()` at its place: after the results of every item before it.
    /// (A stream of `Result`s is a stream of items like any other: an `Err` item goes
    /// to the task as its argument, and does not end the input.)
    Imap,
    "imap"
);

map_stream!(
    /// The stream of results of [`Pool::imap_unordered`](crate::Pool::imap_unordered),
    /// in completion order.
    ///
    /// Nothing is submitted until the stream is first polled. It then keeps at most
    /// [`max_in_flight`](ImapUnordered::max_in_flight) chunks submitted ahead of the
    /// consumer and pulls more input only as results are taken. As [`Imap`], its eager
    /// form is [`spawn`](ImapUnordered::spawn).
    ///
    /// # Cancel safety
    ///
    /// `next()` is cancel safe: no result is lost if it is dropped before completing.
    /// Dropping the stream stops feeding work: queued chunks are removed from the queue
    /// and chunks already running finish with their results discarded.
    ///
    /// # Panics
    ///
    /// If the input (its iterator or stream) panics, the panic is resumed in the
    /// consumer's `next()` after the results of every item before it.
    ImapUnordered,
    "imap_unordered"
);
