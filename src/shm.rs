//! Sealed shared memory for large payloads: a byte string of a job's argument or
//! result travels as a `memfd` passed over the channel (`SCM_RIGHTS`), not through it.
//!
//! The sender copies the bytes into a fresh memfd and seals it against any change
//! (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL`) before it sends it;
//! the receiver maps it read-only and hands out a [`Bytes`] that is a view of that
//! mapping, with no copy. The seals are what make the view sound and the pool safe
//! from its workers: the receiver checks them (and the file's size) before it maps,
//! so a worker can neither change the bytes under a caller's `Bytes` nor shrink the
//! file under the mapping (which would make the pool's reads fault with `SIGBUS`).
//! A descriptor that is not a sealed memfd of the right size is refused with an
//! error, never mapped.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use bytes::Bytes;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// The default of `PoolBuilder::shared_memory_min`: off. Measured (Criterion,
/// `payload` bench, side by side with the socket), a fresh memfd per payload wins only
/// where the worker does not read the argument and returns a view of it (an echo:
/// 1.2-1.3x at 16 MiB); a task that reads its argument runs slower (a digest
/// 0.71-0.97x, a copy 0.52-0.81x, 1-16 MiB): a new mapping's pages cost more to reach
/// than a warm buffer's copy.
pub(crate) const SHARED_MIN: usize = usize::MAX;

/// The seals a payload's memfd must carry before it is mapped.
fn required_seals() -> SealFlag {
    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE
}

/// A new sealed memfd holding `bytes` (one copy, by `write`, which allocates the
/// file's pages without zeroing them first).
pub(crate) fn seal(bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(
        c"procpool-payload",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let fd = OwnedFd::from(file);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(required_seals() | SealFlag::F_SEAL_SEAL),
    )?;
    Ok(fd)
}

/// Maps `len` bytes from `offset` of the sealed memfd `fd` read-only, as a `Bytes`
/// view (the mapping lives as long as the last view of it). Refused, with why: a
/// descriptor without the seals (not a memfd, or one that may still change), a
/// range past the file's end, or a length over `max`.
pub(crate) fn map(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    max: usize,
) -> Result<Bytes, String> {
    if len > max {
        return Err(format!(
            "a shared payload of {len} bytes, over the limit of {max} bytes"
        ));
    }
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS)
        .map_err(|e| format!("a shared payload that is not a sealed memfd ({e})"))?;
    let seals = SealFlag::from_bits_truncate(seals);
    if !seals.contains(required_seals()) {
        return Err("a shared payload whose memfd is not sealed against change".into());
    }
    let size = nix::sys::stat::fstat(fd)
        .map_err(|e| format!("a shared payload whose size does not read ({e})"))?
        .st_size;
    let size = u64::try_from(size).unwrap_or(0);
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|end| end > size) {
        return Err(format!(
            "a shared payload of {len} bytes at {offset} in a memfd of {size} bytes"
        ));
    }
    if len == 0 {
        return Ok(Bytes::new());
    }
    let page = page_size();
    // (`offset + len <= size`, a file size, so these do not overflow.)
    let start = offset - offset % page as u64;
    let skip = (offset - start) as usize;
    let map_len = std::num::NonZeroUsize::new(skip + len).expect("len > 0");
    let start = i64::try_from(start).map_err(|_| "a shared payload's offset is too large")?;
    // SAFETY: a new read-only shared mapping at an address the kernel chooses; it
    // aliases no Rust object. The file is sealed against shrinking and writing
    // (checked above, and seals are never removed), and the range lies within its
    // size, so every byte of the mapping stays readable and unchanging until
    // `Mapping::drop` unmaps it.
    let base = unsafe {
        mmap(
            None,
            map_len,
            ProtFlags::PROT_READ,
            MapFlags::MAP_SHARED,
            fd,
            start,
        )
    }
    .map_err(|e| format!("could not map a shared payload ({e})"))?;
    Ok(Bytes::from_owner(Mapping {
        base: base.cast(),
        map_len: map_len.get(),
        skip,
    }))
}

fn page_size() -> usize {
    // SAFETY: sysconf(3) only reads a system setting.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// A read-only mapping of a sealed memfd; see [`map`].
struct Mapping {
    base: NonNull<u8>,
    map_len: usize,
    /// Where the payload starts in the mapping.
    skip: usize,
}

// SAFETY: the mapping is read-only memory that no one can change (the memfd is
// sealed against writes), valid until `Drop`; sharing or sending `&[u8]` views of it
// across threads is as safe as for any immutable buffer.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `base..base + map_len` is mapped readable and unchanging until
        // `drop` (see `map`), and `skip < map_len`.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(self.skip), self.map_len - self.skip)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, unmapped once; `Bytes` drops its owner only
        // after the last view of it is gone.
        let _ = unsafe { munmap(self.base.cast(), self.map_len) };
    }
}

