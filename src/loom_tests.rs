//! Model checks, with `loom`, of the pool's hand-made synchronisation: every
//! interleaving of the threads of each test (up to a bound of preemptions) is run, with
//! the weak memory orderings that the code asks for. Only under
//! `--cfg procpool_loom`, where [`crate::sync`] gives loom's primitives:
//!
//! ```text
//! RUSTFLAGS="--cfg procpool_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --lib loom
//! ```
//!
//! A lost wake-up shows as a deadlock (loom fails a model whose threads all wait), a
//! read without the happens-before that the protocol promises as a data race on a
//! `loom::cell::UnsafeCell`, and a wrong outcome as a failed assertion.
//!
//! - [`lease`]: the direct path's [`Lease`](crate::lease::Lease).
//! - [`cancel`]: a job's [`AbortSignal`](crate::queue::cancel::AbortSignal).
//! - [`inbox`]: a `map`-family stream's [`Inbox`](crate::queue::route::Inbox).
//! - [`ring`]: the reply ring's indices, flags and gate, as a model of
//!   `crate::ring` (which lives in shared memory and sleeps on futexes: loom runs
//!   neither, so the model copies its steps, over a header in ordinary memory).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

/// Runs `f` under loom, with at most 3 preemptions per execution unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise (that bound finds the bugs below and keeps the
/// whole run to seconds).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// Polls `f` as a future until it is ready, sleeping (in loom's sense: a thread that
/// nobody wakes is a deadlock) whenever it is pending.
fn block_on<T>(f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
    loom::future::block_on(std::future::poll_fn(f))
}

/// Polls `f` once with a waker that does nothing.
fn poll_once<F: Future>(f: F) -> Poll<F::Output> {
    pin!(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// A value that whoever holds it uses: a write to memory nobody else may touch while
/// they hold it. Two hands at once, or a hand-over without happens-before, is a data
/// race that loom reports.
struct Port(Arc<UnsafeCell<u32>>);

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Port")
    }
}

impl Port {
    fn new() -> (Port, Arc<UnsafeCell<u32>>) {
        let uses = Arc::new(UnsafeCell::new(0));
        (Port(uses.clone()), uses)
    }

    fn work(&mut self) {
        // SAFETY: the one who holds the port is the only one to touch its counter (the
        // property under test: loom checks it).
        self.0.with_mut(|n| unsafe { *n += 1 });
    }
}

fn uses(cell: &UnsafeCell<u32>) -> u32 {
    // SAFETY: every thread that touched it has been joined.
    cell.with(|n| unsafe { *n })
}

/// The direct path's lease (`crate::direct`, `driver::Driver::offer`, the driver's
/// `poll_take_back` in its event loop).
mod lease {
    use super::*;

    type Lease = crate::lease::Lease<Port, &'static str>;

    /// A borrower that leaves a handover wakes the owner, who sleeps as the driver does
    /// with an offered worker: it offered the value with its waker, looked at
    /// `is_returned`, and waits for nothing else. (Lost, the handover's job would sit
    /// unfinished until something else woke the driver.)
    #[test]
    fn a_handover_always_wakes_the_owner() {
        model(|| {
            let lease = Arc::new(Lease::default());
            let (port, counter) = Port::new();
            let borrower = {
                let lease = lease.clone();
                thread::spawn(move || loop {
                    // A caller on the direct path: takes the worker once it is offered.
                    if let Some(mut port) = lease.try_lend() {
                        port.work();
                        lease.give_back(port, Some("finish this"));
                        return;
                    }
                    thread::yield_now();
                })
            };
            let mut port = Some(port);
            let (mut port, handover) = block_on(|cx| {
                if let Some(port) = port.take() {
                    lease.offer(port, cx.waker());
                }
                if !lease.is_returned() {
                    return Poll::Pending;
                }
                match lease.poll_take_back(cx) {
                    Poll::Ready(Some(back)) => Poll::Ready(back),
                    other => panic!("returned, then {other:?}"),
                }
            });
            assert_eq!(handover, Some("finish this"));
            port.work();
            borrower.join().unwrap();
            assert_eq!(uses(&counter), 2);
        });
    }

