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
use crate::protocol::{Done, Outcome};
use bytes::{Bytes, BytesMut};

/// The frame codec both ends use, with the given maximum frame length.
pub(crate) fn frame_codec(max_frame_len: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max_frame_len)
        .new_codec()
}

/// A reply frame from a worker, as the pool reads it.
#[derive(Debug)]
pub(crate) struct ReplyFrame {
    /// The frame, without its length prefix; when `body` is set, all of it but the body.
    pub(crate) frame: BytesMut,
    /// The bytes of a large reply's one byte-string result, read into a buffer of their
    /// own (see [`ReplyCodec`]): the frame ends with the byte string's length.
    pub(crate) body: Option<BytesMut>,
    /// The bytes of a reply's one byte-string result that came in shared memory (see
    /// [`crate::shm`]): the frame ends with the byte string's length, as with `body`.
    pub(crate) shared: Option<Bytes>,
}

impl ReplyFrame {
    /// The results of a successful reply whose last `payload_len` bytes (of `frame`)
    /// are its payload: no allocation, and no copy but of a payload of at most
    /// [`SMALL`](crate::queue::SMALL) bytes, which the reply holds in itself.
    pub(crate) fn into_results(self, payload_len: usize) -> crate::protocol::results::Results {
        use crate::protocol::results::Results;
        if let Some(shared) = self.shared {
            return Results::Shared(shared);
        }
        match self.body {
            Some(body) => Results::ByteString(body),
            None => {
                let mut frame = self.frame;
                // (`payload_len` comes from reading this frame, so it is never larger.)
                let header = frame.len().saturating_sub(payload_len);
                if let Some(small) = crate::protocol::results::SmallChunk::new(&frame[header..]) {
                    return Results::Small(small);
                }
                bytes::Buf::advance(&mut frame, header);
                Results::Chunk(frame.freeze())
            }
        }
    }
}

impl ReplyFrame {
    /// How many results a successful reply whose last `payload_len` bytes are its
    /// payload says it holds: the count its chunk of results starts with (a body read
    /// on its own is the one result of its chunk); `None` if the count does not read.
    pub(crate) fn result_count(&self, payload_len: usize) -> Option<u64> {
        if self.body.is_some() || self.shared.is_some() {
            return Some(1);
        }
        let payload = &self.frame[self.frame.len().checked_sub(payload_len)?..];
        postcard::take_from_bytes::<u64>(payload)
            .ok()
            .map(|(count, _)| count)
    }

    /// An error unless the reply whose header is `header` (and whose last `payload_len`
    /// bytes are its payload) holds one result per task of a
    /// job of `tasks` tasks (a reply of another outcome holds none, and is not judged
    /// here): the count is the worker's word, and a worker that gets it wrong is broken.
    pub(crate) fn check_count(
        &self,
        header: &super::Done,
        payload_len: usize,
        tasks: usize,
    ) -> Result<(), String> {
        if !matches!(header.outcome, Outcome::Ok { .. }) {
            return Ok(());
        }
        match self.result_count(payload_len) {
            Some(count) if usize::try_from(count) == Ok(tasks) => Ok(()),
            Some(count) => Err(format!(
                "reply to job {} with {count} results for its {tasks} tasks",
                header.id
            )),
            None => Err(format!(
                "reply to job {} whose results do not start with their count",
                header.id
            )),
        }
    }
}

impl ReplyFrame {
    /// Whether this is a worker's wake-up call (see [`crate::ring`]): an empty frame.
    pub(crate) fn is_wake_up(&self) -> bool {
        self.frame.is_empty() && self.body.is_none() && self.shared.is_none()
    }
}

impl From<BytesMut> for ReplyFrame {
    fn from(frame: BytesMut) -> Self {
        ReplyFrame {
            frame,
            body: None,
            shared: None,
        }
    }
}

