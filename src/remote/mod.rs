//! Workers on other machines: started by a [`Launcher`] (`ssh HOST`, Slurm's `srun`,
//! or any command prefix that runs a program with its stdin and stdout connected,
//! such as `kubectl exec -i POD --`), driven over the launcher's stdin and stdout with
//! the stream transport.
//!
//! On the other machine runs this same build, as a *keeper* ([`keeper`]) that forks
//! the worker exactly as a local worker is forked and stands between it and the link:
//! heartbeats toward the pool, the worker's host, pid and exit status, and the rule
//! that the worker dies when the link ends. The pool's end ([`link`]) strips what the
//! keeper adds and fails a link that is silent for longer than the heartbeat bound.

pub(crate) mod keeper;
pub(crate) mod link;
pub(crate) mod wire;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::output::ChildStdio;
use crate::start::child::{ChildProc, NewChild, Reported};
use crate::start::spawn::{on_spawner_thread, ENV_WORKER, ROLE_REMOTE};
use crate::transport::stream::{BoxRead, BoxWrite};
use link::{KeeperRead, KeeperWrite, RemoteInfo};

/// The environment variable that gives a keeper its heartbeat interval, in ms.
pub(crate) const ENV_HEARTBEAT_MS: &str = "__PROCPOOL_HEARTBEAT_MS";

/// The environment variable that gives a keeper its worker's resource settings:
/// `NICE:MEMORY_LIMIT`, each empty when unset (see [`Limits`]); no comma, which would
/// split `srun --export`'s list.
pub(crate) const ENV_LIMITS: &str = "__PROCPOOL_LIMITS";

/// The resource settings a keeper applies to the worker it forks, as a local worker's
/// are applied ([`PoolBuilder::niceness`](crate::PoolBuilder::niceness),
/// [`PoolBuilder::memory_limit`](crate::PoolBuilder::memory_limit)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) nice: Option<i32>,
    pub(crate) memory_limit: Option<u64>,
}

impl Limits {
    /// The value of [`ENV_LIMITS`].
    pub(crate) fn encode(&self) -> String {
        let nice = self.nice.map(|n| n.to_string()).unwrap_or_default();
        let memory = self.memory_limit.map(|m| m.to_string()).unwrap_or_default();
        format!("{nice}:{memory}")
    }

    /// Reads what [`encode`](Self::encode) wrote; nothing for anything else.
    pub(crate) fn decode(text: &str) -> Limits {
        let mut parts = text.split(':');
        Limits {
            nice: parts.next().and_then(|n| n.parse().ok()),
            memory_limit: parts.next().and_then(|m| m.parse().ok()),
        }
    }
}

