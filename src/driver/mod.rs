//! One worker's driver: the Tokio task side of a worker process.
//!
//! It takes jobs from the shared queue ahead of need, so that a worker busy with short
//! jobs never waits a round trip for the next one: how far ahead adapts to how long the
//! worker's jobs take (see [`Pace`]); long jobs are taken one at a time, so that they
//! are not queued behind each other in one worker while another is idle. It writes
//! their frames, matches each reply to the oldest job in
//! flight (a worker runs its jobs in order; replies come through the worker's
//! [`Link`]), and watches for the worker's death, the
//! running job's deadline and abort, and the pool's termination — all from one
//! `poll_fn`, so that reading replies never waits behind a slow write of a large job.

pub(crate) mod deliver;
mod loss;
mod pace;
mod stall;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
#[cfg(test)]
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use crate::error::{TaskError, WorkerExit};
use crate::protocol::codec::ReplyFrame;
use crate::queue::{Handover, Job, Popped};
use crate::shared::{Counters, DirectLease, Shared};
use crate::start::child::{ChildProc, REAP_BOUND};
use crate::transport::{Incoming, Link, Outbox};
use deliver::{deliver, Deliveries};
use pace::Pace;

/// A started worker that has passed its handshake.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Its pid (on its host, for a worker on another machine).
    pub(crate) pid: u32,
    /// The process the pool owns: the worker, or its launcher (`ssh`, `srun`).
    pub(crate) child: ChildProc,
    pub(crate) link: Link,
    /// For a worker on another machine: what its keeper said.
    pub(crate) remote: Option<std::sync::Arc<crate::remote::link::RemoteInfo>>,
}

/// Why a driver stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// It served `max_tasks_per_child` jobs and has none in flight: let it go.
    Retire,
    /// The queue is closed and empty, and nothing is in flight: let it go.
    Drained,
    /// The pool is terminating.
    Terminated,
    /// The worker died or was killed; its running job was failed, the others requeued.
    Lost,
}

enum Event {
    Job(Job),
    /// A job a caller sent directly, to be seen through.
    Handover(Handover),
    Reply(ReplyFrame),
    /// The channel ended (`None`) or failed.
    Closed(Option<io::Error>),
    /// The worker broke the protocol.
    Broken(String),
    Exited(WorkerExit),
    WriteFailed,
    TimedOut(Duration),
    /// The head job has run [`PIPELINE_STALL`] with jobs sent ahead behind it.
    Stalled,
    Aborted,
    Terminate,
    Drained,
    Retire,
}

/// Drives `worker` until it must stop; see [`End`]. `inflight` holds the jobs sent to
/// the worker and not yet answered: empty when the driver returns, but the caller's, so
/// that if the driver panics the caller can still answer them (see
/// [`crate::supervisor`]).
pub(crate) async fn drive(
    shared: &Shared,
    slot: usize,
    worker: &mut Worker,
    inflight: &mut VecDeque<Job>,
) -> End {
    // Offered to callers when idle (`crate::direct`), where the worker has a reply
    // ring and no count of jobs per worker must be kept.
    let lend = worker.link.can_lend() && shared.config.max_tasks_per_child.is_none();
    let lease = lend.then(|| {
        let lease = Arc::new(DirectLease::default());
        shared.set_lease(slot, Some((worker.pid, lease.clone())));
        lease
    });
    let end = Driver {
        shared,
        slot,
        pid: worker.pid,
        inflight,
        outbox: Outbox::default(),
        deliveries: Deliveries::new(shared, slot),
        pace: Pace::new(shared.config.pipeline),
        lease: lease.clone(),
        waker: std::task::Waker::noop().clone(),
        stalled_head: None,
    }
    .run(worker)
    .await;
    // The driver ends only while it holds its worker (it offers it last thing before
    // it waits, see `Driver::offer`), so no caller has it now, and none can take it
    // after this.
    debug_assert!(worker.link.is_whole());
    shared.set_lease(slot, None);
    shared.queue.unregister(slot);
    end
}

