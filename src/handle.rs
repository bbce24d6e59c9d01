//! [`TaskHandle`]: the future of one submitted task.

use std::any::{Any, TypeId};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::error::{Payload, TaskError};
use crate::protocol::codec::{byte_string_result, decode_results_into};
use crate::protocol::results::Results;
use crate::queue::{AbortSignal, Admission, Reply};
use crate::submit::WaitForRoom;

/// A task submitted to the pool; a future of its result.
///
/// Returned by [`Pool::apply_async`](crate::Pool::apply_async) and
/// [`Apply::spawn`](crate::Apply::spawn). The task is queued when the handle is
/// created, whether or not the handle is ever polled.
///
/// # Cancel safety
///
/// Awaiting `&mut TaskHandle` is cancel safe: the task goes on and the handle can be
/// awaited again. Dropping the handle before the task has started removes the task from
/// the queue: it never runs. Dropping it while the task runs detaches the task: it runs
/// to completion and its result is discarded. To stop a running task, call
/// [`abort`](TaskHandle::abort).
///
/// One exception: a worker whose tasks take microseconds is sent the next tasks ahead
/// (see [`PoolBuilder::pipeline_depth`](crate::PoolBuilder::pipeline_depth)), never
/// behind a task that has run for more than 2 ms; a task already sent ahead counts as
/// started, so dropping its handle detaches it and `abort` kills the worker when it
/// starts it.
#[must_use = "dropping a TaskHandle cancels its task if it has not started yet"]
pub struct TaskHandle<R> {
    id: u64,
    rx: oneshot::Receiver<Reply>,
    abort: Arc<AbortSignal>,
    /// The task's place under the queue bound, released here if the task is cancelled
    /// before a driver takes it.
    admission: Admission,
    /// The task's wait for room under the queue bound, when this handle does it (an
    /// awaited `Apply`).
    wait: Option<WaitForRoom>,
    _result: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for TaskHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<R> TaskHandle<R> {
    pub(crate) fn new(
        id: u64,
        rx: oneshot::Receiver<Reply>,
        abort: Arc<AbortSignal>,
        admission: Admission,
        wait: Option<WaitForRoom>,
    ) -> Self {
        TaskHandle {
            id,
            rx,
            abort,
            admission,
            wait,
            _result: PhantomData,
        }
    }

    /// The handle of task `id`, refused at once with `error`.
    pub(crate) fn failed(id: u64, error: TaskError) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(error));
        // Nothing runs it: as good as taken.
        let abort = Arc::new(AbortSignal::default());
        abort.take();
        TaskHandle::new(id, rx, abort, Admission::default(), None)
    }

    /// The task's id, unique within its pool.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cancels the task: if it is still queued, it will never run and the handle
    /// resolves to [`TaskError::Cancelled`] at once; if a worker has it, the worker is
    /// killed (and replaced) and the handle resolves to `Cancelled`, unless the task
    /// finished first.
    pub fn abort(&self) {
        if self.abort.abort() {
            // It will never run: its place under the queue bound is free now.
            self.admission.release();
        }
    }

    /// Whether the task's outcome is in: awaiting the handle now returns at once. True
    /// once the task has finished (with a value, a panic or a pool error such as a
    /// timeout or a worker's death), and once an [`abort`](Self::abort) has taken a
    /// task out of the queue; false while it is queued or runs. Like Tokio's
    /// `JoinHandle::is_finished`, it never blocks, and a handle already awaited to its
    /// end reports `true`.
    pub fn is_finished(&self) -> bool {
        if !self.rx.is_empty() || self.rx.is_terminated() {
            return true;
        }
        // Only once aborted: then the handle's waker in the signal serves no one any
        // more (a queued abort has woken it; a taken one never will), so registering
        // the no-op waker below cannot lose a wake-up.
        self.abort.is_aborted()
            && self
                .abort
                .poll_cancelled_in_queue(&mut Context::from_waker(std::task::Waker::noop()))
                .is_ready()
    }
}

impl<R> Drop for TaskHandle<R> {
    /// A task still queued (or waiting for room) will never run: its place under the
    /// queue bound is released now rather than when a driver skips it.
    fn drop(&mut self) {
        if self.abort.cancel_queued() {
            self.admission.release();
        }
    }
}

