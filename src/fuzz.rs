//! Property tests of the pool's reply path: every byte a worker writes, fed to each
//! decoder that reads it (the frame reader, the reply ring, the reply header, the chunk
//! of results, the split of a chunk into per-task results).
//!
//! Each property runs a fixed number of cases (`PROCPOOL_FUZZ_CASES`, default a few
//! hundred) within a time budget (`PROCPOOL_FUZZ_SECS`, default 5 s each), from a fixed
//! seed unless `PROCPOOL_FUZZ_CASES` is set (a long run draws a new seed each time and
//! prints it on failure). Each asserts: no panic; an error, or a well-formed value; and
//! memory allocated while decoding bounded by the frame limit, never by a length the
//! worker wrote (counted by a test allocator, per thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use tokio_util::codec::Decoder;

use crate::error::{RemotePanic, TaskError};
use crate::protocol::codec::{decode_results_into, ReplyCodec};
use crate::protocol::results::{Results, SmallChunk};
use crate::protocol::{put_varint, Done, Outcome};
use crate::ring::{PoolRing, Record, CAPACITY, INLINE_MAX, ON_SOCKET};

// ---------------------------------------------------------------------------------
// Counting what the decoders allocate.
// ---------------------------------------------------------------------------------

/// The system allocator, counting the bytes live on each thread and their peak.
struct Counting;

thread_local! {
    // Const-initialised, without a destructor: reading them allocates nothing, so the
    // allocator may use them.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call goes to `System` with the caller's arguments unchanged; the
// counting only touches thread-locals that need no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning what it returned and the most bytes it had allocated (and not
/// freed) at once, on this thread.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, usize::try_from(peak - base).unwrap_or(0))
}

// ---------------------------------------------------------------------------------
// Running properties: a fixed number of cases, within a time budget.
// ---------------------------------------------------------------------------------

/// How many cases each property runs: `PROCPOOL_FUZZ_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROCPOOL_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// How long each property may run: `PROCPOOL_FUZZ_SECS`, else 5 s (the cases left when
/// it is spent pass without running, so a slow machine shortens the run, never fails it).
fn budget() -> Duration {
    let secs = std::env::var("PROCPOOL_FUZZ_SECS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

/// Runs `test` on values of `strategy` until the cases or the time budget are spent;
/// panics with the smallest failing value found.
fn check<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases: cases(default_cases),
        failure_persistence: None,
        max_shrink_time: 20_000,
        ..Config::default()
    };
    let cases = config.cases;
    let mut runner = if std::env::var_os("PROCPOOL_FUZZ_CASES").is_some() {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
    };
    let started = Instant::now();
    let deadline = started + budget();
    let mut ran = 0;
    while ran < cases && Instant::now() < deadline {
        let case = strategy
            .new_tree(&mut runner)
            .unwrap_or_else(|e| panic!("{name}: no case: {e}"));
        if let Err(e) = runner.run_one(case, &test) {
            panic!("{name}: {e}");
        }
        ran += 1;
    }
    eprintln!("{name}: {ran} cases in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------
// What a worker may write.
// ---------------------------------------------------------------------------------

/// Integers at their extremes and where varints change length, and any.
fn wide_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ]),
        0..300u64,
        any::<u64>(),
    ]
}

fn wide_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![0, 1, 2, 127, 128, u32::MAX - 1, u32::MAX]),
        0..16u32,
        any::<u32>(),
    ]
}

/// A change to a well-formed message: one byte set, cut, inserted, or one varint made
/// overlong (11 bytes, past 64 bits), at a position taken modulo the length.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    Set(usize, u8),
    Cut(usize),
    Insert(usize, u8),
    Overlong(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::None),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        1 => any::<usize>().prop_map(Mutation::Cut),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => any::<usize>().prop_map(Mutation::Overlong),
    ]
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let len = bytes.len().max(1);
        match *self {
            Mutation::None => {}
            Mutation::Set(at, b) => {
                if let Some(byte) = bytes.get_mut(at % len) {
                    *byte = b;
                }
            }
            Mutation::Cut(at) => bytes.truncate(at % len),
            Mutation::Insert(at, b) => bytes.insert(at % (bytes.len() + 1), b),
            Mutation::Overlong(at) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, [0xff; 10].into_iter().chain([0x7f]));
            }
        }
    }
}

