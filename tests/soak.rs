#![cfg(target_os = "linux")]
//! Soak: many tasks mixed with random crashes, panics and timeouts. Every task gets
//! exactly one outcome, the right one, and no process is left behind.
//!
//! 500 tasks by default; `PROCPOOL_SOAK=1` runs 10,000, and `PROCPOOL_SOAK_TASKS=n`
//! runs `n`. `PROCPOOL_SOAK_SEED` replays a mix.

procpool::enable_test_support!();

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use procpool::{TaskError, WorkerExit};
use serde::{Deserialize, Serialize};
use support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Kind {
    /// Returns `Ok(3x + 1)`.
    Value,
    /// Returns the task's own `Err`.
    Refuse,
    /// Panics with a message naming `x`.
    Panic,
    /// Exits the worker with a code derived from `x`.
    Exit,
    /// Sleeps far past its timeout.
    Hang,
}

/// What a caller gets for one soak task.
type Outcome = Result<Result<(u64, u32), String>, TaskError>;

const HANG_TIMEOUT: Duration = Duration::from_millis(250);

fn exit_code(x: u64) -> i32 {
    10 + (x % 100) as i32
}

/// Every kind in one function, as when some inputs make a task crash.
fn soak_task((x, kind): (u64, Kind)) -> Result<(u64, u32), String> {
    match kind {
        Kind::Value => soak_value(x),
        Kind::Refuse => soak_refuse(x),
        Kind::Panic => soak_panic(x),
        Kind::Exit => soak_exit(x),
        Kind::Hang => soak_hang(x),
    }
}

// Each kind in its own function.

fn soak_value(x: u64) -> Result<(u64, u32), String> {
    Ok((3 * x + 1, std::process::id()))
}

fn soak_refuse(x: u64) -> Result<(u64, u32), String> {
    Err(format!("refused {x}"))
}

fn soak_panic(x: u64) -> Result<(u64, u32), String> {
    panic!("soak panic {x}")
}

fn soak_exit(x: u64) -> Result<(u64, u32), String> {
    std::process::exit(exit_code(x))
}

fn soak_hang(_: u64) -> Result<(u64, u32), String> {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// How the soak's tasks are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Functions {
    /// One function for every kind: `soak_task`.
    One,
    /// A function per kind.
    PerKind,
}

fn task_count() -> usize {
    if let Ok(n) = std::env::var("PROCPOOL_SOAK_TASKS") {
        return n.parse().expect("PROCPOOL_SOAK_TASKS is a number");
    }
    match std::env::var("PROCPOOL_SOAK").as_deref() {
        Ok("1") => 10_000,
        _ => 500,
    }
}

/// xorshift64*: a small, seedable generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn pick(rng: &mut Rng) -> Kind {
    match rng.next() % 1000 {
        0..=19 => Kind::Exit,    // 2 %
        20..=39 => Kind::Panic,  // 2 %
        40..=49 => Kind::Hang,   // 1 %
        50..=99 => Kind::Refuse, // 5 %
        _ => Kind::Value,
    }
}

/// The soak, with a function per kind of task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_failures() {
    soak(Functions::PerKind).await;
}

/// The soak, with one function that crashes, panics or hangs on some inputs.
///
/// It fails (wrong outcomes, and callers that wait forever) because of the reply
/// batching shown by `worker_crash::a_crash_does_not_take_the_previous_result_with_it`
/// and `timeout::a_hanging_task_does_not_hold_back_earlier_results`: a quick task's
/// reply, held back because the next task runs the same function, is lost when that
/// task crashes and held forever when it hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_failures_one_function() {
    soak(Functions::One).await;
}

