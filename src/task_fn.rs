//! Tasks as the worker runs them: the *trampoline* of a task type, the one entry point
//! per type that decodes a chunk of arguments, runs the task on each (catching panics)
//! and encodes the results. The parent names a trampoline and its task by their offsets
//! in the executable ([`crate::image`]'s `FnRef`); the worker calls it.
//!
//! A task is a `fn(A) -> R` pointer: a plain `fn` item or a closure that captures
//! nothing, coerced where the API takes it, so that a capturing closure is a type error
//! that `cargo check` reports ("closures can only be coerced to `fn` types if they do
//! not capture any variables"). A [`StarFn`] (`starmap`'s task of several arguments) is
//! a zero-sized `F` instead: the parent never sends `F` itself (it has no bytes); the
//! trampoline conjures the zero-sized value in the worker. Such a trampoline is only
//! made from a value of `F` ([`star_trampoline`] takes one), so a value exists.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::image::Trampoline;
use crate::protocol::codec::{self, Large};
use crate::protocol::{FnRef, Outcome};

/// The wire's reference to task `f`, or why it cannot be sent to another process.
pub(crate) fn task_ref<A, R>(f: fn(A) -> R) -> Result<FnRef, String>
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    FnRef::of(run_job::<A, R>, Some(f as usize))
}

/// Runs one job of a task of type `fn(A) -> R` at address `task`: the payload is a
/// chunk of encoded arguments; the output a chunk of encoded `Result<R, RemotePanic>`,
/// one per argument, in order.
fn run_job<A, R>(
    task: Option<usize>,
    payload: &[u8],
    out: &mut Vec<u8>,
    large: &mut Large,
) -> Outcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let Some(addr) = task else {
        return Outcome::Unresolvable("the job names no task function".into());
    };
    // SAFETY: `run_job::<A, R>` is only named on the wire by `task_ref::<A, R>`, which
    // pairs it with the address of a `fn(A) -> R`; `FnRef::resolve` turned that pair's
    // offsets back into addresses in this same build (its `SameBuild` proof), where the
    // same code lies at the same offsets, and checked that `addr` is in the
    // executable's text. So `addr` is the address of that `fn(A) -> R` here (non-null),
    // and transmuting it back to the fn pointer type it was taken from is sound. The
    // jobs come from the pool, which is trusted (the trust boundary runs the other way:
    // see DESIGN.md).
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(addr) };
    run_caught(payload, out, large, f)
}

/// The value of a zero-sized task type, in the worker. Only called by the trampoline
/// of `F` (`run_star_job`), whose address only [`star_trampoline`] gives out, and only
/// for a value of `F` it is given.
fn conjure<F: Copy + Send + 'static>() -> F {
    const { assert!(std::mem::size_of::<F>() == 0) };
    // SAFETY: `F` is zero-sized (asserted at compile time above), so a value of it has no
    // bytes to read and any aligned non-null pointer is a valid place to read one from.
    // A value of `F` exists: the parent held one to take this trampoline's address (see
    // above: `star_trampoline` takes one), and
    // `F: Copy + Send + 'static` means that value may be duplicated and moved to another
    // thread of execution with no lifetime attached; producing it here is that copy,
    // carried across the process boundary as zero bytes.
    unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() }
}

/// Runs `call` on each argument of the chunk, catching panics one by one.
fn run_caught<A, R>(
    payload: &[u8],
    out: &mut Vec<u8>,
    large: &mut Large,
    call: impl Fn(A) -> R,
) -> Outcome
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    codec::run_chunk::<A, R>(payload, out, large, |arg| {
        catch_unwind(AssertUnwindSafe(|| call(arg))).map_err(crate::panics::panic_from_payload)
    })
}

/// A function of several arguments that [`Pool::starmap`](crate::Pool::starmap) can run:
/// implemented for every zero-sized `Fn(A, B, ...) -> R` of up to six arguments (plain
/// `fn` items and closures that capture nothing), called with a tuple.
///
/// A closure that captures a value that is not `Copy` is refused by `cargo check`; one
/// that captures only `Copy` values (a `u64`) passes `cargo check` and is refused by
/// `cargo build` with "a procpool task must be a plain `fn` or a closure that captures
/// nothing" (Rust has no way to coerce a generic closure of any arity to a `fn`
/// pointer, which is how the other calls catch it earlier).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a procpool task of the arguments `{Args}`",
    label = "not a plain `fn` of these arguments, or a closure that captures variables",
    note = "a procpool task must be a plain `fn` or a closure that captures nothing: pass \
            what it needs in its arguments"
)]
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

/// The trampoline for a [`StarFn`], with a compile-time check that `F` is zero-sized.
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
    // The value is the evidence that `F` has one (see `conjure`); it is not needed.
    let _ = f;
    run_star_job::<F, Args, R>
}

fn run_star_job<F, Args, R>(
    _: Option<usize>,
    payload: &[u8],
    out: &mut Vec<u8>,
    large: &mut Large,
) -> Outcome
where
    F: StarFn<Args, R>,
    Args: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let f: F = conjure();
    run_caught(payload, out, large, |args| f.call_star(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::SameBuild;

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn round_trips_in_the_same_process() {
        let same = SameBuild::check(crate::image::build_id()).expect("this build");
        let r = task_ref(double).expect("in the executable");
        let mut args = Vec::new();
        codec::encode_chunk(&[21u32], &mut args).expect("encodes");
        let mut out = Vec::new();
        let outcome =
            r.resolve(same)
                .expect("resolves")
                .run(&args, &mut out, &mut Default::default());
        assert!(
            matches!(outcome, Outcome::Ok { panicked: 0, .. }),
            "{outcome:?}"
        );
        let results = codec::decode_results::<u32>(&out).expect("decodes");
        assert_eq!(
            results.into_iter().map(|r| r.ok()).collect::<Vec<_>>(),
            [Some(42)]
        );
    }

    /// A real trampoline resolves; a task offset outside the executable does not.
    #[test]
    fn a_task_outside_the_executable_is_refused() {
        let same = SameBuild::check(crate::image::build_id()).expect("this build");
        let (run, _) = task_ref(double).expect("in the executable").to_bits();
        assert!(FnRef::from_bits(run, 0).resolve(same).is_ok());
        assert!(FnRef::from_bits(run, u64::MAX).resolve(same).is_err());
        assert!(FnRef::from_bits(run, 1 << 62).resolve(same).is_err());
    }

    #[test]
    fn a_job_without_its_task_is_refused() {
        let same = SameBuild::check(crate::image::build_id()).expect("this build");
        let (run, _) = task_ref(double).expect("in the executable").to_bits();
        let outcome = FnRef::from_bits(run, 0)
            .resolve(same)
            .expect("resolves")
            .run(&[], &mut Vec::new(), &mut Default::default());
        assert!(matches!(outcome, Outcome::Unresolvable(_)), "{outcome:?}");
    }
}
