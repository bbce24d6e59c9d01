//! State shared by the pool's handles, its supervisor and the workers' drivers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::launch::Starter;
use crate::lease::Lease;
use crate::output::WorkerOutput;
use crate::policy::{nonzero, Polling, Transport};
use crate::protocol::FnRef;
use crate::queue::{Handover, Queue};
use crate::start::{ChildOptions, StartMethod};
use crate::stats::{PoolStats, WorkerStats};
use crate::transport::local::Port;

/// The pool's settings, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) start_method: StartMethod,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) initializer: Option<(FnRef, Bytes)>,
    pub(crate) max_frame_len: usize,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) kill_grace: Option<Duration>,
    pub(crate) startup_timeout: Duration,
    pub(crate) pipeline: usize,
    pub(crate) child: ChildOptions,
    pub(crate) preload: Option<(FnRef, Bytes)>,
    /// Where the pool polls, and how long; `None`: decided at build.
    pub(crate) polling: Option<Polling>,
    /// How the pool talks to its workers; `None`: decided at build.
    pub(crate) transport: Option<Transport>,
    /// `Some(keys)`: the environment variables workers keep (decided at build).
    pub(crate) env: Option<Vec<String>>,
    pub(crate) sandbox: Option<crate::sandbox::Sandbox>,
    /// Where workers' (and the fork server's) stdout and stderr go.
    pub(crate) stdout: WorkerOutput,
    pub(crate) stderr: WorkerOutput,
    /// Groups of workers on other machines, after the local ones: their launcher and
    /// how many.
    pub(crate) remote: Vec<(crate::remote::Launcher, usize)>,
    /// How long a remote worker's link may be silent before it is lost.
    pub(crate) heartbeat: Duration,
    /// At most this many tasks submitted and not yet resolved; `None`: no bound.
    pub(crate) queue_bound: Option<usize>,
    /// Byte strings from this size on travel in shared memory (see [`crate::shm`]).
    pub(crate) shared_memory_min: usize,
}

impl Config {
    /// How many workers the pool has: the local ones, then the remote groups'.
    pub(crate) fn slots(&self) -> usize {
        self.remote
            .iter()
            .fold(self.processes, |n, (_, count)| n.saturating_add(*count))
    }

    /// The launcher of `slot`'s workers, if they run on another machine.
    pub(crate) fn launcher(&self, slot: usize) -> Option<&crate::remote::Launcher> {
        let mut first = self.processes;
        for (launcher, count) in &self.remote {
            if slot >= first && slot < first + count {
                return Some(launcher);
            }
            first += count;
        }
        None
    }

    fn polling(&self) -> Polling {
        self.polling.unwrap_or(Polling::OFF)
    }

    /// How long a caller polls on the direct path, if it does.
    pub(crate) fn caller_polling(&self) -> Option<Duration> {
        nonzero(self.polling().caller)
    }

    /// How long a driver polls for a lone tiny job's reply, if it does.
    pub(crate) fn driver_polling(&self) -> Option<Duration> {
        nonzero(self.polling().driver)
    }

    /// How long a worker polls for its next job.
    pub(crate) fn worker_polling(&self) -> Duration {
        self.polling().worker
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport.unwrap_or_default()
    }
}

/// An idle worker's offer to callers: its port with whether its jobs take
/// microseconds, and what a caller hands back (see [`crate::direct`]).
pub(crate) type DirectLease = Lease<(Port, bool), Handover>;

/// An idle worker's port, lent to a caller: its slot, its pid, its lease (to give the
/// port back to), and the port with whether the worker's jobs take microseconds.
pub(crate) type Lent = (usize, u32, Arc<DirectLease>, (Port, bool));

/// A slot's published lease, with its worker's pid.
pub(crate) type Offer = (u32, Arc<DirectLease>);

/// What [`Shared::try_admit`] found.
#[derive(Debug)]
pub(crate) enum Admit {
    /// The pool has no bound.
    Unbounded,
    /// A place, held by this permit.
    Admitted(OwnedSemaphorePermit),
    /// The bound is reached; its semaphore, to wait for room.
    Full(Arc<Semaphore>),
    /// The pool is closed.
    Closed,
}

