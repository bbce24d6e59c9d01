//! [`Process`]: one function, run once in one child process.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::builder::DEFAULT_MAX_FRAME_LEN;
use crate::connect::{connect, Setup};
use crate::error::{BuildError, BuildErrorKind, TaskError, WorkerExit};
use crate::handle::decode_one;
use crate::launch::Starter;
use crate::outcome::reply_of;
use crate::output::WorkerOutput;
use crate::per_process::PerProcess;
use crate::protocol::codec::encode_chunk;
use crate::protocol::job::write_job_frame;
use crate::protocol::Done;
use crate::queue::Reply;
use crate::start::forkserver::ForkServer;
use crate::start::{ChildKind, ChildOptions, Label, StartMethod};
use crate::task_fn::task_ref;

/// One function run once in a child process: Python's `multiprocessing.Process`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn work(n: u64) -> u64 { n * 2 }
/// let child = procpool::Process::builder().name("doubler").start(work, 21).await?;
/// println!("running as pid {}", child.pid());
/// assert_eq!(child.join().await?, 42);
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Process;

impl Process {
    /// A builder for a process.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::default()
    }
}

/// Configures a [`Process`]; [`start`](ProcessBuilder::start) runs it.
#[derive(Debug, Clone)]
pub struct ProcessBuilder {
    daemon: bool,
    name: Option<String>,
    start_method: StartMethod,
    startup_timeout: Duration,
    sandbox: Option<crate::Sandbox>,
    env_clear: bool,
    env_keys: Vec<String>,
    stdout: WorkerOutput,
    stderr: WorkerOutput,
}

impl Default for ProcessBuilder {
    fn default() -> Self {
        ProcessBuilder {
            daemon: false,
            name: None,
            start_method: StartMethod::default(),
            startup_timeout: Duration::from_secs(30),
            sandbox: None,
            env_clear: false,
            env_keys: Vec::new(),
            stdout: WorkerOutput::default(),
            stderr: WorkerOutput::default(),
        }
    }
}

