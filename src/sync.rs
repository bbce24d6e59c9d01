//! The synchronisation primitives of the pool's own hand-made synchronisation
//! ([`crate::lease`], the queue's cancellation and reply inbox): `std`'s, or
//! `loom`'s under `--cfg procpool_loom`, so that the model checker can explore every
//! interleaving of them (see `tests/loom.rs`).

#[cfg(not(procpool_loom))]
pub(crate) use futures::task::AtomicWaker;
#[cfg(not(procpool_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
