//! Real remote-execution daemons on loopback, started by the test that needs them:
//! [`Sshd`] (an OpenSSH server with throwaway keys) and [`Slurm`] (a one-node Slurm
//! cluster: munged, slurmctld, slurmd). Nothing runs as a system service: each fixture
//! is a temporary directory, loopback ports of its own and daemons that are children of
//! the test, stopped by pid when the fixture is dropped.
//!
//! ```ignore
//! let Some(sshd) = cluster::require_or_skip("my_test", cluster::Sshd::start()) else {
//!     return;
//! };
//! let out = sshd.ssh().arg(sshd.host()).arg("echo hi").output().unwrap();
//! ```
//!
//! A fixture that cannot start (a binary missing, not root for Slurm, a daemon that
//! exits) is a [`Skip`]; [`require_or_skip`] turns it into a loud skip, or into a
//! failure when `PROCPOOL_REQUIRE_CLUSTER=1` (as in CI, which installs the daemons).
//!
//! Clean-up: every process a fixture starts carries the environment variable
//! [`TAG_VAR`] set to the fixture's own directory (sshd hands it to every session with
//! `SetEnv`; [`Slurm::env`] hands it to `srun` and so to its tasks). Drop stops the
//! daemons by pid, then sends SIGKILL to every process still tagged with this fixture's
//! directory or whose command line names it (an `ssh -F <dir>/ssh_config` client, the
//! `ControlMaster` it left), so that a test leaves nothing behind even if it panicked
//! half-way.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod slurm;
mod sshd;

pub use slurm::Slurm;
pub use sshd::Sshd;

/// The environment variable that marks a fixture's processes; its value is the
/// fixture's directory, unique to the instance.
pub const TAG_VAR: &str = "PROCPOOL_CLUSTER_FIXTURE";

/// The variable that turns a skipped fixture into a failure (`1`).
pub const REQUIRE_VAR: &str = "PROCPOOL_REQUIRE_CLUSTER";

