#![cfg(target_os = "linux")]
//! `TaskHandle::is_finished` and `TaskError::into_panic` / `try_into_panic`: the
//! handle says when its outcome is in without awaiting it, and a task's panic becomes
//! a payload that `std::panic::resume_unwind` carries on with the task's message.
procpool::enable_test_support!();
mod support;

use std::time::Duration;

use procpool::TaskError;

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn explode(n: u32) -> u64 {
    panic!("boom {n}");
}

/// Polls `cond` every 5 ms for up to 10 s, on the runtime.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn is_finished_is_false_while_the_task_runs_and_true_once_its_outcome_is_in() {
    let pool = support::pool(1).await;
    let mut handle = pool.apply_async(sleep_ms, 300);
    assert!(!handle.is_finished(), "it was just submitted");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!handle.is_finished(), "it sleeps 300 ms");
    assert!(
        eventually(|| handle.is_finished()).await,
        "it never finished"
    );
    // Its outcome is in: awaiting it returns at once.
    let got = tokio::time::timeout(Duration::from_millis(50), &mut handle)
        .await
        .expect("a finished handle answers at once");
    assert_eq!(got, Ok(300));
    assert!(handle.is_finished(), "still finished once awaited");

    // A failure is an outcome too.
    let failing = pool.apply_async(explode, 1);
    assert!(eventually(|| failing.is_finished()).await);
    assert!(failing.await.unwrap_err().is_panic());

    // A task aborted in the queue (behind a busy worker) is finished at once.
    let busy = pool.apply_async(sleep_ms, 500);
    let queued = pool.apply_async(sleep_ms, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!queued.is_finished());
    queued.abort();
    assert!(queued.is_finished(), "aborted before it started");
    assert_eq!(queued.await, Err(TaskError::Cancelled));
    assert_eq!(busy.await, Ok(500));
    pool.terminate().await;
}

#[tokio::test]
async fn a_remote_panic_becomes_a_payload_that_resume_unwind_carries_on() {
    let pool = support::pool(1).await;
    let err = pool.apply(explode, 7).await.unwrap_err();
    let payload = err.clone().try_into_panic().expect("the task panicked");
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("boom 7")
    );
    // resume_unwind carries it on in this process, message and all.
    let caught = std::panic::catch_unwind(|| std::panic::resume_unwind(err.into_panic()))
        .expect_err("resume_unwind unwinds");
    assert_eq!(
        caught.downcast_ref::<String>().map(String::as_str),
        Some("boom 7")
    );

    // Not a panic: the error comes back unchanged, and into_panic panics saying so.
    let other = TaskError::Cancelled;
    assert_eq!(
        other.clone().try_into_panic().unwrap_err(),
        TaskError::Cancelled
    );
    let refused = std::panic::catch_unwind(|| other.into_panic()).expect_err("panics");
    let message = refused
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("not a panic"), "{message}");
    pool.terminate().await;
}
