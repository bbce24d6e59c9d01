//! The job model: one unit of work for a worker, and a stream's run of chunks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::error::TaskError;
use crate::queue::admission::Admission;
use crate::queue::cancel::AbortSignal;
use crate::queue::route::{FeedReply, Inbox, ReplyTo};
use crate::shm::SharedArg;
use crate::transport::Outgoing;

/// One unit of work for a worker: a chunk of one or more tasks.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: u64,
    /// The encoded `ToWorker::Job` frame: header and arguments (the length prefix
    /// counts `tail` too).
    pub(crate) frame: Bytes,
    /// The rest of the frame, when a large byte-string argument is sent as it is,
    /// without a copy; usually empty.
    pub(crate) tail: Bytes,
    /// The same large byte-string argument in a sealed memfd, for a local worker (see
    /// [`crate::shm`]): its frame then is the shared form's, and the memfd goes with it.
    pub(crate) memfd: Option<Arc<SharedArg>>,
    /// How many tasks the chunk holds.
    pub(crate) tasks: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) abort: Option<Arc<AbortSignal>>,
    pub(crate) reply: ReplyTo,
}

impl Job {
    /// Claims the job for a driver; false if nobody waits for it any more (its handle
    /// was dropped or aborted).
    /// The frame's length on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        self.frame.len() + self.tail.len()
    }

    pub(crate) fn claim(&self) -> bool {
        !self.reply.is_closed() && self.abort.as_ref().is_none_or(|a| a.take())
    }

    pub(crate) fn fail(self, error: TaskError) {
        self.reply.send(Err(error));
    }

    /// Takes this job's place in a stalled worker's pipeline for it, and gives back the
    /// job itself, to be sent elsewhere: the ghost keeps the frame (its bytes are on
    /// their way to the worker, which will skip them) and answers nobody.
    pub(crate) fn make_ghost(&mut self) -> Job {
        let ghost = Job {
            id: self.id,
            frame: self.frame.clone(),
            tail: self.tail.clone(),
            memfd: self.memfd.clone(),
            tasks: 0,
            timeout: None,
            abort: None,
            reply: ReplyTo::Nobody,
        };
        std::mem::replace(self, ghost)
    }

    /// Whether this is a ghost (see [`make_ghost`](Self::make_ghost)).
    pub(crate) fn is_ghost(&self) -> bool {
        matches!(self.reply, ReplyTo::Nobody)
    }
}

impl Outgoing for Job {
    fn parts(&self) -> [&[u8]; 2] {
        [&self.frame, &self.tail]
    }

    fn memfd(&self) -> Option<&SharedArg> {
        self.memfd.as_deref()
    }
}

/// A run of chunks of one `map`-family stream, queued as one entry: their frames lie
/// one after another in one buffer, and each is a few bytes here (a [`QueuedChunk`]); the
/// driver that takes one makes its [`Job`]. A job is two cache lines that would
/// otherwise be written by the stream's thread and read by a driver's.
#[derive(Debug)]
pub(crate) struct ChunkRun {
    pub(super) frames: Bytes,
    /// Where the next chunk's frame starts in `frames`.
    pub(super) offset: usize,
    pub(super) inbox: Arc<Inbox>,
    pub(super) timeout: Option<Duration>,
    pub(super) chunks: VecDeque<QueuedChunk>,
    /// The stream's places under the queue bound, from which each chunk taken takes
    /// its tasks' (see [`crate::queue::admission`]).
    pub(super) admission: Admission,
}

/// One chunk of [`ChunkRun`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueuedChunk {
    pub(crate) id: u64,
    /// Its sequence number in the stream.
    pub(crate) seq: u64,
    /// Its frame's length.
    pub(crate) len: u32,
    pub(crate) tasks: u32,
}

impl ChunkRun {
    /// The chunks `chunks` of the stream whose replies go to `inbox`, their frames
    /// one after another in `frames`.
    pub(crate) fn new(
        frames: Bytes,
        inbox: Arc<Inbox>,
        timeout: Option<Duration>,
        chunks: VecDeque<QueuedChunk>,
        admission: Admission,
    ) -> Self {
        ChunkRun {
            frames,
            offset: 0,
            inbox,
            timeout,
            chunks,
            admission,
        }
    }

    /// How many tasks the chunks hold.
    pub(crate) fn tasks(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.tasks)).sum()
    }

    /// The next chunk, as a job.
    pub(super) fn pop(&mut self) -> Option<Job> {
        let chunk = self.chunks.pop_front()?;
        let end = self.offset + chunk.len as usize;
        let frame = self.frames.slice(self.offset..end);
        self.offset = end;
        Some(Job {
            id: chunk.id,
            frame,
            tail: Bytes::new(),
            memfd: None,
            tasks: chunk.tasks as usize,
            timeout: self.timeout,
            abort: None,
            reply: ReplyTo::Feed(FeedReply::new(
                self.inbox.clone(),
                chunk.seq,
                self.admission.take(chunk.tasks as usize),
            )),
        })
    }

    /// Answers every chunk left with `error` (their places under the bound released
    /// first).
    pub(super) fn fail(&mut self, error: &TaskError) {
        self.release();
        let replies = self.chunks.drain(..).map(|c| (c.seq, Err(error.clone())));
        self.inbox.put(replies);
    }
}

impl ChunkRun {
    /// Releases the places under the bound of the chunks left, which will not run.
    pub(super) fn release(&self) {
        let tasks = usize::try_from(self.tasks()).unwrap_or(usize::MAX);
        drop(self.admission.take(tasks));
    }
}

impl Drop for ChunkRun {
    /// Chunks dropped unanswered (the pool's tasks were dropped with the runtime)
    /// tell their stream, as their jobs would (see [`FeedReply`]).
    fn drop(&mut self) {
        if !self.chunks.is_empty() {
            self.fail(&TaskError::Terminated);
        }
    }
}

/// A job a caller sent directly (see `crate::direct`) that the worker's driver must
/// see through.
#[derive(Debug)]
pub(crate) struct Handover {
    pub(crate) job: Job,
    pub(crate) sent_at: tokio::time::Instant,
    /// What of its frame is still to be written.
    pub(crate) unsent: Bytes,
    /// A reply the caller read but did not settle (it was not the expected one).
    pub(crate) reply: Option<BytesMut>,
}
