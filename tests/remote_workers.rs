#![cfg(target_os = "linux")]
//! Workers on other machines (issue 14), through each launcher: a local command
//! prefix (`sh -c '"$@"' sh`, which runs the keeper as its child, as `ssh` and `srun`
//! do at the other end of their link; runs on any machine), `ssh` to a real sshd on
//! loopback, and `srun` on a real one-node Slurm (`support::cluster`; skipped loudly
//! where the daemons are not installed, failed under `PROCPOOL_REQUIRE_CLUSTER=1`).
//!
//! Every test runs once per launcher, on the real path of a remote worker: the
//! launcher process the pool owns, the keeper at the other end of its stdin and
//! stdout, and the worker the keeper forks. The "remote" host is this machine, so the
//! tests can see the remote processes in /proc and check that none is left.

procpool::enable_test_support!();

mod support;

use std::time::Duration;

use procpool::{BuildErrorKind, Launcher, Pool, PoolBuilder, TaskError, WorkerExit};
use support::cluster::{require_or_skip, Slurm, Sshd};
use support::*;

/// The heartbeat bound of the tests' pools.
const HEARTBEAT: Duration = Duration::from_millis(900);

/// A launcher and what it needs alive (a fixture's daemons).
struct Rig {
    launcher: Launcher,
    kind: Kind,
    /// Held until the test ends: the daemons the launcher talks to.
    sshd: Option<Sshd>,
    slurm: Option<Slurm>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Ssh,
    Srun,
}

/// A launcher that stays a process of its own between the pool and the keeper.
fn local_launcher() -> Launcher {
    Launcher::command(["sh", "-c", "\"$@\"; exit $?", "sh"])
}

fn ssh_launcher(sshd: &Sshd) -> Launcher {
    Launcher::ssh(Sshd::HOST).args(sshd.ssh_args())
}

fn srun_launcher(slurm: &Slurm) -> Launcher {
    slurm
        .env()
        .into_iter()
        .fold(Launcher::srun(), |l, (k, v)| l.env(k, v))
}

/// The rig of `kind`, or `None` (the test is skipped, loudly) without its daemons.
fn rig(kind: Kind, test: &str) -> Option<Rig> {
    Some(match kind {
        Kind::Local => Rig {
            launcher: local_launcher(),
            kind,
            sshd: None,
            slurm: None,
        },
        Kind::Ssh => {
            let sshd = require_or_skip(test, Sshd::start())?;
            Rig {
                launcher: ssh_launcher(&sshd),
                kind,
                sshd: Some(sshd),
                slurm: None,
            }
        }
        Kind::Srun => {
            let slurm = require_or_skip(test, Slurm::start())?;
            Rig {
                launcher: srun_launcher(&slurm),
                kind,
                sshd: None,
                slurm: Some(slurm),
            }
        }
    })
}

impl Rig {
    fn builder(&self, n: usize) -> PoolBuilder {
        support::builder()
            .processes(0)
            .remote(self.launcher.clone(), n)
            .heartbeat(HEARTBEAT)
    }

    async fn pool(&self, n: usize) -> Pool {
        within("build", self.builder(n).build())
            .await
            .expect("pool builds")
    }

    /// The local launcher process of the pool's only remote worker, `worker`.
    fn launcher_pid(&self, worker: u32) -> u32 {
        let me = std::process::id();
        let dir = match (&self.sshd, &self.slurm) {
            (Some(s), _) => s.dir().to_path_buf(),
            (_, Some(s)) => s.dir().to_path_buf(),
            // The keeper's parent is the `sh` the pool started.
            _ => return parent_of(parent_of(worker).expect("keeper")).expect("sh"),
        };
        let name = if self.kind == Kind::Ssh {
            "ssh"
        } else {
            "srun"
        };
        let dir = dir.to_string_lossy().into_owned();
        let found: Vec<u32> = descendants(me)
            .into_iter()
            .filter(|&p| parent_of(p) == Some(me))
            .filter(|&p| comm(p).as_deref() == Some(name))
            .filter(|&p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
                String::from_utf8_lossy(&cmd).contains(&dir)
                    || String::from_utf8_lossy(&env).contains(&dir)
            })
            .collect();
        assert_eq!(found.len(), 1, "the {name} of worker {worker}: {found:?}");
        found[0]
    }
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("signal");
}

