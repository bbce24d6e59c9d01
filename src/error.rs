//! The errors a task and a pool can meet.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A panic that happened in a worker process, carried back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePanic {
    message: String,
    location: Option<String>,
}

impl RemotePanic {
    pub(crate) fn new(message: String, location: Option<String>) -> Self {
        RemotePanic { message, location }
    }

    /// The panic message (the formatted `panic!` arguments), or a placeholder when the
    /// payload was not a string.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `file:line:column` of the `panic!`, when known.
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }
}

impl fmt::Display for RemotePanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "panicked at {loc}: {}", self.message),
            None => write!(f, "panicked: {}", self.message),
        }
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WorkerExit {
    /// It exited with this status code.
    Code(i32),
    /// It was killed by this signal number.
    Signal(i32),
    /// It ended, but how is not known: the fork server that was its parent died
    /// before reporting it.
    Unknown,
}

impl WorkerExit {
    /// The signal's name, such as `SIGSEGV`, when the worker was killed by a signal.
    pub fn signal_name(&self) -> Option<&'static str> {
        match self {
            WorkerExit::Signal(n) => nix::sys::signal::Signal::try_from(*n)
                .ok()
                .map(|s| s.as_str()),
            WorkerExit::Code(_) | WorkerExit::Unknown => None,
        }
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerExit::Code(c) => write!(f, "exit code {c}"),
            WorkerExit::Signal(n) => match self.signal_name() {
                Some(name) => write!(f, "signal {n} ({name})"),
                None => write!(f, "signal {n}"),
            },
            WorkerExit::Unknown => f.write_str("unknown exit status"),
        }
    }
}

/// Which side of a task a size or encoding error concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// The task's argument(s), sent to the worker.
    Argument,
    /// The task's result, sent back.
    Result,
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Payload::Argument => "argument",
            Payload::Result => "result",
        })
    }
}

/// Why a task did not produce its result.
///
/// The task's own return value never lands here: a task returning `Result<T, E>` gives
/// the caller `Result<Result<T, E>, TaskError>`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; the worker caught it and goes on serving.
    Panicked(RemotePanic),
    /// The worker process died while running the task (a segfault, an abort, a call to
    /// `exit`, a kill from outside).
    WorkerDied {
        /// The worker's process id.
        pid: u32,
        /// How it ended.
        exit: WorkerExit,
    },
    /// The worker died while running the task, in the way a worker dies when it runs
    /// out of the address space that
    /// [`PoolBuilder::memory_limit`](crate::PoolBuilder::memory_limit) allows it: an
    /// abort (Rust's reaction to a failed allocation), a segfault (a stack that could
    /// not grow) or a kill. Reported instead of [`WorkerDied`](TaskError::WorkerDied)
    /// only in pools with a memory limit.
    MemoryLimit {
        /// The worker's process id.
        pid: u32,
        /// How it ended.
        exit: WorkerExit,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The task ran longer than its timeout; its worker was killed and replaced.
    TimedOut {
        /// The worker's process id.
        pid: u32,
        /// The timeout that expired.
        after: Duration,
    },
    /// The task was cancelled before it finished (see [`TaskHandle::abort`](crate::TaskHandle::abort)).
    Cancelled,
    /// The task was submitted to a pool that was closed or terminated (or waited for
    /// room under its [queue bound](crate::PoolBuilder::queue_bound) until it closed).
    Closed,
    /// The pool's [queue bound](crate::PoolBuilder::queue_bound) was reached: the
    /// task was refused at once, and nothing was submitted. Only the `try_` forms
    /// ([`Pool::try_apply`](crate::Pool::try_apply),
    /// [`Pool::try_apply_async`](crate::Pool::try_apply_async)) return it; a service
    /// answers it with "503 Service Unavailable" (and `Retry-After`). See
    /// [`is_queue_full`](TaskError::is_queue_full).
    QueueFull,
    /// The pool was terminated (or dropped) before the task finished.
    Terminated,
    /// An encoded argument or result exceeds the frame size limit; nothing was sent
    /// for it, and the worker goes on serving.
    TooLarge {
        /// Argument or result.
        what: Payload,
        /// The encoded size in bytes.
        size: usize,
        /// The configured limit ([`PoolBuilder::max_frame_len`](crate::PoolBuilder::max_frame_len)).
        limit: usize,
    },
    /// An argument or result could not be encoded or decoded.
    Codec {
        /// Argument or result.
        what: Payload,
        /// What the codec said.
        message: String,
    },
    /// The worker could not run the requested function: it is not part of the main
    /// executable (for example it lives in a dynamic library), or the worker runs
    /// another build.
    Unsupported(String),
    /// The worker sent something that breaks the protocol; it was killed and replaced.
    Protocol(String),
    /// No worker could be started to run the task.
    WorkerStart(String),
    /// The pool's own task for the worker running this task failed (a panic inside
    /// procpool, a bug, most likely set off by what the worker sent). The pool
    /// survived it: the worker was killed and replaced, and only the tasks sent to that
    /// worker failed with this error.
    Internal {
        /// The worker's process id.
        pid: u32,
        /// What the pool's task said when it failed.
        message: String,
    },
    /// The link to a worker on another machine (see
    /// [`PoolBuilder::remote`](crate::PoolBuilder::remote)) was lost while it ran the
    /// task: the launcher (`ssh`, `srun`) ended, or the link went silent for longer
    /// than the heartbeat bound. The worker's end kills the worker when its link ends;
    /// the pool started a replacement.
    LinkLost {
        /// The remote worker's process id (on its host).
        pid: u32,
        /// The host it ran on, as its keeper reported it.
        host: String,
        /// What was seen of the loss.
        reason: String,
    },
}

