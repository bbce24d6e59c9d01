//! Submitting work: a job's frame made ready, and jobs put on the queue (or run at once
//! through the direct path).
//!
//! [`Submitter`] is what the user API holds ([`Pool`](crate::Pool), its futures and
//! streams): the last one to go terminates the pool.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::PollSemaphore;

use crate::error::{Payload, TaskError};
use crate::protocol::codec::encode_chunk;
use crate::protocol::job::{write_byte_string_chunk, write_job_frame, FrameError};
use crate::protocol::FnRef;
use crate::queue::{AbortSignal, Admission, ChunkRun, Job, Release, Reply, ReplyTo};
use crate::shared::{Counters, Shared};
use crate::shm::SharedArg;
use crate::trace::event;

/// A handle on the pool's shared state that keeps the pool alive; see the module docs.
#[derive(Clone)]
pub(crate) struct Submitter {
    inner: Arc<Owner>,
}

/// The last `Submitter` to go terminates the pool.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.start_terminate();
    }
}

impl Submitter {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Submitter {
            inner: Arc::new(Owner { shared }),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// A new job id.
    pub(crate) fn next_id(&self) -> u64 {
        self.shared().next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The pool's shared state, to keep without keeping the pool alive (a task waiting
    /// for room under the queue bound does).
    /// Whether jobs' large byte strings may travel in shared memory: the pool's
    /// workers are local, on channels that pass descriptors (see [`crate::shm`]).
    pub(crate) fn shares_memory(&self) -> bool {
        let config = &self.shared().config;
        config.processes > 0 && config.transport() == crate::Transport::Local
    }

    pub(crate) fn shared_arc(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Queues a stream's run of chunks under one lock of the queue.
    pub(crate) fn submit_chunks(&self, chunks: ChunkRun) {
        let shared = self.shared();
        let tasks = shared.queue.push_chunks(chunks);
        event!(tracing::Level::TRACE, tasks, "chunks submitted");
        Counters::add(&shared.counters.submitted, tasks);
    }
}

/// Queues a single task's job, whose reply goes to `tx` and whose place under the
/// queue bound is `admission`. With `direct`, for a caller that is about to wait for
/// the result, an idle worker of tiny tasks may run the job at once, in this call (see
/// [`crate::direct`]; bounded by the pool's `spin`).
pub(crate) fn submit_one(
    shared: &Shared,
    job: JobFrame,
    timeout: Option<Duration>,
    abort: Arc<AbortSignal>,
    (admission, tx): (Admission, oneshot::Sender<Reply>),
    direct: bool,
) {
    let reply = ReplyTo::One(tx, Release(admission));
    let job = match job.frame {
        Ok(frame) => Job {
            id: job.id,
            frame: frame.into(),
            tail: job.tail,
            memfd: job.memfd,
            tasks: job.tasks,
            timeout,
            abort: Some(abort),
            reply,
        },
        Err(e) => return reply.send(Err(e)),
    };
    let tasks = job.tasks;
    event!(tracing::Level::TRACE, job = job.id, tasks, "job submitted");
    let job = match direct {
        true => {
            // Counted first, so that stats never show a task done before it was
            // submitted.
            let submitted = &shared.counters.submitted;
            Counters::add(submitted, tasks as u64);
            match crate::direct::try_direct(shared, job) {
                Ok(()) => return,
                Err(job) => {
                    submitted.fetch_sub(tasks as u64, Ordering::Relaxed);
                    job
                }
            }
        }
        false => job,
    };
    match shared.queue.push(job) {
        Ok(()) => Counters::add(&shared.counters.submitted, tasks as u64),
        Err(job) => job.fail(TaskError::Closed),
    }
}

/// A job's frame, ready to write: a 4-byte length, the header, the chunk of arguments,
/// encoded straight into one buffer.
#[derive(Debug)]
pub(crate) struct JobFrame {
    pub(crate) id: u64,
    tasks: usize,
    frame: Result<Vec<u8>, TaskError>,
    /// See [`Job::tail`](crate::queue::Job).
    tail: Bytes,
    /// See [`Job::memfd`](crate::queue::Job).
    memfd: Option<Arc<SharedArg>>,
}

/// Appends job `id`'s frame to `out`: a 4-byte length, the header, the chunk of
/// arguments. On error `out` is left as it was.
pub(crate) fn encode_frame<A: Serialize + 'static>(
    sub: &Submitter,
    id: u64,
    func: Result<FnRef, String>,
    items: &[A],
    out: &mut Vec<u8>,
) -> Result<(), TaskError> {
    encode_frame_with(sub, id, func, out, 0, |out| encode_chunk(items, out))
}

/// Appends job `id`'s frame to `out` (see [`write_job_frame`]), as a caller's error.
fn encode_frame_with(
    sub: &Submitter,
    id: u64,
    func: Result<FnRef, String>,
    out: &mut Vec<u8>,
    tail: usize,
    chunk: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<(), TaskError> {
    let func = func.map_err(TaskError::Unsupported)?;
    let limit = sub.shared().config.max_frame_len;
    write_job_frame(id, func, limit, out, tail, chunk).map_err(|e| match e {
        FrameError::Arguments(message) => TaskError::Codec {
            what: Payload::Argument,
            message,
        },
        FrameError::TooLarge { size, limit } => TaskError::TooLarge {
            what: Payload::Argument,
            size,
            limit,
        },
    })
}

/// Byte-string arguments from this size on travel without a copy (see [`JobFrame::one`]).
const TAIL_MIN: usize = 64 << 10;

impl JobFrame {
    pub(crate) fn encode<A: Serialize + 'static>(
        sub: &Submitter,
        func: Result<FnRef, String>,
        items: &[A],
    ) -> Self {
        let id = sub.next_id();
        // Room for the length, the header and small arguments, so that a tiny job
        // costs one allocation rather than one and a few regrowths.
        let mut frame = Vec::with_capacity(64 + std::mem::size_of_val(items));
        let frame = encode_frame(sub, id, func, items, &mut frame).map(|()| frame);
        JobFrame {
            id,
            tasks: items.len(),
            frame,
            tail: Bytes::new(),
            memfd: None,
        }
    }

    /// The frame of a single task. A large `Vec<u8>` or `Bytes` argument is not copied
    /// into the frame but written from where it is: the frame holds the header and the
    /// byte string's length, and the argument follows it on the wire as it is (the
    /// bytes are the same as `encode`'s).
    pub(crate) fn one<A: Serialize + 'static>(
        sub: &Submitter,
        func: Result<FnRef, String>,
        arg: A,
    ) -> Self {
        let is_bytes = std::any::TypeId::of::<A>() == std::any::TypeId::of::<Bytes>();
        let arg: Box<dyn std::any::Any> = Box::new(arg);
        let bytes = match arg.downcast::<Vec<u8>>() {
            Ok(vec) if vec.len() >= TAIL_MIN => Ok(Bytes::from(*vec)),
            Ok(vec) => Err(vec as Box<dyn std::any::Any>),
            Err(arg) => match arg.downcast::<Bytes>() {
                Ok(bytes) if bytes.len() >= TAIL_MIN => Ok(*bytes),
                Ok(bytes) => Err(bytes as Box<dyn std::any::Any>),
                Err(arg) => Err(arg),
            },
        };
        let tail = match bytes {
            Ok(tail) => tail,
            Err(arg) => {
                let arg = arg.downcast::<A>().expect("the argument's own type");
                return JobFrame::encode(sub, func, std::slice::from_ref(&*arg));
            }
        };
        // A chunk of one byte string: a sequence length of 1, the string's length;
        // the string itself follows on the wire.
        let id = sub.next_id();
        let mut frame = Vec::with_capacity(64);
        let frame = encode_frame_with(sub, id, func, &mut frame, tail.len(), |out| {
            write_byte_string_chunk(tail.len(), out);
            Ok(())
        })
        .map(|()| frame);
        // Only a `Bytes` argument: a `Vec<u8>` is copied out of the mapping in the
        // worker anyway, and a fresh memfd's pages cost more than the socket's
        // buffers (measured: see `shared_memory_min`).
        let memfd = match &frame {
            Ok(frame)
                if is_bytes
                    && tail.len() >= sub.shared().config.shared_memory_min
                    && sub.shares_memory() =>
            {
                shared_arg(frame, &tail).map(Arc::new)
            }
            _ => None,
        };
        JobFrame {
            id,
            tasks: 1,
            frame,
            tail,
            memfd,
        }
    }
}

/// A job's large byte-string argument copied into a sealed memfd, with the frame of
/// the shared form (`frame` is the job's own, which the argument's bytes follow on
/// the wire); `None` where no memfd is to be had (the job then goes as it is).
fn shared_arg(frame: &[u8], arg: &[u8]) -> Option<SharedArg> {
    let fd = crate::shm::seal(arg).ok()?;
    // The same header with the `SharedJob` tag, its length without the bytes.
    let mut shared = frame.to_vec();
    let len = u32::try_from(shared.len().checked_sub(4)?).ok()?;
    shared[..4].copy_from_slice(&len.to_be_bytes());
    *shared.get_mut(4)? = crate::protocol::SHARED_JOB_TAG;
    Some(SharedArg { fd, frame: shared })
}

/// A single task waiting for room under the queue bound, submitted once it has a
/// place: polled by its handle, or by a task of its own (see
/// [`Apply::spawn`](crate::Apply::spawn)). It waits in the semaphore's line, first come
/// first served, from its first poll.
#[derive(Debug)]
pub(crate) struct WaitForRoom {
    room: PollSemaphore,
    shared: Arc<Shared>,
    task: Option<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    job: JobFrame,
    timeout: Option<Duration>,
    abort: Arc<AbortSignal>,
    admission: Admission,
    tx: oneshot::Sender<Reply>,
    direct: bool,
}

impl Waiting {
    /// Whether nobody waits for the task any more: its handle was dropped or aborted.
    fn is_abandoned(&self) -> bool {
        self.abort.is_aborted() || self.tx.is_closed()
    }
}

impl WaitForRoom {
    pub(crate) fn new(
        shared: Arc<Shared>,
        room: Arc<tokio::sync::Semaphore>,
        (job, timeout): (JobFrame, Option<Duration>),
        abort: Arc<AbortSignal>,
        (admission, tx): (Admission, oneshot::Sender<Reply>),
        direct: bool,
    ) -> Self {
        WaitForRoom {
            room: PollSemaphore::new(room),
            shared,
            task: Some(Waiting {
                job,
                timeout,
                abort,
                admission,
                tx,
                direct,
            }),
        }
    }

    /// Ready once the task is submitted, or given up: its handle is gone or aborted
    /// (then its place, if it got one, is released at once), or the pool closed while
    /// it waited (then its reply says `Closed` or `Terminated`).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(task) = &self.task else {
            return Poll::Ready(());
        };
        if task.is_abandoned() {
            self.task = None;
            return Poll::Ready(());
        }
        let permit = ready!(self.room.poll_acquire(cx));
        let Some(task) = self.task.take() else {
            return Poll::Ready(());
        };
        let Some(permit) = permit else {
            let _ = task.tx.send(Err(self.shared.closed_error()));
            return Poll::Ready(());
        };
        task.admission.add(permit);
        // Looked at again after the place is in the admission: a handle dropped or
        // aborted meanwhile either released it already or is seen here.
        if task.is_abandoned() {
            task.admission.release();
            return Poll::Ready(());
        }
        submit_one(
            &self.shared,
            task.job,
            task.timeout,
            task.abort,
            (task.admission, task.tx),
            task.direct,
        );
        Poll::Ready(())
    }
}
