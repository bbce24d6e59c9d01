#![cfg(target_os = "linux")]
//! The builder's `initializer`: it runs once in every worker (replacements included)
//! before the worker's first task, and a panicking one makes `build` fail cleanly.
procpool::enable_test_support!();
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use support::{assert_all_gone, scripted, wait_until, whoami, within, Script, TempPath};

/// Set by [`setup`] in a worker.
static CONFIG: Mutex<Option<Settings>> = Mutex::new(None);
/// How many times [`setup`] ran in this process.
static SETUP_RUNS: AtomicU64 = AtomicU64::new(0);
/// The worker index [`setup`] saw through `current_process()`.
static SETUP_INDEX: AtomicU64 = AtomicU64::new(u64::MAX);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    greeting: String,
    factor: u64,
    /// A directory where each run leaves a file named after its pid.
    log_dir: Option<String>,
}

fn setup(settings: Settings) {
    SETUP_RUNS.fetch_add(1, Ordering::SeqCst);
    if let Some(index) = procpool::current_process().and_then(|p| p.index()) {
        SETUP_INDEX.store(index as u64, Ordering::SeqCst);
    }
    if let Some(dir) = &settings.log_dir {
        std::fs::write(Path::new(dir).join(std::process::id().to_string()), b"")
            .expect("log the initializer run");
    }
    *CONFIG.lock().unwrap() = Some(settings);
}

/// What a task sees of the initializer's work: (greeting, factor * x, runs, index, pid).
fn use_settings(x: u64) -> (String, u64, u64, u64, u32) {
    let config = CONFIG
        .lock()
        .unwrap()
        .clone()
        .expect("the initializer ran first");
    (
        config.greeting,
        config.factor * x,
        SETUP_RUNS.load(Ordering::SeqCst),
        SETUP_INDEX.load(Ordering::SeqCst),
        std::process::id(),
    )
}

fn failing_setup(dir: String) {
    std::fs::write(Path::new(&dir).join(std::process::id().to_string()), b"")
        .expect("log the initializer run");
    panic!("cannot load settings in worker {}", std::process::id());
}

static BLOB_LEN: AtomicU64 = AtomicU64::new(0);

fn keep_blob_len(blob: Vec<u8>) {
    BLOB_LEN.store(blob.len() as u64, Ordering::SeqCst);
}

fn blob_len(_: ()) -> u64 {
    BLOB_LEN.load(Ordering::SeqCst)
}

fn pids_in(dir: &Path) -> HashSet<u32> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_initializer_runs_once_in_each_worker_before_its_first_task() {
    let dir = TempPath::new("init-log");
    std::fs::create_dir(dir.path()).unwrap();
    let settings = Settings {
        greeting: "hello from init".into(),
        factor: 3,
        log_dir: Some(dir.arg()),
    };
    let pool = within(
        "build",
        support::builder()
            .processes(2)
            .initializer(setup, settings)
            .build(),
    )
    .await
    .expect("build");
    // It never runs in the process that builds the pool.
    assert_eq!(SETUP_RUNS.load(Ordering::SeqCst), 0);
    assert!(CONFIG.lock().unwrap().is_none());

    let pids = support::worker_pids(&pool);
    // `build` resolves once every worker has run it.
    assert_eq!(
        pids_in(dir.path()),
        pids.iter().copied().collect::<HashSet<_>>()
    );

    let results = within("map", pool.map(use_settings, 0..40u64).chunk_size(1))
        .await
        .expect("map");
    let workers = pool.stats().workers;
    for (x, (greeting, product, runs, index, pid)) in results.into_iter().enumerate() {
        assert_eq!(greeting, "hello from init");
        assert_eq!(product, 3 * x as u64);
        assert_eq!(runs, 1, "the initializer ran {runs} times in worker {pid}");
        let w = workers
            .iter()
            .find(|w| w.pid == pid)
            .expect("a worker of the pool");
        assert_eq!(
            index, w.index as u64,
            "current_process() in the initializer"
        );
    }
    // Still one run per worker, after many tasks.
    assert_eq!(pids_in(dir.path()).len(), 2);
    pool.terminate().await;
}

#[tokio::test]
async fn a_replacement_worker_runs_the_initializer_too() {
    let dir = TempPath::new("init-replace-log");
    std::fs::create_dir(dir.path()).unwrap();
    let settings = Settings {
        greeting: "again".into(),
        factor: 1,
        log_dir: Some(dir.arg()),
    };
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .initializer(setup, settings)
            .build(),
    )
    .await
    .expect("build");
    let old = support::worker_pids(&pool);
    let started = TempPath::new("init-replace-started");
    let never = TempPath::new("init-replace-never");
    let h = pool.apply_async(scripted, Script::new(0).started(&started).wait_for(&never));
    assert!(wait_until(support::BOUND, || started.exists()).await);
    h.abort();
    assert!(within("aborted", h).await.unwrap_err().is_cancelled());

    let (greeting, _, runs, _, pid) = within("after", pool.apply(use_settings, 1)).await.unwrap();
    assert_ne!(pid, old[0], "the worker was replaced");
    assert_eq!(greeting, "again");
    assert_eq!(runs, 1);
    assert_eq!(pids_in(dir.path()), HashSet::from([old[0], pid]));
    pool.terminate().await;
}

#[tokio::test]
async fn a_panicking_initializer_fails_the_build_with_its_message() {
    let dir = TempPath::new("init-fail-log");
    std::fs::create_dir(dir.path()).unwrap();
    let result = within(
        "build",
        support::builder()
            .processes(2)
            .initializer(failing_setup, dir.arg())
            .build(),
    )
    .await;
    let err = result.expect_err("the initializer panics");
    let message = err.to_string();
    assert!(
        message.contains("cannot load settings in worker"),
        "{message}"
    );
    // Every worker that was started is gone, and none is a zombie.
    let pids: Vec<u32> = pids_in(dir.path()).into_iter().collect();
    assert!(!pids.is_empty(), "no initializer ran");
    assert!(
        pids.iter().any(|p| message.contains(&p.to_string())),
        "the message names a worker that failed: {message}"
    );
    assert_all_gone(&pids).await;
}

#[tokio::test]
async fn a_pool_without_initializer_sees_no_state_from_other_pools_initializers() {
    let pool = support::pool(1).await;
    let got = within("task", pool.apply(blob_len, ())).await;
    assert_eq!(got, Ok(0));
    assert_ne!(
        within("pid", pool.apply(whoami, ())).await.unwrap(),
        std::process::id()
    );
    pool.terminate().await;
}

#[tokio::test]
async fn the_initializer_takes_a_sizeable_argument() {
    let blob = vec![0x5au8; 512 * 1024];
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .initializer(keep_blob_len, blob)
            .build(),
    )
    .await
    .expect("build");
    assert_eq!(
        within("task", pool.apply(blob_len, ())).await,
        Ok(512 * 1024)
    );
    pool.terminate().await;
}

#[tokio::test]
async fn the_initializer_takes_an_argument_larger_than_one_mib() {
    let blob = vec![0x5au8; 2 << 20];
    let pool = within(
        "build",
        support::builder()
            .processes(1)
            .initializer(keep_blob_len, blob)
            .build(),
    )
    .await
    .expect("build with a 2 MiB initializer argument (the frame limit is 256 MiB)");
    assert_eq!(within("task", pool.apply(blob_len, ())).await, Ok(2 << 20));
    pool.terminate().await;
}
