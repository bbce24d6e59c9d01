//! The stream transport: jobs and replies both as frames on a byte stream, any
//! `AsyncRead` and `AsyncWrite` pair (a socket, a child's stdin and stdout, a pipe
//! through `ssh`). No shared memory: the worker's replies all come on the stream, so
//! there is no direct path, no polling for replies, and jobs sent ahead cannot be
//! taken back once written (only those still unwritten can).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::FramedRead;

use crate::chan::IoBatch;
use crate::protocol::codec::{ReplyCodec, ReplyFrame};
use crate::transport::{Incoming, READS_PER_POLL};

/// The reading half of a stream link.
pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a stream link.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A worker's connection over a byte stream.
pub(crate) struct Stream {
    reader: FramedRead<BoxRead, ReplyCodec>,
    writer: BoxWrite,
    /// The reply frame read and not yet taken (at most one: see
    /// [`unannounced`](Self::unannounced)).
    frames: VecDeque<ReplyFrame>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

impl Stream {
    pub(crate) fn new(reader: FramedRead<BoxRead, ReplyCodec>, writer: BoxWrite) -> Self {
        Stream {
            reader,
            writer,
            frames: VecDeque::new(),
        }
    }

    #[inline]
    pub(crate) fn is_quiet(&self) -> bool {
        self.frames.is_empty()
    }

    #[inline]
    pub(crate) fn codec_mut(&mut self) -> &mut ReplyCodec {
        self.reader.decoder_mut()
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        batch: &IoBatch<'_>,
    ) -> Poll<io::Result<usize>> {
        let slices = batch
            .io_slices()
            .expect("a stream's batches are made without joining");
        Pin::new(&mut self.writer).poll_write_vectored(cx, slices)
    }

    pub(crate) fn poll_write_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    #[inline]
    pub(crate) fn next_ready(&mut self) -> Option<ReplyFrame> {
        self.frames.pop_front()
    }

    /// A worker has no business sending a second reply before the first is taken: the
    /// driver takes each as it is read, so a second one waiting is a flood.
    #[inline]
    pub(crate) fn unannounced(&self) -> Option<&'static str> {
        (self.frames.len() > 1).then_some("a reply frame came before the one before it was taken")
    }

    /// See [`Link::poll_reply`](crate::transport::Link::poll_reply).
    pub(crate) fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        let mut reads = 0;
        loop {
            if let Some(frame) = self.next_ready() {
                return Poll::Ready(Incoming::Reply(frame));
            }
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;
            match self.reader.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(frame))) => self.frames.push_back(frame),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Incoming::Closed(Some(e))),
                Poll::Ready(None) => return Poll::Ready(Incoming::Closed(None)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads one more frame; `false` at the stream's end or on an error.
    pub(crate) async fn read_one(&mut self) -> bool {
        match self.reader.next().await {
            Some(Ok(frame)) => {
                self.frames.push_back(frame);
                true
            }
            _ => false,
        }
    }

    /// The next frame as it comes, for a one-shot user of the link (a `Process`).
    pub(crate) async fn next_frame(&mut self) -> Option<io::Result<ReplyFrame>> {
        if let Some(frame) = self.frames.pop_front() {
            return Some(Ok(frame));
        }
        self.reader.next().await
    }

    pub(crate) fn writer_mut(&mut self) -> &mut BoxWrite {
        &mut self.writer
    }
}