/// The fields of a reply's header.
#[derive(Debug, Clone)]
struct Header {
    id: u64,
    panicked: u32,
    byte_string: bool,
    ran_ns: u64,
    ran_jobs: u32,
}

fn header() -> impl Strategy<Value = Header> {
    (
        wide_u64(),
        wide_u32(),
        any::<bool>(),
        wide_u64(),
        wide_u32(),
    )
        .prop_map(|(id, panicked, byte_string, ran_ns, ran_jobs)| Header {
            id,
            panicked,
            byte_string,
            ran_ns,
            ran_jobs,
        })
}

impl Header {
    /// The header's bytes, as a worker writes them.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let done = Done {
            id: self.id,
            outcome: Outcome::Ok {
                panicked: self.panicked,
                byte_string: self.byte_string,
            },
            ran_ns: self.ran_ns,
            ran_jobs: self.ran_jobs,
        };
        assert!(done.write_ok(&mut out));
        out
    }
}

/// A chunk of results of `u64`, some of them panics, whose count says `said`.
fn results_chunk(values: &[Option<u64>], said: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(said, &mut out);
    for v in values {
        let item: Result<u64, RemotePanic> = v.ok_or_else(|| RemotePanic::new("boom".into(), None));
        out.extend(postcard::to_allocvec(&item).expect("encodes"));
    }
    out
}

/// A chunk of `values`, its count said right or wrong, then mutated.
fn chunk() -> impl Strategy<Value = (Vec<Option<u64>>, u64, Mutation)> {
    prop::collection::vec(prop::option::weighted(0.8, wide_u64()), 0..12).prop_flat_map(|values| {
        let n = values.len() as u64;
        let said = prop_oneof![
            3 => Just(n),
            1 => Just(n.saturating_sub(1)),
            1 => Just(n + 1),
            1 => wide_u64(),
        ];
        (Just(values), said, mutation())
    })
}

// ---------------------------------------------------------------------------------
// The reply's header.
// ---------------------------------------------------------------------------------

/// Anything read as a header leaves a payload inside the frame, and the fast reader
/// reads what postcard reads.
fn check_header(frame: &[u8]) -> Result<(), TestCaseError> {
    let (read, peak) = peak_alloc(|| crate::protocol::Done::read_reply(frame));
    // Only the messages of other outcomes allocate, at most their own bytes.
    prop_assert!(peak <= 2 * frame.len() + 1024, "{peak} bytes allocated");
    let Ok((header, payload_len)) = read else {
        return Ok(());
    };
    prop_assert!(payload_len <= frame.len());
    if let Ok((crate::protocol::FromWorker::Done(slow), payload)) =
        crate::protocol::codec::decode_frame(frame)
    {
        prop_assert_eq!(format!("{:?}", header), format!("{slow:?}"));
        prop_assert_eq!(payload_len, payload.len());
    }
    Ok(())
}

#[test]
fn any_bytes_as_a_reply_header() {
    check(
        "any bytes as a reply header",
        512,
        prop::collection::vec(any::<u8>(), 0..64),
        |frame| check_header(&frame),
    );
}

