//! Handing replies to their callers: a driver's batch of stream replies, and the
//! counting of what they answer.

use std::sync::Arc;

use crate::outcome::reply_of;
use crate::protocol::codec::ReplyFrame;
use crate::protocol::{Done, Outcome};
use crate::queue::route::{Inbox, Reply, ReplyTo};
use crate::queue::Job;
use crate::shared::{Counters, Shared};
use crate::trace::event;

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
    #[inline]
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
    #[inline]
    pub(crate) fn flush(&mut self) {
        std::mem::take(&mut self.tally).count(self.shared, self.slot);
        if let Some(inbox) = self.inbox.take() {
            inbox.put(self.replies.drain(..));
        }
    }

    /// Sends a job's `reply`, whose tasks `tally` counts: a single task's at once
    /// (its caller may read the stats as soon as it has its result), a stream's with
    /// the others here.
    #[inline]
    pub(crate) fn send(&mut self, to: ReplyTo, reply: Reply, tally: Tally) {
        match to {
            ReplyTo::One(tx, place) => {
                drop(place);
                tally.count(self.shared, self.slot);
                let _ = tx.send(reply);
            }
            ReplyTo::Feed(feed) => {
                if !self
                    .inbox
                    .as_ref()
                    .is_some_and(|inbox| Arc::ptr_eq(inbox, feed.inbox()))
                {
                    self.flush();
                    self.inbox = Some(feed.inbox().clone());
                }
                self.tally += tally;
                self.replies.push((feed.settle(), reply));
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

/// The `job sent` trace event, for the job sent to worker `pid`.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn trace_sent(pid: u32, job: &Job) {
    event!(
        tracing::Level::TRACE,
        pid,
        job = job.id,
        tasks = job.tasks,
        "job sent"
    );
}

/// Delivers a worker's reply (`frame`, whose header is `done`, its payload the last
/// `payload_len` bytes) to its job, and counts it (as the worker of `deliveries`'
/// slot); a stream's reply goes with `deliveries`.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
#[inline]
pub(crate) fn deliver(
    shared: &Shared,
    pid: u32,
    job: Job,
    (done, payload_len): (Done, usize),
    frame: ReplyFrame,
    deliveries: &mut Deliveries<'_>,
) {
    let tasks = job.tasks as u64;
    let failed = match done.outcome {
        Outcome::Ok { panicked, .. } => u64::from(panicked).min(tasks),
        _ => tasks,
    };
    let tally = Tally {
        jobs: 1,
        completed: tasks - failed,
        failed,
    };
    let reply = reply_of(
        done.outcome,
        frame,
        payload_len,
        shared.config.max_frame_len,
    );
    event!(
        tracing::Level::DEBUG,
        pid,
        job = job.id,
        tasks = job.tasks,
        ok = reply.is_ok(),
        "job completed"
    );
    deliveries.send(job.reply, reply, tally);
}
