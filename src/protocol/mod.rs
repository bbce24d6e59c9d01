//! The wire protocol between the pool and its workers.
//!
//! Each direction is a stream of length-delimited frames (a 4-byte big-endian length,
//! then the frame), cut by tokio-util's [`LengthDelimitedCodec`] on the pool's end and
//! in place in its read buffer on the worker's. A frame is a postcard-encoded header
//! ([`ToWorker`] or [`FromWorker`]) followed, for jobs and their replies, by the job's
//! payload: a chunk of encoded arguments or results that only the typed ends decode
//! (see [`codec`]). The pool's driver moves payloads as opaque bytes. The headers sent
//! once per job are written and read straight from their bytes, as postcard would
//! ([`ToWorker::write_job`], [`Done::read_ok`] and their pairs); every other message
//! goes through postcard.
//!
//! The conversation:
//!
//! ```text
//! worker → pool   Hello { magic, protocol, build_id, pid }
//! pool → worker   Setup { protocol, build_id, index, name, ring, initializer, env, sandbox }
//!                   + init argument
//!                   (+ the reply ring's memfd, passed with SCM_RIGHTS, when `ring`)
//! worker → pool   Ready | InitFailed(panic)
//! pool → worker   Job { id, func } + arguments          (any number, pipelined)
//! worker → pool   Done { id, outcome, ran_ns, ran_jobs } + results
//!                   (one per job, in order; through the reply ring, where an empty
//!                   frame on the channel is a wake-up)
//! pool → worker   end of stream: the worker exits
//! ```
//!
//! [`LengthDelimitedCodec`]: tokio_util::codec::LengthDelimitedCodec

pub(crate) mod codec;
pub(crate) mod job;
pub(crate) mod results;

use serde::{Deserialize, Serialize};

use crate::error::{RemotePanic, WorkerExit};
use crate::sandbox::SandboxSpec;
use crate::start::options::ChildOptions;

/// Bumped whenever a message changes shape.
pub(crate) const PROTOCOL_VERSION: u32 = 6;

/// The first bytes of every worker's first frame.
pub(crate) const MAGIC: [u8; 8] = *b"procpool";

/// The frame limit used until the handshake has sent the configured one.
pub(crate) const HANDSHAKE_FRAME_LIMIT: usize = 1 << 20;

/// The worker's first message. Its first two fields must never move, so that any
/// version can read another's magic and protocol number.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) magic: [u8; 8],
    pub(crate) protocol: u32,
    pub(crate) build_id: Vec<u8>,
    pub(crate) pid: u32,
}

/// Messages from the pool to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// The answer to [`Hello`]; followed by the initializer's encoded argument chunk.
    Setup {
        protocol: u32,
        build_id: Vec<u8>,
        index: Option<usize>,
        name: String,
        daemon: bool,
        max_frame_len: usize,
        /// How long the worker polls for its next job after a reply, in µs.
        spin_us: u32,
        /// Replies go through the reply ring whose memfd comes with this frame
        /// (`SCM_RIGHTS`), see [`crate::ring`]; otherwise over the channel.
        ring: bool,
        /// A job's one `Vec<u8>` or `Bytes` result from this many bytes on goes back
        /// in a sealed memfd passed with its reply ([`FromWorker::SharedDone`]); 0:
        /// never. Only where the channel can pass descriptors (with `ring`).
        shared_min: u64,
        initializer: Option<FnRef>,
        /// `Some(keys)`: the worker keeps only these environment variables (and
        /// scrubs the others from its memory) before its initializer runs.
        env: Option<Vec<String>>,
        /// Applied after the initializer, before the first job (see [`crate::sandbox`]).
        sandbox: Option<SandboxSpec>,
    },
    /// Run `func` on the chunk of arguments that follows the header.
    Job { id: u64, func: FnRef },
    /// As `Job`, for a chunk of one byte string whose bytes are in a sealed memfd
    /// passed with the frame (see [`crate::shm`]): the chunk holds only its beginning
    /// (a sequence of one, the string's length).
    SharedJob { id: u64, func: FnRef },
}

