//! The direct path: a caller that awaits one tiny task runs the round trip itself.
//!
//! The usual path costs two thread wake-ups besides the round trip: the caller's
//! thread wakes the worker's driver task (on another runtime thread), and the driver
//! wakes the caller with the reply. For a task of microseconds those wake-ups are most
//! of the latency. So a driver whose worker is idle and runs tiny tasks *offers* its
//! worker's [`Port`] (through a [`Lease`](crate::lease::Lease)); a caller awaiting
//! [`Pool::apply`](crate::Pool::apply) when nothing is queued takes the port, writes the
//! job to the worker's socket, and polls the reply ring for the reply for at most the
//! pool's [`Polling::caller`](crate::Polling::caller). If the reply comes, the
//! caller settles the task itself and puts the offer back: no thread was woken. If it
//! does not (the task is longer than it looked, or the worker died), the caller hands
//! the job, already sent, to the driver, which goes on as if it had sent it: timeouts,
//! crashes and aborts are the driver's, as always.
//!
//! The driver takes its port back at the start of every poll of its event loop and
//! offers it again only when it is about to sleep with nothing in flight. The port is
//! moved, not shared: while a caller has it, the driver has no way to touch the
//! worker's socket or ring; a caller holds it for one bounded poll.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::driver::deliver::{deliver, trace_sent, Deliveries};
use crate::protocol::codec::ReplyFrame;
use crate::protocol::Done;
use crate::queue::{Handover, Job};
use crate::shared::Shared;
use crate::transport::local::Port;

/// Jobs larger than this go the usual way: their write may not finish at once.
const MAX_DIRECT_FRAME: usize = 16 << 10;

/// Runs `job` through an offered worker if one is free and nothing is queued; gives the
/// job back otherwise. On success the job's reply has been sent, or the job handed to
/// the worker's driver.
// The job is handed back (the usual outcome), not an error to pass around; boxing it
// would cost an allocation per call.
#[allow(clippy::result_large_err)]
pub(crate) fn try_direct(shared: &Shared, job: Job) -> Result<(), Job> {
    let Some(spin) = shared.config.caller_polling() else {
        return Err(job);
    };
    if job.wire_len() > MAX_DIRECT_FRAME
        || !job.tail.is_empty()
        || !shared.queue.is_open_and_empty()
    {
        return Err(job);
    }
    let Some((slot, pid, lease, mut port)) = shared.lend() else {
        return Err(job);
    };
    if !job.claim() {
        lease.give_back(port, None);
        job.fail(crate::TaskError::Cancelled);
        return Ok(());
    }
    let handover = run(shared, (slot, pid), &mut port, job, spin);
    lease.give_back(port, handover);
    Ok(())
}

/// Sends `job` through `port` (of the worker `pid` of `slot`) and polls for its reply
/// for up to `spin`; what the driver must finish.
fn run(
    shared: &Shared,
    (slot, pid): (usize, u32),
    port: &mut Port,
    job: Job,
    spin: Duration,
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
    let until = sent_at.into_std() + spin;
    let reply = crate::ring::spin_until(until, || port.pop_frame().ok().flatten());
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
