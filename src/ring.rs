//! The reply ring: a worker's replies to the pool, through shared memory.
//!
//! Writing each reply of a microsecond job to the socket costs the worker a system
//! call and the kernel a buffer per reply, and costs the pool a wake-up per reply:
//! that, not the jobs, bounded a pool of tiny tasks. Holding replies back to write
//! them in batches would lose the ones held if the next job crashed the worker, and
//! would time the wrong job if it hung. The ring keeps both promises and drops the
//! costs: the worker copies each reply into a ring of shared memory (a `memfd` that
//! the pool creates and passes with the setup) the moment its job ends, so a reply is
//! the pool's even if the worker dies the next instant, and it writes to the socket
//! only to wake a pool that has said it is going to sleep. A pool that is busy reading
//! replies is never woken; a sleeping one is woken once, and finds every reply written
//! meanwhile.
//!
//! Records are the frames of the socket, a 4-byte big-endian length then the frame,
//! written at a running byte count modulo the capacity (a record may wrap). A frame
//! larger than [`INLINE_MAX`] goes over the socket, and a record of length
//! [`ON_SOCKET`] marks its place, so replies keep their order. The pool reads the
//! indices and lengths as untrusted: a worker's task can scribble on its own memory,
//! and a ring that does not make sense fails that worker, never the pool.
//!
//! Waiting, both sides: the pool asks for a wake-up by setting `pool_waiting` and then
//! looking at `write` once more; the worker publishes `write` and then takes
//! `pool_waiting` (both sequentially consistent, so one of them sees the other). A
//! caller on the direct path that sleeps on its own thread asks, with the same
//! handshake, to be woken on a futex in the shared page instead (see
//! [`PoolRing::sleep_for`]): then the reply wakes that thread alone, not the runtime's
//! reactor. A worker that finds the ring full sleeps on a futex in the shared page,
//! which the pool wakes when it frees space, with the same two-sided handshake.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::RwLock;
use std::time::Duration;

use bytes::BytesMut;
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{madvise, mmap, munmap, MapFlags, MmapAdvise, ProtFlags};

use crate::per_process::PerProcess;

/// Bytes of records the ring holds.
pub(crate) const CAPACITY: usize = 128 << 10;

/// The largest record (length prefix included) written into the ring; larger replies
/// go over the socket.
pub(crate) const INLINE_MAX: usize = 16 << 10;

/// The length that marks a reply sent over the socket instead.
pub(crate) const ON_SOCKET: u32 = u32::MAX;

/// The shared page in front of the records.
const HEADER_LEN: usize = 4096;

const MAP_LEN: usize = HEADER_LEN + CAPACITY;

/// The indices and flags, each on its own cache line.
#[repr(C, align(64))]
struct Header {
    /// Bytes of records written, ever (the worker's).
    write: AtomicU64,
    _pad0: [u8; 56],
    /// Bytes of records consumed, ever (the pool's).
    read: AtomicU64,
    _pad1: [u8; 56],
    /// The pool is going to sleep: wake it through the socket ([`WAKE_SOCKET`]), or,
    /// for a caller that sleeps on the ring itself, on the futex `pool_wake`
    /// ([`WAKE_FUTEX`]).
    pool_waiting: AtomicU32,
    /// The futex word of a caller sleeping on the ring (see [`PoolRing::sleep_for`]):
    /// bumped by the worker each time it wakes one.
    pool_wake: AtomicU32,
    _pad2: [u8; 56],
    /// The worker sleeps on `space` for the pool to free room.
    worker_waiting: AtomicU32,
    /// The futex word: bumped by the pool each time it wakes the worker.
    space: AtomicU32,
    _pad3: [u8; 56],
    /// The gate of the worker's jobs (see [`WorkerRing::begin_job`]): the number of the
    /// last job it started, counting from 1, with [`REVOKED`] set while the pool has
    /// taken back the jobs after it.
    gate: AtomicU64,
    /// The number of the last job the pool took back (valid while [`REVOKED`] is set).
    revoked_through: AtomicU64,
}

/// `pool_waiting`: wake the pool through the socket.
const WAKE_SOCKET: u32 = 1;

/// `pool_waiting`: wake the pool on the futex `pool_wake`.
const WAKE_FUTEX: u32 = 2;

/// Set in the gate while jobs sent ahead to the worker are taken back.
const REVOKED: u64 = 1 << 63;

/// What a worker does with the job it is about to start (see
/// [`WorkerRing::begin_job`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// Run it.
    Run,
    /// Skip it without a reply: the pool took it back and sent it elsewhere.
    Skip,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_LEN);

/// One mapping of a ring's memfd.
struct Mapping {
    base: NonNull<u8>,
}

