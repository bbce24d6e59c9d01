//! Tests of a hostile or broken worker: what its task does from inside the worker
//! (writes on the worker's channel, into its reply ring), and what the test checks
//! after it (the pool gave up on that worker only, it serves the next task, and
//! `terminate` leaves no process behind).

use procpool::{Pool, TaskError};

use super::{all_gone, is_gone, within, worker_pids, BOUND};

/// Errors after which the pool has given up on the worker.
pub fn gave_up(e: &TaskError) -> bool {
    matches!(
        e,
        TaskError::Protocol(_) | TaskError::WorkerDied { .. } | TaskError::TimedOut { .. }
    )
}

/// The pool serves: a task succeeds within three tries, the tries before failing only
/// as a task on a worker the pool gives up on does.
pub async fn serves(pool: &Pool, what: &str) {
    for _ in 0..3 {
        match within(what, pool.apply(super::double, 21)).await {
            Ok(n) => {
                assert_eq!(n, 42, "{what}");
                return;
            }
            Err(e) => assert!(gave_up(&e), "{what}: the next task failed with {e:?}"),
        }
    }
    panic!("{what}: the pool did not serve a task in three tries");
}

/// Terminates the pool; every process in `pids` (and every worker it has) is gone.
pub async fn terminate(pool: Pool, mut pids: Vec<u32>, what: &str) {
    pids.extend(worker_pids(&pool));
    within("terminate", pool.terminate()).await;
    assert!(
        all_gone(pids.clone(), BOUND).await,
        "{what}: processes left after terminate: {:?}",
        pids.iter().filter(|&&p| !is_gone(p)).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------
// Inside a worker: what a compromised task reaches.
// ---------------------------------------------------------------------------------

/// The worker's channel: descriptor 3 in every start method.
pub const CHANNEL: i32 = 3;

/// The reply ring's layout (see `src/ring.rs`): a page of indices (`write` at 0), then
/// the records; a record of length `ON_SOCKET` marks a reply sent on the channel.
pub const RING_HEADER: usize = 4096;
pub const RING_CAPACITY: u64 = 128 << 10;
pub const ON_SOCKET: u32 = u32::MAX;

/// Writes `bytes` on the worker's channel, until the pool closes it (it gave up on
/// this worker).
pub fn channel_write(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: a send on descriptor 3 from memory that `rest` borrows.
        let n = unsafe {
            libc::send(
                CHANNEL,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// The start of this worker's reply ring.
pub fn ring_base() -> *mut u8 {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read maps");
    let rings: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("memfd:procpool-replies"))
        .collect();
    assert_eq!(rings.len(), 1, "one reply ring in a worker: {rings:?}");
    let start = rings[0].split('-').next().expect("an address range");
    usize::from_str_radix(start, 16).expect("a hex address") as *mut u8
}

/// The ring's `write` index.
pub fn ring_write_index() -> &'static std::sync::atomic::AtomicU64 {
    // SAFETY: the ring's mapping starts with the aligned u64 `write` and lives as long
    // as the worker.
    unsafe { &*(ring_base() as *const std::sync::atomic::AtomicU64) }
}

/// Writes `bytes` into the ring's records at running position `at` (wrapping).
pub fn ring_put(at: u64, bytes: &[u8]) {
    let base = ring_base();
    for (i, b) in bytes.iter().enumerate() {
        let pos = (at.wrapping_add(i as u64) % RING_CAPACITY) as usize;
        // SAFETY: `pos` is inside the 128 KiB of records after the page of indices.
        unsafe { base.add(RING_HEADER + pos).write_volatile(*b) };
    }
}

/// Appends `n` as a varint, as postcard writes integers.
pub fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}
