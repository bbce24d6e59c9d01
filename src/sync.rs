//! The synchronisation primitives of the pool's own hand-made synchronisation
//! ([`crate::lease`], the queue's cancellation and reply inbox): `std`'s, or
//! `loom`'s under `--cfg procpool_loom`, so that the model checker can explore every
//! interleaving of them (see `src/loom_tests.rs`, run by `.ci/run` with
//! `RUSTFLAGS="--cfg procpool_loom" cargo test --release --lib loom`).
//!
//! In a normal build these are plain re-exports: nothing changes, nothing costs more.
//! Under `procpool_loom` the types that use them work only inside `loom::model`.

#[cfg(not(procpool_loom))]
pub(crate) use futures::task::AtomicWaker;
#[cfg(not(procpool_loom))]
pub(crate) use std::sync::{atomic, Mutex, MutexGuard};

#[cfg(procpool_loom)]
pub(crate) use loom::sync::{atomic, Mutex, MutexGuard};

/// `loom`'s `AtomicWaker`, with the signature of `futures`' (`register` takes the
/// waker by reference; loom's takes it by value).
#[cfg(procpool_loom)]
#[derive(Debug, Default)]
pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

#[cfg(procpool_loom)]
impl AtomicWaker {
    pub(crate) fn new() -> AtomicWaker {
        AtomicWaker(loom::future::AtomicWaker::new())
    }

    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.0.register_by_ref(waker);
    }

    pub(crate) fn wake(&self) {
        self.0.wake();
    }
}
