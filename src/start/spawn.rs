//! Start method `Spawn`: run this executable again, marked as a worker.
//!
//! The child is `/proc/self/exe` (the very file this process runs, even if it has been
//! replaced on disk since), with the environment variable [`ENV_WORKER`] set and its
//! end of a socketpair on descriptor [`WORKER_FD`]. [`crate::init`] (or the ctor that
//! [`crate::enable_test_support!`] registers) sees the marker and enters the worker loop
//! before the user's program runs.
//!
//! Children are forked from one long-lived thread, the spawner: Linux sends the
//! parent-death signal when the *thread* that forked a child exits, and Tokio's
//! blocking threads come and go.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};

use crate::output::ChildStdio;
use crate::per_process::PerProcess;
use crate::start::child::{ChildProc, NewChild};
use crate::start::ChildOptions;

/// Set in a spawned process's environment; its value is its role.
pub(crate) const ENV_WORKER: &str = "__PROCPOOL_WORKER";

/// The role of a spawned worker.
pub(crate) const ROLE_WORKER: &str = "worker";

/// The role of a spawned [`Process`](crate::Process) child (a worker by another name).
pub(crate) const ROLE_PROCESS: &str = "process";

/// The role of a keeper: what a launcher starts on another machine (see
/// [`crate::remote`]).
pub(crate) const ROLE_REMOTE: &str = "remote";

/// The role of a fork server.
pub(crate) const ROLE_FORKSERVER: &str = "forkserver";

/// The descriptor on which a spawned worker finds its channel.
pub(crate) const WORKER_FD: RawFd = 3;

type SpawnerJob = Box<dyn FnOnce() + Send>;

/// Runs `f` on the spawner thread.
pub(crate) async fn on_spawner_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    static SPAWNER: PerProcess<Mutex<mpsc::Sender<SpawnerJob>>> = PerProcess::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnerJob>();
        // The thread lives as long as the process: the sender is in a static.
        let _ = std::thread::Builder::new()
            .name("procpool-spawner".into())
            .spawn(move || {
                // One job's panic (a bug) must not take the thread, and every later
                // start with it: the job's requester hears that its request was dropped.
                for job in rx {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        Mutex::new(tx)
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: SpawnerJob = Box::new(move || {
        let _ = tx.send(f());
    });
    spawner
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send(job)
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))
}

/// Starts a worker by running this executable again, with only the environment
/// variables `env` names if it is `Some`.
pub(crate) async fn spawn_worker(
    opts: ChildOptions,
    stdio: ChildStdio,
    env: Option<Vec<String>>,
) -> io::Result<(ChildProc, UnixStream)> {
    let role = match opts.kind {
        crate::start::ChildKind::Worker => ROLE_WORKER,
        crate::start::ChildKind::Process => ROLE_PROCESS,
    };
    spawn_self(role, opts, stdio, env, false).await
}

/// Runs this executable again in `role`, with its channel on [`WORKER_FD`], `stdio`
/// on 0, 1 and 2, and only the environment variables `env` names if it is `Some`.
/// With `room`, a second argument of blanks follows `argv[0]`: room for the longer
/// names that a fork server's children write over its arguments (see
/// [`rename_argv`](crate::start::names::rename_argv)).
pub(crate) async fn spawn_self(
    role: &'static str,
    opts: ChildOptions,
    stdio: ChildStdio,
    env: Option<Vec<String>>,
    room: bool,
) -> io::Result<(ChildProc, UnixStream)> {
    let (ours, theirs) = crate::start::channel_pair()?;
    let parent = nix::unistd::getpid();
    let mut leaf = crate::start::cgroup::Leaf::create();
    // Every descriptor the child is given is owned by the job on the spawner thread,
    // which runs even if this future is dropped meanwhile: a number closed under it
    // could by then name another file (std's exec-error pipe, say).
    let procs = leaf.as_ref().and_then(|l| l.procs_copy());
    let mut opts = opts;
    opts.cgroup_procs = procs.as_ref().map(AsRawFd::as_raw_fd);
    // `ps`, `top` and `pgrep` tell the children apart by this (the command name, set
    // after the exec, follows the role: see `init`).
    let arg0 = crate::start::names::argv0_string(role, &opts.label);
    let pid = on_spawner_thread(move || -> io::Result<NewChild> {
        let exe = if std::path::Path::new("/proc/self/exe").exists() {
            std::path::PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()?
        };
        let mut cmd = Command::new(exe);
        cmd.arg0(arg0);
        if room {
            cmd.arg(" ".repeat(crate::start::Label::MAX));
        }
        if let Some(keys) = env {
            cmd.env_clear();
            for key in keys {
                if let Some(value) = std::env::var_os(&key) {
                    cmd.env(key, value);
                }
            }
        }
        cmd.env(ENV_WORKER, role).stdin(Stdio::null());
        let fd = theirs.as_raw_fd();
        // The descriptors live (in `stdio`) until `spawn` has returned.
        let raw = stdio.raw();
        // SAFETY: `child_setup` and `close_from` make only async-signal-safe calls
        // (write, fcntl, dup2, setpgid, prctl, getppid, setpriority, setrlimit, close_range,
        // open, getdents64, close, getrlimit, _exit) and allocate nothing, as a
        // pre_exec hook in a possibly multi-threaded parent must.
        unsafe {
            cmd.pre_exec(move || {
                crate::start::child_setup(fd, WORKER_FD, raw, parent, &opts)?;
                // Every descriptor but stdio and the channel closes at the exec: the
                // parent's listening sockets and files are not the child's.
                crate::start::fds::close_from(WORKER_FD + 1, true)
            });
        }
        let child = cmd.spawn()?;
        drop((theirs, stdio, procs));
        Ok(NewChild::new(child.id()))
    })
    .await;
    if let Some(leaf) = &mut leaf {
        leaf.close_procs();
    }
    // (Dropping the leaf on an error kills what may have entered it.)
    let pid = pid??;
    Ok((ChildProc::new(pid.claim())?.with_leaf(leaf), ours))
}
