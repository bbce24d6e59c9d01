//! Places under the pool's queue bound ([`PoolBuilder::queue_bound`]): the semaphore's
//! permits a task holds from its submission until it is resolved.
//!
//! A permit must come back however the task ends: its result delivered, a crash, a
//! timeout, an abort, its handle dropped while it is queued, terminate, the pool
//! dropped. So the permits are owned values (Tokio's `OwnedSemaphorePermit`) kept
//! where the task's end is decided, and dropped there:
//!
//! - a single task's permit sits in an [`Admission`] shared by its handle (which
//!   releases it when an abort or a drop takes the task out of the queue, see
//!   `AbortSignal`) and its job's reply route (a [`Release`], which releases it just
//!   before the reply is sent, so that a caller who has its result finds the room
//!   freed, and when the job is dropped unanswered);
//! - a `map`-family stream keeps the permits of its chunks that wait in the queue in
//!   one [`Admission`]; a driver taking a chunk moves its tasks' permits to the chunk's
//!   reply route, and the stream, when it goes, releases those of the chunks left.
//!
//! [`PoolBuilder::queue_bound`]: crate::PoolBuilder::queue_bound

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedSemaphorePermit;

/// Permits held for tasks, shared by the places that may end them first; cheap to
/// clone. Releasing is idempotent: whoever comes first releases, the others find none.
/// A pool without a bound uses the empty one, which allocates nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Admission(Option<Arc<Mutex<Option<OwnedSemaphorePermit>>>>);

impl Admission {
    /// Holds `permit`.
    pub(crate) fn new(permit: OwnedSemaphorePermit) -> Self {
        Admission(Some(Arc::new(Mutex::new(Some(permit)))))
    }

    /// An admission to which permits are [added](Self::add) later.
    pub(crate) fn shared() -> Self {
        Admission(Some(Arc::default()))
    }

    fn lock(
        slot: &Mutex<Option<OwnedSemaphorePermit>>,
    ) -> MutexGuard<'_, Option<OwnedSemaphorePermit>> {
        // Nothing panics under the lock; recover the data if something did.
        slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `permit` (of the same semaphore) to those held. On the empty admission it
    /// is released at once: nobody could release it later.
    pub(crate) fn add(&self, permit: OwnedSemaphorePermit) {
        let Some(slot) = &self.0 else { return };
        let mut held = Self::lock(slot);
        match &mut *held {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
    }

    /// Takes up to `n` of the permits held (fewer if fewer are held; `None` if none).
    pub(crate) fn take(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let slot = self.0.as_ref()?;
        let mut held = Self::lock(slot);
        match &mut *held {
            Some(permit) if permit.num_permits() > n => permit.split(n),
            _ => held.take(),
        }
    }

    /// Releases every permit held.
    pub(crate) fn release(&self) {
        if let Some(slot) = &self.0 {
            // Dropped outside the lock: it wakes whoever waits for room.
            let permit = Self::lock(slot).take();
            drop(permit);
        }
    }
}

/// A job's share of an [`Admission`]: released when the job's reply is sent (just
/// before), or when the job is dropped unanswered.
#[derive(Debug, Default)]
pub(crate) struct Release(pub(crate) Admission);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    #[test]
    fn permits_come_back_however_they_are_let_go() {
        let sem = Arc::new(Semaphore::new(10));
        let one = Admission::new(sem.clone().try_acquire_owned().unwrap());
        let other_side = Release(one.clone());
        assert_eq!(sem.available_permits(), 9);
        one.release();
        assert_eq!(sem.available_permits(), 10);
        // The other side finds nothing left to release.
        drop(other_side);
        assert_eq!(sem.available_permits(), 10);

        let stream = Admission::shared();
        stream.add(sem.clone().try_acquire_many_owned(3).unwrap());
        stream.add(sem.clone().try_acquire_many_owned(2).unwrap());
        assert_eq!(sem.available_permits(), 5);
        let chunk = stream.take(2).expect("two of five");
        assert_eq!(chunk.num_permits(), 2);
        assert_eq!(stream.take(7).map(|p| p.num_permits()), Some(3));
        assert!(stream.take(1).is_none());
        assert_eq!(sem.available_permits(), 8);
        drop(chunk);
        assert_eq!(sem.available_permits(), 10);

        // The empty admission holds nothing: what it is given goes back at once.
        Admission::default().add(sem.clone().try_acquire_owned().unwrap());
        assert_eq!(sem.available_permits(), 10);
    }
}