/// The pool's reader of a worker's frames: the same frames as [`frame_codec`]'s, read
/// so that a large result needs no second buffer of its size (a fresh one costs a page
/// fault per 4 KiB, and copying into it as much again):
///
/// - A large reply whose one result is a byte string (the worker says so, see
///   [`Outcome::Ok`]) has those bytes read into a buffer of their own, which becomes
///   the `Vec<u8>` or `Bytes` result as it is. The buffer is the [`spare`] the driver
///   left, when it is large enough (the argument of a job whose frame has been
///   written: an echo or a transform gets its result in its argument's memory), or a
///   new one of exactly their size.
/// - Another large frame that is all the read buffer holds is taken with the buffer,
///   not cut from it, so that it owns its memory alone.
///
/// [`spare`]: ReplyCodec::spare
#[derive(Debug)]
pub(crate) struct ReplyCodec {
    max_frame_len: usize,
    /// A buffer the next large byte-string result may be read into, and the id of the
    /// job it came from (the driver drops it once that job is done).
    pub(crate) spare: Option<(u64, BytesMut)>,
    /// A reply whose body is being read into a buffer of its own (which is the read
    /// buffer meanwhile).
    split: Option<Split>,
}

/// See [`ReplyCodec`].
#[derive(Debug)]
struct Split {
    /// The frame up to the body.
    head: BytesMut,
    /// The body's length.
    len: usize,
    /// The read buffer, put aside while the body is read.
    aside: BytesMut,
}

/// Frames at least this large are read so that they own their memory.
const TAKE_WHOLE: usize = 64 << 10;

/// Enough of a frame to hold a `Done` header with `Outcome::Ok` and a byte string's
/// length: a worker's large frame is judged on its first bytes.
const HEAD_MAX: usize = 64;

impl ReplyCodec {
    /// The largest frame (or payload in shared memory) it accepts.
    pub(crate) fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    pub(crate) fn new(max_frame_len: usize) -> Self {
        ReplyCodec {
            max_frame_len,
            spare: None,
            split: None,
        }
    }

    /// For a frame of `len` bytes whose start is `start`: how long the part before
    /// the body is, and the body, if it is a reply whose one result is a byte string
    /// that ends the frame.
    fn split_at(start: &[u8], len: usize) -> Option<(usize, usize)> {
        let (header, rest) = Done::read(start).ok()?;
        let Done {
            outcome:
                Outcome::Ok {
                    panicked: 0,
                    byte_string: true,
                },
            ..
        } = header
        else {
            return None;
        };
        let (prefix, body) = byte_string_result(rest)?;
        let head = start.len() - rest.len() + prefix;
        (head.checked_add(body) == Some(len)).then_some((head, body))
    }

    /// A buffer for a body of `len` bytes: the spare if it fits (and is not much
    /// larger: it becomes the result), else a new one.
    fn body_buffer(&mut self, len: usize) -> BytesMut {
        match self.spare.take() {
            Some((_, mut spare))
                if spare.capacity() >= len && spare.capacity() <= len.saturating_mul(2) =>
            {
                spare.clear();
                spare
            }
            _ => BytesMut::with_capacity(len),
        }
    }
}

