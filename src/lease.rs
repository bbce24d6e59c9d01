//! A value that its owner (a worker's driver) lends out while it does not need it, and
//! takes back: the direct path's hold on an idle worker (see `crate::direct`).
//!
//! The value itself moves: the one who has it is the only one who can use it, so two
//! users at once cannot exist (the type system, not a convention, says so). Whoever
//! borrows it gives it back with, optionally, a piece of work for the owner to finish
//! (a "handover"); the owner takes the value back at the start of each of its polls,
//! waiting (woken by the borrower) while it is out.
//!
//! ```text
//!   owner: offer(v) ──> Offered(v) ──try_lend()──> Lent ──give_back(v, None)──> Offered(v)
//!                        │                          └─give_back(v, Some(h))──> Returned(v, h)
//!   owner: poll_take_back() takes Offered(v) or Returned(v, h), and waits on Lent
//! ```

use std::task::{Context, Poll, Waker};

use crate::sync::{AtomicWaker, Mutex};

/// See the module docs. `T` is the value lent, `H` the handover a borrower may leave.
#[derive(Debug)]
pub(crate) struct Lease<T, H> {
    state: Mutex<State<T, H>>,
    /// The owner's waker, woken when the value comes back to an owner that waits.
    owner: AtomicWaker,
}

#[derive(Debug)]
enum State<T, H> {
    /// The owner has the value.
    Held,
    /// Offered to borrowers.
    Offered(T),
    /// A borrower has it; `true` if the owner waits for it.
    Lent(bool),
    /// Given back with a handover, for the owner alone to take.
    Returned(T, H),
}

impl<T, H> Default for Lease<T, H> {
    fn default() -> Self {
        Lease {
            state: Mutex::new(State::Held),
            owner: AtomicWaker::new(),
        }
    }
}

impl<T, H> Lease<T, H> {
    fn lock(&self) -> crate::sync::MutexGuard<'_, State<T, H>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For the owner, whose waker is `waker`: offers `value` to borrowers.
    pub(crate) fn offer(&self, value: T, waker: &Waker) {
        self.owner.register(waker);
        let mut state = self.lock();
        debug_assert!(matches!(*state, State::Held), "offered twice");
        *state = State::Offered(value);
    }

    /// For the owner: takes the value back, with the handover a borrower left, if any.
    /// `Pending` while a borrower has it (the borrower wakes the owner when it gives it
    /// back); `Ready(None)` if the owner holds it already.
    pub(crate) fn poll_take_back(&self, cx: &mut Context<'_>) -> Poll<Option<(T, Option<H>)>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Held) {
            State::Held => Poll::Ready(None),
            State::Offered(value) => Poll::Ready(Some((value, None))),
            State::Returned(value, handover) => Poll::Ready(Some((value, Some(handover)))),
            State::Lent(_) => {
                // Registered under the lock, which the borrower takes to give back:
                // the wake-up cannot fall between the two.
                self.owner.register(cx.waker());
                *state = State::Lent(true);
                Poll::Pending
            }
        }
    }

    /// For the owner: whether a borrower gave the value back with a handover, which
    /// the owner must take at once (see [`poll_take_back`](Self::poll_take_back)).
    pub(crate) fn is_returned(&self) -> bool {
        matches!(*self.lock(), State::Returned(..))
    }

    /// For a borrower: takes the value if it is offered.
    pub(crate) fn try_lend(&self) -> Option<T> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Lent(false)) {
            State::Offered(value) => Some(value),
            other => {
                *state = other;
                None
            }
        }
    }

    /// For a borrower: gives the value back with a handover for the owner, waking the
    /// owner only if it waits for the value. For a handover that can wait until the
    /// owner is woken by something else it watches (the borrower makes sure it will
    /// be).
    pub(crate) fn give_back_quietly(&self, value: T, handover: H) {
        let waits = {
            let mut state = self.lock();
            debug_assert!(matches!(*state, State::Lent(_)), "given back unlent");
            let waits = matches!(*state, State::Lent(true));
            *state = State::Returned(value, handover);
            waits
        };
        if waits {
            self.owner.wake();
        }
    }

    /// Wakes the owner (if it has registered since it was last woken).
    pub(crate) fn wake_owner(&self) {
        self.owner.wake();
    }

    /// For a borrower: gives the value back, offered again, or with a handover for the
    /// owner (who is woken to take it).
    pub(crate) fn give_back(&self, value: T, handover: Option<H>) {
        let wake = {
            let mut state = self.lock();
            let waits = matches!(*state, State::Lent(true));
            debug_assert!(matches!(*state, State::Lent(_)), "given back unlent");
            let handing = handover.is_some();
            *state = match handover {
                Some(h) => State::Returned(value, h),
                None => State::Offered(value),
            };
            handing || waits
        };
        if wake {
            self.owner.wake();
        }
    }
}

/// A waker that wakes the lease's owner: for a borrower that leaves the owner a
/// handover quietly, to be woken by what else may concern it (see `crate::direct`).
impl<T: Send, H: Send> std::task::Wake for Lease<T, H> {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_owner();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.wake_owner();
    }
}

#[cfg(all(test, not(procpool_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_value_goes_round_once_and_comes_back_with_its_handover() {
        let lease: Lease<u32, &str> = Lease::default();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(lease.poll_take_back(&mut cx), Poll::Ready(None)));
        lease.offer(7, Waker::noop());
        let v = lease.try_lend().expect("offered");
        assert!(lease.try_lend().is_none(), "lent to one borrower at a time");
        assert!(lease.poll_take_back(&mut cx).is_pending());
        lease.give_back(v, None);
        let v = lease.try_lend().expect("offered again");
        lease.give_back(v, Some("finish this"));
        assert!(lease.try_lend().is_none(), "a handover is the owner's");
        match lease.poll_take_back(&mut cx) {
            Poll::Ready(Some((7, Some("finish this")))) => {}
            other => panic!("{other:?}"),
        }
    }

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_quiet_handover_wakes_the_owner_only_if_it_waits() {
        let count = std::sync::Arc::new(Count(Default::default()));
        let woken = || count.0.load(std::sync::atomic::Ordering::SeqCst);
        let waker = Waker::from(count.clone());
        let lease: Lease<u32, &str> = Lease::default();
        lease.offer(1, &waker);
        let v = lease.try_lend().expect("offered");
        lease.give_back_quietly(v, "quiet");
        assert_eq!(woken(), 0, "an owner that does not wait is left asleep");
        assert!(lease.is_returned());
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            lease.poll_take_back(&mut cx),
            Poll::Ready(Some((1, Some("quiet"))))
        ));
        // An owner that waits for the value is woken by its return, quiet or not.
        lease.offer(2, &waker);
        let v = lease.try_lend().expect("offered");
        assert!(lease.poll_take_back(&mut cx).is_pending());
        lease.give_back_quietly(v, "now");
        assert_eq!(woken(), 1);
        // The lease as a waker wakes its owner.
        assert!(matches!(
            lease.poll_take_back(&mut cx),
            Poll::Ready(Some((2, Some("now"))))
        ));
        let lease = std::sync::Arc::new(lease);
        lease.offer(3, &waker);
        Waker::from(lease.clone()).wake();
        assert_eq!(woken(), 2);
    }
}
