//! One worker's driver: the Tokio task side of a worker process.
//!
//! It takes jobs from the shared queue ahead of need, so that a worker busy with short
//! jobs never waits a round trip for the next one: how far ahead adapts to how long the
//! worker's jobs take (see [`Pace`]); long jobs are taken one at a time, so that they
//! are not queued behind each other in one worker while another is idle. It writes
//! their frames, matches each reply to the oldest job in
//! flight (a worker runs its jobs in order; replies come through the worker's reply
//! ring, [`crate::ring`]), and watches for the worker's death, the
//! running job's deadline and abort, and the pool's termination — all from one
//! `poll_fn`, so that reading replies never waits behind a slow write of a large job.

pub(crate) mod deliver;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
#[cfg(test)]
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::FramedRead;

use crate::chan::{ChanRead, ChanWrite};
use crate::direct::{Handover, Lease};
use crate::error::{Payload, TaskError, WorkerExit};
use crate::protocol::codec::{ReplyCodec, ReplyFrame};
use crate::protocol::Outcome;
use crate::queue::{Job, Popped};
use crate::ring::{PoolRing, Record};
use crate::shared::{Counters, Shared};
use crate::start::child::{ChildProc, REAP_BOUND};
use crate::trace::event;
use deliver::{Deliveries, Tally};

/// A started worker that has passed its handshake.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) pid: u32,
    pub(crate) child: ChildProc,
    pub(crate) reader: FramedRead<ChanRead, ReplyCodec>,
    pub(crate) writer: ChanWrite,
    /// Where replies come, if the worker has one; else on `reader`.
    pub(crate) ring: Option<Arc<PoolRing>>,
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

/// What of the jobs in flight is still to be written: the last `unsent` of them, the
/// first of those from byte `offset` on. (The frames stay in the jobs, which keep them
/// to requeue: nothing is copied or reference-counted per write.)
#[derive(Debug, Default)]
struct Outbox {
    unsent: usize,
    offset: usize,
}

impl Outbox {
    /// Writes what it can; `Ready(Ok)` once everything is written.
    fn poll_flush(
        &mut self,
        writer: &mut ChanWrite,
        inflight: &VecDeque<Job>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.unsent > 0 {
            let first = inflight.len() - self.unsent;
            // No allocation on this path: it runs at every event of the driver.
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 64];
            let mut count: usize = 0;
            let mut skip = self.offset;
            'fill: for job in inflight.range(first..) {
                for part in [&job.frame, &job.tail] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    let part = &part[skip..];
                    skip = 0;
                    // Frames encoded one after another into one buffer (a batch of
                    // a stream's chunks) go as one segment.
                    if let Some(last) = count.checked_sub(1).map(|i| &mut iov[i]) {
                        if last
                            .iov_base
                            .cast_const()
                            .wrapping_byte_add(last.iov_len)
                            .cast()
                            == part.as_ptr()
                        {
                            last.iov_len += part.len();
                            continue;
                        }
                    }
                    if count == iov.len() {
                        break 'fill;
                    }
                    iov[count] = libc::iovec {
                        iov_base: part.as_ptr().cast_mut().cast(),
                        iov_len: part.len(),
                    };
                    count += 1;
                }
            }
            // SAFETY: each `iovec` describes one part of a job's frame or the parts of
            // neighbouring frames, one after another in memory: all of it is memory
            // of `Bytes` that `inflight` holds, which is borrowed for this call.
            let mut n = ready!(unsafe { writer.poll_write_iovecs(cx, &iov[..count]) })?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while n > 0 {
                let left = inflight[inflight.len() - self.unsent].wire_len() - self.offset;
                if n >= left {
                    n -= left;
                    self.unsent -= 1;
                    self.offset = 0;
                } else {
                    self.offset += n;
                    n = 0;
                }
            }
        }
        writer.idle();
        Poll::Ready(Ok(()))
    }
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
    // Offered to callers when idle (`crate::direct`), where a reply can be polled for
    // and no count of jobs per worker must be kept.
    let lease = match (&worker.ring, shared.config.spin) {
        (Some(ring), Some(spin))
            if !spin.is_zero() && shared.config.max_tasks_per_child.is_none() =>
        {
            let fd = worker.writer.raw_fd();
            let lease = Arc::new(Lease::new(slot, worker.pid, fd, ring.clone()));
            shared.set_lease(slot, Some(lease.clone()));
            Some(lease)
        }
        _ => None,
    };
    let end = Driver {
        shared,
        slot,
        pid: worker.pid,
        inflight,
        outbox: Outbox::default(),
        socket_frames: VecDeque::new(),
        on_socket: 0,
        arena: bytes::BytesMut::new(),
        deliveries: Deliveries::new(shared, slot),
        pace: Pace {
            head_started: Instant::now(),
            service_ns: None,
            max_depth: shared.config.pipeline,
        },
        lease: lease.clone(),
        waker: std::task::Waker::noop().clone(),
        stalled_head: None,
    }
    .run(worker)
    .await;
    // The driver ends only while it holds its worker (it offers it last thing before
    // it waits, see `Driver::offer`), so no caller has it now, and none can take it
    // after this.
    debug_assert!(lease.as_ref().is_none_or(|l| !l.is_out()));
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
    /// Reply frames read from the channel, not yet delivered.
    socket_frames: VecDeque<ReplyFrame>,
    /// How many of the next replies the ring said come over the channel.
    on_socket: usize,
    /// Where replies are copied out of the ring (see [`PoolRing::pop_into`]).
    arena: bytes::BytesMut,
    /// Replies for streams, handed over before the driver next waits.
    deliveries: Deliveries<'a>,
    pace: Pace,
    lease: Option<Arc<Lease>>,
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