async fn soak(functions: Functions) {
    let n = task_count();
    let seed: u64 = std::env::var("PROCPOOL_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe_f00d_1234);
    eprintln!("soak: {n} tasks, {functions:?}, PROCPOOL_SOAK_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let kinds: Vec<Kind> = (0..n).map(|_| pick(&mut rng)).collect();

    let pool = within(
        "build",
        support::builder()
            .processes(3)
            .max_tasks_per_child(50)
            .build(),
    )
    .await
    .expect("pool builds");
    let mut seen_pids: HashSet<u32> = support::worker_pids(&pool).into_iter().collect();

    // Every task at once; each handle is keyed by its input.
    let mut pending: FuturesUnordered<_> = kinds
        .iter()
        .enumerate()
        .map(|(x, &kind)| {
            let x64 = x as u64;
            let call = match (functions, kind) {
                (Functions::One, _) => pool.apply(soak_task, (x64, kind)),
                (Functions::PerKind, Kind::Value) => pool.apply(soak_value, x64),
                (Functions::PerKind, Kind::Refuse) => pool.apply(soak_refuse, x64),
                (Functions::PerKind, Kind::Panic) => pool.apply(soak_panic, x64),
                (Functions::PerKind, Kind::Exit) => pool.apply(soak_exit, x64),
                (Functions::PerKind, Kind::Hang) => pool.apply(soak_hang, x64),
            };
            let call = if kind == Kind::Hang {
                call.timeout(HANG_TIMEOUT)
            } else {
                call
            };
            let handle = call.spawn();
            async move { (x, handle.await) }
        })
        .collect();

    let mut outcomes: HashMap<usize, Outcome> = HashMap::new();
    let deadline = Duration::from_secs(30 + n as u64 / 50);
    let collected = tokio::time::timeout(deadline, async {
        while let Some((x, outcome)) = pending.next().await {
            if outcomes.insert(x, outcome).is_some() {
                panic!("task {x} got two outcomes");
            }
            if outcomes.len() % 50 == 0 {
                seen_pids.extend(support::worker_pids(&pool));
            }
        }
    })
    .await;
    if collected.is_err() {
        let missing: Vec<(usize, Kind)> = (0..n)
            .filter(|x| !outcomes.contains_key(x))
            .map(|x| (x, kinds[x]))
            .take(20)
            .collect();
        panic!(
            "only {} of {n} tasks got an outcome within {deadline:?}; missing (first 20): \
             {missing:?}; {:?}",
            outcomes.len(),
            pool.stats()
        );
    }
    assert_eq!(outcomes.len(), n, "every task gets exactly one outcome");

    let mut count: HashMap<Kind, u64> = HashMap::new();
    for (x, kind) in kinds.iter().copied().enumerate() {
        *count.entry(kind).or_default() += 1;
        let outcome = &outcomes[&x];
        match (kind, outcome) {
            (Kind::Value, Ok(Ok((v, pid)))) => {
                assert_eq!(*v, 3 * x as u64 + 1, "task {x}");
                seen_pids.insert(*pid);
            }
            (Kind::Refuse, Ok(Err(why))) => assert_eq!(why, &format!("refused {x}")),
            (Kind::Panic, Err(TaskError::Panicked(p))) => {
                assert_eq!(p.message(), format!("soak panic {x}"), "task {x}")
            }
            (Kind::Exit, Err(TaskError::WorkerDied { pid, exit })) => {
                assert_eq!(*exit, WorkerExit::Code(exit_code(x as u64)), "task {x}");
                seen_pids.insert(*pid);
            }
            (Kind::Hang, Err(TaskError::TimedOut { pid, after })) => {
                assert_eq!(*after, HANG_TIMEOUT, "task {x}");
                seen_pids.insert(*pid);
            }
            (kind, outcome) => panic!("task {x} ({kind:?}) ended with {outcome:?}"),
        }
    }

    let c = |k: Kind| count.get(&k).copied().unwrap_or(0);
    let stats = pool.stats();
    eprintln!("soak: {count:?}\nsoak: {stats:?}");
    assert_eq!(stats.submitted, n as u64, "{stats:?}");
    assert_eq!(stats.timed_out, c(Kind::Hang), "{stats:?}");
    assert_eq!(stats.cancelled, 0, "{stats:?}");
    assert_eq!(
        stats.completed + stats.failed,
        n as u64 - c(Kind::Hang),
        "{stats:?}"
    );
    assert_eq!(
        (stats.workers_crashed, stats.workers_killed_on_timeout),
        (c(Kind::Exit), c(Kind::Hang)),
        "one replacement per crash and per timeout: {stats:?}"
    );
    // Once the last replacement is up, every worker that left was replaced once.
    let p = pool.clone();
    assert!(
        wait_until(BOUND, move || {
            let s = p.stats();
            s.workers.len() == 3
                && s.workers_started
                    == 3 + s.workers_crashed + s.workers_killed_on_timeout + s.workers_recycled
        })
        .await,
        "{:?}",
        pool.stats()
    );
    seen_pids.extend(support::worker_pids(&pool));

    within("join", pool.join()).await;
    let pids: Vec<u32> = seen_pids.iter().copied().collect();
    assert!(
        all_gone(pids.clone(), BOUND).await,
        "workers left behind: {:?}",
        pids.iter()
            .filter_map(|&p| support::proc_state(p).map(|s| (p, s)))
            .collect::<Vec<_>>()
    );
    let zombies: Vec<u32> = support::zombie_children()
        .into_iter()
        .filter(|z| seen_pids.contains(z))
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
}
