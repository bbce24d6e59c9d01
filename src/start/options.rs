//! What a child is told to be: the settings it applies to itself as it starts.

use std::os::fd::RawFd;

use crate::start::names::{ChildKind, Label};

/// Settings a child applies to itself as it starts: between fork and exec (a forked
/// child: [`child_setup`](super::child_setup)), or first thing after the exec (a
/// spawned one: [`after_exec`](super::after_exec)).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChildOptions {
    pub(crate) nice: Option<i32>,
    pub(crate) memory_limit: Option<u64>,
    /// Whether the child survives its parent: only non-daemon `Process`es do.
    pub(crate) outlive_parent: bool,
    /// The child's cgroup leaf's `cgroup.procs`, open in the process that forks it (a
    /// fork server replaces the pool's number with that of the copy it received; a
    /// spawn passes its own copy and ignores this).
    pub(crate) cgroup_procs: Option<RawFd>,
    /// What the child is, for its process name.
    pub(crate) kind: ChildKind,
    /// The pool's (or the `Process`'s) name, shown in the child's `argv[0]` where it
    /// has one of its own (see [`argv0`](super::names::argv0)).
    pub(crate) label: Label,
}
