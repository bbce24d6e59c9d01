//! A job's results as they arrive from a worker: in a chunk, a byte string of their own
//! buffer, or (small ones) held in place.

use bytes::{Bytes, BytesMut};

/// A job's results as they came.
#[derive(Debug)]
pub(crate) enum Results {
    /// The chunk of encoded results (see `codec::decode_results`).
    Chunk(Bytes),
    /// The job's one result, a byte string (a `Vec<u8>` or `Bytes`): its bytes, in a
    /// buffer of their own (see `codec::ReplyCodec`).
    ByteString(BytesMut),
    /// The job's one result, a `Bytes` that came in shared memory: a view of it (see
    /// [`crate::shm`]).
    Shared(Bytes),
    /// A chunk of results of at most [`SMALL`] bytes, held in the reply itself: it
    /// keeps no buffer of the driver's alive, and the stream finds it where the reply
    /// is, not on another line of memory that the driver's thread wrote.
    Small(SmallChunk),
}

/// The most bytes of results a reply holds in itself (as large as `Results` allows
/// without growing).
pub(crate) const SMALL: usize = 38;

/// See [`Results::Small`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SmallChunk {
    len: u8,
    bytes: [u8; SMALL],
}

impl SmallChunk {
    /// `chunk` held in place; `None` if it is longer than [`SMALL`].
    pub(crate) fn new(chunk: &[u8]) -> Option<SmallChunk> {
        let mut bytes = [0; SMALL];
        bytes.get_mut(..chunk.len())?.copy_from_slice(chunk);
        Some(SmallChunk {
            len: chunk.len() as u8,
            bytes,
        })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Results {
    /// Runs `f` on the chunk of encoded results, wherever it is held (a small one is
    /// not copied out of the reply).
    pub(crate) fn with_chunk<T>(self, f: impl FnOnce(&[u8]) -> T) -> T {
        match self {
            Results::Small(small) => f(small.as_slice()),
            other => f(&other.into_chunk()),
        }
    }

    /// The chunk of encoded results: for a byte string, a copy encoded as the chunk
    /// it came in (for a caller that did not expect one; never on the usual paths).
    pub(crate) fn into_chunk(self) -> Bytes {
        match self {
            Results::Chunk(chunk) => chunk,
            Results::Small(small) => Bytes::copy_from_slice(small.as_slice()),
            Results::ByteString(bytes) => byte_string_chunk(&bytes),
            Results::Shared(bytes) => byte_string_chunk(&bytes),
        }
    }
}

/// A byte string encoded as the chunk it would have come in: a sequence of one,
/// variant `Ok`, then the string (see `codec::byte_string_result`).
fn byte_string_chunk(bytes: &[u8]) -> Bytes {
    let mut chunk = Vec::with_capacity(12 + bytes.len());
    chunk.extend_from_slice(&[1, 0]);
    crate::protocol::put_varint(bytes.len() as u64, &mut chunk);
    chunk.extend_from_slice(bytes);
    chunk.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_chunk_holds_up_to_small_bytes_and_results_do_not_grow() {
        let bytes: Vec<u8> = (0..=SMALL as u8).collect();
        for len in 0..=SMALL {
            let small = SmallChunk::new(&bytes[..len]).expect("fits");
            assert_eq!(small.as_slice(), &bytes[..len]);
            assert_eq!(&Results::Small(small).into_chunk()[..], &bytes[..len]);
        }
        assert!(SmallChunk::new(&bytes[..SMALL + 1]).is_none());
        assert_eq!(
            std::mem::size_of::<Results>(),
            std::mem::size_of::<Bytes>() + 8
        );
    }
}
