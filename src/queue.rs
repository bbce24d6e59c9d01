//! The pool's queue of jobs, shared by every worker's driver.
//!
//! A plain mutex-guarded deque with waker registration, rather than a channel, because
//! the supervisor needs what channels lack: putting jobs that a dead worker never
//! started back at the *front*, failing everything queued at once on terminate, and
//! skipping jobs whose caller has gone (tower's buffer does the same skip). A
//! `map`-family stream queues its chunks a batch at a time, as one entry
//! ([`ChunkRun`]); a driver makes each chunk's [`Job`] as it takes it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::task::AtomicWaker;
use tokio::sync::oneshot;

use crate::error::TaskError;
use crate::shared::{Counters, Shared};

/// What a job's caller receives: its results, or why there are none.
pub(crate) type Reply = Result<Results, TaskError>;

/// A job's results as they came.
#[derive(Debug)]
pub(crate) enum Results {
    /// The chunk of encoded results (see `codec::decode_results`).
    Chunk(Bytes),
    /// The job's one result, a byte string (a `Vec<u8>` or `Bytes`): its bytes, in a
    /// buffer of their own (see `codec::ReplyCodec`).
    ByteString(BytesMut),
    /// A chunk of results of at most [`SMALL`] bytes, held in the reply itself: it
    /// keeps no buffer of the driver's alive, and the stream finds it where the reply
    /// is, not on another line of memory that the driver's thread wrote.
    Small(SmallChunk),
}

/// The most bytes of results a reply holds in itself (as large as `Results` allows
/// without growing).
pub(crate) const SMALL: usize = 38;

/// See [`Results::Small`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SmallChunk {
    len: u8,
    bytes: [u8; SMALL],
}

