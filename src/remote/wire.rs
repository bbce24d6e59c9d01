//! The link's own framing. Toward the pool, a keeper sends *records*: a 4-byte
//! big-endian length, a kind byte, then the payload: the worker's bytes as they came
//! ([`DATA`]), a heartbeat ([`BEAT`], empty), or a meta message ([`META`], a small
//! postcard [`Meta`]), so that a meta message (the worker's exit status) can follow even
//! a frame the worker died in the middle of. [`Parser`] takes them apart on the pool's
//! side, where they are untrusted input like everything else from another machine:
//! every length and kind is checked and bounded. Toward the keeper, the pool's own
//! frames go as they are, with empty frames as heartbeats between them
//! ([`FrameTrack`]).

use serde::{Deserialize, Serialize};

/// A heartbeat from the pool: an empty frame (no message of the pool is empty).
pub(crate) const HEARTBEAT: [u8; 4] = [0; 4];

/// A record's kinds.
const DATA: u8 = 0;
const BEAT: u8 = 1;
const META: u8 = 2;

/// The longest data record accepted (a keeper sends at most what it read at once).
const DATA_LIMIT: u32 = 1 << 20;

/// The longest meta record accepted.
const META_LIMIT: u32 = 1024;

/// How the worker ended, in [`Meta::Exit`].
pub(crate) const EXIT_CODE: u8 = 0;
pub(crate) const EXIT_SIGNAL: u8 = 1;
pub(crate) const EXIT_UNKNOWN: u8 = 2;

/// A frame length the pool never sends to a keeper (see [`FrameTrack::follow`]).
fn is_reserved(len: u32) -> bool {
    len == u32::MAX
}

/// What a keeper tells the pool about its worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Meta {
    /// Sent first: the keeper's host and its worker's pid.
    Hello { host: String, pid: u32 },
    /// Sent last: how the worker ended.
    Exit { pid: u32, kind: u8, value: i32 },
}

impl Meta {
    /// How the worker ended, for an [`Meta::Exit`].
    pub(crate) fn exit(&self) -> Option<crate::error::WorkerExit> {
        use crate::error::WorkerExit;
        match *self {
            Meta::Exit {
                kind: EXIT_CODE,
                value,
                ..
            } => Some(WorkerExit::Code(value)),
            Meta::Exit {
                kind: EXIT_SIGNAL,
                value,
                ..
            } => Some(WorkerExit::Signal(value)),
            Meta::Exit { .. } => Some(WorkerExit::Unknown),
            Meta::Hello { .. } => None,
        }
    }
}

fn write_record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Appends `meta` as a record.
pub(crate) fn write_meta(meta: &Meta, out: &mut Vec<u8>) {
    let body = postcard::to_allocvec(meta).unwrap_or_default();
    write_record(META, &body, out);
}

/// Appends a heartbeat record.
pub(crate) fn write_beat(out: &mut Vec<u8>) {
    write_record(BEAT, &[], out);
}

/// Appends the worker's bytes as data records (of at most [`DATA_LIMIT`] each).
pub(crate) fn write_data(bytes: &[u8], out: &mut Vec<u8>) {
    for piece in bytes.chunks(DATA_LIMIT as usize) {
        write_record(DATA, piece, out);
    }
}

/// Follows the frames of a byte stream, to tell where one ends: heartbeats may only go
/// between frames.
#[derive(Debug, Default, Clone)]
pub(crate) struct FrameTrack {
    /// What is left of the current frame's body.
    left: u64,
    header: [u8; 4],
    header_len: usize,
}

impl FrameTrack {
    /// Whether the bytes so far end at a frame's end.
    pub(crate) fn at_boundary(&self) -> bool {
        self.left == 0 && self.header_len == 0
    }

    /// Follows `bytes`, appending them to `out` (but for the empty frames, with
    /// `strip`). A frame header of the length the link reserves for its meta frames
    /// breaks the link's rules: `Err`, with what came before it followed.
    pub(crate) fn follow(
        &mut self,
        mut bytes: &[u8],
        strip: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), ReservedLength> {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len() as u64) as usize;
                out.extend_from_slice(&bytes[..n]);
                self.left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (4 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == 4 {
                self.header_len = 0;
                let len = u32::from_be_bytes(self.header);
                if is_reserved(len) {
                    return Err(ReservedLength);
                }
                self.left = u64::from(len);
                if self.left > 0 || !strip {
                    out.extend_from_slice(&self.header);
                }
            }
        }
        Ok(())
    }
}

/// A frame whose length is the one the link reserves (see [`FrameTrack::follow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReservedLength;

/// Where the parser is in the stream of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a record's header (5 bytes).
    Header,
    /// Passing on the rest of a data record.
    Data(u32),
    /// Reading a meta record of this length.
    Meta(usize),
}

/// Takes a keeper's records apart: the worker's bytes to pass on, and its meta messages.
#[derive(Debug)]
pub(crate) struct Parser {
    state: State,
    /// A partly read header or meta body.
    part: Vec<u8>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            state: State::Header,
            part: Vec::new(),
        }
    }
}

