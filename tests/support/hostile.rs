//! What a test of a hostile or broken worker checks after it: the pool gave up on the
//! worker only, it serves the next task, and `terminate` leaves no process behind.

use procpool::{Pool, TaskError};

use super::{all_gone, is_gone, within, worker_pids, BOUND};

/// Errors after which the pool has given up on the worker.
pub fn gave_up(e: &TaskError) -> bool {
    matches!(
        e,
        TaskError::Protocol(_) | TaskError::WorkerDied { .. } | TaskError::TimedOut { .. }
    )
}

/// The pool serves: a task succeeds within three tries, the tries before failing only
/// as a task on a worker the pool gives up on does.
pub async fn serves(pool: &Pool, what: &str) {
    for _ in 0..3 {
        match within(what, pool.apply(super::double, 21)).await {
            Ok(n) => {
                assert_eq!(n, 42, "{what}");
                return;
            }
            Err(e) => assert!(gave_up(&e), "{what}: the next task failed with {e:?}"),
        }
    }
    panic!("{what}: the pool did not serve a task in three tries");
}

/// Terminates the pool; every process in `pids` (and every worker it has) is gone.
pub async fn terminate(pool: Pool, mut pids: Vec<u32>, what: &str) {
    pids.extend(worker_pids(&pool));
    within("terminate", pool.terminate()).await;
    assert!(
        all_gone(pids.clone(), BOUND).await,
        "{what}: processes left after terminate: {:?}",
        pids.iter().filter(|&&p| !is_gone(p)).collect::<Vec<_>>()
    );
}