/// Runs each named test body once per launcher.
macro_rules! per_launcher {
    ($($body:ident),* $(,)?) => {
        mod local { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() { if let Some(rig) = super::rig(super::Kind::Local, stringify!($body)) { super::$body(rig).await } } )* }
        mod ssh { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() { if let Some(rig) = super::rig(super::Kind::Ssh, stringify!($body)) { super::$body(rig).await } } )* }
        mod srun { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $body() { if let Some(rig) = super::rig(super::Kind::Srun, stringify!($body)) { super::$body(rig).await } } )* }
    };
}

per_launcher!(
    map_imap_and_apply_run_with_the_host_in_stats,
    local_and_remote_workers_mix,
    a_crash_fails_only_its_task_with_the_remote_pid_and_exit,
    a_timeout_kills_the_remote_worker,
    recycling_initializer_and_abort_work_the_same,
    a_killed_launcher_fails_only_the_task_in_flight,
    a_silent_link_is_caught_by_the_heartbeat,
    dropping_the_pool_leaves_no_remote_process,
    parent_death_takes_the_remote_workers_down,
    resource_caps_apply_to_remote_workers,
);

// Only where the launcher relays the link (a local `sh` prefix does not: stopping it
// leaves the link alone; nor does an ssh client of a ControlMaster, which hands its
// stdin and stdout to the master: this one connects on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_stopped_launcher_is_caught_by_both_heartbeats() {
    if let Some(mut rig) = rig(
        Kind::Ssh,
        "ssh_stopped_launcher_is_caught_by_both_heartbeats",
    ) {
        rig.launcher = rig
            .launcher
            .args(["-o", "ControlMaster=no", "-o", "ControlPath=none"]);
        a_stopped_launcher_is_caught_by_both_heartbeats(rig).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srun_stopped_launcher_is_caught_by_both_heartbeats() {
    if let Some(rig) = rig(
        Kind::Srun,
        "srun_stopped_launcher_is_caught_by_both_heartbeats",
    ) {
        a_stopped_launcher_is_caught_by_both_heartbeats(rig).await
    }
}

/// The launcher stops (SIGSTOP on `ssh` or `srun`): nothing crosses the link either
/// way. The pool's side loses the link within the heartbeat bound and ends the
/// launcher; the keeper, hearing nothing from the pool, kills its worker within the
/// same bound, though the launcher never closed its link.
async fn a_stopped_launcher_is_caught_by_both_heartbeats(rig: Rig) {
    use nix::sys::signal::Signal;
    let pool = rig.pool(1).await;
    let worker = worker_pids(&pool)[0];
    let keeper = parent_of(worker).expect("keeper");
    let launcher = rig.launcher_pid(worker);
    let running = pool.apply_async(sleep_ms, 60_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(launcher, Signal::SIGSTOP);
    let err = within("the task in flight", running)
        .await
        .expect_err("the link went silent");
    assert!(err.is_link_lost() || err.is_worker_died(), "{err:?}");
    assert_eq!(err.pid(), Some(worker), "{err:?}");
    assert_all_gone(&[worker, keeper]).await;
    assert_eq!(within("after", pool.apply(double, 4)).await, Ok(8));
    let pids = worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert_all_gone(&pids).await;
}

async fn resource_caps_apply_to_remote_workers(rig: Rig) {
    let limit: u64 = 2 << 30;
    let pool = within(
        "build",
        rig.builder(1).niceness(7).memory_limit(limit).build(),
    )
    .await
    .expect("pool builds");
    let (nice, pid) = within("niceness", pool.apply(my_niceness, ()))
        .await
        .expect("runs");
    assert_eq!(nice, 7);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .expect("an address space line");
    assert!(line.contains(&limit.to_string()), "{line}");
    within("terminate", pool.terminate()).await;
    assert_all_gone(&[pid]).await;
}

async fn map_imap_and_apply_run_with_the_host_in_stats(rig: Rig) {
    use futures::StreamExt;
    let pool = rig.pool(2).await;
    let got: Vec<u64> = within("map", pool.map(square, 0..300u64))
        .await
        .expect("map");
    assert_eq!(got, (0..300u64).map(|x| x * x).collect::<Vec<_>>());
    let streamed: Vec<_> = within(
        "imap",
        pool.imap(double, 0..100u64)
            .chunk_size(1)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(streamed, (0..100u64).map(|x| Ok(2 * x)).collect::<Vec<_>>());
    assert_eq!(within("apply", pool.apply(double, 21)).await, Ok(42));
    let stats = pool.stats();
    assert_eq!(stats.workers.len(), 2, "{stats:?}");
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    for w in &stats.workers {
        assert_eq!(w.host.as_deref(), Some(host.as_str()), "{w:?}");
        // The pid is the worker's, on its host: not its launcher's or keeper's.
        assert_eq!(comm(w.pid).as_deref(), Some("procpool-worker"), "{w:?}");
        let keeper = parent_of(w.pid).expect("keeper");
        assert_eq!(comm(keeper).as_deref(), Some("procpool-keeper"));
    }
    let pids = worker_pids(&pool);
    pool.close();
    within("join", pool.join()).await;
    assert_all_gone(&pids).await;
}

async fn local_and_remote_workers_mix(rig: Rig) {
    let pool = within("build", rig.builder(1).processes(1).build())
        .await
        .expect("pool builds");
    assert_eq!(pool.processes(), 2);
    let stats = pool.stats();
    assert_eq!(stats.workers.iter().filter(|w| w.host.is_some()).count(), 1);
    let got: Vec<(u64, u32)> = within("map", pool.map(double_with_pid, 0..400u64).chunk_size(1))
        .await
        .expect("map");
    assert!(got.iter().enumerate().all(|(i, (d, _))| *d == 2 * i as u64));
    let pids = worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert_all_gone(&pids).await;
}

async fn a_crash_fails_only_its_task_with_the_remote_pid_and_exit(rig: Rig) {
    let pool = rig.pool(1).await;
    let before = worker_pids(&pool);
    // Queued behind the crash: it must still run, on the replacement.
    let crash = pool.apply_async(abort, ());
    let behind = pool.apply_async(double, 5);
    match within("abort", crash).await.expect_err("aborts") {
        TaskError::WorkerDied { pid, exit } => {
            assert_eq!(pid, before[0]);
            assert_eq!(exit, WorkerExit::Signal(libc::SIGABRT));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(within("behind", behind).await, Ok(10));
    let err = within("exit", pool.apply(exit_with, 7))
        .await
        .expect_err("exits");
    assert!(
        matches!(
            err,
            TaskError::WorkerDied {
                exit: WorkerExit::Code(7),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(within("after", pool.apply(double, 21)).await, Ok(42));
    let pids = worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert_all_gone(&[before, pids].concat()).await;
}

async fn a_timeout_kills_the_remote_worker(rig: Rig) {
    let pool = rig.pool(1).await;
    let before = worker_pids(&pool);
    let err = within(
        "timeout",
        pool.apply(sleep_ms, 60_000)
            .timeout(Duration::from_millis(300)),
    )
    .await
    .expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.pid(), Some(before[0]));
    assert_all_gone(&before).await;
    assert_eq!(within("after", pool.apply(double, 2)).await, Ok(4));
    let s = pool.stats();
    assert_eq!(s.workers_killed_on_timeout, 1, "{s:?}");
    let pids = worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert_all_gone(&pids).await;
}

fn init_marker(path: String) {
    std::fs::write(path, std::process::id().to_string()).expect("marker");
}

async fn recycling_initializer_and_abort_work_the_same(rig: Rig) {
    let scratch = Scratch::new("remote-init");
    let marker = scratch.path("init");
    let pool = within(
        "build",
        rig.builder(1)
            .max_tasks_per_child(3)
            .initializer(init_marker, marker.clone())
            .build(),
    )
    .await
    .expect("pool builds");
    let first = worker_pids(&pool);
    // The initializer ran in the remote worker.
    let inited: u32 = std::fs::read_to_string(&marker).unwrap().parse().unwrap();
    assert_eq!(inited, first[0]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let (_, pid) = within("task", pool.apply(double_with_pid, 1))
            .await
            .expect("runs");
        seen.insert(pid);
    }
    assert_eq!(seen.len(), 3, "recycled every 3 tasks: {seen:?}");
    // An abort kills the remote worker that runs the task.
    let running = pool.apply_async(sleep_ms, 60_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let busy = worker_pids(&pool);
    running.abort();
    assert!(within("aborted", running).await.unwrap_err().is_cancelled());
    assert_all_gone(&busy).await;
    assert_eq!(within("after", pool.apply(double, 3)).await, Ok(6));
    let pids = worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert_all_gone(&[seen.into_iter().collect::<Vec<_>>(), pids].concat()).await;
}

async fn a_killed_launcher_fails_only_the_task_in_flight(rig: Rig) {
    let pool = rig.pool(1).await;
    let worker = worker_pids(&pool)[0];
    let launcher = rig.launcher_pid(worker);
    let running = pool.apply_async(sleep_ms, 60_000);
    let queued: Vec<_> = (0..5u64).map(|x| pool.apply_async(double, x)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(launcher, nix::sys::signal::Signal::SIGKILL);
    let err = within("the task in flight", running)
        .await
        .expect_err("its link is gone");
    assert!(
        err.is_link_lost() || err.is_worker_died(),
        "the task in flight fails with the loss: {err:?}"
    );
    assert_eq!(err.pid(), Some(worker), "{err:?}");
    for (x, task) in queued.into_iter().enumerate() {
        assert_eq!(within("requeued", task).await, Ok(2 * x as u64));
    }
    assert_all_gone(&[worker]).await;
    let pids = worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert_all_gone(&pids).await;
}

async fn a_silent_link_is_caught_by_the_heartbeat(rig: Rig) {
    use nix::sys::signal::Signal;
    let pool = rig.pool(1).await;
    let worker = worker_pids(&pool)[0];
    let keeper = parent_of(worker).expect("keeper");
    let running = pool.apply_async(sleep_ms, 60_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The far end goes silent: the keeper stops (a link cut without a firewall).
    signal(keeper, Signal::SIGSTOP);
    let err = within("the task in flight", running)
        .await
        .expect_err("the link went silent");
    // Let the keeper see the end of its link, as a healed network would: it kills the
    // worker and leaves.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper as i32), Signal::SIGCONT);
    match &err {
        TaskError::LinkLost { pid, host, reason } => {
            assert_eq!(*pid, worker);
            assert!(!host.is_empty());
            assert!(reason.contains("nothing came on the link"), "{reason}");
        }
        // srun may notice first and end the step.
        other => assert!(
            rig.kind == Kind::Srun && other.is_worker_died(),
            "{other:?}"
        ),
    }
    assert_all_gone(&[worker, keeper]).await;
    assert_eq!(within("after", pool.apply(double, 4)).await, Ok(8));
    let pids = worker_pids(&pool);
    within("terminate", pool.terminate()).await;
    assert_all_gone(&pids).await;
}

async fn dropping_the_pool_leaves_no_remote_process(rig: Rig) {
    let pool = rig.pool(2).await;
    let _busy = pool.apply_async(sleep_ms, 60_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let workers = worker_pids(&pool);
    let keepers: Vec<u32> = workers.iter().filter_map(|&w| parent_of(w)).collect();
    drop(pool);
    assert_all_gone(&[workers, keepers].concat()).await;
}

/// Set in the helper parent's environment: which launcher it uses.
const HELPER_ENV: &str = "PROCPOOL_TEST_REMOTE_PARENT_HELPER";
/// The ssh configuration file the helper parent uses.
const HELPER_SSH_CONFIG: &str = "PROCPOOL_TEST_REMOTE_PARENT_SSH_CONFIG";

/// The helper parent of `parent_death_takes_the_remote_workers_down`: a pool of two
/// remote workers, one busy, pids printed, then it waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for parent_death_takes_the_remote_workers_down"]
async fn helper_remote_parent() {
    let Ok(kind) = std::env::var(HELPER_ENV) else {
        return;
    };
    let launcher = match kind.as_str() {
        "local" => local_launcher(),
        "ssh" => Launcher::ssh(Sshd::HOST).args([
            "-F".to_string(),
            std::env::var(HELPER_SSH_CONFIG).expect("ssh config"),
        ]),
        // SLURM_CONF and the munge socket are in this process's environment.
        _ => Launcher::srun(),
    };
    let pool = within(
        "build",
        support::builder()
            .processes(0)
            .remote(launcher, 2)
            .heartbeat(HEARTBEAT)
            .build(),
    )
    .await
    .expect("pool builds");
    let long = pool.apply_async(sleep_ms, 60_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = support::worker_pids(&pool);
    println!(
        "PIDS {}",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(long);
    within("terminate", pool.terminate()).await;
}

async fn parent_death_takes_the_remote_workers_down(rig: Rig) {
    let mut cmd = helper_command("helper_remote_parent");
    match (&rig.sshd, &rig.slurm) {
        (Some(sshd), _) => {
            cmd.env(HELPER_ENV, "ssh")
                .env(HELPER_SSH_CONFIG, sshd.config());
        }
        (_, Some(slurm)) => {
            cmd.env(HELPER_ENV, "srun").envs(slurm.env());
        }
        _ => {
            cmd.env(HELPER_ENV, "local");
        }
    }
    let mut helper = cmd.spawn().expect("start the helper");
    let workers = pids_line(helper.stdout.take().expect("helper stdout")).await;
    assert_eq!(workers.len(), 2, "{workers:?}");
    let keepers: Vec<u32> = workers.iter().filter_map(|&w| parent_of(w)).collect();
    assert_eq!(keepers.len(), 2);
    helper.start_kill().expect("SIGKILL the helper");
    within("reap the helper", helper.wait())
        .await
        .expect("wait for the helper");
    // Within the heartbeat bound and a margin for the launcher's own teardown.
    let all = [workers, keepers].concat();
    let watched = all.clone();
    let down = wait_until(HEARTBEAT * 4, move || {
        watched.iter().all(|&p| !is_running(p))
    })
    .await;
    assert!(
        down,
        "remote processes outlived their SIGKILLed parent: {:?}",
        all.iter().map(|&p| (p, proc_state(p))).collect::<Vec<_>>()
    );
}

/// A worker of another build is refused, with both builds named. The other build is
/// this executable with its build id changed (or, without one, a byte appended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_another_build_is_refused_naming_both() {
    let scratch = Scratch::new("other-build");
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let note = [4u8, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    match bytes.windows(note.len()).position(|w| w == note) {
        Some(at) => bytes[at + note.len()] ^= 0xff,
        None => bytes.push(0),
    }
    let other = scratch.path("other-build");
    std::fs::write(&other, &bytes).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let err = within(
        "build",
        support::builder()
            .processes(0)
            .remote(local_launcher().program(&other), 1)
            .startup_timeout(Duration::from_secs(20))
            .build(),
    )
    .await
    .expect_err("another build is refused");
    assert_eq!(err.kind(), BuildErrorKind::Start);
    let message = err.to_string();
    assert!(message.contains("another build"), "{message}");
    // Both builds are named: two distinct hex ids.
    let ids: Vec<&str> = message
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() >= 16)
        .collect();
    assert!(ids.len() >= 2 && ids[0] != ids[1], "{message}");
}

/// A host that refuses the login fails the build, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_refuses_the_login_fails_the_build() {
    let Some(sshd) = require_or_skip(
        "a_host_that_refuses_the_login_fails_the_build",
        Sshd::start(),
    ) else {
        return;
    };
    let err = within(
        "build",
        support::builder()
            .processes(0)
            .remote(Launcher::ssh(Sshd::REFUSED_HOST).args(sshd.ssh_args()), 1)
            .build(),
    )
    .await
    .expect_err("the login is refused");
    assert_eq!(err.kind(), BuildErrorKind::Start);
    let message = err.to_string();
    assert!(message.contains(Sshd::REFUSED_HOST), "{message}");
    assert!(message.contains("Permission denied"), "{message}");
}

/// Set to `ssh` or `srun`: `serve_a_cluster_for_the_suite` starts that fixture.
const SERVE_ENV: &str = "PROCPOOL_TEST_SERVE_CLUSTER";

/// Not a test: `.ci/run` runs it to keep a fixture alive while it runs integration tests
/// with every worker started through ssh or srun (`__PROCPOOL_TEST_LAUNCHER`). It prints
/// `LAUNCHER <value>` and `ENV <key>=<value>` lines, then `READY`, and holds the
/// fixture until its stdin ends.
#[test]
#[ignore = "a fixture server for .ci/run"]
fn serve_a_cluster_for_the_suite() {
    use std::io::Read;
    let Ok(kind) = std::env::var(SERVE_ENV) else {
        return;
    };
    let (sshd, slurm) = match kind.as_str() {
        "ssh" => {
            let sshd = Sshd::start().expect("sshd starts");
            println!("LAUNCHER ssh:{}:{}", sshd.config().display(), Sshd::HOST);
            (Some(sshd), None)
        }
        _ => {
            let slurm = Slurm::start().expect("Slurm starts");
            println!("LAUNCHER srun");
            for (k, v) in slurm.env() {
                println!("ENV {k}={v}");
            }
            (None, Some(slurm))
        }
    };
    println!("READY");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop((sshd, slurm));
}
