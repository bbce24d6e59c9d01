//! The worker's blocking end of the channel: the same length-delimited frames as the
//! pool's end (a 4-byte big-endian length, then the frame), over a blocking socket.
//!
//! Reads take whatever has arrived (the pool pipelines short jobs), into a buffer
//! that is never zeroed, and a job is run on its frame where it lies in that buffer:
//! tokio-util's decoder would split each frame off into a `BytesMut` of its own (a
//! reference count taken and dropped per job), which this loop has no use for. Each
//! reply is written as soon as its job ends, into the reply
//! ring ([`crate::ring`]) when the pool gave one, else onto the channel.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::{Buf, BytesMut};

use crate::protocol::{Done, FromWorker, Outcome};
use crate::ring::{WorkerRing, INLINE_MAX, ON_SOCKET};

/// Room left at the front of a reply buffer for the length prefix and the `Done`
/// header, so that a reply needs no copy to be framed.
pub(crate) const REPLY_GAP: usize = 32;

pub(crate) struct BlockingConn {
    stream: UnixStream,
    max_frame_len: usize,
    read_buf: BytesMut,
    /// How long an idle worker polls for the next job before it sleeps.
    spin: Duration,
    /// Where replies go, once the pool has sent one.
    ring: Option<WorkerRing>,
    /// Where a reply's header is written (kept: no allocation per reply).
    header: Vec<u8>,
    /// Descriptors that came with the frames read (a shared argument's memfd comes
    /// with the first bytes of its job's frame), in order.
    fds: VecDeque<OwnedFd>,
    /// Results from this size on go back in shared memory (0: never).
    shared_min: usize,
}

/// The most descriptors a worker keeps unclaimed: the pool sends one per job, and
/// pipelines only a few jobs of shared arguments.
const FDS_MAX: usize = 64;

impl BlockingConn {
    pub(crate) fn new(stream: UnixStream, max_frame_len: usize) -> Self {
        BlockingConn {
            stream,
            max_frame_len,
            read_buf: BytesMut::with_capacity(64 * 1024),
            spin: Duration::ZERO,
            ring: None,
            header: Vec::with_capacity(64),
            fds: VecDeque::new(),
            shared_min: 0,
        }
    }

    /// Passes the gate of the next job (see [`WorkerRing::begin_job`]); without a ring,
    /// every job runs.
    pub(crate) fn begin_job(&self) -> crate::ring::Begin {
        self.ring
            .as_ref()
            .map_or(crate::ring::Begin::Run, WorkerRing::begin_job)
    }

    pub(crate) fn set_ring(&mut self, ring: WorkerRing) {
        self.ring = Some(ring);
    }

