//! The supervisor: one Tokio task per worker slot keeps that slot's worker alive.
//!
//! A slot starts a worker, waits for its handshake (bounded by `startup_timeout`),
//! hands it to the driver, and when the driver stops, decides: replace it (it died, was
//! killed for a timeout, or served `max_tasks_per_child` jobs), or stop (the pool is
//! drained or terminating). A retiring worker is let go in the background while its
//! replacement starts. Start-up failures back off exponentially, and while no worker at
//! all is alive, queued callers get the start-up error instead of waiting forever.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use tokio::sync::oneshot;

use crate::connect::{connect, Channel, Setup};
use crate::driver::{drive, End, Worker};
use crate::error::TaskError;
use crate::queue::Job;
use crate::shared::{Counters, Shared};
use crate::start::child::REAP_BOUND;
use crate::trace::{event, in_worker_span};

/// How long a worker that was let go may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Runs slot `slot` until the pool is drained or terminated. `first` hears whether the
/// slot's first worker came up.
///
/// A panic in the slot's task never leaves the slot dead: one in the driver fails only
/// the jobs sent to that worker, with [`TaskError::Internal`], and the worker is
/// replaced (see [`driver_panicked`]); one anywhere else in the slot's task starts the
/// slot again (after a pause, so that a panic at every start cannot spin).
pub(crate) async fn run_slot(
    shared: Arc<Shared>,
    slot: usize,
    first: Option<oneshot::Sender<Result<(), String>>>,
) {
    let mut first = first;
    loop {
        let (tx, rx) = oneshot::channel();
        let reported = first.take();
        let outcome =
            AssertUnwindSafe(supervise_slot(shared.clone(), slot, Some(tx))).catch_unwind();
        let relay = async {
            // The first start's result goes on to the builder, whichever run gave it.
            if let Ok(result) = rx.await {
                if let Some(first) = reported {
                    let _ = first.send(result);
                }
            }
        };
        let (outcome, ()) = futures::join!(outcome, relay);
        match outcome {
            Ok(()) => return,
            Err(panic) => {
                #[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
                let message = crate::panics::payload_message(&*panic);
                event!(tracing::Level::ERROR, index = slot, error = %message, "slot task panicked; starting it again");
                Counters::add(&shared.counters.workers_crashed, 1);
                shared.set_worker(slot, None);
                shared.set_lease(slot, None);
                shared.queue.unregister(slot);
                tokio::select! {
                    () = tokio::time::sleep(RESTART_PAUSE) => {}
                    () = shared.terminate.cancelled() => return,
                }
            }
        }
    }
}

/// How long a slot whose task panicked waits before it starts again.
const RESTART_PAUSE: Duration = Duration::from_millis(100);

/// The driver of worker `pid` panicked: the pool's own bug, most likely set off by
/// something the worker sent. Fails what was sent to that worker with
/// [`TaskError::Internal`] (and nothing else), takes the worker out of the pool's
/// books; the caller kills it and starts another.
fn driver_panicked(
    shared: &Shared,
    slot: usize,
    pid: u32,
    panic: Box<dyn std::any::Any + Send>,
    inflight: &mut VecDeque<Job>,
) -> End {
    let message = crate::panics::payload_message(&*panic);
    event!(tracing::Level::ERROR, pid, index = slot, error = %message, "driver panicked; replacing the worker");
    shared.set_lease(slot, None);
    shared.queue.unregister(slot);
    Counters::add(&shared.counters.workers_crashed, 1);
    let error = TaskError::Internal { pid, message };
    let tasks: u64 = inflight.iter().map(|j| j.tasks as u64).sum();
    Counters::add(&shared.counters.failed, tasks);
    for job in inflight.drain(..) {
        job.fail(error.clone());
    }
    End::Lost
}

