//! Children hold only their own descriptors.
//!
//! A descriptor the parent opened without close-on-exec (a listening socket handed
//! over by systemd's socket activation, a file a C library opened) would otherwise be
//! open in every worker and in the fork server for their whole lives. Every child
//! procpool starts closes all descriptors above its channel ([`WORKER_FD`]) before it
//! runs anything: a spawned child (and the fork server) marks them close-on-exec in
//! its `pre_exec` hook, so that `exec` closes them (and the standard library's own
//! exec-error pipe still works); a forked worker closes them outright. The ring and
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
/// missing (the fallback runs). Read in the pool and in the fork server, never in a
/// forked child.
pub(crate) const ENV_NO_CLOSE_RANGE: &str = "__PROCPOOL_TEST_NO_CLOSE_RANGE";

static NO_CLOSE_RANGE: AtomicBool = AtomicBool::new(false);

/// Reads the test switch [`ENV_NO_CLOSE_RANGE`] (allocates: call it before forking).
pub(crate) fn read_test_switch() {
    if std::env::var_os(ENV_NO_CLOSE_RANGE).is_some() {
        NO_CLOSE_RANGE.store(true, Ordering::Relaxed);
    }
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
                    close_one(fd, cloexec);
                }
            }
            at += reclen;
        }
    };
    // SAFETY: `dir` is the descriptor opened above.
    unsafe { libc::close(dir) };
    result
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
