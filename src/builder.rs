//! [`PoolBuilder`]: how a pool is configured.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::{BuildError, BuildErrorKind};
use crate::image::build_id;
use crate::launch::Starter;
use crate::output::WorkerOutput;
use crate::pool::Pool;
use crate::protocol::codec::encode_chunk;
use crate::protocol::FnRef;
use crate::shared::{Config, Shared};
use crate::start::spawn::ENV_WORKER;
use crate::start::{ChildOptions, StartMethod};
use crate::supervisor::run_slot;
use crate::task_fn::task_ref;

/// The default [`PoolBuilder::max_frame_len`]: 256 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 256 << 20;

/// A hook run once in a process (an initializer, a preload): its function and its
/// encoded argument.
fn encode_hook<A>(f: fn(A), arg: A) -> Result<(FnRef, Bytes), String>
where
    A: Serialize + DeserializeOwned + Send + 'static,
{
    let func = task_ref(f)?;
    let mut args = Vec::new();
    encode_chunk(std::slice::from_ref(&arg), &mut args)?;
    Ok((func, args.into()))
}

/// Configures and builds a [`Pool`]. Get one from [`Pool::builder`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), procpool::BuildError> {
/// use std::time::Duration;
/// let pool = procpool::Pool::builder()
///     .processes(2)
///     .max_tasks_per_child(1000)
///     .task_timeout(Duration::from_secs(30))
///     .build()
///     .await?;
/// assert_eq!(pool.processes(), 2);
/// # pool.terminate().await;
/// # Ok(()) }
/// ```
pub struct PoolBuilder {
    config: Config,
    initializer: Result<(), String>,
    preload: Result<(), String>,
    env_clear: bool,
    env_keys: Vec<String>,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.config.processes)
            .field("start_method", &self.config.start_method)
            .field("max_tasks_per_child", &self.config.max_tasks_per_child)
            .field(
                "initializer",
                &self.config.initializer.as_ref().map(|_| "<fn>"),
            )
            .field("max_frame_len", &self.config.max_frame_len)
            .field("task_timeout", &self.config.task_timeout)
            .field("startup_timeout", &self.config.startup_timeout)
            .field("sandbox", &self.config.sandbox)
            .field("env_clear", &self.env_clear)
            .field("env", &self.env_keys)
            .field("stdout", &self.config.stdout)
            .field("stderr", &self.config.stderr)
            .finish_non_exhaustive()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolBuilder {
    /// A builder with the defaults of each setting.
    pub fn new() -> Self {
        PoolBuilder {
            config: Config {
                processes: std::thread::available_parallelism().map_or(1, |n| n.get()),
                start_method: StartMethod::default(),
                max_tasks_per_child: None,
                initializer: None,
                max_frame_len: DEFAULT_MAX_FRAME_LEN,
                task_timeout: None,
                kill_grace: None,
                startup_timeout: Duration::from_secs(30),
                pipeline: 512,
                child: ChildOptions::default(),
                preload: None,
                polling: None,
                transport: None,
                env: None,
                sandbox: None,
                stdout: WorkerOutput::default(),
                stderr: WorkerOutput::default(),
                remote: Vec::new(),
                heartbeat: crate::remote::DEFAULT_HEARTBEAT,
                queue_bound: None,
                shared_memory_min: crate::shm::SHARED_MIN,
            },
            initializer: Ok(()),
            preload: Ok(()),
            env_clear: false,
            env_keys: Vec::new(),
        }
    }

    /// The number of local worker processes. Default: the number of CPUs
    /// ([`std::thread::available_parallelism`]). Workers on other machines are added
    /// with [`remote`](Self::remote); with some, `n` may be 0.
    pub fn processes(mut self, n: usize) -> Self {
        self.config.processes = n;
        self
    }

    /// Adds `n` workers on other machines, started by `launcher` (`ssh HOST`, `srun`,
    /// a command prefix: see [`Launcher`](crate::Launcher)), after the local ones.
    /// They run the same tasks with the same guarantees, over their launcher's stdin
    /// and stdout: a crash fails only its task, with the remote pid and exit status;
    /// timeouts, aborts and `max_tasks_per_child` kill or retire the remote worker;
    /// a lost link (the launcher ended, or silent for the [`heartbeat`](Self::heartbeat)
    /// bound) fails the task in flight on it with
    /// [`TaskError::LinkLost`](crate::TaskError::LinkLost), requeues the rest, and a
    /// replacement is started with back-off. When the pool is dropped or its process
    /// dies, the link ends and the remote worker, with every process it started, is
    /// killed by its keeper at once. Call it again for more groups.
    ///
    /// Replies of remote workers come over their link: no shared memory, no polling.
    pub fn remote(mut self, launcher: crate::Launcher, n: usize) -> Self {
        if n > 0 {
            self.config.remote.push((launcher, n));
        }
        self
    }

    /// How long the link to a remote worker may stay silent before it is lost: the
    /// worker's end sends a heartbeat every third of it. Default:
    /// [`DEFAULT_HEARTBEAT`](crate::DEFAULT_HEARTBEAT) (10 s).
    ///
    /// # Panics
    ///
    /// If `bound` is under 30 ms.
    #[track_caller]
    pub fn heartbeat(mut self, bound: Duration) -> Self {
        assert!(
            bound >= Duration::from_millis(30),
            "the heartbeat bound must be at least 30 ms"
        );
        self.config.heartbeat = bound;
        self
    }

    /// The pool's name, shown in its processes' command lines: a worker's `argv[0]` is
    /// `procpool-worker[name]` and the fork server's `procpool-forkserver[name]`, so
    /// that `ps -f` and `pgrep -f` tell one pool's processes from another's. (Their
    /// command names, which `ps`, `top` and `pgrep` show by default, are
    /// `procpool-worker` and `procpool-server` in every pool: the kernel keeps 15
    /// bytes of those.) The first 32 bytes of `name` are kept, control characters
    /// replaced by `?`. A [`Fork`](StartMethod::Fork) worker keeps the command line of
    /// the program it was forked from, and takes only the command name. Default: no
    /// name (`procpool-worker`, `procpool-forkserver`).
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.config.child.label = crate::start::Label::new(name.as_ref());
        self
    }

    /// Bounds the pool's queue: at most `n` tasks may be **in the pool** at once, that
    /// is submitted and not yet resolved, whether they wait in the queue or run on a
    /// worker. Default: no bound.
    ///
    /// Then, as with a bounded Tokio `mpsc` channel, submitting has two forms:
    ///
    /// - **Backpressure.** [`apply`](Pool::apply), [`apply_async`](Pool::apply_async),
    ///   [`map`](Pool::map), [`imap`](Pool::imap) and the rest wait for room (an async
    ///   wait, first come first served) and never fail for want of it. (`apply_async`
    ///   returns at once, so it cannot slow its caller down: its task waits for room
    ///   in a Tokio task of its own, held in memory outside the pool. To push back on
    ///   a producer, await [`apply`](Pool::apply) or use `try_apply_async`.)
    /// - **Load shedding.** [`try_apply`](Pool::try_apply) and
    ///   [`try_apply_async`](Pool::try_apply_async) fail at once with
    ///   [`TaskError::QueueFull`](crate::TaskError::QueueFull) when the bound is reached:
    ///   the "503 Service Unavailable" of a service (see the `service` example).
    ///
    /// **Why tasks in the pool, not only the queued ones.** What a service protects by
    /// shedding load is the latency of the requests it accepts and the memory they
    /// hold. A request admitted behind `k` others waits for about `k / processes` task
    /// times, and `k` is below `n`: so `n` bounds that wait (about `n / processes` task
    /// times), and the arguments held, whatever the tasks do; a task that hangs until
    /// its timeout still holds its place, as it holds its worker. It is also the count
    /// of admission control (Tower's `ConcurrencyLimit` with `LoadShed`). Choose `n` at
    /// least `processes`, or workers stay idle: `processes` plus the queue a request
    /// may wait behind.
    ///
    /// **What counts.** Each task counts once: an `apply` takes one place; the `map`
    /// family takes one place per item as it feeds its input, so a `map` larger than
    /// the bound waits for room item by item rather than failing (and a `map` or
    /// stream whose chunks are waiting in the queue holds their places). A place is
    /// given back when the task resolves, just before its caller hears of it (a value,
    /// a panic, a crash, a timeout), or when it is cancelled (a queued task whose
    /// handle or future is dropped or aborted, a stream dropped), and on
    /// [`close`](Pool::close) and [`terminate`](Pool::terminate) for the tasks waiting
    /// for room, which fail with [`TaskError::Closed`](crate::TaskError::Closed) or
    /// [`TaskError::Terminated`](crate::TaskError::Terminated). A running task whose
    /// handle is dropped runs on, detached, and keeps its place until it ends.
    /// [`PoolStats::admitted`](crate::PoolStats::admitted) is the number of places
    /// taken, [`PoolStats::rejected`](crate::PoolStats::rejected) the tasks refused.
    ///
    /// # Panics
    ///
    /// If `n` is 0, or above Tokio's semaphore limit (`usize::MAX >> 3`).
    #[track_caller]
    pub fn queue_bound(mut self, n: usize) -> Self {
        assert!(n > 0, "queue_bound must be at least 1");
        assert!(
            n <= tokio::sync::Semaphore::MAX_PERMITS,
            "queue_bound must be at most {}",
            tokio::sync::Semaphore::MAX_PERMITS
        );
        self.config.queue_bound = Some(n);
        self
    }

    /// From what size a task's one [`Bytes`](bytes::Bytes) argument travels from the
    /// pool to a local worker in shared memory instead of through the worker's socket.
    /// Default: `usize::MAX`, off. (Arguments under 64 KiB always go through the
    /// socket.)
    ///
    /// The argument is copied once into a new `memfd`, sealed against any change
    /// (Linux file seals) and passed with the job; the worker maps it read-only, and
    /// the task's `Bytes` is a view of that memory. A `Bytes` result that is a view
    /// of its argument (the argument itself, or a slice of it) goes back in the same
    /// memfd, and the caller's result is a view too: no copy at all. Any other
    /// result goes through the socket. The pool checks the seals and the size of
    /// every memfd a worker passes before it maps it, so a worker can neither change
    /// the bytes under a caller's `Bytes` nor make the pool read outside them; one
    /// that passes anything else fails its task and is replaced. Workers on other
    /// machines (see [`remote`](Self::remote)) and [`Transport::Stream`](crate::Transport::Stream)
    /// keep the bytes in the stream. `Vec<u8>` always keeps to the socket.
    ///
    /// **When to turn it on.** Measured on a 2-vCPU machine (BENCHMARKS.md), a fresh
    /// memfd per payload pays off where the worker returns a view of its argument
    /// without reading all of it (a 16 MiB echo 1.2-1.3x the socket's speed), and
    /// where memory counts more than speed: the worker holds the argument once,
    /// shared with the pool, instead of in its read buffer and a decoded copy. A task
    /// that reads its whole argument runs slower this way (a digest 0.71-0.97x, a copy
    /// 0.52-0.81x, from 1 to 16 MiB): reaching a new mapping's pages costs more than
    /// copying into a warm buffer. The pool checks the seals and the
    /// size of every memfd a worker passes before it maps it, so a worker can neither
    /// change the bytes under a caller's `Bytes` nor make the pool read outside them;
    /// one that passes anything else fails its task and is replaced. Workers on other
    /// machines (see [`remote`](Self::remote)) and [`Transport::Stream`](crate::Transport::Stream) keep the
    /// bytes in the stream.
    pub fn shared_memory_min(mut self, bytes: usize) -> Self {
        self.config.shared_memory_min = bytes.max(1);
        self
    }

    /// How workers are started. Default: [`StartMethod::ForkServer`].
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.config.start_method = method;
        self
    }

    /// Retires a worker after it has run `n` jobs (a chunk of `map` counts as one, as
    /// in Python) and starts a fresh one in its place: the cure for leaks and global
    /// state. Default: workers live as long as the pool.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    #[track_caller]
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        assert!(n > 0, "max_tasks_per_child must be at least 1");
        self.config.max_tasks_per_child = Some(n);
        self
    }

    /// Runs `f(arg)` once in every worker, before its first task (Python's
    /// `initializer` and `initargs`). If it panics, the worker does not start: `build`
    /// fails with the panic's message. Default: none.
    pub fn initializer<A>(mut self, f: fn(A), arg: A) -> Self
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        let hook = encode_hook(f, arg);
        self.initializer = hook.as_ref().map(drop).map_err(Clone::clone);
        self.config.initializer = hook.ok();
        self
    }

    /// Runs `f(arg)` once in the fork server, before it forks any worker, so that every
    /// worker starts with what it loaded (a big table, say), shared copy-on-write. Only
    /// for [`StartMethod::ForkServer`]; a panic in it fails `build`. Default: none.
    pub fn forkserver_preload<A>(mut self, f: fn(A), arg: A) -> Self
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        let hook = encode_hook(f, arg);
        self.preload = hook.as_ref().map(drop).map_err(Clone::clone);
        self.config.preload = hook.ok();
        self
    }

    /// The largest frame, in bytes, that may cross a worker's channel: one job's
    /// encoded arguments or its results. A task whose argument or result is larger
    /// fails with [`TaskError::TooLarge`](crate::TaskError::TooLarge); the worker and
    /// the pool go on serving. Default: [`DEFAULT_MAX_FRAME_LEN`] (256 MiB).
    ///
    /// # Panics
    ///
    /// If `bytes` is below 1 KiB or above 4 GiB - 1 (the length field has 32 bits).
    #[track_caller]
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        assert!(
            (1024..=u32::MAX as usize).contains(&bytes),
            "max_frame_len must be between 1 KiB and 4 GiB - 1"
        );
        self.config.max_frame_len = bytes;
        self
    }

    /// A timeout for every task (every chunk, for the `map` family), unless the call
    /// sets its own. It counts from when a worker starts the task; when it expires the
    /// worker is killed (see [`kill_grace`](PoolBuilder::kill_grace)) and replaced, and
    /// the task fails with [`TaskError::TimedOut`](crate::TaskError::TimedOut).
    /// Default: none.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// When a task times out, send its worker `SIGTERM` and wait this long before
    /// `SIGKILL`. Default: `SIGKILL` at once.
    pub fn kill_grace(mut self, grace: Duration) -> Self {
        self.config.kill_grace = Some(grace);
        self
    }

    /// Caps each worker's address space at `bytes` (`RLIMIT_AS`). An allocation past it
    /// fails, which in Rust aborts the worker: the task it was running fails with
    /// [`TaskError::MemoryLimit`](crate::TaskError::MemoryLimit), and the worker is
    /// replaced. Address space counts reservations too (thread stacks, allocator
    /// arenas), so leave room above the memory a task really uses. Default: no limit.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.config.child.memory_limit = Some(bytes);
        self
    }

    /// Runs the workers at this niceness (`setpriority`; 0 is normal, 19 the lowest
    /// priority), so CPU work in the pool yields to the service's own threads. Raising
    /// priority (negative values) needs privileges. Default: inherited.
    pub fn niceness(mut self, nice: i32) -> Self {
        self.config.child.nice = Some(nice);
        self
    }

    /// How many jobs a worker may be sent ahead while its jobs are short (under about
    /// 100 µs), so that it never waits a round trip for the next one: as many as make
    /// about 2 ms of its work, up to this bound. Workers whose jobs take longer get at
    /// most two, and one past 2 ms, so long jobs do not queue behind each other in one
    /// worker. A worker that crashes fails only the job it was running; the jobs sent
    /// ahead go back to the queue. A deep pipeline is refilled when half empty, so
    /// that a worker wakes for a batch of jobs. Default: 512.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    #[track_caller]
    pub fn pipeline_depth(mut self, n: usize) -> Self {
        assert!(n > 0, "pipeline_depth must be at least 1");
        self.config.pipeline = n;
        self
    }

    /// Where the pool polls for what comes next instead of sleeping until woken, and
    /// for how long: see [`Polling`](crate::Polling) for each place and its cost.
    /// Default: [`Polling::spin`](crate::Polling::spin)`(20 µs)` when `processes` is
    /// below the number of CPUs, and [`Polling::OFF`](crate::Polling::OFF) otherwise.
    pub fn polling(mut self, polling: crate::Polling) -> Self {
        self.config.polling = Some(polling);
        self
    }

    /// Shorthand for [`polling`](Self::polling)`(`[`Polling::spin`](crate::Polling::spin)`(spin))`:
    /// callers and drivers poll for up to `spin`, workers for 2.5 times as long.
    /// `Duration::ZERO` turns polling off.
    pub fn spin(self, spin: Duration) -> Self {
        self.polling(crate::Polling::spin(spin))
    }

    /// How the pool talks to its workers: see [`Transport`](crate::Transport).
    /// Default: [`Transport::Local`](crate::Transport::Local).
    pub fn transport(mut self, transport: crate::Transport) -> Self {
        self.config.transport = Some(transport);
        self
    }

    /// Shuts every worker in `sandbox` before its first task, after its initializer
    /// (which runs outside it, and may load what the tasks need): for tasks that handle
    /// hostile input. See [`Sandbox`](crate::Sandbox) for what a sandboxed worker can
    /// and cannot do. With a sandbox, workers keep only the environment variables in
    /// [`SANDBOX_ENV`](crate::SANDBOX_ENV) and those given to [`env`](Self::env),
    /// unless it [allows the parent's](crate::Sandbox::allow_parent_env).
    ///
    /// `build` fails if the kernel lacks a feature the sandbox needs (it names which),
    /// unless the sandbox [allows a weaker one](crate::Sandbox::allow_weaker), or if an
    /// allowed path does not exist. Default: no sandbox.
    pub fn sandbox(mut self, sandbox: crate::Sandbox) -> Self {
        self.config.sandbox = Some(sandbox);
        self
    }

    /// Starts workers with an empty environment but for the keys given to
    /// [`env`](Self::env): the service's secrets (tokens, passwords in variables) are
    /// not theirs to see. With [`Spawn`](StartMethod::Spawn) the workers never have
    /// them; with the fork start methods each worker removes them, and blanks them in
    /// its memory, before its initializer runs. (A [`Fork`](StartMethod::Fork) worker
    /// still holds a copy of all the rest of the service's memory.) Usable without a
    /// sandbox. Default: workers inherit the whole environment, or with a
    /// [sandbox](Self::sandbox) keep [`SANDBOX_ENV`](crate::SANDBOX_ENV).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// Lets workers keep the environment variable `key` (with its value in this
    /// process when workers start) where their environment is cleared: after
    /// [`env_clear`](Self::env_clear) or with a [sandbox](Self::sandbox). Without
    /// either, workers inherit every variable anyway.
    pub fn env(mut self, key: impl Into<String>) -> Self {
        self.env_keys.push(key.into());
        self
    }

    /// Where the workers' standard output goes (and the fork server's). Default:
    /// [`WorkerOutput::Inherit`], where this process's goes, through a description of
    /// the worker's own. No choice lets a worker change this process's descriptors;
    /// see [`WorkerOutput`].
    pub fn stdout(mut self, output: WorkerOutput) -> Self {
        self.config.stdout = output;
        self
    }

    /// Where the workers' standard error goes (and the fork server's), as for
    /// [`stdout`](Self::stdout). Default: [`WorkerOutput::Inherit`].
    pub fn stderr(mut self, output: WorkerOutput) -> Self {
        self.config.stderr = output;
        self
    }

    /// How long a new worker may take to start, answer its handshake and run its
    /// initializer before it is killed and reported. Default: 30 s.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.config.startup_timeout = timeout;
        self
    }

    /// Builds the pool: starts every worker and waits until each has answered its
    /// handshake and run its initializer.
    ///
    /// # Errors
    ///
    /// If a worker cannot be started, does not answer its handshake within the
    /// [`startup_timeout`](PoolBuilder::startup_timeout), runs another build, or its
    /// initializer panics; if the initializer's argument cannot be encoded; if this
    /// process is itself a worker that did not call [`init`](crate::init) first; if
    /// it is not called within a Tokio runtime; or if the [sandbox](Self::sandbox)
    /// cannot be applied (a missing kernel feature, named; a missing path; an
    /// initializer that left threads running). Workers already started are killed and
    /// reaped.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future kills and reaps the workers started so far.
    pub async fn build(self) -> Result<Pool, BuildError> {
        if std::env::var_os(ENV_WORKER).is_some() {
            return Err(BuildError::new(
                BuildErrorKind::InWorker,
                "this process was started as a procpool worker but did not call \
                 procpool::init() first in main; refusing to start a pool from it",
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::new(
                BuildErrorKind::NoRuntime,
                "a pool must be built within a Tokio runtime",
            ));
        }
        if let Err(why) = self.initializer {
            return Err(BuildError::new(
                BuildErrorKind::Task,
                format!("bad initializer: {why}"),
            ));
        }
        if let Err(why) = self.preload {
            return Err(BuildError::new(
                BuildErrorKind::Task,
                format!("bad preload hook: {why}"),
            ));
        }
        if self.config.slots() == 0 {
            return Err(BuildError::new(
                BuildErrorKind::Config,
                "a pool needs at least one worker: processes(0) and no remote workers",
            ));
        }
        if crate::worker::is_daemon() {
            return Err(BuildError::new(
                BuildErrorKind::Daemon,
                "daemonic processes are not allowed to have children: this is a pool \
                 worker or a daemon Process",
            ));
        }
        if let Some(sandbox) = &self.config.sandbox {
            sandbox
                .spec()
                .check()
                .map_err(|why| BuildError::new(BuildErrorKind::Sandbox, why))?;
        }
        // Computed once per process; do it before the workers need it.
        let _ = build_id();
        let mut config = self.config;
        config.env =
            crate::sandbox::env_policy(self.env_clear, &self.env_keys, config.sandbox.as_ref());
        let (polling, transport) = crate::policy::test_overrides();
        let processes = config.processes;
        config.polling.get_or_insert_with(|| {
            polling.unwrap_or_else(|| crate::Polling::default_for(processes))
        });
        config.transport = config.transport.or(transport);
        if let Some(launcher) = crate::remote::test_launcher() {
            if config.remote.is_empty() {
                let local = std::mem::take(&mut config.processes);
                config.remote.push((launcher, local));
            }
        }
        let shared = Arc::new(Shared::new(config));
        let pool = Pool::from_shared(shared.clone());
        // (A pool of remote workers alone has no use for a fork server.)
        if let (Starter::ForkServer(server), 1..) = (&shared.starter, shared.config.processes) {
            if let Err(e) = server.ensure_started(shared.config.child.label).await {
                pool.terminate().await;
                return Err(BuildError::with_source(
                    BuildErrorKind::Start,
                    e.to_string(),
                    e,
                ));
            }
        }
        let mut first = Vec::new();
        for slot in 0..shared.config.slots() {
            let (tx, rx) = oneshot::channel();
            shared
                .tracker
                .spawn(run_slot(shared.clone(), slot, Some(tx)));
            first.push(rx);
        }
        for rx in first {
            let failure = match rx.await {
                Ok(Ok(())) => continue,
                Ok(Err(why)) => why,
                Err(_) => "the pool's supervisor stopped during start-up".to_string(),
            };
            pool.terminate().await;
            return Err(BuildError::new(BuildErrorKind::Start, failure));
        }
        Ok(pool)
    }
}