impl SmallChunk {
    /// `chunk` held in place; `None` if it is longer than [`SMALL`].
    pub(crate) fn new(chunk: &[u8]) -> Option<SmallChunk> {
        let mut bytes = [0; SMALL];
        bytes.get_mut(..chunk.len())?.copy_from_slice(chunk);
        Some(SmallChunk {
            len: chunk.len() as u8,
            bytes,
        })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Results {
    /// Runs `f` on the chunk of encoded results, wherever it is held (a small one is
    /// not copied out of the reply).
    pub(crate) fn with_chunk<T>(self, f: impl FnOnce(&[u8]) -> T) -> T {
        match self {
            Results::Small(small) => f(small.as_slice()),
            other => f(&other.into_chunk()),
        }
    }

    /// The chunk of encoded results: for a byte string, a copy encoded as the chunk
    /// it came in (for a caller that did not expect one; never on the usual paths).
    pub(crate) fn into_chunk(self) -> Bytes {
        match self {
            Results::Chunk(chunk) => chunk,
            Results::Small(small) => Bytes::copy_from_slice(small.as_slice()),
            Results::ByteString(bytes) => {
                // A sequence of one, variant `Ok`, then the string (see
                // `codec::byte_string_result`).
                let mut chunk = Vec::with_capacity(12 + bytes.len());
                chunk.extend_from_slice(&[1, 0]);
                crate::protocol::put_varint(bytes.len() as u64, &mut chunk);
                chunk.extend_from_slice(&bytes);
                chunk.into()
            }
        }
    }
}

/// Where a job with a handle stands, and its handle's `abort()`.
///
/// `abort()` on a job still queued wins the race against a driver taking it (one
/// compare-and-swap decides): the handle resolves as cancelled at once and the driver
/// skips the job. On a job already taken, it asks the driver to kill the worker.
#[derive(Debug, Default)]
pub(crate) struct AbortSignal {
    state: AtomicU8,
    /// The driver's waker, for an abort of a taken job.
    waker: AtomicWaker,
    /// The handle's waker, for an abort of a queued job.
    handle: AtomicWaker,
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const ABORTED_QUEUED: u8 = 2;
const ABORTED_TAKEN: u8 = 3;

impl AbortSignal {
    pub(crate) fn abort(&self) {
        match self.state.compare_exchange(
            QUEUED,
            ABORTED_QUEUED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => self.handle.wake(),
            Err(_) => {
                let _ = self.state.compare_exchange(
                    TAKEN,
                    ABORTED_TAKEN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                self.waker.wake();
            }
        }
    }

    /// Called by the driver that takes the job: false if the job was aborted first.
    pub(crate) fn take(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Puts a job that a driver took, but whose worker never started it, back in the
    /// queued state (unless it was aborted meanwhile: then it stays aborted, and the
    /// next driver to pop it skips it).
    fn requeue(&self) {
        let _ = self
            .state
            .compare_exchange(TAKEN, QUEUED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// For the handle: ready once the job was aborted before any driver took it.
    pub(crate) fn poll_cancelled_in_queue(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.load(Ordering::Acquire) == ABORTED_QUEUED {
            return Poll::Ready(());
        }
        self.handle.register(cx.waker());
        if self.state.load(Ordering::Acquire) == ABORTED_QUEUED {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub(crate) fn is_aborted(&self) -> bool {
        matches!(
            self.state.load(Ordering::Acquire),
            ABORTED_QUEUED | ABORTED_TAKEN
        )
    }

    /// Ready once aborted.
    pub(crate) fn poll_aborted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_aborted() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_aborted() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Where a job's reply goes.
#[derive(Debug)]
pub(crate) enum ReplyTo {
    /// A single task's handle.
    One(oneshot::Sender<Reply>),
    /// A `map`-family stream, which receives every chunk's reply on one channel,
    /// tagged with the chunk's sequence number. (A channel per stream, not a oneshot
    /// per chunk: a `map` of 200,000 tasks would otherwise poll 200,000 futures.)
    Feed(FeedReply),
    /// Nobody: the job was taken back from a stalled worker and sent elsewhere (see
    /// [`Job::ghost`]); what the worker does with this copy is not heard.
    Nobody,
}

/// Where a `map`-family stream's chunks reply: one per stream. Replies are tagged
/// with their chunk's sequence number, and a driver hands over all it has for one
/// stream under one lock, with one wake-up (see [`Deliveries`]).
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    replies: Mutex<VecDeque<(u64, Reply)>>,
    waker: AtomicWaker,
    /// The stream is gone: nobody listens.
    closed: std::sync::atomic::AtomicBool,
}

impl Inbox {
    fn put(&self, replies: impl IntoIterator<Item = (u64, Reply)>) {
        {
            // Under the lock that `close` takes: nothing is put in after it cleared.
            let mut inbox = self.replies.lock().unwrap_or_else(|e| e.into_inner());
            if self.is_closed() {
                return;
            }
            inbox.extend(replies);
        }
        self.waker.wake();
    }

    /// Answers the stream's chunk `seq` (outside any batch: see [`Deliveries`]).
    pub(crate) fn answer(&self, seq: u64, reply: Reply) {
        self.put([(seq, reply)]);
    }

    /// For the stream: moves every reply come so far into `out` (which it expects
    /// empty); `Pending` if none has.
    pub(crate) fn poll_take(
        &self,
        out: &mut VecDeque<(u64, Reply)>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        for attempt in 0..2 {
            {
                let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
                if !replies.is_empty() {
                    std::mem::swap(&mut *replies, out);
                    return Poll::Ready(());
                }
            }
            if attempt == 0 {
                // Then look again: a reply put in meanwhile woke nobody.
                self.waker.register(cx.waker());
            }
        }
        Poll::Pending
    }

    /// For the stream, when it goes: replies are dropped from now on.
    pub(crate) fn close(&self) {
        let mut inbox = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::Relaxed);
        inbox.clear();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// A chunk's reply slot in a `map`-family stream. If it is dropped unused (the pool's
/// tasks were dropped with the runtime), the stream hears `Terminated`, so no stream
/// waits forever for a chunk.
#[derive(Debug)]
pub(crate) struct FeedReply {
    inbox: Arc<Inbox>,
    seq: u64,
    sent: bool,
}

impl FeedReply {
    fn new(inbox: Arc<Inbox>, seq: u64) -> Self {
        FeedReply {
            inbox,
            seq,
            sent: false,
        }
    }
}

impl Drop for FeedReply {
    fn drop(&mut self) {
        if !self.sent {
            self.inbox.answer(self.seq, Err(TaskError::Terminated));
        }
    }
}

/// Replies a driver has for `map`-family streams, handed over together: those for one
/// stream that come one after another go under one lock, with one wake-up; the tasks
/// they answer are counted in the pool's stats just before (one update of each shared
/// counter per batch, not per reply). Whatever it holds is handed over when it is
/// flushed or dropped.
#[derive(Debug)]
pub(crate) struct Deliveries<'a> {
    shared: &'a Shared,
    slot: usize,
    inbox: Option<Arc<Inbox>>,
    replies: Vec<(u64, Reply)>,
    tally: Tally,
}

/// Tasks answered and not yet counted in the stats.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    /// Jobs, for the worker's count.
    pub(crate) jobs: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.jobs += other.jobs;
        self.completed += other.completed;
        self.failed += other.failed;
    }
}

impl Tally {
    /// Adds the counts to the pool's stats, as slot `slot`'s worker's.
    pub(crate) fn count(self, shared: &Shared, slot: usize) {
        if self.jobs > 0 {
            shared.count_worker_task(slot, self.jobs);
        }
        for (counter, n) in [
            (&shared.counters.completed, self.completed),
            (&shared.counters.failed, self.failed),
        ] {
            if n > 0 {
                Counters::add(counter, n);
            }
        }
    }
}

impl<'a> Deliveries<'a> {
    /// For slot `slot`'s driver.
    pub(crate) fn new(shared: &'a Shared, slot: usize) -> Self {
        Deliveries {
            shared,
            slot,
            inbox: None,
            replies: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// Counts and hands over what it holds.
    pub(crate) fn flush(&mut self) {
        std::mem::take(&mut self.tally).count(self.shared, self.slot);
        if let Some(inbox) = self.inbox.take() {
            inbox.put(self.replies.drain(..));
        }
    }

    /// Sends a job's `reply`, whose tasks `tally` counts: a single task's at once
    /// (its caller may read the stats as soon as it has its result), a stream's with
    /// the others here.
    pub(crate) fn send(&mut self, to: ReplyTo, reply: Reply, tally: Tally) {
        match to {
            ReplyTo::One(tx) => {
                tally.count(self.shared, self.slot);
                let _ = tx.send(reply);
            }
            ReplyTo::Feed(mut feed) => {
                feed.sent = true;
                if !self
                    .inbox
                    .as_ref()
                    .is_some_and(|inbox| Arc::ptr_eq(inbox, &feed.inbox))
                {
                    self.flush();
                    self.inbox = Some(feed.inbox.clone());
                }
                self.tally += tally;
                self.replies.push((feed.seq, reply));
            }
            ReplyTo::Nobody => {}
        }
    }
}

impl Drop for Deliveries<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl ReplyTo {
    pub(crate) fn send(self, reply: Reply) {
        match self {
            ReplyTo::One(tx) => {
                let _ = tx.send(reply);
            }
            ReplyTo::Feed(mut feed) => {
                feed.sent = true;
                feed.inbox.answer(feed.seq, reply);
            }
            ReplyTo::Nobody => {}
        }
    }

    /// Whether nobody listens any more.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            ReplyTo::One(tx) => tx.is_closed(),
            ReplyTo::Feed(feed) => feed.inbox.is_closed(),
            ReplyTo::Nobody => true,
        }
    }
}

/// One unit of work for a worker: a chunk of one or more tasks.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: u64,
    /// The encoded `ToWorker::Job` frame: header and arguments (the length prefix
    /// counts `tail` too).
    pub(crate) frame: Bytes,
    /// The rest of the frame, when a large byte-string argument is sent as it is,
    /// without a copy; usually empty.
    pub(crate) tail: Bytes,
    /// How many tasks the chunk holds.
    pub(crate) tasks: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) abort: Option<Arc<AbortSignal>>,
    pub(crate) reply: ReplyTo,
}

impl Job {
    /// Claims the job for a driver; false if nobody waits for it any more (its handle
    /// was dropped or aborted).
    /// The frame's length on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        self.frame.len() + self.tail.len()
    }

    pub(crate) fn claim(&self) -> bool {
        !self.reply.is_closed() && self.abort.as_ref().is_none_or(|a| a.take())
    }

    pub(crate) fn fail(self, error: TaskError) {
        self.reply.send(Err(error));
    }

    /// Takes this job's place in a stalled worker's pipeline for it, and gives back the
    /// job itself, to be sent elsewhere: the ghost keeps the frame (its bytes are on
    /// their way to the worker, which will skip them) and answers nobody.
    pub(crate) fn make_ghost(&mut self) -> Job {
        let ghost = Job {
            id: self.id,
            frame: self.frame.clone(),
            tail: self.tail.clone(),
            tasks: 0,
            timeout: None,
            abort: None,
            reply: ReplyTo::Nobody,
        };
        std::mem::replace(self, ghost)
    }

    /// Whether this is a ghost (see [`make_ghost`](Self::make_ghost)).
    pub(crate) fn is_ghost(&self) -> bool {
        matches!(self.reply, ReplyTo::Nobody)
    }
}

#[derive(Debug, Default)]
struct State {
    /// The queued work, in order.
    entries: VecDeque<Entry>,
    /// How many jobs `entries` holds.
    len: usize,
    closed: bool,
    /// Drivers waiting for a job: slot, waker, and whether the driver is idle (has
    /// nothing in flight). A new job wakes an idle driver first.
    waiters: Vec<(usize, Waker, bool)>,
}

/// What the queue holds: a job, or a run of a stream's chunks.
#[derive(Debug)]
enum Entry {
    Job(Job),
    ChunkRun(ChunkRun),
}

/// A run of chunks of one `map`-family stream, queued as one entry: their frames lie
/// one after another in one buffer, and each is a few bytes here (a [`QueuedChunk`]); the
/// driver that takes one makes its [`Job`]. A job is two cache lines that would
/// otherwise be written by the stream's thread and read by a driver's.
#[derive(Debug)]
pub(crate) struct ChunkRun {
    frames: Bytes,
    /// Where the next chunk's frame starts in `frames`.
    offset: usize,
    inbox: Arc<Inbox>,
    timeout: Option<Duration>,
    chunks: VecDeque<QueuedChunk>,
}

/// One chunk of [`ChunkRun`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueuedChunk {
    pub(crate) id: u64,
    /// Its sequence number in the stream.
    pub(crate) seq: u64,
    /// Its frame's length.
    pub(crate) len: u32,
    pub(crate) tasks: u32,
}

impl ChunkRun {
    /// The chunks `chunks` of the stream whose replies go to `inbox`, their frames
    /// one after another in `frames`.
    pub(crate) fn new(
        frames: Bytes,
        inbox: Arc<Inbox>,
        timeout: Option<Duration>,
        chunks: VecDeque<QueuedChunk>,
    ) -> Self {
        ChunkRun {
            frames,
            offset: 0,
            inbox,
            timeout,
            chunks,
        }
    }

    /// How many tasks the chunks hold.
    pub(crate) fn tasks(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.tasks)).sum()
    }

    /// The next chunk, as a job.
    fn pop(&mut self) -> Option<Job> {
        let chunk = self.chunks.pop_front()?;
        let end = self.offset + chunk.len as usize;
        let frame = self.frames.slice(self.offset..end);
        self.offset = end;
        Some(Job {
            id: chunk.id,
            frame,
            tail: Bytes::new(),
            tasks: chunk.tasks as usize,
            timeout: self.timeout,
            abort: None,
            reply: ReplyTo::Feed(FeedReply::new(self.inbox.clone(), chunk.seq)),
        })
    }

    /// Answers every chunk left with `error`.
    fn fail(&mut self, error: &TaskError) {
        let replies = self.chunks.drain(..).map(|c| (c.seq, Err(error.clone())));
        self.inbox.put(replies);
    }
}

impl Drop for ChunkRun {
    /// Chunks dropped unanswered (the pool's tasks were dropped with the runtime)
    /// tell their stream, as their jobs would (see [`FeedReply`]).
    fn drop(&mut self) {
        if !self.chunks.is_empty() {
            self.fail(&TaskError::Terminated);
        }
    }
}

impl State {
    /// The driver to wake for a new job: an idle one if any, else the latest.
    fn next_waiter(&mut self) -> Option<Waker> {
        let index = self
            .waiters
            .iter()
            .rposition(|(_, _, idle)| *idle)
            .or_else(|| self.waiters.len().checked_sub(1))?;
        Some(self.waiters.swap_remove(index).1)
    }