// SAFETY: the mapping is plain shared memory, valid until `Drop`; every access to it
// goes through atomics (the header) or through copies whose exclusivity the ring's
// protocol establishes with acquire/release on the indices.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`; `&Mapping` only offers the atomics and those copies.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: impl AsFd) -> io::Result<Mapping> {
        let len = NonZeroUsize::new(MAP_LEN).expect("non-zero");
        // SAFETY: a fresh shared mapping of a memfd that is at least MAP_LEN long (the
        // caller checked or set its size); no Rust object lives at the address chosen
        // by the kernel.
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }?;
        Ok(Mapping { base: base.cast() })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned, at least HEADER_LEN long and lives as
        // long as `self`; `Header` is atomics and padding, valid for any bytes
        // (the memfd starts zeroed).
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: HEADER_LEN is inside the mapping.
        unsafe { self.base.as_ptr().add(HEADER_LEN) }
    }

    /// Copies `out.len()` bytes of records from running position `at`.
    ///
    /// # Safety
    /// `out.len()` is at most [`CAPACITY`], and the protocol gives the caller those
    /// bytes: published by `write` and not yet released by `read`.
    unsafe fn copy_out(&self, at: u64, out: &mut [u8]) {
        let pos = (at % CAPACITY as u64) as usize;
        let first = out.len().min(CAPACITY - pos);
        // SAFETY: both ranges lie inside the data area (pos + first <= CAPACITY and
        // out.len() - first <= CAPACITY, as out.len() <= CAPACITY), and the caller owns
        // them for now.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(pos), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(
                self.data(),
                out.as_mut_ptr().add(first),
                out.len() - first,
            );
        }
    }

    /// Copies `bytes` to running position `at`.
    ///
    /// # Safety
    /// `bytes.len()` is at most [`CAPACITY`], and the protocol gives the caller that
    /// room: consumed by `read`, not yet published by `write`.
    unsafe fn copy_in(&self, at: u64, bytes: &[u8]) {
        let pos = (at % CAPACITY as u64) as usize;
        let first = bytes.len().min(CAPACITY - pos);
        // SAFETY: as in `copy_out`, with the roles of the ranges swapped.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data().add(pos), first);
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr().add(first),
                self.data(),
                bytes.len() - first,
            );
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, with its length; nothing borrows it any
        // more (borrows of the header or data do not outlive `&self`).
        let _ = unsafe { munmap(self.base.cast(), MAP_LEN) };
    }
}

/// The gate between new rings and forks: a ring holds it shared from its `mmap` to its
/// `madvise(MADV_DONTFORK)`, and [`fork_exclusive`] holds it while it forks, so no fork
/// copies a ring that is not yet marked. One per process (a forked child that builds
/// pools of its own gets a fresh gate, not the parent's copy, held by a thread the
/// child lacks).
fn fork_gate() -> &'static RwLock<()> {
    static GATE: PerProcess<RwLock<()>> = PerProcess::new();
    GATE.get_or_init(|| RwLock::new(()))
}

/// Runs `fork` (a closure that forks this process) while no ring is being mapped.
///
/// In the child, the gate is released when `fork` returns, by the thread that took it
/// (the child's one thread): an atomic store and at most a futex wake, both
/// async-signal-safe.
pub(crate) fn fork_exclusive<T>(fork: impl FnOnce() -> T) -> T {
    let _gate = fork_gate().write().unwrap_or_else(|e| e.into_inner());
    fork()
}

/// The pool's end of a ring.
///
/// Both indices are on cache lines the other side writes, so each reading of one,
/// and each writing, can cost a transfer of the line between CPUs: the pool keeps
/// the worker's `write` as last read, reading it again only once it has read up to
/// it, and gives room back (`read`) a quarter of the ring at a time, and whenever
/// it is about to sleep.
pub(crate) struct PoolRing {
    map: Mapping,
    /// Bytes of records the pool has consumed; `read` in the header lags behind.
    cursor: u64,
    /// The worker's `write` as the pool last read it.
    seen_write: u64,
    /// What the pool last gave back (kept here, not read back from the shared page,
    /// which the worker could scribble on).
    released: u64,
    /// How many jobs have been sent to the worker, by its driver or by callers on the
    /// direct path (whoever holds the worker), counting from 1 as the gate does.
    sent: u64,
}

/// The pool gives room back to the worker once it has consumed this much.
const RELEASE_EVERY: u64 = CAPACITY as u64 / 4;

impl std::fmt::Debug for PoolRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.map.header();
        f.debug_struct("PoolRing")
            .field("write", &h.write.load(Relaxed))
            .field("read", &h.read.load(Relaxed))
            .field("cursor", &self.cursor)
            .finish()
    }
}

/// The size of the buffers that [`PoolRing::pop_into`] copies frames into.
const ARENA: usize = 32 << 10;