/// Messages from a worker to the pool.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    Hello(Hello),
    Ready,
    InitFailed(InitFailure),
    /// The job's outcome; on `Outcome::Ok` the chunk of results follows the header.
    Done(Done),
    /// A `Done` whose `Outcome::Ok` is one byte string (`byte_string`) whose bytes are
    /// in a sealed memfd passed with the frame (see [`crate::shm`]): the chunk holds
    /// only its beginning (a sequence of one, variant `Ok`, the string's length), and
    /// the frame ends with the string's offset in the memfd, a varint. Only over a
    /// local channel (see [`Done::read_shared`]).
    SharedDone(Done),
}

/// A worker's reply to a job: [`FromWorker::Done`]'s header.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Done {
    /// The job it answers.
    pub(crate) id: u64,
    pub(crate) outcome: Outcome,
    /// How long the last `ran_jobs` jobs ran in the worker (this one and the untimed
    /// ones just before it), in nanoseconds: the pool paces its workers by it (its own
    /// clock would add its wake-up latency). A worker of jobs that take under
    /// [`TINY_JOB_NS`] and come back to back reads its clock once per run of up to
    /// [`TIMED_RUN`] of them: a reading costs about as much as such a job.
    pub(crate) ran_ns: u64,
    /// How many jobs `ran_ns` covers; 0: this job was not timed.
    pub(crate) ran_jobs: u32,
}

/// Jobs shorter than this, in nanoseconds, are timed by the run (see [`Done::ran_ns`]).
pub(crate) const TINY_JOB_NS: u64 = 2_000;

/// The most jobs a worker runs between two readings of its clock.
pub(crate) const TIMED_RUN: u32 = 16;

/// The first byte of a [`FromWorker::Done`] frame: its variant's index.
const DONE_TAG: u8 = 3;

/// The first byte of a [`FromWorker::SharedDone`] frame.
const SHARED_DONE_TAG: u8 = 4;

impl Done {
    /// Reads a reply frame's header (the common case straight from the bytes, see
    /// [`read_ok`](Self::read_ok)), with the length of the payload after it; an error
    /// if the frame is not a `Done`.
    #[inline]
    pub(crate) fn read_reply(frame: &[u8]) -> Result<(Done, usize), String> {
        match Done::read_ok(frame) {
            Some((header, len)) => Ok((header, frame.len() - len)),
            None => Done::read(frame).map(|(header, payload)| (header, payload.len())),
        }
    }

    /// Reads a reply frame's header, and returns it with the payload behind it; an
    /// error if the frame is not a `Done`. (Read without the rest of [`FromWorker`],
    /// whose other variants are large: a reply's header is read once per job.)
    pub(crate) fn read(frame: &[u8]) -> Result<(Done, &[u8]), String> {
        if let Some((done, header_len)) = Done::read_ok(frame) {
            return Ok((done, &frame[header_len..]));
        }
        match frame.split_first() {
            Some((&DONE_TAG, body)) => codec::decode_frame(body),
            Some((tag, _)) => Err(format!(
                "bad frame header: message {tag} in place of a reply"
            )),
            None => Err("bad frame header: an empty frame in place of a reply".into()),
        }
    }

    /// The common case, read straight from the bytes: a `Done` whose outcome is `Ok`,
    /// and how long its header is. postcard's general decoder, and the moves of its
    /// larger result, cost several times as much, and a header is read once per job.
    /// `None` for anything else (another outcome, or bytes that do not read), which
    /// [`read`](Self::read) then decodes with postcard, whose encoding this follows:
    /// a variant index and the integers as varints (7 bits a byte, least significant
    /// first, the high bit set on all but the last), a `bool` as one byte 0 or 1.
    #[inline]
    pub(crate) fn read_ok(frame: &[u8]) -> Option<(Done, usize)> {
        let mut bytes = Cursor { frame, at: 0 };
        if bytes.varint()? != u64::from(DONE_TAG) {
            return None;
        }
        let id = bytes.varint()?;
        // Variant 0 of `Outcome`: `Ok`.
        if bytes.varint()? != 0 {
            return None;
        }
        let panicked = u32::try_from(bytes.varint()?).ok()?;
        let byte_string = match bytes.byte()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let ran_ns = bytes.varint()?;
        let ran_jobs = u32::try_from(bytes.varint()?).ok()?;
        let done = Done {
            id,
            outcome: Outcome::Ok {
                panicked,
                byte_string,
            },
            ran_ns,
            ran_jobs,
        };
        Some((done, bytes.at))
    }