/// The default [`PoolBuilder::heartbeat`](crate::PoolBuilder::heartbeat): a link
/// silent for this long is lost.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// How a group of workers on other machines is started: give it to
/// [`PoolBuilder::remote`](crate::PoolBuilder::remote).
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), procpool::BuildError> {
/// use procpool::{Launcher, Pool};
/// let pool = Pool::builder()
///     .processes(2) // two local workers
///     .remote(Launcher::ssh("worker-host-1"), 4) // and four on worker-host-1
///     .remote(Launcher::srun().arg("--partition=cpu"), 8) // and eight through Slurm
///     .build()
///     .await?;
/// assert_eq!(pool.processes(), 14);
/// # Ok(()) }
/// ```
///
/// The other end runs this same build: for `ssh`, a copy of this executable made once
/// per build in `~/.cache/procpool/BUILD-ID/` on the remote host (over the launcher's
/// own channel), unless [`program`](Launcher::program) names a path there (a shared
/// file system); for `srun` and a command prefix, the path of this executable here,
/// unless `program` names another. The handshake refuses another build.
#[derive(Clone)]
pub struct Launcher {
    kind: Kind,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    program: Option<PathBuf>,
    /// The program's path on the other end, once copied there (ssh). A failed copy is
    /// not kept: the next start tries again.
    copied: Arc<OnceCell<String>>,
}

#[derive(Debug, Clone)]
enum Kind {
    Ssh(String),
    Srun,
    Prefix(Vec<OsString>),
}

impl fmt::Debug for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launcher")
            .field("kind", &self.kind)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

impl Launcher {
    fn new(kind: Kind) -> Self {
        Launcher {
            kind,
            args: Vec::new(),
            env: Vec::new(),
            program: None,
            copied: Arc::new(OnceCell::new()),
        }
    }

    /// Workers started by `ssh HOST` (with the user's ssh configuration, agent and
    /// `ControlMaster` where present; in batch mode, so a login that needs a password
    /// fails rather than waits).
    pub fn ssh(host: impl Into<String>) -> Self {
        Launcher::new(Kind::Ssh(host.into()))
    }

    /// Workers started by Slurm's `srun --nodes=1 --ntasks=1`, one job step each:
    /// inside an allocation (`salloc`, `sbatch`) they run on its nodes; outside one,
    /// give a partition with [`arg`](Launcher::arg) (`--partition=NAME`).
    pub fn srun() -> Self {
        Launcher::new(Kind::Srun)
    }

    /// Workers started by a command prefix that runs the program that follows it with
    /// its stdin and stdout connected: `["kubectl", "exec", "-i", "POD", "--"]`,
    /// `["docker", "exec", "-i", "CONTAINER"]`.
    ///
    /// # Panics
    ///
    /// If `prefix` is empty.
    pub fn command<I, S>(prefix: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let prefix: Vec<OsString> = prefix.into_iter().map(Into::into).collect();
        assert!(
            !prefix.is_empty(),
            "a launcher's command prefix cannot be empty"
        );
        Launcher::new(Kind::Prefix(prefix))
    }

    /// Adds an argument for the launcher program itself: for `ssh`, before the host
    /// (`-F CONFIG`, `-p PORT`, `-o Option=value`); for `srun`, before the program
    /// (`--partition=NAME`); for a command prefix, after the prefix.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments, as [`arg`](Launcher::arg).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the launcher program here (`SLURM_CONF`,
    /// `KUBECONFIG`), not for the worker there.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The path of this build on the other end (a shared file system), instead of the
    /// default (see [`Launcher`]).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// A short description, for errors and stats: `ssh HOST`, `srun`, the prefix.
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            Kind::Ssh(host) => format!("ssh {host}"),
            Kind::Srun => "srun".to_string(),
            Kind::Prefix(prefix) => prefix
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// The program to run on the other end, as a word for a shell (ssh) or a path.
    async fn remote_program(&self, bound: Duration) -> Result<String, String> {
        if let Some(path) = &self.program {
            return Ok(path.to_string_lossy().into_owned());
        }
        match &self.kind {
            Kind::Ssh(_) => self
                .copied
                .get_or_try_init(|| self.copy_over_ssh(bound))
                .await
                .cloned(),
            _ => std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .map_err(|e| format!("cannot find this executable: {e}")),
        }
    }

    /// The ssh command line up to the remote command.
    fn ssh_command(&self, host: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args)
            .args(["-T", "-e", "none", "-o", "BatchMode=yes"])
            .arg(host)
            .arg("--");
        cmd
    }

    /// Copies this executable to `~/.cache/procpool/BUILD-ID/` on the host, unless a
    /// copy is there; its path there, as a word for the remote shell.
    async fn copy_over_ssh(&self, bound: Duration) -> Result<String, String> {
        let Kind::Ssh(host) = &self.kind else {
            unreachable!("only ssh copies")
        };
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "program".into());
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let id: String = crate::image::build_id()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = format!("\"$HOME\"/.cache/procpool/{id}");
        let path = format!("{dir}/{name}");
        let script = format!(
            "test -x {path} && exit 0; mkdir -p {dir} && cat > {path}.$$ && chmod 700 {path}.$$ \
             && mv -f {path}.$$ {path}"
        );
        let file =
            std::fs::File::open(&exe).map_err(|e| format!("cannot read this executable: {e}"))?;
        let mut cmd = tokio::process::Command::from(self.ssh_command(host));
        cmd.arg(script)
            .stdin(Stdio::from(file))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let run = async {
            let out = cmd
                .output()
                .await
                .map_err(|e| format!("cannot run ssh: {e}"))?;
            if out.status.success() {
                Ok(path.clone())
            } else {
                Err(format!(
                    "could not copy this executable to {host} ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        tokio::time::timeout(bound, run)
            .await
            .map_err(|_| format!("copying this executable to {host} took over {bound:?}"))?
    }

    /// The whole command that starts a keeper on the other end, which sends a
    /// heartbeat every `interval`.
    fn keeper_command(&self, program: &str, interval: Duration, limits: Limits) -> Command {
        let ms = interval.as_millis().max(1).to_string();
        let limits = limits.encode();
        match &self.kind {
            Kind::Ssh(host) => {
                let mut cmd = self.ssh_command(host);
                // The remote shell reads this line: the program is a shell word (the
                // copy's path, or a path given by the caller, quoted).
                let program = if self.program.is_some() {
                    shell_quote(program)
                } else {
                    program.to_string()
                };
                cmd.arg(format!(
                    "exec env {ENV_WORKER}={ROLE_REMOTE} {ENV_HEARTBEAT_MS}={ms} \
                     {ENV_LIMITS}={limits} {program}"
                ));
                cmd
            }
            Kind::Srun => {
                let mut cmd = Command::new("srun");
                cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
                    .args(["--nodes=1", "--ntasks=1", "--quiet", "--unbuffered"])
                    .arg("--kill-on-bad-exit=1")
                    .arg(format!(
                        "--export=ALL,{ENV_WORKER}={ROLE_REMOTE},{ENV_HEARTBEAT_MS}={ms},\
                         {ENV_LIMITS}={limits}"
                    ))
                    .args(&self.args)
                    .arg(program);
                cmd
            }
            Kind::Prefix(prefix) => {
                let mut cmd = Command::new(&prefix[0]);
                cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
                    .args(&prefix[1..])
                    .args(&self.args)
                    .arg("env")
                    .arg(format!("{ENV_WORKER}={ROLE_REMOTE}"))
                    .arg(format!("{ENV_HEARTBEAT_MS}={ms}"))
                    .arg(format!("{ENV_LIMITS}={limits}"))
                    .arg(program);
                cmd
            }
        }
    }

    /// Starts the launcher with a keeper on the other end: the local launcher process
    /// (which the pool owns, kills and reaps like a local worker), and the link.
    /// A link silent for `silence` is lost: the keeper sends a heartbeat every third
    /// of it. `bound` bounds the copy of the executable.
    pub(crate) async fn start(
        &self,
        stdio: ChildStdio,
        silence: Duration,
        bound: Duration,
        limits: Limits,
    ) -> io::Result<(ChildProc, RemoteLink)> {
        let program = self.remote_program(bound).await.map_err(io::Error::other)?;
        let mut cmd = self.keeper_command(&program, silence / 3, limits);
        let [_, _, stderr] = stdio.fds;
        let parent = nix::unistd::getpid();
        let (pid, stdin, stdout) = on_spawner_thread(move || -> io::Result<_> {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(stderr))
                // Not in the terminal's group: the pool decides when it stops.
                .process_group(0);
            // SAFETY: prctl and getppid are async-signal-safe and allocate nothing,
            // as a pre_exec hook in a possibly multi-threaded parent must.
            unsafe {
                cmd.pre_exec(move || {
                    // The launcher dies with the pool's process, and with it the link,
                    // which makes the keeper kill the worker.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::getppid() != parent.as_raw() {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
            let mut child = cmd.spawn()?;
            let new = NewChild::new(child.id());
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| io::Error::other("no stdin"))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| io::Error::other("no stdout"))?;
            Ok((new, stdin, stdout))
        })
        .await??;
        let info = Arc::new(RemoteInfo::default());
        let reported = info.clone();
        let child = ChildProc::new(pid.claim())?
            .with_reported_exit(Reported(Arc::new(move || reported.exit())));
        let stdin = tokio::process::ChildStdin::from_std(stdin)?;
        let stdout = tokio::process::ChildStdout::from_std(stdout)?;
        let read: BoxRead = Box::new(KeeperRead::new(stdout, info.clone(), silence));
        let write: BoxWrite = Box::new(KeeperWrite::new(stdin, silence / 3));
        Ok((
            child,
            RemoteLink {
                read,
                write,
                info,
                launcher: self.describe(),
            },
        ))
    }
}

/// The test suite's hook (like `__PROCPOOL_TEST_TRANSPORT`): with
/// `__PROCPOOL_TEST_LAUNCHER` set to `ssh:CONFIG:HOST` or `srun`, a pool's local workers
/// are started through that launcher instead, so that the integration tests of the
/// pool's semantics run over a real link (see `.ci/run`).
pub(crate) fn test_launcher() -> Option<Launcher> {
    let spec = std::env::var("__PROCPOOL_TEST_LAUNCHER").ok()?;
    let mut parts = spec.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("ssh"), Some(config), Some(host)) => Some(Launcher::ssh(host).args(["-F", config])),
        (Some("srun"), None, None) => Some(Launcher::srun()),
        _ => None,
    }
}

/// The pool's end of a remote worker's link.
pub(crate) struct RemoteLink {
    pub(crate) read: BoxRead,
    pub(crate) write: BoxWrite,
    pub(crate) info: Arc<RemoteInfo>,
    /// How it was started (`ssh HOST`, `srun`), for errors.
    pub(crate) launcher: String,
}

impl fmt::Debug for RemoteLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteLink")
            .field("launcher", &self.launcher)
            .finish_non_exhaustive()
    }
}

