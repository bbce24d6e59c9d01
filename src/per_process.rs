//! Statics that belong to one process.
//!
//! A forked child gets a copy of its parent's memory, statics included, but not the
//! threads, descriptors or lock owners behind them: a `OnceLock` holding the sender to
//! the parent's spawner thread would send into a channel nobody reads. A
//! [`PerProcess`] value is tagged with the pid that made it; another process sees it
//! as unset and makes its own. The parent's copy is leaked in the child, never
//! dropped: its destructor would act on things that are not the child's.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

pub(crate) struct PerProcess<T> {
    slot: AtomicPtr<(u32, T)>,
}

impl<T> PerProcess<T> {
    pub(crate) const fn new() -> Self {
        PerProcess {
            slot: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// This process's value, if it has one.
    pub(crate) fn get(&self) -> Option<&T> {
        let entry = self.slot.load(Ordering::Acquire);
        // SAFETY: a non-null pointer in the slot comes from `Box::into_raw` in
        // `get_or_init` and is never freed once published (see the module docs), so it
        // is valid for the rest of the program.
        let (pid, value) = unsafe { entry.as_ref()? };
        (*pid == std::process::id()).then_some(value)
    }

    /// This process's value, made by `init` if it has none yet.
    pub(crate) fn get_or_init(&self, init: impl FnOnce() -> T) -> &T {
        if let Some(value) = self.get() {
            return value;
        }
        let current = self.slot.load(Ordering::Acquire);
        let fresh = Box::into_raw(Box::new((std::process::id(), init())));
        match self
            .slot
            .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: `fresh` was just published and is never freed.
            Ok(_) => unsafe { &(*fresh).1 },
            Err(_) => {
                // Another thread of this process won; ours was never shared.
                // SAFETY: `fresh` came from `Box::into_raw` above and nobody else
                // saw it.
                drop(unsafe { Box::from_raw(fresh) });
                // The winner can only be a thread of this process: pids differ
                // only across a fork, which copies no running thread.
                self.get()
                    .unwrap_or_else(|| unreachable!("the slot was set by this process"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_process() {
        static CELL: PerProcess<String> = PerProcess::new();
        assert!(CELL.get().is_none());
        assert_eq!(CELL.get_or_init(|| "a".into()), "a");
        assert_eq!(CELL.get_or_init(|| "b".into()), "a");
        assert_eq!(CELL.get().map(String::as_str), Some("a"));
    }
}