    /// Appends what postcard would write for `FromWorker::Done(self)` when the outcome
    /// is `Ok` (the bytes [`read_ok`](Self::read_ok) reads), and returns true; false,
    /// with nothing written, for another outcome.
    #[inline]
    pub(crate) fn write_ok(&self, out: &mut Vec<u8>) -> bool {
        let Outcome::Ok {
            panicked,
            byte_string,
        } = self.outcome
        else {
            return false;
        };
        out.push(DONE_TAG);
        put_varint(self.id, out);
        out.push(0);
        put_varint(u64::from(panicked), out);
        out.push(u8::from(byte_string));
        put_varint(self.ran_ns, out);
        put_varint(u64::from(self.ran_jobs), out);
        true
    }
}

impl Done {
    /// Appends the header of a [`FromWorker::SharedDone`] reply to a job whose one
    /// result is a byte string sent in shared memory (the header of `write_ok` with
    /// the variant's tag); false, with nothing written, for an outcome other than `Ok`.
    pub(crate) fn write_shared(&self, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        if !self.write_ok(out) {
            return false;
        }
        out[start] = SHARED_DONE_TAG;
        true
    }

    /// For a [`FromWorker::SharedDone`] frame: where its byte string lies in the
    /// memfd that came with it (offset, length), with the frame made the `Done` frame
    /// it stands for, ending with the string's length, as a reply whose byte string
    /// was read into a buffer of its own (see [`codec::ReplyFrame::body`]). `Ok(None)`
    /// for any other frame, left as it is. An error if the frame does not read as a
    /// successful reply of one byte string followed by its offset, and nothing more.
    pub(crate) fn read_shared(frame: &mut bytes::BytesMut) -> Result<Option<(u64, usize)>, String> {
        if frame.first() != Some(&SHARED_DONE_TAG) {
            return Ok(None);
        }
        frame[0] = DONE_TAG;
        let bad = || "a shared reply that does not read as one byte string".to_string();
        let (done, header) = Done::read_ok(frame).ok_or_else(bad)?;
        if !matches!(
            done.outcome,
            Outcome::Ok {
                panicked: 0,
                byte_string: true
            }
        ) {
            return Err(bad());
        }
        let (prefix, len) = codec::byte_string_result(&frame[header..]).ok_or_else(bad)?;
        let head = header + prefix;
        let mut cursor = Cursor {
            frame: &frame[..],
            at: head,
        };
        let offset = cursor.varint().ok_or_else(bad)?;
        if cursor.at != frame.len() {
            return Err(bad());
        }
        frame.truncate(head);
        Ok(Some((offset, len)))
    }
}

/// A task function, as the wire names it: offsets into the executable's code that every
/// process running the same build resolves to the same functions (see
/// [`crate::image`], where they are made and resolved): the *trampoline* that decodes a
/// chunk, runs the task on each argument and encodes the results, and, for a task
/// passed as a `fn` pointer, the task itself (its offset plus one; 0 for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FnRef {
    run: u64,
    task: u64,
}

impl FnRef {
    /// The reference as it goes on the wire (see [`ToWorker::write_job`]): the
    /// trampoline's offset and the task's (plus one; 0 for none).
    pub(crate) fn to_bits(self) -> (u64, u64) {
        (self.run, self.task)
    }

    /// A reference read from the wire; `FnRef::resolve` checks it.
    pub(crate) fn from_bits(run: u64, task: u64) -> FnRef {
        FnRef { run, task }
    }
}

/// The first byte of a [`ToWorker::Job`] frame: its variant's index.
const JOB_TAG: u8 = 1;

/// The first byte of a [`ToWorker::SharedJob`] frame.
pub(crate) const SHARED_JOB_TAG: u8 = 2;