/// Whether `inner` lies within `outer` in memory, and where: a result that is a view
/// of the job's own shared argument goes back in the argument's memfd, uncopied.
pub(crate) fn offset_within(outer: &[u8], inner: &[u8]) -> Option<u64> {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    let at = i.checked_sub(o)?;
    (at.checked_add(inner.len())? <= outer.len()).then_some(at as u64)
}

/// A memfd that holds a job's byte-string argument, sealed, with the frame that
/// announces it to a local worker (see [`crate::protocol::ToWorker::SharedJob`]).
#[derive(Debug)]
pub(crate) struct SharedArg {
    pub(crate) fd: OwnedFd,
    /// The job's frame in its shared form (length prefix included), without the bytes.
    pub(crate) frame: Vec<u8>,
}

impl SharedArg {
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn a_sealed_payload_maps_back_as_it_was_at_any_offset() {
        let bytes = pattern(3 * 4096 + 123);
        let fd = seal(&bytes).unwrap();
        let whole = map(fd.as_fd(), 0, bytes.len(), usize::MAX).unwrap();
        assert_eq!(&whole[..], &bytes[..]);
        for (offset, len) in [(1, 10), (4095, 2), (4096, 4096), (5000, bytes.len() - 5000)] {
            let part = map(fd.as_fd(), offset as u64, len, usize::MAX).unwrap();
            assert_eq!(&part[..], &bytes[offset..offset + len], "{offset} {len}");
        }
        assert!(map(fd.as_fd(), 0, 0, 0).unwrap().is_empty());
        // The view outlives the descriptor.
        drop(fd);
        assert_eq!(&whole[..], &bytes[..]);
    }

    #[test]
    fn a_sealed_memfd_cannot_change_under_its_views() {
        let fd = seal(b"hello").unwrap();
        let view = map(fd.as_fd(), 0, 5, 5).unwrap();
        let mut file = std::fs::File::from(fd.try_clone().unwrap());
        assert!(file.write_all(b"HELLO").is_err(), "written after sealing");
        assert!(file.set_len(1).is_err(), "shrunk after sealing");
        assert_eq!(&view[..], b"hello");
    }

    #[test]
    fn what_is_not_a_sealed_memfd_of_the_right_size_is_refused() {
        // A memfd that may still shrink: the mapping could fault.
        let open =
            memfd_create(c"open", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        std::fs::File::from(open.try_clone().unwrap())
            .write_all(&[1; 8192])
            .unwrap();
        let why = map(open.as_fd(), 0, 8192, usize::MAX).unwrap_err();
        assert!(why.contains("not sealed"), "{why}");
        // Sealed against growing only.
        fcntl(&open, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW)).unwrap();
        assert!(map(open.as_fd(), 0, 8192, usize::MAX).is_err());
        // Not a memfd at all: a pipe, a regular file.
        let (r, _w) = nix::unistd::pipe().unwrap();
        let why = map(r.as_fd(), 0, 1, usize::MAX).unwrap_err();
        assert!(why.contains("not a sealed memfd"), "{why}");
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(map(file.as_fd(), 0, 1, usize::MAX).is_err());
        // A range past the end, an offset that overflows, a length over the limit.
        let fd = seal(&[7; 100]).unwrap();
        for (offset, len, max) in [
            (0, 101, usize::MAX),
            (99, 2, usize::MAX),
            (u64::MAX, 2, usize::MAX),
            (u64::MAX - 1, usize::MAX, usize::MAX),
            (0, 100, 99),
        ] {
            assert!(
                map(fd.as_fd(), offset, len, max).is_err(),
                "{offset} {len} {max}"
            );
        }
    }

    #[test]
    fn offsets_within_a_buffer() {
        let outer = vec![0u8; 100];
        assert_eq!(offset_within(&outer, &outer), Some(0));
        assert_eq!(offset_within(&outer, &outer[10..20]), Some(10));
        assert_eq!(offset_within(&outer, &outer[100..]), Some(100));
        assert_eq!(offset_within(&outer[..50], &outer[40..60]), None);
        assert_eq!(offset_within(&outer[50..], &outer[40..60]), None);
    }
}
