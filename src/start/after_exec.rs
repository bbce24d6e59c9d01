//! What a spawned child does for itself first thing after the exec.
//!
//! A spawned child (a `Spawn` worker, a spawned [`Process`](crate::Process), a fork
//! server) is started with `posix_spawn` (see [`spawn`](super::spawn)), which runs no
//! code of ours between its fork and its exec: that is what lets the C library start it
//! with `vfork` semantics, sharing the parent's memory until the exec, at a cost that
//! does not grow with the parent's size. What a forked child does before it runs
//! anything (see [`child_setup`](super::child_setup)) is done here instead, by the new
//! program, from procpool's constructor, before any code of the program's own runs:
//!
//! - its descriptors are already in place: `posix_spawn` put stdio on 0, 1 and 2, the
//!   channel on [`WORKER_FD`], the leaf's `cgroup.procs` on [`CGROUP_FD`] if it has one,
//!   and closed every other descriptor;
//! - its process group is already its own (`POSIX_SPAWN_SETPGROUP`), from before the
//!   exec, so the pool can signal the group as soon as it knows the pid;
//! - here it enters its cgroup leaf, before anything else, then becomes a subreaper,
//!   arms the parent-death signal (and exits if the parent it was given is no longer
//!   its parent: the parent died before the signal was armed), and applies its
//!   niceness and memory limit ([`settle`](super::settle)).
//!
//! The parent passes what to do in the environment variable [`ENV_SETUP`], which the
//! child removes from its environment before its program's code can see it.
//!
//! [`WORKER_FD`]: super::spawn::WORKER_FD

use std::os::fd::RawFd;

use nix::unistd::Pid;

/// Set in a spawned child's environment: its start-up settings ([`AfterExec`],
/// encoded).
pub(crate) const ENV_SETUP: &str = "__PROCPOOL_SETUP";

/// The descriptor on which a spawned child finds its cgroup leaf's `cgroup.procs`,
/// if it has one.
pub(crate) const CGROUP_FD: RawFd = 4;

/// The settings a spawned child applies to itself after the exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AfterExec {
    /// The process that spawned it: it dies with that one.
    pub(crate) parent: Pid,
    /// Whether it outlives its parent (no parent-death signal).
    pub(crate) outlive_parent: bool,
    pub(crate) nice: Option<i32>,
    pub(crate) memory_limit: Option<u64>,
    /// Whether [`CGROUP_FD`] is its leaf's `cgroup.procs`.
    pub(crate) cgroup: bool,
}

impl AfterExec {
    /// The value of [`ENV_SETUP`]: `parent,outlive,nice,memory,cgroup`, a missing
    /// setting empty.
    pub(crate) fn encode(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_default();
        format!(
            "{},{},{},{},{}",
            self.parent.as_raw(),
            u8::from(self.outlive_parent),
            opt(self.nice.map(|n| n.to_string())),
            opt(self.memory_limit.map(|m| m.to_string())),
            u8::from(self.cgroup),
        )
    }

    /// Reads what [`encode`](Self::encode) wrote.
    ///
    /// # Errors
    ///
    /// What is wrong with `text`.
    pub(crate) fn decode(text: &str) -> Result<AfterExec, String> {
        let fields: Vec<&str> = text.split(',').collect();
        let [parent, outlive, nice, memory, cgroup] = fields[..] else {
            return Err(format!("{} fields, not 5", fields.len()));
        };
        let flag = |what: &str, v: &str| match v {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(format!("bad {what} {v:?}")),
        };
        let parent: i32 = parent
            .parse()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("bad parent {parent:?}"))?;
        Ok(AfterExec {
            parent: Pid::from_raw(parent),
            outlive_parent: flag("outlive flag", outlive)?,
            nice: match nice {
                "" => None,
                n => Some(n.parse().map_err(|_| format!("bad niceness {n:?}"))?),
            },
            memory_limit: match memory {
                "" => None,
                m => Some(m.parse().map_err(|_| format!("bad memory limit {m:?}"))?),
            },
            cgroup: flag("cgroup flag", cgroup)?,
        })
    }

    /// Applies the settings to this process (see the module docs). Exits at once
    /// (`_exit(1)`) if the parent is gone.
    ///
    /// # Errors
    ///
    /// The error of the first setting that could not be applied.
    pub(crate) fn apply(&self) -> std::io::Result<()> {
        if self.cgroup {
            // Into its leaf before anything else: from here on, nothing it starts can
            // leave it (see `cgroup`).
            super::cgroup::enter(CGROUP_FD);
            // SAFETY: CGROUP_FD was put there for this process by `posix_spawn`, and
            // nothing else in it knows the number.
            unsafe { libc::close(CGROUP_FD) };
        }
        super::settle(
            self.parent,
            self.outlive_parent,
            self.nice,
            self.memory_limit,
        )
    }
}

/// Reads the settings in [`ENV_SETUP`], removes the variable, and applies them; called
/// first thing by a spawned child (while it has one thread).
///
/// # Errors
///
/// Why the child must not run: the variable is missing or malformed, or a setting
/// could not be applied.
pub(crate) fn apply_from_env() -> Result<(), String> {
    let text = std::env::var(ENV_SETUP);
    // Not inherited by the processes that its tasks start.
    std::env::remove_var(ENV_SETUP);
    let text = text.map_err(|_| format!("no start-up settings ({ENV_SETUP})"))?;
    let settings =
        AfterExec::decode(&text).map_err(|why| format!("bad start-up settings: {why}"))?;
    settings
        .apply()
        .map_err(|e| format!("could not apply its start-up settings: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip() {
        for settings in [
            AfterExec {
                parent: Pid::from_raw(42),
                outlive_parent: false,
                nice: None,
                memory_limit: None,
                cgroup: false,
            },
            AfterExec {
                parent: Pid::from_raw(i32::MAX),
                outlive_parent: true,
                nice: Some(-20),
                memory_limit: Some(u64::MAX),
                cgroup: true,
            },
        ] {
            assert_eq!(AfterExec::decode(&settings.encode()), Ok(settings));
        }
    }

    #[test]
    fn malformed_settings_are_refused() {
        for bad in [
            "",
            "1,0,,,0,",
            "0,0,,,0",
            "-5,0,,,0",
            "x,0,,,0",
            "7,2,,,0",
            "7,0,ten,,0",
            "7,0,,-1,0",
            "7,0,,,yes",
        ] {
            assert!(AfterExec::decode(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
