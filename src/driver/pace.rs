//! How far ahead a driver takes jobs: from how long its worker's jobs take.

use std::time::Duration;

use tokio::time::Instant;

/// A lone job is waited for by polling only on workers whose jobs take less than this.
const SPIN_JOB: Duration = Duration::from_micros(20);

/// Jobs shorter than this are pipelined deeply (see [`Pace::nominal_depth`]).
const SHORT_JOB: Duration = Duration::from_micros(100);

/// How much work a deep pipeline holds, by the worker's clock.
const PIPELINE_WORK: Duration = Duration::from_millis(2);

/// Jobs longer than this are taken one at a time.
const LONG_JOB: Duration = Duration::from_millis(2);

/// How long this worker's jobs take, smoothed; it decides how many jobs the driver
/// takes ahead.
#[derive(Debug)]
pub(super) struct Pace {
    /// When the job at the head started running (it was sent to an idle worker, or
    /// the one before it finished).
    pub(super) head_started: Instant,
    /// Smoothed service time in nanoseconds; `None` before the first job.
    pub(super) service_ns: Option<u64>,
    pub(super) max_depth: usize,
}

impl Pace {
    /// A pace that knows nothing yet, for a pipeline at most `max_depth` deep.
    pub(super) fn new(max_depth: usize) -> Self {
        Pace {
            head_started: Instant::now(),
            service_ns: None,
            max_depth,
        }
    }

    /// Whether this worker's jobs take microseconds (less than [`SPIN_JOB`]): those
    /// are worth polling for.
    #[inline]
    pub(super) fn is_tiny(&self) -> bool {
        self.service_ns
            .is_some_and(|ns| ns < SPIN_JOB.as_nanos() as u64)
    }

    /// How many jobs may be in flight. Until a job has finished nothing is known, so
    /// one. And a running job that has taken longer than [`LONG_JOB`] stops this
    /// worker taking more, whatever the average says: a job sent ahead would wait
    /// behind it (where another worker might run it at once), and could no longer be
    /// taken back if its caller gives up on it.
    #[inline]
    pub(super) fn depth(&self, in_flight: usize) -> usize {
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
    #[inline]
    pub(super) fn nominal_depth(&self) -> usize {
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
    #[inline]
    pub(super) fn may_take(&self, in_flight: usize) -> bool {
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
    #[inline]
    pub(super) fn finished_head(&mut self, now: Instant, ran_ns: u64, ran_jobs: u32) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