/// One run of a slot, until the pool is drained or terminated or the run panics.
async fn supervise_slot(
    shared: Arc<Shared>,
    slot: usize,
    mut first: Option<oneshot::Sender<Result<(), String>>>,
) {
    let mut failures: u32 = 0;
    loop {
        if shared.terminate.is_cancelled() || shared.queue.is_finished() {
            return;
        }
        let started = tokio::select! {
            started = start_worker(&shared, slot) => started,
            () = shared.terminate.cancelled() => return,
        };
        let mut worker = match started {
            Ok(worker) => worker,
            Err(why) => {
                event!(tracing::Level::WARN, index = slot, error = %why, "worker failed to start");
                Counters::add(&shared.counters.start_failures, 1);
                if let Some(first) = first.take() {
                    let _ = first.send(Err(why));
                    return;
                }
                failures += 1;
                // Recorded before the callers hear it, so that stats() agrees with them.
                *shared.start_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                if shared.live_workers() == 0 {
                    let failed = shared.queue.fail_all(&TaskError::WorkerStart(why));
                    Counters::add(&shared.counters.failed, failed);
                }
                let backoff =
                    Duration::from_millis(50u64 << failures.min(8)).min(Duration::from_secs(10));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    () = shared.terminate.cancelled() => return,
                }
            }
        };
        failures = 0;
        event!(
            tracing::Level::INFO,
            pid = worker.pid,
            index = slot,
            "worker started"
        );
        *shared.start_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Counters::add(&shared.counters.workers_started, 1);
        let host = worker.remote.as_ref().and_then(|r| r.host());
        shared.set_worker(slot, Some((worker.pid, host)));
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        }
        let pid = worker.pid;
        let mut inflight = VecDeque::new();
        let driven = in_worker_span!(
            pid,
            slot,
            AssertUnwindSafe(drive(&shared, slot, &mut worker, &mut inflight)).catch_unwind()
        )
        .await;
        let end = driven
            .unwrap_or_else(|panic| driver_panicked(&shared, slot, pid, panic, &mut inflight));
        shared.set_worker(slot, None);
        match end {
            End::Retire => {
                event!(tracing::Level::INFO, pid, index = slot, "worker recycled");
                Counters::add(&shared.counters.workers_recycled, 1);
                shared.tracker.spawn(let_go(worker));
            }
            End::Drained => {
                event!(
                    tracing::Level::INFO,
                    pid,
                    index = slot,
                    "worker exits: pool drained"
                );
                let_go(worker).await;
                return;
            }
            End::Terminated => {
                event!(
                    tracing::Level::INFO,
                    pid,
                    index = slot,
                    "worker killed: pool terminated"
                );
                if worker.remote.is_some() {
                    // The end of its link ends a remote worker at once (its keeper kills
                    // and reaps it, then leaves, and so does its launcher): wait a
                    // moment for that, so that `terminate` returns with the remote
                    // worker gone too, before its launcher is ended.
                    worker.link.shutdown().await;
                    let _ = tokio::time::timeout(REMOTE_SETTLE, worker.child.wait()).await;
                }
                worker.child.kill_and_reap(REAP_BOUND).await;
                return;
            }
            End::Lost => {
                event!(
                    tracing::Level::WARN,
                    pid,
                    index = slot,
                    "worker crashed or was killed; replacing it"
                );
                shared.tracker.spawn(async move {
                    worker.child.kill_and_reap(REAP_BOUND).await;
                });
            }
        }
    }
}

/// How long a terminated remote worker's launcher has to leave by itself once its link
/// is closed, before it is ended.
const REMOTE_SETTLE: Duration = Duration::from_secs(2);

/// Lets a worker go: closing our end tells it to exit; it is killed if it lingers.
async fn let_go(mut worker: Worker) {
    worker.link.shutdown().await;
    if tokio::time::timeout(EXIT_GRACE, worker.child.wait())
        .await
        .is_err()
    {
        worker.child.kill_and_reap(REAP_BOUND).await;
    }
}

