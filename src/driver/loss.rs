//! A worker lost: dead by itself, killed on a timeout or an abort, or broken. What it
//! answered before is delivered; the job it was running fails; the rest go back to the
//! queue.

use tokio::time::Instant;

use super::{Driver, End, Worker, DRAIN_BOUND, MAX_DRAIN_READS};
use crate::error::{TaskError, WorkerExit};
use crate::queue::Job;
use crate::shared::Counters;
use crate::start::child::REAP_BOUND;
use crate::trace::event;

impl Driver<'_> {
    /// The worker exited by itself: deliver what it wrote before dying, then fail the
    /// job it was running.
    ///
    /// The ring outlives the worker: every reply it wrote is there, and a reply it sent
    /// over the channel instead is in the channel's buffer. Only those are read, one at
    /// a time as the ring announces them, within [`DRAIN_BOUND`] in all: a descendant
    /// of the worker that kept the channel open cannot hold the slot (or its memory)
    /// by writing on.
    pub(super) async fn died(&mut self, w: &mut Worker, exit: WorkerExit) -> End {
        let until = Instant::now() + DRAIN_BOUND;
        let mut reads = 0usize;
        loop {
            match w.link.next_ready() {
                Ok(Some(frame)) => {
                    if self.complete(frame, Instant::now()).is_err() {
                        break;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(_) => break,
            }
            // Over a stream every reply comes on the channel; with a ring, only those
            // the ring announced.
            let wanted = w.link.wants_more(!self.inflight.is_empty());
            if !wanted || w.link.unannounced().is_some() || reads >= MAX_DRAIN_READS {
                break;
            }
            reads += 1;
            if !matches!(
                tokio::time::timeout_at(until, w.link.read_one()).await,
                Ok(true)
            ) {
                break;
            }
        }
        let pid = self.pid;
        if w.remote.as_ref().is_some_and(|r| r.exit().is_none()) {
            // The launcher ended, and the keeper never said how the worker did.
            let error = self.link_lost(w, format!("its launcher ended ({exit})"));
            return self.lose(w, error, false).await;
        }
        let error = match (self.shared.config.child.memory_limit, exit) {
            (Some(limit), WorkerExit::Signal(libc::SIGABRT | libc::SIGSEGV | libc::SIGKILL)) => {
                TaskError::MemoryLimit { pid, exit, limit }
            }
            _ => TaskError::WorkerDied { pid, exit },
        };
        self.lose(w, error, false).await
    }

    /// The error of a task whose remote worker's link was lost, for `why`.
    pub(super) fn link_lost(&self, w: &Worker, why: String) -> TaskError {
        TaskError::LinkLost {
            pid: self.pid,
            host: w
                .remote
                .as_ref()
                .and_then(|r| r.host())
                .unwrap_or_else(|| "an unknown host".into()),
            reason: why,
        }
    }

    /// Kills the worker if `kill`, fails the head job with `error`, requeues the others.
    /// The loss counts as a kill on a timeout (`error` is [`TaskError::TimedOut`]), on an
    /// abort ([`TaskError::Cancelled`]), or else as a crash.
    pub(super) async fn lose(&mut self, w: &mut Worker, error: TaskError, kill: bool) -> End {
        if kill {
            w.child.kill_and_reap(REAP_BOUND).await;
        }
        // A worker killed on a timeout or an abort did nothing wrong by itself.
        let counters = &self.shared.counters;
        let lost = match error {
            TaskError::TimedOut { .. } => &counters.workers_killed_on_timeout,
            TaskError::Cancelled => &counters.workers_killed_on_abort,
            _ => &counters.workers_crashed,
        };
        Counters::add(lost, 1);
        event!(tracing::Level::WARN, pid = w.pid, job = self.inflight.front().map(|j| j.id), error = %error, "worker lost");
        // (Ghosts were skipped by the worker: the job it ran is the first real one.)
        while self.inflight.front().is_some_and(Job::is_ghost) {
            self.inflight.pop_front();
        }
        if let Some(job) = self.inflight.pop_front() {
            if !matches!(error, TaskError::TimedOut { .. } | TaskError::Cancelled) {
                Counters::add(&self.shared.counters.failed, job.tasks as u64);
            }
            job.fail(error);
        }
        self.shared
            .queue
            .requeue(self.inflight.drain(..).filter(|job| !job.is_ghost()));
        End::Lost
    }
}
