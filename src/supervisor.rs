//! The supervisor: one Tokio task per worker slot keeps that slot's worker alive.
//!
//! A slot starts a worker, waits for its handshake (bounded by `startup_timeout`),
//! hands it to the driver, and when the driver stops, decides: replace it (it died, was
//! killed for a timeout, or served `max_tasks_per_child` jobs), or stop (the pool is
//! drained or terminating). A retiring worker is let go in the background while its
//! replacement starts. Start-up failures back off exponentially, and while no worker at
//! all is alive, queued callers get the start-up error instead of waiting forever.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::connect::{connect, Setup};
use crate::driver::{drive, End, Worker};
use crate::error::TaskError;
use crate::shared::{Counters, Shared};
use crate::start::child::REAP_BOUND;
use crate::trace::{event, in_worker_span};

/// How long a worker that was let go may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Runs slot `slot` until the pool is drained or terminated. `first` hears whether the
/// slot's first worker came up.
pub(crate) async fn run_slot(
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
        shared.set_worker(slot, Some(worker.pid));
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        }
        let pid = worker.pid;
        let end = in_worker_span!(pid, slot, drive(&shared, slot, &mut worker)).await;
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

/// Lets a worker go: closing our end tells it to exit; it is killed if it lingers.
async fn let_go(mut worker: Worker) {
    let _ = worker.writer.shutdown().await;
    drop(worker.writer);
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
    let start = shared.starter.start(cfg.child, stdio);
    let (child, sock) = tokio::time::timeout(cfg.startup_timeout, start)
        .await
        .map_err(|_| format!("no worker process started within {:?}", cfg.startup_timeout))?
        .map_err(|e| format!("could not start a worker process: {e}"))?;
    relays.start(child.pid());
    let setup = Setup {
        index: Some(slot),
        name: format!("procpool-worker-{slot}"),
        daemon: true,
        max_frame_len: cfg.max_frame_len,
        initializer: cfg.initializer.clone(),
        startup_timeout: cfg.startup_timeout,
        worker_spin: cfg.spin.unwrap_or_default() * 5 / 2,
        ring: true,
    };
    connect(child, sock, setup).await
}