/// How long a daemon may take to be ready (a login accepted, the node idle).
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How many times a fixture tries to start (a port taken between our probe and the
/// daemon's bind is retried on fresh ports).
const ATTEMPTS: usize = 3;

/// Why a fixture did not start.
#[derive(Clone, PartialEq, Eq)]
pub struct Skip(pub String);

impl Skip {
    fn new(reason: impl Into<String>) -> Self {
        Skip(reason.into())
    }

    /// The reason, for the skip line or the failure.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Skip({:?})", self.0)
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `PROCPOOL_REQUIRE_CLUSTER=1` is set.
pub fn cluster_required() -> bool {
    std::env::var(REQUIRE_VAR).as_deref() == Ok("1")
}

/// The fixture, or `None` after a loud line on stderr when it could not start; with
/// `PROCPOOL_REQUIRE_CLUSTER=1`, a fixture that could not start fails the test.
///
/// # Panics
///
/// If the fixture did not start and `PROCPOOL_REQUIRE_CLUSTER=1`.
#[track_caller]
pub fn require_or_skip<T>(test: &str, fixture: Result<T, Skip>) -> Option<T> {
    require_or_skip_with(cluster_required(), test, fixture)
}

/// [`require_or_skip`] with the requirement given (for testing both branches).
///
/// # Panics
///
/// If the fixture did not start and `required`.
#[track_caller]
pub fn require_or_skip_with<T>(required: bool, test: &str, fixture: Result<T, Skip>) -> Option<T> {
    match fixture {
        Ok(fixture) => Some(fixture),
        Err(skip) if required => {
            panic!("{test}: fixture required ({REQUIRE_VAR}=1) but it did not start: {skip}")
        }
        Err(skip) => {
            eprintln!("SKIPPED {test}: {skip}; set {REQUIRE_VAR}=1 to fail instead of skipping");
            None
        }
    }
}

// ---------------------------------------------------------------------------------
// Shared pieces: tools, temporary directories, ports, processes.

/// `name` on `PATH` or in the sbin directories (which a non-root `PATH` may lack).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Each tool's path, or a [`Skip`] naming the first one missing and its package.
fn tools<const N: usize>(wanted: [(&str, &str); N]) -> Result<[PathBuf; N], Skip> {
    let mut found = Vec::with_capacity(N);
    for (name, package) in wanted {
        match find_tool(name) {
            Some(path) => found.push(path),
            None => {
                return Err(Skip::new(format!(
                    "{name} not installed (apt-get install {package})"
                )))
            }
        }
    }
    Ok(found.try_into().expect("N paths"))
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The current user's name (`id -un`).
fn user_name() -> Result<String, Skip> {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .map_err(|e| Skip::new(format!("id -un: {e}")))?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        return Err(Skip::new("id -un gave no user name"));
    }
    Ok(name)
}

/// This machine's short host name (what `hostname -s` prints).
pub fn short_hostname() -> String {
    let full = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    full.trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A fresh directory for one fixture instance, `0755` (munged's clients need to reach
/// its socket; the private keys in it are `0600`).
fn fixture_dir(kind: &str) -> Result<PathBuf, Skip> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "procpool-{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| Skip::new(format!("create {}: {e}", dir.display())))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| Skip::new(format!("chmod {}: {e}", dir.display())))?;
    Ok(dir)
}

fn write_file(path: &Path, text: &str) -> Result<(), Skip> {
    fs::write(path, text).map_err(|e| Skip::new(format!("write {}: {e}", path.display())))
}

/// A loopback port nobody listens on now (the daemon binds it a moment later; a race
/// lost to another process is retried by the fixture on a fresh port).
fn free_port() -> Result<u16, Skip> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Skip::new(format!("bind a loopback port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Skip::new(format!("local_addr: {e}")))
}

/// Runs `cmd` to completion (bounded by `within`), killing it if it takes longer.
/// Returns (success, stdout, stderr).
fn run_bounded(cmd: &mut Command, within: Duration) -> Result<(bool, String, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(status) => Ok((status.success(), out, err)),
        None => Err(format!("{cmd:?} did not finish within {within:?}: {err}")),
    }
}

/// The last lines of a daemon's log, for a skip reason.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Starts `cmd` with its stdout and stderr appended to `log`, tagged with `tag`.
fn spawn_daemon(cmd: &mut Command, log: &Path, tag: &Path) -> Result<Child, Skip> {
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Skip::new(format!("open {}: {e}", log.display())))?;
    let err = file
        .try_clone()
        .map_err(|e| Skip::new(format!("dup log: {e}")))?;
    cmd.env(TAG_VAR, tag)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| Skip::new(format!("spawn {cmd:?}: {e}")))
}

/// Fails with the daemon's log if `child` has already exited.
fn still_running(child: &mut Child, what: &str, log: &Path) -> Result<(), Skip> {
    match child.try_wait() {
        Ok(None) => Ok(()),
        Ok(Some(status)) => Err(Skip::new(format!(
            "{what} exited at start ({status}); its log:\n{}",
            log_tail(log)
        ))),
        Err(e) => Err(Skip::new(format!("wait for {what}: {e}"))),
    }
}

/// SIGTERM, up to [`STOP_GRACE`] for it to exit, then SIGKILL; reaps it either way.
fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Every process (other than this one) tagged with `dir` in its environment, or whose
/// command line names `dir`.
pub fn processes_of(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let tag = format!("{TAG_VAR}={}", dir.display());
    let dir_bytes = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            environ.split(|&b| b == 0).any(|v| v == tag.as_bytes())
                || cmdline.windows(dir_bytes.len()).any(|w| w == dir_bytes)
        })
        // A zombie has no environ nor cmdline; one left here is its parent's to reap.
        .collect()
}

/// SIGKILLs every process of the fixture in `dir` until none is left (bounded), reaping
/// those that are our children. Returns the pids that were still there.
fn sweep(dir: &Path) -> Vec<u32> {
    let mut killed = Vec::new();
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let left = processes_of(dir);
        if left.is_empty() || Instant::now() >= deadline {
            return killed;
        }
        for &pid in &left {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            if !killed.contains(&pid) {
                killed.push(pid);
            }
            // SAFETY: waitpid on one pid with a null status pointer; it fails with
            // ECHILD if that process is not our child, which we ignore.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes a fixture's directory (after sweeping its processes) unless taken.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            sweep(&dir);
            let _ = fs::remove_dir_all(dir);
        }
    }
}
