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

// ---------------------------------------------------------------------------------
// sshd

/// An OpenSSH server on `127.0.0.1` and a client configuration for it.
///
/// Two host aliases: [`Sshd::host`] (`procpool-test`, logs in as the current user with
/// a throwaway key, `ControlMaster auto` with `ControlPersist 60`) and
/// [`Sshd::refused_host`] (`procpool-refused`, the same server with a key that is not
/// authorized: every login fails). Both use `BatchMode`, no host key checks and no
/// known-hosts file.
#[derive(Debug)]
pub struct Sshd {
    dir: PathBuf,
    child: Child,
    port: u16,
    ssh: PathBuf,
    started_in: Duration,
}

impl Sshd {
    /// The alias that logs in.
    pub const HOST: &'static str = "procpool-test";
    /// The alias whose key is not authorized.
    pub const REFUSED_HOST: &'static str = "procpool-refused";

    /// Starts `/usr/sbin/sshd` (or `sshd` on `PATH`) and waits until a login through
    /// [`Sshd::HOST`] works.
    ///
    /// # Errors
    ///
    /// A [`Skip`] when sshd, ssh or ssh-keygen is missing, or the server does not
    /// accept a login within 30 s (with sshd's log).
    pub fn start() -> Result<Self, Skip> {
        let [sshd] = tools([("sshd", "openssh-server")])?;
        Self::start_with(&sshd)
    }

    /// [`Sshd::start`] with the server binary given.
    ///
    /// # Errors
    ///
    /// As [`Sshd::start`].
    pub fn start_with(sshd: &Path) -> Result<Self, Skip> {
        if !is_executable(sshd) {
            return Err(Skip::new(format!(
                "sshd not installed at {} (apt-get install openssh-server)",
                sshd.display()
            )));
        }
        let [ssh, keygen] = tools([("ssh", "openssh-client"), ("ssh-keygen", "openssh-client")])?;
        let started = Instant::now();
        let mut last = Skip::new("sshd: no attempt");
        for _ in 0..ATTEMPTS {
            match Self::attempt(sshd, &ssh, &keygen) {
                Ok(mut fixture) => {
                    fixture.started_in = started.elapsed();
                    return Ok(fixture);
                }
                Err(skip) => last = skip,
            }
        }
        Err(last)
    }

    fn attempt(sshd: &Path, ssh: &Path, keygen: &Path) -> Result<Self, Skip> {
        let dir = fixture_dir("sshd")?;
        // From here on the directory is removed (and its processes swept) on failure.
        let mut guard = DirGuard(Some(dir.clone()));
        for key in ["host_key", "user_key", "refused_key"] {
            let (ok, _, err) = run_bounded(
                Command::new(keygen)
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                    .arg(dir.join(key)),
                READY_WITHIN,
            )
            .map_err(Skip::new)?;
            if !ok {
                return Err(Skip::new(format!("ssh-keygen {key}: {err}")));
            }
        }
        fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys"))
            .map_err(|e| Skip::new(format!("authorized_keys: {e}")))?;
        if is_root() {
            // The privilege separation directory, which sshd run as root insists on.
            fs::create_dir_all("/run/sshd")
                .map_err(|e| Skip::new(format!("create /run/sshd: {e}")))?;
        }
        let port = free_port()?;
        let root_login = if is_root() {
            "PermitRootLogin prohibit-password\n"
        } else {
            ""
        };
        let d = dir.display();
        write_file(
            &dir.join("sshd_config"),
            &format!(
                "ListenAddress 127.0.0.1\n\
                 Port {port}\n\
                 HostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\n\
                 {root_login}\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PrintMotd no\n\
                 X11Forwarding no\n\
                 MaxStartups 100:30:200\n\
                 PidFile {d}/sshd.pid\n\
                 SetEnv {TAG_VAR}={d}\n"
            ),
        )?;
        let user = user_name()?;
        let common = format!(
            "  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentitiesOnly yes\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  \
             BatchMode yes\n  ConnectTimeout 10\n"
        );
        write_file(
            &dir.join("ssh_config"),
            &format!(
                "Host {host}\n{common}  IdentityFile {d}/user_key\n  ControlMaster auto\n  \
                 ControlPath {d}/cm-%C\n  ControlPersist 60\n\n\
                 Host {refused}\n{common}  IdentityFile {d}/refused_key\n  ControlMaster no\n  \
                 ControlPath none\n",
                host = Self::HOST,
                refused = Self::REFUSED_HOST,
            ),
        )?;
        let log = dir.join("sshd.log");
        let child = spawn_daemon(
            Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config")),
            &log,
            &dir,
        )?;
        let mut fixture = Sshd {
            dir: guard.0.take().expect("dir"),
            child,
            port,
            ssh: ssh.to_path_buf(),
            started_in: Duration::ZERO,
        };
        fixture.wait_ready()?;
        Ok(fixture)
    }