    /// The first job someone still waits for; the abandoned ones before it are failed
    /// as cancelled (nobody hears it) and counted.
    fn pop_live(&mut self) -> (Option<Job>, u64) {
        let mut skipped = 0;
        while let Some(entry) = self.entries.front_mut() {
            match entry {
                Entry::ChunkRun(chunks) if chunks.inbox.is_closed() => {
                    // The stream is gone: its chunks go unanswered, all at once.
                    let n = chunks.chunks.len();
                    chunks.chunks.clear();
                    self.len -= n;
                    skipped += n as u64;
                    self.entries.pop_front();
                }
                Entry::ChunkRun(chunks) => {
                    let job = chunks.pop();
                    if chunks.chunks.is_empty() {
                        self.entries.pop_front();
                    }
                    if let Some(job) = job {
                        self.len -= 1;
                        return (Some(job), skipped);
                    }
                }
                Entry::Job(_) => {
                    let Some(Entry::Job(job)) = self.entries.pop_front() else {
                        unreachable!("the front entry is a job");
                    };
                    self.len -= 1;
                    if job.claim() {
                        return (Some(job), skipped);
                    }
                    skipped += 1;
                    job.fail(TaskError::Cancelled);
                }
            }
        }
        (None, skipped)
    }

    /// Takes every entry out; returns them and how many tasks they hold.
    fn take_all(&mut self) -> (Vec<Entry>, u64) {
        self.len = 0;
        let entries: Vec<Entry> = self.entries.drain(..).collect();
        let tasks = entries
            .iter()
            .map(|e| match e {
                Entry::Job(job) => job.tasks as u64,
                Entry::ChunkRun(chunks) => chunks.tasks(),
            })
            .sum();
        (entries, tasks)
    }
}

/// What [`Queue::poll_pop`] found.
#[derive(Debug)]
pub(crate) enum Popped {
    Job(Job),
    /// The queue is closed and empty: no job will ever come.
    Closed,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    state: Mutex<State>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover the data if something did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a job at the back; gives it back if the queue is closed.
    // The job is handed back, not an error to pass around; boxing it would cost an
    // allocation per job.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, job: Job) -> Result<(), Job> {
        let waker = {
            let mut state = self.lock();
            if state.closed {
                return Err(job);
            }
            state.entries.push_back(Entry::Job(job));
            state.len += 1;
            state.next_waiter()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Adds a stream's run of chunks at the back under one lock, waking as many
    /// waiting drivers as there are chunks; a closed queue fails them with
    /// [`TaskError::Closed`]. Returns how many tasks were queued.
    pub(crate) fn push_chunks(&self, mut chunks: ChunkRun) -> u64 {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            chunks.fail(&TaskError::Closed);
            return 0;
        }
        let tasks = chunks.tasks();
        let wakers: Vec<Waker> = (0..chunks.chunks.len().min(state.waiters.len()))
            .filter_map(|_| state.next_waiter())
            .collect();
        state.len += chunks.chunks.len();
        state.entries.push_back(Entry::ChunkRun(chunks));
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
        tasks
    }

