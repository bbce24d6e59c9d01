//! The direct path: a caller that awaits one task sends it to an idle worker itself.
//!
//! The usual path costs four thread wake-ups for a caller in `block_on` (the body of
//! `#[tokio::main]`): the caller wakes the worker's driver task (on a runtime thread),
//! the driver wakes the worker, the worker wakes the driver (through the socket and
//! the runtime's reactor), and the driver wakes the caller with the reply. Two of them
//! are not needed. So a driver whose worker is idle *offers* its worker's [`Port`]
//! (through a [`Lease`](crate::lease::Lease)); a caller awaiting
//! [`Pool::apply`](crate::Pool::apply) when nothing is queued takes the port and writes
//! the job to the worker's socket itself: the driver is not woken to do it. Then,
//! where the worker's tasks take microseconds, it waits for the reply on the spot for
//! a bounded time:
//!
//! - with [`Polling::caller`](crate::Polling::caller), by polling the reply ring;
//! - else, on a thread that runs nothing but this caller meanwhile (the body of
//!   `block_on` on a multi-thread runtime, or a thread outside any runtime), by
//!   sleeping on the ring's futex for up to [`SLEEP`], which the worker wakes when it
//!   writes the reply: the round trip wakes the worker and the caller, as a blocking
//!   pipe's does, and nothing else.
//!
//! A reply that comes is delivered there, and the port offered again. Otherwise (a
//! longer task, a caller in a task, which must not block its runtime thread) the caller
//! asks the worker to wake the pool through the socket and hands the job, already
//! sent, to the driver, which goes on as if it had sent it: timeouts, crashes and
//! aborts are the driver's, as always. The handover wakes the driver only if it must
//! act before the reply: to start a deadline, or if it waits for its port. Otherwise
//! the driver, asleep on the worker's socket, its exit, the pool's end, the queue and
//! (through the lease) the job's abort signal, takes the job when the reply wakes it:
//! one wake-up, where the caller's hand to the driver cost another.
//!
//! The driver takes its port back at the start of every poll of its event loop and
//! offers it again only when it is about to sleep with nothing in flight. The port is
//! moved, not shared: while a caller has it, the driver has no way to touch the
//! worker's socket or ring; a caller holds it for one write and at most one bounded
//! wait.

use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::driver::deliver::{deliver, trace_sent, Deliveries};
use crate::protocol::codec::ReplyFrame;
use crate::protocol::Done;
use crate::queue::{Handover, Job};
use crate::shared::{DirectLease, Shared};
use crate::transport::local::Port;

/// Jobs larger than this go the usual way: their write may not finish at once.
const MAX_DIRECT_FRAME: usize = 16 << 10;

/// How long at most a caller on a thread of its own sleeps on the ring for the reply
/// of a worker whose tasks take microseconds (their replies come within tens of
/// microseconds on an idle machine): the longest the thread is kept from its other
/// futures (a `select!` beside the task, a timeout around it) by the wait.
pub(crate) const SLEEP: Duration = Duration::from_micros(100);

/// How a caller waits for its reply on the spot, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Polls the reply ring, for up to this long.
    Spin(Duration),
    /// Sleeps on the ring's futex, for up to this long.
    Sleep(Duration),
    /// Hands the job to the driver at once.
    No,
}