impl TaskError {
    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, TaskError::Panicked(_))
    }

    /// Whether the task hit its timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TaskError::TimedOut { .. })
    }

    /// Whether the task was refused because the pool's queue bound was reached
    /// ([`TaskError::QueueFull`]): the error a service turns into a 503.
    pub fn is_queue_full(&self) -> bool {
        matches!(self, TaskError::QueueFull)
    }

    /// Whether the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled)
    }

    /// Whether the worker running the task died (of any cause but a timeout or an
    /// abort).
    pub fn is_worker_died(&self) -> bool {
        matches!(
            self,
            TaskError::WorkerDied { .. } | TaskError::MemoryLimit { .. }
        )
    }

    /// Whether the link to the worker running the task (on another machine) was lost.
    pub fn is_link_lost(&self) -> bool {
        matches!(self, TaskError::LinkLost { .. })
    }

    /// The panic, when the task panicked.
    pub fn panic(&self) -> Option<&RemotePanic> {
        match self {
            TaskError::Panicked(p) => Some(p),
            _ => None,
        }
    }

    /// The panic as a payload for [`std::panic::resume_unwind`], when the task
    /// panicked: a `String` holding the panic's message (the worker's payload itself
    /// cannot cross processes), so that a caller can carry the task's panic on in its
    /// own thread, as it would a thread's. Otherwise the error itself, unchanged.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// fn boom(n: u32) -> u32 {
    ///     panic!("boom {n}")
    /// }
    /// let pool = procpool::Pool::builder().processes(1).build().await?;
    /// let err = pool.apply(boom, 7).await.unwrap_err();
    /// let payload = err.try_into_panic().expect("it panicked");
    /// assert_eq!(payload.downcast_ref::<String>().map(String::as_str), Some("boom 7"));
    /// // std::panic::resume_unwind(payload) would go on panicking here, with "boom 7".
    /// # pool.terminate().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// `self`, when the task did not panic.
    pub fn try_into_panic(self) -> Result<Box<dyn std::any::Any + Send + 'static>, TaskError> {
        match self {
            TaskError::Panicked(p) => Ok(Box::new(p.message)),
            other => Err(other),
        }
    }

    /// The panic as a payload for [`std::panic::resume_unwind`]: see
    /// [`try_into_panic`](Self::try_into_panic), which does not panic.
    ///
    /// # Panics
    ///
    /// If the task did not panic (as Tokio's `JoinError::into_panic` does).
    #[track_caller]
    pub fn into_panic(self) -> Box<dyn std::any::Any + Send + 'static> {
        match self.try_into_panic() {
            Ok(payload) => payload,
            Err(other) => panic!("TaskError::into_panic on an error that is not a panic: {other}"),
        }
    }

    /// The pid of the worker concerned, when the error is about one.
    pub fn pid(&self) -> Option<u32> {
        match self {
            TaskError::WorkerDied { pid, .. }
            | TaskError::MemoryLimit { pid, .. }
            | TaskError::TimedOut { pid, .. }
            | TaskError::Internal { pid, .. }
            | TaskError::LinkLost { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Panicked(p) => write!(f, "task {p}"),
            TaskError::WorkerDied { pid, exit } => {
                write!(f, "worker {pid} died running the task ({exit})")
            }
            TaskError::MemoryLimit { pid, exit, limit } => write!(
                f,
                "worker {pid} died running the task ({exit}), most likely out of memory: \
                 it is limited to {limit} bytes of address space"
            ),
            TaskError::TimedOut { pid, after } => {
                write!(f, "task timed out after {after:?}; worker {pid} was killed")
            }
            TaskError::Cancelled => f.write_str("task was cancelled"),
            TaskError::Closed => f.write_str("pool is closed"),
            TaskError::QueueFull => f.write_str("pool's queue is full"),
            TaskError::Terminated => f.write_str("pool was terminated before the task finished"),
            TaskError::TooLarge { what, size, limit } => write!(
                f,
                "task {what} is {size} bytes encoded, over the frame limit of {limit} bytes"
            ),
            TaskError::Codec { what, message } => {
                write!(f, "task {what} could not be encoded or decoded: {message}")
            }
            TaskError::Unsupported(why) => write!(f, "worker cannot run the task: {why}"),
            TaskError::Protocol(why) => write!(f, "worker broke the protocol: {why}"),
            TaskError::WorkerStart(why) => write!(f, "no worker could be started: {why}"),
            TaskError::Internal { pid, message } => write!(
                f,
                "the pool failed while it served worker {pid}, which was replaced: {message}"
            ),
            TaskError::LinkLost { pid, host, reason } => write!(
                f,
                "the link to worker {pid} on {host} was lost while it ran the task: {reason}"
            ),
        }
    }
}

