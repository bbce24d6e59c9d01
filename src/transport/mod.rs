//! A worker's connection as its driver sees it: job frames go out, reply frames come
//! in. One type, [`Link`], with two kinds:
//!
//! - [`local`]: a socketpair for jobs and a reply ring of shared memory for replies
//!   (the fastest; what every local worker of a pool uses by default);
//! - [`stream`]: any `AsyncRead` + `AsyncWrite` pair, replies on the stream (what a
//!   worker behind a pipe or another machine's `ssh` needs; also run locally by the
//!   test suite, see `PoolBuilder::transport`).
//!
//! What is untrusted here is bounded here: at most one reply frame is held unread per
//! link, and at most [`READS_PER_POLL`] frames are read per poll.

pub(crate) mod local;
pub(crate) mod stream;

use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWriteExt;

use crate::chan::IoBatch;
use crate::protocol::codec::{ReplyCodec, ReplyFrame};
use local::{Local, Port};
use stream::Stream;

/// How many frames a link reads in one poll before it yields: a worker writing without
/// end cannot keep its driver from yielding.
pub(crate) const READS_PER_POLL: usize = 256;

/// What a poll for a reply found.
#[derive(Debug)]
pub(crate) enum Incoming {
    Reply(ReplyFrame),
    /// The channel ended (`None`) or failed.
    Closed(Option<io::Error>),
    /// The worker broke the protocol.
    Broken(String),
}

/// A worker's connection; see the module docs.
#[derive(Debug)]
pub(crate) enum Link {
    Local(Local),
    Stream(Stream),
}

impl Link {
    /// The next reply, or the end of the channel. `waiting`: jobs are in flight, so a
    /// local link asks the worker for a wake-up before it sleeps.
    #[inline]
    pub(crate) fn poll_reply(&mut self, cx: &mut Context<'_>, waiting: bool) -> Poll<Incoming> {
        match self {
            Link::Local(l) => l.poll_reply(cx, waiting),
            Link::Stream(s) => s.poll_reply(cx),
        }
    }

    /// The next reply already here, without reading; an error if the link no longer
    /// makes sense.
    #[inline]
    pub(crate) fn next_ready(&mut self) -> Result<Option<ReplyFrame>, String> {
        match self {
            Link::Local(l) => l.next_ready(),
            Link::Stream(s) => Ok(s.next_ready()),
        }
    }

