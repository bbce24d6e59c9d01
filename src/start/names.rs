//! Children's names, for `ps`, `top` and `pgrep`: the command name (`comm`) and, where
//! a child has arguments of its own, `argv[0]`.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What a child is, which names it: see [`ChildKind::comm`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum ChildKind {
    /// A pool's worker.
    #[default]
    Worker,
    /// A [`Process`](crate::Process).
    Process,
}

/// The command name (`/proc/PID/comm`, what `ps`, `top` and `pgrep` show) of a pool's
/// worker. At most 15 bytes: the kernel keeps no more.
pub(crate) const COMM_WORKER: &std::ffi::CStr = c"procpool-worker";
/// The command name of a [`Process`](crate::Process) child.
pub(crate) const COMM_PROCESS: &std::ffi::CStr = c"procpool-proc";
/// The command name of a fork server (`procpool-forkserver` has 19 bytes).
pub(crate) const COMM_FORKSERVER: &std::ffi::CStr = c"procpool-server";
/// The command name of a remote worker's keeper, on the other machine.
pub(crate) const COMM_KEEPER: &std::ffi::CStr = c"procpool-keeper";

impl ChildKind {
    /// The child's command name.
    pub(crate) fn comm(self) -> &'static std::ffi::CStr {
        match self {
            ChildKind::Worker => COMM_WORKER,
            ChildKind::Process => COMM_PROCESS,
        }
    }

    /// The role named in its `argv[0]`: `procpool-<role>`.
    pub(crate) fn role(self) -> &'static str {
        match self {
            ChildKind::Worker => "worker",
            ChildKind::Process => "process",
        }
    }
}

/// Sets this process's command name (`PR_SET_NAME`). Async-signal-safe (one system
/// call, no allocation): forked children call it before anything else runs. Best
/// effort: a failure leaves the inherited name.
pub(crate) fn set_comm(comm: &std::ffi::CStr) {
    // SAFETY: prctl(PR_SET_NAME) reads at most 16 bytes of the NUL-terminated string,
    // which is static; it touches no other memory of ours.
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// A name shown in a child's `argv[0]`: at most [`Label::MAX`] bytes of the name given
/// to the builder, control characters replaced by `?`. `Copy`, so that it travels in
/// [`ChildOptions`] (and to a fork server) and can be written out after a fork without
/// allocating.
#[derive(Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Label {
    bytes: [u8; Label::MAX],
    len: u8,
}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Label {
    /// The most bytes of a name kept.
    pub(crate) const MAX: usize = 32;

    pub(crate) fn new(name: &str) -> Label {
        let mut label = Label::default();
        let mut len = 0;
        for c in name.chars() {
            let c = if c.is_control() { '?' } else { c };
            let mut utf8 = [0u8; 4];
            let encoded = c.encode_utf8(&mut utf8).as_bytes();
            if len + encoded.len() > Label::MAX {
                break;
            }
            label.bytes[len..len + encoded.len()].copy_from_slice(encoded);
            len += encoded.len();
        }
        label.len = len as u8;
        label
    }

    /// The bytes (bounded by [`Label::MAX`] even if `len` came from elsewhere).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(Label::MAX)]
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

/// The `argv[0]` of a child in `role` (`procpool-worker`, `procpool-forkserver`,
/// `procpool-process`), with `[label]` after it if the label is not empty; written
/// into `out` without allocating; returns its length (cut to `out`'s).
pub(crate) fn argv0(role: &str, label: &Label, out: &mut [u8]) -> usize {
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            if at < out.len() {
                out[at] = b;
                at += 1;
            }
        }
    };
    put(b"procpool-");
    put(role.as_bytes());
    if !label.as_bytes().is_empty() {
        put(b"[");
        put(label.as_bytes());
        put(b"]");
    }
    at
}

/// [`argv0`] as a string.
pub(crate) fn argv0_string(role: &str, label: &Label) -> String {
    let mut buf = [0u8; 64];
    let len = argv0(role, label, &mut buf);
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// The area of this process's argument strings (`/proc/self/stat`'s `arg_start` and
/// `arg_end`), read once, in a process that means to rename its forked children (the
/// fork server): they inherit it, and [`rename_argv`] writes their own name there.
static ARGV_AREA: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));

/// Records this process's argument area for [`rename_argv`] (allocates: call it before
/// forking). Only for a process that this crate started (the fork server), whose
/// arguments are its name and perhaps blanks for room.
pub(crate) fn record_argv_area() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name (which is in parentheses and may hold anything);
    // arg_start and arg_end are fields 48 and 49, so 46 and 47 after the name.
    let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (Some(start), Some(end)) = (
        fields.get(45).and_then(|f| f.parse::<usize>().ok()),
        fields.get(46).and_then(|f| f.parse::<usize>().ok()),
    ) else {
        return;
    };
    // The area must hold the arguments this process has, each with its NUL: only then
    // is it what we think.
    let args: usize = std::env::args_os().map(|a| a.len() + 1).sum();
    if args > 0 && end > start && end - start == args {
        ARGV_AREA.0.store(start, Ordering::Relaxed);
        ARGV_AREA.1.store(end, Ordering::Relaxed);
    }
}

/// In a child forked from a process that called [`record_argv_area`]: writes
/// `procpool-<role>[label]` over its inherited argument area (cut to fit, the rest
/// zeroed), so that `/proc/PID/cmdline` (`ps -f`, `pgrep -f`) shows what it is.
/// Async-signal-safe: plain stores, no allocation.
pub(crate) fn rename_argv(role: &str, label: &Label) {
    let (start, end) = (
        ARGV_AREA.0.load(Ordering::Relaxed),
        ARGV_AREA.1.load(Ordering::Relaxed),
    );
    if start == 0 || end <= start {
        return;
    }
    let mut name = [0u8; 64];
    let len = argv0(role, label, &mut name);
    let area = end - start;
    // SAFETY: [start, end) is this process's argument area, as the kernel reported it
    // (checked in `record_argv_area` to be exactly the arguments and their NULs):
    // strings on the initial stack, mapped writable for the life of the process, which
    // nothing but argv (and the standard library's pointers into it, which read C
    // strings) refers to. This process is single-threaded (a fresh fork), so nothing
    // reads it meanwhile; the area keeps a NUL at its end, so every argument stays a C
    // string (those after the name become empty).
    unsafe {
        let out = std::slice::from_raw_parts_mut(start as *mut u8, area);
        let keep = len.min(area - 1);
        out[..keep].copy_from_slice(&name[..keep]);
        out[keep..].fill(0);
    }
}
