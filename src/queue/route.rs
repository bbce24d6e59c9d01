//! Where a job's reply goes: a single task's oneshot, or a `map`-family stream's inbox.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{AtomicWaker, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::error::TaskError;
use crate::protocol::results::Results;
use crate::queue::admission::Release;

/// What a job's caller receives: its results, or why there are none.
pub(crate) type Reply = Result<Results, TaskError>;

/// Where a job's reply goes.
#[derive(Debug)]
pub(crate) enum ReplyTo {
    /// A single task's handle, and the task's place under the queue bound (released
    /// just before the reply is sent).
    One(oneshot::Sender<Reply>, Release),
    /// A `map`-family stream, which receives every chunk's reply on one channel,
    /// tagged with the chunk's sequence number. (A channel per stream, not a oneshot
    /// per chunk: a `map` of 200,000 tasks would otherwise poll 200,000 futures.)
    Feed(FeedReply),
    /// Nobody: the job was taken back from a stalled worker and sent elsewhere (see
    /// [`Job::ghost`]); what the worker does with this copy is not heard.
    Nobody,
}

/// Where a `map`-family stream's chunks reply: one per stream. Replies are tagged
/// with their chunk's sequence number, and a driver hands over all it has for one
/// stream under one lock, with one wake-up (see [`Deliveries`]).
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    replies: Mutex<VecDeque<(u64, Reply)>>,
    waker: AtomicWaker,
    /// The stream is gone: nobody listens.
    closed: AtomicBool,
}

impl Inbox {
    pub(crate) fn put(&self, replies: impl IntoIterator<Item = (u64, Reply)>) {
        {
            // Under the lock that `close` takes: nothing is put in after it cleared.
            let mut inbox = self.replies.lock().unwrap_or_else(|e| e.into_inner());
            if self.is_closed() {
                return;
            }
            inbox.extend(replies);
        }
        self.waker.wake();
    }

    /// Answers the stream's chunk `seq` (outside any batch: see [`Deliveries`]).
    pub(crate) fn answer(&self, seq: u64, reply: Reply) {
        self.put([(seq, reply)]);
    }

    /// For the stream: moves every reply come so far into `out` (which it expects
    /// empty); `Pending` if none has.
    pub(crate) fn poll_take(
        &self,
        out: &mut VecDeque<(u64, Reply)>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        for attempt in 0..2 {
            {
                let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
                if !replies.is_empty() {
                    std::mem::swap(&mut *replies, out);
                    return Poll::Ready(());
                }
            }
            if attempt == 0 {
                // Then look again: a reply put in meanwhile woke nobody.
                self.waker.register(cx.waker());
            }
        }
        Poll::Pending
    }

    /// For the stream, when it goes: replies are dropped from now on.
    pub(crate) fn close(&self) {
        let mut inbox = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, Ordering::Relaxed);
        inbox.clear();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// A chunk's reply slot in a `map`-family stream. If it is dropped unused (the pool's
/// tasks were dropped with the runtime), the stream hears `Terminated`, so no stream
/// waits forever for a chunk.
#[derive(Debug)]
pub(crate) struct FeedReply {
    inbox: Arc<Inbox>,
    seq: u64,
    sent: bool,
    /// The chunk's tasks' places under the queue bound: released before the reply is
    /// handed over (or when it is dropped).
    permit: Option<OwnedSemaphorePermit>,
}

impl FeedReply {
    pub(crate) fn new(inbox: Arc<Inbox>, seq: u64, permit: Option<OwnedSemaphorePermit>) -> Self {
        FeedReply {
            inbox,
            seq,
            sent: false,
            permit,
        }
    }
}

impl FeedReply {
    /// The stream's inbox.
    #[inline]
    pub(crate) fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    /// Marks the reply as sent elsewhere (in a batch), and gives its sequence number.
    #[inline]
    pub(crate) fn settle(mut self) -> u64 {
        self.sent = true;
        self.permit = None;
        self.seq
    }
}

impl Drop for FeedReply {
    fn drop(&mut self) {
        self.permit = None;
        if !self.sent {
            self.inbox.answer(self.seq, Err(TaskError::Terminated));
        }
    }
}

impl ReplyTo {
    pub(crate) fn send(self, reply: Reply) {
        match self {
            ReplyTo::One(tx, place) => {
                drop(place);
                let _ = tx.send(reply);
            }
            ReplyTo::Feed(mut feed) => {
                feed.sent = true;
                feed.permit = None;
                feed.inbox.answer(feed.seq, reply);
            }
            ReplyTo::Nobody => {}
        }
    }

    /// Whether nobody listens any more.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            ReplyTo::One(tx, _) => tx.is_closed(),
            ReplyTo::Feed(feed) => feed.inbox.is_closed(),
            ReplyTo::Nobody => true,
        }
    }
}
