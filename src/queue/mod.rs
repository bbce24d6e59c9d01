//! The pool's queue of jobs, shared by every worker's driver.
//!
//! A plain mutex-guarded deque with waker registration, rather than a channel, because
//! the supervisor needs what channels lack: putting jobs that a dead worker never
//! started back at the *front*, failing everything queued at once on terminate, and
//! skipping jobs whose caller has gone (tower's buffer does the same skip). A
//! `map`-family stream queues its chunks a batch at a time, as one entry
//! ([`ChunkRun`]); a driver makes each chunk's [`Job`] as it takes it.

pub(crate) mod admission;
pub(crate) mod cancel;
pub(crate) mod job;
pub(crate) mod route;

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::TaskError;

pub(crate) use admission::{Admission, Release};
pub(crate) use cancel::AbortSignal;
pub(crate) use job::{ChunkRun, Handover, Job, QueuedChunk};
pub(crate) use route::{Inbox, Reply, ReplyTo};

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
                    chunks.release();
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

    /// Marks the driver of `slot`, if it waits, as busy: a caller has just left it a
    /// job (see `crate::direct`), and a new job should wake an idle driver first.
    pub(crate) fn mark_busy(&self, slot: usize) {
        if let Some((_, _, idle)) = self.lock().waiters.iter_mut().find(|(s, _, _)| *s == slot) {
            *idle = false;
        }
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
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::sync::oneshot;

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
        ChunkRun::new(
            frames.into(),
            inbox.clone(),
            None,
            chunks,
            Admission::default(),
        )
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
                memfd: None,
                tasks: 1,
                timeout: None,
                abort: None,
                reply: ReplyTo::One(tx, Release::default()),
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
}
