//! The local transport: a socketpair for jobs, and a reply ring of shared memory
//! ([`crate::ring`]) for replies, with the socket for replies too large for the ring
//! (the ring marks their place) and for the worker's wake-up calls (empty frames).
//!
//! The ring's consumer and the socket's write end are one owned value, the [`Port`]:
//! whoever holds it (the driver, or a caller on the direct path it was lent to) is the
//! only one who can pop replies or write jobs.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::StreamExt;
use tokio_util::codec::FramedRead;

use crate::chan::{ChanRead, ChanWrite, IoBatch};
use crate::protocol::codec::{ReplyCodec, ReplyFrame};
use crate::ring::{PoolRing, Record};
use crate::transport::{Incoming, READS_PER_POLL};

/// What a worker's jobs are written to and its replies popped from; see the module docs.
#[derive(Debug)]
pub(crate) struct Port {
    ring: PoolRing,
    writer: ChanWrite,
}

impl Port {
    /// Writes what it can of `frame` without waiting; how many bytes went.
    #[inline]
    pub(crate) fn try_send(&self, frame: &[u8]) -> usize {
        self.writer.try_send(frame)
    }

    /// See [`PoolRing::note_sent`].
    #[inline]
    pub(crate) fn note_sent(&mut self, n: i64) {
        self.ring.note_sent(n);
    }

    /// See [`PoolRing::want_wakeup`].
    #[inline]
    pub(crate) fn want_wakeup(&mut self) -> bool {
        self.ring.want_wakeup()
    }

    /// See [`PoolRing::sleep_for`].
    #[inline]
    pub(crate) fn sleep_for(&mut self, until: std::time::Instant) -> bool {
        self.ring.sleep_for(until)
    }

    /// See [`PoolRing::pop_frame`].
    #[inline]
    pub(crate) fn pop_frame(&mut self) -> Result<Option<BytesMut>, String> {
        self.ring.pop_frame()
    }
}

/// A local worker's connection, as its driver holds it.
#[derive(Debug)]
pub(crate) struct Local {
    reader: FramedRead<ChanRead, ReplyCodec>,
    /// `None` while lent (see [`crate::lease`]).
    port: Option<Port>,
    /// Reply frames read from the socket, not yet taken.
    socket_frames: VecDeque<ReplyFrame>,
    /// How many of the next replies the ring said come over the socket.
    on_socket: usize,
    /// Where replies are copied out of the ring (see [`PoolRing::pop_into`]).
    arena: BytesMut,
}

impl Local {
    pub(crate) fn new(
        reader: FramedRead<ChanRead, ReplyCodec>,
        writer: ChanWrite,
        ring: PoolRing,
    ) -> Self {
        Local {
            reader,
            port: Some(Port { ring, writer }),
            socket_frames: VecDeque::new(),
            on_socket: 0,
            arena: BytesMut::new(),
        }
    }

    #[inline]
    fn port(&mut self) -> &mut Port {
        self.port
            .as_mut()
            .expect("the driver touches its link only while it holds the port")
    }

    /// Takes the port out, to lend it; `None` if it is out already.
    #[inline]
    pub(crate) fn take_port(&mut self) -> Option<Port> {
        self.port.take()
    }

    /// Puts the port back.
    #[inline]
    pub(crate) fn put_port(&mut self, port: Port) {
        debug_assert!(self.port.is_none());
        self.port = Some(port);
    }

    #[inline]
    pub(crate) fn holds_port(&self) -> bool {
        self.port.is_some()
    }

    /// See [`Link::poll_readable`](crate::transport::Link::poll_readable).
    #[inline]
    pub(crate) fn poll_readable(&mut self, cx: &mut Context<'_>) -> bool {
        self.reader.get_ref().poll_readable(cx)
    }

    /// Whether nothing is half-read: no frame waits, none is announced.
    #[inline]
    pub(crate) fn is_quiet(&self) -> bool {
        self.socket_frames.is_empty() && self.on_socket == 0
    }

    #[inline]
    pub(crate) fn codec_mut(&mut self) -> &mut ReplyCodec {
        self.reader.decoder_mut()
    }

    #[inline]
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        batch: &IoBatch<'_>,
        pass: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Poll<std::io::Result<usize>> {
        self.port().writer.poll_write_batch(cx, batch, pass)
    }

    #[inline]
    pub(crate) fn write_idle(&mut self) {
        self.port().writer.idle();
    }

    pub(crate) fn note_sent(&mut self, n: i64) {
        self.port().ring.note_sent(n);
    }

    /// Takes back jobs sent ahead (see [`PoolRing::revoke`]): the `inflight` last sent
    /// are in flight, the first `touched` of them reached the worker (in part).
    pub(crate) fn revoke_behind(&mut self, inflight: usize, touched: usize) -> bool {
        let ring = &mut self.port().ring;
        let head = ring.sent().wrapping_sub(inflight as u64).wrapping_add(1);
        ring.revoke(head, head.wrapping_add(touched as u64 - 1))
    }

