//! The pipeline stall: a head job that runs long with jobs sent ahead behind it gives
//! them back, so that they run elsewhere (see [`PIPELINE_STALL`]).

use std::pin::Pin;
use std::task::Context;

use std::future::Future;

use super::{Driver, Worker, PIPELINE_STALL};
use crate::queue::Job;
use crate::trace::event;

impl Driver<'_> {
    /// Whether the head job has run [`PIPELINE_STALL`] (with jobs behind it: the
    /// caller checks). The timer is set for the head as it was when it was armed, and
    /// set again only when it fires for a head that has finished since: a reset per
    /// stall period at most, not one per job.
    ///
    /// It fires once per head job: if nothing could be taken back then (the worker had
    /// just moved on), the next head starts the clock again.
    pub(super) fn poll_stalled(
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
    pub(super) fn take_back(&mut self, w: &mut Worker) -> usize {
        let len = self.inflight.len();
        let partial = usize::from(self.outbox.unsent > 0 && self.outbox.offset > 0);
        // Jobs of which the worker may have some bytes: the written ones and a partial.
        let touched = len - self.outbox.unsent + partial;
        let real_behind = self
            .inflight
            .range(1.min(touched)..touched)
            .any(|j| !j.is_ghost());
        // (A link that cannot take back what it wrote takes back the rest.)
        let revoked = match touched > 1 && real_behind {
            true => match w.link.revoke_behind(len, touched) {
                Some(true) => true,
                Some(false) => return 0,
                None => false,
            },
            false => false,
        };
        let untouched: Vec<Job> = self.inflight.drain(touched..).collect();
        w.link.note_sent(-(untouched.len() as i64));
        self.outbox.unsent -= untouched.len();
        let mut back = Vec::with_capacity(len);
        if revoked {
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
    pub(super) fn drop_ghosts(&mut self) {
        while self.inflight.front().is_some_and(Job::is_ghost)
            && self.inflight.len() > self.outbox.unsent
        {
            self.inflight.pop_front();
        }
    }
}
