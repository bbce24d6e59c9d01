//! The worker's blocking end of the channel: the same length-delimited codec as the
//! pool's end, over a blocking socket.
//!
//! Reads take whatever has arrived (the pool pipelines short jobs), into a buffer
//! that is never zeroed; each reply is written as soon as its job ends.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::protocol::codec::frame_codec;
use crate::protocol::{FromWorker, Outcome};

/// Room left at the front of a reply buffer for the length prefix and the `Done`
/// header, so that a reply needs no copy to be framed.
pub(crate) const REPLY_GAP: usize = 32;

pub(crate) struct BlockingConn {
    stream: UnixStream,
    codec: LengthDelimitedCodec,
    max_frame_len: usize,
    read_buf: BytesMut,
    /// How long an idle worker polls for the next job before it sleeps.
    spin: Duration,
}

impl BlockingConn {
    pub(crate) fn new(stream: UnixStream, max_frame_len: usize) -> Self {
        BlockingConn {
            stream,
            codec: frame_codec(max_frame_len),
            max_frame_len,
            read_buf: BytesMut::with_capacity(64 * 1024),
            spin: Duration::ZERO,
        }
    }

    pub(crate) fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    pub(crate) fn set_max_frame_len(&mut self, max: usize) {
        self.max_frame_len = max;
        self.codec.set_max_frame_length(max);
    }

    /// The next frame, or `None` at end of stream.
    pub(crate) fn recv(&mut self) -> io::Result<Option<BytesMut>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.read_buf)? {
                return Ok(Some(frame));
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
            // SAFETY: `spare` is writable memory owned by `read_buf`, `spare.len()`
            // bytes long; recv(2) writes at most that many bytes into it.
            let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), flags) };
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
    /// that had finished; if it hung, the pool would time the wrong job.
    pub(crate) fn send_reply(
        &mut self,
        id: u64,
        outcome: Outcome,
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
        let msg = FromWorker::Done { id, outcome };
        let mut small = [0u8; REPLY_GAP - 4];
        if let Ok(header) = postcard::to_slice(&msg, &mut small) {
            // The common case: the header fits in the gap before the results.
            let start = REPLY_GAP - header.len() - 4;
            let len = (header.len() + results_len) as u32;
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            out[start + 4..REPLY_GAP].copy_from_slice(header);
            return self.stream.write_all(&out[start..REPLY_GAP + results_len]);
        }
        let header = postcard::to_allocvec(&msg).map_err(io::Error::other)?;
        let mut frame = ((header.len() + results_len) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&out[REPLY_GAP..REPLY_GAP + results_len]);
        self.stream.write_all(&frame)
    }
}
