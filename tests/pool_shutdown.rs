#![cfg(target_os = "linux")]
//! `close`, `join`, `terminate` and dropping the pool: what happens to queued and
//! running work, and that no worker process (nor zombie) is left behind.
procpool::enable_test_support!();
mod support;

use std::time::Duration;

use futures::StreamExt;
use procpool::TaskError;

use support::{
    assert_all_gone, assert_no_zombies, scripted, square, touch, wait_until, within, Script,
    TempPath,
};

fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[tokio::test]
async fn a_closed_pool_refuses_every_kind_of_submission() {
    let pool = support::pool(2).await;
    assert!(!pool.is_closed());
    pool.close();
    assert!(pool.is_closed());
    assert!(pool.clone().is_closed(), "clones share the state");

    assert_eq!(
        within("apply", pool.apply(square, 2)).await,
        Err(TaskError::Closed)
    );
    assert_eq!(
        within("apply_async", pool.apply_async(square, 2)).await,
        Err(TaskError::Closed)
    );
    assert_eq!(
        within("map", pool.map(square, 0..10u64)).await,
        Err(TaskError::Closed)
    );
    assert_eq!(
        within("starmap", pool.starmap(add, vec![(1, 2)])).await,
        Err(TaskError::Closed)
    );
    let items: Vec<_> = within("imap", pool.imap(square, 0..3u64).collect::<Vec<_>>()).await;
    assert_eq!(items, vec![Err(TaskError::Closed); 3]);
    let items: Vec<_> = within(
        "imap_unordered",
        pool.imap_unordered(square, 0..3u64).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(items, vec![Err(TaskError::Closed); 3]);
    assert!(TaskError::Closed.to_string().contains("closed"));

    assert_eq!(pool.stats().submitted, 0);
    within("join", pool.join()).await;
}

#[tokio::test]
async fn close_lets_queued_and_running_work_finish() {
    let pool = support::pool(1).await;
    let started = TempPath::new("close-started");
    let gate = TempPath::new("close-gate");
    let queued_file = TempPath::new("close-queued");
    let running = pool.apply_async(scripted, Script::new(5).started(&started).wait_for(&gate));
    let queued = pool.apply_async(touch, queued_file.arg());
    assert!(wait_until(support::BOUND, || started.exists()).await);
    pool.close();
    gate.touch();
    assert_eq!(within("running", running).await.map(|(v, _)| v), Ok(5));
    assert!(within("queued", queued).await.is_ok());
    assert!(queued_file.exists());
    within("join", pool.join()).await;
}

#[tokio::test]
async fn after_close_the_idle_workers_exit_by_themselves() {
    let pool = support::pool(2).await;
    let pids = support::worker_pids(&pool);
    assert_eq!(pids.len(), 2);
    pool.close();
    assert_all_gone(&pids).await;
    assert!(pool.stats().workers.is_empty(), "{:?}", pool.stats());
    within("join", pool.join()).await;
}

#[tokio::test]
async fn join_waits_for_queued_work_then_the_workers_are_gone() {
    let pool = support::pool(2).await;
    let pids = support::worker_pids(&pool);
    let files: Vec<TempPath> = (0..6).map(|_| TempPath::new("join-item")).collect();
    // Handles kept but never polled before the join.
    let handles: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, f)| pool.apply_async(scripted, Script::new(i as u64).done(f)))
        .collect();
    let slow: Vec<_> = (0..4)
        .map(|_| pool.apply_async(support::sleep_ms, 50))
        .collect();

    within("join", pool.join()).await;
    assert!(pool.is_closed());
    assert!(
        files.iter().all(TempPath::exists),
        "join returned before queued work ran"
    );
    // join reaps: no need to wait.
    for &pid in &pids {
        assert!(
            support::is_gone(pid),
            "worker {pid} outlived join: {:?}",
            support::proc_state(pid)
        );
    }
    assert_no_zombies(&pids);
    assert!(pool.stats().workers.is_empty());
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(within("handle", h).await.map(|(v, _)| v), Ok(i as u64));
    }
    for h in slow {
        assert_eq!(within("slow", h).await, Ok(50));
    }
    // Joining again, or terminating afterwards, returns at once.
    within("join again", pool.join()).await;
    within("terminate after join", pool.terminate()).await;
    assert_eq!(
        within("apply", pool.apply(square, 1)).await,
        Err(TaskError::Closed)
    );
}

