//! What a child is told to be: the settings applied in it between fork and exec.

use std::os::fd::RawFd;

use crate::start::names::{ChildKind, Label};

/// Settings applied in a child between fork and exec.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChildOptions {
    pub(crate) nice: Option<i32>,
    pub(crate) memory_limit: Option<u64>,
    /// Whether the child survives its parent: only non-daemon `Process`es do.
    pub(crate) outlive_parent: bool,
    /// The child's cgroup leaf's `cgroup.procs`, open in the process that forks it (a
    /// fork server replaces the pool's number with that of the copy it received).
    pub(crate) cgroup_procs: Option<RawFd>,
    /// What the child is, for its process name.
    pub(crate) kind: ChildKind,
    /// The pool's (or the `Process`'s) name, shown in the child's `argv[0]` where it
    /// has one of its own (see [`argv0`]).
    pub(crate) label: Label,
}