/// What the pool found next in a ring.
#[derive(Debug)]
pub(crate) enum Record {
    /// A reply frame (without its length prefix).
    Frame(BytesMut),
    /// The next reply comes over the socket.
    OnSocket,
}

impl PoolRing {
    /// A new ring, and the descriptor to send the worker.
    pub(crate) fn create() -> io::Result<(PoolRing, OwnedFd)> {
        let fd = memfd_create(c"procpool-replies", MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&fd, MAP_LEN as i64)?;
        // A worker started with `StartMethod::Fork` is a fork of this process: it must
        // not inherit (and be able to scribble on) the rings of its siblings. The
        // mapping is marked `MADV_DONTFORK` before any fork of ours can copy it: forks
        // wait at the gate while a ring is between `mmap` and `madvise`.
        let map = {
            let _gate = fork_gate().read().unwrap_or_else(|e| e.into_inner());
            let map = Mapping::new(&fd)?;
            #[cfg(test)]
            tests::in_the_window(map.base);
            // SAFETY: advice on the mapping just made, which changes no contents.
            unsafe { madvise(map.base.cast(), MAP_LEN, MmapAdvise::MADV_DONTFORK) }?;
            map
        };
        let ring = PoolRing {
            map,
            cursor: 0,
            seen_write: 0,
            released: 0,
            sent: 0,
        };
        Ok((ring, fd))
    }

    /// The next record, if the worker has written one. An error means the ring no
    /// longer makes sense (the worker overwrote it): give up on the worker.
    pub(crate) fn pop(&mut self) -> Result<Option<Record>, String> {
        self.pop_into(&mut BytesMut::new())
    }

    /// [`pop`](Self::pop), with the frame copied into the room left in `arena` (which
    /// is renewed when it has too little): frames taken one after another share an
    /// allocation rather than cost one each.
    pub(crate) fn pop_into(&mut self, arena: &mut BytesMut) -> Result<Option<Record>, String> {
        arena.clear();
        let Some((read, avail)) = self.waiting()? else {
            return Ok(None);
        };
        let mut prefix = [0u8; 4];
        // SAFETY: [read, read + 4) is published (avail >= 4) and not yet released.
        unsafe { self.map.copy_out(read, &mut prefix) };
        let len = u32::from_be_bytes(prefix);
        if len == ON_SOCKET {
            self.consume(read + 4);
            return Ok(Some(Record::OnSocket));
        }
        let total = 4 + len as u64;
        if total > INLINE_MAX as u64 || total > avail {
            return Err(format!(
                "reply ring corrupt: a record of {len} bytes with {avail} waiting"
            ));
        }
        let len = len as usize;
        // (Empty: every frame is split off whole.)
        if arena.capacity() < len {
            *arena = BytesMut::with_capacity(ARENA.max(len));
        }
        // SAFETY: the room is at least `len` bytes (made so just above), initialised by
        // the copy just below before anything reads them.
        unsafe { arena.set_len(len) };
        // SAFETY: [read + 4, read + total) is published (total <= avail) and not yet
        // released.
        unsafe { self.map.copy_out(read + 4, arena) };
        self.consume(read + total);
        Ok(Some(Record::Frame(arena.split())))
    }

    /// Where the next record starts and how many bytes are published from there, if
    /// any are; an error if the worker's index makes no sense.
    fn waiting(&mut self) -> Result<Option<(u64, u64)>, String> {
        let read = self.cursor;
        let mut write = self.seen_write;
        if write == read {
            // Acquire: the records up to `write` are visible from here on.
            write = self.map.header().write.load(Acquire);
            self.seen_write = write;
            if write == read {
                return Ok(None);
            }
        }
        let avail = write.wrapping_sub(read);
        if avail < 4 || avail > CAPACITY as u64 {
            return Err(format!(
                "reply ring corrupt: {avail} bytes said to be waiting"
            ));
        }
        Ok(Some((read, avail)))
    }

    /// The next record if it is a reply frame; a mark for the socket, like a ring
    /// that makes no sense, is left in place for [`pop`](Self::pop).
    pub(crate) fn pop_frame(&mut self) -> Result<Option<BytesMut>, String> {
        let Ok(Some((read, _))) = self.waiting() else {
            return Ok(None);
        };
        let mut prefix = [0u8; 4];
        // SAFETY: [read, read + 4) is published (avail >= 4) and not yet released.
        unsafe { self.map.copy_out(read, &mut prefix) };
        if u32::from_be_bytes(prefix) == ON_SOCKET {
            return Ok(None);
        }
        match self.pop()? {
            Some(Record::Frame(frame)) => Ok(Some(frame)),
            _ => Ok(None),
        }
    }

