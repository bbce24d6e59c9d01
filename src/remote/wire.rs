//! What a keeper adds to the worker's byte stream toward the pool: heartbeats (empty
//! frames) and meta frames (a reserved length, then a small postcard message), only
//! between the worker's frames. [`Parser`] takes them out again on the pool's side,
//! where they are untrusted input like everything else from another machine: every
//! length is checked and bounded.

use serde::{Deserialize, Serialize};

/// A heartbeat: an empty frame (no worker message is empty).
pub(crate) const HEARTBEAT: [u8; 4] = [0; 4];

/// The length that marks a meta frame; a worker frame of this length is refused.
const META_MARK: u32 = u32::MAX;

/// The longest meta frame body accepted.
const META_LIMIT: usize = 1024;

/// How the worker ended, in [`Meta::Exit`].
pub(crate) const EXIT_CODE: u8 = 0;
pub(crate) const EXIT_SIGNAL: u8 = 1;
pub(crate) const EXIT_UNKNOWN: u8 = 2;

/// Whether a worker frame's length is the link's own.
pub(crate) fn is_reserved(len: u32) -> bool {
    len == META_MARK
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

/// Appends `meta` as a frame.
pub(crate) fn write_meta(meta: &Meta, out: &mut Vec<u8>) {
    let body = postcard::to_allocvec(meta).unwrap_or_default();
    out.extend_from_slice(&META_MARK.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
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

/// Where the parser is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a frame header (4 bytes).
    Header,
    /// Passing on the rest of a worker frame.
    Body(u64),
    /// Reading a meta frame's length (2 bytes).
    MetaLen,
    /// Reading a meta frame's body.
    Meta(usize),
}

/// Takes heartbeats and meta frames out of the stream from a keeper, passing the
/// worker's frames on byte for byte.
#[derive(Debug)]
pub(crate) struct Parser {
    state: State,
    /// A partly read header, meta length or meta body.
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
    /// Feeds `bytes`; appends the worker's bytes to `out` and returns the meta frames
    /// found. An error if the stream breaks the link's rules.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Vec<Meta>, String> {
        let mut metas = Vec::new();
        while !bytes.is_empty() {
            match self.state {
                State::Body(left) => {
                    let n = left.min(bytes.len() as u64) as usize;
                    out.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.state = match left - n as u64 {
                        0 => State::Header,
                        left => State::Body(left),
                    };
                }
                State::Header => {
                    if !self.take(&mut bytes, 4) {
                        continue;
                    }
                    let len = u32::from_be_bytes([
                        self.part[0],
                        self.part[1],
                        self.part[2],
                        self.part[3],
                    ]);
                    let header = std::mem::take(&mut self.part);
                    self.state = match len {
                        0 => State::Header,
                        META_MARK => State::MetaLen,
                        len => {
                            out.extend_from_slice(&header);
                            State::Body(u64::from(len))
                        }
                    };
                }
                State::MetaLen => {
                    if !self.take(&mut bytes, 2) {
                        continue;
                    }
                    let len = usize::from(u16::from_be_bytes([self.part[0], self.part[1]]));
                    self.part.clear();
                    if len > META_LIMIT {
                        return Err(format!(
                            "a meta frame of {len} bytes (the limit is {META_LIMIT})"
                        ));
                    }
                    self.state = State::Meta(len);
                }
                State::Meta(len) => {
                    if !self.take(&mut bytes, len) {
                        continue;
                    }
                    let meta: Meta = postcard::from_bytes(&self.part)
                        .map_err(|e| format!("a meta frame that does not decode: {e}"))?;
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
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// Frames, heartbeats and meta frames, fed in every split: the worker's bytes come
    /// out whole and in order, and the meta frames are found.
    #[test]
    fn takes_out_heartbeats_and_meta_frames_at_any_split() {
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
        stream.extend_from_slice(&HEARTBEAT);
        let a = frame(b"first frame");
        let b = frame(&[7u8; 300]);
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&HEARTBEAT);
        stream.extend_from_slice(&b);
        write_meta(&exit, &mut stream);
        let want: Vec<u8> = [a, b].concat();
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
    fn refuses_oversized_and_garbled_meta_frames() {
        let mut parser = Parser::default();
        let mut bad = META_MARK.to_be_bytes().to_vec();
        bad.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(parser.feed(&bad, &mut Vec::new()).is_err());
        let mut parser = Parser::default();
        let mut bad = META_MARK.to_be_bytes().to_vec();
        bad.extend_from_slice(&3u16.to_be_bytes());
        bad.extend_from_slice(&[9, 9, 9]);
        assert!(parser.feed(&bad, &mut Vec::new()).is_err());
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
