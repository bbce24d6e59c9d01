//! The chunks of a `map`-family stream that are submitted and not yet yielded, and the
//! decoding of each chunk's reply into its tasks' results.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use serde::de::DeserializeOwned;

use crate::error::{Payload, TaskError};
use crate::handle::decode_one;
use crate::protocol::codec::decode_results_into;
use crate::protocol::results::Results;
use crate::queue::{Inbox, Reply};

/// Decodes one chunk's reply into one result per task, appended to `out`.
pub(crate) fn decode_chunk_reply<R: DeserializeOwned + 'static>(
    reply: Reply,
    tasks: usize,
    out: &mut Vec<Result<R, TaskError>>,
) {
    let all = |e: TaskError, out: &mut Vec<_>| out.extend((0..tasks).map(|_| Err(e.clone())));
    match reply {
        // A lone result in a buffer of its own, as a single task's reply.
        Ok(lone @ (Results::ByteString(_) | Results::Shared(_))) if tasks == 1 => {
            out.push(decode_one(Ok(lone)));
        }
        Ok(results) => {
            let start = out.len();
            let decoded = results.with_chunk(|chunk| {
                decode_results_into::<R, _>(chunk, tasks, out, |r| r.map_err(TaskError::Panicked))
            });
            match decoded {
                Ok(n) if usize::try_from(n) == Ok(tasks) => {}
                Ok(n) => {
                    out.truncate(start);
                    all(
                        TaskError::Protocol(format!("{n} results for a chunk of {tasks}")),
                        out,
                    );
                }
                Err(message) => all(
                    TaskError::Codec {
                        what: Payload::Result,
                        message,
                    },
                    out,
                ),
            }
        }
        Err(e) => all(e, out),
    }
}

/// The chunks submitted and not yet yielded. Every chunk's reply comes to one inbox,
/// tagged with the chunk's sequence number; in order, replies that come early wait in a
/// window until those before them have come.
pub(super) struct InFlight {
    pub(super) inbox: Arc<Inbox>,
    /// Replies taken from the inbox, not yet placed or yielded.
    arrived: VecDeque<(u64, Reply)>,
    ordered: bool,
    /// The sequence number of the oldest chunk not yet yielded.
    first: u64,
    /// From `first` on: each chunk's task count and, once come, its reply.
    window: VecDeque<(usize, Option<Reply>)>,
    /// Unordered: chunks submitted and not yet come.
    waiting: usize,
}

impl InFlight {
    pub(super) fn new(ordered: bool) -> Self {
        InFlight {
            inbox: Arc::default(),
            arrived: VecDeque::new(),
            ordered,
            first: 0,
            window: VecDeque::new(),
            waiting: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        if self.ordered {
            self.window.len()
        } else {
            self.waiting
        }
    }

    /// Registers a chunk of `tasks` tasks; returns its sequence number, which tags its
    /// reply in the inbox.
    pub(super) fn push(&mut self, tasks: usize) -> u64 {
        let seq = self.first + self.window.len() as u64;
        if self.ordered {
            self.window.push_back((tasks, None));
        } else {
            // Unordered chunks are yielded as they come: only their task count is
            // kept, in the window slot of their sequence number.
            self.window.push_back((tasks, None));
            self.waiting += 1;
        }
        seq
    }

    /// The results of every chunk that may be yielded now (all that have come, or in
    /// order, all that have come up to the first still running), in one go: `None`
    /// when nothing is in flight.
    pub(super) fn poll_next<R: DeserializeOwned + 'static>(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Vec<Result<R, TaskError>>>> {
        let mut out = Vec::new();
        loop {
            while let Some((seq, reply)) = self.arrived.pop_front() {
                let Some(slot) = seq
                    .checked_sub(self.first)
                    .and_then(|i| self.window.get_mut(i as usize))
                else {
                    continue;
                };
                if self.ordered {
                    slot.1 = Some(reply);
                } else {
                    let tasks = slot.0;
                    self.waiting -= 1;
                    // Slots of chunks come and gone are trimmed from the front.
                    slot.0 = 0;
                    while self.window.front().is_some_and(|(t, _)| *t == 0) {
                        self.window.pop_front();
                        self.first += 1;
                    }
                    decode_chunk_reply(reply, tasks, &mut out);
                }
            }
            while let Some((tasks, Some(_))) = self.window.front() {
                let tasks = *tasks;
                let reply = self.window.pop_front().and_then(|(_, r)| r);
                self.first += 1;
                let reply = reply.unwrap_or(Err(TaskError::Terminated));
                decode_chunk_reply(reply, tasks, &mut out);
            }
            if !out.is_empty() {
                return Poll::Ready(Some(out));
            }
            if self.len() == 0 {
                return Poll::Ready(None);
            }
            ready!(self.inbox.poll_take(&mut self.arrived, cx));
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inbox.close();
    }
}
