//! The worker's blocking end of the channel: the same length-delimited codec as the
//! pool's end, over a blocking socket.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::protocol::codec::frame_codec;
use crate::protocol::{FromWorker, Outcome};

/// Room left at the front of a reply buffer for the length prefix and the `Done`
/// header, so that a reply is written with one copy-free `write_all`.
pub(crate) const REPLY_GAP: usize = 32;

pub(crate) struct BlockingConn {
    stream: UnixStream,
    codec: LengthDelimitedCodec,
    max_frame_len: usize,
    read_buf: BytesMut,
}

impl BlockingConn {
    pub(crate) fn new(stream: UnixStream, max_frame_len: usize) -> Self {
        BlockingConn {
            stream,
            codec: frame_codec(max_frame_len),
            max_frame_len,
            read_buf: BytesMut::with_capacity(64 * 1024),
        }
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
            if self.read_buf.capacity() - self.read_buf.len() < 16 * 1024 {
                self.read_buf.reserve(64 * 1024);
            }
            let len = self.read_buf.len();
            let cap = self.read_buf.capacity();
            self.read_buf.resize(cap, 0);
            let n = loop {
                match self.stream.read(&mut self.read_buf[len..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            self.read_buf.truncate(len + *n.as_ref().unwrap_or(&0));
            if n? == 0 {
                return if self.read_buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Sends a message with no payload.
    pub(crate) fn send_message(&mut self, msg: &FromWorker) -> io::Result<()> {
        let mut buf = vec![0u8; 4];
        buf = postcard::to_extend(msg, buf).map_err(io::Error::other)?;
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf)
    }

    /// Sends the reply to job `id`. `out` holds [`REPLY_GAP`] bytes of room, then the
    /// encoded results (when `outcome` is `Ok`).
    pub(crate) fn send_reply(
        &mut self,
        id: u64,
        outcome: Outcome,
        out: &mut [u8],
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