/// Decodes a reply that holds exactly one result.
pub(crate) fn decode_one<R: DeserializeOwned + 'static>(reply: Reply) -> Result<R, TaskError> {
    let chunk = match reply? {
        Results::ByteString(bytes) => match byte_string_as::<R, _>(bytes) {
            Ok(result) => return Ok(result),
            Err(bytes) => Results::ByteString(bytes).into_chunk(),
        },
        Results::Shared(bytes) => match byte_string_as::<R, _>(bytes) {
            Ok(result) => return Ok(result),
            Err(bytes) => Results::Shared(bytes).into_chunk(),
        },
        Results::Chunk(chunk) => match chunk_byte_string::<R>(chunk) {
            Ok(result) => return Ok(result),
            Err(chunk) => chunk,
        },
        Results::Small(small) => return decode_single(small.as_slice()),
    };
    decode_single(&chunk)
}

/// Decodes a chunk that holds exactly one result.
fn decode_single<R: DeserializeOwned + 'static>(chunk: &[u8]) -> Result<R, TaskError> {
    let mut result = None;
    let count = decode_results_into::<R, _>(chunk, 1, &mut Vec::new(), |r| result = Some(r))
        .map_err(|message| TaskError::Codec {
            what: Payload::Result,
            message,
        })?;
    match (count, result) {
        (1, Some(result)) => result.map_err(TaskError::Panicked),
        _ => Err(TaskError::Protocol(format!(
            "{count} results for a single task"
        ))),
    }
}

/// A `Bytes` or `Vec<u8>` result taken from a chunk of one without decoding: for
/// `Bytes`, a slice of the chunk (the zero-copy path `Bytes` users expect of large
/// payloads); for a `Vec<u8>`, the chunk's own buffer when it owns that alone (the
/// bytes are moved to its front), else a copy. `Err` gives the chunk back to the
/// general decoder: `R` is another type, or the chunk is not one successful result.
fn chunk_byte_string<R: 'static>(chunk: Bytes) -> Result<R, Bytes> {
    if !is_byte_string::<R>() {
        return Err(chunk);
    }
    let Some((start, len)) = byte_string_result(&chunk) else {
        return Err(chunk);
    };
    if start.checked_add(len) != Some(chunk.len()) {
        return Err(chunk);
    }
    let mut bytes = chunk;
    bytes::Buf::advance(&mut bytes, start);
    if bytes.len() < OWN_BUFFER {
        // A small reply may share its buffer with other replies (see
        // `PoolRing::pop_into`): a `Bytes` result kept from it would keep them all.
        bytes = Bytes::copy_from_slice(&bytes);
    }
    byte_string_as(bytes)
}

/// Replies at least this large have a buffer of their own (see `ReplyCodec`).
const OWN_BUFFER: usize = 64 << 10;

/// Whether `R` is a type that [`byte_string_as`] makes.
fn is_byte_string<R: 'static>() -> bool {
    TypeId::of::<R>() == TypeId::of::<Bytes>() || TypeId::of::<R>() == TypeId::of::<Vec<u8>>()
}

/// A byte string's `bytes` as `R` when `R` is `Bytes` or `Vec<u8>` (with no copy where
/// `bytes` owns its buffer alone and starts it); `Err` gives them back otherwise.
fn byte_string_as<R: 'static, B: Into<Bytes> + Into<Vec<u8>>>(bytes: B) -> Result<R, B> {
    let value: Box<dyn Any> = if TypeId::of::<R>() == TypeId::of::<Bytes>() {
        Box::new(Into::<Bytes>::into(bytes))
    } else if TypeId::of::<R>() == TypeId::of::<Vec<u8>>() {
        Box::new(Into::<Vec<u8>>::into(bytes))
    } else {
        return Err(bytes);
    };
    match value.downcast::<R>() {
        Ok(value) => Ok(*value),
        Err(_) => unreachable!("R is the type checked above"),
    }
}

