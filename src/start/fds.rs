//! Children hold only their own descriptors.
//!
//! A descriptor the parent opened without close-on-exec (a listening socket handed
//! over by systemd's socket activation, a file a C library opened) would otherwise be
//! open in every worker and in the fork server for their whole lives. Every child
//! procpool starts closes all descriptors above its channel ([`WORKER_FD`]) before it
//! runs anything: a spawned child (and the fork server) has them closed by
//! `posix_spawn`'s file actions before its exec (see
//! [`posix_spawn`](super::posix_spawn)); a forked worker closes them outright. The ring and
//! anything else a worker needs come afterwards, over its channel.
//!
//! `close_range` (Linux 5.9; `CLOSE_RANGE_CLOEXEC` 5.11) does it in one call; where it
//! is missing (`ENOSYS`, or `EINVAL` for the flag), the descriptors listed in
//! `/proc/self/fd` are closed one by one (read with `getdents64` into a buffer on the
//! stack), and failing that every number up to the descriptor limit. All of it is
//! async-signal-safe: it runs between `fork` and `exec` in a multi-threaded parent.
//!
//! [`WORKER_FD`]: crate::start::spawn::WORKER_FD

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Test switch: with it set in the environment, procpool acts as if `close_range` were
/// missing (the fallback runs), and a spawn as if the C library could not close a range
/// of descriptors. Read in the pool and in the fork server, never in a
/// forked child.
pub(crate) const ENV_NO_CLOSE_RANGE: &str = "__PROCPOOL_TEST_NO_CLOSE_RANGE";

static NO_CLOSE_RANGE: AtomicBool = AtomicBool::new(false);

/// Reads the test switch [`ENV_NO_CLOSE_RANGE`] (allocates: call it before forking).
pub(crate) fn read_test_switch() {
    if std::env::var_os(ENV_NO_CLOSE_RANGE).is_some() {
        NO_CLOSE_RANGE.store(true, Ordering::Relaxed);
    }
}

/// Whether the test switch [`ENV_NO_CLOSE_RANGE`] is on: a spawn then closes the
/// child's descriptors by listing them, as where the C library cannot close a range.
pub(crate) fn close_range_disabled() -> bool {
    NO_CLOSE_RANGE.load(Ordering::Relaxed)
}

/// The descriptors from `first` up open in this process now, as listed in
/// `/proc/self/fd` (allocates; the listing's own descriptor may be among them, closed
/// by the time this returns).
pub(crate) fn open_from(first: RawFd) -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| fd >= first)
        .collect()
}

/// Closes every descriptor from `first` up, or with `cloexec` marks it close-on-exec.
/// Async-signal-safe; allocates nothing.
///
/// # Errors
///
/// The error of `close_range` if it is neither missing nor refusing the flag, or of
/// the fallback.
pub(crate) fn close_from(first: RawFd, cloexec: bool) -> io::Result<()> {
    if !NO_CLOSE_RANGE.load(Ordering::Relaxed) {
        let flags = if cloexec {
            libc::CLOSE_RANGE_CLOEXEC
        } else {
            0
        };
        // SAFETY: close_range takes integers only; the descriptors it closes belong to
        // this freshly forked child, which has no other owner for them.
        let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, flags) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
            return Err(err);
        }
    }
    if close_listed(first, cloexec).is_ok() {
        return Ok(());
    }
    close_up_to_limit(first, cloexec)
}

/// Closes (or marks) one descriptor; a number that is not open is no error.
fn close_one(fd: RawFd, cloexec: bool) {
    // SAFETY: close and fcntl take integers only; see `close_from`.
    unsafe {
        if cloexec {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        } else {
            libc::close(fd);
        }
    }
}

/// The fallback: the descriptors listed in /proc/self/fd.
fn close_listed(first: RawFd, cloexec: bool) -> io::Result<()> {
    each_listed(first, |fd| close_one(fd, cloexec))
}