/// `s` as one word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_a_shell() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn builds_the_keeper_commands() {
        let ms = Duration::from_millis(1500);
        let ssh = Launcher::ssh("h").arg("-F").arg("cfg").program("/opt/x y");
        let cmd = ssh.keeper_command("/opt/x y", ms, Limits::default());
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "ssh");
        assert_eq!(&args[..2], ["-F", "cfg"]);
        assert!(args.contains(&"h".to_string()));
        assert_eq!(
            args.last().unwrap(),
            "exec env __PROCPOOL_WORKER=remote __PROCPOOL_HEARTBEAT_MS=1500 \
             __PROCPOOL_LIMITS=: '/opt/x y'"
        );
        let srun = Launcher::srun().arg("--partition=debug");
        let cmd = srun.keeper_command("/bin/prog", ms, Limits::default());
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "srun");
        assert!(args.contains(&"--partition=debug".to_string()));
        assert_eq!(args.last().unwrap(), "/bin/prog");
        let prefix = Launcher::command(["docker", "exec", "-i", "c"]);
        let limits = Limits {
            nice: Some(5),
            memory_limit: Some(1 << 30),
        };
        assert_eq!(Limits::decode(&limits.encode()), limits);
        assert_eq!(Limits::decode(""), Limits::default());
        let cmd = prefix.keeper_command("/bin/prog", ms, limits);
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "docker");
        assert_eq!(
            args,
            [
                "exec",
                "-i",
                "c",
                "env",
                "__PROCPOOL_WORKER=remote",
                "__PROCPOOL_HEARTBEAT_MS=1500",
                "__PROCPOOL_LIMITS=5:1073741824",
                "/bin/prog"
            ]
        );
    }
}
