//! The pool's end of a remote worker's link: the launcher's stdout, read through a
//! [`KeeperRead`] that takes out the keeper's heartbeats and meta frames (see
//! [`wire`](crate::remote::wire)) and fails the read with `TimedOut` when nothing at
//! all came for the heartbeat bound.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use std::os::fd::AsRawFd;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::WorkerExit;
use crate::remote::wire::{FrameTrack, Meta, Parser, HEARTBEAT};

/// What the keeper said about its worker.
#[derive(Debug, Default)]
pub(crate) struct RemoteInfo {
    state: Mutex<Said>,
}

#[derive(Debug, Default)]
struct Said {
    host: Option<String>,
    pid: Option<u32>,
    exit: Option<WorkerExit>,
}

impl RemoteInfo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Said> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host the keeper runs on.
    pub(crate) fn host(&self) -> Option<String> {
        self.lock().host.clone()
    }

    /// The worker's pid on its host.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().pid
    }

    /// How the worker ended, once the keeper said.
    pub(crate) fn exit(&self) -> Option<WorkerExit> {
        self.lock().exit
    }

    fn note(&self, meta: &Meta) {
        let mut said = self.lock();
        match meta {
            Meta::Hello { host, pid } => {
                said.host = Some(host.clone());
                said.pid = Some(*pid);
            }
            Meta::Exit { .. } => said.exit = meta.exit(),
        }
    }
}

/// How much is read from the launcher at once.
const READ_CHUNK: usize = 64 << 10;

/// Reads a keeper's stream: the worker's bytes, without heartbeats and meta frames.
pub(crate) struct KeeperRead<R> {
    inner: R,
    parser: Parser,
    info: Arc<RemoteInfo>,
    /// Bytes read and parsed, not yet given out.
    out: Vec<u8>,
    taken: usize,
    raw: Vec<u8>,
    silence: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Whether the keeper has been heard: the silence bound counts from then (until
    /// then, the launcher may be queueing, and the pool's start-up timeout bounds it).
    heard: bool,
    ended: bool,
}

impl<R> std::fmt::Debug for KeeperRead<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeeperRead")
            .field("silence", &self.silence)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> KeeperRead<R> {
    /// Reads `inner`, noting what the keeper says in `info`; once the keeper has been
    /// heard, a read fails with `TimedOut` after `silence` without a byte.
    pub(crate) fn new(inner: R, info: Arc<RemoteInfo>, silence: Duration) -> Self {
        KeeperRead {
            inner,
            parser: Parser::default(),
            info,
            out: Vec::new(),
            taken: 0,
            raw: vec![0; READ_CHUNK],
            silence,
            deadline: Box::pin(tokio::time::sleep(silence)),
            heard: false,
            ended: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for KeeperRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.out.len() {
                let n = (this.out.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.out[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.out.len() {
                    this.out.clear();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let mut raw = ReadBuf::new(&mut this.raw);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw) {
                Poll::Ready(Ok(())) => {
                    let n = raw.filled().len();
                    if n == 0 {
                        this.ended = true;
                        continue;
                    }
                    this.heard = true;
                    this.deadline.as_mut().reset(Instant::now() + this.silence);
                    let metas = this
                        .parser
                        .feed(&this.raw[..n], &mut this.out)
                        .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
                    for meta in &metas {
                        this.info.note(meta);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if !this.heard {
                        return Poll::Pending;
                    }
                    ready!(this.deadline.as_mut().poll(cx));
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing came on the link for {:?}", this.silence),
                    )));
                }
            }
        }
    }
}

/// Writes to a keeper (the launcher's stdin), and sends it a heartbeat (an empty
/// frame, between the pool's frames) whenever nothing was written for `interval`, so
/// that a keeper whose link died without an end it can see (a launcher killed while
/// its far side lives on) ends its worker within its silence bound.
pub(crate) struct KeeperWrite<W> {
    state: Arc<Mutex<WriteState<W>>>,
}

struct WriteState<W> {
    inner: W,
    track: FrameTrack,
    last: std::time::Instant,
}

impl<W> std::fmt::Debug for KeeperWrite<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeeperWrite").finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + AsRawFd + Send + Unpin + 'static> KeeperWrite<W> {
    /// Writes to `inner`, a pipe; heartbeats every `interval` of quiet, from a task of
    /// the current runtime that ends with this writer.
    pub(crate) fn new(inner: W, interval: Duration) -> Self {
        let state = Arc::new(Mutex::new(WriteState {
            inner,
            track: FrameTrack::default(),
            last: std::time::Instant::now(),
        }));
        let weak = Arc::downgrade(&state);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(state) = weak.upgrade() else { return };
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                if s.track.at_boundary() && s.last.elapsed() >= interval {
                    // Four bytes into a pipe go whole or not at all (under PIPE_BUF);
                    // a full pipe means the keeper hears from us anyway.
                    // SAFETY: write(2) of a 4-byte array we own to a descriptor the
                    // writer owns for as long as `s` is held.
                    let n = unsafe {
                        libc::write(
                            s.inner.as_raw_fd(),
                            HEARTBEAT.as_ptr().cast(),
                            HEARTBEAT.len(),
                        )
                    };
                    if n == HEARTBEAT.len() as isize {
                        s.last = std::time::Instant::now();
                    }
                }
            }
        });
        KeeperWrite { state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriteState<W>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<W: AsyncWrite + Unpin> WriteState<W> {
    /// Notes that the first `n` bytes of `bufs` were written.
    fn wrote(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        let mut sink = Vec::new();
        for buf in bufs {
            if n == 0 {
                break;
            }
            let k = n.min(buf.len());
            // (A frame of the reserved length is the keeper's to refuse.)
            let _ = self.track.follow(&buf[..k], false, &mut sink);
            sink.clear();
            n -= k;
        }
        self.last = std::time::Instant::now();
    }
}

impl<W: AsyncWrite + AsRawFd + Send + Unpin + 'static> AsyncWrite for KeeperWrite<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.lock();
        let n = ready!(Pin::new(&mut s.inner).poll_write(cx, buf))?;
        s.wrote(&[io::IoSlice::new(buf)], n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.lock();
        let n = ready!(Pin::new(&mut s.inner).poll_write_vectored(cx, bufs))?;
        s.wrote(bufs, n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::wire::write_meta;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_quiet_link_alive_and_silence_fails_it() {
        let (mut keeper, pool) = tokio::io::duplex(1024);
        let info = Arc::new(RemoteInfo::default());
        let mut read = KeeperRead::new(pool, info.clone(), Duration::from_secs(3));
        let mut hello = Vec::new();
        write_meta(
            &Meta::Hello {
                host: "h".into(),
                pid: 9,
            },
            &mut hello,
        );
        keeper.write_all(&hello).await.unwrap();
        let mut byte = [0u8; 1];
        for _ in 0..5 {
            // Heartbeats every 2 s: under the bound, so nothing fails.
            let beat = async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let mut beat = Vec::new();
                crate::remote::wire::write_beat(&mut beat);
                keeper.write_all(&beat).await.unwrap();
            };
            let (r, ()) = tokio::join!(
                tokio::time::timeout(Duration::from_millis(2500), read.read(&mut byte)),
                beat
            );
            assert!(r.is_err(), "nothing to read yet, and no failure: {r:?}");
        }
        assert_eq!(info.host().as_deref(), Some("h"));
        assert_eq!(info.pid(), Some(9));
        let err = read.read(&mut byte).await.expect_err("silent for 3 s");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
