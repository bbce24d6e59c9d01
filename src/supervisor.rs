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

use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::driver::{drive, End, Worker};
use crate::error::TaskError;
use crate::protocol::codec::{decode_frame, encode_frame, frame_codec};
use crate::protocol::{
    FromWorker, InitFailure, ToWorker, HANDSHAKE_FRAME_LIMIT, MAGIC, PROTOCOL_VERSION,
};
use crate::shared::{Counters, Shared};
use crate::start::child::REAP_BOUND;
use crate::task_fn::build_id;

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
                Counters::add(&shared.counters.start_failures, 1);
                if let Some(first) = first.take() {
                    let _ = first.send(Err(why));
                    return;
                }
                failures += 1;
                if shared.live_workers() == 0 {
                    shared
                        .queue
                        .fail_all(&TaskError::WorkerStart(why.clone()));
                }
                *shared.start_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                let backoff = Duration::from_millis(50u64 << failures.min(8)).min(Duration::from_secs(10));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => continue,
                    () = shared.terminate.cancelled() => return,
                }
            }
        };
        failures = 0;
        *shared.start_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Counters::add(&shared.counters.workers_started, 1);
        shared.set_worker(slot, Some(worker.pid));
        if let Some(first) = first.take() {
            let _ = first.send(Ok(()));
        }
        let end = drive(&shared, slot, &mut worker).await;
        shared.set_worker(slot, None);
        match end {
            End::Retire => {
                Counters::add(&shared.counters.workers_recycled, 1);
                shared.tracker.spawn(let_go(worker));
            }
            End::Drained => {
                let_go(worker).await;
                return;
            }
            End::Terminated => {
                worker.child.kill_and_reap(REAP_BOUND).await;
                return;
            }
            End::Lost => {
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
    let (mut child, sock) = crate::start::start_worker(cfg.start_method, cfg.child)
        .await
        .map_err(|e| format!("could not start a worker process: {e}"))?;
    let pid = child.pid();
    let handshake = async {
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let sock = tokio::net::UnixStream::from_std(sock).map_err(|e| e.to_string())?;
        let (rd, wr) = sock.into_split();
        let mut reader = FramedRead::new(rd, frame_codec(HANDSHAKE_FRAME_LIMIT));
        let mut writer = FramedWrite::new(wr, frame_codec(HANDSHAKE_FRAME_LIMIT));
        let frame = reader
            .next()
            .await
            .ok_or("it closed its channel before the handshake")?
            .map_err(|e| format!("bad handshake frame: {e}"))?;
        let hello = match decode_frame::<FromWorker>(&frame) {
            Ok((FromWorker::Hello(hello), _)) => hello,
            _ => return Err("its first message was not a procpool hello".to_string()),
        };
        if hello.magic != MAGIC || hello.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "it speaks protocol {}, the pool {PROTOCOL_VERSION}",
                hello.protocol
            ));
        }
        if hello.build_id != build_id() {
            return Err("it runs another build of the program".to_string());
        }
        let (initializer, init_args) = match &cfg.initializer {
            Some((f, args)) => (Some(*f), args.clone()),
            None => (None, bytes::Bytes::new()),
        };
        let setup = ToWorker::Setup {
            protocol: PROTOCOL_VERSION,
            build_id: build_id().to_vec(),
            index: slot,
            name: format!("procpool-worker-{slot}"),
            max_frame_len: cfg.max_frame_len,
            initializer,
        };
        let setup = encode_frame(&setup, |out| {
            out.extend_from_slice(&init_args);
            Ok(())
        })?;
        writer
            .send(bytes::Bytes::from(setup))
            .await
            .map_err(|e| format!("could not send setup: {e}"))?;
        let frame = reader
            .next()
            .await
            .ok_or("it exited during start-up (does main call procpool::init() first?)")?
            .map_err(|e| format!("bad handshake frame: {e}"))?;
        match decode_frame::<FromWorker>(&frame) {
            Ok((FromWorker::Ready, _)) => {}
            Ok((FromWorker::InitFailed(InitFailure::Panicked(p)), _)) => {
                return Err(format!("its initializer {p}"))
            }
            Ok((FromWorker::InitFailed(InitFailure::Refused(why)), _)) => {
                return Err(format!("it refused the setup: {why}"))
            }
            _ => return Err("unexpected message during start-up".to_string()),
        }
        reader.decoder_mut().set_max_frame_length(cfg.max_frame_len);
        Ok((reader, writer.into_inner()))
    };
    let result = tokio::time::timeout(cfg.startup_timeout, handshake).await;
    let failure = match result {
        Ok(Ok((reader, writer))) => {
            return Ok(Worker {
                pid,
                child,
                reader,
                writer,
            })
        }
        Ok(Err(why)) => why,
        Err(_) => format!(
            "it did not finish its handshake within {:?}",
            cfg.startup_timeout
        ),
    };
    let exit = match child.exit() {
        Some(exit) => Some(exit),
        None => match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
            Ok(exit) => Some(exit),
            Err(_) => child.kill_and_reap(REAP_BOUND).await,
        },
    };
    Err(match exit {
        Some(exit) => format!("worker {pid} failed to start ({exit}): {failure}"),
        None => format!("worker {pid} failed to start: {failure}"),
    })
}