    /// Why frames read so far break the protocol, if they do.
    #[inline]
    pub(crate) fn unannounced(&self) -> Option<&'static str> {
        match self {
            Link::Local(l) => l.unannounced(),
            Link::Stream(s) => s.unannounced(),
        }
    }

    /// Nothing half-read.
    #[inline]
    pub(crate) fn is_quiet(&self) -> bool {
        match self {
            Link::Local(l) => l.is_quiet(),
            Link::Stream(s) => s.is_quiet(),
        }
    }

    #[inline]
    pub(crate) fn codec_mut(&mut self) -> &mut ReplyCodec {
        match self {
            Link::Local(l) => l.codec_mut(),
            Link::Stream(s) => s.codec_mut(),
        }
    }

    /// Counts `n` more jobs sent (negative: taken back unwritten).
    #[inline]
    pub(crate) fn note_sent(&mut self, n: i64) {
        if let Link::Local(l) = self {
            l.note_sent(n);
        }
    }

    /// Takes back jobs sent ahead of the head (see `PoolRing::revoke`): of the
    /// `inflight` jobs in flight, the first `touched` reached the worker, at least in
    /// part. `None`: this link cannot take back what was written.
    pub(crate) fn revoke_behind(&mut self, inflight: usize, touched: usize) -> Option<bool> {
        match self {
            Link::Local(l) => Some(l.revoke_behind(inflight, touched)),
            Link::Stream(_) => None,
        }
    }

    /// Polls for the next reply until `until`, where replies can be polled for.
    #[inline]
    pub(crate) fn spin_for_reply(&mut self, until: std::time::Instant) -> Option<ReplyFrame> {
        match self {
            Link::Local(l) => l.spin_for_reply(until),
            Link::Stream(_) => None,
        }
    }

    /// Whether the direct path can borrow this link (see `crate::direct`).
    pub(crate) fn can_lend(&self) -> bool {
        matches!(self, Link::Local(_))
    }

    /// The port, to lend; `None` for a stream, or if it is out.
    #[inline]
    pub(crate) fn take_port(&mut self) -> Option<Port> {
        match self {
            Link::Local(l) => l.take_port(),
            Link::Stream(_) => None,
        }
    }

    #[inline]
    pub(crate) fn put_port(&mut self, port: Port) {
        if let Link::Local(l) = self {
            l.put_port(port);
        }
    }

    /// Whether something waits to be read on the channel (or its end), without
    /// reading it; if not, `cx` is woken when something does. Always `false` for a
    /// stream, which is never lent.
    #[inline]
    pub(crate) fn poll_readable(&mut self, cx: &mut Context<'_>) -> bool {
        match self {
            Link::Local(l) => l.poll_readable(cx),
            Link::Stream(_) => false,
        }
    }

    /// Whether the driver has all of its link (nothing is lent).
    #[inline]
    pub(crate) fn is_whole(&self) -> bool {
        match self {
            Link::Local(l) => l.holds_port(),
            Link::Stream(_) => true,
        }
    }

    /// After the worker's death, with jobs in flight or not: whether a reply may still
    /// be read from the channel.
    pub(crate) fn wants_more(&self, inflight: bool) -> bool {
        match self {
            Link::Local(l) => l.wants_more(),
            Link::Stream(_) => inflight,
        }
    }

    /// Reads one more frame from the channel; `false` at its end or on an error.
    pub(crate) async fn read_one(&mut self) -> bool {
        match self {
            Link::Local(l) => l.read_one().await,
            Link::Stream(s) => s.read_one().await,
        }
    }

    /// Closes the pool's writing end: a worker that reads its channel's end exits.
    pub(crate) async fn shutdown(&mut self) {
        match self {
            Link::Local(l) => {
                if let Some(writer) = l.writer_mut() {
                    let _ = writer.shutdown().await;
                }
            }
            Link::Stream(s) => {
                let _ = s.writer_mut().shutdown().await;
                // Closed, not only shut down: a pipe (a launcher's stdin) has no
                // half-close, and the far end must see its end now.
                drop(std::mem::replace(
                    s.writer_mut(),
                    Box::new(tokio::io::sink()),
                ));
            }
        }
    }

    /// Writes `frame` whole (outside the driver: a `Process`'s one job).
    pub(crate) async fn write_all(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Link::Local(l) => match l.writer_mut() {
                Some(writer) => writer.write_all(frame).await,
                None => Err(io::ErrorKind::WouldBlock.into()),
            },
            Link::Stream(s) => {
                let writer = s.writer_mut();
                writer.write_all(frame).await?;
                writer.flush().await
            }
        }
    }

    /// The next reply frame as it comes (outside the driver: a `Process`'s one reply).
    pub(crate) async fn next_frame(&mut self) -> Option<io::Result<ReplyFrame>> {
        match self {
            Link::Local(l) => loop {
                if let Some(frame) = l.next_ready().ok().flatten() {
                    return Some(Ok(frame));
                }
                if !l.read_one().await {
                    return None;
                }
            },
            Link::Stream(s) => s.next_frame().await,
        }
    }

    /// Writes what it can of `batch`, with `pass` attached to its first byte (only a
    /// local link is ever given one).
    #[inline]
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        batch: &IoBatch<'_>,
        pass: Option<BorrowedFd<'_>>,
    ) -> Poll<io::Result<usize>> {
        match self {
            Link::Local(l) => l.poll_write(cx, batch, pass),
            Link::Stream(s) => s.poll_write(cx, batch),
        }
    }

    #[inline]
    fn poll_write_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Link::Local(l) => {
                l.write_idle();
                Poll::Ready(Ok(()))
            }
            Link::Stream(s) => s.poll_write_done(cx),
        }
    }
}

/// A frame to write: its bytes in one or two parts (a large argument follows its
/// header from where it lies).
pub(crate) trait Outgoing {
    fn parts(&self) -> [&[u8]; 2];

    /// The frame's large argument in a sealed memfd too, for a link that passes
    /// descriptors: it sends the memfd's frame instead (see [`crate::shm`]).
    fn memfd(&self) -> Option<&crate::shm::SharedArg> {
        None
    }
}

/// What of `job` a link writes: over a local link, a job whose argument is in a
/// memfd is the memfd's frame and the memfd; otherwise its parts.
fn on_link<J: Outgoing>(job: &J, local: bool) -> ([&[u8]; 2], Option<BorrowedFd<'_>>) {
    match job.memfd() {
        Some(memfd) if local => ([&memfd.frame, &[]], Some(memfd.fd())),
        _ => (job.parts(), None),
    }
}

/// What of the jobs in flight is still to be written: the last `unsent` of them, the
/// first of those from byte `offset` on. (The frames stay in the jobs, which keep them
/// to requeue: nothing is copied or reference-counted per write.)
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) unsent: usize,
    pub(crate) offset: usize,
}