/// Starts a worker for `slot` and takes it through the handshake.
async fn start_worker(shared: &Shared, slot: usize) -> Result<Worker, String> {
    let cfg = &shared.config;
    // Bounded like the handshake; a child forked after we gave up is killed and reaped
    // by whoever holds it (`NewChild`, or the fork server when its channel closes).
    let (stdio, relays) = crate::output::prepare(&cfg.stdout, &cfg.stderr)
        .map_err(|e| format!("could not make a worker's stdio: {e}"))?;
    let launcher = cfg.launcher(slot);
    let start = async {
        match launcher {
            Some(launcher) => launcher
                .start(
                    stdio,
                    cfg.heartbeat,
                    cfg.startup_timeout,
                    crate::remote::Limits {
                        nice: cfg.child.nice,
                        memory_limit: cfg.child.memory_limit,
                    },
                )
                .await
                .map(|(child, link)| (child, Channel::Remote(link))),
            None => shared
                .starter
                .start(cfg.child, stdio)
                .await
                .map(|(child, sock)| (child, Channel::Socket(sock))),
        }
    };
    let (child, channel) = tokio::time::timeout(cfg.startup_timeout, start)
        .await
        .map_err(|_| format!("no worker process started within {:?}", cfg.startup_timeout))?
        .map_err(|e| match launcher {
            Some(l) => format!("could not start a worker through {}: {e}", l.describe()),
            None => format!("could not start a worker process: {e}"),
        })?;
    relays.start(child.pid());
    let setup = Setup {
        index: Some(slot),
        name: format!("procpool-worker-{slot}"),
        daemon: true,
        max_frame_len: cfg.max_frame_len,
        initializer: cfg.initializer.clone(),
        startup_timeout: cfg.startup_timeout,
        worker_spin: cfg.worker_polling(),
        ring: launcher.is_none() && cfg.transport() == crate::Transport::Local,
        shared_min: cfg.shared_memory_min,
        env: cfg.env.clone(),
        sandbox: cfg.sandbox.as_ref().map(|s| s.spec().clone()),
    };
    connect(child, channel, setup).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use crate::{Pool, TaskError};

    fn double(x: u64) -> u64 {
        x * 2
    }

    async fn bounded<T>(what: &str, fut: impl std::future::IntoFuture<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within 30 s"))
    }

    /// A panic in a driver (made here by the test hook, a stand-in for a bug set off by
    /// what a worker sends) fails only the tasks of its worker, with `Internal`, and
    /// the slot comes back with a new worker: with one worker, every later task would
    /// hang otherwise.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_a_driver_fails_only_its_worker_s_tasks_and_the_slot_serves_on() {
        let pool = bounded(
            "build",
            Pool::builder().processes(1).spin(Duration::ZERO).build(),
        )
        .await
        .expect("pool builds");
        assert_eq!(bounded("warm-up", pool.apply(double, 1)).await, Ok(2));
        let before = pool.stats().workers[0].pid;

        pool.shared().driver_panics.store(1, Relaxed);
        // Spawned, not awaited: the driver, not a caller on the direct path, takes
        // its reply.
        let err = bounded("the task whose reply panics", pool.apply(double, 2).spawn())
            .await
            .expect_err("its driver panicked");
        match &err {
            TaskError::Internal { pid, message } => {
                assert_eq!(*pid, before);
                assert!(message.contains("made by a test"), "{message}");
            }
            other => panic!("expected Internal, got {other:?}"),
        }
        assert_eq!(err.pid(), Some(before));

        // The slot serves on, with a new worker; the old one is gone.
        for i in 0..20 {
            assert_eq!(
                bounded("a later task", pool.apply(double, i)).await,
                Ok(i * 2)
            );
        }
        let after = pool.stats().workers[0].pid;
        assert_ne!(after, before);
        let stats = pool.stats();
        assert!(stats.workers_crashed >= 1, "{stats:?}");
        assert!(stats.failed >= 1, "{stats:?}");
        bounded("terminate", pool.terminate()).await;
        let gone = |pid: u32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(gone(before) && gone(after)) {
            assert!(std::time::Instant::now() < deadline, "a worker is left");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
