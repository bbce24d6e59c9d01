//! The pool's end of a worker's channel, registered with Tokio for reading only.
//!
//! A Unix socket reports "writable" to its epoll registrations every time the peer
//! reads from it: with the usual registration (readable and writable), each job a
//! worker reads woke a runtime thread that had nothing to do, which cost the quickest
//! round trips a third of their time. Here the socket is registered for reading only;
//! a write that finds the socket full registers a duplicate of it for writability
//! until the writer is [`idle`](ChanWrite::idle) again, which only large payloads do.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Splits a connected (non-blocking) socket into its two halves. Must be called
/// within a Tokio runtime.
pub(crate) fn split(sock: OwnedFd) -> io::Result<(ChanRead, ChanWrite)> {
    // SAFETY: the AsyncFd owns `sock`, which stays open (and the same description)
    // until the AsyncFd drops it.
    let fd = Arc::new(unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }?);
    Ok((
        ChanRead {
            fd: fd.clone(),
            fds: VecDeque::new(),
        },
        ChanWrite { fd, writable: None },
    ))
}

/// The most descriptors a reading half holds unclaimed: a worker passes one with each
/// reply of shared memory, which the pool claims as it reads the reply.
const FDS_MAX: usize = 8;

/// The reading half.
#[derive(Debug)]
pub(crate) struct ChanRead {
    fd: Arc<AsyncFd<OwnedFd>>,
    /// Descriptors passed with the bytes read (`SCM_RIGHTS`), in order, unclaimed.
    fds: VecDeque<OwnedFd>,
}

impl ChanRead {
    /// The oldest descriptor passed with the bytes read so far, not yet claimed.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }

    /// Whether the socket is readable (or at its end, or failed), as far as the
    /// reactor knows, without reading; if not, `cx` is woken when it is.
    pub(crate) fn poll_readable(&self, cx: &mut Context<'_>) -> bool {
        self.fd.poll_read_ready(cx).is_ready()
    }
}

impl AsyncRead for ChanRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            // SAFETY: recvmsg(2) below only writes into this memory, and only the
            // bytes it reports written are marked initialised.
            let unfilled = unsafe { buf.unfilled_mut() };
            let want = unfilled.len();
            let fds = &mut this.fds;
            let fds_before = fds.len();
            let result = guard.try_io(|fd| {
                // recvmsg(2), not read(2): a descriptor passed with the bytes would be
                // closed unseen by a plain read.
                let mut iov = libc::iovec {
                    iov_base: unfilled.as_mut_ptr().cast(),
                    iov_len: unfilled.len(),
                };
                let mut control = [0u64; 8];
                // SAFETY: an all-zero msghdr is valid; it points at `iov` (writable
                // memory of its length) and at `control`, a buffer of its stated
                // length, 8-byte aligned as cmsg headers need; the descriptors taken
                // are those the kernel just installed for us.
                let (n, flags) = unsafe {
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    msg.msg_control = control.as_mut_ptr().cast();
                    msg.msg_controllen = std::mem::size_of_val(&control) as _;
                    let n = libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
                    if n >= 0 {
                        crate::fdpass::take_rights(&msg, fds);
                    }
                    (n, msg.msg_flags)
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                if flags & libc::MSG_CTRUNC != 0 || fds.len() > FDS_MAX {
                    // Not `WouldBlock`: that would read as "not ready after all".
                    return Ok(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the worker passed descriptors that no reply claimed",
                    )));
                }
                Ok(Ok((n as usize, fds.len() != fds_before)))
            });
            match result {
                Ok(Ok(Err(e))) => return Poll::Ready(Err(e)),
                Ok(Ok(Ok((n, passed)))) => {
                    // SAFETY: the kernel wrote `n` bytes at the start of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    // A short read took all there was: the next read would only find
                    // the socket empty (a wasted recvmsg(2) per wake-up of the driver),
                    // so the readiness is cleared now, as Tokio's own streams do; the
                    // guard clears only what it saw, so bytes that came since wake the
                    // reactor again. Not after a descriptor: the kernel ends a read at
                    // the bytes that carried one, with more maybe behind them.
                    if n > 0 && n < want && !passed {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not ready after all: the guard cleared the readiness; poll again.
                Err(_would_block) => continue,
            }
        }
    }
}

/// The writing half.
#[derive(Debug)]
pub(crate) struct ChanWrite {
    fd: Arc<AsyncFd<OwnedFd>>,
    /// A duplicate of the socket registered for writability, while a write waits.
    writable: Option<AsyncFd<OwnedFd>>,
}