    /// The owner wants the value back while borrowers race for it: it gets it back
    /// (woken if it had to wait: a `give_back` while the owner waits always wakes it),
    /// with the handover if one was left; a handover is never lent to a borrower (who
    /// would give the value back without it, and the owner's job would be lost); and the
    /// value is in one hand at a time.
    #[test]
    fn the_owner_gets_the_value_back_with_any_handover() {
        model(|| {
            let lease = Arc::new(Lease::default());
            let (port, counter) = Port::new();
            let borrower = |handover: Option<&'static str>| {
                let lease = lease.clone();
                thread::spawn(move || {
                    let Some(mut port) = lease.try_lend() else {
                        return false;
                    };
                    port.work();
                    lease.give_back(port, handover);
                    true
                })
            };
            let mut port = Some(port);
            let with_handover = borrower(Some("finish this"));
            let plain = borrower(None);
            let (mut port, handover) = block_on(|cx| {
                if let Some(port) = port.take() {
                    lease.offer(port, cx.waker());
                }
                match lease.poll_take_back(cx) {
                    Poll::Ready(Some(back)) => Poll::Ready(back),
                    Poll::Ready(None) => panic!("taken back twice"),
                    Poll::Pending => Poll::Pending,
                }
            });
            port.work();
            let (left_one, lent_plain) = (with_handover.join().unwrap(), plain.join().unwrap());
            // The owner has the value: nobody can borrow it.
            assert!(lease.try_lend().is_none());
            assert_eq!(
                handover.is_some(),
                left_one,
                "a handover was lost or made up"
            );
            assert_eq!(
                uses(&counter),
                1 + u32::from(left_one) + u32::from(lent_plain)
            );
        });
    }
}

/// A job's cancellation: its handle's `abort()` (`TaskHandle::abort`), the driver
/// that takes the job (`Job::claim`) and watches the head job (`poll_aborted`), the
/// queue's `requeue`, and the handle's `poll_cancelled_in_queue`.
mod cancel {
    use super::*;
    use crate::queue::cancel::AbortSignal;

    /// A handle awaited while another task aborts its queued job resolves (it is
    /// woken: it registers, then looks again).
    #[test]
    fn an_abort_in_the_queue_wakes_the_handle() {
        model(|| {
            let signal = Arc::new(AbortSignal::default());
            let aborter = {
                let signal = signal.clone();
                thread::spawn(move || signal.abort())
            };
            block_on(|cx| signal.poll_cancelled_in_queue(cx));
            aborter.join().unwrap();
        });
    }

    /// A driver takes a job while its handle aborts it: exactly one of two things
    /// happens. Either the abort came first (the handle resolves as cancelled at once
    /// and the driver skips the job), or the driver took it first (the handle does
    /// not resolve at once, and the driver, watching the job, is woken to kill it).
    #[test]
    fn abort_and_take_give_one_fate() {
        model(|| {
            let signal = Arc::new(AbortSignal::default());
            let driver = {
                let signal = signal.clone();
                thread::spawn(move || {
                    let took = signal.take();
                    if took {
                        block_on(|cx| signal.poll_aborted(cx));
                    }
                    took
                })
            };
            let in_queue = signal.abort();
            let took = driver.join().unwrap();
            let at_once = poll_once(std::future::poll_fn(|cx| {
                signal.poll_cancelled_in_queue(cx)
            }))
            .is_ready();
            assert_ne!(took, at_once, "took: {took}, cancelled at once: {at_once}");
            // The handle releases the job's place under the queue bound exactly when
            // no driver has it (else the driver's reply does).
            assert_eq!(in_queue, at_once);
            assert!(signal.is_aborted());
        });
    }

    /// A handle dropped while a driver takes its job: exactly one of them has the job
    /// (and releases its place under the queue bound); a job the drop cancelled is
    /// never taken.
    #[test]
    fn a_dropped_handle_and_a_take_give_one_fate() {
        model(|| {
            let signal = Arc::new(AbortSignal::default());
            let driver = {
                let signal = signal.clone();
                thread::spawn(move || signal.take())
            };
            let cancelled = signal.cancel_queued();
            let took = driver.join().unwrap();
            assert_ne!(took, cancelled, "took: {took}, cancelled: {cancelled}");
        });
    }

