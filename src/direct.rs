//! The direct path: a caller that awaits one tiny task runs the round trip itself.
//!
//! The usual path costs two thread wake-ups besides the round trip: the caller's
//! thread wakes the worker's driver task (on another runtime thread), and the driver
//! wakes the caller with the reply. For a task of microseconds those wake-ups are most
//! of the latency. So a driver whose worker is idle and runs tiny tasks *offers* its
//! worker ([`Lease`]); a caller awaiting [`Pool::apply`](crate::Pool::apply) when
//! nothing is queued takes the offer, writes the job to the worker's socket, and polls
//! the reply ring for the reply for at most the pool's `spin`. If the reply comes, the
//! caller settles the task itself and puts the offer back: no thread was woken. If it
//! does not (the task is longer than it looked, or the worker died), the caller hands
//! the job, already sent, to the driver, which goes on as if it had sent it: timeouts,
//! crashes and aborts are the driver's, as always.
//!
//! The driver takes its worker back at the start of every poll of its event loop and
//! offers it again only when it is about to sleep with nothing in flight; it never
//! touches the socket or the ring while the worker is lent, and a caller holds the
//! lease for one bounded poll.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::*};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::task::AtomicWaker;
use tokio::time::Instant;

use crate::driver::deliver::Deliveries;
use crate::driver::{deliver, trace_sent, Done};
use crate::queue::Job;
use crate::ring::PoolRing;
use crate::shared::Shared;

/// The driver has its worker.
const HELD: u8 = 0;
/// The worker is idle and offered to callers.
const OFFERED: u8 = 1;
/// A caller is using the worker.
const LENT: u8 = 2;

/// Jobs larger than this go the usual way: their write may not finish at once.
const MAX_DIRECT_FRAME: usize = 16 << 10;

/// One worker's offer to callers; see the module docs.
#[derive(Debug)]
pub(crate) struct Lease {
    state: AtomicU8,
    /// The driver found the worker lent and waits for it back.
    driver_waits: AtomicBool,
    driver: AtomicWaker,
    slot: usize,
    pid: u32,
    /// The worker's socket: open as long as the driver has not finished, and a driver
    /// finishes only while it holds the worker.
    fd: RawFd,
    ring: Arc<PoolRing>,
    /// A job a caller sent but could not finish, for the driver.
    handed: Mutex<Option<Handover>>,
}

/// A job sent directly that the driver must see through.
#[derive(Debug)]
pub(crate) struct Handover {
    pub(crate) job: Job,
    pub(crate) sent_at: Instant,
    /// What of its frame is still to be written.
    pub(crate) unsent: Bytes,
    /// A reply the caller read but did not settle (it was not the expected one).
    pub(crate) reply: Option<BytesMut>,
}

impl Lease {
    pub(crate) fn new(slot: usize, pid: u32, fd: RawFd, ring: Arc<PoolRing>) -> Self {
        Lease {
            state: AtomicU8::new(HELD),
            driver_waits: AtomicBool::new(false),
            driver: AtomicWaker::new(),
            slot,
            pid,
            fd,
            ring,
            handed: Mutex::new(None),
        }
    }

    /// Whether the worker is offered or lent.
    pub(crate) fn is_out(&self) -> bool {
        self.state.load(SeqCst) != HELD
    }

    /// For the driver, at the start of each poll: takes the worker back. `Pending`
    /// while a caller has it (the caller wakes the driver when it gives it back);
    /// then any job the caller handed over.
    pub(crate) fn poll_take_back(&self, cx: &mut Context<'_>) -> Poll<Option<Handover>> {
        loop {
            match self.state.compare_exchange(OFFERED, HELD, SeqCst, SeqCst) {
                Ok(_) | Err(HELD) => break,
                Err(_) => {
                    self.driver.register(cx.waker());
                    self.driver_waits.store(true, SeqCst);
                    if self.state.load(SeqCst) == LENT {
                        return Poll::Pending;
                    }
                }
            }
        }
        let handed = self.handed.lock().unwrap_or_else(|e| e.into_inner()).take();
        Poll::Ready(handed)
    }

