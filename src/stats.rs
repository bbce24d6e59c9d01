//! What [`Pool::stats`](crate::Pool::stats) reports.

/// A snapshot of a pool's counters. Counts are of tasks: a chunk of `map` counts once
/// per task it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Tasks accepted by the pool.
    pub submitted: u64,
    /// Tasks that produced a value (including the task's own `Err` values).
    pub completed: u64,
    /// Tasks that ended in a [`TaskError`](crate::TaskError) other than a timeout or a
    /// cancellation: panics, worker deaths, codec errors, termination.
    pub failed: u64,
    /// Tasks killed for running past their timeout.
    pub timed_out: u64,
    /// Tasks cancelled: dropped before they started, or aborted.
    pub cancelled: u64,
    /// Jobs (tasks or chunks of tasks) waiting in the queue now.
    pub queued: usize,
    /// Tasks holding a place under the queue bound now: submitted and not yet resolved,
    /// queued or running (see [`PoolBuilder::queue_bound`](crate::PoolBuilder::queue_bound)).
    /// Always 0 in a pool without a bound.
    pub admitted: usize,
    /// The pool's [queue bound](crate::PoolBuilder::queue_bound), if it has one.
    pub queue_bound: Option<usize>,
    /// Tasks refused because the queue bound was reached
    /// ([`TaskError::QueueFull`](crate::TaskError::QueueFull), from
    /// [`Pool::try_apply`](crate::Pool::try_apply) and
    /// [`Pool::try_apply_async`](crate::Pool::try_apply_async)), since the pool started.
    /// They are not counted in [`submitted`](PoolStats::submitted).
    pub rejected: u64,
    /// Worker processes started, replacements included.
    pub workers_started: u64,
    /// Workers retired after `max_tasks_per_child`.
    pub workers_recycled: u64,
    /// Workers that died by themselves (an exit, a signal, a memory limit) or broke the
    /// protocol, and were replaced. Workers the pool killed on a task's timeout or on an
    /// abort are not counted here, but in
    /// [`workers_killed_on_timeout`](PoolStats::workers_killed_on_timeout) and
    /// [`workers_killed_on_abort`](PoolStats::workers_killed_on_abort).
    pub workers_crashed: u64,
    /// Workers killed (and replaced) because a task they ran passed its timeout: one per
    /// kill, whatever the number of tasks in the chunk (those are in
    /// [`timed_out`](PoolStats::timed_out)).
    pub workers_killed_on_timeout: u64,
    /// Workers killed (and replaced) because the task they ran was aborted
    /// ([`TaskHandle::abort`](crate::TaskHandle::abort)).
    pub workers_killed_on_abort: u64,
    /// Attempts to start a worker that failed.
    pub start_failures: u64,
    /// Why the last attempt to start a worker failed, while the pool is still trying
    /// (cleared once a worker starts).
    pub start_error: Option<String>,
    /// Each live worker.
    pub workers: Vec<WorkerStats>,
    /// The pid of the pool's fork server, with [`StartMethod::ForkServer`](crate::StartMethod::ForkServer), while it runs.
    pub forkserver_pid: Option<u32>,
}

/// One live worker in [`PoolStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Its slot, from 0 to `processes - 1`.
    pub index: usize,
    /// Its process id (on its host, for a worker on another machine).
    pub pid: u32,
    /// Jobs it has completed (a chunk counts once).
    pub tasks: u64,
    /// The host it runs on, for a worker on another machine (see
    /// [`PoolBuilder::remote`](crate::PoolBuilder::remote)); `None` for a local one.
    pub host: Option<String>,
}
