//! Encoding: postcard for headers and values, length-delimited frames around them.
//!
//! Every encode and decode of the crate goes through this module. Values cross the wire
//! wrapped in [`Wire`], which sends a top-level `Vec<u8>` as one byte string (a length
//! and a copy) rather than as a sequence of single bytes, as serde would by default.
//! `bytes::Bytes` and `serde_bytes` types take the same path on their own.

use std::any::{Any, TypeId};
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_util::codec::LengthDelimitedCodec;

use crate::error::RemotePanic;
use crate::protocol::Outcome;

/// The frame codec both ends use, with the given maximum frame length.
pub(crate) fn frame_codec(max_frame_len: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max_frame_len)
        .new_codec()
}

/// The pool's reader of a worker's frames: the same frames as [`frame_codec`]'s,
/// except that a large frame that is all the read buffer holds is taken with the
/// buffer, not cut from it. The frame then owns its memory alone, so a `Vec<u8>` or
/// `Bytes` result made from it needs no second buffer of its size (a fresh one costs a
/// page fault per 4 KiB).
#[derive(Debug)]
pub(crate) struct ReplyCodec {
    max_frame_len: usize,
}

/// Frames at least this large are taken whole when they can be.
const TAKE_WHOLE: usize = 64 << 10;

impl ReplyCodec {
    pub(crate) fn new(max_frame_len: usize) -> Self {
        ReplyCodec { max_frame_len }
    }
}

impl tokio_util::codec::Decoder for ReplyCodec {
    type Item = bytes::BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        use bytes::Buf;
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "frame of {len} bytes, over the limit of {} bytes",
                    self.max_frame_len
                ),
            ));
        }
        if src.len() < 4 + len {
            // Room for the rest of the frame in one go.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        let mut frame = if len >= TAKE_WHOLE && src.len() == 4 + len {
            std::mem::take(src)
        } else {
            src.split_to(4 + len)
        };
        frame.advance(4);
        Ok(Some(frame))
    }
}

/// Encodes a frame: `header`, then whatever `payload` appends.
pub(crate) fn encode_frame<H: Serialize>(
    header: &H,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    let mut buf = postcard::to_extend(header, Vec::new()).map_err(|e| e.to_string())?;
    payload(&mut buf)?;
    Ok(buf)
}

/// Splits a frame into its header and the payload behind it.
pub(crate) fn decode_frame<H: DeserializeOwned>(frame: &[u8]) -> Result<(H, &[u8]), String> {
    postcard::take_from_bytes(frame).map_err(|e| format!("bad frame header: {e}"))
}

/// A value on the wire; see the module docs.
pub(crate) struct Wire<T>(pub(crate) T);

/// A borrowed value on the wire.
struct WireRef<'a, T>(&'a T);

impl<T: Serialize + 'static> Serialize for WireRef<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self.0 as &dyn Any).downcast_ref::<Vec<u8>>() {
            Some(bytes) => serializer.serialize_bytes(bytes),
            None => self.0.serialize(serializer),
        }
    }
}

impl<T: Serialize + 'static> Serialize for Wire<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireRef(&self.0).serialize(serializer)
    }
}

impl<'de, T: DeserializeOwned + 'static> Deserialize<'de> for Wire<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
            let bytes: Box<dyn Any> =
                Box::new(serde_bytes::ByteBuf::deserialize(deserializer)?.into_vec());
            if let Ok(value) = bytes.downcast::<T>() {
                return Ok(Wire(*value));
            }
            unreachable!("TypeId said T is Vec<u8>");
        }
        T::deserialize(deserializer).map(Wire)
    }
}

/// A chunk of values, serialised as a postcard sequence of [`Wire`] values.
struct Chunk<'a, T>(&'a [T]);

impl<T: Serialize + 'static> Serialize for Chunk<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(WireRef))
    }
}

/// A borrowed buffer as postcard's output, so that a failed encode leaves the buffer
/// as it was (less what the encode appended).
struct Sink<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Sink<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// Appends `value` to `out`; on error `out` is left as it was.
fn extend<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    postcard::to_extend(value, Sink(out))
        .map(drop)
        .map_err(|e| {
            out.truncate(start);
            e.to_string()
        })
}

/// Appends a chunk of arguments to a frame.
pub(crate) fn encode_chunk<A: Serialize + 'static>(
    items: &[A],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    extend(&Chunk(items), out)
}

