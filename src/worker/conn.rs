//! The worker's blocking end of the channel: the same length-delimited codec as the
//! pool's end, over a blocking socket.
//!
//! Replies are batched: when a job was short and the pool has already sent the next
//! job, for the same function, the reply waits in `pending` and goes out with the next
//! ones in one `write`. Whatever is pending is written before the worker blocks to
//! read. A short job followed by a long one of another function is never held back;
//! the same function can, rarely, be short on one input and long on the next.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::protocol::codec::{decode_frame, frame_codec};
use crate::protocol::{FromWorker, Outcome, ToWorker};
use crate::task_fn::FnRef;

/// Room left at the front of a reply buffer for the length prefix and the `Done`
/// header, so that a reply needs no copy to be framed.
pub(crate) const REPLY_GAP: usize = 32;

/// Replies to jobs shorter than this are batched when more jobs are waiting.
const SHORT_JOB: Duration = Duration::from_micros(50);

/// Batched replies are written once they reach this size.
const BATCH_BYTES: usize = 256 * 1024;

pub(crate) struct BlockingConn {
    stream: UnixStream,
    codec: LengthDelimitedCodec,
    max_frame_len: usize,
    read_buf: BytesMut,
    pending: Vec<u8>,
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
            pending: Vec::new(),
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

    /// Whether the next job is already buffered whole, and runs `func`.
    fn next_job_runs(&self, func: FnRef) -> bool {
        let buf = &self.read_buf[..];
        if buf.len() < 4 {
            return false;
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        buf.len() - 4 >= len
            && matches!(
                decode_frame::<ToWorker>(&buf[4..4 + len]),
                Ok((ToWorker::Job { func: next, .. }, _)) if next == func
            )
    }

    /// The next frame, or `None` at end of stream. Writes pending replies before it
    /// blocks.
    pub(crate) fn recv(&mut self) -> io::Result<Option<BytesMut>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.read_buf)? {
                return Ok(Some(frame));
            }
            self.flush()?;
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

    /// Writes the batched replies.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.stream.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Sends a message with no payload, at once.
    pub(crate) fn send_message(&mut self, msg: &FromWorker) -> io::Result<()> {
        let mut buf = vec![0u8; 4];
        buf = postcard::to_extend(msg, buf).map_err(io::Error::other)?;
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.flush()?;
        self.stream.write_all(&buf)
    }

    /// Sends the reply to job `id`. `out` holds [`REPLY_GAP`] bytes of room, then the
    /// encoded results (when `outcome` is `Ok`). The reply is batched if `took` was
    /// short and the next job, already here, runs the same `func`.
    pub(crate) fn send_reply(
        &mut self,
        id: u64,
        func: FnRef,
        outcome: Outcome,
        out: &mut [u8],
        took: Duration,
    ) -> io::Result<()> {
        let mut results_len = out.len() - REPLY_GAP;
        let outcome = match outcome {
            Outcome::Ok if results_len + REPLY_GAP > self.max_frame_len => {
                Outcome::ResultTooLarge { size: results_len }
            }
            other => other,
        };
        if !matches!(outcome, Outcome::Ok) {
            results_len = 0;
        }
        let msg = FromWorker::Done { id, outcome };
        let mut small = [0u8; REPLY_GAP - 4];
        let batch = took < SHORT_JOB && self.next_job_runs(func);
        if let Ok(header) = postcard::to_slice(&msg, &mut small) {
            // The common case: the header fits in the gap before the results.
            let start = REPLY_GAP - header.len() - 4;
            let len = (header.len() + results_len) as u32;
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            out[start + 4..REPLY_GAP].copy_from_slice(header);
            let frame = &out[start..REPLY_GAP + results_len];
            if !batch && self.pending.is_empty() {
                return self.stream.write_all(frame);
            }
            self.pending.extend_from_slice(frame);
        } else {
            let header = postcard::to_allocvec(&msg).map_err(io::Error::other)?;
            let len = (header.len() + results_len) as u32;
            self.pending.extend_from_slice(&len.to_be_bytes());
            self.pending.extend_from_slice(&header);
            self.pending
                .extend_from_slice(&out[REPLY_GAP..REPLY_GAP + results_len]);
        }
        if !batch || self.pending.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }
}