#[test]
fn reply_headers_with_one_field_changed() {
    check(
        "reply headers with one field changed",
        1024,
        (
            header(),
            prop::collection::vec(any::<u8>(), 0..8),
            mutation(),
        ),
        |(header, payload, mutation)| {
            let mut frame = header.encode();
            frame.extend_from_slice(&payload);
            mutation.apply(&mut frame);
            check_header(&frame)?;
            if matches!(mutation, Mutation::None) {
                // Unchanged, it reads back as written, whatever the numbers.
                let (done, payload_len) =
                    crate::protocol::Done::read_reply(&frame).expect("a well-formed header");
                prop_assert_eq!(done.id, header.id);
                prop_assert_eq!(done.ran_ns, header.ran_ns);
                prop_assert_eq!(done.ran_jobs, header.ran_jobs);
                prop_assert_eq!(payload_len, payload.len());
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------
// The chunk of results, and its split into one result per task.
// ---------------------------------------------------------------------------------

/// Decodes `bytes` as a chunk of `expected` results of `R`: what it decodes is exactly
/// `expected` results or nothing, and it maps no more results than there are tasks.
fn check_results<R>(bytes: &[u8], expected: usize) -> Result<(), TestCaseError>
where
    R: serde::de::DeserializeOwned + 'static,
{
    let mut out: Vec<Result<R, RemotePanic>> = Vec::new();
    let mut mapped = 0usize;
    let (decoded, peak) = peak_alloc(|| {
        decode_results_into::<R, _>(bytes, expected, &mut out, |r| {
            mapped += 1;
            r
        })
    });
    prop_assert!(mapped <= expected, "{mapped} results mapped for {expected}");
    match decoded {
        Ok(n) if usize::try_from(n) == Ok(expected) => prop_assert_eq!(out.len(), expected),
        _ => prop_assert!(out.is_empty(), "{} results kept", out.len()),
    }
    // The results the caller expects, and what they hold, which is at most the bytes.
    let bound = expected * std::mem::size_of::<Result<R, RemotePanic>>() + 4 * bytes.len() + 1024;
    prop_assert!(peak <= bound, "{peak} bytes allocated (bound {bound})");
    Ok(())
}

fn check_results_of_all_types(bytes: &[u8], expected: usize) -> Result<(), TestCaseError> {
    check_results::<u64>(bytes, expected)?;
    check_results::<String>(bytes, expected)?;
    check_results::<Vec<u8>>(bytes, expected)?;
    check_results::<(u8, Option<u32>, Vec<u16>)>(bytes, expected)?;
    check_results::<()>(bytes, expected)
}

#[test]
fn any_bytes_as_a_chunk_of_results() {
    check(
        "any bytes as a chunk of results",
        512,
        (prop::collection::vec(any::<u8>(), 0..96), 0..6usize),
        |(bytes, expected)| check_results_of_all_types(&bytes, expected),
    );
}

#[test]
fn chunks_of_results_with_a_wrong_count_or_a_changed_byte() {
    check(
        "chunks with a wrong count or a changed byte",
        512,
        (chunk(), 0..14usize),
        |((values, said, mutation), expected)| {
            let mut bytes = results_chunk(&values, said);
            mutation.apply(&mut bytes);
            check_results_of_all_types(&bytes, expected)?;
            if matches!(mutation, Mutation::None) && said == values.len() as u64 {
                // Well-formed: the count decides.
                let mut out = Vec::new();
                let n = decode_results_into::<u64, _>(&bytes, expected, &mut out, |r| r)
                    .expect("well-formed");
                prop_assert_eq!(n, said);
                if expected == values.len() {
                    let got: Vec<Option<u64>> = out.into_iter().map(Result::ok).collect();
                    prop_assert_eq!(got, values);
                }
            }
            Ok(())
        },
    );
}

/// The driver's check of a reply's count: a successful reply passes only if it says
/// it holds one result per task of its job, whatever its bytes.
#[test]
fn a_reply_holds_one_result_per_task_of_its_job() {
    check(
        "a reply's count against its job",
        512,
        (header(), chunk(), 0..14usize),
        |(header, (values, said, mutation), tasks)| {
            let mut frame = header.encode();
            let mut results = results_chunk(&values, said);
            mutation.apply(&mut results);
            frame.extend_from_slice(&results);
            let frame = crate::protocol::codec::ReplyFrame::from(BytesMut::from(&frame[..]));
            let (done, payload_len) =
                crate::protocol::Done::read_reply(&frame.frame).expect("the header reads");
            let checked = frame.check_count(&done, payload_len, tasks);
            let count = postcard::take_from_bytes::<u64>(&results)
                .ok()
                .map(|(n, _)| n);
            prop_assert_eq!(
                checked.is_ok(),
                count == Some(tasks as u64),
                "{:?}",
                checked
            );
            Ok(())
        },
    );
}

/// A reply that says it holds far more results than the job has tasks is not
/// decoded: the caller maps none of them, and keeps nothing of them.
#[test]
fn a_chunk_of_many_more_results_than_tasks_is_not_decoded() {
    let values = vec![Some(7u64); 100_000];
    let bytes = results_chunk(&values, values.len() as u64);
    for expected in [0, 1, 3] {
        let mut out = Vec::new();
        let mut mapped = 0;
        let (n, peak) = peak_alloc(|| {
            decode_results_into::<u64, _>(&bytes, expected, &mut out, |r| {
                mapped += 1;
                r
            })
        });
        assert_eq!(n, Ok(100_000));
        assert_eq!(mapped, 0, "results decoded for a chunk of {expected}");
        assert!(out.is_empty() && peak < 1024, "{peak} bytes allocated");
    }
    // Bytes after the results a chunk says it holds are refused too.
    let mut bytes = results_chunk(&[Some(1)], 1);
    bytes.push(0);
    let mut out = Vec::new();
    let err = decode_results_into::<u64, _>(&bytes, 1, &mut out, |r| r).unwrap_err();
    assert!(err.contains("after the last result"), "{err}");
    assert!(out.is_empty());
}

/// A reply as the driver hands it to a caller.
#[derive(Debug, Clone)]
enum ReplyShape {
    Chunk(Vec<u8>),
    Small(Vec<u8>),
    ByteString(Vec<u8>),
    Failed,
}

impl ReplyShape {
    fn reply(&self) -> crate::queue::Reply {
        match self {
            ReplyShape::Chunk(b) => Ok(Results::Chunk(b.clone().into())),
            ReplyShape::Small(b) => Ok(Results::Small(SmallChunk::new(b).expect("small"))),
            ReplyShape::ByteString(b) => Ok(Results::ByteString(BytesMut::from(&b[..]))),
            ReplyShape::Failed => Err(TaskError::Protocol("lost".into())),
        }
    }
}

fn reply_shape() -> impl Strategy<Value = ReplyShape> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(ReplyShape::Chunk),
        prop::collection::vec(any::<u8>(), 0..=crate::protocol::results::SMALL)
            .prop_map(ReplyShape::Small),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(ReplyShape::ByteString),
        chunk().prop_map(|(values, said, mutation)| {
            let mut bytes = results_chunk(&values, said);
            mutation.apply(&mut bytes);
            ReplyShape::Chunk(bytes)
        }),
        Just(ReplyShape::Failed),
    ]
}

/// What a stream gets of a reply: one result per task, whatever the reply holds.
#[test]
fn a_chunk_reply_is_one_result_per_task() {
    check(
        "a chunk reply is one result per task",
        512,
        (reply_shape(), 1..14usize),
        |(shape, tasks)| {
            let well_formed = matches!(
                &shape,
                ReplyShape::Chunk(b) if decode_results_into::<u64, _>(b, tasks, &mut Vec::new(), |_| ())
                    == Ok(tasks as u64)
            );
            let mut out: Vec<Result<u64, TaskError>> = Vec::new();
            crate::stream::decode_chunk_reply(shape.reply(), tasks, &mut out);
            prop_assert_eq!(out.len(), tasks);
            if well_formed {
                // A reply that holds the right count has each task's own result.
                prop_assert!(out
                    .iter()
                    .all(|r| r.is_ok() || matches!(r, Err(TaskError::Panicked(_)))));
            }
            Ok(())
        },
    );
    check("a single task's reply", 512, reply_shape(), |shape| {
        let _ = crate::handle::decode_one::<u64>(shape.reply());
        let _ = crate::handle::decode_one::<Vec<u8>>(shape.reply());
        let _ = crate::handle::decode_one::<String>(shape.reply());
        Ok(())
    });
}

// ---------------------------------------------------------------------------------
// The frame reader.
// ---------------------------------------------------------------------------------

/// One piece of what a worker writes on its channel.
#[derive(Clone)]
enum Piece {
    /// Bytes as they come.
    Raw(Vec<u8>),
    /// A frame whose length prefix says `said` (the frame's own length when `None`).
    Frame { said: Option<u32>, body: Vec<u8> },
    /// A reply whose one result is a byte string of `len` bytes (the frame is read
    /// into a buffer of its own when large), its length varint saying `said`.
    ByteString {
        header: Header,
        said: u64,
        len: usize,
    },
}

impl std::fmt::Debug for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Piece::Raw(b) => write!(f, "Raw({b:?})"),
            Piece::Frame { said, body } => write!(f, "Frame({said:?}, {} bytes)", body.len()),
            Piece::ByteString { header, said, len } => {
                write!(f, "ByteString({header:?}, said {said}, {len} bytes)")
            }
        }
    }
}