impl tokio_util::codec::Decoder for ReplyCodec {
    type Item = ReplyFrame;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ReplyFrame>, Self::Error> {
        use bytes::Buf;
        if let Some(split) = &self.split {
            // `src` is the body's buffer.
            if src.len() < split.len {
                return Ok(None);
            }
            let Split { head, len, aside } = self.split.take().expect("checked above");
            let mut body = std::mem::replace(src, aside);
            // Whatever was read past the body (the buffer may be larger) is the next
            // frames': back to the read buffer.
            src.extend_from_slice(&body[len..]);
            body.truncate(len);
            return Ok(Some(ReplyFrame {
                frame: head,
                body: Some(body),
                shared: None,
            }));
        }
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
        if len >= TAKE_WHOLE {
            if src.len() < 4 + HEAD_MAX {
                // Not enough to judge the frame by.
                return Ok(None);
            }
            if let Some((head, body)) = Self::split_at(&src[4..4 + HEAD_MAX], len) {
                let mut head = src.split_to(4 + head);
                head.advance(4);
                let mut buffer = self.body_buffer(body);
                let here = body.min(src.len());
                buffer.extend_from_slice(&src[..here]);
                src.advance(here);
                self.split = Some(Split {
                    head,
                    len: body,
                    aside: std::mem::replace(src, buffer),
                });
                // The body may be here in whole.
                return self.decode(src);
            }
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
        Ok(Some(frame.into()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<ReplyFrame>, Self::Error> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && self.split.is_none() => Ok(None),
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// How a chunk of results that is one successful byte string begins (a sequence of 1,
/// the variant `Ok`, then the string's varint length): the length of that beginning and
/// the string's, if `chunk` starts so. (A `Vec<u8>` travels as a byte string, see
/// [`Wire`].)
pub(crate) fn byte_string_result(chunk: &[u8]) -> Option<(usize, usize)> {
    let (count, rest) = postcard::take_from_bytes::<u64>(chunk).ok()?;
    let (variant, rest) = postcard::take_from_bytes::<u32>(rest).ok()?;
    let (len, rest) = postcard::take_from_bytes::<u64>(rest).ok()?;
    let len = usize::try_from(len).ok()?;
    (count == 1 && variant == 0).then_some((chunk.len() - rest.len(), len))
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

/// Decodes a chunk of arguments (as the worker does, for tests of the encoding).
#[cfg(test)]
pub(crate) fn decode_chunk<A: DeserializeOwned + 'static>(bytes: &[u8]) -> Result<Vec<A>, String> {
    let items: Vec<Wire<A>> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    Ok(items.into_iter().map(|w| w.0).collect())
}

/// Decodes a chunk of arguments, runs `f` on each, and appends the chunk of results to
/// `out`. Each task runs as soon as its argument is decoded, and its result is encoded
/// at once: a chunk costs no `Vec` of arguments and none of results. If an argument
/// does not decode, the tasks before it have run and the chunk fails as a whole
/// (`BadArguments`), as it does if a result does not encode (`BadResult`; every task
/// still runs).
pub(crate) fn run_chunk<A, R>(
    payload: &[u8],
    out: &mut Vec<u8>,
    large: &mut Large,
    mut f: impl FnMut(A) -> Result<R, RemotePanic>,
) -> Outcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let start = out.len();
    let mut panicked = 0;
    let mut failure = None;
    // A sequence: its length, then each argument. (The pool is trusted with the
    // length, as with the frame.)
    let (tasks, mut rest) = match postcard::take_from_bytes::<u64>(payload) {
        Ok(read) => read,
        Err(e) => return Outcome::BadArguments(e.to_string()),
    };
    crate::protocol::put_varint(tasks, out);
    let shared_arg = large.arg.take();
    for _ in 0..tasks {
        let arg = match &shared_arg {
            Some(bytes) => shared_argument::<A>(rest, bytes.clone()).inspect(|_| rest = &[]),
            None => postcard::take_from_bytes::<Wire<A>>(rest)
                .map(|(Wire(arg), after)| {
                    rest = after;
                    arg
                })
                .map_err(|e| e.to_string()),
        };
        let arg = match arg {
            Ok(arg) => arg,
            Err(e) => {
                failure = Some(Outcome::BadArguments(e));
                break;
            }
        };
        let result = f(arg);
        if result.is_err() {
            panicked += 1;
        }
        if failure.is_some() {
            continue;
        }
        let result = match result {
            Ok(value) if tasks == 1 && large.min > 0 && shared_arg.is_some() => {
                match large_result(value, large.min, shared_arg.as_deref().unwrap_or_default()) {
                    Ok(bytes) => {
                        // The chunk's beginning: variant `Ok`, the string's length; its
                        // bytes go in shared memory (see `codec::byte_string_result`).
                        out.push(0);
                        crate::protocol::put_varint(bytes.len() as u64, out);
                        large.result = Some(bytes);
                        return Outcome::Ok {
                            panicked: 0,
                            byte_string: true,
                        };
                    }
                    Err(value) => Ok(Wire(value)),
                }
            }
            other => other.map(Wire),
        };
        // A `Serialize` impl is user code too: it may fail, or panic.
        match catch_unwind(AssertUnwindSafe(|| extend(&result, out))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(Outcome::BadResult(e)),
            Err(panic) => {
                let panic = crate::panics::panic_from_payload(panic);
                failure = Some(Outcome::BadResult(format!(
                    "encoding the result panicked: {}",
                    panic.message()
                )));
            }
        }
    }
    if let Some(failure) = failure {
        out.truncate(start);
        return failure;
    }
    Outcome::Ok {
        panicked,
        // `Wire` sends both as a byte string.
        byte_string: tasks == 1
            && panicked == 0
            && (TypeId::of::<R>() == TypeId::of::<Vec<u8>>()
                || TypeId::of::<R>() == TypeId::of::<bytes::Bytes>()),
    }
}

/// A job's large byte strings that travel in shared memory rather than through the
/// channel (see [`crate::shm`]): the worker's side.
#[derive(Debug, Default)]
pub(crate) struct Large {
    /// The job's one argument, when it came in shared memory: the chunk of arguments
    /// then holds only its beginning (a sequence of one, the string's length).
    pub(crate) arg: Option<Bytes>,
    /// A job's one `Bytes` result from this size on goes back in shared memory (0:
    /// never), when it is a view of the job's shared argument.
    pub(crate) min: usize,
    /// The job's one result, to go back in shared memory; the chunk written holds
    /// only its beginning (a sequence of one, variant `Ok`, the string's length).
    pub(crate) result: Option<Bytes>,
}

/// The one argument of a job whose bytes came in shared memory, `rest` being what the
/// chunk holds of it (the byte string's length): a view of that memory (the pool
/// shares only `Bytes` arguments).
fn shared_argument<A: 'static>(rest: &[u8], bytes: Bytes) -> Result<A, String> {
    let len = postcard::take_from_bytes::<u64>(rest)
        .ok()
        .filter(|(len, after)| after.is_empty() && *len == bytes.len() as u64);
    if len.is_none() {
        return Err("a shared argument whose length is not the chunk's".into());
    }
    let value: Box<dyn Any> = Box::new(bytes);
    value
        .downcast::<A>()
        .map(|a| *a)
        .map_err(|_| "a shared argument for a task that does not take Bytes".into())
}

/// A result's bytes, when it is a `Bytes` of at least `min` bytes that lies within the
/// job's shared argument `arg` (a view of it, which goes back in the argument's memfd
/// without a copy); the value back otherwise. Other results go through the socket: a
/// fresh memfd for them measured slower than the socket (its pages allocated, mapped
/// and freed per result: 0.5-0.64x for a 1-16 MiB copy), as for any `Vec<u8>`.
fn large_result<R: 'static>(value: R, min: usize, arg: &[u8]) -> Result<Bytes, R> {
    if TypeId::of::<R>() != TypeId::of::<Bytes>() {
        // (No box for every other result.)
        return Err(value);
    }
    let boxed: Box<dyn Any> = Box::new(value);
    match boxed.downcast::<Bytes>() {
        Ok(bytes) if bytes.len() >= min && crate::shm::offset_within(arg, &bytes).is_some() => {
            Ok(*bytes)
        }
        Ok(bytes) => Err(*(bytes as Box<dyn Any>)
            .downcast::<R>()
            .expect("the value's own type")),
        Err(_) => unreachable!("R is Bytes, checked above"),
    }
}

/// Decodes a chunk of `expected` results straight into what the caller keeps of each,
/// appended to `out`; returns how many results the chunk says it holds. A chunk that
/// says another count than `expected` is not decoded (`out` is left as it was), so a
/// worker's reply cannot make the caller decode, and keep, more results than it has
/// tasks. On error `out` is left as it was too: bytes that do not decode, or bytes left
/// after the last result.
pub(crate) fn decode_results_into<R, T>(
    bytes: &[u8],
    expected: usize,
    out: &mut Vec<T>,
    f: impl FnMut(Result<R, RemotePanic>) -> T,
) -> Result<u64, String>
where
    R: DeserializeOwned + 'static,
{
    use serde::de::DeserializeSeed;
    // The sequence's length, read first: the worker's word, checked before anything is
    // decoded (or kept) on it.
    let (count, _) = postcard::take_from_bytes::<u64>(bytes).map_err(|e| e.to_string())?;
    if usize::try_from(count).ok() != Some(expected) {
        return Ok(count);
    }
    let start = out.len();
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let decoded = Mapped {
        f,
        out: &mut *out,
        _types: std::marker::PhantomData,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())
    .and_then(|()| match de.finalize() {
        Ok([]) => Ok(count),
        Ok(rest) => Err(format!("{} bytes after the last result", rest.len())),
        Err(e) => Err(e.to_string()),
    });
    if decoded.is_err() {
        out.truncate(start);
    }
    decoded
}

/// Decodes a chunk of results, as many as it holds (for the worker's own chunks and
/// tests: a worker's reply is decoded with [`decode_results_into`], which holds it to
/// its count).
pub(crate) fn decode_results<R: DeserializeOwned + 'static>(
    bytes: &[u8],
) -> Result<Vec<Result<R, RemotePanic>>, String> {
    let count = postcard::take_from_bytes::<u64>(bytes)
        .map_err(|e| e.to_string())?
        .0;
    let expected = usize::try_from(count).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    decode_results_into(bytes, expected, &mut out, |r| r)?;
    Ok(out)
}

/// A sequence of results, each mapped by `f` as it is decoded and appended to `out`.
struct Mapped<'a, R, T, F> {
    f: F,
    out: &'a mut Vec<T>,
    _types: std::marker::PhantomData<fn() -> R>,
}

