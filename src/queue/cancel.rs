//! Cancellation of one job: its handle's `abort()` against a driver's take.

use std::task::{Context, Poll};

use crate::sync::atomic::{AtomicU8, Ordering};
use crate::sync::AtomicWaker;

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
    /// Aborts the job; true if it was queued (then it will never run, and its handle
    /// is woken to resolve as cancelled).
    pub(crate) fn abort(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            // Lands on whatever the state is when the swap succeeds: a driver may take
            // the job, or put it back (`requeue`) between a look and a swap, and an
            // abort that gave up on a failed swap was lost (the job ran later, nobody
            // woken: found by the loom model, `loom_tests::cancel`).
            let aborted = match state {
                QUEUED => ABORTED_QUEUED,
                TAKEN => ABORTED_TAKEN,
                _ => return false, // Aborted already.
            };
            match self
                .state
                .compare_exchange(state, aborted, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if aborted == ABORTED_QUEUED => {
                    self.handle.wake();
                    return true;
                }
                Ok(_) => {
                    self.waker.wake();
                    return false;
                }
                Err(now) => state = now,
            }
        }
    }

    /// For a handle dropped: if the job is still queued, it will never run (as if
    /// aborted; nobody is woken, the handle is gone); true then. A job already taken
    /// is left to run, detached.
    pub(crate) fn cancel_queued(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, ABORTED_QUEUED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
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
    pub(crate) fn requeue(&self) {
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