/// Decodes a chunk of arguments.
pub(crate) fn decode_chunk<A: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<Vec<A>, String> {
    let items: Vec<Wire<A>> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    Ok(items.into_iter().map(|w| w.0).collect())
}

/// Decodes a chunk of arguments, runs `f` on each, and appends the chunk of results.
pub(crate) fn run_chunk<A, R>(
    payload: &[u8],
    out: &mut Vec<u8>,
    mut f: impl FnMut(A) -> Result<R, RemotePanic>,
) -> Outcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let args = match decode_chunk::<A>(payload) {
        Ok(args) => args,
        Err(e) => return Outcome::BadArguments(e),
    };
    let results: Vec<Result<Wire<R>, RemotePanic>> =
        args.into_iter().map(|arg| f(arg).map(Wire)).collect();
    let panicked = results.iter().filter(|r| r.is_err()).count() as u32;
    // A `Serialize` impl is user code too: it may fail, or panic.
    let start = out.len();
    match catch_unwind(AssertUnwindSafe(|| extend(&results, out))) {
        Ok(Ok(())) => Outcome::Ok { panicked },
        Ok(Err(e)) => Outcome::BadResult(e),
        Err(panic) => {
            out.truncate(start);
            let panic = crate::worker::panic_from_payload(panic);
            Outcome::BadResult(format!("encoding the result panicked: {}", panic.message()))
        }
    }
}

/// Decodes a chunk of results straight into what the caller keeps of each: one
/// allocation per chunk rather than two.
pub(crate) fn decode_results_with<R, T>(
    bytes: &[u8],
    f: impl FnMut(Result<R, RemotePanic>) -> T,
) -> Result<Vec<T>, String>
where
    R: DeserializeOwned + 'static,
{
    use serde::de::DeserializeSeed;
    let mut de = postcard::Deserializer::from_bytes(bytes);
    Mapped {
        f,
        _types: std::marker::PhantomData,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())
}

/// A sequence of results, each mapped by `f` as it is decoded.
struct Mapped<R, F> {
    f: F,
    _types: std::marker::PhantomData<fn() -> R>,
}

impl<'de, R, T, F> serde::de::DeserializeSeed<'de> for Mapped<R, F>
where
    R: DeserializeOwned + 'static,
    F: FnMut(Result<R, RemotePanic>) -> T,
{
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, R, T, F> serde::de::Visitor<'de> for Mapped<R, F>
where
    R: DeserializeOwned + 'static,
    F: FnMut(Result<R, RemotePanic>) -> T,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a chunk of results")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // The length comes from the untrusted reply: do not let it size the buffer.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element::<Result<Wire<R>, RemotePanic>>()? {
            out.push((self.f)(item.map(|w| w.0)));
        }
        Ok(out)
    }
}

/// Decodes a chunk of results.
pub(crate) fn decode_results<R: DeserializeOwned + 'static>(
    bytes: &[u8],
) -> Result<Vec<Result<R, RemotePanic>>, String> {
    decode_results_with(bytes, |r| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_u8_is_sent_as_one_byte_string() {
        let data = vec![vec![7u8; 1000]];
        let mut out = Vec::new();
        encode_chunk(&data, &mut out).unwrap();
        // 1 byte of sequence length, 2 of byte-string length, then the bytes.
        assert_eq!(out.len(), 1 + 2 + 1000);
        assert_eq!(decode_chunk::<Vec<u8>>(&out).unwrap(), data);
    }

    #[test]
    fn chunks_round_trip() {
        let data = vec![(1u64, "a".to_string()), (2, "b".to_string())];
        let mut out = Vec::new();
        encode_chunk(&data, &mut out).unwrap();
        assert_eq!(decode_chunk::<(u64, String)>(&out).unwrap(), data);
        let mut results = Vec::new();
        let outcome = run_chunk::<(u64, String), u64>(&out, &mut results, |(n, _)| {
            if n == 2 {
                Err(RemotePanic::new("two".into(), None))
            } else {
                Ok(n * 10)
            }
        });
        assert!(matches!(outcome, Outcome::Ok { panicked: 1 }));
        let decoded = decode_results::<u64>(&results).unwrap();
        assert_eq!(decoded[0], Ok(10));
        assert_eq!(decoded[1].as_ref().unwrap_err().message(), "two");
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        assert!(decode_chunk::<(u64, String)>(&[5, 0xff, 0xff]).is_err());
        assert!(decode_results::<String>(&[1, 0, 200]).is_err());
        assert!(decode_frame::<super::super::ToWorker>(&[99]).is_err());
    }
}
