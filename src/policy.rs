//! A pool's named policies: [`Polling`] (where it busy-waits for a tiny task's reply
//! instead of sleeping) and [`Transport`] (how it talks to its workers).

use std::time::Duration;

/// Where a pool polls for what comes next instead of sleeping until it is woken, and
/// for how long at most. Each place saves a thread wake-up per task (a wake-up costs
/// about as much as the rest of a round trip of a tiny task: some 5-20 µs) at the
/// price of keeping a CPU busy while it polls (it yields the CPU to anything else
/// runnable between polls). Polling pays only where the pool's processes leave a CPU
/// free: on a machine where every CPU is taken, the poller takes time from the task
/// it waits for.
///
/// Each bound applies only to workers whose tasks take microseconds (the pool measures
/// them); workers of longer tasks are never polled for.
///
/// Set with [`PoolBuilder::polling`](crate::PoolBuilder::polling). The default is
/// [`Polling::spin`]`(20 µs)` when the pool's `processes` are fewer than the CPUs,
/// and [`Polling::OFF`] otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Polling {
    /// **The direct path.** A caller awaiting `pool.apply(f, x)` when nothing is
    /// queued and a worker is idle writes the job itself, whatever this bound; if the
    /// worker's tasks are tiny, it then polls the worker's reply ring on its own
    /// thread, within the `.await`, for up to this long; a task that takes longer is
    /// handed to the worker's driver as usual. No thread but the worker is woken on
    /// the way. Cost: the caller's thread, for up to this long per call. With zero, a
    /// caller on a thread that runs nothing else meanwhile (`block_on`'s on a
    /// multi-thread runtime) sleeps on the ring instead, for up to 100 µs, which costs
    /// no CPU. Pools with `max_tasks_per_child`, and workers without a reply ring (the
    /// stream transport), do not use the direct path.
    pub caller: Duration,
    /// **The driver.** A worker's driver with one tiny job in flight polls the reply
    /// ring for up to this long before it sleeps. Cost: a runtime thread, for up to
    /// this long per job.
    pub driver: Duration,
    /// **The worker.** After a reply, a worker polls its channel for its next job for
    /// up to this long before it sleeps. Cost: the worker's CPU, for up to this long
    /// after each job (which only its own tasks would use).
    pub worker: Duration,
}

impl Polling {
    /// No polling anywhere: every wait sleeps until woken.
    pub const OFF: Polling = Polling {
        caller: Duration::ZERO,
        driver: Duration::ZERO,
        worker: Duration::ZERO,
    };

    /// Callers and drivers poll for up to `spin`; workers for their next job for up to
    /// 2.5 times as long (a worker that sleeps costs the next job two wake-ups).
    pub fn spin(spin: Duration) -> Polling {
        Polling {
            caller: spin,
            driver: spin,
            worker: spin.saturating_mul(5) / 2,
        }
    }

    /// The default for `processes` workers on this machine; see the type's docs.
    pub(crate) fn default_for(processes: usize) -> Polling {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if processes < cpus {
            Polling::spin(Duration::from_micros(20))
        } else {
            Polling::OFF
        }
    }
}

/// `Some(bound)` where `bound` is not zero.
pub(crate) fn nonzero(bound: Duration) -> Option<Duration> {
    (!bound.is_zero()).then_some(bound)
}

/// How a pool talks to its workers. Set with
/// [`PoolBuilder::transport`](crate::PoolBuilder::transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// A socketpair for jobs and a reply ring of shared memory for replies: the
    /// fastest, for workers on this machine. The default.
    #[default]
    Local,
    /// Jobs and replies both as frames on a byte stream, no shared memory: what a
    /// worker behind a pipe or on another machine needs. Locally it costs a syscall
    /// and a wake-up more per reply than [`Local`](Self::Local), has no direct path
    /// (see [`Polling::caller`]), and cannot take back jobs already written to a worker
    /// whose current task runs long (only those not yet written).
    Stream,
}

/// The test suite's overrides of the defaults, from `__PROCPOOL_TEST_POLLING`
/// (`on`: [`Polling::spin`] of 20 µs whatever the machine; `off`) and
/// `__PROCPOOL_TEST_TRANSPORT` (`stream`, `local`): so that the whole suite runs each
/// way on any machine. Not for programs.
pub(crate) fn test_overrides() -> (Option<Polling>, Option<Transport>) {
    let polling = match std::env::var("__PROCPOOL_TEST_POLLING").as_deref() {
        Ok("on") => Some(Polling::spin(Duration::from_micros(20))),
        Ok("off") => Some(Polling::OFF),
        _ => None,
    };
    let transport = match std::env::var("__PROCPOOL_TEST_TRANSPORT").as_deref() {
        Ok("stream") => Some(Transport::Stream),
        Ok("local") => Some(Transport::Local),
        _ => None,
    };
    (polling, transport)
}
