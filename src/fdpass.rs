//! Passing descriptors over a Unix socket (`SCM_RIGHTS`): the fork server receives
//! each worker's channel and standard descriptors this way, and each worker its reply
//! ring.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;

/// Writes all of `wire` to `stream`, with `fds` attached to its first byte.
pub(crate) async fn send_with_fds(
    stream: &tokio::net::UnixStream,
    wire: &[u8],
    fds: &[RawFd],
) -> io::Result<()> {
    let mut sent = 0;
    while sent < wire.len() {
        stream.writable().await?;
        let result = stream.try_io(Interest::WRITABLE, || {
            let iov = [IoSlice::new(&wire[sent..])];
            // The descriptor travels with the first byte only.
            let rights = [ControlMessage::ScmRights(fds)];
            let cmsgs: &[ControlMessage<'_>] = if sent == 0 { &rights } else { &[] };
            sendmsg::<()>(
                stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(io::Error::from)
        });
        match result {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `recvmsg` that keeps any descriptors passed with `SCM_RIGHTS` (close-on-exec).
pub(crate) fn recv_with_fds(
    fd: RawFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let msg = loop {
        match recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for raw in received {
                // SAFETY: the kernel installed `raw` in this process for us alone.
                fds.push_back(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    Ok(msg.bytes)
}

/// Takes the descriptors passed in `msg` (`SCM_RIGHTS`) into `fds`.
///
/// # Safety
///
/// `msg` must be a message recvmsg(2) has just filled in, its control buffer valid.
pub(crate) unsafe fn take_rights(msg: &libc::msghdr, fds: &mut VecDeque<OwnedFd>) {
    // SAFETY: the caller vouches for `msg`; the CMSG_* macros walk its control
    // buffer within `msg_controllen`, and each SCM_RIGHTS payload is an array of
    // `int`s the kernel installed in this process for us alone.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let bytes =
                    (header.cmsg_len as usize).saturating_sub(data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    fds.push_back(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
}

/// sendmsg(2) of the memory `iov` describes with `pass` attached (`SCM_RIGHTS`), with
/// `flags`; what sendmsg returns (the bytes sent, or -1 with `errno` set). The
/// descriptor travels with the first byte sent.
///
/// # Safety
///
/// Each `iovec` must describe memory that is readable for the call.
pub(crate) unsafe fn sendmsg_with_fd(
    sock: RawFd,
    iov: &[libc::iovec],
    pass: std::os::fd::BorrowedFd<'_>,
    flags: libc::c_int,
) -> isize {
    // One `int` of payload, in a buffer 8-byte aligned as cmsg headers need.
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; it points at `iov` (which the caller
    // vouches for) and at `control`, large enough for one cmsg of one `int`
    // (CMSG_SPACE(4) is 24 bytes on Linux), which the CMSG_* macros fill in within
    // its length; sendmsg(2) only reads them.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr().cast_mut();
        msg.msg_iovlen = iov.len() as _;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        libc::CMSG_DATA(cmsg)
            .cast::<libc::c_int>()
            .write_unaligned(std::os::fd::AsRawFd::as_raw_fd(&pass));
        libc::sendmsg(sock, &msg, flags)
    }
}