    /// Marks the records up to `to` consumed, giving their room back to the worker
    /// once a quarter of the ring is to be given.
    fn consume(&mut self, to: u64) {
        self.cursor = to;
        if to.wrapping_sub(self.released) >= RELEASE_EVERY {
            self.release();
        }
    }

    /// Gives the worker back the room of every record consumed, waking it if it
    /// waits for room.
    fn release(&mut self) {
        let cursor = self.cursor;
        self.released = cursor;
        let h = self.map.header();
        h.read.store(cursor, SeqCst);
        if h.worker_waiting.load(SeqCst) != 0 && h.worker_waiting.swap(0, SeqCst) != 0 {
            h.space.fetch_add(1, SeqCst);
            futex_wake(&h.space);
        }
    }

    /// Counts `n` more jobs sent to the worker (see [`revoke`](Self::revoke)); a
    /// negative `n` takes back jobs never written.
    pub(crate) fn note_sent(&mut self, n: i64) {
        self.sent = self.sent.wrapping_add_signed(n);
    }

    /// How many jobs have been sent to the worker.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Takes back from the worker the jobs numbered `head + 1 ..= through`, sent ahead
    /// of need while job `head` runs: if the worker is still running `head` (it has
    /// started nothing after it), it will skip them without replies, and `true` is
    /// returned: they are the pool's to send elsewhere. `false`: the worker has moved
    /// on (the head has finished, its reply is coming), and nothing was taken back.
    ///
    /// The worker's side is [`WorkerRing::begin_job`]; the two meet in one
    /// compare-and-swap on the gate, so exactly one of them decides each job's fate.
    pub(crate) fn revoke(&mut self, head: u64, through: u64) -> bool {
        let h = self.map.header();
        // Not while an earlier revocation is being skipped through (the gate holds
        // REVOKED, or a job before `head`): the worker reads `revoked_through` for it.
        // (Only the pool sets REVOKED, so a gate seen at `head` stays free of it.)
        if h.gate.load(SeqCst) != head {
            return false;
        }
        h.revoked_through.store(through, SeqCst);
        h.gate
            .compare_exchange(head, head | REVOKED, SeqCst, SeqCst)
            .is_ok()
    }

    /// Asks the worker to wake the pool through the socket when it next writes a
    /// record. Returns whether a record arrived meanwhile: then no wake-up will come
    /// for it (read it now), and the request is withdrawn unless the worker has taken
    /// it already, so that the next record does not wake a pool that is not asleep
    /// (the pool asks again before it sleeps). A request left standing made every
    /// reply of a caller that found its reply here send the pool a wake-up for
    /// nothing: a write, a wake-up of the runtime and a read per task.
    pub(crate) fn want_wakeup(&mut self) -> bool {
        self.release();
        let h = self.map.header();
        h.pool_waiting.store(WAKE_SOCKET, SeqCst);
        let arrived = h.write.load(SeqCst) != self.cursor;
        if arrived {
            // Failing, the worker took it: its wake-up comes, and finds nothing new.
            let _ = h
                .pool_waiting
                .compare_exchange(WAKE_SOCKET, 0, SeqCst, SeqCst);
        }
        arrived
    }

    /// Sleeps until the worker writes a record or `until` passes, whichever is first;
    /// whether a record is there. The worker wakes this thread itself, on a futex in
    /// the shared page, not through the socket: for a caller on a thread that runs
    /// nothing else meanwhile (see `crate::direct`), so that the reply wakes no thread
    /// but the one that waits for it. A worker can wake it early (it looks again) but
    /// not keep it past `until`.
    pub(crate) fn sleep_for(&mut self, until: std::time::Instant) -> bool {
        self.release();
        let h = self.map.header();
        let arrived = loop {
            // Read before the flag is set: a wake-up after it changes the word, and
            // the futex then does not sleep.
            let seen = h.pool_wake.load(SeqCst);
            h.pool_waiting.store(WAKE_FUTEX, SeqCst);
            if h.write.load(SeqCst) != self.cursor {
                break true;
            }
            let now = std::time::Instant::now();
            if now >= until {
                break false;
            }
            futex_wait(&h.pool_wake, seen, until - now);
        };
        // Nobody sleeps now; a worker that took the flag meanwhile only bumps the word.
        h.pool_waiting.store(0, SeqCst);
        arrived
    }
}

/// The worker's end of a ring.
pub(crate) struct WorkerRing {
    map: Mapping,
    /// The pool's `read` as the worker last read it: it is read again only when the
    /// room it leaves is too little (it is on a line the pool writes).
    seen_read: std::cell::Cell<u64>,
    /// The number of the last job frame that passed [`begin_job`](Self::begin_job).
    seq: std::cell::Cell<u64>,
}

