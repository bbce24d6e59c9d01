//! Starting a program with `posix_spawn`, descriptors and process group included.
//!
//! glibc (since 2.24) and musl start a `posix_spawn`ed child with
//! `clone(CLONE_VM | CLONE_VFORK)`: the child borrows the parent's memory until its
//! exec, so no page table is copied, and starting it costs the same whether the parent
//! has 5 MiB resident or 50 GiB. A `fork` (and so `Command` with a `pre_exec` hook)
//! copies the page tables of the whole parent first. So nothing of ours runs between
//! this child's fork and its exec: what it must do before it runs is either an
//! attribute or a file action here (its process group, its signal mask and `SIGPIPE`,
//! its descriptors), or done by the child itself after the exec (see
//! [`after_exec`](super::after_exec)).
//!
//! Descriptors: every source is first copied above [`ABOVE`] (close-on-exec), so that
//! placing one onto its target cannot overwrite another still to be placed, and none is
//! its own target (`dup2` onto itself would keep the close-on-exec flag). Then every
//! descriptor above the targets is closed, with `posix_spawn_file_actions_addclosefrom_np`
//! where the C library has it (glibc 2.34+, looked up at run time, so that a build does
//! not need it), else by one close action per descriptor listed in `/proc/self/fd`
//! (a descriptor opened by another thread between the listing and the spawn, without
//! close-on-exec, would then stay open in the child).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Sources are copied to this number or above before they are placed.
const ABOVE: RawFd = 10;

/// A program to start, and what it is handed.
#[derive(Debug)]
pub(crate) struct Spawn<'a> {
    /// The executable's path.
    pub(crate) path: &'a CStr,
    /// Its arguments, `argv[0]` first.
    pub(crate) argv: &'a [CString],
    /// Its whole environment, `KEY=value` each.
    pub(crate) env: &'a [CString],
    /// Descriptor `i` of the child is `fds[i]` of ours (`fds.len()` at most [`ABOVE`]);
    /// every other descriptor is closed in the child.
    pub(crate) fds: &'a [RawFd],
}

/// `posix_spawn_file_actions_addclosefrom_np`, where the C library has it.
type CloseFrom =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, libc::c_int) -> libc::c_int;

fn close_from_action() -> Option<CloseFrom> {
    static FOUND: std::sync::OnceLock<Option<CloseFrom>> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a static NUL-terminated name only looks
        // the symbol up; it returns null where there is none.
        let f = unsafe {
            libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addclosefrom_np".as_ptr(),
            )
        };
        // SAFETY: a non-null result is the C library's function of that name, whose
        // signature (glibc's <spawn.h>) is `CloseFrom`.
        (!f.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, CloseFrom>(f) })
    })
}

/// An errno-style return value as a result.
fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// An initialised `posix_spawnattr_t` (neither it nor the file actions point into
/// themselves: nix's wrappers move them freely too).
struct Attr(libc::posix_spawnattr_t);

impl Attr {
    fn new() -> io::Result<Attr> {
        let mut attr = std::mem::MaybeUninit::uninit();
        // SAFETY: initialises the object it is given.
        check(unsafe { libc::posix_spawnattr_init(attr.as_mut_ptr()) })?;
        // SAFETY: initialised above.
        Ok(Attr(unsafe { attr.assume_init() }))
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// An initialised `posix_spawn_file_actions_t`.
struct Actions(libc::posix_spawn_file_actions_t);

impl Actions {
    fn new() -> io::Result<Actions> {
        let mut actions = std::mem::MaybeUninit::uninit();
        // SAFETY: initialises the object it is given.
        check(unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) })?;
        // SAFETY: initialised above.
        Ok(Actions(unsafe { actions.assume_init() }))
    }
}

impl Drop for Actions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Starts `what` and returns its pid; it leads a process group of its own, with no
/// signal blocked and `SIGPIPE` at its default action (as `std::process::Command`
/// leaves it).
///
/// # Errors
///
/// Preparing the descriptors or the attributes failed, or `posix_spawn` did (the exec's
/// error included: the C library reports it).
pub(crate) fn spawn(what: &Spawn<'_>, list_fds: bool) -> io::Result<libc::pid_t> {
    assert!(
        what.fds.len() <= ABOVE as usize,
        "targets must lie below ABOVE"
    );
    // Copies above every target (close-on-exec, closed here when this returns).
    let copies = what
        .fds
        .iter()
        .map(|&fd| {
            // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor or fails; `fd` is the
            // caller's, open for this call.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, ABOVE) };
            if copy < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor that nothing else owns.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) })
        })
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    let first_closed = what.fds.len() as RawFd;
    // Listed now, in case the C library cannot close a range (it allocates).
    let close_from = if list_fds { None } else { close_from_action() };
    let listed = match close_from {
        Some(_) => Vec::new(),
        None => super::fds::open_from(first_closed),
    };

    let mut attr = Attr::new()?;
    let mut actions = Actions::new()?;
    let flags =
        libc::POSIX_SPAWN_SETPGROUP | libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
    // SAFETY: every call below works on the initialised `attr` and `actions`
    // and on local signal sets, all valid for the call.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        check(libc::posix_spawnattr_setflags(
            &mut attr.0,
            flags as libc::c_short,
        ))?;
        // 0: a group of its own, whose id is its pid.
        check(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
        check(libc::posix_spawnattr_setsigmask(&mut attr.0, &none))?;
        check(libc::posix_spawnattr_setsigdefault(&mut attr.0, &pipe))?;
        for (target, copy) in (0..).zip(&copies) {
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions.0,
                copy.as_raw_fd(),
                target,
            ))?;
        }
        match close_from {
            Some(f) => check(f(&mut actions.0, first_closed))?,
            None => {
                for fd in listed {
                    check(libc::posix_spawn_file_actions_addclose(&mut actions.0, fd))?;
                }
            }
        }
    }

    let argv: Vec<*mut libc::c_char> = what
        .argv
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain([std::ptr::null_mut()])
        .collect();
    let envp: Vec<*mut libc::c_char> = what
        .env
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain([std::ptr::null_mut()])
        .collect();
    let mut pid: libc::pid_t = 0;
    // SAFETY: `path` is NUL-terminated; `argv` and `envp` are null-terminated arrays
    // of pointers into CStrings that outlive the call (posix_spawn only reads them);
    // the attributes and actions are initialised; `pid` is a local out-parameter.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            what.path.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })?;
    drop(copies);
    Ok(pid)
}
