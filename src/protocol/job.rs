//! A job's frame on the wire: a 4-byte length, the [`ToWorker::Job`] header, the chunk
//! of arguments; the last bytes of a large byte-string argument may follow from where
//! they are, without a copy.

use crate::protocol::FnRef;
use crate::protocol::{put_varint, ToWorker};

/// Why a job's frame could not be written.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// An argument did not encode.
    Arguments(String),
    /// The frame would be `size` bytes, over the pool's frame limit.
    TooLarge { size: usize, limit: usize },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Arguments(why) => write!(f, "the argument did not encode: {why}"),
            FrameError::TooLarge { size, limit } => write!(
                f,
                "the job's frame would be {size} bytes, over the limit of {limit} bytes"
            ),
        }
    }
}

/// Appends job `id`'s frame to `out`, its arguments written by `chunk`, except for the
/// last `tail` bytes of the frame, which the caller writes from elsewhere (the length
/// prefix and the frame `limit` count them). On error `out` is left as it was.
pub(crate) fn write_job_frame(
    id: u64,
    func: FnRef,
    limit: usize,
    out: &mut Vec<u8>,
    tail: usize,
    chunk: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    ToWorker::write_job(id, func, out);
    let written = chunk(out).map_err(FrameError::Arguments).and_then(|()| {
        let size = (out.len() - start - 4).saturating_add(tail);
        match u32::try_from(size) {
            Ok(len) if size <= limit => Ok(len),
            _ => Err(FrameError::TooLarge { size, limit }),
        }
    });
    match written {
        Ok(len) => {
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Appends the chunk of arguments of a single byte string of `len` bytes, as postcard
/// writes a sequence of one `Vec<u8>` or `Bytes` (its length, then its bytes) without
/// the bytes themselves, which follow on the wire.
pub(crate) fn write_byte_string_chunk(len: usize, out: &mut Vec<u8>) {
    out.push(1);
    put_varint(len as u64, out);
}