impl ProcessBuilder {
    /// A daemon is killed when its parent process exits (its parent-death signal), and
    /// may not start processes or pools of its own. A non-daemon process runs on if its
    /// parent dies. Default: `false`, as in Python.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// The process's name, as [`current_process`](crate::current_process) reports it
    /// inside, and in its command line: `argv[0]` is `procpool-process[name]` (the
    /// first 32 bytes of the name), except under [`StartMethod::Fork`], where the child
    /// keeps the command line of the program it was forked from. Its command name
    /// (`/proc/PID/comm`, what `ps` and `pgrep` show by default) is `procpool-proc`
    /// under every start method. Default: `procpool-process-<pid of the parent>`
    /// inside, and `procpool-process` in the command line.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How the process is started. Default: [`StartMethod::ForkServer`] (one fork
    /// server is shared by every `Process` of the program; it stops 1 s after the last
    /// of them has ended, and starts again for the next).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// Shuts the process in `sandbox` before it runs its function, as
    /// [`PoolBuilder::sandbox`](crate::PoolBuilder::sandbox) does for a pool's workers.
    /// Default: no sandbox.
    pub fn sandbox(mut self, sandbox: crate::Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// Starts the process with an empty environment but for the keys given to
    /// [`env`](Self::env), as [`PoolBuilder::env_clear`](crate::PoolBuilder::env_clear).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// Lets the process keep the environment variable `key` where its environment is
    /// cleared, as [`PoolBuilder::env`](crate::PoolBuilder::env).
    pub fn env(mut self, key: impl Into<String>) -> Self {
        self.env_keys.push(key.into());
        self
    }

    /// Where the process's standard output goes. Default: [`WorkerOutput::Inherit`],
    /// where this process's goes, through a description of the child's own: nothing
    /// the child does to its descriptors changes this process's. See [`WorkerOutput`].
    pub fn stdout(mut self, output: WorkerOutput) -> Self {
        self.stdout = output;
        self
    }

    /// Where the process's standard error goes, as for [`stdout`](Self::stdout).
    /// Default: [`WorkerOutput::Inherit`].
    pub fn stderr(mut self, output: WorkerOutput) -> Self {
        self.stderr = output;
        self
    }

    /// Starts the process running `f(arg)`.
    ///
    /// # Errors
    ///
    /// If this process is a daemon (a pool worker or a daemon `Process`): daemons may
    /// not have children. If the child cannot be started or does not finish its
    /// handshake within 30 s, or the function cannot be sent to it. If the
    /// [sandbox](Self::sandbox) cannot be applied (a missing kernel feature, named, or
    /// a missing path).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes kills the child if it was started.
    pub async fn start<A, R>(self, f: fn(A) -> R, arg: A) -> Result<ProcessHandle<R>, BuildError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        if crate::worker::is_daemon() {
            return Err(BuildError::new(
                BuildErrorKind::Daemon,
                "daemonic processes are not allowed to have children",
            ));
        }
        if let Some(sandbox) = &self.sandbox {
            sandbox
                .spec()
                .check()
                .map_err(|why| BuildError::new(BuildErrorKind::Sandbox, why))?;
        }
        let env = crate::sandbox::env_policy(self.env_clear, &self.env_keys, self.sandbox.as_ref());
        let func = task_ref(f).map_err(|why| BuildError::new(BuildErrorKind::Task, why))?;
        let mut args = Vec::new();
        encode_chunk(std::slice::from_ref(&arg), &mut args).map_err(|e| {
            BuildError::new(
                BuildErrorKind::Task,
                format!("the argument could not be encoded: {e}"),
            )
        })?;
        let opts = ChildOptions {
            outlive_parent: !self.daemon,
            kind: ChildKind::Process,
            label: self.name.as_deref().map(Label::new).unwrap_or_default(),
            ..ChildOptions::default()
        };
        let (method, timeout) = (self.start_method, self.startup_timeout);
        let spawn_env = env.clone();
        let (stdio, relays) = crate::output::prepare(&self.stdout, &self.stderr).map_err(|e| {
            let message = format!("could not make the process's stdio: {e}");
            BuildError::with_source(BuildErrorKind::Start, message, e)
        })?;
        // Taken before the fork, so that the shared fork server is not let go meanwhile.
        let lease = (method == StartMethod::ForkServer).then(ServerLease::take);
        let start = async move {
            match method {
                StartMethod::ForkServer => fork_from_shared_server(opts, stdio).await,
                method => {
                    let output = (WorkerOutput::Inherit, WorkerOutput::Inherit);
                    Starter::new(method, None, timeout, spawn_env, output)
                        .start(opts, stdio)
                        .await
                }
            }
        };
        let started = tokio::time::timeout(self.startup_timeout, start)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no process started in time",
                ))
            });
        let (child, sock) = started.map_err(|e| {
            let message = format!("could not start the process: {e}");
            BuildError::with_source(BuildErrorKind::Start, message, e)
        })?;
        let pid = child.pid();
        relays.start(pid);
        let name = self
            .name
            .unwrap_or_else(|| format!("procpool-process-{}", std::process::id()));
        let setup = Setup {
            index: None,
            name: name.clone(),
            daemon: self.daemon,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            initializer: None,
            startup_timeout: self.startup_timeout,
            worker_spin: Duration::ZERO,
            ring: false,
            shared_min: 0,
            env,
            sandbox: self.sandbox.as_ref().map(|s| s.spec().clone()),
        };
        let mut worker = connect(child, crate::connect::Channel::Socket(sock), setup)
            .await
            .map_err(|why| BuildError::new(BuildErrorKind::Start, why))?;
        if !self.daemon {
            worker.child.detach_on_drop();
        }
        let mut frame = Vec::new();
        write_job_frame(1, func, DEFAULT_MAX_FRAME_LEN, &mut frame, 0, |out| {
            out.extend_from_slice(&args);
            Ok(())
        })
        .map_err(|e| BuildError::new(BuildErrorKind::Task, e.to_string()))?;
        worker.link.write_all(&frame).await.map_err(|e| {
            let message = format!("could not send the function: {e}");
            BuildError::with_source(BuildErrorKind::Start, message, e)
        })?;

        let (result_tx, result_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = watch::channel(None);
        let (signal_tx, signal_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            watch_process(worker, result_tx, exit_tx, signal_rx).await;
            // The process has ended (or this runtime is going): the shared server may
            // go if nothing else needs it.
            drop(lease);
        });
        Ok(ProcessHandle {
            pid,
            name,
            daemon: self.daemon,
            result: Some(result_rx),
            exit: exit_rx,
            signals: signal_tx,
            _result: PhantomData,
        })
    }
}