    /// Puts jobs that were taken but never started back at the front, in order; even
    /// a closed queue takes them, since they were accepted before it closed.
    pub(crate) fn requeue(&self, jobs: impl DoubleEndedIterator<Item = Job>) {
        let wakers = {
            let mut state = self.lock();
            for job in jobs.rev() {
                if let Some(abort) = &job.abort {
                    abort.requeue();
                }
                state.entries.push_front(Entry::Job(job));
                state.len += 1;
            }
            std::mem::take(&mut state.waiters)
        };
        wakers.into_iter().for_each(|(_, w, _)| w.wake());
    }

    /// Takes the next job that someone still waits for, dropping abandoned ones; returns
    /// how many were dropped alongside.
    /// `idle` says whether the driver has nothing in flight.
    pub(crate) fn poll_pop(
        &self,
        slot: usize,
        idle: bool,
        cx: &mut Context<'_>,
    ) -> (Poll<Popped>, u64) {
        let mut state = self.lock();
        let (job, skipped) = state.pop_live();
        if let Some(job) = job {
            return (Poll::Ready(Popped::Job(job)), skipped);
        }
        if state.closed {
            return (Poll::Ready(Popped::Closed), skipped);
        }
        match state.waiters.iter_mut().find(|(s, _, _)| *s == slot) {
            Some((_, w, i)) => {
                w.clone_from(cx.waker());
                *i = idle;
            }
            None => state.waiters.push((slot, cx.waker().clone(), idle)),
        }
        (Poll::Pending, skipped)
    }