    /// For the driver (whose waker is `waker`), with an idle worker: offers it.
    pub(crate) fn offer(&self, waker: &std::task::Waker) {
        self.driver.register(waker);
        self.state.store(OFFERED, SeqCst);
    }

    /// For a caller: takes the offer, if there is one.
    pub(crate) fn try_lend(&self) -> bool {
        self.state
            .compare_exchange(OFFERED, LENT, SeqCst, SeqCst)
            .is_ok()
    }

    /// For a caller: gives the worker back, with a job for the driver or none.
    fn give_back(&self, handover: Option<Handover>) {
        let handing = handover.is_some();
        if let Some(h) = handover {
            *self.handed.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        }
        // A handover is the driver's to pick up at once; otherwise the offer stands.
        self.state
            .store(if handing { HELD } else { OFFERED }, SeqCst);
        if handing || self.driver_waits.swap(false, SeqCst) {
            self.driver.wake();
        }
    }
}

/// Runs `job` through an offered worker if one is free and nothing is queued; gives the
/// job back otherwise. On success the job's reply has been sent, or the job handed to
/// the worker's driver.
// The job is handed back (the usual outcome), not an error to pass around; boxing it
// would cost an allocation per call.
#[allow(clippy::result_large_err)]
pub(crate) fn try_direct(shared: &Shared, job: Job) -> Result<(), Job> {
    let spin = shared.config.spin.unwrap_or_default();
    if spin.is_zero()
        || job.wire_len() > MAX_DIRECT_FRAME
        || !job.tail.is_empty()
        || !shared.queue.is_open_and_empty()
    {
        return Err(job);
    }
    let Some(lease) = shared.lend() else {
        return Err(job);
    };
    if !job.claim() {
        lease.give_back(None);
        job.fail(crate::TaskError::Cancelled);
        return Ok(());
    }
    let handover = run(shared, &lease, job, spin);
    lease.give_back(handover);
    Ok(())
}

/// Sends `job` and polls for its reply for up to `spin`; what the driver must finish.
fn run(shared: &Shared, lease: &Lease, job: Job, spin: Duration) -> Option<Handover> {
    // Counted as sent whatever the write does: what it leaves, the driver writes.
    lease.ring.note_sent(1);
    // SAFETY: `lease.fd` is the worker's socket, open while the lease is held (see
    // `Lease::fd`); send(2) reads `job.frame.len()` bytes from the frame.
    let n = unsafe {
        libc::send(
            lease.fd,
            job.frame.as_ptr().cast(),
            job.frame.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    let sent_at = Instant::now();
    let sent = usize::try_from(n).unwrap_or(0);
    trace_sent(lease.pid, &job);
    if sent < job.frame.len() {
        // A full socket, or a failing one: the driver writes the rest or finds out.
        let unsent = job.frame.slice(sent..);
        return Some(Handover {
            job,
            sent_at,
            unsent,
            reply: None,
        });
    }
    let until = sent_at.into_std() + spin;
    let reply = crate::ring::spin_until(until, || lease.ring.pop_frame().ok().flatten());
    // Settled here if it is this job's reply; anything else is the driver's to judge.
    let reply = reply.map(crate::protocol::codec::ReplyFrame::from);
    let done = reply
        .as_ref()
        .and_then(|frame| Some((Done::read(&frame.frame).ok()?, frame)))
        .filter(|(done, frame)| {
            done.header.id == job.id
                && frame
                    .check_count(&done.header, done.payload_len, job.tasks)
                    .is_ok()
        })
        .map(|(done, _)| done);
    match (done, reply) {
        (Some(done), Some(frame)) => {
            deliver(
                shared,
                lease.pid,
                job,
                done,
                frame,
                &mut Deliveries::new(shared, lease.slot),
            );
            None
        }
        (_, reply) => Some(Handover {
            job,
            sent_at,
            unsent: Bytes::new(),
            reply: reply.map(|frame| frame.frame),
        }),
    }
}
