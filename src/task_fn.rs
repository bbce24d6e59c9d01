//! Tasks as the worker runs them: the *trampoline* of a task type `F`, the one entry
//! point per `F` that decodes a chunk of arguments, runs `F` on each (catching panics)
//! and encodes the results. The parent names a trampoline by its offset in the
//! executable ([`crate::image::FnRef`]); the worker calls it.
//!
//! A task is a zero-sized `F: Fn(A) -> R + Copy + 'static`: a plain `fn` item or a
//! closure that captures nothing. The parent never sends `F` itself (it has no bytes);
//! the trampoline conjures the zero-sized value in the worker. A trampoline is only
//! made from a value of `F` ([`trampoline`] takes one), so a value exists.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::image::Trampoline;
use crate::protocol::codec;
use crate::protocol::Outcome;

/// The trampoline for task type `F`, with a compile-time check that `F` is zero-sized.
pub(crate) fn trampoline<F, A, R>(f: F) -> Trampoline
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a procpool task must be a plain `fn` or a closure that captures nothing"
        );
    }
    // The value is the evidence that `F` has one (see `conjure`); it is not needed.
    let _ = f;
    run_job::<F, A, R>
}

/// Runs one job of task type `F`: the payload is a chunk of encoded arguments; the output
/// a chunk of encoded `Result<R, RemotePanic>`, one per argument, in order.
fn run_job<F, A, R>(payload: &[u8], out: &mut Vec<u8>) -> Outcome
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let f: F = conjure();
    run_caught(payload, out, f)
}

/// The value of a zero-sized task type, in the worker. Only called by the trampolines
/// of `F` (`run_job`, `run_star_job`), whose addresses only [`trampoline`] and
/// [`star_trampoline`] give out, and only for a value of `F` they are given.
fn conjure<F: Copy + Send + 'static>() -> F {
    const { assert!(std::mem::size_of::<F>() == 0) };
    // SAFETY: `F` is zero-sized (asserted at compile time above), so a value of it has no
    // bytes to read and any aligned non-null pointer is a valid place to read one from.
    // A value of `F` exists: the parent held one to take this trampoline's address (see
    // above: `trampoline` takes one), and
    // `F: Copy + Send + 'static` means that value may be duplicated and moved to another
    // thread of execution with no lifetime attached; producing it here is that copy,
    // carried across the process boundary as zero bytes.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

/// Runs `call` on each argument of the chunk, catching panics one by one.
fn run_caught<A, R>(payload: &[u8], out: &mut Vec<u8>, call: impl Fn(A) -> R) -> Outcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    codec::run_chunk::<A, R>(payload, out, |arg| {
        catch_unwind(AssertUnwindSafe(|| call(arg))).map_err(crate::panics::panic_from_payload)
    })
}

/// A function of several arguments that [`Pool::starmap`](crate::Pool::starmap) can run:
/// implemented for every zero-sized `Fn(A, B, ...) -> R` of up to six arguments (plain
/// `fn` items and closures that capture nothing), called with a tuple.
pub trait StarFn<Args, R>: Copy + Send + Sync + 'static {
    /// Calls the function with the tuple's fields as arguments.
    fn call_star(&self, args: Args) -> R;
}

macro_rules! star_fn {
    ($($arg:ident),+) => {
        impl<Func, $($arg,)+ Res> StarFn<($($arg,)+), Res> for Func
        where
            Func: Fn($($arg),+) -> Res + Copy + Send + Sync + 'static,
        {
            #[allow(non_snake_case)]
            fn call_star(&self, ($($arg,)+): ($($arg,)+)) -> Res {
                self($($arg),+)
            }
        }
    };
}

star_fn!(A);
star_fn!(A, B);
star_fn!(A, B, C);
star_fn!(A, B, C, D);
star_fn!(A, B, C, D, E);
star_fn!(A, B, C, D, E, G);

/// The trampoline for a [`StarFn`], with the same zero-size check as [`trampoline`].
pub(crate) fn star_trampoline<F, Args, R>(f: F) -> Trampoline
where
    F: StarFn<Args, R>,
    Args: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a procpool task must be a plain `fn` or a closure that captures nothing"
        );
    }
    // As in `trampoline`.
    let _ = f;
    run_star_job::<F, Args, R>
}

fn run_star_job<F, Args, R>(payload: &[u8], out: &mut Vec<u8>) -> Outcome
where
    F: StarFn<Args, R>,
    Args: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let f: F = conjure();
    run_caught(payload, out, |args| f.call_star(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::SameBuild;
    use crate::protocol::FnRef;

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn round_trips_in_the_same_process() {
        let t = trampoline(double);
        let same = SameBuild::check(crate::image::build_id()).expect("this build");
        let r = FnRef::of(t).expect("in the executable");
        assert_eq!(r.resolve(same).expect("resolves") as usize, t as usize);
    }
}