    /// Moves up to `max` jobs that someone still waits for to `out`, under one lock;
    /// returns how many abandoned jobs were dropped alongside.
    pub(crate) fn pop_into(&self, max: usize, out: &mut VecDeque<Job>) -> u64 {
        let mut state = self.lock();
        let mut skipped = 0;
        for _ in 0..max {
            let (job, s) = state.pop_live();
            skipped += s;
            match job {
                Some(job) => out.push_back(job),
                None => break,
            }
        }
        skipped
    }

    /// Forgets a driver that stops taking jobs, and passes its wake-up on so that no
    /// job waits for a driver that is gone.
    pub(crate) fn unregister(&self, slot: usize) {
        let next = {
            let mut state = self.lock();
            state.waiters.retain(|(s, _, _)| *s != slot);
            if state.len == 0 {
                None
            } else {
                state.next_waiter()
            }
        };
        if let Some(w) = next {
            w.wake();
        }
    }

    /// Refuses new jobs from now on; queued ones stay.
    pub(crate) fn close(&self) {
        let wakers = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.waiters)
        };
        wakers.into_iter().for_each(|(_, w, _)| w.wake());
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Whether the queue is closed and holds no job.
    pub(crate) fn is_finished(&self) -> bool {
        let state = self.lock();
        state.closed && state.len == 0
    }