impl std::error::Error for TaskError {}

/// What kind of failure a [`BuildError`] is: [`BuildError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BuildErrorKind {
    /// [`PoolBuilder::build`](crate::PoolBuilder::build) was not called within a Tokio
    /// runtime.
    NoRuntime,
    /// This process was started as a procpool worker but reached the program's `main`
    /// (a build that dropped procpool's constructor, without [`init`](crate::init) first
    /// in `main`): it refuses to start children.
    InWorker,
    /// This process is a daemon (a pool worker, or a daemon
    /// [`Process`](crate::Process)), and daemons may not have children.
    Daemon,
    /// A function or its argument cannot be sent to a child: an initializer, a preload
    /// hook or a `Process`'s function that is not in the main executable, or an
    /// argument that could not be encoded.
    Task,
    /// The [`Sandbox`](crate::Sandbox) cannot be applied here: a kernel feature it needs
    /// is missing, or a path it allows does not exist.
    Sandbox,
    /// A child could not be started, or did not become ready: a system call failed
    /// ([`source`](std::error::Error::source) is the [`std::io::Error`]), it did not
    /// answer its handshake in time, it runs another build, or its initializer or the
    /// fork server's preload hook panicked.
    Start,
    /// The builder's settings make no pool: no worker at all (`processes(0)` and no
    /// [`remote`](crate::PoolBuilder::remote) workers).
    Config,
}

impl fmt::Display for BuildErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildErrorKind::NoRuntime => "not within a Tokio runtime",
            BuildErrorKind::Config => "settings that make no pool",
            BuildErrorKind::InWorker => "started as a procpool worker",
            BuildErrorKind::Daemon => "a daemon may not have children",
            BuildErrorKind::Task => "a function or argument cannot be sent to a child",
            BuildErrorKind::Sandbox => "the sandbox cannot be applied",
            BuildErrorKind::Start => "a child could not be started",
        })
    }
}

/// Why a pool (or a [`Process`](crate::Process)) could not be built: a
/// [`kind`](BuildError::kind) to match on, a message for people (its `Display`), and
/// the underlying error as its [`source`](std::error::Error::source) where there is
/// one (an [`std::io::Error`] of a failed system call).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use procpool::BuildErrorKind;
/// fn init(_: ()) {
///     panic!("no database");
/// }
/// let err = procpool::Pool::builder()
///     .processes(1)
///     .initializer(init, ())
///     .build()
///     .await
///     .unwrap_err();
/// assert_eq!(err.kind(), BuildErrorKind::Start);
/// assert!(err.to_string().contains("no database"), "{err}");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BuildError {
    kind: BuildErrorKind,
    message: String,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BuildError {
    pub(crate) fn new(kind: BuildErrorKind, message: impl Into<String>) -> Self {
        BuildError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`, with `message` for people (which says
    /// what the source says too: the `Display` stands alone).
    pub(crate) fn with_source(
        kind: BuildErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BuildError {
            kind,
            message: message.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BuildErrorKind {
        self.kind
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