#[tokio::test]
async fn join_from_a_clone_while_a_map_runs() {
    let pool = support::pool(2).await;
    let pids = support::worker_pids(&pool);
    let map = tokio::spawn(std::future::IntoFuture::into_future(
        pool.map(support::sleep_ms, vec![10u64; 20]).chunk_size(1),
    ));
    // The map has submitted its chunks once it has been polled.
    assert!(wait_until(support::BOUND, || pool.stats().submitted == 20).await);
    within("join", pool.clone().join()).await;
    assert_eq!(within("map", map).await.unwrap(), Ok(vec![10u64; 20]));
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn terminate_kills_running_tasks_and_reaps_the_workers() {
    let pool = support::pool(2).await;
    let pids = support::worker_pids(&pool);
    let never = TempPath::new("terminate-never");
    let started: Vec<TempPath> = (0..4).map(|_| TempPath::new("terminate-started")).collect();
    // Four tasks that would never end: some run, the others wait for a worker.
    let handles: Vec<_> = started
        .iter()
        .map(|s| pool.apply_async(scripted, Script::new(0).started(s).wait_for(&never)))
        .collect();
    let one_runs = wait_until(support::BOUND, || started.iter().any(TempPath::exists)).await;
    assert!(one_runs, "no task started");

    within("terminate", pool.terminate()).await;
    // terminate reaps: no need to wait.
    for &pid in &pids {
        assert!(
            support::is_gone(pid),
            "worker {pid} outlived terminate: {:?}",
            support::proc_state(pid)
        );
    }
    assert_no_zombies(&pids);
    for h in handles {
        assert_eq!(within("task", h).await, Err(TaskError::Terminated));
    }
    assert!(pool.is_closed());
    assert!(pool.stats().workers.is_empty());
    assert_eq!(
        within("after", pool.apply(square, 1)).await,
        Err(TaskError::Closed)
    );
    within("terminate again", pool.terminate()).await;
    within("join after terminate", pool.join()).await;
}

#[tokio::test]
async fn start_terminate_kills_in_the_background() {
    let pool = support::pool(2).await;
    let pids = support::worker_pids(&pool);
    let never = TempPath::new("start-terminate-never");
    let handle = pool.apply_async(scripted, Script::new(0).wait_for(&never));
    pool.start_terminate();
    assert_eq!(within("handle", handle).await, Err(TaskError::Terminated));
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn dropping_the_last_clone_kills_and_reaps_every_worker() {
    let pool = support::pool(2).await;
    let clone = pool.clone();
    let pids = support::worker_pids(&pool);
    drop(pool);
    // A clone keeps the pool alive.
    assert_eq!(within("via clone", clone.apply(square, 4)).await, Ok(16));
    assert!(pids.iter().all(|&p| support::is_running(p)));

    let started = TempPath::new("drop-started");
    let never = TempPath::new("drop-never");
    let running = clone.apply_async(scripted, Script::new(0).started(&started).wait_for(&never));
    assert!(wait_until(support::BOUND, || started.exists()).await);
    drop(clone);
    assert_all_gone(&pids).await;
    // A handle does not keep the pool alive; its task ends with the pool.
    assert_eq!(within("running", running).await, Err(TaskError::Terminated));
}

#[tokio::test]
async fn a_stream_keeps_its_pool_alive_until_it_is_dropped() {
    let pool = support::pool(2).await;
    let pids = support::worker_pids(&pool);
    let mut s = pool.imap(square, 0..10u64).chunk_size(1);
    drop(pool);
    let mut got = Vec::new();
    while let Some(r) = within("imap", s.next()).await {
        got.push(r.expect("task"));
    }
    assert_eq!(got, (0..10).map(|x| x * x).collect::<Vec<_>>());
    assert!(pids.iter().all(|&p| support::is_running(p)));
    drop(s);
    assert_all_gone(&pids).await;
}

#[test]
fn a_pool_dropped_outside_any_runtime_leaves_no_process() {
    // The runtime goes first, then the pool: nothing async is left to clean up with.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let pool = rt.block_on(support::pool(2));
    let pids = support::worker_pids(&pool);
    let never = TempPath::new("no-runtime-never");
    let started = TempPath::new("no-runtime-started");
    let handle = pool.apply_async(scripted, Script::new(0).started(&started).wait_for(&never));
    assert!(rt.block_on(wait_until(support::BOUND, || started.exists())));
    drop(rt);
    drop(pool);
    drop(handle);
    let gone = support::eventually(support::GONE_WITHIN, || {
        pids.iter().all(|&p| support::is_gone(p))
    });
    assert!(
        gone,
        "{:?}",
        pids.iter()
            .map(|&p| support::proc_state(p))
            .collect::<Vec<_>>()
    );
    assert_no_zombies(&pids);

    // And the other order: the pool first, then at once its runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool = rt.block_on(support::pool(2));
    let pids = support::worker_pids(&pool);
    drop(pool);
    drop(rt);
    let gone = support::eventually(support::GONE_WITHIN, || {
        pids.iter().all(|&p| support::is_gone(p))
    });
    assert!(
        gone,
        "{:?}",
        pids.iter()
            .map(|&p| support::proc_state(p))
            .collect::<Vec<_>>()
    );
    assert_no_zombies(&pids);
}

#[tokio::test]
async fn a_panicking_test_body_does_not_leak_its_pool() {
    let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let inner = pids.clone();
    let task = tokio::spawn(async move {
        let pool = support::pool(2).await;
        *inner.lock().unwrap() = support::worker_pids(&pool);
        panic!("the caller panics while holding the pool");
    });
    let err = within("task", task).await.expect_err("the task panicked");
    assert!(err.is_panic());
    let pids = pids.lock().unwrap().clone();
    assert_eq!(pids.len(), 2);
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn debug_output_names_the_pool_state() {
    let pool = support::pool(1).await;
    let text = format!("{pool:?}");
    assert!(text.contains("processes: 1"), "{text}");
    assert!(text.contains("closed: false"), "{text}");
    pool.close();
    assert!(format!("{pool:?}").contains("closed: true"));
    tokio::time::timeout(Duration::from_secs(30), pool.join())
        .await
        .expect("join");
}