    /// The next reply that needs no reading from the socket: from the ring, or from
    /// frames already read where the ring says the reply went over the socket.
    #[inline]
    pub(crate) fn next_ready(&mut self) -> Result<Option<ReplyFrame>, String> {
        loop {
            if self.on_socket > 0 {
                let frame = self.socket_frames.pop_front();
                if frame.is_some() {
                    self.on_socket -= 1;
                }
                return Ok(frame);
            }
            let port = self
                .port
                .as_mut()
                .expect("the driver touches its link only while it holds the port");
            match port.ring.pop_into(&mut self.arena)? {
                Some(Record::Frame(frame)) => return Ok(Some(frame.into())),
                Some(Record::OnSocket) => self.on_socket += 1,
                None => return Ok(None),
            }
        }
    }

    /// Whether frames read from the socket break the protocol: the worker marks a
    /// reply's place in the ring before it sends the reply over the socket, so once
    /// the ring has nothing more to say, a frame waiting here is one no mark announced.
    #[inline]
    pub(crate) fn unannounced(&self) -> Option<&'static str> {
        (self.on_socket == 0 && !self.socket_frames.is_empty())
            .then_some("a reply frame came over the channel without its place in the ring")
    }

    /// See [`Link::poll_reply`](crate::transport::Link::poll_reply).
    #[inline]
    pub(crate) fn poll_reply(&mut self, cx: &mut Context<'_>, waiting: bool) -> Poll<Incoming> {
        let mut reads = 0;
        loop {
            match self.next_ready() {
                Ok(Some(frame)) => return Poll::Ready(Incoming::Reply(frame)),
                Ok(None) => {}
                Err(why) => return Poll::Ready(Incoming::Broken(why)),
            }
            if let Some(why) = self.unannounced() {
                return Poll::Ready(Incoming::Broken(why.into()));
            }
            if reads == READS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;
            match self.reader.poll_next_unpin(cx) {
                // An empty frame only wakes the driver.
                Poll::Ready(Some(Ok(frame))) => {
                    if !frame.is_wake_up() {
                        match self.claim_shared(frame) {
                            Ok(frame) => self.socket_frames.push_back(frame),
                            Err(why) => return Poll::Ready(Incoming::Broken(why)),
                        }
                    }
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Incoming::Closed(Some(e))),
                Poll::Ready(None) => return Poll::Ready(Incoming::Closed(None)),
                Poll::Pending => {}
            }
            if self.on_socket == 0 && waiting && self.port().ring.want_wakeup() {
                continue;
            }
            return Poll::Pending;
        }
    }

    /// A reply frame read from the socket, with the bytes of its one result mapped
    /// when it is a reply of shared memory ([`FromWorker::SharedDone`]): the memfd
    /// that came with it is claimed and checked (see [`crate::shm::map`]). An error
    /// if it did not come, or is not a sealed memfd holding what the reply says.
    ///
    /// [`FromWorker::SharedDone`]: crate::protocol::FromWorker
    fn claim_shared(&mut self, mut frame: ReplyFrame) -> Result<ReplyFrame, String> {
        let Some((offset, len)) = crate::protocol::Done::read_shared(&mut frame.frame)? else {
            return Ok(frame);
        };
        let max = self.reader.decoder().max_frame_len();
        let fd = self
            .reader
            .get_mut()
            .take_fd()
            .ok_or("a reply in shared memory came without its memfd")?;
        let bytes = crate::shm::map(std::os::fd::AsFd::as_fd(&fd), offset, len, max)?;
        frame.shared = Some(bytes);
        Ok(frame)
    }

    /// Polls the ring for the next reply until `until`.
    pub(crate) fn spin_for_reply(&mut self, until: std::time::Instant) -> Option<ReplyFrame> {
        // An error ends the polling; it is left for the event loop to find again.
        crate::ring::spin_until(until, || match self.next_ready() {
            Ok(None) => None,
            found => Some(found.ok().flatten()),
        })
        .flatten()
    }

    /// After the worker's death: whether a reply may still be read from the socket
    /// (only those the ring announced).
    pub(crate) fn wants_more(&self) -> bool {
        self.on_socket > 0
    }

    /// Reads one more frame from the socket; `false` at its end or on an error.
    pub(crate) async fn read_one(&mut self) -> bool {
        match self.reader.next().await {
            Some(Ok(frame)) => {
                if !frame.is_wake_up() {
                    match self.claim_shared(frame) {
                        Ok(frame) => self.socket_frames.push_back(frame),
                        Err(_) => return false,
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// The write end, to shut down (see `supervisor::let_go`).
    pub(crate) fn writer_mut(&mut self) -> Option<&mut ChanWrite> {
        self.port.as_mut().map(|p| &mut p.writer)
    }
}