impl<'de, R, T, F> serde::de::DeserializeSeed<'de> for Mapped<'_, R, T, F>
where
    R: DeserializeOwned + 'static,
    F: FnMut(Result<R, RemotePanic>) -> T,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, R, T, F> serde::de::Visitor<'de> for Mapped<'_, R, T, F>
where
    R: DeserializeOwned + 'static,
    F: FnMut(Result<R, RemotePanic>) -> T,
{
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a chunk of results")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        // The length comes from the untrusted reply: do not let it size the buffer.
        self.out.reserve(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element::<Result<Wire<R>, RemotePanic>>()? {
            self.out.push((self.f)(item.map(|w| w.0)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FromWorker;

    /// A reply frame, length prefix and all, as a worker writes it.
    fn reply<R: Serialize + 'static>(id: u64, result: R) -> Vec<u8> {
        let mut args = Vec::new();
        encode_chunk(&[()], &mut args).unwrap();
        let mut results = Vec::new();
        let mut result = Some(result);
        let outcome = run_chunk::<(), R>(&args, &mut results, &mut Large::default(), |()| {
            Ok(result.take().unwrap())
        });
        let header = FromWorker::Done(Done {
            id,
            outcome,
            ran_ns: 1,
            ran_jobs: 1,
        });
        let mut frame = postcard::to_allocvec(&header).unwrap();
        frame.extend_from_slice(&results);
        let mut out = (frame.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&frame);
        out
    }

    /// Reads `input` through `codec` as `FramedRead` does (into the read buffer's
    /// spare room, at most `chunk` bytes a read), to the end.
    fn read_all(
        codec: &mut ReplyCodec,
        input: &[u8],
        chunk: usize,
    ) -> std::io::Result<Vec<ReplyFrame>> {
        use tokio_util::codec::Decoder;
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut input = input;
        loop {
            while let Some(frame) = codec.decode(&mut buf)? {
                frames.push(frame);
            }
            if input.is_empty() {
                if let Some(frame) = codec.decode_eof(&mut buf)? {
                    frames.push(frame);
                }
                return Ok(frames);
            }
            buf.reserve(1);
            let n = (buf.capacity() - buf.len()).min(chunk).min(input.len());
            buf.extend_from_slice(&input[..n]);
            input = &input[n..];
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    #[test]
    fn a_large_byte_string_result_is_read_into_its_own_buffer() {
        let big = pattern(300 << 10, 1);
        let mut stream = reply(1, 7u64);
        stream.extend(reply(2, big.clone()));
        stream.extend(reply(3, bytes::Bytes::from(pattern(100 << 10, 2))));
        stream.extend(reply(4, "small".to_string()));
        stream.extend(reply(5, pattern(70 << 10, 3)));
        for chunk in [1, 7, 4096, 65536, 1 << 20, usize::MAX] {
            let frames = read_all(&mut ReplyCodec::new(1 << 30), &stream, chunk).unwrap();
            let shapes: Vec<_> = frames
                .iter()
                .map(|f| f.body.as_ref().map(|b| b.len()))
                .collect();
            assert_eq!(
                shapes,
                [None, Some(300 << 10), Some(100 << 10), None, Some(70 << 10)],
                "reads of {chunk}"
            );
            assert_eq!(&frames[1].body.as_ref().unwrap()[..], &big[..]);
            assert_eq!(
                &frames[4].body.as_ref().unwrap()[..],
                &pattern(70 << 10, 3)[..]
            );
            // The frame ends where the body starts: its results decode, as a chunk of
            // one byte string, to the same.
            let (_, payload) = decode_frame::<FromWorker>(&frames[1].frame).unwrap();
            let mut chunk_bytes = payload.to_vec();
            chunk_bytes.extend_from_slice(frames[1].body.as_ref().unwrap());
            assert_eq!(
                decode_results::<Vec<u8>>(&chunk_bytes).unwrap(),
                [Ok(big.clone())]
            );
            // The body owns its buffer alone, from its start.
            let body = frames[1].body.clone().unwrap();
            assert_eq!(body.capacity(), 300 << 10);
        }
    }

    #[test]
    fn the_spare_is_the_body_buffer_when_it_fits() {
        let stream = reply(1, pattern(200 << 10, 4));
        for (capacity, used) in [
            (200 << 10, true),
            (399 << 10, true),
            ((200 << 10) - 1, false),
            (401 << 10, false),
        ] {
            let mut codec = ReplyCodec::new(1 << 30);
            let spare = BytesMut::with_capacity(capacity);
            let at = spare.as_ptr();
            codec.spare = Some((1, spare));
            let frames = read_all(&mut codec, &stream, 1 << 16).unwrap();
            let body = frames[0].body.as_ref().unwrap();
            assert_eq!(&body[..], &pattern(200 << 10, 4)[..]);
            assert_eq!(body.as_ptr() == at, used, "spare of {capacity}");
            // Taken either way: a spare serves one reply.
            assert!(codec.spare.is_none());
        }
        // A spare larger than the body: what is read past the body is the next frame's.
        let mut stream = reply(1, pattern(100 << 10, 5));
        stream.extend(reply(2, 9u32));
        stream.extend(reply(3, pattern(90 << 10, 6)));
        let mut codec = ReplyCodec::new(1 << 30);
        codec.spare = Some((1, BytesMut::with_capacity(150 << 10)));
        let frames = read_all(&mut codec, &stream, usize::MAX).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(
            &frames[0].body.as_ref().unwrap()[..],
            &pattern(100 << 10, 5)[..]
        );
        assert!(frames[1].body.is_none());
        assert_eq!(
            &frames[2].body.as_ref().unwrap()[..],
            &pattern(90 << 10, 6)[..]
        );
    }

    #[test]
    fn other_large_frames_are_read_whole() {
        // Not a byte string: a large string, and a sequence of numbers.
        let text = "x".repeat(100 << 10);
        let mut stream = reply(1, text.clone());
        stream.extend(reply(2, vec![300u16; 50 << 10]));
        let frames = read_all(&mut ReplyCodec::new(1 << 30), &stream, 1 << 16).unwrap();
        assert!(frames.iter().all(|f| f.body.is_none()));
        let (_, payload) = decode_frame::<FromWorker>(&frames[0].frame).unwrap();
        assert_eq!(decode_results::<String>(payload).unwrap(), [Ok(text)]);
        // A worker that says "byte string" of a frame whose length disagrees is not
        // believed: the frame is read whole, for the decoder to judge.
        let mut lying = reply(1, pattern(100 << 10, 7));
        lying.extend_from_slice(&[0; 10]);
        let len = (lying.len() - 4) as u32;
        lying[..4].copy_from_slice(&len.to_be_bytes());
        let frames = read_all(&mut ReplyCodec::new(1 << 30), &lying, 1 << 16).unwrap();
        assert!(frames[0].body.is_none());
        assert_eq!(frames[0].frame.len(), len as usize);
    }

    #[test]
    fn a_reply_cut_short_or_over_the_limit_is_an_error() {
        let stream = reply(1, pattern(100 << 10, 8));
        // Cut where the body starts, too.
        let body_start = stream.len() - (100 << 10);
        for cut in [10, 100, body_start, 50 << 10, stream.len() - 1] {
            let err = read_all(&mut ReplyCodec::new(1 << 30), &stream[..cut], 4096)
                .err()
                .unwrap_or_else(|| panic!("cut at {cut}: no error"));
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::UnexpectedEof,
                "cut at {cut}"
            );
        }
        let err = read_all(&mut ReplyCodec::new(64 << 10), &stream, 4096).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

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
        let outcome =
            run_chunk::<(u64, String), u64>(&out, &mut results, &mut Large::default(), |(n, _)| {
                if n == 2 {
                    Err(RemotePanic::new("two".into(), None))
                } else {
                    Ok(n * 10)
                }
            });
        assert!(matches!(
            outcome,
            Outcome::Ok {
                panicked: 1,
                byte_string: false
            }
        ));
        let decoded = decode_results::<u64>(&results).unwrap();
        assert_eq!(decoded[0], Ok(10));
        assert_eq!(decoded[1].as_ref().unwrap_err().message(), "two");
    }

    /// A result that fails to encode (on `Fail`) or panics while encoding (`Panic`).
    enum Touchy {
        Fine(u8),
        Fail,
        Panic,
    }

    impl Serialize for Touchy {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self {
                Touchy::Fine(n) => serializer.serialize_u8(*n),
                Touchy::Fail => Err(serde::ser::Error::custom("refused")),
                Touchy::Panic => panic!("encoding went wrong"),
            }
        }
    }

    /// Runs a chunk of `args` into a buffer that already holds a byte; returns the
    /// outcome, the buffer, and the arguments the task saw.
    fn run_touchy(args: &[u8], make: fn(u64) -> Touchy) -> (Outcome, Vec<u8>, Vec<u64>) {
        let mut out = vec![42];
        let mut seen = Vec::new();
        let outcome = run_chunk::<u64, Touchy>(args, &mut out, &mut Large::default(), |n| {
            seen.push(n);
            Ok(make(n))
        });
        (outcome, out, seen)
    }

    #[test]
    fn a_result_that_does_not_encode_fails_the_chunk_after_every_task_ran() {
        let mut args = Vec::new();
        encode_chunk(&[1u64, 2, 3], &mut args).unwrap();
        let fine = |n: u64| Touchy::Fine(n as u8);
        let (outcome, out, seen) = run_touchy(&args, fine);
        assert!(matches!(outcome, Outcome::Ok { panicked: 0, .. }));
        assert_eq!(out, [42, 3, 0, 1, 0, 2, 0, 3]);
        assert_eq!(seen, [1, 2, 3]);

        let fail = |n: u64| {
            if n == 2 {
                Touchy::Fail
            } else {
                Touchy::Fine(1)
            }
        };
        let (outcome, out, seen) = run_touchy(&args, fail);
        assert!(matches!(&outcome, Outcome::BadResult(_)), "{outcome:?}");
        assert_eq!(out, [42], "the buffer is left as it was");
        assert_eq!(seen, [1, 2, 3]);

        crate::panics::capture_panics();
        let panics = |n: u64| {
            if n == 1 {
                Touchy::Panic
            } else {
                Touchy::Fine(1)
            }
        };
        let (outcome, out, seen) = run_touchy(&args, panics);
        assert!(
            matches!(&outcome, Outcome::BadResult(e) if e.contains("encoding went wrong")),
            "{outcome:?}"
        );
        assert_eq!(out, [42]);
        assert_eq!(seen, [1, 2, 3]);
    }

    #[test]
    fn an_argument_that_does_not_decode_fails_the_chunk() {
        let fine = |n: u64| Touchy::Fine(n as u8);
        // Three arguments said, two there.
        let mut args = Vec::new();
        encode_chunk(&[1u64, 2], &mut args).unwrap();
        args[0] = 3;
        let (outcome, out, _) = run_touchy(&args, fine);
        assert!(matches!(outcome, Outcome::BadArguments(_)), "{outcome:?}");
        assert_eq!(out, [42]);
        // The second is a varint that never ends.
        let (outcome, out, seen) = run_touchy(&[3, 1, 0xff, 0xff], fine);
        assert!(matches!(outcome, Outcome::BadArguments(_)), "{outcome:?}");
        assert_eq!(out, [42]);
        assert_eq!(seen, [1], "the tasks before it ran");
        // Not a sequence at all.
        let (outcome, _, seen) = run_touchy(&[], fine);
        assert!(matches!(outcome, Outcome::BadArguments(_)), "{outcome:?}");
        assert!(seen.is_empty());
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        assert!(decode_chunk::<(u64, String)>(&[5, 0xff, 0xff]).is_err());
        assert!(decode_results::<String>(&[1, 0, 200]).is_err());
        assert!(decode_frame::<super::super::ToWorker>(&[99]).is_err());
    }
}