/// Counters behind [`PoolStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) submitted: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) workers_started: AtomicU64,
    pub(crate) workers_recycled: AtomicU64,
    pub(crate) workers_crashed: AtomicU64,
    pub(crate) workers_killed_on_timeout: AtomicU64,
    pub(crate) workers_killed_on_abort: AtomicU64,
    pub(crate) start_failures: AtomicU64,
    /// Tasks refused by a `try_` submission because the queue bound was reached.
    pub(crate) rejected: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) starter: Starter,
    pub(crate) queue: Queue,
    /// The places under the queue bound, one permit per task (see
    /// [`crate::queue::admission`]); `None` without a bound. Closed with the queue.
    pub(crate) bound: Option<Arc<Semaphore>>,
    pub(crate) counters: Counters,
    pub(crate) next_id: AtomicU64,
    /// Cancelled by terminate (or the last handle's drop): every driver kills its
    /// worker and every slot stops.
    pub(crate) terminate: CancellationToken,
    /// Set first thing by terminate (see [`Shared::closed_error`]).
    terminating: std::sync::atomic::AtomicBool,
    /// Slot tasks and background reaps: `join` waits for all of them.
    pub(crate) tracker: TaskTracker,
    /// The live worker of each slot.
    workers: Mutex<Vec<Option<WorkerStats>>>,
    /// How many jobs each slot's worker has run (counted at every reply, so not
    /// under the lock of `workers`).
    worker_tasks: Box<[AtomicU64]>,
    /// How many jobs each slot's driver keeps in flight now (its pipeline depth).
    depths: Box<[AtomicUsize]>,
    /// Why workers could not be started lately, if they could not.
    pub(crate) start_error: Mutex<Option<String>>,
    /// The offers of idle workers to callers ([`crate::direct`]), by slot.
    leases: Mutex<Vec<Option<Offer>>>,
    /// Tests: how many of the next replies make their driver panic (a stand-in for a
    /// bug in the pool, to test that a slot survives one).
    #[cfg(test)]
    pub(crate) driver_panics: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        let slots = config.slots();
        Shared {
            starter: Starter::new(
                config.start_method,
                config.preload.clone(),
                config.startup_timeout,
                config.env.clone(),
                (config.stdout.clone(), config.stderr.clone()),
            ),
            bound: config.queue_bound.map(|n| Arc::new(Semaphore::new(n))),
            config,
            queue: Queue::default(),
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            terminate: CancellationToken::new(),
            terminating: Default::default(),
            tracker: TaskTracker::new(),
            workers: Mutex::new(vec![None; slots]),
            worker_tasks: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            depths: (0..slots).map(|_| AtomicUsize::new(1)).collect(),
            start_error: Mutex::new(None),
            leases: Mutex::new(vec![None; slots]),
            #[cfg(test)]
            driver_panics: AtomicU64::new(0),
        }
    }

    fn leases(&self) -> MutexGuard<'_, Vec<Option<Offer>>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes (or, with `None`, withdraws) the lease of a slot's worker, with the
    /// worker's pid.
    pub(crate) fn set_lease(&self, slot: usize, lease: Option<Offer>) {
        self.leases()[slot] = lease;
    }

    /// An idle worker's port, lent (see [`Lent`] and [`crate::direct`]).
    pub(crate) fn lend(&self) -> Option<Lent> {
        self.leases().iter().enumerate().find_map(|(slot, lease)| {
            let (pid, lease) = lease.as_ref()?;
            let port = lease.try_lend()?;
            Some((slot, *pid, lease.clone(), port))
        })
    }

    fn workers(&self) -> MutexGuard<'_, Vec<Option<WorkerStats>>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `slot`'s worker: its pid and, for a remote one, its host.
    pub(crate) fn set_worker(&self, slot: usize, worker: Option<(u32, Option<String>)>) {
        let mut workers = self.workers();
        self.worker_tasks[slot].store(0, Ordering::Relaxed);
        workers[slot] = worker.map(|(pid, host)| WorkerStats {
            index: slot,
            pid,
            tasks: 0,
            host,
        });
    }

    /// Records how many jobs a slot's driver keeps in flight now.
    pub(crate) fn set_depth(&self, slot: usize, depth: usize) {
        // Called at every reply: write only on a change.
        if self.depths[slot].load(Ordering::Relaxed) != depth {
            self.depths[slot].store(depth, Ordering::Relaxed);
        }
    }

    /// How many jobs all the drivers keep in flight now.
    pub(crate) fn pipelines(&self) -> usize {
        self.depths.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn count_worker_task(&self, slot: usize, tasks: u64) {
        self.worker_tasks[slot].fetch_add(tasks, Ordering::Relaxed);
    }

    /// How many slots have a live worker.
    pub(crate) fn live_workers(&self) -> usize {
        self.workers().iter().flatten().count()
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            submitted: get(&c.submitted),
            completed: get(&c.completed),
            failed: get(&c.failed),
            timed_out: get(&c.timed_out),
            cancelled: get(&c.cancelled),
            queued: self.queue.len(),
            admitted: self.bound.as_ref().map_or(0, |sem| {
                self.config
                    .queue_bound
                    .unwrap_or(0)
                    .saturating_sub(sem.available_permits())
            }),
            queue_bound: self.config.queue_bound,
            rejected: get(&c.rejected),
            workers_started: get(&c.workers_started),
            workers_recycled: get(&c.workers_recycled),
            workers_crashed: get(&c.workers_crashed),
            workers_killed_on_timeout: get(&c.workers_killed_on_timeout),
            workers_killed_on_abort: get(&c.workers_killed_on_abort),
            start_failures: get(&c.start_failures),
            start_error: self
                .start_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            workers: self
                .workers()
                .iter()
                .flatten()
                .map(|w| WorkerStats {
                    tasks: self.worker_tasks[w.index].load(Ordering::Relaxed),
                    ..w.clone()
                })
                .collect(),
            forkserver_pid: match &self.starter {
                Starter::ForkServer(server) => server.pid(),
                _ => None,
            },
        }
    }

    /// Refuses new work from now on; what is queued still runs. Tasks waiting for room
    /// under the queue bound stop waiting and fail as `Closed`.
    pub(crate) fn close(&self) {
        self.queue.close();
        if let Some(sem) = &self.bound {
            sem.close();
        }
    }

    /// A place for one task under the queue bound, now. With `check_closed`, a closed
    /// pool says so even without a bound (else the closed queue refuses the job).
    pub(crate) fn try_admit(&self, check_closed: bool) -> Admit {
        if check_closed && self.queue.is_closed() {
            return Admit::Closed;
        }
        let Some(sem) = &self.bound else {
            return Admit::Unbounded;
        };
        match sem.clone().try_acquire_owned() {
            Ok(permit) => Admit::Admitted(permit),
            // Closed first, then the semaphore: a full pool that is closing is closed.
            Err(TryAcquireError::NoPermits) if self.queue.is_closed() => Admit::Closed,
            Err(TryAcquireError::NoPermits) => Admit::Full(sem.clone()),
            Err(TryAcquireError::Closed) => Admit::Closed,
        }
    }

    /// The error of a task that was refused a place, or waited for one, when the pool
    /// closed.
    pub(crate) fn closed_error(&self) -> crate::TaskError {
        if self.terminating.load(Ordering::Relaxed) {
            crate::TaskError::Terminated
        } else {
            crate::TaskError::Closed
        }
    }

    /// Stops everything now: refuse and fail queued work, tell drivers to kill.
    pub(crate) fn start_terminate(&self) {
        // First: a task waiting for room, or refused, from now on hears `Terminated`;
        // and the queue bound is closed before `fail_all` frees places, which would
        // otherwise let such a task in.
        self.terminating.store(true, Ordering::Relaxed);
        self.close();
        let failed = self.queue.fail_all(&crate::TaskError::Terminated);
        Counters::add(&self.counters.failed, failed);
        self.terminate.cancel();
        self.tracker.close();
    }
}