impl<R: DeserializeOwned + 'static> Future for TaskHandle<R> {
    type Output = Result<R, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.abort.poll_cancelled_in_queue(cx).is_ready() {
            self.wait = None;
            return Poll::Ready(Err(TaskError::Cancelled));
        }
        if let Some(wait) = &mut self.wait {
            if wait.poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(reply)) => Poll::Ready(decode_one(reply)),
            // The pool's tasks are gone (its runtime shut down) without answering.
            Poll::Ready(Err(_)) => Poll::Ready(Err(TaskError::Terminated)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RemotePanic;
    use crate::protocol::codec::run_chunk;

    fn reply_of(result: Result<bytes::Bytes, RemotePanic>) -> bytes::Bytes {
        let mut args = Vec::new();
        crate::protocol::codec::encode_chunk(&[()], &mut args).unwrap();
        let mut out = Vec::new();
        let _ = run_chunk::<(), bytes::Bytes>(&args, &mut out, &mut Default::default(), |()| {
            result.clone()
        });
        out.into()
    }

    #[test]
    fn a_large_bytes_result_is_a_slice_of_the_reply_and_a_small_one_a_copy() {
        for (size, sliced) in [(OWN_BUFFER, true), (300, false)] {
            let data = bytes::Bytes::from(vec![7u8; size]);
            let reply = reply_of(Ok(data.clone()));
            let start = reply.len() - size;
            let at = reply[start..].as_ptr();
            let got: bytes::Bytes = chunk_byte_string(reply.clone()).expect("the fast path");
            assert_eq!(got, data);
            // The same memory as the reply, or a copy that keeps no other reply alive.
            assert_eq!(got.as_ptr() == at, sliced, "{size} bytes");
            assert_eq!(
                decode_one::<bytes::Bytes>(Ok(Results::Chunk(reply))),
                Ok(data)
            );
        }
    }

    #[test]
    fn a_vec_result_takes_over_a_reply_it_owns_alone() {
        let reply = reply_of(Ok(bytes::Bytes::from(vec![9u8; OWN_BUFFER])));
        // A reply that owns its buffer alone (as a large one from the socket does).
        let owned = bytes::Bytes::from(reply.to_vec());
        let buffer = owned.as_ptr();
        let got: Vec<u8> = chunk_byte_string(owned).expect("the fast path");
        assert_eq!(got, vec![9u8; OWN_BUFFER]);
        // Its bytes were moved to the front of the same buffer: no second buffer.
        assert_eq!(got.as_ptr(), buffer);
        // A shared reply is copied, and still right.
        let again = reply.clone();
        assert_eq!(
            decode_one::<Vec<u8>>(Ok(Results::Chunk(again))),
            Ok(vec![9u8; OWN_BUFFER])
        );
        assert!(
            reply.ends_with(&[9u8; OWN_BUFFER]),
            "the shared reply is untouched"
        );
    }

    #[test]
    fn other_types_and_failures_take_the_generic_path() {
        let reply = reply_of(Ok(bytes::Bytes::from_static(b"abc")));
        assert!(chunk_byte_string::<String>(reply.clone()).is_err());
        let panic = RemotePanic::new("no".into(), None);
        let reply = reply_of(Err(panic.clone()));
        assert!(chunk_byte_string::<bytes::Bytes>(reply.clone()).is_err());
        assert!(chunk_byte_string::<Vec<u8>>(reply.clone()).is_err());
        assert_eq!(
            decode_one::<bytes::Bytes>(Ok(Results::Chunk(reply))),
            Err(TaskError::Panicked(panic))
        );
    }

    #[test]
    fn a_byte_string_in_its_own_buffer_becomes_the_result_as_it_is() {
        let buffer = bytes::BytesMut::from(&[5u8; 4000][..]);
        let at = buffer.as_ptr();
        let got: Vec<u8> = decode_one(Ok(Results::ByteString(buffer))).unwrap();
        assert_eq!((got.as_ptr(), got.len()), (at, 4000));
        assert!(got.iter().all(|&b| b == 5));
        let buffer = bytes::BytesMut::from(&[6u8; 4000][..]);
        let at = buffer.as_ptr();
        let got: bytes::Bytes = decode_one(Ok(Results::ByteString(buffer))).unwrap();
        assert_eq!((got.as_ptr(), got.len()), (at, 4000));
        // Another type whose encoding is a byte string decodes from a copy.
        let text = bytes::BytesMut::from("a string".as_bytes());
        let got: String = decode_one(Ok(Results::ByteString(text))).unwrap();
        assert_eq!(got, "a string");
        let bad = bytes::BytesMut::from(&[0xff, 0xfe][..]);
        assert!(matches!(
            decode_one::<String>(Ok(Results::ByteString(bad))),
            Err(TaskError::Codec { .. })
        ));
    }
}