impl ChanWrite {
    fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Nothing is waiting to be written: stop watching for writability.
    pub(crate) fn idle(&mut self) {
        self.writable = None;
    }

    /// Runs `write` until it does not find the socket full, waiting for room between.
    fn poll_with(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(RawFd) -> isize,
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = write(self.raw_fd());
            if n >= 0 {
                return Poll::Ready(Ok(n as usize));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {}
                _ => return Poll::Ready(Err(err)),
            }
            if self.writable.is_none() {
                let dup = self.fd.get_ref().try_clone()?;
                // Registering reports the current state: room that appeared since the
                // failed write is not missed.
                // SAFETY: as in `split`, for the duplicate.
                let watch = unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) }?;
                self.writable = Some(watch);
            }
            let watch = self.writable.as_ref().expect("just set");
            let mut guard = ready!(watch.poll_write_ready(cx))?;
            guard.clear_ready();
        }
    }

    /// Writes what it can of `batch`, in order, like `poll_write_vectored`.
    #[inline]
    /// With `pass`, that descriptor goes with the first byte written.
    pub(crate) fn poll_write_batch(
        &mut self,
        cx: &mut Context<'_>,
        batch: &IoBatch<'_>,
        pass: Option<BorrowedFd<'_>>,
    ) -> Poll<io::Result<usize>> {
        let Some(pass) = pass else {
            // SAFETY: every `iovec` of a batch describes memory borrowed for the
            // batch's lifetime, which outlives this call (see `IoBatch::push`).
            return unsafe { self.poll_write_iovecs(cx, batch.iovecs()) };
        };
        let iov = batch.iovecs();
        self.poll_with(cx, |fd| {
            // SAFETY: as above, for the batch's `iovec`s.
            unsafe {
                crate::fdpass::sendmsg_with_fd(
                    fd,
                    iov,
                    pass,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }
        })
    }

    /// Writes what it can of `buf` without waiting: for a caller outside the event
    /// loop (see `crate::direct`). Returns how many bytes went; 0 if the socket is full
    /// or failing (whoever writes next finds out which).
    pub(crate) fn try_send(&self, buf: &[u8]) -> usize {
        // SAFETY: send(2) reads `buf.len()` bytes of `buf`, on a socket this half keeps
        // open.
        let n = unsafe {
            libc::send(
                self.raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        usize::try_from(n).unwrap_or(0)
    }

    /// Writes what it can of the memory `iov` describes, in order, like
    /// `poll_write_vectored`.
    ///
    /// # Safety
    ///
    /// Each `iovec` must describe memory that is readable and stays so for the call.
    unsafe fn poll_write_iovecs(
        &mut self,
        cx: &mut Context<'_>,
        iov: &[libc::iovec],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |fd| {
            // SAFETY: an all-zero msghdr is valid; it is pointed at `iov`, which the
            // caller vouches for, and sendmsg(2) only reads it and what it describes.
            unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_ptr().cast_mut();
                msg.msg_iovlen = iov.len() as _;
                libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            }
        })
    }
}

