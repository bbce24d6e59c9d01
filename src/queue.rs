//! The pool's queue of jobs, shared by every worker's driver.
//!
//! A plain mutex-guarded deque with waker registration, rather than a channel, because
//! the supervisor needs what channels lack: putting jobs that a dead worker never
//! started back at the *front*, failing everything queued at once on terminate, and
//! skipping jobs whose caller has gone (tower's buffer does the same skip).

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
    pub(crate) fn new(inbox: Arc<Inbox>, seq: u64) -> Self {
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
            self.inbox.put([(self.seq, Err(TaskError::Terminated))]);
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
                self.tally.jobs += tally.jobs;
                self.tally.completed += tally.completed;
                self.tally.failed += tally.failed;
                self.replies.push((feed.seq, reply));
            }
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
                feed.inbox.put([(feed.seq, reply)]);
            }
        }
    }

    /// Whether nobody listens any more.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            ReplyTo::One(tx) => tx.is_closed(),
            ReplyTo::Feed(feed) => feed.inbox.is_closed(),
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
}

#[derive(Debug, Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Drivers waiting for a job: slot, waker, and whether the driver is idle (has
    /// nothing in flight). A new job wakes an idle driver first.
    waiters: Vec<(usize, Waker, bool)>,
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
        while let Some(job) = self.jobs.pop_front() {
            if job.claim() {
                return (Some(job), skipped);
            }
            skipped += 1;
            job.fail(TaskError::Cancelled);
        }
        (None, skipped)
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
            state.jobs.push_back(job);
            state.next_waiter()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Adds jobs at the back under one lock, waking as many waiting drivers as there
    /// are jobs; a closed queue fails them with [`TaskError::Closed`]. Returns how many
    /// tasks were queued.
    pub(crate) fn push_all(&self, jobs: &mut Vec<Job>) -> u64 {
        let mut wakers = Vec::new();
        let mut refused = Vec::new();
        let mut tasks = 0;
        {
            let mut state = self.lock();
            if state.closed {
                refused = std::mem::take(jobs);
            } else {
                for _ in 0..jobs.len().min(state.waiters.len()) {
                    wakers.extend(state.next_waiter());
                }
                tasks = jobs.iter().map(|j| j.tasks as u64).sum();
                state.jobs.extend(jobs.drain(..));
            }
        }
        wakers.into_iter().for_each(Waker::wake);
        refused
            .into_iter()
            .for_each(|job| job.fail(TaskError::Closed));
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
                state.jobs.push_front(job);
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
            if state.jobs.is_empty() {
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
        state.closed && state.jobs.is_empty()
    }

    /// Whether the queue takes jobs and holds none now.
    pub(crate) fn is_open_and_empty(&self) -> bool {
        let state = self.lock();
        !state.closed && state.jobs.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Fails every queued job with `error`; returns how many tasks they held.
    pub(crate) fn fail_all(&self, error: &TaskError) -> u64 {
        let jobs = std::mem::take(&mut self.lock().jobs);
        let mut tasks = 0;
        for job in jobs {
            tasks += job.tasks as u64;
            job.fail(error.clone());
        }
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