impl Outbox {
    /// Writes what it can to `link`; `Ready(Ok)` once everything is written.
    pub(crate) fn poll_flush<J: Outgoing>(
        &mut self,
        link: &mut Link,
        inflight: &VecDeque<J>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        // A local link's socket takes neighbouring frames as one segment.
        let local = matches!(link, Link::Local(_));
        while self.unsent > 0 {
            let first = inflight.len() - self.unsent;
            // No allocation on this path: it runs at every event of the driver.
            let mut batch = IoBatch::new(local);
            let mut skip = self.offset;
            // A memfd goes with the first byte of its frame: a frame with one starts
            // a write of its own, and only a write that starts it passes it.
            let mut pass = None;
            'fill: for (i, job) in inflight.range(first..).enumerate() {
                let (parts, fd) = on_link(job, local);
                if fd.is_some() {
                    if i > 0 {
                        break 'fill;
                    }
                    if skip == 0 {
                        pass = fd;
                    }
                }
                for part in parts {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    let part = &part[skip..];
                    skip = 0;
                    if !batch.push(part) {
                        break 'fill;
                    }
                }
            }
            let mut n = ready!(link.poll_write(cx, &batch, pass))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while n > 0 && self.unsent > 0 {
                let (parts, _) = on_link(&inflight[inflight.len() - self.unsent], local);
                let left = parts[0].len() + parts[1].len() - self.offset;
                if n >= left {
                    n -= left;
                    self.unsent -= 1;
                    self.offset = 0;
                } else {
                    self.offset += n;
                    n = 0;
                }
            }
        }
        link.poll_write_done(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use bytes::Bytes;
    use nix::sys::socket::{setsockopt, sockopt};
    use tokio_util::codec::FramedRead;

    use super::*;
    use crate::queue::{Job, ReplyTo};
    use crate::ring::PoolRing;

    fn job(id: u64, frame: Bytes, tail: Bytes) -> Job {
        Job {
            id,
            frame,
            tail,
            memfd: None,
            tasks: 1,
            timeout: None,
            abort: None,
            reply: ReplyTo::One(tokio::sync::oneshot::channel().0, Default::default()),
        }
    }

    /// Bytes that differ from job to job and within a job.
    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed * 31 + i * 7) as u8).collect()
    }

    /// Frames that lie one after another in one buffer (a batch of a stream's chunks,
    /// which go as one segment), frames of their own, and frames with a tail, written
    /// through a socket with a small buffer read slowly, so that writes stop anywhere:
    /// every byte arrives once, in order, starting from a job partly written before.
    #[tokio::test]
    async fn outbox_writes_frames_whole_and_in_order_to_a_local_link() {
        outbox_writes_frames_whole_and_in_order(true).await;
    }

    #[tokio::test]
    async fn outbox_writes_frames_whole_and_in_order_to_a_stream_link() {
        outbox_writes_frames_whole_and_in_order(false).await;
    }

    async fn outbox_writes_frames_whole_and_in_order(local: bool) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        setsockopt(&ours, sockopt::SndBuf, &4096).unwrap();
        ours.set_nonblocking(true).unwrap();
        let (read, writer) = crate::chan::split(ours.into()).unwrap();
        let codec = ReplyCodec::new(1 << 20);
        let mut link = match local {
            true => {
                let (ring, _fd) = PoolRing::create().unwrap();
                Link::Local(Local::new(FramedRead::new(read, codec), writer, ring))
            }
            false => Link::Stream(Stream::new(
                FramedRead::new(Box::new(read) as _, codec),
                Box::new(writer),
            )),
        };

        let mut inflight = VecDeque::new();
        let mut id = 0;
        let mut push = |inflight: &mut VecDeque<Job>, frame: Bytes, tail: Bytes| {
            id += 1;
            inflight.push_back(job(id, frame, tail));
        };
        for round in 0..5 {
            let lens: Vec<usize> = (0..150).map(|i| 10 + (i * 13 + round) % 200).collect();
            let batch = Bytes::from(pattern(round, lens.iter().sum()));
            let mut at = 0;
            for len in lens {
                push(&mut inflight, batch.slice(at..at + len), Bytes::new());
                at += len;
            }
            for k in 0..80 {
                let own = Bytes::from(pattern(round * 100 + k, 1 + k * 5));
                let tail = if k % 3 == 0 {
                    Bytes::from(pattern(k, 10_000 + k))
                } else {
                    Bytes::new()
                };
                push(&mut inflight, own, tail);
            }
        }
        // The first job's first 7 bytes went before.
        let offset = 7;
        let expected: Vec<u8> = inflight
            .iter()
            .flat_map(|j| j.frame.iter().chain(j.tail.iter()).copied())
            .skip(offset)
            .collect();

        let reader = std::thread::spawn(move || {
            let mut theirs = theirs;
            let mut got = Vec::new();
            let mut buf = [0u8; 3000];
            loop {
                std::thread::sleep(Duration::from_micros(200));
                match theirs.read(&mut buf).unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut outbox = Outbox {
            unsent: inflight.len(),
            offset,
        };
        tokio::time::timeout(
            Duration::from_secs(60),
            std::future::poll_fn(|cx| outbox.poll_flush(&mut link, &inflight, cx)),
        )
        .await
        .expect("the reader keeps reading")
        .unwrap();
        assert_eq!(outbox.unsent, 0);
        drop(link);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes arrived out of order");
    }
}