/// Calls `f` on every descriptor from `first` up listed in /proc/self/fd (but the
/// listing's own). Async-signal-safe: the listing is read into a buffer on the stack.
fn each_listed(first: RawFd, mut f: impl FnMut(RawFd)) -> io::Result<()> {
    // SAFETY: open with a static NUL-terminated path; returns a new descriptor or -1.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(io::Error::last_os_error());
    }
    // u64s: linux_dirent64 records are 8-byte aligned.
    let mut buf = [0u64; 512];
    let result = loop {
        // SAFETY: getdents64 writes at most the given length into `buf`, which we own.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            )
        };
        if n < 0 {
            break Err(io::Error::last_os_error());
        }
        if n == 0 {
            break Ok(());
        }
        // SAFETY: the kernel wrote `n` bytes of records into `buf`; we view them as
        // bytes, within the buffer.
        let bytes = unsafe {
            std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), (n as usize).min(4096))
        };
        let mut at = 0;
        // A record: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name (NUL-ended).
        while at + 19 <= bytes.len() {
            let reclen = u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
            if reclen == 0 || at + reclen > bytes.len() {
                break;
            }
            let mut fd: i64 = 0;
            let mut digits = 0;
            for &b in &bytes[at + 19..at + reclen] {
                if !b.is_ascii_digit() {
                    break;
                }
                fd = fd.saturating_mul(10).saturating_add(i64::from(b - b'0'));
                digits += 1;
            }
            if digits > 0 && fd >= i64::from(first) && fd <= i64::from(i32::MAX) {
                let fd = fd as RawFd;
                if fd != dir {
                    f(fd);
                }
            }
            at += reclen;
        }
    };
    // SAFETY: `dir` is the descriptor opened above.
    unsafe { libc::close(dir) };
    result
}

/// What identifies an open socket: its device and inode numbers.
pub(crate) type SocketId = (u64, u64);

/// The identity of `fd` if it is a socket. Async-signal-safe (`fstat`).
fn socket_id(fd: RawFd) -> Option<SocketId> {
    // SAFETY: a zeroed stat is a valid out-parameter; fstat writes into it only.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat takes an integer and the local above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

/// The descriptors (and their sockets) open in this process, from the listing.
fn sockets() -> Vec<(RawFd, SocketId)> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|fd| Some((fd, socket_id(fd)?)))
        .collect()
}

/// Tokio's signal pipe in this process, if it has one: the socket that every Tokio
/// runtime with I/O reads signals from, made once per process and kept in a static
/// (Tokio holds its number; each runtime registers a copy of it).
///
/// A forked worker closes every descriptor it inherits, and that number with them:
/// a runtime built there then registers whatever holds the number next (or nothing),
/// and fails (`EINVAL`). [`replace_signal_pipe`] gives the number a socket of the
/// child's own. Found by building a runtime: its copy is a new descriptor of a socket
/// that another descriptor holds already. Computed once per process (allocates: call
/// it before forking).
pub(crate) fn tokio_signal_pipe() -> Option<SocketId> {
    static PIPE: crate::per_process::PerProcess<Option<SocketId>> =
        crate::per_process::PerProcess::new();
    *PIPE.get_or_init(|| {
        let before: Vec<RawFd> = sockets().into_iter().map(|(fd, _)| fd).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .ok()?;
        let after = sockets();
        // (May be called on a runtime's thread, where dropping one is refused.)
        runtime.shutdown_background();
        after
            .iter()
            .filter(|(fd, _)| !before.contains(fd))
            .map(|&(_, id)| id)
            .find(|id| after.iter().filter(|(_, other)| other == id).count() >= 2)
    })
}

/// The most descriptors of Tokio's signal pipe a forked child gives a socket of its
/// own: the pipe, and a copy per runtime of the parent.
pub(crate) const SIGNAL_PIPE_COPIES: usize = 32;