impl ToWorker {
    /// Appends what postcard would write for `ToWorker::Job { id, func }` (the bytes
    /// [`read_job`](Self::read_job) reads): a job's header is written once per job.
    #[inline]
    pub(crate) fn write_job(id: u64, func: FnRef, out: &mut Vec<u8>) {
        out.push(JOB_TAG);
        put_varint(id, out);
        let (run, task) = func.to_bits();
        put_varint(run, out);
        put_varint(task, out);
    }

    /// Reads a `ToWorker::Job` or `ToWorker::SharedJob` header straight from the
    /// bytes, with its length and whether it is a `SharedJob`; `None` for anything
    /// else (see [`Done::read_ok`]).
    #[inline]
    pub(crate) fn read_job(frame: &[u8]) -> Option<(u64, FnRef, usize, bool)> {
        let mut bytes = Cursor { frame, at: 0 };
        let shared = match bytes.varint()? {
            tag if tag == u64::from(JOB_TAG) => false,
            tag if tag == u64::from(SHARED_JOB_TAG) => true,
            _ => return None,
        };
        let id = bytes.varint()?;
        let func = FnRef::from_bits(bytes.varint()?, bytes.varint()?);
        Some((id, func, bytes.at, shared))
    }
}

/// Appends `n` as a varint, as postcard writes integers (and a sequence's or a byte
/// string's length).
#[inline]
pub(crate) fn put_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads the bytes of the headers read directly ([`Done::read_ok`],
/// [`ToWorker::read_job`]).
struct Cursor<'a> {
    frame: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let b = *self.frame.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// A varint of at most 64 bits; `None` if it runs past the end or over 64 bits.
    #[inline]
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return None;
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
}

/// Why a worker's initializer did not complete.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum InitFailure {
    Panicked(RemotePanic),
    Refused(String),
}

/// Whether a job produced a chunk of results.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The results follow; `panicked` of them are panics. With `byte_string`, they
    /// are one result whose encoding is a byte string (a varint length, then the
    /// bytes, which end the frame): the pool may read those bytes into a buffer of
    /// their own, which becomes the `Vec<u8>` or `Bytes` result without a copy (see
    /// [`codec::ReplyCodec`]).
    Ok { panicked: u32, byte_string: bool },
    /// The arguments did not decode.
    BadArguments(String),
    /// The function reference could not be resolved.
    Unresolvable(String),
    /// The results encoded to more than the frame limit.
    ResultTooLarge { size: usize },
    /// The results could not be encoded.
    BadResult(String),
}

/// Messages from the pool to its fork server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToServer {
    /// The answer to the server's [`Hello`]; followed by the preload argument chunk.
    Setup {
        protocol: u32,
        build_id: Vec<u8>,
        preload: Option<FnRef>,
    },
    /// Fork a worker whose channel is the descriptor sent with this frame.
    Fork { req: u64, opts: ChildOptions },
}