impl Piece {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Piece::Raw(b) => b.clone(),
            Piece::Frame { said, body } => {
                let len = said.unwrap_or(body.len() as u32);
                let mut out = len.to_be_bytes().to_vec();
                out.extend_from_slice(body);
                out
            }
            Piece::ByteString { header, said, len } => {
                let mut frame = header.encode();
                frame.extend_from_slice(&[1, 0]);
                put_varint(*said, &mut frame);
                frame.extend((0..*len).map(|i| i as u8));
                let mut out = (frame.len() as u32).to_be_bytes().to_vec();
                out.extend_from_slice(&frame);
                out
            }
        }
    }
}

fn piece(max_frame_len: usize) -> impl Strategy<Value = Piece> {
    let big = 64usize << 10;
    let limit = max_frame_len as u32;
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Raw),
        (
            prop::option::weighted(
                0.5,
                prop::sample::select(vec![
                    0,
                    1,
                    limit - 1,
                    limit,
                    limit + 1,
                    big as u32,
                    ON_SOCKET - 1,
                    ON_SOCKET,
                ])
            ),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(said, body)| Piece::Frame { said, body }),
        (
            header(),
            prop_oneof![
                Just(0usize),
                0..300usize,
                big - 40..big + 64,
                Just(150 << 10)
            ]
        )
            .prop_flat_map(|(mut header, len)| {
                header.panicked = 0;
                header.byte_string = true;
                let n = len as u64;
                let said = prop_oneof![
                    3 => Just(n),
                    1 => prop::sample::select(vec![0, n.saturating_sub(1), n + 1, u64::MAX]),
                    1 => wide_u64(),
                ];
                (Just(header), said, Just(len))
            })
            .prop_map(|(header, said, len)| Piece::ByteString { header, said, len }),
    ]
}