/// How long the shared fork server stays up after the last `Process` that used it has
/// ended: a program that starts processes one after another keeps one server, while
/// one that has stopped starting them does not keep an idle process for its life.
pub(crate) const SERVER_LINGER: Duration = Duration::from_secs(1);

/// The fork server shared by every `Process` of this program, with the runtime its
/// connection lives on and the count of processes that need it.
struct SharedServer {
    runtime: tokio::runtime::Handle,
    server: std::sync::Arc<ForkServer>,
    /// Processes started or starting from the server and not yet seen to end.
    users: std::sync::Mutex<u64>,
}

/// The shared server, made on first use.
///
/// The server's connection lives on a small runtime of its own, which lasts as long as
/// the program: the caller's runtime may be one of several (each `#[tokio::test]` has
/// its own) and may end while processes it did not start still report their exit
/// through that connection.
fn shared_server() -> std::io::Result<&'static SharedServer> {
    static SHARED: PerProcess<Result<SharedServer, String>> = PerProcess::new();
    let shared = SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("procpool-process-server".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(|e| e.to_string())?;
        let output = (WorkerOutput::Inherit, WorkerOutput::Inherit);
        Ok(SharedServer {
            runtime: handle,
            server: std::sync::Arc::new(
                ForkServer::new(None, Duration::from_secs(30), output)
                    .with_label(crate::start::Label::default()),
            ),
            users: std::sync::Mutex::new(0),
        })
    });
    shared
        .as_ref()
        .map_err(|e| std::io::Error::other(e.clone()))
}

/// One `Process`'s claim on the shared fork server: the last one dropped lets the
/// server go after [`SERVER_LINGER`] (a new claim meanwhile keeps it).
#[derive(Debug)]
struct ServerLease(bool);

impl ServerLease {
    fn take() -> ServerLease {
        let Ok(shared) = shared_server() else {
            return ServerLease(false);
        };
        *shared.users.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        ServerLease(true)
    }
}

impl Drop for ServerLease {
    fn drop(&mut self) {
        let Some(shared) = self.0.then(shared_server).and_then(Result::ok) else {
            return;
        };
        let mut users = shared.users.lock().unwrap_or_else(|e| e.into_inner());
        *users = users.saturating_sub(1);
        if *users > 0 {
            return;
        }
        drop(users);
        let server = shared.server.clone();
        shared.runtime.spawn(async move {
            tokio::time::sleep(SERVER_LINGER).await;
            // Decided under the server's own lock, which a fork request takes too: a
            // request counted after this look starts a new server; one counted before
            // it keeps this one.
            let idle = || {
                shared_server()
                    .map(|s| *s.users.lock().unwrap_or_else(|e| e.into_inner()) == 0)
                    .unwrap_or(false)
            };
            server.shutdown_if(idle).await;
        });
    }
}

/// Forks a `Process` from the fork server shared by every `Process` of this program
/// (the caller holds a [`ServerLease`]).
async fn fork_from_shared_server(
    opts: ChildOptions,
    stdio: crate::output::ChildStdio,
) -> std::io::Result<(
    crate::start::child::ChildProc,
    std::os::unix::net::UnixStream,
)> {
    let shared = shared_server()?;
    let server = shared.server.clone();
    shared
        .runtime
        .spawn(async move { server.fork_worker(opts, stdio).await })
        .await
        .map_err(std::io::Error::other)?
}

