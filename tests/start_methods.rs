//! What distinguishes the start methods: inherited memory, the fork server's preload and
//! its recovery, and the default.
#![cfg(target_os = "linux")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use procpool::{Pool, StartMethod, TaskError};

const BOUND: Duration = Duration::from_secs(30);

static STATE: AtomicU64 = AtomicU64::new(0);

fn read_state(_: ()) -> u64 {
    STATE.load(Ordering::SeqCst)
}

fn preload(value: u64) {
    STATE.store(value, Ordering::SeqCst);
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn parent_pid(_: ()) -> u32 {
    std::os::unix::process::parent_id()
}

#[test]
fn the_default_is_the_fork_server() {
    assert_eq!(StartMethod::default(), StartMethod::ForkServer);
}

#[tokio::test]
async fn fork_workers_inherit_memory_and_spawned_ones_do_not() {
    STATE.store(77, Ordering::SeqCst);
    let pool = Pool::builder()
        .processes(1)
        .start_method(StartMethod::Fork)
        .build()
        .await
        .unwrap();
    assert_eq!(pool.apply(read_state, ()).await, Ok(77));
    assert_eq!(pool.apply(parent_pid, ()).await, Ok(std::process::id()));
    pool.terminate().await;

    let pool = Pool::builder()
        .processes(1)
        .start_method(StartMethod::Spawn)
        .build()
        .await
        .unwrap();
    assert_eq!(pool.apply(read_state, ()).await, Ok(0));
    pool.terminate().await;
}

#[tokio::test]
async fn the_preload_hook_runs_in_the_server_and_every_worker_inherits_it() {
    let pool = Pool::builder()
        .processes(2)
        .start_method(StartMethod::ForkServer)
        .forkserver_preload(preload, 1234)
        .max_tasks_per_child(1)
        .build()
        .await
        .unwrap();
    let server = pool.stats().forkserver_pid.expect("a server runs");
    for _ in 0..4 {
        assert_eq!(pool.apply(read_state, ()).await, Ok(1234));
        assert_eq!(
            pool.apply(parent_pid, ()).await,
            Ok(server),
            "workers are the server's children"
        );
    }
    pool.join().await;
    assert!(
        support::eventually(BOUND, || support::is_gone(server)),
        "join lets the server go"
    );
}

fn panicking_preload(_: ()) {
    panic!("table missing")
}

#[tokio::test]
async fn a_panicking_preload_fails_the_build() {
    let err = Pool::builder()
        .processes(1)
        .start_method(StartMethod::ForkServer)
        .forkserver_preload(panicking_preload, ())
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("table missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_survives_the_death_of_its_fork_server() {
    let pool = Pool::builder()
        .processes(2)
        .start_method(StartMethod::ForkServer)
        .build()
        .await
        .unwrap();
    let server = pool.stats().forkserver_pid.expect("a server runs");
    let running = pool.apply_async(sleep_ms, 10_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::process::Command::new("kill")
        .args(["-9", &server.to_string()])
        .status();
    // The workers die with their server: the running task fails, and says which worker.
    let err = tokio::time::timeout(BOUND, running)
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(matches!(err, TaskError::WorkerDied { .. }), "{err:?}");
    // The pool notices both workers' deaths and replaces them from a new server. (A task
    // submitted before it noticed could be handed to the other dying worker.)
    let p = pool.clone();
    assert!(support::eventually(BOUND, move || {
        let s = p.stats();
        s.workers_crashed >= 2 && s.workers.len() == 2
    }));
    // It serves again.
    assert_eq!(
        tokio::time::timeout(BOUND, pool.apply(sleep_ms, 1))
            .await
            .unwrap(),
        Ok(1)
    );
    let new_server = pool.stats().forkserver_pid.expect("a new server");
    assert_ne!(new_server, server);
    assert_eq!(pool.apply(parent_pid, ()).await, Ok(new_server));
    pool.terminate().await;
    assert!(support::eventually(BOUND, || support::is_gone(new_server)));
}

#[tokio::test]
async fn every_method_replaces_a_worker_after_a_crash() {
    fn die(_: ()) -> u32 {
        std::process::exit(9)
    }
    for method in [
        StartMethod::Spawn,
        StartMethod::Fork,
        StartMethod::ForkServer,
    ] {
        let pool = Pool::builder()
            .processes(1)
            .start_method(method)
            .build()
            .await
            .unwrap();
        let before = pool.stats().workers[0].pid;
        assert!(
            matches!(pool.apply(die, ()).await, Err(TaskError::WorkerDied { pid, .. }) if pid == before)
        );
        assert_eq!(pool.apply(sleep_ms, 1).await, Ok(1), "{method:?}");
        let after = pool.stats().workers[0].pid;
        assert_ne!(before, after, "{method:?}");
        pool.terminate().await;
        assert!(support::eventually(BOUND, || support::is_gone(after)));
    }
}