/// Reads `input` through a [`ReplyCodec`] as `FramedRead` does (into the read
/// buffer's spare room, at most `chunk` bytes a read), to the end or the first error.
/// Each frame is within the limit, and each call to the codec allocates at most the
/// frame limit (plus what growing the read buffer may double).
fn check_reader(
    input: &[u8],
    max_frame_len: usize,
    chunk: usize,
    spare: Option<usize>,
) -> Result<(), TestCaseError> {
    let mut codec = ReplyCodec::new(max_frame_len);
    codec.spare = spare.map(|cap| (1, BytesMut::with_capacity(cap)));
    let mut buf = BytesMut::new();
    let mut input = input;
    let limit = max_frame_len + 4 + 64;
    loop {
        let before = buf.capacity();
        let (read, peak) = peak_alloc(|| {
            if input.is_empty() {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            }
        });
        let bound = limit + 2 * before + 1024;
        prop_assert!(
            peak <= bound,
            "{peak} bytes allocated by one decode (bound {bound})"
        );
        match read {
            Err(_) => return Ok(()),
            Ok(Some(frame)) => {
                let len = frame.frame.len() + frame.body.as_ref().map_or(0, |b| b.len());
                prop_assert!(len <= max_frame_len, "a frame of {len} bytes");
                if let Some(body) = &frame.body {
                    // A body is read on its own only from a large frame.
                    prop_assert!(frame.frame.len() + body.len() >= 64 << 10);
                }
                continue;
            }
            Ok(None) if input.is_empty() => return Ok(()),
            Ok(None) => {}
        }
        buf.reserve(1);
        let n = (buf.capacity() - buf.len()).min(chunk).min(input.len());
        buf.extend_from_slice(&input[..n]);
        input = &input[n..];
    }
}

#[test]
fn any_stream_of_frames_through_the_reader() {
    let strategy =
        prop::sample::select(vec![1usize << 10, 70 << 10, 256 << 10]).prop_flat_map(|max| {
            (
                Just(max),
                prop::collection::vec(piece(max), 1..8),
                prop_oneof![1..64usize, Just(4096), Just(1 << 20)],
                prop::option::weighted(0.3, (60usize << 10)..(400 << 10)),
            )
        });
    check(
        "any stream of frames through the reader",
        256,
        strategy,
        |(max, pieces, chunk, spare)| {
            let input: Vec<u8> = pieces.iter().flat_map(Piece::bytes).collect();
            check_reader(&input, max, chunk, spare)
        },
    );
}