    /// A driver that took a job puts it back (its worker never started it) and another
    /// takes it again, while the handle aborts it: the abort is never lost. The job
    /// ends aborted; a driver that holds it is woken to kill it, and one that pops it
    /// skips it.
    #[test]
    fn an_abort_survives_a_requeue() {
        model(|| {
            let signal = Arc::new(AbortSignal::default());
            assert!(signal.take());
            let drivers = {
                let signal = signal.clone();
                thread::spawn(move || {
                    // The first driver's worker died before the job: back to the queue.
                    signal.requeue();
                    // The next driver pops it.
                    let took = signal.take();
                    if took {
                        block_on(|cx| signal.poll_aborted(cx));
                    }
                })
            };
            signal.abort();
            drivers.join().unwrap();
            assert!(signal.is_aborted(), "the abort was lost");
        });
    }
}

/// A `map`-family stream's inbox: drivers `put` batches and `answer` single replies,
/// the stream takes them (`poll_take`) and `close`s the inbox when it goes.
mod inbox {
    use super::*;
    use crate::error::TaskError;
    use crate::queue::route::{Inbox, Reply};
    use std::collections::VecDeque;

    fn reply() -> Reply {
        Err(TaskError::Terminated)
    }

    /// Two drivers answer three chunks (a batch of two, then one on its own) while the
    /// stream waits for them: every reply reaches the stream, which is woken for them
    /// (it registers, then looks again).
    #[test]
    fn every_reply_reaches_the_waiting_stream() {
        model(|| {
            let inbox = Arc::new(Inbox::default());
            let batch = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.put([(0, reply()), (1, reply())]))
            };
            let single = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.answer(2, reply()))
            };
            let mut got = Vec::new();
            block_on(|cx| {
                let mut out = VecDeque::new();
                while inbox.poll_take(&mut out, cx).is_ready() {
                    got.extend(out.drain(..).map(|(seq, _)| seq));
                }
                match got.len() {
                    3 => Poll::Ready(()),
                    _ => Poll::Pending,
                }
            });
            got.sort_unstable();
            assert_eq!(got, [0, 1, 2]);
            batch.join().unwrap();
            single.join().unwrap();
        });
    }

    /// A driver answers while the stream takes what has come and closes its inbox:
    /// the reply is taken, or dropped, never kept in a closed inbox.
    #[test]
    fn nothing_stays_in_a_closed_inbox() {
        model(|| {
            let inbox = Arc::new(Inbox::default());
            let driver = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.answer(0, reply()))
            };
            let mut out = VecDeque::new();
            let waker = Waker::noop();
            let taken = inbox
                .poll_take(&mut out, &mut Context::from_waker(waker))
                .is_ready();
            inbox.close();
            driver.join().unwrap();
            assert_eq!(taken, out.len() == 1);
            let mut after = VecDeque::new();
            assert!(
                inbox
                    .poll_take(&mut after, &mut Context::from_waker(waker))
                    .is_pending(),
                "a reply was kept after the close"
            );
        });
    }
}

