#![cfg(target_os = "linux")]
//! The remote fixtures (`support::cluster`): a real sshd and a real one-node Slurm on
//! loopback, started and stopped by each test; and the behaviours of `ssh` and `srun`
//! that the pool's remote launcher (issue 14) relies on, measured on real processes.
//!
//! What these tests measured (OpenSSH 9.2p1 and Slurm 22.05.8, Debian 12):
//!
//! - SIGKILL of the local `ssh` client (no pty, `ssh host -- cmd`), directly connected
//!   or through a ControlMaster: the remote command gets no SIGHUP. A remote process
//!   that reads its stdin sees EOF and one that writes its stdout gets EPIPE/SIGPIPE
//!   (within ~0.2 s, the writer's period, through a master), so they end; one that does
//!   neither (a worker busy in a task) runs on. (Measured by hand as well: when that
//!   process is the session's command itself, a direct connection's sshd exits and it
//!   is reparented to init; through a master, the session's sshd and the channel stay
//!   until the process exits.) So a remote worker
//!   must watch its stdin and exit on EOF, and the pool cannot rely on the ssh client's
//!   death to stop a busy worker: it must end it itself (by its remote pid, over
//!   another ssh session) or let it exit at its next read.
//! - SIGTERM to `srun`: srun cancels the step; the task is killed within tens of ms.
//! - SIGKILL to `srun` that made its own allocation: srun's forked child (the
//!   "shepherd") notices and cancels the job; the task is killed within tens of ms.
//! - SIGKILL to `srun` running a step in an existing allocation (`--jobid`, as inside
//!   `sbatch`/`salloc`): the step's task is killed as well; the allocation stays.
//! - Closing `srun`'s stdin gives task 0 EOF on its stdin.
//!
//! Each test skips loudly when its daemons are not installed, and fails instead under
//! `PROCPOOL_REQUIRE_CLUSTER=1` (CI).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::cluster::{self, require_or_skip, Skip, Slurm, Sshd};
use support::{eventually, is_running, parent_of, GONE_WITHIN};

/// A bound on a wait that should be quick but could hang.
const WAIT: Duration = Duration::from_secs(30);

/// A command started with its stdin and stdout piped, its stdout read line by line on
/// a thread.
struct Spawned {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Spawned {
    fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned {
            child,
            stdin,
            lines,
        }
    }