/// A length prefix of every size the limit allows, or over it, with the bytes behind
/// it never coming: what the reader holds is bounded by the limit, and the end of
/// the channel is an error, not a frame.
#[test]
fn a_length_prefix_whose_frame_never_comes() {
    for max in [1usize << 10, 256 << 10, 64 << 20] {
        for said in [
            max as u32 - 1,
            max as u32,
            max as u32 + 1,
            ON_SOCKET - 1,
            ON_SOCKET,
        ] {
            let mut input = said.to_be_bytes().to_vec();
            input.extend_from_slice(
                &Header {
                    id: 1,
                    panicked: 0,
                    byte_string: true,
                    ran_ns: 1,
                    ran_jobs: 1,
                }
                .encode(),
            );
            input.extend_from_slice(&[1, 0]);
            put_varint(u64::from(said), &mut input);
            input.resize(input.len() + 100, 7);
            let mut codec = ReplyCodec::new(max);
            let mut buf = BytesMut::from(&input[..]);
            let (first, peak) = peak_alloc(|| codec.decode(&mut buf));
            assert!(peak <= max + 4096, "{said}: {peak} bytes allocated");
            match first {
                Err(_) => assert!(said as usize > max, "{said}: refused within the limit"),
                Ok(None) => {
                    assert!(
                        said as usize <= max,
                        "{said}: over the limit and not refused"
                    );
                    assert!(codec.decode_eof(&mut buf).is_err());
                }
                Ok(Some(frame)) => panic!("{said}: a frame of 100 bytes: {frame:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The reply ring.
// ---------------------------------------------------------------------------------

/// The ring as its worker maps it: the page of indices, then the records.
struct WorkerView {
    base: *mut u8,
}

/// The shared page in front of the records (see `crate::ring`).
const RING_HEADER: usize = 4096;
const RING_MAP: usize = RING_HEADER + CAPACITY;

impl WorkerView {
    fn map(fd: &OwnedFd) -> WorkerView {
        let size = nix::sys::stat::fstat(fd).expect("fstat").st_size;
        assert_eq!(size as usize, RING_MAP, "the ring's layout changed");
        let len = std::num::NonZeroUsize::new(RING_MAP).expect("non-zero");
        // SAFETY: a fresh shared mapping of the ring's memfd, which is RING_MAP bytes
        // long; no Rust object lives where the kernel puts it.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .expect("mmap");
        WorkerView {
            base: base.as_ptr().cast(),
        }
    }

    fn write_index(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: the mapping is page-aligned and outlives `self`; `write` is the u64
        // at its start, read by the pool only atomically.
        unsafe { &*self.base.cast::<std::sync::atomic::AtomicU64>() }
    }

    /// Writes `bytes` at running position `at` (wrapping), as a worker does.
    fn put(&self, at: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let pos = (at.wrapping_add(i as u64) % CAPACITY as u64) as usize;
            // SAFETY: `pos` is inside the data area of the mapping. The pool only ever
            // copies these bytes out; a race with it is the hostile worker's to lose.
            unsafe { self.base.add(RING_HEADER + pos).write_volatile(*b) };
        }
    }
}

impl Drop for WorkerView {
    fn drop(&mut self) {
        if let Some(base) = std::ptr::NonNull::new(self.base.cast()) {
            // SAFETY: the mapping made in `map`, with its length; nothing borrows it.
            let _ = unsafe { nix::sys::mman::munmap(base, RING_MAP) };
        }
    }
}

/// What a worker does to its ring.
#[derive(Debug, Clone)]
enum RingOp {
    /// Writes a record whose prefix says `said` (its length when `None`), publishing
    /// it or not.
    Record {
        said: Option<u32>,
        len: usize,
        publish: bool,
    },
    /// Sets `write`.
    SetWrite(u64),
    /// Moves `write` on.
    Advance(u64),
    /// Overwrites records, read or not.
    Scribble {
        at: u64,
        bytes: Vec<u8>,
    },
    /// The pool reads (one record, or one frame).
    Pop,
    PopFrame,
}

fn ring_op() -> impl Strategy<Value = RingOp> {
    let inline = INLINE_MAX as u32;
    prop_oneof![
        4 => (
            prop::option::weighted(
                0.3,
                prop::sample::select(vec![
                    0,
                    1,
                    inline - 5,
                    inline - 4,
                    inline - 3,
                    CAPACITY as u32,
                    ON_SOCKET - 1,
                    ON_SOCKET
                ])
            ),
            prop_oneof![0..64usize, Just(INLINE_MAX - 4), Just(INLINE_MAX)],
            prop::bool::weighted(0.8)
        )
            .prop_map(|(said, len, publish)| RingOp::Record { said, len, publish }),
        1 => wide_u64().prop_map(RingOp::SetWrite),
        1 => prop_oneof![0..8u64, Just(CAPACITY as u64), Just(CAPACITY as u64 + 1)]
            .prop_map(RingOp::Advance),
        1 => (wide_u64(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| RingOp::Scribble { at, bytes }),
        4 => Just(RingOp::Pop),
        2 => Just(RingOp::PopFrame),
    ]
}

#[test]
fn a_ring_its_worker_scribbles_on() {
    check(
        "a ring its worker scribbles on",
        256,
        prop::collection::vec(ring_op(), 1..40),
        |ops| {
            let (mut pool, fd) = PoolRing::create().expect("a ring");
            let worker = WorkerView::map(&fd);
            let mut cursor = 0u64;
            let mut arena = BytesMut::new();
            // What was published, for a frame to be checked against.
            let mut broken = false;
            for op in ops {
                match op {
                    RingOp::Record { said, len, publish } => {
                        let said = said.unwrap_or(len as u32);
                        let mut record = said.to_be_bytes().to_vec();
                        record.extend((0..len).map(|i| i as u8));
                        worker.put(cursor, &record);
                        cursor = cursor.wrapping_add(record.len() as u64);
                        if publish {
                            worker
                                .write_index()
                                .store(cursor, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    RingOp::SetWrite(to) => {
                        cursor = to;
                        worker
                            .write_index()
                            .store(to, std::sync::atomic::Ordering::SeqCst);
                    }
                    RingOp::Advance(by) => {
                        cursor = cursor.wrapping_add(by);
                        worker
                            .write_index()
                            .store(cursor, std::sync::atomic::Ordering::SeqCst);
                    }
                    RingOp::Scribble { at, bytes } => worker.put(at, &bytes),
                    RingOp::Pop | RingOp::PopFrame if broken => {}
                    RingOp::Pop => {
                        let (popped, peak) = peak_alloc(|| pool.pop_into(&mut arena));
                        prop_assert!(peak <= (32 << 10) + INLINE_MAX, "{peak} bytes allocated");
                        match popped {
                            Ok(Some(Record::Frame(frame))) => {
                                prop_assert!(frame.len() + 4 <= INLINE_MAX)
                            }
                            Ok(_) => {}
                            // The driver gives up on the worker here.
                            Err(why) => {
                                prop_assert!(why.contains("reply ring corrupt"), "{}", why);
                                broken = true;
                            }
                        }
                    }
                    RingOp::PopFrame => {
                        let (popped, peak) = peak_alloc(|| pool.pop_frame());
                        prop_assert!(peak <= (32 << 10) + INLINE_MAX, "{peak} bytes allocated");
                        match popped {
                            Ok(Some(frame)) => prop_assert!(frame.len() + 4 <= INLINE_MAX),
                            Ok(None) => {}
                            Err(why) => {
                                prop_assert!(why.contains("reply ring corrupt"), "{}", why);
                                broken = true;
                            }
                        }
                    }
                }
            }
            // However it was left, the pool's next look is bounded and does not panic.
            let _ = pool.want_wakeup();
            for _ in 0..64 {
                match pool.pop_into(&mut arena) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------
// Replies in shared memory: the frame that announces one, and the memfd that comes
// with it.
// ---------------------------------------------------------------------------------

/// Any bytes after the `SharedDone` tag: an error, or a frame that now reads as the
/// successful reply of one byte string it stands for, with its length where the
/// chunk says; at most the error's message allocated.
fn check_shared_frame(rest: &[u8]) -> Result<(), TestCaseError> {
    let mut frame = BytesMut::from(&[4u8][..]);
    frame.extend_from_slice(rest);
    let (read, peak) = peak_alloc(|| Done::read_shared(&mut frame));
    prop_assert!(peak <= 256, "{peak} bytes allocated");
    let Ok(Some((_offset, len))) = read else {
        prop_assert!(read.is_err(), "a SharedDone frame left for another reader");
        return Ok(());
    };
    let (done, header) = Done::read_ok(&frame).expect("made a Done");
    let one_byte_string = matches!(
        done.outcome,
        Outcome::Ok {
            panicked: 0,
            byte_string: true
        }
    );
    prop_assert!(one_byte_string, "{:?}", done.outcome);
    prop_assert_eq!(
        crate::protocol::codec::byte_string_result(&frame[header..]),
        Some((frame.len() - header, len))
    );
    Ok(())
}

#[test]
fn any_bytes_as_a_shared_reply() {
    check(
        "any bytes as a shared reply",
        1024,
        prop::collection::vec(any::<u8>(), 0..48),
        |rest| check_shared_frame(&rest),
    );
}

#[test]
fn shared_replies_with_one_field_changed() {
    let strategy = (header(), wide_u64(), wide_u64(), mutation());
    check(
        "shared replies with one field changed",
        1024,
        strategy,
        |(header, len, offset, mutation)| {
            let mut bytes = header.encode();
            bytes[0] = 4;
            bytes.extend_from_slice(&[1, 0]);
            put_varint(len, &mut bytes);
            put_varint(offset, &mut bytes);
            mutation.apply(&mut bytes);
            match bytes.split_first() {
                Some((_, rest)) => check_shared_frame(rest),
                None => Ok(()),
            }
        },
    )
}

/// What a worker may pass as a shared payload's memfd, and say of it.
#[derive(Debug, Clone)]
struct Passed {
    /// The file's size.
    size: usize,
    /// Seals: shrink, grow, write.
    seals: (bool, bool, bool),
    offset: u64,
    len: usize,
    max: usize,
}

fn passed() -> impl Strategy<Value = Passed> {
    let near = |n: usize| prop_oneof![Just(0usize), 0..n, Just(n), n..2 * n, any::<usize>()];
    (
        0usize..3 * 4096,
        any::<(bool, bool, bool)>(),
        prop_oneof![wide_u64(), (0u64..4 * 4096)],
        near(3 * 4096),
        near(3 * 4096),
    )
        .prop_map(|(size, seals, offset, len, max)| Passed {
            size,
            seals,
            offset,
            len,
            max,
        })
}

/// A memfd as a worker could make it: `size` bytes of a pattern, the seals given.
fn worker_memfd(p: &Passed) -> OwnedFd {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use std::io::Write;
    let fd = nix::sys::memfd::memfd_create(
        c"fuzz",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .expect("memfd");
    let bytes: Vec<u8> = (0..p.size).map(|i| (i % 251) as u8).collect();
    std::fs::File::from(fd.try_clone().expect("dup"))
        .write_all(&bytes)
        .expect("write");
    let mut seals = SealFlag::empty();
    for (on, seal) in [
        (p.seals.0, SealFlag::F_SEAL_SHRINK),
        (p.seals.1, SealFlag::F_SEAL_GROW),
        (p.seals.2, SealFlag::F_SEAL_WRITE),
    ] {
        if on {
            seals |= seal;
        }
    }
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).expect("seal");
    fd
}

/// Whatever a worker passes and says, the pool maps only a sealed memfd's bytes that
/// lie within it and within the limit, and they are the file's.
#[test]
fn any_memfd_a_worker_passes() {
    check("any memfd a worker passes", 256, passed(), |p| {
        let fd = worker_memfd(&p);
        let mapped = crate::shm::map(std::os::fd::AsFd::as_fd(&fd), p.offset, p.len, p.max);
        let sealed = p.seals == (true, true, true);
        let within = p
            .offset
            .checked_add(p.len as u64)
            .is_some_and(|end| end <= p.size as u64);
        match mapped {
            Ok(bytes) => {
                prop_assert!(sealed && within && p.len <= p.max, "mapped {p:?}");
                prop_assert_eq!(bytes.len(), p.len);
                let at = p.offset as usize;
                prop_assert!(bytes
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == ((at + i) % 251) as u8));
            }
            Err(_) => prop_assert!(!(sealed && within && p.len <= p.max), "refused {p:?}"),
        }
        Ok(())
    });
}