/// The reply ring's protocol, modelled step by step (see the module docs for why a
/// model). Each function below mirrors the `crate::ring` function it names, line for
/// line, with the same memory orderings; what differs is said where it does:
///
/// - records are one slot each (a `u64`, in a `loom::cell::UnsafeCell`, so that a slot
///   read without the happens-before of `write`, or written again before `read` gave
///   it back, is a data race loom reports), and the ring holds [`CAP`] of them;
/// - the worker's futex sleep on `space` is a mutex and condition variable: like the
///   kernel's, the check of the word and the sleep are one step for `futex_wake`. The
///   real wait also ends after 20 ms (and asks whether the pool hung up): the model
///   has no timeout, so a lost wake-up, which would cost the real worker 20 ms a time,
///   is a deadlock here;
/// - the socket that wakes the pool is a count of wake-up frames under a mutex, and
///   the pool's event loop is `transport::local::LocalLink::poll_reply`'s;
/// - loom treats `SeqCst` loads and stores as `AcqRel` (its README, "Unsupported
///   features"), too weak for the two "store my flag, then load yours" handshakes
///   (`pool_waiting` against `write`, `worker_waiting` against `read`), which rely on
///   the single total order of `SeqCst` accesses: there the model puts a
///   `fence(SeqCst)`, which loom does model, between the store and the load
///   ([`handshake`]). It forbids the same outcome (each side missing the other's
///   store) that the real code's `SeqCst` accesses forbid.
///
/// A change to the ring's indices, flags or gate must be made here as well.
mod ring {
    use super::*;
    use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::*};
    use loom::sync::{Condvar, Mutex};

    /// Records the ring holds (`ring::CAPACITY`, in records of one slot).
    const CAP: u64 = 2;
    /// `ring::RELEASE_EVERY` (a quarter of the real ring; here the whole, so that room
    /// is given back both when it is due and when the pool is about to sleep).
    const RELEASE_EVERY: u64 = 2;
    /// `ring::REVOKED`.
    const REVOKED: u64 = 1 << 63;

    /// Between the `SeqCst` store of one side's flag or index and its `SeqCst` load of
    /// the other's (see the module docs).
    fn handshake() {
        fence(SeqCst);
    }

    /// `ring::Header`.
    #[derive(Default)]
    struct Header {
        write: AtomicU64,
        read: AtomicU64,
        pool_waiting: AtomicU32,
        worker_waiting: AtomicU32,
        space: AtomicU32,
        gate: AtomicU64,
        revoked_through: AtomicU64,
    }

    /// The shared memory, the futex and the socket.
    struct Shared {
        h: Header,
        data: [UnsafeCell<u64>; CAP as usize],
        futex: (Mutex<()>, Condvar),
        /// Wake-up frames written to the socket and not yet read.
        socket: (Mutex<u32>, Condvar),
    }

    impl Shared {
        fn new() -> Arc<Shared> {
            Arc::new(Shared {
                h: Header::default(),
                data: std::array::from_fn(|_| UnsafeCell::new(0)),
                futex: (Mutex::new(()), Condvar::new()),
                socket: (Mutex::new(0), Condvar::new()),
            })
        }

        /// `ring::futex_wait` (without its timeout).
        fn futex_wait(&self, word: &AtomicU32, expected: u32) {
            let guard = self.futex.0.lock().unwrap();
            if word.load(SeqCst) == expected {
                drop(self.futex.1.wait(guard).unwrap());
            }
        }

        /// `ring::futex_wake`.
        fn futex_wake(&self) {
            let _guard = self.futex.0.lock().unwrap();
            self.futex.1.notify_one();
        }

        /// The worker writes an empty frame (`worker::conn::Conn::emit`).
        fn socket_wake(&self) {
            *self.socket.0.lock().unwrap() += 1;
            self.socket.1.notify_one();
        }

        /// The pool reads a frame from the socket if one is there.
        fn socket_try_read(&self) -> bool {
            let mut frames = self.socket.0.lock().unwrap();
            let there = *frames > 0;
            *frames = frames.saturating_sub(1);
            there
        }

        /// The pool's task sleeps until the socket is readable.
        fn socket_sleep(&self) {
            let mut frames = self.socket.0.lock().unwrap();
            while *frames == 0 {
                frames = self.socket.1.wait(frames).unwrap();
            }
        }
    }

    /// `ring::PoolRing`.
    struct PoolRing {
        s: Arc<Shared>,
        cursor: u64,
        seen_write: u64,
        released: u64,
    }

    impl PoolRing {
        fn new(s: Arc<Shared>) -> PoolRing {
            PoolRing {
                s,
                cursor: 0,
                seen_write: 0,
                released: 0,
            }
        }

        /// `PoolRing::pop_into`, for records of one slot.
        fn pop(&mut self) -> Option<u64> {
            let read = self.waiting()?;
            let value = self.s.data[(read % CAP) as usize].with(|v| {
                // SAFETY: the protocol gives the pool the slot: published by `write`,
                // not yet released by `read` (what loom checks).
                unsafe { *v }
            });
            self.consume(read + 1);
            Some(value)
        }

        /// `PoolRing::waiting`.
        fn waiting(&mut self) -> Option<u64> {
            let read = self.cursor;
            let mut write = self.seen_write;
            if write == read {
                write = self.s.h.write.load(Acquire);
                self.seen_write = write;
                if write == read {
                    return None;
                }
            }
            let avail = write.wrapping_sub(read);
            assert!((1..=CAP).contains(&avail), "{avail} records said to wait");
            Some(read)
        }

        /// `PoolRing::consume`.
        fn consume(&mut self, to: u64) {
            self.cursor = to;
            if to.wrapping_sub(self.released) >= RELEASE_EVERY {
                self.release();
            }
        }

        /// `PoolRing::release`.
        fn release(&mut self) {
            let cursor = self.cursor;
            self.released = cursor;
            let h = &self.s.h;
            h.read.store(cursor, SeqCst);
            handshake();
            if h.worker_waiting.load(SeqCst) != 0 && h.worker_waiting.swap(0, SeqCst) != 0 {
                h.space.fetch_add(1, SeqCst);
                self.s.futex_wake();
            }
        }

        /// `PoolRing::want_wakeup`.
        fn want_wakeup(&mut self) -> bool {
            self.release();
            let h = &self.s.h;
            h.pool_waiting.store(1, SeqCst);
            handshake();
            let arrived = h.write.load(SeqCst) != self.cursor;
            if arrived {
                let _ = h.pool_waiting.compare_exchange(1, 0, SeqCst, SeqCst);
            }
            arrived
        }

        /// `PoolRing::revoke`.
        fn revoke(&mut self, head: u64, through: u64) -> bool {
            let h = &self.s.h;
            if h.gate.load(SeqCst) != head {
                return false;
            }
            h.revoked_through.store(through, SeqCst);
            h.gate
                .compare_exchange(head, head | REVOKED, SeqCst, SeqCst)
                .is_ok()
        }
    }

    /// `ring::Begin`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Begin {
        Run,
        Skip,
    }
    use Begin::*;

    /// `ring::WorkerRing`.
    struct WorkerRing {
        s: Arc<Shared>,
        seen_read: u64,
        seq: u64,
    }

    impl WorkerRing {
        fn new(s: Arc<Shared>) -> WorkerRing {
            WorkerRing {
                s,
                seen_read: 0,
                seq: 0,
            }
        }

        /// `WorkerRing::push`, of a record of one slot holding `value`.
        fn push(&mut self, value: u64) -> bool {
            let h = &self.s.h;
            let write = h.write.load(Relaxed);
            let fits = |read: u64| {
                let used = write.wrapping_sub(read);
                used <= CAP && CAP - used >= 1
            };
            let mut read = self.seen_read;
            if !fits(read) {
                read = h.read.load(Acquire);
            }
            while !fits(read) {
                let seen = h.space.load(SeqCst);
                h.worker_waiting.store(1, SeqCst);
                handshake();
                read = h.read.load(SeqCst);
                if fits(read) {
                    h.worker_waiting.store(0, Relaxed);
                    break;
                }
                self.s.futex_wait(&h.space, seen);
                read = h.read.load(Acquire);
            }
            self.seen_read = read;
            self.s.data[(write % CAP) as usize].with_mut(|v| {
                // SAFETY: the protocol gives the worker the slot: released by `read`,
                // not yet published by `write` (what loom checks).
                unsafe { *v = value }
            });
            h.write.store(write + 1, SeqCst);
            handshake();
            h.pool_waiting.load(SeqCst) != 0 && h.pool_waiting.swap(0, SeqCst) != 0
        }

        /// `WorkerRing::begin_job`.
        fn begin_job(&mut self) -> Begin {
            let h = &self.s.h;
            let job = self.seq.wrapping_add(1);
            self.seq = job;
            let last = job.wrapping_sub(1);
            match h.gate.compare_exchange(last, job, SeqCst, SeqCst) {
                Ok(_) => Run,
                Err(gate) if gate == last | REVOKED => {
                    let through = h.revoked_through.load(SeqCst);
                    if job < through {
                        h.gate.store(job | REVOKED, SeqCst);
                        Skip
                    } else if job == through {
                        h.gate.store(job, SeqCst);
                        Skip
                    } else {
                        h.gate.store(job, SeqCst);
                        Run
                    }
                }
                Err(_) => {
                    h.gate.store(job, SeqCst);
                    Run
                }
            }
        }
    }

    /// The worker writes three replies into a ring of two (so it waits for room once
    /// at least, and the ring wraps), waking the pool through the socket when the pool
    /// asked; the pool reads them as its event loop does, sleeping on the socket when
    /// the ring is empty. Every record is read after it was published and in order,
    /// no slot is written again before the pool consumed it (both: no data race on
    /// the slots), and neither side sleeps for ever (no deadlock).
    #[test]
    fn ring_records_arrive_in_order_and_no_wakeup_is_lost() {
        const RECORDS: u64 = 3;
        model(|| {
            let shared = Shared::new();
            let worker = {
                let shared = shared.clone();
                thread::spawn(move || {
                    let mut ring = WorkerRing::new(shared.clone());
                    for value in 1..=RECORDS {
                        if ring.push(value) {
                            shared.socket_wake();
                        }
                    }
                })
            };
            let mut pool = PoolRing::new(shared.clone());
            let mut got = Vec::new();
            // `LocalLink::poll_reply` with `waiting`: the ring, then the socket, then
            // a wake-up request, then sleep until the socket is readable.
            while (got.len() as u64) < RECORDS {
                if let Some(value) = pool.pop() {
                    got.push(value);
                    continue;
                }
                if shared.socket_try_read() || pool.want_wakeup() {
                    continue;
                }
                shared.socket_sleep();
            }
            assert_eq!(got, (1..=RECORDS).collect::<Vec<_>>());
            worker.join().unwrap();
        });
    }

    /// The pool takes back jobs 2 and 3, sent ahead while the worker runs job 1, as
    /// the worker finishes job 1 and begins the next: the gate gives each job one fate
    /// that both sides agree on (taken back: skipped; not: run).
    #[test]
    fn ring_gate_decides_each_job_once() {
        model(|| {
            let shared = Shared::new();
            let mut pool = PoolRing::new(shared.clone());
            let mut ring = WorkerRing::new(shared.clone());
            assert_eq!(ring.begin_job(), Run); // job 1, the head
            let worker = thread::spawn(move || (ring.begin_job(), ring.begin_job()));
            let revoked = pool.revoke(1, 3);
            let fates = worker.join().unwrap();
            let expected = if revoked { (Skip, Skip) } else { (Run, Run) };
            assert_eq!(fates, expected, "revoked: {revoked}");
        });
    }

    /// After a revocation (jobs 2 and 3 taken back while job 1 ran), the pool's head is
    /// job 4 and it takes back job 5 while the worker, slow, is still skipping 2 and 3
    /// and has not begun 4: the second revocation must not reach the first one's
    /// skipping (which reads `revoked_through`). Jobs 2 and 3 are skipped; 4 runs;
    /// 5 is skipped if and only if the second revocation succeeded.
    #[test]
    fn ring_gate_keeps_a_revocation_to_its_own_jobs() {
        model(|| {
            let shared = Shared::new();
            let mut pool = PoolRing::new(shared.clone());
            let mut ring = WorkerRing::new(shared.clone());
            assert_eq!(ring.begin_job(), Run); // job 1
            assert!(pool.revoke(1, 3));
            let worker = thread::spawn(move || [(); 4].map(|()| ring.begin_job()));
            let revoked = pool.revoke(4, 5);
            let fates = worker.join().unwrap();
            let fifth = if revoked { Skip } else { Run };
            assert_eq!(fates, [Skip, Skip, Run, fifth], "revoked: {revoked}");
        });
    }
}
