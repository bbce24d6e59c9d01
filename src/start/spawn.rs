//! Start method `Spawn`: run this executable again, marked as a worker.
//!
//! The child is `/proc/self/exe` (the very file this process runs, even if it has been
//! replaced on disk since), with the environment variable [`ENV_WORKER`] set and its
//! end of a socketpair on descriptor [`WORKER_FD`]. [`crate::init`] (or the ctor that
//! [`crate::enable_test_support!`] registers) sees the marker and enters the worker loop
//! before the user's program runs.
//!
//! It is started with `posix_spawn` ([`posix_spawn`](super::posix_spawn)), which runs no
//! code of ours before the exec and so costs the same whatever this process's size; the
//! child applies its settings to itself after the exec ([`after_exec`]).
//!
//! Children are started from one long-lived thread, the spawner: Linux sends the
//! parent-death signal when the *thread* that started a child exits, and Tokio's
//! blocking threads come and go.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Mutex};

use crate::output::ChildStdio;
use crate::per_process::PerProcess;
use crate::start::after_exec::{self, AfterExec, ENV_SETUP};
use crate::start::child::{ChildProc, NewChild};
use crate::start::ChildOptions;

/// Set in a spawned process's environment; its value is its role.
pub(crate) const ENV_WORKER: &str = "__PROCPOOL_WORKER";

/// The role of a spawned worker.
pub(crate) const ROLE_WORKER: &str = "worker";

/// The role of a spawned [`Process`](crate::Process) child (a worker by another name).
pub(crate) const ROLE_PROCESS: &str = "process";

/// The role of a keeper: what a launcher starts on another machine, between the link
/// and the worker it forks.
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
    // could by then name another file (one of the spawn's own copies, say).
    let procs = leaf.as_ref().and_then(|l| l.procs_copy());
    // `ps`, `top` and `pgrep` tell the children apart by this (the command name, set
    // after the exec, follows the role: see `init`).
    let arg0 = crate::start::names::argv0_string(role, &opts.label);
    let settings = AfterExec {
        parent,
        outlive_parent: opts.outlive_parent,
        nice: opts.nice,
        memory_limit: opts.memory_limit,
        cgroup: procs.is_some(),
    };
    let list_fds = crate::start::fds::close_range_disabled();
    let pid = on_spawner_thread(move || -> io::Result<NewChild> {
        let exe = if std::path::Path::new("/proc/self/exe").exists() {
            std::path::PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()?
        };
        let mut argv = vec![c_string(arg0.as_bytes())?];
        if room {
            argv.push(c_string(" ".repeat(crate::start::Label::MAX).as_bytes())?);
        }
        let env = child_env(env, role, &settings)?;
        // Descriptor i of the child is fds[i]: stdio, the channel on WORKER_FD, and
        // the leaf's cgroup.procs on CGROUP_FD. The descriptors live (in `stdio`,
        // `theirs` and `procs`) until the spawn has returned.
        let mut fds = stdio.raw().to_vec();
        fds.push(theirs.as_raw_fd());
        debug_assert_eq!(fds.len(), WORKER_FD as usize + 1);
        if let Some(procs) = &procs {
            fds.push(procs.as_raw_fd());
            debug_assert_eq!(fds.len(), after_exec::CGROUP_FD as usize + 1);
        }
        let pid = crate::start::posix_spawn::spawn(
            &crate::start::posix_spawn::Spawn {
                path: &c_string(exe.as_os_str().as_bytes())?,
                argv: &argv,
                env: &env,
                fds: &fds,
            },
            list_fds,
        )?;
        drop((theirs, stdio, procs));
        Ok(NewChild::new(pid as u32))
    })
    .await;
    if let Some(leaf) = &mut leaf {
        leaf.close_procs();
    }
    // (Dropping the leaf on an error kills what may have entered it.)
    let pid = pid??;
    Ok((ChildProc::new(pid.claim())?.with_leaf(leaf), ours))
}

/// `bytes` as a C string.
fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte"))
}

/// A spawned child's environment: this process's (or only the variables `keep` names),
/// with its role in [`ENV_WORKER`] and its start-up settings in [`ENV_SETUP`].
fn child_env(
    keep: Option<Vec<String>>,
    role: &str,
    settings: &AfterExec,
) -> io::Result<Vec<CString>> {
    let ours = |key: &OsStr| key == ENV_WORKER || key == ENV_SETUP;
    let inherited: Vec<(std::ffi::OsString, std::ffi::OsString)> = match keep {
        Some(keys) => keys
            .into_iter()
            .filter_map(|key| Some((key.clone().into(), std::env::var_os(&key)?)))
            .collect(),
        None => std::env::vars_os().collect(),
    };
    let mut env = Vec::with_capacity(inherited.len() + 2);
    for (key, value) in inherited {
        // (A variable whose name holds `=` could not be set, nor read back.)
        if ours(&key) || key.is_empty() || key.as_bytes().contains(&b'=') {
            continue;
        }
        let mut entry = key.into_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        // A NUL cannot be in a variable of ours: skip it rather than fail the start.
        if let Ok(entry) = CString::new(entry) {
            env.push(entry);
        }
    }
    env.push(c_string(format!("{ENV_WORKER}={role}").as_bytes())?);
    env.push(c_string(
        format!("{ENV_SETUP}={}", settings.encode()).as_bytes(),
    )?);
    Ok(env)
}