    /// The next frame, with any descriptors that came with it: only the setup brings
    /// one (the reply ring's), and it is the first thing the pool sends.
    pub(crate) fn recv_with_fds(&mut self) -> io::Result<Option<(BytesMut, VecDeque<OwnedFd>)>> {
        let mut fds = VecDeque::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(len) = self.buffered()? {
                let mut frame = self.read_buf.split_to(4 + len);
                frame.advance(4);
                return Ok(Some((frame, fds)));
            }
            let n = crate::fdpass::recv_with_fds(self.stream.as_raw_fd(), &mut chunk, &mut fds)?;
            if n == 0 {
                return if self.read_buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            self.read_buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The descriptor that came with the job frame at the front of the buffer (see
    /// [`ToWorker::SharedJob`](crate::protocol::ToWorker)).
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    pub(crate) fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// See [`Large::min`](crate::protocol::codec::Large).
    pub(crate) fn set_shared_min(&mut self, min: usize) {
        self.shared_min = min;
    }

    pub(crate) fn shared_min(&self) -> usize {
        self.shared_min
    }

    pub(crate) fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    pub(crate) fn set_max_frame_len(&mut self, max: usize) {
        self.max_frame_len = max;
    }

    /// The length of the frame at the front of the buffer (its prefix not counted),
    /// if all of it has been read; an error if it is longer than the limit. While it
    /// is still coming, room is made for all of it, so that a large frame is read in
    /// place rather than moved at every growth of the buffer.
    pub(crate) fn buffered(&mut self) -> io::Result<Option<usize>> {
        let Some(prefix) = self.read_buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max_frame_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a frame of {len} bytes, over the limit of {}",
                    self.max_frame_len
                ),
            ));
        }
        if self.read_buf.len() >= 4 + len {
            return Ok(Some(len));
        }
        self.read_buf.reserve(4 + len - self.read_buf.len());
        Ok(None)
    }

    /// Reads until a whole frame is in the buffer and returns its length (see
    /// [`frame`](Self::frame)), or `None` at end of stream.
    pub(crate) fn recv(&mut self) -> io::Result<Option<usize>> {
        loop {
            if let Some(len) = self.buffered()? {
                return Ok(Some(len));
            }
            if self.read_buf.capacity() - self.read_buf.len() < 4096 {
                self.read_buf.reserve(64 * 1024);
            }
            if self.read_into_spare(self.read_buf.is_empty())? == 0 {
                return if self.read_buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// The frame of `len` bytes at the front of the buffer, as [`buffered`] or
    /// [`recv`] found it.
    ///
    /// [`buffered`]: Self::buffered
    /// [`recv`]: Self::recv
    pub(crate) fn frame(&self, len: usize) -> &[u8] {
        &self.read_buf[4..4 + len]
    }

    /// Drops the frame of `len` bytes at the front of the buffer: it has been handled.
    pub(crate) fn consume(&mut self, len: usize) {
        self.read_buf.advance(4 + len);
    }

    /// One `read` into the buffer's spare capacity, which is not zeroed first: a
    /// 16 MiB frame would otherwise be zeroed again at every read.
    ///
    /// When `spin`, it first polls without blocking for a short while: a pool that
    /// sends jobs one after another sends the next one within microseconds of the
    /// last reply, and catching it awake saves the wake-up of a sleeping process,
    /// which is most of a round trip's cost.
    fn read_into_spare(&mut self, spin: bool) -> io::Result<usize> {
        let fd = self.stream.as_raw_fd();
        let spare = self.read_buf.spare_capacity_mut();
        let spin_until =
            (spin && !self.spin.is_zero()).then(|| std::time::Instant::now() + self.spin);
        loop {
            let flags = if spin_until.is_some_and(|t| std::time::Instant::now() < t) {
                libc::MSG_DONTWAIT
            } else {
                0
            };
            // recvmsg(2), not recv(2): a descriptor passed with the bytes would be
            // closed unseen by a plain read.
            let mut iov = libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: spare.len(),
            };
            let mut control = [0u64; 16];
            // SAFETY: an all-zero msghdr is valid; it points at `iov` (writable memory
            // owned by `read_buf`, `spare.len()` bytes long, of which recvmsg(2)
            // writes at most that many) and at `control`, a buffer of its stated
            // length, 8-byte aligned as cmsg headers need.
            let n = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&control) as _;
                let n = libc::recvmsg(fd, &mut msg, flags | libc::MSG_CMSG_CLOEXEC);
                if n >= 0 {
                    crate::fdpass::take_rights(&msg, &mut self.fds);
                    if msg.msg_flags & libc::MSG_CTRUNC != 0 || self.fds.len() > FDS_MAX {
                        return Err(io::Error::other("too many descriptors from the pool"));
                    }
                }
                n
            };
            if n >= 0 {
                let n = n as usize;
                // SAFETY: the kernel initialised the first `n` bytes of the spare
                // capacity, right after the buffer's current length.
                unsafe { self.read_buf.set_len(self.read_buf.len() + n) };
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                // Polling must not keep the CPU from a process that would answer.
                io::ErrorKind::WouldBlock => std::thread::yield_now(),
                _ => return Err(err),
            }
        }
    }

    /// Sends a message with no payload, at once.
    pub(crate) fn send_message(&mut self, msg: &FromWorker) -> io::Result<()> {
        let mut buf = vec![0u8; 4];
        buf = postcard::to_extend(msg, buf).map_err(io::Error::other)?;
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf)
    }

    /// Sends the reply to job `id` at once. `out` holds [`REPLY_GAP`] bytes of room,
    /// then the encoded results (when `outcome` is `Ok`).
    ///
    /// Replies are never held back to be batched with later ones: if the next job
    /// crashed the worker, a held reply would be lost and the crash blamed on the job
    /// that had finished; if it hung, the pool would time the wrong job. The ring makes
    /// a reply the pool's as soon as it is written, without a system call.
    pub(crate) fn send_reply(
        &mut self,
        id: u64,
        outcome: Outcome,
        (ran_ns, ran_jobs): (u64, u32),
        out: &mut [u8],
    ) -> io::Result<()> {
        let mut results_len = out.len().saturating_sub(REPLY_GAP);
        let outcome = match outcome {
            Outcome::Ok { .. } if results_len + REPLY_GAP > self.max_frame_len => {
                Outcome::ResultTooLarge { size: results_len }
            }
            other => other,
        };
        if !matches!(outcome, Outcome::Ok { .. }) {
            results_len = 0;
        }
        let done = Done {
            id,
            outcome,
            ran_ns,
            ran_jobs,
        };
        let header = &mut self.header;
        header.clear();
        if done.write_ok(header) && header.len() <= REPLY_GAP - 4 {
            // The common case: the header fits in the gap before the results.
            let start = REPLY_GAP - header.len() - 4;
            let len = (header.len() + results_len) as u32;
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            out[start + 4..REPLY_GAP].copy_from_slice(header);
            return self.emit(&out[start..REPLY_GAP + results_len]);
        }
        let header = postcard::to_allocvec(&FromWorker::Done(done)).map_err(io::Error::other)?;
        let mut frame = ((header.len() + results_len) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&out[REPLY_GAP..REPLY_GAP + results_len]);
        self.emit(&frame)
    }

    /// Sends the reply to job `id` whose one result, `bytes`, a view of the job's
    /// shared argument (`arg`: its memfd and mapping), goes back in the argument's
    /// memfd, uncopied (see [`crate::shm`]): `out` holds [`REPLY_GAP`] bytes of room,
    /// then the chunk's beginning (a sequence of one, `Ok`, the length). Anything
    /// else (no such argument, bytes not within it, no ring) goes over the channel.
    pub(crate) fn send_shared_reply(
        &mut self,
        id: u64,
        ran: (u64, u32),
        out: &mut Vec<u8>,
        bytes: bytes::Bytes,
        arg: Option<&(OwnedFd, bytes::Bytes)>,
    ) -> io::Result<()> {
        let ok = Outcome::Ok {
            panicked: 0,
            byte_string: true,
        };
        if bytes.len() > self.max_frame_len {
            let too_large = Outcome::ResultTooLarge { size: bytes.len() };
            return self.send_reply(id, too_large, ran, out);
        }
        let within = arg.and_then(|(fd, mem)| {
            crate::shm::offset_within(mem, &bytes).map(|at| (fd.as_fd(), at))
        });
        let (Some((fd, offset)), Some(ring)) = (within, &self.ring) else {
            out.extend_from_slice(&bytes);
            return self.send_reply(id, ok, ran, out);
        };
        let done = Done {
            id,
            outcome: ok,
            ran_ns: ran.0,
            ran_jobs: ran.1,
        };
        let mut frame = vec![0; 4];
        done.write_shared(&mut frame);
        frame.extend_from_slice(out.get(REPLY_GAP..).unwrap_or_default());
        crate::protocol::put_varint(offset, &mut frame);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        // Its place in the ring, then the frame on the channel with the memfd.
        let sock = self.stream.as_fd();
        ring.push(&ON_SOCKET.to_be_bytes(), || hung_up(sock))?;
        let iov = [libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        }];
        let sent = loop {
            // SAFETY: `iov` describes `frame`, readable for the call.
            let n = unsafe {
                crate::fdpass::sendmsg_with_fd(
                    self.stream.as_raw_fd(),
                    &iov,
                    fd,
                    libc::MSG_NOSIGNAL,
                )
            };
            match usize::try_from(n) {
                Ok(n) => break n,
                Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(io::Error::last_os_error()),
            }
        };
        // The descriptor went with the first byte; the rest as usual.
        self.stream.write_all(&frame[sent..])
    }

    /// Writes one reply frame (length prefix included): into the ring if there is
    /// one and it fits, else onto the channel, with its place marked in the ring.
    fn emit(&mut self, frame: &[u8]) -> io::Result<()> {
        let Some(ring) = &self.ring else {
            return self.stream.write_all(frame);
        };
        let fd = self.stream.as_fd();
        let hung_up = || hung_up(fd);
        if frame.len() <= INLINE_MAX {
            if ring.push(frame, hung_up)? {
                // The pool is going to sleep: an empty frame wakes it.
                self.stream.write_all(&[0; 4])?;
            }
            return Ok(());
        }
        // The channel itself wakes the pool.
        ring.push(&ON_SOCKET.to_be_bytes(), hung_up)?;
        self.stream.write_all(frame)
    }
}