impl Parser {
    /// Feeds `bytes`; appends the worker's bytes to `out` and returns the meta messages
    /// found. An error if the stream breaks the link's rules.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Vec<Meta>, String> {
        let mut metas = Vec::new();
        while !bytes.is_empty() {
            match self.state {
                State::Data(left) => {
                    let n = (left as usize).min(bytes.len());
                    out.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.state = match left - n as u32 {
                        0 => State::Header,
                        left => State::Data(left),
                    };
                }
                State::Header => {
                    if !self.take(&mut bytes, 5) {
                        continue;
                    }
                    let len = u32::from_be_bytes([
                        self.part[0],
                        self.part[1],
                        self.part[2],
                        self.part[3],
                    ]);
                    let kind = self.part[4];
                    self.part.clear();
                    self.state = match (kind, len) {
                        (DATA, 1..=DATA_LIMIT) => State::Data(len),
                        (BEAT, 0) => State::Header,
                        (META, 1..=META_LIMIT) => State::Meta(len as usize),
                        _ => {
                            return Err(format!(
                            "a record of kind {kind} and {len} bytes, which the link does not have"
                        ))
                        }
                    };
                }
                State::Meta(len) => {
                    if !self.take(&mut bytes, len) {
                        continue;
                    }
                    let meta: Meta = postcard::from_bytes(&self.part)
                        .map_err(|e| format!("a meta record that does not decode: {e}"))?;
                    if let Meta::Hello { host, .. } = &meta {
                        if host.len() > 255 {
                            return Err("a host name over 255 bytes".into());
                        }
                    }
                    self.part.clear();
                    metas.push(meta);
                    self.state = State::Header;
                }
            }
        }
        Ok(metas)
    }

    /// Moves bytes into `part` until it holds `n`; whether it does.
    fn take(&mut self, bytes: &mut &[u8], n: usize) -> bool {
        let want = n.saturating_sub(self.part.len()).min(bytes.len());
        self.part.extend_from_slice(&bytes[..want]);
        *bytes = &bytes[want..];
        self.part.len() == n
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `body` as a frame: its length, then itself (also the keeper's tests').
    pub(in crate::remote) fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// Data, heartbeats and meta records, fed in every split: the worker's bytes come
    /// out whole and in order, and the meta messages are found, also one that follows
    /// half a frame (a worker that died writing).
    #[test]
    fn takes_records_apart_at_any_split() {
        let hello = Meta::Hello {
            host: "node-7".into(),
            pid: 4242,
        };
        let exit = Meta::Exit {
            pid: 4242,
            kind: EXIT_SIGNAL,
            value: 11,
        };
        let mut stream = Vec::new();
        write_meta(&hello, &mut stream);
        write_beat(&mut stream);
        let a = frame(b"first frame");
        let b = frame(&[7u8; 300]);
        write_data(&a, &mut stream);
        write_beat(&mut stream);
        write_data(&b[..100], &mut stream);
        write_meta(&exit, &mut stream);
        let want: Vec<u8> = [a, b[..100].to_vec()].concat();
        for split in 1..stream.len() {
            let mut parser = Parser::default();
            let mut out = Vec::new();
            let mut metas = Vec::new();
            for piece in stream.chunks(split) {
                metas.extend(parser.feed(piece, &mut out).expect("well formed"));
            }
            assert_eq!(out, want, "split {split}");
            assert_eq!(metas, [hello.clone(), exit.clone()], "split {split}");
        }
    }

    /// The pool's heartbeats are taken out of its stream at any split, and its frames
    /// pass whole; the track knows where frames end.
    #[test]
    fn a_frame_track_strips_empty_frames_at_any_split() {
        let a = frame(b"job one");
        let b = frame(&[0u8; 40]);
        let stream = [HEARTBEAT.to_vec(), a.clone(), HEARTBEAT.to_vec(), b.clone()].concat();
        for split in 1..stream.len() {
            let mut track = FrameTrack::default();
            let mut out = Vec::new();
            for piece in stream.chunks(split) {
                track
                    .follow(piece, true, &mut out)
                    .expect("no reserved length");
            }
            assert_eq!(out, [a.clone(), b.clone()].concat(), "split {split}");
            assert!(track.at_boundary());
        }
        let mut track = FrameTrack::default();
        track.follow(&a[..5], false, &mut Vec::new()).unwrap();
        assert!(!track.at_boundary());
        let mut track = FrameTrack::default();
        assert_eq!(
            track.follow(&u32::MAX.to_be_bytes(), false, &mut Vec::new()),
            Err(ReservedLength)
        );
    }

    #[test]
    fn refuses_records_the_link_does_not_have() {
        let bad = |len: u32, kind: u8, tail: &[u8]| {
            let mut v = len.to_be_bytes().to_vec();
            v.push(kind);
            v.extend_from_slice(tail);
            Parser::default().feed(&v, &mut Vec::new()).is_err()
        };
        assert!(bad(META_LIMIT + 1, META, &[]), "an oversized meta record");
        assert!(
            bad(3, META, &[9, 9, 9]),
            "a meta record that does not decode"
        );
        assert!(bad(DATA_LIMIT + 1, DATA, &[]), "an oversized data record");
        assert!(bad(0, DATA, &[]), "an empty data record");
        assert!(bad(1, BEAT, &[0]), "a heartbeat with a payload");
        assert!(bad(1, 9, &[0]), "an unknown kind");
    }

    #[test]
    fn exits_map_to_worker_exits() {
        use crate::error::WorkerExit;
        let exit = |kind, value| {
            Meta::Exit {
                pid: 1,
                kind,
                value,
            }
            .exit()
        };
        assert_eq!(exit(EXIT_CODE, 3), Some(WorkerExit::Code(3)));
        assert_eq!(exit(EXIT_SIGNAL, 9), Some(WorkerExit::Signal(9)));
        assert_eq!(exit(200, 9), Some(WorkerExit::Unknown));
    }
}