impl AsyncWrite for ChanWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_with(cx, |fd| {
            // SAFETY: send(2) reads `buf.len()` bytes of `buf`.
            unsafe {
                libc::send(
                    fd,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // SAFETY: `IoSlice` is laid out as `iovec` on Unix (its documented guarantee),
        // and each describes a slice borrowed for this call.
        unsafe {
            let iov = std::slice::from_raw_parts(bufs.as_ptr().cast::<libc::iovec>(), bufs.len());
            self.get_mut().poll_write_iovecs(cx, iov)
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown(2) on a socket this half keeps open.
        let rc = unsafe { libc::shutdown(self.raw_fd(), libc::SHUT_WR) };
        Poll::Ready(if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        })
    }
}

/// Up to 64 buffers for one vectored write, gathered from borrowed byte slices.
///
/// With `join`, a slice that starts where the one before it ends in memory goes into
/// the same segment: each job's frame of a stream's batch is a slice of one buffer,
/// and the kernel copies segments one by one. (Only a raw `iovec` may span two
/// slices; no Rust slice is made of them.)
pub(crate) struct IoBatch<'a> {
    iov: [libc::iovec; IoBatch::MAX],
    count: usize,
    join: bool,
    _borrow: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> IoBatch<'a> {
    /// How many segments a batch holds.
    pub(crate) const MAX: usize = 64;

    /// An empty batch; `join`: see the type's docs.
    #[inline]
    pub(crate) fn new(join: bool) -> Self {
        IoBatch {
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IoBatch::MAX],
            count: 0,
            join,
            _borrow: std::marker::PhantomData,
        }
    }

    /// Adds `part`; `false` (and nothing added) if the batch is full.
    #[inline]
    pub(crate) fn push(&mut self, part: &'a [u8]) -> bool {
        if self.join {
            if let Some(last) = self.count.checked_sub(1).map(|i| &mut self.iov[i]) {
                let end = last.iov_base.cast_const().wrapping_byte_add(last.iov_len);
                if end.cast() == part.as_ptr() {
                    last.iov_len += part.len();
                    return true;
                }
            }
        }
        if self.count == IoBatch::MAX {
            return false;
        }
        self.iov[self.count] = libc::iovec {
            iov_base: part.as_ptr().cast_mut().cast(),
            iov_len: part.len(),
        };
        self.count += 1;
        true
    }

    #[inline]
    fn iovecs(&self) -> &[libc::iovec] {
        &self.iov[..self.count]
    }

    /// The batch as `IoSlice`s, for any `AsyncWrite`: only for a batch made without
    /// `join` (`None` otherwise), whose every segment is one borrowed slice.
    #[inline]
    pub(crate) fn io_slices(&self) -> Option<&[IoSlice<'a>]> {
        if self.join {
            return None;
        }
        // SAFETY: `IoSlice` is laid out as `iovec` on Unix (its documented guarantee),
        // and without `join` each `iovec` describes exactly one slice borrowed for 'a.
        Some(unsafe {
            std::slice::from_raw_parts(self.iov.as_ptr().cast::<IoSlice<'a>>(), self.count)
        })
    }
}

// SAFETY: a batch only holds pointers into slices it borrows (shared, `&'a [u8]`,
// which are `Send` and `Sync`).
unsafe impl Send for IoBatch<'_> {}
// SAFETY: as above.
unsafe impl Sync for IoBatch<'_> {}

#[cfg(test)]
mod tests {
    use std::io::{IoSlice, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Our reading half of a socketpair, and the other end (blocking).
    fn pair() -> (ChanRead, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let (read, _) = split(ours.into()).unwrap();
        (read, theirs)
    }

    /// One read into `buf`, within a bound: what it read.
    async fn read_within<'b>(read: &mut ChanRead, buf: &'b mut [u8], why: &str) -> &'b [u8] {
        let n = tokio::time::timeout(Duration::from_secs(5), read.read(buf))
            .await
            .expect(why)
            .unwrap();
        &buf[..n]
    }

    /// A short read clears the readiness it saw; bytes written after it wake the
    /// reader again (no wake-up is lost).
    #[tokio::test]
    async fn bytes_after_a_short_read_are_read() {
        let (mut read, mut theirs) = pair();
        let mut buf = [0u8; 64];
        theirs.write_all(b"abcd").unwrap();
        assert_eq!(
            read_within(&mut read, &mut buf, "bytes there").await,
            b"abcd"
        );
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            theirs.write_all(b"efgh").unwrap();
            theirs
        });
        let got = read_within(&mut read, &mut buf, "woken by the later bytes").await;
        assert_eq!(got, b"efgh");
        drop(writer.join().unwrap());
    }

    /// The kernel ends a read at the bytes that carried a descriptor, with more queued
    /// behind them: that short read must leave the readiness set, or the rest would
    /// wait for bytes that may never come.
    #[tokio::test]
    async fn bytes_behind_a_descriptor_are_read_without_new_ones() {
        let (mut read, theirs) = pair();
        let passed = std::fs::File::open("/dev/null").unwrap();
        let rights = [passed.as_raw_fd()];
        sendmsg::<()>(
            theirs.as_raw_fd(),
            &[IoSlice::new(b"one")],
            &[ControlMessage::ScmRights(&rights)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        (&theirs).write_all(b"two").unwrap();
        let mut buf = [0u8; 64];
        let got = read_within(&mut read, &mut buf, "bytes there").await;
        assert_eq!(got, b"one", "the read ends at the descriptor");
        assert!(read.take_fd().is_some());
        let why = "the bytes behind the descriptor, with nothing written since";
        assert_eq!(read_within(&mut read, &mut buf, why).await, b"two");
        drop(theirs);
    }
}