/// Whether the pool has closed its end of the channel (a socketpair reports `POLLHUP`
/// once its peer is closed).
fn hung_up(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd, PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `test` on a thread of its own and fails if it takes over 30 s: the reads
    /// under test block, and a broken reader would otherwise hang the suite.
    fn within_bound(test: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        let runner = std::thread::spawn(move || {
            test();
            let _ = done.send(());
        });
        match finished.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => runner.join().unwrap(),
            // The test panicked: report its panic.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(runner.join().unwrap_err())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("still reading after 30 s"),
        }
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// Frames written in pieces that cut them anywhere (a large one among them) are
    /// read whole, in order; then the end of the stream.
    #[test]
    fn frames_come_whole_and_in_order_however_they_are_cut() {
        within_bound(|| {
            let (mut pool, worker) = UnixStream::pair().unwrap();
            let bodies: Vec<Vec<u8>> = (0..50usize)
                .map(|i| {
                    let len = if i == 20 { 3 << 20 } else { i * 37 % 300 };
                    (0..len).map(|b| (b * 7 + i) as u8).collect()
                })
                .collect();
            let wire: Vec<u8> = bodies.iter().flat_map(|b| framed(b)).collect();
            let writer = std::thread::spawn(move || {
                for piece in wire.chunks(1000 + 1) {
                    pool.write_all(piece).unwrap();
                }
            });
            let mut conn = BlockingConn::new(worker, 4 << 20);
            for body in &bodies {
                let len = match conn.buffered().unwrap() {
                    Some(len) => len,
                    None => conn.recv().unwrap().expect("a frame"),
                };
                assert!(
                    conn.frame(len) == &body[..],
                    "frame of {} bytes",
                    body.len()
                );
                conn.consume(len);
            }
            writer.join().unwrap();
            assert_eq!(conn.recv().unwrap(), None);
        });
    }

    #[test]
    fn a_frame_over_the_limit_is_refused() {
        within_bound(|| {
            let (mut pool, worker) = UnixStream::pair().unwrap();
            let mut conn = BlockingConn::new(worker, 100);
            pool.write_all(&framed(&[1; 100])).unwrap();
            pool.write_all(&framed(&[2; 101])).unwrap();
            let len = conn.recv().unwrap().unwrap();
            assert_eq!(conn.frame(len), &[1; 100]);
            conn.consume(len);
            let err = conn.recv().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains("101 bytes"), "{err}");
        });
    }

    #[test]
    fn a_stream_that_ends_inside_a_frame_is_an_error() {
        within_bound(|| {
            let (mut pool, worker) = UnixStream::pair().unwrap();
            let mut conn = BlockingConn::new(worker, 1 << 20);
            pool.write_all(&framed(&[7; 10])[..8]).unwrap();
            drop(pool);
            let err = conn.recv().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        });
    }
}