/// In a forked child, before it closes what it inherited: the numbers (from `first`
/// up) of the descriptors of the socket `id` (Tokio's signal pipe), into `out`;
/// returns how many. Async-signal-safe.
pub(crate) fn find_socket(id: SocketId, first: RawFd, out: &mut [RawFd]) -> usize {
    let mut count = 0;
    let _ = each_listed(first, |fd| {
        if count < out.len() && socket_id(fd) == Some(id) {
            out[count] = fd;
            count += 1;
        }
    });
    count
}

/// In a forked child, after it closed what it inherited: puts the reading end of a
/// fresh socket pair on each of `numbers` (where Tokio's signal pipe was), and keeps
/// the writing end open (Tokio's driver takes end of file on the pipe for a bug), so
/// that a runtime built in the child registers a pipe of the child's own rather than
/// whatever else holds the number. Both ends are close-on-exec and non-blocking, as
/// Tokio's are. Async-signal-safe. Best effort: on a failure the numbers stay closed
/// (and a runtime cannot be built in the child, as before).
///
/// Signals do not reach such a runtime: the child has reset every handler, and
/// Tokio, which installs its handler once per signal and process, believes the
/// parent's still in place.
pub(crate) fn replace_signal_pipe(numbers: &[RawFd]) {
    let Some(&highest) = numbers.iter().max() else {
        return;
    };
    let mut pair = [-1; 2];
    // SAFETY: socketpair writes two descriptors into the local array; fcntl, dup3 and
    // close take integers. Every descriptor touched is this child's own.
    unsafe {
        if libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        ) != 0
        {
            return;
        }
        // Above every number to fill, so that placing one cannot close an end.
        let read = libc::fcntl(pair[0], libc::F_DUPFD_CLOEXEC, highest + 1);
        let write = libc::fcntl(pair[1], libc::F_DUPFD_CLOEXEC, highest + 1);
        libc::close(pair[0]);
        libc::close(pair[1]);
        if read < 0 || write < 0 {
            libc::close(read);
            libc::close(write);
            return;
        }
        for &fd in numbers {
            libc::dup3(read, fd, libc::O_CLOEXEC);
        }
        libc::close(read);
        // `write` stays open for the life of the child.
    }
}

/// The last resort: every number from `first` up to the descriptor limit.
fn close_up_to_limit(first: RawFd, cloexec: bool) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`, a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = limit.rlim_cur.min(i32::MAX as libc::rlim_t) as RawFd;
    for fd in first..end {
        close_one(fd, cloexec);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Runs `close` on `fd` in a forked child and reports whether, there, it closed
    /// (or with `cloexec` marked) `fd` and left stderr alone.
    fn in_child(cloexec: bool, close: fn(RawFd, bool) -> io::Result<()>) -> bool {
        let file = std::fs::File::open("/proc/self/stat").expect("open");
        let fd = file.as_raw_fd();
        // SAFETY: the child makes only async-signal-safe calls (the fallbacks are),
        // then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = close(fd, cloexec).is_ok();
            // SAFETY: fcntl takes integers only.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            let done = if cloexec {
                flags >= 0 && flags & libc::FD_CLOEXEC != 0
            } else {
                flags < 0
            };
            // SAFETY: fcntl takes integers only.
            let stderr_open = unsafe { libc::fcntl(2, libc::F_GETFD) } >= 0;
            // SAFETY: _exit ends the child at once.
            unsafe { libc::_exit(if ok && done && stderr_open { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child, into a local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    #[test]
    fn the_listing_fallback_closes_and_marks() {
        // Clear close-on-exec first, so that marking it is the fallback's doing.
        assert!(in_child(false, close_listed));
        assert!(in_child(true, |fd, cloexec| {
            // SAFETY: fcntl takes integers only.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
            close_listed(fd, cloexec)
        }));
    }

    #[test]
    fn the_last_resort_closes_and_marks() {
        assert!(in_child(false, close_up_to_limit));
        assert!(in_child(true, |fd, cloexec| {
            // SAFETY: fcntl takes integers only.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
            close_up_to_limit(fd, cloexec)
        }));
    }
}