struct Driver<'a> {
    shared: &'a Shared,
    slot: usize,
    pid: u32,
    inflight: &'a mut VecDeque<Job>,
    /// What of `inflight` is still to be written.
    outbox: Outbox,
    /// Replies for streams, handed over before the driver next waits.
    deliveries: Deliveries<'a>,
    pace: Pace,
    lease: Option<Arc<DirectLease>>,
    /// This task's waker, as of its last poll.
    waker: std::task::Waker,
    /// When the head job that last stalled started (see [`Driver::poll_stalled`]).
    stalled_head: Option<Instant>,
}

/// How long, in all, the replies a dead worker left in its channel are read for (see
/// [`Driver::died`]).
const DRAIN_BOUND: Duration = Duration::from_millis(100);

/// How many frames at most are read from a dead worker's channel (wake-up calls
/// included): a live descendant holding the channel may write on without end.
const MAX_DRAIN_READS: usize = 4096;

/// How long a job may run with jobs sent ahead waiting behind it before they are taken
/// back and run elsewhere (see [`Driver::take_back`]): the bound on how long a task
/// waits behind another in one worker's pipeline, whatever that other task does.
pub(crate) const PIPELINE_STALL: Duration = Duration::from_millis(20);

/// An instant no timer reaches in practice (thirty years from now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(30 * 365 * 86_400)
}