    /// The next line of stdout, within [`WAIT`].
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let out = self.child.wait_with_output_lossy();
                panic!("no line within {WAIT:?} ({e}); stderr: {out}")
            }
        }
    }

    /// The value of the next line of the form `key=value` (other lines skipped).
    fn value(&mut self, key: &str) -> u32 {
        let prefix = format!("{key}=");
        loop {
            let line = self.line();
            if let Some(v) = line.strip_prefix(&prefix) {
                return v.trim().parse().expect("a pid");
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child (bounded); kills it if it does not exit.
    fn wait(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

trait OutputLossy {
    fn wait_with_output_lossy(&mut self) -> String;
}

impl OutputLossy for Child {
    fn wait_with_output_lossy(&mut self) -> String {
        let _ = self.wait();
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        err
    }
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("signal a process of ours");
}

/// Kills a remote process the test started (it is not our child: its parent reaps it).
fn kill_remote(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    assert!(
        eventually(GONE_WITHIN, || !is_running(pid)),
        "remote pid {pid} survived SIGKILL"
    );
}

// ---------------------------------------------------------------------------------
// The skip helper.

#[test]
fn a_fixture_that_did_not_start_skips_or_fails_as_asked() {
    let skip = || {
        Err::<(), _>(Skip(
            "sshd not installed (apt-get install openssh-server)".into(),
        ))
    };
    assert_eq!(cluster::require_or_skip_with(false, "t", skip()), None);
    assert_eq!(cluster::require_or_skip_with(true, "t", Ok(7)), Some(7));
    assert_eq!(cluster::require_or_skip_with(false, "t", Ok(7)), Some(7));
    let failed = std::panic::catch_unwind(|| cluster::require_or_skip_with(true, "t", skip()))
        .expect_err("a required fixture that did not start fails the test");
    let message = failed
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(
        message.contains("sshd not installed") && message.contains("PROCPOOL_REQUIRE_CLUSTER"),
        "{message}"
    );
}

#[test]
fn sshd_missing_or_exiting_at_start_is_a_skip_with_the_reason() {
    let missing = Sshd::start_with("/nonexistent/sshd".as_ref()).expect_err("no sshd there");
    assert!(missing.reason().contains("not installed"), "{missing}");
    if cluster::find_tool("ssh-keygen").is_none() {
        return; // The next case needs the client tools to get as far as the server.
    }
    let exits = Sshd::start_with("/bin/false".as_ref()).expect_err("false is no sshd");
    assert!(exits.reason().contains("exited at start"), "{exits}");
}

// ---------------------------------------------------------------------------------
// sshd

#[test]
fn ssh_runs_a_command_on_the_test_host() {
    let Some(sshd) = require_or_skip("ssh_runs_a_command_on_the_test_host", Sshd::start()) else {
        return;
    };
    eprintln!("sshd fixture started in {:?}", sshd.started_in());
    let out = sshd
        .ssh()
        .arg(sshd.host())
        .args(["--", "echo", "hi"])
        .stdin(Stdio::null())
        .output()
        .expect("run ssh");
    assert!(
        out.status.success(),
        "ssh failed: {}\nsshd: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}

#[test]
fn ssh_to_the_refused_alias_is_refused() {
    let Some(sshd) = require_or_skip("ssh_to_the_refused_alias_is_refused", Sshd::start()) else {
        return;
    };
    let out = sshd
        .ssh()
        .arg(sshd.refused_host())
        .args(["--", "echo", "hi"])
        .stdin(Stdio::null())
        .output()
        .expect("run ssh");
    assert_eq!(out.status.code(), Some(255), "ssh's own failure code");
    assert!(out.stdout.is_empty(), "the command must not have run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
}

/// The remote script of the kill measurement: a process that neither reads nor
/// writes (holding the channel's stdin), one that writes a line every 0.2 s, and one
/// that reads stdin; each prints its pid.
const THREE_REMOTES: &str = "sleep 1000 0<&0 & echo idle=$!; \
     (while echo tick; do sleep 0.2; done) & echo writer=$!; \
     echo reader=$$; exec cat >/dev/null";

/// SIGKILLs the local ssh client of [`THREE_REMOTES`] and checks which remote
/// processes end: the reader (EOF) and the writer (EPIPE) do, the idle one does not.
fn kill_client_and_watch(sshd: &Sshd, extra: &[&str]) {
    let mut client = Spawned::start(
        sshd.ssh()
            .args(extra)
            .arg(sshd.host())
            .args(["--", THREE_REMOTES]),
    );
    let idle = client.value("idle");
    let writer = client.value("writer");
    let reader = client.value("reader");
    assert!(is_running(idle) && is_running(writer) && is_running(reader));
    let session = parent_of(reader);

    signal(client.pid(), Signal::SIGKILL);
    let _ = client.wait();
    let t0 = Instant::now();
    let ended = eventually(WAIT, || !is_running(reader) && !is_running(writer));
    let took = t0.elapsed();
    let idle_alive = is_running(idle);
    let idle_parent = parent_of(idle);
    kill_remote(idle);
    kill_remote(writer);
    kill_remote(reader);
    assert!(
        ended,
        "the remote reader and writer should end once the client is gone"
    );
    eprintln!(
        "ssh {extra:?}: client SIGKILLed; remote reader and writer gone after {took:?}; \
         idle remote alive: {idle_alive}, its parent {idle_parent:?} (session sshd was \
         {session:?})"
    );
    assert!(
        idle_alive,
        "measured: a remote process that neither reads nor writes outlives the client \
         (no SIGHUP without a pty); if this fails, ssh now ends it and the launcher \
         may rely on that"
    );
}

#[test]
fn killing_the_ssh_client_ends_remote_readers_and_writers_not_idle_processes() {
    let Some(sshd) = require_or_skip(
        "killing_the_ssh_client_ends_remote_readers_and_writers_not_idle_processes",
        Sshd::start(),
    ) else {
        return;
    };
    kill_client_and_watch(&sshd, &["-o", "ControlMaster=no", "-o", "ControlPath=none"]);
}

#[test]
fn killing_a_multiplexed_ssh_client_ends_remote_readers_and_writers_not_idle_processes() {
    let Some(sshd) = require_or_skip(
        "killing_a_multiplexed_ssh_client_ends_remote_readers_and_writers_not_idle_processes",
        Sshd::start(),
    ) else {
        return;
    };
    // A first login leaves the ControlMaster (ControlPersist), so that the client
    // killed below is a mux client and not the master.
    let first = sshd
        .ssh()
        .arg(sshd.host())
        .arg("true")
        .stdin(Stdio::null())
        .status()
        .expect("first login");
    assert!(first.success());
    let check = sshd
        .ssh()
        .args(["-O", "check"])
        .arg(sshd.host())
        .output()
        .expect("ssh -O check");
    assert!(check.status.success(), "a master is running");
    kill_client_and_watch(&sshd, &[]);
}

#[test]
fn sshd_fixture_leaves_no_process_behind() {
    let Some(sshd) = require_or_skip("sshd_fixture_leaves_no_process_behind", Sshd::start()) else {
        return;
    };
    // A login that leaves a ControlMaster, and a remote process left running.
    let out = sshd
        .ssh()
        .arg(sshd.host())
        .arg("sleep 1000 </dev/null >/dev/null 2>&1 & echo $!")
        .stdin(Stdio::null())
        .output()
        .expect("ssh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    let dir = sshd.dir().to_path_buf();
    let mut pids = cluster::processes_of(&dir);
    pids.push(sshd.pid());
    assert!(
        pids.contains(&remote),
        "the session's processes carry the tag"
    );
    assert!(
        pids.len() >= 3,
        "sshd, the master and the remote sleep: {pids:?}"
    );
    drop(sshd);
    let left: Vec<u32> = pids.iter().copied().filter(|&p| is_running(p)).collect();
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(cluster::processes_of(&dir).is_empty());
    assert!(!dir.exists(), "the directory is removed");
}

#[test]
fn two_sshd_fixtures_run_side_by_side() {
    let Some(a) = require_or_skip("two_sshd_fixtures_run_side_by_side", Sshd::start()) else {
        return;
    };
    let b = Sshd::start().expect("a second sshd starts when the first did");
    assert_ne!(a.port(), b.port());
    for sshd in [&a, &b] {
        let out = sshd
            .ssh()
            .arg(sshd.host())
            .arg("echo $PROCPOOL_CLUSTER_FIXTURE")
            .stdin(Stdio::null())
            .output()
            .expect("ssh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            sshd.dir().display().to_string(),
            "each alias reaches its own server"
        );
    }
}

// ---------------------------------------------------------------------------------
// Slurm

fn start_slurm(test: &str) -> Option<Slurm> {
    let slurm = require_or_skip(test, Slurm::start())?;
    eprintln!("slurm fixture started in {:?}", slurm.started_in());
    Some(slurm)
}

#[test]
fn srun_runs_a_task_on_the_node() {
    let Some(slurm) = start_slurm("srun_runs_a_task_on_the_node") else {
        return;
    };
    let out = slurm
        .command("srun")
        .args(["-N1", "-n1", "hostname"])
        .stdin(Stdio::null())
        .output()
        .expect("srun");
    assert!(
        out.status.success(),
        "srun failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        cluster::short_hostname()
    );
    assert_eq!(slurm.node(), cluster::short_hostname());
}

#[test]
fn closing_sruns_stdin_gives_the_task_eof() {
    let Some(slurm) = start_slurm("closing_sruns_stdin_gives_the_task_eof") else {
        return;
    };
    let mut srun = Spawned::start(slurm.command("srun").args(["-N1", "-n1", "cat"]));
    let mut stdin = srun.stdin.take().expect("stdin");
    stdin.write_all(b"through slurm\n").expect("write");
    assert_eq!(srun.line(), "through slurm");
    drop(stdin);
    let status = srun.wait().expect("srun ends once its task read EOF");
    assert!(status.success(), "{status}");
}

/// Starts `srun ... sh -c 'echo task=$$; exec sleep 1000'`, sends `sig` to srun and
/// checks that the task is gone; returns how long that took.
fn signal_srun(slurm: &Slurm, sig: Signal, extra: &[&str]) -> Duration {
    let mut srun = Spawned::start(slurm.command("srun").args(extra).args([
        "-N1",
        "-n1",
        "sh",
        "-c",
        "echo task=$$; exec sleep 1000",
    ]));
    let task = srun.value("task");
    assert!(is_running(task));
    // srun forks a helper (the shepherd that cancels its allocation if srun dies).
    let helpers = support::descendants(srun.pid());
    signal(srun.pid(), sig);
    let t0 = Instant::now();
    let gone = eventually(WAIT, || !is_running(task));
    let took = t0.elapsed();
    if !gone {
        kill_remote(task);
    }
    assert!(gone, "srun got {sig:?}; its task {task} is still running");
    let _ = srun.wait();
    assert!(
        eventually(GONE_WITHIN, || helpers.iter().all(|&p| !is_running(p))),
        "srun's helpers {helpers:?} outlive it"
    );
    took
}

#[test]
fn sigterm_to_srun_kills_its_task() {
    let Some(slurm) = start_slurm("sigterm_to_srun_kills_its_task") else {
        return;
    };
    let took = signal_srun(&slurm, Signal::SIGTERM, &[]);
    eprintln!("srun SIGTERM: task gone after {took:?}");
    assert!(slurm.cancel_all(), "no job left: {:?}", slurm.jobs());
}

#[test]
fn sigkill_to_srun_kills_its_task_through_the_shepherd() {
    let Some(slurm) = start_slurm("sigkill_to_srun_kills_its_task_through_the_shepherd") else {
        return;
    };
    let took = signal_srun(&slurm, Signal::SIGKILL, &[]);
    eprintln!("srun SIGKILL (own allocation): task gone after {took:?}");
    // The job is cancelled by srun's helper, not by us: it leaves the queue by itself.
    let t0 = Instant::now();
    let drained = eventually(WAIT, || slurm.jobs().is_empty());
    eprintln!(
        "srun SIGKILL (own allocation): job left the queue after {:?}",
        t0.elapsed()
    );
    assert!(
        drained,
        "the job stays after srun's SIGKILL: {:?}",
        slurm.jobs()
    );
}

#[test]
fn sigkill_to_srun_in_an_allocation_kills_the_steps_task() {
    let Some(slurm) = start_slurm("sigkill_to_srun_in_an_allocation_kills_the_steps_task") else {
        return;
    };
    let out = slurm
        .command("salloc")
        .args(["-N1", "--no-shell"])
        .stdin(Stdio::null())
        .output()
        .expect("salloc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs = slurm.jobs();
    assert_eq!(jobs.len(), 1, "one allocation: {jobs:?}");
    let jobid = format!("--jobid={}", jobs[0]);
    let took = signal_srun(&slurm, Signal::SIGKILL, &[&jobid]);
    eprintln!("srun SIGKILL (step in an allocation): task gone after {took:?}");
    assert_eq!(slurm.jobs(), jobs, "the allocation itself stays");
    assert!(slurm.cancel_all(), "scancel ends the allocation");
}

#[test]
fn slurm_fixture_leaves_no_process_behind() {
    let Some(slurm) = start_slurm("slurm_fixture_leaves_no_process_behind") else {
        return;
    };
    // A job still running when the fixture goes.
    let mut srun = Spawned::start(slurm.command("srun").args([
        "-N1",
        "-n1",
        "sh",
        "-c",
        "echo task=$$; exec sleep 1000",
    ]));
    let task = srun.value("task");
    let dir = slurm.dir().to_path_buf();
    let mut pids = cluster::processes_of(&dir);
    pids.extend(slurm.pids());
    assert!(pids.contains(&task), "the task carries the fixture's tag");
    drop(slurm);
    let _ = srun.wait();
    let left: Vec<u32> = pids.iter().copied().filter(|&p| is_running(p)).collect();
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(cluster::processes_of(&dir).is_empty());
    assert!(!dir.exists(), "the directory is removed");
}

#[test]
fn two_slurm_fixtures_run_side_by_side() {
    let Some(a) = start_slurm("two_slurm_fixtures_run_side_by_side") else {
        return;
    };
    let b = Slurm::start().expect("a second cluster starts when the first did");
    for slurm in [&a, &b] {
        let out = slurm
            .command("srun")
            .args(["-N1", "-n1", "sh", "-c", "echo $SLURM_JOB_ID"])
            .stdin(Stdio::null())
            .output()
            .expect("srun");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Each controller numbers its own jobs: the first job of each is 1.
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }
}