impl WorkerRing {
    /// Maps the ring the pool sent.
    pub(crate) fn attach(fd: OwnedFd) -> io::Result<WorkerRing> {
        let size = nix::sys::stat::fstat(&fd)?.st_size;
        if size != MAP_LEN as i64 {
            return Err(io::Error::other(format!(
                "the reply ring is {size} bytes, not {MAP_LEN}"
            )));
        }
        Ok(WorkerRing {
            map: Mapping::new(&fd)?,
            seen_read: std::cell::Cell::new(0),
            seq: std::cell::Cell::new(0),
        })
    }

    /// Writes one record (a frame with its length prefix, at most [`INLINE_MAX`]
    /// bytes), waiting for room if the ring is full; `hung_up` is asked while it waits,
    /// and ends the wait with an error if the pool has gone. Returns whether the pool
    /// asked to be woken through the socket (one that sleeps on the ring's futex is
    /// woken here).
    pub(crate) fn push(&self, record: &[u8], hung_up: impl Fn() -> bool) -> io::Result<bool> {
        debug_assert!(record.len() <= INLINE_MAX);
        let h = self.map.header();
        let write = h.write.load(Relaxed);
        let fits = |read: u64| {
            let used = write.wrapping_sub(read);
            used <= CAPACITY as u64 && CAPACITY as u64 - used >= record.len() as u64
        };
        // The room the pool gave back as last seen, else as it is now.
        let mut read = self.seen_read.get();
        if !fits(read) {
            read = h.read.load(Acquire);
        }
        while !fits(read) {
            let seen = h.space.load(SeqCst);
            h.worker_waiting.store(1, SeqCst);
            read = h.read.load(SeqCst);
            if fits(read) {
                h.worker_waiting.store(0, Relaxed);
                break;
            }
            futex_wait(&h.space, seen, Duration::from_millis(20));
            if hung_up() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            read = h.read.load(Acquire);
        }
        self.seen_read.set(read);
        // SAFETY: [write, write + len) is free: the pool has released it (`fits`), and
        // only this worker publishes.
        unsafe { self.map.copy_in(write, record) };
        h.write.store(write + record.len() as u64, SeqCst);
        if h.pool_waiting.load(SeqCst) == 0 {
            return Ok(false);
        }
        match h.pool_waiting.swap(0, SeqCst) {
            0 => Ok(false),
            WAKE_FUTEX => {
                h.pool_wake.fetch_add(1, SeqCst);
                futex_wake(&h.pool_wake);
                Ok(false)
            }
            // The pool's own value, or a scribble: the socket wakes any pool.
            _ => Ok(true),
        }
    }
}

impl WorkerRing {
    /// Passes the gate of the next job: `Run` it, or `Skip` it because the pool took
    /// it back (see [`PoolRing::revoke`]). Called once per job frame, in order.
    pub(crate) fn begin_job(&self) -> Begin {
        let h = self.map.header();
        let job = self.seq.get().wrapping_add(1);
        self.seq.set(job);
        let last = job.wrapping_sub(1);
        match h.gate.compare_exchange(last, job, SeqCst, SeqCst) {
            Ok(_) => Begin::Run,
            Err(gate) if gate == last | REVOKED => {
                let through = h.revoked_through.load(SeqCst);
                if job < through {
                    h.gate.store(job | REVOKED, SeqCst);
                    Begin::Skip
                } else if job == through {
                    h.gate.store(job, SeqCst);
                    Begin::Skip
                } else {
                    // Nothing after `last` was taken back after all.
                    h.gate.store(job, SeqCst);
                    Begin::Run
                }
            }
            // Only a pool that broke the protocol leaves anything else; the jobs run.
            Err(_) => {
                h.gate.store(job, SeqCst);
                Begin::Run
            }
        }
    }
}

/// Polls `poll` until it gives something or `until` passes: a short burst of tries,
/// then a yield of the CPU (to the worker, if it waits for one), and again. For the
/// few microseconds a reply of a tiny task takes to appear in a ring.
pub(crate) fn spin_until<T>(
    until: std::time::Instant,
    mut poll: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        for _ in 0..64 {
            if let Some(found) = poll() {
                return Some(found);
            }
            std::hint::spin_loop();
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        std::thread::yield_now();
    }
}