impl Driver<'_> {
    async fn run(&mut self, w: &mut Worker) -> End {
        let cfg = &self.shared.config;
        let mut taken = 0usize;
        let mut deadline: Option<Duration> = None;
        let mut sleep = pin!(sleep_until(Instant::now()));
        let mut terminate = pin!(self.shared.terminate.cancelled());
        // When the head job will have run PIPELINE_STALL, if armed (see `poll_stalled`).
        let mut stall = pin!(sleep_until(far_future()));
        let mut stall_armed = false;
        // Whether this driver is registered with the queue for a wake-up.
        let mut waiting = false;
        // A job taken from the queue while a caller had the worker.
        let mut parked: Option<Job> = None;
        loop {
            self.deliveries.flush();
            let event = std::future::poll_fn(|cx| {
                if let Some(lease) = &self.lease {
                    self.waker.clone_from(cx.waker());
                    // An offered worker stays offered until something needs it: the
                    // pool's end, the worker's, something to read on its socket, or a
                    // job from the queue (kept aside if a caller has the worker just
                    // now). All of them are watched here, so that a caller may leave
                    // a job it sent without waking this task (see `crate::direct`).
                    if !w.link.is_whole() && parked.is_none() && !lease.is_returned() {
                        let ending = self.shared.terminate.is_cancelled()
                            || w.child.poll_wait(cx).is_ready()
                            || w.link.poll_readable(cx);
                        if !ending {
                            let _ = terminate.as_mut().poll(cx);
                            let (popped, skipped) = self.shared.queue.poll_pop(self.slot, true, cx);
                            Counters::add(&self.shared.counters.cancelled, skipped);
                            waiting = popped.is_pending();
                            match popped {
                                Poll::Pending => return Poll::Pending,
                                Poll::Ready(Popped::Job(job)) => parked = Some(job),
                                Poll::Ready(Popped::Closed) => {}
                            }
                        }
                    }
                    // Then the worker back from any caller that has it, before anything
                    // else touches it.
                    match lease.poll_take_back(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(((port, _), handed))) => {
                            w.link.put_port(port);
                            if let Some(handed) = handed {
                                return Poll::Ready(Event::Handover(handed));
                            }
                        }
                        Poll::Ready(None) => {}
                    }
                    if let Some(job) = parked.take() {
                        return Poll::Ready(Event::Job(job));
                    }
                }
                let may_take = self.pace.may_take(self.inflight.len())
                    && cfg.max_tasks_per_child.is_none_or(|max| taken < max);
                if terminate.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Terminate);
                }
                if let Poll::Ready(Err(_)) = self.outbox.poll_flush(&mut w.link, self.inflight, cx)
                {
                    return Poll::Ready(Event::WriteFailed);
                }
                self.drop_ghosts();
                if let Poll::Ready(event) = self.poll_reply(w, cx) {
                    return Poll::Ready(event);
                }
                if let Poll::Ready(exit) = w.child.poll_wait(cx) {
                    return Poll::Ready(Event::Exited(exit));
                }
                if let Some(head) = self.inflight.front() {
                    if let Some(abort) = &head.abort {
                        if abort.poll_aborted(cx).is_ready() {
                            return Poll::Ready(Event::Aborted);
                        }
                    }
                }
                if let Some(after) = deadline {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::TimedOut(after));
                    }
                }
                if self.inflight.len() > 1
                    && self.poll_stalled(stall.as_mut(), &mut stall_armed, cx)
                {
                    return Poll::Ready(Event::Stalled);
                }
                if may_take {
                    let idle = self.inflight.is_empty();
                    let (popped, skipped) = self.shared.queue.poll_pop(self.slot, idle, cx);
                    Counters::add(&self.shared.counters.cancelled, skipped);
                    waiting = popped.is_pending();
                    match popped {
                        Poll::Ready(Popped::Job(job)) => return Poll::Ready(Event::Job(job)),
                        Poll::Ready(Popped::Closed) if self.inflight.is_empty() => {
                            return Poll::Ready(Event::Drained)
                        }
                        _ => {}
                    }
                } else if self.inflight.is_empty() {
                    return Poll::Ready(Event::Retire);
                } else if waiting {
                    // No longer waiting for jobs: pass any wake-up on to another.
                    self.shared.queue.unregister(self.slot);
                    waiting = false;
                }
                if waiting {
                    self.offer(w);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Job(job) => {
                    // Take what else may go now (under one lock of the queue), so that
                    // one write carries it all.
                    let depth = self.depth();
                    let before = self.inflight.len();
                    self.inflight.push_back(job);
                    let room = depth.saturating_sub(self.inflight.len()).min(
                        cfg.max_tasks_per_child
                            .map_or(usize::MAX, |max| max.saturating_sub(taken + 1)),
                    );
                    let skipped = self.shared.queue.pop_into(room, self.inflight);
                    Counters::add(&self.shared.counters.cancelled, skipped);
                    let new = self.inflight.len() - before;
                    w.link.note_sent(new as i64);
                    self.outbox.unsent += new;
                    taken += new;
                    #[cfg(feature = "tracing")]
                    for job in self.inflight.range(before..) {
                        deliver::trace_sent(w.pid, job);
                    }
                    if before == 0 {
                        self.pace.head_started = Instant::now();
                        deadline = self.arm(sleep.as_mut());
                    }
                    if let Some(frame) = self.spin_for_reply(w) {
                        match self.complete(frame, Instant::now()) {
                            Ok(()) => deadline = self.arm(sleep.as_mut()),
                            Err(why) => return self.lose(w, TaskError::Protocol(why), true).await,
                        }
                        // Last: from here on a caller may have the worker.
                        self.offer(w);
                    }
                }
                Event::Handover(Handover {
                    job,
                    sent_at,
                    unsent,
                    reply,
                }) => {
                    if !unsent.is_empty() {
                        // Nothing was in flight: the caller had the worker.
                        self.outbox.unsent = 1;
                        self.outbox.offset = job.wire_len() - unsent.len();
                    }
                    self.inflight.push_back(job);
                    taken += 1;
                    self.pace.head_started = sent_at;
                    deadline = self.arm(sleep.as_mut());
                    // A job taken from the queue while the caller had the worker waits
                    // behind the caller's only if this worker's pace lets it; else
                    // another worker may run it.
                    if !self.pace.may_take(self.inflight.len()) {
                        if let Some(job) = parked.take() {
                            self.shared.queue.requeue(std::iter::once(job));
                        }
                    }
                    if let Some(frame) = reply {
                        match self.complete(frame.into(), Instant::now()) {
                            Ok(()) => deadline = self.arm(sleep.as_mut()),
                            Err(why) => return self.lose(w, TaskError::Protocol(why), true).await,
                        }
                        self.offer(w);
                    }
                }
                Event::Reply(frame) => {
                    // Every reply that is already here, in one go: the event loop's
                    // round of polls is worth skipping between them.
                    let now = Instant::now();
                    let mut next = Some(frame);
                    while let Some(frame) = next.take() {
                        if let Err(why) = self.complete(frame, now) {
                            return self.lose(w, TaskError::Protocol(why), true).await;
                        }
                        // An error is left for the event loop to find again.
                        next = w.link.next_ready().ok().flatten();
                    }
                    deadline = self.arm(sleep.as_mut());
                    // Offered at once, rather than when the event loop next sleeps, so
                    // that the caller just answered finds it for its next task. Last:
                    // from here on a caller may have the worker, which the driver must
                    // not touch before it takes it back.
                    self.offer(w);
                }
                Event::Broken(why) => return self.lose(w, TaskError::Protocol(why), true).await,
                Event::Closed(Some(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    let why = format!("unreadable frame: {e}");
                    return self.lose(w, TaskError::Protocol(why), true).await;
                }
                // A remote worker's link went silent past the heartbeat bound.
                Event::Closed(Some(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    let error = self.link_lost(w, e.to_string());
                    return self.lose(w, error, true).await;
                }
                // A read error other than a bad frame is the channel failing: a worker
                // that dies with unread jobs in its socket resets it. Either way the
                // worker closed its end; it is exiting or must be made to.
                Event::Closed(_) | Event::WriteFailed => {
                    let exit = match tokio::time::timeout(REAP_BOUND, w.child.wait()).await {
                        Ok(exit) => exit,
                        Err(_) => w
                            .child
                            .kill_and_reap(REAP_BOUND)
                            .await
                            .unwrap_or(WorkerExit::Signal(9)),
                    };
                    return self.died(w, exit).await;
                }
                Event::Exited(exit) => return self.died(w, exit).await,
                Event::TimedOut(after) => {
                    let pid = self.pid;
                    match cfg.kill_grace {
                        Some(grace) => w.child.terminate(grace).await,
                        None => w.child.kill_and_reap(REAP_BOUND).await,
                    };
                    Counters::add(&self.shared.counters.timed_out, self.head_tasks());
                    return self
                        .lose(w, TaskError::TimedOut { pid, after }, false)
                        .await;
                }
                Event::Stalled => {
                    // What was taken back does not count towards `max_tasks_per_child`.
                    taken = taken.saturating_sub(self.take_back(w));
                    deadline = self.arm(sleep.as_mut());
                }
                Event::Aborted => {
                    w.child.kill_and_reap(REAP_BOUND).await;
                    Counters::add(&self.shared.counters.cancelled, self.head_tasks());
                    return self.lose(w, TaskError::Cancelled, false).await;
                }
                Event::Terminate => {
                    let n: u64 = self.inflight.iter().map(|j| j.tasks as u64).sum();
                    Counters::add(&self.shared.counters.failed, n);
                    for job in self.inflight.drain(..) {
                        job.fail(TaskError::Terminated);
                    }
                    return End::Terminated;
                }
                Event::Drained => return End::Drained,
                Event::Retire => return End::Retire,
            }
        }
    }

    /// For a lone job on a worker whose jobs take microseconds: write it now and poll
    /// the reply ring for a few microseconds, instead of sleeping until the worker
    /// wakes this task, which costs about as much as the whole round trip. Bounded by
    /// the pool's `spin`; returns the reply if it came in time.
    fn spin_for_reply(&mut self, w: &mut Worker) -> Option<ReplyFrame> {
        let spin = self.shared.config.driver_polling()?;
        if self.inflight.len() != 1 || !self.pace.is_tiny() {
            return None;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if !matches!(
            self.outbox.poll_flush(&mut w.link, self.inflight, &mut cx),
            Poll::Ready(Ok(()))
        ) {
            return None;
        }
        w.link.spin_for_reply(std::time::Instant::now() + spin)
    }

    /// The next reply, or the end of the channel (see [`Link::poll_reply`]), with the
    /// codec's spare buffer kept up to date first.
    fn poll_reply(&mut self, w: &mut Worker, cx: &mut Context<'_>) -> Poll<Event> {
        self.lend_spare(w);
        let waiting = !self.inflight.is_empty();
        w.link
            .poll_reply(cx, waiting)
            .map(|incoming| match incoming {
                Incoming::Reply(frame) => Event::Reply(frame),
                Incoming::Closed(e) => Event::Closed(e),
                Incoming::Broken(why) => Event::Broken(why),
            })
    }

    /// Leaves the codec, as a buffer a large byte-string result may be read into,
    /// the large argument of the job at the head once its frame is written: the head
    /// is never sent again (a lost worker fails it), and its result is the next to
    /// come. Drops a spare left from a job that is done.
    fn lend_spare(&mut self, w: &mut Worker) {
        let codec = w.link.codec_mut();
        let written = self.inflight.len() > self.outbox.unsent;
        let head = self.inflight.front_mut();
        if codec
            .spare
            .as_ref()
            .is_some_and(|(id, _)| Some(*id) != head.as_ref().map(|j| j.id))
        {
            codec.spare = None;
        }
        let Some(head) = head else {
            return;
        };
        if codec.spare.is_none() && !head.tail.is_empty() && written {
            // Only an argument nobody else holds (a `Vec<u8>` the caller gave up).
            if let Ok(spare) = std::mem::take(&mut head.tail).try_into_mut() {
                codec.spare = Some((head.id, spare));
            }
        }
    }

    /// Offers the worker to callers if it is idle (nothing in flight, so nothing
    /// unsent either; nothing half-read), saying whether its jobs take microseconds
    /// (worth waiting for on the spot). Only at the end of handling an event, or when
    /// about to sleep: once offered, the worker is not the driver's to touch until
    /// `Lease::poll_take_back`.
    fn offer(&self, w: &mut Worker) {
        let Some(lease) = &self.lease else {
            return;
        };
        if self.inflight.is_empty() && w.link.is_quiet() {
            if let Some(port) = w.link.take_port() {
                lease.offer((port, self.pace.is_tiny()), &self.waker);
            }
        }
    }

    /// How many jobs may be in flight now; see [`Pace::depth`].
    fn depth(&self) -> usize {
        self.pace.depth(self.inflight.len())
    }

    fn head_tasks(&self) -> u64 {
        self.inflight.front().map_or(0, |j| j.tasks as u64)
    }

    /// Starts the deadline of the job now at the head, from when it started running.
    fn arm(&self, sleep: Pin<&mut tokio::time::Sleep>) -> Option<Duration> {
        let head = self.inflight.front()?;
        let after = head.timeout.or(self.shared.config.task_timeout)?;
        // (A timeout too long to add is as good as none.)
        let at = self
            .pace
            .head_started
            .checked_add(after)
            .unwrap_or_else(far_future);
        sleep.reset(at);
        Some(after)
    }

    /// Matches a reply to the head job and delivers it. `now` is when the reply was
    /// taken (one reading of the clock for a batch).
    fn complete(&mut self, frame: ReplyFrame, now: Instant) -> Result<(), String> {
        #[cfg(test)]
        if self
            .shared
            .driver_panics
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!(
                "a panic made by a test, in the driver of worker {}",
                self.pid
            );
        }
        // (No ghost is at the front here: the worker cannot answer a job behind one
        // before the ghost's bytes are written, and written ghosts at the front are
        // dropped after each reply and each write; see `drop_ghosts`.)
        let (done, payload_len) = crate::protocol::Done::read_reply(&frame.frame)?;
        let id = done.id;
        if self.inflight.front().map(|j| j.id) != Some(id)
            || self.inflight.len() <= self.outbox.unsent
        {
            return Err(format!("reply to job {id}, which is not the one running"));
        }
        frame.check_count(&done, payload_len, self.head_tasks() as usize)?;
        let Some(job) = self.inflight.pop_front() else {
            return Err("reply with no job in flight".into());
        };
        self.pace.finished_head(now, done.ran_ns, done.ran_jobs);
        self.shared.set_depth(self.slot, self.pace.depth(0));
        self.drop_ghosts();
        deliver(
            self.shared,
            self.pid,
            job,
            (done, payload_len),
            frame,
            &mut self.deliveries,
        );
        Ok(())
    }
}
