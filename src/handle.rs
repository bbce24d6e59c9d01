//! [`TaskHandle`]: the future of one submitted task.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::error::{Payload, TaskError};
use crate::protocol::codec::decode_results;
use crate::queue::{AbortSignal, Reply};

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
    pub(crate) fn new(id: u64, rx: oneshot::Receiver<Reply>, abort: Arc<AbortSignal>) -> Self {
        TaskHandle {
            id,
            rx,
            abort,
            _result: PhantomData,
        }
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
        self.abort.abort();
    }
}

/// Decodes a reply that holds exactly one result.
pub(crate) fn decode_one<R: DeserializeOwned + 'static>(reply: Reply) -> Result<R, TaskError> {
    let bytes = reply?;
    if let Some(result) = bytes_result::<R>(&bytes) {
        return Ok(result);
    }
    let mut results = decode_results::<R>(&bytes).map_err(|message| TaskError::Codec {
        what: Payload::Result,
        message,
    })?;
    match (results.pop(), results.is_empty()) {
        (Some(result), true) => result.map_err(TaskError::Panicked),
        _ => Err(TaskError::Protocol("expected exactly one result".into())),
    }
}

/// A task's `bytes::Bytes` result, as a slice of the reply it came in rather than a
/// copy: the zero-copy path that `Bytes` users expect of large payloads. `None` when `R`
/// is not `Bytes` or the reply is not one successful result (the generic path then
/// decodes it, errors included).
fn bytes_result<R: 'static>(reply: &bytes::Bytes) -> Option<R> {
    if std::any::TypeId::of::<R>() != std::any::TypeId::of::<bytes::Bytes>() {
        return None;
    }
    // The reply is postcard's encoding of `Vec<Result<Bytes, RemotePanic>>` holding one
    // `Ok`: a sequence length of 1, the variant index 0, then a byte string (a varint
    // length, then the bytes).
    let (count, rest) = postcard::take_from_bytes::<u64>(reply).ok()?;
    let (variant, rest) = postcard::take_from_bytes::<u32>(rest).ok()?;
    let (len, rest) = postcard::take_from_bytes::<u64>(rest).ok()?;
    let len = usize::try_from(len).ok()?;
    if count != 1 || variant != 0 || rest.len() != len {
        return None;
    }
    let start = reply.len() - rest.len();
    let value: Box<dyn std::any::Any> = Box::new(reply.slice(start..));
    value.downcast::<R>().ok().map(|b| *b)
}

impl<R: DeserializeOwned + 'static> Future for TaskHandle<R> {
    type Output = Result<R, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.abort.poll_cancelled_in_queue(cx).is_ready() {
            return Poll::Ready(Err(TaskError::Cancelled));
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
        let _ = run_chunk::<(), bytes::Bytes>(&args, &mut out, |()| result.clone());
        out.into()
    }

    #[test]
    fn a_bytes_result_is_a_slice_of_the_reply() {
        let data = bytes::Bytes::from(vec![7u8; 300]);
        let reply = reply_of(Ok(data.clone()));
        let got: bytes::Bytes = bytes_result(&reply).expect("the fast path");
        assert_eq!(got, data);
        // The same memory as the reply: no copy was made.
        assert_eq!(got.as_ptr(), reply[reply.len() - 300..].as_ptr());
        assert_eq!(decode_one::<bytes::Bytes>(Ok(reply)), Ok(data));
    }

    #[test]
    fn other_types_and_failures_take_the_generic_path() {
        let reply = reply_of(Ok(bytes::Bytes::from_static(b"abc")));
        assert!(bytes_result::<Vec<u8>>(&reply).is_none());
        let panic = RemotePanic::new("no".into(), None);
        let reply = reply_of(Err(panic.clone()));
        assert!(bytes_result::<bytes::Bytes>(&reply).is_none());
        assert_eq!(
            decode_one::<bytes::Bytes>(Ok(reply)),
            Err(TaskError::Panicked(panic))
        );
    }
}