/// Owns the child: reads its one reply, lets it go, records how it ended, and passes on
/// the handle's signals.
async fn watch_process(
    mut worker: crate::driver::Worker,
    result: oneshot::Sender<Reply>,
    exit: watch::Sender<Option<WorkerExit>>,
    mut signals: mpsc::UnboundedReceiver<Signal>,
) {
    let mut result = Some(result);
    let mut signals_open = true;
    let status = loop {
        tokio::select! {
            frame = worker.link.next_frame(), if result.is_some() => {
                let reply = match frame {
                    Some(Ok(reply)) => match Done::read_reply(&reply.frame) {
                        Ok((done, payload_len)) => {
                            Some(reply_of(done.outcome, reply, payload_len, DEFAULT_MAX_FRAME_LEN))
                        }
                        Err(why) => Some(Err(TaskError::Protocol(why))),
                    },
                    // It died: the exit status decides the error below.
                    _ => None,
                };
                if let Some(reply) = reply {
                    if let Some(tx) = result.take() {
                        let _ = tx.send(reply);
                    }
                    // Done: closing the channel lets the process exit.
                    worker.link.shutdown().await;
                }
            }
            status = worker.child.wait() => break status,
            signal = signals.recv(), if signals_open => match signal {
                Some(signal) => worker.child.signal(signal),
                None => signals_open = false,
            },
        }
    };
    if let Some(tx) = result.take() {
        let _ = tx.send(Err(TaskError::WorkerDied {
            pid: worker.pid,
            exit: status,
        }));
    }
    let _ = exit.send(Some(status));
}

/// A running [`Process`]: its pid, its state, and its function's result.
///
/// # Cancel safety
///
/// Dropping the handle neither kills nor waits for the process: a daemon still dies
/// with its parent, a non-daemon runs on; either is reaped when it ends (while the
/// runtime that started it runs).
pub struct ProcessHandle<R> {
    pid: u32,
    name: String,
    daemon: bool,
    result: Option<oneshot::Receiver<Reply>>,
    exit: watch::Receiver<Option<WorkerExit>>,
    signals: mpsc::UnboundedSender<Signal>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for ProcessHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("pid", &self.pid)
            .field("name", &self.name)
            .field("daemon", &self.daemon)
            .field("exit", &*self.exit.borrow())
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned + 'static> ProcessHandle<R> {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is a daemon.
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// Whether the process still runs (it has not been seen to end).
    pub fn is_alive(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// How the process ended, once it has: Python's `exitcode`.
    pub fn exit_code(&self) -> Option<WorkerExit> {
        *self.exit.borrow()
    }

    /// Asks the process to stop with `SIGTERM`.
    pub fn terminate(&self) {
        let _ = self.signals.send(Signal::SIGTERM);
    }

    /// Kills the process with `SIGKILL`.
    pub fn kill(&self) {
        let _ = self.signals.send(Signal::SIGKILL);
    }

    /// Waits until the process has ended; returns how.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait(&mut self) -> WorkerExit {
        let seen = self.exit.wait_for(Option::is_some).await.map(|exit| *exit);
        match seen {
            Ok(exit) => exit.unwrap_or(WorkerExit::Unknown),
            Err(_) => self.exit_code().unwrap_or(WorkerExit::Unknown),
        }
    }

    /// Waits until the process has ended and returns its function's result.
    ///
    /// # Errors
    ///
    /// [`TaskError::Panicked`] if the function panicked, [`TaskError::WorkerDied`] if
    /// the process died first (killed, crashed, exited), a codec error if the result
    /// could not be decoded.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if the future is dropped after the result arrived, the result
    /// is lost (the process is unaffected).
    pub async fn join(mut self) -> Result<R, TaskError> {
        let reply = match self.result.take() {
            Some(rx) => rx.await.unwrap_or(Err(TaskError::Terminated)),
            None => Err(TaskError::Terminated),
        };
        self.wait().await;
        decode_one(reply)
    }
}