/// Messages from a fork server to the pool.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromServer {
    Hello(Hello),
    Ready,
    SetupFailed(InitFailure),
    Forked {
        req: u64,
        pid: u32,
    },
    ForkFailed {
        req: u64,
        error: String,
    },
    /// A worker the server forked has ended and been reaped.
    Exited {
        pid: u32,
        exit: WorkerExit,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path reads what postcard wrote, for integers of every length, and
    /// leaves everything else to postcard.
    #[test]
    fn an_ok_header_reads_as_postcard_wrote_it() {
        for &id in &VALUES {
            for &ran_ns in &VALUES {
                for &small in &[0u32, 1, 200, u32::MAX] {
                    for byte_string in [false, true] {
                        let done = Done {
                            id,
                            outcome: Outcome::Ok {
                                panicked: small,
                                byte_string,
                            },
                            ran_ns,
                            ran_jobs: small.rotate_left(7),
                        };
                        let mut frame = postcard::to_allocvec(&FromWorker::Done(done)).unwrap();
                        let header_len = frame.len();
                        frame.extend_from_slice(&[9, 9, 9]);
                        let (fast, len) = Done::read_ok(&frame).expect("read");
                        let (slow, payload) = codec::decode_frame::<Done>(&frame[1..]).unwrap();
                        assert_eq!(len, header_len);
                        assert_eq!(payload, &[9, 9, 9]);
                        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
                        // Cut anywhere in the header: not read (and postcard says why).
                        for cut in 0..header_len {
                            assert!(Done::read_ok(&frame[..cut]).is_none(), "cut at {cut}");
                            assert!(Done::read(&frame[..cut]).is_err(), "cut at {cut}");
                        }
                    }
                }
            }
        }
        // Other outcomes and messages go to postcard.
        let other = FromWorker::Done(Done {
            id: 5,
            outcome: Outcome::BadResult("no".into()),
            ran_ns: 1,
            ran_jobs: 1,
        });
        let frame = postcard::to_allocvec(&other).unwrap();
        assert!(Done::read_ok(&frame).is_none());
        let (read, _) = Done::read(&frame).unwrap();
        assert!(matches!(read.outcome, Outcome::BadResult(ref m) if m == "no"));
        assert!(Done::read_ok(&postcard::to_allocvec(&FromWorker::Ready).unwrap()).is_none());
        // A bool that is neither 0 nor 1, a varint over 64 bits, one over 32 where
        // 32 are expected: not read here, and refused by postcard too.
        for bad in [
            vec![3, 1, 0, 0, 2, 0, 0],
            vec![
                3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0,
            ],
            vec![3, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x10, 0, 0, 0],
        ] {
            assert!(Done::read_ok(&bad).is_none(), "{bad:?}");
            assert!(Done::read(&bad).is_err(), "{bad:?}");
        }
    }

    const VALUES: [u64; 12] = [
        0,
        1,
        127,
        128,
        300,
        16_383,
        16_384,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        1 << 56,
        u64::MAX - 1,
        u64::MAX,
    ];

    /// A shared reply as a worker writes it: the `SharedDone` header, the chunk's
    /// beginning (a sequence of one, `Ok`, the length), the offset.
    fn shared_reply(done: &Done, len: u64, offset: u64) -> bytes::BytesMut {
        let mut frame = Vec::new();
        assert!(done.write_shared(&mut frame));
        frame.extend_from_slice(&[1, 0]);
        put_varint(len, &mut frame);
        put_varint(offset, &mut frame);
        frame[..].into()
    }

    #[test]
    fn a_shared_reply_reads_as_the_done_it_stands_for() {
        let done = Done {
            id: 77,
            outcome: Outcome::Ok {
                panicked: 0,
                byte_string: true,
            },
            ran_ns: 5,
            ran_jobs: 1,
        };
        let mut frame = shared_reply(&done, 1 << 24, 4096);
        let mut written = Vec::new();
        assert!(done.write_shared(&mut written));
        assert_eq!(
            written[1..],
            postcard::to_allocvec(&FromWorker::SharedDone(done)).unwrap()[1..]
        );
        assert_eq!(Done::read_shared(&mut frame), Ok(Some((4096, 1 << 24))));
        let (read, len) = Done::read_ok(&frame).unwrap();
        assert_eq!((read.id, read.ran_ns), (77, 5));
        assert_eq!(
            codec::byte_string_result(&frame[len..]),
            Some((frame.len() - len, 1 << 24))
        );
        // Any other frame is left alone.
        let mut other = bytes::BytesMut::from(&[DONE_TAG, 1, 2][..]);
        assert_eq!(Done::read_shared(&mut other), Ok(None));
        assert_eq!(&other[..], &[DONE_TAG, 1, 2]);
    }

    #[test]
    fn a_shared_reply_that_does_not_read_is_refused() {
        let ok = |panicked, byte_string| Done {
            id: 1,
            outcome: Outcome::Ok {
                panicked,
                byte_string,
            },
            ran_ns: 0,
            ran_jobs: 0,
        };
        let whole = shared_reply(&ok(0, true), 300, 7);
        // Cut anywhere, or with a byte more.
        for cut in 1..whole.len() {
            let mut frame = bytes::BytesMut::from(&whole[..cut]);
            assert!(Done::read_shared(&mut frame).is_err(), "cut at {cut}");
        }
        let mut longer = whole.clone();
        longer.extend_from_slice(&[0]);
        assert!(Done::read_shared(&mut longer).is_err());
        // Not one successful byte string.
        for done in [ok(1, true), ok(0, false)] {
            assert!(Done::read_shared(&mut shared_reply(&done, 300, 7)).is_err());
        }
        let mut two = Vec::new();
        assert!(ok(0, true).write_shared(&mut two));
        two.extend_from_slice(&[2, 0, 1, 9, 0, 1, 9, 0]);
        assert!(Done::read_shared(&mut two[..].into()).is_err());
        // An offset over 64 bits.
        let mut huge = Vec::new();
        assert!(ok(0, true).write_shared(&mut huge));
        huge.extend_from_slice(&[1, 0, 5]);
        huge.extend_from_slice(&[0xff; 10]);
        huge.push(1);
        assert!(Done::read_shared(&mut huge[..].into()).is_err());
    }

    #[test]
    fn headers_are_written_as_postcard_writes_them() {
        for &id in &VALUES {
            for &ran_ns in &VALUES {
                for &small in &[0u32, 1, 200, u32::MAX] {
                    let done = Done {
                        id,
                        outcome: Outcome::Ok {
                            panicked: small,
                            byte_string: small % 2 == 0,
                        },
                        ran_ns,
                        ran_jobs: small.rotate_left(3),
                    };
                    let mut fast = Vec::new();
                    assert!(done.write_ok(&mut fast));
                    assert_eq!(
                        fast,
                        postcard::to_allocvec(&FromWorker::Done(done)).unwrap()
                    );
                }
                let func = FnRef::from_bits(ran_ns, id);
                let mut fast = vec![7];
                ToWorker::write_job(id, func, &mut fast);
                let slow = postcard::to_allocvec(&ToWorker::Job { id, func }).unwrap();
                assert_eq!(fast[1..], slow[..]);
                fast.extend_from_slice(b"args");
                assert_eq!(
                    ToWorker::read_job(&fast[1..]),
                    Some((id, func, slow.len(), false)),
                    "{id} {ran_ns}"
                );
                for cut in 0..slow.len() {
                    assert_eq!(ToWorker::read_job(&slow[..cut]), None);
                }
                let shared = postcard::to_allocvec(&ToWorker::SharedJob { id, func }).unwrap();
                assert_eq!(shared[0], SHARED_JOB_TAG);
                assert_eq!(shared[1..], slow[1..]);
                assert_eq!(
                    ToWorker::read_job(&shared),
                    Some((id, func, shared.len(), true))
                );
            }
        }
        let failed = Done {
            id: 1,
            outcome: Outcome::BadArguments("x".into()),
            ran_ns: 0,
            ran_jobs: 0,
        };
        let mut out = Vec::new();
        assert!(!failed.write_ok(&mut out));
        assert!(out.is_empty());
        let setup = postcard::to_allocvec(&ToWorker::Setup {
            protocol: 1,
            build_id: vec![],
            index: None,
            name: String::new(),
            daemon: false,
            max_frame_len: 1,
            spin_us: 0,
            ring: false,
            shared_min: 0,
            initializer: None,
            env: None,
            sandbox: None,
        })
        .unwrap();
        assert_eq!(ToWorker::read_job(&setup), None);
    }

    #[test]
    fn done_is_read_from_a_from_worker_frame() {
        let done = FromWorker::Done(Done {
            id: 300,
            outcome: Outcome::Ok {
                panicked: 2,
                byte_string: false,
            },
            ran_ns: 1 << 40,
            ran_jobs: 7,
        });
        let mut frame = postcard::to_allocvec(&done).unwrap();
        assert_eq!(frame[0], DONE_TAG);
        frame.extend_from_slice(b"payload");
        let (read, payload) = Done::read(&frame).unwrap();
        assert_eq!((read.id, read.ran_ns, read.ran_jobs), (300, 1 << 40, 7));
        assert!(matches!(
            read.outcome,
            Outcome::Ok {
                panicked: 2,
                byte_string: false
            }
        ));
        assert_eq!(payload, b"payload");
        let ready = postcard::to_allocvec(&FromWorker::Ready).unwrap();
        assert!(Done::read(&ready).is_err());
        assert!(Done::read(&[]).is_err());
        assert!(Done::read(&frame[..3]).is_err());
    }
}