/// How many frames [`Driver::poll_reply`] reads from the channel in one poll before it
/// yields.
const READS_PER_POLL: usize = 256;

/// An instant no timer reaches in practice (thirty years from now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(30 * 365 * 86_400)
}

/// A lone job is waited for by polling only on workers whose jobs take less than this.
const SPIN_JOB: Duration = Duration::from_micros(20);

/// How long a job may run with jobs sent ahead waiting behind it before they are taken
/// back and run elsewhere (see [`Driver::take_back`]): the bound on how long a task
/// waits behind another in one worker's pipeline, whatever that other task does.
pub(crate) const PIPELINE_STALL: Duration = Duration::from_millis(20);

/// Jobs shorter than this are pipelined deeply (see [`Pace::nominal_depth`]).
const SHORT_JOB: Duration = Duration::from_micros(100);

/// How much work a deep pipeline holds, by the worker's clock.
const PIPELINE_WORK: Duration = Duration::from_millis(2);

/// Jobs longer than this are taken one at a time.
const LONG_JOB: Duration = Duration::from_millis(2);

/// How long this worker's jobs take, smoothed; it decides how many jobs the driver
/// takes ahead.
#[derive(Debug)]
struct Pace {
    /// When the job at the head started running (it was sent to an idle worker, or
    /// the one before it finished).
    head_started: Instant,
    /// Smoothed service time in nanoseconds; `None` before the first job.
    service_ns: Option<u64>,
    max_depth: usize,
}

impl Pace {
    /// How many jobs may be in flight. Until a job has finished nothing is known, so
    /// one. And a running job that has taken longer than [`LONG_JOB`] stops this
    /// worker taking more, whatever the average says: a job sent ahead would wait
    /// behind it (where another worker might run it at once), and could no longer be
    /// taken back if its caller gives up on it.
    fn depth(&self, in_flight: usize) -> usize {
        let depth = self.nominal_depth();
        // (The clock is read only where it can change the answer.)
        if depth > 1 && in_flight > 0 && self.head_started.elapsed() > LONG_JOB {
            return 1;
        }
        depth
    }

    /// The depth the average service time asks for: for short jobs, as many as make
    /// [`PIPELINE_WORK`] of work (up to the pool's `pipeline_depth`, and at least two),
    /// so that tiny jobs go in large batches (a wake-up of the worker, and of this
    /// driver, per batch) while what one worker has been sent ahead stays a short time
    /// of work, which another worker could not take over.
    fn nominal_depth(&self) -> usize {
        match self.service_ns {
            None => 1,
            Some(ns) if ns < SHORT_JOB.as_nanos() as u64 => {
                let fill = PIPELINE_WORK.as_nanos() as u64 / ns.max(1);
                usize::try_from(fill)
                    .unwrap_or(usize::MAX)
                    .max(2)
                    .min(self.max_depth)
            }
            Some(ns) if ns < LONG_JOB.as_nanos() as u64 => 2,
            Some(_) => 1,
        }
    }