/// Runs `job` through an offered worker if one is free and nothing is queued; gives the
/// job back otherwise. On success the job's reply has been sent, or the job handed to
/// the worker's driver.
// The job is handed back (the usual outcome), not an error to pass around; boxing it
// would cost an allocation per call.
#[allow(clippy::result_large_err)]
pub(crate) fn try_direct(shared: &Shared, job: Job) -> Result<(), Job> {
    if job.wire_len() > MAX_DIRECT_FRAME
        || !job.tail.is_empty()
        || !shared.queue.is_open_and_empty()
    {
        return Err(job);
    }
    let Some((slot, pid, lease, (mut port, tiny))) = shared.lend() else {
        return Err(job);
    };
    if !job.claim() {
        lease.give_back((port, tiny), None);
        job.fail(crate::TaskError::Cancelled);
        return Ok(());
    }
    let wait = match (tiny, shared.config.caller_polling()) {
        (false, _) => Wait::No,
        (true, Some(spin)) => Wait::Spin(spin),
        (true, None) if thread_is_the_callers() => Wait::Sleep(SLEEP),
        (true, None) => Wait::No,
    };
    match run(shared, (slot, pid), &mut port, job, wait) {
        None => lease.give_back((port, tiny), None),
        Some(handover) => {
            if quietly(shared, &lease, &handover) {
                shared.queue.mark_busy(slot);
                lease.give_back_quietly((port, tiny), handover);
            } else {
                lease.give_back((port, tiny), Some(handover));
            }
        }
    }
    Ok(())
}

/// Whether this thread runs nothing but the caller until the caller returns: the body
/// of `block_on` on a multi-thread runtime (not a task: those share their thread with
/// other tasks), or a thread outside any runtime.
fn thread_is_the_callers() -> bool {
    if tokio::task::try_id().is_some() {
        return false;
    }
    match tokio::runtime::Handle::try_current() {
        // A current-thread runtime's `block_on` runs its tasks and its reactor too.
        Ok(handle) => handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread,
        Err(_) => true,
    }
}

/// Whether `handover` can wait for the driver to be woken by the reply (or by the
/// worker's end, the pool's, or the job's abort, which the driver sleeps on too): the
/// job was written whole, its reply is not here yet and the worker will wake the
/// driver for it, no deadline is to be started, and its abort, if any, wakes the
/// driver (registered here: the driver registers its own once it has the job).
fn quietly(shared: &Shared, lease: &Arc<DirectLease>, handover: &Handover) -> bool {
    let job = &handover.job;
    if !handover.unsent.is_empty()
        || handover.reply.is_some()
        || job.timeout.or(shared.config.task_timeout).is_some()
    {
        return false;
    }
    match &job.abort {
        None => true,
        Some(abort) => {
            let waker = Waker::from(lease.clone());
            abort
                .poll_aborted(&mut Context::from_waker(&waker))
                .is_pending()
        }
    }
}

/// Sends `job` through `port` (of the worker `pid` of `slot`) and waits for its reply
/// as `wait` says; what the driver must finish, if anything.
fn run(
    shared: &Shared,
    (slot, pid): (usize, u32),
    port: &mut Port,
    job: Job,
    wait: Wait,
) -> Option<Handover> {
    // Counted as sent whatever the write does: what it leaves, the driver writes.
    port.note_sent(1);
    let sent = port.try_send(&job.frame);
    let sent_at = Instant::now();
    trace_sent(pid, &job);
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
    let pop = |port: &mut Port| port.pop_frame().ok().flatten();
    let mut reply = match wait {
        Wait::Spin(spin) => crate::ring::spin_until(sent_at.into_std() + spin, || pop(port)),
        Wait::Sleep(bound) => {
            let arrived = port.sleep_for(sent_at.into_std() + bound);
            arrived.then(|| pop(port)).flatten()
        }
        Wait::No => None,
    };
    // Not here yet: the worker is to wake the driver when it is (or now, if it has
    // come meanwhile, when it is taken here).
    if reply.is_none() && port.want_wakeup() {
        reply = pop(port);
    }
    // Settled here if it is this job's reply; anything else is the driver's to judge.
    let reply = reply.map(ReplyFrame::from);
    let done = reply
        .as_ref()
        .and_then(|frame| Some((Done::read_reply(&frame.frame).ok()?, frame)))
        .filter(|((done, payload_len), frame)| {
            done.id == job.id && frame.check_count(done, *payload_len, job.tasks).is_ok()
        })
        .map(|(done, _)| done);
    match (done, reply) {
        (Some(done), Some(frame)) => {
            deliver(
                shared,
                pid,
                job,
                done,
                frame,
                &mut Deliveries::new(shared, slot),
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