    /// Whether the queue takes jobs and holds none now.
    pub(crate) fn is_open_and_empty(&self) -> bool {
        let state = self.lock();
        !state.closed && state.len == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len
    }

    /// Fails every queued job with `error`; returns how many tasks they held.
    pub(crate) fn fail_all(&self, error: &TaskError) -> u64 {
        let (entries, tasks) = self.lock().take_all();
        // Answered outside the lock.
        for entry in entries {
            match entry {
                Entry::Job(job) => job.fail(error.clone()),
                Entry::ChunkRun(mut chunks) => chunks.fail(error),
            }
        }
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `n` one-task chunks with frames of 3 bytes each ([i, i, i]), replying
    /// to `inbox`, sequence numbers from `seq`.
    fn run(inbox: &Arc<Inbox>, n: u64, seq: u64) -> ChunkRun {
        let frames: Vec<u8> = (0..n).flat_map(|i| [i as u8; 3]).collect();
        let chunks = (0..n)
            .map(|i| QueuedChunk {
                id: 100 + seq + i,
                seq: seq + i,
                len: 3,
                tasks: 1,
            })
            .collect();
        ChunkRun::new(frames.into(), inbox.clone(), None, chunks)
    }

    fn take_replies(inbox: &Inbox) -> Vec<(u64, Reply)> {
        let mut out = VecDeque::new();
        let mut cx = Context::from_waker(Waker::noop());
        let _ = inbox.poll_take(&mut out, &mut cx);
        out.into()
    }

    /// Whether `replies` are `n` errors, each as `is` says.
    fn all_failed(replies: &[(u64, Reply)], n: usize, is: fn(&TaskError) -> bool) -> bool {
        replies.len() == n && replies.iter().all(|(_, r)| r.as_ref().is_err_and(is))
    }

    fn pop(queue: &Queue) -> Option<Job> {
        let mut out = VecDeque::new();
        queue.pop_into(1, &mut out);
        out.pop_front()
    }

    #[test]
    fn chunks_become_jobs_in_order_among_single_jobs() {
        let queue = Queue::default();
        let inbox = Arc::new(Inbox::default());
        // (Their callers wait: a job whose caller has gone is skipped.)
        let mut waiting = Vec::new();
        let mut single = |id| {
            let (tx, rx) = oneshot::channel();
            waiting.push(rx);
            Job {
                id,
                frame: Bytes::from_static(b"one"),
                tail: Bytes::new(),
                tasks: 1,
                timeout: None,
                abort: None,
                reply: ReplyTo::One(tx),
            }
        };
        assert!(queue.push(single(1)).is_ok());
        assert_eq!(queue.push_chunks(run(&inbox, 3, 0)), 3);
        assert!(queue.push(single(2)).is_ok());
        assert_eq!(queue.len(), 5);
        let ids: Vec<u64> = std::iter::from_fn(|| pop(&queue)).map(|j| j.id).collect();
        assert_eq!(ids, [1, 100, 101, 102, 2]);
        assert_eq!(queue.len(), 0);
        // Those jobs were dropped unanswered: their stream hears it.
        let dropped = take_replies(&inbox);
        assert_eq!(
            dropped.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(all_failed(&dropped, 3, |e| matches!(
            e,
            TaskError::Terminated
        )));
        // Each chunk's job has its own frame, and answers its own sequence number.
        assert!(queue.push_chunks(run(&inbox, 3, 10)) == 3);
        for i in 0..3u8 {
            let job = pop(&queue).expect("a job");
            assert_eq!(&job.frame[..], &[i; 3]);
            assert_eq!(job.tasks, 1);
            job.reply.send(Err(TaskError::Cancelled));
        }
        let seqs: Vec<u64> = take_replies(&inbox).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, [10, 11, 12]);
    }

    #[test]
    fn a_gone_stream_s_chunks_are_skipped_and_a_requeued_one_goes_first() {
        let queue = Queue::default();
        let gone = Arc::new(Inbox::default());
        let live = Arc::new(Inbox::default());
        queue.push_chunks(run(&gone, 4, 0));
        queue.push_chunks(run(&live, 2, 0));
        gone.close();
        let mut out = VecDeque::new();
        assert_eq!(
            queue.pop_into(1, &mut out),
            4,
            "the gone stream's chunks are counted"
        );
        let first = out.pop_front().expect("the live stream's first");
        assert_eq!(first.id, 100);
        // Taken but never started: back at the front, before the chunk after it.
        queue.requeue(std::iter::once(first));
        assert_eq!(queue.len(), 2);
        assert_eq!(pop(&queue).map(|j| j.id), Some(100));
        assert_eq!(pop(&queue).map(|j| j.id), Some(101));
        assert!(pop(&queue).is_none());
    }

    #[test]
    fn chunks_that_never_run_are_answered() {
        // Failed with the pool's error.
        let queue = Queue::default();
        let inbox = Arc::new(Inbox::default());
        queue.push_chunks(run(&inbox, 3, 0));
        let _taken = pop(&queue);
        assert_eq!(queue.fail_all(&TaskError::Terminated), 2);
        let replies = take_replies(&inbox);
        assert!(all_failed(&replies, 2, |e| matches!(
            e,
            TaskError::Terminated
        )));
        // Refused by a closed queue.
        queue.close();
        assert_eq!(queue.push_chunks(run(&inbox, 2, 5)), 0);
        let replies = take_replies(&inbox);
        assert!(all_failed(&replies, 2, |e| matches!(e, TaskError::Closed)));
        // Dropped with the queue (the runtime went): the stream hears it.
        let queue = Queue::default();
        queue.push_chunks(run(&inbox, 2, 7));
        drop(queue);
        let replies = take_replies(&inbox);
        assert!(all_failed(&replies, 2, |e| matches!(
            e,
            TaskError::Terminated
        )));
    }

    #[test]
    fn a_small_chunk_holds_up_to_small_bytes_and_results_do_not_grow() {
        let bytes: Vec<u8> = (0..=SMALL as u8).collect();
        for len in 0..=SMALL {
            let small = SmallChunk::new(&bytes[..len]).expect("fits");
            assert_eq!(small.as_slice(), &bytes[..len]);
            assert_eq!(&Results::Small(small).into_chunk()[..], &bytes[..len]);
        }
        assert!(SmallChunk::new(&bytes[..SMALL + 1]).is_none());
        assert_eq!(
            std::mem::size_of::<Results>(),
            std::mem::size_of::<Bytes>() + 8
        );
    }
}