/// Sleeps while `word` holds `expected`, for at most `timeout`.
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is an aligned u32 that outlives the call; the futex is shared
    // (not FUTEX_PRIVATE) because the word lies in memory shared with another process.
    // A spurious or early return only makes the caller look again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes a process sleeping in [`futex_wait`] on `word`.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE only reads the address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gate: the pool takes back jobs sent ahead only while the worker still runs
    /// the head; the worker skips exactly those, then runs on in step with the pool's
    /// count; a worker that has moved on keeps its jobs.
    #[test]
    fn the_gate_gives_each_job_one_fate() {
        let (mut pool, worker) = pair();
        // Jobs 1..=5 sent; the worker starts job 1.
        pool.note_sent(5);
        assert_eq!(worker.begin_job(), Begin::Run);
        // The pool takes back 2..=4 while 1 runs.
        assert!(pool.revoke(1, 4));
        assert_eq!(worker.begin_job(), Begin::Skip); // 2
        assert_eq!(worker.begin_job(), Begin::Skip); // 3
        assert_eq!(worker.begin_job(), Begin::Skip); // 4
        assert_eq!(worker.begin_job(), Begin::Run); // 5
                                                    // The worker has moved on from 5 to 6: taking back after 5 fails.
        pool.note_sent(2);
        assert_eq!(worker.begin_job(), Begin::Run); // 6
        assert!(!pool.revoke(5, 7));
        assert_eq!(worker.begin_job(), Begin::Run); // 7: it was not taken back
                                                    // Unwritten jobs taken back off the count do not disturb the numbering.
        pool.note_sent(3); // 8, 9, 10
        pool.note_sent(-2); // 9 and 10 were never written
        assert_eq!(pool.sent(), 8);
        assert_eq!(worker.begin_job(), Begin::Run); // 8
                                                    // A revocation of nothing after the head leaves the next job to run.
        assert!(pool.revoke(8, 8));
        pool.note_sent(1);
        assert_eq!(worker.begin_job(), Begin::Run); // 9
    }

    /// A revocation that fails because the worker is still skipping the jobs of an
    /// earlier one leaves that one's bound alone: the worker skips those jobs, and
    /// runs the later ones, which the pool did not take back.
    #[test]
    fn a_failed_revocation_leaves_an_earlier_one_alone() {
        let (mut pool, worker) = pair();
        pool.note_sent(3);
        assert_eq!(worker.begin_job(), Begin::Run); // 1
        assert!(pool.revoke(1, 3)); // 2 and 3 go elsewhere
        assert_eq!(worker.begin_job(), Begin::Skip); // 2
                                                     // Job 1's reply is in: the pool's head is now job 4, sent with 5, and it takes
                                                     // back 5, before the worker has skipped 3 and begun 4.
        pool.note_sent(2);
        assert!(!pool.revoke(4, 5));
        assert_eq!(worker.begin_job(), Begin::Skip); // 3
        assert_eq!(worker.begin_job(), Begin::Run); // 4
        assert_eq!(worker.begin_job(), Begin::Run); // 5: not taken back
    }

    /// Both sides race on the gate from two threads, many times: each job behind the
    /// head is either run (the revocation failed) or skipped (it succeeded), never
    /// both and never neither.
    #[test]
    fn the_gate_decides_a_race_one_way() {
        for _ in 0..2_000 {
            let (mut pool, worker) = pair();
            pool.note_sent(3);
            assert_eq!(worker.begin_job(), Begin::Run); // the head, 1
            let worker = std::thread::spawn(move || (worker.begin_job(), worker.begin_job()));
            let revoked = pool.revoke(1, 3);
            let fates = worker.join().unwrap();
            if revoked {
                assert_eq!(fates, (Begin::Skip, Begin::Skip));
            } else {
                assert_eq!(fates.0, Begin::Run);
            }
        }
    }

    use std::cell::RefCell;

    type WindowHook = Box<dyn FnOnce(NonNull<u8>)>;

    thread_local! {
        /// Run (once) by a ring created on this thread between its `mmap` and its
        /// `madvise`: a test widens that window with it.
        static WINDOW: RefCell<Option<WindowHook>> = const { RefCell::new(None) };
    }

    pub(super) fn in_the_window(base: NonNull<u8>) {
        if let Some(hook) = WINDOW.with(|w| w.borrow_mut().take()) {
            hook(base);
        }
    }

    /// A fork made (as `StartMethod::Fork` makes its workers) while another thread is
    /// between a new ring's `mmap` and its `madvise(MADV_DONTFORK)` must not give the
    /// child that ring: the window is widened to half a second, the fork is made inside
    /// it, and the child reports whether the ring's address is mapped in it.
    #[test]
    fn a_fork_never_copies_a_ring_being_made() {
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let maker = std::thread::spawn(move || {
            WINDOW.with(|w| {
                *w.borrow_mut() = Some(Box::new(move |base: NonNull<u8>| {
                    let _ = tx.send(base.as_ptr() as usize);
                    std::thread::sleep(Duration::from_millis(500));
                }))
            });
            PoolRing::create().map(|(ring, _fd)| ring)
        });
        let base = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the ring reached the window");
        let child = fork_exclusive(|| {
            // SAFETY: the child makes only async-signal-safe calls (msync, _exit).
            match unsafe { libc::fork() } {
                0 => {
                    // SAFETY: msync on an address range only reads the mappings: it
                    // fails with ENOMEM where nothing is mapped.
                    let mapped =
                        unsafe { libc::msync(base as *mut libc::c_void, 4096, libc::MS_ASYNC) }
                            == 0;
                    // SAFETY: ends the child at once.
                    unsafe { libc::_exit(i32::from(mapped)) }
                }
                pid => pid,
            }
        });
        assert!(child > 0, "fork failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut status = 0;
        loop {
            // SAFETY: waitpid on our own child with a valid status pointer.
            let rc = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
            if rc == child {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not exit"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the forked child has a mapping of the ring that was being made"
        );
        maker.join().expect("maker thread").expect("ring created");
    }

    fn pair() -> (PoolRing, WorkerRing) {
        let (pool, fd) = PoolRing::create().unwrap();
        (pool, WorkerRing::attach(fd).unwrap())
    }

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut r = (payload.len() as u32).to_be_bytes().to_vec();
        r.extend_from_slice(payload);
        r
    }

    /// The pool gives room back a quarter of the ring at a time, and never asks for a
    /// wake-up here: a worker that writes many times the ring's size, faster than the
    /// pool reads, still gets all of it through, in order.
    #[test]
    fn room_comes_back_without_a_wakeup_request() {
        let (mut pool, worker) = pair();
        let count = 20 * CAPACITY / 100;
        let bound = std::time::Instant::now() + Duration::from_secs(20);
        let writer = std::thread::spawn(move || {
            for i in 0..count {
                let payload = [(i % 251) as u8; 96];
                worker
                    .push(&record(&payload), || std::time::Instant::now() > bound)
                    .expect("room within the bound");
            }
        });
        let mut got = 0;
        let mut arena = BytesMut::new();
        while got < count {
            assert!(
                std::time::Instant::now() < bound,
                "{got} of {count} records"
            );
            match pool.pop_into(&mut arena).unwrap() {
                Some(Record::Frame(frame)) => {
                    assert_eq!(&frame[..], &[(got % 251) as u8; 96][..], "record {got}");
                    got += 1;
                }
                Some(Record::OnSocket) => panic!("no mark was written"),
                // Slower than the writer now and then.
                None => std::thread::yield_now(),
            }
            if got % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        writer.join().unwrap();
    }

    #[test]
    fn records_come_out_in_order_across_the_wrap() {
        let (mut pool, worker) = pair();
        let mut expected = Vec::new();
        // Enough traffic to wrap many times, with a record straddling the end.
        for i in 0..20_000u32 {
            let payload = vec![(i % 251) as u8; (i as usize * 7) % 3000];
            assert!(!worker.push(&record(&payload), || false).unwrap());
            expected.push(payload);
            if i % 3 == 0 {
                while let Some(Record::Frame(f)) = pool.pop().unwrap() {
                    assert_eq!(&f[..], &expected.remove(0)[..]);
                }
            }
        }
        while let Some(Record::Frame(f)) = pool.pop().unwrap() {
            assert_eq!(&f[..], &expected.remove(0)[..]);
        }
        assert!(expected.is_empty());
    }

    #[test]
    fn frames_popped_into_one_arena_stay_intact_while_it_is_renewed() {
        let (mut pool, worker) = pair();
        let mut arena = BytesMut::new();
        let mut kept = Vec::new();
        // Frames of all sizes up to the inline limit, many arenas' worth, all kept.
        for i in 0..2_000usize {
            let payload = vec![(i % 251) as u8; (i * 37) % (INLINE_MAX - 4) + 1];
            assert!(!worker.push(&record(&payload), || false).unwrap());
            let Some(Record::Frame(f)) = pool.pop_into(&mut arena).unwrap() else {
                panic!("frame {i} missing");
            };
            assert!(arena.is_empty());
            kept.push((payload, f));
        }
        for (i, (payload, frame)) in kept.iter().enumerate() {
            assert_eq!(&frame[..], &payload[..], "frame {i}");
        }
        // Small frames share an arena's allocation.
        let firsts: Vec<_> = (0..3u8)
            .map(|b| {
                assert!(!worker.push(&record(&[b; 10]), || false).unwrap());
                match pool.pop_into(&mut arena).unwrap() {
                    Some(Record::Frame(f)) => f,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(firsts[1].as_ptr(), firsts[0].as_ptr().wrapping_add(10));
        assert_eq!(firsts[2].as_ptr(), firsts[1].as_ptr().wrapping_add(10));
    }

    #[test]
    fn the_mark_and_the_wakeup_request() {
        let (mut pool, worker) = pair();
        assert!(!pool.want_wakeup());
        assert!(worker.push(&ON_SOCKET.to_be_bytes(), || false).unwrap());
        // Asked once, woken once.
        assert!(!worker.push(&record(b"x"), || false).unwrap());
        assert!(matches!(pool.pop().unwrap(), Some(Record::OnSocket)));
        assert!(matches!(pool.pop().unwrap(), Some(Record::Frame(f)) if &f[..] == b"x"));
        assert!(pool.pop().unwrap().is_none());
    }

    /// A request for a wake-up that finds the record already there is withdrawn: the
    /// next record does not wake a pool that did not go to sleep (it asks again
    /// before it does). Left standing, it cost a wake-up of the pool per task when a
    /// caller found its reply on the spot.
    #[test]
    fn a_request_answered_at_once_is_withdrawn() {
        let (mut pool, worker) = pair();
        assert!(!worker.push(&record(b"a"), || false).unwrap());
        assert!(pool.want_wakeup(), "the record is there");
        assert!(matches!(pool.pop().unwrap(), Some(Record::Frame(f)) if &f[..] == b"a"));
        assert!(
            !worker.push(&record(b"b"), || false).unwrap(),
            "no wake-up is owed for a request withdrawn"
        );
        assert!(matches!(pool.pop().unwrap(), Some(Record::Frame(f)) if &f[..] == b"b"));
        // Asked when nothing is there, the request stands, and is answered once.
        assert!(!pool.want_wakeup());
        assert!(worker.push(&record(b"c"), || false).unwrap());
        assert!(!worker.push(&record(b"d"), || false).unwrap());
    }

    /// A pool that sleeps on the ring is woken on the futex, not through the socket
    /// (the worker's push says no socket wake-up is due), and finds the record; one
    /// that finds nothing sleeps until its deadline, and asks for nothing after.
    #[test]
    fn a_pool_sleeping_on_the_ring_is_woken_on_the_futex() {
        let (mut pool, worker) = pair();
        // Nothing comes: it returns false, not before its deadline.
        let until = std::time::Instant::now() + Duration::from_millis(20);
        assert!(!pool.sleep_for(until));
        assert!(std::time::Instant::now() >= until);
        assert!(
            !worker.push(&record(b"a"), || false).unwrap(),
            "no wake-up asked"
        );
        // Already there: at once.
        let far = std::time::Instant::now() + Duration::from_secs(30);
        assert!(pool.sleep_for(far));
        assert!(matches!(pool.pop().unwrap(), Some(Record::Frame(f)) if &f[..] == b"a"));
        // Written while it sleeps: the worker wakes it, and owes the socket nothing.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let socket = worker.push(&record(b"b"), || false).unwrap();
            (worker, socket)
        });
        assert!(pool.sleep_for(far));
        assert!(
            std::time::Instant::now() < far,
            "woken by the record, not by the deadline"
        );
        let (worker, socket) = writer.join().unwrap();
        assert!(!socket, "a futex sleeper needs no wake-up on the socket");
        assert!(matches!(pool.pop().unwrap(), Some(Record::Frame(f)) if &f[..] == b"b"));
        // Then the socket's way again.
        assert!(!pool.want_wakeup());
        assert!(worker.push(&record(b"c"), || false).unwrap());
    }

    #[test]
    fn a_full_ring_waits_for_the_pool() {
        let (mut pool, worker) = pair();
        let big = record(&vec![1u8; INLINE_MAX - 4]);
        let n = CAPACITY / big.len();
        for _ in 0..n {
            worker.push(&big, || false).unwrap();
        }
        // Full: the next push waits until the pool reads. (Both waits are bounded: a
        // broken ring fails the test rather than hanging it.)
        let bound = std::time::Instant::now() + Duration::from_secs(10);
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut got = 0;
            while got < n + 1 {
                assert!(
                    std::time::Instant::now() < bound,
                    "{got} of {} records",
                    n + 1
                );
                if let Some(Record::Frame(_)) = pool.pop().unwrap() {
                    got += 1;
                }
            }
        });
        worker
            .push(&big, || std::time::Instant::now() > bound)
            .expect("room within the bound");
        reader.join().unwrap();
        // And a pool that has gone ends the wait.
        let (_pool, worker) = pair();
        for _ in 0..n {
            worker.push(&big, || false).unwrap();
        }
        assert!(worker.push(&big, || true).is_err());
    }

    #[test]
    fn a_scribbled_ring_is_an_error() {
        let (mut pool, worker) = pair();
        worker.push(&record(b"ok"), || false).unwrap();
        worker.map.header().write.store(u64::MAX / 2, SeqCst);
        assert!(pool.pop().is_err());
        let (mut pool, worker) = pair();
        worker.push(&[0, 1, 0, 0], || false).unwrap();
        assert!(pool.pop().is_err());
    }
}