    /// Whether to take more jobs with `in_flight` in flight: a deep pipeline is
    /// refilled once it is half empty, not at every reply, so that the worker wakes for
    /// a batch of jobs, not for each one.
    fn may_take(&self, in_flight: usize) -> bool {
        let nominal = self.nominal_depth();
        if in_flight > nominal / 2 {
            return false;
        }
        // Only now can the clock change the answer (see `depth`).
        in_flight == 0 || self.depth(in_flight) > 1
    }

    /// The head job finished (at `now`, as far as the pool knows); the worker says
    /// the last `ran_jobs` of its jobs ran `ran_ns` (none: it did not time this one),
    /// which is what paces the worker: the pool's own clock would add the time it
    /// took to wake up for the reply.
    fn finished_head(&mut self, now: Instant, ran_ns: u64, ran_jobs: u32) {
        if ran_jobs > 0 {
            let ran_ns = ran_ns / u64::from(ran_jobs);
            // The numbers are the worker's: saturating, so that no value it sends can
            // overflow (a slot's task must not panic on what a worker says).
            self.service_ns = Some(match self.service_ns {
                None => ran_ns,
                Some(avg) => avg.saturating_mul(3).saturating_add(ran_ns) / 4,
            });
        }
        self.head_started = now;
    }
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
                    // pool's end, the worker's, or a job from the queue (kept aside
                    // if a caller has the worker just now).
                    if lease.is_out() && parked.is_none() {
                        let ending = self.shared.terminate.is_cancelled()
                            || w.child.poll_wait(cx).is_ready();
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
                        Poll::Ready(Some(handed)) => return Poll::Ready(Event::Handover(handed)),
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
                if let Poll::Ready(Err(_)) =
                    self.outbox.poll_flush(&mut w.writer, self.inflight, cx)
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
                    self.offer();
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
                    if let Some(ring) = &w.ring {
                        ring.note_sent(new as i64);
                    }
                    self.outbox.unsent += new;
                    taken += new;
                    #[cfg(feature = "tracing")]
                    for job in self.inflight.range(before..) {
                        trace_sent(w.pid, job);
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
                        self.offer();
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
                    if let Some(frame) = reply {
                        match self.complete(frame.into(), Instant::now()) {
                            Ok(()) => deadline = self.arm(sleep.as_mut()),
                            Err(why) => return self.lose(w, TaskError::Protocol(why), true).await,
                        }
                        self.offer();
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
                        next = self.next_ready(w).ok().flatten();
                    }
                    deadline = self.arm(sleep.as_mut());
                    // Offered at once, rather than when the event loop next sleeps, so
                    // that the caller just answered finds it for its next task. Last:
                    // from here on a caller may have the worker, which the driver must
                    // not touch before it takes it back.
                    self.offer();
                }
                Event::Broken(why) => return self.lose(w, TaskError::Protocol(why), true).await,
                Event::Closed(Some(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    let why = format!("unreadable frame: {e}");
                    return self.lose(w, TaskError::Protocol(why), true).await;
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
        let tiny = self
            .pace
            .service_ns
            .is_some_and(|ns| ns < SPIN_JOB.as_nanos() as u64);
        let spin = self.shared.config.spin.unwrap_or_default();
        if self.inflight.len() != 1 || !tiny || spin.is_zero() || w.ring.is_none() {
            return None;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if !matches!(
            self.outbox
                .poll_flush(&mut w.writer, self.inflight, &mut cx),
            Poll::Ready(Ok(()))
        ) {
            return None;
        }
        let until = std::time::Instant::now() + spin;
        // An error ends the polling; it is left for the event loop to find again.
        crate::ring::spin_until(until, || match self.next_ready(w) {
            Ok(None) => None,
            found => Some(found.ok().flatten()),
        })
        .flatten()
    }

    /// The next reply that needs no reading from the channel: from the ring, or from
    /// frames already read where the ring says the reply went over the channel.
    fn next_ready(&mut self, w: &Worker) -> Result<Option<ReplyFrame>, String> {
        let Some(ring) = &w.ring else {
            return Ok(self.socket_frames.pop_front());
        };
        loop {
            if self.on_socket > 0 {
                let frame = self.socket_frames.pop_front();
                if frame.is_some() {
                    self.on_socket -= 1;
                }
                return Ok(frame);
            }
            match ring.pop_into(&mut self.arena)? {
                Some(Record::Frame(frame)) => return Ok(Some(frame.into())),
                Some(Record::OnSocket) => self.on_socket += 1,
                None => return Ok(None),
            }
        }
    }

    /// The next reply, or the end of the channel. While jobs are in flight and no reply
    /// is waiting, it asks the worker for a wake-up before it sleeps.
    ///
    /// What the worker writes is untrusted: at most one reply frame is held here at a
    /// time (one the ring announced and that is not yet delivered), so a worker that
    /// floods its channel costs the pool one frame of memory; and at most
    /// [`READS_PER_POLL`] frames are read per poll, so that a worker writing without end
    /// cannot keep this task from yielding.
    fn poll_reply(&mut self, w: &mut Worker, cx: &mut Context<'_>) -> Poll<Event> {
        let mut reads = 0;
        loop {
            match self.next_ready(w) {
                Ok(Some(frame)) => return Poll::Ready(Event::Reply(frame)),
                Ok(None) => {}
                Err(why) => return Poll::Ready(Event::Broken(why)),
            }
            if let Some(why) = self.unannounced(w) {
                return Poll::Ready(Event::Broken(why.into()));
            }
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;
            self.lend_spare(w);
            match w.reader.poll_next_unpin(cx) {
                // With a ring, an empty frame only wakes this task.
                Poll::Ready(Some(Ok(frame))) => {
                    if w.ring.is_none() || !is_wake_up(&frame) {
                        self.socket_frames.push_back(frame);
                    }
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Event::Closed(Some(e))),
                Poll::Ready(None) => return Poll::Ready(Event::Closed(None)),
                Poll::Pending => {}
            }
            let Some(ring) = &w.ring else {
                return Poll::Pending;
            };
            if self.on_socket == 0 && !self.inflight.is_empty() && ring.want_wakeup() {
                continue;
            }
            return Poll::Pending;
        }
    }

    /// Whether frames read from the channel break the protocol: with a ring, the worker
    /// marks a reply's place in the ring before it sends the reply over the channel, so
    /// once the ring has nothing more to say ([`next_ready`](Self::next_ready) gave
    /// nothing), a frame waiting here is one no mark announced; without a ring, a
    /// worker has no business sending a second reply before the first is taken.
    fn unannounced(&self, w: &Worker) -> Option<&'static str> {
        let excess = match w.ring {
            Some(_) => self.on_socket == 0 && !self.socket_frames.is_empty(),
            None => self.socket_frames.len() > 1,
        };
        excess.then_some("a reply frame came over the channel without its place in the ring")
    }

    /// Leaves the codec, as a buffer a large byte-string result may be read into,
    /// the large argument of the job at the head once its frame is written: the head
    /// is never sent again (a lost worker fails it), and its result is the next to
    /// come. Drops a spare left from a job that is done.
    fn lend_spare(&mut self, w: &mut Worker) {
        let codec = w.reader.decoder_mut();
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

    /// Offers the worker to callers if it is idle and its jobs take microseconds
    /// (nothing in flight, so nothing unsent either; nothing half-read). Only at the end
    /// of handling an event, or when about to sleep: once offered, the worker is not
    /// the driver's to touch until `Lease::poll_take_back`.
    fn offer(&self) {
        let Some(lease) = &self.lease else {
            return;
        };
        let idle_and_quick = self.inflight.is_empty()
            && self.socket_frames.is_empty()
            && self.on_socket == 0
            && self
                .pace
                .service_ns
                .is_some_and(|ns| ns < SPIN_JOB.as_nanos() as u64);
        if idle_and_quick {
            lease.offer(&self.waker);
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

    /// Whether the head job has run [`PIPELINE_STALL`] (with jobs behind it: the
    /// caller checks). The timer is set for the head as it was when it was armed, and
    /// set again only when it fires for a head that has finished since: a reset per
    /// stall period at most, not one per job.
    ///
    /// It fires once per head job: if nothing could be taken back then (the worker had
    /// just moved on), the next head starts the clock again.
    fn poll_stalled(
        &mut self,
        mut stall: Pin<&mut tokio::time::Sleep>,
        armed: &mut bool,
        cx: &mut Context<'_>,
    ) -> bool {
        loop {
            if self.stalled_head == Some(self.pace.head_started) {
                return false;
            }
            if !*armed {
                let at = self.pace.head_started + PIPELINE_STALL;
                stall.as_mut().reset(at);
                *armed = true;
            }
            if stall.as_mut().poll(cx).is_pending() {
                return false;
            }
            *armed = false;
            if self.pace.head_started.elapsed() >= PIPELINE_STALL {
                self.stalled_head = Some(self.pace.head_started);
                return true;
            }
        }
    }

    /// The head job has run [`PIPELINE_STALL`]: takes back the jobs sent ahead behind
    /// it, so that they run elsewhere rather than wait on a worker that may never
    /// finish the head. Those not yet written at all come straight off the outbox;
    /// those the worker may have (in part) are taken back through the ring's gate
    /// ([`PoolRing::revoke`]), and leave ghosts in their place whose bytes are still
    /// written and which the worker skips. Nothing is taken back if the worker has
    /// just moved on. Returns how many jobs were taken back.
    fn take_back(&mut self, w: &Worker) -> usize {
        let Some(ring) = &w.ring else {
            return 0;
        };
        let len = self.inflight.len();
        let partial = usize::from(self.outbox.unsent > 0 && self.outbox.offset > 0);
        // Jobs of which the worker may have some bytes: the written ones and a partial.
        let touched = len - self.outbox.unsent + partial;
        let real_behind = self
            .inflight
            .range(1.min(touched)..touched)
            .any(|j| !j.is_ghost());
        if touched > 1 && real_behind {
            let head = ring.sent() - len as u64 + 1;
            if !ring.revoke(head, head + touched as u64 - 1) {
                return 0;
            }
        }
        let untouched: Vec<Job> = self.inflight.drain(touched..).collect();
        ring.note_sent(-(untouched.len() as i64));
        self.outbox.unsent -= untouched.len();
        let mut back = Vec::with_capacity(len);
        if touched > 1 && real_behind {
            for job in self.inflight.range_mut(1..) {
                if !job.is_ghost() {
                    back.push(job.make_ghost());
                }
            }
        }
        back.extend(untouched);
        event!(
            tracing::Level::DEBUG,
            pid = self.pid,
            jobs = back.len(),
            "jobs taken back from a worker whose head job runs long"
        );
        let taken_back = back.len();
        self.shared.queue.requeue(back.into_iter());
        taken_back
    }

    /// Drops the ghosts at the front (see [`take_back`](Self::take_back)) once they are
    /// written: the worker skips them without a reply.
    fn drop_ghosts(&mut self) {
        while self.inflight.front().is_some_and(Job::is_ghost)
            && self.inflight.len() > self.outbox.unsent
        {
            self.inflight.pop_front();
        }
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
        let done = Done::read(&frame.frame)?;
        let id = done.header.id;
        if self.inflight.front().map(|j| j.id) != Some(id)
            || self.inflight.len() <= self.outbox.unsent
        {
            return Err(format!("reply to job {id}, which is not the one running"));
        }
        frame.check_count(&done.header, done.payload_len, self.head_tasks() as usize)?;
        let Some(job) = self.inflight.pop_front() else {
            return Err("reply with no job in flight".into());
        };
        self.pace
            .finished_head(now, done.header.ran_ns, done.header.ran_jobs);
        self.shared.set_depth(self.slot, self.pace.depth(0));
        self.drop_ghosts();
        deliver(
            self.shared,
            self.pid,
            job,
            done,
            frame,
            &mut self.deliveries,
        );
        Ok(())
    }

    /// The worker exited by itself: deliver what it wrote before dying, then fail the
    /// job it was running.
    ///
    /// The ring outlives the worker: every reply it wrote is there, and a reply it sent
    /// over the channel instead is in the channel's buffer. Only those are read, one at
    /// a time as the ring announces them, within [`DRAIN_BOUND`] in all: a descendant
    /// of the worker that kept the channel open cannot hold the slot (or its memory)
    /// by writing on.
    async fn died(&mut self, w: &mut Worker, exit: WorkerExit) -> End {
        let until = Instant::now() + DRAIN_BOUND;
        let mut reads = 0usize;
        loop {
            match self.next_ready(w) {
                Ok(Some(frame)) => {
                    if self.complete(frame, Instant::now()).is_err() {
                        break;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(_) => break,
            }
            // Without a ring every reply comes over the channel; with one, only those
            // the ring announced.
            let wanted = match w.ring {
                Some(_) => self.on_socket > 0,
                None => !self.inflight.is_empty(),
            };
            if !wanted || self.unannounced(w).is_some() || reads >= MAX_DRAIN_READS {
                break;
            }
            reads += 1;
            match tokio::time::timeout_at(until, w.reader.next()).await {
                Ok(Some(Ok(frame))) => {
                    if w.ring.is_none() || !is_wake_up(&frame) {
                        self.socket_frames.push_back(frame);
                    }
                }
                _ => break,
            }
        }
        let pid = self.pid;
        let error = match (self.shared.config.child.memory_limit, exit) {
            (Some(limit), WorkerExit::Signal(libc::SIGABRT | libc::SIGSEGV | libc::SIGKILL)) => {
                TaskError::MemoryLimit { pid, exit, limit }
            }
            _ => TaskError::WorkerDied { pid, exit },
        };
        self.lose(w, error, false).await
    }

    /// Kills the worker if `kill`, fails the head job with `error`, requeues the others.
    async fn lose(&mut self, w: &mut Worker, error: TaskError, kill: bool) -> End {
        if kill {
            w.child.kill_and_reap(REAP_BOUND).await;
        }
        Counters::add(&self.shared.counters.workers_crashed, 1);
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

/// Whether `frame` is a worker's wake-up call (see [`crate::ring`]): an empty frame.
fn is_wake_up(frame: &ReplyFrame) -> bool {
    frame.frame.is_empty() && frame.body.is_none()
}

/// A worker's reply to a job, its header read.
pub(crate) struct Done {
    pub(crate) header: crate::protocol::Done,
    /// How many of the frame's last bytes are the payload (see
    /// [`ReplyFrame::into_results`]).
    pub(crate) payload_len: usize,
}

impl Done {
    /// Reads a reply frame's header: an error if the frame is not a `Done`.
    #[inline]
    pub(crate) fn read(frame: &[u8]) -> Result<Done, String> {
        // The common case first, inlined here (see `protocol::Done::read_ok`).
        let (header, payload_len) = match crate::protocol::Done::read_ok(frame) {
            Some((header, len)) => (header, frame.len() - len),
            None => crate::protocol::Done::read(frame).map(|(h, p)| (h, p.len()))?,
        };
        Ok(Done {
            header,
            payload_len,
        })
    }
}

/// Delivers a worker's reply (`frame`, whose header is `done`) to its job, and counts
/// it (as the worker of `deliveries`' slot); a stream's reply goes with `deliveries`.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn deliver(
    shared: &Shared,
    pid: u32,
    job: Job,
    done: Done,
    frame: ReplyFrame,
    deliveries: &mut Deliveries<'_>,
) {
    let Done {
        header: crate::protocol::Done { outcome, .. },
        payload_len,
    } = done;
    let mut tally = Tally {
        jobs: 1,
        ..Tally::default()
    };
    let reply = match outcome {
        Outcome::Ok { panicked, .. } => {
            // The typed side turns each panic into `TaskError::Panicked`.
            let panicked = u64::from(panicked).min(job.tasks as u64);
            tally.completed = job.tasks as u64 - panicked;
            tally.failed = panicked;
            Ok(frame.into_results(payload_len))
        }
        failure => {
            tally.failed = job.tasks as u64;
            Err(match failure {
                Outcome::BadArguments(message) => TaskError::Codec {
                    what: Payload::Argument,
                    message,
                },
                Outcome::BadResult(message) => TaskError::Codec {
                    what: Payload::Result,
                    message,
                },
                Outcome::ResultTooLarge { size } => TaskError::TooLarge {
                    what: Payload::Result,
                    size,
                    limit: shared.config.max_frame_len,
                },
                Outcome::Unresolvable(why) => TaskError::Unsupported(why),
                Outcome::Ok { .. } => unreachable!(),
            })
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use bytes::Bytes;
    use nix::sys::socket::{setsockopt, sockopt};

    use crate::queue::ReplyTo;

    fn job(id: u64, frame: Bytes, tail: Bytes) -> Job {
        Job {
            id,
            frame,
            tail,
            tasks: 1,
            timeout: None,
            abort: None,
            reply: ReplyTo::One(tokio::sync::oneshot::channel().0),
        }
    }

    /// The worker's timings are untrusted: extreme values change the pace, never
    /// panic the driver (an overflow would, in a debug build).
    #[test]
    fn pacing_takes_any_timing_a_worker_sends() {
        let mut pace = Pace {
            head_started: Instant::now(),
            service_ns: None,
            max_depth: 512,
        };
        for (ns, jobs) in [
            (u64::MAX, 1),
            (u64::MAX, 1),
            (u64::MAX, u32::MAX),
            (0, u32::MAX),
            (0, 0),
            (u64::MAX, 1),
        ] {
            pace.finished_head(Instant::now(), ns, jobs);
            assert!(pace.depth(1) >= 1);
            let _ = pace.may_take(3);
        }
        assert_eq!(
            pace.nominal_depth(),
            1,
            "a worker that says its jobs are long"
        );
    }

    /// Bytes that differ from job to job and within a job.
    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed * 31 + i * 7) as u8).collect()
    }

    /// Frames that lie one after another in one buffer (a batch of a stream's chunks,
    /// which go as one segment), frames of their own, and frames with a tail, written
    /// through a socket with a small buffer read slowly, so that writes stop anywhere:
    /// every byte arrives once, in order, starting from a job partly written before.
    #[tokio::test]
    async fn outbox_writes_frames_whole_and_in_order() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        setsockopt(&ours, sockopt::SndBuf, &4096).unwrap();
        ours.set_nonblocking(true).unwrap();
        let (_read, mut writer) = crate::chan::split(ours.into()).unwrap();

        let mut inflight = VecDeque::new();
        let mut id = 0;
        let mut push = |inflight: &mut VecDeque<Job>, frame: Bytes, tail: Bytes| {
            id += 1;
            inflight.push_back(job(id, frame, tail));
        };
        for round in 0..5 {
            let lens: Vec<usize> = (0..150).map(|i| 10 + (i * 13 + round) % 200).collect();
            let batch = Bytes::from(pattern(round, lens.iter().sum()));
            let mut at = 0;
            for len in lens {
                push(&mut inflight, batch.slice(at..at + len), Bytes::new());
                at += len;
            }
            for k in 0..80 {
                let own = Bytes::from(pattern(round * 100 + k, 1 + k * 5));
                let tail = if k % 3 == 0 {
                    Bytes::from(pattern(k, 10_000 + k))
                } else {
                    Bytes::new()
                };
                push(&mut inflight, own, tail);
            }
        }
        // The first job's first 7 bytes went before.
        let offset = 7;
        let expected: Vec<u8> = inflight
            .iter()
            .flat_map(|j| j.frame.iter().chain(j.tail.iter()).copied())
            .skip(offset)
            .collect();

        let reader = std::thread::spawn(move || {
            let mut theirs = theirs;
            let mut got = Vec::new();
            let mut buf = [0u8; 3000];
            loop {
                std::thread::sleep(Duration::from_micros(200));
                match theirs.read(&mut buf).unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut outbox = Outbox {
            unsent: inflight.len(),
            offset,
        };
        tokio::time::timeout(
            Duration::from_secs(60),
            std::future::poll_fn(|cx| outbox.poll_flush(&mut writer, &inflight, cx)),
        )
        .await
        .expect("the reader keeps reading")
        .unwrap();
        assert_eq!(outbox.unsent, 0);
        drop((writer, _read));
        let got = reader.join().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes arrived out of order");
    }
}