    /// Waits until the port accepts a connection, then until a login runs `true`
    /// (without the ControlMaster, so that no master outlives a failed start).
    fn wait_ready(&mut self) -> Result<(), Skip> {
        let log = self.dir.join("sshd.log");
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            still_running(&mut self.child, "sshd", &log)?;
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Skip::new(format!(
                    "sshd did not listen on port {} within {READY_WITHIN:?}; its log:\n{}",
                    self.port,
                    log_tail(&log)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let login = run_bounded(
            self.ssh()
                .args(["-o", "ControlMaster=no", "-o", "ControlPath=none"])
                .arg(Self::HOST)
                .arg("true"),
            READY_WITHIN,
        );
        match login {
            Ok((true, _, _)) => Ok(()),
            Ok((false, _, err)) | Err(err) => Err(Skip::new(format!(
                "a login to the test sshd failed: {err}; sshd's log:\n{}",
                log_tail(&log)
            ))),
        }
    }

    /// The client's arguments that select this server's configuration:
    /// `["-F", <dir>/ssh_config]`.
    pub fn ssh_args(&self) -> Vec<String> {
        vec!["-F".into(), self.config().display().to_string()]
    }

    /// An `ssh` command with [`Sshd::ssh_args`], tagged as this fixture's (so that
    /// drop ends it and the ControlMaster it may start); add the host and the command.
    pub fn ssh(&self) -> Command {
        let mut cmd = Command::new(&self.ssh);
        cmd.args(self.ssh_args()).env(TAG_VAR, &self.dir);
        cmd
    }

    /// The client configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// The alias that logs in: `procpool-test`.
    pub fn host(&self) -> &'static str {
        Self::HOST
    }

    /// The alias whose login is refused: `procpool-refused`.
    pub fn refused_host(&self) -> &'static str {
        Self::REFUSED_HOST
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The listening sshd's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The fixture's directory (keys, configurations, sshd's log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`Sshd::start`] took, from the keys to the first login.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// sshd's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The ControlMaster first (it is not our child), then the server.
        let _ = run_bounded(self.ssh().args(["-O", "exit"]).arg(Self::HOST), STOP_GRACE);
        stop_child(&mut self.child);
        sweep(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
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

// ---------------------------------------------------------------------------------
// Slurm

/// A one-node Slurm cluster on 127.0.0.1: munged on its own socket and key, slurmctld
/// and slurmd in the foreground, `SlurmUser=root`, no cgroups
/// (`proctrack/linuxproc`, `task/none`), one partition `debug` with the node, which is
/// this machine's short host name with every CPU.
///
/// Run the client tools (`srun`, `sinfo`, `squeue`, `scancel`) with [`Slurm::env`],
/// or through [`Slurm::command`].
#[derive(Debug)]
pub struct Slurm {
    dir: PathBuf,
    munged: Child,
    slurmctld: Child,
    slurmd: Child,
    node: String,
    started_in: Duration,
}

impl Slurm {
    /// Starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle.
    ///
    /// # Errors
    ///
    /// A [`Skip`] when not root (slurmd starts job steps as their user), when a binary
    /// is missing, or when the node is not idle within 30 s (with the daemons' logs).
    pub fn start() -> Result<Self, Skip> {
        if !is_root() {
            return Err(Skip::new(
                "the Slurm fixture needs root (slurmd runs steps as their user)",
            ));
        }
        tools([
            ("munged", "munge"),
            ("slurmctld", "slurm-wlm"),
            ("slurmd", "slurm-wlm"),
            ("srun", "slurm-wlm"),
            ("sinfo", "slurm-wlm"),
            ("squeue", "slurm-wlm"),
            ("scancel", "slurm-wlm"),
        ])?;
        let started = Instant::now();
        let mut last = Skip::new("slurm: no attempt");
        for _ in 0..ATTEMPTS {
            match Self::attempt() {
                Ok(mut fixture) => {
                    fixture.started_in = started.elapsed();
                    return Ok(fixture);
                }
                Err(skip) => last = skip,
            }
        }
        Err(last)
    }

    fn attempt() -> Result<Self, Skip> {
        let [munged, slurmctld, slurmd] = tools([
            ("munged", "munge"),
            ("slurmctld", "slurm-wlm"),
            ("slurmd", "slurm-wlm"),
        ])?;
        let dir = fixture_dir("slurm")?;
        let mut guard = DirGuard(Some(dir.clone()));
        for sub in ["state", "spool"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(|e| Skip::new(format!("create {sub}: {e}")))?;
        }
        // munged wants a key only its user can read: 1024 random bits.
        let mut key = [0u8; 128];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| Skip::new(format!("read /dev/urandom: {e}")))?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("munge.key"))
            .and_then(|mut f| f.write_all(&key))
            .map_err(|e| Skip::new(format!("write munge.key: {e}")))?;

        let node = short_hostname();
        if node.is_empty() {
            return Err(Skip::new("no host name in /proc/sys/kernel/hostname"));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (ctld_port, slurmd_port) = (free_port()?, free_port()?);
        let d = dir.display();
        write_file(
            &dir.join("slurm.conf"),
            &format!(
                "ClusterName=procpool\n\
                 SlurmctldHost={node}(127.0.0.1)\n\
                 SlurmctldPort={ctld_port}\n\
                 SlurmdPort={slurmd_port}\n\
                 AuthType=auth/munge\n\
                 AuthInfo=socket={d}/munge.sock\n\
                 CredType=cred/munge\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 StateSaveLocation={d}/state\n\
                 SlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 SwitchType=switch/none\n\
                 MpiDefault=none\n\
                 ReturnToService=2\n\
                 SlurmdParameters=config_overrides\n\
                 KillWait=5\n\
                 NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=100 State=UNKNOWN\n\
                 PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
            ),
        )?;

        let munged_log = dir.join("munged.log");
        let mut munged = spawn_daemon(
            Command::new(&munged)
                .args(["-F", "--force", "--num-threads=2"])
                .arg(format!("--socket={d}/munge.sock"))
                .arg(format!("--key-file={d}/munge.key"))
                .arg(format!("--pid-file={d}/munged.pid"))
                .arg(format!("--seed-file={d}/munged.seed")),
            &munged_log,
            &dir,
        )?;
        let socket = dir.join("munge.sock");
        let deadline = Instant::now() + READY_WITHIN;
        while !socket.exists() {
            if let Err(skip) = still_running(&mut munged, "munged", &munged_log) {
                let _ = munged.wait();
                return Err(skip);
            }
            if Instant::now() >= deadline {
                stop_child(&mut munged);
                return Err(Skip::new(format!(
                    "munged made no socket within {READY_WITHIN:?}; its log:\n{}",
                    log_tail(&munged_log)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }

        let conf = dir.join("slurm.conf");
        let slurmctld = spawn_daemon(
            Command::new(&slurmctld).arg("-D").arg("-f").arg(&conf),
            &dir.join("slurmctld.log"),
            &dir,
        );
        let slurmctld = match slurmctld {
            Ok(child) => child,
            Err(skip) => {
                stop_child(&mut munged);
                return Err(skip);
            }
        };
        let slurmd = spawn_daemon(
            Command::new(&slurmd)
                .arg("-D")
                .arg("-f")
                .arg(&conf)
                .arg("-N")
                .arg(&node),
            &dir.join("slurmd.log"),
            &dir,
        );
        let slurmd = match slurmd {
            Ok(child) => child,
            Err(skip) => {
                let mut slurmctld = slurmctld;
                stop_child(&mut slurmctld);
                stop_child(&mut munged);
                return Err(skip);
            }
        };
        let mut fixture = Slurm {
            dir: guard.0.take().expect("dir"),
            munged,
            slurmctld,
            slurmd,
            node,
            started_in: Duration::ZERO,
        };
        fixture.wait_idle()?;
        Ok(fixture)
    }

    /// Waits until `sinfo` shows the node `idle`.
    fn wait_idle(&mut self) -> Result<(), Skip> {
        let deadline = Instant::now() + READY_WITHIN;
        let mut last;
        loop {
            still_running(&mut self.munged, "munged", &self.dir.join("munged.log"))?;
            still_running(
                &mut self.slurmctld,
                "slurmctld",
                &self.dir.join("slurmctld.log"),
            )?;
            still_running(&mut self.slurmd, "slurmd", &self.dir.join("slurmd.log"))?;
            let sinfo = run_bounded(
                self.command("sinfo").args(["-h", "-N", "-o", "%t"]),
                READY_WITHIN,
            );
            match sinfo {
                Ok((true, out, _)) if out.trim() == "idle" => return Ok(()),
                Ok((_, out, err)) => last = format!("{}{}", out.trim(), err.trim()),
                Err(err) => last = err,
            }
            if Instant::now() >= deadline {
                return Err(Skip::new(format!(
                    "the Slurm node was not idle within {READY_WITHIN:?} (sinfo: {last}); \
                     slurmctld's log:\n{}\nslurmd's log:\n{}",
                    log_tail(&self.dir.join("slurmctld.log")),
                    log_tail(&self.dir.join("slurmd.log")),
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The environment for the client tools and everything they start: `SLURM_CONF`
    /// (this cluster's slurm.conf, which names munged's socket in `AuthInfo`), the
    /// socket itself as `MUNGE_SOCKET` for the `munge` tools, and the fixture's tag.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "SLURM_CONF".into(),
                self.dir.join("slurm.conf").display().to_string(),
            ),
            (
                "MUNGE_SOCKET".into(),
                self.dir.join("munge.sock").display().to_string(),
            ),
            (TAG_VAR.into(), self.dir.display().to_string()),
        ]
    }

    /// `program` (e.g. `srun`) with [`Slurm::env`].
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(find_tool(program).unwrap_or_else(|| program.into()));
        cmd.envs(self.env());
        cmd
    }

    /// The node's name (this machine's short host name).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The daemons' pids: munged, slurmctld, slurmd.
    pub fn pids(&self) -> [u32; 3] {
        [self.munged.id(), self.slurmctld.id(), self.slurmd.id()]
    }

    /// The fixture's directory (slurm.conf, state, the daemons' logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long [`Slurm::start`] took, from the key to the idle node.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The ids of the jobs this cluster knows (`squeue`), in every state.
    pub fn jobs(&self) -> Vec<String> {
        match run_bounded(
            self.command("squeue").args(["-h", "-o", "%i"]),
            READY_WITHIN,
        ) {
            Ok((true, out, _)) => out.lines().map(|l| l.trim().to_string()).collect(),
            _ => Vec::new(),
        }
    }

    /// Cancels every job of this cluster (`scancel --user=<me>`) and waits (bounded)
    /// until `squeue` shows none. Returns whether none is left.
    pub fn cancel_all(&self) -> bool {
        if let Ok(user) = user_name() {
            let _ = run_bounded(
                self.command("scancel").arg(format!("--user={user}")),
                READY_WITHIN,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.jobs().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        self.cancel_all();
        stop_child(&mut self.slurmd);
        stop_child(&mut self.slurmctld);
        stop_child(&mut self.munged);
        sweep(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
